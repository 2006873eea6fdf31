//! Webhook endpoints: validation, storage, secrets, and disabling (shared with the dispatcher).

use coursewire_proto::v1::Webhook;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

pub use coursewire_core::webhooks::endpoints::*;

use crate::clock::{opt_timestamp, to_timestamp};
use crate::resource::etag;
use coursewire_core::error::{ApiError, ApiResult};
use coursewire_core::events::EVENT_TYPES;
use coursewire_core::validate::Violations;

pub const MAX_URL_LEN: usize = 2048;
pub const MAX_HEADERS: usize = 20;
pub const MAX_RATE: i32 = 10_000;
pub const MAX_CONCURRENCY: i32 = 256;
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

pub(crate) async fn fetch(conn: &mut AnyConnection, org: &str, id: &str) -> ApiResult<(Webhook, i64)> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} WHERE id = $1 AND org_id = $2")))
        .bind(id)
        .bind(org)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook", id))?;
    Ok(from_row(&row)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_filters() {
        assert!(is_event_filter("enrollment.*") && is_event_filter("webhook.disabled"));
        assert!(!is_event_filter("enrolment.created") && !is_event_filter("*"));
    }

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
}
