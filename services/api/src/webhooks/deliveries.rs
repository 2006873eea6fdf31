//! Deliveries (one event to one endpoint) and their attempts: the rows the dispatcher works
//! through and the API lists, retries and replays.
use coursewire_proto::v1::delivery::State;
use coursewire_proto::v1::{Delivery, DeliveryAttempt};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::clock::{opt_timestamp, to_timestamp};
use coursewire_core::error::{ApiError, ApiResult};

pub use coursewire_core::webhooks::deliveries::*;

/// The most deliveries one ReplayEvents call creates.
pub const MAX_REPLAY: usize = 10_000;

pub(crate) const COLUMNS: &str = "id, endpoint_id, event_id, event_type, state, attempts, next_attempt_at, \
    last_status, last_error, created_at, updated_at FROM webhook_deliveries";

pub(crate) fn from_row(r: &AnyRow) -> Result<Delivery, sqlx::Error> {
    let state: String = r.try_get("state")?;
    let state = match state.as_str() {
        PENDING => State::Pending,
        SUCCEEDED => State::Succeeded,
        _ => State::Failed,
    };
    Ok(Delivery {
        id: r.try_get("id")?,
        webhook_id: r.try_get("endpoint_id")?,
        event_id: r.try_get("event_id")?,
        event_type: r.try_get("event_type")?,
        state: state as i32,
        attempt_count: r.try_get::<i64, _>("attempts")? as i32,
        // Parked deliveries (their endpoint is disabled) have no next attempt until it is
        // enabled; held ones are being attempted now.
        next_attempt_at: opt_timestamp(
            (state == State::Pending)
                .then(|| r.try_get::<i64, _>("next_attempt_at"))
                .transpose()?
                .filter(|t| *t < HELD),
        ),
        last_status_code: r.try_get::<i64, _>("last_status")? as i32,
        last_error: r.try_get("last_error")?,
        created_at: Some(to_timestamp(r.try_get("created_at")?)),
        updated_at: Some(to_timestamp(r.try_get("updated_at")?)),
    })
}

pub(crate) fn attempt_from_row(r: &AnyRow) -> Result<DeliveryAttempt, sqlx::Error> {
    Ok(DeliveryAttempt {
        id: r.try_get("id")?,
        delivery_id: r.try_get("delivery_id")?,
        attempted_at: Some(to_timestamp(r.try_get("attempted_at")?)),
        duration_ms: r.try_get("duration_ms")?,
        status_code: r.try_get::<i64, _>("status")? as i32,
        error: r.try_get("error")?,
        response_body: r.try_get("response_body")?,
    })
}

pub(crate) async fn fetch(conn: &mut AnyConnection, org: &str, id: &str) -> ApiResult<Delivery> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} WHERE id = $1 AND org_id = $2")))
        .bind(id)
        .bind(org)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery", id))?;
    Ok(from_row(&row)?)
}

/// What `ListDeliveries` narrows to, checked; empty texts and `None` match everything.
pub struct Filter<'a> {
    pub webhook_id: &'a str,
    pub state: Option<&'static str>,
    pub event_type: &'a str,
    pub after: Option<i64>,
    pub before: Option<i64>,
    pub newest_first: bool,
}

/// Up to `limit` of an organization's deliveries matching `f`, past id `past` in the order
/// asked for (ids sort by creation time: keyset paging on the id, either way).
pub(crate) async fn list(
    conn: &mut AnyConnection,
    org: &str,
    f: &Filter<'_>,
    past: &str,
    limit: i64,
) -> ApiResult<Vec<Delivery>> {
    let (beyond, order) = if f.newest_first { ("($2 = '' OR id < $2)", "DESC") } else { ("id > $2", "") };
    let mut sql = format!("SELECT {COLUMNS} WHERE org_id = $1 AND {beyond}");
    let mut n = 3;
    let mut filter = |column: &str, op: &str| {
        sql.push_str(&format!(" AND {column} {op} ${n}"));
        n += 1;
    };
    let texts: Vec<(&str, &str)> =
        [("endpoint_id", f.webhook_id), ("state", f.state.unwrap_or("")), ("event_type", f.event_type)]
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .collect();
    for (column, _) in &texts {
        filter(column, "=");
    }
    if f.after.is_some() {
        filter("created_at", ">=");
    }
    if f.before.is_some() {
        filter("created_at", "<");
    }
    sql.push_str(&format!(" ORDER BY id {order} LIMIT ${n}"));
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(org).bind(past);
    for (_, value) in &texts {
        q = q.bind(*value);
    }
    for t in [f.after, f.before].into_iter().flatten() {
        q = q.bind(t);
    }
    let rows = q.bind(limit).fetch_all(conn).await?;
    Ok(rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?)
}
