//! The outbox: every change writes its event row in the same transaction as the change.
//! The stored body is the exact envelope (ARCHITECTURE §6) that is relayed to RabbitMQ
//! and posted to webhooks, so every consumer sees the same bytes.
pub mod bus;
pub mod topology;

use serde::Serialize;
use sqlx::AnyConnection;

use crate::clock::rfc3339;
use crate::error::{ApiError, ApiResult};
use crate::ids::new_id;

/// Every event type (ARCHITECTURE §6); webhook filters are checked against it.
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
    "webhook.test",
    "webhook.disabled",
];

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    created_at: String,
    organization_id: &'a str,
    sequence: i64,
    data: &'a T,
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
    let id = new_id("evt");
    let body = serde_json::to_string(&Envelope {
        id: &id,
        kind: change.kind,
        created_at: rfc3339(change.now),
        organization_id: change.org,
        sequence: change.sequence,
        data: change.data,
    })
    .map_err(ApiError::internal)?;
    sqlx::query(
        "INSERT INTO events (id, org_id, type, resource_id, sequence, created_at, body) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(change.org)
    .bind(change.kind)
    .bind(change.resource_id)
    .bind(change.sequence)
    .bind(change.now)
    .bind(body)
    .execute(conn)
    .await?;
    Ok(id)
}
