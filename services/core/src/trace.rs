//! W3C Trace Context (`traceparent`), carried from the API call to every webhook attempt:
//! the call continues the caller's trace (or starts one), its events store the call's
//! context in the outbox, the relay sends it as an AMQP header, and each attempt sends a
//! child of it. One trace id links the call, the publish and each delivery attempt.
use std::fmt;

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
