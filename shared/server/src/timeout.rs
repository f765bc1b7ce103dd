//! A request timeout that answers like the protocol it interrupts: gRPC
//! requests get a `DEADLINE_EXCEEDED` status, plain HTTP gets `504`.
//!
//! The deadline covers the time until response headers. Streaming RPCs are
//! exempt (a blob upload answers only after its last chunk; a log tail never
//! ends), and so is a server built without a timeout (the files server,
//! whose multi-gigabyte uploads answer at the end).

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response, StatusCode};
use tower::{Layer, Service};

/// Applies [`Timeout`] to a service.
#[derive(Debug, Clone)]
pub struct TimeoutLayer {
    timeout: Duration,
    exempt: Arc<HashSet<String>>,
}

impl TimeoutLayer {
    /// Requests slower than `timeout` are answered with a timeout error,
    /// except requests to the paths in `exempt` (`/pkg.Service/Method`).
    pub fn new(timeout: Duration, exempt: HashSet<String>) -> Self {
        TimeoutLayer {
            timeout,
            exempt: Arc::new(exempt),
        }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            timeout: self.timeout,
            exempt: self.exempt.clone(),
        }
    }
}

/// See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
    exempt: Arc<HashSet<String>>,
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

impl<S, B> Service<Request<B>> for Timeout<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let grpc = is_grpc(&req);
        let timeout = self.timeout;
        let exempt = self.exempt.contains(req.uri().path());
        let fut = self.inner.call(req);
        if exempt {
            return Box::pin(fut);
        }
        Box::pin(async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(result) => result,
                Err(_) if grpc => {
                    let status = tonic::Status::deadline_exceeded(format!(
                        "request exceeded the server timeout of {}s",
                        timeout.as_secs_f64()
                    ));
                    let (parts, ()) = status.into_http::<()>().into_parts();
                    Ok(Response::from_parts(parts, Body::empty()))
                }
                Err(_) => {
                    let mut response = Response::new(Body::from("request timed out"));
                    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
                    Ok(response)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    fn slow_service()
    -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone
    {
        tower::service_fn(|_req: Request<Body>| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, Infallible>(Response::new(Body::from("late")))
        })
    }

    fn grpc_request(path: &str) -> Request<Body> {
        Request::builder()
            .uri(path)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn slow_grpc_call_gets_deadline_exceeded() {
        let svc = TimeoutLayer::new(Duration::from_secs(5), HashSet::new()).layer(slow_service());
        let response = svc.oneshot(grpc_request("/pkg.S/Unary")).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "4"); // DEADLINE_EXCEEDED
    }

    #[tokio::test(start_paused = true)]
    async fn slow_http_call_gets_504() {
        let svc = TimeoutLayer::new(Duration::from_secs(5), HashSet::new()).layer(slow_service());
        let request = Request::builder().uri("/x").body(Body::empty()).unwrap();
        let response = svc.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn exempt_streaming_paths_run_past_the_deadline() {
        let exempt = HashSet::from(["/pkg.S/Upload".to_owned()]);
        let svc = TimeoutLayer::new(Duration::from_secs(5), exempt).layer(slow_service());
        let response = svc.oneshot(grpc_request("/pkg.S/Upload")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("grpc-status").is_none());
    }
}
