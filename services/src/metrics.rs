//! Prometheus metrics at `--metrics-listen` (`GET /metrics`): a handful of counters and
//! gauges kept in atomics, rendered as the text exposition format.
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Upper bounds (ms) of the latency histogram buckets.
const BUCKETS_MS: [u64; 12] = [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 15000];

/// A latency histogram in milliseconds, rendered in seconds.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_MS.len()],
    count: AtomicU64,
    sum_ms: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, ms: u64) {
        for (i, bound) in BUCKETS_MS.iter().enumerate() {
            if ms <= *bound {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_ms.fetch_add(ms, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, bound) in BUCKETS_MS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{:.3}\"}} {}",
                *bound as f64 / 1000.0,
                self.buckets[i].load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let sum = self.sum_ms.load(Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum:.3}\n{name}_count {count}");
    }
}

#[derive(Default)]
pub struct Metrics {
    pub events_published: AtomicU64,
    pub publish_failures: AtomicU64,
    publish_latency: Histogram,
    /// Age in ms of the oldest event not yet published (0 when none).
    pub outbox_lag_ms: AtomicI64,
    /// 1 while the event bus is reachable.
    pub broker_connected: AtomicI64,
    pub rate_limited: AtomicU64,
    pub limiter_backend_errors: AtomicU64,
    /// Webhook deliveries that ended, by outcome.
    pub deliveries_succeeded: AtomicU64,
    pub deliveries_failed: AtomicU64,
    /// Webhook attempts that failed (each is retried or ends its delivery).
    pub attempts_failed: AtomicU64,
    pub attempt_latency: Histogram,
    /// Deliveries due now and not yet taken by a dispatcher.
    pub deliveries_due: AtomicI64,
    /// Consecutive failed attempts per endpoint (only endpoints currently failing).
    pub failure_streaks: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

pub fn metrics() -> &'static Metrics {
    static METRICS: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(|| Metrics { broker_connected: AtomicI64::new(1), ..Default::default() })
}

impl Metrics {
    /// Records one confirmed batch: its size and how long publishing took.
    pub fn published(&self, events: u64, elapsed_ms: u64) {
        self.events_published.fetch_add(events, Relaxed);
        self.publish_latency.observe(elapsed_ms);
    }

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
        let mut line = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        line(
            "coursewire_events_published_total",
            "counter",
            "Events confirmed by the event bus.",
            self.events_published.load(Relaxed).to_string(),
        );
        line(
            "coursewire_event_publish_failures_total",
            "counter",
            "Publish attempts that failed (the events were retried).",
            self.publish_failures.load(Relaxed).to_string(),
        );
        line(
            "coursewire_outbox_lag_seconds",
            "gauge",
            "Age of the oldest event not yet published.",
            format!("{:.3}", self.outbox_lag_ms.load(Relaxed) as f64 / 1000.0),
        );
        line(
            "coursewire_broker_connected",
            "gauge",
            "1 while the event bus is reachable.",
            self.broker_connected.load(Relaxed).to_string(),
        );
        line(
            "coursewire_rate_limited_total",
            "counter",
            "Calls refused by rate limits.",
            self.rate_limited.load(Relaxed).to_string(),
        );
        line(
            "coursewire_rate_limit_backend_errors_total",
            "counter",
            "Rate limit decisions the backend could not make.",
            self.limiter_backend_errors.load(Relaxed).to_string(),
        );
        let name = "coursewire_webhook_deliveries_total";
        let _ = writeln!(
            out,
            "# HELP {name} Webhook deliveries that ended, by outcome.\n# TYPE {name} counter\n\
             {name}{{outcome=\"succeeded\"}} {}\n{name}{{outcome=\"failed\"}} {}",
            self.deliveries_succeeded.load(Relaxed),
            self.deliveries_failed.load(Relaxed)
        );
        let mut line = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        line(
            "coursewire_webhook_attempt_failures_total",
            "counter",
            "Webhook attempts that did not get a 2xx.",
            self.attempts_failed.load(Relaxed).to_string(),
        );
        line(
            "coursewire_webhook_deliveries_due",
            "gauge",
            "Deliveries due now that no dispatcher has taken yet (queue depth).",
            self.deliveries_due.load(Relaxed).to_string(),
        );
        let name = "coursewire_webhook_endpoint_failure_streak";
        let _ = writeln!(out, "# HELP {name} Consecutive failed attempts of a failing endpoint.\n# TYPE {name} gauge");
        for (endpoint, streak) in self.failure_streaks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "{name}{{endpoint=\"{endpoint}\"}} {streak}");
        }
        self.publish_latency.render(
            &mut out,
            "coursewire_event_publish_batch_seconds",
            "Time to publish one batch and receive its confirms.",
        );
        self.attempt_latency.render(&mut out, "coursewire_webhook_attempt_seconds", "Duration of webhook attempts.");
        out
    }
}

/// Serves `GET /metrics` until the task is dropped.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?;
    tracing::info!(%addr, "metrics at /metrics");
    loop {
        let (mut socket, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let n = socket.read(&mut request).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&request[..n]);
            let response = if head.starts_with("GET /metrics ") {
                let body = metrics().render();
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
            };
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
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
