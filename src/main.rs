//! The `coursewire` command: parses the CLI (docs/architecture.md §4) and starts the chosen role.
//! No business logic lives here.
use clap::Parser;
use coursewire::cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let tracing = match coursewire_core::config::init_logging(
        &cli.common.log_format,
        cli.common.otlp_endpoint.as_deref(),
        "coursewire",
    ) {
        Ok(tracing) => tracing,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = cli::run(cli).await;
    tracing.shutdown().await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
