//! The dispatcher's settings, and the flags they come from. The flags (names, environment
//! variables and defaults are a documented contract: docs/operations.md) are declared once,
//! here, and flattened into both command lines: `coursewire-dispatcher` and the all-in-one
//! `coursewire`. Clap parses each value into its type as it reads it, so a bad value fails at
//! start naming its flag, and nothing parses it again.
use std::time::Duration;

use clap::Args;
use coursewire_core::config::{parse_duration, parse_durations};

/// `--webhook-retry-schedule`'s default: delays before attempts 2 to 8.
pub const DEFAULT_RETRY_SCHEDULE: &str = "5s,5m,30m,2h,5h,10h,10h";
/// `--webhook-timeout`'s default.
pub const DEFAULT_TIMEOUT: &str = "15s";
/// `--webhook-disable-after`'s default.
pub const DEFAULT_DISABLE_AFTER: &str = "5d";

/// The delays before attempts 2, 3, …
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule(pub Vec<Duration>);

impl RetrySchedule {
    /// Parses `5s,5m,30m`.
    pub fn parse(text: &str) -> Result<RetrySchedule, String> {
        parse_durations(text).map(RetrySchedule)
    }
}

/// The dispatcher's flags. `global` lets the all-in-one take them after its subcommand
/// (`coursewire run --webhook-timeout 5s`); for the dispatcher's own binary, which has no
/// subcommands, it changes nothing.
#[derive(Args, Clone, Debug)]
pub struct Flags {
    /// Delays between webhook attempts after the first, each with ±20% jitter.
    #[arg(
        long,
        env = "COURSEWIRE_WEBHOOK_RETRY_SCHEDULE",
        default_value = DEFAULT_RETRY_SCHEDULE,
        value_parser = RetrySchedule::parse,
        global = true
    )]
    pub webhook_retry_schedule: RetrySchedule,
    /// One webhook attempt's time limit.
    #[arg(long, env = "COURSEWIRE_WEBHOOK_TIMEOUT", default_value = DEFAULT_TIMEOUT, value_parser = parse_duration, global = true)]
    pub webhook_timeout: Duration,
    /// Allow loopback and private webhook addresses (local development and tests only).
    #[arg(long, env = "COURSEWIRE_WEBHOOK_ALLOW_PRIVATE_TARGETS", default_value_t = false, global = true)]
    pub webhook_allow_private_targets: bool,
    /// Disable a webhook endpoint whose attempts have all failed for this long.
    #[arg(
        long,
        env = "COURSEWIRE_WEBHOOK_DISABLE_AFTER",
        default_value = DEFAULT_DISABLE_AFTER,
        value_parser = parse_duration,
        global = true
    )]
    pub webhook_disable_after: Duration,
}

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

impl From<Flags> for Config {
    fn from(flags: Flags) -> Config {
        Config {
            retry_schedule: flags.webhook_retry_schedule.0,
            timeout: flags.webhook_timeout,
            allow_private_targets: flags.webhook_allow_private_targets,
            disable_after: flags.webhook_disable_after,
            ..Config::default()
        }
    }
}

impl Default for Config {
    /// The flags' defaults.
    fn default() -> Self {
        Config {
            retry_schedule: parse_durations(DEFAULT_RETRY_SCHEDULE).expect("valid default"),
            timeout: parse_duration(DEFAULT_TIMEOUT).expect("valid default"),
            allow_private_targets: false,
            disable_after: parse_duration(DEFAULT_DISABLE_AFTER).expect("valid default"),
            endpoint_concurrency: 16,
            max_in_flight: 512,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        flags: Flags,
    }

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied())).map(|cli| cli.flags.into())
    }

    #[test]
    fn defaults_are_the_config_defaults() {
        let flags = parse(&[]).unwrap();
        let default = Config::default();
        assert_eq!(flags.retry_schedule, default.retry_schedule);
        assert_eq!(flags.retry_schedule.len(), 7);
        assert_eq!(flags.retry_schedule[0], Duration::from_secs(5));
        assert_eq!(flags.timeout, Duration::from_secs(15));
        assert_eq!(flags.disable_after, Duration::from_secs(5 * 86_400));
        assert!(!flags.allow_private_targets);
    }

    #[test]
    fn values_are_parsed_into_their_types() {
        let config = parse(&[
            "--webhook-retry-schedule",
            "1s,250ms",
            "--webhook-timeout",
            "2s",
            "--webhook-allow-private-targets",
            "--webhook-disable-after",
            "1h",
        ])
        .unwrap();
        assert_eq!(config.retry_schedule, [Duration::from_secs(1), Duration::from_millis(250)]);
        assert_eq!(config.timeout, Duration::from_secs(2));
        assert!(config.allow_private_targets);
        assert_eq!(config.disable_after, Duration::from_secs(3600));
    }

    #[test]
    fn a_bad_value_fails_naming_its_flag() {
        for (flag, value) in
            [("--webhook-retry-schedule", "5s,soon"), ("--webhook-timeout", "15"), ("--webhook-disable-after", "x")]
        {
            let e = parse(&[flag, value]).err().unwrap_or_else(|| panic!("{flag} {value} was accepted"));
            assert!(e.to_string().contains(flag), "{flag}: {e}");
        }
    }
}
