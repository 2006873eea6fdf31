//! Deliveries (one event to one endpoint) as stored: the rows the dispatcher works through.
//! Every writer of delivery rows (the API's replays and test events, the dispatcher's intake)
//! builds its INSERT here.
use sha2::{Digest, Sha256};
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

/// A delivery row as written: new and due (`NewDelivery`), or, from the dispatcher's intake,
/// with its first attempt's result already in, or leased to the dispatcher attempting it.
pub struct DeliveryRow<'a> {
    pub id: &'a str,
    pub org: &'a str,
    pub endpoint_id: &'a str,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub origin: &'a str,
    pub state: &'a str,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub lease_owner: &'a str,
    pub last_status: i64,
    pub last_error: &'a str,
}

/// A value bound to a statement built at run time.
pub enum Bind<'a> {
    Int(i64),
    Text(&'a str),
}

/// `sql` with `binds` bound in order.
pub fn bound<'q>(sql: String, binds: &'q [Bind<'q>]) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for b in binds {
        q = match b {
            Bind::Int(v) => q.bind(*v),
            Bind::Text(v) => q.bind(*v),
        };
    }
    q
}

/// The id of the delivery of `event_id` to `endpoint_id` from `origin`. One from the event
/// stream (origin '') is derived from its endpoint and event, so every process that makes it
/// names the same row: a dispatcher that got the event again (a relay's resend, a broker's
/// redelivery) and sent it again records that attempt on the delivery that was already
/// written. Its time part is the event's, so it still sorts with its event's deliveries. A
/// replay's is new: a replay is one transaction, with one writer.
pub fn id_for(endpoint_id: &str, event_id: &str, origin: &str) -> String {
    let event_time =
        event_id.strip_prefix("evt_").and_then(|u| ulid::Ulid::from_string(u).ok()).map(|u| u.timestamp_ms());
    let Some(time) = event_time.filter(|_| origin.is_empty()) else {
        return new_id(kind::DELIVERY);
    };
    let digest = Sha256::new().chain_update(endpoint_id).chain_update([0u8]).chain_update(event_id).finalize();
    let mut random = [0u8; 16];
    random[6..].copy_from_slice(&digest[..10]);
    let ulid = ulid::Ulid::from_parts(time, u128::from_be_bytes(random));
    format!("dlv_{}", ulid.to_string().to_ascii_lowercase())
}

/// `INSERT INTO webhook_deliveries … VALUES …` for `rows`, their values appended to `binds`
/// (numbered after those already there; `now` goes in once, for `created_at` and
/// `updated_at`). A delivery that exists already (same endpoint, event and origin) is left
/// as it is: the bus may hand an event twice, and it makes one delivery.
pub fn insert_sql<'a>(rows: &[DeliveryRow<'a>], now: i64, binds: &mut Vec<Bind<'a>>) -> String {
    let mut sql = String::from(
        "INSERT INTO webhook_deliveries (id, org_id, endpoint_id, event_id, event_type, origin, state, attempts, \
         single_attempt, next_attempt_at, lease_owner, last_status, last_error, created_at, updated_at) VALUES ",
    );
    binds.push(Bind::Int(now));
    let now_at = binds.len();
    for (i, r) in rows.iter().enumerate() {
        let p = binds.len();
        if i > 0 {
            sql.push(',');
        }
        let values: Vec<String> = (p + 1..=p + 12).map(|n| format!("${n}")).collect();
        sql.push_str(&format!("({}, 0, {}, ${now_at}, ${now_at})", values[..8].join(", "), values[8..].join(", ")));
        binds.extend([
            Bind::Text(r.id),
            Bind::Text(r.org),
            Bind::Text(r.endpoint_id),
            Bind::Text(r.event_id),
            Bind::Text(r.event_type),
            Bind::Text(r.origin),
            Bind::Text(r.state),
            Bind::Int(r.attempts),
            Bind::Int(r.next_attempt_at),
            Bind::Text(r.lease_owner),
            Bind::Int(r.last_status),
            Bind::Text(r.last_error),
        ]);
    }
    // On either key: a stream delivery's id is made from the other (two processes inserting
    // it at once must not fail on the id while the other key would have let one through).
    sql.push_str(" ON CONFLICT DO NOTHING");
    sql
}

/// Rows per INSERT statement (12 values a row: within SQLite's 32,766 parameters).
const INSERT_CHUNK: usize = 500;

/// Inserts deliveries, due now, skipping any that already exist (same event, endpoint and
/// origin), so an event delivered twice by the bus makes one delivery. Returns how many were new.
pub async fn insert(conn: &mut AnyConnection, rows: &[NewDelivery<'_>], now: i64) -> ApiResult<u64> {
    let mut inserted = 0;
    for chunk in rows.chunks(INSERT_CHUNK) {
        let ids: Vec<String> = chunk.iter().map(|d| id_for(d.endpoint_id, d.event_id, d.origin)).collect();
        let rows: Vec<DeliveryRow> = chunk
            .iter()
            .zip(&ids)
            .map(|(d, id)| DeliveryRow {
                id,
                org: d.org,
                endpoint_id: d.endpoint_id,
                event_id: d.event_id,
                event_type: d.event_type,
                origin: d.origin,
                state: PENDING,
                attempts: 0,
                next_attempt_at: now,
                lease_owner: "",
                last_status: 0,
                last_error: "",
            })
            .collect();
        let mut binds = Vec::new();
        let sql = insert_sql(&rows, now, &mut binds);
        inserted += bound(sql, &binds).execute(&mut *conn).await?.rows_affected();
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_delivery_is_named_by_its_endpoint_and_event() {
        let event = new_id(kind::EVENT);
        let a = id_for("whk_a", &event, "");
        assert_eq!(a, id_for("whk_a", &event, ""), "every writer names the same row");
        assert!(crate::ids::is_id("dlv", &a), "{a}");
        assert_ne!(a, id_for("whk_b", &event, ""));
        assert_ne!(a, id_for("whk_a", &new_id(kind::EVENT), ""));
        // Its time part is the event's: it sorts with deliveries made when the event was.
        assert_eq!(a[4..14], event[4..14]);
        // Replays make new deliveries, each with an id of its own.
        let replay = id_for("whk_a", &event, "rpl_1");
        assert!(crate::ids::is_id("dlv", &replay) && replay != id_for("whk_a", &event, "rpl_1"));
    }
}
