//! The `queue_entries` table (SQL backend): one row per task that waits or
//! is leased. A task is in at most one queue because `task_id` is the key.

use sea_orm::entity::prelude::*;

/// A stored entry.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "queue_entries")]
pub(crate) struct Model {
    /// The task.
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) task_id: String,
    /// The queue.
    pub(crate) queue_id: String,
    /// Higher first.
    pub(crate) priority: i32,
    /// Order within the band, ascending.
    pub(crate) rank: i64,
    /// When added.
    pub(crate) added_ms: i64,
    /// Times leased so far.
    pub(crate) delivery: i32,
    /// Change sequence number at which the task entered this queue.
    pub(crate) seq: i64,
    /// Whether leased.
    pub(crate) leased: bool,
    /// Lease id; empty when waiting.
    pub(crate) lease_id: String,
    /// Lease holder; empty when none.
    pub(crate) worker_id: String,
    /// Lease grant time.
    pub(crate) acquired_ms: i64,
    /// Lease expiry.
    pub(crate) expires_ms: i64,
    /// Lease renewal length.
    pub(crate) duration_ms: i64,
    /// Last renewal.
    pub(crate) renewed_ms: i64,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
