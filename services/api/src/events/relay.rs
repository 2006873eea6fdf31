//! The relay: gives committed outbox rows their position (the order WatchEvents follows),
//! publishes them in that order through the bus, and marks them published only after the
//! bus confirmed them. A crash between publish and mark publishes again: at least once.
//!
//! On Postgres one replica leads (a session advisory lock held on its own connection) and
//! every statement of the relay runs on that connection, so a replica that lost the lock
//! cannot write; the others wait to take over. SQLite is single-process: the relay leads.
use std::sync::Arc;
use std::time::Duration;

use sqlx::{AnyConnection, Row};
use tokio::sync::watch;

use std::sync::atomic::Ordering::Relaxed;

use super::bus::{Bus, Outgoing};
use crate::clock::SharedClock;
use crate::metrics::metrics;
use crate::store::{Backend, Db};

/// Any fixed number; identifies the relay's advisory lock.
const LEADER_LOCK: i64 = 0x636f_7572_7365;
const BATCH: i64 = 500;
const IDLE_POLL: Duration = Duration::from_millis(10);

/// What the relay tells in-process readers (WatchEvents) and operators.
pub struct Hub {
    /// The highest position given out so far.
    pub sequenced: watch::Sender<i64>,
    /// Events a WatchEvents stream may buffer before its consumer counts as too slow.
    pub watch_buffer: usize,
    /// How long a full buffer may stay full before the stream is closed.
    pub slow_consumer_timeout: Duration,
    /// Whether the bus is reachable (health reports it).
    pub bus_connected: watch::Sender<bool>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            sequenced: watch::channel(0).0,
            watch_buffer: 1024,
            slow_consumer_timeout: Duration::from_secs(10),
            bus_connected: watch::channel(true).0,
        }
    }
}

pub struct Relay {
    pub db: Db,
    pub bus: Arc<dyn Bus>,
    pub hub: Arc<Hub>,
    pub clock: SharedClock,
}

/// The connection the leader works on (Postgres), or none (SQLite: write transactions).
struct Lead(Option<AnyConnection>);

impl Relay {
    /// Runs until the task is dropped. Errors are logged and retried with backoff.
    pub async fn run(self) {
        loop {
            let lead = self.lead().await;
            if let Err(e) = self.work(lead).await {
                tracing::warn!(error = %e, "relay lost its database connection; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Waits until this replica leads.
    async fn lead(&self) -> Lead {
        if self.db.backend == Backend::Sqlite {
            return Lead(None);
        }
        loop {
            match self.db.pool().acquire().await {
                Ok(mut conn) => {
                    let won: Result<bool, _> = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                        .bind(LEADER_LOCK)
                        .fetch_one(&mut *conn)
                        .await;
                    if let Ok(true) = won {
                        tracing::info!("this replica now relays events");
                        return Lead(Some(conn.detach()));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "relay cannot reach the database"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn work(&self, mut lead: Lead) -> anyhow::Result<()> {
        let mut next: i64 = self.exec_scalar(&mut lead, "SELECT COALESCE(MAX(position), 0) FROM events", None).await?;
        self.hub.sequenced.send_replace(next);
        let mut backoff = Duration::from_millis(100);
        let mut broker_down = false;
        let mut last_lag = 0;
        loop {
            let sequenced = self.sequence(&mut lead, next).await?;
            if sequenced > 0 {
                next += sequenced;
                self.hub.sequenced.send_replace(next);
            }
            let published = match self.publish(&mut lead).await {
                Ok(n) => {
                    if broker_down {
                        tracing::info!("event bus reachable again; publishing the backlog");
                        broker_down = false;
                        self.hub.bus_connected.send_replace(true);
                        metrics().broker_connected.store(1, Relaxed);
                    }
                    backoff = Duration::from_millis(100);
                    n
                }
                Err(PublishError::Db(e)) => return Err(e),
                Err(PublishError::Bus(e)) => {
                    if !broker_down {
                        tracing::warn!(error = %e, "cannot publish events; they wait in the outbox");
                        broker_down = true;
                        self.hub.bus_connected.send_replace(false);
                        metrics().broker_connected.store(0, Relaxed);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    0
                }
            };
            let now = self.clock.now_ms();
            if now - last_lag >= 1000 {
                last_lag = now;
                let oldest: Option<i64> = self
                    .exec_scalar(&mut lead, "SELECT MIN(created_at) FROM events WHERE published_at IS NULL", None)
                    .await
                    .ok();
                metrics().outbox_lag_ms.store(oldest.map_or(0, |t| (now - t).max(0)), Relaxed);
            }
            if sequenced == 0 && published == 0 {
                tokio::time::sleep(IDLE_POLL).await;
            }
        }
    }

    /// Gives the next committed, unpositioned rows positions after `after`, in id order.
    async fn sequence(&self, lead: &mut Lead, after: i64) -> anyhow::Result<i64> {
        let sql = "UPDATE events SET position = ranked.pos \
             FROM (SELECT id, $1 + ROW_NUMBER() OVER (ORDER BY id) AS pos FROM events WHERE position IS NULL ORDER BY id LIMIT 1000) AS ranked \
             WHERE events.id = ranked.id";
        Ok(self.exec(lead, sql, &[after]).await? as i64)
    }

    async fn publish(&self, lead: &mut Lead) -> Result<i64, PublishError> {
        let sql = "SELECT id, org_id, type, created_at, position, body FROM events \
             WHERE published_at IS NULL AND position IS NOT NULL ORDER BY position LIMIT $1";
        let rows = match &mut lead.0 {
            Some(conn) => sqlx::query(sql).bind(BATCH).fetch_all(&mut *conn).await,
            None => sqlx::query(sql).bind(BATCH).fetch_all(self.db.pool()).await,
        }
        .map_err(|e| PublishError::Db(e.into()))?;
        if rows.is_empty() {
            return Ok(0);
        }
        let batch = rows
            .iter()
            .map(|r| {
                Ok(Outgoing {
                    id: r.try_get("id")?,
                    org_id: r.try_get("org_id")?,
                    kind: r.try_get("type")?,
                    created_at: r.try_get("created_at")?,
                    position: r.try_get("position")?,
                    body: r.try_get::<String, _>("body")?.into(),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(|e| PublishError::Db(e.into()))?;
        let started = std::time::Instant::now();
        if let Err(e) = self.bus.publish(&batch).await {
            metrics().publish_failures.fetch_add(1, Relaxed);
            return Err(PublishError::Bus(e));
        }
        metrics().published(batch.len() as u64, started.elapsed().as_millis() as u64);
        let (first, last) = (batch[0].position, batch[batch.len() - 1].position);
        let now = self.clock.now_ms();
        self.exec(
            lead,
            "UPDATE events SET published_at = $1 WHERE position >= $2 AND position <= $3 AND published_at IS NULL",
            &[now, first, last],
        )
        .await
        .map_err(PublishError::Db)?;
        Ok(batch.len() as i64)
    }

    async fn exec(&self, lead: &mut Lead, sql: &'static str, binds: &[i64]) -> anyhow::Result<u64> {
        let mut q = sqlx::query(sql);
        for b in binds {
            q = q.bind(*b);
        }
        Ok(match &mut lead.0 {
            Some(conn) => q.execute(&mut *conn).await?.rows_affected(),
            None => {
                let mut tx = self.db.begin().await.map_err(|e| anyhow::anyhow!(e.message))?;
                let n = q.execute(&mut *tx).await?.rows_affected();
                tx.commit().await.map_err(|e| anyhow::anyhow!(e.message))?;
                n
            }
        })
    }

    async fn exec_scalar(&self, lead: &mut Lead, sql: &'static str, bind: Option<i64>) -> anyhow::Result<i64> {
        let mut q = sqlx::query_scalar::<_, i64>(sql);
        if let Some(b) = bind {
            q = q.bind(b);
        }
        Ok(match &mut lead.0 {
            Some(conn) => q.fetch_one(&mut *conn).await?,
            None => q.fetch_one(self.db.pool()).await?,
        })
    }
}

enum PublishError {
    Db(anyhow::Error),
    Bus(anyhow::Error),
}
