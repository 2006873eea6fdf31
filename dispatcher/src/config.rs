//! The dispatcher's settings.
use std::time::Duration;

use coursewire_core::config::{parse_duration, parse_durations};

#[derive(Clone, Debug)]
pub struct Config {
    /// Delays before attempts 2, 3, … (`--webhook-retry-schedule`).
    pub retry_schedule: Vec<Duration>,
    /// Per attempt (`--webhook-timeout`).
    pub timeout: Duration,
    pub allow_private_targets: bool,
    /// An endpoint whose attempts all failed this long is disabled.
    pub disable_after: Duration,
    /// In-flight attempts per endpoint unless the endpoint sets its own cap.
    pub endpoint_concurrency: u32,
    /// In-flight attempts of this process.
    pub max_in_flight: usize,
}

impl Config {
    /// From the CLI's text values; errors name the flag.
    pub fn from_flags(schedule: &str, timeout: &str, allow_private: bool) -> anyhow::Result<Config> {
        Ok(Config {
            retry_schedule: parse_durations(schedule).map_err(|e| anyhow::anyhow!("--webhook-retry-schedule: {e}"))?,
            timeout: parse_duration(timeout).map_err(|e| anyhow::anyhow!("--webhook-timeout: {e}"))?,
            allow_private_targets: allow_private,
            ..Config::default()
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            retry_schedule: parse_durations("5s,5m,30m,2h,5h,10h,10h").expect("valid default"),
            timeout: Duration::from_secs(15),
            allow_private_targets: false,
            disable_after: Duration::from_secs(5 * 86_400),
            endpoint_concurrency: 16,
            max_in_flight: 512,
        }
    }
}
