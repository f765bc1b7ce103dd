//! The `task_tags` table.

use sea_orm::entity::prelude::*;

/// One tag of one task; `is_system` tells system tags from user tags.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "task_tags")]
pub(crate) struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) task_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) is_system: bool,
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) tag: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
