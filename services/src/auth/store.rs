//! Organizations and API keys in the database. Used by the auth layer, the CLI and (later)
//! the key and organization services, so there is one code path for each operation.
use std::sync::atomic::{AtomicI64, Ordering};

use ipnet::IpNet;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::keys;
use super::policy::RESOURCES;
use crate::error::{ApiError, ApiResult};
use crate::ids::new_id;
use crate::store::{Db, is_unique_violation};
use crate::validate::Violations;

/// Active keys an organization may hold at once.
pub const MAX_KEYS_PER_ORG: i64 = 25;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scopes(pub Vec<String>);

impl Scopes {
    /// Parses `*` or `RESOURCE:read|write` items; an empty list means `*`.
    pub fn parse(items: &[String]) -> Result<Scopes, String> {
        let items: Vec<String> = items.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        if items.is_empty() {
            return Ok(Scopes(vec!["*".into()]));
        }
        for s in &items {
            let ok = s == "*"
                || s.split_once(':').is_some_and(|(r, a)| RESOURCES.contains(&r) && (a == "read" || a == "write"));
            if !ok {
                return Err(format!(
                    "unknown scope {s:?}: use * or RESOURCE:read|write with RESOURCE one of {}",
                    RESOURCES.join(", ")
                ));
            }
        }
        Ok(Scopes(items))
    }

    /// `RESOURCE:write` implies `RESOURCE:read`; `*` allows everything.
    pub fn allows(&self, resource: &str, write: bool) -> bool {
        self.0.iter().any(|s| {
            s == "*"
                || s.split_once(':').is_some_and(|(r, a)| r == resource && (a == "write" || (!write && a == "read")))
        })
    }
}

#[derive(Debug)]
pub struct KeyRecord {
    pub id: String,
    /// Empty for platform keys.
    pub org_id: String,
    pub org_name: String,
    pub org_suspended: bool,
    pub platform: bool,
    pub prefix: String,
    pub secret_hash: String,
    pub label: String,
    pub scopes: Scopes,
    pub allowed_cidrs: Vec<IpNet>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    last_used_at: AtomicI64,
}

impl KeyRecord {
    pub fn last_used_at(&self) -> Option<i64> {
        Some(self.last_used_at.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// True (once per interval) when `last_used_at` should be written again.
    pub(super) fn touch_due(&self, now: i64, every_ms: i64) -> bool {
        let last = self.last_used_at.load(Ordering::Relaxed);
        now - last >= every_ms
            && self.last_used_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    fn from_row(r: &AnyRow) -> Result<KeyRecord, sqlx::Error> {
        let cidrs: String = r.try_get("allowed_cidrs")?;
        let scopes: String = r.try_get("scopes")?;
        Ok(KeyRecord {
            id: r.try_get("id")?,
            org_id: r.try_get::<Option<String>, _>("org_id")?.unwrap_or_default(),
            org_name: r.try_get::<Option<String>, _>("org_name")?.unwrap_or_default(),
            org_suspended: r.try_get::<Option<i64>, _>("suspended")?.unwrap_or(0) != 0,
            platform: r.try_get::<i64, _>("platform")? != 0,
            prefix: r.try_get("prefix")?,
            secret_hash: r.try_get("secret_hash")?,
            label: r.try_get("label")?,
            scopes: Scopes(scopes.split(',').filter(|s| !s.is_empty()).map(String::from).collect()),
            allowed_cidrs: cidrs.split(',').filter_map(|c| c.parse().ok()).collect(),
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
            revoked_at: r.try_get("revoked_at")?,
            last_used_at: AtomicI64::new(r.try_get::<Option<i64>, _>("last_used_at")?.unwrap_or(0)),
        })
    }
}

const KEY_COLUMNS: &str = "k.id, k.org_id, o.name AS org_name, o.suspended, k.platform, k.prefix, k.secret_hash, \
     k.label, k.scopes, k.allowed_cidrs, k.created_at, k.expires_at, k.revoked_at, k.last_used_at \
     FROM api_keys k LEFT JOIN organizations o ON o.id = k.org_id";

pub(super) async fn find_key(db: &Db, hash: &str) -> ApiResult<Option<KeyRecord>> {
    let sql = format!("SELECT {KEY_COLUMNS} WHERE k.secret_hash = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(hash).fetch_optional(db.pool()).await?;
    Ok(row.as_ref().map(KeyRecord::from_row).transpose()?)
}

pub(super) async fn touch_last_used(db: &Db, id: &str, now: i64) {
    let q = sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2").bind(now).bind(id);
    if let Err(e) = q.execute(db.pool()).await {
        tracing::warn!(error = %e, key_id = id, "could not record last_used_at");
    }
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
            Err(ApiError::already_exists("ORGANIZATION_EXISTS", format!("organization {id:?} already exists")))
        }
        r => r.map(|_| ()).map_err(Into::into),
    }
}

pub struct NewKey {
    /// `None` for a platform key.
    pub org_id: Option<String>,
    pub label: String,
    pub scopes: Vec<String>,
    pub allowed_cidrs: Vec<String>,
    pub expires_at: Option<i64>,
}

/// Creates a key and returns it with its secret, the only time the secret exists in clear.
pub async fn create_key(db: &Db, new: NewKey, now: i64) -> ApiResult<(KeyRecord, String)> {
    let mut v = Violations::default();
    v.optional_text("label", &new.label, 200);
    let scopes = match Scopes::parse(&new.scopes) {
        Ok(s) => s,
        Err(msg) => {
            v.add("scopes", msg);
            Scopes(vec![])
        }
    };
    let mut cidrs = Vec::new();
    for c in &new.allowed_cidrs {
        match c.parse::<IpNet>().or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from)) {
            Ok(net) => cidrs.push(net.trunc()),
            Err(_) => v.add("allowed_cidrs", format!("{c:?} is not an IPv4/IPv6 address or CIDR")),
        }
    }
    v.check(new.expires_at.is_none_or(|t| t > now), "expires_at", "must be in the future");
    v.finish()?;

    let mut tx = db.begin().await?;
    if let Some(org) = &new.org_id {
        // Locks the organization row so concurrent creates cannot pass the limit together.
        let found = sqlx::query("UPDATE organizations SET updated_at = updated_at WHERE id = $1")
            .bind(org)
            .execute(&mut *tx)
            .await?;
        if found.rows_affected() == 0 {
            return Err(ApiError::not_found("organization", org));
        }
        let active: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_keys WHERE org_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(org)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        if active >= MAX_KEYS_PER_ORG {
            return Err(ApiError::precondition(
                "KEY_LIMIT_REACHED",
                format!("an organization may hold at most {MAX_KEYS_PER_ORG} active keys"),
            )
            .help("revoke a key you no longer use, then create the new one"));
        }
    }
    let secret = keys::generate();
    let id = new_id("key");
    let cidr_text = cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    sqlx::query(
        "INSERT INTO api_keys (id, org_id, platform, prefix, secret_hash, label, scopes, allowed_cidrs, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&id)
    .bind(new.org_id.as_deref())
    .bind(i64::from(new.org_id.is_none()))
    .bind(&secret.prefix)
    .bind(&secret.hash)
    .bind(&new.label)
    .bind(scopes.0.join(","))
    .bind(&cidr_text)
    .bind(now)
    .bind(new.expires_at)
    .execute(&mut *tx)
    .await?;
    let sql = format!("SELECT {KEY_COLUMNS} WHERE k.id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&id).fetch_one(&mut *tx).await?;
    let record = KeyRecord::from_row(&row)?;
    tx.commit().await?;
    Ok((record, secret.secret))
}

/// Keys of an organization (never their secrets), oldest first.
pub async fn list_keys(db: &Db, org_id: &str) -> ApiResult<Vec<KeyRecord>> {
    let sql = format!("SELECT {KEY_COLUMNS} WHERE k.org_id = $1 ORDER BY k.id");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(org_id).fetch_all(db.pool()).await?;
    Ok(rows.iter().map(KeyRecord::from_row).collect::<Result<_, _>>()?)
}

/// Revokes a key for good. Revoking twice is harmless.
pub async fn revoke_key(db: &Db, org_id: &str, key_id: &str, now: i64) -> ApiResult<()> {
    let done = sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 AND org_id = $3")
        .bind(now)
        .bind(key_id)
        .bind(org_id)
        .execute(db.pool())
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("API key", key_id));
    }
    Ok(())
}
