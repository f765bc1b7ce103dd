//! The `queue_changes` table (SQL backend): the last change sequence number
//! of every task touched recently, read by reconciliations.

use sea_orm::entity::prelude::*;

/// A change record.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "queue_changes")]
pub(crate) struct Model {
    /// The task.
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) task_id: String,
    /// Its last change.
    pub(crate) seq: i64,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
