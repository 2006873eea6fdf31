//! The RabbitMQ topology both sides agree on: the durable topic exchange (routing key =
//! event type), the dispatcher's quorum queue bound `#`, and a dead-letter exchange and queue.
use anyhow::Context;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

#[derive(Clone, Debug)]
pub struct Topology {
    pub url: String,
    pub exchange: String,
    /// The dispatcher's queue.
    pub queue: String,
}

impl Topology {
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead-letter", self.exchange)
    }
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead-letter", self.queue)
    }

    /// Declares the exchanges and queues (idempotent) on `channel`.
    pub async fn declare(&self, channel: &Channel) -> anyhow::Result<()> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel
            .exchange_declare(self.exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default())
            .await?;
        channel
            .exchange_declare(
                self.dead_letter_exchange().as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        let mut quorum = FieldTable::default();
        quorum.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        channel
            .queue_declare(self.dead_letter_queue().as_str().into(), QueueDeclareOptions::durable(), quorum.clone())
            .await?;
        channel
            .queue_bind(
                self.dead_letter_queue().as_str().into(),
                self.dead_letter_exchange().as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut args = quorum;
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_letter_exchange().as_str().into()),
        );
        channel.queue_declare(self.queue.as_str().into(), QueueDeclareOptions::durable(), args).await?;
        channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Deletes the queues and exchanges `declare` made (test and benchmark runs clean up with
    /// it, so nothing they published stays in the broker).
    pub async fn delete(&self, channel: &Channel) -> anyhow::Result<()> {
        for queue in [self.queue.clone(), self.dead_letter_queue()] {
            channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
        }
        for exchange in [self.exchange.clone(), self.dead_letter_exchange()] {
            channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await?;
        }
        Ok(())
    }

    pub async fn connect(&self) -> anyhow::Result<Connection> {
        Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .with_context(|| format!("connecting to RabbitMQ at {}", crate::store::redact(&self.url)))
    }
}
