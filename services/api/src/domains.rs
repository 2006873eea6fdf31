//! DomainService: the hostnames an organization serves courses on.
use std::sync::Arc;

use coursewire_proto::v1::domain_service_server::DomainService;
use coursewire_proto::v1::*;
use pbjson_types::Empty;
use sqlx::Row;
use sqlx::any::AnyRow;
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::clock::to_timestamp;
use crate::idempotency::Idempotency;
use crate::layers::auth::caller;
use crate::page::Page;
use crate::resource::{Table, check_etag, etag, mask_paths};
use coursewire_core::error::{ApiError, ApiResult, Reason};
use coursewire_core::ids::{kind, new_id};
use coursewire_core::store::{Tx, is_unique_violation};
use coursewire_core::validate::{Violations, is_hostname};

pub struct DomainApi(pub Arc<AppState>);

pub const DOMAINS: Table = Table {
    name: "domains",
    kind: "domain",
    events: "domain",
    columns: "id, hostname, name, created_at, updated_at, sequence",
};

fn from_row(r: &AnyRow) -> Result<(Domain, i64), sqlx::Error> {
    let sequence = r.try_get("sequence")?;
    let domain = Domain {
        id: r.try_get("id")?,
        hostname: r.try_get("hostname")?,
        name: r.try_get("name")?,
        created_at: Some(to_timestamp(r.try_get("created_at")?)),
        updated_at: Some(to_timestamp(r.try_get("updated_at")?)),
        etag: etag(sequence),
    };
    Ok((domain, sequence))
}

fn validate(d: &mut Domain, v: &mut Violations) {
    d.hostname = d.hostname.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.hostname.is_empty() {
        v.add("domain.hostname", "is required");
    } else if !is_hostname(&d.hostname) {
        v.add("domain.hostname", "must be a DNS hostname like learn.example.com");
    }
    v.text("domain.name", &d.name, 200);
}

/// Inserts the domain, or updates it if it is still at `sequence`; false when it moved on.
async fn save(tx: &mut Tx, org: &str, d: &Domain, sequence: i64, now: i64, create: bool) -> ApiResult<bool> {
    let q = if create {
        sqlx::query("INSERT INTO domains (id, org_id, hostname, name, created_at, updated_at, sequence) VALUES ($1, $2, $3, $4, $5, $5, 1)")
            .bind(&d.id)
            .bind(org)
            .bind(&d.hostname)
            .bind(&d.name)
            .bind(now)
    } else {
        sqlx::query("UPDATE domains SET hostname = $3, name = $4, updated_at = $5, sequence = sequence + 1 WHERE id = $1 AND org_id = $2 AND sequence = $6")
            .bind(&d.id)
            .bind(org)
            .bind(&d.hostname)
            .bind(&d.name)
            .bind(now)
            .bind(sequence)
    };
    match q.execute(&mut **tx).await {
        Ok(done) => Ok(done.rows_affected() == 1),
        Err(e) if is_unique_violation(&e) => {
            Err(ApiError::new(Reason::DomainExists, format!("a domain with hostname {:?} already exists", d.hostname)))
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn fetch<'e>(
    conn: impl sqlx::Executor<'e, Database = sqlx::Any>,
    org: &str,
    id: &str,
) -> ApiResult<(Domain, i64)> {
    Ok(from_row(&DOMAINS.get(conn, org, id).await?)?)
}

fn check(field: &str, id: &str) -> ApiResult<()> {
    coursewire_core::ids::require(field, kind::DOMAIN, id)
}

#[tonic::async_trait]
impl DomainService for DomainApi {
    async fn create_domain(&self, req: Request<CreateDomainRequest>) -> Result<Response<Domain>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let mut d = r.domain.clone().unwrap_or_default();
        let mut v = Violations::default();
        validate(&mut d, &mut v);
        v.finish()?;
        let idem = Idempotency::new(who.org(), &r.request_id, "CreateDomain", &r)?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        if let Some(done) = Idempotency::replay(&idem, &mut tx, now).await? {
            return Ok(Response::new(done));
        }
        d.id = new_id(kind::DOMAIN);
        d.created_at = Some(to_timestamp(now));
        d.updated_at = d.created_at;
        d.etag = etag(1);
        save(&mut tx, who.org(), &d, 0, now, true).await?;
        DOMAINS.record(&mut tx, who.org(), "created", (&d.id, 1), &d, now).await?;
        Idempotency::save(&idem, &mut tx, &d, now).await?;
        tx.commit().await?;
        Ok(Response::new(d))
    }

    async fn get_domain(&self, req: Request<GetDomainRequest>) -> Result<Response<Domain>, Status> {
        let who = caller(&req)?;
        check("id", &req.get_ref().id)?;
        Ok(Response::new(fetch(self.0.db.pool(), who.org(), &req.get_ref().id).await?.0))
    }

    async fn list_domains(&self, req: Request<ListDomainsRequest>) -> Result<Response<ListDomainsResponse>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        let page = Page::new(&self.0.tokens, r.page_size, &r.page_token, &format!("domains|{}", who.org()))?;
        let rows = DOMAINS.page(self.0.db.pool(), who.org(), &page).await?;
        let mut domains =
            rows.iter().map(|r| from_row(r).map(|d| d.0)).collect::<Result<Vec<_>, _>>().map_err(ApiError::from)?;
        let next_page_token = page.finish(&mut domains, |d| &d.id);
        Ok(Response::new(ListDomainsResponse { domains, next_page_token }))
    }

    async fn update_domain(&self, req: Request<UpdateDomainRequest>) -> Result<Response<Domain>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let patch = r.domain.unwrap_or_default();
        check("domain.id", &patch.id)?;
        let paths = mask_paths(r.update_mask.as_ref(), &["hostname", "name"])?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        let (mut d, seq) = fetch(&mut *tx, who.org(), &patch.id).await?;
        check_etag(&patch.etag, seq, "domain")?;
        for p in paths {
            match p {
                "hostname" => d.hostname = patch.hostname.clone(),
                _ => d.name = patch.name.clone(),
            }
        }
        let mut v = Violations::default();
        validate(&mut d, &mut v);
        v.finish()?;
        if !save(&mut tx, who.org(), &d, seq, now, false).await? {
            return Err(ApiError::etag_mismatch("domain").into());
        }
        let seq = seq + 1;
        d.etag = etag(seq);
        d.updated_at = Some(to_timestamp(now));
        DOMAINS.record(&mut tx, who.org(), "updated", (&d.id, seq), &d, now).await?;
        tx.commit().await?;
        Ok(Response::new(d))
    }

    async fn delete_domain(&self, req: Request<DeleteDomainRequest>) -> Result<Response<Empty>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        check("id", &r.id)?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        let (mut d, seq) = fetch(&mut *tx, who.org(), &r.id).await?;
        check_etag(&r.etag, seq, "domain")?;
        let published: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM published_courses WHERE domain_id = $1")
            .bind(&r.id)
            .fetch_one(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        if published > 0 {
            return Err(ApiError::new(
                Reason::DomainHasPublishedCourses,
                format!("{published} course(s) are published to this domain"),
            )
            .help("delete its published courses (PublishedCourseService.DeletePublishedCourse) first")
            .into());
        }
        crate::domain_access::delete_where(&mut tx, who.org(), "domain_id", &r.id, now).await?;
        DOMAINS.delete(&mut tx, who.org(), &r.id, seq).await?;
        let seq = seq + 1;
        d.etag = etag(seq);
        DOMAINS.record(&mut tx, who.org(), "deleted", (&d.id, seq), &d, now).await?;
        tx.commit().await?;
        Ok(Response::new(Empty {}))
    }
}
