//! The API's Prometheus series (`--metrics-listen`, `GET /metrics`): every call by method
//! and status code with its duration (recorded by `layers::metrics`), authentication failures by
//! reason, rate limit decisions by call class, the pacing of writes (backpressure), events
//! published and their publish latency, outbox lag, the broker's state and the database
//! pool. Label values come from closed sets (our methods, gRPC codes, error reasons, call
//! classes): nothing a caller sends becomes a label.
use std::sync::LazyLock;
use std::time::Duration;

use metrics::{Counter, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::policy::CallClass;

/// Describes the API's series and registers those that should read 0 before anything
/// happens. Installs the process's recorder first (idempotent).
pub fn describe() {
    coursewire_core::telemetry::install();
    coursewire_core::telemetry::describe_pool();
    describe_counter!("coursewire_grpc_requests_total", "gRPC calls answered, by service, method and status code.");
    describe_histogram!(
        "coursewire_grpc_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time from receiving a call to its last response byte (a stream's whole life), by service and method."
    );
    describe_counter!("coursewire_auth_failures_total", "Calls refused by authentication or authorization, by reason.");
    describe_counter!("coursewire_rate_limit_admitted_total", "Calls the rate limits admitted, by call class.");
    describe_counter!("coursewire_rate_limited_total", "Calls refused by rate limits, by call class.");
    describe_counter!("coursewire_rate_limit_backend_errors_total", "Rate limit decisions the backend could not make.");
    describe_counter!("coursewire_events_published_total", "Events confirmed by the event bus.");
    describe_counter!(
        "coursewire_event_publish_failures_total",
        "Publish attempts that failed (the events were retried)."
    );
    describe_histogram!(
        "coursewire_event_publish_batch_seconds",
        metrics::Unit::Seconds,
        "Time to publish one batch and receive its confirms."
    );
    describe_gauge!("coursewire_outbox_lag_seconds", "Age of the oldest event not yet published.");
    describe_gauge!("coursewire_broker_connected", "1 while the event bus is reachable.");
    describe_gauge!(
        "coursewire_admission_pace",
        "Writes per second this replica admits while the webhook dispatchers are behind; 0 when not pacing."
    );
    describe_histogram!(
        "coursewire_admission_wait_seconds",
        metrics::Unit::Seconds,
        "How long paced writes waited for their turn."
    );
    describe_counter!(
        "coursewire_admission_refused_total",
        "Writes refused (DELIVERIES_BEHIND) because their turn was beyond their deadline or 5 s."
    );
    for name in [
        "coursewire_events_published_total",
        "coursewire_event_publish_failures_total",
        "coursewire_rate_limit_backend_errors_total",
        "coursewire_admission_refused_total",
    ] {
        counter!(name).increment(0);
    }
    gauge!("coursewire_outbox_lag_seconds").increment(0.0);
    gauge!("coursewire_broker_connected").increment(0.0);
    gauge!("coursewire_admission_pace").set(0.0);
}

/// The pace writes are admitted at (None: not paced).
pub fn admission_pace(pace: Option<f64>) {
    gauge!("coursewire_admission_pace").set(pace.unwrap_or(0.0));
}

pub fn admission_waited(wait: Duration) {
    histogram!("coursewire_admission_wait_seconds").record(wait);
}

pub fn admission_refused() {
    counter!("coursewire_admission_refused_total").increment(1);
}

/// Records one confirmed batch: its size and how long publishing took.
pub fn published(events: u64, elapsed: Duration) {
    counter!("coursewire_events_published_total").increment(events);
    histogram!("coursewire_event_publish_batch_seconds").record(elapsed);
}

pub fn publish_failed() {
    counter!("coursewire_event_publish_failures_total").increment(1);
}

/// Age of the oldest event not yet published (0 when none).
pub fn outbox_lag(lag: Duration) {
    gauge!("coursewire_outbox_lag_seconds").set(lag);
}

pub fn broker_connected(connected: bool) {
    gauge!("coursewire_broker_connected").set(f64::from(u8::from(connected)));
}

pub fn limiter_backend_error() {
    counter!("coursewire_rate_limit_backend_errors_total").increment(1);
}

pub fn auth_failed(reason: &'static str) {
    counter!("coursewire_auth_failures_total", "reason" => reason).increment(1);
}

/// One rate limit decision. Handles are kept per class: this runs on every call.
pub fn rate_limit_decided(class: CallClass, admitted: bool) {
    const CLASSES: [CallClass; 3] = [CallClass::Read, CallClass::Modify, CallClass::Remove];
    static HANDLES: LazyLock<Vec<(Counter, Counter)>> = LazyLock::new(|| {
        CLASSES
            .iter()
            .map(|c| {
                let label = c.as_str();
                (
                    counter!("coursewire_rate_limit_admitted_total", "class" => label),
                    counter!("coursewire_rate_limited_total", "class" => label),
                )
            })
            .collect()
    });
    let (yes, no) = &HANDLES[CLASSES.iter().position(|c| *c == class).unwrap_or(0)];
    if admitted { yes } else { no }.increment(1);
}

/// The database pool's gauges, read at scrape time.
pub fn record_pool(db: &coursewire_core::store::Db) {
    coursewire_core::telemetry::record_pool("api", db.pool().size(), db.pool().num_idle());
}
