//! Calls per organization by call class and outcome, hour by hour: the console overview's
//! "calls in the last 24 hours" (`AccountService.GetUsage`). The rate limit layer counts
//! them (it knows the organization and the class); the limiter's backend keeps them for 25
//! hours, in Redis for every replica. Counting must not add a round trip to a call, so
//! counts gather here and go to the backend at most once a second (and before this
//! replica reads them back); a process that stops loses at most that second's counts,
//! which a chart can spare.
use std::collections::HashMap;

use parking_lot::Mutex;

use crate::policy::CallClass;

pub const HOUR_MS: i64 = 3_600_000;
/// How long the backend keeps an hour's counts.
pub const KEEP_MS: i64 = 25 * HOUR_MS;
/// Counts wait at most this long before they go to the backend.
const FLUSH_MS: i64 = 1_000;

/// How a call ended, as the overview groups them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Succeeded,
    /// Refused for the caller's request: invalid, not found, not allowed, a conflict.
    Refused,
    /// Refused by the rate limit.
    Limited,
    /// Failed on our side, or the caller went away.
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [Outcome::Succeeded, Outcome::Refused, Outcome::Limited, Outcome::Failed];

    /// The outcome of a call that ended with gRPC code `code`.
    pub fn of(code: usize) -> Outcome {
        match code {
            0 => Outcome::Succeeded,
            8 => Outcome::Limited,                       // RESOURCE_EXHAUSTED
            1 | 2 | 4 | 13 | 14 | 15 => Outcome::Failed, // CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS
            _ => Outcome::Refused,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Refused => "refused",
            Outcome::Limited => "rate_limited",
            Outcome::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// One counter: an organization's calls of a class with an outcome in one hour.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Counter {
    pub org: String,
    /// Hours since the Unix epoch.
    pub hour: i64,
    pub class: CallClass,
    pub outcome: Outcome,
}

impl Counter {
    /// The name of its class and outcome together (`read:succeeded`), as backends store it.
    pub fn field(&self) -> String {
        format!("{}:{}", self.class.as_str(), self.outcome.as_str())
    }
}

/// The class and outcome named by `Counter::field`.
pub fn parse_field(field: &str) -> Option<(CallClass, Outcome)> {
    let (class, outcome) = field.split_once(':')?;
    let class = [CallClass::Read, CallClass::Modify, CallClass::Remove].into_iter().find(|c| c.as_str() == class)?;
    Some((class, Outcome::parse(outcome)?))
}

/// The hours whose counts make up "the last 24 hours" at `now`: this one and the 23 before.
pub fn last_day(now: i64) -> std::ops::RangeInclusive<i64> {
    let hour = now.div_euclid(HOUR_MS);
    hour - 23..=hour
}

/// Counts not yet added to the backend.
#[derive(Default)]
pub struct Pending {
    state: Mutex<PendingState>,
}

#[derive(Default)]
struct PendingState {
    counts: HashMap<Counter, u64>,
    /// When the oldest pending count was made.
    since: i64,
    /// Whether a flush is already on its way (it takes whatever is pending when it runs).
    scheduled: bool,
}

impl Pending {
    /// Counts one call; true when the oldest pending count has waited long enough and no
    /// flush is on its way: the caller should start one.
    pub fn count(&self, counter: Counter, now: i64) -> bool {
        let mut s = self.state.lock();
        if s.counts.is_empty() {
            s.since = now;
        }
        *s.counts.entry(counter).or_default() += 1;
        let due = !s.scheduled && now - s.since >= FLUSH_MS;
        s.scheduled |= due;
        due
    }

    /// Everything pending, for the backend.
    pub fn take(&self) -> Vec<(Counter, u64)> {
        let mut s = self.state.lock();
        s.scheduled = false;
        s.counts.drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(hour: i64) -> Counter {
        Counter { org: "org_a".into(), hour, class: CallClass::Read, outcome: Outcome::Succeeded }
    }

    #[test]
    fn counts_wait_a_second_then_one_flush_takes_them_together() {
        let p = Pending::default();
        assert!(!p.count(counter(1), 10_000));
        assert!(!p.count(counter(1), 10_999));
        assert!(p.count(counter(1), 11_000), "a second passed");
        assert!(!p.count(counter(2), 11_001), "a flush is on its way already");
        let mut taken = p.take();
        taken.sort_by_key(|t| t.0.hour);
        assert_eq!(taken, vec![(counter(1), 3), (counter(2), 1)]);
        assert!(p.take().is_empty());
        assert!(!p.count(counter(2), 11_002), "the second starts again");
    }

    #[test]
    fn outcomes_and_fields_round_trip() {
        assert_eq!(Outcome::of(0), Outcome::Succeeded);
        assert_eq!(Outcome::of(5), Outcome::Refused);
        assert_eq!(Outcome::of(8), Outcome::Limited);
        assert_eq!(Outcome::of(13), Outcome::Failed);
        let c = Counter { org: "o".into(), hour: 0, class: CallClass::Remove, outcome: Outcome::Limited };
        assert_eq!(parse_field(&c.field()), Some((CallClass::Remove, Outcome::Limited)));
        assert_eq!(parse_field("write:ok"), None);
        assert_eq!(last_day(HOUR_MS * 30 + 5), 7..=30);
    }
}
