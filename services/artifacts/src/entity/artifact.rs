//! The `artifacts` table: one row per (task, mode, key).

use sea_orm::entity::prelude::*;

/// A stored artifact.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "artifacts")]
pub(crate) struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) task_id: String,
    /// `input` or `output`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) mode: String,
    #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
    pub(crate) key: String,
    pub(crate) kind: String,
    #[sea_orm(column_type = "Text")]
    pub(crate) uri: String,
    /// Blob path of `uri` when it is stored in tasklab; `""` otherwise.
    #[sea_orm(column_type = "Text")]
    pub(crate) blob_path: String,
    pub(crate) hash: String,
    pub(crate) content_size: i64,
    pub(crate) timestamp: DateTimeUtc,
    #[sea_orm(column_type = "Text")]
    pub(crate) preview: String,
    pub(crate) content_type: String,
    pub(crate) data_hash: String,
    /// JSON object of strings.
    #[sea_orm(column_type = "Text")]
    pub(crate) metadata: String,
    /// JSON array of `[key, value]` pairs.
    #[sea_orm(column_type = "Text")]
    pub(crate) display_data: String,
    pub(crate) updated: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
