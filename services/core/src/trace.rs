//! W3C Trace Context (`traceparent`), carried from the API call to every webhook attempt:
//! the call continues the caller's trace (or starts one), its events store the call's
//! context in the outbox, the relay sends it as an AMQP header, and each attempt sends a
//! child of it. One trace id links the call, the publish and each delivery attempt.
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// A span's place in a trace: `00-<trace id>-<span id>-<flags>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
    /// Bit 0: sampled (kept as the caller set it).
    pub flags: u8,
}

impl TraceContext {
    /// A new trace, for work no caller started (or a caller that sent none).
    pub fn root() -> TraceContext {
        TraceContext { trace_id: nonzero(rand::random()), span_id: nonzero(rand::random()), flags: 1 }
    }

    /// A new span in the same trace, caused by this one.
    pub fn child(&self) -> TraceContext {
        TraceContext { span_id: nonzero(rand::random()), ..*self }
    }

    /// Parses a `traceparent` header. Versions above 00 are read as 00 (their first four
    /// fields have the same form), as the W3C recommendation asks; anything malformed, an
    /// all-zero id or version `ff` is `None`, and the call starts a new trace.
    pub fn parse(header: &str) -> Option<TraceContext> {
        let mut parts = header.split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let lower_hex =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !(lower_hex(version, 2) && lower_hex(trace, 32) && lower_hex(span, 16) && lower_hex(flags, 2)) {
            return None;
        }
        if version == "ff" || (version == "00" && (header.len() != 55 || parts.next().is_some())) {
            return None;
        }
        let context = TraceContext {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            span_id: u64::from_str_radix(span, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (context.trace_id != 0 && context.span_id != 0).then_some(context)
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

fn nonzero<T: Default + PartialEq + From<u8>>(value: T) -> T {
    if value == T::default() { T::from(1) } else { value }
}

impl From<TraceContext> for SpanContext {
    fn from(c: TraceContext) -> SpanContext {
        let (trace, span) =
            (TraceId::from_bytes(c.trace_id.to_be_bytes()), SpanId::from_bytes(c.span_id.to_be_bytes()));
        SpanContext::new(trace, span, TraceFlags::new(c.flags), true, TraceState::default())
    }
}

/// Set once spans are exported: only then are spans made per call and per attempt (a span
/// per call costs several percent of a cheap call's throughput).
static EXPORTING: AtomicBool = AtomicBool::new(false);

pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The `tracing` layer that sends spans of target `coursewire…` to the OTLP/gRPC collector
/// at `endpoint`, in batches from a task of the running runtime.
pub(crate) fn export<S>(
    endpoint: &str,
    service: &'static str,
) -> anyhow::Result<(impl tracing_subscriber::Layer<S>, opentelemetry_sdk::trace::SdkTracerProvider)>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry_otlp::WithExportConfig;
    use tracing_subscriber::Layer;

    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| anyhow::anyhow!("--otlp-endpoint {endpoint}: {e}"))?;
    let batches = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
        exporter,
        opentelemetry_sdk::runtime::Tokio,
    )
    .build();
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_resource(resource)
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("coursewire"))
        .with_filter(tracing_subscriber::filter::Targets::new().with_target("coursewire", tracing::Level::INFO));
    EXPORTING.store(true, Ordering::Relaxed);
    Ok((layer, provider))
}

/// Makes `span` (when exporting; else `None`) the next span of `parent`'s trace (a new trace
/// without one) and returns the context to hand downstream: the exported span's own when
/// there is one, so the hops after it are its children.
pub fn continue_in(span: Option<&tracing::Span>, parent: Option<TraceContext>) -> TraceContext {
    let fallback = || parent.map_or_else(TraceContext::root, |p| p.child());
    let Some(span) = span else { return fallback() };
    if let Some(parent) = parent {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent.into()));
    }
    let context = span.context();
    let own = context.span().span_context().clone();
    if !own.is_valid() {
        return fallback();
    }
    TraceContext {
        trace_id: u128::from_be_bytes(own.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(own.span_id().to_bytes()),
        flags: own.trace_flags().to_u8(),
    }
}

/// Runs `work` as the span `context`.
pub async fn scope<F: std::future::Future>(context: TraceContext, work: F) -> F::Output {
    CURRENT.scope(context, work).await
}

/// The span this task works in, if it serves a call.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|c| *c).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_the_w3c_form() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse(header).unwrap();
        assert_eq!(context.to_string(), header);
        let child = context.child();
        assert_eq!((child.trace_id, child.flags), (context.trace_id, 1));
        assert_ne!(child.span_id, context.span_id);
        // A later version with more fields is read as 00.
        assert!(TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\r",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        let root = TraceContext::root();
        assert_eq!(TraceContext::parse(&root.to_string()), Some(root));
    }

    #[tokio::test]
    async fn the_context_is_seen_inside_its_scope_only() {
        let context = TraceContext::root();
        assert_eq!(current(), None);
        assert_eq!(scope(context, async { current() }).await, Some(context));
    }
}
