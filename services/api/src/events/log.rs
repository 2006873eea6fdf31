//! The event log as EventService reads it, for a page (ListEvents) and a stream (WatchEvents)
//! alike: its columns, a row as an `Event`, and the type filters as SQL.
use coursewire_proto::v1::Event;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::clock::to_timestamp;
use coursewire_core::error::{ApiError, ApiResult};

pub(super) fn event_from_row(r: &AnyRow) -> ApiResult<Event> {
    let body: String = r.try_get("body")?;
    let mut envelope: serde_json::Value = serde_json::from_str(&body).map_err(ApiError::internal)?;
    let data = serde_json::from_value(envelope["data"].take()).map_err(ApiError::internal)?;
    Ok(Event {
        id: r.try_get("id")?,
        r#type: r.try_get("type")?,
        created_at: Some(to_timestamp(r.try_get("created_at")?)),
        organization_id: r.try_get("org_id")?,
        sequence: r.try_get("sequence")?,
        resource_id: r.try_get("resource_id")?,
        data: Some(data),
    })
}

pub(super) const COLUMNS: &str = "id, type, created_at, org_id, sequence, resource_id, body, txid";

/// ` AND (type = $n OR type LIKE $m …)` for the filters, with every value bound.
pub(crate) fn type_terms(types: &[String], binds: &mut Vec<String>) -> String {
    if types.is_empty() {
        return String::new();
    }
    let terms: Vec<String> = types
        .iter()
        .map(|t| {
            binds.push(match t.strip_suffix('*') {
                Some(prefix) => format!("{prefix}%"),
                None => t.clone(),
            });
            format!("type {} ${}", if t.ends_with('*') { "LIKE" } else { "=" }, binds.len())
        })
        .collect();
    format!(" AND ({})", terms.join(" OR "))
}
