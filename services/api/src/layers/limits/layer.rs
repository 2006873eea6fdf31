//! The rate limit layer, inside the auth layer (it needs the `Caller`). It charges one unit
//! of the call's class before the call; calls the policy table charges per item (batches)
//! are charged by their handler instead (`Limiter::admit_items`), with the same limiter, so
//! a rejected batch counts nothing.
use std::sync::Arc;

use tonic::Status;

use super::Limiter;
use crate::layers::around::{Inner, Next, Response, Rule};
use crate::layers::auth::Caller;
use crate::policy::Charge;

/// The rate limit layer's rule (run by `Around`).
#[derive(Clone)]
pub struct RateLimit(pub Arc<Limiter>);

impl Rule for RateLimit {
    async fn call<S: Inner<B>, B: Send + 'static>(
        self,
        req: http::Request<B>,
        next: Next<S>,
    ) -> Result<Response, S::Error> {
        // Health, reflection and unknown methods carry no policy: not limited.
        let caller = req.extensions().get::<Caller>().cloned();
        let Some((caller, policy)) = caller.and_then(|c| c.policy.map(|p| (c, p))) else {
            return next.run(req).await;
        };
        if policy.charge == Charge::PerItem {
            return next.run(req).await;
        }
        let verdict = match self.0.admit(&caller, policy.class, 1).await {
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
                let mut response = next.run(req).await?;
                v.headers(response.headers_mut());
                Ok(response)
            }
            None => next.run(req).await,
        }
    }
}
