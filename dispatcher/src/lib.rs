//! The webhook dispatcher. An event walks one way through its modules:
//!
//! ```text
//! bus ─▶ intake ─▶ first_attempts ─▶ engine ─────────▶ sender ─▶ partner
//!                       │            (lanes, claims,   (signing, ssrf)
//!                       │             recorder)  │
//!                       ▼                        ▼
//!                 store (deliveries, attempts, liveness rows)
//! ```
//!
//! Events come in from the bus (`intake`); their first attempts go out at once
//! (`first_attempts`) and are written with their deliveries in one batch; retries, and the
//! deliveries whose endpoint was busy, are claimed from the durable schedule
//! (`store`) by the `engine` when they come due. Every attempt is signed and POSTed
//! (`sender`), and what follows it is decided by the `schedule`. Any number of dispatchers
//! share one database and one queue. This root only wires intake to the engine: intake holds
//! nothing of the engine but `first_attempts::IntakeHandle`.
mod config;
pub mod endpoints;
mod engine;
mod first_attempts;
pub mod intake;
mod lanes;
pub mod metrics;
mod pressure;
pub mod schedule;
mod sender;
pub mod signing;
pub mod ssrf;
mod store;

use std::future::Future;
use std::sync::Arc;

use coursewire_core::clock::SharedClock;
use coursewire_core::events::bus::Handoff;
use coursewire_core::events::topology::Topology;
use coursewire_core::secrets::Keyring;
use coursewire_core::store::Db;
use tokio::sync::{mpsc, watch};

pub use config::{Config, Flags, RetrySchedule};
use engine::Engine;
use first_attempts::IntakeHandle;

/// Where events come from.
pub enum Source {
    /// The all-in-one's relay, in the same process (`InProcessBus::subscribe`, taken before
    /// the relay starts so no event is handed over before anyone listens).
    InProcess(mpsc::Receiver<Handoff>),
    /// The `coursewire.dispatcher` queue.
    Amqp(Topology),
}

pub struct Dispatcher(Arc<Engine>);

impl Dispatcher {
    pub fn new(db: Db, clock: SharedClock, secrets: Arc<Keyring>, config: Config) -> anyhow::Result<Dispatcher> {
        Ok(Dispatcher(Arc::new(Engine::new(db, clock, secrets, config)?)))
    }

    /// Follows whether intake is consuming events (from RabbitMQ, or in-process).
    pub fn consuming(&self) -> watch::Receiver<bool> {
        self.0.shared.consuming.subscribe()
    }

    /// Runs until `shutdown` completes; then takes no new work, gives attempts in flight up to
    /// the webhook timeout to finish and be recorded, and hands back what is left.
    pub async fn run(self, source: Source, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let engine = self.0;
        let (stop_tx, stop) = watch::channel(false);
        let handle = IntakeHandle::new(engine.clone());
        let intake = match source {
            Source::InProcess(handoffs) => tokio::spawn(intake::in_process(handle, handoffs, stop.clone())),
            Source::Amqp(topology) => tokio::spawn(intake::amqp(handle, topology, stop.clone())),
        };
        let tasks = engine.spawn_tasks();
        tokio::select! {
            _ = shutdown => {},
            _ = engine.deliver(stop.clone()) => {},
        }
        let _ = stop_tx.send(true);
        engine.stop_watching(&tasks);
        // Intake finishes the batches it started (their first attempts end or are written as ours).
        let _ = intake.await;
        engine.finish(tasks).await
    }
}
