//! The delivery engine: everything between a delivery made and its outcome recorded. Jobs
//! enter their endpoints' lanes (from `first_attempts`, or claimed here from the durable
//! schedule when due), each attempt is signed and POSTed (`sender`), what follows it is
//! decided by `schedule`, and outcomes are written in batches (`store`). Beside the
//! claim loop run the recorder, the liveness heartbeat, the Postgres wake-up listener and the
//! backpressure watch (`pressure`). The engine knows nothing of where events come from:
//! intake reaches it only through `first_attempts::IntakeHandle`.
use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coursewire_core::clock::SharedClock;
use coursewire_core::secrets::Keyring;
use coursewire_core::store::{Backend, DELIVERIES_CHANNEL, Db};
use coursewire_core::trace;
use coursewire_core::webhooks::deliveries::PARKED;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::Config;
use crate::endpoints::{Cache, Endpoint};
use crate::lanes::{Admit, Lanes};
use crate::metrics;
use crate::pressure;
use crate::schedule::{self, Next, Response};
use crate::sender::{Payload, Sender};
use crate::store::{self, Claimed, Outcome};

/// Deliveries taken per claim.
const CLAIM_BATCH: usize = 200;
/// Outcomes written per transaction.
const RECORD_BATCH: usize = 256;
/// Deliveries one endpoint's lane may hold waiting, in this process: enough that a busy
/// endpoint's first attempts wait here rather than go through the database.
const LANE_QUEUE: usize = 10_000;
/// A claim leaves out endpoints with this many rounds of their cap already waiting.
const QUEUED_ROUNDS: u32 = 4;
/// How long this process's liveness row keeps what it holds its own without a renewal.
const LEASE: Duration = Duration::from_secs(5);
/// How often the liveness row is renewed while this process holds anything, and how often it
/// looks for dispatchers whose row lapsed (whose deliveries it then hands back).
const HEARTBEAT: Duration = Duration::from_secs(2);
/// The longest the claim loop sleeps when nothing is due (it is woken for everything else).
const IDLE_CHECK: Duration = Duration::from_secs(30);

/// What intake and the delivery loop share.
pub(crate) struct Shared {
    pub db: Db,
    pub clock: SharedClock,
    /// Opens the endpoints' sealed signing secrets and header values.
    pub secrets: Arc<Keyring>,
    /// Woken when deliveries may have come due (written, retried, or an endpoint freed up).
    pub wake: Notify,
    /// Whether intake is consuming events (health's `coursewire.broker`).
    pub consuming: watch::Sender<bool>,
}

/// A delivery ready to be attempted, with what its attempt needs.
pub(crate) struct Job {
    pub delivery: Claimed,
    pub endpoint: Arc<Endpoint>,
    pub payload: Payload,
    pub report: Report,
    /// When it entered this process (intake, or a claim): how long it waited is the measure
    /// of being behind (`pressure`).
    pub since: std::time::Instant,
}

/// Where a job's outcome goes.
pub(crate) enum Report {
    /// To the recorder (the delivery is written and held by us).
    Recorder,
    /// To the intake batch it belongs to, while the batch waits for it; once the batch stopped
    /// waiting, to the recorder after the batch is written (`Some(true)`), or nowhere if it
    /// was not (`Some(false)`: the events come again).
    First(oneshot::Sender<Outcome>, watch::Receiver<Option<bool>>),
}

/// The engine's state, shared by its tasks and handed to intake behind `IntakeHandle`.
pub(crate) struct Engine {
    pub shared: Arc<Shared>,
    config: Config,
    /// This process's name in `lease_owner`.
    pub me: String,
    sender: Sender,
    pub lanes: Lanes<Job>,
    pub cache: Cache,
    /// Attempts started, and how long they waited, for the backpressure verdict.
    starts: pressure::Starts,
    /// Deliveries written and held by us, not yet recorded: while there are any, the
    /// heartbeat keeps our liveness row ahead.
    held: Mutex<HashSet<String>>,
    /// Until when our liveness row, as last written, says we are alive.
    alive_until: AtomicI64,
    /// Attempts running; `idle` is notified when it drops to zero.
    running: AtomicUsize,
    idle: Notify,
    /// Where finished attempts go to be recorded; taken away at shutdown, so the recorder
    /// ends once the last attempt that got through has been written.
    outcomes: Mutex<Option<mpsc::Sender<Outcome>>>,
    outcomes_rx: Mutex<Option<mpsc::Receiver<Outcome>>>,
}

/// The engine's tasks beside the claim loop, from start to shutdown.
pub(crate) struct Tasks {
    recorder: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    listener: JoinHandle<()>,
    pressure: JoinHandle<()>,
}

impl Engine {
    pub(crate) fn new(db: Db, clock: SharedClock, secrets: Arc<Keyring>, config: Config) -> anyhow::Result<Engine> {
        metrics::describe();
        let sender = Sender::new(config.timeout, config.allow_private_targets, config.max_in_flight)?;
        let lanes = Lanes::new(config.endpoint_concurrency, LANE_QUEUE);
        let consuming = watch::channel(false).0;
        let shared = Arc::new(Shared { db, clock, secrets, wake: Notify::new(), consuming });
        let (outcomes, outcomes_rx) = mpsc::channel(4096);
        Ok(Engine {
            shared,
            config,
            // Which process holds a lease, for operators (and the kill test): pid, then unique.
            me: format!(
                "{}-{}",
                std::process::id(),
                coursewire_core::ids::new_id(coursewire_core::ids::kind::DISPATCHER)
            ),
            sender,
            lanes,
            cache: Cache::default(),
            starts: pressure::Starts::default(),
            held: Mutex::default(),
            alive_until: AtomicI64::new(0),
            running: AtomicUsize::new(0),
            idle: Notify::new(),
            outcomes: Mutex::new(Some(outcomes)),
            outcomes_rx: Mutex::new(Some(outcomes_rx)),
        })
    }

    /// Starts the recorder, the heartbeat, the wake-up listener and the backpressure watch.
    pub(crate) fn spawn_tasks(self: &Arc<Self>) -> Tasks {
        let outcomes = self.outcomes_rx.lock().unwrap_or_else(|p| p.into_inner()).take().expect("run once");
        let recorder = tokio::spawn(self.clone().record_outcomes(outcomes));
        let heartbeat = tokio::spawn(self.clone().heartbeat());
        let listener = tokio::spawn(self.clone().listen());
        let engine = self.clone();
        let pressure = tokio::spawn(async move {
            let busy = || engine.running.load(Relaxed) > 0;
            pressure::watch(&engine.starts, busy, |lasting| engine.report_behind(lasting)).await
        });
        Tasks { recorder, heartbeat, listener, pressure }
    }

    /// Shutdown, once the claim loop stopped: nothing more wakes the engine or reports it behind.
    pub(crate) fn stop_watching(&self, tasks: &Tasks) {
        tasks.listener.abort();
        tasks.pressure.abort();
    }

    /// Shutdown, once intake finished its batches: hands back what waits in the lanes, gives
    /// attempts in flight up to the webhook timeout to finish and be recorded, and hands back
    /// what is left.
    pub(crate) async fn finish(&self, tasks: Tasks) -> anyhow::Result<()> {
        let queued: Vec<String> = self.lanes.drain().into_iter().map(|j| j.delivery.id).collect();
        self.release(&queued, self.shared.clock.now_ms()).await?;
        tracing::info!(in_flight = self.running.load(Relaxed), "dispatcher stopping: finishing attempts in flight");
        let grace = self.config.timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(grace, async {
            while self.running.load(Relaxed) > 0 {
                let idle = self.idle.notified();
                if self.running.load(Relaxed) == 0 {
                    break;
                }
                idle.await;
            }
        })
        .await;
        // Outcomes sent so far get recorded; attempts still running after the grace period are
        // handed back and made again later (at least once).
        drop(self.outcomes.lock().unwrap_or_else(|p| p.into_inner()).take());
        let _ = tokio::time::timeout(Duration::from_secs(10), tasks.recorder).await;
        tasks.heartbeat.abort();
        self.held.lock().unwrap_or_else(|p| p.into_inner()).clear();
        store::release_all(&self.shared.db, &self.me, self.shared.clock.now_ms()).await
    }

    /// Says on our liveness row that this dispatcher is behind, for `lasting` from now. The
    /// report lives on that row, which we may not have yet (a dispatcher whose first attempts
    /// all end within their batch holds nothing).
    async fn report_behind(&self, lasting: Duration) -> anyhow::Result<()> {
        self.ensure_alive().await?;
        let until = self.shared.clock.now_ms() + lasting.as_millis() as i64;
        coursewire_core::webhooks::pressure::report_behind(&self.shared.db, &self.me, until).await?;
        Ok(())
    }

    /// Before holding anything new: makes sure our liveness row has at least half a lease
    /// ahead (one statement when it has less; none while the heartbeat keeps it fresh).
    pub(crate) async fn ensure_alive(&self) -> anyhow::Result<()> {
        let now = self.shared.clock.now_ms();
        if self.alive_until.load(Relaxed) - now < LEASE.as_millis() as i64 / 2 {
            self.renew(now).await?;
        }
        Ok(())
    }

    async fn renew(&self, now: i64) -> anyhow::Result<()> {
        let until = now + LEASE.as_millis() as i64;
        store::alive(&self.shared.db, &self.me, until).await?;
        self.alive_until.store(until, Relaxed);
        Ok(())
    }

    pub(crate) fn disable_after_ms(&self) -> i64 {
        self.config.disable_after.as_millis() as i64
    }

    pub(crate) fn hold(&self, ids: &[String]) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).extend(ids.iter().cloned());
    }

    pub(crate) fn unhold(&self, ids: &[String]) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            held.remove(id);
        }
    }

    /// Hands deliveries back due at `at`, and stops holding them.
    async fn release(&self, ids: &[String], at: i64) -> anyhow::Result<()> {
        self.unhold(ids);
        store::release(&self.shared.db, &self.me, ids, at).await
    }

    fn outcome_sender(&self) -> Option<mpsc::Sender<Outcome>> {
        self.outcomes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Counts deliveries that ended.
    pub(crate) fn count<'a>(&self, outcomes: impl Iterator<Item = &'a Outcome>) {
        for o in outcomes {
            match o.next {
                Next::Delivered => metrics::delivery_ended(true),
                Next::Failed | Next::Gone => metrics::delivery_ended(false),
                Next::RetryAt(_) => {}
            }
        }
    }

    /// The claim loop: takes due deliveries (retries, and those intake could not start) into
    /// their endpoints' lanes. It sleeps until the next delivery comes due, or until woken.
    pub(crate) async fn deliver(self: &Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut last_gauge = std::time::Instant::now() - Duration::from_secs(60);
        loop {
            for job in self.lanes.ready() {
                self.launch(job);
            }
            let now = self.shared.clock.now_ms();
            let (running, queued) = self.lanes.load();
            let room = (self.config.max_in_flight * (QUEUED_ROUNDS as usize + 1))
                .saturating_sub(running + queued)
                .min(CLAIM_BATCH);
            let full = self.lanes.full(QUEUED_ROUNDS);
            let claimed = if room == 0 {
                Vec::new()
            } else {
                let claimed = async {
                    self.ensure_alive().await?;
                    store::claim(&self.shared.db, &self.me, now, room, &full).await
                };
                match claimed.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot claim deliveries; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            };
            let took = claimed.len();
            if took > 0
                && let Err(e) = self.start(claimed, now).await
            {
                tracing::warn!(error = %e, "cannot load what the claimed deliveries need; their leases will lapse");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if took == room && room > 0 {
                continue; // more may be due
            }
            // Sleep until the next retry comes due by the clock, or until woken (writes, and
            // the heartbeat handing back a lapsed dispatcher's deliveries); nothing due: a
            // long nap.
            let (due_at, nap) = if room == 0 || !full.is_empty() {
                // Lanes left out for want of room: look again once they may have drained.
                (None, Duration::from_millis(100))
            } else {
                match store::next_due(&self.shared.db).await {
                    Ok(at) => (at, IDLE_CHECK),
                    Err(_) => (None, Duration::from_secs(1)),
                }
            };
            if last_gauge.elapsed() >= Duration::from_secs(5) {
                last_gauge = std::time::Instant::now();
                let due =
                    if took == room && room > 0 { store::due(&self.shared.db, now).await.unwrap_or(0) } else { 0 };
                metrics::deliveries_due(due);
            }
            let due = self.shared.clock.sleep_until(due_at.unwrap_or(i64::MAX));
            tokio::select! {
                _ = self.shared.wake.notified() => {},
                _ = self.shared.db.signals().deliveries.notified() => {},
                _ = due, if due_at.is_some() => {},
                _ = tokio::time::sleep(nap) => {},
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            }
        }
    }

    /// Puts claimed deliveries in their endpoints' lanes, starting those with room.
    async fn start(self: &Arc<Self>, claimed: Vec<Claimed>, now: i64) -> anyhow::Result<()> {
        self.hold(&claimed.iter().map(|c| c.id.clone()).collect::<Vec<_>>());
        let mut orgs: Vec<(&str, Option<i64>)> = claimed.iter().map(|c| (c.org.as_str(), None)).collect();
        orgs.sort_unstable();
        orgs.dedup();
        self.cache.refresh(&self.shared.db, &self.shared.secrets, &orgs).await?;
        let event_ids: Vec<&str> = claimed.iter().map(|c| c.event_id.as_str()).collect();
        let bodies = store::bodies(&self.shared.db, &event_ids).await?;
        let mut back = Vec::new();
        let mut parked = Vec::new();
        for delivery in claimed {
            let endpoint = match self.cache.get(&delivery.org, &delivery.endpoint_id) {
                Some(e) if e.enabled => e,
                // Disabled since the claim: it waits, parked, until the endpoint is enabled.
                Some(_) => {
                    parked.push(delivery.id);
                    continue;
                }
                // Deleted since the claim, with its deliveries; or its secrets do not open.
                None => {
                    back.push(delivery.id);
                    continue;
                }
            };
            let Some(payload) = bodies.get(&delivery.event_id).cloned() else {
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
            match self.lanes.admit(
                &lane,
                cap,
                rate,
                Job { delivery, endpoint, payload, report: Report::Recorder, since: std::time::Instant::now() },
            ) {
                Admit::Start(job) => self.launch(job),
                Admit::Queued => {}
                Admit::Full(job) => back.push(job.delivery.id),
            }
        }
        self.release(&parked, PARKED).await?;
        self.release(&back, now).await
    }

    /// Runs one attempt; when it ends, the next job waiting in the same lane starts.
    pub(crate) fn launch(self: &Arc<Self>, job: Job) {
        self.running.fetch_add(1, Relaxed);
        self.starts.record(job.since.elapsed());
        let inner = self.clone();
        tokio::spawn(async move {
            let Job { delivery, endpoint, payload, report, .. } = job;
            let lane = delivery.endpoint_id.clone();
            // A first attempt whose batch could not be written is not made: the events come again.
            let abandoned = matches!(&report, Report::First(_, written) if *written.borrow() == Some(false));
            if !abandoned {
                let outcome = inner.attempt(delivery, &endpoint, &payload).await;
                inner.report(outcome, report).await;
            }
            if let Some(next) = inner.lanes.finish(&lane) {
                inner.launch(next);
            }
            if inner.running.fetch_sub(1, Relaxed) == 1 {
                inner.idle.notify_waiters();
            }
        });
    }

    /// Makes one attempt and decides what follows it.
    async fn attempt(&self, delivery: Claimed, endpoint: &Endpoint, payload: &Payload) -> Outcome {
        let attempted_at = self.shared.clock.now_ms();
        let secrets = endpoint.secrets(attempted_at);
        // The attempt is a span of the event's trace: exported with `--otlp-endpoint`, and
        // named to the receiver in `traceparent` either way.
        let span = trace::exporting().then(|| {
            tracing::info_span!(
                target: "coursewire::webhook",
                "webhook attempt",
                otel.kind = "client",
                webhook.endpoint = %endpoint.id,
                event.id = %delivery.event_id,
                http.response.status_code = tracing::field::Empty,
            )
        });
        let trace =
            (payload.trace.is_some() || span.is_some()).then(|| trace::continue_in(span.as_ref(), payload.trace));
        let send = self.sender.send(endpoint, &secrets, &delivery.event_id, &payload.body, trace, attempted_at);
        let attempt = match &span {
            Some(span) => send.instrument(span.clone()).await,
            None => send.await,
        };
        let ok = matches!(attempt.response, Response::Status { code: 200..=299, .. });
        if let (Some(span), Response::Status { code, .. }) = (&span, &attempt.response) {
            span.record("http.response.status_code", code);
        }
        metrics::attempted(&delivery.endpoint_id, ok, Duration::from_millis(attempt.duration_ms as u64));
        let next = schedule::next(
            &self.config.retry_schedule,
            delivery.attempts + 1,
            delivery.single,
            &attempt.response,
            self.shared.clock.now_ms(),
            &mut rand::rng(),
        );
        let (status, error) = match attempt.response {
            Response::Status { code, .. } => (code, ""),
            Response::Error(kind) => (0, kind),
        };
        Outcome { delivery, attempted_at, duration_ms: attempt.duration_ms, status, error, body: attempt.body, next }
    }

    /// Hands an outcome to its batch, or to the recorder.
    async fn report(&self, outcome: Outcome, report: Report) {
        let outcome = match report {
            Report::Recorder => outcome,
            Report::First(batch, mut written) => match batch.send(outcome) {
                Ok(()) => return,
                // The batch stopped waiting: record it once the batch is written.
                Err(outcome) => match written.wait_for(|w| w.is_some()).await.map(|w| *w) {
                    Ok(Some(true)) => outcome,
                    _ => return,
                },
            },
        };
        if let Some(outcomes) = self.outcome_sender() {
            let _ = outcomes.send(outcome).await;
        }
    }

    /// Writes outcomes in batches (one transaction each) until every sender is gone.
    async fn record_outcomes(self: Arc<Self>, mut outcomes: mpsc::Receiver<Outcome>) {
        let mut batch = Vec::with_capacity(RECORD_BATCH);
        while outcomes.recv_many(&mut batch, RECORD_BATCH).await > 0 {
            let mut backoff = Duration::from_millis(100);
            loop {
                let now = self.shared.clock.now_ms();
                match store::record(&self.shared.db, &self.me, &batch, now, self.disable_after_ms()).await {
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
            self.unhold(&batch.iter().map(|o| o.delivery.id.clone()).collect::<Vec<_>>());
            self.count(batch.iter());
            batch.clear();
            // A retry may be due sooner than the claim loop's sleep.
            self.shared.wake.notify_one();
        }
    }

    /// Keeps our liveness row ahead while we hold anything (idle: no statement), and hands
    /// back the deliveries of dispatchers whose row lapsed.
    async fn heartbeat(self: Arc<Self>) {
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            let now = self.shared.clock.now_ms();
            let holding = !self.held.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
            if holding && let Err(e) = self.renew(now).await {
                tracing::warn!(error = %e, "cannot renew this dispatcher's liveness; others may take its deliveries over");
            }
            match store::reap(&self.shared.db, now).await {
                Ok(0) => {}
                Ok(_) => self.shared.wake.notify_one(),
                Err(e) => tracing::warn!(error = %e, "cannot look for lapsed dispatchers"),
            }
        }
    }

    /// On Postgres, API calls that make deliveries due (test events, retries, replays,
    /// enabling an endpoint) reach every dispatcher as a notification.
    async fn listen(self: Arc<Self>) {
        if self.shared.db.backend != Backend::Postgres {
            return;
        }
        loop {
            let listened = async {
                let mut listener = sqlx::postgres::PgListener::connect(self.shared.db.url()).await?;
                listener.listen(DELIVERIES_CHANNEL).await?;
                loop {
                    listener.recv().await?;
                    self.shared.wake.notify_one();
                }
            };
            let result: Result<(), sqlx::Error> = listened.await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "lost the deliveries notification channel; reconnecting");
            }
            self.shared.wake.notify_one();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
