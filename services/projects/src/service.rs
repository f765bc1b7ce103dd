//! The domain core: the rules of the project tree, over [`ProjectStore`].
//!
//! Everything here is transport-free: requests arrive as plain structs that
//! `grpc.rs` built, answers leave as [`Project`]s, failures as
//! [`tasklab_error::Error`]s with their stable codes.
//!
//! Each change runs as one [`Operation`] inside one store transaction: the
//! operation reads what it needs, checks every rule, and only then writes,
//! so a refused request changes nothing. A transaction that lost a race with
//! a concurrent one (PostgreSQL serialization failure, a unique index hit by
//! a concurrent insert) is retried from the start a few times; the retry sees
//! the other writer's result and answers accordingly (for example
//! `project_name_taken`, or the existing project for `allow_existing`).

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use chrono::{DateTime, SubsecRound, Utc};
use regex::Regex;
use serde::{Deserialize, Serialize};
use tasklab_error::{Error, ErrorCode, Result};

use crate::store::{Candidates, ProjectStore, ProjectTx, Scope, is_conflict};

/// Separates the names of a path.
pub(crate) const SEPARATOR: char = '/';
/// Longest leaf name, in characters.
pub(crate) const MAX_NAME_CHARS: usize = 255;
/// Page size when the request leaves it at 0.
pub(crate) const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page; larger requests are clamped.
pub(crate) const MAX_PAGE_SIZE: usize = 1000;
/// The system tag that hides a project from lists unless asked for.
pub(crate) const HIDDEN: &str = "hidden";
/// The system tag of an archived project, also left out unless asked for.
pub(crate) const ARCHIVED: &str = "archived";
/// How many times a transaction that conflicted with another is attempted.
const MAX_ATTEMPTS: u32 = 5;

/// A project, as the domain sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Project {
    /// 32 lowercase hex characters.
    pub(crate) id: String,
    /// Leaf name.
    pub(crate) name: String,
    /// Names of the ancestors and of this project joined by `/`.
    pub(crate) path: String,
    /// `None` at the top level.
    pub(crate) parent_id: Option<String>,
    /// Ids of every ancestor, from the root down to the parent.
    pub(crate) ancestors: Vec<String>,
    pub(crate) description: String,
    pub(crate) overview: String,
    /// Sorted and deduplicated.
    pub(crate) tags: Vec<String>,
    /// Sorted and deduplicated.
    pub(crate) system_tags: Vec<String>,
    pub(crate) default_output_destination: String,
    /// Id of the user who created the project.
    pub(crate) user: String,
    pub(crate) created: DateTime<Utc>,
    pub(crate) last_update: DateTime<Utc>,
}

impl Project {
    /// A project named `name` under `parent` (or at the top level), with the
    /// descriptive fields of `fields`.
    fn new(
        parent: Option<&Project>,
        name: &str,
        fields: ProjectFields,
        user: &str,
        now: DateTime<Utc>,
    ) -> Project {
        Project {
            id: new_id(),
            name: name.to_owned(),
            path: child_path(parent.map(|p| p.path.as_str()), name),
            parent_id: parent.map(|p| p.id.clone()),
            ancestors: parent.map(Project::lineage).unwrap_or_default(),
            description: fields.description,
            overview: fields.overview,
            tags: fields.tags,
            system_tags: fields.system_tags,
            default_output_destination: fields.default_output_destination,
            user: user.to_owned(),
            created: now,
            last_update: now,
        }
    }

    /// The `ancestors` of this project's children.
    fn lineage(&self) -> Vec<String> {
        let mut ids = self.ancestors.clone();
        ids.push(self.id.clone());
        ids
    }

    fn has_system_tag(&self, tag: &str) -> bool {
        self.system_tags.iter().any(|t| t == tag)
    }
}

/// The fields a caller chooses when creating a project.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProjectFields {
    pub(crate) description: String,
    pub(crate) overview: String,
    pub(crate) tags: Vec<String>,
    pub(crate) system_tags: Vec<String>,
    pub(crate) default_output_destination: String,
}

/// A request to create the project at `path`.
#[derive(Debug, Clone, Default)]
pub(crate) struct NewProject {
    pub(crate) path: String,
    pub(crate) fields: ProjectFields,
    /// Return an existing project at `path` instead of failing.
    pub(crate) allow_existing: bool,
}

/// The answer of [`ProjectService::create`].
#[derive(Debug, Clone)]
pub(crate) struct Created {
    pub(crate) project: Project,
    /// False when `allow_existing` returned an existing project.
    pub(crate) created: bool,
    /// Ancestors this call created, from the top down.
    pub(crate) created_parent_ids: Vec<String>,
}

/// The fields an update writes; `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProjectChanges {
    pub(crate) name: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) overview: Option<String>,
    pub(crate) tags: Option<Vec<String>>,
    pub(crate) system_tags: Option<Vec<String>>,
    pub(crate) default_output_destination: Option<String>,
}

impl ProjectChanges {
    fn is_empty(&self) -> bool {
        *self == ProjectChanges::default()
    }
}

/// The answer of an update or a move.
#[derive(Debug, Clone)]
pub(crate) struct Changed {
    /// The project after the change.
    pub(crate) project: Project,
    /// Number of project records written (the project and any sub-project
    /// whose path followed).
    pub(crate) updated: u32,
}

/// The answer of [`ProjectService::merge`].
#[derive(Debug, Clone)]
pub(crate) struct Merged {
    pub(crate) destination: Project,
    /// The source's direct sub-projects, now (or, when only validating,
    /// then) under the destination.
    pub(crate) moved_project_ids: Vec<String>,
    pub(crate) source_deleted: bool,
}

/// A request to delete a project and its subtree.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeleteRequest {
    pub(crate) id: String,
    pub(crate) force: bool,
    /// Tasks and models in the subtree, as counted by the caller.
    pub(crate) contents_count: u64,
}

/// The tag conditions of a list: any of, all of, none of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
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

    /// Whether the filter explicitly asks for `tag` to be present.
    fn asks_for(&self, tag: &str) -> bool {
        self.any_of.iter().chain(&self.all_of).any(|t| t == tag)
    }
}

/// One ordering key as requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct OrderBy {
    pub(crate) field: String,
    pub(crate) descending: bool,
}

/// A list request.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ListQuery {
    /// Empty for the root.
    pub(crate) parent_id: String,
    pub(crate) shallow: bool,
    pub(crate) ids: Vec<String>,
    pub(crate) path_regex: String,
    pub(crate) name_regex: String,
    pub(crate) tags: TagFilter,
    pub(crate) system_tags: TagFilter,
    pub(crate) include_hidden: bool,
    pub(crate) include_archived: bool,
    pub(crate) users: Vec<String>,
    pub(crate) order_by: Vec<OrderBy>,
    /// 0 for the default.
    #[serde(skip)]
    pub(crate) page_size: u32,
    #[serde(skip)]
    pub(crate) page_token: String,
    #[serde(skip)]
    pub(crate) include_total: bool,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    pub(crate) projects: Vec<Project>,
    /// Empty on the last page.
    pub(crate) next_page_token: String,
    /// Set when the request asked for it.
    pub(crate) total_size: Option<u64>,
}

/// The projects service's domain core.
#[derive(Debug, Clone)]
pub(crate) struct ProjectService {
    store: Arc<dyn ProjectStore>,
}

impl ProjectService {
    pub(crate) fn new(store: Arc<dyn ProjectStore>) -> Self {
        ProjectService { store }
    }

    /// Creates the project at `request.path` and its missing ancestors;
    /// `user` becomes their creator.
    pub(crate) async fn create(&self, request: NewProject, user: &str) -> Result<Created> {
        let segments = parse_path(&request.path)?;
        let fields = ProjectFields {
            description: check_text("description", request.fields.description)?,
            overview: check_text("overview", request.fields.overview)?,
            tags: normalize_tags("tags", request.fields.tags)?,
            system_tags: normalize_tags("system_tags", request.fields.system_tags)?,
            default_output_destination: check_text(
                "default_output_destination",
                request.fields.default_output_destination,
            )?,
        };
        let op = CreateOp {
            segments,
            fields,
            allow_existing: request.allow_existing,
            user: user.to_owned(),
            now: now(),
        };
        let created = self.transact(&op).await?;
        if created.created {
            tracing::info!(
                project_id = %created.project.id,
                path = %created.project.path,
                parents_created = created.created_parent_ids.len(),
                "project created"
            );
        }
        Ok(created)
    }

    /// The project with id `id`.
    pub(crate) async fn get(&self, id: &str) -> Result<Project> {
        require("id", id)?;
        self.store.get(id).await?.ok_or_else(|| not_found(id))
    }

    /// The project at exactly `path`, normalised like a created path.
    pub(crate) async fn get_by_path(&self, path: &str) -> Result<Project> {
        let segments = parse_path(path)?;
        let mut found: Option<Project> = None;
        for name in &segments {
            let parent_id = found.as_ref().map(|p| p.id.as_str());
            let child = self.store.find_child(parent_id, name).await?;
            found = Some(child.ok_or_else(|| not_found_path(&segments))?);
        }
        found.ok_or_else(|| not_found_path(&segments))
    }

    /// One page of the projects matching `query`.
    pub(crate) async fn list(&self, query: ListQuery) -> Result<Page> {
        let filter = Filter::compile(&query)?;
        let order = parse_order(&query.order_by)?;
        let fingerprint = fingerprint(&query);
        let cursor = match query.page_token.as_str() {
            "" => None,
            token => Some(Cursor::decode(token, &fingerprint, &order)?),
        };
        let page_size = match query.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };

        let scope = match (query.parent_id.as_str(), query.shallow) {
            ("", true) => Scope::ChildrenOf(None),
            ("", false) => Scope::All,
            (parent, true) => Scope::ChildrenOf(Some(parent.to_owned())),
            (parent, false) => Scope::DescendantsOf(parent.to_owned()),
        };
        let candidates = Candidates {
            scope,
            ids: query.ids.clone(),
            users: query.users.clone(),
        };
        // Keys are computed once per project, not once per comparison.
        let mut matching: Vec<(Vec<KeyValue>, Project)> = self
            .store
            .list(&candidates)
            .await?
            .into_iter()
            .filter(|p| filter.matches(p))
            .map(|p| (sort_key(&p, &order), p))
            .collect();
        matching.sort_by(|(a, _), (b, _)| compare_keys(a, b, &order));

        let total_size = query.include_total.then_some(matching.len() as u64);
        let start = match &cursor {
            None => 0,
            Some(cursor) => matching.partition_point(|(key, _)| {
                compare_keys(key, &cursor.key, &order) != Ordering::Greater
            }),
        };
        let end = (start + page_size).min(matching.len());
        let next_page_token = if end < matching.len() {
            let key = matching[end - 1].0.clone();
            Cursor { fingerprint, key }.encode()
        } else {
            String::new()
        };
        let projects = matching.drain(start..end).map(|(_, p)| p).collect();
        Ok(Page {
            projects,
            next_page_token,
            total_size,
        })
    }

    /// Writes the fields set in `changes`; renaming rewrites the paths of the
    /// whole subtree in the same transaction.
    pub(crate) async fn update(&self, id: &str, changes: ProjectChanges) -> Result<Changed> {
        require("id", id)?;
        if changes.is_empty() {
            return Err(Error::invalid("update_mask names no field to update"));
        }
        let changes = ProjectChanges {
            name: changes.name.map(|name| parse_name(&name)).transpose()?,
            description: changes
                .description
                .map(|v| check_text("description", v))
                .transpose()?,
            overview: changes
                .overview
                .map(|v| check_text("overview", v))
                .transpose()?,
            tags: changes
                .tags
                .map(|v| normalize_tags("tags", v))
                .transpose()?,
            system_tags: changes
                .system_tags
                .map(|v| normalize_tags("system_tags", v))
                .transpose()?,
            default_output_destination: changes
                .default_output_destination
                .map(|v| check_text("default_output_destination", v))
                .transpose()?,
        };
        let changed = self
            .transact(&UpdateOp {
                id: id.to_owned(),
                changes,
                now: now(),
            })
            .await?;
        if changed.updated > 0 {
            tracing::info!(project_id = %id, updated = changed.updated, "project updated");
        }
        Ok(changed)
    }

    /// Moves the project with its subtree under `new_parent_id` (empty: to
    /// the root).
    pub(crate) async fn move_project(&self, id: &str, new_parent_id: &str) -> Result<Changed> {
        require("id", id)?;
        let op = MoveOp {
            id: id.to_owned(),
            new_parent_id: (!new_parent_id.is_empty()).then(|| new_parent_id.to_owned()),
            now: now(),
        };
        let moved = self.transact(&op).await?;
        if moved.updated > 0 {
            tracing::info!(project_id = %id, path = %moved.project.path, "project moved");
        }
        Ok(moved)
    }

    /// Moves the sub-projects of `source_id` under `destination_id` and
    /// deletes the source, or only checks that it could (`validate_only`).
    pub(crate) async fn merge(
        &self,
        source_id: &str,
        destination_id: &str,
        validate_only: bool,
    ) -> Result<Merged> {
        require("source_id", source_id)?;
        require("destination_id", destination_id)?;
        if source_id == destination_id {
            return Err(
                Error::invalid("cannot merge a project into itself").with_field("id", source_id)
            );
        }
        let op = MergeOp {
            source_id: source_id.to_owned(),
            destination_id: destination_id.to_owned(),
            validate_only,
            now: now(),
        };
        let merged = self.transact(&op).await?;
        if merged.source_deleted {
            tracing::info!(
                source_id = %source_id,
                destination_id = %destination_id,
                moved = merged.moved_project_ids.len(),
                "project merged"
            );
        }
        Ok(merged)
    }

    /// Deletes a project and its subtree; returns the deleted ids, the
    /// requested one first.
    pub(crate) async fn delete(&self, request: DeleteRequest) -> Result<Vec<String>> {
        require("id", &request.id)?;
        let deleted = self.transact(&DeleteOp(request)).await?;
        tracing::info!(project_id = %deleted[0], deleted = deleted.len(), "project deleted");
        Ok(deleted)
    }

    /// Runs `op` in a transaction, retrying it when it lost a race with a
    /// concurrent transaction.
    async fn transact<O: Operation>(&self, op: &O) -> Result<O::Output> {
        let mut attempt = 1;
        loop {
            let mut tx = self.store.begin().await?;
            let result = match op.run(tx.as_mut()).await {
                Ok(output) => tx.commit().await.map(|()| output),
                Err(err) => {
                    if let Err(rollback) = tx.rollback().await {
                        rollback.log();
                    }
                    Err(err)
                }
            };
            match result {
                Err(err) if attempt < MAX_ATTEMPTS && is_conflict(&err) => {
                    tracing::debug!(
                        attempt,
                        "transaction conflicted with a concurrent one; retrying"
                    );
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// A change of the tree, run inside one transaction: read, check, write.
#[async_trait]
trait Operation: Sync {
    type Output: Send;

    /// Does the work; must not write anything before every check passed, and
    /// may run several times (a retry starts from a fresh transaction).
    async fn run(&self, tx: &mut dyn ProjectTx) -> Result<Self::Output>;
}

struct CreateOp {
    segments: Vec<String>,
    fields: ProjectFields,
    allow_existing: bool,
    user: String,
    now: DateTime<Utc>,
}

#[async_trait]
impl Operation for CreateOp {
    type Output = Created;

    async fn run(&self, tx: &mut dyn ProjectTx) -> Result<Created> {
        let (leaf, ancestors) = self
            .segments
            .split_last()
            .expect("a parsed path is never empty");
        let mut parent: Option<Project> = None;
        let mut created_parent_ids = Vec::new();
        for name in ancestors {
            let parent_id = parent.as_ref().map(|p| p.id.as_str());
            let next = match tx.find_child(parent_id, name).await? {
                Some(existing) => existing,
                None => {
                    let missing = Project::new(
                        parent.as_ref(),
                        name,
                        ProjectFields::default(),
                        &self.user,
                        self.now,
                    );
                    tx.insert(&missing).await?;
                    created_parent_ids.push(missing.id.clone());
                    missing
                }
            };
            parent = Some(next);
        }
        let parent_id = parent.as_ref().map(|p| p.id.as_str());
        if let Some(existing) = tx.find_child(parent_id, leaf).await? {
            if self.allow_existing {
                return Ok(Created {
                    project: existing,
                    created: false,
                    created_parent_ids,
                });
            }
            return Err(name_taken(&existing.path));
        }
        let project = Project::new(
            parent.as_ref(),
            leaf,
            self.fields.clone(),
            &self.user,
            self.now,
        );
        tx.insert(&project).await?;
        Ok(Created {
            project,
            created: true,
            created_parent_ids,
        })
    }
}

struct UpdateOp {
    id: String,
    changes: ProjectChanges,
    now: DateTime<Utc>,
}

#[async_trait]
impl Operation for UpdateOp {
    type Output = Changed;

    async fn run(&self, tx: &mut dyn ProjectTx) -> Result<Changed> {
        let before = tx.get(&self.id).await?.ok_or_else(|| not_found(&self.id))?;
        let mut project = before.clone();
        let mut followers = Vec::new();
        if let Some(name) = &self.changes.name
            && *name != project.name
        {
            if let Some(sibling) = tx.find_child(project.parent_id.as_deref(), name).await? {
                return Err(name_taken(&sibling.path));
            }
            let parent_path = project
                .path
                .rsplit_once(SEPARATOR)
                .map(|(parent, _)| parent);
            let new_path = child_path(parent_path, name);
            for mut sub in tx.descendants(&project.id).await? {
                sub.path = rebase(&sub.path, &project.path, &new_path)?;
                sub.last_update = self.now;
                followers.push(sub);
            }
            project.name.clone_from(name);
            project.path = new_path;
        }
        let c = &self.changes;
        if let Some(v) = &c.description {
            project.description.clone_from(v);
        }
        if let Some(v) = &c.overview {
            project.overview.clone_from(v);
        }
        if let Some(v) = &c.tags {
            project.tags.clone_from(v);
        }
        if let Some(v) = &c.system_tags {
            project.system_tags.clone_from(v);
        }
        if let Some(v) = &c.default_output_destination {
            project.default_output_destination.clone_from(v);
        }
        if project == before {
            return Ok(Changed {
                project,
                updated: 0,
            });
        }
        project.last_update = self.now;
        tx.update(&project).await?;
        for sub in &followers {
            tx.update(sub).await?;
        }
        Ok(Changed {
            project,
            updated: count(1 + followers.len()),
        })
    }
}

struct MoveOp {
    id: String,
    new_parent_id: Option<String>,
    now: DateTime<Utc>,
}

#[async_trait]
impl Operation for MoveOp {
    type Output = Changed;

    async fn run(&self, tx: &mut dyn ProjectTx) -> Result<Changed> {
        let mut project = tx.get(&self.id).await?.ok_or_else(|| not_found(&self.id))?;
        let new_parent = match &self.new_parent_id {
            None => None,
            Some(id) => Some(tx.get(id).await?.ok_or_else(|| not_found(id))?),
        };
        if let Some(parent) = &new_parent
            && (parent.id == project.id || parent.ancestors.contains(&project.id))
        {
            return Err(Error::invalid(format!(
                "cannot move project {} under itself or one of its sub-projects",
                project.path
            ))
            .with_field("id", &project.id)
            .with_field("new_parent_id", &parent.id));
        }
        let new_parent_id = new_parent.as_ref().map(|p| p.id.clone());
        if project.parent_id == new_parent_id {
            return Ok(Changed {
                project,
                updated: 0,
            });
        }
        if let Some(taken) = tx
            .find_child(new_parent_id.as_deref(), &project.name)
            .await?
        {
            return Err(name_taken(&taken.path));
        }

        let old_path = std::mem::take(&mut project.path);
        let old_depth = project.ancestors.len();
        project.path = child_path(new_parent.as_ref().map(|p| p.path.as_str()), &project.name);
        project.ancestors = new_parent
            .as_ref()
            .map(Project::lineage)
            .unwrap_or_default();
        project.parent_id = new_parent_id;
        project.last_update = self.now;
        let mut written = vec![project.clone()];
        let lineage = project.lineage();
        for mut sub in tx.descendants(&project.id).await? {
            sub.path = rebase(&sub.path, &old_path, &project.path)?;
            sub.ancestors = relocate(&sub.ancestors, old_depth + 1, &lineage)?;
            sub.last_update = self.now;
            written.push(sub);
        }
        for record in &written {
            tx.update(record).await?;
        }
        Ok(Changed {
            project,
            updated: count(written.len()),
        })
    }
}

struct MergeOp {
    source_id: String,
    destination_id: String,
    validate_only: bool,
    now: DateTime<Utc>,
}

#[async_trait]
impl Operation for MergeOp {
    type Output = Merged;

    async fn run(&self, tx: &mut dyn ProjectTx) -> Result<Merged> {
        let source = tx
            .get(&self.source_id)
            .await?
            .ok_or_else(|| not_found(&self.source_id))?;
        let destination = tx
            .get(&self.destination_id)
            .await?
            .ok_or_else(|| not_found(&self.destination_id))?;
        if destination.ancestors.contains(&source.id) {
            return Err(Error::invalid(format!(
                "cannot merge project {} into its sub-project {}",
                source.path, destination.path
            ))
            .with_field("source_id", &source.id)
            .with_field("destination_id", &destination.id));
        }
        let mut children = tx.children(&source.id).await?;
        children.sort_by(|a, b| a.name.cmp(&b.name));
        // The source itself may be a child of the destination; it is deleted
        // first, so its name does not count as taken.
        let taken: HashSet<String> = tx
            .children(&destination.id)
            .await?
            .into_iter()
            .filter(|c| c.id != source.id)
            .map(|c| c.name)
            .collect();
        if let Some(clash) = children.iter().find(|c| taken.contains(&c.name)) {
            return Err(name_taken(&child_path(
                Some(&destination.path),
                &clash.name,
            )));
        }
        let moved_project_ids: Vec<String> = children.into_iter().map(|c| c.id).collect();
        if self.validate_only {
            return Ok(Merged {
                destination,
                moved_project_ids,
                source_deleted: false,
            });
        }

        let subtree = tx.descendants(&source.id).await?;
        tx.delete(std::slice::from_ref(&source.id)).await?;
        let source_depth = source.ancestors.len();
        let lineage = destination.lineage();
        for mut sub in subtree {
            sub.path = rebase(&sub.path, &source.path, &destination.path)?;
            sub.ancestors = relocate(&sub.ancestors, source_depth + 1, &lineage)?;
            if sub.parent_id.as_deref() == Some(source.id.as_str()) {
                sub.parent_id = Some(destination.id.clone());
            }
            sub.last_update = self.now;
            tx.update(&sub).await?;
        }
        Ok(Merged {
            destination,
            moved_project_ids,
            source_deleted: true,
        })
    }
}

struct DeleteOp(DeleteRequest);

#[async_trait]
impl Operation for DeleteOp {
    type Output = Vec<String>;

    async fn run(&self, tx: &mut dyn ProjectTx) -> Result<Vec<String>> {
        let request = &self.0;
        let project = tx
            .get(&request.id)
            .await?
            .ok_or_else(|| not_found(&request.id))?;
        if request.contents_count > 0 && !request.force {
            return Err(Error::new(
                ErrorCode::ProjectNotEmpty,
                format!(
                    "project {} holds {} tasks or models in its subtree; delete with force",
                    project.path, request.contents_count
                ),
            )
            .with_field("id", &project.id)
            .with_field("contents_count", request.contents_count.to_string()));
        }
        let mut subtree = tx.descendants(&project.id).await?;
        subtree.sort_by(|a, b| a.path.cmp(&b.path));
        let ids: Vec<String> = std::iter::once(project.id)
            .chain(subtree.into_iter().map(|p| p.id))
            .collect();
        tx.delete(&ids).await?;
        Ok(ids)
    }
}

// ---------------------------------------------------------------- listing

/// The compiled filters of a list request (everything but the scope).
struct Filter {
    ids: HashSet<String>,
    users: HashSet<String>,
    path: Option<Regex>,
    name: Option<Regex>,
    tags: TagFilter,
    system_tags: TagFilter,
    hide_hidden: bool,
    hide_archived: bool,
}

impl Filter {
    fn compile(query: &ListQuery) -> Result<Filter> {
        Ok(Filter {
            ids: query.ids.iter().cloned().collect(),
            users: query.users.iter().cloned().collect(),
            path: compile_regex("path_regex", &query.path_regex)?,
            name: compile_regex("name_regex", &query.name_regex)?,
            tags: query.tags.clone(),
            system_tags: query.system_tags.clone(),
            hide_hidden: !query.include_hidden && !query.system_tags.asks_for(HIDDEN),
            hide_archived: !query.include_archived && !query.system_tags.asks_for(ARCHIVED),
        })
    }

    fn matches(&self, p: &Project) -> bool {
        (self.ids.is_empty() || self.ids.contains(&p.id))
            && (self.users.is_empty() || self.users.contains(&p.user))
            && self.path.as_ref().is_none_or(|re| re.is_match(&p.path))
            && self.name.as_ref().is_none_or(|re| re.is_match(&p.name))
            && self.tags.matches(&p.tags)
            && self.system_tags.matches(&p.system_tags)
            && !(self.hide_hidden && p.has_system_tag(HIDDEN))
            && !(self.hide_archived && p.has_system_tag(ARCHIVED))
    }
}

fn compile_regex(field: &str, pattern: &str) -> Result<Option<Regex>> {
    if pattern.is_empty() {
        return Ok(None);
    }
    Regex::new(pattern).map(Some).map_err(|err| {
        Error::new(
            ErrorCode::InvalidRegex,
            format!("invalid regular expression in {field}: {err}"),
        )
        .with_field("field", field)
        .with_field("pattern", pattern)
    })
}

/// A field projects can be ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SortField {
    Path,
    Name,
    Created,
    LastUpdate,
    Id,
}

impl SortField {
    fn parse(field: &str) -> Option<SortField> {
        Some(match field {
            "path" => SortField::Path,
            "name" => SortField::Name,
            "created" => SortField::Created,
            "last_update" => SortField::LastUpdate,
            "id" => SortField::Id,
            _ => return None,
        })
    }

    fn value(self, p: &Project) -> KeyValue {
        match self {
            SortField::Path => KeyValue::Text(p.path.clone()),
            SortField::Name => KeyValue::Text(p.name.clone()),
            SortField::Id => KeyValue::Text(p.id.clone()),
            SortField::Created => KeyValue::Time(p.created.timestamp_micros()),
            SortField::LastUpdate => KeyValue::Time(p.last_update.timestamp_micros()),
        }
    }

    fn is_time(self) -> bool {
        matches!(self, SortField::Created | SortField::LastUpdate)
    }
}

/// The ordering keys of a list, `(field, descending)`; the id breaks ties.
type Order = Vec<(SortField, bool)>;

fn parse_order(order_by: &[OrderBy]) -> Result<Order> {
    if order_by.is_empty() {
        return Ok(vec![(SortField::Path, false)]);
    }
    order_by
        .iter()
        .map(|o| {
            SortField::parse(&o.field)
                .map(|f| (f, o.descending))
                .ok_or_else(|| {
                    Error::new(
                        ErrorCode::InvalidOrderBy,
                        format!(
                            "cannot order projects by {:?}; supported: path, name, created, \
                         last_update, id",
                            o.field
                        ),
                    )
                    .with_field("field", &o.field)
                })
        })
        .collect()
}

/// One value of a sort key, as kept in a page token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum KeyValue {
    Text(String),
    /// Microseconds since the epoch.
    Time(i64),
}

impl KeyValue {
    fn cmp_same_kind(&self, other: &KeyValue) -> Ordering {
        match (self, other) {
            (KeyValue::Text(a), KeyValue::Text(b)) => a.cmp(b),
            (KeyValue::Time(a), KeyValue::Time(b)) => a.cmp(b),
            // Cursors are checked against the order when decoded.
            (KeyValue::Text(_), KeyValue::Time(_)) => Ordering::Greater,
            (KeyValue::Time(_), KeyValue::Text(_)) => Ordering::Less,
        }
    }
}

/// The values of `order` for `p`, then its id.
fn sort_key(p: &Project, order: &Order) -> Vec<KeyValue> {
    order
        .iter()
        .map(|(field, _)| field.value(p))
        .chain(std::iter::once(KeyValue::Text(p.id.clone())))
        .collect()
}

fn compare_keys(a: &[KeyValue], b: &[KeyValue], order: &Order) -> Ordering {
    let directions = order
        .iter()
        .map(|(_, descending)| *descending)
        .chain(std::iter::once(false));
    for ((x, y), descending) in a.iter().zip(b).zip(directions) {
        let ord = x.cmp_same_kind(y);
        let ord = if descending { ord.reverse() } else { ord };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

/// Where the next page starts: the key of the last item returned, and a
/// fingerprint of the request it belongs to. Encoded as URL-safe base64 of
/// JSON, which clients treat as opaque.
#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    #[serde(rename = "f")]
    fingerprint: String,
    #[serde(rename = "k")]
    key: Vec<KeyValue>,
}

impl Cursor {
    fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("a cursor always serialises");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    fn decode(token: &str, fingerprint: &str, order: &Order) -> Result<Cursor> {
        let invalid = |why: &str| {
            Error::new(
                ErrorCode::InvalidPageToken,
                format!("invalid page token: {why}"),
            )
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| invalid("not issued by this list"))?;
        let cursor: Cursor =
            serde_json::from_slice(&bytes).map_err(|_| invalid("not issued by this list"))?;
        if cursor.fingerprint != fingerprint {
            return Err(invalid(
                "the request's filters or ordering changed since the first page",
            ));
        }
        let kinds_match = cursor.key.len() == order.len() + 1
            && order
                .iter()
                .zip(&cursor.key)
                .all(|((field, _), value)| field.is_time() == matches!(value, KeyValue::Time(_)))
            && matches!(cursor.key.last(), Some(KeyValue::Text(_)));
        if !kinds_match {
            return Err(invalid("not issued by this list"));
        }
        Ok(cursor)
    }
}

/// A stable digest of everything in a list request but the paging fields,
/// so a token is only accepted by the list that issued it.
fn fingerprint(query: &ListQuery) -> String {
    let canonical = serde_json::to_vec(query).expect("a list query always serialises");
    // FNV-1a: tiny, and stable across processes and releases (unlike
    // `DefaultHasher`), so any replica accepts any replica's token.
    let hash = canonical
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("{hash:016x}")
}

// ---------------------------------------------------------------- rules

/// Splits a full path into its names, each trimmed of white space.
pub(crate) fn parse_path(path: &str) -> Result<Vec<String>> {
    if path.trim().is_empty() {
        return Err(invalid_name(path, "the path is empty"));
    }
    path.split(SEPARATOR)
        .map(|segment| {
            let name = segment.trim();
            if name.is_empty() {
                return Err(invalid_name(
                    path,
                    "a path segment is empty (leading, trailing or doubled '/')",
                ));
            }
            check_name_chars(path, name)?;
            Ok(name.to_owned())
        })
        .collect()
}

/// Validates a leaf name given to a rename.
pub(crate) fn parse_name(name: &str) -> Result<String> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(invalid_name(name, "the name is empty"));
    }
    if trimmed.contains(SEPARATOR) {
        return Err(invalid_name(
            name,
            "a name cannot contain '/'; use MoveProject to change the parent",
        ));
    }
    check_name_chars(name, trimmed)?;
    Ok(trimmed.to_owned())
}

fn check_name_chars(input: &str, name: &str) -> Result<()> {
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(invalid_name(input, "a name is longer than 255 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid_name(input, "a name contains a control character"));
    }
    Ok(())
}

/// Whether `id` has the form of a project id: 32 lowercase hex characters.
pub(crate) fn is_project_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Rejects NUL characters, which PostgreSQL cannot store in text.
fn check_text(field: &str, value: String) -> Result<String> {
    if value.contains('\0') {
        return Err(
            Error::invalid(format!("{field} contains a NUL character")).with_field("field", field)
        );
    }
    Ok(value)
}

/// Deduplicates and sorts tags.
fn normalize_tags(field: &str, tags: Vec<String>) -> Result<Vec<String>> {
    let tags = tags
        .into_iter()
        .map(|t| check_text(field, t))
        .collect::<Result<BTreeSet<_>>>()?;
    Ok(tags.into_iter().collect())
}

/// The path of a child named `name` of the project at `parent` (or of a
/// top-level project).
fn child_path(parent: Option<&str>, name: &str) -> String {
    match parent {
        Some(parent) => format!("{parent}{SEPARATOR}{name}"),
        None => name.to_owned(),
    }
}

/// `path` (which is `old` or below it) with the prefix `old` replaced by `new`.
fn rebase(path: &str, old: &str, new: &str) -> Result<String> {
    match path.strip_prefix(old) {
        Some(rest) => Ok(format!("{new}{rest}")),
        None => Err(corrupt(format!(
            "stored path {path:?} is not below {old:?}"
        ))),
    }
}

/// `ancestors` with its first `depth` entries replaced by `lineage`.
fn relocate(ancestors: &[String], depth: usize, lineage: &[String]) -> Result<Vec<String>> {
    match ancestors.get(depth..) {
        Some(rest) => Ok(lineage.iter().chain(rest).cloned().collect()),
        None => Err(corrupt(format!(
            "stored ancestors {ancestors:?} are shorter than {depth}"
        ))),
    }
}

/// Stored rows that disagree with each other: a bug, reported as internal
/// rather than written further.
fn corrupt(what: String) -> Error {
    Error::internal(what)
}

fn require(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(
            Error::new(ErrorCode::MissingField, format!("{field} is required"))
                .with_field("field", field),
        );
    }
    Ok(())
}

fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// The current time at the precision both databases store.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn not_found(id: &str) -> Error {
    Error::not_found(ErrorCode::ProjectNotFound, "project", id)
}

fn not_found_path(segments: &[String]) -> Error {
    let path = segments.join("/");
    Error::new(
        ErrorCode::ProjectNotFound,
        format!("project not found: {path}"),
    )
    .with_field("path", path)
}

fn name_taken(path: &str) -> Error {
    Error::new(
        ErrorCode::ProjectNameTaken,
        format!("a project named {path} already exists"),
    )
    .with_field("path", path)
}

fn invalid_name(input: &str, why: &str) -> Error {
    Error::new(
        ErrorCode::InvalidProjectName,
        format!("invalid project name {input:?}: {why}"),
    )
    .with_field("name", input)
}

#[cfg(test)]
mod tests;
