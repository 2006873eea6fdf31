//! Where the relay hands events: RabbitMQ in production, or an in-process channel that the
//! embedded dispatcher reads. Both sit behind one trait, so both modes share the relay.
//!
//! Sending is split from confirming: `send` puts a batch on its way (after every earlier
//! batch) and returns the wait for its confirmation, so the relay can send the next batch
//! while the bus is still confirming this one.
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};

/// One outbox row on its way out.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub id: String,
    pub kind: String,
    pub org_id: String,
    pub created_at: i64,
    /// Its place in the outbox's order.
    pub mark: super::Mark,
    /// The §6 envelope, exactly as stored.
    pub body: Arc<str>,
    /// The organization's `webhooks_version`, read after the event committed: a dispatcher
    /// whose endpoint cache is at least this recent needs not look (`None`: look).
    pub webhooks_version: Option<i64>,
    /// The span of the call that wrote the event (none for events no call caused).
    pub traceparent: Option<crate::trace::TraceContext>,
    /// It may have been sent before: by a relay that led before this one took over, or by
    /// this one before a confirmation failed. Consumers look for work already done for it
    /// (the dispatcher: deliveries already written); for the others they need not.
    pub resent: bool,
}

/// Resolves once every event of a sent batch is durably accepted (RabbitMQ: confirmed).
pub type Confirm = BoxFuture<'static, anyhow::Result<()>>;

#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Sends `batch` after every batch sent before it; the returned future resolves when the
    /// bus has accepted all of it. An error (here or from the future) means "send again".
    async fn send(&self, batch: Vec<Outgoing>) -> anyhow::Result<Confirm>;
    /// Whether the bus can take events now; it changes as connections come and go.
    fn connected(&self) -> watch::Receiver<bool>;
}

/// A batch handed to the in-process subscriber; it answers on `accepted` once the events
/// are durable on its side (the dispatcher: its deliveries are committed). That answer is
/// the in-process counterpart of a publisher confirm.
pub struct Handoff {
    pub events: Vec<Outgoing>,
    pub accepted: oneshot::Sender<()>,
}

/// The embedded default: events go to one in-process subscriber (the dispatcher).
pub struct InProcessBus {
    subscriber: Mutex<Option<mpsc::Sender<Handoff>>>,
    connected: watch::Sender<bool>,
}

impl InProcessBus {
    pub fn new() -> Arc<Self> {
        Arc::new(InProcessBus { subscriber: Mutex::default(), connected: watch::channel(true).0 })
    }

    /// Makes the caller the subscriber (replacing any earlier one). Until someone
    /// subscribes, sending succeeds at once: the event log keeps every event.
    pub fn subscribe(&self) -> mpsc::Receiver<Handoff> {
        // Batches in flight: the relay sends the next while the dispatcher works on one (the
        // relay bounds how many wait for an answer).
        let (tx, rx) = mpsc::channel(64);
        *self.subscriber.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }
}

#[async_trait::async_trait]
impl Bus for InProcessBus {
    async fn send(&self, batch: Vec<Outgoing>) -> anyhow::Result<Confirm> {
        let subscriber = self.subscriber.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(subscriber) = subscriber else {
            return Ok(Box::pin(async { Ok(()) }));
        };
        let (accepted, answer) = oneshot::channel();
        subscriber
            .send(Handoff { events: batch, accepted })
            .await
            .map_err(|_| anyhow::anyhow!("the in-process dispatcher stopped"))?;
        Ok(Box::pin(async move {
            answer.await.map_err(|_| anyhow::anyhow!("the in-process dispatcher did not accept the events"))
        }))
    }

    fn connected(&self) -> watch::Receiver<bool> {
        self.connected.subscribe()
    }
}
