//! Traces: the W3C trace context that follows a message, and OpenTelemetry spans.
//!
//! A write's `traceparent` (and `tracestate`) header is kept with each of its messages
//! (the record headers `wald-traceparent` and `wald-tracestate`, on every backend) and
//! sent on with every delivery of the message: as `traceparent` on HTTP deliveries and
//! as a Kafka header, so that a trace follows the message from its writer to its
//! readers.
//!
//! With `[telemetry] otlp_endpoint` set, wald also makes spans and exports them over
//! OTLP/HTTP (JSON): `wald.write` from a write's arrival to its durability (a child of
//! the writer's span), and `wald.deliver` for each attempt to deliver a message to a
//! target (a child of its write). The context kept and sent on is then wald's own
//! span's, so the receiver's spans hang below the delivery attempt. Without it no span
//! is made and the writer's context is kept and sent as it came.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter,
};
use serde::{Deserialize, Serialize};

use crate::component::Component;

/// `[telemetry]` in `wald.toml`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP endpoint spans are exported to, without the signal's path
    /// (`http://collector:4318`; spans go to `/v1/traces` under it). Default: none (no
    /// spans; trace context is still kept and sent on).
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans. Default: wald.
    pub service_name: String,
    /// Share of new traces recorded (a writer's sampling decision is followed).
    /// Default: 1.0. Range: 0.0..=1.0.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "wald".to_string(),
            sample_ratio: 1.0,
        }
    }
}

/// How long spans wait in a batch before they are exported.
const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// Spans waiting for export at most; beyond, new ones are dropped (and counted by the
/// exporter's own log), never waited for.
const MAX_QUEUED: usize = 65_536;
/// Longest time one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The tracer of exported spans; unset when spans are not exported.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();
/// The exporter's health: degraded while exports fail.
static HEALTH: OnceLock<Component> = OnceLock::new();

/// The health of the span export (the service part `telemetry`), when spans are
/// exported.
pub fn health() -> Option<Component> {
    HEALTH.get().cloned()
}

/// The OTLP exporter, reporting each export's outcome to the `telemetry` part: an
/// unreachable collector shows in health and `/metrics` instead of only losing spans.
struct Reported {
    inner: opentelemetry_otlp::SpanExporter,
    url: String,
    health: Component,
}

impl std::fmt::Debug for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reported").field("url", &self.url).finish()
    }
}

impl SpanExporter for Reported {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        let reported = result
            .as_ref()
            .map_err(|e| format!("{spans} spans not exported to {}: {e}", self.url));
        self.health.report(&reported, false);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter, for shutdown. Dropping it without [`Exporter::shutdown`] loses the
/// spans not exported yet.
pub struct Exporter(SdkTracerProvider);

impl Exporter {
    /// Exports what is left, waiting at most `timeout`. Blocks: call it outside the async
    /// runtime.
    pub fn shutdown(self, timeout: Duration) {
        if let Err(e) = self.0.shutdown_with_timeout(timeout) {
            tracing::warn!(error = %e, "Spans not exported at shutdown.");
        }
    }
}

/// Starts exporting spans when `config` names an endpoint. Call it once, before the
/// async runtime starts (the exporter's HTTP client blocks in a thread of its own).
pub fn init(config: &TelemetryConfig) -> anyhow::Result<Option<Exporter>> {
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    let health = Component::new(None, "telemetry");
    let _ = HEALTH.set(health.clone());
    let exporter = Reported {
        inner: exporter,
        url: url.clone(),
        health,
    };
    let batches = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(EXPORT_EVERY)
                .with_max_queue_size(MAX_QUEUED)
                .build(),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build();
    let _ = TRACER.set(provider.tracer("wald"));
    tracing::info!(endpoint = %url, "Exporting spans over OTLP/HTTP.");
    Ok(Some(Exporter(provider)))
}

/// The W3C trace context a message carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// `00-<trace id>-<parent id>-<flags>`.
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The context of `traceparent` and `tracestate` header values, in their
    /// canonical form (version `00`); none when `traceparent` is missing or not a valid
    /// one (it is then ignored, as the W3C specification asks).
    pub fn parse(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let traceparent = traceparent?.trim();
        // `version-trace_id-parent_id-flags`, each of its exact length (the
        // propagator also takes shorter ids); a later version may add fields.
        let fields: Vec<&str> = traceparent.split('-').collect();
        let lengths_hold = fields.len() >= 4
            && fields
                .iter()
                .zip([2, 32, 16, 2])
                .all(|(f, n)| f.len() == n && f.bytes().all(|b| b.is_ascii_hexdigit()))
            && (fields[0] != "00" || fields.len() == 4);
        if !lengths_hold {
            return None;
        }
        let cx = Self::extract(traceparent, tracestate);
        if !cx.span().span_context().is_valid() {
            return None;
        }
        Self::of(&cx)
    }

    fn extract(traceparent: &str, tracestate: Option<&str>) -> Context {
        let mut carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
        if let Some(state) = tracestate {
            carrier.insert("tracestate".to_string(), state.to_string());
        }
        TraceContextPropagator::new().extract(&carrier)
    }

    fn context(this: Option<&Self>) -> Context {
        this.map_or_else(Context::new, |t| {
            Self::extract(&t.traceparent, t.tracestate.as_deref())
        })
    }

    /// The context of the span in `cx`.
    fn of(cx: &Context) -> Option<Self> {
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(cx, &mut carrier);
        Some(Self {
            traceparent: carrier.remove("traceparent")?,
            tracestate: carrier.remove("tracestate").filter(|s| !s.is_empty()),
        })
    }
}

/// One span while it runs; nothing when spans are not exported.
pub struct Span(Option<Context>);

impl Span {
    /// The context to keep with the message or send on: this span's, or `parent`
    /// when spans are not exported.
    fn carried(&self, parent: Option<TraceContext>) -> Option<TraceContext> {
        match &self.0 {
            Some(cx) => TraceContext::of(cx),
            None => parent,
        }
    }

    /// Sets attribute `key` of the span.
    pub fn attribute(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// Ends the span, an error when `error` is given.
    pub fn end(self, error: Option<&str>) {
        let Some(cx) = self.0 else { return };
        let span = cx.span();
        if let Some(error) = error {
            span.set_status(Status::error(error.to_string()));
        }
        span.end();
    }
}

/// Starts `name` below `parent`, when spans are exported.
fn start(
    name: &'static str,
    kind: SpanKind,
    parent: Option<&TraceContext>,
    attributes: Vec<KeyValue>,
) -> Span {
    let Some(tracer) = TRACER.get() else {
        return Span(None);
    };
    let parent = TraceContext::context(parent);
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    Span(Some(parent.with_span(span)))
}

/// The span of a write to `namespace` (of `messages` messages) from its arrival to its
/// answer, and the context its messages keep.
pub fn write(
    namespace: &str,
    messages: usize,
    incoming: Option<TraceContext>,
) -> (Span, Option<TraceContext>) {
    let span = start(
        "wald.write",
        SpanKind::Server,
        incoming.as_ref(),
        vec![
            KeyValue::new("wald.namespace", namespace.to_string()),
            KeyValue::new("wald.messages", messages as i64),
        ],
    );
    let carried = span.carried(incoming);
    (span, carried)
}

/// The span of one attempt to deliver message `message_id` (which carries `stored`) to
/// `target`, and the context to send with it.
pub fn delivery(
    namespace: &str,
    target: &str,
    target_type: &'static str,
    message_id: &str,
    stored: Option<TraceContext>,
) -> (Span, Option<TraceContext>) {
    let span = start(
        "wald.deliver",
        SpanKind::Client,
        stored.as_ref(),
        vec![
            KeyValue::new("wald.namespace", namespace.to_string()),
            KeyValue::new("wald.target", target.to_string()),
            KeyValue::new("wald.target.type", target_type),
            KeyValue::new("wald.message_id", message_id.to_string()),
        ],
    );
    let carried = span.carried(stored);
    (span, carried)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_valid_traceparents_are_kept() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let kept = TraceContext::parse(Some(valid), Some("vendor=1")).expect("valid");
        assert_eq!(kept.traceparent, valid);
        assert_eq!(kept.tracestate.as_deref(), Some("vendor=1"));
        for invalid in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(Some(invalid), None), None, "{invalid}");
        }
    }

    #[test]
    fn without_export_the_writers_context_is_carried_as_it_came() {
        let incoming = TraceContext::parse(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None,
        );
        let (span, carried) = write("demo", 1, incoming.clone());
        assert_eq!(carried, incoming);
        span.end(None);
        let (_, carried) = delivery("demo", "t", "http", "m", None);
        assert_eq!(carried, None);
    }
}
