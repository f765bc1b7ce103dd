//! The projects service: nested projects.
//!
//! Not implemented yet: every RPC of its contract (`proto/tasklab/projects/v1`)
//! answers gRPC `UNIMPLEMENTED`, never a fake success.

mod grpc;

/// Adds this service's gRPC servers to `server`. `database_url` is the
/// service's own database (unused until the service is implemented).
pub async fn mount(
    server: tasklab_server::Server,
    _settings: &tasklab_config::Settings,
    _database_url: &str,
) -> Result<tasklab_server::Server, tasklab_error::Error> {
    Ok(server.add_service(
        tasklab_proto::projects::v1::projects_service_server::ProjectsServiceServer::new(
            grpc::Unimplemented,
        ),
    ))
}
