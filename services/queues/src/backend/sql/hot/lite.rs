//! SQLite: the hot path's writer on an OS thread of its own.
//!
//! The thread owns a `rusqlite` connection to the service's database file
//! (the same SQLite library sqlx links: one `libsqlite3-sys` per build) and
//! runs every statement of a batch synchronously, from statements prepared
//! once and cached. Callers reach it through a channel and get their reply
//! through a oneshot, so an operation costs two wake-ups however many
//! statements it runs (through sqlx, every statement was a round trip to
//! the connection's worker thread).
//!
//! Durability is the pool's: [`Settings::of`] reads the journal mode,
//! `synchronous`, busy timeout and foreign-key setting back from a pool
//! connection and the writer applies the same (WAL with
//! `synchronous=NORMAL` from `tasklab-db`: a committed transaction survives
//! a killed process). A batch opens with `BEGIN IMMEDIATE` and its first
//! statement bumps the `seq` row, as every other mutation's does; the reply
//! to an operation is sent after `COMMIT` returned
//! (`tests/sql_durability.rs` kills a busy process and checks every
//! answered add, pop and acknowledgement).
//!
//! What a batch costs is mostly its WAL frames, one per page it changed
//! (each a couple of `pwrite`s), so two things stay off the per-operation
//! path:
//!
//! * The checkpoint: the writer does not checkpoint
//!   (`wal_autocheckpoint=0`); a second thread does, every
//!   [`CHECKPOINT_EVERY`], and finishes under the write turn so the log
//!   restarts (see [`checkpointer`]); the file is cut back to
//!   [`WAL_SIZE_LIMIT`] when it does.
//! * Pop samples (`queue_pops`, metrics only): kept in memory and written
//!   with a later batch, at most [`SAMPLES_WAIT`] or [`SAMPLES_MAX`] samples
//!   later, when the writer stops, or at once when `pop_samples` asks
//!   ([`Op::Flush`]). A pop's lease is committed before its reply like
//!   everything else; only its sample can be lost with the process, saving
//!   the three pages (table, index, `sqlite_sequence`) a sample costs per
//!   pop. PostgreSQL writes each batch's samples in the batch.

use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{CachedStatement, Connection, OpenFlags, OptionalExtension as _, Row, params};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use tasklab_error::Result;

use super::{MAX_BATCH, Op, Out};
use crate::backend::sql::{WriteLock, check_owner, to_entry, to_lease};
use crate::backend::{Acked, Added, Entry, Lease, LeaseTarget, from_millis, millis};
use crate::entity::entry;
use crate::errors;

/// Prepared statements kept by the writer's connection (every text below
/// fits, with room).
const STATEMENT_CACHE: usize = 32;

/// Where and how the writer opens its connection: the pool's main database
/// file and the pool's per-connection settings.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    path: PathBuf,
    journal_mode: String,
    synchronous: i64,
    busy_timeout: Duration,
    foreign_keys: bool,
}

impl Settings {
    /// Reads them from `db` (a SQLite pool). An in-memory database has no
    /// file another connection could open: refused.
    pub(super) async fn of(db: &DatabaseConnection) -> Result<Settings> {
        let pragma = |sql: &'static str| async move {
            db.query_all_raw(Statement::from_string(DbBackend::Sqlite, sql))
                .await
                .map_err(errors::db)
        };
        let files = pragma("PRAGMA database_list").await?;
        let mut path = String::new();
        for row in &files {
            let name: String = row.try_get("", "name").map_err(errors::db)?;
            if name == "main" {
                path = row.try_get("", "file").map_err(errors::db)?;
            }
        }
        if path.is_empty() {
            return Err(errors::db(
                "the SQL queue backend needs a SQLite database file, not an in-memory database",
            ));
        }
        let one = |rows: Vec<sea_orm::QueryResult>, col: &'static str| -> Result<i64> {
            rows.first()
                .ok_or_else(|| errors::db(format!("PRAGMA {col} returned nothing")))?
                .try_get("", col)
                .map_err(errors::db)
        };
        let journal_mode: String = pragma("PRAGMA journal_mode")
            .await?
            .first()
            .ok_or_else(|| errors::db("PRAGMA journal_mode returned nothing"))?
            .try_get("", "journal_mode")
            .map_err(errors::db)?;
        let synchronous = one(pragma("PRAGMA synchronous").await?, "synchronous")?;
        let timeout = one(pragma("PRAGMA busy_timeout").await?, "timeout")?;
        let foreign_keys = one(pragma("PRAGMA foreign_keys").await?, "foreign_keys")?;
        Ok(Settings {
            path: PathBuf::from(path),
            journal_mode,
            synchronous,
            busy_timeout: Duration::from_millis(u64::try_from(timeout).unwrap_or(0)),
            foreign_keys: foreign_keys != 0,
        })
    }

    fn open(&self) -> Result<Connection> {
        let c = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .db()?;
        c.busy_timeout(self.busy_timeout).db()?;
        // `journal_mode` answers with the mode now in force; WAL is the
        // database's own once set, so this only confirms it.
        let mode: String = c
            .pragma_update_and_check(None, "journal_mode", &self.journal_mode, |r| r.get(0))
            .db()?;
        if !mode.eq_ignore_ascii_case(&self.journal_mode) {
            return Err(errors::db(format!(
                "the queue writer got journal mode {mode} instead of {}",
                self.journal_mode
            )));
        }
        c.pragma_update(None, "synchronous", self.synchronous)
            .db()?;
        c.pragma_update(None, "foreign_keys", self.foreign_keys)
            .db()?;
        // The checkpointer thread checkpoints instead: a checkpoint syncs
        // the files, which must not stall the batches.
        c.pragma_update(None, "wal_autocheckpoint", 0).db()?;
        c.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .db()?;
        c.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(c)
    }
}

/// How often the checkpointer copies the WAL back.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

/// Longest a pop sample waits in memory before it is written.
const SAMPLES_WAIT: Duration = Duration::from_secs(1);

/// Pop samples written at once at the latest.
const SAMPLES_MAX: usize = 256;

/// WAL size the writer's connection truncates the file back to when the
/// log restarts (a burst can grow it far beyond).
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// Log frames (pages of about 4 KiB) past which the checkpointer pauses the
/// writer so the log can restart. With one producer and one worker handing
/// off steadily (2-core machine, noisy), the writer spent about 120 us of
/// CPU per handoff with this and a 50 ms period, 150-175 us with a log
/// restarted rarely or never: the pages it writes stay cached. That is
/// worth more than the pauses (a few ms each).
const CATCH_UP_FRAMES: i64 = 2048;

/// Starts the writer thread and the checkpointer thread; both end when
/// every sender is dropped.
pub(super) fn spawn(settings: Settings, write: WriteLock) -> Result<std_mpsc::Sender<Op>> {
    let (tx, rx) = std_mpsc::channel();
    // The checkpointer stops when the writer drops `stop`.
    let (stop, stopped) = std_mpsc::channel::<()>();
    let (s, w) = (settings.clone(), write.clone());
    std::thread::Builder::new()
        .name("queue-writer".to_owned())
        .spawn(move || {
            Writer {
                settings: s,
                conn: None,
                samples: Vec::new(),
                since: None,
            }
            .serve(&w, &rx);
            drop(stop);
        })
        .map_err(errors::db)?;
    std::thread::Builder::new()
        .name("queue-checkpoint".to_owned())
        .spawn(move || checkpointer(&settings, &write, &stopped))
        .map_err(errors::db)?;
    Ok(tx)
}

/// Copies the WAL back into the database file every [`CHECKPOINT_EVERY`],
/// on a connection of its own, so the writer (which does not checkpoint)
/// never waits for the file syncs of a whole checkpoint.
///
/// A passive checkpoint first copies what is there without stopping
/// anyone. When the log has grown past [`CATCH_UP_FRAMES`], a second one
/// runs under the process's write turn, between two batches, and copies the
/// few frames committed meanwhile: the WAL is then wholly in the database,
/// so the writer's next transaction starts writing it from its beginning
/// again. Without that pause a writer that never idles always has frames
/// the checkpoint has not copied, the log never restarts and grows without
/// end (a gigabyte for ten thousand handoffs), every frame landing on a new
/// page of the file. A writer that idles now and then lets the log restart
/// by itself, and is never paused.
fn checkpointer(settings: &Settings, write: &WriteLock, stopped: &std_mpsc::Receiver<()>) {
    let mut conn: Option<Connection> = None;
    while let Err(std_mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
        if conn.is_none() {
            match settings.open() {
                Ok(c) => conn = Some(c),
                Err(err) => {
                    tracing::warn!(error = %err, "queue WAL checkpointer cannot connect");
                    continue;
                }
            }
        }
        let Some(c) = conn.as_ref() else {
            continue;
        };
        let res = checkpoint(c).and_then(|frames| {
            if frames >= CATCH_UP_FRAMES {
                let _turn = write.blocking_lock();
                checkpoint(c)?;
            }
            Ok(())
        });
        if let Err(err) = res {
            tracing::warn!(error = %err, "queue WAL checkpoint failed");
            conn = None;
        }
    }
}

/// One passive checkpoint (it takes no lock writers or readers wait on);
/// returns the number of frames in the log.
fn checkpoint(c: &Connection) -> Result<i64> {
    stmt(c, "PRAGMA wal_checkpoint(PASSIVE)")?
        .query_row([], |r| r.get(1))
        .db()
}

/// `rusqlite` results as the service's errors.
trait OrDb<T> {
    fn db(self) -> Result<T>;
}

impl<T> OrDb<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T> {
        self.map_err(errors::db)
    }
}

/// One pop, for queue metrics (a `queue_pops` row).
struct Sample {
    queue: String,
    popped_ms: i64,
    wait_ms: i64,
    pending: i64,
}

// The writer thread runs outside the runtime, on the real clock (its
// channel waits are real-time too): `std::time::Instant` is the right one.
#[allow(clippy::disallowed_types)]
struct Writer {
    settings: Settings,
    /// Opened at the first batch; replaced after a failure it could not
    /// roll back.
    conn: Option<Connection>,
    /// Samples of committed pops not written yet, and when the first of
    /// them was taken.
    samples: Vec<Sample>,
    since: Option<std::time::Instant>,
}

#[allow(clippy::disallowed_types)]
impl Writer {
    fn serve(mut self, write: &WriteLock, rx: &std_mpsc::Receiver<Op>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let first = match self.since {
                None => rx.recv().ok(),
                Some(since) => {
                    match rx.recv_timeout(SAMPLES_WAIT.saturating_sub(since.elapsed())) {
                        Ok(op) => Some(op),
                        Err(std_mpsc::RecvTimeoutError::Timeout) => {
                            let _turn = write.blocking_lock();
                            self.write_samples();
                            continue;
                        }
                        Err(std_mpsc::RecvTimeoutError::Disconnected) => None,
                    }
                }
            };
            let Some(op) = first else {
                break;
            };
            batch.push(op);
            while batch.len() < MAX_BATCH
                && let Ok(op) = rx.try_recv()
            {
                batch.push(op);
            }
            let turn = write.blocking_lock();
            let outs = settle!(&batch, |ops| self.apply(ops));
            drop(turn);
            for (op, out) in batch.drain(..).zip(outs) {
                op.reply(out);
            }
        }
        // Every sender is gone: write what is left.
        let _turn = write.blocking_lock();
        self.write_samples();
    }

    /// Applies `ops` in one transaction (with the samples kept so far when
    /// they are due); on failure the transaction is rolled back (the
    /// connection is dropped if even that fails) and the kept samples stay.
    fn apply(&mut self, ops: &[Op]) -> Result<Vec<Out>> {
        if self.conn.is_none() {
            self.conn = Some(self.settings.open()?);
        }
        let c = self
            .conn
            .as_ref()
            .ok_or_else(|| errors::db("no connection"))?;
        let due = self.samples.len() >= SAMPLES_MAX
            || self.since.is_some_and(|t| t.elapsed() >= SAMPLES_WAIT)
            || ops.iter().any(|op| matches!(op, Op::Flush { .. }));
        let kept: &[Sample] = if due { &self.samples } else { &[] };
        match run(c, ops, kept, due) {
            Ok((outs, taken)) => {
                if due {
                    self.samples.clear();
                    self.since = None;
                }
                if !taken.is_empty() {
                    self.since.get_or_insert_with(std::time::Instant::now);
                    self.samples.extend(taken);
                }
                Ok(outs)
            }
            Err(err) => {
                if !c.is_autocommit() && c.execute_batch("ROLLBACK").is_err() {
                    self.conn = None;
                }
                Err(err)
            }
        }
    }

    /// Writes the kept samples in a transaction of their own; on failure
    /// they are dropped (they are metrics) and the failure logged.
    fn write_samples(&mut self) {
        if self.samples.is_empty() {
            self.since = None;
            return;
        }
        if self.conn.is_none() {
            self.conn = self.settings.open().ok();
        }
        let res = self
            .conn
            .as_ref()
            .ok_or_else(|| errors::db("no connection"))
            .and_then(|c| {
                stmt(c, "BEGIN IMMEDIATE")?.execute([]).db()?;
                insert_samples(c, &self.samples)?;
                stmt(c, "COMMIT")?.execute([]).db()?;
                Ok(())
            });
        if let Err(err) = res {
            tracing::warn!(error = %err, lost = self.samples.len(), "queue pop samples not written");
            if let Some(c) = self.conn.as_ref()
                && !c.is_autocommit()
                && c.execute_batch("ROLLBACK").is_err()
            {
                self.conn = None;
            }
        }
        self.samples.clear();
        self.since = None;
    }
}

fn insert_samples(c: &Connection, samples: &[Sample]) -> Result<()> {
    let mut insert = stmt(
        c,
        "INSERT INTO queue_pops (queue_id, popped_ms, wait_ms, pending) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for s in samples {
        insert
            .execute(params![s.queue, s.popped_ms, s.wait_ms, s.pending])
            .db()?;
    }
    Ok(())
}

/// What the batch did so far.
struct Batch {
    /// Its change sequence number.
    seq: i64,
    wrote: bool,
    /// Samples of its pops.
    samples: Vec<Sample>,
}

fn stmt<'c>(c: &'c Connection, sql: &str) -> Result<CachedStatement<'c>> {
    c.prepare_cached(sql).db()
}

/// Applies `ops` in one transaction and commits it when it wrote; with
/// `due`, writes the `kept` samples and the batch's own too. Returns the
/// outcomes and the batch's samples left to keep.
fn run(c: &Connection, ops: &[Op], kept: &[Sample], due: bool) -> Result<(Vec<Out>, Vec<Sample>)> {
    stmt(c, "BEGIN IMMEDIATE")?.execute([]).db()?;
    let seq: i64 = stmt(
        c,
        "UPDATE queue_meta SET ival = ival + 1 WHERE key = 'seq' RETURNING ival",
    )?
    .query_row([], |r| r.get(0))
    .optional()
    .db()?
    .ok_or_else(|| errors::db("the seq row is missing"))?;
    let mut b = Batch {
        seq,
        wrote: false,
        samples: Vec::new(),
    };
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
            } => Out::Add(add(
                c, &mut b, queue, task, *priority, *replace, *max, *now,
            )?),
            Op::Pop {
                queues,
                worker,
                lease,
                lease_id,
                now,
                ..
            } => Out::Pop(pop(c, &mut b, queues, worker, *lease, lease_id, *now)?),
            Op::Ack {
                target,
                worker,
                now,
                ..
            } => Out::Ack(ack(c, &mut b, target, worker, *now)?),
            Op::Flush { .. } => Out::Flush(Ok(())),
        });
    }
    let taken = if due {
        insert_samples(c, kept)?;
        insert_samples(c, &b.samples)?;
        b.wrote |= !kept.is_empty() || !b.samples.is_empty();
        Vec::new()
    } else {
        std::mem::take(&mut b.samples)
    };
    stmt(c, if b.wrote { "COMMIT" } else { "ROLLBACK" })?
        .execute([])
        .db()?;
    Ok((outs, taken))
}

/// Decodes a row selecting `cols!()` first.
fn model(r: &Row<'_>) -> rusqlite::Result<entry::Model> {
    Ok(entry::Model {
        task_id: r.get(0)?,
        queue_id: r.get(1)?,
        priority: r.get(2)?,
        rank: r.get(3)?,
        added_ms: r.get(4)?,
        delivery: r.get(5)?,
        seq: r.get(6)?,
        leased: r.get(7)?,
        lease_id: r.get(8)?,
        worker_id: r.get(9)?,
        acquired_ms: r.get(10)?,
        expires_ms: r.get(11)?,
        duration_ms: r.get(12)?,
        renewed_ms: r.get(13)?,
    })
}

/// The entry row of `task`.
fn by_task(c: &Connection, task: &str) -> Result<Option<entry::Model>> {
    stmt(
        c,
        concat!("SELECT ", cols!(), " FROM queue_entries WHERE task_id = ?1"),
    )?
    .query_row([task], model)
    .optional()
    .db()
}

/// Records that `task` changed in this batch.
fn touch(c: &Connection, b: &Batch, task: &str) -> Result<()> {
    stmt(
        c,
        "INSERT INTO queue_changes (task_id, seq) VALUES (?1, ?2) \
         ON CONFLICT (task_id) DO UPDATE SET seq = excluded.seq",
    )?
    .execute(params![task, b.seq])
    .db()?;
    Ok(())
}

fn queue_exists(c: &Connection, queue: &str) -> Result<bool> {
    let n: i64 = stmt(c, "SELECT COUNT(*) FROM queues WHERE id = ?1")?
        .query_row([queue], |r| r.get(0))
        .db()?;
    Ok(n > 0)
}

/// Zero-based position of a waiting entry.
fn position(c: &Connection, m: &entry::Model) -> Result<Option<u32>> {
    if m.leased {
        return Ok(None);
    }
    let n: i64 = stmt(
        c,
        "SELECT COUNT(*) FROM queue_entries WHERE queue_id = ?1 AND leased = FALSE \
         AND (priority > ?2 OR (priority = ?2 AND (rank < ?3 OR (rank = ?3 AND task_id < ?4))))",
    )?
    .query_row(params![m.queue_id, m.priority, m.rank, m.task_id], |r| {
        r.get(0)
    })
    .db()?;
    Ok(Some(u32::try_from(n).unwrap_or(u32::MAX)))
}

/// Inner `Err`: the operation was refused and wrote nothing; outer `Err`:
/// a statement failed (the batch is retried operation by operation).
type Step<T> = Result<Result<T>>;

#[allow(clippy::too_many_arguments)]
fn add(
    c: &Connection,
    b: &mut Batch,
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
    let (found, existing, total, ahead, last_rank) = stmt(
        c,
        "SELECT (SELECT COUNT(*) FROM queues WHERE id = ?1), \
         (SELECT queue_id FROM queue_entries WHERE task_id = ?2), \
         COALESCE((SELECT SUM(waiting + leased) FROM queue_counts WHERE queue_id = ?1), 0), \
         COALESCE((SELECT SUM(waiting) FROM queue_counts WHERE queue_id = ?1 AND priority >= ?3), 0), \
         (SELECT rank FROM queue_entries WHERE queue_id = ?1 AND leased = FALSE AND priority = ?3 \
          ORDER BY rank DESC LIMIT 1)",
    )?
    .query_row(params![queue, task, priority], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, Option<i64>>(4)?,
        ))
    })
    .db()?;
    if found == 0 {
        return Ok(Err(errors::queue_not_found(queue)));
    }
    if let Some(existing) = &existing {
        if existing == queue {
            let m = by_task(c, task)?.ok_or_else(|| errors::db("queued entry vanished"))?;
            let pos = position(c, &m)?;
            return Ok(Ok(Added {
                entry: to_entry(&m, pos),
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
        stmt(c, "DELETE FROM queue_entries WHERE task_id = ?1")?
            .execute([task])
            .db()?;
    }
    stmt(
        c,
        "INSERT INTO queue_entries (task_id, queue_id, priority, rank, added_ms, delivery, seq, \
         leased, lease_id, worker_id, acquired_ms, expires_ms, duration_ms, renewed_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, FALSE, '', '', 0, 0, 0, 0)",
    )?
    .execute(params![task, queue, priority, rank, now_ms, b.seq])
    .db()?;
    touch(c, b, task)?;
    b.wrote = true;
    Ok(Ok(super::created(
        task, queue, priority, now_ms, ahead, existing,
    )))
}

#[allow(clippy::too_many_arguments)]
fn pop(
    c: &Connection,
    b: &mut Batch,
    queues: &[String],
    worker: &str,
    lease: Duration,
    lease_id: &str,
    now: DateTime<Utc>,
) -> Step<Option<(Entry, Lease)>> {
    if queues.len() > 1 {
        for q in queues {
            if !queue_exists(c, q)? {
                return Ok(Err(errors::queue_not_found(q)));
            }
        }
    }
    for queue in queues {
        // The head is the first row of `queue_entries_pop_idx`.
        let head = stmt(
            c,
            concat!(
                "SELECT ",
                cols!(),
                ", COALESCE((SELECT SUM(waiting) FROM queue_counts WHERE queue_id = ?1), 0) \
                 FROM queue_entries WHERE queue_id = ?1 AND leased = FALSE \
                 ORDER BY priority DESC, rank, task_id LIMIT 1"
            ),
        )?
        .query_row([queue], |r| Ok((model(r)?, r.get::<_, i64>(14)?)))
        .optional()
        .db()?;
        let Some((head, pending)) = head else {
            if queues.len() == 1 && !queue_exists(c, queue)? {
                return Ok(Err(errors::queue_not_found(queue)));
            }
            continue;
        };
        let before = to_entry(&head, Some(0));
        let now_ms = millis(now);
        let dur_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let expires = now_ms.saturating_add(dur_ms);
        let delivery = head.delivery.saturating_add(1);
        stmt(
            c,
            "UPDATE queue_entries SET leased = TRUE, lease_id = ?2, worker_id = ?3, \
             acquired_ms = ?4, expires_ms = ?5, duration_ms = ?6, renewed_ms = ?4, delivery = ?7 \
             WHERE task_id = ?1",
        )?
        .execute(params![
            head.task_id,
            lease_id,
            worker,
            now_ms,
            expires,
            dur_ms,
            delivery
        ])
        .db()?;
        touch(c, b, &head.task_id)?;
        b.samples.push(Sample {
            queue: queue.clone(),
            popped_ms: now_ms,
            wait_ms: (now_ms - head.added_ms).max(0),
            pending: (pending - 1).max(0),
        });
        b.wrote = true;
        let lease = Lease {
            lease_id: lease_id.to_owned(),
            task_id: head.task_id,
            queue_id: head.queue_id,
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
fn note_worker(c: &Connection, lease: &Lease, now: DateTime<Utc>) -> Result<()> {
    if lease.worker_id.is_empty() {
        return Ok(());
    }
    stmt(
        c,
        "UPDATE workers SET current_task_since_ms = CASE WHEN current_task_id = ?2 \
         THEN current_task_since_ms ELSE ?4 END, current_task_id = ?2, current_queue_id = ?3 \
         WHERE id = ?1",
    )?
    .execute(params![
        lease.worker_id,
        lease.task_id,
        lease.queue_id,
        millis(now)
    ])
    .db()?;
    Ok(())
}

fn ack(
    c: &Connection,
    b: &mut Batch,
    target: &LeaseTarget,
    worker: &str,
    now: DateTime<Utc>,
) -> Step<Acked> {
    let m = match target {
        LeaseTarget::LeaseId(id) => {
            // The common case in one statement: the holder acknowledges.
            let gone = stmt(
                c,
                concat!(
                    "DELETE FROM queue_entries WHERE lease_id = ?1 AND leased = TRUE \
                     AND (?2 = '' OR worker_id = '' OR worker_id = ?2) RETURNING ",
                    cols!()
                ),
            )?
            .query_row([id.as_str(), worker], model)
            .optional()
            .db()?;
            if let Some(m) = gone {
                touch(c, b, &m.task_id)?;
                b.wrote = true;
                let lease = to_lease(&m).ok_or_else(|| errors::db("lease vanished"))?;
                note_worker(c, &lease, now)?;
                return Ok(Ok(Acked::Acknowledged(lease)));
            }
            let held = stmt(
                c,
                concat!(
                    "SELECT ",
                    cols!(),
                    " FROM queue_entries WHERE lease_id = ?1 AND leased = TRUE"
                ),
            )?
            .query_row([id.as_str()], model)
            .optional()
            .db()?;
            return Ok(Err(match held {
                Some(m) => errors::lease_not_owned(&m.lease_id),
                None => errors::lease_not_found(id),
            }));
        }
        LeaseTarget::TaskId(task) => match by_task(c, task)? {
            Some(m) => m,
            None => return Ok(Ok(Acked::NoLease)),
        },
    };
    if m.leased && check_owner(&m, worker).is_err() {
        return Ok(Err(errors::lease_not_owned(&m.lease_id)));
    }
    let out = if m.leased {
        let lease = to_lease(&m).ok_or_else(|| errors::db("lease vanished"))?;
        note_worker(c, &lease, now)?;
        Acked::Acknowledged(lease)
    } else {
        Acked::Reclaimed(to_entry(&m, position(c, &m)?))
    };
    stmt(c, "DELETE FROM queue_entries WHERE task_id = ?1")?
        .execute([m.task_id.as_str()])
        .db()?;
    touch(c, b, &m.task_id)?;
    b.wrote = true;
    Ok(Ok(out))
}
