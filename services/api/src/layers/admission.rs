//! Backpressure. While a dispatcher says it is behind for want of capacity of its own
//! (`coursewire_core::webhooks::pressure`; a slow partner never makes it say so), this
//! replica paces the calls that write (call classes `modify` and `remove`), so that
//! deliveries do not fall minutes behind the writes that make them.
//!
//! Every half second of writing, the signal is read once (never while idle). While it holds,
//! the pace is cut to 70 % of what this replica admitted in the last period (at most once a
//! second: a cut takes that long to show in the signal); while it is
//! clear, the pace rises by 10 % a period, and is lifted after 5 s clear (or 5 s without
//! writes). A paced call waits
//! for its turn (first come, first served); one that would wait longer than its deadline
//! (three quarters of `grpc-timeout`) or 5 s is answered UNAVAILABLE, `DELIVERIES_BEHIND`, with the delay to
//! retry after, and nothing is written. Each replica paces itself from the same signal, so
//! any number of replicas together follow the dispatchers' capacity.
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use tokio::time::Instant;
use tonic::Status;

use crate::clock::SharedClock;
use crate::layers::around::{Inner, Next, Response, Rule};
use crate::layers::auth::Caller;
use crate::policy::CallClass;
use coursewire_core::error::{ApiError, Reason};
use coursewire_core::store::Db;

/// How often the signal is read, and the pace adjusted, while calls are written.
const PERIOD: Duration = Duration::from_millis(500);
/// The pace while behind, as a share of the calls admitted in the last period.
const CUT: f64 = 0.7;
/// After a cut, the signal still says "behind" for a while (the dispatcher's backlog
/// drains, and its report lasts a second): no second cut before this.
const CUT_EVERY: Duration = Duration::from_secs(1);
/// The pace's rise per period once the signal is clear (at most to this much above what
/// was admitted: a pace nobody uses says nothing).
const RAISE: f64 = 1.1;
/// Clear this long: no pace at all.
const LIFT_AFTER: Duration = Duration::from_secs(5);
/// The pace never goes below this many calls per second.
const MIN_PACE: f64 = 10.0;
/// The longest a call waits for its turn.
const MAX_WAIT: Duration = Duration::from_secs(5);

pub struct Admission {
    db: Db,
    clock: SharedClock,
    /// Where `State`'s times (ms) count from.
    origin: Instant,
    state: Mutex<State>,
    /// Held while the signal is read: writes that arrive meanwhile wait for the verdict
    /// rather than slip through on the old one.
    reading: tokio::sync::Mutex<()>,
}

/// `d` in milliseconds, the unit of `State`'s times.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// The pace and what adjusts it; times in ms since `Admission::origin`.
#[derive(Debug, Default)]
struct State {
    /// When the signal was last read (or began to be).
    read_at: Option<f64>,
    /// Calls admitted since `read_at`.
    admitted: u64,
    /// Calls per second while paced.
    pace: Option<f64>,
    /// Since when the signal has been clear, while paced.
    clear_since: Option<f64>,
    /// When the pace was last cut.
    cut_at: Option<f64>,
    /// When the next paced call may start.
    next_turn: f64,
}

impl State {
    /// Starts a read of the signal when one is due: returns the calls per second admitted
    /// since the last.
    fn read_due(&mut self, now: f64) -> Option<f64> {
        let period = ms(PERIOD);
        // A first read, or one after a pause in traffic, counts over one period.
        let elapsed = self.read_at.map_or(period, |at| now - at);
        if elapsed < period {
            return None;
        }
        if elapsed >= ms(LIFT_AFTER) {
            // No writes for that long: whatever the pace was for is past; the signal read
            // now starts it again if need be.
            self.pace = None;
            self.clear_since = None;
        }
        self.read_at = Some(now);
        let rate = std::mem::take(&mut self.admitted) as f64 * 1_000.0 / elapsed.min(4.0 * period);
        Some(rate)
    }

    /// Adjusts the pace to the signal read at `now`, given the rate admitted before it.
    fn adjust(&mut self, behind: bool, now: f64, admitted_per_s: f64) {
        if behind {
            self.clear_since = None;
            if self.pace.is_none() || self.cut_at.is_none_or(|at| now - at >= ms(CUT_EVERY)) {
                self.pace = Some((admitted_per_s * CUT).max(MIN_PACE));
                self.cut_at = Some(now);
            }
        } else if let Some(pace) = self.pace {
            let clear_since = *self.clear_since.get_or_insert(now);
            if now - clear_since >= ms(LIFT_AFTER) {
                self.pace = None;
                self.clear_since = None;
            } else {
                // 10 % above what was admitted, if that was less than the pace; never lower.
                self.pace = Some(pace.max(pace.min(admitted_per_s) * RAISE));
            }
        }
    }

    /// Takes the next turn: how long to wait for it (ms), or, if that is longer than
    /// `max_wait`, `Err` with the wait (the turn is not taken).
    fn turn(&mut self, now: f64, max_wait: Duration) -> Result<f64, f64> {
        let wait = match self.pace {
            None => 0.0,
            Some(pace) => {
                let start = self.next_turn.max(now);
                if start - now > ms(max_wait) {
                    return Err(start - now);
                }
                self.next_turn = start + 1_000.0 / pace;
                start - now
            }
        };
        self.admitted += 1;
        Ok(wait)
    }
}

impl Admission {
    pub fn new(db: Db, clock: SharedClock) -> Arc<Admission> {
        Arc::new(Admission {
            db,
            clock,
            origin: Instant::now(),
            state: Mutex::default(),
            reading: tokio::sync::Mutex::new(()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    fn now(&self) -> f64 {
        ms(self.origin.elapsed())
    }

    /// Waits for a write's turn; refuses it if that would take longer than `max_wait`.
    pub async fn admit(&self, max_wait: Duration) -> Result<(), ApiError> {
        let reading = self.reading.lock().await;
        let due = self.state().read_due(self.now());
        if let Some(admitted_per_s) = due {
            let behind = coursewire_core::webhooks::pressure::any_behind(&self.db, self.clock.now_ms())
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot read whether the dispatchers are behind; not pacing on it");
                    false
                });
            let mut state = self.state();
            state.adjust(behind, self.now(), admitted_per_s);
            crate::metrics::admission_pace(state.pace);
        }
        drop(reading);
        let turn = self.state().turn(self.now(), max_wait);
        match turn {
            Ok(wait) if wait > 0.0 => {
                let wait = Duration::from_secs_f64(wait / 1_000.0);
                crate::metrics::admission_waited(wait);
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(wait) => {
                crate::metrics::admission_refused();
                let retry = Duration::from_millis(wait.ceil() as u64);
                let mut e = ApiError::new(
                    Reason::DeliveriesBehind,
                    format!("webhook deliveries are behind and writes are paced; retry in {} ms", retry.as_millis()),
                )
                .help("retry after RetryInfo.retry_delay; writes are paced until deliveries catch up");
                e.details.retry_after = Some(retry);
                Err(e)
            }
        }
    }
}

/// The longest a call may wait: `MAX_WAIT`, or three quarters of its deadline
/// (`grpc-timeout`) if that is less, leaving the rest for the call itself.
fn max_wait(headers: &http::HeaderMap) -> Duration {
    let deadline = headers.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(|v| {
        let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
        let n: u64 = digits.parse().ok()?;
        Some(match unit {
            "H" => Duration::from_secs(n.saturating_mul(3_600)),
            "M" => Duration::from_secs(n.saturating_mul(60)),
            "S" => Duration::from_secs(n),
            "m" => Duration::from_millis(n),
            "u" => Duration::from_micros(n),
            "n" => Duration::from_nanos(n),
            _ => return None,
        })
    });
    deadline.map_or(MAX_WAIT, |d| (d * 3 / 4).min(MAX_WAIT))
}

/// The admission layer's rule (run by `Around`): paces writes, inside the rate limit (a
/// call the limits refuse waits for nothing).
#[derive(Clone)]
pub struct Pace(pub Arc<Admission>);

impl Rule for Pace {
    async fn call<S: Inner<B>, B: Send + 'static>(
        self,
        req: http::Request<B>,
        next: Next<S>,
    ) -> Result<Response, S::Error> {
        let class = req.extensions().get::<Caller>().and_then(|c| c.policy.map(|p| p.class));
        if !matches!(class, Some(CallClass::Modify | CallClass::Remove)) {
            return next.run(req).await;
        }
        match self.0.admit(max_wait(req.headers())).await {
            Ok(()) => next.run(req).await,
            Err(e) => Ok(Status::from(e).into_http()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: f64 = 500.0; // PERIOD in ms

    /// A replica admitting `per_s` calls a second through one period ending at `now`.
    fn period_of(state: &mut State, per_s: u64, now: f64, behind: bool) {
        for _ in 0..per_s / 2 {
            state.turn(now - P, MAX_WAIT).expect("a turn");
        }
        let rate = state.read_due(now).expect("a read is due each period");
        state.adjust(behind, now, rate);
    }

    /// A replica that admitted 1,000 calls a second until the signal said "behind".
    fn paced() -> State {
        let mut state = State::default();
        state.read_due(0.0);
        period_of(&mut state, 1_000, P, true);
        state
    }

    #[test]
    fn unpaced_until_the_dispatchers_are_behind() {
        let mut state = State::default();
        period_of(&mut state, 1_000, P, false);
        assert_eq!(state.pace, None);
        assert_eq!(state.turn(P + 1.0, MAX_WAIT), Ok(0.0), "no wait while unpaced");
        assert_eq!(state.read_due(P + 100.0), None, "read once a period");
    }

    #[test]
    fn behind_cuts_the_pace_and_spaces_turns_first_come_first_served() {
        let mut state = paced();
        assert_eq!(state.pace, Some(1_000.0 * CUT), "70 % of what was admitted");
        // Turns 1/700 s apart, in order, for calls arriving at once.
        let waits: Vec<f64> = (0..3).map(|_| state.turn(1_000.0, MAX_WAIT).unwrap()).collect();
        for (wait, expected) in waits.iter().zip([0.0, 1_000.0 / 700.0, 2_000.0 / 700.0]) {
            assert!((wait - expected).abs() < 1e-9, "{waits:?}");
        }
        // Still behind half a second later: held, as the cut has yet to show.
        period_of(&mut state, 700, 2.0 * P, true);
        assert_eq!(state.pace, Some(1_000.0 * CUT));
        // Still behind a second after the cut: cut again from what was admitted.
        period_of(&mut state, 700, 3.0 * P, true);
        assert_eq!(state.pace, Some(700.0 * CUT));
    }

    #[test]
    fn clear_raises_the_pace_then_lifts_it() {
        let mut state = paced();
        period_of(&mut state, 800, 2.0 * P, false);
        assert_eq!(state.pace, Some(1_000.0 * CUT * RAISE), "raised by 10 %");
        let mut now = 2.0 * P;
        while state.pace.is_some() {
            now += P;
            period_of(&mut state, 1_000, now, false);
            assert!(now <= 2.0 * P + ms(LIFT_AFTER), "lifted after 5 s clear");
        }
        assert_eq!(state.turn(now, MAX_WAIT), Ok(0.0));
    }

    #[test]
    fn a_pause_in_writes_as_long_as_the_lift_starts_the_pace_over() {
        let mut state = paced();
        let later = P + ms(LIFT_AFTER);
        state.read_due(later).expect("a read");
        assert_eq!(state.pace, None);
        assert_eq!(state.turn(later, MAX_WAIT), Ok(0.0));
    }

    #[test]
    fn a_pace_nobody_uses_is_not_raised() {
        let mut state = paced();
        period_of(&mut state, 100, 2.0 * P, false);
        assert_eq!(state.pace, Some(1_000.0 * CUT), "100 a second admitted under a pace of 700: kept");
    }

    #[test]
    fn the_pace_has_a_floor() {
        let mut state = State::default();
        state.read_due(0.0);
        period_of(&mut state, 2, P, true);
        assert_eq!(state.pace, Some(MIN_PACE));
    }

    #[test]
    fn a_turn_beyond_the_longest_wait_is_refused_and_not_taken() {
        let mut state = State { pace: Some(MIN_PACE), ..State::default() };
        let max = Duration::from_millis(250);
        let waits: Vec<_> = (0..4).map(|_| state.turn(0.0, max)).collect();
        assert_eq!(waits[..3], [Ok(0.0), Ok(100.0), Ok(200.0)]);
        assert_eq!(waits[3], Err(300.0), "300 ms > 250 ms: refused");
        assert_eq!(state.turn(0.0, Duration::from_millis(300)), Ok(300.0), "the refused turn was not taken");
    }

    #[test]
    fn the_deadline_shortens_the_wait() {
        let headers = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            h
        };
        assert_eq!(max_wait(&http::HeaderMap::new()), MAX_WAIT);
        assert_eq!(max_wait(&headers("400m")), Duration::from_millis(300));
        assert_eq!(max_wait(&headers("2S")), Duration::from_millis(1_500));
        assert_eq!(max_wait(&headers("1H")), MAX_WAIT);
        assert_eq!(max_wait(&headers("xyz")), MAX_WAIT, "unreadable: the longest wait");
    }
}
