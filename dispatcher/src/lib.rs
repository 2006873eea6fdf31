//! The webhook dispatcher: turns events into deliveries (intake), takes due deliveries under a
//! lease, signs and POSTs them (sender), and records every attempt with what follows it
//! (schedule). Any number of dispatchers can share one database.
pub mod guard;
pub mod intake;
mod lanes;
pub mod metrics;
mod queue;
pub mod schedule;
mod sender;
pub mod signing;

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::metrics::metrics;
use coursewire_core::clock::SharedClock;
use coursewire_core::config::{parse_duration, parse_durations};
use coursewire_core::events::bus::Handoff;
use coursewire_core::events::topology::Topology;
use coursewire_core::secrets::Keyring;
use coursewire_core::store::Db;
use tokio::sync::{Notify, mpsc, watch};

use lanes::Lanes;
use queue::{Claimed, Outcome};
use schedule::{Next, Response};
use sender::Sender;

/// Deliveries taken per claim.
const CLAIM_BATCH: usize = 200;
/// Outcomes written per transaction.
const RECORD_BATCH: usize = 256;

#[derive(Clone, Debug)]
pub struct Config {
    /// Delays before attempts 2, 3, … (`--webhook-retry-schedule`).
    pub retry_schedule: Vec<Duration>,
    /// Per attempt (`--webhook-timeout`).
    pub timeout: Duration,
    pub allow_private_targets: bool,
    /// An endpoint whose attempts all failed this long is disabled.
    pub disable_after: Duration,
    /// In-flight attempts per endpoint unless the endpoint sets its own cap.
    pub endpoint_concurrency: u32,
    /// In-flight attempts of this process.
    pub max_in_flight: usize,
    /// How often to look for due work that no local event announced (retries, other replicas).
    pub poll_interval: Duration,
}

impl Config {
    /// From the CLI's text values; errors name the flag.
    pub fn from_flags(schedule: &str, timeout: &str, allow_private: bool) -> anyhow::Result<Config> {
        Ok(Config {
            retry_schedule: parse_durations(schedule).map_err(|e| anyhow::anyhow!("--webhook-retry-schedule: {e}"))?,
            timeout: parse_duration(timeout).map_err(|e| anyhow::anyhow!("--webhook-timeout: {e}"))?,
            allow_private_targets: allow_private,
            ..Config::default()
        })
    }

    /// How long a claimed delivery stays ours: long enough to wait in its endpoint's lane
    /// behind the rounds claimed with it, make the attempt and record it.
    fn lease(&self) -> Duration {
        self.timeout * (queue::QUEUED_ROUNDS + 2) + Duration::from_secs(5)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            retry_schedule: parse_durations("5s,5m,30m,2h,5h,10h,10h").expect("valid default"),
            timeout: Duration::from_secs(15),
            allow_private_targets: false,
            disable_after: Duration::from_secs(5 * 86_400),
            endpoint_concurrency: 16,
            max_in_flight: 512,
            poll_interval: Duration::from_millis(250),
        }
    }
}

/// Where events come from.
pub enum Source {
    /// The all-in-one's relay, in the same process (`InProcessBus::subscribe`, taken before
    /// the relay starts so no event is handed over before anyone listens).
    InProcess(mpsc::Receiver<Handoff>),
    /// The `coursewire.dispatcher` queue.
    Amqp(Topology),
}

/// What intake and the delivery loop share.
pub struct Shared {
    pub db: Db,
    pub clock: SharedClock,
    /// Opens the endpoints' sealed signing secrets and header values.
    pub secrets: Arc<Keyring>,
    /// Woken when deliveries were created or an attempt finished.
    pub wake: Notify,
}

/// A claimed delivery with what its attempt needs.
struct Job {
    delivery: Claimed,
    endpoint: Arc<queue::Endpoint>,
    body: Arc<str>,
}

pub struct Dispatcher(Arc<Inner>);

struct Inner {
    shared: Arc<Shared>,
    config: Config,
    sender: Sender,
    lanes: Lanes<Job>,
    /// Deliveries with an attempt in flight (handed back if shutdown cuts them off).
    in_flight: Mutex<HashSet<String>>,
    /// Attempts running; `idle` is notified when it drops to zero.
    running: AtomicUsize,
    idle: Notify,
    /// Where finished attempts go to be recorded; taken away at shutdown, so the recorder
    /// ends once the last attempt that got through has been written.
    outcomes: Mutex<Option<mpsc::Sender<Outcome>>>,
    outcomes_rx: Mutex<Option<mpsc::Receiver<Outcome>>>,
}

impl Dispatcher {
    pub fn new(db: Db, clock: SharedClock, secrets: Arc<Keyring>, config: Config) -> anyhow::Result<Dispatcher> {
        let sender = Sender::new(config.timeout, config.allow_private_targets, config.max_in_flight)?;
        let lanes = Lanes::new(config.endpoint_concurrency);
        let shared = Arc::new(Shared { db, clock, secrets, wake: Notify::new() });
        let (outcomes, outcomes_rx) = mpsc::channel(4096);
        Ok(Dispatcher(Arc::new(Inner {
            shared,
            config,
            sender,
            lanes,
            in_flight: Mutex::default(),
            running: AtomicUsize::new(0),
            idle: Notify::new(),
            outcomes: Mutex::new(Some(outcomes)),
            outcomes_rx: Mutex::new(Some(outcomes_rx)),
        })))
    }

    /// Runs until `shutdown` completes; then takes no new work, gives attempts in flight up to
    /// the webhook timeout to finish and be recorded, and hands back what is left.
    pub async fn run(self, source: Source, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let inner = self.0;
        let (stop_tx, stop) = watch::channel(false);
        let intake = match source {
            Source::InProcess(handoffs) => {
                tokio::spawn(intake::in_process(inner.shared.clone(), handoffs, stop.clone()))
            }
            Source::Amqp(topology) => tokio::spawn(intake::amqp(inner.shared.clone(), topology, stop.clone())),
        };
        let outcomes = inner.outcomes_rx.lock().unwrap_or_else(|p| p.into_inner()).take().expect("run once");
        let recorder = tokio::spawn(record_outcomes(inner.shared.clone(), outcomes, inner.config.disable_after));
        tokio::select! {
            _ = shutdown => {},
            _ = inner.deliver(stop.clone()) => {},
        }
        let _ = stop_tx.send(true);
        let _ = intake.await;
        let queued: Vec<String> = inner.lanes.drain().into_iter().map(|j| j.delivery.id).collect();
        queue::release(&inner.shared.db, &queued).await?;
        tracing::info!(in_flight = inner.running.load(Relaxed), "dispatcher stopping: finishing attempts in flight");
        let grace = inner.config.timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(grace, async {
            while inner.running.load(Relaxed) > 0 {
                let idle = inner.idle.notified();
                if inner.running.load(Relaxed) == 0 {
                    break;
                }
                idle.await;
            }
        })
        .await;
        // Outcomes sent so far get recorded; attempts still running after the grace period are
        // handed back and made again later (at least once).
        drop(inner.outcomes.lock().unwrap_or_else(|p| p.into_inner()).take());
        let _ = tokio::time::timeout(Duration::from_secs(10), recorder).await;
        let cut_off: Vec<String> = inner.in_flight.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        queue::release(&inner.shared.db, &cut_off).await
    }
}

impl Inner {
    fn outcome_sender(&self) -> Option<mpsc::Sender<Outcome>> {
        self.outcomes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn deliver(self: &Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut last_gauge = std::time::Instant::now() - Duration::from_secs(60);
        loop {
            for job in self.lanes.ready() {
                self.launch(job);
            }
            let now = self.shared.clock.now_ms();
            if last_gauge.elapsed() >= Duration::from_secs(5) {
                last_gauge = std::time::Instant::now();
                if let Ok(due) = queue::due(&self.shared.db, now).await {
                    metrics().deliveries_due.store(due, Relaxed);
                }
            }
            // Room for what runs now and the rounds that wait in the lanes behind it.
            let (running, queued) = self.lanes.load();
            let most = self.config.max_in_flight * (queue::QUEUED_ROUNDS as usize + 1);
            let room = most.saturating_sub(running + queued).min(CLAIM_BATCH);
            let claimed = if room == 0 {
                Vec::new()
            } else {
                let lease_until = now + self.config.lease().as_millis() as i64;
                let full = self.lanes.full(queue::QUEUED_ROUNDS);
                let cap = self.config.endpoint_concurrency;
                match queue::claim(&self.shared.db, now, lease_until, room, cap, &full).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot claim deliveries; retrying");
                        Vec::new()
                    }
                }
            };
            if claimed.is_empty() {
                tokio::select! {
                    _ = self.shared.wake.notified() => {},
                    _ = tokio::time::sleep(self.config.poll_interval) => {},
                    _ = stop.wait_for(|s| *s) => return,
                }
                continue;
            }
            if let Err(e) = self.start(claimed, now).await {
                tracing::warn!(error = %e, "cannot load what the claimed deliveries need; their leases will lapse");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Puts every claimed delivery in its endpoint's lane, starting those with room.
    async fn start(self: &Arc<Self>, claimed: Vec<Claimed>, now: i64) -> anyhow::Result<()> {
        let mut endpoint_ids: Vec<&str> = claimed.iter().map(|c| c.endpoint_id.as_str()).collect();
        endpoint_ids.sort_unstable();
        endpoint_ids.dedup();
        let endpoints = queue::endpoints(&self.shared.db, &self.shared.secrets, &endpoint_ids, now).await?;
        let event_ids: Vec<&str> = claimed.iter().map(|c| c.event_id.as_str()).collect();
        let bodies = queue::bodies(&self.shared.db, &event_ids).await?;
        for delivery in claimed {
            let Some(endpoint) = endpoints.get(&delivery.endpoint_id).cloned() else {
                continue; // deleted since the claim, with its deliveries
            };
            let Some(body) = bodies.get(&delivery.event_id).cloned() else {
                // The event log no longer holds it (retention): nothing left to send.
                let outcome = Outcome {
                    attempted_at: now,
                    duration_ms: 0,
                    status: 0,
                    error: "event_expired",
                    body: String::new(),
                    next: Next::Failed,
                    delivery,
                };
                if let Some(outcomes) = self.outcome_sender() {
                    let _ = outcomes.send(outcome).await;
                }
                continue;
            };
            let (cap, rate) = (endpoint.max_concurrency, endpoint.max_rate);
            let lane = delivery.endpoint_id.clone();
            if let Some(job) = self.lanes.admit(&lane, cap, rate, Job { delivery, endpoint, body }) {
                self.launch(job);
            }
        }
        Ok(())
    }

    /// Runs one attempt; when it ends, the next job waiting in the same lane starts.
    fn launch(self: &Arc<Self>, job: Job) {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(job.delivery.id.clone());
        self.running.fetch_add(1, Relaxed);
        let inner = self.clone();
        tokio::spawn(async move {
            let Job { delivery, endpoint, body } = job;
            let attempted_at = inner.shared.clock.now_ms();
            let attempt = inner.sender.send(&endpoint, &delivery.event_id, &body, attempted_at).await;
            let ok = matches!(attempt.response, Response::Status { code: 200..=299, .. });
            metrics().attempted(&delivery.endpoint_id, ok, attempt.duration_ms as u64);
            let next = schedule::next(
                &inner.config.retry_schedule,
                delivery.attempts + 1,
                delivery.single,
                &attempt.response,
                inner.shared.clock.now_ms(),
                &mut rand::rng(),
            );
            let (status, error) = match attempt.response {
                Response::Status { code, .. } => (code, ""),
                Response::Error(kind) => (0, kind),
            };
            let (id, lane) = (delivery.id.clone(), delivery.endpoint_id.clone());
            let outcome = Outcome {
                delivery,
                attempted_at,
                duration_ms: attempt.duration_ms,
                status,
                error,
                body: attempt.body,
                next,
            };
            let sent = match inner.outcome_sender() {
                Some(outcomes) => outcomes.send(outcome).await.is_ok(),
                None => false,
            };
            if sent {
                inner.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            }
            if let Some(next) = inner.lanes.finish(&lane) {
                inner.launch(next);
            }
            if inner.running.fetch_sub(1, Relaxed) == 1 {
                inner.idle.notify_waiters();
            }
            inner.shared.wake.notify_one();
        });
    }
}

/// Writes outcomes in batches (one transaction each) until every sender is gone.
async fn record_outcomes(shared: Arc<Shared>, mut outcomes: mpsc::Receiver<Outcome>, disable_after: Duration) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while outcomes.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        let mut backoff = Duration::from_millis(100);
        loop {
            let now = shared.clock.now_ms();
            match queue::record(&shared.db, &batch, now, disable_after.as_millis() as i64).await {
                Ok(disabled) => {
                    for id in disabled {
                        tracing::warn!(endpoint = %id, "webhook endpoint disabled");
                    }
                    break;
                }
                Err(e) => {
                    // The leases keep the deliveries ours a while; after that another attempt is made.
                    tracing::warn!(error = %e, "cannot record webhook attempts; retrying");
                    if backoff > Duration::from_secs(5) {
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
        for o in batch.drain(..) {
            match o.next {
                Next::Delivered => metrics().deliveries_succeeded.fetch_add(1, Relaxed),
                Next::Failed | Next::Gone => metrics().deliveries_failed.fetch_add(1, Relaxed),
                Next::RetryAt(_) => 0,
            };
        }
        // Deliveries just handed back may be due again at once (and the endpoint has room).
        shared.wake.notify_one();
    }
}
