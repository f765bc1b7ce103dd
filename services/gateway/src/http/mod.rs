//! The ClearML REST API on the API port.
//!
//! Paths are `/v<MAJOR>.<MINOR>/<service>.<action>` or unversioned
//! `/<service>.<action>`, with an optional trailing `/`, on any HTTP method
//! (the SDK sends GET with a JSON body). The version only selects what is
//! echoed in `meta.endpoint`: tasklab implements one behaviour per endpoint.
//!
//! A call goes through, in order:
//! 1. the dispatch table (`service.action` → handler); an unknown endpoint is
//!    a 404 envelope, before any authentication, as ClearML answers;
//! 2. the body checks: `Content-Encoding` on a request is 415, a body over
//!    the limit ([`crate::GatewayConfig::max_body_bytes`], 32 MiB by default)
//!    is 413;
//! 3. authentication: `Bearer` token or `Basic` key pair (401 otherwise);
//! 4. decoding: JSON object, query string arguments merged in, `null`s
//!    dropped, unknown fields ignored; malformed JSON or a wrong type is a
//!    400 envelope. The JSON lines of `events.add_batch` are the exception:
//!    the raw body goes to the handler, which decodes it straight into typed
//!    events borrowing from it (module `batch`), with the same leniency;
//! 5. the handler, whose result or error becomes the envelope; the HTTP
//!    status always equals `meta.result_code`.
//!
//! Responses are gzip-compressed when the client accepts it.

pub(crate) mod args;
pub(crate) mod batch;
pub(crate) mod convert;
pub mod envelope;
mod handlers;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tasklab_error::{Error, ErrorCode};

use crate::Inner;
use crate::auth::{Identity, Presented};
use envelope::{Endpoint, MAX_API_VERSION};

/// Parses `/v2.23/tasks.get_all` or `/tasks.get_all` into an endpoint.
pub fn parse_path(path: &str) -> Option<Endpoint> {
    let path = path.strip_prefix('/')?;
    let path = path.strip_suffix('/').unwrap_or(path);
    let (version, name) = match path.split_once('/') {
        Some((v, name)) => {
            let v = v.strip_prefix('v')?;
            let (major, minor) = v.split_once('.')?;
            if major.is_empty()
                || minor.is_empty()
                || !major.bytes().all(|b| b.is_ascii_digit())
                || !minor.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            (v.to_owned(), name)
        }
        None => (MAX_API_VERSION.to_owned(), path),
    };
    let (service, action) = name.split_once('.')?;
    let valid =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid(service) || !valid(action) {
        return None;
    }
    Some(Endpoint {
        name: name.to_owned(),
        requested_version: version,
    })
}

/// One authenticated, decoded call.
pub(crate) struct Call {
    pub(crate) gw: Arc<Inner>,
    pub(crate) identity: Identity,
    pub(crate) endpoint: Endpoint,
    /// The body object, with query arguments merged in and `null`s removed
    /// (for `events.add_batch`, the query arguments only).
    pub(crate) body: Value,
    /// The raw body of `events.add_batch`, JSON lines its handler decodes
    /// ([`batch::for_each_event`]); empty for every other endpoint.
    pub(crate) raw: Bytes,
    /// The worker named by `X-ClearML-Worker` (or `X-Trains-Worker`).
    pub(crate) worker: String,
    /// The client address from `X-Forwarded-For`, when a proxy sets it.
    pub(crate) client_ip: String,
}

impl Call {
    /// The caller's user id.
    pub(crate) fn user(&self) -> &str {
        &self.identity.user
    }

    /// Decodes the body into the endpoint's request type.
    pub(crate) fn args<T: DeserializeOwned>(&self) -> Result<T, Error> {
        args::decode(&self.endpoint.name, &self.body)
    }
}

type Handler = fn(Call) -> BoxFuture<'static, Result<Value, Error>>;

macro_rules! table {
    ($($name:literal => $handler:path),* $(,)?) => {{
        let mut map: HashMap<&'static str, Handler> = HashMap::new();
        $( map.insert($name, |call| Box::pin($handler(call))); )*
        map
    }};
}

static TABLE: LazyLock<HashMap<&'static str, Handler>> = LazyLock::new(|| {
    use handlers::{auth, events, models, projects, queues, server, tasks, users, workers};
    table! {
        "auth.login" => auth::login,
        "auth.validate_token" => auth::validate_token,
        "server.info" => server::info,
        "users.get_current_user" => users::get_current_user,
        "projects.get_all" => projects::get_all,
        "projects.get_all_ex" => projects::get_all_ex,
        "projects.create" => projects::create,
        "projects.get_by_id" => projects::get_by_id,
        "projects.update" => projects::update,
        "projects.delete" => projects::delete,
        "projects.merge" => projects::merge,
        "projects.move" => projects::move_project,
        "tasks.create" => tasks::create,
        "tasks.get_by_id" => tasks::get_by_id,
        "tasks.get_all" => tasks::get_all,
        "tasks.get_all_ex" => tasks::get_all,
        "tasks.edit" => tasks::edit,
        "tasks.update" => tasks::update,
        "tasks.started" => tasks::started,
        "tasks.completed" => tasks::completed,
        "tasks.stopped" => tasks::stopped,
        "tasks.failed" => tasks::failed,
        "tasks.close" => tasks::close,
        "tasks.publish" => tasks::publish,
        "tasks.stop" => tasks::stop,
        "tasks.reset" => tasks::reset,
        "tasks.delete" => tasks::delete,
        "tasks.archive" => tasks::archive,
        "tasks.clone" => tasks::clone,
        "tasks.enqueue" => tasks::enqueue,
        "tasks.dequeue" => tasks::dequeue,
        "tasks.ping" => tasks::ping,
        "tasks.add_or_update_artifacts" => tasks::add_or_update_artifacts,
        "tasks.delete_artifacts" => tasks::delete_artifacts,
        "tasks.add_or_update_model" => tasks::add_or_update_model,
        "tasks.set_requirements" => tasks::set_requirements,
        "tasks.edit_hyper_params" => tasks::edit_hyper_params,
        "tasks.get_hyper_params" => tasks::get_hyper_params,
        "tasks.delete_hyper_params" => tasks::delete_hyper_params,
        "tasks.edit_configuration" => tasks::edit_configuration,
        "tasks.get_configurations" => tasks::get_configurations,
        "tasks.get_configuration_names" => tasks::get_configuration_names,
        "tasks.delete_configuration" => tasks::delete_configuration,
        "models.create" => models::create,
        "models.edit" => models::edit,
        "models.update" => models::edit,
        "models.get_by_id" => models::get_by_id,
        "models.get_all" => models::get_all,
        "models.get_all_ex" => models::get_all,
        "models.update_for_task" => models::update_for_task,
        "models.set_ready" => models::set_ready,
        "models.publish_many" => models::publish_many,
        "models.add_or_update_metadata" => models::add_or_update_metadata,
        "models.delete" => models::delete,
        "events.add_batch" => events::add_batch,
        "events.get_task_log" => events::get_task_log,
        "events.scalar_metrics_iter_histogram" => events::scalar_metrics_iter_histogram,
        "events.get_task_events" => events::get_task_events,
        "events.get_scalar_metric_data" => events::get_scalar_metric_data,
        "events.get_task_single_value_metrics" => events::get_task_single_value_metrics,
        "events.get_task_plots" => events::get_task_plots,
        "events.debug_images" => events::debug_images,
        "events.get_task_latest_scalar_values" => events::get_task_latest_scalar_values,
        "events.delete_for_task" => events::delete_for_task,
        "queues.get_all" => queues::get_all,
        "queues.get_all_ex" => queues::get_all,
        "queues.get_by_id" => queues::get_by_id,
        "queues.get_default" => queues::get_default,
        "queues.create" => queues::create,
        "queues.delete" => queues::delete,
        "queues.get_next_task" => queues::get_next_task,
        "queues.add_task" => queues::add_task,
        "queues.remove_task" => queues::remove_task,
        "workers.register" => workers::register,
        "workers.unregister" => workers::unregister,
        "workers.status_report" => workers::status_report,
        "workers.get_all" => workers::get_all,
    }
});

/// Names of every implemented endpoint, sorted.
pub fn endpoints() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = TABLE.keys().copied().collect();
    names.sort_unstable();
    names
}

/// The REST router of the API port.
pub(crate) fn router(gw: Arc<Inner>) -> axum::Router {
    axum::Router::new()
        .fallback(dispatch)
        .with_state(gw)
        .layer(tower_http::compression::CompressionLayer::new().gzip(true))
}

fn header<'a>(req: &'a Request, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| req.headers().get(*n).and_then(|v| v.to_str().ok()))
}

async fn dispatch(State(gw): State<Arc<Inner>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let Some((endpoint, handler)) = parse_path(&path).and_then(|e| {
        let handler = *TABLE.get(e.name.as_str())?;
        Some((e, handler))
    }) else {
        let endpoint = parse_path(&path).unwrap_or_else(|| Endpoint {
            name: path.trim_start_matches('/').to_owned(),
            requested_version: MAX_API_VERSION.to_owned(),
        });
        tracing::debug!(endpoint = %endpoint.name, "unknown endpoint");
        return envelope::unknown_endpoint(&endpoint);
    };
    match prepare(gw, &endpoint, req).await {
        Ok(call) => {
            let name = endpoint.name.clone();
            match handler(call).await {
                Ok(data) => envelope::ok(&endpoint, data),
                Err(err) => {
                    err.log();
                    tracing::debug!(endpoint = %name, code = %err.code(), "call failed");
                    envelope::error(&endpoint, &err)
                }
            }
        }
        Err(err) => {
            err.log();
            envelope::error(&endpoint, &err)
        }
    }
}

fn too_large(limit: usize) -> Error {
    Error::new(
        ErrorCode::TooLarge,
        format!("request body is larger than the limit of {limit} bytes"),
    )
    .with_field("limit_bytes", limit.to_string())
}

async fn prepare(gw: Arc<Inner>, endpoint: &Endpoint, req: Request) -> Result<Call, Error> {
    if let Some(encoding) = header(&req, &["content-encoding"])
        && !encoding.trim().eq_ignore_ascii_case("identity")
        && !encoding.trim().is_empty()
    {
        return Err(Error::new(
            ErrorCode::UnsupportedMediaType,
            format!("request bodies must not be encoded (Content-Encoding: {encoding})"),
        ));
    }
    let limit = gw.config.max_body_bytes;
    if let Some(length) = header(&req, &["content-length"]).and_then(|v| v.parse::<u64>().ok())
        && length > limit as u64
    {
        return Err(too_large(limit));
    }

    let presented = Presented::parse(header(&req, &["authorization"]))?;
    let identity = gw.auth.authenticate(presented.as_ref()).await?;

    let worker = header(&req, &["x-clearml-worker", "x-trains-worker"])
        .unwrap_or_default()
        .to_owned();
    let client_ip = header(&req, &["x-forwarded-for"])
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let bytes = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| too_large(limit))?;

    let (mut body, raw) = if endpoint.name == "events.add_batch" {
        (Value::Object(Map::new()), bytes)
    } else {
        (parse_object(&bytes)?, Bytes::new())
    };
    if let Value::Object(map) = &mut body {
        for (k, v) in args::query_args(&query) {
            map.insert(k, v);
        }
    }
    args::strip_nulls(&mut body);
    Ok(Call {
        gw,
        identity,
        endpoint: endpoint.clone(),
        body,
        raw,
        worker,
        client_ip,
    })
}

fn malformed(message: String) -> Error {
    Error::new(ErrorCode::MalformedRequest, message)
}

fn parse_object(bytes: &[u8]) -> Result<Value, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(other) => Err(malformed(format!(
            "request body must be a JSON object, not {}",
            kind(&other)
        ))),
        Err(e) => Err(malformed(format!("request body is not valid JSON: {e}"))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versioned_and_unversioned_paths() {
        let e = parse_path("/v2.23/tasks.get_all").unwrap();
        assert_eq!(
            (e.name.as_str(), e.requested_version.as_str()),
            ("tasks.get_all", "2.23")
        );
        let e = parse_path("/workers.register/").unwrap();
        assert_eq!(
            (e.name.as_str(), e.requested_version.as_str()),
            ("workers.register", "2.31")
        );
        assert!(parse_path("/v2.x/tasks.get_all").is_none());
        assert!(parse_path("/tasks").is_none());
        assert!(parse_path("/v2.5/../etc.passwd").is_none());
    }

    #[test]
    fn json_lines_and_objects() {
        let mut lines = 0;
        batch::for_each_event(b"{\"a\":1}\n\n{\"b\":null}\n", |_| lines += 1).unwrap();
        assert_eq!(lines, 2);
        assert!(batch::for_each_event(b"{\"a\":1}\n[1]", |_| {}).is_err());
        assert!(batch::for_each_event(b"{\"a\":", |_| {}).is_err());
        assert_eq!(parse_object(b"  ").unwrap(), serde_json::json!({}));
        assert!(parse_object(b"[1]").is_err());
        assert!(parse_object(b"{").is_err());
    }

    #[test]
    fn every_must_have_endpoint_is_in_the_table() {
        for name in [
            "auth.login",
            "projects.get_all",
            "projects.create",
            "projects.get_by_id",
            "tasks.create",
            "tasks.get_by_id",
            "tasks.get_all",
            "tasks.edit",
            "tasks.started",
            "tasks.completed",
            "tasks.stopped",
            "tasks.failed",
            "tasks.reset",
            "tasks.clone",
            "tasks.enqueue",
            "tasks.dequeue",
            "tasks.ping",
            "tasks.add_or_update_artifacts",
            "tasks.add_or_update_model",
            "models.create",
            "models.edit",
            "models.get_by_id",
            "models.get_all",
            "models.update_for_task",
            "events.add_batch",
            "queues.get_all",
            "queues.get_by_id",
            "queues.get_next_task",
            "queues.get_default",
            "queues.create",
            "workers.register",
            "workers.status_report",
            "workers.unregister",
        ] {
            assert!(TABLE.contains_key(name), "{name}");
        }
        assert!(!TABLE.contains_key("workers.get_runtime_properties"));
    }
}
