//! Schema migrations of the queues service.
//!
//! The migration table is `seaql_migrations_queues`, so this service can
//! share a PostgreSQL database with the others without colliding.

use sea_orm_migration::prelude::*;

mod m20250101_000001_create_queues;
mod m20250102_000001_queue_counts;

/// Applies the queues service's migrations in order.
#[derive(Debug, Clone, Copy)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20250101_000001_create_queues::Migration),
            Box::new(m20250102_000001_queue_counts::Migration),
        ]
    }

    fn migration_table_name() -> DynIden {
        "seaql_migrations_queues".into_iden()
    }
}
