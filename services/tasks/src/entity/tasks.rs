//! The `tasks` table.

use sea_orm::entity::prelude::*;

/// One task. Empty strings stand for "none" (project, parent, queue, enqueue
/// status); `revision` counts writes for compare-and-set.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tasks")]
pub(crate) struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) project_id: String,
    pub(crate) task_type: String,
    pub(crate) status: String,
    pub(crate) status_reason: String,
    pub(crate) status_message: String,
    pub(crate) status_changed: Option<i64>,
    pub(crate) comment: String,
    pub(crate) tags: String,
    pub(crate) system_tags: String,
    pub(crate) parent_id: String,
    pub(crate) user_id: String,
    pub(crate) created: i64,
    pub(crate) started: Option<i64>,
    pub(crate) completed: Option<i64>,
    pub(crate) published: Option<i64>,
    pub(crate) last_update: i64,
    pub(crate) last_change: Option<i64>,
    pub(crate) last_changed_by: String,
    pub(crate) last_worker: String,
    pub(crate) last_worker_report: Option<i64>,
    pub(crate) enqueue_status: String,
    pub(crate) queue_id: String,
    pub(crate) output_destination: String,
    pub(crate) output_result: String,
    pub(crate) output_error: String,
    pub(crate) script: String,
    pub(crate) container: String,
    pub(crate) execution: String,
    pub(crate) hyperparams: String,
    pub(crate) configuration: String,
    pub(crate) user_properties: String,
    pub(crate) runtime: String,
    pub(crate) models: String,
    pub(crate) revision: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
