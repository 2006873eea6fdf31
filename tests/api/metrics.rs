//! `/metrics` as an operator scrapes it: the real all-in-one binary, calls with known
//! outcomes, then the exposition parsed by a Prometheus text-format parser and each series
//! checked exactly. The attacker's part: a path the server does not serve must not become a
//! label value.
use std::collections::HashMap;

use coursewire_proto::v1::*;
use prometheus_parse::{Sample, Scrape, Value};
use tonic::Code;

use crate::fixtures::assert_err;
use crate::harness::http;
use crate::processes::{all_in_one, clients};

pub(crate) async fn scrape(port: u16) -> Scrape {
    let response = http().get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid Prometheus text format")
}

/// The value of the one sample of `name` whose labels include `labels` (0 when none).
pub(crate) fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert!(matching.len() <= 1, "{name} {labels:?} matches {} samples", matching.len());
    match matching.first().map(|s| &s.value) {
        None => 0.0,
        Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
        Some(Value::Histogram(buckets)) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
        Some(other) => panic!("{name}: unexpected {other:?}"),
    }
}

/// Calls a path the server does not serve, as a hostile client with a key can.
async fn call_unknown_path(port: u16, key: &str, path: &'static str) -> tonic::Status {
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
    let mut grpc = tonic::client::Grpc::new(channel.connect().await.unwrap());
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = http::uri::PathAndQuery::from_static(path);
    let mut request = tonic::Request::new(());
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    grpc.unary(request, path, codec).await.unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_by_method_and_code() {
    let app = all_in_one(&[]);
    let (port, metrics_port, key) = (app.port, app.metrics_port, app.key.clone());

    // Series that must read 0 before anything happened are there from the start.
    let before = scrape(metrics_port).await;
    for name in ["coursewire_events_published_total", "coursewire_webhook_attempt_failures_total"] {
        assert!(before.samples.iter().any(|s| s.metric == name), "{name} missing at start");
    }

    let mut c = clients(port, &key).await;
    for _ in 0..3 {
        c.account.ping(PingRequest::default()).await.unwrap();
    }
    let missing = GetUserRequest { id: "usr_00000000000000000000000000".into() };
    assert_err(c.users.get_user(missing).await, Code::NotFound, "NOT_FOUND");
    let mut stranger = clients(port, &format!("sk_{}", "0".repeat(48))).await;
    assert_err(stranger.account.ping(PingRequest::default()).await, Code::Unauthenticated, "KEY_UNKNOWN");
    let unknown = call_unknown_path(port, &key, "/evil.Service/Attacker_chosen_label").await;
    assert_eq!(unknown.code(), Code::Unimplemented);

    let after = scrape(metrics_port).await;
    let calls = |service: &str, method: &str, code: &str| {
        value(&after, "coursewire_grpc_requests_total", &[("service", service), ("method", method), ("code", code)])
    };
    assert_eq!(calls("coursewire.v1.AccountService", "Ping", "OK"), 3.0);
    assert_eq!(calls("coursewire.v1.AccountService", "Ping", "UNAUTHENTICATED"), 1.0);
    assert_eq!(calls("coursewire.v1.UserService", "GetUser", "NOT_FOUND"), 1.0);
    assert_eq!(calls("unknown", "unknown", "UNIMPLEMENTED"), 1.0);
    let durations = after
        .samples
        .iter()
        .find(|s| {
            s.metric == "coursewire_grpc_request_duration_seconds"
                && s.labels.get("method") == Some("Ping")
                && s.labels.get("service") == Some("coursewire.v1.AccountService")
        })
        .expect("a duration histogram for Ping");
    let Value::Histogram(buckets) = &durations.value else { panic!("{:?}", durations.value) };
    assert_eq!(buckets.last().unwrap().count, 4.0, "4 Pings timed: {buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count), "cumulative buckets");

    assert_eq!(value(&after, "coursewire_auth_failures_total", &[("reason", "KEY_UNKNOWN")]), 1.0);
    // Ping ×3 and GetUser were admitted; the stranger never reached the limiter.
    assert_eq!(value(&after, "coursewire_rate_limit_admitted_total", &[("class", "read")]), 4.0);
    assert_eq!(value(&after, "coursewire_rate_limited_total", &[("class", "read")]), 0.0);
    let pool: HashMap<&str, f64> = ["in_use", "idle"]
        .into_iter()
        .map(|state| (state, value(&after, "coursewire_db_pool_connections", &[("pool", "api"), ("state", state)])))
        .collect();
    assert!(pool["in_use"] + pool["idle"] >= 1.0, "the pool holds a connection: {pool:?}");

    // Nothing the caller chose became a label value.
    for sample in &after.samples {
        let labels = format!("{:?}", sample.labels);
        assert!(!labels.contains("evil") && !labels.contains("Attacker"), "{} {labels}", sample.metric);
    }
}
