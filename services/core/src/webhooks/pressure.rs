//! The backpressure signal between the dispatchers and the API: a dispatcher that is behind
//! for want of capacity of its own says so on its liveness row, until a moment a little
//! ahead; the API reads whether any does while it serves writes (never while idle).
use crate::store::Db;

/// Marks dispatcher `owner` as behind until `until` (ms), on its liveness row. The
/// dispatcher makes sure it has one first: without it this writes nothing.
pub async fn report_behind(db: &Db, owner: &str, until: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE dispatcher_liveness SET behind_until = $1 WHERE owner = $2")
        .bind(until)
        .bind(owner)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// Whether a live dispatcher says, at `now`, that it is behind.
pub async fn any_behind(db: &Db, now: i64) -> Result<bool, sqlx::Error> {
    let behind: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dispatcher_liveness WHERE behind_until > $1 AND alive_until > $1")
            .bind(now)
            .fetch_one(db.pool())
            .await?;
    Ok(behind > 0)
}
