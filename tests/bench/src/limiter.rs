//! Limiter decisions: in-memory (ns per decision vs a bare mutex-guarded counter) and Redis
//! (decisions/s vs plain INCR round trips from the same process and connection), plus the
//! memory a saturated (organization, class) costs in each backend.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use coursewire_api::layers::limits::backend::{Backend, Subject};
use coursewire_api::layers::limits::{MemoryBackend, RedisBackend};
use coursewire_api::policy::windows::parse_windows;
use serde_json::json;

use crate::{PHASE, report};

const DECISIONS: u64 = 1_000_000;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub async fn run() -> anyhow::Result<()> {
    let windows = parse_windows("600/1m,5000/1h").map_err(anyhow::Error::msg)?;

    // In memory: one subject kept saturated; the clock moves 1 ms per decision so admissions
    // and expiries both happen.
    let memory = MemoryBackend::default();
    let subject = [Subject { key: "org:bench:read".into(), windows: &windows }];
    let start = Instant::now();
    for i in 0..DECISIONS {
        memory.decide(&subject, 1, i as i64).await?;
    }
    let ns_ours = start.elapsed().as_nanos() as f64 / DECISIONS as f64;
    let counters: Mutex<HashMap<String, u64>> = Mutex::new(HashMap::new());
    let start = Instant::now();
    for _ in 0..DECISIONS {
        *counters.lock().unwrap().entry("org:bench:read".to_string()).or_default() += 1;
    }
    let ns_base = start.elapsed().as_nanos() as f64 / DECISIONS as f64;

    // Memory per saturated subject: 1,000 subjects, each with 5,000 admissions 1 ms apart.
    let before = rss_kib();
    let many = MemoryBackend::default();
    for s in 0..1000 {
        let subject = [Subject { key: format!("org:o{s}:read"), windows: &windows }];
        for t in 0..5000 {
            many.decide(&subject, 1, t * 720).await?; // spread over the hour: never over 600/min
        }
    }
    let kib_per_subject = (rss_kib().saturating_sub(before)) as f64 / 1000.0;
    report(json!({
        "scenario": "limiter", "backend": "memory",
        "ns_per_decision": ns_ours.round(), "target_ns": 2000,
        "baseline_mutex_counter_ns": ns_base.round(),
        "ratio_to_baseline": (ns_ours / ns_base * 10.0).round() / 10.0,
        "kib_per_saturated_subject": (kib_per_subject * 10.0).round() / 10.0,
    }));

    let url = std::env::var("COURSEWIRE_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("cwbench:{}:", std::process::id());
    let redis = Arc::new(RedisBackend::connect(&url, &prefix).await?);
    let conn = redis::aio::ConnectionManager::new(redis::Client::open(url.as_str())?).await?;
    let (r, w) = (redis.clone(), windows.clone());
    let ours = drive(move |i| {
        let redis = r.clone();
        let windows = w.clone();
        async move {
            let subject = [Subject { key: format!("org:o{}:read", i % 100), windows: &windows }];
            redis.decide(&subject, 1, i as i64).await.map(|_| ())
        }
    })
    .await?;
    let (c2, p2) = (conn.clone(), prefix.clone());
    let base = drive(move |i| {
        let mut conn = c2.clone();
        let key = format!("{p2}incr:{}", i % 100);
        async move { redis::cmd("INCR").arg(key).query_async::<i64>(&mut conn).await.map(|_| ()).map_err(Into::into) }
    })
    .await?;
    let mut c = conn.clone();
    let saturated = format!("{prefix}org:o0:read");
    let bytes: i64 = redis::cmd("MEMORY").arg("USAGE").arg(&saturated).query_async(&mut c).await.unwrap_or(0);
    let members: i64 = redis::cmd("ZCARD").arg(&saturated).query_async(&mut c).await.unwrap_or(0);
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut c).await.unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut c).await;
    }
    report(json!({
        "scenario": "limiter", "backend": "redis",
        "decisions_per_s": ours.round(), "target_per_s": 20000,
        "baseline_incr_per_s": base.round(),
        "ratio_to_baseline": (ours / base * 1000.0).round() / 1000.0,
        "bytes_per_admitted_unit": if members > 0 { bytes / members } else { 0 },
    }));
    Ok(())
}

/// Operations per second with 64 in flight over `PHASE`.
async fn drive<F, Fut>(op: F) -> anyhow::Result<f64>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (op, done) = (op.clone(), done.clone());
            tokio::spawn(async move {
                while start.elapsed() < PHASE {
                    let i = done.fetch_add(1, Ordering::Relaxed);
                    op(i).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}
