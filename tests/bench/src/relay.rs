//! The outbox relay on Postgres + RabbitMQ: events/s published with confirms vs raw lapin
//! publishing the same bodies with the same batching (no database), and the lag between an
//! event's commit and its arrival at a consumer of the dispatcher queue at a fixed rate.
use std::sync::Arc;
use std::time::{Duration, Instant};

use coursewire_api::clock::{Clock, SystemClock};
use coursewire_api::events::amqp::AmqpBus;
use coursewire_api::events::relay::{Hub, Relay};
use coursewire_core::events::topology::Topology;
use coursewire_core::store::Db;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use serde_json::json;

use crate::report;

const BACKLOG: i64 = 20_000;
const RATE_PER_S: i64 = 1000;

pub async fn run() -> anyhow::Result<()> {
    let scratch = crate::scratch::Scratch::create("relay").await?;
    let result = measure(&scratch.url, &scratch.topology).await;
    scratch.remove().await;
    result
}

async fn insert(db: &Db, from: i64, count: i64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO events (id, org_id, type, resource_id, sequence, created_at, body, txid) \
         SELECT 'evt_' || lpad(n::text, 26, '0'), 'bench', 'enrollment.created', 'enr_' || lpad(n::text, 26, '0'), 1, $3, $4, \
           pg_current_xact_id()::text::bigint \
         FROM generate_series($1, $2) AS n",
    )
    .bind(from)
    .bind(from + count - 1)
    .bind(SystemClock.now_ms())
    .bind(crate::enroll::sample_body())
    .execute(db.pool())
    .await?;
    // What an API replica's commit sends with its events.
    sqlx::query("SELECT pg_notify($1, '')").bind(coursewire_core::store::OUTBOX_CHANNEL).execute(db.pool()).await?;
    Ok(())
}

async fn unpublished(db: &Db) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM events \
         WHERE (txid, id) > (SELECT published_txid, published_id FROM relay_cursor WHERE id = 1)",
    )
    .fetch_one(db.pool())
    .await?)
}

async fn measure(url: &str, topology: &Topology) -> anyhow::Result<()> {
    let db = Db::connect(url).await?;
    // Baseline: the same bodies through lapin, batches of 500 with confirms, no database.
    let connection = topology.connect().await?;
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = crate::enroll::sample_body();
    let start = Instant::now();
    for _ in 0..BACKLOG / 500 {
        let mut confirms = Vec::new();
        for _ in 0..500 {
            let props = BasicProperties::default().with_content_type("application/json".into()).with_delivery_mode(2);
            confirms.push(
                channel
                    .basic_publish(
                        topology.exchange.as_str().into(),
                        "enrollment.created".into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        props,
                    )
                    .await?,
            );
        }
        futures::future::try_join_all(confirms).await?;
    }
    let baseline = BACKLOG as f64 / start.elapsed().as_secs_f64();
    let _ = connection.close(0, "done".into()).await;

    // Ours: a backlog in the outbox, drained by the relay.
    insert(&db, 1, BACKLOG).await?;
    let hub = Arc::new(Hub::default());
    let relay = Relay { db: db.clone(), bus: AmqpBus::start(topology.clone()), hub, clock: Arc::new(SystemClock) };
    let start = Instant::now();
    let task = tokio::spawn(relay.run(std::future::pending()));
    while unpublished(&db).await? > 0 {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(120), "relay did not drain the backlog in 120 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ours = BACKLOG as f64 / start.elapsed().as_secs_f64();

    // Lag at a fixed rate: 10 events every 10 ms for 5 s, from the insert's commit to a
    // consumer of the dispatcher queue (the relay's confirm comes with that delivery).
    let arrivals = consume_arrivals(topology).await?;
    let mut next = BACKLOG + 1;
    let phase = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while phase.elapsed() < Duration::from_secs(5) {
        tick.tick().await;
        insert(&db, next, RATE_PER_S / 100).await?;
        next += RATE_PER_S / 100;
    }
    while unpublished(&db).await? > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let created: std::collections::HashMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("SELECT id, created_at FROM events WHERE id > $1")
            .bind(format!("evt_{BACKLOG:026}"))
            .fetch_all(db.pool())
            .await?
            .into_iter()
            .collect();
    let mut lags: Vec<i64> =
        arrivals.lock().unwrap().iter().filter_map(|(id, at)| created.get(id).map(|c| at - c)).collect();
    lags.sort_unstable();
    let pct = |p: f64| lags.get(((lags.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0);
    report(json!({
        "scenario": "relay",
        "published_per_s": ours.round(), "target_per_s": 5000,
        "baseline_lapin_confirmed_per_s": baseline.round(),
        "ratio": (ours / baseline * 1000.0).round() / 1000.0,
        "backlog": BACKLOG,
        "lag_at_fixed_rate": {"events_per_s": RATE_PER_S, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": lags.last().copied().unwrap_or(0)},
    }));
    Ok(())
}

pub async fn cleanup(t: &Topology) {
    if let Ok(connection) = t.connect().await
        && let Ok(channel) = connection.create_channel().await
    {
        let _ = t.delete(&channel).await;
        let _ = connection.close(0, "done".into()).await;
    }
}

/// Arrival times (epoch ms) of the queue's messages by id; the queue is drained as it fills
/// (the backlog phase's messages were purged before).
async fn consume_arrivals(t: &Topology) -> anyhow::Result<Arc<std::sync::Mutex<Vec<(String, i64)>>>> {
    use futures::StreamExt;
    let connection = t.connect().await?;
    let channel = connection.create_channel().await?;
    channel.queue_purge(t.queue.as_str().into(), Default::default()).await?;
    let mut consumer = channel
        .basic_consume(
            t.queue.as_str().into(),
            "bench".into(),
            lapin::options::BasicConsumeOptions { no_ack: true, ..Default::default() },
            Default::default(),
        )
        .await?;
    let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = arrivals.clone();
    tokio::spawn(async move {
        let _connection = connection;
        while let Some(Ok(d)) = consumer.next().await {
            let id = d.properties.message_id().as_ref().map(|s| s.to_string()).unwrap_or_default();
            sink.lock().unwrap().push((id, SystemClock.now_ms()));
        }
    });
    Ok(arrivals)
}
