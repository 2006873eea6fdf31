//! The outbox: every change writes its event row in the same transaction as the change.
//! The stored body is the exact envelope (`wire::Envelope`) that is relayed to RabbitMQ
//! and posted to webhooks, so every consumer sees the same bytes.
pub mod bus;
pub mod topology;

use serde::Serialize;
use sqlx::AnyConnection;

use crate::clock::rfc3339;
use crate::error::{ApiError, ApiResult};
use crate::ids::{kind, new_id};
use crate::store::Backend;
use crate::wire::Envelope;

/// Every event type (docs/architecture.md §4): webhook filters are checked against it, `record`
/// writes nothing else, and docs/events.md's table is compared with it by a test.
pub const EVENT_TYPES: &[&str] = &[
    "domain.created",
    "domain.updated",
    "domain.deleted",
    "user.created",
    "user.updated",
    "user.deleted",
    "course.created",
    "course.updated",
    "course.deleted",
    "published_course.created",
    "published_course.updated",
    "published_course.deleted",
    "domain_user.created",
    "domain_user.updated",
    "domain_user.deleted",
    "enrollment.created",
    "enrollment.updated",
    "enrollment.progressed",
    "enrollment.completed",
    "enrollment.deleted",
    "enrollment.overdue",
    "enrollment.expired",
    "learning_path.created",
    "learning_path.updated",
    "learning_path.deleted",
    "path_enrollment.created",
    "path_enrollment.completed",
    "path_enrollment.deleted",
    "group.created",
    "group.updated",
    "group.deleted",
    "group_membership.created",
    "group_membership.deleted",
    "operation.completed",
    "webhook.test",
    "webhook.disabled",
];

/// An event's place in the outbox's order: the transaction that wrote it (`txid`: Postgres'
/// transaction id; on SQLite, which has one writer at a time, a counter), then its id. Readers
/// (the relay, WatchEvents) only read transactions that no running transaction precedes (see
/// `in_order`), so every event that will ever sort before the last one read has been read:
/// a cursor on this order never skips an event that commits late.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark {
    pub txid: i64,
    pub id: String,
}

impl Mark {
    /// Before every event.
    pub fn start() -> Mark {
        Mark { txid: -1, id: String::new() }
    }
}

/// The SQL condition on `txid` for events whose place in the order is final: Postgres, below
/// the oldest transaction still running; SQLite, every committed event.
pub fn in_order(backend: crate::store::Backend) -> &'static str {
    match backend {
        crate::store::Backend::Postgres => "txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
        crate::store::Backend::Sqlite => "txid IS NOT NULL",
    }
}

/// One change to record: `kind` is the event type (`enrollment.completed`).
pub struct Change<'a, T: Serialize> {
    pub org: &'a str,
    pub kind: &'a str,
    pub resource_id: &'a str,
    pub sequence: i64,
    pub data: &'a T,
    pub now: i64,
}

/// Appends the event of `change` inside `tx`; returns its id.
pub async fn record<T: Serialize>(conn: &mut AnyConnection, change: Change<'_, T>) -> ApiResult<String> {
    if !EVENT_TYPES.contains(&change.kind) {
        return Err(ApiError::internal(format!("event type {:?} is not in EVENT_TYPES", change.kind)));
    }
    let id = new_id(kind::EVENT);
    let body = serde_json::to_string(&Envelope {
        id: id.as_str().into(),
        kind: change.kind.into(),
        created_at: rfc3339(change.now).into(),
        organization_id: change.org.into(),
        sequence: change.sequence,
        data: change.data,
    })
    .map_err(ApiError::internal)?;
    // The transaction's place in the commit order (see `Mark`).
    let txid = if Backend::of(conn) == Backend::Postgres {
        "pg_current_xact_id()::text::bigint"
    } else {
        "(SELECT COALESCE(MAX(txid), 1) + 1 FROM events)"
    };
    let sql = format!(
        "INSERT INTO events (id, org_id, type, resource_id, sequence, created_at, body, traceparent, txid) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, {txid})"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&id)
        .bind(change.org)
        .bind(change.kind)
        .bind(change.resource_id)
        .bind(change.sequence)
        .bind(change.now)
        .bind(body)
        // The span of the call being served: the event continues its trace.
        .bind(crate::trace::current().map(|span| span.to_string()))
        .execute(conn)
        .await?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The types docs/events.md lists (first column of its type table) are exactly these.
    #[test]
    fn the_documented_event_types_are_the_event_types() {
        let docs = include_str!("../../../../docs/events.md");
        let mut documented: Vec<String> = crate::doc_tables::rows(docs, "## Event types and payloads")
            .into_iter()
            .flat_map(|row| {
                let first = row.split('|').nth(1).unwrap_or_default();
                first.split(',').map(|t| t.trim().trim_matches('`').to_string()).collect::<Vec<_>>()
            })
            .collect();
        let mut ours: Vec<String> = EVENT_TYPES.iter().map(|t| t.to_string()).collect();
        documented.sort();
        ours.sort();
        assert_eq!(documented, ours, "docs/events.md's table and EVENT_TYPES differ");
    }
}
