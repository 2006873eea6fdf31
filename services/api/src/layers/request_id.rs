//! The request id layer (outermost, so the gateway's own answers have one too): every call
//! gets an id, the caller's `x-request-id` when it sent an acceptable one, else a new
//! `req_…`. The response carries it in
//! `x-request-id`, errors in `ErrorInfo.metadata.request_id`, and the warnings and errors
//! logged while serving the call in a `request_id` field. The call also gets its place in
//! a trace: a child of the caller's W3C `traceparent`, or a new trace (see `core::trace`).
//! A `tracing` span per call is made only when spans are exported (`--otlp-endpoint`): on
//! the Ping benchmark a span per call cost several percent of the throughput. It is named
//! by the path; the gateway renames it after the gRPC method an HTTP/JSON call becomes.
//! Errors made while serving the call link to this server's error reference
//! (`core::error::linking_to`).
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::HeaderValue;
use tracing::Instrument;

use coursewire_core::trace::{self, TraceContext};
use coursewire_core::{error, request_id};

pub const HEADER: &str = "x-request-id";

/// A new id: `req_` + this process's random prefix + a counter. Unique across replicas
/// (64 random bits per process) and cheap, as it is made on every call: no lock, no clock.
fn new_request_id() -> String {
    static PREFIX: LazyLock<u64> = LazyLock::new(rand::random);
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("req_{:016x}{:08x}", *PREFIX, NEXT.fetch_add(1, Ordering::Relaxed))
}

#[derive(Clone)]
pub struct RequestIdLayer {
    /// Where the server is reached: the errors of its calls link to `<it>/docs/errors`.
    public_url: Arc<str>,
}

impl RequestIdLayer {
    pub fn new(public_url: &str) -> Self {
        RequestIdLayer { public_url: public_url.into() }
    }
}

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> RequestIdService<S> {
        RequestIdService { inner, public_url: self.public_url.clone() }
    }
}

#[derive(Clone)]
pub struct RequestIdService<S> {
    inner: S,
    public_url: Arc<str>,
}

impl<S, B, R> tower::Service<http::Request<B>> for RequestIdService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let id = req
            .headers()
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| request_id::is_acceptable(v))
            .map(str::to_string)
            .unwrap_or_else(new_request_id);
        let header = HeaderValue::from_str(&id).expect("acceptable ids are header-safe");
        let parent = req.headers().get("traceparent").and_then(|v| v.to_str().ok()).and_then(TraceContext::parse);
        // An exported span per call only with `--otlp-endpoint`; its fields are filled in as
        // the call goes (the organization and key by auth, the status here).
        let span = trace::exporting().then(|| {
            tracing::info_span!(
                target: "coursewire::rpc",
                "grpc call",
                otel.name = %req.uri().path().trim_start_matches('/'),
                otel.kind = "server",
                rpc.system = "grpc",
                organization = tracing::field::Empty,
                api_key = tracing::field::Empty,
                rpc.grpc.status_code = tracing::field::Empty,
            )
        });
        let context = trace::continue_in(span.as_ref(), parent);
        // The inner service was polled ready and is called now (no clone of the stack below);
        // the work happens when its future is polled, inside the request id's scope.
        let response = self.inner.call(req);
        let call = request_id::scope(
            id,
            trace::scope(
                context,
                error::linking_to(self.public_url.clone(), async move {
                    let mut response = response.await?;
                    response.headers_mut().insert(HEADER, header);
                    Ok(response)
                }),
            ),
        );
        match span {
            None => Box::pin(call),
            Some(span) => {
                let recorder = span.clone();
                Box::pin(
                    async move {
                        let response: Result<http::Response<R>, S::Error> = call.await;
                        if let Ok(response) = &response {
                            // Errors answered at once carry their code in the headers; the
                            // rest end with status 0 in the trailers.
                            let code = response.headers().get("grpc-status").and_then(|v| v.to_str().ok());
                            recorder.record("rpc.grpc.status_code", code.unwrap_or("0"));
                        }
                        response
                    }
                    .instrument(span),
                )
            }
        }
    }
}
