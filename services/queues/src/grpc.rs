//! gRPC surface of the queues service.

/// Answers every RPC with `UNIMPLEMENTED` (the generated default).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unimplemented;

#[tonic::async_trait]
impl tasklab_proto::queues::v1::queues_service_server::QueuesService for Unimplemented {}

#[tonic::async_trait]
impl tasklab_proto::queues::v1::workers_service_server::WorkersService for Unimplemented {}
