//! Organizations (tenants): ids are slugs chosen at creation. OrganizationService is for
//! platform keys; the CLI calls the same functions.
use std::sync::Arc;

use coursewire_proto::v1::organization_service_server::OrganizationService;
use coursewire_proto::v1::*;
use sqlx::Row;
use sqlx::any::AnyRow;
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::clock::to_timestamp;
use crate::page::Page;
use crate::policy::windows::Overrides;
use crate::resource::{flag, mask_paths};
use coursewire_core::error::{ApiError, ApiResult, Reason};
use coursewire_core::store::{Db, is_unique_violation};
use coursewire_core::validate::Violations;

pub struct OrganizationApi(pub Arc<AppState>);

const COLUMNS: &str = "id, name, suspended, rate_limits, created_at, updated_at FROM organizations";

fn from_row(r: &AnyRow) -> Result<Organization, sqlx::Error> {
    let o = Overrides::from_json(r.try_get::<Option<String>, _>("rate_limits")?.as_deref());
    Ok(Organization {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        rate_limits: Some(RateLimits { read: o.read, modify: o.modify, remove: o.remove }),
        suspended: r.try_get::<i64, _>("suspended")? != 0,
        created_at: Some(to_timestamp(r.try_get("created_at")?)),
        updated_at: Some(to_timestamp(r.try_get("updated_at")?)),
    })
}

fn overrides(limits: Option<&RateLimits>) -> ApiResult<Overrides> {
    let l = limits.cloned().unwrap_or_default();
    let o = Overrides { read: l.read.trim().into(), modify: l.modify.trim().into(), remove: l.remove.trim().into() };
    o.validate().map_err(|(class, e)| ApiError::field(&format!("rate_limits.{class}"), e))?;
    Ok(o)
}

/// Creates an organization with a slug id (`acme`).
pub async fn create_org(db: &Db, id: &str, name: &str, now: i64) -> ApiResult<()> {
    let mut v = Violations::default();
    let slug_ok = (2..=63).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    v.check(slug_ok, "id", "must be 2-63 characters of a-z, 0-9 and '-', starting with a letter");
    v.optional_text("name", name, 200);
    v.finish()?;
    let name = if name.trim().is_empty() { id } else { name };
    let q = sqlx::query(
        "INSERT INTO organizations (id, name, suspended, created_at, updated_at) VALUES ($1, $2, 0, $3, $3)",
    )
    .bind(id)
    .bind(name)
    .bind(now);
    match q.execute(db.pool()).await {
        Err(e) if is_unique_violation(&e) => {
            Err(ApiError::new(Reason::OrganizationExists, format!("organization {id:?} already exists")))
        }
        r => r.map(|_| ()).map_err(Into::into),
    }
}

pub async fn get_org(db: &Db, id: &str) -> ApiResult<Organization> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} WHERE id = $1")))
        .bind(id)
        .fetch_optional(db.pool())
        .await?
        .ok_or_else(|| ApiError::not_found("organization", id))?;
    Ok(from_row(&row)?)
}

/// Writes name, suspended flag and rate limit overrides.
pub async fn save_org(db: &Db, org: &Organization, now: i64) -> ApiResult<Organization> {
    let mut v = Violations::default();
    v.text("organization.name", &org.name, 200);
    v.finish()?;
    let limits = overrides(org.rate_limits.as_ref())?;
    let json = (limits != Overrides::default()).then(|| serde_json::to_string(&limits).unwrap_or_default());
    let done = sqlx::query(
        "UPDATE organizations SET name = $1, suspended = $2, rate_limits = $3, updated_at = $4 WHERE id = $5",
    )
    .bind(&org.name)
    .bind(flag(org.suspended))
    .bind(json)
    .bind(now)
    .bind(&org.id)
    .execute(db.pool())
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("organization", &org.id));
    }
    get_org(db, &org.id).await
}

#[tonic::async_trait]
impl OrganizationService for OrganizationApi {
    async fn create_organization(
        &self,
        req: Request<CreateOrganizationRequest>,
    ) -> Result<Response<Organization>, Status> {
        let org = req.into_inner().organization.unwrap_or_default();
        overrides(org.rate_limits.as_ref())?;
        let now = self.0.clock.now_ms();
        create_org(&self.0.db, &org.id, &org.name, now).await?;
        let created = get_org(&self.0.db, &org.id).await?;
        let with_settings = Organization { name: created.name.clone(), ..org };
        Ok(Response::new(save_org(&self.0.db, &with_settings, now).await?))
    }

    async fn get_organization(&self, req: Request<GetOrganizationRequest>) -> Result<Response<Organization>, Status> {
        Ok(Response::new(get_org(&self.0.db, &req.get_ref().id).await?))
    }

    async fn list_organizations(
        &self,
        req: Request<ListOrganizationsRequest>,
    ) -> Result<Response<ListOrganizationsResponse>, Status> {
        let r = req.get_ref();
        let page = Page::new(&self.0.tokens, r.page_size, &r.page_token, "organizations")?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} WHERE id > $1 ORDER BY id LIMIT $2")))
            .bind(&page.after)
            .bind(page.limit())
            .fetch_all(self.0.db.pool())
            .await
            .map_err(ApiError::from)?;
        let mut organizations = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>().map_err(ApiError::from)?;
        let next_page_token = page.finish(&mut organizations, |o| &o.id);
        Ok(Response::new(ListOrganizationsResponse { organizations, next_page_token }))
    }

    async fn update_organization(
        &self,
        req: Request<UpdateOrganizationRequest>,
    ) -> Result<Response<Organization>, Status> {
        let r = req.into_inner();
        let patch = r.organization.unwrap_or_default();
        let paths = mask_paths(r.update_mask.as_ref(), &["name", "rate_limits", "suspended"])?;
        let mut org = get_org(&self.0.db, &patch.id).await?;
        for p in paths {
            match p {
                "name" => org.name = patch.name.clone(),
                "rate_limits" => org.rate_limits = patch.rate_limits.clone(),
                _ => org.suspended = patch.suspended,
            }
        }
        Ok(Response::new(save_org(&self.0.db, &org, self.0.clock.now_ms()).await?))
    }
}
