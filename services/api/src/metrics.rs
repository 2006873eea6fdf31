//! The API's Prometheus series (`--metrics-listen`, `GET /metrics`): every call by method
//! and status code with its duration (`RpcMetricsLayer`), authentication failures by
//! reason, rate limit decisions by call class, the pacing of writes (backpressure), events
//! published and their publish latency, outbox lag, the broker's state and the database
//! pool. Label values come from closed sets (our methods, gRPC codes, error reasons, call
//! classes): nothing a caller sends becomes a label.
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{LazyLock, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use metrics::{Counter, Histogram, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::auth::policy::{self, CallClass};

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

/// gRPC's canonical code names, by code number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const CANCELLED: usize = 1;
const UNKNOWN: usize = 2;

/// The series of one method: its duration histogram and a counter per status code, each
/// registered on first use.
struct MethodSeries {
    service: &'static str,
    method: &'static str,
    duration: OnceLock<Histogram>,
    requests: [OnceLock<Counter>; 17],
}

impl MethodSeries {
    fn new(service: &'static str, method: &'static str) -> Self {
        MethodSeries { service, method, duration: OnceLock::new(), requests: Default::default() }
    }

    fn finish(&self, code: usize, started: Instant) {
        let (service, method) = (self.service, self.method);
        let code = code.min(CODE_NAMES.len() - 1);
        self.requests[code]
            .get_or_init(|| {
                counter!("coursewire_grpc_requests_total", "service" => service, "method" => method, "code" => CODE_NAMES[code])
            })
            .increment(1);
        self.duration
            .get_or_init(
                || histogram!("coursewire_grpc_request_duration_seconds", "service" => service, "method" => method),
            )
            .record(started.elapsed());
    }
}

/// Our methods by path; any other path is counted as `unknown` (a caller choosing paths
/// must not create series).
fn series_of(path: &str) -> &'static MethodSeries {
    static KNOWN: LazyLock<HashMap<&'static str, MethodSeries>> = LazyLock::new(|| {
        policy::methods()
            .map(|path| {
                let (service, method) = path[1..].split_once('/').expect("paths are /service/method");
                (path, MethodSeries::new(service, method))
            })
            .collect()
    });
    static UNKNOWN_METHOD: LazyLock<MethodSeries> = LazyLock::new(|| MethodSeries::new("unknown", "unknown"));
    KNOWN.get(path).unwrap_or(&UNKNOWN_METHOD)
}

/// The code in a `grpc-status` header or trailer.
fn status_code(headers: &http::HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(value.parse().unwrap_or(UNKNOWN))
}

/// Counts every call by method and code, and times it to its last byte. Errors answered
/// at once carry their code in the headers; other responses in the trailers at the end
/// of the body, which is watched for them.
#[derive(Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics { inner }
    }
}

#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let series = series_of(req.uri().path());
        let started = Instant::now();
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            if let Some(code) = status_code(response.headers()) {
                series.finish(code, started);
                return Ok(response);
            }
            Ok(response.map(|body| tonic::body::Body::new(Watched { body, series, started, done: false })))
        })
    }
}

/// A response body that records its call when the trailers pass (or when it is dropped
/// before them: the caller went away).
struct Watched {
    body: tonic::body::Body,
    series: &'static MethodSeries,
    started: Instant,
    done: bool,
}

impl Watched {
    fn finish(&mut self, code: usize) {
        if !std::mem::replace(&mut self.done, true) {
            self.series.finish(code, self.started);
        }
    }
}

impl http_body::Body for Watched {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_code) {
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(UNKNOWN),
            Poll::Ready(None) => self.finish(UNKNOWN),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.finish(CANCELLED);
    }
}
