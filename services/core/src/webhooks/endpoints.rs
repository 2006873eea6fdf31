//! Webhook endpoints as stored: signing secrets and custom header values sealed with the
//! operator's key, event filters, and disabling (with its `webhook.disabled` event). The API
//! manages endpoints; the dispatcher reads them to send, and disables them.
use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use sqlx::{AnyConnection, Row};

use crate::error::ApiResult;
use crate::events::{self, Change};
use crate::secrets::{Keyring, OpenError};
use crate::store::Db;
use crate::validate::Violations;
use crate::webhooks::deliveries::PARKED;
use crate::wire::SECRET_PREFIX;

/// How long a rotated-out secret keeps signing.
pub const ROTATION_OVERLAP_MS: i64 = 24 * 3_600_000;
/// What reads show instead of a custom header's value; sent back in an update, it keeps the
/// stored value.
pub const REDACTED: &str = "***";

/// A new signing secret: `whsec_` + base64 of 32 random bytes (Standard Webhooks).
pub fn new_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// Where a signing secret is sealed (current and previous share it, so rotation moves the
/// sealed value between the columns as it is).
pub fn secret_context(endpoint_id: &str) -> String {
    format!("{endpoint_id}/signing-secret")
}

fn header_context(endpoint_id: &str, name: &str) -> String {
    format!("{endpoint_id}/header/{name}")
}

/// The stored form of custom headers: a JSON object of name → sealed value.
pub type SealedHeaders = BTreeMap<String, String>;

/// Seals `headers` for storage. A value of `REDACTED` keeps what `stored` holds for that name
/// (an update that echoes a read); it is a field violation when nothing is stored.
pub fn seal_headers(
    keyring: &Keyring,
    endpoint_id: &str,
    headers: &BTreeMap<String, String>,
    stored: &SealedHeaders,
    v: &mut Violations,
) -> String {
    let mut sealed = SealedHeaders::new();
    for (name, value) in headers {
        if value == REDACTED {
            match stored.get(name) {
                Some(kept) => {
                    sealed.insert(name.clone(), kept.clone());
                }
                None => v.add(
                    &format!("webhook.headers[{name}]"),
                    format!("{REDACTED} stands for the stored value, and this header has none: send the value"),
                ),
            }
        } else {
            sealed.insert(name.clone(), keyring.seal(value, &header_context(endpoint_id, name)));
        }
    }
    serde_json::to_string(&sealed).unwrap_or_else(|_| "{}".into())
}

/// The custom headers in clear, for sending.
pub fn open_headers(keyring: &Keyring, endpoint_id: &str, stored: &str) -> Result<Vec<(String, String)>, OpenError> {
    let sealed: SealedHeaders = serde_json::from_str(stored).map_err(|_| OpenError::Damaged)?;
    sealed
        .iter()
        .map(|(name, value)| Ok((name.clone(), keyring.open(value, &header_context(endpoint_id, name))?)))
        .collect()
}

/// Whether an endpoint subscribed to `filters` (empty: all) wants events of type `kind`.
pub fn wants(filters: &[String], kind: &str) -> bool {
    filters.is_empty()
        || filters.iter().any(|f| match f.strip_suffix(".*") {
            Some(resource) => kind.strip_prefix(resource).is_some_and(|rest| rest.starts_with('.')),
            None => f == kind,
        })
}

/// Records that the organization's endpoints changed (in the caller's transaction):
/// dispatchers cache endpoints and reload an organization's when its version moved.
pub async fn changed(conn: &mut AnyConnection, org: &str) -> ApiResult<()> {
    sqlx::query("UPDATE organizations SET webhooks_version = webhooks_version + 1 WHERE id = $1")
        .bind(org)
        .execute(conn)
        .await?;
    Ok(())
}

/// Parks an endpoint's pending deliveries while it is disabled (claims never look at them),
/// or, with `park == false`, makes them due now again.
pub async fn park_deliveries(conn: &mut AnyConnection, id: &str, park: bool, now: i64) -> ApiResult<()> {
    let sql = if park {
        "UPDATE webhook_deliveries SET next_attempt_at = $2 WHERE endpoint_id = $1 AND state = 'pending' \
         AND lease_owner = '' AND $3 > 0"
    } else {
        "UPDATE webhook_deliveries SET next_attempt_at = $2 WHERE endpoint_id = $1 AND state = 'pending' \
         AND next_attempt_at >= $3"
    };
    let at = if park { PARKED } else { now };
    sqlx::query(sql).bind(id).bind(at).bind(PARKED).execute(conn).await?;
    Ok(())
}

/// The sealed headers stored for an endpoint.
pub async fn stored_headers(conn: &mut AnyConnection, id: &str) -> ApiResult<SealedHeaders> {
    let text: String =
        sqlx::query_scalar("SELECT headers FROM webhook_endpoints WHERE id = $1").bind(id).fetch_one(conn).await?;
    Ok(serde_json::from_str(&text).unwrap_or_default())
}

/// Disables an endpoint (unless it already is) and emits `webhook.disabled` to the
/// organization's other endpoints, in the caller's transaction. False if it was disabled.
pub async fn disable(conn: &mut AnyConnection, org: &str, id: &str, reason: &str, now: i64) -> ApiResult<bool> {
    let done = sqlx::query(
        "UPDATE webhook_endpoints SET disabled_at = $3, disabled_reason = $4, updated_at = $3, \
         sequence = sequence + 1, event_sequence = event_sequence + 1 \
         WHERE id = $1 AND org_id = $2 AND disabled_at IS NULL",
    )
    .bind(id)
    .bind(org)
    .bind(now)
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    let row = sqlx::query("SELECT url, event_sequence FROM webhook_endpoints WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    // Ids, url, reason and time only: this goes to the organization's other endpoints, so it
    // never carries headers (partner credentials) or secrets.
    let data = serde_json::json!({
        "id": id,
        "url": row.try_get::<String, _>("url")?,
        "reason": reason,
        "disabled_at": crate::clock::rfc3339(now),
    });
    let sequence: i64 = row.try_get("event_sequence")?;
    events::record(&mut *conn, Change { org, kind: "webhook.disabled", resource_id: id, sequence, data: &data, now })
        .await?;
    park_deliveries(&mut *conn, id, true, now).await?;
    changed(conn, org).await?;
    Ok(true)
}

/// Re-seals signing secrets and header values with the primary key: those sealed with another
/// key (`coursewire secrets rotate-key`), or with `legacy_only` just the plaintext rows written
/// before encryption existed (done at every start, so an upgrade leaves nothing in clear).
/// Returns how many endpoints were re-sealed.
pub async fn reseal(db: &Db, keyring: &Keyring, legacy_only: bool) -> anyhow::Result<u64> {
    let mut after = String::new();
    let mut resealed = 0;
    loop {
        let rows = sqlx::query(
            "SELECT id, secret, previous_secret, headers FROM webhook_endpoints WHERE id > $1 \
             AND ($2 = 0 OR secret NOT LIKE 'enc:%') ORDER BY id LIMIT 200",
        )
        .bind(&after)
        .bind(i64::from(legacy_only))
        .fetch_all(db.pool())
        .await?;
        let Some(last) = rows.last() else { return Ok(resealed) };
        after = last.try_get("id")?;
        let mut tx = db.begin_quiet().await.map_err(|e| anyhow::anyhow!(e.message))?;
        for r in &rows {
            let id: String = r.try_get("id")?;
            let secret: String = r.try_get("secret")?;
            let previous: Option<String> = r.try_get("previous_secret")?;
            let headers: String = r.try_get("headers")?;
            let sealed_headers: SealedHeaders = serde_json::from_str(&headers).unwrap_or_default();
            let current = keyring.is_current(&secret)
                && previous.as_deref().is_none_or(|p| keyring.is_current(p))
                && sealed_headers.values().all(|v| keyring.is_current(v));
            if current {
                continue;
            }
            let context = secret_context(&id);
            let reseal_secret = |v: &str| -> anyhow::Result<String> {
                let plain = keyring.open(v, &context).map_err(|e| anyhow::anyhow!("webhook {id}: {e}"))?;
                Ok(keyring.seal(&plain, &context))
            };
            let new_secret = reseal_secret(&secret)?;
            let new_previous = previous.as_deref().map(reseal_secret).transpose()?;
            let clear: BTreeMap<String, String> = open_headers(keyring, &id, &headers)
                .map_err(|e| anyhow::anyhow!("webhook {id}: {e}"))?
                .into_iter()
                .collect();
            let mut v = Violations::default();
            let new_headers = seal_headers(keyring, &id, &clear, &SealedHeaders::new(), &mut v);
            // Only if nobody rotated or updated it meanwhile; a later run picks it up otherwise.
            let done = sqlx::query(
                "UPDATE webhook_endpoints SET secret = $1, previous_secret = $2, headers = $3 \
                 WHERE id = $4 AND secret = $5 AND headers = $6",
            )
            .bind(new_secret)
            .bind(new_previous)
            .bind(new_headers)
            .bind(&id)
            .bind(&secret)
            .bind(&headers)
            .execute(&mut *tx)
            .await?;
            resealed += done.rows_affected();
        }
        tx.commit().await.map_err(|e| anyhow::anyhow!(e.message))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert!(wants(&[], "user.created"));
        assert!(wants(&["enrollment.*".into()], "enrollment.completed"));
        assert!(!wants(&["enrollment.*".into()], "enrollments.x"));
        assert!(!wants(&["user.created".into()], "user.updated"));
    }

    #[test]
    fn secrets_look_like_standard_webhooks() {
        let s = new_secret();
        let key = STANDARD.decode(s.strip_prefix(SECRET_PREFIX).unwrap()).unwrap();
        assert_eq!(key.len(), 32);
        assert_ne!(new_secret(), s);
    }
}
