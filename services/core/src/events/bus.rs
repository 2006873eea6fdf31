//! Where the relay hands events: RabbitMQ in production, or an in-process channel that the
//! embedded dispatcher reads. Both sit behind one trait, so both modes share the relay.
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

/// One outbox row on its way out.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub id: String,
    pub kind: String,
    pub org_id: String,
    pub created_at: i64,
    pub position: i64,
    /// The §6 envelope, exactly as stored.
    pub body: Arc<str>,
}

#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Returns once every event of the batch is safely accepted (for RabbitMQ: confirmed).
    async fn publish(&self, batch: &[Outgoing]) -> anyhow::Result<()>;
    /// True while the bus can accept events (for health and metrics).
    fn connected(&self) -> bool;
}

/// A batch handed to the in-process subscriber; it answers on `accepted` once the events
/// are durable on its side (the dispatcher: its deliveries are committed). That answer is
/// the in-process counterpart of a publisher confirm.
pub struct Handoff {
    pub events: Vec<Outgoing>,
    pub accepted: oneshot::Sender<()>,
}

/// The embedded default: events go to one in-process subscriber (the dispatcher).
#[derive(Default)]
pub struct InProcessBus {
    subscriber: Mutex<Option<mpsc::Sender<Handoff>>>,
}

impl InProcessBus {
    pub fn new() -> Arc<Self> {
        Arc::new(InProcessBus::default())
    }

    /// Makes the caller the subscriber (replacing any earlier one). Until someone
    /// subscribes, publishing succeeds at once: the event log keeps every event.
    pub fn subscribe(&self) -> mpsc::Receiver<Handoff> {
        let (tx, rx) = mpsc::channel(4);
        *self.subscriber.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }
}

#[async_trait::async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, batch: &[Outgoing]) -> anyhow::Result<()> {
        let subscriber = self.subscriber.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(subscriber) = subscriber else {
            return Ok(());
        };
        let (accepted, answer) = oneshot::channel();
        subscriber
            .send(Handoff { events: batch.to_vec(), accepted })
            .await
            .map_err(|_| anyhow::anyhow!("the in-process dispatcher stopped"))?;
        answer.await.map_err(|_| anyhow::anyhow!("the in-process dispatcher did not accept the events"))
    }

    fn connected(&self) -> bool {
        true
    }
}
