//! The rate limit as a tower layer, inside the auth layer (it needs the `Caller`). Calls
//! that count per item (batches) are charged by their handler instead, with the same
//! limiter, so a rejected batch counts nothing.
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;

use super::Limiter;
use crate::auth::Caller;
use crate::auth::policy::counts_per_item;

#[derive(Clone)]
pub struct RateLimitLayer(pub Arc<Limiter>);

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;
    fn layer(&self, inner: S) -> RateLimitService<S> {
        RateLimitService { limiter: self.0.clone(), inner }
    }
}

#[derive(Clone)]
pub struct RateLimitService<S> {
    limiter: Arc<Limiter>,
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for RateLimitService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
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
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Health, reflection and unknown methods carry no policy: not limited.
        let caller = req.extensions().get::<Caller>().cloned();
        let Some((caller, class)) = caller.and_then(|c| c.policy.map(|p| (c, p.class))) else {
            return Box::pin(inner.call(req));
        };
        if counts_per_item(req.uri().path()) {
            return Box::pin(inner.call(req));
        }
        let limiter = self.limiter.clone();
        Box::pin(async move {
            let verdict = match limiter.admit(&caller, class, 1).await {
                Ok(v) => v,
                Err(e) => return Ok(Status::from(e).into_http()),
            };
            match verdict {
                Some(v) if !v.allowed => {
                    let mut response = Status::from(v.rejection()).into_http();
                    v.headers(response.headers_mut());
                    Ok(response)
                }
                Some(v) => {
                    let mut response = inner.call(req).await?;
                    v.headers(response.headers_mut());
                    Ok(response)
                }
                None => inner.call(req).await,
            }
        })
    }
}
