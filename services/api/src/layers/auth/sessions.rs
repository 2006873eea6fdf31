//! Web console credentials: sign-in links and the sessions they open (docs/console.md).
//!
//! A link or a session grants an organization and scopes, never more than what minted it: the
//! operator's CLI (any scopes), or a key (within the key's authority, as `CreateApiKey`
//! delegates). Tokens are 32 random bytes, stored only as their SHA-256. A link is redeemed
//! once, before it expires. A session ends at sign-out, after `IDLE_MS` without use, after
//! `LIFETIME_MS` in all, and when the key behind it is revoked or expires.
//!
//! A session authenticates as a `KeyRecord` read with the same columns as a key, so the auth
//! layer admits it with the key's own code (`Authenticator::admit`): suspension, allowlist,
//! scopes, limits are one path.
use std::sync::Arc;

use rand::RngCore;
use sqlx::Row;

use super::keys;
use super::record::{KeyRecord, Scopes};
use coursewire_core::error::{ApiError, ApiResult, Reason};
use coursewire_core::ids::{kind, new_id};
use coursewire_core::store::Db;

/// A link is valid this long unless asked otherwise (`--ttl`, `CreateConsoleLink.ttl`).
pub const LINK_TTL_MS: i64 = 15 * 60_000;
/// The longest a link may be valid.
pub const LINK_TTL_MAX_MS: i64 = 24 * 3_600_000;
/// A session unused this long has ended.
pub const IDLE_MS: i64 = 30 * 60_000;
/// A session ends this long after sign-in, used or not.
pub const LIFETIME_MS: i64 = 12 * 3_600_000;
/// `last_seen_at` is written at most this often per session.
const TOUCH_EVERY_MS: i64 = 60_000;

/// What a link or session grants.
#[derive(Clone, Debug)]
pub struct Grant {
    pub org_id: String,
    pub scopes: Scopes,
    /// The key that minted the link or signed in; `None`: the operator's CLI.
    pub key_id: Option<String>,
}

/// The extension the console puts on the calls it makes for a session: the session's
/// authority, in place of a key. Only code in this process can set it (extensions do not
/// cross the network), and only the console does.
#[derive(Clone, Debug)]
pub struct SessionGrant(pub Arc<KeyRecord>);

/// A session as the console reads it.
#[derive(Clone, Debug)]
pub struct Session {
    pub id: String,
    /// The session's authority, shaped as a key (`id` is the key behind it, or the session's).
    pub key: Arc<KeyRecord>,
    /// `key sk_1a2b3c4d…` or `sign-in link`.
    pub actor: String,
    pub expires_at: i64,
    /// Proves a form came from a page of this session (see `csrf_token`).
    pub csrf: String,
}

fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// The anti-forgery token of the session whose token is `token`: derived, so nothing more is
/// stored, and one-way, so a page that shows it reveals nothing of the cookie.
fn csrf_token(token: &str) -> String {
    keys::hash(&format!("coursewire console csrf\0{token}"))
}

/// A sign-in link's token for `grant`, valid `ttl_ms` from `now`: (token, expires_at).
pub async fn create_link(db: &Db, grant: &Grant, ttl_ms: i64, now: i64) -> ApiResult<(String, i64)> {
    if !(60_000..=LINK_TTL_MAX_MS).contains(&ttl_ms) {
        return Err(ApiError::field("ttl", "must be between 1 minute and 24 hours"));
    }
    let token = new_token("cwl_");
    let expires_at = now + ttl_ms;
    sqlx::query(
        "INSERT INTO console_links (token_hash, org_id, key_id, scopes, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(keys::hash(&token))
    .bind(&grant.org_id)
    .bind(&grant.key_id)
    .bind(grant.scopes.0.join(","))
    .bind(now)
    .bind(expires_at)
    .execute(db.pool())
    .await?;
    Ok((token, expires_at))
}

/// Redeems a link once: its grant, or `None` when it is unknown, used or expired (the
/// sign-in page says the same for all three, so a guess learns nothing).
pub async fn redeem_link(db: &Db, token: &str, now: i64) -> ApiResult<Option<Grant>> {
    if token.len() > 100 {
        return Ok(None);
    }
    // One statement marks it used and reads it, so two openings cannot both succeed.
    let row = sqlx::query(
        "UPDATE console_links SET used_at = $2 \
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 \
         RETURNING org_id, key_id, scopes",
    )
    .bind(keys::hash(token))
    .bind(now)
    .fetch_optional(db.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let scopes: String = row.try_get("scopes")?;
    Ok(Some(Grant {
        org_id: row.try_get("org_id")?,
        key_id: row.try_get("key_id")?,
        scopes: Scopes(scopes.split(',').map(String::from).collect()),
    }))
}

/// Opens a session for `grant`; returns its token (the cookie's value).
pub async fn start_session(db: &Db, grant: &Grant, actor: &str, now: i64) -> ApiResult<String> {
    let token = new_token("cws_");
    sqlx::query(
        "INSERT INTO console_sessions \
         (token_hash, id, org_id, key_id, scopes, actor, created_at, last_seen_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
    )
    .bind(keys::hash(&token))
    .bind(new_id(kind::CONSOLE_SESSION))
    .bind(&grant.org_id)
    .bind(&grant.key_id)
    .bind(grant.scopes.0.join(","))
    .bind(actor)
    .bind(now)
    .bind(now + LIFETIME_MS)
    .execute(db.pool())
    .await?;
    Ok(token)
}

/// Ends the session `id` (sign-out), on every replica.
pub async fn end_session(db: &Db, id: &str, now: i64) -> ApiResult<()> {
    sqlx::query("UPDATE console_sessions SET ended_at = $2 WHERE id = $1 AND ended_at IS NULL")
        .bind(id)
        .bind(now)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// The live session whose token is `token`. Every way a session ends is
/// `UNAUTHENTICATED`; the console sends the browser to sign in again.
pub async fn find_session(db: &Db, token: &str, now: i64) -> ApiResult<Session> {
    let ended = |why: &str| ApiError::unauthenticated(Reason::KeyUnknown, format!("the console session {why}"));
    if token.len() > 100 {
        return Err(ended("is not known"));
    }
    // The columns of a key (see `store::KEY_COLUMNS`), so `KeyRecord::from_row` reads both.
    let row = sqlx::query(
        "SELECT COALESCE(k.id, s.id) AS id, s.org_id, o.name AS org_name, o.suspended, \
                CAST(0 AS BIGINT) AS platform, COALESCE(k.prefix, '') AS prefix, '' AS secret_hash, \
                s.actor AS label, s.scopes, COALESCE(k.allowed_cidrs, '') AS allowed_cidrs, \
                s.created_at, k.expires_at, k.revoked_at, CAST(NULL AS BIGINT) AS last_used_at, \
                COALESCE(k.rate_limit, '') AS rate_limit, o.rate_limits AS org_rate_limits, \
                s.id AS session_id, s.last_seen_at, s.expires_at AS session_expires_at, s.ended_at \
         FROM console_sessions s JOIN organizations o ON o.id = s.org_id \
         LEFT JOIN api_keys k ON k.id = s.key_id \
         WHERE s.token_hash = $1",
    )
    .bind(keys::hash(token))
    .fetch_optional(db.pool())
    .await?
    .ok_or_else(|| ended("is not known"))?;
    let key = KeyRecord::from_row(&row)?;
    let last_seen: i64 = row.try_get("last_seen_at")?;
    let expires_at: i64 = row.try_get("session_expires_at")?;
    let id: String = row.try_get("session_id")?;
    if row.try_get::<Option<i64>, _>("ended_at")?.is_some() {
        return Err(ended("was signed out"));
    }
    if now >= expires_at || now - last_seen >= IDLE_MS {
        return Err(ended("has expired"));
    }
    // The key behind it was revoked or has expired: end the session in the database (every
    // replica then sees it ended), not only this call.
    if key.revoked_at.is_some() || key.expires_at.is_some_and(|t| t <= now) {
        end_session(db, &id, now).await?;
        return Err(ended("ended with its key"));
    }
    if now - last_seen >= TOUCH_EVERY_MS {
        sqlx::query("UPDATE console_sessions SET last_seen_at = $2 WHERE id = $1")
            .bind(&id)
            .bind(now)
            .execute(db.pool())
            .await?;
    }
    Ok(Session {
        id,
        actor: key.label.clone(),
        key: Arc::new(key),
        expires_at: expires_at.min(last_seen.max(now) + IDLE_MS),
        csrf: csrf_token(token),
    })
}
