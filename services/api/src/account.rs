//! AccountService: an authenticated ping and a description of the calling key.
use std::sync::Arc;

use coursewire_proto::v1::account_service_server::AccountService;
use coursewire_proto::v1::{PingRequest, WhoAmIRequest, WhoAmIResponse};
use pbjson_types::Empty;
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::layers::auth::caller;

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
}
