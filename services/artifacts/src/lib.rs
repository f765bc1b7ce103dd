//! The artifacts service: artifacts, the model registry and blob storage.
//!
//! Not implemented yet: every RPC of its contract (`proto/tasklab/artifacts/v1`)
//! answers gRPC `UNIMPLEMENTED`, never a fake success.

mod grpc;

/// Adds this service's gRPC servers to `server`. `database_url` is the
/// service's own database (unused until the service is implemented).
pub async fn mount(
    server: tasklab_server::Server,
    _settings: &tasklab_config::Settings,
    _database_url: &str,
) -> Result<tasklab_server::Server, tasklab_error::Error> {
    Ok(server
        .add_service(
            tasklab_proto::artifacts::v1::artifacts_service_server::ArtifactsServiceServer::new(
                grpc::Unimplemented,
            ),
        )
        .add_service(
            tasklab_proto::artifacts::v1::models_service_server::ModelsServiceServer::new(
                grpc::Unimplemented,
            ),
        )
        .add_service(
            tasklab_proto::artifacts::v1::blobs_service_server::BlobsServiceServer::new(
                grpc::Unimplemented,
            ),
        ))
}
