//! ApiKeyService: the calling organization's keys. Secrets are shown once, at creation.
use std::sync::Arc;

use coursewire_proto::v1::api_key_service_server::ApiKeyService;
use coursewire_proto::v1::*;
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::clock::opt_timestamp;
use crate::layers::auth::{self, KeyRecord, NewKey, caller};
use crate::page::Page;
use crate::resource::{mask_paths, opt_time};
use coursewire_core::error::ApiResult;
use coursewire_core::validate::Violations;

pub struct ApiKeyApi(pub Arc<AppState>);

pub fn to_proto(k: &KeyRecord) -> ApiKey {
    ApiKey {
        id: k.id.clone(),
        prefix: k.prefix.clone(),
        label: k.label.clone(),
        scopes: k.scopes.0.clone(),
        allowed_cidrs: k.allowed_cidrs.iter().map(ToString::to_string).collect(),
        rate_limit: k.rate_limit.clone(),
        created_at: opt_timestamp(Some(k.created_at)),
        last_used_at: opt_timestamp(k.last_used_at()),
        expires_at: opt_timestamp(k.expires_at),
        revoked_at: opt_timestamp(k.revoked_at),
    }
}

fn check(id: &str) -> ApiResult<()> {
    coursewire_core::ids::require("id", "key", id)
}

#[tonic::async_trait]
impl ApiKeyService for ApiKeyApi {
    async fn create_api_key(
        &self,
        req: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        let who = caller(&req)?;
        let k = req.into_inner().api_key.unwrap_or_default();
        let mut v = Violations::default();
        let expires_at = opt_time(&mut v, "api_key.expires_at", k.expires_at.as_ref());
        v.finish()?;
        let new = NewKey {
            org_id: Some(who.org().into()),
            label: k.label,
            scopes: k.scopes,
            allowed_cidrs: k.allowed_cidrs,
            expires_at,
            rate_limit: k.rate_limit,
        };
        let (record, secret) = auth::create_key(&self.0.db, new, self.0.clock.now_ms(), Some(&who.key)).await?;
        Ok(Response::new(CreateApiKeyResponse { api_key: Some(to_proto(&record)), secret }))
    }

    async fn get_api_key(&self, req: Request<GetApiKeyRequest>) -> Result<Response<ApiKey>, Status> {
        let who = caller(&req)?;
        check(&req.get_ref().id)?;
        Ok(Response::new(to_proto(&auth::get_key(&self.0.db, who.org(), &req.get_ref().id).await?)))
    }

    async fn list_api_keys(&self, req: Request<ListApiKeysRequest>) -> Result<Response<ListApiKeysResponse>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        let page = Page::new(
            &self.0.tokens,
            r.page_size,
            &r.page_token,
            &format!("keys|{}|{}", who.org(), r.include_revoked),
        )?;
        let mut keys = auth::list_keys(&self.0.db, who.org(), &page.after, page.limit(), r.include_revoked).await?;
        let next_page_token = page.finish(&mut keys, |k| &k.id);
        Ok(Response::new(ListApiKeysResponse { api_keys: keys.iter().map(to_proto).collect(), next_page_token }))
    }

    async fn update_api_key(&self, req: Request<UpdateApiKeyRequest>) -> Result<Response<ApiKey>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let patch = r.api_key.unwrap_or_default();
        check(&patch.id)?;
        let paths = mask_paths(r.update_mask.as_ref(), &["label", "scopes", "allowed_cidrs", "rate_limit"])?;
        let current = auth::get_key(&self.0.db, who.org(), &patch.id).await?;
        let mut k = NewKey {
            org_id: Some(who.org().into()),
            label: current.label.clone(),
            scopes: current.scopes.0.clone(),
            allowed_cidrs: current.allowed_cidrs.iter().map(ToString::to_string).collect(),
            expires_at: current.expires_at,
            rate_limit: current.rate_limit.clone(),
        };
        for p in paths {
            match p {
                "label" => k.label = patch.label.clone(),
                "scopes" => k.scopes = patch.scopes.clone(),
                "allowed_cidrs" => k.allowed_cidrs = patch.allowed_cidrs.clone(),
                _ => k.rate_limit = patch.rate_limit.clone(),
            }
        }
        Ok(Response::new(to_proto(&auth::update_key(&self.0.db, &current, &k, &who.key, self.0.clock.now_ms()).await?)))
    }

    async fn revoke_api_key(&self, req: Request<RevokeApiKeyRequest>) -> Result<Response<ApiKey>, Status> {
        let who = caller(&req)?;
        check(&req.get_ref().id)?;
        auth::revoke_key(&self.0.db, who.org(), &req.get_ref().id, self.0.clock.now_ms(), Some(&who.key)).await?;
        Ok(Response::new(to_proto(&auth::get_key(&self.0.db, who.org(), &req.get_ref().id).await?)))
    }
}
