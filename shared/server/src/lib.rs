//! Server bootstrap shared by every tasklab process.
//!
//! A [`Server`] collects gRPC services (and, for the gateway, an HTTP router
//! for the ClearML REST API on the same port), then [`Server::serve`] runs
//! them on a listener until a shutdown future resolves:
//!
//! * gRPC health (`grpc.health.v1.Health`) reports every added service
//!   `SERVING` while the server runs and `NOT_SERVING` once shutdown starts;
//! * gRPC reflection (v1 and v1alpha) describes every `tasklab.*.v1` package;
//! * each request gets a tracing span whose parent is the caller's W3C trace
//!   context, a timeout, and a place under a concurrency limit;
//! * on shutdown the listener closes, in-flight requests drain, and whatever
//!   is still running after the grace period is dropped.
//!
//! gRPC and plain HTTP share one port: requests whose content type is
//! `application/grpc*` go to gRPC services (an unknown service answers
//! `UNIMPLEMENTED`), everything else to the HTTP router.

mod shutdown;
mod timeout;

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use tasklab_config::GrpcSettings;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::{Service, ServiceExt as _};

pub use shutdown::signal as shutdown_signal;
pub use timeout::{Timeout, TimeoutLayer};

/// A set of services to serve on one listener.
#[derive(Debug)]
pub struct Server {
    settings: GrpcSettings,
    grpc: axum::Router,
    http: Option<axum::Router>,
    names: Vec<&'static str>,
    grpc_enabled: bool,
}

impl Server {
    /// An empty server with the given limits.
    pub fn new(settings: &GrpcSettings) -> Self {
        Server {
            settings: settings.clone(),
            grpc: axum::Router::new(),
            http: None,
            names: Vec::new(),
            grpc_enabled: true,
        }
    }

    /// A server for plain HTTP only (the files server): no gRPC services,
    /// health or reflection; every request goes to `router`.
    pub fn http_only(settings: &GrpcSettings, router: axum::Router) -> Self {
        Server {
            grpc_enabled: false,
            ..Server::new(settings).with_http(router)
        }
    }

    /// Adds a generated gRPC server (`FooServiceServer::new(..)`).
    #[must_use]
    pub fn add_service<S>(mut self, svc: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<tonic::body::Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.grpc = self.grpc.route_service(
            &format!("/{}/{{*rest}}", S::NAME),
            svc.map_response(|res| res.map(Body::new)),
        );
        self.names.push(S::NAME);
        self
    }

    /// Serves `router` for every request that is not gRPC.
    #[must_use]
    pub fn with_http(mut self, router: axum::Router) -> Self {
        self.http = Some(router);
        self
    }

    /// Names of the gRPC services added so far.
    pub fn service_names(&self) -> &[&'static str] {
        &self.names
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests for at
    /// most the configured grace period.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (reporter, health) = tonic_health::server::health_reporter();
        set_all(&reporter, &self.names, ServingStatus::Serving).await;

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tasklab_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(std::io::Error::other)?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tasklab_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(std::io::Error::other)?;
        let names = self.names.clone();
        let grpc_enabled = self.grpc_enabled;
        let server = self
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        let grpc = server.grpc.fallback(|| async {
            let (parts, ()) = tonic::Status::unimplemented("unknown gRPC service")
                .into_http::<()>()
                .into_parts();
            Response::from_parts(parts, Body::empty())
        });
        let http = server.http.unwrap_or_else(|| {
            axum::Router::new().fallback(|| async { (http::StatusCode::NOT_FOUND, "not found") })
        });
        let router =
            axum::Router::new().fallback_service(tower::service_fn(move |req: Request<Body>| {
                let is_grpc = req
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|ct| ct.starts_with("application/grpc"));
                let target = if is_grpc && grpc_enabled {
                    grpc.clone()
                } else {
                    http.clone()
                };
                target.oneshot(req)
            }));

        let settings = server.settings;
        let app = tower::ServiceBuilder::new()
            .map_response(|res: Response<_>| res.map(Body::new))
            .layer(
                tower_http::trace::TraceLayer::new_for_http()
                    .make_span_with(|req: &Request<Body>| {
                        let span = tracing::info_span!(
                            "request",
                            method = %req.method(),
                            path = %req.uri().path(),
                        );
                        tasklab_telemetry::extract_context(req.headers(), &span);
                        span
                    })
                    .on_request(())
                    .on_response(
                        tower_http::trace::DefaultOnResponse::new().level(tracing::Level::DEBUG),
                    )
                    .on_failure(
                        tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
                    ),
            )
            .layer(tower::limit::ConcurrencyLimitLayer::new(
                settings.concurrency_limit.max(1),
            ))
            .layer(tower::util::option_layer(grpc_enabled.then(|| {
                TimeoutLayer::new(
                    Duration::from_secs(settings.request_timeout_secs.max(1)),
                    streaming_method_paths(),
                )
            })))
            .service(router);

        let local: Option<SocketAddr> = listener.local_addr().ok();
        tracing::info!(addr = ?local, services = ?names, "serving");

        let (begin_drain, drain) = tokio::sync::oneshot::channel::<()>();
        let serve = axum::serve(
            // Small responses must not wait ~40 ms for a delayed ACK.
            axum::serve::ListenerExt::tap_io(listener, |stream| {
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(error = %err, "cannot set TCP_NODELAY");
                }
            }),
            axum::ServiceExt::into_make_service(app),
        )
        .with_graceful_shutdown(async move {
            let _ = drain.await;
        })
        .into_future();
        let mut serve = std::pin::pin!(serve);
        tokio::select! {
            result = &mut serve => return result,
            () = shutdown => {}
        }
        set_all(&reporter, &names, ServingStatus::NotServing).await;
        let _ = begin_drain.send(());
        let grace = Duration::from_secs(settings.shutdown_grace_secs);
        match tokio::time::timeout(grace, serve).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    grace_secs = grace.as_secs(),
                    "connections still open after grace period; closing"
                );
                Ok(())
            }
        }
    }
}

/// `/pkg.Service/Method` of every tasklab RPC that streams requests or
/// responses: they answer only at the end of a transfer (blob upload) or
/// never (log tail), so the request timeout does not apply to them.
fn streaming_method_paths() -> HashSet<String> {
    use prost::Message as _;
    let Ok(set) = prost_types::FileDescriptorSet::decode(tasklab_proto::FILE_DESCRIPTOR_SET) else {
        return HashSet::new();
    };
    let mut paths = HashSet::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                if method.client_streaming() || method.server_streaming() {
                    paths.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    paths
}

async fn set_all(reporter: &HealthReporter, names: &[&'static str], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in names {
        reporter.set_service_status(*name, status).await;
    }
}
