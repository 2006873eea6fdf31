//! UserService: learners, unique per organization by case-insensitive email and by
//! optional external_id.
use std::sync::Arc;

use coursewire_proto::v1::lookup_user_request::Key;
use coursewire_proto::v1::user_service_server::UserService;
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
use crate::resource::{Table, check_etag, etag, flag, mask_paths};
use coursewire_core::error::{ApiError, ApiResult, Reason};
use coursewire_core::ids::{kind, new_id};
use coursewire_core::store::{Tx, is_unique_violation};
use coursewire_core::validate::{Violations, is_email};

pub struct UserApi(pub Arc<AppState>);

/// The columns every read selects.
macro_rules! columns {
    () => {
        "id, email, external_id, first_name, last_name, active, created_at, updated_at, sequence"
    };
}
const COLUMNS: &str = concat!(columns!(), " FROM users");

pub const USERS: Table = Table { name: "users", kind: "user", events: "user", columns: columns!() };

fn from_row(r: &AnyRow) -> Result<(User, i64), sqlx::Error> {
    let sequence = r.try_get("sequence")?;
    let user = User {
        id: r.try_get("id")?,
        email: r.try_get("email")?,
        external_id: r.try_get::<Option<String>, _>("external_id")?.unwrap_or_default(),
        first_name: r.try_get("first_name")?,
        last_name: r.try_get("last_name")?,
        active: r.try_get::<i64, _>("active")? != 0,
        created_at: Some(to_timestamp(r.try_get("created_at")?)),
        updated_at: Some(to_timestamp(r.try_get("updated_at")?)),
        etag: etag(sequence),
    };
    Ok((user, sequence))
}

fn validate(u: &mut User, v: &mut Violations) {
    u.email = u.email.trim().to_string();
    if u.email.is_empty() {
        v.add("user.email", "is required");
    } else if !is_email(&u.email) {
        v.add("user.email", "must be an email address like ada@example.com");
    }
    v.optional_text("user.external_id", &u.external_id, 128);
    v.optional_text("user.first_name", &u.first_name, 200);
    v.optional_text("user.last_name", &u.last_name, 200);
}

/// ALREADY_EXISTS naming the field and the existing user, when another user holds the
/// email or external_id.
async fn conflicts(tx: &mut Tx, org: &str, u: &User) -> ApiResult<()> {
    let by_email: Option<String> =
        sqlx::query_scalar("SELECT id FROM users WHERE org_id = $1 AND email_lower = $2 AND id <> $3")
            .bind(org)
            .bind(u.email.to_lowercase())
            .bind(&u.id)
            .fetch_optional(&mut **tx)
            .await?;
    if let Some(id) = by_email {
        return Err(
            ApiError::new(Reason::UserEmailExists, "a user with this email already exists").with("existing_id", id)
        );
    }
    let by_external: Option<String> =
        sqlx::query_scalar("SELECT id FROM users WHERE org_id = $1 AND external_id = $2 AND id <> $3")
            .bind(org)
            .bind(&u.external_id)
            .bind(&u.id)
            .fetch_optional(&mut **tx)
            .await?;
    if let Some(id) = by_external.filter(|_| !u.external_id.is_empty()) {
        return Err(ApiError::new(Reason::UserExternalIdExists, "a user with this external_id already exists")
            .with("existing_id", id));
    }
    Ok(())
}

/// Writes the user; duplicates by email or external_id are ALREADY_EXISTS naming the field.
async fn save(tx: &mut Tx, org: &str, u: &User, sequence: i64, now: i64, create: bool) -> ApiResult<bool> {
    let sql = if create {
        "INSERT INTO users (id, org_id, email, email_lower, external_id, first_name, last_name, active, created_at, updated_at, sequence) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, 1)"
    } else {
        "UPDATE users SET email = $3, email_lower = $4, external_id = $5, first_name = $6, last_name = $7, active = $8, \
         updated_at = $9, sequence = sequence + 1 WHERE id = $1 AND org_id = $2 AND sequence = $10"
    };
    conflicts(tx, org, u).await?;
    let external_id = Some(u.external_id.as_str()).filter(|s| !s.is_empty());
    let done = sqlx::query(sql)
        .bind(&u.id)
        .bind(org)
        .bind(&u.email)
        .bind(u.email.to_lowercase())
        .bind(external_id)
        .bind(&u.first_name)
        .bind(&u.last_name)
        .bind(flag(u.active))
        .bind(now)
        .bind(sequence)
        .execute(&mut **tx)
        .await;
    match done {
        Ok(done) => Ok(done.rows_affected() == 1),
        // Lost a race with a concurrent write (the pre-check in `conflicts` saw nothing).
        Err(e) if is_unique_violation(&e) => Err(if e.to_string().contains("email") {
            ApiError::new(Reason::UserEmailExists, "a user with this email already exists")
        } else {
            ApiError::new(Reason::UserExternalIdExists, "a user with this external_id already exists")
        }),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn fetch<'e>(
    conn: impl sqlx::Executor<'e, Database = sqlx::Any>,
    org: &str,
    id: &str,
) -> ApiResult<(User, i64)> {
    Ok(from_row(&USERS.get(conn, org, id).await?)?)
}

fn check(field: &str, id: &str) -> ApiResult<()> {
    coursewire_core::ids::require(field, kind::USER, id)
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn create_user(&self, req: Request<CreateUserRequest>) -> Result<Response<User>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let mut u = r.user.clone().unwrap_or_default();
        let mut v = Violations::default();
        validate(&mut u, &mut v);
        v.finish()?;
        let idem = Idempotency::new(who.org(), &r.request_id, "CreateUser", &r)?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        if let Some(done) = Idempotency::replay(&idem, &mut tx, now).await? {
            return Ok(Response::new(done));
        }
        u.id = new_id(kind::USER);
        u.active = !r.inactive;
        u.created_at = Some(to_timestamp(now));
        u.updated_at = u.created_at;
        u.etag = etag(1);
        save(&mut tx, who.org(), &u, 0, now, true).await?;
        USERS.record(&mut tx, who.org(), "created", (&u.id, 1), &u, now).await?;
        Idempotency::save(&idem, &mut tx, &u, now).await?;
        tx.commit().await?;
        Ok(Response::new(u))
    }

    async fn get_user(&self, req: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let who = caller(&req)?;
        check("id", &req.get_ref().id)?;
        Ok(Response::new(fetch(self.0.db.pool(), who.org(), &req.get_ref().id).await?.0))
    }

    async fn lookup_user(&self, req: Request<LookupUserRequest>) -> Result<Response<User>, Status> {
        let who = caller(&req)?;
        let mut v = Violations::default();
        match &req.get_ref().key {
            Some(Key::Email(e)) => v.optional_text("email", e, 254),
            Some(Key::ExternalId(x)) => v.optional_text("external_id", x, 128),
            None => {}
        }
        v.finish()?;
        let (column, value, field) = match &req.get_ref().key {
            Some(Key::Email(e)) if !e.trim().is_empty() => ("email_lower", e.trim().to_lowercase(), "email"),
            Some(Key::ExternalId(x)) if !x.is_empty() => ("external_id", x.clone(), "external_id"),
            _ => return Err(ApiError::field("key", "set email or external_id").into()),
        };
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} WHERE org_id = $1 AND {column} = $2")))
            .bind(who.org())
            .bind(&value)
            .fetch_optional(self.0.db.pool())
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::new(Reason::NotFound, format!("no user with this {field}")))?;
        Ok(Response::new(from_row(&row).map_err(ApiError::from)?.0))
    }

    async fn list_users(&self, req: Request<ListUsersRequest>) -> Result<Response<ListUsersResponse>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        let mut v = Violations::default();
        v.optional_text("email", &r.email, 254);
        v.finish()?;
        let email = r.email.trim().to_lowercase();
        let page = Page::new(&self.0.tokens, r.page_size, &r.page_token, &format!("users|{}|{email}", who.org()))?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} WHERE org_id = $1 AND id > $2 AND ($3 = '' OR email_lower = $3) ORDER BY id LIMIT $4"
        )))
        .bind(who.org())
        .bind(&page.after)
        .bind(&email)
        .bind(page.limit())
        .fetch_all(self.0.db.pool())
        .await
        .map_err(ApiError::from)?;
        let mut users =
            rows.iter().map(|r| from_row(r).map(|u| u.0)).collect::<Result<Vec<_>, _>>().map_err(ApiError::from)?;
        let next_page_token = page.finish(&mut users, |u| &u.id);
        Ok(Response::new(ListUsersResponse { users, next_page_token }))
    }

    async fn update_user(&self, req: Request<UpdateUserRequest>) -> Result<Response<User>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let patch = r.user.unwrap_or_default();
        check("user.id", &patch.id)?;
        let paths = mask_paths(r.update_mask.as_ref(), &["email", "external_id", "first_name", "last_name", "active"])?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        let (mut u, seq) = fetch(&mut *tx, who.org(), &patch.id).await?;
        check_etag(&patch.etag, seq, "user")?;
        for p in paths {
            match p {
                "email" => u.email = patch.email.clone(),
                "external_id" => u.external_id = patch.external_id.clone(),
                "first_name" => u.first_name = patch.first_name.clone(),
                "last_name" => u.last_name = patch.last_name.clone(),
                _ => u.active = patch.active,
            }
        }
        let mut v = Violations::default();
        validate(&mut u, &mut v);
        v.finish()?;
        if !save(&mut tx, who.org(), &u, seq, now, false).await? {
            return Err(ApiError::etag_mismatch("user").into());
        }
        u.etag = etag(seq + 1);
        u.updated_at = Some(to_timestamp(now));
        USERS.record(&mut tx, who.org(), "updated", (&u.id, seq + 1), &u, now).await?;
        tx.commit().await?;
        Ok(Response::new(u))
    }

    async fn delete_user(&self, req: Request<DeleteUserRequest>) -> Result<Response<Empty>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        check("id", &r.id)?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        let (mut u, seq) = fetch(&mut *tx, who.org(), &r.id).await?;
        check_etag(&r.etag, seq, "user")?;
        let enrolled: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM enrollments WHERE user_id = $1 AND deleted_at IS NULL")
                .bind(&r.id)
                .fetch_one(&mut *tx)
                .await
                .map_err(ApiError::from)?;
        if enrolled > 0 {
            return Err(ApiError::new(Reason::UserHasEnrollments, format!("the user has {enrolled} enrollment(s)"))
                .help("delete the user's enrollments (EnrollmentService.DeleteEnrollment) first")
                .into());
        }
        crate::domain_access::delete_where(&mut tx, who.org(), "user_id", &r.id, now).await?;
        USERS.delete(&mut tx, who.org(), &r.id, seq).await?;
        u.etag = etag(seq + 1);
        USERS.record(&mut tx, who.org(), "deleted", (&u.id, seq + 1), &u, now).await?;
        tx.commit().await?;
        Ok(Response::new(Empty {}))
    }
}
