//! Publishing to RabbitMQ with publisher confirms (the topology is in the shared core). The
//! bus connects and declares its topology as soon as it starts, keeps the connection (and
//! reconnects with backoff), and says truthfully whether it is connected.
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use coursewire_core::wire::headers as wire;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::{Mutex, Notify, watch};

use coursewire_core::events::bus::{Bus, Confirm, Outgoing};
use coursewire_core::events::topology::Topology;

/// How long a batch may take to publish, or wait for its confirms, before the connection is
/// considered dead.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AmqpBus {
    topology: Topology,
    /// The open connection and confirming channel; `None` while disconnected.
    link: Mutex<Option<(Connection, Channel)>>,
    connected: watch::Sender<bool>,
    /// Poked when a publish or confirm failed, so the keeper reconnects at once.
    broken: Arc<Notify>,
}

impl AmqpBus {
    /// The bus, connecting (and declaring the topology) in the background right away, so the
    /// exchange exists before the first event and health tells whether RabbitMQ is reachable.
    pub fn start(topology: Topology) -> Arc<AmqpBus> {
        let bus = Arc::new(AmqpBus {
            topology,
            link: Mutex::new(None),
            connected: watch::channel(false).0,
            broken: Arc::new(Notify::new()),
        });
        tokio::spawn(Self::keep(Arc::downgrade(&bus)));
        bus
    }

    /// Keeps a connection open until the bus is dropped.
    async fn keep(bus: std::sync::Weak<AmqpBus>) {
        let mut backoff = Duration::from_millis(200);
        let mut told = false;
        loop {
            let Some(this) = bus.upgrade() else { return };
            let healthy =
                this.link.lock().await.as_ref().is_some_and(|(connection, channel)| {
                    connection.status().connected() && channel.status().connected()
                });
            if healthy {
                let broken = this.broken.clone();
                drop(this);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = broken.notified() => {}
                }
                continue;
            }
            if let Some((connection, _)) = this.link.lock().await.take() {
                let _ = tokio::time::timeout(Duration::from_secs(1), connection.close(0, "reconnecting".into())).await;
            }
            this.connected.send_replace(false);
            match this.open().await {
                Ok(link) => {
                    *this.link.lock().await = Some(link);
                    this.connected.send_replace(true);
                    tracing::info!(exchange = %this.topology.exchange, "connected to RabbitMQ");
                    backoff = Duration::from_millis(200);
                    told = false;
                }
                Err(e) => {
                    if !told {
                        tracing::warn!(error = %e, "cannot reach RabbitMQ; events wait in the outbox, retrying");
                        told = true;
                    }
                    drop(this);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn open(&self) -> anyhow::Result<(Connection, Channel)> {
        let connection = self.topology.connect().await?;
        let channel = connection.create_channel().await?;
        self.topology.declare(&channel).await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok((connection, channel))
    }

    fn properties(event: &Outgoing) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(wire::ORGANIZATION_ID.into(), AMQPValue::LongString(event.org_id.as_str().into()));
        if let Some(version) = event.webhooks_version {
            headers.insert(wire::WEBHOOKS_VERSION.into(), AMQPValue::LongLongInt(version));
        }
        // The message carries the span of the call that wrote the event (W3C Trace Context
        // over AMQP): consumers' work, and each webhook attempt, are its children.
        if let Some(call) = event.traceparent {
            headers.insert(wire::TRACEPARENT.into(), AMQPValue::LongString(call.to_string().into()));
        }
        if event.resent {
            headers.insert(wire::RESENT.into(), AMQPValue::Boolean(true));
        }
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2) // persistent
            .with_message_id(event.id.as_str().into())
            .with_type(event.kind.as_str().into())
            .with_timestamp((event.created_at / 1000) as u64)
            .with_app_id("coursewire".into())
            .with_headers(headers)
    }
}

#[async_trait::async_trait]
impl Bus for AmqpBus {
    async fn send(&self, batch: Vec<Outgoing>) -> anyhow::Result<Confirm> {
        let link = self.link.lock().await;
        let Some((_, channel)) = link.as_ref() else {
            anyhow::bail!("not connected to RabbitMQ");
        };
        // Publish the whole batch, then wait for all its confirms: one round trip per batch,
        // and the next batch may be published while this one is being confirmed.
        // A broker that stops reading (a resource alarm blocks publishers) must not hold the
        // relay, and this lock, forever: the same timeout as the confirms.
        let publish_all = async {
            let mut confirms = Vec::with_capacity(batch.len());
            for event in &batch {
                let confirm = channel
                    .basic_publish(
                        self.topology.exchange.as_str().into(),
                        event.kind.as_str().into(),
                        BasicPublishOptions::default(),
                        event.body.as_bytes(),
                        Self::properties(event),
                    )
                    .await?;
                confirms.push(confirm);
            }
            anyhow::Ok(confirms)
        };
        let published = tokio::time::timeout(CONFIRM_TIMEOUT, publish_all).await.context("publishing timed out");
        let confirms = match published.and_then(|r| r) {
            Ok(confirms) => confirms,
            Err(e) => {
                self.broken.notify_one();
                return Err(e);
            }
        };
        drop(link);
        let broken = self.broken.clone();
        Ok(Box::pin(async move {
            let confirmed = async {
                let all = futures::future::try_join_all(confirms);
                let confirmations =
                    tokio::time::timeout(CONFIRM_TIMEOUT, all).await.context("publisher confirms timed out")??;
                if let Some(i) = confirmations.iter().position(|c| !c.is_ack()) {
                    anyhow::bail!("RabbitMQ refused event {} (nack)", batch[i].id);
                }
                Ok(())
            };
            let result = confirmed.await;
            if result.is_err() {
                broken.notify_one();
            }
            result
        }))
    }

    fn connected(&self) -> watch::Receiver<bool> {
        self.connected.subscribe()
    }
}
