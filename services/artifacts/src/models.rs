//! The model registry: create, read, list, edit, ready, publish, archive
//! and delete, with the clean-up of a task's output models on reset and
//! delete.
//!
//! A published model is read-only except for its name, comment and tags,
//! and is only deleted with `force`. Whether a model is in use by other
//! tasks is told by the caller (the gateway asks the tasks service).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use regex::Regex;
use serde::{Deserialize, Serialize};
use tasklab_error::{Error, ErrorCode, Result};

use crate::artifacts::{MAX_BATCH, check_batch, now, require};
use crate::blobs::{BlobCleanup, BlobStore};
use crate::paging::{self, OrderBy, Page, PageRequest, SortValue};
use crate::paths::{Location, UriBase};
use crate::store::{ModelCandidates, Store};

/// The system tag of an archived model.
pub(crate) const ARCHIVED: &str = "archived";
/// How many times an update that lost a race is attempted.
const MAX_ATTEMPTS: u32 = 8;

/// A typed metadata value; its key is the map key it is stored under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MetadataItem {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) value: String,
}

/// A model.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Model {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) project_id: String,
    pub(crate) task_id: String,
    pub(crate) comment: String,
    /// Sorted and deduplicated.
    pub(crate) tags: Vec<String>,
    /// Sorted and deduplicated.
    pub(crate) system_tags: Vec<String>,
    pub(crate) framework: String,
    pub(crate) design: String,
    pub(crate) labels: BTreeMap<String, i64>,
    pub(crate) uri: String,
    /// Output only: derived from `uri`.
    pub(crate) blob_path: String,
    pub(crate) ready: bool,
    pub(crate) published: Option<DateTime<Utc>>,
    pub(crate) metadata: BTreeMap<String, MetadataItem>,
    pub(crate) iteration: Option<i64>,
    pub(crate) user_id: String,
    pub(crate) parent_id: String,
    pub(crate) created: DateTime<Utc>,
    pub(crate) last_update: DateTime<Utc>,
    /// Write counter for optimistic updates.
    pub(crate) version: i64,
}

impl Model {
    fn is_archived(&self) -> bool {
        self.system_tags.iter().any(|t| t == ARCHIVED)
    }
}

/// The fields an update writes; `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ModelChanges {
    pub(crate) name: Option<String>,
    pub(crate) project_id: Option<String>,
    pub(crate) task_id: Option<String>,
    pub(crate) comment: Option<String>,
    pub(crate) tags: Option<Vec<String>>,
    pub(crate) system_tags: Option<Vec<String>>,
    pub(crate) framework: Option<String>,
    pub(crate) design: Option<String>,
    pub(crate) labels: Option<BTreeMap<String, i64>>,
    /// One label each: set, or delete for `None`.
    pub(crate) label_entries: Vec<(String, Option<i64>)>,
    pub(crate) uri: Option<String>,
    pub(crate) ready: Option<bool>,
    pub(crate) metadata: Option<BTreeMap<String, MetadataItem>>,
    /// One metadata entry each: set, or delete for `None`.
    pub(crate) metadata_entries: Vec<(String, Option<MetadataItem>)>,
    pub(crate) iteration: Option<Option<i64>>,
    pub(crate) parent_id: Option<String>,
}

impl ModelChanges {
    /// Whether the change touches anything but name, comment and tags.
    fn touches_locked_fields(&self) -> bool {
        let open = ModelChanges {
            name: None,
            comment: None,
            tags: None,
            system_tags: None,
            ..self.clone()
        };
        open != ModelChanges::default()
    }
}

/// The tag conditions of a list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TagFilter {
    pub(crate) any_of: Vec<String>,
    pub(crate) all_of: Vec<String>,
    pub(crate) none_of: Vec<String>,
}

impl TagFilter {
    fn matches(&self, tags: &[String]) -> bool {
        let has = |tag: &String| tags.contains(tag);
        (self.any_of.is_empty() || self.any_of.iter().any(has))
            && self.all_of.iter().all(has)
            && !self.none_of.iter().any(has)
    }

    fn asks_for(&self, tag: &str) -> bool {
        self.any_of.iter().chain(&self.all_of).any(|t| t == tag)
    }
}

/// A list request.
#[derive(Debug, Clone, Default)]
pub(crate) struct ModelQuery {
    pub(crate) candidates: ModelCandidates,
    pub(crate) name_pattern: String,
    pub(crate) tags: TagFilter,
    pub(crate) system_tags: TagFilter,
    pub(crate) include_archived: bool,
    pub(crate) order_by: Vec<OrderBy>,
    pub(crate) page: PageRequest,
}

/// A delete request.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeleteModel {
    pub(crate) id: String,
    pub(crate) force: bool,
    pub(crate) delete_blob: bool,
    pub(crate) used_by_task_ids: Vec<String>,
}

/// A request to clean up the models of a task.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeleteModelsOfTask {
    pub(crate) task_id: String,
    pub(crate) output_model_ids: Vec<String>,
    pub(crate) in_use_model_ids: Vec<String>,
    pub(crate) delete_published: bool,
    pub(crate) delete_in_use: bool,
    pub(crate) delete_blobs: bool,
}

/// Why a model was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeptReason {
    Published,
    InUse,
}

/// A model removed by [`ModelService::delete_of_task`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeletedModel {
    pub(crate) id: String,
    pub(crate) uri: String,
    pub(crate) blob_path: String,
    pub(crate) blob: BlobCleanup,
}

/// The answer of [`ModelService::delete_of_task`].
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskModelsCleanup {
    pub(crate) deleted: Vec<DeletedModel>,
    pub(crate) kept: Vec<(String, KeptReason)>,
    pub(crate) model_uris: Vec<String>,
}

/// One model a batch call could not handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) id: String,
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

/// The model registry's domain core.
#[derive(Debug, Clone)]
pub(crate) struct ModelService {
    store: Arc<dyn Store>,
    blobs: BlobStore,
    base: UriBase,
}

impl ModelService {
    pub(crate) fn new(store: Arc<dyn Store>, blobs: BlobStore, base: UriBase) -> Self {
        ModelService { store, blobs, base }
    }

    /// Creates a draft model from the caller's fields (`published` and the
    /// output-only fields are ignored).
    pub(crate) async fn create(&self, fields: Model) -> Result<Model> {
        let now = now();
        let mut model = Model {
            id: uuid::Uuid::new_v4().simple().to_string(),
            published: None,
            created: now,
            last_update: now,
            version: 1,
            ..fields
        };
        model.tags = normalize_tags(std::mem::take(&mut model.tags));
        model.system_tags = normalize_tags(std::mem::take(&mut model.system_tags));
        model.blob_path = self.base.blob_path(&model.uri);
        validate(&model)?;
        self.store.insert_model(&model).await?;
        tracing::info!(model_id = %model.id, task_id = %model.task_id, "model created");
        Ok(model)
    }

    /// The model with id `id`.
    pub(crate) async fn get(&self, id: &str) -> Result<Model> {
        require("model_id", id)?;
        self.store.get_model(id).await?.ok_or_else(|| not_found(id))
    }

    /// One page of the models matching `query`.
    pub(crate) async fn list(&self, query: ModelQuery) -> Result<Page<Model>> {
        let c = &query.candidates;
        for (field, len) in [
            ("ids", c.ids.len()),
            ("project_ids", c.project_ids.len()),
            ("task_ids", c.task_ids.len()),
            ("user_ids", c.user_ids.len()),
        ] {
            check_batch(field, len)?;
        }
        if c.frameworks.len() > 100 {
            return Err(
                Error::new(ErrorCode::TooLarge, "frameworks has more than 100 items")
                    .with_field("field", "frameworks"),
            );
        }
        let name = if query.name_pattern.is_empty() {
            None
        } else {
            Some(Regex::new(&query.name_pattern).map_err(|err| {
                Error::new(
                    ErrorCode::InvalidRegex,
                    format!("invalid regular expression in name_pattern: {err}"),
                )
                .with_field("field", "name_pattern")
            })?)
        };
        let order = paging::parse_order(
            &query.order_by,
            &[(SortField::Created, true)],
            SortField::parse,
            "created, name, last_update, framework, published, iteration",
        )?;
        let hide_archived = !query.include_archived && !query.system_tags.asks_for(ARCHIVED);
        let request = format!(
            "models|{:?}|{:?}|{:?}|{:?}|{}|{:?}",
            query.candidates,
            query.name_pattern,
            query.tags,
            query.system_tags,
            hide_archived,
            order
        );
        let found: Vec<Model> = self
            .store
            .list_models(&query.candidates)
            .await?
            .into_iter()
            .filter(|m| {
                name.as_ref().is_none_or(|re| re.is_match(&m.name))
                    && query.tags.matches(&m.tags)
                    && query.system_tags.matches(&m.system_tags)
                    && !(hide_archived && m.is_archived())
            })
            .collect();
        let mut descending: Vec<bool> = order.iter().map(|(_, d)| *d).collect();
        descending.push(false);
        paging::paginate(
            found,
            |m| {
                order
                    .iter()
                    .map(|(f, _)| f.value(m))
                    .chain(std::iter::once(SortValue::Text(m.id.clone())))
                    .collect()
            },
            &descending,
            &request,
            &query.page,
        )
    }

    /// Applies `changes`; a published model only takes name, comment and
    /// tags.
    pub(crate) async fn update(&self, id: &str, changes: ModelChanges) -> Result<Model> {
        if changes == ModelChanges::default() {
            return Err(Error::invalid("update_mask names no field to update")
                .with_field("field", "update_mask"));
        }
        self.modify(id, |model| {
            if model.published.is_some() && changes.touches_locked_fields() {
                return Err(published(model));
            }
            apply(model, &changes, &self.base);
            validate(model)?;
            Ok(true)
        })
        .await
    }

    /// Marks a model ready.
    pub(crate) async fn set_ready(&self, id: &str) -> Result<Model> {
        self.modify(id, |model| Ok(!std::mem::replace(&mut model.ready, true)))
            .await
    }

    /// Publishes a model; the flag is true when it already was.
    pub(crate) async fn publish(&self, id: &str) -> Result<(Model, bool)> {
        let mut already = false;
        let model = self
            .modify(id, |model| {
                already = model.published.is_some();
                if already {
                    return Ok(false);
                }
                model.published = Some(now());
                model.ready = true;
                Ok(true)
            })
            .await?;
        if !already {
            tracing::info!(model_id = %id, "model published");
        }
        Ok((model, already))
    }

    /// Adds (`archive`) or removes the `archived` system tag.
    pub(crate) async fn set_archived(
        &self,
        ids: &[String],
        archive: bool,
    ) -> Result<(u32, Vec<Failure>)> {
        if ids.is_empty() {
            return Err(Error::new(ErrorCode::EmptyBatch, "model_ids is empty")
                .with_field("field", "model_ids"));
        }
        check_batch("model_ids", ids.len())?;
        let mut updated = 0;
        let mut failures = Vec::new();
        let unique: BTreeSet<&String> = ids.iter().collect();
        for id in unique {
            let mut changed = false;
            let result = self
                .modify(id, |model| {
                    changed = model.is_archived() != archive;
                    if archive {
                        model.system_tags.push(ARCHIVED.to_owned());
                        model.system_tags = normalize_tags(std::mem::take(&mut model.system_tags));
                    } else {
                        model.system_tags.retain(|t| t != ARCHIVED);
                    }
                    Ok(changed)
                })
                .await;
            match result {
                Ok(_) if changed => updated += 1,
                Ok(_) => {}
                Err(err) if err.code() == ErrorCode::ModelNotFound => failures.push(Failure {
                    id: id.clone(),
                    code: err.code(),
                    message: err.message().to_owned(),
                }),
                Err(err) => return Err(err),
            }
        }
        Ok((updated, failures))
    }

    /// Deletes a model, refusing a published or in-use one without `force`.
    pub(crate) async fn delete(&self, request: DeleteModel) -> Result<(Model, BlobCleanup)> {
        check_batch("used_by_task_ids", request.used_by_task_ids.len())?;
        let model = self.get(&request.id).await?;
        if !request.force {
            if model.published.is_some() {
                return Err(published(&model));
            }
            if !request.used_by_task_ids.is_empty() {
                return Err(Error::new(
                    ErrorCode::ModelInUse,
                    format!(
                        "model {} is used by {} other tasks; delete with force",
                        model.id,
                        request.used_by_task_ids.len()
                    ),
                )
                .with_field("id", &model.id)
                .with_field("used_by_task_ids", request.used_by_task_ids.join(",")));
            }
        }
        if !self.store.delete_model(&model.id).await? {
            return Err(not_found(&model.id));
        }
        let blob = self.cleanup(&model, request.delete_blob).await;
        tracing::info!(model_id = %model.id, ?blob, "model deleted");
        Ok((model, blob))
    }

    /// Deletes the output models of a task on reset or delete.
    pub(crate) async fn delete_of_task(
        &self,
        request: DeleteModelsOfTask,
    ) -> Result<TaskModelsCleanup> {
        require("task_id", &request.task_id)?;
        check_batch("output_model_ids", request.output_model_ids.len())?;
        check_batch("in_use_model_ids", request.in_use_model_ids.len())?;
        let mut candidates = self
            .store
            .list_models(&ModelCandidates {
                task_ids: vec![request.task_id.clone()],
                ..ModelCandidates::default()
            })
            .await?;
        let known: HashSet<String> = candidates.iter().map(|m| m.id.clone()).collect();
        let listed: Vec<String> = request
            .output_model_ids
            .iter()
            .filter(|id| !known.contains(*id))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !listed.is_empty() {
            candidates.extend(
                self.store
                    .list_models(&ModelCandidates {
                        ids: listed,
                        ..ModelCandidates::default()
                    })
                    .await?,
            );
        }
        candidates.sort_by(|a, b| a.id.cmp(&b.id));
        let in_use: HashSet<&String> = request.in_use_model_ids.iter().collect();
        let mut out = TaskModelsCleanup::default();
        let mut uris = BTreeSet::new();
        for model in candidates {
            if model.published.is_some() && !request.delete_published {
                out.kept.push((model.id, KeptReason::Published));
                continue;
            }
            if in_use.contains(&model.id) && !request.delete_in_use {
                out.kept.push((model.id, KeptReason::InUse));
                continue;
            }
            if !self.store.delete_model(&model.id).await? {
                continue;
            }
            let blob = self.cleanup(&model, request.delete_blobs).await;
            if !model.uri.is_empty() {
                uris.insert(model.uri.clone());
            }
            out.deleted.push(DeletedModel {
                id: model.id,
                blob_path: model.blob_path,
                uri: model.uri,
                blob,
            });
        }
        out.model_uris = uris.into_iter().collect();
        tracing::info!(
            task_id = %request.task_id,
            deleted = out.deleted.len(),
            kept = out.kept.len(),
            "models of task cleaned up"
        );
        Ok(out)
    }

    /// What to do with the file of a deleted model.
    async fn cleanup(&self, model: &Model, delete_blob: bool) -> BlobCleanup {
        match self.base.locate(&model.uri) {
            Location::None => BlobCleanup::NoUri,
            Location::External => BlobCleanup::External,
            Location::Stored(_) if !delete_blob => BlobCleanup::NotRequested,
            Location::Stored(path) => self.blobs.delete_unreferenced(&path).await,
        }
    }

    /// Reads a model, lets `change` edit it (answering whether anything
    /// changed), and writes it back if its version did not move meanwhile;
    /// retried after a lost race.
    async fn modify(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Model) -> Result<bool>,
    ) -> Result<Model> {
        require("model_id", id)?;
        for _ in 0..MAX_ATTEMPTS {
            let mut model = self
                .store
                .get_model(id)
                .await?
                .ok_or_else(|| not_found(id))?;
            if !change(&mut model)? {
                return Ok(model);
            }
            let expected = model.version;
            model.version += 1;
            model.last_update = now().max(model.last_update);
            if self.store.update_model(&model, expected).await? {
                return Ok(model);
            }
        }
        Err(Error::new(
            ErrorCode::Unavailable,
            "the model changed concurrently too often; retry",
        ))
    }
}

fn apply(model: &mut Model, c: &ModelChanges, base: &UriBase) {
    let set = |target: &mut String, value: &Option<String>| {
        if let Some(v) = value {
            target.clone_from(v);
        }
    };
    set(&mut model.name, &c.name);
    set(&mut model.project_id, &c.project_id);
    set(&mut model.task_id, &c.task_id);
    set(&mut model.comment, &c.comment);
    set(&mut model.framework, &c.framework);
    set(&mut model.design, &c.design);
    set(&mut model.parent_id, &c.parent_id);
    if let Some(uri) = &c.uri {
        model.uri.clone_from(uri);
        model.blob_path = base.blob_path(uri);
    }
    if let Some(tags) = &c.tags {
        model.tags = normalize_tags(tags.clone());
    }
    if let Some(tags) = &c.system_tags {
        model.system_tags = normalize_tags(tags.clone());
    }
    if let Some(labels) = &c.labels {
        model.labels.clone_from(labels);
    }
    for (name, value) in &c.label_entries {
        match value {
            Some(v) => model.labels.insert(name.clone(), *v),
            None => model.labels.remove(name),
        };
    }
    if let Some(metadata) = &c.metadata {
        model.metadata.clone_from(metadata);
    }
    for (key, value) in &c.metadata_entries {
        match value {
            Some(v) => model.metadata.insert(key.clone(), v.clone()),
            None => model.metadata.remove(key),
        };
    }
    if let Some(ready) = c.ready {
        model.ready = ready;
    }
    if let Some(iteration) = c.iteration {
        model.iteration = iteration;
    }
}

fn validate(m: &Model) -> Result<()> {
    if m.name.is_empty() {
        return Err(
            Error::new(ErrorCode::MissingField, "name is required").with_field("field", "name")
        );
    }
    let texts: [(&str, &str, usize); 9] = [
        ("name", &m.name, 255),
        ("project_id", &m.project_id, 64),
        ("task_id", &m.task_id, 64),
        ("parent_id", &m.parent_id, 64),
        ("user_id", &m.user_id, 255),
        ("comment", &m.comment, 64 * 1024),
        ("framework", &m.framework, 255),
        ("design", &m.design, 1024 * 1024),
        ("uri", &m.uri, 4096),
    ];
    for (field, value, max) in texts {
        check_text(field, value, max)?;
    }
    for (field, tags) in [("tags", &m.tags), ("system_tags", &m.system_tags)] {
        if tags.len() > 100 {
            return Err(too_many(field, 100));
        }
        for tag in tags {
            check_text(field, tag, 255)?;
        }
    }
    if m.labels.len() > 10_000 {
        return Err(too_many("labels", 10_000));
    }
    for name in m.labels.keys() {
        check_text("labels", name, 255)?;
    }
    if m.metadata.len() > MAX_BATCH {
        return Err(too_many("metadata", MAX_BATCH));
    }
    for (key, item) in &m.metadata {
        check_text("metadata", key, 255)?;
        check_text("metadata", &item.kind, 255)?;
        check_text("metadata", &item.value, 64 * 1024)?;
    }
    Ok(())
}

fn check_text(field: &str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(
            Error::invalid(format!("{field} is longer than {max} bytes"))
                .with_field("field", field),
        );
    }
    if value.contains('\0') {
        return Err(
            Error::invalid(format!("{field} contains a NUL character")).with_field("field", field)
        );
    }
    Ok(())
}

fn too_many(field: &str, max: usize) -> Error {
    Error::invalid(format!("{field} has more than {max} entries")).with_field("field", field)
}

fn normalize_tags(tags: Vec<String>) -> Vec<String> {
    tags.into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn not_found(id: &str) -> Error {
    Error::not_found(ErrorCode::ModelNotFound, "model", id)
}

fn published(model: &Model) -> Error {
    Error::new(
        ErrorCode::ModelPublished,
        format!("model {} is published and read-only", model.id),
    )
    .with_field("id", &model.id)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SortField {
    Created,
    Name,
    LastUpdate,
    Framework,
    Published,
    Iteration,
}

impl SortField {
    fn parse(field: &str) -> Option<SortField> {
        Some(match field {
            "created" => SortField::Created,
            "name" => SortField::Name,
            "last_update" => SortField::LastUpdate,
            "framework" => SortField::Framework,
            "published" => SortField::Published,
            "iteration" => SortField::Iteration,
            _ => return None,
        })
    }

    fn value(self, m: &Model) -> SortValue {
        match self {
            SortField::Created => SortValue::Int(m.created.timestamp_micros()),
            SortField::Name => SortValue::Text(m.name.clone()),
            SortField::LastUpdate => SortValue::Int(m.last_update.timestamp_micros()),
            SortField::Framework => SortValue::Text(m.framework.clone()),
            SortField::Published => m
                .published
                .map_or(SortValue::Null, |t| SortValue::Int(t.timestamp_micros())),
            SortField::Iteration => m.iteration.map_or(SortValue::Null, SortValue::Int),
        }
    }
}
