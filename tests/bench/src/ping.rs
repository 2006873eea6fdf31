//! Authenticated Ping through the full server (auth layer, key cache) vs a bare tonic server.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use coursewire_api::store::Db;
use coursewire_proto::v1::account_service_client::AccountServiceClient;
use coursewire_proto::v1::account_service_server::{AccountService, AccountServiceServer};
use coursewire_proto::v1::{PingRequest, WhoAmIRequest, WhoAmIResponse};
use serde_json::json;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

use crate::{CONCURRENCY, PHASE, report};

struct Bare;

#[tonic::async_trait]
impl AccountService for Bare {
    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<pbjson_types::Empty>, Status> {
        Ok(Response::new(pbjson_types::Empty {}))
    }
    async fn who_am_i(&self, _: Request<WhoAmIRequest>) -> Result<Response<WhoAmIResponse>, Status> {
        Ok(Response::new(WhoAmIResponse::default()))
    }
}

/// Calls per second over `PHASE` with `CONCURRENCY` calls in flight on one channel.
async fn drive(addr: std::net::SocketAddr, key: Option<String>) -> anyhow::Result<f64> {
    let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let mut client = AccountServiceClient::new(channel.clone());
            let (done, key) = (done.clone(), key.clone());
            tokio::spawn(async move {
                while start.elapsed() < PHASE {
                    let mut req = Request::new(PingRequest {});
                    if let Some(k) = &key {
                        req.metadata_mut().insert("authorization", format!("Bearer {k}").parse().unwrap());
                    }
                    client.ping(req).await.expect("ping");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

pub async fn run() -> anyhow::Result<()> {
    let bare = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_addr = bare.local_addr()?;
    tokio::spawn(
        Server::builder()
            .add_service(AccountServiceServer::new(Bare))
            .serve_with_incoming(TcpListenerStream::new(bare)),
    );

    let dir = tempfile::tempdir()?;
    let db = Db::connect(&format!("sqlite:{}", dir.path().join("bench.db").display())).await?;
    let key = crate::bench_org(&db).await?;
    let app = crate::start_server(db).await?;
    let addr = app.addr();

    // Warm up both, then measure baseline, ours, baseline again (drift shows as a gap).
    drive(bare_addr, None).await?;
    drive(addr, Some(key.clone())).await?;
    let base1 = drive(bare_addr, None).await?;
    let ours = drive(addr, Some(key)).await?;
    let base2 = drive(bare_addr, None).await?;
    let baseline = (base1 + base2) / 2.0;
    report(json!({
        "scenario": "ping",
        "coursewire_calls_per_s": ours.round(),
        "bare_tonic_calls_per_s": baseline.round(),
        "baseline_runs": [base1.round(), base2.round()],
        "ratio": (ours / baseline * 1000.0).round() / 1000.0,
        "target_ratio": 0.85,
        "concurrency": CONCURRENCY,
        "seconds_per_phase": PHASE.as_secs(),
    }));
    Ok(())
}
