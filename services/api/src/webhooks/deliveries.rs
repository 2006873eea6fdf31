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
