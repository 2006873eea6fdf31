//! The dispatcher's database side. A dispatcher that takes a delivery writes its name in
//! `lease_owner` and moves `next_attempt_at` to `HELD`, beyond every claim. The lease is its
//! liveness row (`dispatcher_liveness`), renewed by a heartbeat while it holds anything:
//! one row, however many deliveries. When a dispatcher's row lapses (it died, or lost the
//! database), any other hands its deliveries back, due at once (`reap`). Claims take due
//! rows in due order through the partial index (`FOR UPDATE SKIP LOCKED` on Postgres, so
//! replicas never take the same row; SQLite has one process), so a claim costs what it
//! takes, however long the backlog.
//!
//! Writes come in batches: the deliveries intake made (with the first attempts that finished)
//! in one statement on Postgres when nothing failed, and the outcomes of held deliveries in
//! one transaction per batch.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use coursewire_core::clock::rfc3339;
use coursewire_core::error::ApiError;
use coursewire_core::ids::{kind, new_id};
use coursewire_core::store::{Backend, Db, Tx};
use coursewire_core::trace::TraceContext;
use coursewire_core::webhooks::deliveries::{self, Bind, HELD, bound};
use coursewire_core::webhooks::endpoints;
use sqlx::Row;

use crate::schedule::Next;
use crate::sender::Payload;

type Result<T> = std::result::Result<T, anyhow::Error>;

fn db_err(e: ApiError) -> anyhow::Error {
    anyhow::anyhow!(e.message)
}

/// A delivery this dispatcher holds (leased), or is about to write.
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

/// A delivery intake made, and how far its first attempt got before the batch was written.
pub enum Fresh {
    /// Attempted; the outcome goes in with the delivery.
    Done(Outcome),
    /// Still being attempted: written leased to us; its outcome is recorded later.
    InFlight(Claimed),
    /// Not started (its endpoint's lane was full): written due now, for a claim.
    Waiting(Claimed),
}

impl Fresh {
    fn delivery(&self) -> &Claimed {
        match self {
            Fresh::Done(o) => &o.delivery,
            Fresh::InFlight(d) | Fresh::Waiting(d) => d,
        }
    }
}

fn placeholders(from: usize, n: usize) -> String {
    (from..from + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// Rows per multi-row statement.
const CHUNK: usize = 200;

/// Takes up to `limit` due deliveries (leaving out those of `full` endpoints, whose lanes
/// cannot take more); the caller's liveness row must be ahead. Disabled endpoints'
/// deliveries are parked, beyond any claim; one disabled after its delivery came due is
/// parked by the caller.
pub async fn claim(db: &Db, me: &str, now: i64, limit: usize, full: &[String]) -> Result<Vec<Claimed>> {
    let skip = if full.is_empty() {
        String::new()
    } else {
        format!(" AND endpoint_id NOT IN ({})", placeholders(5, full.len()))
    };
    let due = format!(
        "SELECT id FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= $3{skip} \
         ORDER BY next_attempt_at LIMIT $4"
    );
    // Postgres: lock what we take, skipping rows another dispatcher is taking, and look the
    // rows up by key (`= ANY(ARRAY(…))`: an `IN` here is planned as a join over every due row).
    // Due-ness is checked again by the UPDATE itself, so a row another dispatcher leased
    // between our snapshot and our lock no longer matches and is left alone.
    let taken = match db.backend {
        Backend::Postgres => format!("= ANY(ARRAY({due} FOR UPDATE SKIP LOCKED))"),
        Backend::Sqlite => format!("IN ({due})"),
    };
    let sql = format!(
        "UPDATE webhook_deliveries SET next_attempt_at = $1, lease_owner = $2 WHERE id {taken} \
         AND state = 'pending' AND next_attempt_at <= $3 \
         RETURNING id, org_id, endpoint_id, event_id, attempts, single_attempt"
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(HELD).bind(me).bind(now).bind(limit as i64);
    for id in full {
        q = q.bind(id);
    }
    let mut tx = db.begin_quiet().await.map_err(db_err)?;
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

/// Hands deliveries back without an attempt, due at `at` (now, or `PARKED`).
pub async fn release(db: &Db, me: &str, ids: &[String], at: i64) -> Result<()> {
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "UPDATE webhook_deliveries SET next_attempt_at = $1, lease_owner = '' \
             WHERE lease_owner = $2 AND state = 'pending' AND id IN ({})",
            placeholders(3, chunk.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(at).bind(me);
        for id in chunk {
            q = q.bind(id);
        }
        q.execute(db.pool()).await?;
    }
    Ok(())
}

/// Says we are alive until `until` (the heartbeat, and before holding anything new).
pub async fn alive(db: &Db, me: &str, until: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO dispatcher_liveness (owner, alive_until) VALUES ($1, $2) \
         ON CONFLICT (owner) DO UPDATE SET alive_until = excluded.alive_until",
    )
    .bind(me)
    .bind(until)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Hands back, due at `now`, the deliveries of every dispatcher whose liveness lapsed;
/// returns how many. Each lapsed row is deleted first and its deliveries released in the
/// same transaction: a dispatcher renewing at that moment waits on the row, and holds
/// nothing new before this commits, so only deliveries of the dead are released.
pub async fn reap(db: &Db, now: i64) -> Result<u64> {
    let lapsed: Vec<String> = sqlx::query_scalar("SELECT owner FROM dispatcher_liveness WHERE alive_until < $1")
        .bind(now)
        .fetch_all(db.pool())
        .await?;
    let mut released = 0;
    for owner in lapsed {
        let mut tx = db.begin_quiet().await.map_err(db_err)?;
        let gone = sqlx::query("DELETE FROM dispatcher_liveness WHERE owner = $1 AND alive_until < $2")
            .bind(&owner)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let theirs = if gone == 1 { release_owner(&mut tx, &owner, now).await? } else { 0 };
        tx.commit().await.map_err(db_err)?;
        if theirs > 0 {
            tracing::warn!(dispatcher = %owner, deliveries = theirs, "a dispatcher stopped renewing; its deliveries are due again");
        }
        released += theirs;
    }
    Ok(released)
}

/// Makes every delivery `owner` holds due at `at` and nobody's; returns how many.
async fn release_owner(tx: &mut Tx, owner: &str, at: i64) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE webhook_deliveries SET next_attempt_at = $1, lease_owner = '' \
         WHERE lease_owner = $2 AND lease_owner <> '' AND state = 'pending'",
    )
    .bind(at)
    .bind(owner)
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

/// Hands back every delivery we still hold, due at `at`, and removes our liveness row
/// (shutdown).
pub async fn release_all(db: &Db, me: &str, at: i64) -> Result<()> {
    let mut tx = db.begin_quiet().await.map_err(db_err)?;
    release_owner(&mut tx, me, at).await?;
    sqlx::query("DELETE FROM dispatcher_liveness WHERE owner = $1").bind(me).execute(&mut *tx).await?;
    tx.commit().await.map_err(db_err)?;
    Ok(())
}

/// When the next pending delivery comes due (a retry), if any; held and parked ones never do.
pub async fn next_due(db: &Db) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at < $1",
    )
    .bind(HELD)
    .fetch_one(db.pool())
    .await?)
}

/// Deliveries due now and not leased: the queue depth operators watch.
pub async fn due(db: &Db, now: i64) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= $1")
        .bind(now)
        .fetch_one(db.pool())
        .await?)
}

/// The (endpoint, event) pairs that already have a delivery: for events the bus redelivered,
/// whose deliveries an earlier intake may have written before it could acknowledge them.
pub async fn existing(db: &Db, event_ids: &[&str]) -> Result<HashSet<(String, String)>> {
    let mut out = HashSet::new();
    for chunk in event_ids.chunks(CHUNK) {
        let sql = format!(
            "SELECT endpoint_id, event_id FROM webhook_deliveries WHERE origin = '' AND event_id IN ({})",
            placeholders(1, chunk.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(*id);
        }
        for r in q.fetch_all(db.pool()).await? {
            out.insert((r.try_get("endpoint_id")?, r.try_get("event_id")?));
        }
    }
    Ok(out)
}

/// The envelopes (exact bytes) of these events and their traces (for retries: intake has
/// them from the bus).
pub async fn bodies(db: &Db, event_ids: &[&str]) -> Result<HashMap<String, Payload>> {
    let mut out = HashMap::new();
    for chunk in event_ids.chunks(CHUNK * 2) {
        let sql = format!("SELECT id, body, traceparent FROM events WHERE id IN ({})", placeholders(1, chunk.len()));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(*id);
        }
        for r in q.fetch_all(db.pool()).await? {
            let trace = r.try_get::<Option<String>, _>("traceparent")?.as_deref().and_then(TraceContext::parse);
            out.insert(r.try_get("id")?, Payload { body: Arc::from(r.try_get::<String, _>("body")?), trace });
        }
    }
    Ok(out)
}

/// What an outcome makes of its delivery: state and next attempt time.
fn after(next: &Next) -> (&'static str, i64) {
    match next {
        Next::Delivered => ("succeeded", 0),
        Next::RetryAt(at) => ("pending", *at),
        Next::Failed | Next::Gone => ("failed", 0),
    }
}

/// The delivery rows of `rows` (ids are the deliveries'), with the first attempt's result
/// where there is one, as the shared INSERT writes them.
fn delivery_rows<'q>(
    rows: &'q [Fresh],
    kinds: &'q [&'q str],
    me: &'q str,
    now: i64,
) -> Vec<deliveries::DeliveryRow<'q>> {
    rows.iter()
        .zip(kinds)
        .map(|(row, kind)| {
            let d = row.delivery();
            let (state, attempts, next_attempt_at, lease_owner, last_status, last_error) = match row {
                Fresh::Done(o) => {
                    let (state, next_at) = after(&o.next);
                    (state, 1, next_at, "", i64::from(o.status), o.error)
                }
                Fresh::InFlight(_) => ("pending", 0, HELD, me, 0, ""),
                Fresh::Waiting(_) => ("pending", 0, now, "", 0, ""),
            };
            deliveries::DeliveryRow {
                id: &d.id,
                org: &d.org,
                endpoint_id: &d.endpoint_id,
                event_id: &d.event_id,
                event_type: kind,
                origin: "",
                state,
                attempts,
                next_attempt_at,
                lease_owner,
                last_status,
                last_error,
            }
        })
        .collect()
}

/// `SELECT $a AS c1, $b AS c2 … UNION ALL SELECT …` of the attempts of `outcomes`, numbered
/// from `$first`: a portable stand-in for `VALUES` with named columns.
fn attempt_rows<'q>(outcomes: &[&'q Outcome], first: usize, binds: &mut Vec<Bind<'q>>, ids: &'q [String]) -> String {
    let cols = ["id", "delivery_id", "attempted_at", "duration_ms", "status", "error", "response_body"];
    outcomes
        .iter()
        .zip(ids)
        .enumerate()
        .map(|(r, (o, id))| {
            binds.extend([
                Bind::Text(id),
                Bind::Text(&o.delivery.id),
                Bind::Int(o.attempted_at),
                Bind::Int(o.duration_ms),
                Bind::Int(i64::from(o.status)),
                Bind::Text(o.error),
                Bind::Text(&o.body),
            ]);
            let fields: Vec<String> =
                cols.iter().enumerate().map(|(i, c)| format!("${} AS {c}", first + r * cols.len() + i)).collect();
            format!("SELECT {}", fields.join(", "))
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// Writes the deliveries intake made, with the first attempts that finished, and what those
/// attempts mean for their endpoints. On Postgres, when every finished attempt succeeded
/// (the usual batch), it is one statement. Returns the endpoints it disabled.
pub async fn insert_fresh(
    db: &Db,
    me: &str,
    rows: &[Fresh],
    kinds: &[&str],
    now: i64,
    disable_after_ms: i64,
) -> Result<Vec<String>> {
    let done: Vec<&Outcome> = rows.iter().filter_map(|r| if let Fresh::Done(o) = r { Some(o) } else { None }).collect();
    let all_delivered = done.iter().all(|o| o.next == Next::Delivered);
    if db.backend == Backend::Postgres && all_delivered && rows.len() <= CHUNK {
        let delivery_rows = delivery_rows(rows, kinds, me, now);
        let mut binds = Vec::new();
        let deliveries = deliveries::insert_sql(&delivery_rows, now, &mut binds);
        let attempt_ids: Vec<String> = done.iter().map(|_| new_id(kind::ATTEMPT)).collect();
        let mut sql = format!("WITH d AS ({deliveries} RETURNING id)");
        if !done.is_empty() {
            // Every attempt made is recorded, also one whose delivery was there already (the
            // event came again): its id names that row (`deliveries::id_for`).
            let values = attempt_rows(&done, binds.len() + 1, &mut binds, &attempt_ids);
            sql.push_str(&format!(
                ", a AS (INSERT INTO webhook_attempts (id, delivery_id, attempted_at, duration_ms, status, error, \
                 response_body) SELECT v.* FROM ({values}) v)"
            ));
            let endpoints: HashSet<&str> = done.iter().map(|o| o.delivery.endpoint_id.as_str()).collect();
            let first = binds.len() + 1;
            binds.extend(endpoints.iter().map(|e| Bind::Text(e)));
            sql.push_str(&format!(
                ", s AS (UPDATE webhook_endpoints SET failing_since = NULL \
                 WHERE failing_since IS NOT NULL AND id IN ({}))",
                placeholders(first, endpoints.len())
            ));
        }
        sql.push_str(" SELECT COUNT(*) FROM d");
        bound(sql, &binds).fetch_one(db.pool()).await?;
        return Ok(Vec::new());
    }
    let mut tx = db.begin_quiet().await.map_err(db_err)?;
    for (chunk, kinds) in rows.chunks(CHUNK).zip(kinds.chunks(CHUNK)) {
        let mut binds = Vec::new();
        let sql = deliveries::insert_sql(&delivery_rows(chunk, kinds, me, now), now, &mut binds);
        bound(sql, &binds).execute(&mut *tx).await?;
    }
    // After the deliveries, so an attempt whose delivery was there already is recorded on it.
    insert_attempts(&mut tx, &done).await?;
    let disabled = consequences(&mut tx, &done, now, disable_after_ms).await?;
    tx.commit().await.map_err(db_err)?;
    Ok(disabled)
}

/// Records the outcomes of held deliveries (retries, and first attempts that outlasted their
/// batch) in one transaction: the attempts, the deliveries' new states (only where our lease
/// still holds: a delivery retaken after our lease ran out belongs to its new holder) and
/// the endpoints' streaks. Returns the endpoints it disabled.
pub async fn record(db: &Db, me: &str, outcomes: &[Outcome], now: i64, disable_after_ms: i64) -> Result<Vec<String>> {
    let mut tx = db.begin_quiet().await.map_err(db_err)?;
    let all: Vec<&Outcome> = outcomes.iter().collect();
    insert_attempts(&mut tx, &all).await?;
    for chunk in outcomes.chunks(CHUNK) {
        let cols = ["id", "state", "next_at", "status", "error"];
        let values = chunk
            .iter()
            .enumerate()
            .map(|(r, _)| {
                let fields: Vec<String> =
                    cols.iter().enumerate().map(|(i, c)| format!("${} AS {c}", 3 + r * cols.len() + i)).collect();
                format!("SELECT {}", fields.join(", "))
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let sql = format!(
            "UPDATE webhook_deliveries SET state = v.state, attempts = attempts + 1, next_attempt_at = v.next_at, \
             lease_owner = '', single_attempt = 0, last_status = v.status, last_error = v.error, updated_at = $1 \
             FROM ({values}) v WHERE webhook_deliveries.id = v.id AND webhook_deliveries.lease_owner = $2"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now).bind(me);
        for o in chunk {
            let (state, next_at) = after(&o.next);
            q = q.bind(&o.delivery.id).bind(state).bind(next_at).bind(i64::from(o.status)).bind(o.error);
        }
        q.execute(&mut *tx).await?;
    }
    let disabled = consequences(&mut tx, &all, now, disable_after_ms).await?;
    tx.commit().await.map_err(db_err)?;
    Ok(disabled)
}

/// The attempt rows (only for deliveries that exist: an endpoint may have been deleted).
async fn insert_attempts(tx: &mut Tx, outcomes: &[&Outcome]) -> Result<()> {
    let ids: Vec<String> = outcomes.iter().map(|_| new_id(kind::ATTEMPT)).collect();
    for (chunk, ids) in outcomes.chunks(CHUNK).zip(ids.chunks(CHUNK)) {
        let mut binds = Vec::new();
        let values = attempt_rows(chunk, 1, &mut binds, ids);
        let sql = format!(
            "INSERT INTO webhook_attempts (id, delivery_id, attempted_at, duration_ms, status, error, response_body) \
             SELECT v.* FROM ({values}) v WHERE EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.id = v.delivery_id)"
        );
        bound(sql, &binds).execute(&mut **tx).await?;
    }
    Ok(())
}

/// What attempts mean for their endpoints: a success ends a failure streak, a failure starts
/// one; 410 Gone, or failing for `disable_after_ms`, disables the endpoint (with its event,
/// whose commit then wakes the relay). Returns the endpoints disabled.
async fn consequences(tx: &mut Tx, outcomes: &[&Outcome], now: i64, disable_after_ms: i64) -> Result<Vec<String>> {
    if outcomes.is_empty() {
        return Ok(Vec::new());
    }
    // An endpoint's last outcome in the batch decides.
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
        q.execute(&mut **tx).await?;
    }
    let mut disable: Vec<(String, String, String)> = outcomes
        .iter()
        .filter(|o| o.next == Next::Gone)
        .map(|o| (o.delivery.endpoint_id.clone(), o.delivery.org.clone(), "the endpoint answered 410 Gone".into()))
        .collect();
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
        q.execute(&mut **tx).await?;
        let sql = format!(
            "SELECT id, org_id, failing_since FROM webhook_endpoints \
             WHERE disabled_at IS NULL AND failing_since <= $1 AND id IN ({})",
            placeholders(2, failing.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now - disable_after_ms);
        for id in &failing {
            q = q.bind(*id);
        }
        for r in q.fetch_all(&mut **tx).await? {
            let since = rfc3339(r.try_get("failing_since")?);
            disable.push((r.try_get("id")?, r.try_get("org_id")?, format!("every delivery failed since {since}")));
        }
    }
    let mut disabled = Vec::new();
    for (id, org, reason) in disable {
        if endpoints::disable(tx, &org, &id, &reason, now).await.map_err(db_err)? {
            disabled.push(id);
        }
    }
    if !disabled.is_empty() {
        // `webhook.disabled` events were written.
        tx.wake_relay();
    }
    Ok(disabled)
}
