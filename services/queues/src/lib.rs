//! The queues service: execution queues, leases and workers.
//!
//! Not implemented yet: every RPC of its contract (`proto/tasklab/queues/v1`)
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
            tasklab_proto::queues::v1::queues_service_server::QueuesServiceServer::new(
                grpc::Unimplemented,
            ),
        )
        .add_service(
            tasklab_proto::queues::v1::workers_service_server::WorkersServiceServer::new(
                grpc::Unimplemented,
            ),
        ))
}
