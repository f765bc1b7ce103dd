//! The `projects` table: one row per project.
//!
//! The tree is stored twice, on purpose: `parent_id` (with `name`, unique
//! together) is the source of truth for "who is whose child", `ancestors`
//! lists every ancestor id so a whole subtree is found with one query, and
//! `path` caches the joined names for listing, ordering and regex filters.
//! Every write that changes the tree rewrites all three in one transaction.

use sea_orm::entity::prelude::*;

/// A stored project.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "projects")]
pub(crate) struct Model {
    /// 32 lowercase hex characters.
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) id: String,
    /// Parent id; the empty string for a top-level project (not NULL, so
    /// that the unique index on `(parent_id, name)` also covers the root on
    /// every engine).
    pub(crate) parent_id: String,
    /// Leaf name.
    pub(crate) name: String,
    /// Full path, names joined by `/`.
    #[sea_orm(column_type = "Text")]
    pub(crate) path: String,
    /// Ancestor ids from the root down, each followed by `/` (`""` at the
    /// top level, `"<root>/<parent>/"` two levels down).
    #[sea_orm(column_type = "Text")]
    pub(crate) ancestors: String,
    /// Plain-text description.
    #[sea_orm(column_type = "Text")]
    pub(crate) description: String,
    /// Markdown overview.
    #[sea_orm(column_type = "Text")]
    pub(crate) overview: String,
    /// User tags as a JSON array of strings, sorted and deduplicated.
    #[sea_orm(column_type = "Text")]
    pub(crate) tags: String,
    /// System tags as a JSON array of strings, sorted and deduplicated.
    #[sea_orm(column_type = "Text")]
    pub(crate) system_tags: String,
    /// Default output destination URI; empty for none.
    #[sea_orm(column_type = "Text")]
    pub(crate) default_output_destination: String,
    /// Id of the user who created the project.
    pub(crate) user_id: String,
    /// Creation time, microsecond precision.
    pub(crate) created: DateTimeUtc,
    /// Last change of this row, microsecond precision.
    pub(crate) last_update: DateTimeUtc,
}

/// The table has no relations: a parent is another row of the same table,
/// and sea-orm relations are not needed to walk it.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
