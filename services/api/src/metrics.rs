//! The API's Prometheus series (`--metrics-listen`, `GET /metrics`): events published and
//! their publish latency, outbox lag, the broker's state, and rate limit decisions. Counters
//! and gauges are atomics; the exposition format comes from the core's `telemetry`.
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use coursewire_core::telemetry::{Histogram, line};

#[derive(Default)]
pub struct Metrics {
    pub events_published: AtomicU64,
    pub publish_failures: AtomicU64,
    publish_latency: Histogram,
    /// Age in ms of the oldest event not yet published (0 when none).
    pub outbox_lag_ms: AtomicI64,
    /// 1 while the event bus is reachable; 0 until the first connection.
    pub broker_connected: AtomicI64,
    pub rate_limited: AtomicU64,
    pub limiter_backend_errors: AtomicU64,
}

pub fn metrics() -> &'static Metrics {
    static METRICS: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

impl Metrics {
    /// Records one confirmed batch: its size and how long publishing took.
    pub fn published(&self, events: u64, elapsed_ms: u64) {
        self.events_published.fetch_add(events, Relaxed);
        self.publish_latency.observe(elapsed_ms);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let o = &mut out;
        line(
            o,
            "coursewire_events_published_total",
            "counter",
            "Events confirmed by the event bus.",
            self.events_published.load(Relaxed),
        );
        line(
            o,
            "coursewire_event_publish_failures_total",
            "counter",
            "Publish attempts that failed (the events were retried).",
            self.publish_failures.load(Relaxed),
        );
        line(
            o,
            "coursewire_outbox_lag_seconds",
            "gauge",
            "Age of the oldest event not yet published.",
            format!("{:.3}", self.outbox_lag_ms.load(Relaxed) as f64 / 1000.0),
        );
        line(
            o,
            "coursewire_broker_connected",
            "gauge",
            "1 while the event bus is reachable.",
            self.broker_connected.load(Relaxed),
        );
        line(
            o,
            "coursewire_rate_limited_total",
            "counter",
            "Calls refused by rate limits.",
            self.rate_limited.load(Relaxed),
        );
        line(
            o,
            "coursewire_rate_limit_backend_errors_total",
            "counter",
            "Rate limit decisions the backend could not make.",
            self.limiter_backend_errors.load(Relaxed),
        );
        self.publish_latency.render(
            &mut out,
            "coursewire_event_publish_batch_seconds",
            "Time to publish one batch and receive its confirms.",
        );
        out
    }
}

/// The API's series, for the `/metrics` endpoint.
pub fn render() -> String {
    metrics().render()
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_prometheus_text() {
        let m = super::Metrics::default();
        m.published(500, 12);
        let text = m.render();
        assert!(text.contains("coursewire_events_published_total 500"));
        assert!(text.contains("coursewire_event_publish_batch_seconds_bucket{le=\"0.025\"} 1"));
        assert!(text.contains("coursewire_event_publish_batch_seconds_bucket{le=\"0.010\"} 0"));
        assert!(text.contains("coursewire_event_publish_batch_seconds_count 1"));
    }
}
