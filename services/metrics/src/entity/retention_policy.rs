//! The `retention_policies` table: one row per project with a policy (the
//! default policy under the empty project id).

use sea_orm::entity::prelude::*;

/// A stored policy.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "retention_policies")]
pub(crate) struct Model {
    /// The project id; empty for the default policy.
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) project_id: String,
    /// The rules as a JSON array (see `service::RetentionRule`).
    #[sea_orm(column_type = "Text")]
    pub(crate) rules: String,
    /// 1 when locked tasks are included.
    pub(crate) include_locked: i16,
    /// When the policy was set, milliseconds since the epoch.
    pub(crate) updated: i64,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
