//! What happens after an attempt: delivered, retried later (the schedule with ±20% jitter,
//! or a later `Retry-After`), or given up. Pure functions, so the rules are tested directly.
use std::time::Duration;

use rand::Rng;

/// The longest `Retry-After` we honour.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// An HTTP status, with the `Retry-After` delay the receiver asked for, if any.
    Status { code: u16, retry_after: Option<Duration> },
    /// No HTTP response: `timeout`, `connect`, `refused_target`, `invalid_target`, `io`.
    Error(&'static str),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    Delivered,
    /// Try again at this time (epoch ms).
    RetryAt(i64),
    /// No more attempts: the schedule is used up (or this was a single manual attempt).
    Failed,
    /// 410 Gone: the receiver asked us to stop; the endpoint gets disabled.
    Gone,
}

/// Decides what follows attempt number `attempt` (1-based) that ended with `response` at `now`.
pub fn next(
    schedule: &[Duration],
    attempt: i64,
    single: bool,
    response: &Response,
    now: i64,
    rng: &mut impl Rng,
) -> Next {
    let retry_after = match response {
        Response::Status { code: 200..=299, .. } => return Next::Delivered,
        Response::Status { code: 410, .. } => return Next::Gone,
        Response::Status { code: 429 | 503, retry_after } => *retry_after,
        _ => None,
    };
    let Some(delay) = schedule.get(attempt as usize - 1).filter(|_| !single) else {
        return Next::Failed;
    };
    let jittered = delay.mul_f64(rng.random_range(0.8..=1.2));
    let wait = match retry_after {
        Some(asked) => jittered.max(asked.min(MAX_RETRY_AFTER)),
        None => jittered,
    };
    Next::RetryAt(now + wait.as_millis() as i64)
}

/// Parses `Retry-After`: delay-seconds or an HTTP date (relative to `now`, epoch ms).
pub fn parse_retry_after(value: &str, now: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let at_ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64;
    Some(Duration::from_millis((at_ms - now).max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Vec<Duration> {
        [100, 200, 400].map(Duration::from_millis).to_vec()
    }

    fn status(code: u16) -> Response {
        Response::Status { code, retry_after: None }
    }

    #[test]
    fn retries_follow_the_schedule_within_jitter_then_fail() {
        let mut rng = rand::rng();
        for (attempt, base) in [(1, 100), (2, 200), (3, 400)] {
            for _ in 0..200 {
                let Next::RetryAt(at) = next(&schedule(), attempt, false, &status(500), 1_000, &mut rng) else {
                    panic!("attempt {attempt} should be retried");
                };
                let delay = at - 1_000;
                assert!(delay >= base * 8 / 10 && delay <= base * 12 / 10, "delay {delay} for base {base}");
            }
        }
        assert_eq!(next(&schedule(), 4, false, &status(500), 0, &mut rng), Next::Failed);
        assert_eq!(next(&schedule(), 1, true, &Response::Error("timeout"), 0, &mut rng), Next::Failed);
    }

    #[test]
    fn outcomes_by_status() {
        let mut rng = rand::rng();
        assert_eq!(next(&schedule(), 1, false, &status(204), 0, &mut rng), Next::Delivered);
        assert_eq!(next(&schedule(), 1, false, &status(410), 0, &mut rng), Next::Gone);
        for code in [301, 400, 404, 500] {
            assert!(matches!(next(&schedule(), 1, false, &status(code), 0, &mut rng), Next::RetryAt(_)));
        }
    }

    #[test]
    fn retry_after_is_honoured_when_later_and_capped() {
        let mut rng = rand::rng();
        let asked = |secs| Response::Status { code: 429, retry_after: Some(Duration::from_secs(secs)) };
        assert_eq!(next(&schedule(), 1, false, &asked(30), 0, &mut rng), Next::RetryAt(30_000));
        assert_eq!(next(&schedule(), 1, false, &asked(86_400), 0, &mut rng), Next::RetryAt(3_600_000));
        // Earlier than the schedule: the schedule wins.
        let Next::RetryAt(at) = next(&[Duration::from_secs(60)], 1, false, &asked(1), 0, &mut rng) else { panic!() };
        assert!(at >= 48_000);
        // Only 429 and 503 carry a meaningful Retry-After.
        let other = Response::Status { code: 500, retry_after: Some(Duration::from_secs(30)) };
        let Next::RetryAt(at) = next(&schedule(), 1, false, &other, 0, &mut rng) else { panic!() };
        assert!(at <= 120);
    }

    #[test]
    fn retry_after_formats() {
        assert_eq!(parse_retry_after(" 120 ", 0), Some(Duration::from_secs(120)));
        let now = 1_445_412_480_000; // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
