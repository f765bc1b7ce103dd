//! The `queue_pops` table (SQL backend): one sample per pop, for metrics.

use sea_orm::entity::prelude::*;

/// A pop sample.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "queue_pops")]
pub(crate) struct Model {
    /// Row id.
    #[sea_orm(primary_key)]
    pub(crate) id: i64,
    /// The queue.
    pub(crate) queue_id: String,
    /// When popped.
    pub(crate) popped_ms: i64,
    /// Wait from `added` to the pop.
    pub(crate) wait_ms: i64,
    /// Waiting entries left.
    pub(crate) pending: i32,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
