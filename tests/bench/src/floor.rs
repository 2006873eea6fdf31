//! The floor: what the durable hops alone cost on this machine, with no Coursewire code. Per
//! event: a Postgres transaction committing the rows CreateEnrollment commits (an enrollment,
//! the user's domain access, and their two event rows), a
//! lapin publish with confirm to a quorum queue and its consumption, then a POST to the same
//! receiver. Nothing is batched, so each event pays each hop itself; the pipeline's figures
//! are read against these, measured in the same run.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection};
use serde_json::json;

use crate::receiver::{Receiver, percentile};

/// p50/p99 (ms) of commit → confirm → consumed → POST received, at `rate` events/s for `phase`.
pub async fn measure(
    url: &str,
    topology: &coursewire_core::events::topology::Topology,
    receiver: &Receiver,
    rate: u64,
    phase: Duration,
) -> anyhow::Result<serde_json::Value> {
    let pool = sqlx::PgPool::connect(url).await?;
    for table in ["floor_enrollments", "floor_domain_users", "floor_events"] {
        let sql = format!("CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY, body TEXT NOT NULL)");
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await?;
    }
    let floor = coursewire_core::events::topology::Topology {
        url: topology.url.clone(),
        exchange: format!("{}.floor", topology.exchange),
        queue: format!("{}.floor", topology.queue),
    };
    let connection: Arc<Connection> = Arc::new(floor.connect().await?);
    let channel = connection.create_channel().await?;
    floor.declare(&channel).await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    // The consumer POSTs each message as it arrives, as a dispatcher would.
    let consumer_channel = connection.create_channel().await?;
    let mut consumer = consumer_channel
        .basic_consume(floor.queue.as_str().into(), "floor".into(), BasicConsumeOptions::default(), Default::default())
        .await?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().no_proxy().build()?;
    let target = receiver.url.clone();
    tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let (http, target) = (http.clone(), target.clone());
            tokio::spawn(async move {
                let _ = http.post(target).body(d.data.clone()).send().await;
                let _ = d.acker.ack(BasicAckOptions::default()).await;
            });
        }
    });
    let body = crate::enroll::sample_body();
    let started_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0u64;
    while started.elapsed() < phase {
        tick.tick().await;
        for _ in 0..rate / 100 {
            n += 1;
            let id = format!("enr_floor{rate}_{n:020}");
            let message = body.replacen("enr_01jd3xkq7w8h2m4n6p8r0t2v4x", &id, 1);
            let (pool, channel, started_at, exchange) =
                (pool.clone(), channel.clone(), started_at.clone(), floor.exchange.clone());
            tasks.spawn(async move {
                started_at.lock().unwrap().insert(id.clone(), Instant::now());
                let mut tx = pool.begin().await?;
                for (table, key) in [
                    ("floor_enrollments", id.clone()),
                    ("floor_domain_users", id.clone()),
                    ("floor_events", format!("{id}.1")),
                    ("floor_events", format!("{id}.2")),
                ] {
                    let sql = format!("INSERT INTO {table} (id, body) VALUES ($1, $2)");
                    sqlx::query(sqlx::AssertSqlSafe(sql)).bind(key).bind(&message).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                let props =
                    BasicProperties::default().with_content_type("application/json".into()).with_delivery_mode(2);
                channel
                    .basic_publish(
                        exchange.as_str().into(),
                        "enrollment.created".into(),
                        BasicPublishOptions::default(),
                        message.as_bytes(),
                        props,
                    )
                    .await?
                    .await?;
                anyhow::Ok(())
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    receiver.wait_for(n as usize, Duration::from_secs(30)).await?;
    let started_at = std::mem::take(&mut *started_at.lock().unwrap());
    let mut ms: Vec<f64> = receiver
        .take()
        .iter()
        .filter_map(|(id, at)| started_at.get(id).map(|s| at.saturating_duration_since(*s).as_secs_f64() * 1000.0))
        .collect();
    crate::relay::cleanup(&floor).await;
    Ok(json!({"p50": percentile(&mut ms, 0.5), "p99": percentile(&mut ms, 0.99)}))
}
