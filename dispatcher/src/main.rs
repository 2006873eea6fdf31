//! `coursewire-dispatcher`: the webhook dispatcher as its own process. It consumes the
//! `coursewire.dispatcher` queue and shares the API's database; run as many as you like.
use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use coursewire_core::clock::SystemClock;
use coursewire_core::config::init_logging;
use coursewire_core::events::topology::Topology;
use coursewire_core::secrets::Keyring;
use coursewire_core::store::Db;
use coursewire_dispatcher::{Dispatcher, Flags, Source};

#[derive(Parser)]
#[command(
    name = "coursewire-dispatcher",
    version,
    about = "Coursewire webhook dispatcher: signed deliveries with retries"
)]
struct Cli {
    /// The API's database (postgres://…).
    #[arg(long, env = "COURSEWIRE_DATABASE_URL", default_value = "sqlite:coursewire-data/coursewire.db")]
    database_url: String,
    #[arg(long, env = "COURSEWIRE_AMQP_URL")]
    amqp_url: Option<String>,
    #[arg(long, env = "COURSEWIRE_AMQP_EXCHANGE", default_value = "coursewire.events")]
    amqp_exchange: String,
    #[arg(long, env = "COURSEWIRE_AMQP_QUEUE", default_value = "coursewire.dispatcher")]
    amqp_queue: String,
    /// Prometheus metrics (`/metrics`) and gRPC health listen address; the API's default is
    /// 9464, so both run on one host with their defaults.
    #[arg(long, env = "COURSEWIRE_METRICS_LISTEN", default_value = "127.0.0.1:9465")]
    metrics_listen: SocketAddr,
    /// The key that seals webhook secrets and header values (base64 of 32 bytes; the API's).
    #[arg(long, env = "COURSEWIRE_SECRETS_KEY", hide_env_values = true)]
    secrets_key: Option<String>,
    /// Earlier keys, still accepted for opening values during a key rotation (comma-separated).
    #[arg(long, env = "COURSEWIRE_PREVIOUS_SECRETS_KEYS", value_delimiter = ',', hide_env_values = true)]
    previous_secrets_keys: Vec<String>,
    #[command(flatten)]
    webhooks: Flags,
    #[arg(long, env = "COURSEWIRE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Export the spans of webhook attempts to this OpenTelemetry collector (OTLP over gRPC,
    /// e.g. `http://127.0.0.1:4317`); without it no spans are made.
    #[arg(long, env = "COURSEWIRE_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let tracing = match init_logging(&cli.log_format, cli.otlp_endpoint.as_deref(), "coursewire-dispatcher") {
        Ok(tracing) => tracing,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = run(cli).await;
    tracing.shutdown().await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let Some(amqp_url) = cli.amqp_url else {
        anyhow::bail!("coursewire-dispatcher needs --amqp-url (COURSEWIRE_AMQP_URL): it consumes events from RabbitMQ");
    };
    let secrets =
        Arc::new(Keyring::for_database(&cli.database_url, cli.secrets_key.as_deref(), &cli.previous_secrets_keys)?);
    let db = Db::connect(&cli.database_url).await?;
    let dispatcher = Dispatcher::new(db.clone(), Arc::new(SystemClock), secrets, cli.webhooks.into())?;
    // The metrics address also answers gRPC health checks (`coursewire health --addr`):
    // the database, and `coursewire.broker` for the event intake.
    let (health, health_service) = tonic_health::server::health_reporter();
    let health_task = tokio::spawn(coursewire_core::health::follow(db.clone(), dispatcher.consuming(), health, &[]));
    let routes = tonic::service::Routes::new(health_service).into_axum_router();
    let collect = move || coursewire_dispatcher::metrics::record_pool(&db);
    let metrics = tokio::spawn(async move {
        if let Err(e) = coursewire_core::telemetry::serve(cli.metrics_listen, collect, routes).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    let topology = Topology { url: amqp_url, exchange: cli.amqp_exchange, queue: cli.amqp_queue };
    tracing::info!("dispatcher started");
    let result = dispatcher.run(Source::Amqp(topology), coursewire_core::shutdown::signal()).await;
    metrics.abort();
    health_task.abort();
    result
}
