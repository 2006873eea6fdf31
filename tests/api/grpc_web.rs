//! gRPC-Web on the gRPC port (tonic-web), as a browser sends it: HTTP/1.1 requests in both
//! encodings (`application/grpc-web+proto`, and base64 `application/grpc-web-text`) to Ping
//! and to a server-streaming method, authenticated, limited and named like gRPC calls.
use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use coursewire_proto::v1::*;
use prost::Message;

use crate::fixtures::*;
use crate::harness::{Harness, http};

const BINARY: &str = "application/grpc-web+proto";
const TEXT: &str = "application/grpc-web-text";

/// One length-prefixed message frame.
fn frame(message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = vec![0u8];
    out.extend((body.len() as u32).to_be_bytes());
    out.extend(body);
    out
}

/// A gRPC-Web response body: its messages, then its trailers (the frame flagged 0x80).
fn frames(mut body: &[u8]) -> (Vec<Vec<u8>>, HashMap<String, String>) {
    let (mut messages, mut trailers) = (Vec::new(), HashMap::new());
    while body.len() >= 5 {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        let payload = &body[5..5 + len];
        if body[0] & 0x80 != 0 {
            for line in String::from_utf8_lossy(payload).split("\r\n").filter(|l| !l.is_empty()) {
                let (k, v) = line.split_once(':').unwrap();
                trailers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        } else {
            messages.push(payload.to_vec());
        }
        body = &body[5 + len..];
    }
    assert!(body.is_empty(), "a truncated frame");
    (messages, trailers)
}

/// A `grpc-web-text` body: base64 chunks, each padded on its own (one per frame), so it is
/// decoded four characters at a time.
fn decode_text(body: &[u8]) -> Vec<u8> {
    let text: Vec<u8> = body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    assert_eq!(text.len() % 4, 0, "base64 in whole quanta");
    text.chunks(4).flat_map(|quantum| STANDARD.decode(quantum).expect("base64")).collect()
}

struct WebResponse {
    headers: reqwest::header::HeaderMap,
    messages: Vec<Vec<u8>>,
    trailers: HashMap<String, String>,
}

/// Calls `path` over gRPC-Web with HTTP/1.1, as a browser would.
async fn call(h: &Harness, key: Option<&str>, path: &str, content_type: &str, request: &impl Message) -> WebResponse {
    let _ = http(); // installs the TLS provider reqwest asks for, though this is plain HTTP
    let client = reqwest::Client::builder().http1_only().build().unwrap();
    let body = if content_type == TEXT { STANDARD.encode(frame(request)).into_bytes() } else { frame(request) };
    let mut req = client
        .post(format!("http://{}{path}", h.addr()))
        .header("content-type", content_type)
        .header("accept", content_type)
        .header("x-grpc-web", "1")
        .body(body);
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let response = req.send().await.unwrap();
    assert_eq!(response.status(), 200, "gRPC-Web answers 200 and puts the status in grpc-status");
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let bytes = if content_type == TEXT { decode_text(&bytes) } else { bytes.to_vec() };
    let (messages, mut trailers) = frames(&bytes);
    // A call that fails at once answers with its status in the headers (trailers-only).
    for name in ["grpc-status", "grpc-message"] {
        if let Some(v) = headers.get(name) {
            trailers.insert(name.to_string(), v.to_str().unwrap().to_string());
        }
    }
    WebResponse { headers, messages, trailers }
}

async fn browsers_call_over_grpc_web(h: &Harness) {
    let ping = "/coursewire.v1.AccountService/Ping";
    for content_type in [BINARY, TEXT] {
        let r = call(h, Some(&h.key), ping, content_type, &PingRequest {}).await;
        assert!(r.headers["content-type"].to_str().unwrap().starts_with(content_type), "{:?}", r.headers);
        assert_eq!(r.trailers.get("grpc-status").map(String::as_str), Some("0"), "{content_type}: {:?}", r.trailers);
        assert_eq!(r.messages.len(), 1, "{content_type}: one (empty) response message");
        assert!(r.headers["x-request-id"].to_str().unwrap().starts_with("req_"));
        assert!(r.headers.contains_key("x-ratelimit-remaining"), "limited like gRPC calls: {:?}", r.headers);
    }

    // The same auth: no key is UNAUTHENTICATED (16) with the documented reason.
    let r = call(h, None, ping, BINARY, &PingRequest {}).await;
    assert_eq!(r.trailers.get("grpc-status").map(String::as_str), Some("16"), "{:?}", r.trailers);
    assert!(r.messages.is_empty());

    // A server-streaming method: one frame per enrollment, then the trailers.
    let mut c = h.clients();
    let w = world(&mut c).await;
    let mut ids = vec![enroll(&mut c, &w.user.id, &w.published.id).await.unwrap().id];
    for email in ["b@example.com", "c@example.com"] {
        let user = crate::fixtures::user(&mut c, email).await;
        ids.push(enroll(&mut c, &user.id, &w.published.id).await.unwrap().id);
    }
    let export = "/coursewire.v1.EnrollmentService/ExportEnrollments";
    for content_type in [BINARY, TEXT] {
        let r = call(h, Some(&h.key), export, content_type, &ExportEnrollmentsRequest::default()).await;
        assert_eq!(r.trailers.get("grpc-status").map(String::as_str), Some("0"), "{:?}", r.trailers);
        let mut got: Vec<String> = r.messages.iter().map(|m| Enrollment::decode(m.as_slice()).unwrap().id).collect();
        got.sort();
        ids.sort();
        assert_eq!(got, ids, "{content_type}: every enrollment, one message each");
    }
}

crate::backend_tests!(browsers_call_over_grpc_web);
