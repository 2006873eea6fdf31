//! AccountService: an authenticated ping, a description of the calling key, sign-in links to
//! the web console within the key's authority, the activity log and the calls of the last day.
use std::sync::Arc;

use coursewire_proto::v1::account_service_server::AccountService;
use coursewire_proto::v1::{
    ActivityEntry, CallCount, ConsoleLink, CreateConsoleLinkRequest, GetUsageRequest, ListActivityRequest,
    ListActivityResponse, PingRequest, Usage, WhoAmIRequest, WhoAmIResponse,
};
use pbjson_types::Empty;
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::clock::to_timestamp;
use crate::layers::auth::delegation::{self, Authority};
use crate::layers::auth::sessions::{self, Grant, LINK_TTL_MS};
use crate::layers::auth::{Scopes, caller};
use crate::page::Page;
use coursewire_core::activity;
use coursewire_core::error::ApiError;
use coursewire_core::ids::kind;

pub struct AccountApi(pub Arc<AppState>);

#[tonic::async_trait]
impl AccountService for AccountApi {
    async fn ping(&self, _req: Request<PingRequest>) -> Result<Response<Empty>, Status> {
        Ok(Response::new(Empty {}))
    }

    async fn who_am_i(&self, req: Request<WhoAmIRequest>) -> Result<Response<WhoAmIResponse>, Status> {
        let who = caller(&req)?;
        let limits = self.0.limiter.status(&who).await;
        let key = who.key;
        Ok(Response::new(WhoAmIResponse {
            organization_id: key.org_id.clone(),
            organization_name: key.org_name.clone(),
            key_id: key.id.clone(),
            key_prefix: key.prefix.clone(),
            key_label: key.label.clone(),
            scopes: key.scopes.0.clone(),
            platform: key.platform,
            limits,
        }))
    }

    async fn create_console_link(
        &self,
        req: Request<CreateConsoleLinkRequest>,
    ) -> Result<Response<ConsoleLink>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        let key = &who.key;
        let scopes = if r.scopes.is_empty() {
            key.scopes.clone()
        } else {
            Scopes::parse(&r.scopes).map_err(|m| ApiError::field("scopes", m))?
        };
        // The session it opens holds no more than this key: its scopes, allowlist, expiry and
        // limit (the session is checked against the key's allowlist and ends with the key).
        let wanted = Authority {
            scopes: &scopes,
            cidrs: &key.allowed_cidrs,
            expires_at: key.expires_at,
            limit: key.key_limit.as_deref(),
        };
        delegation::check(key, &wanted)?;
        let ttl_ms = match &r.ttl {
            None => LINK_TTL_MS,
            Some(d) if d.seconds < 0 || d.nanos < 0 => return Err(ApiError::field("ttl", "must be positive").into()),
            Some(d) => d.seconds.saturating_mul(1000) + i64::from(d.nanos) / 1_000_000,
        };
        // A session opened by a sign-in link of the operator's has no key behind it.
        let key_id = key.id.starts_with(&format!("{}_", kind::API_KEY)).then(|| key.id.clone());
        let grant = Grant { org_id: key.org_id.clone(), scopes, key_id };
        let (token, expires_at) = sessions::create_link(&self.0.db, &grant, ttl_ms, self.0.clock.now_ms()).await?;
        Ok(Response::new(ConsoleLink {
            url: format!("{}/console/signin?token={token}", self.0.console.base_url.trim_end_matches('/')),
            expire_time: Some(to_timestamp(expires_at)),
            scopes: grant.scopes.0,
        }))
    }

    async fn list_activity(&self, req: Request<ListActivityRequest>) -> Result<Response<ListActivityResponse>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        let (keys, webhooks) = (who.key.scopes.allows("keys", false), who.key.scopes.allows("webhooks", false));
        let scope = format!("activity|{}|{keys}|{webhooks}", who.org());
        let page = Page::new(&self.0.tokens, r.page_size, &r.page_token, &scope)?;
        let mut conn = self.0.db.pool().acquire().await.map_err(ApiError::from)?;
        let found = activity::list(&mut conn, who.org(), &page.after, page.limit(), keys, webhooks).await?;
        let mut entries: Vec<ActivityEntry> = found
            .into_iter()
            .map(|e| ActivityEntry {
                id: e.id,
                time: Some(to_timestamp(e.at)),
                actor: e.actor,
                action: e.action,
                target_id: e.target_id,
                summary: e.summary,
            })
            .collect();
        let next_page_token = page.finish(&mut entries, |e| &e.id);
        Ok(Response::new(ListActivityResponse { entries, next_page_token }))
    }

    async fn get_usage(&self, req: Request<GetUsageRequest>) -> Result<Response<Usage>, Status> {
        let who = caller(&req)?;
        let (counts, start) = self.0.limiter.calls(who.org()).await?;
        let calls = counts
            .into_iter()
            .map(|(class, outcome, n)| CallCount {
                call_class: class.as_str().into(),
                outcome: outcome.as_str().into(),
                count: n as i64,
            })
            .collect();
        Ok(Response::new(Usage { start_time: Some(to_timestamp(start)), calls }))
    }
}
