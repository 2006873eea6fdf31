//! First attempts, straight from intake. A batch of events is matched against the cached
//! endpoints; every delivery whose endpoint lane has room (or room in its queue) is attempted
//! at once; after the attempts finish (or `FIRST_WAIT` passes) the batch's deliveries are
//! written in one go — finished ones with their attempt, unfinished ones leased to us, and
//! those whose lane was full due now for a claim — and only then is the batch acknowledged.
//! A crash before that write means the bus hands the events again and they are sent again
//! with the same `webhook-id` (at least once); an event that may have come before (redelivered
//! by the bus, or resent by the relay) is first checked against the deliveries already
//! written, and one that comes twice at once is sent by both its intakes, each attempt
//! recorded on the one delivery.
use std::sync::Arc;
use std::time::Duration;

use coursewire_core::trace::TraceContext;
use coursewire_core::webhooks::deliveries;
use tokio::sync::{oneshot, watch};

use crate::engine::{Engine, Job, Report};
use crate::lanes::Admit;
use crate::schedule::Next;
use crate::sender::Payload;
use crate::store::{self, Claimed, Fresh, Outcome};

/// How long a batch waits for its first attempts before it is written anyway (the rest are
/// written as in flight and recorded when they end). Each attempt still running then costs
/// a second write (its row's update), and under load attempts wait in their lanes: at
/// 50 ms most flat-out deliveries were written twice, and at 500 ms most of those to ten
/// endpoints still were (docs/benchmarks.md). A slow endpoint only delays when its batch is
/// written (and acknowledged), never the posts; a crash before the write resends the
/// batch's attempts with the same `webhook-id`.
const FIRST_WAIT: Duration = Duration::from_secs(2);

/// One event from the bus.
#[derive(Debug)]
pub struct Incoming {
    pub id: String,
    pub kind: String,
    pub org: String,
    /// The §6 envelope, exactly as stored: what is posted.
    pub body: Arc<str>,
    /// The span of the call that caused it, if one did.
    pub trace: Option<TraceContext>,
    /// It may have come before (an earlier intake may have written its deliveries): the bus
    /// handed it before, or the relay sent it again (`Outgoing::resent`).
    pub redelivered: bool,
    /// The organization's webhooks version when the event was relayed, if the relay said.
    pub webhooks_version: Option<i64>,
}

/// What happened to one delivery of the batch so far.
enum Pending {
    Attempting(Claimed, oneshot::Receiver<Outcome>),
    Waiting(Claimed),
}

/// Sends the first attempts of `events` and writes their deliveries; returns once the batch
/// is written (the caller then acknowledges it). Returns how many deliveries were made.
pub async fn first_attempts(inner: &Arc<Engine>, events: &[Incoming]) -> anyhow::Result<usize> {
    // Test events are addressed to one endpoint when they are created (SendTestEvent).
    let events: Vec<&Incoming> = events.iter().filter(|e| e.kind != "webhook.test").collect();
    // Per organization, the newest version its events were relayed at (unknown if any is).
    let mut versions: std::collections::BTreeMap<&str, Option<i64>> = Default::default();
    for e in &events {
        let v = versions.entry(e.org.as_str()).or_insert(e.webhooks_version);
        *v = v.zip(e.webhooks_version).map(|(a, b)| a.max(b));
    }
    let orgs: Vec<(&str, Option<i64>)> = versions.into_iter().collect();
    let shared = &inner.shared;
    inner.cache.refresh(&shared.db, &shared.secrets, &orgs).await?;
    let redelivered: Vec<&str> = events.iter().filter(|e| e.redelivered).map(|e| e.id.as_str()).collect();
    let written =
        if redelivered.is_empty() { Default::default() } else { store::existing(&shared.db, &redelivered).await? };

    let (done, written_rx) = watch::channel(None);
    let mut pending = Vec::new();
    let mut kinds = Vec::new();
    for e in &events {
        for endpoint in inner.cache.matching(&e.org, &e.kind) {
            if written.contains(&(endpoint.id.clone(), e.id.clone())) {
                continue;
            }
            let delivery = Claimed {
                // Named by its endpoint and event: if the event came before (or comes at
                // once elsewhere too), this attempt is recorded on the delivery already made.
                id: deliveries::id_for(&endpoint.id, &e.id, ""),
                org: e.org.clone(),
                endpoint_id: endpoint.id.clone(),
                event_id: e.id.clone(),
                attempts: 0,
                single: false,
            };
            kinds.push(e.kind.as_str());
            let (report, outcome) = oneshot::channel();
            let job = Job {
                delivery: delivery.clone(),
                endpoint: endpoint.clone(),
                payload: Payload { body: e.body.clone(), trace: e.trace },
                report: Report::First(report, written_rx.clone()),
                since: std::time::Instant::now(),
            };
            let (cap, rate) = (endpoint.max_concurrency, endpoint.max_rate);
            pending.push(match inner.lanes.admit(&endpoint.id, cap, rate, job) {
                Admit::Start(job) => {
                    inner.launch(job);
                    Pending::Attempting(delivery, outcome)
                }
                Admit::Queued => Pending::Attempting(delivery, outcome),
                Admit::Full(_) => Pending::Waiting(delivery),
            });
        }
    }
    if pending.is_empty() {
        return Ok(0);
    }

    // Wait for the attempts, up to FIRST_WAIT; whatever is still running is written as ours.
    let deadline = tokio::time::Instant::now() + FIRST_WAIT;
    let mut rows = Vec::with_capacity(pending.len());
    for p in pending {
        rows.push(match p {
            Pending::Waiting(d) => Fresh::Waiting(d),
            Pending::Attempting(d, mut outcome) => match tokio::time::timeout_at(deadline, &mut outcome).await {
                Ok(Ok(o)) => Fresh::Done(o),
                // Still running (or it ended just now and went the late way): ours, leased.
                _ => {
                    outcome.close();
                    match outcome.try_recv() {
                        Ok(o) => Fresh::Done(o),
                        Err(_) => Fresh::InFlight(d),
                    }
                }
            },
        });
    }
    let now = shared.clock.now_ms();
    let in_flight: Vec<String> =
        rows.iter().filter_map(|r| if let Fresh::InFlight(d) = r { Some(d.id.clone()) } else { None }).collect();
    inner.hold(&in_flight);
    let result = async {
        if !in_flight.is_empty() {
            inner.ensure_alive().await?;
        }
        store::insert_fresh(&shared.db, &inner.me, &rows, &kinds, now, inner.disable_after_ms()).await
    }
    .await;
    // Attempts that outlast the batch now report to the recorder (or, if the batch was not
    // written, are dropped: the events come again).
    let _ = done.send(Some(result.is_ok()));
    match result {
        Ok(disabled) => {
            for id in disabled {
                tracing::warn!(endpoint = %id, "webhook endpoint disabled");
            }
            inner.count(rows.iter().filter_map(|r| if let Fresh::Done(o) = r { Some(o) } else { None }));
            let final_outcome = |r: &Fresh| matches!(r, Fresh::Done(o) if !matches!(o.next, Next::RetryAt(_)));
            if !rows.iter().all(final_outcome) {
                // Retries, and deliveries due now (full lanes), are for the claim loop.
                shared.wake.notify_one();
            }
            Ok(rows.len())
        }
        Err(e) => {
            inner.unhold(&in_flight);
            Err(e)
        }
    }
}

/// Intake's handle on the engine: all intake may do is hand over a batch of events (their
/// first attempts go out and their deliveries are written) and say whether events come in.
#[derive(Clone)]
pub struct IntakeHandle(Arc<Engine>);

impl IntakeHandle {
    pub(crate) fn new(engine: Arc<Engine>) -> IntakeHandle {
        IntakeHandle(engine)
    }

    /// `first_attempts` of this batch: returns once its deliveries are written.
    pub async fn first_attempts(&self, events: &[Incoming]) -> anyhow::Result<usize> {
        first_attempts(&self.0, events).await
    }

    /// Whether intake is consuming events (health's `coursewire.broker`).
    pub fn consuming(&self, consuming: bool) {
        self.0.shared.consuming.send_replace(consuming);
    }
}
