//! End to end through real processes: `coursewire api` and `coursewire-dispatcher` on
//! Postgres + RabbitMQ. CreateEnrollment returns (its commit) → the signed POST arrives at a
//! fast local receiver: p50/p99 at fixed rates, events/s flat out, and both processes' RSS.
//! Baseline: the same receiver's latency for a bare POST at the same rate.
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coursewire_proto::v1::enrollment_service_client::EnrollmentServiceClient;
use coursewire_proto::v1::webhook_service_client::WebhookServiceClient;
use coursewire_proto::v1::*;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::Channel;

use crate::enroll::authed;

use crate::receiver::{Receiver, percentile};
use crate::report;
use crate::rss::rss_kib;

const PHASE: Duration = Duration::from_secs(8);

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

async fn measure(scratch: &crate::scratch::Scratch) -> anyhow::Result<()> {
    let (url, t) = (&scratch.url, &scratch.topology);
    let coursewire = bin("coursewire")?;
    let db = coursewire_api::store::Db::connect(url).await?;
    let key = crate::bench_org(&db).await?;
    let users = 40_000;
    crate::enroll::insert_users(&db, users as i64).await?;
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
    let mut api = tokio::process::Command::new(&coursewire);
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
    let pids = [api.id().unwrap_or_default(), dispatcher.id().unwrap_or_default()];

    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))?.connect().await?;
    let published = crate::enroll::published_course(channel.clone(), &key).await?;
    let receiver = Receiver::start().await?;
    let mut webhooks = WebhookServiceClient::new(channel.clone());
    let w = Webhook { url: receiver.url.clone(), event_types: vec!["enrollment.created".into()], ..Default::default() };
    let create = CreateWebhookRequest { webhook: Some(w), request_id: String::new() };
    webhooks.create_webhook(authed(create, &key)).await?;
    let enrollments = EnrollmentServiceClient::new(channel);
    let peak_rss = Arc::new(Mutex::new([0u64; 2]));
    let sampler = {
        let peak = peak_rss.clone();
        tokio::spawn(async move {
            loop {
                for (i, pid) in pids.iter().enumerate() {
                    let kib = rss_kib(*pid).unwrap_or(0);
                    let mut peak = peak.lock().unwrap();
                    peak[i] = peak[i].max(kib);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut next_user = 1;
    for rate in [600u64, 1000] {
        let baseline = bare_latency(&receiver, rate).await?;
        let committed = Arc::new(Mutex::new(HashMap::new()));
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut calls = tokio::task::JoinSet::new();
        // At most 256 calls outstanding: when the API falls behind, the offered rate drops
        // (reported as `achieved_per_s`) instead of piling up streams.
        let outstanding = Arc::new(tokio::sync::Semaphore::new(256));
        let mut sent = 0;
        while started.elapsed() < PHASE {
            tick.tick().await;
            for _ in 0..rate / 100 {
                let (mut client, committed, key) = (enrollments.clone(), committed.clone(), key.clone());
                let req = CreateEnrollmentRequest {
                    user_id: format!("usr_{next_user:026}"),
                    published_course_id: published.clone(),
                    ..Default::default()
                };
                next_user += 1;
                sent += 1;
                let permit = outstanding.clone().acquire_owned().await?;
                calls.spawn(async move {
                    let e = client.create_enrollment(authed(req, &key)).await.expect("enrolls").into_inner();
                    committed.lock().unwrap().insert(e.id, Instant::now());
                    drop(permit);
                });
            }
        }
        while calls.join_next().await.is_some() {}
        let achieved = sent as f64 / started.elapsed().as_secs_f64();
        receiver.wait_for(sent, Duration::from_secs(60)).await?;
        let committed = committed.lock().unwrap();
        let mut latency: Vec<f64> = receiver
            .take()
            .iter()
            .map(|(id, at)| at.saturating_duration_since(committed[id]).as_secs_f64() * 1000.0)
            .collect();
        let peak = *peak_rss.lock().unwrap();
        report(json!({
            "scenario": "e2e", "events_per_s": rate, "achieved_per_s": achieved.round(), "events": sent,
            "commit_to_post_ms": {"p50": percentile(&mut latency, 0.5), "p99": percentile(&mut latency, 0.99)},
            "baseline_bare_post_ms": baseline, "target_p99_ms_at_600": 15,
            "peak_rss_mib": {"api": peak[0] / 1024, "dispatcher": peak[1] / 1024}, "target_rss_mib": 60,
        }));
    }

    // Flat out: 64 calls in flight for one phase; events/s = deliveries over the time to the last.
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(next_user as u64));
    for _ in 0..64 {
        let (mut client, counter, published, key) =
            (enrollments.clone(), counter.clone(), published.clone(), key.clone());
        calls.spawn(async move {
            let mut n = 0;
            while started.elapsed() < PHASE {
                let user = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                anyhow::ensure!(user <= users, "add users: the phase ran out");
                let req = CreateEnrollmentRequest {
                    user_id: format!("usr_{user:026}"),
                    published_course_id: published.clone(),
                    ..Default::default()
                };
                client.create_enrollment(authed(req, &key)).await?;
                n += 1;
            }
            Ok(n)
        });
    }
    let mut sent = 0;
    while let Some(n) = calls.join_next().await {
        sent += n??;
    }
    let api_done = started.elapsed();
    let last = receiver.wait_for(sent, Duration::from_secs(120)).await?;
    let delivered_per_s = sent as f64 / last.duration_since(started).as_secs_f64();
    sampler.abort();
    let peak = *peak_rss.lock().unwrap();
    report(json!({
        "scenario": "e2e", "flat_out": true, "events": sent,
        "api_enrollments_per_s": (sent as f64 / api_done.as_secs_f64()).round(),
        "delivered_events_per_s": delivered_per_s.round(), "target_events_per_s": 1800,
        "peak_rss_mib": {"api": peak[0] / 1024, "dispatcher": peak[1] / 1024}, "target_rss_mib": 60,
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
    Ok(json!({"p50": percentile(&mut ms, 0.5), "p99": percentile(&mut ms, 0.99)}))
}
