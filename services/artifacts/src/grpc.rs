//! gRPC surface of the artifacts service.

/// Answers every RPC with `UNIMPLEMENTED` (the generated default).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unimplemented;

#[tonic::async_trait]
impl tasklab_proto::artifacts::v1::artifacts_service_server::ArtifactsService for Unimplemented {}

#[tonic::async_trait]
impl tasklab_proto::artifacts::v1::models_service_server::ModelsService for Unimplemented {}

#[tonic::async_trait]
impl tasklab_proto::artifacts::v1::blobs_service_server::BlobsService for Unimplemented {}
