//! The fan-out worker: runs operations (membership × assignments → enrollments) in the
//! background, in bounded batches.
//!
//! Every API replica runs one. An operation is held under a lease (`lease_owner`,
//! `lease_until`) renewed by every batch; a replica that dies (`kill -9`) stops renewing and
//! another takes the operation over once the lease lapses. A batch is one transaction: its
//! enrollments, their events and the operation's new cursor commit together, so a crash loses
//! at most the batch in flight, and redoing it creates nothing twice (enrolling reuses what
//! exists). No transaction spans more than `BATCH` members, so a 10,000-member assignment
//! never holds a giant transaction, nor blocks other writers for longer than a batch.
use std::sync::Arc;
use std::time::Duration;

use sqlx::{AnyConnection, Row};
use tokio::sync::Notify;

use super::store::{OPERATIONS, assignments_of, operation_from_row};
use crate::clock::SharedClock;
use crate::enrollments::write::{Dates, ensure};
use crate::resource::item_error;
use coursewire_core::error::{ApiError, ApiResult};
use coursewire_core::store::Db;

/// Members per batch (each may get several enrollments: a path's courses).
const BATCH: i64 = 50;
/// How long an operation stays with a replica that stopped renewing it.
const LEASE_MS: i64 = 5_000;
/// How often an idle worker looks for operations other replicas started, or lost (one
/// small transaction: an idle replica stays well under one transaction a second).
const RESCAN: Duration = Duration::from_secs(10);

pub struct FanOut {
    pub db: Db,
    pub clock: SharedClock,
    /// Poked after a local call started an operation.
    pub wake: Arc<Notify>,
    /// This worker's name in `lease_owner` (unique per process).
    pub owner: String,
}

/// The operation being run, as the worker needs it.
struct Held {
    id: String,
    org: String,
    kind: String,
    group_id: String,
    target_id: Option<String>,
}

impl FanOut {
    /// Runs operations as they come, until the task is dropped.
    pub async fn run(self) {
        loop {
            match self.run_next().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e.message, "running a fan-out operation failed; trying again"),
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(RESCAN) => {}
            }
        }
    }

    /// Takes the oldest operation that is free (never held, or its holder's lease lapsed) and
    /// runs it to the end; false when there was none.
    pub async fn run_next(&self) -> ApiResult<bool> {
        let Some(held) = self.claim().await? else {
            return Ok(false);
        };
        while self.run_batch(&held).await? {}
        Ok(true)
    }

    async fn claim(&self) -> ApiResult<Option<Held>> {
        let now = self.clock.now_ms();
        let free = "done_at IS NULL AND (lease_until IS NULL OR lease_until < $3)";
        let sql = format!(
            "UPDATE operations SET lease_owner = $1, lease_until = $2 \
             WHERE id = (SELECT id FROM operations WHERE {free} ORDER BY created_at, id LIMIT 1) AND {free}"
        );
        let mut tx = self.db.begin_quiet().await?;
        let claimed = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&self.owner)
            .bind(now + LEASE_MS)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        if claimed.rows_affected() == 0 {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT id, org_id, kind, group_id, target_id FROM operations \
             WHERE lease_owner = $1 AND done_at IS NULL ORDER BY lease_until DESC LIMIT 1",
        )
        .bind(&self.owner)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(Held {
            id: row.try_get("id")?,
            org: row.try_get("org_id")?,
            kind: row.try_get("kind")?,
            group_id: row.try_get("group_id")?,
            target_id: row.try_get("target_id")?,
        }))
    }

    /// One batch in one transaction; false when the operation is finished (or was lost).
    async fn run_batch(&self, op: &Held) -> ApiResult<bool> {
        let now = self.clock.now_ms();
        let mut tx = self.db.begin().await?;
        // Renewing the lease also checks that it is still ours, and locks the row.
        let renewed = sqlx::query(
            "UPDATE operations SET lease_until = $1 WHERE id = $2 AND lease_owner = $3 AND done_at IS NULL",
        )
        .bind(now + LEASE_MS)
        .bind(&op.id)
        .bind(&self.owner)
        .execute(&mut *tx)
        .await?;
        if renewed.rows_affected() == 0 {
            return Ok(false);
        }
        let cursor: String =
            sqlx::query_scalar("SELECT cursor FROM operations WHERE id = $1").bind(&op.id).fetch_one(&mut *tx).await?;
        let members: Vec<String> = if op.kind == "ENROLL_ASSIGNMENT" {
            sqlx::query_scalar(
                "SELECT user_id FROM group_members WHERE group_id = $1 AND removed_at IS NULL AND user_id > $2 \
                 ORDER BY user_id LIMIT $3",
            )
            .bind(&op.group_id)
        } else {
            sqlx::query_scalar(
                "SELECT user_id FROM group_members WHERE operation_id = $1 AND removed_at IS NULL AND user_id > $2 \
                 ORDER BY user_id LIMIT $3",
            )
            .bind(&op.id)
        }
        .bind(&cursor)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        // What to enroll in, as it is now: an assignment removed meanwhile is no longer enrolled.
        let targets: Vec<(String, Option<i64>)> = assignments_of(&mut tx, &op.group_id)
            .await?
            .into_iter()
            .filter(|(target, _)| op.target_id.as_ref().is_none_or(|t| t == target))
            .collect();
        let (mut failed, mut first_error) = (0i64, None::<String>);
        for user_id in &members {
            let mut sp = tx.savepoint().await?;
            match enroll(&mut sp, &op.org, user_id, &targets, now).await {
                Ok(()) => sp.commit().await?,
                Err(e) => {
                    sp.rollback().await?;
                    failed += 1;
                    if first_error.is_none() {
                        let item = item_error(e);
                        first_error = Some(serde_json::to_string(&item).map_err(ApiError::internal)?);
                    }
                }
            }
        }
        let finished = (members.len() as i64) < BATCH;
        sqlx::query(
            "UPDATE operations SET cursor = $1, members_done = members_done + $2, members_failed = members_failed + $3, \
             first_error = COALESCE(first_error, $4), updated_at = $5, \
             done_at = CASE WHEN $6 = 1 THEN $5 ELSE NULL END WHERE id = $7",
        )
        .bind(members.last().unwrap_or(&cursor))
        .bind(members.len() as i64)
        .bind(failed)
        .bind(first_error)
        .bind(now)
        .bind(i64::from(finished))
        .bind(&op.id)
        .execute(&mut *tx)
        .await?;
        if finished {
            let done = operation_from_row(&OPERATIONS.get(&mut *tx, &op.org, &op.id).await?)?;
            OPERATIONS.record(&mut tx, &op.org, "completed", (&op.id, 1), &done, now).await?;
        }
        tx.commit().await?;
        Ok(!finished)
    }
}

/// Enrolls one member in each target (a published course or a learning path), reusing what
/// they already have.
async fn enroll(
    conn: &mut AnyConnection,
    org: &str,
    user_id: &str,
    targets: &[(String, Option<i64>)],
    now: i64,
) -> ApiResult<()> {
    for (target, due_at) in targets {
        let dates = Dates { due_at: due_at.filter(|t| *t > now), expires_at: None };
        if target.starts_with("pth_") {
            crate::learning_paths::members::ensure(conn, org, target, user_id, dates, now).await?;
        } else {
            ensure(conn, org, user_id, target, dates, now).await?;
        }
    }
    Ok(())
}
