//! Schema migrations of the tasks service, recorded in its own table
//! `seaql_migrations_tasks` so services can share one database.

use sea_orm_migration::prelude::*;

mod m0001_create_tasks;

/// Applies the tasks service's migrations.
#[derive(Debug, Clone, Copy, Default)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m0001_create_tasks::Migration)]
    }

    fn migration_table_name() -> DynIden {
        "seaql_migrations_tasks".into_iden()
    }
}
