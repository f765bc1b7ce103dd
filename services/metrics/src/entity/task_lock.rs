//! The `task_locks` table: one row per locked task or model.

use sea_orm::entity::prelude::*;

/// A locked id.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "task_locks")]
pub(crate) struct Model {
    /// The task or model id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) task_id: String,
    /// 1 when `task_id` is a model id, else 0.
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) model: i16,
    /// When the lock was set, milliseconds since the epoch.
    pub(crate) since: i64,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
