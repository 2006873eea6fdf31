//! Where the relay hands events: RabbitMQ in production, or an in-process channel that the
//! embedded dispatcher reads. Both sit behind one trait, so both modes share the relay.
use std::sync::Arc;

use tokio::sync::broadcast;

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

#[tonic::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Returns once every event of the batch is safely accepted (for RabbitMQ: confirmed).
    async fn publish(&self, batch: &[Outgoing]) -> anyhow::Result<()>;
    /// True while the bus can accept events (for health and metrics).
    fn connected(&self) -> bool;
}

/// The embedded default: events go to in-process subscribers (the dispatcher).
pub struct InProcessBus {
    sender: broadcast::Sender<Arc<Outgoing>>,
}

impl InProcessBus {
    pub fn new() -> Arc<Self> {
        Arc::new(InProcessBus { sender: broadcast::channel(4096).0 })
    }

    /// A new subscriber sees events published from now on; if it lags behind the channel,
    /// it is told how many it missed and the event log has them.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Outgoing>> {
        self.sender.subscribe()
    }
}

#[tonic::async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, batch: &[Outgoing]) -> anyhow::Result<()> {
        for event in batch {
            // No subscriber is fine: the event log keeps every event.
            let _ = self.sender.send(Arc::new(event.clone()));
        }
        Ok(())
    }

    fn connected(&self) -> bool {
        true
    }
}
