//! DomainUserService: a user's access to a domain (unique per pair).
use std::sync::Arc;

use coursewire_proto::v1::domain_user_service_server::DomainUserService;
use coursewire_proto::v1::*;
use pbjson_types::Empty;
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::clock::{opt_timestamp, to_timestamp};
use crate::domain_access::{COLUMNS, fetch, from_row, insert};
use crate::idempotency::Idempotency;
use crate::layers::auth::caller;
use crate::page::Page;
use crate::resource::{check_etag, delete_at, etag, flag, mask_paths, opt_time};
use coursewire_core::error::{ApiError, ApiResult, Reason};
use coursewire_core::events::{self, Change};
use coursewire_core::ids::{check_id, kind};
use coursewire_core::validate::Violations;

pub struct DomainUserApi(pub Arc<AppState>);

fn check(field: &str, id: &str) -> ApiResult<()> {
    coursewire_core::ids::require(field, kind::DOMAIN_USER, id)
}

#[tonic::async_trait]
impl DomainUserService for DomainUserApi {
    async fn create_domain_user(&self, req: Request<CreateDomainUserRequest>) -> Result<Response<DomainUser>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let du = r.domain_user.clone().unwrap_or_default();
        let mut v = Violations::default();
        check_id(&mut v, "domain_user.domain_id", kind::DOMAIN, &du.domain_id);
        check_id(&mut v, "domain_user.user_id", kind::USER, &du.user_id);
        let expires_at = opt_time(&mut v, "domain_user.expires_at", du.expires_at.as_ref());
        v.finish()?;
        let idem = Idempotency::new(who.org(), &r.request_id, "CreateDomainUser", &r)?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        if let Some(done) = Idempotency::replay(&idem, &mut tx, now).await? {
            return Ok(Response::new(done));
        }
        crate::domains::fetch(&mut *tx, who.org(), &du.domain_id).await?;
        crate::users::fetch(&mut *tx, who.org(), &du.user_id).await?;
        let created = insert(&mut tx, who.org(), &du.domain_id, &du.user_id, !r.inactive, expires_at, now).await?;
        let Some(created) = created else {
            return Err(ApiError::new(Reason::DomainUserExists, "the user already has access to this domain").into());
        };
        Idempotency::save(&idem, &mut tx, &created, now).await?;
        tx.commit().await?;
        Ok(Response::new(created))
    }

    async fn get_domain_user(&self, req: Request<GetDomainUserRequest>) -> Result<Response<DomainUser>, Status> {
        let who = caller(&req)?;
        check("id", &req.get_ref().id)?;
        Ok(Response::new(fetch(self.0.db.pool(), who.org(), &req.get_ref().id).await?.0))
    }

    async fn list_domain_users(
        &self,
        req: Request<ListDomainUsersRequest>,
    ) -> Result<Response<ListDomainUsersResponse>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        let mut v = Violations::default();
        if !r.domain_id.is_empty() {
            check_id(&mut v, "domain_id", kind::DOMAIN, &r.domain_id);
        }
        if !r.user_id.is_empty() {
            check_id(&mut v, "user_id", kind::USER, &r.user_id);
        }
        v.finish()?;
        let page = Page::new(
            &self.0.tokens,
            r.page_size,
            &r.page_token,
            &format!("domain_users|{}|{}|{}", who.org(), r.domain_id, r.user_id),
        )?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} WHERE org_id = $1 AND id > $2 AND ($3 = '' OR domain_id = $3) AND ($4 = '' OR user_id = $4) ORDER BY id LIMIT $5"
        )))
        .bind(who.org())
        .bind(&page.after)
        .bind(&r.domain_id)
        .bind(&r.user_id)
        .bind(page.limit())
        .fetch_all(self.0.db.pool())
        .await
        .map_err(ApiError::from)?;
        let mut domain_users =
            rows.iter().map(|r| from_row(r).map(|d| d.0)).collect::<Result<Vec<_>, _>>().map_err(ApiError::from)?;
        let next_page_token = page.finish(&mut domain_users, |d| &d.id);
        Ok(Response::new(ListDomainUsersResponse { domain_users, next_page_token }))
    }

    async fn update_domain_user(&self, req: Request<UpdateDomainUserRequest>) -> Result<Response<DomainUser>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let patch = r.domain_user.unwrap_or_default();
        check("domain_user.id", &patch.id)?;
        let paths = mask_paths(r.update_mask.as_ref(), &["active", "expires_at"])?;
        let mut v = Violations::default();
        let expires_at = opt_time(&mut v, "domain_user.expires_at", patch.expires_at.as_ref());
        v.finish()?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        let (mut du, seq) = fetch(&mut *tx, who.org(), &patch.id).await?;
        check_etag(&patch.etag, seq, "domain user")?;
        for p in paths {
            match p {
                "active" => du.active = patch.active,
                _ => du.expires_at = opt_timestamp(expires_at),
            }
        }
        let done = sqlx::query("UPDATE domain_users SET active = $1, expires_at = $2, updated_at = $3, sequence = sequence + 1 WHERE id = $4 AND sequence = $5")
            .bind(flag(du.active))
            .bind(du.expires_at.as_ref().and_then(crate::clock::from_timestamp))
            .bind(now)
            .bind(&du.id)
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        if done.rows_affected() == 0 {
            return Err(ApiError::etag_mismatch("domain user").into());
        }
        du.etag = etag(seq + 1);
        du.updated_at = Some(to_timestamp(now));
        events::record(
            &mut tx,
            Change {
                org: who.org(),
                kind: "domain_user.updated",
                resource_id: &du.id,
                sequence: seq + 1,
                data: &du,
                now,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Response::new(du))
    }

    async fn delete_domain_user(&self, req: Request<DeleteDomainUserRequest>) -> Result<Response<Empty>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        check("id", &r.id)?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        let (mut du, seq) = fetch(&mut *tx, who.org(), &r.id).await?;
        check_etag(&r.etag, seq, "domain user")?;
        delete_at(&mut tx, "domain_users", "domain user", who.org(), &du.id, seq).await?;
        du.etag = etag(seq + 1);
        events::record(
            &mut tx,
            Change {
                org: who.org(),
                kind: "domain_user.deleted",
                resource_id: &du.id,
                sequence: seq + 1,
                data: &du,
                now,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Response::new(Empty {}))
    }
}
