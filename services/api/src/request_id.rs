//! The request id layer (outermost): every call gets an id, the caller's `x-request-id`
//! when it sent an acceptable one, else a new `req_…`. The response carries it in
//! `x-request-id`, errors in `ErrorInfo.metadata.request_id`, and log lines written while
//! serving the call carry it through the `rpc` span.
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::HeaderValue;
use tracing::Instrument;

use crate::ids::new_id;
use coursewire_core::request_id;

pub const HEADER: &str = "x-request-id";

#[derive(Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> RequestIdService<S> {
        RequestIdService { inner }
    }
}

#[derive(Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for RequestIdService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
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
        // Take the service that was polled ready; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let id = req
            .headers()
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| request_id::is_acceptable(v))
            .map(str::to_string)
            .unwrap_or_else(|| new_id("req"));
        let span = tracing::info_span!("rpc", method = %req.uri().path(), request_id = %id);
        let header = HeaderValue::from_str(&id).expect("acceptable ids are header-safe");
        Box::pin(
            request_id::scope(id, async move {
                let mut response = inner.call(req).await?;
                response.headers_mut().insert(HEADER, header);
                Ok(response)
            })
            .instrument(span),
        )
    }
}
