//! The dispatcher on Postgres: deliveries/s and handoff → POST latency to a fast local
//! receiver with 1, 10 and 100 endpoints per event, against a bare reqwest client posting
//! the same bodies to the same receiver at the same concurrency (the HTTP ceiling).
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coursewire_api::clock::{Clock, SystemClock};
use coursewire_api::webhooks::endpoint::{new_secret, secret_context};
use coursewire_core::events::bus::{Bus, InProcessBus, Outgoing};
use coursewire_core::ids::kind;
use coursewire_core::secrets::Keyring;
use coursewire_core::store::Db;
use coursewire_dispatcher::{Config, Dispatcher, Source};
use serde_json::json;

use crate::receiver::{Receiver, percentile};
use crate::report;

/// Deliveries per phase.
const DELIVERIES: usize = 10_000;

pub async fn run() -> anyhow::Result<()> {
    let scratch = crate::scratch::Scratch::create("dispatch").await?;
    let result = measure(&scratch.url).await;
    scratch.remove().await;
    result
}

async fn measure(url: &str) -> anyhow::Result<()> {
    let db = Db::connect(url).await?;
    crate::bench_org(&db).await?;
    let receiver = Receiver::start().await?;
    let config = Config { allow_private_targets: true, ..Config::default() };
    let secrets = Arc::new(Keyring::random());
    let in_flight = config.max_in_flight;
    let baseline = bare_posts(&receiver, in_flight).await?;
    let mut first = 1;
    for endpoints in [1usize, 10, 100] {
        let events = DELIVERIES / endpoints;
        sqlx::query("DELETE FROM webhook_endpoints").execute(db.pool()).await?;
        for i in 0..endpoints {
            create_endpoint(&db, &secrets, &format!("{}?endpoint={i}", receiver.url)).await?;
        }
        let ids = insert_events(&db, first, events).await?;
        first += events;

        let bus = InProcessBus::new();
        let dispatcher = Dispatcher::new(db.clone(), Arc::new(SystemClock), secrets.clone(), config.clone())?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(dispatcher.run(Source::InProcess(bus.subscribe()), async {
            let _ = stopped.await;
        }));
        let started = Instant::now();
        let mut handed = HashMap::new();
        for chunk in ids.chunks(500) {
            let at = Instant::now();
            let batch: Vec<Outgoing> = chunk.iter().map(|id| outgoing(id)).collect();
            bus.send(batch).await?.await?;
            handed.extend(chunk.iter().map(|id| (format!("enr_{}", &id[4..]), at)));
        }
        let last = receiver.wait_for(events * endpoints, Duration::from_secs(180)).await?;
        let per_s = (events * endpoints) as f64 / last.duration_since(started).as_secs_f64();
        let mut latency: Vec<f64> =
            receiver.take().iter().map(|(id, at)| at.duration_since(handed[id]).as_secs_f64() * 1000.0).collect();
        let _ = stop.send(());
        task.await??;
        report(json!({
            "scenario": "dispatch", "endpoints": endpoints, "events": events, "deliveries": events * endpoints,
            "deliveries_per_s": per_s.round(),
            "latency_ms": {"p50": percentile(&mut latency, 0.5), "p99": percentile(&mut latency, 0.99)},
            "baseline_bare_posts_per_s": baseline.round(), "ratio": (per_s / baseline * 1000.0).round() / 1000.0,
            "target_deliveries_per_s": if endpoints == 10 { json!(5500) } else { json!(null) },
        }));
    }
    Ok(())
}

fn outgoing(id: &str) -> Outgoing {
    Outgoing {
        id: id.to_string(),
        kind: "enrollment.created".into(),
        org_id: "bench".into(),
        created_at: 0,
        mark: Default::default(),
        body: Arc::from(""),
        webhooks_version: None,
        traceparent: None,
        resent: false,
    }
}

async fn create_endpoint(db: &Db, secrets: &Keyring, url: &str) -> anyhow::Result<()> {
    let id = coursewire_core::ids::new_id(kind::WEBHOOK);
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, org_id, url, description, event_types, headers, max_rate, max_concurrency, \
         secret, disabled_reason, sequence, event_sequence, created_at, updated_at) \
         VALUES ($1, 'bench', $2, '', '[]', '{}', 0, 0, $3, '', 1, 0, $4, $4)",
    )
    .bind(&id)
    .bind(url)
    .bind(secrets.seal(&new_secret(), &secret_context(&id)))
    .bind(SystemClock.now_ms())
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Events `from..from+count` in the event log (bodies are read from there); their ids.
async fn insert_events(db: &Db, from: usize, count: usize) -> anyhow::Result<Vec<String>> {
    let ids: Vec<String> = (from..from + count).map(|n| format!("evt_{n:026}")).collect();
    for id in &ids {
        let enrollment = format!("enr_{}", &id[4..]);
        let body = json!({"id": id, "type": "enrollment.created", "created_at": "2026-11-24T10:00:00.123Z",
            "organization_id": "bench", "sequence": 1,
            "data": {"id": enrollment, "user_id": "usr_01jd3xkq7w8h2m4n6p8r0t2v4x", "state": "ACTIVE",
                     "progress": {"lessons_completed": 0, "lessons_required": 5, "percent": 0}}});
        sqlx::query(
            "INSERT INTO events (id, org_id, type, resource_id, sequence, created_at, body, txid) \
             VALUES ($1, 'bench', 'enrollment.created', $2, 1, $3, $4, -1)",
        )
        .bind(id)
        .bind(&enrollment)
        .bind(SystemClock.now_ms())
        .bind(body.to_string())
        .execute(db.pool())
        .await?;
    }
    Ok(ids)
}

/// The same kind of bodies posted by a bare reqwest client, `concurrency` at a time.
async fn bare_posts(receiver: &Receiver, concurrency: usize) -> anyhow::Result<f64> {
    use futures::StreamExt;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().no_proxy().build()?;
    let body = json!({"data": {"id": "baseline"}, "padding": "x".repeat(300)}).to_string();
    let started = Instant::now();
    futures::stream::iter(0..DELIVERIES)
        .map(|_| client.post(&receiver.url).header("content-type", "application/json").body(body.clone()).send())
        .buffer_unordered(concurrency)
        .for_each(|r| async move {
            r.expect("the receiver answers");
        })
        .await;
    let per_s = DELIVERIES as f64 / started.elapsed().as_secs_f64();
    receiver.take();
    Ok(per_s)
}
