//! The artifacts of tasks: validation, upsert, list, delete with blob
//! clean-up, and the copy of input artifacts for clone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tasklab_error::{Error, ErrorCode, Result};

use crate::blobs::{BlobCleanup, BlobStore};
use crate::paging::{self, OrderBy, Page, PageRequest, SortValue};
use crate::paths::{Location, UriBase};
use crate::store::{Selection, Store};

/// Most artifacts (or keys, or task ids) in one request.
pub(crate) const MAX_BATCH: usize = 1000;

/// Whether an artifact is consumed or produced by its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Mode {
    Input,
    Output,
}

impl Mode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Input => "input",
            Mode::Output => "output",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Mode> {
        match text {
            "input" => Some(Mode::Input),
            "output" => Some(Mode::Output),
            _ => None,
        }
    }
}

/// An artifact of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Artifact {
    pub(crate) task_id: String,
    pub(crate) key: String,
    pub(crate) mode: Mode,
    /// The SDK's `type`.
    pub(crate) kind: String,
    pub(crate) uri: String,
    /// Output only: derived from `uri`.
    pub(crate) blob_path: String,
    pub(crate) hash: String,
    pub(crate) content_size: u64,
    pub(crate) timestamp: DateTime<Utc>,
    pub(crate) preview: String,
    pub(crate) content_type: String,
    pub(crate) data_hash: String,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) display_data: Vec<(String, String)>,
    /// Output only: when the service last wrote it.
    pub(crate) updated: DateTime<Utc>,
}

/// An artifact as a caller writes it; `timestamp` defaults to the write time.
#[derive(Debug, Clone, Default)]
pub(crate) struct NewArtifact {
    pub(crate) task_id: String,
    pub(crate) key: String,
    /// `None` means output.
    pub(crate) mode: Option<Mode>,
    pub(crate) kind: String,
    pub(crate) uri: String,
    pub(crate) hash: String,
    pub(crate) content_size: u64,
    pub(crate) timestamp: Option<DateTime<Utc>>,
    pub(crate) preview: String,
    pub(crate) content_type: String,
    pub(crate) data_hash: String,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) display_data: Vec<(String, String)>,
}

/// The answer of an upsert.
#[derive(Debug, Clone)]
pub(crate) struct Upserted {
    pub(crate) created: u32,
    pub(crate) updated: u32,
    pub(crate) artifacts: Vec<Artifact>,
}

/// A list request.
#[derive(Debug, Clone, Default)]
pub(crate) struct ArtifactQuery {
    pub(crate) task_ids: Vec<String>,
    pub(crate) mode: Option<Mode>,
    pub(crate) keys: Vec<String>,
    pub(crate) order_by: Vec<OrderBy>,
    pub(crate) page: PageRequest,
}

/// A delete request; exactly one of `keys` and `all` is given.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeleteArtifacts {
    pub(crate) task_id: String,
    /// (key, mode); `None` mode means output.
    pub(crate) keys: Vec<(String, Option<Mode>)>,
    pub(crate) all: bool,
    /// With `all`: `None` deletes both modes.
    pub(crate) mode: Option<Mode>,
    pub(crate) delete_blobs: bool,
}

/// One removed artifact and what happened to its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Removed {
    pub(crate) key: String,
    pub(crate) mode: Mode,
    pub(crate) uri: String,
    pub(crate) blob_path: String,
    pub(crate) blob: BlobCleanup,
}

/// The answer of a delete.
#[derive(Debug, Clone)]
pub(crate) struct DeletedArtifacts {
    pub(crate) removed: Vec<Removed>,
    pub(crate) stored_blob_paths: Vec<String>,
    pub(crate) external_uris: Vec<String>,
}

/// The artifacts domain core.
#[derive(Debug, Clone)]
pub(crate) struct ArtifactService {
    store: Arc<dyn Store>,
    blobs: BlobStore,
    base: UriBase,
}

impl ArtifactService {
    pub(crate) fn new(store: Arc<dyn Store>, blobs: BlobStore, base: UriBase) -> Self {
        ArtifactService { store, blobs, base }
    }

    /// Creates or replaces the artifacts of one task, atomically.
    pub(crate) async fn upsert(&self, task_id: &str, batch: Vec<NewArtifact>) -> Result<Upserted> {
        require("task_id", task_id)?;
        check_batch("artifacts", batch.len())?;
        let now = now();
        let mut order: Vec<(String, Mode)> = Vec::new();
        let mut by_id: HashMap<(String, Mode), Artifact> = HashMap::new();
        for (i, new) in batch.into_iter().enumerate() {
            let artifact = self.validate(task_id, new, now, i)?;
            let id = (artifact.key.clone(), artifact.mode);
            if by_id.insert(id.clone(), artifact).is_none() {
                order.push(id);
            }
        }
        let artifacts: Vec<Artifact> = order
            .into_iter()
            .filter_map(|id| by_id.remove(&id))
            .collect();
        let created = self.store.upsert_artifacts(&artifacts).await?;
        tracing::debug!(
            task_id,
            count = artifacts.len(),
            created,
            "artifacts written"
        );
        Ok(Upserted {
            created,
            updated: count(artifacts.len()) - created,
            artifacts,
        })
    }

    fn validate(
        &self,
        task_id: &str,
        new: NewArtifact,
        now: DateTime<Utc>,
        index: usize,
    ) -> Result<Artifact> {
        let field = |name: &str| format!("artifacts[{index}].{name}");
        if !new.task_id.is_empty() && new.task_id != task_id {
            return Err(invalid_artifact(
                &field("task_id"),
                "differs from the request's task_id",
            ));
        }
        if new.key.is_empty() {
            return Err(invalid_artifact(&field("key"), "is empty"));
        }
        let limits: [(&str, &str, usize); 8] = [
            ("key", &new.key, 1024),
            ("type", &new.kind, 255),
            ("uri", &new.uri, 4096),
            ("hash", &new.hash, 255),
            ("preview", &new.preview, 256 * 1024),
            ("content_type", &new.content_type, 255),
            ("data_hash", &new.data_hash, 255),
            ("task_id", task_id, 64),
        ];
        for (name, value, max) in limits {
            check_text(&field(name), value, max)?;
        }
        if new.metadata.len() > 100 {
            return Err(invalid_artifact(
                &field("metadata"),
                "has more than 100 keys",
            ));
        }
        for (k, v) in &new.metadata {
            check_text(&field("metadata"), k, 255)?;
            check_text(&field("metadata"), v, 4096)?;
        }
        if new.display_data.len() > 100 {
            return Err(invalid_artifact(
                &field("display_data"),
                "has more than 100 pairs",
            ));
        }
        for (k, v) in &new.display_data {
            check_text(&field("display_data"), k, 255)?;
            check_text(&field("display_data"), v, 4096)?;
        }
        if i64::try_from(new.content_size).is_err() {
            return Err(invalid_artifact(&field("content_size"), "is too large"));
        }
        Ok(Artifact {
            task_id: task_id.to_owned(),
            blob_path: self.base.blob_path(&new.uri),
            mode: new.mode.unwrap_or(Mode::Output),
            timestamp: new.timestamp.map_or(now, |t| t.trunc_micros()),
            key: new.key,
            kind: new.kind,
            uri: new.uri,
            hash: new.hash,
            content_size: new.content_size,
            preview: new.preview,
            content_type: new.content_type,
            data_hash: new.data_hash,
            metadata: new.metadata,
            display_data: new.display_data,
            updated: now,
        })
    }

    /// One page of the artifacts of some tasks.
    pub(crate) async fn list(&self, query: ArtifactQuery) -> Result<Page<Artifact>> {
        if query.task_ids.is_empty() {
            return Err(missing("task_ids"));
        }
        check_batch("task_ids", query.task_ids.len())?;
        check_batch("keys", query.keys.len())?;
        let order = paging::parse_order(
            &query.order_by,
            &[
                (SortField::TaskId, false),
                (SortField::Key, false),
                (SortField::Mode, false),
            ],
            SortField::parse,
            "task_id, key, mode, timestamp, updated",
        )?;
        let request = format!(
            "artifacts|{:?}|{:?}|{:?}|{:?}",
            query.task_ids, query.mode, query.keys, order
        );
        let found = self
            .store
            .list_artifacts(&query.task_ids, query.mode, &query.keys)
            .await?;
        let mut descending: Vec<bool> = order.iter().map(|(_, d)| *d).collect();
        descending.extend([false, false, false]);
        paging::paginate(
            found,
            |a| {
                let mut key: Vec<SortValue> = order.iter().map(|(f, _)| f.value(a)).collect();
                key.extend([
                    SortField::TaskId.value(a),
                    SortField::Key.value(a),
                    SortField::Mode.value(a),
                ]);
                key
            },
            &descending,
            &request,
            &query.page,
        )
    }

    /// Deletes artifacts of a task, and with `delete_blobs` the stored files
    /// of removed outputs that nothing else refers to.
    pub(crate) async fn delete(&self, request: DeleteArtifacts) -> Result<DeletedArtifacts> {
        require("task_id", &request.task_id)?;
        let selection = match (request.all, request.keys.is_empty()) {
            (true, true) => Selection::All(request.mode),
            (false, false) => {
                check_batch("artifacts", request.keys.len())?;
                Selection::Keys(
                    request
                        .keys
                        .into_iter()
                        .map(|(k, m)| (k, m.unwrap_or(Mode::Output)))
                        .collect(),
                )
            }
            _ => {
                return Err(
                    Error::invalid("give exactly one of artifacts and all".to_owned())
                        .with_field("field", "artifacts"),
                );
            }
        };
        let rows = self
            .store
            .delete_artifacts(&request.task_id, &selection)
            .await?;
        let mut outcomes: HashMap<String, BlobCleanup> = HashMap::new();
        let mut removed = Vec::with_capacity(rows.len());
        let mut stored = BTreeSet::new();
        let mut external = BTreeSet::new();
        for a in rows {
            let location = self.base.locate(&a.uri);
            let blob = match &location {
                Location::None => BlobCleanup::NoUri,
                Location::External => {
                    external.insert(a.uri.clone());
                    BlobCleanup::External
                }
                Location::Stored(path) => {
                    stored.insert(path.clone());
                    if !request.delete_blobs {
                        BlobCleanup::NotRequested
                    } else if a.mode == Mode::Input {
                        BlobCleanup::KeptReferenced
                    } else if let Some(done) = outcomes.get(path) {
                        *done
                    } else {
                        let done = self.blobs.delete_unreferenced(path).await;
                        outcomes.insert(path.clone(), done);
                        done
                    }
                }
            };
            removed.push(Removed {
                blob_path: match location {
                    Location::Stored(path) => path,
                    _ => String::new(),
                },
                key: a.key,
                mode: a.mode,
                uri: a.uri,
                blob,
            });
        }
        tracing::debug!(task_id = %request.task_id, removed = removed.len(), "artifacts deleted");
        Ok(DeletedArtifacts {
            removed,
            stored_blob_paths: stored.into_iter().collect(),
            external_uris: external.into_iter().collect(),
        })
    }

    /// Copies the input artifacts of `source` to `target`.
    pub(crate) async fn copy_inputs(
        &self,
        source: &str,
        target: &str,
        replace: bool,
    ) -> Result<Vec<Artifact>> {
        require("source_task_id", source)?;
        require("target_task_id", target)?;
        if source == target {
            return Err(
                Error::invalid("source_task_id and target_task_id are equal")
                    .with_field("field", "target_task_id"),
            );
        }
        self.store
            .copy_input_artifacts(source, target, replace, now())
            .await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SortField {
    TaskId,
    Key,
    Mode,
    Timestamp,
    Updated,
}

impl SortField {
    fn parse(field: &str) -> Option<SortField> {
        Some(match field {
            "task_id" => SortField::TaskId,
            "key" => SortField::Key,
            "mode" => SortField::Mode,
            "timestamp" => SortField::Timestamp,
            "updated" => SortField::Updated,
            _ => return None,
        })
    }

    fn value(self, a: &Artifact) -> SortValue {
        match self {
            SortField::TaskId => SortValue::Text(a.task_id.clone()),
            SortField::Key => SortValue::Text(a.key.clone()),
            // Input first.
            SortField::Mode => SortValue::Int(i64::from(a.mode == Mode::Output)),
            SortField::Timestamp => SortValue::Int(a.timestamp.timestamp_micros()),
            SortField::Updated => SortValue::Int(a.updated.timestamp_micros()),
        }
    }
}

trait TruncMicros {
    fn trunc_micros(self) -> Self;
}

impl TruncMicros for DateTime<Utc> {
    fn trunc_micros(self) -> Self {
        chrono::SubsecRound::trunc_subsecs(self, 6)
    }
}

/// The current time at the precision both databases store.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_micros()
}

pub(crate) fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `missing_field` for an empty required field.
pub(crate) fn require(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(missing(field));
    }
    Ok(())
}

fn missing(field: &str) -> Error {
    Error::new(ErrorCode::MissingField, format!("{field} is required")).with_field("field", field)
}

/// `too_large` (the contract's `batch_too_large`) for a list over the limit.
pub(crate) fn check_batch(field: &str, len: usize) -> Result<()> {
    if len > MAX_BATCH {
        return Err(Error::new(
            ErrorCode::TooLarge,
            format!("{field} has {len} items; at most {MAX_BATCH} are allowed"),
        )
        .with_field("field", field)
        .with_field("reason", "batch_too_large"));
    }
    Ok(())
}

fn invalid_artifact(field: &str, why: &str) -> Error {
    Error::invalid(format!("invalid artifact: {field} {why}"))
        .with_field("field", field)
        .with_field("reason", "invalid_artifact")
}

/// Refuses text over `max` bytes or holding NUL (which PostgreSQL cannot
/// store).
fn check_text(field: &str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(invalid_artifact(
            field,
            &format!("is longer than {max} bytes"),
        ));
    }
    if value.contains('\0') {
        return Err(invalid_artifact(field, "contains a NUL character"));
    }
    Ok(())
}
