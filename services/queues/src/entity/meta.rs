//! The `queue_meta` table (SQL backend): the change counter (`seq`) and the
//! store epoch (`epoch`).

use sea_orm::entity::prelude::*;

/// A key/value row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "queue_meta")]
pub(crate) struct Model {
    /// `seq` or `epoch`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) key: String,
    /// Integer value.
    pub(crate) ival: i64,
    /// Text value.
    #[sea_orm(column_type = "Text")]
    pub(crate) sval: String,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
