//! The per-call metrics: every answer counted by method and status code, and timed to its
//! last byte (`coursewire_grpc_requests_total`, `coursewire_grpc_request_duration_seconds`;
//! `crate::metrics` describes them). Two layers: `RpcMetricsLayer`, inside the gateway and
//! gRPC-Web, counts the calls that reach a method, by that method; `UnmatchedLayer`, outside
//! them, counts the answers given before any method was reached (the gateway's own, CORS
//! preflights, gRPC-Web's refusals) as method `unmatched`, so every answer is counted once.
//! Label values come from closed sets: our methods (from the policy table), `unknown` for
//! any other gRPC path, `unmatched`, and gRPC's codes.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use metrics::{Counter, Histogram, counter, histogram};

use super::grpc_status;
use crate::policy;

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
        if let Some(Reached(reached)) = req.extensions().get::<Reached>() {
            reached.store(true, Ordering::Relaxed);
        }
        let series = series_of(req.uri().path());
        let started = Instant::now();
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(grpc_status::on_code(response, move |code| series.finish(code, started)))
        })
    }
}

/// Set when a call reaches `RpcMetricsLayer`, which then counts it.
#[derive(Clone, Default)]
struct Reached(Arc<AtomicBool>);

/// Counts the answers no method gave, as method `unmatched`: the gateway's own (an unknown
/// route, 405, a body too large or malformed, `/openapi.json`, `/docs`), CORS preflights and
/// gRPC-Web's refusals. Sits outside the gateway; a call that reaches a method is left to
/// `RpcMetricsLayer`.
#[derive(Clone, Copy, Default)]
pub struct UnmatchedLayer;

impl<S> tower::Layer<S> for UnmatchedLayer {
    type Service = Unmatched<S>;
    fn layer(&self, inner: S) -> Unmatched<S> {
        Unmatched { inner }
    }
}

#[derive(Clone)]
pub struct Unmatched<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for Unmatched<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        static UNMATCHED: LazyLock<MethodSeries> = LazyLock::new(|| MethodSeries::new("unmatched", "unmatched"));
        let reached = Reached::default();
        req.extensions_mut().insert(reached.clone());
        let started = Instant::now();
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            if !reached.0.load(Ordering::Relaxed) {
                let code = grpc_status::code(response.headers()).unwrap_or_else(|| code_of_http(response.status()));
                UNMATCHED.finish(code, started);
            }
            Ok(response)
        })
    }
}

/// The gRPC code of an HTTP answer (the reverse of the gateway's mapping, AIP-193; 405 is
/// UNIMPLEMENTED, as gRPC reads it).
fn code_of_http(status: http::StatusCode) -> usize {
    match status.as_u16() {
        200..=399 => 0,
        400 => 3,
        401 => 16,
        403 => 7,
        404 => 5,
        405 | 501 => 12,
        409 => 6,
        413 | 429 => 8,
        499 => grpc_status::CANCELLED,
        503 => 14,
        504 => 4,
        _ => grpc_status::UNKNOWN,
    }
}
