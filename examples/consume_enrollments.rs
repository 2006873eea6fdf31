//! An internal service consuming Coursewire's enrollment events from RabbitMQ.
//!
//! ```sh
//! cargo run --release --example consume_enrollments -- amqp://guest:guest@127.0.0.1:5672/%2f
//! ```
//!
//! It declares its own durable queue, binds it to the `coursewire.events` exchange with
//! `enrollment.*`, and acks each message after handling it. Delivery is at least once, so it
//! drops events it has seen (by `id`) and events older than what it already applied for the
//! same enrollment (by `sequence`).
use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = "reporting.enrollments";
    channel.queue_declare(queue.into(), QueueDeclareOptions::durable(), FieldTable::default()).await?;
    channel
        .queue_bind(
            queue.into(),
            "coursewire.events".into(),
            "enrollment.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel.basic_qos(100, BasicQosOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(queue.into(), "reporting".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    println!("waiting for enrollment events on {queue}");

    let mut seen: HashSet<String> = HashSet::new();
    let mut applied: HashMap<String, i64> = HashMap::new();
    while let Some(delivery) = deliveries.next().await {
        let delivery = delivery?;
        let event: serde_json::Value = serde_json::from_slice(&delivery.data)?;
        let id = event["id"].as_str().unwrap_or_default().to_string();
        let enrollment = event["data"]["id"].as_str().unwrap_or_default().to_string();
        let sequence = event["sequence"].as_i64().unwrap_or(0);
        if !seen.insert(id.clone()) {
            println!("duplicate {id}: skipped");
        } else if applied.get(&enrollment).is_some_and(|&last| last >= sequence) {
            println!("stale {id} (sequence {sequence}): skipped");
        } else {
            applied.insert(enrollment.clone(), sequence);
            println!(
                "{} {enrollment} state={} progress={}",
                event["type"], event["data"]["state"], event["data"]["progress"]
            );
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}
