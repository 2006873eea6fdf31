//! Intake: events in, deliveries out. Each batch of events becomes one delivery per matching
//! enabled endpoint, written in one transaction; the events are acknowledged only after that
//! commit, and the unique (endpoint, event) key makes a redelivered event harmless.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use coursewire_core::events::bus::Handoff;
use coursewire_core::events::topology::Topology;
use coursewire_core::webhooks::deliveries::{self, NewDelivery};
use coursewire_core::webhooks::endpoints::wants;
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use serde::Deserialize;
use sqlx::Row;
use tokio::sync::{mpsc, watch};

use crate::Shared;

/// Messages taken from RabbitMQ per transaction (and the consumer's prefetch).
const BATCH: usize = 500;

/// The fields of the §6 envelope intake needs.
#[derive(Deserialize, Debug)]
pub struct Incoming {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(rename = "organization_id")]
    pub org: String,
}

/// Creates the deliveries of `events`; returns how many were new.
pub async fn accept(shared: &Shared, events: &[Incoming]) -> anyhow::Result<u64> {
    // Test events are addressed to one endpoint when they are created (SendTestEvent).
    let events: Vec<&Incoming> = events.iter().filter(|e| e.kind != "webhook.test").collect();
    if events.is_empty() {
        return Ok(0);
    }
    let mut orgs: Vec<&str> = events.iter().map(|e| e.org.as_str()).collect();
    orgs.sort_unstable();
    orgs.dedup();
    let sql = format!(
        "SELECT id, org_id, event_types FROM webhook_endpoints WHERE disabled_at IS NULL AND org_id IN ({})",
        (1..=orgs.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for org in &orgs {
        q = q.bind(*org);
    }
    let mut endpoints: HashMap<String, Vec<(String, Vec<String>)>> = HashMap::new();
    for r in q.fetch_all(shared.db.pool()).await? {
        let types: String = r.try_get("event_types")?;
        endpoints
            .entry(r.try_get("org_id")?)
            .or_default()
            .push((r.try_get("id")?, serde_json::from_str(&types).unwrap_or_default()));
    }
    let mut rows = Vec::new();
    for e in &events {
        for (endpoint_id, filters) in endpoints.get(&e.org).into_iter().flatten() {
            if wants(filters, &e.kind) {
                rows.push(NewDelivery { org: &e.org, endpoint_id, event_id: &e.id, event_type: &e.kind, origin: "" });
            }
        }
    }
    if rows.is_empty() {
        return Ok(0);
    }
    let mut tx = shared.db.begin().await.map_err(|e| anyhow::anyhow!(e.message))?;
    let created =
        deliveries::insert(&mut tx, &rows, shared.clock.now_ms()).await.map_err(|e| anyhow::anyhow!(e.message))?;
    tx.commit().await.map_err(|e| anyhow::anyhow!(e.message))?;
    shared.wake.notify_one();
    Ok(created)
}

/// The all-in-one: the relay hands batches over in-process and waits for our answer.
pub async fn in_process(shared: Arc<Shared>, mut handoffs: mpsc::Receiver<Handoff>, mut stop: watch::Receiver<bool>) {
    loop {
        let handoff = tokio::select! {
            h = handoffs.recv() => match h { Some(h) => h, None => return },
            _ = stop.wait_for(|s| *s) => return,
        };
        let events: Vec<Incoming> = handoff
            .events
            .iter()
            .map(|e| Incoming { id: e.id.clone(), kind: e.kind.clone(), org: e.org_id.clone() })
            .collect();
        match accept(&shared, &events).await {
            // Dropping `accepted` unanswered tells the relay to publish the batch again.
            Ok(_) => {
                let _ = handoff.accepted.send(());
            }
            Err(e) => tracing::warn!(error = %e, "could not record deliveries; the relay will hand the events again"),
        }
    }
}

/// Production: consume the dispatcher queue, reconnecting with backoff.
pub async fn amqp(shared: Arc<Shared>, topology: Topology, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let run = consume(&shared, &topology, stop.clone());
        tokio::select! {
            result = run => match result {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "event intake lost RabbitMQ; reconnecting"),
            },
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {},
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn consume(shared: &Shared, topology: &Topology, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let connection = topology.connect().await?;
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    channel.basic_qos(BATCH as u16, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            topology.queue.as_str().into(),
            "coursewire-dispatcher".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %topology.queue, "consuming events");
    loop {
        let first = tokio::select! {
            m = consumer.next() => Some(m),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(first) = first else {
            // Unacknowledged messages go back to the queue when the channel closes.
            let _ = connection.close(200, "shutting down".into()).await;
            return Ok(());
        };
        let Some(first) = first else { anyhow::bail!("the consumer was cancelled") };
        let mut batch = vec![first?];
        while batch.len() < BATCH {
            match consumer.next().now_or_never() {
                Some(Some(m)) => batch.push(m?),
                _ => break,
            }
        }
        let mut events = Vec::with_capacity(batch.len());
        for m in &batch {
            match serde_json::from_slice::<Incoming>(&m.data) {
                Ok(e) => events.push(e),
                Err(e) => {
                    // Not an event of ours: park it in the dead-letter queue.
                    tracing::warn!(error = %e, "dropping a message that is not a Coursewire event to the dead-letter queue");
                    m.acker.reject(BasicRejectOptions { requeue: false }).await?;
                }
            }
        }
        let last = batch.last().map(|m| m.delivery_tag).unwrap_or_default();
        match accept(shared, &events).await {
            Ok(_) => channel.basic_ack(last, BasicAckOptions { multiple: true }).await?,
            Err(e) => {
                tracing::warn!(error = %e, "could not record deliveries; returning the events to the queue");
                channel.basic_nack(last, BasicNackOptions { multiple: true, requeue: true }).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
