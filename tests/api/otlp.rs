//! `--otlp-endpoint`: the real all-in-one binary exports its spans to an OTLP/gRPC collector
//! (a tonic server here, speaking the OpenTelemetry protocol): one span per call, with the
//! organization, the key's public prefix and the status, in the caller's trace; and one
//! span per webhook attempt, a child of the call's, whose id the receiver gets in
//! `traceparent`. The key's secret is in no attribute.
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coursewire_core::trace::TraceContext;
use coursewire_proto::v1::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::processes::{all_in_one, clients};
use crate::receiver::{Receiver, Reply};

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request.into_inner().resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
        self.0.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span.attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match value {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        other => format!("{other:?}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_calls_and_attempts_go_to_the_collector() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tonic::transport::Server::builder().add_service(TraceServiceServer::new(collector.clone()));
    tokio::spawn(server.serve_with_incoming(incoming));

    let endpoint = format!("http://{collector_addr}");
    let mut app = all_in_one(&["--otlp-endpoint", &endpoint, "--webhook-allow-private-targets"]);
    let key = app.key.clone();
    let mut c = clients(app.port, &key).await;
    let receiver = Receiver::start(|_| Reply::status(204)).await;
    crate::webhooks::create_hook(&mut c, &receiver.url, &["user.created"]).await;
    let caller = TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
    let user = User { email: "traced@example.com".into(), ..Default::default() };
    let mut request = tonic::Request::new(CreateUserRequest { user: Some(user), ..Default::default() });
    request.metadata_mut().insert("traceparent", caller.to_string().parse().unwrap());
    c.users.create_user(request).await.unwrap();
    let post = receiver.wait_for(1, Duration::from_secs(10)).await.remove(0);
    let sent = TraceContext::parse(post.header("traceparent")).unwrap();

    // SIGTERM: the process sends its last spans before it exits.
    Command::new("kill").arg("-TERM").arg(app.server.0.id().to_string()).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while app.server.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no exit within 15 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let spans = collector.0.lock().unwrap().clone();
    let trace_id = caller.trace_id.to_be_bytes().to_vec();
    let call = spans
        .iter()
        .find(|s| s.trace_id == trace_id && s.name == "coursewire.v1.UserService/CreateUser")
        .unwrap_or_else(|| panic!("no CreateUser span in the caller's trace: {spans:#?}"));
    assert_eq!(call.parent_span_id, caller.span_id.to_be_bytes().to_vec(), "a child of the caller's span");
    assert_eq!(attribute(call, "organization").as_deref(), Some("default"));
    assert_eq!(attribute(call, "rpc.grpc.status_code").as_deref(), Some("0"));
    let prefix = attribute(call, "api_key").expect("the key's prefix");
    assert_eq!(format!("sk_{prefix}"), key[..11], "only the key's public prefix (its first 8 characters)");
    let attempt = spans
        .iter()
        .find(|s| s.trace_id == trace_id && s.name == "webhook attempt")
        .unwrap_or_else(|| panic!("no attempt span in the caller's trace: {spans:#?}"));
    assert_eq!(attempt.parent_span_id, call.span_id, "the attempt is a child of the call");
    assert_eq!(attempt.span_id, sent.span_id.to_be_bytes().to_vec(), "the receiver is told the attempt's span");
    assert_eq!(attribute(attempt, "http.response.status_code").as_deref(), Some("204"));
    for span in &spans {
        assert!(!format!("{span:?}").contains(&key), "the key's secret in {span:?}");
    }
}
