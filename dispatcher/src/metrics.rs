//! The dispatcher's Prometheus series: deliveries by outcome, attempt latency and failures,
//! the queue depth, and the failure streaks of failing endpoints (labelled by endpoint id).
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use coursewire_core::telemetry::{Histogram, line};

#[derive(Default)]
pub struct Metrics {
    /// Webhook deliveries that ended, by outcome.
    pub deliveries_succeeded: AtomicU64,
    pub deliveries_failed: AtomicU64,
    /// Webhook attempts that failed (each is retried or ends its delivery).
    pub attempts_failed: AtomicU64,
    pub attempt_latency: Histogram,
    /// Deliveries due now and not yet taken by a dispatcher.
    pub deliveries_due: AtomicI64,
    /// Consecutive failed attempts per endpoint (only endpoints currently failing).
    pub failure_streaks: Mutex<BTreeMap<String, u64>>,
}

pub fn metrics() -> &'static Metrics {
    static METRICS: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

impl Metrics {
    /// Records one webhook attempt against its endpoint's failure streak.
    pub fn attempted(&self, endpoint: &str, ok: bool, elapsed_ms: u64) {
        self.attempt_latency.observe(elapsed_ms);
        let mut streaks = self.failure_streaks.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            streaks.remove(endpoint);
        } else {
            self.attempts_failed.fetch_add(1, Relaxed);
            *streaks.entry(endpoint.to_string()).or_default() += 1;
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let name = "coursewire_webhook_deliveries_total";
        let _ = writeln!(
            out,
            "# HELP {name} Webhook deliveries that ended, by outcome.\n# TYPE {name} counter\n\
             {name}{{outcome=\"succeeded\"}} {}\n{name}{{outcome=\"failed\"}} {}",
            self.deliveries_succeeded.load(Relaxed),
            self.deliveries_failed.load(Relaxed)
        );
        line(
            &mut out,
            "coursewire_webhook_attempt_failures_total",
            "counter",
            "Webhook attempts that did not get a 2xx.",
            self.attempts_failed.load(Relaxed),
        );
        line(
            &mut out,
            "coursewire_webhook_deliveries_due",
            "gauge",
            "Deliveries due now that no dispatcher has taken yet (queue depth).",
            self.deliveries_due.load(Relaxed),
        );
        let name = "coursewire_webhook_endpoint_failure_streak";
        let _ = writeln!(out, "# HELP {name} Consecutive failed attempts of a failing endpoint.\n# TYPE {name} gauge");
        for (endpoint, streak) in self.failure_streaks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "{name}{{endpoint=\"{endpoint}\"}} {streak}");
        }
        self.attempt_latency.render(&mut out, "coursewire_webhook_attempt_seconds", "Duration of webhook attempts.");
        out
    }
}

/// The dispatcher's series, for the `/metrics` endpoint.
pub fn render() -> String {
    metrics().render()
}
