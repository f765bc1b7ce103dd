//! The `workers` table: the worker registry (both backends).

use sea_orm::entity::prelude::*;

/// A registered worker.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "workers")]
pub(crate) struct Model {
    /// Worker id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) id: String,
    /// Authenticated user.
    pub(crate) user_id: String,
    /// Address.
    pub(crate) ip: String,
    /// JSON array of queue ids.
    #[sea_orm(column_type = "Text")]
    pub(crate) queue_ids: String,
    /// JSON array of tags.
    #[sea_orm(column_type = "Text")]
    pub(crate) tags: String,
    /// First registration.
    pub(crate) registered_ms: i64,
    /// Last register or heartbeat.
    pub(crate) last_seen_ms: i64,
    /// Silence after which the worker expires.
    pub(crate) timeout_ms: i64,
    /// Current task; empty when idle.
    pub(crate) current_task_id: String,
    /// Queue of the current task.
    pub(crate) current_queue_id: String,
    /// Since when the current task is reported; 0 when idle.
    pub(crate) current_task_since_ms: i64,
    /// JSON machine statistics; empty when never reported.
    #[sea_orm(column_type = "Text")]
    pub(crate) machine_stats: String,
    /// When the statistics were reported; 0 when never.
    pub(crate) machine_stats_ms: i64,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
