//! The dispatcher's Prometheus series: deliveries by outcome, attempt latency and failures,
//! the queue depth, the database pool, and the failure streaks of failing endpoints
//! (labelled by endpoint id: the one id label, bounded by the endpoints that exist).
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

/// Describes the dispatcher's series and registers those that read 0 from the start.
/// Installs the process's recorder first (idempotent).
pub fn describe() {
    coursewire_core::telemetry::install();
    coursewire_core::telemetry::describe_pool();
    describe_counter!("coursewire_webhook_deliveries_total", "Webhook deliveries that ended, by outcome.");
    describe_counter!("coursewire_webhook_attempt_failures_total", "Webhook attempts that did not get a 2xx.");
    describe_histogram!("coursewire_webhook_attempt_seconds", metrics::Unit::Seconds, "Duration of webhook attempts.");
    describe_gauge!(
        "coursewire_webhook_deliveries_due",
        "Deliveries due now that no dispatcher has taken yet (queue depth)."
    );
    describe_gauge!(
        "coursewire_webhook_endpoint_failure_streak",
        "Consecutive failed attempts of an endpoint (0 once it recovers)."
    );
    for outcome in ["succeeded", "failed"] {
        counter!("coursewire_webhook_deliveries_total", "outcome" => outcome).increment(0);
    }
    counter!("coursewire_webhook_attempt_failures_total").increment(0);
    gauge!("coursewire_webhook_deliveries_due").increment(0.0);
}

/// A delivery ended: delivered, or given up.
pub fn delivery_ended(succeeded: bool) {
    let outcome = if succeeded { "succeeded" } else { "failed" };
    counter!("coursewire_webhook_deliveries_total", "outcome" => outcome).increment(1);
}

pub fn deliveries_due(due: i64) {
    gauge!("coursewire_webhook_deliveries_due").set(due as f64);
}

/// Records one webhook attempt against its endpoint's failure streak.
pub fn attempted(endpoint: &str, ok: bool, elapsed: Duration) {
    static STREAKS: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
    histogram!("coursewire_webhook_attempt_seconds").record(elapsed);
    if !ok {
        counter!("coursewire_webhook_attempt_failures_total").increment(1);
    }
    let mut streaks = STREAKS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    // Endpoints that never failed get no series; one that recovers reads 0.
    let streak = match (ok, streaks.get_mut(endpoint)) {
        (true, None) => return,
        (true, Some(_)) => {
            streaks.remove(endpoint);
            0
        }
        (false, Some(n)) => {
            *n += 1;
            *n
        }
        (false, None) => *streaks.entry(endpoint.to_string()).or_insert(1),
    };
    gauge!("coursewire_webhook_endpoint_failure_streak", "endpoint" => endpoint.to_string()).set(streak as f64);
}

/// The database pool's gauges, read at scrape time.
pub fn record_pool(db: &coursewire_core::store::Db) {
    coursewire_core::telemetry::record_pool("dispatcher", db.pool().size(), db.pool().num_idle());
}
