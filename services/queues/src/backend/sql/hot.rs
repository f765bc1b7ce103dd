//! The SQL backend's hot path: adds, pops and acknowledgements, applied by
//! one writer task per process with group commit.
//!
//! Callers send their operation on a channel and wait for its reply. The
//! writer takes every operation waiting on the channel (up to
//! [`MAX_BATCH`]), takes the process's write turn (the mutex the other
//! mutations take too), and applies them in order in one transaction on a
//! connection of its own: one change sequence number, one pop-sample insert
//! and one commit for the whole batch. Replies are sent only after the
//! commit, so an acknowledged add is as durable as before; a batch that
//! wrote nothing (pops of empty queues, refused operations) rolls back.
//!
//! Every operation checks everything that can refuse it (the queue exists,
//! the task is queued elsewhere, the queue is full, the lease is unknown or
//! held by another worker) before it writes, so a refusal leaves the rest of
//! the batch intact. When a statement fails, the batch is rolled back and
//! each of its operations is retried alone, so one bad operation fails
//! alone. A connection that failed is replaced for the next batch.
//!
//! Statements are raw SQL with `$n` parameters (SQLite and PostgreSQL both
//! accept them); the queue's counters (`queue_counts`, kept by triggers)
//! give its length, capacity and the position of a new entry without
//! counting the queue.

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
}

/// The outcome of one operation inside a batch.
enum Out {
    Add(Result<Added>),
    Pop(Result<Option<(Entry, Lease)>>),
    Ack(Result<Acked>),
}

impl Op {
    fn reply(self, out: Result<Out>) {
        // A caller that gave up waiting dropped its receiver: nothing to do.
        match (self, out) {
            (Op::Add { reply, .. }, Ok(Out::Add(r))) => drop(reply.send(r)),
            (Op::Pop { reply, .. }, Ok(Out::Pop(r))) => drop(reply.send(r)),
            (Op::Ack { reply, .. }, Ok(Out::Ack(r))) => drop(reply.send(r)),
            (Op::Add { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (Op::Pop { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (Op::Ack { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (op, Ok(_)) => op.reply(Err(errors::db("mismatched hot-path reply"))),
        }
    }
}

/// The writer's own connection.
enum Conn {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

/// Where the writer opens its connection.
#[derive(Clone)]
pub(super) enum Target {
    Sqlite(sqlx::sqlite::SqliteConnectOptions),
    Postgres(sqlx::postgres::PgConnectOptions),
}

impl Target {
    pub(super) fn of(db: &DatabaseConnection) -> Target {
        match db.get_database_backend() {
            DbBackend::Postgres => {
                Target::Postgres((*db.get_postgres_connection_pool().connect_options()).clone())
            }
            _ => Target::Sqlite((*db.get_sqlite_connection_pool().connect_options()).clone()),
        }
    }

    async fn connect(&self) -> Result<Conn> {
        Ok(match self {
            Target::Sqlite(o) => {
                let mut c = sqlx::SqliteConnection::connect_with(o)
                    .await
                    .map_err(errors::db)?;
                // The checkpointer task checkpoints instead: a checkpoint
                // syncs the files, which must not stall the batches.
                sqlx::query("PRAGMA wal_autocheckpoint = 0")
                    .execute(&mut c)
                    .await
                    .map_err(errors::db)?;
                Conn::Sqlite(c)
            }
            Target::Postgres(o) => Conn::Postgres(
                sqlx::PgConnection::connect_with(o)
                    .await
                    .map_err(errors::db)?,
            ),
        })
    }
}

/// Runs `$body` with `$c` bound to the concrete connection, whichever the
/// engine: the statements are the same text on both.
macro_rules! on {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            Conn::Sqlite($c) => $body,
            Conn::Postgres($c) => $body,
        }
    };
}

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

/// How often the SQLite checkpointer copies the WAL back.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Starts the writer (and, on SQLite, its checkpointer); both end when
/// every sender is dropped.
pub(super) fn spawn(target: Target, write: WriteLock) -> mpsc::UnboundedSender<Op> {
    let (tx, rx) = mpsc::unbounded_channel();
    if let Target::Sqlite(o) = &target {
        tokio::spawn(checkpointer(o.clone(), tx.downgrade()));
    }
    tokio::spawn(writer(target, write, rx));
    tx
}

/// Runs passive WAL checkpoints on a connection of its own, so the writer
/// (which does not checkpoint) never waits for a file sync. A passive
/// checkpoint takes no lock writers or readers wait on.
async fn checkpointer(o: sqlx::sqlite::SqliteConnectOptions, alive: mpsc::WeakUnboundedSender<Op>) {
    let mut conn: Option<sqlx::SqliteConnection> = None;
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if alive.upgrade().is_none() {
            break;
        }
        if conn.is_none() {
            conn = sqlx::SqliteConnection::connect_with(&o).await.ok();
        }
        if let Some(c) = conn.as_mut()
            && let Err(err) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut *c)
                .await
        {
            tracing::warn!(error = %err, "queue WAL checkpoint failed");
            conn = None;
        }
    }
    if let Some(c) = conn {
        let _ = c.close().await;
    }
}

async fn writer(target: Target, write: WriteLock, mut rx: mpsc::UnboundedReceiver<Op>) {
    let mut conn: Option<Conn> = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let turn = write.clone().lock_owned().await;
        let outs = match apply(&target, &mut conn, &batch).await {
            Ok(outs) => outs.into_iter().map(Ok).collect(),
            Err(err) if batch.len() == 1 => vec![Err(err)],
            Err(_) => {
                // Retry one by one: only the operation at fault fails.
                let mut outs = Vec::with_capacity(batch.len());
                for op in &batch {
                    let out = apply(&target, &mut conn, std::slice::from_ref(op)).await;
                    outs.push(
                        out.and_then(|mut o| o.pop().ok_or_else(|| errors::db("no outcome"))),
                    );
                }
                outs
            }
        };
        drop(turn);
        for (op, out) in batch.drain(..).zip(outs) {
            op.reply(out);
        }
    }
}

/// Applies `ops` in one transaction; on failure the transaction is rolled
/// back and the connection dropped.
async fn apply(target: &Target, conn: &mut Option<Conn>, ops: &[Op]) -> Result<Vec<Out>> {
    if conn.is_none() {
        *conn = Some(target.connect().await?);
    }
    let c = conn.as_mut().ok_or_else(|| errors::db("no connection"))?;
    match run(c, ops).await {
        Ok(outs) => Ok(outs),
        Err(err) => {
            // Whatever state the connection is in, a new one starts clean.
            if let Some(c) = conn.take() {
                on!(c, c => {
                    let mut c = c;
                    let _ = sqlx::query("ROLLBACK").execute(&mut c).await;
                    let _ = c.close().await;
                });
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
    match c {
        Conn::Sqlite(_) => run_lite(c, ops).await,
        Conn::Postgres(_) => run_pg(c, ops).await,
    }
}

fn lite_conn(c: &mut Conn) -> Result<&mut sqlx::SqliteConnection> {
    match c {
        Conn::Sqlite(c) => Ok(c),
        Conn::Postgres(_) => Err(errors::db("not a SQLite connection")),
    }
}

/// SQLite: the transaction opens with the first operation's round trip.
async fn run_lite(conn: &mut Conn, ops: &[Op]) -> Result<Vec<Out>> {
    let mut b = Batch::default();
    let mut txn = lite::Txn {
        open: false,
        commit_with_next: false,
        committed: false,
    };
    let mut outs = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let c = lite_conn(conn)?;
        // The last operation commits in its own round trip when it runs
        // as one: an add, a pop of one queue, an acknowledgement by lease.
        txn.commit_with_next = i + 1 == ops.len()
            && match op {
                Op::Add { .. } => true,
                Op::Pop { queues, .. } => queues.len() == 1,
                Op::Ack { target, .. } => matches!(target, LeaseTarget::LeaseId(_)),
            };
        outs.push(match op {
            Op::Add {
                queue,
                task,
                priority,
                replace,
                max,
                now,
                ..
            } => Out::Add(after_commit(
                lite::add(
                    c, &mut b, &mut txn, queue, task, *priority, *replace, *max, *now,
                )
                .await,
                &txn,
            )?),
            Op::Pop {
                queues,
                worker,
                lease,
                lease_id,
                now,
                ..
            } => Out::Pop(after_commit(
                lite::pop(c, &mut b, &mut txn, queues, worker, *lease, lease_id, *now).await,
                &txn,
            )?),
            Op::Ack {
                target: LeaseTarget::LeaseId(id),
                worker,
                now,
                ..
            } => Out::Ack(after_commit(
                lite::ack(c, &mut b, &mut txn, id, worker, *now).await,
                &txn,
            )?),
            Op::Ack {
                target,
                worker,
                now,
                ..
            } => {
                txn.ensure(c).await?;
                let seq = lite::seq(c).await?;
                Out::Ack(ack(conn, &mut b, seq, target, worker, *now).await?)
            }
        });
    }
    let c = lite_conn(conn)?;
    if txn.open && !txn.committed {
        lite::rows(c, if b.wrote { "COMMIT" } else { "ROLLBACK" }, &[]).await?;
    }
    Ok(outs)
}

/// Once the batch committed, what failed can only be a read of the last
/// operation (which wrote nothing): it fails that operation alone instead
/// of the batch, whose writes are in.
fn after_commit<T>(res: Step<T>, txn: &lite::Txn) -> Step<T> {
    match res {
        Err(err) if txn.committed => Ok(Err(err)),
        res => res,
    }
}

async fn run_pg(c: &mut Conn, ops: &[Op]) -> Result<Vec<Out>> {
    exec(c, "BEGIN", &[]).await?;
    // The first statement takes the `seq` row lock (so replicas serialise)
    // and numbers the batch.
    let seq = {
        let sql = "UPDATE queue_meta SET ival = ival + 1 WHERE key = 'seq' RETURNING ival";
        on!(c, c => {
            let row = sqlx::query(sql).fetch_optional(&mut *c).await.map_err(errors::db)?
                .ok_or_else(|| errors::db("the seq row is missing"))?;
            let seq: i64 = col!(row, "ival");
            seq
        })
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
        on!(c, c => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for s in &b.samples {
                q = q
                    .bind(s.queue.as_str())
                    .bind(s.popped_ms)
                    .bind(s.wait_ms)
                    .bind(i32::try_from(s.pending).unwrap_or(i32::MAX));
            }
            q.execute(&mut *c).await.map_err(errors::db)?;
        });
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
    on!(c, c => {
        let r = bind_all!(sqlx::query(sql), args).execute(&mut *c).await.map_err(errors::db)?;
        Ok(r.rows_affected())
    })
}

/// The entry rows `sql` returns.
async fn entries(c: &mut Conn, sql: &'static str, args: &[V<'_>]) -> Result<Vec<entry::Model>> {
    on!(c, c => {
        let rows = bind_all!(sqlx::query(sql), args).fetch_all(&mut *c).await.map_err(errors::db)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(model!(row));
        }
        Ok(out)
    })
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
    on!(c, c => {
        let row = sqlx::query(sql).bind(queue).fetch_one(&mut *c).await.map_err(errors::db)?;
        let n: i64 = col!(row, "n");
        Ok(n > 0)
    })
}

/// Zero-based position of a waiting entry.
async fn position(c: &mut Conn, m: &entry::Model) -> Result<Option<u32>> {
    if m.leased {
        return Ok(None);
    }
    let sql = "SELECT COUNT(*) AS n FROM queue_entries WHERE queue_id = $1 AND leased = FALSE \
               AND (priority > $2 OR (priority = $2 AND (rank < $3 OR (rank = $3 AND task_id < $4))))";
    on!(c, c => {
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
    })
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
    let (found, existing, total, ahead, last_rank) = on!(c, c => {
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
    });
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
    Ok(Ok(Added {
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
        previous_queue_id: existing,
    }))
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
        let head = on!(&mut *c, c => {
            let row = sqlx::query(sql).bind(queue.as_str()).fetch_optional(&mut *c).await.map_err(errors::db)?;
            match row {
                Some(row) => {
                    let pending: i64 = col!(row, "pending");
                    Some((model!(row), pending))
                }
                None => None,
            }
        });
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
pub(super) fn send(tx: &mpsc::UnboundedSender<Op>, op: Op) -> Result<()> {
    tx.send(op)
        .map_err(|_| errors::db("the queue writer stopped"))
}

/// Waits for a reply.
pub(super) async fn recv<T>(rx: oneshot::Receiver<Result<T>>) -> Result<T> {
    rx.await
        .map_err(|_| errors::db("the queue writer dropped an operation"))?
}

/// SQLite: each operation in one round trip to the connection's worker
/// thread. SQLite runs a query of several statements in order in that
/// thread, binding `$n` to the same arguments in each, so an operation's
/// reads, writes, change record and pop sample cost one hop instead of one
/// each (on a small machine the hops, not SQLite, were the cost). The
/// writes are guarded by the same conditions the returned reads let the
/// caller check, so a refused operation writes nothing.
mod lite {
    use super::*;

    /// Opens the batch's transaction and numbers it: prepended to the
    /// first operation's statements, so it costs no round trip of its own.
    /// The operations read the number back from the `seq` row.
    macro_rules! begin_sql {
        () => {
            "BEGIN; UPDATE queue_meta SET ival = ival + 1 WHERE key = 'seq'; "
        };
    }

    /// A batch's transaction: opened with its first operation and, when
    /// the last one allows, committed with it.
    pub(super) struct Txn {
        pub(super) open: bool,
        /// The operation about to run is the batch's last: commit with it.
        pub(super) commit_with_next: bool,
        /// Committed: what follows only reads.
        pub(super) committed: bool,
    }

    /// The four texts of an operation: with or without `begin_sql!()`
    /// before it and `; COMMIT` after it.
    macro_rules! variants {
        ($op:ident) => {
            [
                $op!(),
                concat!(begin_sql!(), $op!()),
                concat!($op!(), "; COMMIT"),
                concat!(begin_sql!(), $op!(), "; COMMIT"),
            ]
        };
    }

    impl Txn {
        /// The text to run: opens the transaction when it is not open yet,
        /// and commits it when this is the batch's last operation.
        fn pick(&mut self, texts: [&'static str; 4]) -> &'static str {
            let i = usize::from(!self.open) + 2 * usize::from(self.commit_with_next);
            self.open = true;
            if self.commit_with_next {
                self.committed = true;
            }
            texts[i]
        }

        /// Opens the transaction when no statement did yet.
        pub(super) async fn ensure(&mut self, c: &mut sqlx::SqliteConnection) -> Result<()> {
            if !self.open {
                rows(c, begin_sql!(), &[]).await?;
                self.open = true;
            }
            Ok(())
        }
    }

    /// The batch's change sequence number.
    pub(super) async fn seq(c: &mut sqlx::SqliteConnection) -> Result<i64> {
        let got = rows(c, "SELECT ival FROM queue_meta WHERE key = 'seq'", &[]).await?;
        let row = got
            .first()
            .ok_or_else(|| errors::db("the seq row is missing"))?;
        let seq: i64 = col!(row, "ival");
        Ok(seq)
    }

    /// Every row the statements of `sql` return, in order.
    pub(super) async fn rows(
        c: &mut sqlx::SqliteConnection,
        sql: &'static str,
        args: &[V<'_>],
    ) -> Result<Vec<sqlx::sqlite::SqliteRow>> {
        bind_all!(sqlx::query(sql), args)
            .fetch_all(&mut *c)
            .await
            .map_err(errors::db)
    }

    macro_rules! add_sql {
        () => {
            concat!(
        // 1. What decides the outcome, read before any write.
        "SELECT (SELECT COUNT(*) FROM queues WHERE id = $1) AS found, \
         (SELECT queue_id FROM queue_entries WHERE task_id = $2) AS existing, \
         CAST(COALESCE((SELECT SUM(waiting + leased) FROM queue_counts WHERE queue_id = $1), 0) \
         AS BIGINT) AS total, \
         CAST(COALESCE((SELECT SUM(waiting) FROM queue_counts WHERE queue_id = $1 \
         AND priority >= $3), 0) AS BIGINT) AS ahead; ",
        // 2. Out of another queue, when replacing into an existing queue
        //    with room.
        "DELETE FROM queue_entries WHERE task_id = $2 AND $4 = 1 AND queue_id <> $1 \
         AND EXISTS (SELECT 1 FROM queues WHERE id = $1) \
         AND COALESCE((SELECT SUM(waiting + leased) FROM queue_counts WHERE queue_id = $1), 0) < $5; ",
        // 3. In at the back of the band, unless the task is still queued.
        "INSERT INTO queue_entries (task_id, queue_id, priority, rank, added_ms, delivery, seq, \
         leased, lease_id, worker_id, acquired_ms, expires_ms, duration_ms, renewed_ms) \
         SELECT $2, $1, $3, MAX($6, COALESCE((SELECT rank + 1 FROM queue_entries WHERE queue_id = $1 \
         AND leased = FALSE AND priority = $3 ORDER BY rank DESC LIMIT 1), $6)), \
         $6, 0, (SELECT ival FROM queue_meta WHERE key = 'seq'), FALSE, '', '', 0, 0, 0, 0 \
         WHERE EXISTS (SELECT 1 FROM queues WHERE id = $1) \
         AND NOT EXISTS (SELECT 1 FROM queue_entries WHERE task_id = $2) \
         AND COALESCE((SELECT SUM(waiting + leased) FROM queue_counts WHERE queue_id = $1), 0) < $5; ",
        "SELECT changes() AS inserted; ",
        "INSERT INTO queue_changes (task_id, seq) SELECT $2, (SELECT ival FROM queue_meta WHERE key = 'seq') WHERE changes() > 0 \
         ON CONFLICT (task_id) DO UPDATE SET seq = excluded.seq"
    )
        };
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn add(
        c: &mut sqlx::SqliteConnection,
        b: &mut Batch,
        txn: &mut Txn,
        queue: &str,
        task: &str,
        priority: i32,
        replace: bool,
        max: u32,
        now: DateTime<Utc>,
    ) -> Step<Added> {
        let now_ms = millis(now);
        let sql = txn.pick(variants!(add_sql));
        let got = rows(
            c,
            sql,
            &[
                V::S(queue),
                V::S(task),
                V::P(priority),
                V::I(i64::from(replace)),
                V::I(i64::from(max)),
                V::I(now_ms),
            ],
        )
        .await?;
        let [decision, done] = got.as_slice() else {
            return Err(errors::db("unexpected add reply"));
        };
        let found: i64 = col!(decision, "found");
        let existing: Option<String> = col!(decision, "existing");
        let total: i64 = col!(decision, "total");
        let ahead: i64 = col!(decision, "ahead");
        let inserted: i64 = col!(done, "inserted");
        if inserted == 1 {
            b.wrote = true;
            return Ok(Ok(Added {
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
                previous_queue_id: existing,
            }));
        }
        if found == 0 {
            return Ok(Err(errors::queue_not_found(queue)));
        }
        match existing {
            Some(existing) if existing == queue => {
                let sql = concat!("SELECT ", cols!(), " FROM queue_entries WHERE task_id = $1");
                let row = rows(c, sql, &[V::S(task)]).await?;
                let row = row
                    .first()
                    .ok_or_else(|| errors::db("queued entry vanished"))?;
                let m = model!(row);
                let pos = position(c, &m).await?;
                Ok(Ok(Added {
                    entry: super::super::to_entry(&m, pos),
                    created: false,
                    previous_queue_id: None,
                }))
            }
            Some(existing) if !replace => Ok(Err(errors::task_already_queued(task, &existing))),
            _ if total >= i64::from(max) => Ok(Err(errors::queue_full(queue))),
            _ => Err(errors::db("add refused for no known reason")),
        }
    }

    async fn position(c: &mut sqlx::SqliteConnection, m: &entry::Model) -> Result<Option<u32>> {
        if m.leased {
            return Ok(None);
        }
        let sql = "SELECT COUNT(*) AS n FROM queue_entries WHERE queue_id = $1 AND leased = FALSE \
                   AND (priority > $2 OR (priority = $2 AND (rank < $3 OR (rank = $3 AND task_id < $4))))";
        let got = rows(
            c,
            sql,
            &[
                V::S(&m.queue_id),
                V::P(m.priority),
                V::I(m.rank),
                V::S(&m.task_id),
            ],
        )
        .await?;
        let row = got.first().ok_or_else(|| errors::db("no count"))?;
        let n: i64 = col!(row, "n");
        Ok(Some(u32::try_from(n).unwrap_or(u32::MAX)))
    }

    macro_rules! pop_sql {
        () => {
            concat!(
        // 1. Lease the head: the first row of the pop-order index.
        "UPDATE queue_entries SET leased = TRUE, lease_id = $2, worker_id = $3, acquired_ms = $4, \
         expires_ms = $5, duration_ms = $6, renewed_ms = $4, delivery = delivery + 1 \
         WHERE task_id = (SELECT task_id FROM queue_entries WHERE queue_id = $1 AND leased = FALSE \
         ORDER BY priority DESC, rank, task_id LIMIT 1) RETURNING ",
        cols!(),
        "; ",
        // 2. Its change record and pop sample (the counters already count
        //    it as leased, so the sum is what is left).
        "INSERT INTO queue_changes (task_id, seq) SELECT task_id, (SELECT ival FROM queue_meta WHERE key = 'seq') FROM queue_entries \
         WHERE lease_id = $2 AND leased = TRUE \
         ON CONFLICT (task_id) DO UPDATE SET seq = excluded.seq; ",
        "INSERT INTO queue_pops (queue_id, popped_ms, wait_ms, pending) \
         SELECT $1, $4, MAX(0, $4 - added_ms), \
         COALESCE((SELECT SUM(waiting) FROM queue_counts WHERE queue_id = $1), 0) \
         FROM queue_entries WHERE lease_id = $2 AND leased = TRUE; ",
        // 3. Whether the queue exists, for an empty pop.
        "SELECT COUNT(*) AS found FROM queues WHERE id = $1"
    )
        };
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn pop(
        c: &mut sqlx::SqliteConnection,
        b: &mut Batch,
        txn: &mut Txn,
        queues: &[String],
        worker: &str,
        lease: Duration,
        lease_id: &str,
        now: DateTime<Utc>,
    ) -> Step<Option<(Entry, Lease)>> {
        if queues.len() > 1 {
            txn.ensure(c).await?;
            for q in queues {
                let found = rows(
                    c,
                    "SELECT COUNT(*) AS found FROM queues WHERE id = $1",
                    &[V::S(q)],
                )
                .await?;
                let found: i64 = col!(
                    found.first().ok_or_else(|| errors::db("no count"))?,
                    "found"
                );
                if found == 0 {
                    return Ok(Err(errors::queue_not_found(q)));
                }
            }
        }
        let now_ms = millis(now);
        let dur_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let expires = now_ms.saturating_add(dur_ms);
        for queue in queues {
            let sql = txn.pick(variants!(pop_sql));
            let got = rows(
                c,
                sql,
                &[
                    V::S(queue),
                    V::S(lease_id),
                    V::S(worker),
                    V::I(now_ms),
                    V::I(expires),
                    V::I(dur_ms),
                ],
            )
            .await?;
            match got.as_slice() {
                [leased, _found] => {
                    let m = model!(leased);
                    b.wrote = true;
                    let lease = super::super::to_lease(&m)
                        .ok_or_else(|| errors::db("popped entry not leased"))?;
                    let before = Entry {
                        task_id: m.task_id,
                        queue_id: m.queue_id,
                        added: from_millis(m.added_ms),
                        priority: m.priority,
                        position: Some(0),
                        lease: None,
                        delivery_count: u32::try_from(m.delivery - 1).unwrap_or(0),
                    };
                    return Ok(Ok(Some((before, lease))));
                }
                [found] => {
                    let found: i64 = col!(found, "found");
                    if found == 0 {
                        return Ok(Err(errors::queue_not_found(queue)));
                    }
                }
                _ => return Err(errors::db("unexpected pop reply")),
            }
        }
        Ok(Ok(None))
    }

    /// Statements 1 and 2 see the lease before statement 3 deletes it.
    macro_rules! ack_sql {
        () => {
            concat!(
        "INSERT INTO queue_changes (task_id, seq) SELECT task_id, (SELECT ival FROM queue_meta WHERE key = 'seq') FROM queue_entries \
         WHERE lease_id = $1 AND leased = TRUE AND ($2 = '' OR worker_id = '' OR worker_id = $2) \
         ON CONFLICT (task_id) DO UPDATE SET seq = excluded.seq; ",
        // The registered holder's current task.
        "UPDATE workers SET current_task_since_ms = CASE WHEN workers.current_task_id = e.task_id \
         THEN workers.current_task_since_ms ELSE $3 END, current_task_id = e.task_id, \
         current_queue_id = e.queue_id \
         FROM (SELECT task_id, queue_id, worker_id FROM queue_entries WHERE lease_id = $1 \
         AND leased = TRUE AND ($2 = '' OR worker_id = '' OR worker_id = $2)) AS e \
         WHERE workers.id = e.worker_id; ",
        "DELETE FROM queue_entries WHERE lease_id = $1 AND leased = TRUE \
         AND ($2 = '' OR worker_id = '' OR worker_id = $2) RETURNING ",
        cols!()
    )
        };
    }

    pub(super) async fn ack(
        c: &mut sqlx::SqliteConnection,
        b: &mut Batch,
        txn: &mut Txn,
        lease_id: &str,
        worker: &str,
        now: DateTime<Utc>,
    ) -> Step<Acked> {
        let sql = txn.pick(variants!(ack_sql));
        let gone = rows(c, sql, &[V::S(lease_id), V::S(worker), V::I(millis(now))]).await?;
        if let Some(row) = gone.first() {
            let m = model!(row);
            b.wrote = true;
            let lease = super::super::to_lease(&m).ok_or_else(|| errors::db("lease vanished"))?;
            return Ok(Ok(Acked::Acknowledged(lease)));
        }
        let sql = concat!(
            "SELECT ",
            cols!(),
            " FROM queue_entries WHERE lease_id = $1 AND leased = TRUE"
        );
        match rows(c, sql, &[V::S(lease_id)]).await?.first() {
            Some(row) => {
                let m = model!(row);
                Ok(Err(errors::lease_not_owned(&m.lease_id)))
            }
            None => Ok(Err(errors::lease_not_found(lease_id))),
        }
    }
}
