//! The `QueueBackend` trait: where queue entries, leases, the change log and
//! pop samples live, with two implementations.
//!
//! * [`sql::SqlBackend`] keeps them in the service's own sea-orm database
//!   (the embedded default). Every mutation is one transaction whose first
//!   statement bumps the change counter row, which serialises writers on
//!   SQLite and across replicas on PostgreSQL.
//! * [`redis::RedisBackend`] keeps them in Redis (the deployed default).
//!   Every mutation is one Lua script, so multi-key moves are atomic and a
//!   script run twice by two replicas (the reaper) cannot act twice.
//!
//! Queue metadata (names, tags) is not here: it lives in SQL on both
//! backends (`store.rs`). Workers also live in SQL; only the leases they hold
//! are here.
//!
//! Ordering: an entry sorts by `priority` descending, then `rank` ascending,
//! then task id. A push to the back takes the larger of `now_ms` and one past
//! the last rank of the band, a push to the front one before the first rank
//! of the band, and an entry rebuilt by a reconciliation takes its enqueue
//! time, so a rebuilt queue keeps its FIFO order.
//!
//! Every backend method takes `now` from the service's clock instead of
//! reading one, so tests control time.

pub mod redis;
pub mod sql;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tasklab_error::Result;

/// A task waiting or leased in a queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The task.
    pub task_id: String,
    /// The queue holding it.
    pub queue_id: String,
    /// When the task was added to the queue (millisecond precision).
    pub added: DateTime<Utc>,
    /// Higher first.
    pub priority: i32,
    /// Position in pop order; `None` when leased (or unknown).
    pub position: Option<u32>,
    /// The open lease, when leased.
    pub lease: Option<Lease>,
    /// How many times the entry was leased.
    pub delivery_count: u32,
}

/// A worker's hold on a popped entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// Opaque id.
    pub lease_id: String,
    /// The task.
    pub task_id: String,
    /// The queue it came from.
    pub queue_id: String,
    /// The holder; empty when the pop named none.
    pub worker_id: String,
    /// The entry's priority.
    pub priority: i32,
    /// The entry's `added` time.
    pub added: DateTime<Utc>,
    /// When granted.
    pub acquired: DateTime<Utc>,
    /// When it expires unless renewed.
    pub expires: DateTime<Utc>,
    /// Renewal length.
    pub duration: Duration,
    /// Last renewal (`acquired` before the first).
    pub last_renewed: DateTime<Utc>,
    /// 1 for the first delivery.
    pub delivery_attempt: u32,
}

/// Names a lease: by its id or by its task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseTarget {
    /// A lease id from a pop.
    LeaseId(String),
    /// The task whose lease is meant.
    TaskId(String),
}

/// A move within a priority band.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Ahead of the band.
    ToFront,
    /// Behind the band.
    ToBack,
    /// `n` places towards the front.
    Forward(u32),
    /// `n` places towards the back.
    Backward(u32),
}

/// Where a released entry goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Front of its band.
    Front,
    /// Back of its band.
    Back,
    /// Dropped.
    Discard,
}

/// Result of an add.
#[derive(Debug, Clone, PartialEq)]
pub struct Added {
    /// The entry (new or existing).
    pub entry: Entry,
    /// False when the task already was in this queue.
    pub created: bool,
    /// The queue the task was taken out of under `replace_existing`.
    pub previous_queue_id: Option<String>,
}

/// What an acknowledgement did.
#[derive(Debug, Clone, PartialEq)]
pub enum Acked {
    /// An open lease was acknowledged.
    Acknowledged(Lease),
    /// The lease had been reaped and the waiting entry was taken back out;
    /// carries the last lease data known (reconstructed).
    Reclaimed(Entry),
    /// Nothing to acknowledge.
    NoLease,
}

/// Result of a release.
#[derive(Debug, Clone, PartialEq)]
pub struct Released {
    /// The released lease.
    pub lease: Lease,
    /// The entry back in its queue; `None` when discarded.
    pub entry: Option<Entry>,
}

/// One pop, for queue metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PopSample {
    /// When the pop happened.
    pub popped: DateTime<Utc>,
    /// From `added` to the pop.
    pub wait: Duration,
    /// Waiting entries left after the pop.
    pub pending_after: u32,
}

/// A task's presence in the queues, for reconciliation.
#[derive(Debug, Clone, PartialEq)]
pub struct Presence {
    /// The task.
    pub task_id: String,
    /// The queue holding it.
    pub queue_id: String,
    /// Whether it is leased.
    pub leased: bool,
    /// The change sequence number at which it entered this queue.
    pub seq: u64,
}

/// Outcome of one conditional reconciliation step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Applied.
    Done,
    /// Not applied: the task changed after the fence.
    Recent,
}

/// The storage of entries, leases, the change log and pop samples.
///
/// Implementations must make every method atomic: a concurrent caller sees
/// either none or all of a method's effect. Methods that push entries return
/// nothing special: the service signals waiters itself.
#[async_trait]
pub trait QueueBackend: Send + Sync + std::fmt::Debug + 'static {
    /// Records that a queue was created (after its SQL row was inserted).
    /// The SQL backend reads the `queues` table itself: nothing to do.
    async fn create_queue(&self, _queue_id: &str) -> Result<()> {
        Ok(())
    }

    /// Called when `add` or `pop` reported `queue_not_found` for a queue
    /// that the SQL store still has (a store that lost its own record of
    /// the queue, e.g. Redis after a restart): records it again unless it
    /// was deleted meanwhile; true when the caller may retry.
    async fn ensure_queue(&self, _queue_id: &str) -> Result<bool> {
        Ok(false)
    }

    /// Whether `ack` itself records the acknowledged task as the current
    /// task of its registered worker (the SQL backend does, in the same
    /// transaction, since the workers table lives in its database and a
    /// second writer would only queue behind it); otherwise the service
    /// does, in the store.
    fn notes_current_task(&self) -> bool {
        false
    }

    /// The store's epoch, created when the store is found without one.
    async fn epoch(&self, now: DateTime<Utc>) -> Result<String>;

    /// The last change sequence number (the fence point).
    async fn current_seq(&self) -> Result<u64>;

    /// Adds `task_id` to the back of its band in `queue_id`; fails with
    /// `queue_not_found` when the queue does not exist, checked atomically
    /// with the insert.
    async fn add(
        &self,
        queue_id: &str,
        task_id: &str,
        priority: i32,
        replace_existing: bool,
        max_entries: u32,
        now: DateTime<Utc>,
    ) -> Result<Added>;

    /// Removes the task (waiting or leased) from `queue_id`, or from any
    /// queue when `None`.
    async fn remove(&self, task_id: &str, queue_id: Option<&str>) -> Result<Option<Entry>>;

    /// Waiting entries of a queue in pop order from `offset`, then (when
    /// `include_leased`) the leased ones, oldest lease first.
    async fn list(
        &self,
        queue_id: &str,
        offset: u32,
        limit: u32,
        include_leased: bool,
    ) -> Result<Vec<Entry>>;

    /// `(waiting, leased)` counts of a queue.
    async fn counts(&self, queue_id: &str) -> Result<(u32, u32)>;

    /// The oldest `added` among the waiting entries of a queue.
    async fn oldest_added(&self, queue_id: &str) -> Result<Option<DateTime<Utc>>>;

    /// Moves a waiting entry within its band.
    async fn move_entry(&self, task_id: &str, queue_id: Option<&str>, mv: Move) -> Result<Entry>;

    /// Changes the priority of a waiting entry (to the back of the new band).
    async fn set_priority(&self, task_id: &str, priority: i32, now: DateTime<Utc>)
    -> Result<Entry>;

    /// Where the task is, with its position or lease.
    async fn find(&self, task_id: &str) -> Result<Option<Entry>>;

    /// Pops the head of the first non-empty queue of `queue_ids`, in order,
    /// and leases it; fails with `queue_not_found` when one of them does not
    /// exist.
    async fn pop(
        &self,
        queue_ids: &[String],
        worker_id: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<(Entry, Lease)>>;

    /// Acknowledges a lease.
    async fn ack(&self, target: &LeaseTarget, worker_id: &str, now: DateTime<Utc>)
    -> Result<Acked>;

    /// Releases a lease; `None` when targeting a task without a lease.
    /// `queue_exists` tells whether the lease's queue still exists.
    async fn release(
        &self,
        target: &LeaseTarget,
        worker_id: &str,
        disposition: Disposition,
        now: DateTime<Utc>,
    ) -> Result<Option<Released>>;

    /// Renews one lease (binding a worker-less lease to `worker_id`).
    async fn renew(
        &self,
        target: &LeaseTarget,
        worker_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Lease>;

    /// Renews every lease held by `worker_id`, plus the lease of
    /// `current_task_id` when not empty.
    async fn renew_worker(
        &self,
        worker_id: &str,
        current_task_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Lease>>;

    /// Returns every lease of `worker_id` to the front of its queue.
    async fn return_worker(&self, worker_id: &str, now: DateTime<Utc>) -> Result<Vec<Lease>>;

    /// Every open lease (unordered).
    async fn leases(&self) -> Result<Vec<Lease>>;

    /// Returns every lease expired at `now` to the front of its queue.
    async fn reap(&self, now: DateTime<Utc>) -> Result<Vec<Lease>>;

    /// Drops every entry and lease of a queue: `(waiting task ids in queue
    /// order, leased task ids)`.
    async fn drop_queue(&self, queue_id: &str) -> Result<(Vec<String>, Vec<String>)>;

    /// Pop samples of a queue since `since`.
    async fn pop_samples(&self, queue_id: &str, since: DateTime<Utc>) -> Result<Vec<PopSample>>;

    /// Forgets pop samples and change records older than `before`.
    async fn trim(&self, samples_before: DateTime<Utc>, changes_before_seq: u64) -> Result<()>;

    /// Every task present in the queues.
    async fn presences(&self) -> Result<Vec<Presence>>;

    /// Adds a task in no queue, placed by `enqueued`, unless it changed
    /// after `fence`.
    async fn reconcile_add(
        &self,
        task_id: &str,
        queue_id: &str,
        priority: i32,
        enqueued: DateTime<Utc>,
        fence: u64,
        now: DateTime<Utc>,
    ) -> Result<StepOutcome>;

    /// Moves a waiting entry from `from` to `to` (back of its band there),
    /// unless it changed after `fence`.
    async fn reconcile_move(
        &self,
        task_id: &str,
        from: &str,
        to: &str,
        fence: u64,
        now: DateTime<Utc>,
    ) -> Result<StepOutcome>;

    /// Removes the task (waiting or leased) from `queue_id` unless it
    /// entered it after `fence`.
    async fn reconcile_remove(
        &self,
        task_id: &str,
        queue_id: &str,
        fence: u64,
    ) -> Result<StepOutcome>;
}

/// Milliseconds since the epoch.
pub(crate) fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The instant of `ms` milliseconds since the epoch.
pub(crate) fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// `t` truncated to milliseconds, the precision both backends keep.
pub(crate) fn trunc(t: DateTime<Utc>) -> DateTime<Utc> {
    from_millis(millis(t))
}

/// A new lease id: 32 lowercase hex characters.
pub(crate) fn new_lease_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
