//! Retention: nothing grows without bound. Once a minute, in bounded batches (a thousand rows
//! per transaction, so no prune holds locks for long):
//! - published events older than `--event-retention`,
//! - webhook deliveries older than `--delivery-retention`, with their attempts,
//! - idempotency records past their 24 hours,
//! - activity log entries (who changed keys and webhooks) older than `--event-retention`,
//! - console sign-in links and sessions a day past their end.
//!
//! Every API replica runs it; on Postgres a transaction-scoped advisory lock lets one replica
//! prune at a time, so replicas never delete the same rows against each other.
use std::time::Duration;

use crate::clock::SharedClock;
use coursewire_core::store::{Backend, Db, Tx};

/// Any fixed number; identifies the pruning lock.
const PRUNE_LOCK: i64 = 0x7265_7465_6e74;
const BATCH: i64 = 1000;
const EVERY: Duration = Duration::from_secs(60);
/// How long console links and sessions are kept past their end (a day: enough to tell a
/// person why their link no longer works, nothing to sign in with).
const CONSOLE_KEPT_MS: i64 = 24 * 3_600_000;
/// How long a `request_id` is remembered (AIP-155).
pub const IDEMPOTENCY_MS: i64 = 24 * 3_600_000;

pub struct Retention {
    pub db: Db,
    pub clock: SharedClock,
    pub events: Duration,
    pub deliveries: Duration,
}

impl Retention {
    /// Prunes once a minute until the task is dropped.
    pub async fn run(self) {
        loop {
            if let Err(e) = self.prune_all().await {
                tracing::warn!(error = %e, "pruning old rows failed; trying again in a minute");
            }
            tokio::time::sleep(EVERY).await;
        }
    }

    /// Runs every prune until each has less than a batch left; returns the rows deleted.
    pub async fn prune_all(&self) -> anyhow::Result<u64> {
        let now = self.clock.now_ms();
        let events_cutoff = now - self.events.as_millis() as i64;
        let deliveries_cutoff = now - self.deliveries.as_millis() as i64;
        let idempotency_cutoff = now - IDEMPOTENCY_MS;
        let console_cutoff = now - CONSOLE_KEPT_MS;
        let mut total = 0;
        // (statements run together in one transaction, the cutoff they bind)
        let prunes: [(&[&str], i64); 6] = [
            (
                &["DELETE FROM events WHERE id IN (SELECT id FROM events \
                   WHERE created_at < $1 ORDER BY created_at LIMIT 1000) \
                   AND (txid, id) <= (SELECT published_txid, published_id FROM relay_cursor WHERE id = 1)"],
                events_cutoff,
            ),
            (
                // Attempts first, then their deliveries: the same thousand oldest deliveries.
                &[
                    "DELETE FROM webhook_attempts WHERE delivery_id IN \
                     (SELECT id FROM webhook_deliveries WHERE created_at < $1 ORDER BY created_at, id LIMIT 1000)",
                    "DELETE FROM webhook_deliveries WHERE id IN \
                     (SELECT id FROM webhook_deliveries WHERE created_at < $1 ORDER BY created_at, id LIMIT 1000)",
                ],
                deliveries_cutoff,
            ),
            (
                &["DELETE FROM idempotency WHERE (org_id, request_id) IN \
                   (SELECT org_id, request_id FROM idempotency WHERE created_at < $1 LIMIT 1000)"],
                idempotency_cutoff,
            ),
            (
                &["DELETE FROM activity WHERE id IN (SELECT id FROM activity WHERE at < $1 ORDER BY id LIMIT 1000)"],
                events_cutoff,
            ),
            (
                &["DELETE FROM console_links WHERE token_hash IN \
                   (SELECT token_hash FROM console_links WHERE expires_at < $1 LIMIT 1000)"],
                console_cutoff,
            ),
            (
                &["DELETE FROM console_sessions WHERE token_hash IN \
                   (SELECT token_hash FROM console_sessions WHERE expires_at < $1 LIMIT 1000)"],
                console_cutoff,
            ),
        ];
        for (statements, cutoff) in prunes {
            loop {
                let Some(mut tx) = self.begin_leading().await? else { return Ok(total) };
                let mut deleted = 0;
                for sql in statements {
                    // The last statement of a group deletes the rows the batch is about.
                    deleted = sqlx::query(*sql).bind(cutoff).execute(&mut *tx).await?.rows_affected();
                }
                tx.commit().await.map_err(|e| anyhow::anyhow!(e.message))?;
                total += deleted;
                if deleted < BATCH as u64 {
                    break;
                }
                // Let other writers in between batches.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(total)
    }

    /// A transaction holding the pruning lock, or `None` when another replica prunes now.
    async fn begin_leading(&self) -> anyhow::Result<Option<Tx>> {
        let mut tx = self.db.begin_quiet().await.map_err(|e| anyhow::anyhow!(e.message))?;
        if self.db.backend == Backend::Postgres {
            let ours: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)").bind(PRUNE_LOCK).fetch_one(&mut *tx).await?;
            if !ours {
                return Ok(None);
            }
        }
        Ok(Some(tx))
    }
}
