//! The deadline scheduler: turns passed dates into events.
//! - `due_at` passed without completion → `enrollment.overdue` (and `overdue_at` is set);
//! - `expires_at` passed without completion → state `EXPIRED` is stored, `enrollment.expired`.
//!
//! Each is a conditional UPDATE of one row in its own transaction, with its event: whichever
//! scheduler's update matches the row first emits the event, any other matches nothing. So any
//! number of replicas can run it, and one that was down catches up on restart without
//! duplicates. It sleeps on the injectable clock until the next deadline, so tests move a
//! manual clock instead of sleeping; a local write with a date wakes it, and it looks again
//! every `RESCAN` (real time) for dates written through other replicas.
use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use tokio::sync::Notify;

use super::store::fetch;
use crate::clock::SharedClock;
use coursewire_core::error::ApiResult;
use coursewire_core::events::{self, Change};
use coursewire_core::store::Db;

/// Rows read per scan; each is then handled in its own short transaction.
const BATCH: i64 = 100;
/// How often the scheduler looks for dates other replicas wrote.
const RESCAN: Duration = Duration::from_secs(30);

/// One kind of deadline: the rows it selects and the conditional update that claims one.
struct Deadline {
    event: &'static str,
    /// Ids and organizations of rows whose deadline is at or before `$1`, oldest first.
    due: &'static str,
    /// Claims row `$2` at time `$1`; matches nothing when another scheduler (or a completion,
    /// a deletion, a moved date) got there first.
    claim: &'static str,
}

const OVERDUE: Deadline = Deadline {
    event: "enrollment.overdue",
    due: "SELECT id, org_id FROM enrollments WHERE state = 'ACTIVE' AND deleted_at IS NULL \
          AND due_at IS NOT NULL AND overdue_at IS NULL AND due_at <= $1 ORDER BY due_at LIMIT $2",
    claim: "UPDATE enrollments SET overdue_at = $1, updated_at = $1, sequence = sequence + 1 \
            WHERE id = $2 AND state = 'ACTIVE' AND deleted_at IS NULL AND overdue_at IS NULL AND due_at <= $1",
};

const EXPIRY: Deadline = Deadline {
    event: "enrollment.expired",
    due: "SELECT id, org_id FROM enrollments WHERE state = 'ACTIVE' AND deleted_at IS NULL \
          AND expires_at IS NOT NULL AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
    claim: "UPDATE enrollments SET state = 'EXPIRED', updated_at = $1, sequence = sequence + 1 \
            WHERE id = $2 AND state = 'ACTIVE' AND deleted_at IS NULL AND expires_at <= $1",
};

pub struct Deadlines {
    pub db: Db,
    pub clock: SharedClock,
    /// Poked after a local write that sets a date (it may be sooner than the one slept on).
    pub wake: Arc<Notify>,
}

impl Deadlines {
    /// Fires deadlines as they pass, until the task is dropped.
    pub async fn run(self) {
        loop {
            let next = match self.fire_due().await {
                Ok(_) => self.next_deadline().await.unwrap_or(None),
                Err(e) => {
                    tracing::warn!(error = %e.message, reason = %e.reason, "firing passed deadlines failed; trying again shortly");
                    None
                }
            };
            let on_clock = async {
                match next {
                    Some(at) => self.clock.sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = on_clock => {}
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(RESCAN) => {}
            }
        }
    }

    /// Emits every passed deadline's event once; returns how many this call emitted.
    pub async fn fire_due(&self) -> ApiResult<usize> {
        let mut fired = 0;
        for deadline in [&OVERDUE, &EXPIRY] {
            loop {
                let now = self.clock.now_ms();
                let rows = sqlx::query(deadline.due).bind(now).bind(BATCH).fetch_all(self.db.pool()).await?;
                for row in &rows {
                    let (id, org): (String, String) = (row.try_get("id")?, row.try_get("org_id")?);
                    fired += usize::from(self.fire(deadline, &id, &org, now).await?);
                }
                if (rows.len() as i64) < BATCH {
                    break;
                }
            }
        }
        Ok(fired)
    }

    /// Claims one row and records its event in the same transaction; false when it was
    /// already claimed (or no longer qualifies).
    async fn fire(&self, deadline: &Deadline, id: &str, org: &str, now: i64) -> ApiResult<bool> {
        let mut tx = self.db.begin().await?;
        let claimed = sqlx::query(deadline.claim).bind(now).bind(id).execute(&mut *tx).await?;
        if claimed.rows_affected() == 0 {
            return Ok(false);
        }
        let e = fetch(&mut tx, org, id, now).await?;
        let change = Change { org, kind: deadline.event, resource_id: id, sequence: e.sequence, data: &e, now };
        events::record(&mut tx, change).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The earliest date still waiting for its event (one statement: it runs every rescan).
    async fn next_deadline(&self) -> ApiResult<Option<i64>> {
        let (due, expiry): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT MIN(due_at) FROM enrollments WHERE state = 'ACTIVE' AND deleted_at IS NULL \
                       AND due_at IS NOT NULL AND overdue_at IS NULL), \
                    (SELECT MIN(expires_at) FROM enrollments WHERE state = 'ACTIVE' AND deleted_at IS NULL \
                       AND expires_at IS NOT NULL)",
        )
        .fetch_one(self.db.pool())
        .await?;
        Ok(due.into_iter().chain(expiry).min())
    }
}
