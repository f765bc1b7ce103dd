//! The SQL backend's hot path: adds, pops and acknowledgements, applied by
//! one writer per process with group commit.
//!
//! Callers send their operation on a channel and wait for its reply. The
//! writer takes every operation waiting on the channel (up to
//! [`MAX_BATCH`]), takes the process's write turn (the mutex the other
//! mutations take too), and applies them in order in one transaction on a
//! connection of its own: one change sequence number and one commit for the
//! whole batch. Replies are sent only after the commit, so an acknowledged
//! add is durable; a batch that wrote nothing (pops of empty queues,
//! refused operations) rolls back.
//!
//! Every operation checks everything that can refuse it (the queue exists,
//! the task is queued elsewhere, the queue is full, the lease is unknown or
//! held by another worker) before it writes, so a refusal leaves the rest of
//! the batch intact. When a statement fails, the batch is rolled back and
//! each of its operations is retried alone, so one bad operation fails
//! alone.
//!
//! The writer differs by engine, not the rules:
//!
//! * SQLite ([`lite`]): a dedicated OS thread with its own `rusqlite`
//!   connection to the same database file, with the pool's durability
//!   settings. Statements run synchronously on that thread, prepared once,
//!   so no statement crosses threads: an operation costs the two wake-ups
//!   of its request and reply, whatever its number of statements (through
//!   sqlx each statement was a hop to the connection's worker thread and
//!   back, and the hops, not SQLite, were the cost). Another thread
//!   checkpoints the WAL, so no batch waits for a file sync; pop samples
//!   are written a little later than their pops (see [`lite`]).
//! * PostgreSQL (this file): a tokio task on its own sqlx connection (no
//!   thread hop there), whose batch opens by locking the `seq` row, so
//!   replicas serialise.
//!
//! Both read the queue's counters (`queue_counts`, kept by triggers) for its
//! length, capacity and the position of a new entry instead of counting the
//! queue.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sqlx::{self, Connection as _, Row as _};
use sea_orm::{DatabaseConnection, DbBackend};
use tasklab_error::Result;
use tokio::sync::{mpsc, oneshot};

use super::WriteLock;
use crate::backend::{Acked, Added, Entry, Lease, LeaseTarget, from_millis, millis};
use crate::entity::entry;
use crate::errors;

/// Most operations applied in one transaction.
pub(super) const MAX_BATCH: usize = 64;

/// The columns of an entry row, in `SELECT` and `RETURNING` lists.
macro_rules! cols {
    () => {
        "task_id, queue_id, priority, rank, added_ms, delivery, seq, leased, lease_id, \
         worker_id, acquired_ms, expires_ms, duration_ms, renewed_ms"
    };
}

/// One hot operation and where its outcome goes.
pub(super) enum Op {
    Add {
        queue: String,
        task: String,
        priority: i32,
        replace: bool,
        max: u32,
        now: DateTime<Utc>,
        reply: oneshot::Sender<Result<Added>>,
    },
    Pop {
        queues: Vec<String>,
        worker: String,
        lease: Duration,
        lease_id: String,
        now: DateTime<Utc>,
        reply: oneshot::Sender<Result<Option<(Entry, Lease)>>>,
    },
    Ack {
        target: LeaseTarget,
        worker: String,
        now: DateTime<Utc>,
        reply: oneshot::Sender<Result<Acked>>,
    },
    /// Answered once every pop sample taken so far is in `queue_pops`.
    Flush { reply: oneshot::Sender<Result<()>> },
}

/// The outcome of one operation inside a batch.
enum Out {
    Add(Result<Added>),
    Pop(Result<Option<(Entry, Lease)>>),
    Ack(Result<Acked>),
    Flush(Result<()>),
}

impl Op {
    fn reply(self, out: Result<Out>) {
        // A caller that gave up waiting dropped its receiver: nothing to do.
        match (self, out) {
            (Op::Add { reply, .. }, Ok(Out::Add(r))) => drop(reply.send(r)),
            (Op::Pop { reply, .. }, Ok(Out::Pop(r))) => drop(reply.send(r)),
            (Op::Ack { reply, .. }, Ok(Out::Ack(r))) => drop(reply.send(r)),
            (Op::Flush { reply }, Ok(Out::Flush(r))) => drop(reply.send(r)),
            (Op::Add { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (Op::Pop { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (Op::Ack { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (Op::Flush { reply }, Err(e)) => drop(reply.send(Err(e))),
            (op, Ok(_)) => op.reply(Err(errors::db("mismatched hot-path reply"))),
        }
    }
}

/// Applies `batch` with `apply` (one transaction for all of it); when that
/// fails, retries each operation alone so only the one at fault fails.
/// A macro so the same rule serves the synchronous and the async writer.
macro_rules! settle {
    ($batch:expr, |$ops:ident| $apply:expr) => {{
        let batch: &[Op] = $batch;
        let whole = {
            let $ops = batch;
            $apply
        };
        match whole {
            Ok(outs) => outs.into_iter().map(Ok).collect::<Vec<Result<Out>>>(),
            Err(err) if batch.len() == 1 => vec![Err(err)],
            Err(_) => {
                let mut outs = Vec::with_capacity(batch.len());
                for op in batch {
                    let out = {
                        let $ops = std::slice::from_ref(op);
                        $apply
                    };
                    outs.push(
                        out.and_then(|mut o| o.pop().ok_or_else(|| errors::db("no outcome"))),
                    );
                }
                outs
            }
        }
    }};
}

/// The PostgreSQL writer's connection.
type Conn = sqlx::PgConnection;

/// Reads column `$col` of `$row`.
macro_rules! col {
    ($row:expr, $col:expr) => {
        $row.try_get($col).map_err(errors::db)?
    };
}

/// Decodes an `entry::Model` from a row selecting `cols!()`.
macro_rules! model {
    ($row:expr) => {
        entry::Model {
            task_id: col!($row, "task_id"),
            queue_id: col!($row, "queue_id"),
            priority: col!($row, "priority"),
            rank: col!($row, "rank"),
            added_ms: col!($row, "added_ms"),
            delivery: col!($row, "delivery"),
            seq: col!($row, "seq"),
            leased: col!($row, "leased"),
            lease_id: col!($row, "lease_id"),
            worker_id: col!($row, "worker_id"),
            acquired_ms: col!($row, "acquired_ms"),
            expires_ms: col!($row, "expires_ms"),
            duration_ms: col!($row, "duration_ms"),
            renewed_ms: col!($row, "renewed_ms"),
        }
    };
}

/// Where operations go: the SQLite writer thread or the PostgreSQL writer
/// task.
#[derive(Debug, Clone)]
pub(super) enum Sender {
    Lite(std::sync::mpsc::Sender<Op>),
    Pg(mpsc::UnboundedSender<Op>),
}

/// Starts the writer for `db`'s engine (and, on SQLite, its checkpointer);
/// both end when every sender is dropped.
pub(super) async fn spawn(db: &DatabaseConnection, write: WriteLock) -> Result<Sender> {
    Ok(match db.get_database_backend() {
        DbBackend::Postgres => {
            let options = (*db.get_postgres_connection_pool().connect_options()).clone();
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(writer(options, write, rx));
            Sender::Pg(tx)
        }
        _ => Sender::Lite(lite::spawn(lite::Settings::of(db).await?, write)?),
    })
}

/// The PostgreSQL writer.
async fn writer(
    options: sqlx::postgres::PgConnectOptions,
    write: WriteLock,
    mut rx: mpsc::UnboundedReceiver<Op>,
) {
    let mut conn: Option<Conn> = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let turn = write.clone().lock_owned().await;
        let outs = settle!(&batch, |ops| apply(&options, &mut conn, ops).await);
        drop(turn);
        for (op, out) in batch.drain(..).zip(outs) {
            op.reply(out);
        }
    }
}

/// Applies `ops` in one transaction; on failure the transaction is rolled
/// back and the connection dropped (a new one starts clean).
async fn apply(
    options: &sqlx::postgres::PgConnectOptions,
    conn: &mut Option<Conn>,
    ops: &[Op],
) -> Result<Vec<Out>> {
    if conn.is_none() {
        *conn = Some(Conn::connect_with(options).await.map_err(errors::db)?);
    }
    let c = conn.as_mut().ok_or_else(|| errors::db("no connection"))?;
    match run(c, ops).await {
        Ok(outs) => Ok(outs),
        Err(err) => {
            if let Some(mut c) = conn.take() {
                let _ = sqlx::query("ROLLBACK").execute(&mut c).await;
                let _ = c.close().await;
            }
            Err(err)
        }
    }
}

struct Sample {
    queue: String,
    popped_ms: i64,
    wait_ms: i64,
    pending: i64,
}

/// What the batch did so far.
#[derive(Default)]
struct Batch {
    wrote: bool,
    samples: Vec<Sample>,
}

async fn run(c: &mut Conn, ops: &[Op]) -> Result<Vec<Out>> {
    exec(c, "BEGIN", &[]).await?;
    // The first statement takes the `seq` row lock (so replicas serialise)
    // and numbers the batch.
    let seq = {
        let sql = "UPDATE queue_meta SET ival = ival + 1 WHERE key = 'seq' RETURNING ival";
        {
            let row = sqlx::query(sql)
                .fetch_optional(&mut *c)
                .await
                .map_err(errors::db)?
                .ok_or_else(|| errors::db("the seq row is missing"))?;
            let seq: i64 = col!(row, "ival");
            seq
        }
    };
    let mut b = Batch::default();
    let mut outs = Vec::with_capacity(ops.len());
    for op in ops {
        outs.push(match op {
            Op::Add {
                queue,
                task,
                priority,
                replace,
                max,
                now,
                ..
            } => Out::Add(add(c, &mut b, seq, queue, task, *priority, *replace, *max, *now).await?),
            Op::Pop {
                queues,
                worker,
                lease,
                lease_id,
                now,
                ..
            } => Out::Pop(pop(c, &mut b, seq, queues, worker, *lease, lease_id, *now).await?),
            Op::Ack {
                target,
                worker,
                now,
                ..
            } => Out::Ack(ack(c, &mut b, seq, target, worker, *now).await?),
            // Each batch writes its own samples below.
            Op::Flush { .. } => Out::Flush(Ok(())),
        });
    }
    if !b.samples.is_empty() {
        let mut sql =
            String::from("INSERT INTO queue_pops (queue_id, popped_ms, wait_ms, pending) VALUES ");
        for i in 0..b.samples.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            let n = 4 * i;
            sql.push_str(&format!("(${}, ${}, ${}, ${})", n + 1, n + 2, n + 3, n + 4));
        }
        {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for s in &b.samples {
                q = q
                    .bind(s.queue.as_str())
                    .bind(s.popped_ms)
                    .bind(s.wait_ms)
                    .bind(i32::try_from(s.pending).unwrap_or(i32::MAX));
            }
            q.execute(&mut *c).await.map_err(errors::db)?;
        };
    }
    exec(c, if b.wrote { "COMMIT" } else { "ROLLBACK" }, &[]).await?;
    Ok(outs)
}

/// A bound value.
#[derive(Clone, Copy)]
enum V<'a> {
    S(&'a str),
    I(i64),
    P(i32),
}

macro_rules! bind_all {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match *a {
                V::S(s) => q.bind(s),
                V::I(i) => q.bind(i),
                V::P(i) => q.bind(i),
            };
        }
        q
    }};
}

async fn exec(c: &mut Conn, sql: &'static str, args: &[V<'_>]) -> Result<u64> {
    {
        let r = bind_all!(sqlx::query(sql), args)
            .execute(&mut *c)
            .await
            .map_err(errors::db)?;
        Ok(r.rows_affected())
    }
}

/// The entry rows `sql` returns.
async fn entries(c: &mut Conn, sql: &'static str, args: &[V<'_>]) -> Result<Vec<entry::Model>> {
    {
        let rows = bind_all!(sqlx::query(sql), args)
            .fetch_all(&mut *c)
            .await
            .map_err(errors::db)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(model!(row));
        }
        Ok(out)
    }
}

async fn touch(c: &mut Conn, task: &str, seq: i64) -> Result<()> {
    exec(
        c,
        "INSERT INTO queue_changes (task_id, seq) VALUES ($1, $2) \
         ON CONFLICT (task_id) DO UPDATE SET seq = excluded.seq",
        &[V::S(task), V::I(seq)],
    )
    .await?;
    Ok(())
}

async fn queue_exists(c: &mut Conn, queue: &str) -> Result<bool> {
    let sql = "SELECT COUNT(*) AS n FROM queues WHERE id = $1";
    {
        let row = sqlx::query(sql)
            .bind(queue)
            .fetch_one(&mut *c)
            .await
            .map_err(errors::db)?;
        let n: i64 = col!(row, "n");
        Ok(n > 0)
    }
}

/// Zero-based position of a waiting entry.
async fn position(c: &mut Conn, m: &entry::Model) -> Result<Option<u32>> {
    if m.leased {
        return Ok(None);
    }
    let sql = "SELECT COUNT(*) AS n FROM queue_entries WHERE queue_id = $1 AND leased = FALSE \
               AND (priority > $2 OR (priority = $2 AND (rank < $3 OR (rank = $3 AND task_id < $4))))";
    {
        let row = sqlx::query(sql)
            .bind(m.queue_id.as_str())
            .bind(m.priority)
            .bind(m.rank)
            .bind(m.task_id.as_str())
            .fetch_one(&mut *c)
            .await
            .map_err(errors::db)?;
        let n: i64 = col!(row, "n");
        Ok(Some(u32::try_from(n).unwrap_or(u32::MAX)))
    }
}

/// Inner `Err`: the operation was refused and wrote nothing; outer `Err`:
/// a statement failed (the batch is retried operation by operation).
type Step<T> = Result<Result<T>>;

#[allow(clippy::too_many_arguments)]
async fn add(
    c: &mut Conn,
    b: &mut Batch,
    seq: i64,
    queue: &str,
    task: &str,
    priority: i32,
    replace: bool,
    max: u32,
    now: DateTime<Utc>,
) -> Step<Added> {
    // The queue's existence is checked here, in the transaction that
    // inserts, so an add never lands in a queue deleted meanwhile (the
    // deletion drops entries under the same write order).
    let sql = "SELECT (SELECT COUNT(*) FROM queues WHERE id = $1) AS found, \
        (SELECT queue_id FROM queue_entries WHERE task_id = $2) AS existing, \
        CAST(COALESCE((SELECT SUM(waiting + leased) FROM queue_counts WHERE queue_id = $1), 0) AS BIGINT) AS total, \
        CAST(COALESCE((SELECT SUM(waiting) FROM queue_counts WHERE queue_id = $1 AND priority >= $3), 0) AS BIGINT) AS ahead, \
        (SELECT rank FROM queue_entries WHERE queue_id = $1 AND leased = FALSE AND priority = $3 \
         ORDER BY rank DESC LIMIT 1) AS last_rank";
    let (found, existing, total, ahead, last_rank) = {
        let row = sqlx::query(sql)
            .bind(queue)
            .bind(task)
            .bind(priority)
            .fetch_one(&mut *c)
            .await
            .map_err(errors::db)?;
        let found: i64 = col!(row, "found");
        let existing: Option<String> = col!(row, "existing");
        let total: i64 = col!(row, "total");
        let ahead: i64 = col!(row, "ahead");
        let last_rank: Option<i64> = col!(row, "last_rank");
        (found, existing, total, ahead, last_rank)
    };
    if found == 0 {
        return Ok(Err(errors::queue_not_found(queue)));
    }
    if let Some(existing) = &existing {
        if existing == queue {
            let sql = concat!("SELECT ", cols!(), " FROM queue_entries WHERE task_id = $1");
            let m = entries(c, sql, &[V::S(task)])
                .await?
                .pop()
                .ok_or_else(|| errors::db("queued entry vanished"))?;
            let pos = position(c, &m).await?;
            return Ok(Ok(Added {
                entry: super::to_entry(&m, pos),
                created: false,
                previous_queue_id: None,
            }));
        }
        if !replace {
            return Ok(Err(errors::task_already_queued(task, existing)));
        }
    }
    if total >= i64::from(max) {
        return Ok(Err(errors::queue_full(queue)));
    }
    let now_ms = millis(now);
    let rank = last_rank.map_or(now_ms, |r| r.saturating_add(1).max(now_ms));
    if existing.is_some() {
        exec(
            c,
            "DELETE FROM queue_entries WHERE task_id = $1",
            &[V::S(task)],
        )
        .await?;
    }
    exec(
        c,
        "INSERT INTO queue_entries (task_id, queue_id, priority, rank, added_ms, delivery, seq, \
         leased, lease_id, worker_id, acquired_ms, expires_ms, duration_ms, renewed_ms) \
         VALUES ($1, $2, $3, $4, $5, 0, $6, FALSE, '', '', 0, 0, 0, 0)",
        &[
            V::S(task),
            V::S(queue),
            V::P(priority),
            V::I(rank),
            V::I(now_ms),
            V::I(seq),
        ],
    )
    .await?;
    touch(c, task, seq).await?;
    b.wrote = true;
    Ok(Ok(created(task, queue, priority, now_ms, ahead, existing)))
}

/// The outcome of an add that created a new entry, `ahead` entries before
/// it (shared by the SQLite and PostgreSQL writers).
fn created(
    task: &str,
    queue: &str,
    priority: i32,
    now_ms: i64,
    ahead: i64,
    previous_queue_id: Option<String>,
) -> Added {
    Added {
        entry: Entry {
            task_id: task.to_owned(),
            queue_id: queue.to_owned(),
            added: from_millis(now_ms),
            priority,
            position: Some(u32::try_from(ahead).unwrap_or(u32::MAX)),
            lease: None,
            delivery_count: 0,
        },
        created: true,
        previous_queue_id,
    }
}

#[allow(clippy::too_many_arguments)]
async fn pop(
    c: &mut Conn,
    b: &mut Batch,
    seq: i64,
    queues: &[String],
    worker: &str,
    lease: Duration,
    lease_id: &str,
    now: DateTime<Utc>,
) -> Step<Option<(Entry, Lease)>> {
    if queues.len() > 1 {
        for q in queues {
            if !queue_exists(c, q).await? {
                return Ok(Err(errors::queue_not_found(q)));
            }
        }
    }
    for queue in queues {
        let sql = concat!(
            "SELECT ",
            cols!(),
            ", CAST(COALESCE((SELECT SUM(waiting) FROM queue_counts WHERE queue_id = $1), 0) \
             AS BIGINT) AS pending FROM queue_entries WHERE queue_id = $1 AND leased = FALSE \
             ORDER BY priority DESC, rank, task_id LIMIT 1"
        );
        let head = {
            let row = sqlx::query(sql)
                .bind(queue.as_str())
                .fetch_optional(&mut *c)
                .await
                .map_err(errors::db)?;
            match row {
                Some(row) => {
                    let pending: i64 = col!(row, "pending");
                    Some((model!(row), pending))
                }
                None => None,
            }
        };
        let Some((head, pending)) = head else {
            if queues.len() == 1 && !queue_exists(c, queue).await? {
                return Ok(Err(errors::queue_not_found(queue)));
            }
            continue;
        };
        let before = super::to_entry(&head, Some(0));
        let now_ms = millis(now);
        let dur_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let expires = now_ms.saturating_add(dur_ms);
        let delivery = head.delivery.saturating_add(1);
        exec(
            c,
            "UPDATE queue_entries SET leased = TRUE, lease_id = $2, worker_id = $3, \
             acquired_ms = $4, expires_ms = $5, duration_ms = $6, renewed_ms = $4, delivery = $7 \
             WHERE task_id = $1",
            &[
                V::S(&head.task_id),
                V::S(lease_id),
                V::S(worker),
                V::I(now_ms),
                V::I(expires),
                V::I(dur_ms),
                V::P(delivery),
            ],
        )
        .await?;
        touch(c, &head.task_id, seq).await?;
        b.wrote = true;
        b.samples.push(Sample {
            queue: queue.clone(),
            popped_ms: now_ms,
            wait_ms: (now_ms - head.added_ms).max(0),
            pending: (pending - 1).max(0),
        });
        let lease = Lease {
            lease_id: lease_id.to_owned(),
            task_id: head.task_id.clone(),
            queue_id: head.queue_id.clone(),
            worker_id: worker.to_owned(),
            priority: head.priority,
            added: from_millis(head.added_ms),
            acquired: from_millis(now_ms),
            expires: from_millis(expires),
            duration: Duration::from_millis(u64::try_from(dur_ms).unwrap_or(0)),
            last_renewed: from_millis(now_ms),
            delivery_attempt: u32::try_from(delivery).unwrap_or(0),
        };
        return Ok(Ok(Some((before, lease))));
    }
    Ok(Ok(None))
}

/// Records an acknowledged task on its registered worker, if any.
async fn note_worker(c: &mut Conn, lease: &Lease, now: DateTime<Utc>) -> Result<()> {
    if lease.worker_id.is_empty() {
        return Ok(());
    }
    exec(
        c,
        "UPDATE workers SET current_task_since_ms = CASE WHEN current_task_id = $2 \
         THEN current_task_since_ms ELSE $4 END, current_task_id = $2, current_queue_id = $3 \
         WHERE id = $1",
        &[
            V::S(&lease.worker_id),
            V::S(&lease.task_id),
            V::S(&lease.queue_id),
            V::I(millis(now)),
        ],
    )
    .await?;
    Ok(())
}

async fn ack(
    c: &mut Conn,
    b: &mut Batch,
    seq: i64,
    target: &LeaseTarget,
    worker: &str,
    now: DateTime<Utc>,
) -> Step<Acked> {
    const BY_LEASE: &str = concat!(
        "SELECT ",
        cols!(),
        " FROM queue_entries WHERE lease_id = $1 AND leased = TRUE"
    );
    const BY_TASK: &str = concat!("SELECT ", cols!(), " FROM queue_entries WHERE task_id = $1");
    let m = match target {
        LeaseTarget::LeaseId(id) => {
            // The common case in one statement: the holder acknowledges.
            let gone = entries(
                c,
                concat!(
                    "DELETE FROM queue_entries WHERE lease_id = $1 AND leased = TRUE \
                     AND ($2 = '' OR worker_id = '' OR worker_id = $2) RETURNING ",
                    cols!()
                ),
                &[V::S(id), V::S(worker)],
            )
            .await?
            .pop();
            if let Some(m) = gone {
                touch(c, &m.task_id, seq).await?;
                b.wrote = true;
                let lease = super::to_lease(&m).ok_or_else(|| errors::db("lease vanished"))?;
                note_worker(c, &lease, now).await?;
                return Ok(Ok(Acked::Acknowledged(lease)));
            }
            match entries(c, BY_LEASE, &[V::S(id)]).await?.pop() {
                Some(m) => return Ok(Err(errors::lease_not_owned(&m.lease_id))),
                None => return Ok(Err(errors::lease_not_found(id))),
            }
        }
        LeaseTarget::TaskId(task) => match entries(c, BY_TASK, &[V::S(task)]).await?.pop() {
            Some(m) => m,
            None => return Ok(Ok(Acked::NoLease)),
        },
    };
    if m.leased && super::check_owner(&m, worker).is_err() {
        return Ok(Err(errors::lease_not_owned(&m.lease_id)));
    }
    let out = if m.leased {
        let lease = super::to_lease(&m).ok_or_else(|| errors::db("lease vanished"))?;
        note_worker(c, &lease, now).await?;
        Acked::Acknowledged(lease)
    } else {
        Acked::Reclaimed(super::to_entry(&m, position(c, &m).await?))
    };
    exec(
        c,
        "DELETE FROM queue_entries WHERE task_id = $1",
        &[V::S(&m.task_id)],
    )
    .await?;
    touch(c, &m.task_id, seq).await?;
    b.wrote = true;
    Ok(Ok(out))
}

/// Sends `op` to the writer.
pub(super) fn send(tx: &Sender, op: Op) -> Result<()> {
    let sent = match tx {
        Sender::Lite(tx) => tx.send(op).is_ok(),
        Sender::Pg(tx) => tx.send(op).is_ok(),
    };
    if sent {
        Ok(())
    } else {
        Err(errors::db("the queue writer stopped"))
    }
}

/// Waits until every pop sample taken so far is in `queue_pops` (the
/// SQLite writer keeps them for a while; see [`lite`]).
pub(super) async fn flush(tx: &Sender) -> Result<()> {
    if let Sender::Pg(_) = tx {
        return Ok(());
    }
    let (reply, rx) = oneshot::channel();
    send(tx, Op::Flush { reply })?;
    recv(rx).await
}

/// Waits for a reply.
pub(super) async fn recv<T>(rx: oneshot::Receiver<Result<T>>) -> Result<T> {
    rx.await
        .map_err(|_| errors::db("the queue writer dropped an operation"))?
}

// After the macros, which it uses.
mod lite;
