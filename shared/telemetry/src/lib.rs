//! Telemetry for every tasklab process: a `tracing` subscriber printing pretty
//! or JSON logs, OTLP trace export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set,
//! and W3C trace context (`traceparent`) carried over every gRPC hop.
//!
//! * [`init`] installs the subscriber once per process and returns a
//!   [`TelemetryGuard`] that flushes pending spans when dropped.
//! * [`extract_context`] turns incoming request headers into the parent of the
//!   request's span (the server bootstrap calls it for each request).
//! * [`TraceContextInterceptor`] injects the current span's context into
//!   outgoing gRPC requests, so a call from the gateway to a service continues
//!   the same trace.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tasklab_config::{LogFormat, LogSettings};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Environment variable that turns OTLP export on.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Flushes and shuts down the trace exporter when dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "trace exporter shutdown failed");
        }
    }
}

/// Errors while installing telemetry.
#[derive(Debug)]
pub struct TelemetryError(String);

impl std::fmt::Display for TelemetryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TelemetryError {}

/// Installs the global subscriber: logs per `settings`, plus OTLP export of
/// spans when `otlp_endpoint` is `Some` (usually the value of
/// [`OTLP_ENDPOINT_ENV`]). `service` names the process in exported traces.
///
/// `RUST_LOG`, when set, overrides the configured filter.
pub fn init(
    settings: &LogSettings,
    service: &str,
    otlp_endpoint: Option<&str>,
) -> Result<TelemetryGuard, TelemetryError> {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .map_or_else(|| EnvFilter::try_new(&settings.filter), Ok)
        .map_err(|e| TelemetryError(format!("invalid log filter: {e}")))?;

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let provider = match otlp_endpoint.filter(|e| !e.is_empty()) {
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| TelemetryError(format!("OTLP exporter: {e}")))?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(format!("tasklab-{service}"))
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("tasklab")));

    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let result = match settings.format {
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(true),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.map_err(|e| TelemetryError(format!("subscriber already installed: {e}")))?;
    Ok(TelemetryGuard { provider })
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Makes the trace context in `headers` (W3C `traceparent`/`tracestate`) the
/// parent of `span`. Headers without a context leave the span a root.
pub fn extract_context(headers: &http::HeaderMap, span: &tracing::Span) {
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    // A span disabled by the filter has no OpenTelemetry data; nothing to link.
    let _ = span.set_parent(cx);
}

/// Writes the current span's trace context into outgoing gRPC metadata.
pub fn inject_context(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
}

/// A client interceptor that adds `traceparent` to every outgoing request.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextInterceptor;

impl tonic::service::Interceptor for TraceContextInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        inject_context(req.metadata_mut());
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn traceparent_round_trips_through_a_span() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                    .parse()
                    .unwrap(),
            );
            let span = tracing::info_span!("rpc");
            extract_context(&headers, &span);
            let _entered = span.enter();

            let mut metadata = tonic::metadata::MetadataMap::new();
            inject_context(&mut metadata);
            let sent = metadata
                .get("traceparent")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            // Same trace id, new span id: the hop continues the caller's trace.
            assert!(
                sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{sent}"
            );
            assert!(!sent.contains("00f067aa0ba902b7"), "{sent}");
            let cx = tracing::Span::current().context();
            assert!(cx.span().span_context().is_valid());
        });
    }
}
