//! Authenticated Ping through the full server (auth layer, key cache) vs a bare tonic server.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use coursewire_core::store::Db;
use coursewire_proto::v1::account_service_client::AccountServiceClient;
use coursewire_proto::v1::account_service_server::{AccountService, AccountServiceServer};
use coursewire_proto::v1::{
    ConsoleLink, CreateConsoleLinkRequest, GetUsageRequest, ListActivityRequest, ListActivityResponse, PingRequest,
    Usage, WhoAmIRequest, WhoAmIResponse,
};
use serde_json::json;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

use crate::machine::round3;
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
    async fn create_console_link(&self, _: Request<CreateConsoleLinkRequest>) -> Result<Response<ConsoleLink>, Status> {
        Err(Status::unimplemented("the baseline server mints no links"))
    }
    async fn list_activity(&self, _: Request<ListActivityRequest>) -> Result<Response<ListActivityResponse>, Status> {
        Err(Status::unimplemented("the baseline server keeps no activity"))
    }
    async fn get_usage(&self, _: Request<GetUsageRequest>) -> Result<Response<Usage>, Status> {
        Err(Status::unimplemented("the baseline server counts no calls"))
    }
}

/// Calls per second over `PHASE` from `channels` HTTP/2 connections with `in_flight` calls
/// each, from this process.
async fn drive(
    addr: std::net::SocketAddr,
    key: Option<String>,
    channels: usize,
    in_flight: usize,
) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..channels {
        let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
        for _ in 0..in_flight {
            let mut client = AccountServiceClient::new(channel.clone());
            let (done, key) = (done.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                while start.elapsed() < PHASE {
                    let mut req = Request::new(PingRequest {});
                    if let Some(k) = &key {
                        req.metadata_mut().insert("authorization", format!("Bearer {k}").parse().unwrap());
                    }
                    client.ping(req).await.expect("ping");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    for t in tasks {
        t.await?;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// `GET /v1/ping` over HTTP/1.1 with the key as the Basic user, as curl and BI tools call:
/// `connections` keep-alive connections, one call in flight on each (HTTP/1.1 has no more).
async fn drive_http_json(addr: std::net::SocketAddr, key: String, connections: usize) -> anyhow::Result<f64> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().http1_only().pool_max_idle_per_host(connections).build()?;
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, done, key) = (client.clone(), done.clone(), key.clone());
        let url = format!("http://{addr}/v1/ping");
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < PHASE {
                let response = client.get(&url).basic_auth(&key, Some("")).send().await.expect("ping");
                assert!(response.status().is_success(), "{response:?}");
                response.bytes().await.expect("body");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// The independent load client (`coursewire-bench ping-load ADDR KEY|- CHANNELS IN_FLIGHT
/// [http-json]`): its own process, so its CPU is apart from the servers' and measured.
/// Prints calls/s and its CPU share of the phase. With `http-json`, it makes CHANNELS x
/// IN_FLIGHT HTTP/1.1 connections instead.
pub async fn load_client(args: &[String]) -> anyhow::Result<()> {
    let (args, http_json) = match args {
        [rest @ .., last] if last == "http-json" => (rest, true),
        _ => (args, false),
    };
    let [addr, key, channels, in_flight] = args else { anyhow::bail!("ping-load ADDR KEY|- CHANNELS IN_FLIGHT") };
    let key = (key != "-").then(|| key.clone());
    let before = crate::machine::cpu_seconds(std::process::id());
    let started = Instant::now();
    let (addr, channels, in_flight) = (addr.parse()?, channels.parse::<usize>()?, in_flight.parse::<usize>()?);
    let rate = if http_json {
        drive_http_json(addr, key.ok_or_else(|| anyhow::anyhow!("http-json needs a key"))?, channels * in_flight)
            .await?
    } else {
        drive(addr, key, channels, in_flight).await?
    };
    let cpu = crate::machine::cpu_seconds(std::process::id()) - before;
    println!("{}", json!({"calls_per_s": rate, "client_cores": cpu / started.elapsed().as_secs_f64()}));
    Ok(())
}

/// Runs the load client against `addr` as a separate process; (calls/s, its cores used).
async fn drive_apart(
    addr: std::net::SocketAddr,
    key: Option<&str>,
    shape: (usize, usize),
) -> anyhow::Result<(f64, f64)> {
    drive_apart_with(addr, key, shape, &[]).await
}

async fn drive_apart_with(
    addr: std::net::SocketAddr,
    key: Option<&str>,
    shape: (usize, usize),
    extra: &[&str],
) -> anyhow::Result<(f64, f64)> {
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .args(["ping-load", &addr.to_string(), key.unwrap_or("-"), &shape.0.to_string(), &shape.1.to_string()])
        .args(extra)
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "load client: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok((v["calls_per_s"].as_f64().unwrap_or(0.0), v["client_cores"].as_f64().unwrap_or(0.0)))
}

/// The bare server answering with the headers each Coursewire response carries: a request
/// id (new on every call, so HPACK cannot index it) and the three rate limit headers (the
/// remaining count changes on every call). With it, what the wire costs the client is in
/// the baseline, and the ratio shows what the layers cost the server.
fn wire_headers(mut response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let headers = response.headers_mut();
    headers.insert("x-request-id", format!("req_{:016x}{n:08x}", 0x5eed_u64).parse().unwrap());
    headers.insert("x-ratelimit-limit", 100_000_000.into());
    headers.insert("x-ratelimit-remaining", (100_000_000 - n).into());
    headers.insert("x-ratelimit-reset", 60.into());
    response
}

/// A bare tonic server on a free port: the service alone, or with `wire_headers`.
async fn bare_server(with_headers: bool) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let incoming = TcpListenerStream::new(listener);
    let service = AccountServiceServer::new(Bare);
    if with_headers {
        let layer = tower::ServiceBuilder::new().map_response(wire_headers);
        tokio::spawn(Server::builder().layer(layer).add_service(service).serve_with_incoming(incoming));
    } else {
        tokio::spawn(Server::builder().add_service(service).serve_with_incoming(incoming));
    }
    Ok(addr)
}

pub async fn run() -> anyhow::Result<()> {
    let bare_addr = bare_server(false).await?;
    let headers_addr = bare_server(true).await?;

    let dir = tempfile::tempdir()?;
    let db = Db::connect(&format!("sqlite:{}", dir.path().join("bench.db").display())).await?;
    let key = crate::bench_org(&db).await?;
    let app = crate::start_server(db).await?;
    let addr = app.addr();

    // Warm up both, then measure baseline, ours, baseline again (drift shows as a gap).
    drive(bare_addr, None, 1, CONCURRENCY).await?;
    drive(addr, Some(key.clone()), 1, CONCURRENCY).await?;
    let base1 = drive(bare_addr, None, 1, CONCURRENCY).await?;
    let ours = drive(addr, Some(key.clone()), 1, CONCURRENCY).await?;
    let base2 = drive(bare_addr, None, 1, CONCURRENCY).await?;
    let baseline = (base1 + base2) / 2.0;
    report(json!({
        "scenario": "ping",
        "client": "in process, 1 connection x 32 in flight",
        "coursewire_calls_per_s": ours.round(),
        "bare_tonic_calls_per_s": baseline.round(),
        "baseline_runs": [base1.round(), base2.round()],
        "ratio": (ours / baseline * 1000.0).round() / 1000.0,
        "target_ratio": 0.9,
        "seconds_per_phase": PHASE.as_secs(),
    }));

    // Issue #13's shape: an independent client process, 2 connections x 64 in flight. The
    // client sends the key to every server, so only the responses differ.
    let shape = (2, 64);
    let (base1, client_bare1) = drive_apart(bare_addr, Some(&key), shape).await?;
    let (wire1, client_wire1) = drive_apart(headers_addr, Some(&key), shape).await?;
    let (ours, client_ours) = drive_apart(addr, Some(&key), shape).await?;
    let (wire2, client_wire2) = drive_apart(headers_addr, Some(&key), shape).await?;
    let (base2, client_bare2) = drive_apart(bare_addr, Some(&key), shape).await?;
    let (baseline, wire) = ((base1 + base2) / 2.0, (wire1 + wire2) / 2.0);
    let ratio = |a: f64, b: f64| (a / b * 1000.0).round() / 1000.0;
    report(json!({
        "scenario": "ping",
        "client": "separate process, 2 connections x 64 in flight",
        "coursewire_calls_per_s": ours.round(),
        "bare_tonic_calls_per_s": baseline.round(),
        "baseline_runs": [base1.round(), base2.round()],
        "bare_with_the_same_response_headers_calls_per_s": wire.round(),
        "ratio": ratio(ours, baseline),
        "ratio_to_bare_with_headers": ratio(ours, wire),
        "target_ratio": 0.9,
        "client_cores": {
            "bare": [round3(client_bare1), round3(client_bare2)],
            "bare_with_headers": [round3(client_wire1), round3(client_wire2)],
            "coursewire": round3(client_ours),
        },
        "seconds_per_phase": PHASE.as_secs(),
    }));

    // HTTP/JSON (#14): the same server's Ping as curl calls it, against its gRPC Ping in the
    // same invocation, from the separate client: 64 connections with one call in flight on
    // each, HTTP/1.1 for JSON and HTTP/2 for gRPC.
    let (grpc1, client_grpc1) = drive_apart(addr, Some(&key), (64, 1)).await?;
    let (json, client_json) = drive_apart_with(addr, Some(&key), (64, 1), &["http-json"]).await?;
    let (grpc2, client_grpc2) = drive_apart(addr, Some(&key), (64, 1)).await?;
    let grpc = (grpc1 + grpc2) / 2.0;
    report(json!({
        "scenario": "ping",
        "client": "separate process, 64 connections x 1 in flight: HTTP/1.1 GET /v1/ping (Basic) vs gRPC Ping",
        "http_json_calls_per_s": json.round(),
        "grpc_calls_per_s": grpc.round(),
        "grpc_runs": [grpc1.round(), grpc2.round()],
        "ratio_http_json_to_grpc": ratio(json, grpc),
        "client_cores": {"grpc": [round3(client_grpc1), round3(client_grpc2)], "http_json": round3(client_json)},
        "seconds_per_phase": PHASE.as_secs(),
    }));
    Ok(())
}
