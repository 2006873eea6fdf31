//! What the pipeline's layers share: tower's plumbing, written once. Most layers are a rule
//! run around the call: answer it themselves, or pass it on (`Next`) and perhaps look at the
//! response. `Around(rule)` is the tower layer that runs such a rule, so the layer's file
//! holds the rule alone. The request id, metrics and gateway layers are written out in full:
//! they wrap the call's future or body, or change its types, which a rule would only hide.
use std::future::Future;
use std::task::{Context, Poll};

use futures::future::BoxFuture;

/// What the layers below the gateway answer (tonic's response).
pub type Response = http::Response<tonic::body::Body>;

/// The stack below a layer.
pub trait Inner<B>: tower::Service<http::Request<B>, Response = Response, Future: Send> + Send + 'static {}

impl<T, B> Inner<B> for T where T: tower::Service<http::Request<B>, Response = Response, Future: Send> + Send + 'static {}

/// The rest of the stack, polled ready, for this one call.
pub struct Next<S>(S);

impl<S> Next<S> {
    /// Passes the call on.
    pub fn run<B>(mut self, req: http::Request<B>) -> S::Future
    where
        S: Inner<B>,
    {
        self.0.call(req)
    }
}

/// A layer's rule: what it does with one call.
pub trait Rule: Clone + Send + 'static {
    fn call<S: Inner<B>, B: Send + 'static>(
        self,
        req: http::Request<B>,
        next: Next<S>,
    ) -> impl Future<Output = Result<Response, S::Error>> + Send;
}

/// The tower layer that runs the rule `R` around every call.
#[derive(Clone)]
pub struct Around<R>(pub R);

impl<R: Clone, S> tower::Layer<S> for Around<R> {
    type Service = AroundService<R, S>;
    fn layer(&self, inner: S) -> Self::Service {
        AroundService { rule: self.0.clone(), inner }
    }
}

#[derive(Clone)]
pub struct AroundService<R, S> {
    rule: R,
    inner: S,
}

impl<R, S, B> tower::Service<http::Request<B>> for AroundService<R, S>
where
    R: Rule,
    S: Inner<B> + Clone,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The rule may call on later (after an await): take the service that was polled
        // ready, as tower requires, and leave a fresh clone for the next call.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        Box::pin(self.rule.clone().call(req, Next(ready)))
    }
}
