//! Every call has a request id: in the `x-request-id` response header and, for errors, in
//! `ErrorInfo.metadata.request_id`; an acceptable id sent by the caller is kept.
use coursewire_proto::v1::*;
use tonic::Code;

use crate::fixtures::*;
use crate::harness::Harness;

fn header<T>(r: &tonic::Response<T>) -> String {
    r.metadata().get("x-request-id").expect("x-request-id on every response").to_str().unwrap().to_string()
}

fn with_id<T>(message: T, id: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert("x-request-id", id.parse().unwrap());
    req
}

async fn every_call_and_error_names_its_request_id(h: &Harness) {
    let mut c = h.clients();
    let ok = c.account.ping(PingRequest::default()).await.unwrap();
    let first = header(&ok);
    assert!(first.starts_with("req_"), "{first}");
    let again = header(&c.account.ping(PingRequest::default()).await.unwrap());
    assert_ne!(first, again, "each call has its own id");

    // An error: the same id in the header and in ErrorInfo.
    let missing = "usr_00000000000000000000000000".to_string();
    let s = assert_err(c.users.get_user(GetUserRequest { id: missing }).await, Code::NotFound, "NOT_FOUND");
    let id = s.metadata().get("x-request-id").unwrap().to_str().unwrap().to_string();
    assert!(id.starts_with("req_"));
    assert_eq!(meta(&s, "request_id"), Some(id));

    // Errors made before the handler (authentication) carry it too.
    let mut stranger = h.clients_with(&format!("sk_{}", "0".repeat(48)));
    let s = assert_err(stranger.account.ping(PingRequest::default()).await, Code::Unauthenticated, "KEY_UNKNOWN");
    assert!(meta(&s, "request_id").is_some_and(|id| id.starts_with("req_")));

    // The caller's own id is kept when acceptable, replaced when not.
    let mine = c.account.ping(with_id(PingRequest::default(), "checkout-42:retry.1")).await.unwrap();
    assert_eq!(header(&mine), "checkout-42:retry.1");
    let s = c.users.get_user(with_id(GetUserRequest { id: "nope".into() }, "trace-7")).await.unwrap_err();
    assert_eq!(meta(&s, "request_id").as_deref(), Some("trace-7"));
    for bad in ["has space", &"x".repeat(65), "semi;colon"] {
        let replaced = c.account.ping(with_id(PingRequest::default(), bad)).await.unwrap();
        assert!(header(&replaced).starts_with("req_"), "{bad:?} was not replaced");
    }
}

crate::backend_tests!(every_call_and_error_names_its_request_id);

/// The answers the gateway gives itself (an unknown route, a verb its route does not take,
/// the OpenAPI document) carry a request id like every call, in the header and in the
/// error's `ErrorInfo`, and `/metrics` counts each once, as method `unmatched`. An HTTP/JSON
/// call that reaches its method is counted by that method, and only there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_answers_carry_a_request_id_and_are_counted() {
    use crate::harness::http;
    use crate::metrics::{scrape, value};

    let app = crate::processes::all_in_one(&[]);
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", app.port);
    let id_of = |r: &reqwest::Response| {
        r.headers().get("x-request-id").expect("x-request-id on every answer").to_str().unwrap().to_string()
    };
    let before = scrape(app.metrics_port).await;
    let unmatched = |scrape: &prometheus_parse::Scrape, code: &str| {
        value(
            scrape,
            "coursewire_grpc_requests_total",
            &[("service", "unmatched"), ("method", "unmatched"), ("code", code)],
        )
    };
    for code in ["OK", "NOT_FOUND", "UNIMPLEMENTED"] {
        assert_eq!(unmatched(&before, code), 0.0, "{code} before any call");
    }

    let unknown = http().get(url("/v1/no-such-route")).basic_auth(&app.key, Some("")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let id = id_of(&unknown);
    assert!(id.starts_with("req_"), "{id}");
    let body: serde_json::Value = serde_json::from_str(&unknown.text().await.unwrap()).unwrap();
    let info = body["error"]["details"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"))
        .unwrap_or_else(|| panic!("no ErrorInfo in {body}"));
    assert_eq!(info["metadata"]["request_id"], id.as_str(), "the error names the id its header carries");

    let wrong_verb = http().delete(url("/v1/ping")).basic_auth(&app.key, Some("")).send().await.unwrap();
    assert_eq!(wrong_verb.status(), 405);
    let other = id_of(&wrong_verb);
    assert!(other.starts_with("req_") && other != id, "{other}");

    // The caller's own id is kept here as everywhere.
    let mine = http().get(url("/v1/nowhere")).header("x-request-id", "probe-7").send().await.unwrap();
    assert_eq!(mine.status(), 404);
    assert_eq!(id_of(&mine), "probe-7");

    let document = http().get(url("/openapi.json")).send().await.unwrap();
    assert_eq!(document.status(), 200);
    assert!(id_of(&document).starts_with("req_"));

    let ping = http().get(url("/v1/ping")).basic_auth(&app.key, Some("")).send().await.unwrap();
    assert_eq!(ping.status(), 200);
    assert!(id_of(&ping).starts_with("req_"));

    let after = scrape(app.metrics_port).await;
    assert_eq!(unmatched(&after, "NOT_FOUND"), 2.0);
    assert_eq!(unmatched(&after, "UNIMPLEMENTED"), 1.0);
    assert_eq!(unmatched(&after, "OK"), 1.0, "the OpenAPI document; the ping is counted by its method");
    let every_unmatched: f64 = after
        .samples
        .iter()
        .filter(|s| s.metric == "coursewire_grpc_requests_total" && s.labels.get("service") == Some("unmatched"))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            ref other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(every_unmatched, 4.0, "each answer counted once");
    let pings = value(
        &after,
        "coursewire_grpc_requests_total",
        &[("service", "coursewire.v1.AccountService"), ("method", "Ping"), ("code", "OK")],
    );
    assert_eq!(pings, 1.0);
}
