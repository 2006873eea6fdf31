//! The gRPC status code of an answer, as a layer sees it: an error answered at once carries
//! it in its headers; any other answer in the trailers at the end of its body, which
//! `on_code` watches for. The metrics layer (by method) and the rate limit layer (calls per
//! organization, class and outcome) both read it here.
use std::pin::Pin;
use std::task::{Context, Poll};

pub const CANCELLED: usize = 1;
pub const UNKNOWN: usize = 2;

/// The code in a `grpc-status` header or trailer.
pub fn code(headers: &http::HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(value.parse().unwrap_or(UNKNOWN))
}

type Done = Box<dyn FnOnce(usize) + Send>;

/// Calls `done` once with the answer's code: now when its headers carry one, else when the
/// trailers pass (UNKNOWN if the body ends without them, CANCELLED if it is dropped before:
/// the caller went away).
pub fn on_code(
    response: http::Response<tonic::body::Body>,
    done: impl FnOnce(usize) + Send + 'static,
) -> http::Response<tonic::body::Body> {
    if let Some(code) = code(response.headers()) {
        done(code);
        return response;
    }
    response.map(|body| tonic::body::Body::new(Watched { body, done: Some(Box::new(done)) }))
}

struct Watched {
    body: tonic::body::Body,
    done: Option<Done>,
}

impl Watched {
    fn finish(&mut self, code: usize) {
        if let Some(done) = self.done.take() {
            done(code);
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
                if let Some(code) = frame.trailers_ref().and_then(code) {
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(_)) | None) => self.finish(UNKNOWN),
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
