//! ClearML's response envelope.
//!
//! Every reply, success or error, is `{"meta": {...}, "data": {...}}` with an
//! HTTP status equal to `meta.result_code`. The SDK requires `meta.id`,
//! `meta.trx`, `meta.endpoint`, `meta.result_code` and `meta.result_msg` to be
//! present even on errors.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tasklab_error::{Error, ErrorCode};

/// The endpoint a call addressed, as echoed in `meta.endpoint`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `service.action`.
    pub name: String,
    /// The version in the path (`2.23`), or the server's maximum when absent.
    pub requested_version: String,
}

/// The API version tasklab advertises (and answers for unversioned paths).
pub const MAX_API_VERSION: &str = "2.31";

fn meta(endpoint: &Endpoint, code: u16, subcode: u16, msg: &str, error_data: Value) -> Value {
    let id = uuid::Uuid::new_v4().simple().to_string();
    json!({
        "id": id,
        "trx": id,
        "endpoint": {
            "name": endpoint.name,
            "requested_version": endpoint.requested_version,
            "actual_version": endpoint.requested_version,
        },
        "result_code": code,
        "result_subcode": subcode,
        "result_msg": msg,
        "error_stack": null,
        "error_data": error_data,
    })
}

/// A successful reply carrying `data`.
pub fn ok(endpoint: &Endpoint, data: Value) -> Response {
    let body = json!({ "meta": meta(endpoint, 200, 0, "OK", json!({})), "data": data });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// An error reply: HTTP status and `result_code` from the error's code.
pub fn error(endpoint: &Endpoint, err: &Error) -> Response {
    let (code, subcode) = err.code().clearml_codes();
    let data: serde_json::Map<String, Value> = err
        .fields()
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let body = json!({
        "meta": meta(endpoint, code, subcode, err.message(), Value::Object(data)),
        "data": {},
    });
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

/// The reply for an endpoint this server does not provide: 404, as ClearML
/// answers (clients such as `clearml-agent` probe optional endpoints and
/// treat this as "unsupported").
pub fn unknown_endpoint(endpoint: &Endpoint) -> Response {
    let err = Error::new(
        ErrorCode::Unimplemented,
        format!(
            "Unable to find endpoint for name {} and version {}",
            endpoint.name, endpoint.requested_version
        ),
    );
    error(endpoint, &err)
}

/// The reply to a request whose body carries a `Content-Encoding`: 415, as
/// ClearML answers, with the same envelope as every other error.
pub fn unsupported_media_type(endpoint: &Endpoint, message: &str) -> Response {
    error(
        endpoint,
        &Error::new(ErrorCode::UnsupportedMediaType, message.to_owned()),
    )
}
