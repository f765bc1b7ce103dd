//! The SQL queue backend: entries, leases, change records and pop samples in
//! the service's own database (SQLite embedded, PostgreSQL deployed).
//!
//! Every mutation is one transaction whose first statement increments the
//! `seq` row of `queue_meta` (`UPDATE .. RETURNING`). That statement takes
//! SQLite's write lock at once (no deferred-lock upgrade can fail later) and
//! a row lock on PostgreSQL, so mutations are serialised across connections
//! and replicas, and the returned value is the change sequence number the
//! reconciliation fences compare against.
//!
//! Adds, pops and acknowledgements (the hot path, `sql/hot.rs`) go to one
//! writer per process that applies whatever is waiting as one batch in one
//! transaction on its own connection (group commit) and replies after the
//! commit: on SQLite a thread of its own with a `rusqlite` connection, so no
//! statement crosses threads (`sql/hot/lite.rs`, which also checkpoints the
//! WAL off the writer), on PostgreSQL a task. Everything else runs here,
//! one transaction per call, taking the same write turn. Queue lengths come
//! from the trigger-kept `queue_counts` table, the pop order from
//! `queue_entries_pop_idx` (migration `m20250102_000001_queue_counts`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    Statement, TransactionTrait,
};
use tasklab_error::Result;

use super::{
    Acked, Added, Disposition, Entry, Lease, LeaseTarget, Move, PopSample, Presence, QueueBackend,
    Released, StepOutcome, from_millis, millis, new_lease_id,
};
use crate::entity::{change, entry, meta, pop};
use crate::errors;

mod hot;

/// This process's turn to write; held until the transaction ends (declared
/// before the transaction, so dropped after it).
type Turn = tokio::sync::OwnedMutexGuard<()>;

/// The mutex behind [`Turn`].
type WriteLock = Arc<tokio::sync::Mutex<()>>;

/// Entries in SQL. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqlBackend {
    db: DatabaseConnection,
    // Writers of this process queue here instead of in SQLite's busy
    // handler, which sleeps in steps of milliseconds; across processes the
    // `seq` row lock still serialises them.
    write: WriteLock,
    // Adds, pops and acknowledgements go to the group-commit writer.
    hot: hot::Sender,
}

impl SqlBackend {
    /// A backend on a migrated connection of this service's database.
    pub async fn new(db: DatabaseConnection) -> Result<SqlBackend> {
        for (key, sval) in [("seq", String::new())] {
            let row = meta::ActiveModel {
                key: Set(key.to_owned()),
                ival: Set(0),
                sval: Set(sval),
            };
            meta::Entity::insert(row)
                .on_conflict(
                    OnConflict::column(meta::Column::Key)
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(&db)
                .await
                .map_err(errors::db)?;
        }
        let write: WriteLock = Arc::new(tokio::sync::Mutex::new(()));
        let hot = hot::spawn(&db, write.clone()).await?;
        Ok(SqlBackend { db, write, hot })
    }

    /// Opens a transaction and takes the next change sequence number.
    async fn begin(&self) -> Result<(Turn, DatabaseTransaction, i64)> {
        let guard = self.write.clone().lock_owned().await;
        let txn = self.db.begin().await.map_err(errors::db)?;
        let row = txn
            .query_one_raw(Statement::from_string(
                txn.get_database_backend(),
                "UPDATE queue_meta SET ival = ival + 1 WHERE key = 'seq' RETURNING ival",
            ))
            .await
            .map_err(errors::db)?
            .ok_or_else(|| errors::db("the seq row is missing"))?;
        let seq: i64 = row.try_get("", "ival").map_err(errors::db)?;
        Ok((guard, txn, seq))
    }
}

async fn commit(txn: DatabaseTransaction) -> Result<()> {
    txn.commit().await.map_err(errors::db)
}

fn to_lease(m: &entry::Model) -> Option<Lease> {
    m.leased.then(|| Lease {
        lease_id: m.lease_id.clone(),
        task_id: m.task_id.clone(),
        queue_id: m.queue_id.clone(),
        worker_id: m.worker_id.clone(),
        priority: m.priority,
        added: from_millis(m.added_ms),
        acquired: from_millis(m.acquired_ms),
        expires: from_millis(m.expires_ms),
        duration: Duration::from_millis(u64::try_from(m.duration_ms).unwrap_or(0)),
        last_renewed: from_millis(m.renewed_ms),
        delivery_attempt: u32::try_from(m.delivery).unwrap_or(0),
    })
}

fn to_entry(m: &entry::Model, position: Option<u32>) -> Entry {
    Entry {
        task_id: m.task_id.clone(),
        queue_id: m.queue_id.clone(),
        added: from_millis(m.added_ms),
        priority: m.priority,
        position: if m.leased { None } else { position },
        lease: to_lease(m),
        delivery_count: u32::try_from(m.delivery).unwrap_or(0),
    }
}

async fn by_task(c: &impl ConnectionTrait, task: &str) -> Result<Option<entry::Model>> {
    entry::Entity::find_by_id(task.to_owned())
        .one(c)
        .await
        .map_err(errors::db)
}

async fn by_target(c: &impl ConnectionTrait, target: &LeaseTarget) -> Result<Option<entry::Model>> {
    let found = match target {
        LeaseTarget::TaskId(task) => by_task(c, task).await?,
        LeaseTarget::LeaseId(id) => entry::Entity::find()
            .filter(entry::Column::LeaseId.eq(id.as_str()))
            .filter(entry::Column::Leased.eq(true))
            .one(c)
            .await
            .map_err(errors::db)?,
    };
    Ok(found)
}

/// Zero-based position of a waiting entry in its queue's pop order.
async fn position(c: &impl ConnectionTrait, m: &entry::Model) -> Result<Option<u32>> {
    if m.leased {
        return Ok(None);
    }
    let ahead = entry::Entity::find()
        .filter(entry::Column::QueueId.eq(m.queue_id.as_str()))
        .filter(entry::Column::Leased.eq(false))
        .filter(
            Condition::any()
                .add(entry::Column::Priority.gt(m.priority))
                .add(
                    Condition::all()
                        .add(entry::Column::Priority.eq(m.priority))
                        .add(entry::Column::Rank.lt(m.rank)),
                )
                .add(
                    Condition::all()
                        .add(entry::Column::Priority.eq(m.priority))
                        .add(entry::Column::Rank.eq(m.rank))
                        .add(entry::Column::TaskId.lt(m.task_id.as_str())),
                ),
        )
        .count(c)
        .await
        .map_err(errors::db)?;
    Ok(Some(u32::try_from(ahead).unwrap_or(u32::MAX)))
}

async fn with_position(c: &impl ConnectionTrait, m: &entry::Model) -> Result<Entry> {
    let pos = position(c, m).await?;
    Ok(to_entry(m, pos))
}

/// The waiting entries of one band, in order.
async fn band(c: &impl ConnectionTrait, queue: &str, priority: i32) -> Result<Vec<entry::Model>> {
    entry::Entity::find()
        .filter(entry::Column::QueueId.eq(queue))
        .filter(entry::Column::Leased.eq(false))
        .filter(entry::Column::Priority.eq(priority))
        .order_by_asc(entry::Column::Rank)
        .order_by_asc(entry::Column::TaskId)
        .all(c)
        .await
        .map_err(errors::db)
}

/// The rank that puts an entry at the front or back of its band.
async fn edge_rank(
    c: &impl ConnectionTrait,
    queue: &str,
    priority: i32,
    front: bool,
    now: DateTime<Utc>,
) -> Result<i64> {
    let mut q = entry::Entity::find()
        .filter(entry::Column::QueueId.eq(queue))
        .filter(entry::Column::Leased.eq(false))
        .filter(entry::Column::Priority.eq(priority));
    q = if front {
        q.order_by_asc(entry::Column::Rank)
    } else {
        q.order_by_desc(entry::Column::Rank)
    };
    let edge = q.one(c).await.map_err(errors::db)?;
    Ok(match (edge, front) {
        (None, _) => millis(now),
        (Some(e), true) => e.rank - 1,
        (Some(e), false) => e.rank.saturating_add(1).max(millis(now)),
    })
}

async fn touch(c: &impl ConnectionTrait, task: &str, seq: i64) -> Result<()> {
    let row = change::ActiveModel {
        task_id: Set(task.to_owned()),
        seq: Set(seq),
    };
    change::Entity::insert(row)
        .on_conflict(
            OnConflict::column(change::Column::TaskId)
                .update_column(change::Column::Seq)
                .to_owned(),
        )
        .exec_without_returning(c)
        .await
        .map_err(errors::db)?;
    Ok(())
}

async fn last_change(c: &impl ConnectionTrait, task: &str) -> Result<i64> {
    Ok(change::Entity::find_by_id(task.to_owned())
        .one(c)
        .await
        .map_err(errors::db)?
        .map_or(0, |r| r.seq))
}

async fn waiting_count(c: &impl ConnectionTrait, queue: &str) -> Result<u32> {
    Ok(counts(c, queue).await?.0)
}

/// Turns a leased row back into a waiting one at the front or back of its
/// band; returns the lease it had.
async fn unlease(
    c: &impl ConnectionTrait,
    m: entry::Model,
    front: bool,
    seq: i64,
    now: DateTime<Utc>,
) -> Result<(Lease, entry::Model)> {
    let lease = to_lease(&m).ok_or_else(|| errors::db("unlease of a waiting entry"))?;
    let rank = edge_rank(c, &m.queue_id, m.priority, front, now).await?;
    let mut am: entry::ActiveModel = m.into();
    am.leased = Set(false);
    am.lease_id = Set(String::new());
    am.worker_id = Set(String::new());
    am.rank = Set(rank);
    let m = am.update(c).await.map_err(errors::db)?;
    touch(c, &m.task_id, seq).await?;
    Ok((lease, m))
}

fn check_owner(m: &entry::Model, worker_id: &str) -> Result<()> {
    if !worker_id.is_empty() && !m.worker_id.is_empty() && m.worker_id != worker_id {
        return Err(errors::lease_not_owned(&m.lease_id));
    }
    Ok(())
}

async fn delete(c: &impl ConnectionTrait, task: &str, seq: i64) -> Result<()> {
    entry::Entity::delete_by_id(task.to_owned())
        .exec(c)
        .await
        .map_err(errors::db)?;
    touch(c, task, seq).await
}

#[allow(clippy::too_many_arguments)]
async fn insert(
    c: &impl ConnectionTrait,
    queue: &str,
    task: &str,
    priority: i32,
    rank: i64,
    added: DateTime<Utc>,
    delivery: i32,
    seq: i64,
) -> Result<entry::Model> {
    let row = entry::ActiveModel {
        task_id: Set(task.to_owned()),
        queue_id: Set(queue.to_owned()),
        priority: Set(priority),
        rank: Set(rank),
        added_ms: Set(millis(added)),
        delivery: Set(delivery),
        seq: Set(seq),
        leased: Set(false),
        lease_id: Set(String::new()),
        worker_id: Set(String::new()),
        acquired_ms: Set(0),
        expires_ms: Set(0),
        duration_ms: Set(0),
        renewed_ms: Set(0),
    };
    entry::Entity::insert(row)
        .exec_without_returning(c)
        .await
        .map_err(errors::db)?;
    touch(c, task, seq).await?;
    by_task(c, task)
        .await?
        .ok_or_else(|| errors::db("inserted entry vanished"))
}

#[async_trait]
impl QueueBackend for SqlBackend {
    async fn epoch(&self, now: DateTime<Utc>) -> Result<String> {
        // A SQL store never restarts empty without its queues table, so its
        // epoch is fixed at the first call.
        let fresh = format!("sql-{}", uuid::Uuid::new_v4().simple());
        let row = meta::ActiveModel {
            key: Set("epoch".to_owned()),
            ival: Set(millis(now)),
            sval: Set(fresh),
        };
        meta::Entity::insert(row)
            .on_conflict(
                OnConflict::column(meta::Column::Key)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await
            .map_err(errors::db)?;
        let row = meta::Entity::find_by_id("epoch".to_owned())
            .one(&self.db)
            .await
            .map_err(errors::db)?
            .ok_or_else(|| errors::db("the epoch row is missing"))?;
        Ok(row.sval)
    }

    async fn current_seq(&self) -> Result<u64> {
        let row = meta::Entity::find_by_id("seq".to_owned())
            .one(&self.db)
            .await
            .map_err(errors::db)?;
        Ok(row.map_or(0, |r| u64::try_from(r.ival).unwrap_or(0)))
    }

    async fn add(
        &self,
        queue_id: &str,
        task_id: &str,
        priority: i32,
        replace_existing: bool,
        max_entries: u32,
        now: DateTime<Utc>,
    ) -> Result<Added> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        hot::send(
            &self.hot,
            hot::Op::Add {
                queue: queue_id.to_owned(),
                task: task_id.to_owned(),
                priority,
                replace: replace_existing,
                max: max_entries,
                now,
                reply,
            },
        )?;
        hot::recv(rx).await
    }

    async fn remove(&self, task_id: &str, queue_id: Option<&str>) -> Result<Option<Entry>> {
        let (_turn, txn, seq) = self.begin().await?;
        let Some(m) = by_task(&txn, task_id).await? else {
            return Ok(None);
        };
        if queue_id.is_some_and(|q| q != m.queue_id) {
            return Ok(None);
        }
        let entry = with_position(&txn, &m).await?;
        delete(&txn, task_id, seq).await?;
        commit(txn).await?;
        Ok(Some(entry))
    }

    async fn list(
        &self,
        queue_id: &str,
        offset: u32,
        limit: u32,
        include_leased: bool,
    ) -> Result<Vec<Entry>> {
        let waiting = entry::Entity::find()
            .filter(entry::Column::QueueId.eq(queue_id))
            .filter(entry::Column::Leased.eq(false))
            .order_by_desc(entry::Column::Priority)
            .order_by_asc(entry::Column::Rank)
            .order_by_asc(entry::Column::TaskId)
            .offset(u64::from(offset))
            .limit(u64::from(limit))
            .all(&self.db)
            .await
            .map_err(errors::db)?;
        let mut out: Vec<Entry> = waiting
            .iter()
            .zip(offset..)
            .map(|(m, pos)| to_entry(m, Some(pos)))
            .collect();
        if include_leased && out.len() < limit as usize {
            let total_waiting = waiting_count(&self.db, queue_id).await?;
            let skip = offset.saturating_sub(total_waiting);
            let leased = entry::Entity::find()
                .filter(entry::Column::QueueId.eq(queue_id))
                .filter(entry::Column::Leased.eq(true))
                .order_by_asc(entry::Column::AcquiredMs)
                .order_by_asc(entry::Column::TaskId)
                .offset(u64::from(skip))
                .limit(u64::from(limit) - out.len() as u64)
                .all(&self.db)
                .await
                .map_err(errors::db)?;
            out.extend(leased.iter().map(|m| to_entry(m, None)));
        }
        Ok(out)
    }

    async fn counts(&self, queue_id: &str) -> Result<(u32, u32)> {
        counts(&self.db, queue_id).await
    }

    async fn oldest_added(&self, queue_id: &str) -> Result<Option<DateTime<Utc>>> {
        let oldest = entry::Entity::find()
            .filter(entry::Column::QueueId.eq(queue_id))
            .filter(entry::Column::Leased.eq(false))
            .order_by_asc(entry::Column::AddedMs)
            .one(&self.db)
            .await
            .map_err(errors::db)?;
        Ok(oldest.map(|m| from_millis(m.added_ms)))
    }

    async fn move_entry(&self, task_id: &str, queue_id: Option<&str>, mv: Move) -> Result<Entry> {
        let (_turn, txn, seq) = self.begin().await?;
        let m = by_task(&txn, task_id)
            .await?
            .filter(|m| queue_id.is_none_or(|q| q == m.queue_id))
            .ok_or_else(|| errors::task_not_queued(task_id))?;
        if m.leased {
            return Err(errors::entry_leased(task_id));
        }
        let band = band(&txn, &m.queue_id, m.priority).await?;
        let at = band
            .iter()
            .position(|e| e.task_id == m.task_id)
            .ok_or_else(|| errors::db("entry missing from its band"))?;
        let target = match mv {
            Move::ToFront => 0,
            Move::ToBack => band.len() - 1,
            Move::Forward(n) => at.saturating_sub(n.max(1) as usize),
            Move::Backward(n) => (at + n.max(1) as usize).min(band.len() - 1),
        };
        if target != at {
            // Rotate the ranks of the window between the two places, so the
            // moving entry takes the target's rank and the others shift by one.
            let (lo, hi) = (at.min(target), at.max(target));
            let ranks: Vec<i64> = band[lo..=hi].iter().map(|e| e.rank).collect();
            let mut order: Vec<&entry::Model> = band[lo..=hi].iter().collect();
            if target < at {
                order.rotate_right(1);
            } else {
                order.rotate_left(1);
            }
            // Distinct ranks keep the new order exact even when the old ones tied.
            let base = ranks[0];
            let distinct = ranks.windows(2).all(|w| w[0] < w[1]);
            for (i, e) in order.into_iter().enumerate() {
                let rank = if distinct { ranks[i] } else { base + i as i64 };
                entry::Entity::update_many()
                    .col_expr(entry::Column::Rank, Expr::value(rank))
                    .filter(entry::Column::TaskId.eq(e.task_id.as_str()))
                    .exec(&txn)
                    .await
                    .map_err(errors::db)?;
            }
            touch(&txn, task_id, seq).await?;
        }
        let m = by_task(&txn, task_id)
            .await?
            .ok_or_else(|| errors::db("moved entry vanished"))?;
        let entry = with_position(&txn, &m).await?;
        commit(txn).await?;
        Ok(entry)
    }

    async fn set_priority(
        &self,
        task_id: &str,
        priority: i32,
        now: DateTime<Utc>,
    ) -> Result<Entry> {
        let (_turn, txn, seq) = self.begin().await?;
        let m = by_task(&txn, task_id)
            .await?
            .ok_or_else(|| errors::task_not_queued(task_id))?;
        if m.leased {
            return Err(errors::entry_leased(task_id));
        }
        let rank = edge_rank(&txn, &m.queue_id, priority, false, now).await?;
        let mut am: entry::ActiveModel = m.into();
        am.priority = Set(priority);
        am.rank = Set(rank);
        let m = am.update(&txn).await.map_err(errors::db)?;
        touch(&txn, task_id, seq).await?;
        let entry = with_position(&txn, &m).await?;
        commit(txn).await?;
        Ok(entry)
    }

    async fn find(&self, task_id: &str) -> Result<Option<Entry>> {
        match by_task(&self.db, task_id).await? {
            Some(m) => Ok(Some(with_position(&self.db, &m).await?)),
            None => Ok(None),
        }
    }

    async fn pop(
        &self,
        queue_ids: &[String],
        worker_id: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<(Entry, Lease)>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        hot::send(
            &self.hot,
            hot::Op::Pop {
                queues: queue_ids.to_vec(),
                worker: worker_id.to_owned(),
                lease,
                lease_id: new_lease_id(),
                now,
                reply,
            },
        )?;
        hot::recv(rx).await
    }

    fn notes_current_task(&self) -> bool {
        true
    }

    async fn ack(
        &self,
        target: &LeaseTarget,
        worker_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Acked> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        hot::send(
            &self.hot,
            hot::Op::Ack {
                target: target.clone(),
                worker: worker_id.to_owned(),
                now,
                reply,
            },
        )?;
        hot::recv(rx).await
    }

    async fn release(
        &self,
        target: &LeaseTarget,
        worker_id: &str,
        disposition: Disposition,
        now: DateTime<Utc>,
    ) -> Result<Option<Released>> {
        let (_turn, txn, seq) = self.begin().await?;
        let found = by_target(&txn, target).await?.filter(|m| m.leased);
        let Some(m) = found else {
            return match target {
                LeaseTarget::LeaseId(id) => Err(errors::lease_not_found(id)),
                LeaseTarget::TaskId(_) => Ok(None),
            };
        };
        check_owner(&m, worker_id)?;
        let out = match disposition {
            Disposition::Discard => {
                let lease = to_lease(&m).ok_or_else(|| errors::db("lease vanished"))?;
                delete(&txn, &m.task_id, seq).await?;
                Released { lease, entry: None }
            }
            Disposition::Front | Disposition::Back => {
                let (lease, m) =
                    unlease(&txn, m, disposition == Disposition::Front, seq, now).await?;
                let entry = with_position(&txn, &m).await?;
                Released {
                    lease,
                    entry: Some(entry),
                }
            }
        };
        commit(txn).await?;
        Ok(Some(out))
    }

    async fn renew(
        &self,
        target: &LeaseTarget,
        worker_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Lease> {
        let (_turn, txn, _seq) = self.begin().await?;
        let m = by_target(&txn, target)
            .await?
            .filter(|m| m.leased)
            .ok_or_else(|| match target {
                LeaseTarget::LeaseId(id) | LeaseTarget::TaskId(id) => errors::lease_not_found(id),
            })?;
        check_owner(&m, worker_id)?;
        if m.expires_ms < millis(now) {
            return Err(errors::lease_expired(&m.lease_id));
        }
        let bind = m.worker_id.is_empty() && !worker_id.is_empty();
        let m = renew_row(&txn, m, now, bind.then_some(worker_id)).await?;
        commit(txn).await?;
        to_lease(&m).ok_or_else(|| errors::db("lease vanished"))
    }

    async fn renew_worker(
        &self,
        worker_id: &str,
        current_task_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Lease>> {
        let (_turn, txn, _seq) = self.begin().await?;
        let mut cond = Condition::any().add(entry::Column::WorkerId.eq(worker_id));
        if !current_task_id.is_empty() {
            cond = cond.add(entry::Column::TaskId.eq(current_task_id));
        }
        let rows = entry::Entity::find()
            .filter(entry::Column::Leased.eq(true))
            .filter(cond)
            .all(&txn)
            .await
            .map_err(errors::db)?;
        let mut out = Vec::with_capacity(rows.len());
        for m in rows {
            let m = renew_row(&txn, m, now, None).await?;
            out.extend(to_lease(&m));
        }
        commit(txn).await?;
        Ok(out)
    }

    async fn return_worker(&self, worker_id: &str, now: DateTime<Utc>) -> Result<Vec<Lease>> {
        let (_turn, txn, seq) = self.begin().await?;
        let rows = entry::Entity::find()
            .filter(entry::Column::Leased.eq(true))
            .filter(entry::Column::WorkerId.eq(worker_id))
            .order_by_desc(entry::Column::AcquiredMs)
            .all(&txn)
            .await
            .map_err(errors::db)?;
        let mut out = Vec::with_capacity(rows.len());
        for m in rows {
            out.push(unlease(&txn, m, true, seq, now).await?.0);
        }
        commit(txn).await?;
        Ok(out)
    }

    async fn leases(&self) -> Result<Vec<Lease>> {
        let rows = entry::Entity::find()
            .filter(entry::Column::Leased.eq(true))
            .all(&self.db)
            .await
            .map_err(errors::db)?;
        Ok(rows.iter().filter_map(to_lease).collect())
    }

    async fn reap(&self, now: DateTime<Utc>) -> Result<Vec<Lease>> {
        // Cheap probe first: the reaper runs every few seconds on every replica.
        let any = entry::Entity::find()
            .filter(entry::Column::Leased.eq(true))
            .filter(entry::Column::ExpiresMs.lte(millis(now)))
            .one(&self.db)
            .await
            .map_err(errors::db)?;
        if any.is_none() {
            return Ok(Vec::new());
        }
        let (_turn, txn, seq) = self.begin().await?;
        // Latest acquired first, so the oldest ends up at the very front.
        let rows = entry::Entity::find()
            .filter(entry::Column::Leased.eq(true))
            .filter(entry::Column::ExpiresMs.lte(millis(now)))
            .order_by_desc(entry::Column::AcquiredMs)
            .all(&txn)
            .await
            .map_err(errors::db)?;
        let mut out = Vec::with_capacity(rows.len());
        for m in rows {
            out.push(unlease(&txn, m, true, seq, now).await?.0);
        }
        commit(txn).await?;
        Ok(out)
    }

    async fn drop_queue(&self, queue_id: &str) -> Result<(Vec<String>, Vec<String>)> {
        let (_turn, txn, seq) = self.begin().await?;
        let rows = entry::Entity::find()
            .filter(entry::Column::QueueId.eq(queue_id))
            .order_by_desc(entry::Column::Priority)
            .order_by_asc(entry::Column::Rank)
            .order_by_asc(entry::Column::TaskId)
            .all(&txn)
            .await
            .map_err(errors::db)?;
        let (mut waiting, mut leased) = (Vec::new(), Vec::new());
        for m in rows {
            delete(&txn, &m.task_id, seq).await?;
            if m.leased {
                leased.push(m.task_id);
            } else {
                waiting.push(m.task_id);
            }
        }
        // Its counters are all zero now.
        txn.execute_raw(Statement::from_sql_and_values(
            txn.get_database_backend(),
            "DELETE FROM queue_counts WHERE queue_id = $1",
            [queue_id.into()],
        ))
        .await
        .map_err(errors::db)?;
        commit(txn).await?;
        Ok((waiting, leased))
    }

    async fn pop_samples(&self, queue_id: &str, since: DateTime<Utc>) -> Result<Vec<PopSample>> {
        hot::flush(&self.hot).await?;
        let rows = pop::Entity::find()
            .filter(pop::Column::QueueId.eq(queue_id))
            .filter(pop::Column::PoppedMs.gte(millis(since)))
            .order_by_asc(pop::Column::PoppedMs)
            .all(&self.db)
            .await
            .map_err(errors::db)?;
        Ok(rows
            .iter()
            .map(|r| PopSample {
                popped: from_millis(r.popped_ms),
                wait: Duration::from_millis(u64::try_from(r.wait_ms).unwrap_or(0)),
                pending_after: u32::try_from(r.pending).unwrap_or(0),
            })
            .collect())
    }

    async fn trim(&self, samples_before: DateTime<Utc>, changes_before_seq: u64) -> Result<()> {
        pop::Entity::delete_many()
            .filter(pop::Column::PoppedMs.lt(millis(samples_before)))
            .exec(&self.db)
            .await
            .map_err(errors::db)?;
        change::Entity::delete_many()
            .filter(change::Column::Seq.lt(i64::try_from(changes_before_seq).unwrap_or(i64::MAX)))
            .exec(&self.db)
            .await
            .map_err(errors::db)?;
        Ok(())
    }

    async fn presences(&self) -> Result<Vec<Presence>> {
        let rows = entry::Entity::find()
            .all(&self.db)
            .await
            .map_err(errors::db)?;
        Ok(rows
            .into_iter()
            .map(|m| Presence {
                task_id: m.task_id,
                queue_id: m.queue_id,
                leased: m.leased,
                seq: u64::try_from(m.seq).unwrap_or(0),
            })
            .collect())
    }

    async fn reconcile_add(
        &self,
        task_id: &str,
        queue_id: &str,
        priority: i32,
        enqueued: DateTime<Utc>,
        fence: u64,
        _now: DateTime<Utc>,
    ) -> Result<StepOutcome> {
        let (_turn, txn, seq) = self.begin().await?;
        if by_task(&txn, task_id).await?.is_some() || changed_after(&txn, task_id, fence).await? {
            return Ok(StepOutcome::Recent);
        }
        insert(
            &txn,
            queue_id,
            task_id,
            priority,
            millis(enqueued),
            enqueued,
            0,
            seq,
        )
        .await?;
        commit(txn).await?;
        Ok(StepOutcome::Done)
    }

    async fn reconcile_move(
        &self,
        task_id: &str,
        from: &str,
        to: &str,
        fence: u64,
        now: DateTime<Utc>,
    ) -> Result<StepOutcome> {
        let (_turn, txn, seq) = self.begin().await?;
        let Some(m) = by_task(&txn, task_id).await? else {
            return Ok(StepOutcome::Recent);
        };
        if m.queue_id != from || m.leased || changed_after(&txn, task_id, fence).await? {
            return Ok(StepOutcome::Recent);
        }
        let rank = edge_rank(&txn, to, m.priority, false, now).await?;
        let mut am: entry::ActiveModel = m.into();
        am.queue_id = Set(to.to_owned());
        am.rank = Set(rank);
        am.seq = Set(seq);
        am.update(&txn).await.map_err(errors::db)?;
        touch(&txn, task_id, seq).await?;
        commit(txn).await?;
        Ok(StepOutcome::Done)
    }

    async fn reconcile_remove(
        &self,
        task_id: &str,
        queue_id: &str,
        fence: u64,
    ) -> Result<StepOutcome> {
        let (_turn, txn, seq) = self.begin().await?;
        let Some(m) = by_task(&txn, task_id).await? else {
            return Ok(StepOutcome::Recent);
        };
        if m.queue_id != queue_id || changed_after(&txn, task_id, fence).await? {
            return Ok(StepOutcome::Recent);
        }
        delete(&txn, task_id, seq).await?;
        commit(txn).await?;
        Ok(StepOutcome::Done)
    }
}

async fn changed_after(c: &impl ConnectionTrait, task: &str, fence: u64) -> Result<bool> {
    Ok(u64::try_from(last_change(c, task).await?).unwrap_or(0) > fence)
}

/// `(waiting, leased)` of a queue, from its counters.
async fn counts(c: &impl ConnectionTrait, queue_id: &str) -> Result<(u32, u32)> {
    let row = c
        .query_one_raw(Statement::from_sql_and_values(
            c.get_database_backend(),
            "SELECT CAST(COALESCE(SUM(waiting), 0) AS BIGINT) AS w, \
             CAST(COALESCE(SUM(leased), 0) AS BIGINT) AS l FROM queue_counts WHERE queue_id = $1",
            [queue_id.into()],
        ))
        .await
        .map_err(errors::db)?
        .ok_or_else(|| errors::db("no counts row"))?;
    let w: i64 = row.try_get("", "w").map_err(errors::db)?;
    let l: i64 = row.try_get("", "l").map_err(errors::db)?;
    let n = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
    Ok((n(w), n(l)))
}

async fn renew_row(
    c: &impl ConnectionTrait,
    m: entry::Model,
    now: DateTime<Utc>,
    bind: Option<&str>,
) -> Result<entry::Model> {
    let now_ms = millis(now);
    let expires = now_ms.saturating_add(m.duration_ms);
    let mut am: entry::ActiveModel = m.into();
    am.expires_ms = Set(expires);
    am.renewed_ms = Set(now_ms);
    if let Some(worker) = bind {
        am.worker_id = Set(worker.to_owned());
    }
    am.update(c).await.map_err(errors::db)
}
