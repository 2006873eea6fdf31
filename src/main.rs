//! The `coursewire` command: parses the CLI (ARCHITECTURE §2) and starts the chosen role.
//! No business logic lives here.
use clap::Parser;
use coursewire::cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    coursewire_api::config::init_logging(&cli.common.log_format);
    match cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
