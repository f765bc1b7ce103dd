//! Schema migrations of the metrics service.
//!
//! The migration table is `seaql_migrations_metrics`, so this service can
//! share a PostgreSQL database with the others without colliding.

use sea_orm_migration::prelude::*;

mod m20250101_000001_create_metrics;

/// Applies the metrics service's migrations in order.
#[derive(Debug, Clone, Copy)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20250101_000001_create_metrics::Migration)]
    }

    fn migration_table_name() -> DynIden {
        "seaql_migrations_metrics".into_iden()
    }
}
