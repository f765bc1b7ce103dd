//! Task storage: the [`TaskStore`] trait and its sea-orm implementation
//! [`SqlTaskStore`] for SQLite and PostgreSQL.
//!
//! Writes are compare-and-set: [`TaskStore::update`] writes a task only if
//! its status and revision are still those the caller read, in one
//! `UPDATE ... WHERE id = ? AND status = ? AND revision = ?`, and reports why
//! when it did not ([`CasOutcome`]). Only the columns that changed are
//! written, and the tag and user-property side tables follow the task row in
//! the same transaction.
//!
//! Lists are keyset-paged: the store orders by the requested keys with the
//! id last, and a [`Cursor`] holds the keys of the last task returned, so a
//! page never repeats or skips a task that did not change. Every filter but
//! the regular expressions runs in SQL on indexed columns (tags through
//! `task_tags`); the regular expressions (RE2 syntax) are matched in Rust on
//! the candidates SQL returns, scanned in growing chunks in page order until
//! the page is full. This gives SQLite and PostgreSQL the same regex
//! semantics (the `regex` crate's), where SQLite has no `REGEXP` of its own
//! and PostgreSQL's `~` is a different dialect.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use regex::Regex;
use sea_orm::sea_query::{
    Alias, Cond, Expr, ExprTrait, Func, IntoCondition, Order, Query, SelectStatement, SimpleExpr,
};
use sea_orm::{
    ActiveModelTrait, ActiveValue, ColumnTrait, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, EntityTrait, FromQueryResult, IdenStatic, Iterable,
    ModelTrait, QueryFilter, SqliteTransactionMode, TransactionOptions, TransactionTrait, Value,
};
use tasklab_error::{Error, ErrorCode};

use crate::codec;
use crate::entity::{task_tags, task_user_properties, tasks};
use crate::model::{Sections, Task, TaskStatus, TaskType, Timestamp, from_micros, to_micros};

/// A filter on tags: at least one of `any_of` (when not empty), all of
/// `all_of`, none of `none_of`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagFilter {
    /// At least one of these.
    pub any_of: Vec<String>,
    /// All of these.
    pub all_of: Vec<String>,
    /// None of these.
    pub none_of: Vec<String>,
}

impl TagFilter {
    /// Whether the filter matches every task.
    pub fn is_empty(&self) -> bool {
        self.any_of.is_empty() && self.all_of.is_empty() && self.none_of.is_empty()
    }
}

/// A half-open interval `[start, end)`; an unset bound is open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    /// Inclusive lower bound.
    pub start: Option<Timestamp>,
    /// Exclusive upper bound.
    pub end: Option<Timestamp>,
}

/// Which tasks a list returns. Every filter that is set must match; an empty
/// list filter matches every task. Archived and hidden tasks are not left out
/// here: the service adds the `none_of` tags for that.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only these ids.
    pub ids: Vec<String>,
    /// Only these projects (`""` for none).
    pub project_ids: Vec<String>,
    /// Matched against the name.
    pub name_regex: Option<Regex>,
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
    /// Only these creators.
    pub users: Vec<String>,
    /// Matched against name, comment and id.
    pub search_text: Option<Regex>,
    /// Property name to exact value.
    pub user_properties: BTreeMap<String, String>,
    /// Only these queues.
    pub queue_ids: Vec<String>,
    /// Creation time interval.
    pub created_within: TimeRange,
    /// Last update interval.
    pub last_update_within: TimeRange,
}

impl TaskFilter {
    fn has_regex(&self) -> bool {
        self.name_regex.is_some() || self.search_text.is_some()
    }

    fn matches_regexes(&self, id: &str, name: &str, comment: &str) -> bool {
        if let Some(re) = &self.name_regex
            && !re.is_match(name)
        {
            return false;
        }
        if let Some(re) = &self.search_text
            && !(re.is_match(name) || re.is_match(comment) || re.is_match(id))
        {
            return false;
        }
        true
    }
}

/// A key lists can order by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderField {
    /// Creation time.
    Created,
    /// First start.
    Started,
    /// Last end.
    Completed,
    /// Publication.
    Published,
    /// Last status change.
    StatusChanged,
    /// Last update.
    LastUpdate,
    /// Last change by a caller.
    LastChange,
    /// Name, bytewise.
    Name,
    /// Status name.
    Status,
    /// Type name.
    Type,
    /// Id.
    Id,
}

impl OrderField {
    /// Every key.
    pub const ALL: &'static [OrderField] = &[
        OrderField::Created,
        OrderField::Started,
        OrderField::Completed,
        OrderField::Published,
        OrderField::StatusChanged,
        OrderField::LastUpdate,
        OrderField::LastChange,
        OrderField::Name,
        OrderField::Status,
        OrderField::Type,
        OrderField::Id,
    ];

    /// The field name callers use.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderField::Created => "created",
            OrderField::Started => "started",
            OrderField::Completed => "completed",
            OrderField::Published => "published",
            OrderField::StatusChanged => "status_changed",
            OrderField::LastUpdate => "last_update",
            OrderField::LastChange => "last_change",
            OrderField::Name => "name",
            OrderField::Status => "status",
            OrderField::Type => "type",
            OrderField::Id => "id",
        }
    }

    /// Parses a field name.
    pub fn parse(name: &str) -> Option<OrderField> {
        OrderField::ALL.iter().copied().find(|f| f.as_str() == name)
    }

    fn column(self) -> tasks::Column {
        match self {
            OrderField::Created => tasks::Column::Created,
            OrderField::Started => tasks::Column::Started,
            OrderField::Completed => tasks::Column::Completed,
            OrderField::Published => tasks::Column::Published,
            OrderField::StatusChanged => tasks::Column::StatusChanged,
            OrderField::LastUpdate => tasks::Column::LastUpdate,
            OrderField::LastChange => tasks::Column::LastChange,
            OrderField::Name => tasks::Column::Name,
            OrderField::Status => tasks::Column::Status,
            OrderField::Type => tasks::Column::TaskType,
            OrderField::Id => tasks::Column::Id,
        }
    }

    /// Whether the key is text (else a time).
    pub fn is_text(self) -> bool {
        matches!(
            self,
            OrderField::Name | OrderField::Status | OrderField::Type | OrderField::Id
        )
    }

    /// Whether tasks may have no value (sorted after all others).
    pub fn nullable(self) -> bool {
        matches!(
            self,
            OrderField::Started
                | OrderField::Completed
                | OrderField::Published
                | OrderField::StatusChanged
                | OrderField::LastChange
        )
    }
}

/// One ordering key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderKey {
    /// The key.
    pub field: OrderField,
    /// Largest first.
    pub descending: bool,
}

/// The value of one ordering key for one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortValue {
    /// A time in microseconds, or none.
    Time(Option<i64>),
    /// A text.
    Text(String),
}

/// Where a page ends: the ordering keys of its last task, one per key of the
/// query's order (whose last key is always the id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Key values, in order.
    pub values: Vec<SortValue>,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// Which tasks.
    pub filter: TaskFilter,
    /// Ordering keys; the last one must be [`OrderField::Id`] (unique), so
    /// the order is total.
    pub order: Vec<OrderKey>,
    /// Page size, at least 1.
    pub limit: usize,
    /// Start after this task.
    pub after: Option<Cursor>,
    /// Also count every match.
    pub include_total: bool,
    /// Sections to load.
    pub sections: Sections,
}

/// A page of tasks.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// The tasks, in order.
    pub tasks: Vec<Task>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
    /// Number of matches over all pages, when asked.
    pub total: Option<u64>,
}

/// Why a compare-and-set write did or did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    /// The write happened.
    Written,
    /// The task no longer exists.
    NotFound,
    /// Its status is no longer the one read; here is the current one.
    StatusChanged(TaskStatus),
    /// Same status, but another write came in between: read again.
    Stale,
}

/// Which tasks MoveTasks moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveSelector {
    /// These tasks; every id must exist.
    Ids(Vec<String>),
    /// Every task of this project.
    Project(String),
}

/// A set of projects counted together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsGroup {
    /// The caller's key.
    pub key: String,
    /// Projects of the group (`""` for none).
    pub project_ids: Vec<String>,
}

/// Counts of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// The group's key.
    pub key: String,
    /// Number of tasks.
    pub total: u64,
    /// Per status, in enum order, present statuses only.
    pub by_status: Vec<(TaskStatus, u64)>,
    /// Per type, in enum order, present types only.
    pub by_type: Vec<(TaskType, u64)>,
}

/// Storage of tasks. Implementations keep a task, its tags and its user
/// properties consistent with each other and write atomically.
#[async_trait::async_trait]
pub trait TaskStore: Send + Sync + fmt::Debug {
    /// Inserts a new task.
    async fn insert(&self, task: &Task) -> Result<(), Error>;

    /// Inserts many new tasks in one transaction (bulk loading).
    async fn insert_many(&self, tasks: &[Task]) -> Result<(), Error>;

    /// Reads one task with the given sections.
    async fn get(&self, id: &str, sections: Sections) -> Result<Option<Task>, Error>;

    /// Reads several tasks (every section); unknown ids are left out.
    async fn get_many(&self, ids: &[String]) -> Result<Vec<Task>, Error>;

    /// The task of a project with exactly this name and the latest
    /// `last_update` (then the greatest id).
    async fn get_by_name(
        &self,
        project_id: &str,
        name: &str,
        include_archived: bool,
        sections: Sections,
    ) -> Result<Option<Task>, Error>;

    /// One page of a list.
    async fn list(&self, query: &ListQuery) -> Result<ListPage, Error>;

    /// Writes `after` over `before` if the stored task still has `before`'s
    /// status and revision; bumps the revision.
    async fn update(&self, before: &Task, after: &Task) -> Result<CasOutcome, Error>;

    /// Like [`TaskStore::update`] for several tasks in one transaction: all
    /// are written or none. On failure, the id and outcome of the first
    /// task that could not be written.
    async fn update_many(
        &self,
        changes: &[(Task, Task)],
    ) -> Result<Option<(String, CasOutcome)>, Error>;

    /// Deletes a task if it still has `before`'s status and revision.
    async fn delete(&self, before: &Task) -> Result<CasOutcome, Error>;

    /// Sets `last_update`, and with a worker `last_worker` and
    /// `last_worker_report`; false when the task does not exist.
    async fn ping(&self, id: &str, now: Timestamp, worker: Option<&str>) -> Result<bool, Error>;

    /// Moves tasks to `project_id`, recording the change; returns how many
    /// changed project. Unknown ids fail the whole move with `task_not_found`.
    async fn move_tasks(
        &self,
        selector: &MoveSelector,
        project_id: &str,
        now: Timestamp,
        user: &str,
    ) -> Result<u32, Error>;

    /// Counts tasks per status and type for each group.
    async fn stats(
        &self,
        groups: &[StatsGroup],
        exclude_system_tags: &[String],
    ) -> Result<Vec<GroupStats>, Error>;
}

/// [`TaskStore`] on a sea-orm connection (SQLite or PostgreSQL).
#[derive(Debug, Clone)]
pub struct SqlTaskStore {
    db: DatabaseConnection,
}

impl SqlTaskStore {
    /// A store on an already migrated connection.
    pub fn new(db: DatabaseConnection) -> Self {
        SqlTaskStore { db }
    }

    /// The connection.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// A transaction that writes. On SQLite it takes the write lock at
    /// `BEGIN` (waiting out the busy timeout) so a read inside it can never
    /// be invalidated by another writer before its own write.
    async fn write_txn(&self) -> Result<DatabaseTransaction, Error> {
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        };
        self.db.begin_with_options(options).await.map_err(db_err)
    }
}

fn db_err(err: DbErr) -> Error {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => Error::unavailable("task database", err),
        other => Error::internal(other),
    }
}

fn not_found(id: &str) -> Error {
    Error::not_found(ErrorCode::TaskNotFound, "task", id)
}

// ---- rows <-> tasks -------------------------------------------------------

fn opt_micros(t: Option<Timestamp>) -> Option<i64> {
    t.map(to_micros)
}

fn model_of(task: &Task) -> tasks::Model {
    tasks::Model {
        id: task.id.clone(),
        name: task.name.clone(),
        project_id: task.project_id.clone(),
        task_type: task.task_type.as_str().to_owned(),
        status: task.status.as_str().to_owned(),
        status_reason: task.status_reason.clone(),
        status_message: task.status_message.clone(),
        status_changed: opt_micros(task.status_changed),
        comment: task.comment.clone(),
        tags: codec::encode_tags(&task.tags),
        system_tags: codec::encode_tags(&task.system_tags),
        parent_id: task.parent_id.clone(),
        user_id: task.user.clone(),
        created: to_micros(task.created),
        started: opt_micros(task.started),
        completed: opt_micros(task.completed),
        published: opt_micros(task.published),
        last_update: to_micros(task.last_update),
        last_change: opt_micros(task.last_change),
        last_changed_by: task.last_changed_by.clone(),
        last_worker: task.last_worker.clone(),
        last_worker_report: opt_micros(task.last_worker_report),
        enqueue_status: task
            .enqueue_status
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        queue_id: task.execution.queue_id.clone(),
        output_destination: task.output.destination.clone(),
        output_result: task.output.result.clone(),
        output_error: task.output.error.clone(),
        script: codec::encode_script(&task.script),
        container: codec::encode_container(&task.container),
        execution: codec::encode_execution(&task.execution),
        hyperparams: codec::encode_hyperparams(&task.hyperparams),
        configuration: codec::encode_typed_values(&task.configuration),
        user_properties: codec::encode_typed_values(&task.user_properties),
        runtime: codec::encode_runtime(&task.runtime),
        models: codec::encode_models(&task.models),
        revision: task.revision,
    }
}

fn corrupt(what: &str, value: &str) -> Error {
    Error::internal(std::io::Error::other(format!(
        "stored {what} is unknown: {value:?}"
    )))
}

fn task_of(m: tasks::Model) -> Result<Task, Error> {
    let status = TaskStatus::parse(&m.status).ok_or_else(|| corrupt("status", &m.status))?;
    let task_type = TaskType::parse(&m.task_type).ok_or_else(|| corrupt("type", &m.task_type))?;
    let enqueue_status = if m.enqueue_status.is_empty() {
        None
    } else {
        Some(
            TaskStatus::parse(&m.enqueue_status)
                .ok_or_else(|| corrupt("status", &m.enqueue_status))?,
        )
    };
    let mut execution = codec::decode_execution(&m.execution)?;
    execution.queue_id = m.queue_id;
    Ok(Task {
        id: m.id,
        name: m.name,
        project_id: m.project_id,
        task_type,
        status,
        status_reason: m.status_reason,
        status_message: m.status_message,
        status_changed: m.status_changed.map(from_micros),
        comment: m.comment,
        tags: codec::decode_tags(&m.tags)?,
        system_tags: codec::decode_tags(&m.system_tags)?,
        parent_id: m.parent_id,
        user: m.user_id,
        created: from_micros(m.created),
        started: m.started.map(from_micros),
        completed: m.completed.map(from_micros),
        published: m.published.map(from_micros),
        last_update: from_micros(m.last_update),
        last_change: m.last_change.map(from_micros),
        last_changed_by: m.last_changed_by,
        last_worker: m.last_worker,
        last_worker_report: m.last_worker_report.map(from_micros),
        enqueue_status,
        script: codec::decode_script(&m.script)?,
        container: codec::decode_container(&m.container)?,
        execution,
        output: crate::model::Output {
            destination: m.output_destination,
            result: m.output_result,
            error: m.output_error,
        },
        hyperparams: codec::decode_hyperparams(&m.hyperparams)?,
        configuration: codec::decode_typed_values(&m.configuration)?,
        user_properties: codec::decode_typed_values(&m.user_properties)?,
        runtime: codec::decode_runtime(&m.runtime)?,
        models: codec::decode_models(&m.models)?,
        revision: m.revision,
    })
}

fn section_columns(s: Sections) -> [(tasks::Column, bool); 8] {
    use tasks::Column as C;
    [
        (C::Script, s.script),
        (C::Container, s.container),
        (C::Execution, s.execution),
        (C::Hyperparams, s.hyperparams),
        (C::Configuration, s.configuration),
        (C::UserProperties, s.user_properties),
        (C::Runtime, s.runtime),
        (C::Models, s.models),
    ]
}

/// `SELECT <every column> FROM tasks`, with the sections not asked for
/// replaced by empty text so rows still decode as a whole model.
fn select_tasks(sections: Sections) -> SelectStatement {
    let skipped: HashSet<String> = section_columns(sections)
        .into_iter()
        .filter(|(_, wanted)| !wanted)
        .map(|(c, _)| c.as_str().to_owned())
        .collect();
    let mut select = Query::select();
    select.from(tasks::Entity);
    for col in tasks::Column::iter() {
        if skipped.contains(col.as_str()) {
            select.expr_as(Expr::cust("''"), Alias::new(col.as_str()));
        } else {
            select.column((tasks::Entity, col));
        }
    }
    select
}

fn tcol(c: tasks::Column) -> Expr {
    Expr::col((tasks::Entity, c))
}

async fn fetch_tasks(
    conn: &impl ConnectionTrait,
    select: &SelectStatement,
) -> Result<Vec<Task>, Error> {
    let rows = conn.query_all(select).await.map_err(db_err)?;
    rows.iter()
        .map(|row| {
            tasks::Model::from_query_result(row, "")
                .map_err(db_err)
                .and_then(task_of)
        })
        .collect()
}

// ---- filters ----------------------------------------------------------------

fn tags_subquery(system: bool, tags: &[String]) -> SelectStatement {
    Query::select()
        .column(task_tags::Column::TaskId)
        .from(task_tags::Entity)
        .and_where(Expr::col(task_tags::Column::IsSystem).eq(system))
        .and_where(Expr::col(task_tags::Column::Tag).is_in(tags.iter().cloned()))
        .to_owned()
}

fn tag_condition(system: bool, filter: &TagFilter) -> Cond {
    let mut cond = Cond::all();
    if !filter.any_of.is_empty() {
        cond = cond.add(tcol(tasks::Column::Id).in_subquery(tags_subquery(system, &filter.any_of)));
    }
    for tag in &filter.all_of {
        cond = cond.add(
            tcol(tasks::Column::Id).in_subquery(tags_subquery(system, std::slice::from_ref(tag))),
        );
    }
    if !filter.none_of.is_empty() {
        let correlated = Query::select()
            .expr(Expr::val(1))
            .from(task_tags::Entity)
            .and_where(
                Expr::col((task_tags::Entity, task_tags::Column::TaskId))
                    .equals((tasks::Entity, tasks::Column::Id)),
            )
            .and_where(Expr::col((task_tags::Entity, task_tags::Column::IsSystem)).eq(system))
            .and_where(
                Expr::col((task_tags::Entity, task_tags::Column::Tag))
                    .is_in(filter.none_of.iter().cloned()),
            )
            .to_owned();
        cond = cond.add(Expr::exists(correlated).not());
    }
    cond
}

fn in_list<T: Into<Value>>(c: tasks::Column, values: impl IntoIterator<Item = T>) -> SimpleExpr {
    tcol(c).is_in(values.into_iter().map(Into::into).collect::<Vec<Value>>())
}

fn range_condition(c: tasks::Column, range: &TimeRange) -> Cond {
    let mut cond = Cond::all();
    if let Some(start) = range.start {
        cond = cond.add(tcol(c).gte(to_micros(start)));
    }
    if let Some(end) = range.end {
        cond = cond.add(tcol(c).lt(to_micros(end)));
    }
    cond
}

/// What a regular expression that is a plain literal, maybe anchored, says
/// about the text it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Literal {
    /// `^text$`: equal to it.
    Exact(String),
    /// `text`, `^text` or `text$`: contains it.
    Contains(String),
}

/// The literal a regular expression consists of, for an SQL prefilter on an
/// index or a substring search (the regex still decides on what SQL
/// returns). `None` for anything with a metacharacter or flags.
fn literal_of(re: &Regex) -> Option<Literal> {
    let pattern = re.as_str();
    let (start, rest) = match pattern.strip_prefix('^') {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    // A trailing `$` is an anchor unless escaped.
    let (end, body) = match rest.strip_suffix('$') {
        Some(body) if !body.ends_with('\\') => (true, body),
        _ => (false, rest),
    };
    // Outside a class only these are special; `-`, `#`, `&`, `~` (which
    // `regex::escape` also escapes) are not, and task names are full of `-`.
    if body.is_empty()
        || body.contains([
            '\\', '.', '+', '*', '?', '(', ')', '|', '[', ']', '{', '}', '^', '$',
        ])
    {
        return None;
    }
    Some(if start && end {
        Literal::Exact(body.to_owned())
    } else {
        Literal::Contains(body.to_owned())
    })
}

/// `col` contains `text`, case-sensitively, on either backend.
fn contains(backend: DbBackend, c: tasks::Column, text: &str) -> SimpleExpr {
    let name = if backend == DbBackend::Postgres {
        "strpos"
    } else {
        "instr"
    };
    Expr::expr(Func::cust(Alias::new(name)).arg(tcol(c)).arg(text)).gt(0)
}

/// SQL conditions implied by the regular expressions that are literals.
fn regex_prefilter(backend: DbBackend, f: &TaskFilter) -> Cond {
    use tasks::Column as C;
    let mut cond = Cond::all();
    if let Some(literal) = f.name_regex.as_ref().and_then(literal_of) {
        cond = cond.add(match literal {
            Literal::Exact(text) => tcol(C::Name).eq(text),
            Literal::Contains(text) => contains(backend, C::Name, &text),
        });
    }
    if let Some(Literal::Exact(text) | Literal::Contains(text)) =
        f.search_text.as_ref().and_then(literal_of)
    {
        cond = cond.add(
            Cond::any()
                .add(contains(backend, C::Name, &text))
                .add(contains(backend, C::Comment, &text))
                .add(contains(backend, C::Id, &text)),
        );
    }
    cond
}

fn filter_condition(backend: DbBackend, f: &TaskFilter) -> Cond {
    use tasks::Column as C;
    let mut cond = regex_prefilter(backend, f);
    if !f.ids.is_empty() {
        cond = cond.add(in_list(C::Id, f.ids.iter().cloned()));
    }
    if !f.project_ids.is_empty() {
        cond = cond.add(in_list(C::ProjectId, f.project_ids.iter().cloned()));
    }
    if !f.statuses.is_empty() {
        cond = cond.add(in_list(C::Status, f.statuses.iter().map(|s| s.as_str())));
    }
    if !f.types.is_empty() {
        cond = cond.add(in_list(C::TaskType, f.types.iter().map(|t| t.as_str())));
    }
    if !f.parent_ids.is_empty() {
        cond = cond.add(in_list(C::ParentId, f.parent_ids.iter().cloned()));
    }
    if !f.users.is_empty() {
        cond = cond.add(in_list(C::UserId, f.users.iter().cloned()));
    }
    if !f.queue_ids.is_empty() {
        cond = cond.add(in_list(C::QueueId, f.queue_ids.iter().cloned()));
    }
    cond = cond
        .add(tag_condition(false, &f.tags))
        .add(tag_condition(true, &f.system_tags));
    for (name, value) in &f.user_properties {
        let sub = Query::select()
            .column(task_user_properties::Column::TaskId)
            .from(task_user_properties::Entity)
            .and_where(Expr::col(task_user_properties::Column::Name).eq(name.as_str()))
            .and_where(Expr::col(task_user_properties::Column::Value).eq(value.as_str()))
            .to_owned();
        cond = cond.add(tcol(C::Id).in_subquery(sub));
    }
    cond.add(range_condition(C::Created, &f.created_within))
        .add(range_condition(C::LastUpdate, &f.last_update_within))
}

// ---- keyset paging ----------------------------------------------------------

fn sort_value_expr(v: &SortValue) -> Option<Expr> {
    match v {
        SortValue::Time(Some(t)) => Some(Expr::val(*t)),
        SortValue::Time(None) => None,
        SortValue::Text(s) => Some(Expr::val(s.as_str())),
    }
}

/// `key == value`, NULL-aware.
fn key_equals(key: &OrderKey, value: &SortValue) -> Cond {
    let col = tcol(key.field.column());
    match sort_value_expr(value) {
        Some(v) => col.eq(v).into_condition(),
        None => col.is_null().into_condition(),
    }
}

/// `key` sorts strictly after `value` (unset values sort last either way).
fn key_after(key: &OrderKey, value: &SortValue) -> Cond {
    let col = tcol(key.field.column());
    match sort_value_expr(value) {
        // Nothing sorts after an unset value but other unset values, which tie.
        None => Expr::val(1).eq(0).into_condition(),
        Some(v) => {
            let beyond = if key.descending {
                col.clone().lt(v)
            } else {
                col.clone().gt(v)
            };
            if key.field.nullable() {
                Cond::any().add(beyond).add(col.is_null())
            } else {
                beyond.into_condition()
            }
        }
    }
}

/// Rows strictly after the cursor in the query's order:
/// `k1 > v1 OR (k1 = v1 AND k2 > v2) OR ...`, plus the redundant bound
/// `k1 >= v1` that lets the database start an index range scan at the
/// cursor instead of skipping every row before it.
fn keyset_condition(order: &[OrderKey], cursor: &Cursor) -> Cond {
    let mut any = Cond::any();
    for (i, key) in order.iter().enumerate() {
        let mut all = Cond::all();
        for (prev, value) in order.iter().zip(&cursor.values).take(i) {
            all = all.add(key_equals(prev, value));
        }
        all = all.add(key_after(key, &cursor.values[i]));
        any = any.add(all);
    }
    let (Some(first), Some(value)) = (order.first(), cursor.values.first()) else {
        return any;
    };
    let col = tcol(first.field.column());
    let bound = match sort_value_expr(value) {
        None => col.is_null().into_condition(),
        Some(v) => {
            let from = if first.descending {
                col.clone().lte(v)
            } else {
                col.clone().gte(v)
            };
            if first.field.nullable() {
                Cond::any().add(from).add(col.is_null())
            } else {
                from.into_condition()
            }
        }
    };
    Cond::all().add(bound).add(any)
}

fn apply_order(select: &mut SelectStatement, order: &[OrderKey]) {
    for key in order {
        if key.field.nullable() {
            select.order_by_expr(tcol(key.field.column()).is_null(), Order::Asc);
        }
        let dir = if key.descending {
            Order::Desc
        } else {
            Order::Asc
        };
        select.order_by((tasks::Entity, key.field.column()), dir);
    }
}

fn sort_values(row: &sea_orm::QueryResult, order: &[OrderKey]) -> Result<Vec<SortValue>, Error> {
    order
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let alias = format!("k{i}");
            if key.field.is_text() {
                row.try_get::<String>("", &alias).map(SortValue::Text)
            } else {
                row.try_get::<Option<i64>>("", &alias).map(SortValue::Time)
            }
            .map_err(db_err)
        })
        .collect()
}

/// Candidates read by the first chunk of a regex-filtered list. Large
/// enough that a selective SQL filter usually needs one round trip (a
/// database that sorts every candidate pays for that once per chunk), small
/// enough to stay cheap when nearly every candidate matches.
const FIRST_CHUNK: usize = 2048;
/// Largest chunk; chunks grow fourfold up to it.
const MAX_CHUNK: usize = 32768;

/// Ids and sort keys of the page (`limit + 1` tasks at most, to tell
/// whether another page follows), in order.
async fn page_keys(
    conn: &impl ConnectionTrait,
    q: &ListQuery,
) -> Result<Vec<(String, Vec<SortValue>)>, Error> {
    let f = &q.filter;
    let regex = f.has_regex();
    let want = q.limit + 1;
    let mut base = Query::select();
    base.from(tasks::Entity)
        .column((tasks::Entity, tasks::Column::Id))
        .cond_where(filter_condition(conn.get_database_backend(), f));
    if regex {
        base.column((tasks::Entity, tasks::Column::Name));
        if f.search_text.is_some() {
            base.column((tasks::Entity, tasks::Column::Comment));
        }
    }
    for (i, key) in q.order.iter().enumerate() {
        base.expr_as(tcol(key.field.column()), Alias::new(format!("k{i}")));
    }
    apply_order(&mut base, &q.order);

    let mut matched = Vec::with_capacity(want);
    let mut cursor = q.after.clone();
    let mut chunk = if regex {
        FIRST_CHUNK.max(want * 8)
    } else {
        want
    };
    loop {
        let mut select = base.clone();
        if let Some(c) = &cursor {
            select.cond_where(keyset_condition(&q.order, c));
        }
        select.limit(chunk as u64);
        let rows = conn.query_all(&select).await.map_err(db_err)?;
        let scanned = rows.len();
        let mut last = None;
        for row in &rows {
            let id: String = row.try_get("", "id").map_err(db_err)?;
            let values = sort_values(row, &q.order)?;
            let keep = !regex || {
                let name: String = row.try_get("", "name").map_err(db_err)?;
                let comment: String = if f.search_text.is_some() {
                    row.try_get("", "comment").map_err(db_err)?
                } else {
                    String::new()
                };
                f.matches_regexes(&id, &name, &comment)
            };
            if keep {
                matched.push((id, values.clone()));
                if matched.len() == want {
                    return Ok(matched);
                }
            }
            last = Some(values);
        }
        match last {
            Some(values) if scanned == chunk => {
                cursor = Some(Cursor { values });
                chunk = (chunk * 4).min(MAX_CHUNK);
            }
            _ => return Ok(matched),
        }
    }
}

/// Number of tasks matching `f` over all pages.
async fn count(conn: &impl ConnectionTrait, f: &TaskFilter) -> Result<u64, Error> {
    let backend = conn.get_database_backend();
    if !f.has_regex() {
        let select = Query::select()
            .expr_as(
                Expr::col((tasks::Entity, tasks::Column::Id)).count(),
                Alias::new("n"),
            )
            .from(tasks::Entity)
            .cond_where(filter_condition(backend, f))
            .to_owned();
        let row = conn.query_one(&select).await.map_err(db_err)?;
        let n: i64 = match row {
            Some(row) => row.try_get("", "n").map_err(db_err)?,
            None => 0,
        };
        return Ok(u64::try_from(n).unwrap_or_default());
    }
    let mut select = Query::select();
    select
        .from(tasks::Entity)
        .columns([
            (tasks::Entity, tasks::Column::Id),
            (tasks::Entity, tasks::Column::Name),
            (tasks::Entity, tasks::Column::Comment),
        ])
        .cond_where(filter_condition(backend, f));
    let rows = conn.query_all(&select).await.map_err(db_err)?;
    let mut n = 0;
    for row in &rows {
        let id: String = row.try_get("", "id").map_err(db_err)?;
        let name: String = row.try_get("", "name").map_err(db_err)?;
        let comment: String = row.try_get("", "comment").map_err(db_err)?;
        if f.matches_regexes(&id, &name, &comment) {
            n += 1;
        }
    }
    Ok(n)
}

// ---- writes -------------------------------------------------------------------

fn tag_rows(task: &Task) -> Vec<task_tags::ActiveModel> {
    let user = task.tags.iter().map(|t| (false, t));
    let system = task.system_tags.iter().map(|t| (true, t));
    user.chain(system)
        .map(|(is_system, tag)| task_tags::ActiveModel {
            task_id: ActiveValue::Set(task.id.clone()),
            is_system: ActiveValue::Set(is_system),
            tag: ActiveValue::Set(tag.clone()),
        })
        .collect()
}

fn property_rows(task: &Task) -> Vec<task_user_properties::ActiveModel> {
    task.user_properties
        .iter()
        .map(|(name, v)| task_user_properties::ActiveModel {
            task_id: ActiveValue::Set(task.id.clone()),
            name: ActiveValue::Set(name.clone()),
            value: ActiveValue::Set(v.value.clone()),
        })
        .collect()
}

/// Rows per multi-row INSERT, under both backends' bound-parameter limits.
const INSERT_BATCH: usize = 400;

async fn insert_tag_rows(
    txn: &DatabaseTransaction,
    rows: Vec<task_tags::ActiveModel>,
) -> Result<(), Error> {
    for batch in rows.chunks(INSERT_BATCH * 4) {
        task_tags::Entity::insert_many(batch.to_vec())
            .exec_without_returning(txn)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

async fn insert_property_rows(
    txn: &DatabaseTransaction,
    rows: Vec<task_user_properties::ActiveModel>,
) -> Result<(), Error> {
    for batch in rows.chunks(INSERT_BATCH * 4) {
        task_user_properties::Entity::insert_many(batch.to_vec())
            .exec_without_returning(txn)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

async fn cas_update(
    txn: &DatabaseTransaction,
    before: &Task,
    after: &Task,
) -> Result<CasOutcome, Error> {
    let old = model_of(before);
    let new = model_of(after);
    let mut changes = <tasks::ActiveModel as ActiveModelTrait>::default();
    for col in tasks::Column::iter() {
        let value = new.get(col);
        if old.get(col) != value {
            changes.set(col, value);
        }
    }
    changes.set(tasks::Column::Revision, Value::from(before.revision + 1));
    let result = tasks::Entity::update_many()
        .set(changes)
        .filter(tasks::Column::Id.eq(before.id.as_str()))
        .filter(tasks::Column::Status.eq(before.status.as_str()))
        .filter(tasks::Column::Revision.eq(before.revision))
        .exec(txn)
        .await
        .map_err(db_err)?;
    if result.rows_affected == 0 {
        return why_not(txn, before).await;
    }
    if before.tags != after.tags || before.system_tags != after.system_tags {
        task_tags::Entity::delete_many()
            .filter(task_tags::Column::TaskId.eq(before.id.as_str()))
            .exec(txn)
            .await
            .map_err(db_err)?;
        insert_tag_rows(txn, tag_rows(after)).await?;
    }
    if before.user_properties != after.user_properties {
        task_user_properties::Entity::delete_many()
            .filter(task_user_properties::Column::TaskId.eq(before.id.as_str()))
            .exec(txn)
            .await
            .map_err(db_err)?;
        insert_property_rows(txn, property_rows(after)).await?;
    }
    Ok(CasOutcome::Written)
}

/// Classifies a compare-and-set that touched no row.
async fn why_not(conn: &impl ConnectionTrait, before: &Task) -> Result<CasOutcome, Error> {
    let select = Query::select()
        .columns([tasks::Column::Status, tasks::Column::Revision])
        .from(tasks::Entity)
        .and_where(tcol(tasks::Column::Id).eq(before.id.as_str()))
        .to_owned();
    let Some(row) = conn.query_one(&select).await.map_err(db_err)? else {
        return Ok(CasOutcome::NotFound);
    };
    let status: String = row.try_get("", "status").map_err(db_err)?;
    let status = TaskStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?;
    Ok(if status == before.status {
        CasOutcome::Stale
    } else {
        CasOutcome::StatusChanged(status)
    })
}

#[async_trait::async_trait]
impl TaskStore for SqlTaskStore {
    async fn insert(&self, task: &Task) -> Result<(), Error> {
        self.insert_many(std::slice::from_ref(task)).await
    }

    async fn insert_many(&self, batch: &[Task]) -> Result<(), Error> {
        if batch.is_empty() {
            return Ok(());
        }
        let txn = self.write_txn().await?;
        for chunk in batch.chunks(INSERT_BATCH) {
            let rows: Vec<tasks::ActiveModel> = chunk
                .iter()
                .map(|t| tasks::ActiveModel::from(model_of(t)))
                .collect();
            tasks::Entity::insert_many(rows)
                .exec_without_returning(&txn)
                .await
                .map_err(db_err)?;
        }
        insert_tag_rows(&txn, batch.iter().flat_map(tag_rows).collect()).await?;
        insert_property_rows(&txn, batch.iter().flat_map(property_rows).collect()).await?;
        txn.commit().await.map_err(db_err)
    }

    async fn get(&self, id: &str, sections: Sections) -> Result<Option<Task>, Error> {
        let mut select = select_tasks(sections);
        select.and_where(tcol(tasks::Column::Id).eq(id));
        Ok(fetch_tasks(&self.db, &select).await?.into_iter().next())
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<Task>, Error> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(INSERT_BATCH * 2) {
            let mut select = select_tasks(Sections::ALL);
            select.and_where(in_list(tasks::Column::Id, chunk.iter().cloned()));
            out.extend(fetch_tasks(&self.db, &select).await?);
        }
        Ok(out)
    }

    async fn get_by_name(
        &self,
        project_id: &str,
        name: &str,
        include_archived: bool,
        sections: Sections,
    ) -> Result<Option<Task>, Error> {
        let mut select = select_tasks(sections);
        select
            .and_where(tcol(tasks::Column::ProjectId).eq(project_id))
            .and_where(tcol(tasks::Column::Name).eq(name));
        if !include_archived {
            let archived = TagFilter {
                none_of: vec![crate::model::ARCHIVED.to_owned()],
                ..TagFilter::default()
            };
            select.cond_where(tag_condition(true, &archived));
        }
        select
            .order_by((tasks::Entity, tasks::Column::LastUpdate), Order::Desc)
            .order_by((tasks::Entity, tasks::Column::Id), Order::Desc)
            .limit(1);
        Ok(fetch_tasks(&self.db, &select).await?.into_iter().next())
    }

    async fn list(&self, q: &ListQuery) -> Result<ListPage, Error> {
        debug_assert_eq!(q.order.last().map(|k| k.field), Some(OrderField::Id));
        // One read transaction: every chunk, the page and the total see the
        // same snapshot.
        let txn = self.db.begin().await.map_err(db_err)?;
        if txn.get_database_backend() == DbBackend::Postgres {
            // sqlx prepares and caches statements; after a few runs
            // PostgreSQL would switch to a generic plan that ignores which
            // tags and statuses are asked for, and often pick a poor one.
            txn.execute_unprepared("SET LOCAL plan_cache_mode = force_custom_plan")
                .await
                .map_err(db_err)?;
        }
        let mut keys = page_keys(&txn, q).await?;
        let next = if keys.len() > q.limit {
            keys.truncate(q.limit);
            keys.last().map(|(_, values)| Cursor {
                values: values.clone(),
            })
        } else {
            None
        };
        let mut tasks = Vec::with_capacity(keys.len());
        if !keys.is_empty() {
            let mut select = select_tasks(q.sections);
            select.and_where(in_list(
                tasks::Column::Id,
                keys.iter().map(|(id, _)| id.clone()),
            ));
            let mut by_id: HashMap<String, Task> = fetch_tasks(&txn, &select)
                .await?
                .into_iter()
                .map(|t| (t.id.clone(), t))
                .collect();
            tasks.extend(keys.iter().filter_map(|(id, _)| by_id.remove(id)));
        }
        let total = if q.include_total {
            Some(count(&txn, &q.filter).await?)
        } else {
            None
        };
        txn.commit().await.map_err(db_err)?;
        Ok(ListPage { tasks, next, total })
    }

    async fn update(&self, before: &Task, after: &Task) -> Result<CasOutcome, Error> {
        let txn = self.write_txn().await?;
        let outcome = cas_update(&txn, before, after).await?;
        if outcome == CasOutcome::Written {
            txn.commit().await.map_err(db_err)?;
        } else {
            txn.rollback().await.map_err(db_err)?;
        }
        Ok(outcome)
    }

    async fn update_many(
        &self,
        changes: &[(Task, Task)],
    ) -> Result<Option<(String, CasOutcome)>, Error> {
        let txn = self.write_txn().await?;
        for (before, after) in changes {
            let outcome = cas_update(&txn, before, after).await?;
            if outcome != CasOutcome::Written {
                txn.rollback().await.map_err(db_err)?;
                return Ok(Some((before.id.clone(), outcome)));
            }
        }
        txn.commit().await.map_err(db_err)?;
        Ok(None)
    }

    async fn delete(&self, before: &Task) -> Result<CasOutcome, Error> {
        let txn = self.write_txn().await?;
        task_tags::Entity::delete_many()
            .filter(task_tags::Column::TaskId.eq(before.id.as_str()))
            .exec(&txn)
            .await
            .map_err(db_err)?;
        task_user_properties::Entity::delete_many()
            .filter(task_user_properties::Column::TaskId.eq(before.id.as_str()))
            .exec(&txn)
            .await
            .map_err(db_err)?;
        let result = tasks::Entity::delete_many()
            .filter(tasks::Column::Id.eq(before.id.as_str()))
            .filter(tasks::Column::Status.eq(before.status.as_str()))
            .filter(tasks::Column::Revision.eq(before.revision))
            .exec(&txn)
            .await
            .map_err(db_err)?;
        if result.rows_affected == 0 {
            let outcome = why_not(&txn, before).await?;
            txn.rollback().await.map_err(db_err)?;
            return Ok(outcome);
        }
        txn.commit().await.map_err(db_err)?;
        Ok(CasOutcome::Written)
    }

    async fn ping(&self, id: &str, now: Timestamp, worker: Option<&str>) -> Result<bool, Error> {
        let mut update = tasks::Entity::update_many()
            .col_expr(tasks::Column::LastUpdate, Expr::val(to_micros(now)))
            .filter(tasks::Column::Id.eq(id));
        if let Some(worker) = worker {
            update = update
                .col_expr(tasks::Column::LastWorker, Expr::val(worker))
                .col_expr(tasks::Column::LastWorkerReport, Expr::val(to_micros(now)));
        }
        let result = update.exec(&self.db).await.map_err(db_err)?;
        Ok(result.rows_affected > 0)
    }

    async fn move_tasks(
        &self,
        selector: &MoveSelector,
        project_id: &str,
        now: Timestamp,
        user: &str,
    ) -> Result<u32, Error> {
        let txn = self.write_txn().await?;
        let scope = match selector {
            MoveSelector::Ids(ids) => {
                let select = Query::select()
                    .column(tasks::Column::Id)
                    .from(tasks::Entity)
                    .and_where(in_list(tasks::Column::Id, ids.iter().cloned()))
                    .to_owned();
                let rows = txn.query_all(&select).await.map_err(db_err)?;
                let found: HashSet<String> = rows
                    .iter()
                    .filter_map(|r| r.try_get::<String>("", "id").ok())
                    .collect();
                if let Some(missing) = ids.iter().find(|id| !found.contains(*id)) {
                    txn.rollback().await.map_err(db_err)?;
                    return Err(not_found(missing));
                }
                tasks::Column::Id.is_in(ids.iter().cloned())
            }
            MoveSelector::Project(from) => tasks::Column::ProjectId.eq(from.as_str()),
        };
        let now = to_micros(now);
        let result = tasks::Entity::update_many()
            .col_expr(tasks::Column::ProjectId, Expr::val(project_id))
            .col_expr(tasks::Column::LastUpdate, Expr::val(now))
            .col_expr(tasks::Column::LastChange, Expr::val(now))
            .col_expr(tasks::Column::LastChangedBy, Expr::val(user))
            .col_expr(
                tasks::Column::Revision,
                Expr::col(tasks::Column::Revision).add(1),
            )
            .filter(scope)
            .filter(tasks::Column::ProjectId.ne(project_id))
            .exec(&txn)
            .await
            .map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        Ok(u32::try_from(result.rows_affected).unwrap_or(u32::MAX))
    }

    async fn stats(
        &self,
        groups: &[StatsGroup],
        exclude_system_tags: &[String],
    ) -> Result<Vec<GroupStats>, Error> {
        let projects: Vec<String> = groups
            .iter()
            .flat_map(|g| g.project_ids.iter().cloned())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        // project -> (status, type) -> count
        let mut counts: HashMap<String, HashMap<(String, String), u64>> = HashMap::new();
        for chunk in projects.chunks(INSERT_BATCH * 2) {
            let exclude = TagFilter {
                none_of: exclude_system_tags.to_vec(),
                ..TagFilter::default()
            };
            let select = Query::select()
                .columns([
                    tasks::Column::ProjectId,
                    tasks::Column::Status,
                    tasks::Column::TaskType,
                ])
                .expr_as(Func::count(Expr::col(tasks::Column::Id)), Alias::new("n"))
                .from(tasks::Entity)
                .and_where(in_list(tasks::Column::ProjectId, chunk.iter().cloned()))
                .cond_where(tag_condition(true, &exclude))
                .group_by_columns([
                    tasks::Column::ProjectId,
                    tasks::Column::Status,
                    tasks::Column::TaskType,
                ])
                .to_owned();
            for row in self.db.query_all(&select).await.map_err(db_err)? {
                let project: String = row.try_get("", "project_id").map_err(db_err)?;
                let status: String = row.try_get("", "status").map_err(db_err)?;
                let task_type: String = row.try_get("", "task_type").map_err(db_err)?;
                let n: i64 = row.try_get("", "n").map_err(db_err)?;
                *counts
                    .entry(project)
                    .or_default()
                    .entry((status, task_type))
                    .or_default() += u64::try_from(n).unwrap_or_default();
            }
        }
        let mut out = Vec::with_capacity(groups.len());
        for group in groups {
            let mut by_status: BTreeMap<TaskStatus, u64> = BTreeMap::new();
            let mut by_type: BTreeMap<TaskType, u64> = BTreeMap::new();
            let mut total = 0;
            let unique: HashSet<&String> = group.project_ids.iter().collect();
            for project in unique {
                for ((status, task_type), n) in counts.get(project).into_iter().flatten() {
                    let status =
                        TaskStatus::parse(status).ok_or_else(|| corrupt("status", status))?;
                    let task_type =
                        TaskType::parse(task_type).ok_or_else(|| corrupt("type", task_type))?;
                    *by_status.entry(status).or_default() += n;
                    *by_type.entry(task_type).or_default() += n;
                    total += n;
                }
            }
            out.push(GroupStats {
                key: group.key.clone(),
                total,
                by_status: by_status.into_iter().collect(),
                by_type: by_type.into_iter().collect(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(pattern: &str) -> Option<Literal> {
        literal_of(&Regex::new(pattern).unwrap())
    }

    #[test]
    fn literal_patterns_are_recognised() {
        assert_eq!(
            lit("resnet-lr1"),
            Some(Literal::Contains("resnet-lr1".into()))
        );
        assert_eq!(lit("^exp 1$"), Some(Literal::Exact("exp 1".into())));
        assert_eq!(lit("^exp"), Some(Literal::Contains("exp".into())));
        assert_eq!(lit("exp$"), Some(Literal::Contains("exp".into())));
        for pattern in [
            "", "^$", "a.b", "(?i)abc", "a|b", "a\\$", "x+", "[ab]", "a{2}", "\\d",
        ] {
            assert_eq!(lit(pattern), None, "{pattern:?}");
        }
    }
}
