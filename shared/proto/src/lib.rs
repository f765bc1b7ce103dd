//! Generated protobuf messages, gRPC clients and servers for every tasklab
//! package, plus the encoded descriptor set that gRPC reflection serves.
//!
//! The code is generated at build time from `proto/` by `build.rs` with
//! `protox` (no `protoc` binary needed), so it can never drift from the
//! contracts. Each module mirrors one protobuf package, `tasklab.<domain>.v1`.

#![allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]

/// The encoded `FileDescriptorSet` of every tasklab `.proto` file, with source
/// info (comments), for gRPC reflection and documentation checks.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tasklab_descriptor.bin"));

/// `tasklab.common.v1`: paging, ordering, tag filters and error details.
pub mod common {
    pub mod v1 {
        tonic::include_proto!("tasklab.common.v1");
    }
}

/// `tasklab.projects.v1`: nested projects.
pub mod projects {
    pub mod v1 {
        tonic::include_proto!("tasklab.projects.v1");
    }
}

/// `tasklab.tasks.v1`: the Task model and its lifecycle.
pub mod tasks {
    pub mod v1 {
        tonic::include_proto!("tasklab.tasks.v1");
    }
}

/// `tasklab.queues.v1`: execution queues, entries and workers.
pub mod queues {
    pub mod v1 {
        tonic::include_proto!("tasklab.queues.v1");
    }
}

/// `tasklab.artifacts.v1`: artifacts, models and blobs.
pub mod artifacts {
    pub mod v1 {
        tonic::include_proto!("tasklab.artifacts.v1");
    }
}

/// `tasklab.metrics.v1`: metric events and their read queries.
pub mod metrics {
    pub mod v1 {
        tonic::include_proto!("tasklab.metrics.v1");
    }
}
