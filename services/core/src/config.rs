//! Configuration shared by the binaries: durations like `30d`, and logging.
use std::time::Duration;

/// Parses a duration as `humantime` reads it: `250ms`, `5s`, `5m`, `2h`, `30d` (and `1h 30m`,
/// `2w`, …). A number needs its unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 250ms, 5s, 5m, 2h or 30d ({e})"))
}

/// Parses a comma-separated list of durations (`5s,5m,30m`).
pub fn parse_durations(s: &str) -> Result<Vec<Duration>, String> {
    s.split(',').map(parse_duration).collect()
}

/// Logs to stderr as `text` or `json` (the level comes from RUST_LOG) and, with an OTLP
/// endpoint (`--otlp-endpoint`), exports the spans of calls and webhook attempts to it as
/// `service`. Call from inside the runtime; keep the returned guard until the end.
pub fn init_logging(format: &str, otlp_endpoint: Option<&str>, service: &'static str) -> anyhow::Result<Tracing> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if format == "json" { fmt.json().boxed() } else { fmt.boxed() };
    let (export, provider) = match otlp_endpoint {
        Some(endpoint) => {
            let (layer, provider) = crate::trace::export(endpoint, service)?;
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(fmt.with_filter(filter)).with(export).try_init()?;
    Ok(Tracing { provider })
}

/// Keeps span export running; `shutdown` sends what is still buffered.
#[must_use]
pub struct Tracing {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Tracing {
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // The provider's shutdown blocks until the exporter has sent the last batch.
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = flushed {
                eprintln!("warning: exporting the last spans failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30d").unwrap(), Duration::from_secs(30 * 86400));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5x").is_err());
        assert_eq!(parse_duration(" 5m ").unwrap(), Duration::from_secs(300), "m is minutes");
        assert_eq!(parse_durations("5s,5m").unwrap().len(), 2);
    }
}
