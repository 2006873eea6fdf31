//! The dispatcher's database side: claiming due deliveries under a lease (Postgres:
//! `FOR UPDATE SKIP LOCKED`, so replicas never claim the same row; SQLite: one process,
//! one writer), loading what a send needs, and recording attempts and their outcomes.
use std::collections::HashMap;
use std::sync::Arc;

use coursewire_services::error::ApiError;
use coursewire_services::ids::new_id;
use coursewire_services::store::{Backend, Db};
use coursewire_services::webhooks::endpoint;
use sqlx::Row;

use crate::schedule::Next;
use crate::signing::Secret;

type Result<T> = std::result::Result<T, anyhow::Error>;

fn db_err(e: ApiError) -> anyhow::Error {
    anyhow::anyhow!(e.message)
}

/// A delivery this dispatcher holds a lease on.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub id: String,
    pub org: String,
    pub endpoint_id: String,
    pub event_id: String,
    /// Attempts made before this one.
    pub attempts: i64,
    /// Only this attempt (after RetryDelivery), no automatic retries.
    pub single: bool,
}

/// What a send needs to know about its endpoint.
pub struct Endpoint {
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// The current secret, then the previous one during a rotation overlap.
    pub secrets: Vec<Secret>,
    pub max_rate: u32,
    pub max_concurrency: u32,
}

/// One finished attempt, ready to be recorded.
pub struct Outcome {
    pub delivery: Claimed,
    pub attempted_at: i64,
    pub duration_ms: i64,
    pub status: u16,
    pub error: &'static str,
    pub body: String,
    pub next: Next,
}

/// Leases up to `limit` due deliveries of enabled endpoints, skipping `busy` endpoints.
pub async fn claim(db: &Db, now: i64, lease_until: i64, limit: usize, busy: &[String]) -> Result<Vec<Claimed>> {
    let mut skip = String::new();
    for i in 0..busy.len() {
        skip.push_str(if i == 0 { " AND d.endpoint_id NOT IN (" } else { ", " });
        skip.push_str(&format!("${}", i + 4));
    }
    if !busy.is_empty() {
        skip.push(')');
    }
    let lock = if db.backend == Backend::Postgres { " FOR UPDATE OF d SKIP LOCKED" } else { "" };
    let sql = format!(
        "UPDATE webhook_deliveries SET lease_until = $1 WHERE id IN (\
           SELECT d.id FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id \
           WHERE d.state = 'pending' AND d.next_attempt_at <= $2 AND d.lease_until <= $2 AND e.disabled_at IS NULL{skip} \
           ORDER BY d.next_attempt_at LIMIT $3{lock}) \
         RETURNING id, org_id, endpoint_id, event_id, attempts, single_attempt"
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(lease_until).bind(now).bind(limit as i64);
    for id in busy {
        q = q.bind(id);
    }
    let mut tx = db.begin().await.map_err(db_err)?;
    let rows = q.fetch_all(&mut *tx).await?;
    tx.commit().await.map_err(db_err)?;
    rows.iter()
        .map(|r| {
            Ok(Claimed {
                id: r.try_get("id")?,
                org: r.try_get("org_id")?,
                endpoint_id: r.try_get("endpoint_id")?,
                event_id: r.try_get("event_id")?,
                attempts: r.try_get("attempts")?,
                single: r.try_get::<i64, _>("single_attempt")? != 0,
            })
        })
        .collect()
}

/// Gives deliveries back without an attempt (this process could not start them in time).
pub async fn release(db: &Db, ids: &[String]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let sql = format!("UPDATE webhook_deliveries SET lease_until = 0 WHERE id IN ({})", placeholders(1, ids.len()));
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for id in ids {
        q = q.bind(id);
    }
    let mut tx = db.begin().await.map_err(db_err)?;
    q.execute(&mut *tx).await?;
    tx.commit().await.map_err(db_err)?;
    Ok(())
}

fn placeholders(from: usize, n: usize) -> String {
    (from..from + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// The envelopes (exact bytes) of these events.
pub async fn bodies(db: &Db, event_ids: &[&str]) -> Result<HashMap<String, Arc<str>>> {
    let mut out = HashMap::new();
    for chunk in event_ids.chunks(500) {
        let sql = format!("SELECT id, body FROM events WHERE id IN ({})", placeholders(1, chunk.len()));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(*id);
        }
        for r in q.fetch_all(db.pool()).await? {
            out.insert(r.try_get("id")?, Arc::from(r.try_get::<String, _>("body")?));
        }
    }
    Ok(out)
}

/// The endpoints' send settings and live secrets.
pub async fn endpoints(db: &Db, ids: &[&str], now: i64) -> Result<HashMap<String, Arc<Endpoint>>> {
    let sql = format!(
        "SELECT id, url, headers, secret, previous_secret, previous_expires_at, max_rate, max_concurrency \
         FROM webhook_endpoints WHERE id IN ({})",
        placeholders(1, ids.len())
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for id in ids {
        q = q.bind(*id);
    }
    let mut out = HashMap::new();
    for r in q.fetch_all(db.pool()).await? {
        let mut secrets = vec![Secret::parse(&r.try_get::<String, _>("secret")?).map_err(anyhow::Error::msg)?];
        let previous: Option<String> = r.try_get("previous_secret")?;
        let expires: Option<i64> = r.try_get("previous_expires_at")?;
        if let (Some(previous), Some(expires)) = (previous, expires)
            && expires > now
        {
            secrets.push(Secret::parse(&previous).map_err(anyhow::Error::msg)?);
        }
        let headers: HashMap<String, String> = serde_json::from_str(&r.try_get::<String, _>("headers")?)?;
        let endpoint = Endpoint {
            url: r.try_get("url")?,
            headers: headers.into_iter().collect(),
            secrets,
            max_rate: r.try_get::<i64, _>("max_rate")? as u32,
            max_concurrency: r.try_get::<i64, _>("max_concurrency")? as u32,
        };
        out.insert(r.try_get("id")?, Arc::new(endpoint));
    }
    Ok(out)
}

/// Records attempts and their consequences in one transaction: the attempt row, the
/// delivery's new state, the endpoint's failure streak, and disabling the endpoint on 410 or
/// after `disable_after_ms` of failures only. Returns the endpoints it disabled.
pub async fn record(db: &Db, outcomes: &[Outcome], now: i64, disable_after_ms: i64) -> Result<Vec<String>> {
    let mut tx = db.begin().await.map_err(db_err)?;
    let mut disabled = Vec::new();
    for o in outcomes {
        let d = &o.delivery;
        sqlx::query(
            "INSERT INTO webhook_attempts (id, delivery_id, attempted_at, duration_ms, status, error, response_body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(new_id("att"))
        .bind(&d.id)
        .bind(o.attempted_at)
        .bind(o.duration_ms)
        .bind(i64::from(o.status))
        .bind(o.error)
        .bind(&o.body)
        .execute(&mut *tx)
        .await?;
        let (state, next_at) = match o.next {
            Next::Delivered => ("succeeded", 0),
            Next::RetryAt(at) => ("pending", at),
            Next::Failed | Next::Gone => ("failed", 0),
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET state = $2, attempts = attempts + 1, next_attempt_at = $3, lease_until = 0, \
             single_attempt = 0, last_status = $4, last_error = $5, updated_at = $6 WHERE id = $1",
        )
        .bind(&d.id)
        .bind(state)
        .bind(next_at)
        .bind(i64::from(o.status))
        .bind(o.error)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let streak = if o.next == Next::Delivered {
            "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL"
        } else {
            "UPDATE webhook_endpoints SET failing_since = $2 WHERE id = $1 AND failing_since IS NULL"
        };
        let mut q = sqlx::query(streak).bind(&d.endpoint_id);
        if o.next != Next::Delivered {
            q = q.bind(o.attempted_at);
        }
        q.execute(&mut *tx).await?;
        let reason = if o.next == Next::Gone {
            Some("the endpoint answered 410 Gone".to_string())
        } else if o.next != Next::Delivered {
            let since: Option<i64> = sqlx::query_scalar("SELECT failing_since FROM webhook_endpoints WHERE id = $1")
                .bind(&d.endpoint_id)
                .fetch_optional(&mut *tx)
                .await?
                .flatten();
            since
                .filter(|s| now - s >= disable_after_ms)
                .map(|s| format!("every delivery failed since {}", coursewire_services::clock::rfc3339(s)))
        } else {
            None
        };
        if let Some(reason) = reason
            && endpoint::disable(&mut tx, &d.org, &d.endpoint_id, &reason, now).await.map_err(db_err)?
        {
            disabled.push(d.endpoint_id.clone());
        }
    }
    tx.commit().await.map_err(db_err)?;
    Ok(disabled)
}

/// Deliveries due now and not leased: the queue depth operators watch.
pub async fn due(db: &Db, now: i64) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= $1 AND lease_until <= $1",
    )
    .bind(now)
    .fetch_one(db.pool())
    .await?)
}
