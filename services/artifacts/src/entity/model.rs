//! The `models` table: the model registry.

use sea_orm::entity::prelude::*;

/// A stored model.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "models")]
pub(crate) struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) project_id: String,
    pub(crate) task_id: String,
    #[sea_orm(column_type = "Text")]
    pub(crate) comment: String,
    /// JSON array of strings, sorted and deduplicated.
    #[sea_orm(column_type = "Text")]
    pub(crate) tags: String,
    /// JSON array of strings, sorted and deduplicated.
    #[sea_orm(column_type = "Text")]
    pub(crate) system_tags: String,
    pub(crate) framework: String,
    #[sea_orm(column_type = "Text")]
    pub(crate) design: String,
    /// JSON object of label name to integer.
    #[sea_orm(column_type = "Text")]
    pub(crate) labels: String,
    #[sea_orm(column_type = "Text")]
    pub(crate) uri: String,
    /// Blob path of `uri` when it is stored in tasklab; `""` otherwise.
    #[sea_orm(column_type = "Text")]
    pub(crate) blob_path: String,
    pub(crate) ready: bool,
    pub(crate) published: Option<DateTimeUtc>,
    /// JSON object of key to `{type, value}`.
    #[sea_orm(column_type = "Text")]
    pub(crate) metadata: String,
    pub(crate) iteration: Option<i64>,
    pub(crate) user_id: String,
    pub(crate) parent_id: String,
    pub(crate) created: DateTimeUtc,
    pub(crate) last_update: DateTimeUtc,
    /// Incremented by every write; updates are conditional on it.
    pub(crate) version: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
