//! The dispatcher's Prometheus series: deliveries by outcome, attempt latency and failures,
//! the queue depth, the backpressure verdict, the database pool, and the failure streaks of
//! failing endpoints (labelled by endpoint id: the one id label, bounded by the endpoints
//! that exist).
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
    describe_gauge!(
        "coursewire_dispatcher_behind",
        "1 while this dispatcher tells the API it is behind for want of capacity (backpressure), else 0."
    );
    describe_gauge!(
        "coursewire_dispatcher_late_start_ratio",
        "Of the attempts started in the last half second, the share that waited 100 ms or more in this process."
    );
    describe_gauge!(
        "coursewire_dispatcher_wakeup_lateness_seconds",
        metrics::Unit::Seconds,
        "How late, on average, a 10 ms sleep woke in the last half second while attempts ran (CPU starvation)."
    );
    for outcome in ["succeeded", "failed"] {
        counter!("coursewire_webhook_deliveries_total", "outcome" => outcome).increment(0);
    }
    counter!("coursewire_webhook_attempt_failures_total").increment(0);
    gauge!("coursewire_webhook_deliveries_due").increment(0.0);
    gauge!("coursewire_dispatcher_behind").set(0.0);
}

/// The backpressure verdict over the last period, with what it was made from.
pub fn pressure(behind: bool, started: u64, late: u64, lateness: Duration) {
    gauge!("coursewire_dispatcher_behind").set(if behind { 1.0 } else { 0.0 });
    gauge!("coursewire_dispatcher_late_start_ratio").set(if started == 0 { 0.0 } else { late as f64 / started as f64 });
    gauge!("coursewire_dispatcher_wakeup_lateness_seconds").set(lateness.as_secs_f64());
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
