//! Publishing to RabbitMQ with publisher confirms (the topology is in the shared core).
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::Mutex;

use super::bus::{Bus, Outgoing};
use super::topology::Topology;

/// How long a batch may wait for its confirms before the connection is considered dead.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AmqpBus {
    topology: Topology,
    /// The open connection and confirming channel; `None` until connected or after a failure.
    link: Mutex<Option<(Connection, Channel)>>,
    connected: AtomicBool,
}

impl AmqpBus {
    pub fn new(topology: Topology) -> Self {
        AmqpBus { topology, link: Mutex::new(None), connected: AtomicBool::new(false) }
    }

    async fn open(&self) -> anyhow::Result<(Connection, Channel)> {
        let connection = self.topology.connect().await?;
        let channel = connection.create_channel().await?;
        self.topology.declare(&channel).await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        tracing::info!(exchange = %self.topology.exchange, "connected to RabbitMQ");
        Ok((connection, channel))
    }

    fn properties(event: &Outgoing) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert("organization_id".into(), AMQPValue::LongString(event.org_id.as_str().into()));
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2) // persistent
            .with_message_id(event.id.as_str().into())
            .with_type(event.kind.as_str().into())
            .with_timestamp((event.created_at / 1000) as u64)
            .with_app_id("coursewire".into())
            .with_headers(headers)
    }

    async fn publish_on(&self, channel: &Channel, batch: &[Outgoing]) -> anyhow::Result<()> {
        // Publish the whole batch, then wait for all confirms: one round trip per batch.
        let mut confirms = Vec::with_capacity(batch.len());
        for event in batch {
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
        let all = futures::future::try_join_all(confirms);
        let confirmations =
            tokio::time::timeout(CONFIRM_TIMEOUT, all).await.context("publisher confirms timed out")??;
        if let Some(i) = confirmations.iter().position(|c| !c.is_ack()) {
            anyhow::bail!("RabbitMQ refused event {} (nack)", batch[i].id);
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Bus for AmqpBus {
    async fn publish(&self, batch: &[Outgoing]) -> anyhow::Result<()> {
        let mut link = self.link.lock().await;
        if link.is_none() {
            *link = Some(self.open().await?);
            self.connected.store(true, Ordering::Relaxed);
        }
        let (_, channel) = link.as_ref().expect("connected above");
        let result = self.publish_on(channel, batch).await;
        if result.is_err() {
            // Drop the link; the next attempt reconnects.
            if let Some((connection, _)) = link.take() {
                let _ = tokio::time::timeout(Duration::from_secs(1), connection.close(0, "reconnecting".into())).await;
            }
            self.connected.store(false, Ordering::Relaxed);
        }
        result
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}
