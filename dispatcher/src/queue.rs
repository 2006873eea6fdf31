//! The dispatcher's database side: claiming due deliveries under a lease (Postgres:
//! `FOR UPDATE SKIP LOCKED`, so replicas never claim the same row; SQLite: one process,
//! one writer), loading what a send needs, and recording attempts and their outcomes.
use std::collections::HashMap;
use std::sync::Arc;

use coursewire_core::error::ApiError;
use coursewire_core::ids::new_id;
use coursewire_core::secrets::Keyring;
use coursewire_core::store::{Backend, Db};
use coursewire_core::webhooks::endpoints as endpoint;
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

/// Due rows one claim looks at.
const SCAN: usize = 2000;
/// How many rounds of an endpoint's cap one claim may take (they wait in its lane).
pub const QUEUED_ROUNDS: u32 = 4;

/// Leases up to `limit` due deliveries of enabled endpoints, at most as many per endpoint as
/// it may have in flight (its concurrency cap, or its rate if lower) times QUEUED_ROUNDS,
/// skipping `full` ones.
pub async fn claim(
    db: &Db,
    now: i64,
    lease_until: i64,
    limit: usize,
    default_cap: u32,
    full: &[String],
) -> Result<Vec<Claimed>> {
    let mut skip = String::new();
    for i in 0..full.len() {
        skip.push_str(if i == 0 { " AND d.endpoint_id NOT IN (" } else { ", " });
        skip.push_str(&format!("${}", i + 5));
    }
    if !full.is_empty() {
        skip.push(')');
    }
    let lock = if db.backend == Backend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
    // The earliest due rows (at most SCAN, through the partial index) are ranked per endpoint,
    // so a long backlog costs no more per claim than a short one.
    let sql = format!(
        "UPDATE webhook_deliveries SET lease_until = $1 WHERE id IN (\
           SELECT id FROM webhook_deliveries WHERE id IN (\
             SELECT id FROM (\
               SELECT id, ROW_NUMBER() OVER (PARTITION BY endpoint_id ORDER BY next_attempt_at) AS rn, room FROM (\
                 SELECT d.id, d.endpoint_id, d.next_attempt_at, \
                   CASE WHEN e.max_rate > 0 AND e.max_rate < e.max_concurrency THEN e.max_rate \
                        WHEN e.max_concurrency > 0 THEN e.max_concurrency \
                        WHEN e.max_rate > 0 AND e.max_rate < $4 THEN e.max_rate ELSE $4 END AS room \
                 FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id \
                 WHERE d.state = 'pending' AND d.next_attempt_at <= $2 AND d.lease_until <= $2 \
                   AND e.disabled_at IS NULL{skip} \
                 ORDER BY d.next_attempt_at LIMIT {SCAN}) due) ranked \
             WHERE rn <= room * {QUEUED_ROUNDS}) \
           ORDER BY next_attempt_at LIMIT $3{lock}) \
         RETURNING id, org_id, endpoint_id, event_id, attempts, single_attempt"
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(lease_until)
        .bind(now)
        .bind(limit as i64)
        .bind(i64::from(default_cap));
    for id in full {
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

/// The endpoints' send settings and live secrets, opened. An endpoint whose sealed values do
/// not open (a process started without the key that sealed them) is left out and logged: its
/// deliveries wait, leased, and are taken again once the keys are right.
pub async fn endpoints(db: &Db, keyring: &Keyring, ids: &[&str], now: i64) -> Result<HashMap<String, Arc<Endpoint>>> {
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
        let id: String = r.try_get("id")?;
        match open_endpoint(keyring, &id, &r, now) {
            Ok(endpoint) => {
                out.insert(id, Arc::new(endpoint));
            }
            Err(e) => {
                tracing::error!(endpoint = %id, error = %e, "cannot open the endpoint's secrets; its deliveries wait")
            }
        }
    }
    Ok(out)
}

fn open_endpoint(keyring: &Keyring, id: &str, r: &sqlx::any::AnyRow, now: i64) -> Result<Endpoint> {
    let context = endpoint::secret_context(id);
    let secret = |sealed: &str| -> Result<Secret> {
        Secret::parse(&keyring.open(sealed, &context)?).map_err(anyhow::Error::msg)
    };
    let mut secrets = vec![secret(&r.try_get::<String, _>("secret")?)?];
    let previous: Option<String> = r.try_get("previous_secret")?;
    let expires: Option<i64> = r.try_get("previous_expires_at")?;
    if let (Some(previous), Some(expires)) = (previous, expires)
        && expires > now
    {
        secrets.push(secret(&previous)?);
    }
    Ok(Endpoint {
        url: r.try_get("url")?,
        headers: endpoint::open_headers(keyring, id, &r.try_get::<String, _>("headers")?)?,
        secrets,
        max_rate: r.try_get::<i64, _>("max_rate")? as u32,
        max_concurrency: r.try_get::<i64, _>("max_concurrency")? as u32,
    })
}

/// Rows per multi-row statement when recording.
const RECORD_CHUNK: usize = 100;

/// `SELECT $a AS c1, $b AS c2 … UNION ALL SELECT …`: `rows` rows of `columns`, numbered from
/// `$first`. A portable stand-in for `VALUES` with named columns (SQLite and Postgres).
fn rows_of(columns: &[&str], rows: usize, first: usize) -> String {
    (0..rows)
        .map(|r| {
            let fields: Vec<String> =
                columns.iter().enumerate().map(|(i, c)| format!("${} AS {c}", first + r * columns.len() + i)).collect();
            format!("SELECT {}", fields.join(", "))
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// Records attempts and their consequences in one transaction, a few statements per batch:
/// the attempt rows, the deliveries' new states, the endpoints' failure streaks, and
/// disabling endpoints on 410 or after `disable_after_ms` of failures only. Returns the
/// endpoints it disabled.
pub async fn record(db: &Db, outcomes: &[Outcome], now: i64, disable_after_ms: i64) -> Result<Vec<String>> {
    let mut tx = db.begin().await.map_err(db_err)?;
    for chunk in outcomes.chunks(RECORD_CHUNK) {
        // Only while the delivery exists: its endpoint may have been deleted meanwhile.
        let cols = ["id", "delivery_id", "attempted_at", "duration_ms", "status", "error", "response_body"];
        let sql = format!(
            "INSERT INTO webhook_attempts (id, delivery_id, attempted_at, duration_ms, status, error, response_body) \
             SELECT v.* FROM ({}) v WHERE EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.id = v.delivery_id)",
            rows_of(&cols, chunk.len(), 1)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for o in chunk {
            q = q
                .bind(new_id("att"))
                .bind(&o.delivery.id)
                .bind(o.attempted_at)
                .bind(o.duration_ms)
                .bind(i64::from(o.status))
                .bind(o.error)
                .bind(&o.body);
        }
        q.execute(&mut *tx).await?;

        let cols = ["id", "state", "next_at", "status", "error"];
        let sql = format!(
            "UPDATE webhook_deliveries SET state = v.state, attempts = attempts + 1, next_attempt_at = v.next_at, \
             lease_until = 0, single_attempt = 0, last_status = v.status, last_error = v.error, updated_at = $1 \
             FROM ({}) v WHERE webhook_deliveries.id = v.id",
            rows_of(&cols, chunk.len(), 2)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
        for o in chunk {
            let (state, next_at) = match o.next {
                Next::Delivered => ("succeeded", 0),
                Next::RetryAt(at) => ("pending", at),
                Next::Failed | Next::Gone => ("failed", 0),
            };
            q = q.bind(&o.delivery.id).bind(state).bind(next_at).bind(i64::from(o.status)).bind(o.error);
        }
        q.execute(&mut *tx).await?;
    }

    // Failure streaks: an endpoint's last outcome in the batch decides.
    let mut last: HashMap<&str, &Outcome> = HashMap::new();
    for o in outcomes {
        last.insert(&o.delivery.endpoint_id, o);
    }
    let (ok, failing): (Vec<&str>, Vec<&str>) = last.keys().copied().partition(|id| last[id].next == Next::Delivered);
    let first_failure = outcomes.iter().filter(|o| o.next != Next::Delivered).map(|o| o.attempted_at).min();
    if !ok.is_empty() {
        let sql = format!(
            "UPDATE webhook_endpoints SET failing_since = NULL WHERE failing_since IS NOT NULL AND id IN ({})",
            placeholders(1, ok.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in &ok {
            q = q.bind(*id);
        }
        q.execute(&mut *tx).await?;
    }
    if let Some(first_failure) = first_failure
        && !failing.is_empty()
    {
        let sql = format!(
            "UPDATE webhook_endpoints SET failing_since = $1 WHERE failing_since IS NULL AND id IN ({})",
            placeholders(2, failing.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(first_failure);
        for id in &failing {
            q = q.bind(*id);
        }
        q.execute(&mut *tx).await?;
    }

    // Endpoints to disable: 410 Gone, or failing for too long.
    let mut disable: Vec<(String, String, String)> = outcomes
        .iter()
        .filter(|o| o.next == Next::Gone)
        .map(|o| (o.delivery.endpoint_id.clone(), o.delivery.org.clone(), "the endpoint answered 410 Gone".into()))
        .collect();
    if !failing.is_empty() {
        let sql = format!(
            "SELECT id, org_id, failing_since FROM webhook_endpoints \
             WHERE disabled_at IS NULL AND failing_since <= $1 AND id IN ({})",
            placeholders(2, failing.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now - disable_after_ms);
        for id in &failing {
            q = q.bind(*id);
        }
        for r in q.fetch_all(&mut *tx).await? {
            let since = coursewire_core::clock::rfc3339(r.try_get("failing_since")?);
            disable.push((r.try_get("id")?, r.try_get("org_id")?, format!("every delivery failed since {since}")));
        }
    }
    let mut disabled = Vec::new();
    for (id, org, reason) in disable {
        if endpoint::disable(&mut tx, &org, &id, &reason, now).await.map_err(db_err)? {
            disabled.push(id);
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
