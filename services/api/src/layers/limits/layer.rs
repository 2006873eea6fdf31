//! The rate limit layer, inside the auth layer (it needs the `Caller`). It charges one unit
//! of the call's class before the call; calls the policy table charges per item (batches)
//! are charged by their handler instead (`Limiter::admit_items`), with the same limiter, so
//! a rejected batch counts nothing. Every call it sees is also counted by its outcome
//! (`Limiter::count_call`).
use std::sync::Arc;

use tonic::Status;

use super::{Limiter, Prepaid};
use crate::layers::around::{Inner, Next, Response, Rule};
use crate::layers::auth::Caller;
use crate::layers::grpc_status;
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
        if req.extensions().get::<Prepaid>().is_some() {
            return next.run(req).await;
        }
        let limiter = Arc::clone(&self.0);
        let org = caller.org().to_string();
        let count = move |response: Response| {
            grpc_status::on_code(response, move |code| limiter.count_call(&org, policy.class, code))
        };
        if policy.charge == Charge::PerItem {
            return next.run(req).await.map(count);
        }
        let verdict = match self.0.admit(&caller, policy.class, 1).await {
            Ok(v) => v,
            Err(e) => return Ok(count(Status::from(e).into_http())),
        };
        let mut response = match &verdict {
            Some(v) if !v.allowed => Status::from(v.rejection()).into_http(),
            _ => next.run(req).await?,
        };
        if let Some(v) = verdict {
            v.headers(response.headers_mut());
        }
        Ok(count(response))
    }
}
