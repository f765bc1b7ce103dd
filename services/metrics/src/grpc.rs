//! gRPC surface of the metrics service.

/// Answers every RPC with `UNIMPLEMENTED` (the generated default).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unimplemented;

#[tonic::async_trait]
impl tasklab_proto::metrics::v1::metrics_service_server::MetricsService for Unimplemented {}
