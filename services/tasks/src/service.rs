//! The domain core: every operation of the tasks contract on domain types,
//! validated, checked against the state machine ([`crate::state`]) and
//! written through a [`TaskStore`].
//!
//! Every write is optimistic: read the task, compute the new version with a
//! pure function, write it with the store's compare-and-set, and read again
//! when another write came in between. A lifecycle operation whose task
//! changed status in between fails with `task_status_changed` instead of
//! deciding again; an edit, which is valid in more than one status, decides
//! again on the fresh read. Nothing here knows gRPC.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use md5::{Digest, Md5};
use regex::Regex;
use serde_json::Value;
use tasklab_error::{Error, ErrorCode};

use crate::model::{
    ARCHIVED, Container, DEVELOPMENT, Execution, HIDDEN, HyperParams, ModelRef, Output,
    Requirements, Runtime, Script, Sections, Task, TaskModels, TaskStatus, TaskType, Timestamp,
    TypedValues, new_id, normalize_name, normalize_tags, truncate_micros,
};
use crate::state::{self, Decision, StatusOp};
use crate::store::{
    CasOutcome, Cursor, GroupStats, ListQuery, MoveSelector, OrderField, OrderKey, SortValue,
    StatsGroup, TagFilter, TaskFilter, TaskStore, TimeRange,
};

/// Largest batch of ids a batch RPC takes.
pub const MAX_BATCH: usize = 1000;
/// Page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest page size; larger requests are clamped.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// How many times a write is retried after losing a race that did not
/// change the task's status.
const MAX_ATTEMPTS: usize = 16;

/// Where the service reads the time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        chrono::Utc::now()
    }
}

/// Tunables of the service.
#[derive(Debug, Clone, Copy)]
pub struct ServiceConfig {
    /// A worker that reported on a task more recently than this is alive:
    /// RequestStop asks it to stop instead of stopping the task at once.
    pub stop_worker_timeout: chrono::Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            stop_worker_timeout: chrono::Duration::seconds(120),
        }
    }
}

/// A new task, as CreateTask gives it.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    /// Name; trimmed, at least 3 characters.
    pub name: String,
    /// Project; empty for none.
    pub project_id: String,
    /// Type; `None` for `training`.
    pub task_type: Option<TaskType>,
    /// Comment.
    pub comment: String,
    /// User tags.
    pub tags: Vec<String>,
    /// System tags.
    pub system_tags: Vec<String>,
    /// Parent; empty for none.
    pub parent_id: String,
    /// Source code.
    pub script: Script,
    /// Container.
    pub container: Container,
    /// Execution; its queue id is ignored.
    pub execution: Execution,
    /// Output destination.
    pub output_destination: String,
    /// Hyperparameters.
    pub hyperparams: HyperParams,
    /// Configuration objects.
    pub configuration: TypedValues,
    /// User properties.
    pub user_properties: TypedValues,
    /// Run-time values.
    pub runtime: Runtime,
    /// Model references.
    pub models: TaskModels,
}

/// Descriptive fields to change; `None` keeps the stored value.
#[derive(Debug, Clone, Default)]
pub struct TaskUpdate {
    /// New name.
    pub name: Option<String>,
    /// New comment.
    pub comment: Option<String>,
    /// New user tags.
    pub tags: Option<Vec<String>>,
    /// New system tags.
    pub system_tags: Option<Vec<String>>,
    /// New project.
    pub project_id: Option<String>,
}

impl TaskUpdate {
    fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.comment.is_none()
            && self.tags.is_none()
            && self.system_tags.is_none()
            && self.project_id.is_none()
    }
}

/// Sections to replace whole (EditTask); `None` keeps the stored one.
#[derive(Debug, Clone, Default)]
pub struct TaskEdit {
    /// The descriptive fields, with UpdateTask's rules.
    pub descriptive: TaskUpdate,
    /// New type.
    pub task_type: Option<TaskType>,
    /// New parent.
    pub parent_id: Option<String>,
    /// New source code.
    pub script: Option<Script>,
    /// New container.
    pub container: Option<Container>,
    /// New execution; its queue id is ignored.
    pub execution: Option<Execution>,
    /// New output section.
    pub output: Option<Output>,
    /// New hyperparameters.
    pub hyperparams: Option<HyperParams>,
    /// New configuration objects.
    pub configuration: Option<TypedValues>,
    /// New user properties.
    pub user_properties: Option<TypedValues>,
    /// New run-time values.
    pub runtime: Option<Runtime>,
    /// New model references.
    pub models: Option<TaskModels>,
}

impl TaskEdit {
    fn touches_inputs(&self) -> bool {
        self.task_type.is_some()
            || self.parent_id.is_some()
            || self.script.is_some()
            || self.container.is_some()
            || self.execution.is_some()
            || self.output.is_some()
            || self.hyperparams.is_some()
            || self.configuration.is_some()
            || self.user_properties.is_some()
            || self.runtime.is_some()
            || self.models.is_some()
    }
}

/// Options of every status change.
#[derive(Debug, Clone, Default)]
pub struct StatusChange {
    /// Skip the transition table.
    pub force: bool,
    /// New `status_reason`.
    pub reason: String,
    /// New `status_message`.
    pub message: String,
    /// Change only from exactly this status.
    pub expected_status: Option<TaskStatus>,
}

/// The result of a status change.
#[derive(Debug, Clone)]
pub struct Transition {
    /// 1 when the task was written.
    pub updated: u32,
    /// The task after the change.
    pub task: Task,
    /// Its status before.
    pub previous_status: TaskStatus,
    /// The queue the task left, whose entry must go; empty for none.
    pub left_queue_id: String,
}

/// What other services must clean after a reset or delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Output models, now unlinked.
    pub output_model_ids: Vec<String>,
    /// Input models (delete only).
    pub input_model_ids: Vec<String>,
    /// Delete the task's events and metric summaries.
    pub delete_events: bool,
    /// Delete its output artifacts.
    pub delete_output_artifacts: bool,
    /// Delete its input artifacts too.
    pub delete_input_artifacts: bool,
    /// The queue whose entry must go; empty for none.
    pub left_queue_id: String,
}

/// The result of CompleteTask.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The status change.
    pub transition: Transition,
    /// The task was also published.
    pub published: bool,
    /// Output models to publish, with `publish`.
    pub output_model_ids: Vec<String>,
}

/// The result of PublishTask.
#[derive(Debug, Clone)]
pub struct Publication {
    /// The status change.
    pub transition: Transition,
    /// Output models to publish.
    pub output_model_ids: Vec<String>,
}

/// The result of RequestStop.
#[derive(Debug, Clone)]
pub struct StopRequest {
    /// The status change.
    pub transition: Transition,
    /// The task stays `in_progress` until its worker stops it.
    pub stopping: bool,
}

/// The result of ResetTask.
#[derive(Debug, Clone)]
pub struct Reset {
    /// The status change.
    pub transition: Transition,
    /// What to clean elsewhere.
    pub cleanup: Cleanup,
}

/// The result of DeleteTask.
#[derive(Debug, Clone)]
pub struct Deletion {
    /// The status the task had.
    pub previous_status: TaskStatus,
    /// What to clean elsewhere.
    pub cleanup: Cleanup,
}

/// A task that left its queue as a side effect of archiving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dequeued {
    /// The task.
    pub task_id: String,
    /// The queue whose entry must go.
    pub queue_id: String,
}

/// CloneTask's overrides; `None` keeps the source's value.
#[derive(Debug, Clone, Default)]
pub struct CloneTask {
    /// The task to copy.
    pub source_id: String,
    /// Name of the copy.
    pub name: Option<String>,
    /// Comment.
    pub comment: Option<String>,
    /// Project (empty: none).
    pub project_id: Option<String>,
    /// Parent (empty: none); default the source.
    pub parent_id: Option<String>,
    /// User tags.
    pub tags: Option<Vec<String>>,
    /// System tags.
    pub system_tags: Option<Vec<String>>,
    /// Hyperparameters.
    pub hyperparams: Option<HyperParams>,
    /// Configuration objects.
    pub configuration: Option<TypedValues>,
    /// User properties.
    pub user_properties: Option<TypedValues>,
    /// Source code.
    pub script: Option<Script>,
    /// Container.
    pub container: Option<Container>,
    /// Execution; its queue id is ignored.
    pub execution: Option<Execution>,
}

/// A hyperparameter, or a whole section when `name` is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HyperParamKey {
    /// Section.
    pub section: String,
    /// Name; empty for the section.
    pub name: String,
}

/// A ListTasks request, as the caller gave it (patterns and keys are
/// validated here).
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    /// Only these ids.
    pub ids: Vec<String>,
    /// Only these projects.
    pub project_ids: Vec<String>,
    /// Set only by callers that did not expand sub-projects: refused.
    pub include_subprojects: bool,
    /// Pattern on the name.
    pub name_regex: String,
    /// Only these statuses.
    pub statuses: Vec<TaskStatus>,
    /// Only these types.
    pub types: Vec<TaskType>,
    /// User tags.
    pub tags: TagFilter,
    /// System tags.
    pub system_tags: TagFilter,
    /// Only these parents.
    pub parent_ids: Vec<String>,
    /// Only these users.
    pub users: Vec<String>,
    /// Pattern on name, comment and id.
    pub search_text: String,
    /// Exact user property values.
    pub user_properties: BTreeMap<String, String>,
    /// Include archived tasks.
    pub include_archived: bool,
    /// Include hidden tasks.
    pub include_hidden: bool,
    /// Only these queues.
    pub queue_ids: Vec<String>,
    /// Creation interval.
    pub created_within: TimeRange,
    /// Last update interval.
    pub last_update_within: TimeRange,
    /// Page size; 0 for the default.
    pub page_size: u32,
    /// Token of the previous page; empty for the first.
    pub page_token: String,
    /// Count every match.
    pub include_total: bool,
    /// Ordering keys: field name and descending.
    pub order_by: Vec<(String, bool)>,
    /// Sections to load.
    pub sections: Sections,
}

/// One page of ListTasks.
#[derive(Debug, Clone)]
pub struct ListResult {
    /// The tasks.
    pub tasks: Vec<Task>,
    /// Token of the next page; empty on the last.
    pub next_page_token: String,
    /// Number of matches, when asked.
    pub total: Option<u64>,
}

/// The tasks service's domain core.
#[derive(Debug, Clone)]
pub struct TaskService {
    store: Arc<dyn TaskStore>,
    clock: Arc<dyn Clock>,
    config: ServiceConfig,
}

// ---- validation helpers ------------------------------------------------------

fn require(value: &str, field: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(
            Error::new(ErrorCode::MissingField, format!("{field} is required"))
                .with_field("field", field),
        );
    }
    Ok(())
}

fn compile(pattern: &str, field: &str) -> Result<Option<Regex>, Error> {
    if pattern.is_empty() {
        return Ok(None);
    }
    Regex::new(pattern).map(Some).map_err(|e| {
        Error::new(
            ErrorCode::InvalidRegex,
            format!("invalid regular expression in {field}: {e}"),
        )
        .with_field("field", field)
        .with_field("pattern", pattern)
    })
}

fn check_names(values: &TypedValues, what: &str) -> Result<(), Error> {
    if values.keys().any(String::is_empty) {
        return Err(Error::invalid(format!("{what} names must not be empty")));
    }
    Ok(())
}

fn check_hyperparams(params: &HyperParams) -> Result<(), Error> {
    for (section, values) in params {
        if section.is_empty() {
            return Err(Error::invalid(
                "hyperparameter section names must not be empty",
            ));
        }
        check_names(values, "hyperparameter")?;
    }
    Ok(())
}

fn check_model_refs(refs: &[ModelRef], what: &str) -> Result<(), Error> {
    let mut seen = HashSet::new();
    for r in refs {
        if r.name.is_empty() || r.model_id.is_empty() {
            return Err(Error::invalid(format!(
                "{what} model references need a name and a model id"
            )));
        }
        if !seen.insert(r.name.as_str()) {
            return Err(Error::invalid(format!(
                "duplicate {what} model reference name: {}",
                r.name
            )));
        }
    }
    Ok(())
}

fn stamp(refs: &mut [ModelRef], now: Timestamp) {
    for r in refs {
        r.updated = Some(now);
    }
}

fn check_batch(ids: &[String]) -> Result<Vec<String>, Error> {
    if ids.is_empty() {
        return Err(Error::new(ErrorCode::EmptyBatch, "ids must not be empty"));
    }
    if ids.len() > MAX_BATCH {
        return Err(Error::new(
            ErrorCode::TooLarge,
            format!("at most {MAX_BATCH} ids per call"),
        )
        .with_field("max", MAX_BATCH.to_string()));
    }
    if ids.iter().any(String::is_empty) {
        return Err(Error::new(
            ErrorCode::MissingField,
            "ids must not be empty strings",
        ));
    }
    let mut seen = HashSet::new();
    Ok(ids
        .iter()
        .filter(|id| seen.insert(id.as_str()))
        .cloned()
        .collect())
}

fn status_changed_error(id: &str, expected: TaskStatus, current: TaskStatus) -> Error {
    Error::new(
        ErrorCode::TaskStatusChanged,
        format!("task status changed: expected {expected}, found {current}"),
    )
    .with_field("id", id)
    .with_field("expected_status", expected.as_str())
    .with_field("current_status", current.as_str())
}

fn not_found(id: &str) -> Error {
    Error::not_found(ErrorCode::TaskNotFound, "task", id)
}

fn not_draft(task: &Task) -> Error {
    Error::new(
        ErrorCode::TaskNotDraft,
        format!("task is {}, not a draft; use force to edit it", task.status),
    )
    .with_field("id", task.id.as_str())
    .with_field("current_status", task.status.as_str())
}

/// Inputs change only on a draft, or with `force`; never on a locked task.
fn check_inputs_editable(task: &Task, force: bool) -> Result<(), Error> {
    if state::is_locked(task.status) {
        return Err(state::locked(task.status).with_field("id", task.id.as_str()));
    }
    if task.status != TaskStatus::Created && !force {
        return Err(not_draft(task));
    }
    Ok(())
}

/// Descriptive fields and user properties change in every unlocked status;
/// `force` lifts the lock.
fn check_unlocked(task: &Task, force: bool) -> Result<(), Error> {
    if state::is_locked(task.status) && !force {
        return Err(state::locked(task.status).with_field("id", task.id.as_str()));
    }
    Ok(())
}

fn touch(task: &mut Task, now: Timestamp, caller: &str) {
    task.last_update = now;
    task.last_change = Some(now);
    task.last_changed_by = caller.to_owned();
}

fn apply_update(task: &mut Task, update: &TaskUpdate) -> Result<(), Error> {
    if let Some(name) = &update.name {
        task.name = normalize_name(name)?;
    }
    if let Some(comment) = &update.comment {
        task.comment.clone_from(comment);
    }
    if let Some(tags) = &update.tags {
        task.tags = normalize_tags(tags.iter().cloned())?;
    }
    if let Some(tags) = &update.system_tags {
        task.system_tags = normalize_tags(tags.iter().cloned())?;
    }
    if let Some(project) = &update.project_id {
        task.project_id.clone_from(project);
    }
    Ok(())
}

// ---- page tokens -------------------------------------------------------------

const TOKEN_VERSION: u64 = 1;

fn page_token_error(why: &str) -> Error {
    Error::new(
        ErrorCode::InvalidPageToken,
        format!("invalid page token: {why}"),
    )
}

/// A token names the query it belongs to (a digest of filter and order), so
/// a token passed with another query is refused rather than misread.
fn fingerprint(filter: &TaskFilter, order: &[OrderKey], exclusions: &str) -> String {
    let mut hasher = Md5::new();
    hasher.update(format!("{filter:?}|{order:?}|{exclusions}").as_bytes());
    hex::encode(&hasher.finalize()[..8])
}

fn encode_token(print: &str, cursor: &Cursor) -> String {
    let values: Vec<Value> = cursor
        .values
        .iter()
        .map(|v| match v {
            SortValue::Time(t) => t.map_or(Value::Null, Value::from),
            SortValue::Text(s) => Value::from(s.as_str()),
        })
        .collect();
    let json = serde_json::json!({"v": TOKEN_VERSION, "q": print, "k": values});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
}

fn decode_token(token: &str, print: &str, order: &[OrderKey]) -> Result<Cursor, Error> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| page_token_error("not issued by this service"))?;
    let json: Value = serde_json::from_slice(&bytes)
        .map_err(|_| page_token_error("not issued by this service"))?;
    if json.get("v").and_then(Value::as_u64) != Some(TOKEN_VERSION) {
        return Err(page_token_error("unknown version"));
    }
    if json.get("q").and_then(Value::as_str) != Some(print) {
        return Err(page_token_error("issued for another query"));
    }
    let Some(Value::Array(keys)) = json.get("k") else {
        return Err(page_token_error("malformed"));
    };
    if keys.len() != order.len() {
        return Err(page_token_error("malformed"));
    }
    let values = keys
        .iter()
        .zip(order)
        .map(|(v, key)| match (key.field.is_text(), v) {
            (true, Value::String(s)) => Ok(SortValue::Text(s.clone())),
            (false, Value::Null) if key.field.nullable() => Ok(SortValue::Time(None)),
            (false, Value::Number(n)) => n
                .as_i64()
                .map(|t| SortValue::Time(Some(t)))
                .ok_or_else(|| page_token_error("malformed")),
            _ => Err(page_token_error("malformed")),
        })
        .collect::<Result<_, _>>()?;
    Ok(Cursor { values })
}

/// The order of a list: the requested keys up to the first `id`, then `id`
/// (in the direction of the last key) so the order is total.
fn normalize_order(order_by: &[(String, bool)]) -> Result<Vec<OrderKey>, Error> {
    let mut keys = Vec::new();
    let mut seen = HashSet::new();
    for (name, descending) in order_by {
        let field = OrderField::parse(name).ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidOrderBy,
                format!("cannot order tasks by {name:?}"),
            )
            .with_field("field", name.as_str())
        })?;
        if !seen.insert(field) {
            continue;
        }
        keys.push(OrderKey {
            field,
            descending: *descending,
        });
        if field == OrderField::Id {
            return Ok(keys);
        }
    }
    if keys.is_empty() {
        keys.push(OrderKey {
            field: OrderField::Created,
            descending: true,
        });
    }
    let descending = keys.last().is_some_and(|k| k.descending);
    keys.push(OrderKey {
        field: OrderField::Id,
        descending,
    });
    Ok(keys)
}

fn asks_for(filter: &TagFilter, tag: &str) -> bool {
    filter.any_of.iter().chain(&filter.all_of).any(|t| t == tag)
}

// ---- the service ---------------------------------------------------------------

/// How a write ended.
struct Written {
    before: Task,
    after: Task,
    written: bool,
}

impl TaskService {
    /// A service on `store` with the system clock and default settings.
    pub fn new(store: Arc<dyn TaskStore>) -> Self {
        TaskService {
            store,
            clock: Arc::new(SystemClock),
            config: ServiceConfig::default(),
        }
    }

    /// Replaces the clock (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Replaces the settings.
    #[must_use]
    pub fn with_config(mut self, config: ServiceConfig) -> Self {
        self.config = config;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn TaskStore> {
        &self.store
    }

    fn now(&self) -> Timestamp {
        truncate_micros(self.clock.now())
    }

    async fn load(&self, id: &str) -> Result<Task, Error> {
        require(id, "id")?;
        self.store
            .get(id, Sections::ALL)
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// Read, compute, compare-and-set, until the write sticks. `change`
    /// returns `None` when there is nothing to write. With `strict_status`,
    /// a status changed in between is `task_status_changed`; otherwise the
    /// change is computed again on the fresh task.
    async fn modify<F>(&self, id: &str, strict_status: bool, change: F) -> Result<Written, Error>
    where
        F: Fn(&Task, Timestamp) -> Result<Option<Task>, Error>,
    {
        let mut first_status = None;
        for _ in 0..MAX_ATTEMPTS {
            let before = self.load(id).await?;
            if strict_status
                && let Some(first) = first_status
                && first != before.status
            {
                return Err(status_changed_error(id, first, before.status));
            }
            first_status.get_or_insert(before.status);
            let now = self.now();
            let Some(mut after) = change(&before, now)? else {
                return Ok(Written {
                    after: before.clone(),
                    before,
                    written: false,
                });
            };
            match self.store.update(&before, &after).await? {
                CasOutcome::Written => {
                    after.revision = before.revision + 1;
                    return Ok(Written {
                        before,
                        after,
                        written: true,
                    });
                }
                CasOutcome::NotFound => return Err(not_found(id)),
                CasOutcome::StatusChanged(current) if strict_status => {
                    return Err(status_changed_error(id, before.status, current));
                }
                CasOutcome::StatusChanged(_) | CasOutcome::Stale => continue,
            }
        }
        Err(Error::new(
            ErrorCode::TaskStatusChanged,
            "task keeps changing; try again",
        )
        .with_field("id", id))
    }

    /// Like [`TaskService::modify`] for a batch: all tasks are written in one
    /// transaction or none.
    async fn modify_many<F>(&self, ids: &[String], change: F) -> Result<Vec<(Task, Task)>, Error>
    where
        F: Fn(&Task, Timestamp) -> Result<Option<Task>, Error>,
    {
        for _ in 0..MAX_ATTEMPTS {
            let found = self.store.get_many(ids).await?;
            let mut by_id: std::collections::HashMap<String, Task> =
                found.into_iter().map(|t| (t.id.clone(), t)).collect();
            let now = self.now();
            let mut changes = Vec::new();
            for id in ids {
                let before = by_id.remove(id).ok_or_else(|| not_found(id))?;
                if let Some(after) = change(&before, now)? {
                    changes.push((before, after));
                }
            }
            match self.store.update_many(&changes).await? {
                None => {
                    for (before, after) in &mut changes {
                        after.revision = before.revision + 1;
                    }
                    return Ok(changes);
                }
                Some((id, CasOutcome::NotFound)) => return Err(not_found(&id)),
                Some(_) => continue,
            }
        }
        Err(Error::new(
            ErrorCode::TaskStatusChanged,
            "tasks keep changing; try again",
        ))
    }

    // ---- create and read -------------------------------------------------------

    /// CreateTask.
    pub async fn create(&self, caller: &str, new: NewTask) -> Result<Task, Error> {
        let task = self.build_new(caller, new)?;
        self.store.insert(&task).await?;
        Ok(task)
    }

    /// Validates `new` and builds the task CreateTask would insert, without
    /// inserting it (bulk loading uses this with [`TaskStore::insert_many`]).
    pub fn build_new(&self, caller: &str, new: NewTask) -> Result<Task, Error> {
        let name = normalize_name(&new.name)?;
        check_hyperparams(&new.hyperparams)?;
        check_names(&new.configuration, "configuration")?;
        check_names(&new.user_properties, "user property")?;
        check_model_refs(&new.models.input, "input")?;
        check_model_refs(&new.models.output, "output")?;
        let now = self.now();
        let mut task = Task::draft(new_id(), name, caller.to_owned(), now);
        task.project_id = new.project_id;
        task.task_type = new.task_type.unwrap_or(TaskType::Training);
        task.comment = new.comment;
        task.tags = normalize_tags(new.tags)?;
        task.system_tags = normalize_tags(new.system_tags)?;
        task.parent_id = new.parent_id;
        task.script = new.script;
        task.container = new.container;
        task.execution = Execution {
            queue_id: String::new(),
            ..new.execution
        };
        task.output.destination = new.output_destination;
        task.hyperparams = new.hyperparams;
        task.configuration = new.configuration;
        task.user_properties = new.user_properties;
        task.runtime = new.runtime;
        task.models = new.models;
        stamp(&mut task.models.input, now);
        stamp(&mut task.models.output, now);
        Ok(task)
    }

    /// GetTask.
    pub async fn get(&self, id: &str, sections: Sections) -> Result<Task, Error> {
        require(id, "id")?;
        self.store
            .get(id, sections)
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// GetTaskByName.
    pub async fn get_by_name(
        &self,
        project_id: &str,
        name: &str,
        include_archived: bool,
        sections: Sections,
    ) -> Result<Task, Error> {
        let name = name.trim();
        require(name, "name")?;
        self.store
            .get_by_name(project_id, name, include_archived, sections)
            .await?
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::TaskNotFound,
                    format!("no task named {name:?} in the project"),
                )
                .with_field("name", name)
                .with_field("project_id", project_id)
            })
    }

    /// ListTasks.
    pub async fn list(&self, req: ListRequest) -> Result<ListResult, Error> {
        if req.include_subprojects {
            return Err(Error::invalid(
                "include_subprojects must be resolved by the gateway before it reaches the tasks service",
            ));
        }
        let mut system_tags = req.system_tags;
        let mut exclusions = Vec::new();
        if !req.include_archived && !asks_for(&system_tags, ARCHIVED) {
            exclusions.push(ARCHIVED);
        }
        if !req.include_hidden && !asks_for(&system_tags, HIDDEN) {
            exclusions.push(HIDDEN);
        }
        let exclusions_text = exclusions.join(",");
        system_tags
            .none_of
            .extend(exclusions.into_iter().map(str::to_owned));
        let filter = TaskFilter {
            ids: req.ids,
            project_ids: req.project_ids,
            name_regex: compile(&req.name_regex, "name_regex")?,
            statuses: req.statuses,
            types: req.types,
            tags: req.tags,
            system_tags,
            parent_ids: req.parent_ids,
            users: req.users,
            search_text: compile(&req.search_text, "search_text")?,
            user_properties: req.user_properties,
            queue_ids: req.queue_ids,
            created_within: req.created_within,
            last_update_within: req.last_update_within,
        };
        let order = normalize_order(&req.order_by)?;
        let print = fingerprint(&filter, &order, &exclusions_text);
        let after = if req.page_token.is_empty() {
            None
        } else {
            Some(decode_token(&req.page_token, &print, &order)?)
        };
        let limit = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        } as usize;
        let query = ListQuery {
            filter,
            order,
            limit,
            after,
            include_total: req.include_total,
            sections: req.sections,
        };
        let page = self.store.list(&query).await?;
        let next_page_token = page
            .next
            .map(|c| encode_token(&print, &c))
            .unwrap_or_default();
        Ok(ListResult {
            tasks: page.tasks,
            next_page_token,
            total: page.total,
        })
    }

    // ---- edits -----------------------------------------------------------------------

    /// UpdateTask: descriptive fields, in every unlocked status (`force`
    /// lifts the lock). Returns `updated` and the task.
    pub async fn update(
        &self,
        caller: &str,
        id: &str,
        update: TaskUpdate,
        force: bool,
    ) -> Result<(u32, Task), Error> {
        if update.is_empty() {
            return Err(Error::invalid("update_mask must name at least one field"));
        }
        let done = self
            .modify(id, false, |before, now| {
                check_unlocked(before, force)?;
                let mut after = before.clone();
                apply_update(&mut after, &update)?;
                if after == *before {
                    return Ok(None);
                }
                touch(&mut after, now, caller);
                Ok(Some(after))
            })
            .await?;
        Ok((u32::from(done.written), done.after))
    }

    /// EditTask: whole sections; inputs only on a draft or with `force`,
    /// nothing on a locked task.
    pub async fn edit(
        &self,
        caller: &str,
        id: &str,
        edit: TaskEdit,
        force: bool,
    ) -> Result<(u32, Task), Error> {
        if edit.descriptive.is_empty() && !edit.touches_inputs() {
            return Err(Error::invalid("update_mask must name at least one field"));
        }
        if let Some(p) = &edit.hyperparams {
            check_hyperparams(p)?;
        }
        if let Some(c) = &edit.configuration {
            check_names(c, "configuration")?;
        }
        if let Some(p) = &edit.user_properties {
            check_names(p, "user property")?;
        }
        if let Some(m) = &edit.models {
            check_model_refs(&m.input, "input")?;
            check_model_refs(&m.output, "output")?;
        }
        let done = self
            .modify(id, false, |before, now| {
                if state::is_locked(before.status) {
                    return Err(state::locked(before.status).with_field("id", before.id.as_str()));
                }
                if edit.touches_inputs() {
                    check_inputs_editable(before, force)?;
                }
                let mut after = before.clone();
                apply_update(&mut after, &edit.descriptive)?;
                if let Some(t) = edit.task_type {
                    after.task_type = t;
                }
                if let Some(p) = &edit.parent_id {
                    after.parent_id.clone_from(p);
                }
                if let Some(s) = &edit.script {
                    after.script = s.clone();
                }
                if let Some(c) = &edit.container {
                    after.container = c.clone();
                }
                if let Some(e) = &edit.execution {
                    after.execution = Execution {
                        queue_id: before.execution.queue_id.clone(),
                        ..e.clone()
                    };
                }
                if let Some(o) = &edit.output {
                    after.output = o.clone();
                }
                if let Some(h) = &edit.hyperparams {
                    after.hyperparams = h.clone();
                }
                if let Some(c) = &edit.configuration {
                    after.configuration = c.clone();
                }
                if let Some(p) = &edit.user_properties {
                    after.user_properties = p.clone();
                }
                if let Some(r) = &edit.runtime {
                    after.runtime = r.clone();
                }
                if let Some(m) = &edit.models {
                    after.models = m.clone();
                    keep_or_stamp(&mut after.models.input, &before.models.input, now);
                    keep_or_stamp(&mut after.models.output, &before.models.output, now);
                }
                if after == *before {
                    return Ok(None);
                }
                touch(&mut after, now, caller);
                Ok(Some(after))
            })
            .await?;
        Ok((u32::from(done.written), done.after))
    }

    /// Runs an input edit (draft or `force`, never locked) computed by `f`.
    async fn edit_inputs<F>(&self, caller: &str, id: &str, force: bool, f: F) -> Result<u32, Error>
    where
        F: Fn(&mut Task),
    {
        let done = self
            .modify(id, false, |before, now| {
                check_inputs_editable(before, force)?;
                let mut after = before.clone();
                f(&mut after);
                if after == *before {
                    return Ok(None);
                }
                touch(&mut after, now, caller);
                Ok(Some(after))
            })
            .await?;
        Ok(u32::from(done.written))
    }

    /// SetHyperParams.
    pub async fn set_hyperparams(
        &self,
        caller: &str,
        id: &str,
        params: HyperParams,
        replace_sections: bool,
        force: bool,
    ) -> Result<u32, Error> {
        check_hyperparams(&params)?;
        self.edit_inputs(caller, id, force, |task| {
            for (section, values) in &params {
                let stored = task.hyperparams.entry(section.clone()).or_default();
                if replace_sections {
                    stored.clone_from(values);
                } else {
                    stored.extend(values.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        })
        .await
    }

    /// DeleteHyperParams.
    pub async fn delete_hyperparams(
        &self,
        caller: &str,
        id: &str,
        keys: Vec<HyperParamKey>,
        force: bool,
    ) -> Result<u32, Error> {
        if keys.iter().any(|k| k.section.is_empty()) {
            return Err(Error::invalid(
                "hyperparameter section names must not be empty",
            ));
        }
        self.edit_inputs(caller, id, force, |task| {
            for key in &keys {
                if key.name.is_empty() {
                    task.hyperparams.remove(&key.section);
                } else if let Some(section) = task.hyperparams.get_mut(&key.section) {
                    section.remove(&key.name);
                }
            }
        })
        .await
    }

    /// SetConfiguration.
    pub async fn set_configuration(
        &self,
        caller: &str,
        id: &str,
        values: TypedValues,
        replace_all: bool,
        force: bool,
    ) -> Result<u32, Error> {
        check_names(&values, "configuration")?;
        self.edit_inputs(caller, id, force, |task| {
            if replace_all {
                task.configuration.clone_from(&values);
            } else {
                task.configuration
                    .extend(values.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        })
        .await
    }

    /// DeleteConfiguration.
    pub async fn delete_configuration(
        &self,
        caller: &str,
        id: &str,
        names: Vec<String>,
        force: bool,
    ) -> Result<u32, Error> {
        self.edit_inputs(caller, id, force, |task| {
            for name in &names {
                task.configuration.remove(name);
            }
        })
        .await
    }

    /// Runs a user-property edit (every unlocked status; `force` lifts the
    /// lock).
    async fn edit_properties<F>(
        &self,
        caller: &str,
        id: &str,
        force: bool,
        f: F,
    ) -> Result<u32, Error>
    where
        F: Fn(&mut TypedValues),
    {
        let done = self
            .modify(id, false, |before, now| {
                check_unlocked(before, force)?;
                let mut after = before.clone();
                f(&mut after.user_properties);
                if after == *before {
                    return Ok(None);
                }
                touch(&mut after, now, caller);
                Ok(Some(after))
            })
            .await?;
        Ok(u32::from(done.written))
    }

    /// SetUserProperties.
    pub async fn set_user_properties(
        &self,
        caller: &str,
        id: &str,
        values: TypedValues,
        replace_all: bool,
        force: bool,
    ) -> Result<u32, Error> {
        check_names(&values, "user property")?;
        self.edit_properties(caller, id, force, |props| {
            if replace_all {
                props.clone_from(&values);
            } else {
                props.extend(values.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        })
        .await
    }

    /// DeleteUserProperties.
    pub async fn delete_user_properties(
        &self,
        caller: &str,
        id: &str,
        names: Vec<String>,
        force: bool,
    ) -> Result<u32, Error> {
        self.edit_properties(caller, id, force, |props| {
            for name in &names {
                props.remove(name);
            }
        })
        .await
    }

    /// SetRequirements.
    pub async fn set_requirements(
        &self,
        caller: &str,
        id: &str,
        requirements: Requirements,
        force: bool,
    ) -> Result<u32, Error> {
        self.edit_inputs(caller, id, force, |task| {
            task.script.requirements = requirements.clone()
        })
        .await
    }

    /// SetOutputDestination.
    pub async fn set_output_destination(
        &self,
        caller: &str,
        id: &str,
        destination: String,
        force: bool,
    ) -> Result<u32, Error> {
        self.edit_inputs(caller, id, force, |task| {
            task.output.destination.clone_from(&destination)
        })
        .await
    }

    /// SetModels: upserts references by name. Input models are inputs
    /// (draft or `force`); output models are written while a task runs.
    pub async fn set_models(
        &self,
        caller: &str,
        id: &str,
        input: Vec<ModelRef>,
        output: Vec<ModelRef>,
        force: bool,
    ) -> Result<u32, Error> {
        check_model_refs(&input, "input")?;
        check_model_refs(&output, "output")?;
        let done = self
            .modify(id, false, |before, now| {
                if input.is_empty() {
                    check_unlocked(before, false)?;
                } else {
                    check_inputs_editable(before, force)?;
                }
                let mut after = before.clone();
                upsert_refs(&mut after.models.input, &input, now);
                upsert_refs(&mut after.models.output, &output, now);
                if after == *before {
                    return Ok(None);
                }
                touch(&mut after, now, caller);
                Ok(Some(after))
            })
            .await?;
        Ok(u32::from(done.written))
    }

    /// DeleteModels: removes references by name.
    pub async fn delete_models(
        &self,
        caller: &str,
        id: &str,
        input_names: Vec<String>,
        output_names: Vec<String>,
        force: bool,
    ) -> Result<u32, Error> {
        let done = self
            .modify(id, false, |before, now| {
                if input_names.is_empty() {
                    check_unlocked(before, false)?;
                } else {
                    check_inputs_editable(before, force)?;
                }
                let mut after = before.clone();
                after
                    .models
                    .input
                    .retain(|r| !input_names.contains(&r.name));
                after
                    .models
                    .output
                    .retain(|r| !output_names.contains(&r.name));
                if after == *before {
                    return Ok(None);
                }
                touch(&mut after, now, caller);
                Ok(Some(after))
            })
            .await?;
        Ok(u32::from(done.written))
    }

    // ---- batches -----------------------------------------------------------------

    async fn retag(
        &self,
        caller: &str,
        ids: &[String],
        tags: Vec<String>,
        system_tags: Vec<String>,
        add: bool,
    ) -> Result<u32, Error> {
        let ids = check_batch(ids)?;
        let tags = normalize_tags(tags)?;
        let system_tags = normalize_tags(system_tags)?;
        let changes = self
            .modify_many(&ids, |before, now| {
                let mut after = before.clone();
                let edit = |stored: &mut Vec<String>, given: &[String]| {
                    let mut set: BTreeSet<String> = stored.drain(..).collect();
                    for tag in given {
                        if add {
                            set.insert(tag.clone());
                        } else {
                            set.remove(tag);
                        }
                    }
                    stored.extend(set);
                };
                edit(&mut after.tags, &tags);
                edit(&mut after.system_tags, &system_tags);
                if after == *before {
                    return Ok(None);
                }
                touch(&mut after, now, caller);
                Ok(Some(after))
            })
            .await?;
        Ok(changes.len() as u32)
    }

    /// AddTags.
    pub async fn add_tags(
        &self,
        caller: &str,
        ids: &[String],
        tags: Vec<String>,
        system_tags: Vec<String>,
    ) -> Result<u32, Error> {
        self.retag(caller, ids, tags, system_tags, true).await
    }

    /// RemoveTags.
    pub async fn remove_tags(
        &self,
        caller: &str,
        ids: &[String],
        tags: Vec<String>,
        system_tags: Vec<String>,
    ) -> Result<u32, Error> {
        self.retag(caller, ids, tags, system_tags, false).await
    }

    /// MoveTasks: exactly one of `ids` and `from_project_id`.
    pub async fn move_tasks(
        &self,
        caller: &str,
        ids: &[String],
        from_project_id: &str,
        project_id: &str,
    ) -> Result<u32, Error> {
        let selector = match (ids.is_empty(), from_project_id.is_empty()) {
            (false, true) => MoveSelector::Ids(check_batch(ids)?),
            (true, false) => MoveSelector::Project(from_project_id.to_owned()),
            _ => {
                return Err(Error::invalid(
                    "exactly one of ids and from_project_id must be set",
                ));
            }
        };
        self.store
            .move_tasks(&selector, project_id, self.now(), caller)
            .await
    }

    /// ArchiveTasks: adds `archived`; a queued task is dequeued as
    /// DequeueTask does.
    pub async fn archive(
        &self,
        caller: &str,
        ids: &[String],
        reason: &str,
        message: &str,
    ) -> Result<(u32, Vec<Dequeued>), Error> {
        let ids = check_batch(ids)?;
        let changes = self
            .modify_many(&ids, |before, now| {
                if before.has_system_tag(ARCHIVED) {
                    return Ok(None);
                }
                let mut after = before.clone();
                after.system_tags.push(ARCHIVED.to_owned());
                after.system_tags.sort();
                if before.status == TaskStatus::Queued {
                    let to = before.enqueue_status.unwrap_or(TaskStatus::Created);
                    set_status(&mut after, to, reason, message, now);
                    after.execution.queue_id.clear();
                    after.enqueue_status = None;
                }
                touch(&mut after, now, caller);
                Ok(Some(after))
            })
            .await?;
        let dequeued = changes
            .iter()
            .filter(|(b, _)| b.status == TaskStatus::Queued)
            .map(|(b, _)| Dequeued {
                task_id: b.id.clone(),
                queue_id: b.execution.queue_id.clone(),
            })
            .collect();
        Ok((changes.len() as u32, dequeued))
    }

    /// UnarchiveTasks: removes `archived`; the status is unchanged.
    pub async fn unarchive(&self, caller: &str, ids: &[String]) -> Result<u32, Error> {
        let ids = check_batch(ids)?;
        let changes = self
            .modify_many(&ids, |before, now| {
                if !before.has_system_tag(ARCHIVED) {
                    return Ok(None);
                }
                let mut after = before.clone();
                after.system_tags.retain(|t| t != ARCHIVED);
                touch(&mut after, now, caller);
                Ok(Some(after))
            })
            .await?;
        Ok(changes.len() as u32)
    }

    // ---- lifecycle -------------------------------------------------------------------

    /// Runs a status change: checks `expected_status`, decides with the state
    /// machine, applies the common fields and `effects`, and writes with
    /// compare-and-set on the status read.
    async fn transition<O, E>(
        &self,
        caller: &str,
        id: &str,
        opts: &StatusChange,
        op: O,
        effects: E,
    ) -> Result<(Transition, Decision, Task), Error>
    where
        O: Fn(&Task, Timestamp) -> StatusOp,
        E: Fn(&Task, &mut Task, Decision, Timestamp),
    {
        let decision = std::sync::Mutex::new(Decision::Unchanged);
        let done = self
            .modify(id, true, |before, now| {
                if let Some(expected) = opts.expected_status
                    && expected != before.status
                {
                    return Err(status_changed_error(id, expected, before.status));
                }
                let d = state::decide(op(before, now), before.status, opts.force)
                    .map_err(|e| e.with_field("id", id))?;
                *decision
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = d;
                let mut after = before.clone();
                match d {
                    Decision::Unchanged | Decision::Remove => return Ok(None),
                    Decision::Move(to) => {
                        set_status(&mut after, to, &opts.reason, &opts.message, now)
                    }
                    Decision::AskWorker => {
                        after.status_reason.clone_from(&opts.reason);
                        after.status_message = "stopping".to_owned();
                    }
                }
                if after.status != TaskStatus::Queued {
                    after.enqueue_status = None;
                }
                effects(before, &mut after, d, now);
                touch(&mut after, now, caller);
                Ok(Some(after))
            })
            .await?;
        let decision = decision
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A queued task that left its queue, by a status change or a
        // re-enqueue elsewhere: the old entry must go.
        let left_queue_id = if done.written
            && done.before.status == TaskStatus::Queued
            && (done.after.status != TaskStatus::Queued
                || done.after.execution.queue_id != done.before.execution.queue_id)
        {
            done.before.execution.queue_id.clone()
        } else {
            String::new()
        };
        let transition = Transition {
            updated: u32::from(done.written),
            previous_status: done.before.status,
            task: done.after,
            left_queue_id,
        };
        Ok((transition, decision, done.before))
    }

    /// StartTask: `in_progress`, `started` set the first time, the worker
    /// recorded.
    pub async fn start(
        &self,
        caller: &str,
        id: &str,
        opts: &StatusChange,
        worker: &str,
    ) -> Result<Transition, Error> {
        let (t, _, _) = self
            .transition(
                caller,
                id,
                opts,
                |_, _| StatusOp::Start,
                |_, after, _, now| {
                    after.started.get_or_insert(now);
                    if !worker.is_empty() {
                        after.last_worker = worker.to_owned();
                        after.last_worker_report = Some(now);
                    }
                },
            )
            .await?;
        Ok(t)
    }

    /// StopTask: `stopped`, `completed` set.
    pub async fn stop(
        &self,
        caller: &str,
        id: &str,
        opts: &StatusChange,
    ) -> Result<Transition, Error> {
        let (t, _, _) = self
            .transition(
                caller,
                id,
                opts,
                |_, _| StatusOp::Stop,
                |_, after, _, now| {
                    after.completed = Some(now);
                },
            )
            .await?;
        Ok(t)
    }

    /// FailTask: `failed`, `completed` set.
    pub async fn fail(
        &self,
        caller: &str,
        id: &str,
        opts: &StatusChange,
    ) -> Result<Transition, Error> {
        let (t, _, _) = self
            .transition(
                caller,
                id,
                opts,
                |_, _| StatusOp::Fail,
                |_, after, _, now| {
                    after.completed = Some(now);
                },
            )
            .await?;
        Ok(t)
    }

    /// CompleteTask: `completed`, then `published` with `publish`.
    pub async fn complete(
        &self,
        caller: &str,
        id: &str,
        opts: &StatusChange,
        publish: bool,
    ) -> Result<Completion, Error> {
        let (t, _, _) = self
            .transition(
                caller,
                id,
                opts,
                |_, _| StatusOp::Complete { publish },
                |_, after, _, now| {
                    after.completed = Some(now);
                    if publish {
                        after.published = Some(now);
                    }
                },
            )
            .await?;
        let published = t.task.status == TaskStatus::Published;
        let output_model_ids = if publish {
            t.task
                .models
                .output
                .iter()
                .map(|r| r.model_id.clone())
                .collect()
        } else {
            Vec::new()
        };
        Ok(Completion {
            transition: t,
            published,
            output_model_ids,
        })
    }

    /// CloseTask: `closed`.
    pub async fn close(
        &self,
        caller: &str,
        id: &str,
        opts: &StatusChange,
    ) -> Result<Transition, Error> {
        let (t, _, _) = self
            .transition(caller, id, opts, |_, _| StatusOp::Close, |_, _, _, _| {})
            .await?;
        Ok(t)
    }

    /// PublishTask: `published`; already published answers `updated` 0.
    pub async fn publish(
        &self,
        caller: &str,
        id: &str,
        opts: &StatusChange,
    ) -> Result<Publication, Error> {
        let (t, _, _) = self
            .transition(
                caller,
                id,
                opts,
                |_, _| StatusOp::Publish,
                |_, after, _, now| {
                    after.published = Some(now);
                },
            )
            .await?;
        let output_model_ids = t
            .task
            .models
            .output
            .iter()
            .map(|r| r.model_id.clone())
            .collect();
        Ok(Publication {
            transition: t,
            output_model_ids,
        })
    }

    /// RequestStop: a task a live worker runs keeps `in_progress` with the
    /// message `stopping`; any other stops at once.
    pub async fn request_stop(
        &self,
        caller: &str,
        id: &str,
        opts: &StatusChange,
    ) -> Result<StopRequest, Error> {
        let timeout = self.config.stop_worker_timeout;
        let mut opts = opts.clone();
        if opts.message.is_empty() {
            opts.message = if caller.is_empty() {
                "stopped".to_owned()
            } else {
                format!("stopped by {caller}")
            };
        }
        let (t, decision, _) = self
            .transition(
                caller,
                id,
                &opts,
                |task, now| StatusOp::RequestStop {
                    worker_alive: task.status == TaskStatus::InProgress
                        && !task.has_system_tag(DEVELOPMENT)
                        && !task.last_worker.is_empty()
                        && task.last_worker_report.is_some_and(|at| now - at < timeout),
                },
                |_, after, decision, now| {
                    if let Decision::Move(_) = decision {
                        after.completed = Some(now);
                    }
                },
            )
            .await?;
        Ok(StopRequest {
            stopping: decision == Decision::AskWorker,
            transition: t,
        })
    }

    /// ResetTask: back to a draft, run outputs cleared; reports what other
    /// services must clean.
    pub async fn reset(
        &self,
        caller: &str,
        id: &str,
        opts: &StatusChange,
        clear_all: bool,
    ) -> Result<Reset, Error> {
        let (t, _, before) = self
            .transition(
                caller,
                id,
                opts,
                |_, _| StatusOp::Reset,
                |_, after, _, _| {
                    after.started = None;
                    after.completed = None;
                    after.published = None;
                    after.enqueue_status = None;
                    after.execution.queue_id.clear();
                    after.output.result.clear();
                    after.output.error.clear();
                    after.runtime.clear();
                    after.models.output.clear();
                    if clear_all {
                        after.script = Script::default();
                        after.execution = Execution::default();
                    }
                },
            )
            .await?;
        let cleanup = Cleanup {
            output_model_ids: before
                .models
                .output
                .iter()
                .map(|r| r.model_id.clone())
                .collect(),
            input_model_ids: Vec::new(),
            delete_events: true,
            delete_output_artifacts: true,
            delete_input_artifacts: clear_all,
            left_queue_id: t.left_queue_id.clone(),
        };
        Ok(Reset {
            transition: t,
            cleanup,
        })
    }

    /// DeleteTask.
    pub async fn delete(&self, id: &str, force: bool) -> Result<Deletion, Error> {
        for _ in 0..MAX_ATTEMPTS {
            let before = self.load(id).await?;
            state::decide(StatusOp::Delete, before.status, force)
                .map_err(|e| e.with_field("id", id))?;
            match self.store.delete(&before).await? {
                CasOutcome::Written => {
                    let cleanup = Cleanup {
                        output_model_ids: before
                            .models
                            .output
                            .iter()
                            .map(|r| r.model_id.clone())
                            .collect(),
                        input_model_ids: before
                            .models
                            .input
                            .iter()
                            .map(|r| r.model_id.clone())
                            .collect(),
                        delete_events: true,
                        delete_output_artifacts: true,
                        delete_input_artifacts: true,
                        left_queue_id: if before.status == TaskStatus::Queued {
                            before.execution.queue_id.clone()
                        } else {
                            String::new()
                        },
                    };
                    return Ok(Deletion {
                        previous_status: before.status,
                        cleanup,
                    });
                }
                CasOutcome::NotFound => return Err(not_found(id)),
                CasOutcome::StatusChanged(current) => {
                    return Err(status_changed_error(id, before.status, current));
                }
                CasOutcome::Stale => continue,
            }
        }
        Err(Error::new(
            ErrorCode::TaskStatusChanged,
            "task keeps changing; try again",
        )
        .with_field("id", id))
    }

    /// EnqueueTask (the task side): `queued` in `queue_id`.
    pub async fn enqueue(
        &self,
        caller: &str,
        id: &str,
        opts: &StatusChange,
        queue_id: &str,
    ) -> Result<Transition, Error> {
        require(queue_id, "queue_id")?;
        let (t, _, _) = self
            .transition(
                caller,
                id,
                opts,
                |task, _| StatusOp::Enqueue {
                    same_queue: task.status == TaskStatus::Queued
                        && task.execution.queue_id == queue_id,
                },
                |before, after, _, _| {
                    after.enqueue_status = if before.status == TaskStatus::Queued {
                        before.enqueue_status
                    } else {
                        Some(before.status)
                    };
                    after.execution.queue_id = queue_id.to_owned();
                    after.system_tags.retain(|t| t != DEVELOPMENT);
                },
            )
            .await?;
        Ok(t)
    }

    /// DequeueTask (the task side): back to `new_status`, the recorded
    /// enqueue status, or `created`.
    pub async fn dequeue(
        &self,
        caller: &str,
        id: &str,
        opts: &StatusChange,
        new_status: Option<TaskStatus>,
    ) -> Result<Transition, Error> {
        // Dequeueing never checks the table: `force` has no effect.
        let opts = StatusChange {
            force: true,
            ..opts.clone()
        };
        let (mut t, decision, _) = self
            .transition(
                caller,
                id,
                &opts,
                |task, _| StatusOp::Dequeue {
                    new_status,
                    enqueue_status: task.enqueue_status,
                },
                |before, after, _, _| {
                    if before.status == TaskStatus::Queued {
                        after.execution.queue_id.clear();
                        after.enqueue_status = None;
                    }
                },
            )
            .await?;
        if decision != Decision::Unchanged && t.left_queue_id.is_empty() {
            // An in-progress task's safety dequeue: its entry, if any, goes.
            t.left_queue_id = t.task.execution.queue_id.clone();
        }
        Ok(t)
    }

    /// CloneTask: a new draft from a task's inputs.
    pub async fn clone_task(&self, caller: &str, req: CloneTask) -> Result<Task, Error> {
        let name = req.name.as_deref().map(normalize_name).transpose()?;
        if let Some(h) = &req.hyperparams {
            check_hyperparams(h)?;
        }
        if let Some(c) = &req.configuration {
            check_names(c, "configuration")?;
        }
        if let Some(p) = &req.user_properties {
            check_names(p, "user property")?;
        }
        let tags = req.tags.map(normalize_tags).transpose()?;
        let system_tags = req.system_tags.map(normalize_tags).transpose()?;
        let source = self.load(&req.source_id).await?;
        let now = self.now();
        let name = name.unwrap_or_else(|| format!("Clone Of {}", source.name));
        let mut task = Task::draft(new_id(), name, caller.to_owned(), now);
        task.project_id = req.project_id.unwrap_or_else(|| source.project_id.clone());
        task.parent_id = req.parent_id.unwrap_or_else(|| source.id.clone());
        task.comment = req.comment.unwrap_or_else(|| source.comment.clone());
        task.task_type = source.task_type;
        task.tags = tags.unwrap_or_else(|| source.tags.clone());
        task.system_tags = system_tags.unwrap_or_else(|| {
            source
                .system_tags
                .iter()
                .filter(|t| *t != ARCHIVED)
                .cloned()
                .collect()
        });
        task.script = req.script.unwrap_or_else(|| source.script.clone());
        task.container = req.container.unwrap_or_else(|| source.container.clone());
        task.execution = Execution {
            queue_id: String::new(),
            ..req.execution.unwrap_or_else(|| source.execution.clone())
        };
        task.hyperparams = req
            .hyperparams
            .unwrap_or_else(|| source.hyperparams.clone());
        task.configuration = req
            .configuration
            .unwrap_or_else(|| source.configuration.clone());
        task.user_properties = req
            .user_properties
            .unwrap_or_else(|| source.user_properties.clone());
        task.output
            .destination
            .clone_from(&source.output.destination);
        task.models.input.clone_from(&source.models.input);
        self.store.insert(&task).await?;
        Ok(task)
    }

    /// PingTask: `last_update`, and the worker when given.
    pub async fn ping(&self, id: &str, worker: &str) -> Result<Timestamp, Error> {
        require(id, "id")?;
        let now = self.now();
        let worker = (!worker.is_empty()).then_some(worker);
        if self.store.ping(id, now, worker).await? {
            Ok(now)
        } else {
            Err(not_found(id))
        }
    }

    /// GetTaskStats.
    pub async fn stats(
        &self,
        groups: Vec<(String, Vec<String>, bool)>,
        include_archived: bool,
        include_hidden: bool,
    ) -> Result<Vec<GroupStats>, Error> {
        if groups.len() > MAX_BATCH {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!("at most {MAX_BATCH} groups per call"),
            ));
        }
        let mut keys = HashSet::new();
        let mut out = Vec::with_capacity(groups.len());
        for (key, project_ids, include_subprojects) in groups {
            if include_subprojects {
                return Err(Error::invalid(
                    "include_subprojects must be resolved by the gateway before it reaches the tasks service",
                ));
            }
            if project_ids.is_empty() {
                return Err(Error::invalid(format!("group {key:?} has no project ids")));
            }
            if !keys.insert(key.clone()) {
                return Err(Error::invalid(format!("duplicate group key {key:?}")));
            }
            out.push(StatsGroup { key, project_ids });
        }
        let mut exclude = Vec::new();
        if !include_archived {
            exclude.push(ARCHIVED.to_owned());
        }
        if !include_hidden {
            exclude.push(HIDDEN.to_owned());
        }
        self.store.stats(&out, &exclude).await
    }
}

fn set_status(task: &mut Task, to: TaskStatus, reason: &str, message: &str, now: Timestamp) {
    if task.status != to {
        task.status = to;
        task.status_changed = Some(now);
    }
    task.status_reason = reason.to_owned();
    task.status_message = message.to_owned();
}

/// Model references keep their `updated` when unchanged and get `now` when
/// new or changed.
fn keep_or_stamp(refs: &mut [ModelRef], old: &[ModelRef], now: Timestamp) {
    for r in refs {
        r.updated = match old.iter().find(|o| o.name == r.name) {
            Some(o) if o.model_id == r.model_id => o.updated,
            _ => Some(now),
        };
    }
}

fn upsert_refs(stored: &mut Vec<ModelRef>, given: &[ModelRef], now: Timestamp) {
    for r in given {
        match stored.iter_mut().find(|s| s.name == r.name) {
            Some(s) if s.model_id == r.model_id => {}
            Some(s) => {
                s.model_id.clone_from(&r.model_id);
                s.updated = Some(now);
            }
            None => stored.push(ModelRef {
                updated: Some(now),
                ..r.clone()
            }),
        }
    }
}
