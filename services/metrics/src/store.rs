//! Storage of metric events: the [`MetricsStore`] trait the domain core
//! calls, and [`SqlMetricsStore`], its implementation on SQLite and
//! PostgreSQL through sea-orm (raw statements on the bulk paths).
//!
//! Every change goes through one writer task per process ([`Writer`]): it
//! takes whatever requests are waiting (up to [`MAX_GROUP`]), applies them in
//! one transaction, commits, and only then answers each of them (group
//! commit). One transaction per group instead of per request is what lets
//! eight clients share one SQLite fsync. Should a group fail, each request is
//! retried in its own transaction, so one bad request never fails another.
//!
//! On PostgreSQL several service replicas may write at once: each group first
//! takes a transaction-scoped advisory lock per task it touches, in key
//! order, and reads the series state inside the transaction, so two writers
//! of one task serialize and never interleave chunk merges.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QueryResult, QuerySelect, Statement, Value,
};
use sha2::Digest as _;
use tasklab_error::{Error, Result};
use tokio::sync::{broadcast, mpsc, oneshot};

use self::conn::{Tx, WriteDb};
use crate::chunk::{self, CHUNK_MERGE_BELOW, CHUNK_TARGET, ChunkMeta, Point, Stats};
use crate::downsample::{self, SINGLE_VALUE_ITER};
use crate::entity::{retention_policy, task_lock};
use crate::service::{
    DeleteSpec, Deleted, Direction, Event, GroupUsage, Kind, KindUsage, LogNotice, LogPosition,
    LogRow, Payload, RetentionAction, RetentionDone, RetentionPolicy, RetentionWork, Selector,
    SeriesSource, SeriesSummary, TaskLock, TaskRef, TaskState, Usage, ValidEvent, WriteBatch,
    WriteOutcome,
};

/// Most requests one transaction applies.
pub(crate) const MAX_GROUP: usize = 64;
/// Rows per multi-row statement (well below both engines' parameter limits).
const ROWS_PER_STATEMENT: usize = 1000;
/// Ids per `IN (...)` list.
const IDS_PER_STATEMENT: usize = 500;
/// Approximate bytes of a chunk row and its index entry besides its blob.
const CHUNK_OVERHEAD: i64 = 96;

/// Where metric events live.
#[async_trait]
pub(crate) trait MetricsStore: std::fmt::Debug + Send + Sync + 'static {
    /// Stores validated events durably; refuses those of locked tasks.
    async fn write(&self, batch: WriteBatch) -> Result<WriteOutcome>;
    /// Applies lock changes; returns how many changed.
    async fn set_locks(&self, locks: Vec<TaskLock>, now_ms: i64) -> Result<u32>;
    /// Locks after `after`, by (task id, model).
    async fn list_locks(&self, after: Option<TaskRef>, limit: u64) -> Result<Vec<TaskLock>>;
    /// Number of locks.
    async fn count_locks(&self) -> Result<u64>;
    /// Which of `tasks` are locked.
    async fn locked(&self, tasks: &[TaskRef]) -> Result<HashSet<TaskRef>>;
    /// Per-task state of the given tasks that have any.
    async fn task_states(
        &self,
        tasks: &[String],
        model: bool,
    ) -> Result<HashMap<String, TaskState>>;
    /// Every scalar series of the given tasks with its summary.
    async fn series(&self, tasks: &[String], model: bool) -> Result<Vec<SeriesSummary>>;
    /// Chunk summaries of a series, limited to an iteration range.
    async fn chunk_metas(
        &self,
        series_id: i64,
        iterations: Option<(i64, i64)>,
    ) -> Result<Vec<ChunkMeta>>;
    /// The points of a series' chunks by id (their start iteration; missing
    /// ones are left out).
    async fn chunk_points(&self, series_id: i64, ids: &[i64]) -> Result<HashMap<i64, Vec<Point>>>;
    /// Distinct (task, kind, metric, variant) of non-scalar, non-log events.
    async fn event_names(
        &self,
        tasks: &[String],
        model: bool,
        kinds: &[Kind],
    ) -> Result<Vec<(String, Kind, String, String)>>;
    /// Which of `tasks` have log events.
    async fn tasks_with_logs(&self, tasks: &[String]) -> Result<Vec<String>>;
    /// Log events after (or before) a position, in reading order.
    async fn logs(
        &self,
        task_id: &str,
        direction: Direction,
        from: Option<LogPosition>,
        limit: u64,
    ) -> Result<Vec<LogRow>>;
    /// Number of log events of a task.
    async fn count_logs(&self, task_id: &str) -> Result<u64>;
    /// The highest log event id stored (0 when none).
    async fn max_log_id(&self) -> Result<i64>;
    /// Live log notices.
    fn subscribe_logs(&self) -> broadcast::Receiver<LogNotice>;
    /// Distinct iterations of a kind, descending, below `below`.
    async fn iterations(
        &self,
        task: &TaskRef,
        kind: Kind,
        selectors: &[Selector],
        below: Option<i64>,
        limit: u64,
    ) -> Result<Vec<i64>>;
    /// Events of a kind with iteration in `[lo, hi]`, by iteration
    /// descending, metric, variant, key.
    async fn events(
        &self,
        task: &TaskRef,
        kind: Kind,
        selectors: &[Selector],
        lo: i64,
        hi: i64,
        limit: Option<u64>,
    ) -> Result<Vec<Event>>;
    /// Number of events of a kind.
    async fn count_events(&self, task: &TaskRef, kind: Kind) -> Result<u64>;
    /// Lowest and highest iteration of a metric and variant.
    async fn iteration_bounds(
        &self,
        task: &TaskRef,
        kind: Kind,
        metric: &str,
        variant: &str,
    ) -> Result<(Option<i64>, Option<i64>)>;
    /// Lowest iteration above `after` of a metric and variant.
    async fn next_iteration(
        &self,
        task: &TaskRef,
        kind: Kind,
        metric: &str,
        variant: &str,
        after: i64,
    ) -> Result<Option<i64>>;
    /// Distinct (metric, iteration) of a kind.
    async fn metric_iterations(
        &self,
        task: &TaskRef,
        kind: Kind,
        selectors: &[Selector],
    ) -> Result<Vec<(String, i64)>>;
    /// Deletes events; one entry per task id.
    async fn delete(&self, specs: Vec<DeleteSpec>) -> Result<HashMap<String, Deleted>>;
    /// Storage usage per task (tasks without events left out).
    async fn usage(&self, tasks: &[String], model: bool) -> Result<HashMap<String, KindUsage>>;
    /// Storage usage of the whole store.
    async fn total_usage(&self) -> Result<GroupUsage>;
    /// Creates or replaces a policy.
    async fn put_policy(&self, policy: &RetentionPolicy) -> Result<()>;
    /// A project's own policy.
    async fn get_policy(&self, project_id: &str) -> Result<Option<RetentionPolicy>>;
    /// Policies after `after`, by project id.
    async fn list_policies(
        &self,
        after: Option<String>,
        limit: u64,
    ) -> Result<Vec<RetentionPolicy>>;
    /// Deletes a policy; whether it existed.
    async fn delete_policy(&self, project_id: &str) -> Result<bool>;
    /// Applies retention rules to one task.
    async fn retain(&self, work: RetentionWork) -> Result<RetentionDone>;
}

fn db_error(err: DbErr) -> Error {
    if matches!(err, DbErr::Conn(_) | DbErr::ConnectionAcquire(_)) {
        Error::unavailable("metrics database", err)
    } else {
        Error::internal(err)
    }
}

fn corrupt(err: chunk::CorruptChunk) -> Error {
    Error::internal(err)
}

/// A statement under construction with placeholders for either engine.
struct Sql {
    backend: DbBackend,
    text: String,
    values: Vec<Value>,
}

impl Sql {
    fn new(backend: DbBackend, text: &str) -> Sql {
        Sql {
            backend,
            text: text.to_owned(),
            values: Vec::new(),
        }
    }

    fn push(&mut self, text: &str) -> &mut Sql {
        self.text.push_str(text);
        self
    }

    fn param(&mut self, value: impl Into<Value>) -> &mut Sql {
        self.values.push(value.into());
        match self.backend {
            DbBackend::Postgres => {
                self.text.push('$');
                self.text.push_str(&self.values.len().to_string());
            }
            _ => self.text.push('?'),
        }
        self
    }

    /// `(?, ?, ...)`.
    fn tuple(&mut self, values: impl IntoIterator<Item = Value>) -> &mut Sql {
        self.text.push('(');
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.param(v);
        }
        self.text.push(')');
        self
    }

    fn selectors(&mut self, selectors: &[Selector]) -> &mut Sql {
        if selectors.is_empty() {
            return self;
        }
        self.push(" AND (");
        for (i, s) in selectors.iter().enumerate() {
            if i > 0 {
                self.push(" OR ");
            }
            self.push("(metric = ").param(s.metric.clone());
            if !s.variants.is_empty() {
                self.push(" AND variant IN ")
                    .tuple(s.variants.iter().map(|v| Value::from(v.clone())));
            }
            self.push(")");
        }
        self.push(")")
    }

    fn build(self) -> Statement {
        Statement::from_sql_and_values(self.backend, self.text, self.values)
    }
}

fn model_value(model: bool) -> Value {
    Value::SmallInt(Some(i16::from(model)))
}

/// NaN travels as NULL: SQLite cannot store it in a REAL column.
fn real(v: f64) -> Value {
    Value::Double(if v.is_nan() { None } else { Some(v) })
}

fn get<T: sea_orm::TryGetable>(row: &QueryResult, col: &str) -> Result<T> {
    row.try_get::<T>("", col).map_err(db_error)
}

fn get_real(row: &QueryResult, col: &str) -> Result<f64> {
    Ok(get::<Option<f64>>(row, col)?.unwrap_or(f64::NAN))
}

fn get_u64(row: &QueryResult, col: &str) -> Result<u64> {
    Ok(get::<Option<i64>>(row, col)?.unwrap_or(0).max(0) as u64)
}

/// Stable 64-bit key of a task for PostgreSQL advisory locks (FNV-1a).
fn lock_key(task: &TaskRef) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"metrics\0"
        .iter()
        .chain(task.id.as_bytes())
        .chain(&[u8::from(task.model)])
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// Identity of a non-scalar event within its task, kind and iteration.
fn ident(metric: &str, variant: &str, key: &str) -> String {
    let mut hasher = sha2::Sha256::new();
    for part in [metric, variant, key] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

const SERIES_COLUMNS: &str = "id, task_id, model, metric, variant, x_axis_label, count, nonnan, sum, \
     min_value, min_iter, max_value, max_iter, first_value, first_iter, first_ts, last_value, \
     last_iter, last_ts, max_stored_iter, tail_start, tail_count, bytes";

/// A `metric_series` row as the writer works on it.
#[derive(Debug, Clone)]
struct SeriesRow {
    summary: SeriesSummary,
    tail_start: Option<i64>,
    tail_count: i64,
}

fn series_row(row: &QueryResult) -> Result<SeriesRow> {
    Ok(SeriesRow {
        summary: SeriesSummary {
            id: get(row, "id")?,
            task: TaskRef {
                id: get(row, "task_id")?,
                model: get::<i16>(row, "model")? != 0,
            },
            metric: get(row, "metric")?,
            variant: get(row, "variant")?,
            x_axis_label: get(row, "x_axis_label")?,
            stats: Stats {
                count: get_u64(row, "count")?,
                nonnan: get_u64(row, "nonnan")?,
                sum: get_real(row, "sum")?,
                min: get_real(row, "min_value")?,
                max: get_real(row, "max_value")?,
            },
            min_iter: get(row, "min_iter")?,
            max_iter: get(row, "max_iter")?,
            first: (
                get(row, "first_iter")?,
                get(row, "first_ts")?,
                get_real(row, "first_value")?,
            ),
            last: (
                get(row, "last_iter")?,
                get(row, "last_ts")?,
                get_real(row, "last_value")?,
            ),
            max_stored_iter: get(row, "max_stored_iter")?,
            bytes: get(row, "bytes")?,
        },
        tail_start: get(row, "tail_start")?,
        tail_count: get(row, "tail_count")?,
    })
}

fn series_values(s: &SeriesRow, with_id: bool) -> Vec<Value> {
    let m = &s.summary;
    let mut v = Vec::with_capacity(23);
    if with_id {
        v.push(Value::from(m.id));
    }
    v.extend([
        Value::from(m.task.id.clone()),
        model_value(m.task.model),
        Value::from(m.metric.clone()),
        Value::from(m.variant.clone()),
        Value::from(m.x_axis_label.clone()),
        Value::from(m.stats.count as i64),
        Value::from(m.stats.nonnan as i64),
        real(m.stats.sum),
        real(m.stats.min),
        Value::from(m.min_iter),
        real(m.stats.max),
        Value::from(m.max_iter),
        real(m.first.2),
        Value::from(m.first.0),
        Value::from(m.first.1),
        real(m.last.2),
        Value::from(m.last.0),
        Value::from(m.last.1),
        Value::BigInt(m.max_stored_iter),
        Value::BigInt(s.tail_start),
        Value::from(s.tail_count),
        Value::from(m.bytes),
    ]);
    v
}

/// A chunk to insert.
struct NewChunk {
    series_id: i64,
    meta: ChunkMeta,
    data: Vec<u8>,
}

fn new_chunks(
    series_id: i64,
    points: &[Point],
    out: &mut Vec<NewChunk>,
) -> (i64, Option<(i64, i64)>) {
    let mut bytes = 0;
    let mut tail = None;
    for part in chunk::split(points) {
        if part.is_empty() {
            continue;
        }
        let data = chunk::encode(part);
        bytes += data.len() as i64 + CHUNK_OVERHEAD;
        let meta = ChunkMeta::of(0, part);
        tail = Some((meta.start_iter, part.len() as i64));
        out.push(NewChunk {
            series_id,
            meta,
            data,
        });
    }
    (bytes, tail)
}

/// One unit of work for the writer.
enum Op {
    Write(WriteBatch),
    Locks(Vec<TaskLock>, i64),
    Delete(Vec<DeleteSpec>),
    Retain(RetentionWork),
    PutPolicy(RetentionPolicy),
    DeletePolicy(String),
}

enum Done {
    Write(WriteOutcome),
    Locks(u32),
    Delete(HashMap<String, Deleted>),
    Retain(RetentionDone),
    Policy(bool),
}

impl Op {
    fn tasks(&self) -> Vec<TaskRef> {
        match self {
            Op::Write(b) => b
                .events
                .iter()
                .map(|e| e.task.clone())
                .chain(b.series.iter().map(|s| s.task.clone()))
                .collect(),
            Op::Locks(l, _) => l.iter().map(|l| l.task.clone()).collect(),
            Op::Delete(specs) => specs.iter().map(|s| s.task.clone()).collect(),
            Op::Retain(w) => vec![w.task.clone()],
            Op::PutPolicy(_) | Op::DeletePolicy(_) => Vec::new(),
        }
    }
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Done>>,
}

/// Notices to publish once a transaction committed.
#[derive(Default)]
struct Notices(Vec<LogNotice>);

/// The single writer of this process.
#[derive(Debug, Clone)]
struct Writer {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

/// sea-orm implementation of [`MetricsStore`].
#[derive(Debug, Clone)]
pub(crate) struct SqlMetricsStore {
    db: DatabaseConnection,
    backend: DbBackend,
    writer: Writer,
    logs: broadcast::Sender<LogNotice>,
}

impl SqlMetricsStore {
    /// A store reading through `read` and writing through `write` (the same
    /// pool on PostgreSQL; a one-connection pool on SQLite).
    pub(crate) fn new(read: DatabaseConnection, write: WriteDb) -> Self {
        let backend = read.get_database_backend();
        let (tx, rx) = mpsc::channel(1024);
        let (logs, _) = broadcast::channel(4096);
        tokio::spawn(writer_loop(write, rx, logs.clone()));
        SqlMetricsStore {
            db: read,
            backend,
            writer: Writer { tx },
            logs,
        }
    }

    async fn submit(&self, op: Op) -> Result<Done> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .tx
            .send(Job { op, reply })
            .await
            .map_err(|_| Error::unavailable("metrics writer", std::io::Error::other("stopped")))?;
        answer
            .await
            .map_err(|_| Error::unavailable("metrics writer", std::io::Error::other("stopped")))?
    }

    fn sql(&self, text: &str) -> Sql {
        Sql::new(self.backend, text)
    }

    async fn all(&self, sql: Sql) -> Result<Vec<QueryResult>> {
        self.db.query_all_raw(sql.build()).await.map_err(db_error)
    }
}

/// Opens the writer's handle for `url` (see [`conn`]).
pub(crate) async fn connect_writer(url: &str) -> std::result::Result<WriteDb, DbErr> {
    conn::connect(url).await
}

async fn writer_loop(db: WriteDb, mut rx: mpsc::Receiver<Job>, logs: broadcast::Sender<LogNotice>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let dry: Vec<Job>;
        (dry, jobs) = jobs
            .into_iter()
            .partition(|j| matches!(&j.op, Op::Retain(w) if w.dry_run));
        for job in dry {
            let result = run_alone(&db, &job.op, false).await;
            let _ = job.reply.send(result.map(|(d, _)| d));
        }
        if jobs.is_empty() {
            continue;
        }
        let ops: Vec<&Op> = jobs.iter().map(|j| &j.op).collect();
        match run_group(&db, &ops).await {
            Ok((results, notices)) => {
                for n in notices.0 {
                    let _ = logs.send(n);
                }
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(result));
                }
            }
            Err(err) if jobs.len() == 1 => {
                let job = jobs.pop().expect("one job");
                let _ = job.reply.send(Err(err));
            }
            Err(err) => {
                tracing::warn!(error = %err, jobs = jobs.len(), "group commit failed; retrying one by one");
                for job in jobs {
                    let result = run_alone(&db, &job.op, true).await;
                    let result = result.map(|(d, notices)| {
                        for n in notices.0 {
                            let _ = logs.send(n);
                        }
                        d
                    });
                    let _ = job.reply.send(result);
                }
            }
        }
    }
}

async fn begin(db: &WriteDb) -> Result<Tx<'_>> {
    db.begin().await.map_err(db_error)
}

async fn lock_tasks(txn: &Tx<'_>, tasks: impl Iterator<Item = TaskRef>) -> Result<()> {
    if txn.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let mut keys: Vec<i64> = tasks.map(|t| lock_key(&t)).collect();
    keys.sort_unstable();
    keys.dedup();
    for part in keys.chunks(IDS_PER_STATEMENT) {
        let list: Vec<String> = part.iter().map(i64::to_string).collect();
        txn.execute_unprepared(&format!(
            "SELECT pg_advisory_xact_lock(k) FROM (VALUES ({})) AS t(k) ORDER BY k",
            list.join("), (")
        ))
        .await
        .map_err(db_error)?;
    }
    Ok(())
}

async fn run_group(db: &WriteDb, ops: &[&Op]) -> Result<(Vec<Done>, Notices)> {
    let txn = begin(db).await?;
    lock_tasks(&txn, ops.iter().flat_map(|op| op.tasks())).await?;
    let mut notices = Notices::default();
    let mut results = Vec::with_capacity(ops.len());
    let mut i = 0;
    while i < ops.len() {
        if let Op::Write(_) = ops[i] {
            let mut batches = Vec::new();
            while let Some(Op::Write(b)) = ops.get(i) {
                batches.push(b);
                i += 1;
            }
            for outcome in apply_writes(&txn, &batches, &mut notices).await? {
                results.push(Done::Write(outcome));
            }
        } else {
            results.push(apply_other(&txn, ops[i], &mut notices).await?);
            i += 1;
        }
    }
    txn.commit().await.map_err(db_error)?;
    Ok((results, notices))
}

async fn run_alone(db: &WriteDb, op: &Op, commit: bool) -> Result<(Done, Notices)> {
    if !commit {
        let txn = begin(db).await?;
        lock_tasks(&txn, op.tasks().into_iter()).await?;
        let mut notices = Notices::default();
        let done = apply_other(&txn, op, &mut notices).await?;
        txn.rollback().await.map_err(db_error)?;
        return Ok((done, Notices::default()));
    }
    let (mut results, notices) = run_group(db, &[op]).await?;
    Ok((results.pop().expect("one result"), notices))
}

async fn apply_other(txn: &Tx<'_>, op: &Op, notices: &mut Notices) -> Result<Done> {
    match op {
        Op::Write(batch) => Ok(Done::Write(
            apply_writes(txn, &[batch], notices)
                .await?
                .pop()
                .unwrap_or_default(),
        )),
        Op::Locks(locks, now) => apply_locks(txn, locks, *now).await.map(Done::Locks),
        Op::Delete(specs) => {
            let mut out = HashMap::new();
            for spec in specs {
                let d = delete_task(txn, spec, notices).await?;
                out.insert(spec.task.id.clone(), d);
            }
            Ok(Done::Delete(out))
        }
        Op::Retain(work) => retain_task(txn, work, notices).await.map(Done::Retain),
        Op::PutPolicy(p) => {
            let backend = txn.get_database_backend();
            let rules = serde_json::to_string(&p.rules).map_err(Error::internal)?;
            let mut sql = Sql::new(
                backend,
                "INSERT INTO retention_policies (project_id, rules, include_locked, updated) VALUES ",
            );
            sql.tuple([
                Value::from(p.project_id.clone()),
                Value::from(rules),
                model_value(p.include_locked),
                Value::from(p.updated_ms.unwrap_or(0)),
            ])
            .push(
                " ON CONFLICT (project_id) DO UPDATE SET rules = excluded.rules, \
                 include_locked = excluded.include_locked, updated = excluded.updated",
            );
            txn.execute_raw(sql.build()).await.map_err(db_error)?;
            Ok(Done::Policy(true))
        }
        Op::DeletePolicy(project) => {
            let res = retention_policy::Entity::delete_by_id(project.clone())
                .exec(txn)
                .await
                .map_err(db_error)?;
            Ok(Done::Policy(res.rows_affected > 0))
        }
    }
}

async fn apply_locks(txn: &Tx<'_>, locks: &[TaskLock], now: i64) -> Result<u32> {
    let backend = txn.get_database_backend();
    let mut changed = 0;
    for lock in locks {
        let mut sql = if lock.locked {
            let mut s = Sql::new(
                backend,
                "INSERT INTO task_locks (task_id, model, since) VALUES ",
            );
            s.tuple([
                Value::from(lock.task.id.clone()),
                model_value(lock.task.model),
                Value::from(now),
            ])
            .push(" ON CONFLICT (task_id, model) DO NOTHING");
            s
        } else {
            let mut s = Sql::new(backend, "DELETE FROM task_locks WHERE task_id = ");
            s.param(lock.task.id.clone())
                .push(" AND model = ")
                .param(model_value(lock.task.model));
            s
        };
        let res = txn
            .execute_raw(std::mem::replace(&mut sql, Sql::new(backend, "")).build())
            .await
            .map_err(db_error)?;
        changed += res.rows_affected() as u32;
    }
    Ok(changed)
}

async fn locked_in(conn: &impl ConnectionTrait, tasks: &[TaskRef]) -> Result<HashSet<TaskRef>> {
    let backend = conn.get_database_backend();
    let ids: Vec<String> = tasks
        .iter()
        .map(|t| t.id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut out = HashSet::new();
    for part in ids.chunks(IDS_PER_STATEMENT) {
        let mut sql = Sql::new(
            backend,
            "SELECT task_id, model FROM task_locks WHERE task_id IN ",
        );
        sql.tuple(part.iter().map(|s| Value::from(s.clone())));
        for row in conn.query_all_raw(sql.build()).await.map_err(db_error)? {
            out.insert(TaskRef {
                id: get(&row, "task_id")?,
                model: get::<i16>(&row, "model")? != 0,
            });
        }
    }
    Ok(out)
}

async fn load_series(
    conn: &impl ConnectionTrait,
    tasks: &[String],
    model: Option<bool>,
) -> Result<Vec<SeriesRow>> {
    let backend = conn.get_database_backend();
    let mut out = Vec::new();
    let mut ids: Vec<&String> = tasks.iter().collect();
    ids.sort();
    ids.dedup();
    for part in ids.chunks(IDS_PER_STATEMENT) {
        let mut sql = Sql::new(
            backend,
            &format!("SELECT {SERIES_COLUMNS} FROM metric_series WHERE task_id IN "),
        );
        sql.tuple(part.iter().map(|s| Value::from((*s).clone())));
        if let Some(m) = model {
            sql.push(" AND model = ").param(model_value(m));
        }
        for row in conn.query_all_raw(sql.build()).await.map_err(db_error)? {
            out.push(series_row(&row)?);
        }
    }
    Ok(out)
}

type SeriesKey = (TaskRef, String, String);
type RefKey<'a> = (&'a TaskRef, &'a str, &'a str);
/// The points a group brings to one series: runs in arrival order, each
/// with its x-axis label.
type Runs<'a> = Vec<(&'a [Point], &'a str)>;

/// Applies several requests' events in one transaction; one outcome each.
async fn apply_writes(
    txn: &Tx<'_>,
    batches: &[&WriteBatch],
    notices: &mut Notices,
) -> Result<Vec<WriteOutcome>> {
    let backend = txn.get_database_backend();
    let tasks: Vec<TaskRef> = batches
        .iter()
        .flat_map(|b| {
            b.events
                .iter()
                .map(|e| &e.task)
                .chain(b.series.iter().map(|s| &s.task))
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .cloned()
        .collect();
    let locked = locked_in(txn, &tasks).await?;

    let mut outcomes = vec![WriteOutcome::default(); batches.len()];
    let mut scalars: HashMap<RefKey<'_>, Runs<'_>> = HashMap::new();
    let mut others: Vec<&ValidEvent> = Vec::new();
    let mut logs: Vec<Vec<&ValidEvent>> = vec![Vec::new(); batches.len()];
    // Per task: last iteration, last event time, last update.
    let mut states: HashMap<&TaskRef, (Option<i64>, i64, i64)> = HashMap::new();
    for (b, batch) in batches.iter().enumerate() {
        for s in &batch.series {
            if !locked.is_empty() && locked.contains(&s.task) && !s.allow_locked {
                match &s.source {
                    SeriesSource::Series(index) => outcomes[b]
                        .locked_series
                        .push((*index, s.points.len() as u32)),
                    SeriesSource::Events(indexes) => outcomes[b].locked.extend(indexes),
                }
                continue;
            }
            let (last, ts) = s.extent();
            let st = states
                .entry(&s.task)
                .or_insert((None, i64::MIN, batch.received_ms));
            st.1 = st.1.max(ts);
            st.2 = st.2.max(batch.received_ms);
            if let Some(last) = last {
                st.0 = Some(st.0.map_or(last, |i: i64| i.max(last)));
            }
            outcomes[b].added += s.points.len() as u32;
            scalars
                .entry((&s.task, s.metric.as_str(), s.variant.as_str()))
                .or_default()
                .push((&s.points, s.x_axis_label.as_str()));
        }
        for e in &batch.events {
            if !locked.is_empty() && locked.contains(&e.task) && !e.allow_locked {
                outcomes[b].locked.push(e.index);
                continue;
            }
            let st = states
                .entry(&e.task)
                .or_insert((None, i64::MIN, batch.received_ms));
            st.1 = st.1.max(e.timestamp_ms);
            st.2 = st.2.max(batch.received_ms);
            let kind = e.payload.kind();
            if kind != Kind::Log && e.iteration != SINGLE_VALUE_ITER {
                st.0 = Some(st.0.map_or(e.iteration, |i: i64| i.max(e.iteration)));
            }
            match &e.payload {
                // The service groups scalar events into series; `write`
                // does the same for any that reach the store.
                Payload::Scalar { .. } => {}
                Payload::Log { .. } => logs[b].push(e),
                _ => {
                    outcomes[b].added += 1;
                    others.push(e);
                }
            }
        }
    }

    if !scalars.is_empty() {
        write_scalars(txn, scalars).await?;
    }
    if !others.is_empty() {
        let received = batches.iter().map(|b| b.received_ms).max().unwrap_or(0);
        write_others(txn, &others, received).await?;
    }
    let mut added_logs = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        if logs[b].is_empty() {
            continue;
        }
        let inserted = write_logs(txn, batch, &logs[b], &mut added_logs).await?;
        outcomes[b].added += inserted;
        outcomes[b].duplicates += logs[b].len() as u32 - inserted;
    }
    if !added_logs.is_empty() {
        notices.0.push(LogNotice::Added(Arc::new(added_logs)));
    }

    // Task state: one upsert for every touched task.
    let states: Vec<_> = states.into_iter().collect();
    for part in states.chunks(ROWS_PER_STATEMENT) {
        let mut sql = Sql::new(
            backend,
            "INSERT INTO task_state (task_id, model, last_iteration, last_update, last_event_ts) VALUES ",
        );
        for (i, (task, (iter, ts, update))) in part.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.tuple([
                Value::from(task.id.clone()),
                model_value(task.model),
                Value::BigInt(*iter),
                Value::from(*update),
                Value::from(*ts),
            ]);
        }
        sql.push(
            " ON CONFLICT (task_id, model) DO UPDATE SET \
             last_iteration = CASE WHEN task_state.last_iteration IS NULL \
               OR excluded.last_iteration > task_state.last_iteration \
               THEN excluded.last_iteration ELSE task_state.last_iteration END, \
             last_update = CASE WHEN excluded.last_update > task_state.last_update \
               THEN excluded.last_update ELSE task_state.last_update END, \
             last_event_ts = CASE WHEN excluded.last_event_ts > task_state.last_event_ts \
               THEN excluded.last_event_ts ELSE task_state.last_event_ts END",
        );
        txn.execute_raw(sql.build()).await.map_err(db_error)?;
    }
    Ok(outcomes)
}

async fn write_scalars(txn: &Tx<'_>, scalars: HashMap<RefKey<'_>, Runs<'_>>) -> Result<()> {
    let task_ids: Vec<String> = scalars
        .keys()
        .map(|k| k.0.id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut existing: HashMap<SeriesKey, SeriesRow> = load_series(txn, &task_ids, None)
        .await?
        .into_iter()
        .map(|s| {
            (
                (
                    s.summary.task.clone(),
                    s.summary.metric.clone(),
                    s.summary.variant.clone(),
                ),
                s,
            )
        })
        .collect();

    let mut inserts: Vec<NewChunk> = Vec::new();
    let mut deletes: Vec<i64> = Vec::new();
    let mut recompute: Vec<i64> = Vec::new();
    let mut touched: Vec<SeriesRow> = Vec::new();
    let mut scalars: Vec<(RefKey<'_>, Runs<'_>)> = scalars.into_iter().collect();
    scalars.sort_by(|a, b| a.0.cmp(&b.0));
    for ((task, metric, variant), runs) in scalars {
        let key: SeriesKey = (task.clone(), metric.to_owned(), variant.to_owned());
        let mut row = match existing.remove(&key) {
            Some(row) => row,
            None => create_series(txn, &key).await?,
        };
        let fix_sum = write_series(txn, &mut row, &runs, &mut inserts, &mut deletes).await?;
        if fix_sum {
            recompute.push(row.summary.id);
        }
        touched.push(row);
    }
    delete_chunks(txn, &deletes).await?;
    insert_chunks(txn, inserts).await?;
    for id in recompute {
        let row = touched
            .iter_mut()
            .find(|r| r.summary.id == id)
            .expect("touched series");
        let mut stats = Stats::EMPTY;
        for m in chunk_metas_in(txn, id, None).await? {
            stats.merge(&m.stats);
        }
        row.summary.stats.count = stats.count;
        row.summary.stats.nonnan = stats.nonnan;
        row.summary.stats.sum = stats.sum;
    }
    update_series(txn, &touched).await
}

async fn create_series(txn: &Tx<'_>, key: &SeriesKey) -> Result<SeriesRow> {
    let mut row = SeriesRow {
        summary: SeriesSummary {
            id: 0,
            task: key.0.clone(),
            metric: key.1.clone(),
            variant: key.2.clone(),
            x_axis_label: String::new(),
            stats: Stats::EMPTY,
            min_iter: 0,
            max_iter: 0,
            first: (0, 0, f64::NAN),
            last: (0, 0, f64::NAN),
            max_stored_iter: None,
            bytes: 0,
        },
        tail_start: None,
        tail_count: 0,
    };
    let mut sql = Sql::new(
        txn.get_database_backend(),
        &format!(
            "INSERT INTO metric_series ({}) VALUES ",
            &SERIES_COLUMNS["id, ".len()..]
        ),
    );
    sql.tuple(series_values(&row, false)).push(" RETURNING id");
    let inserted = txn
        .query_one_raw(sql.build())
        .await
        .map_err(db_error)?
        .ok_or_else(|| Error::internal(std::io::Error::other("insert returned no id")))?;
    row.summary.id = get(&inserted, "id")?;
    Ok(row)
}

/// Folds new points into a series; returns whether its sum must be
/// recomputed from the chunks (a replaced value was infinite).
async fn write_series(
    txn: &Tx<'_>,
    row: &mut SeriesRow,
    runs: &[(&[Point], &str)],
    inserts: &mut Vec<NewChunk>,
    deletes: &mut Vec<i64>,
) -> Result<bool> {
    let s = &mut row.summary;
    // Min and max cover every value received, replaced ones included.
    for p in runs.iter().flat_map(|(points, _)| points.iter()) {
        let v = p.value;
        if v.is_nan() {
            continue;
        }
        if s.stats.min.is_nan() || v < s.stats.min || (v == s.stats.min && p.iter < s.min_iter) {
            s.stats.min = v;
            s.min_iter = p.iter;
        }
        if s.stats.max.is_nan() || v > s.stats.max || (v == s.stats.max && p.iter < s.max_iter) {
            s.stats.max = v;
            s.max_iter = p.iter;
        }
    }
    // By iteration; of equal iterations the last arrival wins.
    let mut new: Vec<Point> = Vec::with_capacity(runs.iter().map(|(p, _)| p.len()).sum());
    for (points, _) in runs {
        new.extend_from_slice(points);
    }
    if !new.windows(2).all(|w| w[0].iter < w[1].iter) {
        new.sort_by_key(|p| p.iter);
        new.dedup_by(|later, earlier| {
            if later.iter == earlier.iter {
                *earlier = *later;
                true
            } else {
                false
            }
        });
    }
    let (Some(&lowest), Some(&highest)) = (new.first(), new.last()) else {
        return Ok(false);
    };
    let was_empty = s.stats.count == 0;
    if was_empty || lowest.iter <= s.first.0 {
        s.first = (lowest.iter, lowest.ts, lowest.value);
    }
    if was_empty || highest.iter >= s.last.0 {
        s.last = (highest.iter, highest.ts, highest.value);
        // The label of the run the winning point came from: the last one
        // holding that iteration.
        if let Some((_, label)) = runs
            .iter()
            .rev()
            .find(|(points, _)| points.iter().any(|p| p.iter == highest.iter))
        {
            (*label).clone_into(&mut s.x_axis_label);
        }
    }
    let lo = new.first().map_or(0, |p| p.iter);
    let hi = new.last().map_or(0, |p| p.iter);
    let backend = txn.get_database_backend();
    let mut replaced: Vec<f64> = Vec::new();
    let append = s.max_stored_iter.is_none_or(|m| lo > m);
    if append {
        let mut with_tail = None;
        if let Some(start) = row.tail_start
            && new.len() < CHUNK_MERGE_BELOW
            && row.tail_count as usize + new.len() <= CHUNK_TARGET
        {
            let mut sql = Sql::new(
                backend,
                "SELECT id, data FROM scalar_chunks WHERE series_id = ",
            );
            sql.param(s.id).push(" AND start_iter = ").param(start);
            if let Some(tail) = txn.query_one_raw(sql.build()).await.map_err(db_error)? {
                let data: Vec<u8> = get(&tail, "data")?;
                let mut merged = chunk::decode(&data).map_err(corrupt)?;
                merged.extend_from_slice(&new);
                with_tail = Some(merged);
                deletes.push(get(&tail, "id")?);
                s.bytes -= data.len() as i64 + CHUNK_OVERHEAD;
            }
        }
        let (bytes, tail) = new_chunks(s.id, with_tail.as_deref().unwrap_or(&new), inserts);
        s.bytes += bytes;
        if let Some((start, count)) = tail {
            row.tail_start = Some(start);
            row.tail_count = count;
        }
    } else {
        let mut sql = Sql::new(
            backend,
            "SELECT id, start_iter, data FROM scalar_chunks WHERE series_id = ",
        );
        sql.param(s.id)
            .push(" AND end_iter >= ")
            .param(lo)
            .push(" AND start_iter <= ")
            .param(hi);
        let mut merged: BTreeMap<i64, Point> = BTreeMap::new();
        let mut had_tail = false;
        for chunk_row in txn.query_all_raw(sql.build()).await.map_err(db_error)? {
            let data: Vec<u8> = get(&chunk_row, "data")?;
            let start: i64 = get(&chunk_row, "start_iter")?;
            had_tail |= Some(start) == row.tail_start;
            for p in chunk::decode(&data).map_err(corrupt)? {
                merged.insert(p.iter, p);
            }
            deletes.push(get(&chunk_row, "id")?);
            s.bytes -= data.len() as i64 + CHUNK_OVERHEAD;
        }
        for p in &new {
            if let Some(old) = merged.insert(p.iter, *p) {
                replaced.push(old.value);
            }
        }
        let all: Vec<Point> = merged.into_values().collect();
        let (bytes, tail) = new_chunks(s.id, &all, inserts);
        s.bytes += bytes;
        if let Some((start, count)) = tail
            && (had_tail || row.tail_start.is_none_or(|t| start > t))
        {
            row.tail_start = Some(start);
            row.tail_count = count;
        }
    }
    s.max_stored_iter = Some(s.max_stored_iter.map_or(hi, |m| m.max(hi)));
    let mut fix_sum = false;
    for p in &new {
        s.stats.count += 1;
        if !p.value.is_nan() {
            s.stats.nonnan += 1;
            s.stats.sum = if s.stats.nonnan == 1 {
                p.value
            } else {
                s.stats.sum + p.value
            };
        }
    }
    for old in replaced {
        s.stats.count -= 1;
        if !old.is_nan() {
            s.stats.nonnan -= 1;
            if old.is_finite() {
                s.stats.sum -= old;
            } else {
                fix_sum = true;
            }
        }
    }
    if s.stats.nonnan == 0 {
        s.stats.sum = 0.0;
    }
    Ok(fix_sum)
}

async fn delete_chunks(conn: &impl ConnectionTrait, ids: &[i64]) -> Result<()> {
    let backend = conn.get_database_backend();
    for part in ids.chunks(IDS_PER_STATEMENT) {
        let mut sql = Sql::new(backend, "DELETE FROM scalar_chunks WHERE id IN ");
        sql.tuple(part.iter().map(|id| Value::from(*id)));
        conn.execute_raw(sql.build()).await.map_err(db_error)?;
    }
    Ok(())
}

async fn insert_chunks(conn: &impl ConnectionTrait, chunks: Vec<NewChunk>) -> Result<()> {
    let backend = conn.get_database_backend();
    let mut chunks = chunks.into_iter().peekable();
    while chunks.peek().is_some() {
        let mut sql = Sql::new(
            backend,
            "INSERT INTO scalar_chunks (series_id, start_iter, end_iter, summary, data) VALUES ",
        );
        for (i, c) in chunks.by_ref().take(ROWS_PER_STATEMENT).enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            let m = &c.meta;
            sql.tuple([
                Value::from(c.series_id),
                Value::from(m.start_iter),
                Value::from(m.end_iter),
                Value::Bytes(Some(m.to_bytes())),
                Value::Bytes(Some(c.data)),
            ]);
        }
        conn.execute_raw(sql.build()).await.map_err(db_error)?;
    }
    Ok(())
}

async fn update_series(conn: &impl ConnectionTrait, rows: &[SeriesRow]) -> Result<()> {
    let backend = conn.get_database_backend();
    let columns: Vec<&str> = SERIES_COLUMNS.split(", ").collect();
    // Not the key (id, task, model, metric, variant), which never changes:
    // a column in the SET list makes SQLite rewrite the unique index on the
    // key too, one more page per series in every commit's WAL.
    let updates: Vec<String> = columns[5..]
        .iter()
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    for part in rows.chunks(ROWS_PER_STATEMENT / 25) {
        let mut sql = Sql::new(
            backend,
            &format!("INSERT INTO metric_series ({SERIES_COLUMNS}) VALUES "),
        );
        for (i, row) in part.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.tuple(series_values(row, true));
        }
        sql.push(" ON CONFLICT (id) DO UPDATE SET ")
            .push(&updates.join(", "));
        conn.execute_raw(sql.build()).await.map_err(db_error)?;
    }
    Ok(())
}

/// The summaries of a series' chunks overlapping an iteration range. They
/// come back aggregated into one value (hex text on SQLite, bytes on
/// PostgreSQL): one row instead of one per chunk is most of the speed of a
/// downsampled read.
async fn chunk_metas_in(
    conn: &impl ConnectionTrait,
    series_id: i64,
    iterations: Option<(i64, i64)>,
) -> Result<Vec<ChunkMeta>> {
    let backend = conn.get_database_backend();
    let select = match backend {
        DbBackend::Postgres => "SELECT string_agg(summary, ''::bytea) AS metas",
        _ => "SELECT group_concat(hex(summary), '') AS metas",
    };
    let mut sql = Sql::new(
        backend,
        &format!("{select} FROM scalar_chunks WHERE series_id = "),
    );
    sql.param(series_id);
    if let Some((lo, hi)) = iterations {
        sql.push(" AND start_iter <= ")
            .param(hi)
            .push(" AND end_iter >= ")
            .param(lo);
    }
    let Some(row) = conn.query_one_raw(sql.build()).await.map_err(db_error)? else {
        return Ok(Vec::new());
    };
    let packed: Vec<u8> = match backend {
        DbBackend::Postgres => get::<Option<Vec<u8>>>(&row, "metas")?.unwrap_or_default(),
        _ => {
            let text = get::<Option<String>>(&row, "metas")?.unwrap_or_default();
            hex::decode(text).map_err(Error::internal)?
        }
    };
    let mut metas = packed
        .chunks(chunk::META_BYTES)
        .map(ChunkMeta::from_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(corrupt)?;
    metas.sort_unstable_by_key(|m| m.start_iter);
    Ok(metas)
}

/// The points of a series' chunks, by start iteration (missing ones left
/// out).
async fn chunk_points_in(
    conn: &impl ConnectionTrait,
    series_id: i64,
    starts: &[i64],
) -> Result<HashMap<i64, Vec<Point>>> {
    let mut out = HashMap::with_capacity(starts.len());
    for part in starts.chunks(IDS_PER_STATEMENT) {
        let mut sql = Sql::new(
            conn.get_database_backend(),
            "SELECT start_iter, data FROM scalar_chunks WHERE series_id = ",
        );
        sql.param(series_id).push(" AND start_iter IN ");
        sql.tuple(part.iter().map(|id| Value::from(*id)));
        for row in conn.query_all_raw(sql.build()).await.map_err(db_error)? {
            let data: Vec<u8> = get(&row, "data")?;
            out.insert(
                get(&row, "start_iter")?,
                chunk::decode(&data).map_err(corrupt)?,
            );
        }
    }
    Ok(out)
}

async fn delete_series_chunks(conn: &impl ConnectionTrait, series_id: i64) -> Result<()> {
    let mut sql = Sql::new(
        conn.get_database_backend(),
        "DELETE FROM scalar_chunks WHERE series_id = ",
    );
    sql.param(series_id);
    conn.execute_raw(sql.build()).await.map_err(db_error)?;
    Ok(())
}

fn event_payload(e: &ValidEvent) -> (Vec<u8>, String, String) {
    match &e.payload {
        Payload::Vector { values } => (
            values
                .iter()
                .flat_map(|v| v.to_bits().to_le_bytes())
                .collect(),
            String::new(),
            String::new(),
        ),
        Payload::Plot { json, .. } => (json.as_bytes().to_vec(), String::new(), String::new()),
        Payload::DebugSample { url, key } => (Vec::new(), url.clone(), key.clone()),
        Payload::Scalar { .. } | Payload::Log { .. } => (Vec::new(), String::new(), String::new()),
    }
}

async fn write_others(txn: &Tx<'_>, events: &[&ValidEvent], received: i64) -> Result<()> {
    let backend = txn.get_database_backend();
    // One row per key per statement (PostgreSQL refuses to upsert a row
    // twice in one statement): the last arrival wins.
    type Key = (String, bool, i32, String, i64);
    type Row<'a> = (&'a ValidEvent, Vec<u8>, String, String);
    let mut rows: BTreeMap<Key, Row<'_>> = BTreeMap::new();
    for e in events {
        let (payload, url, key) = event_payload(e);
        let kind = e.payload.kind() as i32;
        rows.insert(
            (
                e.task.id.clone(),
                e.task.model,
                kind,
                ident(&e.metric, &e.variant, &key),
                e.iteration,
            ),
            (e, payload, url, key),
        );
    }
    let rows: Vec<_> = rows.into_iter().collect();
    for part in rows.chunks(ROWS_PER_STATEMENT / 2) {
        let mut sql = Sql::new(
            backend,
            "INSERT INTO events (task_id, model, kind, ident, metric, variant, iteration, \
             sample_key, timestamp, received, url, compressed, payload) VALUES ",
        );
        for (i, ((task, model, kind, id, iteration), (e, payload, url, key))) in
            part.iter().enumerate()
        {
            if i > 0 {
                sql.push(", ");
            }
            sql.tuple([
                Value::from(task.clone()),
                model_value(*model),
                Value::SmallInt(Some(*kind as i16)),
                Value::from(id.clone()),
                Value::from(e.metric.clone()),
                Value::from(e.variant.clone()),
                Value::from(*iteration),
                Value::from(key.clone()),
                Value::from(e.timestamp_ms),
                Value::from(received),
                Value::from(url.clone()),
                Value::SmallInt(Some(0)),
                Value::Bytes(Some(payload.clone())),
            ]);
        }
        sql.push(
            " ON CONFLICT (task_id, model, kind, ident, iteration) DO UPDATE SET \
             metric = excluded.metric, variant = excluded.variant, sample_key = excluded.sample_key, \
             timestamp = excluded.timestamp, received = excluded.received, url = excluded.url, \
             compressed = excluded.compressed, payload = excluded.payload",
        );
        txn.execute_raw(sql.build()).await.map_err(db_error)?;
    }
    Ok(())
}

/// Inserts one request's log events, dropping repeats of (task, batch id,
/// sequence); returns how many were new and adds them to `added`.
async fn write_logs(
    txn: &Tx<'_>,
    batch: &WriteBatch,
    events: &[&ValidEvent],
    added: &mut Vec<LogRow>,
) -> Result<u32> {
    let backend = txn.get_database_backend();
    let mut inserted = 0;
    let mut by_key: HashMap<(String, i64), Vec<&ValidEvent>> = HashMap::new();
    for e in events {
        by_key
            .entry((e.task.id.clone(), e.sequence as i64))
            .or_default()
            .push(e);
    }
    for v in by_key.values_mut() {
        v.reverse();
    }
    let mut rows: Vec<LogRow> = Vec::new();
    for part in events.chunks(ROWS_PER_STATEMENT) {
        let mut sql = Sql::new(
            backend,
            "INSERT INTO log_events (task_id, timestamp, received, level, worker, message, \
             batch_id, seq) VALUES ",
        );
        for (i, e) in part.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            let Payload::Log {
                level,
                worker,
                message,
            } = &e.payload
            else {
                continue;
            };
            sql.tuple([
                Value::from(e.task.id.clone()),
                Value::from(e.timestamp_ms),
                Value::from(batch.received_ms),
                Value::SmallInt(Some(*level as i16)),
                Value::from(worker.clone()),
                Value::from(message.clone()),
                Value::String(batch.batch_id.clone()),
                Value::from(e.sequence as i64),
            ]);
        }
        sql.push(" ON CONFLICT DO NOTHING RETURNING id, task_id, seq");
        for row in txn.query_all_raw(sql.build()).await.map_err(db_error)? {
            inserted += 1;
            let task: String = get(&row, "task_id")?;
            let seq: i64 = get(&row, "seq")?;
            let found = by_key.get_mut(&(task, seq)).and_then(|v| v.pop());
            if let Some(e) = found {
                rows.push(LogRow {
                    id: get(&row, "id")?,
                    event: Event {
                        task: e.task.clone(),
                        timestamp_ms: e.timestamp_ms,
                        received_ms: Some(batch.received_ms),
                        iteration: e.iteration,
                        metric: e.metric.clone(),
                        variant: e.variant.clone(),
                        payload: e.payload.clone(),
                    },
                });
            }
        }
    }
    rows.sort_by_key(|r| r.id);
    added.extend(rows);
    Ok(inserted)
}

/// Rewrites a series from `points` (all it keeps), recomputing its summary;
/// deletes the series when nothing is left. Min and max then cover the kept
/// values only.
async fn rewrite_series(txn: &Tx<'_>, mut row: SeriesRow, points: Vec<Point>) -> Result<()> {
    let backend = txn.get_database_backend();
    delete_series_chunks(txn, row.summary.id).await?;
    if points.is_empty() {
        let mut sql = Sql::new(backend, "DELETE FROM metric_series WHERE id = ");
        sql.param(row.summary.id);
        txn.execute_raw(sql.build()).await.map_err(db_error)?;
        return Ok(());
    }
    let s = &mut row.summary;
    s.stats = Stats::EMPTY;
    s.min_iter = 0;
    s.max_iter = 0;
    for p in &points {
        if !p.value.is_nan() {
            if s.stats.nonnan == 0 || p.value < s.stats.min {
                s.min_iter = p.iter;
            }
            if s.stats.nonnan == 0 || p.value > s.stats.max {
                s.max_iter = p.iter;
            }
        }
        s.stats.push(p.value);
    }
    let first = points[0];
    let last = points[points.len() - 1];
    s.first = (first.iter, first.ts, first.value);
    s.last = (last.iter, last.ts, last.value);
    s.max_stored_iter = Some(last.iter);
    let mut inserts = Vec::new();
    let (bytes, tail) = new_chunks(s.id, &points, &mut inserts);
    s.bytes = bytes;
    row.tail_start = tail.map(|t| t.0);
    row.tail_count = tail.map_or(0, |t| t.1);
    insert_chunks(txn, inserts).await?;
    update_series(txn, &[row]).await
}

fn kind_of_row(row: &QueryResult) -> Result<Kind> {
    let k: i16 = get(row, "kind")?;
    Kind::from_i32(i32::from(k)).ok_or_else(|| Error::internal(std::io::Error::other("bad kind")))
}

/// Deletes a task's events of some kinds (older than `before` when given).
async fn delete_task(txn: &Tx<'_>, spec: &DeleteSpec, notices: &mut Notices) -> Result<Deleted> {
    let backend = txn.get_database_backend();
    let task = &spec.task;
    let mut out = Deleted::default();
    let all_kinds = Kind::ALL.iter().all(|k| spec.kinds.contains(k));
    if spec.kinds.contains(&Kind::Scalar) {
        for row in load_series(txn, std::slice::from_ref(&task.id), Some(task.model)).await? {
            let metas = chunk_metas_in(txn, row.summary.id, None).await?;
            let ids: Vec<i64> = metas.iter().map(|m| m.id).collect();
            match spec.before_ms {
                None => {
                    *out.counts.entry(Kind::Scalar).or_default() += row.summary.stats.count;
                    out.bytes += row.summary.bytes.max(0) as u64;
                    rewrite_series(txn, row, Vec::new()).await?;
                }
                Some(before) => {
                    if metas.iter().all(|m| m.min_ts >= before) {
                        continue;
                    }
                    let mut points = chunk_points_in(txn, row.summary.id, &ids).await?;
                    let mut kept = Vec::new();
                    let mut removed = 0u64;
                    for id in &ids {
                        for p in points.remove(id).unwrap_or_default() {
                            if p.ts < before {
                                removed += 1;
                            } else {
                                kept.push(p);
                            }
                        }
                    }
                    let old_bytes = row.summary.bytes;
                    let kept_len = kept.len();
                    *out.counts.entry(Kind::Scalar).or_default() += removed;
                    rewrite_series(txn, row, kept).await?;
                    let new_bytes = if kept_len == 0 {
                        0
                    } else {
                        kept_len as i64 * 10 + CHUNK_OVERHEAD
                    };
                    out.bytes += (old_bytes - new_bytes).max(0) as u64;
                }
            }
        }
    }
    let other: Vec<Kind> = spec
        .kinds
        .iter()
        .copied()
        .filter(|k| matches!(k, Kind::Vector | Kind::Plot | Kind::DebugSample))
        .collect();
    for kind in other {
        let filter = |sql: &mut Sql| {
            sql.param(task.id.clone())
                .push(" AND model = ")
                .param(model_value(task.model))
                .push(" AND kind = ")
                .param(Value::SmallInt(Some(kind as i16)));
            if let Some(b) = spec.before_ms {
                sql.push(" AND timestamp < ").param(b);
            }
        };
        let mut count = Sql::new(
            backend,
            "SELECT COUNT(*) AS n, CAST(SUM(length(payload) + length(metric) + length(variant) \
             + length(url) + length(sample_key) + 64) AS BIGINT) AS bytes FROM events WHERE task_id = ",
        );
        filter(&mut count);
        if let Some(row) = txn.query_one_raw(count.build()).await.map_err(db_error)? {
            out.bytes += get_u64(&row, "bytes")?;
        }
        if spec.return_urls && kind == Kind::DebugSample {
            let mut urls = Sql::new(backend, "SELECT DISTINCT url FROM events WHERE task_id = ");
            filter(&mut urls);
            for row in txn.query_all_raw(urls.build()).await.map_err(db_error)? {
                let url: String = get(&row, "url")?;
                if !url.is_empty() {
                    out.urls.push(url);
                }
            }
        }
        let mut del = Sql::new(backend, "DELETE FROM events WHERE task_id = ");
        filter(&mut del);
        let n = txn
            .execute_raw(del.build())
            .await
            .map_err(db_error)?
            .rows_affected();
        if n > 0 {
            *out.counts.entry(kind).or_default() += n;
        }
    }
    if spec.kinds.contains(&Kind::Log) && !task.model {
        let mut bytes = Sql::new(
            backend,
            "SELECT CAST(SUM(length(message) + length(worker) + 64) AS BIGINT) AS bytes \
             FROM log_events WHERE task_id = ",
        );
        bytes.param(task.id.clone());
        let mut del = Sql::new(backend, "DELETE FROM log_events WHERE task_id = ");
        del.param(task.id.clone());
        if let Some(b) = spec.before_ms {
            bytes.push(" AND timestamp < ").param(b);
            del.push(" AND timestamp < ").param(b);
        }
        if let Some(row) = txn.query_one_raw(bytes.build()).await.map_err(db_error)? {
            out.bytes += get_u64(&row, "bytes")?;
        }
        let n = txn
            .execute_raw(del.build())
            .await
            .map_err(db_error)?
            .rows_affected();
        if n > 0 {
            *out.counts.entry(Kind::Log).or_default() += n;
        }
        if spec.before_ms.is_none() {
            notices
                .0
                .push(LogNotice::Deleted(Arc::new(vec![task.id.clone()])));
        }
    }
    if all_kinds && spec.before_ms.is_none() {
        let mut sql = Sql::new(backend, "DELETE FROM task_state WHERE task_id = ");
        sql.param(task.id.clone())
            .push(" AND model = ")
            .param(model_value(task.model));
        txn.execute_raw(sql.build()).await.map_err(db_error)?;
    }
    out.urls.sort();
    out.urls.dedup();
    Ok(out)
}

/// Applies a task's retention rules, delete rules first.
async fn retain_task(
    txn: &Tx<'_>,
    work: &RetentionWork,
    notices: &mut Notices,
) -> Result<RetentionDone> {
    let mut done = RetentionDone::default();
    for rule in &work.rules {
        let cutoff = work.now_ms.saturating_sub(rule.max_age_ms);
        match rule.action {
            RetentionAction::Delete => {
                let kinds = if rule.kinds.is_empty() {
                    Kind::ALL.to_vec()
                } else {
                    rule.kinds.clone()
                };
                let d = delete_task(
                    txn,
                    &DeleteSpec {
                        task: work.task.clone(),
                        kinds,
                        before_ms: Some(cutoff),
                        return_urls: work.return_urls,
                    },
                    notices,
                )
                .await?;
                for (k, n) in d.counts {
                    *done.deleted.counts.entry(k).or_default() += n;
                }
                done.deleted.bytes += d.bytes;
                done.deleted.urls.extend(d.urls);
            }
            RetentionAction::Downsample => {
                let samples = if rule.samples == 0 {
                    1000
                } else {
                    rule.samples
                };
                let series = load_series(
                    txn,
                    std::slice::from_ref(&work.task.id),
                    Some(work.task.model),
                )
                .await?;
                for row in series {
                    let metas = chunk_metas_in(txn, row.summary.id, None).await?;
                    if metas.iter().all(|m| m.min_ts >= cutoff) {
                        continue;
                    }
                    let ids: Vec<i64> = metas.iter().map(|m| m.id).collect();
                    let mut decoded = chunk_points_in(txn, row.summary.id, &ids).await?;
                    let mut points: Vec<Point> = ids
                        .iter()
                        .flat_map(|id| decoded.remove(id).unwrap_or_default())
                        .collect();
                    points.sort_by_key(|p| p.iter);
                    let (old, mut kept): (Vec<Point>, Vec<Point>) = points
                        .into_iter()
                        .partition(|p| p.ts < cutoff && p.iter != SINGLE_VALUE_ITER);
                    if old.len() <= samples as usize {
                        continue;
                    }
                    let reduced = downsample_points(&old, samples);
                    done.points_before += old.len() as u64;
                    done.points_after += reduced.len() as u64;
                    let taken: HashSet<i64> = kept.iter().map(|p| p.iter).collect();
                    kept.extend(reduced.into_iter().filter(|p| !taken.contains(&p.iter)));
                    kept.sort_by_key(|p| p.iter);
                    // Summaries are not changed by downsampling.
                    let mut row = row;
                    let summary = row.summary.clone();
                    delete_series_chunks(txn, summary.id).await?;
                    let mut inserts = Vec::new();
                    let (bytes, tail) = new_chunks(summary.id, &kept, &mut inserts);
                    insert_chunks(txn, inserts).await?;
                    done.deleted.bytes += (summary.bytes - bytes).max(0) as u64;
                    row.summary.bytes = bytes;
                    row.tail_start = tail.map(|t| t.0);
                    row.tail_count = tail.map_or(0, |t| t.1);
                    row.summary.max_stored_iter = kept.last().map(|p| p.iter);
                    update_series(txn, &[row]).await?;
                }
            }
        }
    }
    Ok(done)
}

/// Replaces points by their bucket means (the bucketing of series reads):
/// one point per bucket at its lower bound, with the bucket's last timestamp.
pub(crate) fn downsample_points(points: &[Point], samples: u32) -> Vec<Point> {
    let (Some(min), Some(max)) = (
        points.iter().map(|p| p.iter).min(),
        points.iter().map(|p| p.iter).max(),
    ) else {
        return Vec::new();
    };
    let width = downsample::interval(min, max, samples);
    let mut buckets: BTreeMap<i64, (Stats, i64)> = BTreeMap::new();
    for p in points {
        let b = i128::from(p.iter).div_euclid(i128::from(width)) * i128::from(width);
        let entry = buckets
            .entry(i64::try_from(b).unwrap_or(i64::MIN))
            .or_insert((Stats::EMPTY, i64::MIN));
        entry.0.push(p.value);
        entry.1 = entry.1.max(p.ts);
    }
    buckets
        .into_iter()
        .map(|(iter, (stats, ts))| Point {
            iter,
            ts,
            value: stats.mean(),
        })
        .collect()
}

fn event_from_row(row: &QueryResult) -> Result<Event> {
    let kind = kind_of_row(row)?;
    let payload: Vec<u8> = get(row, "payload")?;
    let payload = match kind {
        Kind::Vector => Payload::Vector {
            values: payload
                .chunks_exact(8)
                .map(|b| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    f64::from_bits(u64::from_le_bytes(a))
                })
                .collect(),
        },
        Kind::Plot => Payload::Plot {
            json: String::from_utf8(payload).map_err(Error::internal)?,
            skip_validation: false,
        },
        Kind::DebugSample => Payload::DebugSample {
            url: get(row, "url")?,
            key: get(row, "sample_key")?,
        },
        Kind::Scalar | Kind::Log => {
            return Err(Error::internal(std::io::Error::other("unexpected kind")));
        }
    };
    Ok(Event {
        task: TaskRef {
            id: get(row, "task_id")?,
            model: get::<i16>(row, "model")? != 0,
        },
        timestamp_ms: get(row, "timestamp")?,
        received_ms: Some(get(row, "received")?),
        iteration: get(row, "iteration")?,
        metric: get(row, "metric")?,
        variant: get(row, "variant")?,
        payload,
    })
}

fn log_from_row(row: &QueryResult) -> Result<LogRow> {
    Ok(LogRow {
        id: get(row, "id")?,
        event: Event {
            task: TaskRef {
                id: get(row, "task_id")?,
                model: false,
            },
            timestamp_ms: get(row, "timestamp")?,
            received_ms: Some(get(row, "received")?),
            iteration: 0,
            metric: String::new(),
            variant: String::new(),
            payload: Payload::Log {
                level: i32::from(get::<i16>(row, "level")?),
                worker: get(row, "worker")?,
                message: get(row, "message")?,
            },
        },
    })
}

impl SqlMetricsStore {
    fn task_filter(&self, text: &str, task: &TaskRef, kind: Kind) -> Sql {
        let mut sql = self.sql(text);
        sql.param(task.id.clone())
            .push(" AND model = ")
            .param(model_value(task.model))
            .push(" AND kind = ")
            .param(Value::SmallInt(Some(kind as i16)));
        sql
    }
}

#[async_trait]
impl MetricsStore for SqlMetricsStore {
    async fn write(&self, mut batch: WriteBatch) -> Result<WriteOutcome> {
        if batch
            .events
            .iter()
            .any(|e| matches!(e.payload, Payload::Scalar { .. }))
        {
            let (events, mut series) = crate::service::group_scalars(batch.events);
            series.append(&mut batch.series);
            batch.events = events;
            batch.series = series;
        }
        match self.submit(Op::Write(batch)).await? {
            Done::Write(o) => Ok(o),
            _ => Err(Error::internal(std::io::Error::other(
                "writer answered another job",
            ))),
        }
    }

    async fn set_locks(&self, locks: Vec<TaskLock>, now_ms: i64) -> Result<u32> {
        match self.submit(Op::Locks(locks, now_ms)).await? {
            Done::Locks(n) => Ok(n),
            _ => Err(Error::internal(std::io::Error::other(
                "writer answered another job",
            ))),
        }
    }

    async fn list_locks(&self, after: Option<TaskRef>, limit: u64) -> Result<Vec<TaskLock>> {
        let mut q = task_lock::Entity::find()
            .order_by_asc(task_lock::Column::TaskId)
            .order_by_asc(task_lock::Column::Model)
            .limit(limit);
        if let Some(after) = after {
            use sea_orm::ExprTrait as _;
            let m = i16::from(after.model);
            q = q.filter(
                task_lock::Column::TaskId
                    .gt(after.id.clone())
                    .or(task_lock::Column::TaskId
                        .eq(after.id)
                        .and(task_lock::Column::Model.gt(m))),
            );
        }
        Ok(q.all(&self.db)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(|l| TaskLock {
                task: TaskRef {
                    id: l.task_id,
                    model: l.model != 0,
                },
                locked: true,
                since_ms: l.since,
            })
            .collect())
    }

    async fn count_locks(&self) -> Result<u64> {
        task_lock::Entity::find()
            .count(&self.db)
            .await
            .map_err(db_error)
    }

    async fn locked(&self, tasks: &[TaskRef]) -> Result<HashSet<TaskRef>> {
        let all = locked_in(&self.db, tasks).await?;
        Ok(tasks.iter().filter(|t| all.contains(*t)).cloned().collect())
    }

    async fn task_states(
        &self,
        tasks: &[String],
        model: bool,
    ) -> Result<HashMap<String, TaskState>> {
        let mut out = HashMap::new();
        for part in tasks.chunks(IDS_PER_STATEMENT) {
            let mut sql = self.sql(
                "SELECT task_id, last_iteration, last_update, last_event_ts FROM task_state WHERE model = ",
            );
            sql.param(model_value(model)).push(" AND task_id IN ");
            sql.tuple(part.iter().map(|s| Value::from(s.clone())));
            for row in self.all(sql).await? {
                out.insert(
                    get(&row, "task_id")?,
                    TaskState {
                        last_iteration: get(&row, "last_iteration")?,
                        last_update_ms: Some(get(&row, "last_update")?),
                        last_event_ms: Some(get(&row, "last_event_ts")?),
                    },
                );
            }
        }
        Ok(out)
    }

    async fn series(&self, tasks: &[String], model: bool) -> Result<Vec<SeriesSummary>> {
        Ok(load_series(&self.db, tasks, Some(model))
            .await?
            .into_iter()
            .map(|r| r.summary)
            .collect())
    }

    async fn chunk_metas(
        &self,
        series_id: i64,
        iterations: Option<(i64, i64)>,
    ) -> Result<Vec<ChunkMeta>> {
        chunk_metas_in(&self.db, series_id, iterations).await
    }

    async fn chunk_points(&self, series_id: i64, ids: &[i64]) -> Result<HashMap<i64, Vec<Point>>> {
        chunk_points_in(&self.db, series_id, ids).await
    }

    async fn event_names(
        &self,
        tasks: &[String],
        model: bool,
        kinds: &[Kind],
    ) -> Result<Vec<(String, Kind, String, String)>> {
        let mut out = Vec::new();
        for part in tasks.chunks(IDS_PER_STATEMENT) {
            let mut sql = self
                .sql("SELECT DISTINCT task_id, kind, metric, variant FROM events WHERE model = ");
            sql.param(model_value(model)).push(" AND kind IN ");
            sql.tuple(kinds.iter().map(|k| Value::SmallInt(Some(*k as i16))));
            sql.push(" AND task_id IN ")
                .tuple(part.iter().map(|s| Value::from(s.clone())));
            for row in self.all(sql).await? {
                out.push((
                    get(&row, "task_id")?,
                    kind_of_row(&row)?,
                    get(&row, "metric")?,
                    get(&row, "variant")?,
                ));
            }
        }
        Ok(out)
    }

    async fn tasks_with_logs(&self, tasks: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for part in tasks.chunks(IDS_PER_STATEMENT) {
            let mut sql = self.sql("SELECT DISTINCT task_id FROM log_events WHERE task_id IN ");
            sql.tuple(part.iter().map(|s| Value::from(s.clone())));
            for row in self.all(sql).await? {
                out.push(get(&row, "task_id")?);
            }
        }
        Ok(out)
    }

    async fn logs(
        &self,
        task_id: &str,
        direction: Direction,
        from: Option<LogPosition>,
        limit: u64,
    ) -> Result<Vec<LogRow>> {
        let mut sql = self.sql(
            "SELECT id, task_id, timestamp, received, level, worker, message FROM log_events WHERE task_id = ",
        );
        sql.param(task_id.to_owned());
        let (cmp, order) = match direction {
            Direction::Later => (">", "ASC"),
            Direction::Earlier => ("<", "DESC"),
        };
        if let Some(p) = from {
            sql.push(&format!(" AND (timestamp {cmp} "))
                .param(p.ts)
                .push(" OR (timestamp = ")
                .param(p.ts)
                .push(&format!(" AND id {cmp} "))
                .param(p.id)
                .push("))");
        }
        sql.push(&format!(
            " ORDER BY timestamp {order}, id {order} LIMIT {limit}"
        ));
        self.all(sql).await?.iter().map(log_from_row).collect()
    }

    async fn count_logs(&self, task_id: &str) -> Result<u64> {
        let mut sql = self.sql("SELECT COUNT(*) AS n FROM log_events WHERE task_id = ");
        sql.param(task_id.to_owned());
        let rows = self.all(sql).await?;
        rows.first().map_or(Ok(0), |r| get_u64(r, "n"))
    }

    async fn max_log_id(&self) -> Result<i64> {
        let rows = self
            .all(self.sql("SELECT MAX(id) AS n FROM log_events"))
            .await?;
        Ok(rows
            .first()
            .map_or(Ok(None), |r| get::<Option<i64>>(r, "n"))?
            .unwrap_or(0))
    }

    fn subscribe_logs(&self) -> broadcast::Receiver<LogNotice> {
        self.logs.subscribe()
    }

    async fn iterations(
        &self,
        task: &TaskRef,
        kind: Kind,
        selectors: &[Selector],
        below: Option<i64>,
        limit: u64,
    ) -> Result<Vec<i64>> {
        let mut sql = self.task_filter(
            "SELECT DISTINCT iteration FROM events WHERE task_id = ",
            task,
            kind,
        );
        if let Some(b) = below {
            sql.push(" AND iteration < ").param(b);
        }
        sql.selectors(selectors);
        sql.push(&format!(" ORDER BY iteration DESC LIMIT {limit}"));
        self.all(sql)
            .await?
            .iter()
            .map(|r| get(r, "iteration"))
            .collect()
    }

    async fn events(
        &self,
        task: &TaskRef,
        kind: Kind,
        selectors: &[Selector],
        lo: i64,
        hi: i64,
        limit: Option<u64>,
    ) -> Result<Vec<Event>> {
        let mut sql = self.task_filter(
            "SELECT task_id, model, kind, metric, variant, iteration, sample_key, timestamp, \
             received, url, compressed, payload FROM events WHERE task_id = ",
            task,
            kind,
        );
        sql.push(" AND iteration >= ")
            .param(lo)
            .push(" AND iteration <= ")
            .param(hi);
        sql.selectors(selectors);
        sql.push(" ORDER BY iteration DESC, metric, variant, sample_key");
        if let Some(l) = limit {
            sql.push(&format!(" LIMIT {l}"));
        }
        self.all(sql).await?.iter().map(event_from_row).collect()
    }

    async fn count_events(&self, task: &TaskRef, kind: Kind) -> Result<u64> {
        let sql = self.task_filter(
            "SELECT COUNT(*) AS n FROM events WHERE task_id = ",
            task,
            kind,
        );
        let rows = self.all(sql).await?;
        rows.first().map_or(Ok(0), |r| get_u64(r, "n"))
    }

    async fn iteration_bounds(
        &self,
        task: &TaskRef,
        kind: Kind,
        metric: &str,
        variant: &str,
    ) -> Result<(Option<i64>, Option<i64>)> {
        let mut sql = self.task_filter(
            "SELECT MIN(iteration) AS lo, MAX(iteration) AS hi FROM events WHERE task_id = ",
            task,
            kind,
        );
        sql.push(" AND metric = ")
            .param(metric.to_owned())
            .push(" AND variant = ")
            .param(variant.to_owned());
        let rows = self.all(sql).await?;
        match rows.first() {
            Some(r) => Ok((get(r, "lo")?, get(r, "hi")?)),
            None => Ok((None, None)),
        }
    }

    async fn next_iteration(
        &self,
        task: &TaskRef,
        kind: Kind,
        metric: &str,
        variant: &str,
        after: i64,
    ) -> Result<Option<i64>> {
        let mut sql = self.task_filter(
            "SELECT MIN(iteration) AS lo FROM events WHERE task_id = ",
            task,
            kind,
        );
        sql.push(" AND metric = ")
            .param(metric.to_owned())
            .push(" AND variant = ")
            .param(variant.to_owned())
            .push(" AND iteration > ")
            .param(after);
        let rows = self.all(sql).await?;
        rows.first().map_or(Ok(None), |r| get(r, "lo"))
    }

    async fn metric_iterations(
        &self,
        task: &TaskRef,
        kind: Kind,
        selectors: &[Selector],
    ) -> Result<Vec<(String, i64)>> {
        let mut sql = self.task_filter(
            "SELECT DISTINCT metric, iteration FROM events WHERE task_id = ",
            task,
            kind,
        );
        sql.selectors(selectors);
        self.all(sql)
            .await?
            .iter()
            .map(|r| Ok((get(r, "metric")?, get(r, "iteration")?)))
            .collect()
    }

    async fn delete(&self, specs: Vec<DeleteSpec>) -> Result<HashMap<String, Deleted>> {
        match self.submit(Op::Delete(specs)).await? {
            Done::Delete(d) => Ok(d),
            _ => Err(Error::internal(std::io::Error::other(
                "writer answered another job",
            ))),
        }
    }

    async fn usage(&self, tasks: &[String], model: bool) -> Result<HashMap<String, KindUsage>> {
        let mut out: HashMap<String, KindUsage> = HashMap::new();
        for part in tasks.chunks(IDS_PER_STATEMENT) {
            let ids = || part.iter().map(|s| Value::from(s.clone()));
            let mut sql = self.sql(
                "SELECT task_id, CAST(SUM(count) AS BIGINT) AS n, CAST(SUM(bytes + 128) AS BIGINT) AS bytes \
                 FROM metric_series WHERE model = ",
            );
            sql.param(model_value(model))
                .push(" AND task_id IN ")
                .tuple(ids());
            sql.push(" GROUP BY task_id");
            for row in self.all(sql).await? {
                let u = Usage {
                    events: get_u64(&row, "n")?,
                    bytes: get_u64(&row, "bytes")?,
                };
                if u.events > 0 {
                    out.entry(get(&row, "task_id")?)
                        .or_default()
                        .insert(Kind::Scalar, u);
                }
            }
            let mut sql = self.sql(
                "SELECT task_id, kind, COUNT(*) AS n, CAST(SUM(length(payload) + length(metric) + \
                 length(variant) + length(url) + length(sample_key) + 64) AS BIGINT) AS bytes \
                 FROM events WHERE model = ",
            );
            sql.param(model_value(model))
                .push(" AND task_id IN ")
                .tuple(ids());
            sql.push(" GROUP BY task_id, kind");
            for row in self.all(sql).await? {
                out.entry(get(&row, "task_id")?).or_default().insert(
                    kind_of_row(&row)?,
                    Usage {
                        events: get_u64(&row, "n")?,
                        bytes: get_u64(&row, "bytes")?,
                    },
                );
            }
            if !model {
                let mut sql = self.sql(
                    "SELECT task_id, COUNT(*) AS n, CAST(SUM(length(message) + length(worker) + 64) \
                     AS BIGINT) AS bytes FROM log_events WHERE task_id IN ",
                );
                sql.tuple(ids()).push(" GROUP BY task_id");
                for row in self.all(sql).await? {
                    out.entry(get(&row, "task_id")?).or_default().insert(
                        Kind::Log,
                        Usage {
                            events: get_u64(&row, "n")?,
                            bytes: get_u64(&row, "bytes")?,
                        },
                    );
                }
            }
        }
        Ok(out)
    }

    async fn total_usage(&self) -> Result<GroupUsage> {
        let mut total = GroupUsage::default();
        let rows = self
            .all(self.sql(
                "SELECT CAST(SUM(count) AS BIGINT) AS n, CAST(SUM(bytes + 128) AS BIGINT) AS bytes FROM metric_series",
            ))
            .await?;
        if let Some(r) = rows.first() {
            let u = Usage {
                events: get_u64(r, "n")?,
                bytes: get_u64(r, "bytes")?,
            };
            if u.events > 0 {
                total.kinds.insert(Kind::Scalar, u);
            }
        }
        for row in self
            .all(self.sql(
                "SELECT kind, COUNT(*) AS n, CAST(SUM(length(payload) + length(metric) + \
                 length(variant) + length(url) + length(sample_key) + 64) AS BIGINT) AS bytes \
                 FROM events GROUP BY kind",
            ))
            .await?
        {
            total.kinds.insert(
                kind_of_row(&row)?,
                Usage {
                    events: get_u64(&row, "n")?,
                    bytes: get_u64(&row, "bytes")?,
                },
            );
        }
        let rows = self
            .all(self.sql(
                "SELECT COUNT(*) AS n, CAST(SUM(length(message) + length(worker) + 64) AS BIGINT) AS bytes FROM log_events",
            ))
            .await?;
        if let Some(r) = rows.first() {
            let u = Usage {
                events: get_u64(r, "n")?,
                bytes: get_u64(r, "bytes")?,
            };
            if u.events > 0 {
                total.kinds.insert(Kind::Log, u);
            }
        }
        let rows = self
            .all(self.sql(
                "SELECT COUNT(*) AS n FROM (SELECT task_id, model FROM metric_series \
                 UNION SELECT task_id, model FROM events \
                 UNION SELECT task_id, 0 AS model FROM log_events) AS t",
            ))
            .await?;
        total.tasks_with_events = rows
            .first()
            .map_or(Ok(0), |r| get_u64(r, "n"))?
            .try_into()
            .unwrap_or(u32::MAX);
        Ok(total)
    }

    async fn put_policy(&self, policy: &RetentionPolicy) -> Result<()> {
        self.submit(Op::PutPolicy(policy.clone())).await.map(|_| ())
    }

    async fn get_policy(&self, project_id: &str) -> Result<Option<RetentionPolicy>> {
        retention_policy::Entity::find_by_id(project_id.to_owned())
            .one(&self.db)
            .await
            .map_err(db_error)?
            .map(policy_from_model)
            .transpose()
    }

    async fn list_policies(
        &self,
        after: Option<String>,
        limit: u64,
    ) -> Result<Vec<RetentionPolicy>> {
        let mut q = retention_policy::Entity::find()
            .order_by_asc(retention_policy::Column::ProjectId)
            .limit(limit);
        if let Some(after) = after {
            q = q.filter(retention_policy::Column::ProjectId.gt(after));
        }
        q.all(&self.db)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(policy_from_model)
            .collect()
    }

    async fn delete_policy(&self, project_id: &str) -> Result<bool> {
        match self.submit(Op::DeletePolicy(project_id.to_owned())).await? {
            Done::Policy(b) => Ok(b),
            _ => Err(Error::internal(std::io::Error::other(
                "writer answered another job",
            ))),
        }
    }

    async fn retain(&self, work: RetentionWork) -> Result<RetentionDone> {
        match self.submit(Op::Retain(work)).await? {
            Done::Retain(d) => Ok(d),
            _ => Err(Error::internal(std::io::Error::other(
                "writer answered another job",
            ))),
        }
    }
}

fn policy_from_model(m: retention_policy::Model) -> Result<RetentionPolicy> {
    Ok(RetentionPolicy {
        project_id: m.project_id,
        rules: serde_json::from_str(&m.rules).map_err(Error::internal)?,
        include_locked: m.include_locked != 0,
        updated_ms: Some(m.updated),
    })
}

mod conn;

#[cfg(test)]
mod tests;
