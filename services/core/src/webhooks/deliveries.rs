//! Deliveries (one event to one endpoint) as stored: the rows the dispatcher works through.
use sqlx::AnyConnection;

use crate::error::ApiResult;
use crate::ids::{kind, new_id};

pub const PENDING: &str = "pending";
pub const SUCCEEDED: &str = "succeeded";
pub const FAILED: &str = "failed";
/// The `next_attempt_at` of deliveries waiting for their disabled endpoint (9999-12-31):
/// beyond every claim, until the endpoint is enabled.
pub const PARKED: i64 = 253_402_300_799_000;
/// The `next_attempt_at` of deliveries a dispatcher holds (`lease_owner` names it): beyond
/// every claim while it is alive (`dispatcher_liveness`); due again once it is not.
pub const HELD: i64 = PARKED - 1;

/// One event for one endpoint, due at once.
pub struct NewDelivery<'a> {
    pub org: &'a str,
    pub endpoint_id: &'a str,
    pub event_id: &'a str,
    pub event_type: &'a str,
    /// '' from the event stream; a replay's id for replays.
    pub origin: &'a str,
}

/// Rows per INSERT statement (Postgres allows 65,535 parameters; SQLite 32,766).
const INSERT_CHUNK: usize = 500;

/// Inserts deliveries, skipping any that already exist (same event, endpoint and origin),
/// so an event delivered twice by the bus makes one delivery. Returns how many were new.
pub async fn insert(conn: &mut AnyConnection, rows: &[NewDelivery<'_>], now: i64) -> ApiResult<u64> {
    let mut inserted = 0;
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut sql = String::from(
            "INSERT INTO webhook_deliveries (id, org_id, endpoint_id, event_id, event_type, origin, state, attempts, \
             single_attempt, next_attempt_at, lease_owner, last_status, last_error, created_at, updated_at) VALUES ",
        );
        for i in 0..chunk.len() {
            let p = i * 6;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, 'pending', 0, 0, ${n}, '', 0, '', ${n}, ${n})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 6,
                n = chunk.len() * 6 + 1
            ));
        }
        sql.push_str(" ON CONFLICT (endpoint_id, event_id, origin) DO NOTHING");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for d in chunk {
            q = q
                .bind(new_id(kind::DELIVERY))
                .bind(d.org)
                .bind(d.endpoint_id)
                .bind(d.event_id)
                .bind(d.event_type)
                .bind(d.origin);
        }
        inserted += q.bind(now).execute(&mut *conn).await?.rows_affected();
    }
    Ok(inserted)
}
