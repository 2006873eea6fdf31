//! In-memory limiter for a single process: per subject, a log of admissions with running
//! totals, so counting a window is two binary searches however full it is.
use std::collections::{HashMap, VecDeque};
use std::ops::RangeInclusive;

use parking_lot::Mutex;

use super::backend::{Backend, Subject};
use super::usage::{Counter, HOUR_MS, KEEP_MS, Outcome};
use crate::policy::CallClass;
use crate::policy::windows::{DAY_MS, Span, Window, WindowState, day_start, longest_sliding};

#[derive(Default)]
struct Log {
    /// (admitted at, running total including this admission), oldest first.
    entries: VecDeque<(i64, u64)>,
    /// Running total of the entries already trimmed away.
    trimmed: u64,
    /// (day start, units admitted that day), for calendar windows.
    day: (i64, u64),
}

impl Log {
    fn total(&self) -> u64 {
        self.entries.back().map_or(self.trimmed, |e| e.1)
    }

    /// Running total before index `i`.
    fn before(&self, i: usize) -> u64 {
        if i == 0 { self.trimmed } else { self.entries[i - 1].1 }
    }

    fn state(&self, w: &Window, n: u64, now: i64) -> WindowState {
        match w.span {
            Span::Day => {
                let count = if self.day.0 == day_start(now) { self.day.1 } else { 0 };
                let next_day = day_start(now) + DAY_MS - now;
                WindowState { count, retry_ms: next_day, reset_ms: if count > 0 { next_day } else { 0 } }
            }
            Span::Sliding(span) => {
                // A unit admitted at t counts while now < t + span.
                let first = self.entries.partition_point(|e| e.0 <= now - span);
                let base = self.before(first);
                let count = self.total() - base;
                let reset_ms = self.entries.get(first).map_or(0, |e| e.0 + span - now);
                let retry_ms = if count + n <= w.limit {
                    0
                } else if n > w.limit {
                    span
                } else {
                    // The unit whose expiry frees enough room for n more.
                    let need = base + (count + n - w.limit);
                    let i = self.entries.partition_point(|e| e.1 < need);
                    self.entries.get(i).map_or(span, |e| e.0 + span - now)
                };
                WindowState { count, retry_ms, reset_ms }
            }
        }
    }

    fn admit(&mut self, n: u64, now: i64, keep_ms: i64) {
        let total = self.total() + n;
        match self.entries.back_mut() {
            Some(last) if last.0 == now => last.1 = total,
            _ => self.entries.push_back((now, total)),
        }
        while self.entries.front().is_some_and(|e| e.0 <= now - keep_ms) {
            self.trimmed = self.entries.pop_front().map_or(self.trimmed, |e| e.1);
        }
        let today = day_start(now);
        self.day = if self.day.0 == today { (today, self.day.1 + n) } else { (today, n) };
    }
}

#[derive(Default)]
pub struct MemoryBackend {
    logs: Mutex<HashMap<String, Log>>,
    calls: Mutex<HashMap<Counter, u64>>,
}

#[tonic::async_trait]
impl Backend for MemoryBackend {
    async fn decide(&self, subjects: &[Subject<'_>], n: u64, now: i64) -> anyhow::Result<Vec<Vec<WindowState>>> {
        let mut logs = self.logs.lock();
        let states: Vec<Vec<WindowState>> = subjects
            .iter()
            .map(|s| {
                let log = logs.get(&s.key);
                s.windows
                    .iter()
                    .map(|w| log.map_or_else(|| Log::default().state(w, n, now), |l| l.state(w, n, now)))
                    .collect()
            })
            .collect();
        let fits =
            subjects.iter().zip(&states).all(|(s, st)| s.windows.iter().zip(st).all(|(w, st)| st.count + n <= w.limit));
        if fits && n > 0 {
            for s in subjects {
                let keep = longest_sliding(s.windows);
                logs.entry(s.key.clone()).or_default().admit(n, now, keep);
            }
        }
        Ok(states)
    }

    async fn add_calls(&self, counts: &[(Counter, u64)], now: i64) -> anyhow::Result<()> {
        let mut calls = self.calls.lock();
        for (counter, n) in counts {
            *calls.entry(counter.clone()).or_default() += n;
        }
        let oldest_kept = (now - KEEP_MS).div_euclid(HOUR_MS);
        calls.retain(|c, _| c.hour >= oldest_kept);
        Ok(())
    }

    async fn calls(&self, org: &str, hours: RangeInclusive<i64>) -> anyhow::Result<Vec<(CallClass, Outcome, u64)>> {
        let calls = self.calls.lock();
        Ok(calls
            .iter()
            .filter(|(c, _)| c.org == org && hours.contains(&c.hour))
            .map(|(c, n)| (c.class, c.outcome, *n))
            .collect())
    }
}
