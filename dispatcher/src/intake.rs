//! Intake: events in, first attempts out (`first_attempts`). From RabbitMQ, batches are taken as they
//! arrive (up to `BATCH`, never waiting to fill one) and handled a few at a time; each is
//! acknowledged only after its deliveries are written, in order, so an acknowledgement never
//! covers an unwritten batch. In the all-in-one the relay hands batches over in-process and
//! waits for the same answer.
use std::time::Duration;

use coursewire_core::events::bus::Handoff;
use coursewire_core::events::topology::Topology;
use coursewire_core::trace::TraceContext;
use coursewire_core::wire::{Envelope, headers};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use serde::de::IgnoredAny;
use tokio::sync::{mpsc, watch};

use crate::first_attempts::{Incoming, IntakeHandle};

/// Messages taken from RabbitMQ per batch.
const BATCH: usize = 500;
/// Batches being handled at once: a batch waits for its first attempts (up to `FIRST_WAIT`),
/// and others go on meanwhile. As many as there may be unacknowledged messages, so the
/// prefetch is the only bound: with 256, batches waiting on slow attempts stopped intake
/// (and everything queued in RabbitMQ) while the dispatcher had room.
const BATCHES: usize = PREFETCH as usize;
/// Messages RabbitMQ hands us before we acknowledge any.
const PREFETCH: u16 = 8192;

/// The all-in-one: the relay hands batches over in-process and waits for our answer.
pub(crate) async fn in_process(
    engine: IntakeHandle,
    mut handoffs: mpsc::Receiver<Handoff>,
    mut stop: watch::Receiver<bool>,
) {
    engine.consuming(true);
    let mut working = FuturesOrdered::new();
    loop {
        tokio::select! {
            h = handoffs.recv(), if working.len() < BATCHES => {
                let Some(handoff) = h else { break };
                let engine = engine.clone();
                working.push_back(async move {
                    let events: Vec<Incoming> = handoff
                        .events
                        .iter()
                        .map(|e| Incoming {
                            id: e.id.clone(),
                            kind: e.kind.clone(),
                            org: e.org_id.clone(),
                            body: e.body.clone(),
                            trace: e.traceparent,
                            redelivered: e.resent,
                            webhooks_version: e.webhooks_version,
                        })
                        .collect();
                    match engine.first_attempts(&events).await {
                        Ok(_) => {
                            let _ = handoff.accepted.send(());
                        }
                        // Dropping `accepted` unanswered tells the relay to hand the events again.
                        Err(e) => tracing::warn!(error = %e, "could not write deliveries; the relay will hand the events again"),
                    }
                });
            }
            Some(()) = working.next() => {}
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        }
    }
    // Batches already started finish (their attempts end, or are written as ours).
    while working.next().await.is_some() {}
}

/// Production: consume the dispatcher queue, reconnecting with backoff.
pub(crate) async fn amqp(engine: IntakeHandle, topology: Topology, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let consumed = consume(&engine, &topology, stop.clone()).await;
        engine.consuming(false);
        match consumed {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "event intake lost RabbitMQ; reconnecting"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {},
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn consume(engine: &IntakeHandle, topology: &Topology, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let connection = topology.connect().await?;
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    channel.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            topology.queue.as_str().into(),
            "coursewire-dispatcher".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %topology.queue, "consuming events");
    engine.consuming(true);
    // Batches in the order they were taken: (last delivery tag, whether they were written).
    let mut working = FuturesOrdered::new();
    let result = loop {
        tokio::select! {
            first = consumer.next(), if working.len() < BATCHES => {
                let Some(first) = first else { break Err(anyhow::anyhow!("the consumer was cancelled")) };
                let mut batch = vec![first?];
                while batch.len() < BATCH {
                    match consumer.next().now_or_never() {
                        Some(Some(m)) => batch.push(m?),
                        _ => break,
                    }
                }
                let last = batch.last().map(|m| m.delivery_tag).unwrap_or_default();
                let mut events = Vec::with_capacity(batch.len());
                for m in &batch {
                    match serde_json::from_slice::<Envelope<IgnoredAny>>(&m.data) {
                        Ok(e) => events.push(Incoming {
                            id: e.id.into_owned(),
                            kind: e.kind.into_owned(),
                            org: e.organization_id.into_owned(),
                            body: String::from_utf8_lossy(&m.data).into_owned().into(),
                            trace: traceparent(&m.properties),
                            redelivered: m.redelivered || resent(&m.properties),
                            webhooks_version: webhooks_version(&m.properties),
                        }),
                        Err(e) => {
                            // Not an event of ours: park it in the dead-letter queue.
                            tracing::warn!(error = %e, "dropping a message that is not a Coursewire event to the dead-letter queue");
                            m.acker.reject(BasicRejectOptions { requeue: false }).await?;
                        }
                    }
                }
                let engine = engine.clone();
                working.push_back(async move {
                    let written = engine.first_attempts(&events).await;
                    if let Err(e) = &written {
                        tracing::warn!(error = %e, "could not write deliveries; returning the events to the queue");
                    }
                    (last, written.is_ok())
                });
            }
            Some((last, written)) = working.next() => {
                if written {
                    channel.basic_ack(last, BasicAckOptions { multiple: true }).await?;
                } else {
                    channel.basic_nack(last, BasicNackOptions { multiple: true, requeue: true }).await?;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break Ok(()),
        }
    };
    // Finish the batches started, acknowledging those written; the rest go back to the queue
    // when the channel closes.
    while let Some((last, written)) = working.next().await {
        if written {
            channel.basic_ack(last, BasicAckOptions { multiple: true }).await?;
        }
    }
    let _ = connection.close(200, "shutting down".into()).await;
    result
}

/// The publish's span (the relay's `traceparent` header), which attempts continue.
fn traceparent(properties: &lapin::BasicProperties) -> Option<TraceContext> {
    match properties.headers().as_ref()?.inner().get(headers::TRACEPARENT)? {
        lapin::types::AMQPValue::LongString(v) => TraceContext::parse(std::str::from_utf8(v.as_bytes()).ok()?),
        _ => None,
    }
}

/// The relay's `resent` header: the event may have been published before.
fn resent(properties: &lapin::BasicProperties) -> bool {
    let header = properties.headers().as_ref().and_then(|h| h.inner().get(headers::RESENT).cloned());
    matches!(header, Some(lapin::types::AMQPValue::Boolean(true)))
}

/// The `webhooks_version` header the relay puts on each message.
fn webhooks_version(properties: &lapin::BasicProperties) -> Option<i64> {
    match properties.headers().as_ref()?.inner().get(headers::WEBHOOKS_VERSION)? {
        lapin::types::AMQPValue::LongLongInt(v) => Some(*v),
        _ => None,
    }
}
