//! gRPC surface of the tasks service.

/// Answers every RPC with `UNIMPLEMENTED` (the generated default).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unimplemented;

#[tonic::async_trait]
impl tasklab_proto::tasks::v1::tasks_service_server::TasksService for Unimplemented {}
