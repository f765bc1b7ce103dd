//! The artifacts service: the artifacts of tasks, the model registry and
//! the blob store, served as `tasklab.artifacts.v1.ArtifactsService`,
//! `ModelsService` and `BlobsService`.
//!
//! It owns three tables (`artifacts`, `models`, `blobs`) and one storage
//! backend for files: a directory (`<data_dir>/blobs`, embedded mode) or an
//! S3-compatible bucket (`blobs.backend = "s3"`), both through
//! `object_store`. It never reads another service's tables: whether a task
//! exists, may be edited, or still references a model is the gateway's
//! knowledge, passed in requests.
//!
//! Layout:
//!
//! * `grpc.rs` — the tonic implementation: messages to domain types and
//!   back, read and update masks; no rule lives there.
//! * `artifacts.rs`, `models.rs` — the domain cores: validation, listing,
//!   clean-up of files on delete.
//! * `blobs.rs` — the blob store: streaming upload with an incremental
//!   SHA-256 and commit-on-success, ranged download, listing, deletion.
//! * `paths.rs` — blob path rules, stored versus external URIs.
//! * `paging.rs` — ordering and page tokens.
//! * `store.rs` — the `Store` trait and its sea-orm implementation;
//!   `entity/` the tables, [`migration`] their schema.
//!
//! Invariants:
//!
//! * A blob path never escapes the storage root: `..`, `.`, absolute paths,
//!   empty segments, backslashes and control characters are refused, never
//!   normalised.
//! * An upload is visible only once committed (an explicit commit message
//!   ends the stream), complete and verified; a failed or cancelled upload,
//!   or a stream that ends without the commit, leaves nothing behind.
//! * A file is deleted with a record (output artifact, model) only when no
//!   other artifact or model refers to it; input artifacts never delete
//!   their files; external URIs are reported, never touched.

pub mod migration;

mod artifacts;
mod blobs;
mod entity;
mod grpc;
mod models;
mod paging;
mod paths;
mod store;

use std::sync::Arc;

use tasklab_error::Error;
use tasklab_proto::artifacts::v1::artifacts_service_server::ArtifactsServiceServer;
use tasklab_proto::artifacts::v1::blobs_service_server::BlobsServiceServer;
use tasklab_proto::artifacts::v1::models_service_server::ModelsServiceServer;

/// Largest gRPC message accepted or sent: an upload chunk of 2 MiB plus
/// framing, with room to spare.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Connects to the service's database at `database_url` (`sqlite://` or
/// `postgres://`), applies its migrations, opens the configured blob
/// storage, and adds `ArtifactsService`, `ModelsService` and `BlobsService`
/// to `server`.
///
/// Fails with `unavailable` when the database or the storage cannot be
/// reached, and `invalid_argument` for an unknown blob backend.
pub async fn mount(
    server: tasklab_server::Server,
    settings: &tasklab_config::Settings,
    database_url: &str,
) -> Result<tasklab_server::Server, Error> {
    let db = tasklab_db::connect_and_migrate::<migration::Migrator>(database_url)
        .await
        .map_err(|err| Error::unavailable("artifacts database", err))?;
    let store: Arc<dyn store::Store> = Arc::new(store::SqlStore::new(db));
    let objects = blobs::open_object_store(settings)?;
    let base = paths::UriBase::new(&settings.files_url());
    let blob_store = blobs::BlobStore::new(objects, store.clone(), base.clone());
    let grpc = grpc::ArtifactsGrpc::new(
        artifacts::ArtifactService::new(store.clone(), blob_store.clone(), base.clone()),
        models::ModelService::new(store, blob_store.clone(), base),
        blob_store,
    );
    Ok(server
        .add_service(ArtifactsServiceServer::new(grpc.clone()))
        .add_service(ModelsServiceServer::new(grpc.clone()))
        .add_service(
            BlobsServiceServer::new(grpc)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        ))
}
