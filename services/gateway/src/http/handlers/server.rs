//! `server.*`: what this server is.

use serde_json::{Value, json};
use tasklab_error::Error;

use crate::auth::token::{API_VERSION, SERVER_VERSION};
use crate::http::Call;

/// `server.info`: version, build and API version.
pub(crate) async fn info(_call: Call) -> Result<Value, Error> {
    Ok(json!({
        "version": SERVER_VERSION,
        "build": env!("CARGO_PKG_VERSION"),
        "commit": "",
        "uid": "tasklab",
        "api_version": API_VERSION,
        "server": "tasklab",
    }))
}
