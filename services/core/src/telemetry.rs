//! Metrics through the `metrics` facade, exposed in the Prometheus text format by
//! `metrics-exporter-prometheus`. One recorder per process (the all-in-one's API and
//! dispatcher share it); each binary describes its own series and serves them with `serve`.
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Upper bounds (seconds) of every histogram's buckets: from a cached gRPC call to a
/// webhook attempt that runs into its timeout.
const BUCKETS: [f64; 15] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0];

/// How often histogram samples are folded into their buckets when nobody scrapes (so
/// that an unscraped process does not accumulate samples).
const UPKEEP: Duration = Duration::from_secs(5);

/// Installs the process's recorder (once; later calls return the same handle). Handles
/// taken before this (`metrics::counter!` and friends) go nowhere, so every process calls
/// it before assembling its parts.
pub fn install() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder =
            PrometheusBuilder::new().set_buckets(&BUCKETS).expect("the bucket list is not empty").build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP);
                    upkeep.run_upkeep();
                }
            })
            .expect("spawn the metrics upkeep thread");
        handle
    })
}

/// Serves `GET /metrics` on `addr`, beside `routes` (the dispatcher's gRPC health), until
/// the task is dropped; `collect` runs before each scrape, for gauges read on demand
/// (connection pools). HTTP/1.1 for scrapers, HTTP/2 for gRPC probes.
pub async fn serve(
    addr: SocketAddr,
    collect: impl Fn() + Clone + Send + Sync + 'static,
    routes: axum::Router,
) -> anyhow::Result<()> {
    let handle = install();
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?;
    tracing::info!(%addr, "metrics at /metrics");
    let app = routes.route(
        "/metrics",
        axum::routing::get(move || async move {
            collect();
            ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render())
        }),
    );
    axum::serve(listener, app).await?;
    Ok(())
}

/// Sets the gauges of a database pool: connections in use and idle, labelled by `pool`.
pub fn record_pool(pool: &'static str, size: u32, idle: usize) {
    let idle = idle as f64;
    metrics::gauge!("coursewire_db_pool_connections", "pool" => pool, "state" => "idle").set(idle);
    metrics::gauge!("coursewire_db_pool_connections", "pool" => pool, "state" => "in_use")
        .set((size as f64 - idle).max(0.0));
}

/// Describes the series `record_pool` sets.
pub fn describe_pool() {
    metrics::describe_gauge!(
        "coursewire_db_pool_connections",
        "Database connections of the process's pool, by state (in_use, idle)."
    );
}
