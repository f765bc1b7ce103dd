//! The ClearML REST API on the API port.
//!
//! Paths are `/v<MAJOR>.<MINOR>/<service>.<action>` or unversioned
//! `/<service>.<action>`, with an optional trailing `/`, on any HTTP method
//! (the SDK sends GET with a JSON body). The version only selects what is
//! echoed in `meta.endpoint`: tasklab implements one behaviour per endpoint.

pub mod envelope;

use axum::extract::Request;
use axum::response::Response;

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

/// The REST router of the API port.
pub fn api_router() -> axum::Router {
    axum::Router::new().fallback(dispatch)
}

async fn dispatch(req: Request) -> Response {
    let endpoint = parse_path(req.uri().path()).unwrap_or_else(|| Endpoint {
        name: req.uri().path().trim_start_matches('/').to_owned(),
        requested_version: MAX_API_VERSION.to_owned(),
    });
    envelope::unknown_endpoint(&endpoint)
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
}
