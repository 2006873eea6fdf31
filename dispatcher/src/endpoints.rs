//! The dispatcher's cache of webhook endpoints, per organization, with their signing secrets
//! and headers already opened, so matching an event and sending it read nothing per event.
//!
//! It is exact, not merely fresh: every write to an organization's endpoints bumps
//! `organizations.webhooks_version` in the same transaction. On Postgres the relay reads that
//! version after the event committed and sends it with the event, so an entry at least that
//! recent is current without a query; otherwise (SQLite, claims) the cache reads the
//! organizations' versions (one small query) and reloads those that moved. Either way every
//! endpoint change committed before an event is seen by it. Entries are also reloaded after
//! `TTL`, in case a row was edited by hand.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coursewire_core::secrets::Keyring;
use coursewire_core::store::Db;
use coursewire_core::webhooks::endpoints::{open_headers, secret_context, wants};
use sqlx::Row;

use crate::signing::Secret;

const TTL: Duration = Duration::from_secs(60);

/// An endpoint as sending needs it.
pub struct Endpoint {
    pub id: String,
    pub org: String,
    pub url: String,
    filters: Vec<String>,
    pub headers: Vec<(String, String)>,
    secret: Secret,
    /// The rotated-out secret and until when (epoch ms) it still signs.
    previous: Option<(Secret, i64)>,
    pub max_rate: u32,
    pub max_concurrency: u32,
    pub enabled: bool,
}

impl Endpoint {
    /// The secrets that sign at `now`: the current one, and the previous during its overlap.
    pub fn secrets(&self, now: i64) -> Vec<Secret> {
        let mut out = vec![self.secret.clone()];
        if let Some((previous, until)) = &self.previous
            && *until > now
        {
            out.push(previous.clone());
        }
        out
    }

    pub fn wants(&self, kind: &str) -> bool {
        self.enabled && wants(&self.filters, kind)
    }
}

struct Entry {
    version: i64,
    loaded: Instant,
    endpoints: Vec<Arc<Endpoint>>,
}

#[derive(Default)]
pub struct Cache {
    orgs: Mutex<HashMap<String, Entry>>,
}

impl Cache {
    /// Makes the entries of `orgs` current. An organization given with the version its event
    /// was relayed at needs nothing when the entry is at least that recent; the others cost one
    /// query for their versions, and one more to reload those that changed.
    pub async fn refresh(&self, db: &Db, keyring: &Keyring, orgs: &[(&str, Option<i64>)]) -> anyhow::Result<()> {
        let orgs: Vec<&str> = {
            let cached = self.orgs.lock().unwrap_or_else(|p| p.into_inner());
            let current = |org: &str, version: Option<i64>| {
                cached.get(org).zip(version).is_some_and(|(e, v)| e.version >= v && e.loaded.elapsed() <= TTL)
            };
            let mut stale: Vec<&str> = orgs.iter().filter(|(o, v)| !current(o, *v)).map(|(o, _)| *o).collect();
            stale.dedup();
            stale
        };
        if orgs.is_empty() {
            return Ok(());
        }
        let sql = format!("SELECT id, webhooks_version FROM organizations WHERE id IN ({})", placeholders(orgs.len()));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for org in orgs {
            q = q.bind(org);
        }
        let versions: Vec<(String, i64)> = q
            .fetch_all(db.pool())
            .await?
            .iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("webhooks_version")?)))
            .collect::<Result<_, sqlx::Error>>()?;
        let stale: Vec<(String, i64)> = {
            let cached = self.orgs.lock().unwrap_or_else(|p| p.into_inner());
            versions
                .into_iter()
                .filter(|(org, version)| {
                    cached.get(org).is_none_or(|e| e.version != *version || e.loaded.elapsed() > TTL)
                })
                .collect()
        };
        if stale.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "SELECT id, org_id, url, event_types, headers, secret, previous_secret, previous_expires_at, max_rate, \
             max_concurrency, disabled_at FROM webhook_endpoints WHERE org_id IN ({}) ORDER BY id",
            placeholders(stale.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (org, _) in &stale {
            q = q.bind(org.as_str());
        }
        let mut loaded: HashMap<String, Vec<Arc<Endpoint>>> = HashMap::new();
        for r in q.fetch_all(db.pool()).await? {
            let id: String = r.try_get("id")?;
            match open(keyring, &id, &r) {
                Ok(endpoint) => loaded.entry(endpoint.org.clone()).or_default().push(Arc::new(endpoint)),
                // Its deliveries wait (they are written, not sent) until the keys are right.
                Err(e) => {
                    tracing::error!(endpoint = %id, error = %e, "cannot open the endpoint's secrets; it is skipped")
                }
            }
        }
        let mut cached = self.orgs.lock().unwrap_or_else(|p| p.into_inner());
        for (org, version) in stale {
            let endpoints = loaded.remove(&org).unwrap_or_default();
            cached.insert(org, Entry { version, loaded: Instant::now(), endpoints });
        }
        Ok(())
    }

    /// The organization's enabled endpoints that want events of type `kind`.
    pub fn matching(&self, org: &str, kind: &str) -> Vec<Arc<Endpoint>> {
        let cached = self.orgs.lock().unwrap_or_else(|p| p.into_inner());
        cached.get(org).map(|e| e.endpoints.iter().filter(|ep| ep.wants(kind)).cloned().collect()).unwrap_or_default()
    }

    /// One endpoint of the organization (enabled or not), if it exists.
    pub fn get(&self, org: &str, id: &str) -> Option<Arc<Endpoint>> {
        let cached = self.orgs.lock().unwrap_or_else(|p| p.into_inner());
        cached.get(org).and_then(|e| e.endpoints.iter().find(|ep| ep.id == id).cloned())
    }
}

fn placeholders(n: usize) -> String {
    (1..=n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

fn open(keyring: &Keyring, id: &str, r: &sqlx::any::AnyRow) -> anyhow::Result<Endpoint> {
    let context = secret_context(id);
    let secret = |sealed: &str| -> anyhow::Result<Secret> {
        Secret::parse(&keyring.open(sealed, &context)?).map_err(anyhow::Error::msg)
    };
    let previous =
        match (r.try_get::<Option<String>, _>("previous_secret")?, r.try_get::<Option<i64>, _>("previous_expires_at")?)
        {
            (Some(sealed), Some(until)) => Some((secret(&sealed)?, until)),
            _ => None,
        };
    Ok(Endpoint {
        id: id.to_string(),
        org: r.try_get("org_id")?,
        url: r.try_get("url")?,
        filters: serde_json::from_str(&r.try_get::<String, _>("event_types")?).unwrap_or_default(),
        headers: open_headers(keyring, id, &r.try_get::<String, _>("headers")?)?,
        secret: secret(&r.try_get::<String, _>("secret")?)?,
        previous,
        max_rate: r.try_get::<i64, _>("max_rate")? as u32,
        max_concurrency: r.try_get::<i64, _>("max_concurrency")? as u32,
        enabled: r.try_get::<Option<i64>, _>("disabled_at")?.is_none(),
    })
}
