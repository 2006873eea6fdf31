//! Organizations and API keys in the database. Used by the auth layer, the CLI and (later)
//! the key and organization services, so there is one code path for each operation.
use ipnet::IpNet;

use super::delegation::{self, Authority};
use super::keys;
use super::record::{KeyRecord, Scopes};
use crate::policy::windows::{Window, parse_windows};
use coursewire_core::activity::{self, OPERATOR, action};
use coursewire_core::error::{ApiError, ApiResult, Reason};
use coursewire_core::ids::{kind, new_id};
use coursewire_core::store::Db;
use coursewire_core::validate::Violations;

/// Active keys an organization may hold at once.
pub const MAX_KEYS_PER_ORG: i64 = 25;

const KEY_COLUMNS: &str = "k.id, k.org_id, o.name AS org_name, o.suspended, k.platform, k.prefix, k.secret_hash, \
     k.label, k.scopes, k.allowed_cidrs, k.created_at, k.expires_at, k.revoked_at, k.last_used_at, k.rate_limit, \
     o.rate_limits AS org_rate_limits \
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

/// A key's fields as a caller sets them (create), or as they would be after an update.
pub struct NewKey {
    /// `None` for a platform key.
    pub org_id: Option<String>,
    pub label: String,
    pub scopes: Vec<String>,
    pub allowed_cidrs: Vec<String>,
    pub expires_at: Option<i64>,
    /// Optional limit for this key across all call classes (`100/1m`); "" for none.
    pub rate_limit: String,
}

/// The editable fields of a key, validated together so one error names every bad field.
fn validate_fields(v: &mut Violations, fields: &NewKey, platform: bool) -> Checked {
    let NewKey { label, scopes, allowed_cidrs: cidrs, rate_limit, .. } = fields;
    v.optional_text("label", label, 200);
    // Platform keys manage organizations only; scopes do not apply to them.
    let scopes = if platform {
        Scopes(vec![])
    } else {
        Scopes::parse(scopes).unwrap_or_else(|msg| {
            v.add("scopes", msg);
            Scopes(vec![])
        })
    };
    v.check(cidrs.len() <= 50, "allowed_cidrs", "at most 50 entries");
    let mut nets = Vec::new();
    for c in cidrs {
        match c.parse::<IpNet>().or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from)) {
            Ok(net) => nets.push(net.trunc()),
            Err(_) => v.add("allowed_cidrs", format!("{c:?} is not an IPv4/IPv6 address or CIDR")),
        }
    }
    let limit =
        if rate_limit.is_empty() { None } else { parse_windows(rate_limit).map_err(|e| v.add("rate_limit", e)).ok() };
    Checked { scopes, cidrs: nets, limit }
}

/// The validated, parsed form of `NewKey`.
struct Checked {
    scopes: Scopes,
    cidrs: Vec<IpNet>,
    limit: Option<Vec<Window>>,
}

impl Checked {
    fn authority(&self, expires_at: Option<i64>) -> Authority<'_> {
        Authority { scopes: &self.scopes, cidrs: &self.cidrs, expires_at, limit: self.limit.as_deref() }
    }
}

fn cidr_text(nets: &[IpNet]) -> String {
    nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// Creates a key and returns it with its secret, the only time the secret exists in clear.
/// `grantor` is the key asking for it over the API (`None`: the operator's CLI); the new key
/// must be within its authority (see `delegation`).
pub async fn create_key(db: &Db, new: NewKey, now: i64, grantor: Option<&KeyRecord>) -> ApiResult<(KeyRecord, String)> {
    let mut v = Violations::default();
    let checked = validate_fields(&mut v, &new, new.org_id.is_none());
    v.check(new.expires_at.is_none_or(|t| t > now), "expires_at", "must be in the future");
    v.finish()?;
    if let Some(grantor) = grantor {
        delegation::check(grantor, &checked.authority(new.expires_at))?;
    }
    let Checked { scopes, cidrs, .. } = checked;

    let mut tx = db.begin_quiet().await?;
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
            return Err(ApiError::new(
                Reason::KeyLimitReached,
                format!("an organization may hold at most {MAX_KEYS_PER_ORG} active keys"),
            )
            .help("revoke a key you no longer use, then create the new one"));
        }
    }
    let secret = keys::generate();
    let id = new_id(kind::API_KEY);
    sqlx::query(
        "INSERT INTO api_keys (id, org_id, platform, prefix, secret_hash, label, scopes, allowed_cidrs, created_at, expires_at, rate_limit) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&id)
    .bind(new.org_id.as_deref())
    .bind(i64::from(new.org_id.is_none()))
    .bind(&secret.prefix)
    .bind(&secret.hash)
    .bind(&new.label)
    .bind(scopes.0.join(","))
    .bind(cidr_text(&cidrs))
    .bind(now)
    .bind(new.expires_at)
    .bind(&new.rate_limit)
    .execute(&mut *tx)
    .await?;
    let sql = format!("SELECT {KEY_COLUMNS} WHERE k.id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&id).fetch_one(&mut *tx).await?;
    let record = KeyRecord::from_row(&row)?;
    if let Some(org) = &new.org_id {
        let summary = format!("sk_{}… {:?} with {}", record.prefix, record.label, record.scopes.0.join(","));
        activity::record(&mut tx, org, &actor(grantor), action::KEY_CREATED, &id, &summary, now).await?;
    }
    tx.commit().await?;
    Ok((record, secret.secret))
}

/// Keys of an organization (never their secrets), oldest first, after id `after`.
pub async fn list_keys(
    db: &Db,
    org_id: &str,
    after: &str,
    limit: i64,
    include_revoked: bool,
) -> ApiResult<Vec<KeyRecord>> {
    let sql = format!(
        "SELECT {KEY_COLUMNS} WHERE k.org_id = $1 AND k.id > $2 AND ($3 = 1 OR k.revoked_at IS NULL) ORDER BY k.id LIMIT $4"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(org_id)
        .bind(after)
        .bind(i64::from(include_revoked))
        .bind(limit)
        .fetch_all(db.pool())
        .await?;
    Ok(rows.iter().map(KeyRecord::from_row).collect::<Result<_, _>>()?)
}

pub async fn get_key(db: &Db, org_id: &str, key_id: &str) -> ApiResult<KeyRecord> {
    let sql = format!("SELECT {KEY_COLUMNS} WHERE k.id = $1 AND k.org_id = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(key_id).bind(org_id).fetch_optional(db.pool()).await?;
    row.as_ref().map(KeyRecord::from_row).transpose()?.ok_or_else(|| ApiError::not_found("API key", key_id))
}

/// Changes a key's label, scopes, allowed CIDRs and own rate limit to `fields` (revoked keys
/// stay revoked). The caller's key may only change keys within its authority into keys within
/// it, and never its own scopes or allowlist.
pub async fn update_key(
    db: &Db,
    current: &KeyRecord,
    fields: &NewKey,
    caller: &KeyRecord,
    now: i64,
) -> ApiResult<KeyRecord> {
    let (org_id, key_id) = (current.org_id.as_str(), current.id.as_str());
    let mut v = Violations::default();
    let checked = validate_fields(&mut v, fields, false);
    v.finish()?;
    if current.id == caller.id {
        delegation::check_self_change(caller, &checked.scopes, &checked.cidrs)?;
    } else {
        delegation::check(caller, &Authority::of(current))?;
    }
    delegation::check(caller, &checked.authority(current.expires_at))?;
    let mut tx = db.begin_quiet().await?;
    let done = sqlx::query("UPDATE api_keys SET label = $1, scopes = $2, allowed_cidrs = $3, rate_limit = $4 WHERE id = $5 AND org_id = $6 AND revoked_at IS NULL")
        .bind(&fields.label)
        .bind(checked.scopes.0.join(","))
        .bind(cidr_text(&checked.cidrs))
        .bind(&fields.rate_limit)
        .bind(key_id)
        .bind(org_id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::new(Reason::KeyAlreadyRevoked, "revoked keys cannot be changed"));
    }
    let summary = format!("sk_{}…: {:?} with {}", current.prefix, fields.label, checked.scopes.0.join(","));
    activity::record(&mut tx, org_id, &caller.actor(), action::KEY_UPDATED, key_id, &summary, now).await?;
    tx.commit().await?;
    get_key(db, org_id, key_id).await
}

/// Revokes a key for good. Revoking twice is harmless. Over the API (`caller`), a key may
/// revoke itself and keys within its authority.
pub async fn revoke_key(db: &Db, org_id: &str, key_id: &str, now: i64, caller: Option<&KeyRecord>) -> ApiResult<()> {
    if let Some(caller) = caller.filter(|c| c.id != key_id) {
        delegation::check(caller, &Authority::of(&get_key(db, org_id, key_id).await?))?;
    }
    let mut tx = db.begin_quiet().await?;
    let done = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND org_id = $3 AND revoked_at IS NULL")
        .bind(now)
        .bind(key_id)
        .bind(org_id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        // Unknown (404), or revoked already (harmless, and nothing to record).
        drop(tx);
        get_key(db, org_id, key_id).await?;
        return Ok(());
    }
    activity::record(&mut tx, org_id, &actor(caller), action::KEY_REVOKED, key_id, "revoked", now).await?;
    tx.commit().await?;
    Ok(())
}

/// The activity log's name for who acted: a key (or console session), or the operator.
fn actor(key: Option<&KeyRecord>) -> String {
    key.map_or_else(|| OPERATOR.to_string(), KeyRecord::actor)
}
