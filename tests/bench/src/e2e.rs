//! End to end through real processes: `coursewire api` and `coursewire-dispatcher` on
//! Postgres + RabbitMQ, a fast local receiver (204 on loopback), and this program as the load
//! client. Every case prints its same-run baseline:
//!
//! - latency at 200/s and 600/s: CreateEnrollment sent → signed POST received, p50/p99, next
//!   to the floor (the durable hops alone, `floor.rs`) and a bare POST;
//! - flat out with 1 endpoint: events delivered/s, against the API's own rate with no endpoint;
//! - flat out with 10 endpoints per event: deliveries/s, latency while the API is driven flat
//!   out, and how long the backlog takes to drain once it stops;
//! - Postgres statements, transactions and rows per delivered event, and the idle cost
//!   (transactions/s and CPU with no traffic at all).
//!
//! The machine's idle CPU is printed before each case, and the client's own CPU with the
//! flat-out cases, so a busy machine or a saturated client shows.
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coursewire_proto::v1::enrollment_service_client::EnrollmentServiceClient;
use coursewire_proto::v1::webhook_service_client::WebhookServiceClient;
use coursewire_proto::v1::*;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::Channel;

use crate::enroll::authed;
use crate::machine::{CpuMeter, PgCounters, idle_share, round3};
use crate::receiver::{Receiver, percentile};
use crate::report;

const PHASE: Duration = Duration::from_secs(8);
/// Svix (svix-webhooks server, release build, Postgres + Redis queue) on this machine kind,
/// median of three alternating rounds (issue #11): the peer the targets are set against.
const SVIX: &str = r#"{"p50_ms_at_600": 1.7, "p99_ms_at_600": 8.0, "p50_ms_at_200": 0.9, "p99_ms_at_200": 3.6,
    "events_per_s_1_endpoint": 914, "deliveries_per_s_10_endpoints": 2612, "statements_per_event": 7.0,
    "idle_transactions_per_s": 0.3}"#;

pub async fn run() -> anyhow::Result<()> {
    let scratch = crate::scratch::Scratch::create("e2e").await?;
    let result = measure(&scratch).await;
    scratch.remove().await;
    result
}

fn bin(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?.with_file_name(name);
    anyhow::ensure!(exe.exists(), "build the binaries first: cargo build --release --workspace ({name} missing)");
    Ok(exe)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts a process and waits for `ready` on its stderr.
async fn spawn(cmd: &mut tokio::process::Command, ready: &str) -> anyhow::Result<tokio::process::Child> {
    let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::null()).kill_on_drop(true).spawn()?;
    let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
    while let Some(line) = lines.next_line().await? {
        if line.contains(ready) {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(child);
        }
    }
    anyhow::bail!("the process exited before printing {ready:?}")
}

/// The processes under test and what the load client needs to drive them.
struct Bench {
    key: String,
    published: String,
    enrollments: EnrollmentServiceClient<Channel>,
    webhooks: WebhookServiceClient<Channel>,
    receiver: Receiver,
    next_user: Arc<AtomicU64>,
    users: u64,
    pids: [u32; 2],
}

/// One create call: its enrollment id, when it was sent, and how long the call took.
type Sent = Vec<(String, Instant, f64)>;

impl Bench {
    fn request(&self) -> anyhow::Result<CreateEnrollmentRequest> {
        let user = self.next_user.fetch_add(1, Relaxed);
        anyhow::ensure!(user <= self.users, "add users: the bench ran out");
        Ok(CreateEnrollmentRequest {
            user_id: format!("usr_{user:026}"),
            published_course_id: self.published.clone(),
            ..Default::default()
        })
    }

    /// `rate` creates per second for `phase` (at most 256 outstanding: when the API falls
    /// behind, the achieved rate drops instead of calls piling up).
    async fn at_rate(&self, rate: u64, phase: Duration) -> anyhow::Result<Sent> {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut calls = tokio::task::JoinSet::new();
        let outstanding = Arc::new(tokio::sync::Semaphore::new(256));
        while started.elapsed() < phase {
            tick.tick().await;
            for _ in 0..rate / 100 {
                let (mut client, sent, key, req) =
                    (self.enrollments.clone(), sent.clone(), self.key.clone(), self.request()?);
                let permit = outstanding.clone().acquire_owned().await?;
                calls.spawn(async move {
                    let at = Instant::now();
                    let e = client.create_enrollment(authed(req, &key)).await?.into_inner();
                    sent.lock().unwrap().push((e.id, at, at.elapsed().as_secs_f64() * 1000.0));
                    drop(permit);
                    anyhow::Ok(())
                });
            }
        }
        while let Some(r) = calls.join_next().await {
            r??;
        }
        Ok(std::mem::take(&mut *sent.lock().unwrap()))
    }

    /// 64 creates in flight for `phase`.
    async fn flat_out(&self, phase: Duration) -> anyhow::Result<Sent> {
        let started = Instant::now();
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let (mut client, key) = (self.enrollments.clone(), self.key.clone());
            let (next_user, users, published) = (self.next_user.clone(), self.users, self.published.clone());
            calls.spawn(async move {
                let mut sent = Vec::new();
                while started.elapsed() < phase {
                    let user = next_user.fetch_add(1, Relaxed);
                    anyhow::ensure!(user <= users, "add users: the bench ran out");
                    let req = CreateEnrollmentRequest {
                        user_id: format!("usr_{user:026}"),
                        published_course_id: published.clone(),
                        ..Default::default()
                    };
                    let at = Instant::now();
                    let e = client.create_enrollment(authed(req, &key)).await?.into_inner();
                    sent.push((e.id, at, at.elapsed().as_secs_f64() * 1000.0));
                }
                Ok(sent)
            });
        }
        let mut sent = Vec::new();
        while let Some(r) = calls.join_next().await {
            sent.extend(r??);
        }
        Ok(sent)
    }

    async fn hook(&mut self, path: &str) -> anyhow::Result<String> {
        let w = Webhook {
            url: format!("{}?{path}", self.receiver.url),
            event_types: vec!["enrollment.created".into()],
            ..Default::default()
        };
        let create = CreateWebhookRequest { webhook: Some(w), request_id: String::new() };
        Ok(self.webhooks.create_webhook(authed(create, &self.key)).await?.into_inner().webhook.unwrap_or_default().id)
    }

    async fn set_enabled(&mut self, id: &str, enabled: bool) -> anyhow::Result<()> {
        if enabled {
            self.webhooks.enable_webhook(authed(EnableWebhookRequest { id: id.into() }, &self.key)).await?;
        } else {
            let req = DisableWebhookRequest { id: id.into(), reason: "bench: API alone".into() };
            self.webhooks.disable_webhook(authed(req, &self.key)).await?;
        }
        Ok(())
    }
}

/// Milliseconds from each create's send to each POST of its event (one per endpoint).
fn latencies(sent: &Sent, arrivals: &[(String, Instant)]) -> Vec<f64> {
    let started: HashMap<&str, Instant> = sent.iter().map(|(id, at, _)| (id.as_str(), *at)).collect();
    arrivals
        .iter()
        .filter_map(|(id, at)| {
            started.get(id.as_str()).map(|s| at.saturating_duration_since(*s).as_secs_f64() * 1000.0)
        })
        .collect()
}

fn p50_p99(values: &mut [f64]) -> serde_json::Value {
    json!({"p50": percentile(values, 0.5), "p99": percentile(values, 0.99)})
}

async fn machine_idle() -> f64 {
    round3(idle_share(Duration::from_secs(1)).await)
}

async fn measure(scratch: &crate::scratch::Scratch) -> anyhow::Result<()> {
    let (url, t) = (&scratch.url, &scratch.topology);
    let admin = sqlx::PgPool::connect(&scratch.admin_url).await?;
    // Statement counts need pg_stat_statements in shared_preload_libraries (docs/benchmarks.md).
    let _ = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").execute(&admin).await;
    let db = coursewire_core::store::Db::connect(url).await?;
    let key = crate::bench_org(&db).await?;
    let users = 150_000u64;
    crate::enroll::insert_users(&db, users as i64).await?;
    // Settle the freshly filled table now, not in the middle of a measured phase. Only that
    // one: an empty table analyzed as empty (this machine's Postgres runs without autovacuum,
    // which would analyze it again as it grows) gets plans that scan it whole, and each API
    // connection keeps them (the target read went from 0.03 to 1 ms per call as enrollments
    // grew). A fresh deployment's tables have never been analyzed, so plans assume a few pages.
    sqlx::query("VACUUM ANALYZE users").execute(db.pool()).await?;
    let secrets_key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; // a bench-only key
    let shared = [
        "--database-url",
        url,
        "--amqp-url",
        &t.url,
        "--amqp-exchange",
        &t.exchange,
        "--amqp-queue",
        &t.queue,
        "--secrets-key",
        secrets_key,
    ];
    let port = free_port();
    let mut api = tokio::process::Command::new(bin("coursewire")?);
    api.arg("api").args(shared).args(["--listen", &format!("127.0.0.1:{port}"), "--rate-limits", "100000000/1m"]);
    api.args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())]);
    let api = spawn(&mut api, "listening").await?;
    let mut dispatcher = tokio::process::Command::new(bin("coursewire-dispatcher")?);
    dispatcher.args(shared).args([
        "--webhook-allow-private-targets",
        "--metrics-listen",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    let dispatcher = spawn(&mut dispatcher, "consuming events").await?;
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))?.connect().await?;
    let mut bench = Bench {
        published: crate::enroll::published_course(channel.clone(), &key).await?,
        key,
        enrollments: EnrollmentServiceClient::new(channel.clone()),
        webhooks: WebhookServiceClient::new(channel),
        receiver: Receiver::start().await?,
        next_user: Arc::new(AtomicU64::new(1)),
        users,
        pids: [api.id().unwrap_or_default(), dispatcher.id().unwrap_or_default()],
    };
    let first = bench.hook("0").await?;
    let svix: serde_json::Value = serde_json::from_str(SVIX)?;
    // Warm up connections and caches.
    bench.at_rate(100, Duration::from_secs(1)).await?;
    bench.receiver.wait_for(100, Duration::from_secs(10)).await?;
    bench.receiver.take();

    for rate in [200u64, 600] {
        let idle = machine_idle().await;
        let mut floor = crate::floor::measure(url, t, &bench.receiver, rate, PHASE).await?;
        let bare = bare_latency(&bench.receiver, rate).await?;
        tokio::time::sleep(Duration::from_secs(11)).await; // statistics flushed
        let before = PgCounters::read(&admin, &scratch.name).await?;
        let sent = bench.at_rate(rate, PHASE).await?;
        bench.receiver.wait_for(sent.len(), Duration::from_secs(60)).await?;
        let mut ms = latencies(&sent, &bench.receiver.take());
        tokio::time::sleep(Duration::from_secs(11)).await;
        let after = PgCounters::read(&admin, &scratch.name).await?;
        let mut call_ms: Vec<f64> = sent.iter().map(|s| s.2).collect();
        let ours = p50_p99(&mut ms);
        let floor_p50 = floor["p50"].as_f64().unwrap_or(f64::NAN);
        let floor_p99 = floor["p99"].as_f64().unwrap_or(f64::NAN);
        report(json!({
            "scenario": "e2e", "case": "latency", "events_per_s": rate, "machine_idle": idle,
            "achieved_per_s": (sent.len() as f64 / PHASE.as_secs_f64()).round(),
            "create_to_post_ms": ours, "floor_ms": floor.take(), "baseline_bare_post_ms": bare,
            "create_call_ms": p50_p99(&mut call_ms),
            "p50_minus_floor_ms": round3(ours["p50"].as_f64().unwrap_or(f64::NAN) - floor_p50),
            "p99_over_floor": round3(ours["p99"].as_f64().unwrap_or(f64::NAN) / floor_p99),
            "peer_svix_ms": {"p50": svix[format!("p50_ms_at_{rate}")], "p99": svix[format!("p99_ms_at_{rate}")]},
            "postgres_per_event": after.per(&before, sent.len() as f64),
        }));
    }

    // Flat out, one endpoint, against the API alone (the endpoint disabled: no sends).
    bench.set_enabled(&first, false).await?;
    let idle = machine_idle().await;
    let sent = bench.flat_out(PHASE).await?;
    let api_alone = sent.len() as f64 / PHASE.as_secs_f64();
    bench.set_enabled(&first, true).await?;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let before = PgCounters::read(&admin, &scratch.name).await?;
    let cpu = CpuMeter::start(bench.pids[0], bench.pids[1]);
    let started = Instant::now();
    let sent = bench.flat_out(PHASE).await?;
    let last = bench.receiver.wait_for(sent.len(), Duration::from_secs(120)).await?;
    let delivered_per_s = sent.len() as f64 / last.duration_since(started).as_secs_f64();
    let cpu = cpu.shares();
    let mut ms = latencies(&sent, &bench.receiver.take());
    tokio::time::sleep(Duration::from_secs(11)).await;
    let after = PgCounters::read(&admin, &scratch.name).await?;
    report(json!({
        "scenario": "e2e", "case": "flat_out_1_endpoint", "machine_idle": idle, "events": sent.len(),
        "delivered_events_per_s": delivered_per_s.round(), "target_events_per_s": 1800,
        "baseline_api_alone_per_s": api_alone.round(), "ratio_to_api_alone": round3(delivered_per_s / api_alone),
        "peer_svix_per_s": svix["events_per_s_1_endpoint"], "create_to_post_ms": p50_p99(&mut ms),
        "cpu_share_of_a_core": cpu,
        "postgres_per_event": after.per(&before, sent.len() as f64),
    }));

    // Flat out, ten endpoints per event.
    for i in 1..10 {
        bench.hook(&i.to_string()).await?;
    }
    let idle = machine_idle().await;
    let cpu = CpuMeter::start(bench.pids[0], bench.pids[1]);
    let started = Instant::now();
    let sent = bench.flat_out(PHASE).await?;
    let api_done = Instant::now();
    let last = bench.receiver.wait_for(sent.len() * 10, Duration::from_secs(300)).await?;
    let cpu = cpu.shares();
    let arrivals = bench.receiver.take();
    let during: Vec<(String, Instant)> = arrivals.iter().filter(|(_, at)| *at <= api_done).cloned().collect();
    let mut ms_during = latencies(&sent, &during);
    report(json!({
        "scenario": "e2e", "case": "flat_out_10_endpoints", "machine_idle": idle, "events": sent.len(),
        "api_creates_per_s": (sent.len() as f64 / PHASE.as_secs_f64()).round(),
        "deliveries_per_s": ((sent.len() * 10) as f64 / last.duration_since(started).as_secs_f64()).round(),
        "target_deliveries_per_s": 5000, "peer_svix_per_s": svix["deliveries_per_s_10_endpoints"],
        "create_to_post_ms_while_driven": p50_p99(&mut ms_during),
        "backlog_drain_s": round3(last.saturating_duration_since(api_done).as_secs_f64()),
        "cpu_share_of_a_core": cpu,
    }));

    // Idle: no traffic at all.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let before = PgCounters::read(&admin, &scratch.name).await?;
    let cpu = CpuMeter::start(bench.pids[0], bench.pids[1]);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let cpu = cpu.shares();
    let after = PgCounters::read(&admin, &scratch.name).await?;
    let seconds = 30.0 + 0.7; // the second reading waits 0.7 s for statistics
    report(json!({
        "scenario": "e2e", "case": "idle", "seconds": 30,
        "postgres_per_s": after.per(&before, seconds), "target_transactions_per_s_per_process": 1,
        "cpu_share_of_a_core": cpu, "target_cpu_share": 0.01,
        "peer_svix_transactions_per_s": svix["idle_transactions_per_s"],
    }));
    drop((api, dispatcher));
    Ok(())
}

/// p50/p99 of a bare POST to the receiver at `rate` per second, for one second.
async fn bare_latency(receiver: &Receiver, rate: u64) -> anyhow::Result<serde_json::Value> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().no_proxy().build()?;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..100 {
        tick.tick().await;
        for _ in 0..rate / 100 {
            let (client, url) = (client.clone(), receiver.url.clone());
            calls.spawn(async move {
                let started = Instant::now();
                client.post(url).body(r#"{"data":{"id":"baseline"}}"#).send().await.map(|_| started.elapsed())
            });
        }
    }
    let mut ms = Vec::new();
    while let Some(r) = calls.join_next().await {
        ms.push(r??.as_secs_f64() * 1000.0);
    }
    receiver.take();
    Ok(p50_p99(&mut ms))
}
