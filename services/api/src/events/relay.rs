//! The relay: reads committed outbox rows in commit order (`Mark`: transaction, then id; only
//! transactions no running one precedes, so nothing that commits later can sort before what
//! was read), sends them in that order through the bus, and moves its cursor past them only
//! once the bus confirmed them. It never writes to the events themselves. A crash between
//! send and cursor sends again: at least once. What may go again is marked `resent`, so
//! consumers know to look for work already done. Asked to stop (SIGTERM), it sends nothing
//! new, waits for the confirmations of what it sent, moves its cursor past them and only then
//! lets go of the lead: a deploy sends nothing twice.
//!
//! It is woken, not polling: by the commit of a transaction that wrote events, in this process
//! directly and from other replicas through Postgres `LISTEN/NOTIFY` (a slow fallback timer
//! only guards against a missed notification). Up to `PIPELINE` batches are on the bus at
//! once, so one slow confirm does not hold the next send.
//!
//! On Postgres one replica leads (a session advisory lock held on its own connection) and
//! every statement of the relay runs on that connection, so a replica that lost the lock
//! cannot write. The others stand by without holding a statement open: a leader that lets go
//! says so (`NOTIFY`), and they take over at once; one that died frees the lock as its
//! connection ends, and they find it within `STANDBY_POLL`. SQLite is single-process: the
//! relay leads.
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use sqlx::postgres::PgListener;
use sqlx::{AnyConnection, Connection, Row};
use tokio::sync::watch;

use crate::clock::SharedClock;
use crate::metrics;
use coursewire_core::events::bus::{Bus, Confirm, Outgoing};
use coursewire_core::events::{Mark, in_order};
use coursewire_core::store::{Backend, Db, OUTBOX_CHANNEL};
use coursewire_core::trace::TraceContext;

/// Any fixed number; identifies the relay's advisory lock.
const LEADER_LOCK: i64 = 0x636f_7572_7365;
/// Where a leader that lets go tells the standbys.
const LEADER_CHANNEL: &str = "coursewire_relay_leader";
/// How often a standby tries to take the lead (`pg_try_advisory_lock`, answered at once): the
/// longest a dead leader's events wait for a successor, once Postgres saw its connection end.
const STANDBY_POLL: Duration = Duration::from_millis(500);
/// How long a stopping relay waits for the confirmations of what it sent. RabbitMQ confirms
/// within milliseconds; in-process a confirmation waits for the dispatcher's first attempts
/// (up to its 2 s `FIRST_WAIT`). What is still unconfirmed then is sent again, marked
/// `resent`, by the next leader.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Events per batch.
const BATCH: i64 = 500;
/// Batches, and events, sent and not yet confirmed. In-process a confirmation waits for the
/// dispatcher's first attempts (up to its `FIRST_WAIT`), so at a few hundred events a second
/// many small batches are out at once; the event bound keeps memory in check under a backlog.
const PIPELINE: usize = 1024;
const PIPELINE_EVENTS: u64 = 20_000;
/// How long the relay sleeps with nothing to do when no wake-up comes.
const FALLBACK: Duration = Duration::from_secs(10);
/// How soon it looks again while committed events wait behind a running transaction, at
/// first. The usual one is short (a dispatcher writing a batch of deliveries, whose commit
/// wakes nobody), and its events are late by as much as this wait: 5 ms here made the
/// 600/s p99 27–29 ms, 1 ms made it 10.5 (docs/benchmarks.md). Looks that find nothing new
/// double the wait, up to `HELD_BACK_MAX`, so a long transaction costs a few reads a second.
const HELD_BACK_RETRY: Duration = Duration::from_millis(1);
const HELD_BACK_MAX: Duration = Duration::from_millis(100);

/// What the relay tells in-process readers (WatchEvents) and operators.
pub struct Hub {
    /// Moves whenever the relay read new events: WatchEvents streams look again.
    pub advanced: watch::Sender<u64>,
    /// Events a WatchEvents stream may buffer before its consumer counts as too slow.
    pub watch_buffer: usize,
    /// How long a full buffer may stay full before the stream is closed.
    pub slow_consumer_timeout: Duration,
    /// Whether the bus is reachable (health reports it); false until it first connects.
    pub bus_connected: watch::Sender<bool>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            advanced: watch::channel(0).0,
            watch_buffer: 1024,
            slow_consumer_timeout: Duration::from_secs(10),
            bus_connected: watch::channel(false).0,
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

/// A batch on the bus, waiting for its confirmation (the confirmations wait, in the same
/// order, in a `FuturesOrdered`).
struct Sent {
    last: Mark,
    oldest_created_at: i64,
    events: u64,
    started: Instant,
}

/// Why the relay loop stopped, when it was not asked to.
enum Stop {
    /// The database failed: lead again from scratch.
    Db(anyhow::Error),
}

impl From<sqlx::Error> for Stop {
    fn from(e: sqlx::Error) -> Stop {
        Stop::Db(e.into())
    }
}

impl From<coursewire_core::error::ApiError> for Stop {
    fn from(e: coursewire_core::error::ApiError) -> Stop {
        Stop::Db(anyhow::anyhow!(e.message))
    }
}

impl Relay {
    /// Runs until `shutdown` completes, then stops in order: no new batch, the confirmations
    /// of what was sent awaited (up to `STOP_GRACE`) and the cursor moved past them, then the
    /// lead let go. Database errors are logged and retried with backoff.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let follow = tokio::spawn(follow_bus(self.bus.connected(), self.hub.clone()));
        let (stopping, mut stop) = watch::channel(false);
        let relay = async {
            while let Some(lead) = self.lead(&mut stop).await {
                self.db.signals().set_relay_here(true);
                let worked = self.work(lead, &mut stop).await;
                self.db.signals().set_relay_here(false);
                let Err(Stop::Db(e)) = worked else { return };
                tracing::warn!(error = %e, "relay lost its database connection; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopped(&mut stop) => return,
                }
            }
        };
        let signal = async {
            shutdown.await;
            let _ = stopping.send(true);
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = relay => {}
            _ = signal => {}
        }
        follow.abort();
    }

    /// Waits until this replica leads (`None`: asked to stop first).
    async fn lead(&self, stop: &mut watch::Receiver<bool>) -> Option<Lead> {
        if self.db.backend == Backend::Sqlite {
            return Some(Lead(None));
        }
        let mut listener: Option<PgListener> = None;
        let mut standing_by = false;
        loop {
            if listener.is_none() {
                // Without it (the database is unreachable) polling still finds the lock free.
                listener = self.listen(LEADER_CHANNEL).await.ok();
            }
            let wait = match self.try_lead().await {
                Ok(Some(conn)) => {
                    tracing::info!("this replica now relays events");
                    return Some(Lead(Some(conn)));
                }
                Ok(None) => {
                    if !standing_by {
                        tracing::info!("another replica relays events; this one stands by to take over");
                        standing_by = true;
                    }
                    STANDBY_POLL
                }
                Err(e) => {
                    tracing::warn!(error = %e, "relay cannot reach the database to take the lead");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = stopped(stop) => return None,
                _ = tokio::time::sleep(wait) => {}
                // The leader let go (or the listener lost its connection: it is made again).
                heard = async { listener.as_mut().expect("guarded").try_recv().await }, if listener.is_some() => {
                    if heard.is_err() {
                        listener = None;
                    }
                }
            }
        }
    }

    /// One attempt at the leader lock, on a connection that becomes the leader's if it wins.
    async fn try_lead(&self) -> Result<Option<AnyConnection>, sqlx::Error> {
        let mut conn = self.db.pool().acquire().await?;
        let won: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(LEADER_LOCK).fetch_one(&mut *conn).await?;
        Ok(won.then(|| conn.detach()))
    }

    async fn listen(&self, channel: &str) -> Result<PgListener, sqlx::Error> {
        let mut l = PgListener::connect(self.db.url()).await?;
        l.listen(channel).await?;
        Ok(l)
    }

    /// Lets go of the lead and tells the standbys, so one takes over at once.
    async fn let_go(&self, lead: Lead) {
        if let Some(mut conn) = lead.0 {
            let unlocked = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT pg_advisory_unlock($1), pg_notify('{LEADER_CHANNEL}', '')"
            )))
            .bind(LEADER_LOCK)
            .execute(&mut conn)
            .await;
            if let Err(e) = unlocked {
                tracing::warn!(error = %e, "relay cannot let go of the lead; it goes as its connection closes");
            }
            let _ = conn.close().await;
        }
        tracing::info!("this replica no longer relays events");
    }

    /// Relays until asked to stop (`Ok`: what it sent is confirmed or the grace period is
    /// over, the cursor is saved and the lead let go) or until the database fails.
    async fn work(&self, mut lead: Lead, stop: &mut watch::Receiver<bool>) -> Result<(), Stop> {
        // Other replicas' commits reach us as notifications; ours wake us in-process.
        let mut listener = match self.db.backend {
            Backend::Postgres => Some(self.listen(OUTBOX_CHANNEL).await?),
            Backend::Sqlite => None,
        };
        let mut connected = self.bus.connected();
        let (txid, id): (i64, String) =
            sqlx::query_as("SELECT published_txid, published_id FROM relay_cursor WHERE id = 1")
                .fetch_one(&mut *self.conn(&mut lead).await?)
                .await?;
        let mut confirmed = Mark { txid, id };
        let mut sent_upto = confirmed.clone();
        // Up to the newest event committed now, events may have been sent already (by the
        // replica that led before, or by this one before its connection failed); events that
        // commit later cannot have been.
        let mut resent_upto = self.newest(&mut lead).await?;
        // Once asked to stop: until when the confirmations of what was sent are awaited.
        let mut stopping = stop.borrow().then(|| tokio::time::Instant::now() + STOP_GRACE);
        let mut in_flight: VecDeque<Sent> = VecDeque::new();
        let mut confirms: FuturesOrdered<Confirm> = FuturesOrdered::new();
        let mut backoff = Duration::from_millis(100);
        let mut dirty = true;
        // Committed events wait behind a transaction still running (elsewhere in the cluster,
        // perhaps): nobody will tell us when it ends, so look again shortly.
        let mut held_back = false;
        let mut retry = HELD_BACK_RETRY;
        loop {
            // Fill the pipeline while a wake-up (or a full batch) says there may be more.
            while stopping.is_none() && dirty && room(&in_flight) && *connected.borrow() {
                let (mut rows, waiting) = self.read_after(&mut lead, &sent_upto).await?;
                for row in &mut rows {
                    row.resent = row.mark <= resent_upto;
                }
                held_back = waiting;
                retry = if waiting && rows.is_empty() { (retry * 2).min(HELD_BACK_MAX) } else { HELD_BACK_RETRY };
                dirty = rows.len() as i64 == BATCH;
                let Some(last) = rows.last() else { break };
                self.hub.advanced.send_modify(|n| *n += 1);
                let batch = Sent {
                    last: last.mark.clone(),
                    oldest_created_at: rows.iter().map(|r| r.created_at).min().unwrap_or_default(),
                    events: rows.len() as u64,
                    started: Instant::now(),
                };
                confirms.push_back(match self.bus.send(rows).await {
                    Ok(confirm) => confirm,
                    Err(e) => Box::pin(async move { Err(e) }),
                });
                sent_upto = batch.last.clone();
                in_flight.push_back(batch);
            }
            self.report_lag(&in_flight);
            if stopping.is_some() && in_flight.is_empty() {
                break;
            }
            let room = stopping.is_none() && room(&in_flight);
            tokio::select! {
                Some(done) = confirms.next() => {
                    // Take every confirmation that is already in, then move the cursor once.
                    let mut done = Some(done);
                    let mut advanced = false;
                    while let Some(result) = done.take() {
                        let sent = in_flight.pop_front().expect("one batch per confirmation");
                        if let Err(e) = result {
                            metrics::publish_failed();
                            tracing::warn!(error = %e, "publishing failed; the events wait in the outbox and go again");
                            // Everything after the cursor goes again, in order (unless stopping:
                            // then the next leader sends it), marked as perhaps sent before.
                            in_flight.clear();
                            confirms = FuturesOrdered::new();
                            resent_upto = resent_upto.max(sent_upto);
                            sent_upto = confirmed.clone();
                            dirty = true;
                            if stopping.is_none() {
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(Duration::from_secs(5));
                            }
                            break;
                        }
                        metrics::published(sent.events, sent.started.elapsed());
                        confirmed = sent.last;
                        advanced = true;
                        backoff = Duration::from_millis(100);
                        done = confirms.next().now_or_never().flatten();
                    }
                    if advanced {
                        self.save_cursor(&mut lead, &confirmed).await?;
                    }
                }
                _ = self.db.signals().outbox.notified(), if room => dirty = true,
                notified = async { listener.as_mut().expect("guarded").try_recv().await }, if listener.is_some() && room => {
                    // `None`: the listener reconnected and may have missed notifications.
                    notified?;
                    dirty = true;
                }
                _ = connected.changed(), if stopping.is_none() => dirty = true,
                _ = tokio::time::sleep(retry), if held_back && room => dirty = true,
                _ = tokio::time::sleep(FALLBACK), if confirms.is_empty() => dirty = true,
                // Asked to stop: send nothing new, wait for what was sent.
                _ = stopped(stop), if stopping.is_none() => {
                    stopping = Some(tokio::time::Instant::now() + STOP_GRACE);
                }
                _ = tokio::time::sleep_until(stopping.unwrap_or_else(tokio::time::Instant::now)), if stopping.is_some() => {
                    let events: u64 = in_flight.iter().map(|s| s.events).sum();
                    tracing::warn!(events, "stopping before the bus confirmed every event sent; the next leader sends them again");
                    break;
                }
            }
        }
        self.let_go(lead).await;
        Ok(())
    }

    /// The newest event committed (before every event when there is none).
    async fn newest(&self, lead: &mut Lead) -> Result<Mark, Stop> {
        let newest: Option<(i64, String)> =
            sqlx::query_as("SELECT txid, id FROM events ORDER BY txid DESC, id DESC LIMIT 1")
                .fetch_optional(&mut *self.conn(lead).await?)
                .await?;
        Ok(newest.map_or_else(Mark::start, |(txid, id)| Mark { txid, id }))
    }

    /// The connection reads run on: the leader's, or one from the pool (SQLite).
    async fn conn<'c>(&self, lead: &'c mut Lead) -> Result<Conn<'c>, Stop> {
        Ok(match &mut lead.0 {
            Some(conn) => Conn::Lead(conn),
            None => Conn::Pooled(self.db.pool().acquire().await?),
        })
    }

    /// The next events after `after` in commit order, with (on Postgres) their organization's
    /// webhooks version read now, after their commit; and whether committed events wait
    /// behind a transaction still running (they sort after every settled one, so the settled
    /// ones are a prefix).
    async fn read_after(&self, lead: &mut Lead, after: &Mark) -> Result<(Vec<Outgoing>, bool), Stop> {
        let sql = format!(
            "SELECT id, org_id, type, created_at, txid, body, traceparent, \
               (SELECT o.webhooks_version FROM organizations o WHERE o.id = events.org_id) AS webhooks_version, \
               CASE WHEN {} THEN 1 ELSE 0 END AS settled \
             FROM events WHERE (txid, id) > ($1, $2) ORDER BY txid, id LIMIT $3",
            in_order(self.db.backend)
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after.txid)
            .bind(&after.id)
            .bind(BATCH)
            .fetch_all(&mut *self.conn(lead).await?)
            .await?;
        let settled = rows.iter().take_while(|r| r.try_get::<i64, _>("settled").unwrap_or(0) == 1).count();
        let held_back = settled < rows.len();
        Ok((rows[..settled].iter().map(outgoing).collect::<Result<Vec<_>, _>>()?, held_back))
    }

    async fn save_cursor(&self, lead: &mut Lead, mark: &Mark) -> Result<(), Stop> {
        let q = sqlx::query("UPDATE relay_cursor SET published_txid = $1, published_id = $2 WHERE id = 1")
            .bind(mark.txid)
            .bind(&mark.id);
        match &mut lead.0 {
            Some(conn) => {
                q.execute(&mut *conn).await?;
            }
            None => {
                let mut tx = self.db.begin_quiet().await?;
                q.execute(&mut *tx).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Outbox lag: the age of the oldest event sent and not yet confirmed (0 when none).
    fn report_lag(&self, in_flight: &VecDeque<Sent>) {
        let oldest = in_flight.iter().map(|s| s.oldest_created_at).min();
        let lag = oldest.map_or(0, |t| (self.clock.now_ms() - t).max(0));
        metrics::outbox_lag(Duration::from_millis(lag as u64));
    }
}

/// The connection a relay statement runs on: the leader's, or one from the pool (SQLite).
enum Conn<'a> {
    Lead(&'a mut AnyConnection),
    Pooled(sqlx::pool::PoolConnection<sqlx::Any>),
}

impl std::ops::Deref for Conn<'_> {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match self {
            Conn::Lead(c) => c,
            Conn::Pooled(c) => c,
        }
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            Conn::Lead(c) => c,
            Conn::Pooled(c) => c,
        }
    }
}

fn outgoing(r: &sqlx::any::AnyRow) -> Result<Outgoing, sqlx::Error> {
    Ok(Outgoing {
        id: r.try_get("id")?,
        org_id: r.try_get("org_id")?,
        kind: r.try_get("type")?,
        created_at: r.try_get("created_at")?,
        mark: Mark { txid: r.try_get("txid")?, id: r.try_get("id")? },
        body: r.try_get::<String, _>("body")?.into(),
        webhooks_version: r.try_get("webhooks_version")?,
        traceparent: r.try_get::<Option<String>, _>("traceparent")?.as_deref().and_then(TraceContext::parse),
        resent: false,
    })
}

/// Completes once the relay is asked to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Whether another batch may go out.
fn room(in_flight: &VecDeque<Sent>) -> bool {
    in_flight.len() < PIPELINE && in_flight.iter().map(|s| s.events).sum::<u64>() < PIPELINE_EVENTS
}

/// Mirrors the bus's state into health and the `coursewire_broker_connected` gauge.
async fn follow_bus(mut connected: watch::Receiver<bool>, hub: Arc<Hub>) {
    loop {
        let now = *connected.borrow_and_update();
        hub.bus_connected.send_replace(now);
        metrics::broker_connected(now);
        if connected.changed().await.is_err() {
            return;
        }
    }
}
