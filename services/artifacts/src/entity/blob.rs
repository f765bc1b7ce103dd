//! The `blobs` table: what the object store cannot tell about a blob.

use sea_orm::entity::prelude::*;

/// The recorded metadata of a committed blob.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "blobs")]
pub(crate) struct Model {
    #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
    pub(crate) path: String,
    pub(crate) size: i64,
    pub(crate) sha256: String,
    pub(crate) content_type: String,
    /// The object store's entity tag of the version this row describes; a
    /// blob whose current tag differs was replaced behind our back.
    #[sea_orm(column_type = "Text")]
    pub(crate) e_tag: String,
    pub(crate) created: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
