//! The gateway: what users and agents talk to.
//!
//! It serves the ClearML REST API (for the unmodified `clearml` SDK and
//! `clearml-agent`) and the public gRPC API on the API port, and the
//! ClearML-compatible files server on the files port. It composes the domain
//! services through their generated gRPC clients and owns no domain tables.
//!
//! Layout:
//! * `http/envelope.rs` — ClearML's `meta`/`data` response envelope and the
//!   mapping of [`tasklab_error::Error`] to `result_code`/`result_subcode`;
//! * `http/mod.rs` — the REST router: `/vX.Y/service.action` dispatch;
//! * `files.rs` — the files server;
//! * `auth/` — credentials (hashed) and tokens.

pub mod auth;
mod files;
pub mod http;

pub use files::files_router;
pub use http::api_router;
