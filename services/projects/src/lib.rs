//! The projects service: the nested folders that organise tasks, served as
//! `tasklab.projects.v1.ProjectsService`.
//!
//! A project has a leaf name and at most one parent; its path joins the
//! names from the root (`main/sub/subsub`). The service creates projects
//! from a path (missing ancestors included), reads them by id or path, lists
//! them under a parent, renames, moves, merges and deletes them. It knows
//! nothing about tasks: a task refers to its project by id, so no change
//! here ever touches one, and the gateway composes the operations that also
//! concern tasks (merge, delete, statistics).
//!
//! Layout:
//!
//! * `grpc.rs` — the tonic implementation: messages to domain types and
//!   back, read and update masks; no rule lives there.
//! * `service.rs` — the domain core: validation, the tree rules, listing
//!   (filters, ordering, page tokens), each change as one transaction with
//!   retries after a lost race.
//! * `store.rs` — the `ProjectStore` trait and its sea-orm implementation;
//!   `entity/` the table, [`migration`] its schema.
//!
//! Invariants:
//!
//! * Sibling names are unique (a unique index on `(parent_id, name)`), so
//!   full paths are unique; paths compare case-sensitively.
//! * Every row's `path` and `ancestors` agree with the chain of `parent_id`s:
//!   a rename, move or merge rewrites the whole subtree in the same
//!   transaction as the project itself, and a refused request writes
//!   nothing.
//! * Ids are 32 lowercase hex characters and never change; a rename or move
//!   changes paths only.
//! * Names are trimmed, non-empty, at most 255 characters, and hold neither
//!   `/` nor control characters.

pub mod migration;

mod entity;
mod grpc;
mod service;
mod store;

use std::sync::Arc;

use tasklab_error::Error;
use tasklab_proto::projects::v1::projects_service_server::ProjectsServiceServer;

/// Connects to the service's database at `database_url` (`sqlite://` or
/// `postgres://`), applies its migrations, and adds `ProjectsService` to
/// `server`.
///
/// Fails with `unavailable` when the database cannot be reached or migrated.
pub async fn mount(
    server: tasklab_server::Server,
    _settings: &tasklab_config::Settings,
    database_url: &str,
) -> Result<tasklab_server::Server, Error> {
    let db = tasklab_db::connect_and_migrate::<migration::Migrator>(database_url)
        .await
        .map_err(|err| Error::unavailable("projects database", err))?;
    let store = store::SqlProjectStore::new(db);
    let service = service::ProjectService::new(Arc::new(store));
    Ok(server.add_service(ProjectsServiceServer::new(grpc::ProjectsGrpc::new(service))))
}
