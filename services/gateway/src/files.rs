//! The ClearML-compatible files server (served on the files port).
//!
//! `GET /` answers the SDK's ping. Blob upload, download and delete arrive
//! with the artifacts service; until then they answer `501 Not Implemented`
//! with a message, never a fake success.

use axum::http::StatusCode;
use axum::routing::get;

/// The files server router.
pub fn files_router() -> axum::Router {
    axum::Router::new()
        .route("/", get(|| async { "OK" }))
        .fallback(|| async {
            (
                StatusCode::NOT_IMPLEMENTED,
                "file storage is not implemented by this server yet",
            )
        })
}
