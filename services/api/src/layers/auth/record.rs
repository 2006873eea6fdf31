//! An API key as the auth layer and the key store see it: its scopes and its record.
use std::sync::atomic::{AtomicI64, Ordering};

use ipnet::IpNet;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::policy::RESOURCES;
use crate::policy::windows::{OrgLimits, Overrides, Window, parse_windows};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scopes(pub Vec<String>);

impl Scopes {
    /// Parses `*` or `RESOURCE:read|write` items. An empty list, or a blank item, is an error:
    /// a key's authority is always spelled out (`*` must be asked for).
    pub fn parse(items: &[String]) -> Result<Scopes, String> {
        let mut items: Vec<String> = items.iter().map(|s| s.trim().to_string()).collect();
        if items.is_empty() || items.iter().any(String::is_empty) {
            return Err("name at least one scope, and no blank ones: `*` or RESOURCE:read|write".into());
        }
        let mut seen = std::collections::HashSet::new();
        items.retain(|s| seen.insert(s.clone()));
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
    /// The organization's rate limit overrides, parsed.
    pub org_limits: OrgLimits,
    /// The key's own limit (`100/1m`), as written ("" for none), and parsed.
    pub rate_limit: String,
    pub key_limit: Option<Vec<Window>>,
    last_used_at: AtomicI64,
}

impl KeyRecord {
    /// True for a web console session's authority (`sessions::find_session`): it has no
    /// secret of its own, and its label says who signed in.
    pub fn is_session(&self) -> bool {
        self.secret_hash.is_empty()
    }

    /// Who acts with this key, as the activity log shows it.
    pub fn actor(&self) -> String {
        if self.is_session() { format!("{} in the console", self.label) } else { format!("key sk_{}…", self.prefix) }
    }

    pub fn last_used_at(&self) -> Option<i64> {
        Some(self.last_used_at.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// True (once per interval) when `last_used_at` should be written again.
    pub(super) fn touch_due(&self, now: i64, every_ms: i64) -> bool {
        let last = self.last_used_at.load(Ordering::Relaxed);
        now - last >= every_ms
            && self.last_used_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    pub(super) fn from_row(r: &AnyRow) -> Result<KeyRecord, sqlx::Error> {
        let cidrs: String = r.try_get("allowed_cidrs")?;
        let scopes: String = r.try_get("scopes")?;
        let rate_limit: String = r.try_get("rate_limit")?;
        let org_limits = Overrides::from_json(r.try_get::<Option<String>, _>("org_rate_limits")?.as_deref()).parsed();
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
            org_limits,
            key_limit: if rate_limit.is_empty() { None } else { parse_windows(&rate_limit).ok() },
            rate_limit,
            last_used_at: AtomicI64::new(r.try_get::<Option<i64>, _>("last_used_at")?.unwrap_or(0)),
        })
    }
}
