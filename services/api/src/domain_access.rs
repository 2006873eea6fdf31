//! A user's access to a domain, as rows: read, insert, ensure, and delete with events. The
//! DomainUserService serves them; deleting a domain or a user deletes its rows here, and
//! enrolling a user grants access here, so those modules need not import the service.
use coursewire_proto::v1::DomainUser;
use sqlx::AnyConnection;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::clock::{opt_timestamp, to_timestamp};
use crate::resource::{delete_at, etag, flag};
use coursewire_core::error::{ApiError, ApiResult};
use coursewire_core::events::{self, Change};
use coursewire_core::ids::{kind, new_id};
use coursewire_core::store::Tx;

pub(crate) const COLUMNS: &str =
    "id, domain_id, user_id, active, expires_at, created_at, updated_at, sequence FROM domain_users";

pub(crate) fn from_row(r: &AnyRow) -> Result<(DomainUser, i64), sqlx::Error> {
    let sequence = r.try_get("sequence")?;
    let du = DomainUser {
        id: r.try_get("id")?,
        domain_id: r.try_get("domain_id")?,
        user_id: r.try_get("user_id")?,
        active: r.try_get::<i64, _>("active")? != 0,
        expires_at: opt_timestamp(r.try_get("expires_at")?),
        created_at: Some(to_timestamp(r.try_get("created_at")?)),
        updated_at: Some(to_timestamp(r.try_get("updated_at")?)),
        etag: etag(sequence),
    };
    Ok((du, sequence))
}

pub(crate) async fn fetch<'e>(
    conn: impl sqlx::Executor<'e, Database = sqlx::Any>,
    org: &str,
    id: &str,
) -> ApiResult<(DomainUser, i64)> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} WHERE id = $1 AND org_id = $2")))
        .bind(id)
        .bind(org)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| ApiError::not_found("domain user", id))?;
    Ok(from_row(&row)?)
}

/// Inserts access for (domain, user); `Ok(None)` when the pair already exists.
pub(crate) async fn insert(
    conn: &mut AnyConnection,
    org: &str,
    domain_id: &str,
    user_id: &str,
    active: bool,
    expires_at: Option<i64>,
    now: i64,
) -> ApiResult<Option<DomainUser>> {
    let du = DomainUser {
        id: new_id(kind::DOMAIN_USER),
        domain_id: domain_id.into(),
        user_id: user_id.into(),
        active,
        expires_at: opt_timestamp(expires_at),
        created_at: Some(to_timestamp(now)),
        updated_at: Some(to_timestamp(now)),
        etag: etag(1),
    };
    let done = sqlx::query(
        "INSERT INTO domain_users (id, org_id, domain_id, user_id, active, expires_at, created_at, updated_at, sequence) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, 1) ON CONFLICT (domain_id, user_id) DO NOTHING",
    )
    .bind(&du.id)
    .bind(org)
    .bind(domain_id)
    .bind(user_id)
    .bind(flag(active))
    .bind(expires_at)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(None);
    }
    events::record(conn, Change { org, kind: "domain_user.created", resource_id: &du.id, sequence: 1, data: &du, now })
        .await?;
    Ok(Some(du))
}

/// Gives the user access to the domain unless they have it (used by enrollment).
pub(crate) async fn ensure(
    conn: &mut AnyConnection,
    org: &str,
    domain_id: &str,
    user_id: &str,
    now: i64,
) -> ApiResult<()> {
    insert(conn, org, domain_id, user_id, true, None, now).await.map(|_| ())
}

/// Deletes every domain user whose `column` (`domain_id` or `user_id`) is `value`, with events.
pub(crate) async fn delete_where(tx: &mut Tx, org: &str, column: &'static str, value: &str, now: i64) -> ApiResult<()> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} WHERE org_id = $1 AND {column} = $2")))
        .bind(org)
        .bind(value)
        .fetch_all(&mut **tx)
        .await?;
    for row in rows {
        let (mut du, seq) = from_row(&row)?;
        delete_at(tx, "domain_users", "domain user", org, &du.id, seq).await?;
        du.etag = etag(seq + 1);
        events::record(
            tx,
            Change { org, kind: "domain_user.deleted", resource_id: &du.id, sequence: seq + 1, data: &du, now },
        )
        .await?;
    }
    Ok(())
}
