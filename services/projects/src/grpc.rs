//! gRPC surface of the projects service.

/// Answers every RPC with `UNIMPLEMENTED` (the generated default).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unimplemented;

#[tonic::async_trait]
impl tasklab_proto::projects::v1::projects_service_server::ProjectsService for Unimplemented {}
