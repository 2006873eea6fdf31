//! The activity log: who created, changed or revoked an organization's keys and webhooks, and
//! when. Events say what changed to a resource, not who changed it (their envelope is the
//! partners' contract, and a key prefix is none of their business), so each such change also
//! writes one row here, in the change's own transaction. The actor is a key prefix
//! (`key sk_1a2b3c4d…`), a console session (`… in the console`) or `OPERATOR`. Read through
//! `AccountService.ListActivity` (the console's Activity page). Kept as long as events
//! (`--event-retention`).
use sqlx::{AnyConnection, Row};

use crate::error::ApiResult;
use crate::ids::{kind, new_id};

/// What was done (the `action` column and the API's `ActivityEntry.action`).
pub mod action {
    pub const KEY_CREATED: &str = "api_key.created";
    pub const KEY_UPDATED: &str = "api_key.updated";
    pub const KEY_REVOKED: &str = "api_key.revoked";
    pub const WEBHOOK_CREATED: &str = "webhook.created";
    pub const WEBHOOK_UPDATED: &str = "webhook.updated";
    pub const WEBHOOK_DELETED: &str = "webhook.deleted";
    pub const WEBHOOK_SECRET_ROTATED: &str = "webhook.secret_rotated";
    pub const WEBHOOK_ENABLED: &str = "webhook.enabled";
    pub const WEBHOOK_DISABLED: &str = "webhook.disabled";
}

/// The actor of changes made with the operator's command line (it has the database, not a key).
pub const OPERATOR: &str = "operator (CLI)";

/// Writes one entry on `conn` (the change's transaction).
pub async fn record(
    conn: &mut AnyConnection,
    org: &str,
    actor: &str,
    action: &str,
    target_id: &str,
    summary: &str,
    now: i64,
) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO activity (id, org_id, at, actor, action, target_id, summary) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(new_id(kind::ACTIVITY))
    .bind(org)
    .bind(now)
    .bind(actor)
    .bind(action)
    .bind(target_id)
    .bind(summary)
    .execute(conn)
    .await?;
    Ok(())
}

pub struct Entry {
    pub id: String,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target_id: String,
    pub summary: String,
}

/// An organization's entries, newest first, before id `before` ("" for the newest): those
/// about keys when `keys`, about webhooks when `webhooks`.
pub async fn list(
    conn: &mut AnyConnection,
    org: &str,
    before: &str,
    limit: i64,
    keys: bool,
    webhooks: bool,
) -> ApiResult<Vec<Entry>> {
    let rows = sqlx::query(
        "SELECT id, at, actor, action, target_id, summary FROM activity \
         WHERE org_id = $1 AND ($2 = '' OR id < $2) \
         AND ((action LIKE 'api_key.%' AND $3 = 1) OR (action LIKE 'webhook.%' AND $4 = 1)) \
         ORDER BY id DESC LIMIT $5",
    )
    .bind(org)
    .bind(before)
    .bind(i64::from(keys))
    .bind(i64::from(webhooks))
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Entry {
                id: r.try_get("id")?,
                at: r.try_get("at")?,
                actor: r.try_get("actor")?,
                action: r.try_get("action")?,
                target_id: r.try_get("target_id")?,
                summary: r.try_get("summary")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}
