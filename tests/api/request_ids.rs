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
