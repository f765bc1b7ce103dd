//! The `queues` table: queue metadata (both backends).

use sea_orm::entity::prelude::*;

/// A stored queue.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "queues")]
pub(crate) struct Model {
    /// 32 lowercase hex characters.
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) id: String,
    /// Unique name.
    pub(crate) name: String,
    /// JSON array of strings.
    #[sea_orm(column_type = "Text")]
    pub(crate) tags: String,
    /// JSON array of strings.
    #[sea_orm(column_type = "Text")]
    pub(crate) system_tags: String,
    /// JSON object of strings.
    #[sea_orm(column_type = "Text")]
    pub(crate) metadata: String,
    /// Creation time.
    pub(crate) created_ms: i64,
    /// Last change of the queue or its entries.
    pub(crate) last_update_ms: i64,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
