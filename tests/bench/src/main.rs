//! Coursewire benchmarks (docs/benchmarks.md). Each scenario prints one JSON line per figure,
//! with a baseline measured in the same run, so ratios hold across machines:
//!
//! - `ping`: authenticated Ping through the real server vs a bare tonic server with the same
//!   service, driven by the same client.
//! - `enroll`: CreateEnrollment on Postgres vs pgbench running the same inserts in one
//!   transaction, at the same concurrency.
//! - `idle-rss`: resident memory of the all-in-one binary after start-up.
//! - `relay`: outbox → RabbitMQ with confirms vs raw lapin, and commit→confirm lag.
//! - `limiter`: rate limit decisions in memory and on Redis, against bare counters.
//! - `dispatch`: webhook deliveries/s and latency with 1, 10 and 100 endpoints, against a bare
//!   HTTP client posting to the same receiver.
//! - `e2e`: CreateEnrollment commit → signed POST received, through `coursewire api` and
//!   `coursewire-dispatcher` on Postgres + RabbitMQ, at fixed rates and flat out.
//!
//! Everything runs on loopback and stops by itself.
mod dispatch;
mod e2e;
mod enroll;
mod floor;
mod limiter;
mod machine;
mod ping;
mod receiver;
mod relay;
mod rss;
mod scratch;

use std::time::Duration;

/// How long each measured phase runs.
pub const PHASE: Duration = Duration::from_secs(5);
/// Concurrent in-flight calls per client phase.
pub const CONCURRENCY: usize = 32;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    match scenario.as_str() {
        "ping" => ping::run().await,
        "ping-load" => ping::load_client(&std::env::args().skip(2).collect::<Vec<_>>()).await,
        "enroll" => enroll::run().await,
        "idle-rss" => rss::run().await,
        "limiter" => limiter::run().await,
        "relay" => relay::run().await,
        "dispatch" => dispatch::run().await,
        "e2e" => e2e::run().await,
        _ => {
            eprintln!("usage: coursewire-bench ping|enroll|idle-rss|limiter|relay|dispatch|e2e");
            std::process::exit(2);
        }
    }
}

/// Prints one figure as a JSON line.
pub fn report(value: serde_json::Value) {
    println!("{value}");
}

/// Organization `bench` and a key for it (scope `*`), made through the real code path.
pub async fn bench_org(db: &coursewire_core::store::Db) -> anyhow::Result<String> {
    use coursewire_api::clock::{Clock, SystemClock};
    use coursewire_api::layers::auth::{self, NewKey};
    let now = SystemClock.now_ms();
    coursewire_api::organizations::create_org(db, "bench", "Bench", now)
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let new = NewKey {
        org_id: Some("bench".into()),
        label: "bench".into(),
        scopes: vec!["*".into()],
        allowed_cidrs: vec![],
        expires_at: None,
        rate_limit: String::new(),
    };
    Ok(auth::create_key(db, new, now, None).await.map_err(|e| anyhow::anyhow!(e.message))?.1)
}

/// The real server on a free port, built as the binary builds it, with the rate limit layer
/// on but set far above what one phase sends, so every call takes a real decision and none is
/// refused. Serves while the returned application lives.
pub async fn start_server(db: coursewire_core::store::Db) -> anyhow::Result<coursewire::app::Application> {
    use std::sync::Arc;

    use coursewire_api::clock::SystemClock;
    use coursewire_api::layers::limits::{self, OnError};
    let clock = Arc::new(SystemClock);
    coursewire::app::Application::build(coursewire::app::Settings {
        db,
        clock: clock.clone(),
        secrets: Arc::new(coursewire_core::secrets::Keyring::random()),
        limiter: limits::build("100000000/1m", None, OnError::Open, clock).await?,
        listener: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        http_listener: None,
        cors_allowed_origins: Vec::new(),
        trusted_proxies: vec![],
        max_streams_per_org: coursewire_api::streams::DEFAULT_PER_ORG,
        hub: Default::default(),
        bus: None,
        dispatcher: None,
        retention: None,
        console: Default::default(),
    })
    .await
}
