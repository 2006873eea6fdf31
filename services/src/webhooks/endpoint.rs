//! Webhook endpoints: validation, storage, secrets, and disabling (shared with the dispatcher).
use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use coursewire_proto::v1::Webhook;
use rand::RngCore;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::clock::{opt_timestamp, to_timestamp};
use crate::error::{ApiError, ApiResult};
use crate::events::{self, Change, EVENT_TYPES};
use crate::resource::etag;
use crate::secrets::{Keyring, OpenError};
use crate::store::Db;
use crate::validate::Violations;

pub const MAX_URL_LEN: usize = 2048;
pub const MAX_HEADERS: usize = 20;
pub const MAX_RATE: i32 = 10_000;
pub const MAX_CONCURRENCY: i32 = 256;
/// How long a rotated-out secret keeps signing.
pub const ROTATION_OVERLAP_MS: i64 = 24 * 3_600_000;
/// What reads show instead of a custom header's value; sent back in an update, it keeps the
/// stored value.
pub const REDACTED: &str = "***";

/// Headers the dispatcher sets itself (or that HTTP owns); custom headers may not use them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "user-agent",
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

pub(crate) const COLUMNS: &str = "id, url, description, event_types, headers, max_rate, max_concurrency, \
    disabled_at, disabled_reason, created_at, updated_at, sequence FROM webhook_endpoints";

/// A new signing secret: `whsec_` + base64 of 32 random bytes (Standard Webhooks).
pub fn new_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!("whsec_{}", STANDARD.encode(key))
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
pub(crate) type SealedHeaders = BTreeMap<String, String>;

/// Seals `headers` for storage. A value of `REDACTED` keeps what `stored` holds for that name
/// (an update that echoes a read); it is a field violation when nothing is stored.
pub(crate) fn seal_headers(
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

pub(crate) fn from_row(r: &AnyRow) -> Result<(Webhook, i64), sqlx::Error> {
    let sequence: i64 = r.try_get("sequence")?;
    let types: String = r.try_get("event_types")?;
    let headers: SealedHeaders = serde_json::from_str(&r.try_get::<String, _>("headers")?).unwrap_or_default();
    let disabled_at: Option<i64> = r.try_get("disabled_at")?;
    let w = Webhook {
        id: r.try_get("id")?,
        url: r.try_get("url")?,
        description: r.try_get("description")?,
        event_types: serde_json::from_str(&types).unwrap_or_default(),
        // Write-only: readers see which headers are set, never their values.
        headers: headers.into_keys().map(|name| (name, REDACTED.to_string())).collect(),
        max_rate_per_second: r.try_get::<i64, _>("max_rate")? as i32,
        max_concurrency: r.try_get::<i64, _>("max_concurrency")? as i32,
        disabled: disabled_at.is_some(),
        disabled_reason: r.try_get("disabled_reason")?,
        disabled_at: opt_timestamp(disabled_at),
        created_at: Some(to_timestamp(r.try_get("created_at")?)),
        updated_at: Some(to_timestamp(r.try_get("updated_at")?)),
        etag: etag(sequence),
    };
    Ok((w, sequence))
}

/// Normalizes `w` in place and records every violation.
pub(crate) fn validate(w: &mut Webhook, v: &mut Violations) {
    w.url = w.url.trim().to_string();
    if let Err(why) = check_url(&w.url) {
        v.add("webhook.url", why);
    }
    v.optional_text("webhook.description", &w.description, 500);
    let mut types: Vec<String> = w.event_types.iter().map(|t| t.trim().to_string()).collect();
    types.sort();
    types.dedup();
    for t in &types {
        if !is_event_filter(t) {
            v.add(
                "webhook.event_types",
                format!("{t:?} is not an event type (like enrollment.completed or enrollment.*)"),
            );
        }
    }
    w.event_types = types;
    let headers = std::mem::take(&mut w.headers);
    if headers.len() > MAX_HEADERS {
        v.add("webhook.headers", format!("must have at most {MAX_HEADERS} entries"));
    }
    for (name, value) in headers {
        let name = name.trim().to_ascii_lowercase();
        let field = format!("webhook.headers[{name}]");
        if name.is_empty() || name.len() > 100 || !name.bytes().all(is_token_char) {
            v.add(&field, "must be an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)");
        } else if RESERVED_HEADERS.contains(&name.as_str())
            || name.starts_with("webhook-")
            || name.starts_with("proxy-")
        {
            v.add(&field, "is set by the dispatcher and cannot be overridden");
        }
        if value.len() > 1024 || !value.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
            v.add(&field, "value must be printable ASCII of at most 1,024 characters");
        }
        w.headers.insert(name, value);
    }
    if !(0..=MAX_RATE).contains(&w.max_rate_per_second) {
        v.add("webhook.max_rate_per_second", format!("must be between 0 (no cap) and {MAX_RATE}"));
    }
    if !(0..=MAX_CONCURRENCY).contains(&w.max_concurrency) {
        v.add("webhook.max_concurrency", format!("must be between 0 (default) and {MAX_CONCURRENCY}"));
    }
}

/// URL rules: http(s), a host, no userinfo, at most 2,048 characters. Whether the host's
/// addresses may be reached is decided when sending (they can change at any time).
pub fn check_url(raw: &str) -> Result<url::Url, String> {
    if raw.is_empty() {
        return Err("is required".into());
    }
    // The URL parser would quietly drop CR/LF and encode spaces; we store what was sent, so
    // refuse them instead.
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters (percent-encode them)".into());
    }
    if raw.len() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} characters"));
    }
    let url = url::Url::parse(raw).map_err(|e| format!("is not a valid URL ({e})"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err("must use http:// or https://".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain a user name or password; use custom headers for credentials".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    Ok(url)
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `enrollment.completed`, or `enrollment.*` for every type of a resource.
fn is_event_filter(t: &str) -> bool {
    match t.strip_suffix(".*") {
        Some(resource) => EVENT_TYPES.iter().any(|k| k.split('.').next() == Some(resource)),
        None => EVENT_TYPES.contains(&t),
    }
}

/// Whether an endpoint subscribed to `filters` (empty: all) wants events of type `kind`.
pub fn wants(filters: &[String], kind: &str) -> bool {
    filters.is_empty()
        || filters.iter().any(|f| match f.strip_suffix(".*") {
            Some(resource) => kind.strip_prefix(resource).is_some_and(|rest| rest.starts_with('.')),
            None => f == kind,
        })
}

pub(crate) async fn fetch(conn: &mut AnyConnection, org: &str, id: &str) -> ApiResult<(Webhook, i64)> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} WHERE id = $1 AND org_id = $2")))
        .bind(id)
        .bind(org)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook", id))?;
    Ok(from_row(&row)?)
}

/// The sealed headers stored for an endpoint.
pub(crate) async fn stored_headers(conn: &mut AnyConnection, id: &str) -> ApiResult<SealedHeaders> {
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
    events::record(conn, Change { org, kind: "webhook.disabled", resource_id: id, sequence, data: &data, now }).await?;
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
        let mut tx = db.begin().await.map_err(|e| anyhow::anyhow!(e.message))?;
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
    fn urls() {
        assert!(check_url("https://hooks.example.com/coursewire?x=1").is_ok());
        assert!(check_url("http://127.0.0.1:9000/").is_ok(), "addresses are checked at send time");
        for bad in [
            "",
            "ftp://x.com/",
            "https://user:pw@x.com/",
            "https://user@x.com/",
            "not a url",
            "http://",
            "https://x.com/a b",
            "https://x.com/a\r\nx-injected: 1",
            "https://x.com/\t",
        ] {
            assert!(check_url(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(check_url(&format!("https://x.com/{}", "a".repeat(2040))).is_err());
    }

    #[test]
    fn filters() {
        assert!(wants(&[], "user.created"));
        assert!(wants(&["enrollment.*".into()], "enrollment.completed"));
        assert!(!wants(&["enrollment.*".into()], "enrollments.x"));
        assert!(!wants(&["user.created".into()], "user.updated"));
        assert!(is_event_filter("enrollment.*") && is_event_filter("webhook.disabled"));
        assert!(!is_event_filter("enrolment.created") && !is_event_filter("*"));
    }

    #[test]
    fn secrets_look_like_standard_webhooks() {
        let s = new_secret();
        let key = STANDARD.decode(s.strip_prefix("whsec_").unwrap()).unwrap();
        assert_eq!(key.len(), 32);
        assert_ne!(new_secret(), s);
    }
}
