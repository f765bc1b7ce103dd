//! The tasks service: the Task model and its lifecycle, served as
//! `tasklab.tasks.v1.TasksService` (`proto/tasklab/tasks/v1/tasks.proto`).
//!
//! Layout, from the wire inwards:
//!
//! * `grpc` converts protobuf messages to domain types and back, applies
//!   read masks, and turns errors into statuses. Nothing else sees tonic.
//! * [`service`] is the domain core: validation, the edit rules (draft only
//!   unless forced, published tasks locked), every lifecycle operation,
//!   clone, paging tokens.
//! * [`state`] is ClearML's state machine as pure functions, with the
//!   property test that drives it.
//! * [`store`] is the [`store::TaskStore`] trait and its sea-orm
//!   implementation on SQLite and PostgreSQL, with the entities and
//!   [`migration`]s of the service's own tables.
//! * [`model`] holds the domain types.
//!
//! Invariants:
//! * every write is a compare-and-set on the status and revision the writer
//!   read; a status change that loses a race is `task_status_changed` and
//!   changes nothing;
//! * a request that fails changes nothing; a batch is all or nothing;
//! * the service stores ids of projects, parents, queues and models as given
//!   and never calls another service (the gateway composes them).

mod codec;
mod entity;
mod grpc;
pub mod migration;
pub mod model;
pub mod service;
pub mod state;
pub mod store;

use std::sync::Arc;

pub use migration::Migrator;
pub use service::TaskService;
pub use store::{SqlTaskStore, TaskStore};

/// Connects to `database_url`, applies the migrations, and builds the
/// domain core on the sea-orm store (what [`mount`] serves; benchmarks and
/// tests use it directly).
pub async fn connect(database_url: &str) -> Result<TaskService, tasklab_error::Error> {
    let db = tasklab_db::connect_and_migrate::<Migrator>(database_url)
        .await
        .map_err(|e| tasklab_error::Error::unavailable("task database", e))?;
    Ok(TaskService::new(Arc::new(SqlTaskStore::new(db))))
}

/// Adds this service's gRPC server to `server`, on its own database at
/// `database_url` (migrated at start).
pub async fn mount(
    server: tasklab_server::Server,
    _settings: &tasklab_config::Settings,
    database_url: &str,
) -> Result<tasklab_server::Server, tasklab_error::Error> {
    let service = connect(database_url).await?;
    Ok(server.add_service(
        tasklab_proto::tasks::v1::tasks_service_server::TasksServiceServer::new(
            grpc::TasksGrpc::new(service),
        ),
    ))
}
