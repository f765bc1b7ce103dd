//! A request timeout that answers like the protocol it interrupts: gRPC
//! requests get a `DEADLINE_EXCEEDED` status, plain HTTP gets `504`.
//!
//! The deadline covers the time until response headers; a streaming body
//! (log tail, blob download) may run longer once it has started.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response, StatusCode};
use tower::{Layer, Service};

/// Applies [`Timeout`] to a service.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// Requests slower than `timeout` are answered with a timeout error.
    pub fn new(timeout: Duration) -> Self {
        TimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
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
        let fut = self.inner.call(req);
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
