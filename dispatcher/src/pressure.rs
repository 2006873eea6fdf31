//! Whether this dispatcher is behind for want of capacity of its own, so that the API paces
//! its writes (backpressure) rather than letting deliveries fall minutes behind.
//!
//! "Behind" alone cannot be the signal: a slow partner keeps its own lane's jobs waiting, and
//! slow-endpoint isolation means that must never slow anyone else. So two things must hold
//! over the same half second:
//! - most attempts started waited long in this process first (`LATE`): counted per attempt
//!   started, a slow endpoint weighs as little as it gets through, the others as much as
//!   they send;
//! - this process is short of CPU: a probe sleeping `TICK` again and again wakes late on
//!   average (`STARVED`). Waiting on partners costs no CPU; a runtime or a machine that
//!   cannot keep up makes every wake-up late.
//!
//! While both hold, the liveness row says "behind" a little ahead (`coursewire_core::
//! webhooks::pressure`); once they stop holding, it lapses by itself.
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics;

/// A job that waited this long in this process before its attempt started is late.
const LATE: Duration = Duration::from_millis(100);
/// How often the verdict is made (and, while behind, written).
const PERIOD: Duration = Duration::from_millis(500);
/// How long a "behind" written now lasts: two periods, so one slow write does not gap it.
const BEHIND_FOR: Duration = Duration::from_millis(1_000);
/// The probe's sleep.
const TICK: Duration = Duration::from_millis(10);
/// Mean lateness of the probe's wake-ups from which this process counts as short of CPU.
/// The timer's 1 ms granularity alone makes about 1.1 ms here on an idle machine; it was
/// 2.0-2.6 ms at 600 events/s (keeping up), and 4-20 ms flat out to ten endpoints.
const STARVED: Duration = Duration::from_millis(2);
/// Fewer attempts started in a period than this says nothing about being behind.
const MIN_STARTED: u64 = 50;

/// Attempts started, and how many of them late, since the last verdict.
#[derive(Default)]
pub struct Starts {
    started: AtomicU64,
    late: AtomicU64,
}

impl Starts {
    /// An attempt starts after its job waited `waited` in this process.
    pub fn record(&self, waited: Duration) {
        self.started.fetch_add(1, Relaxed);
        if waited >= LATE {
            self.late.fetch_add(1, Relaxed);
        }
    }

    fn take(&self) -> (u64, u64) {
        (self.started.swap(0, Relaxed), self.late.swap(0, Relaxed))
    }
}

/// The verdict over one period.
pub fn behind(started: u64, late: u64, mean_lateness: Duration) -> bool {
    started >= MIN_STARTED && late * 2 > started && mean_lateness >= STARVED
}

/// Probes, judges and reports, until the dispatcher stops (the task is aborted). `busy`
/// says whether attempts are running; `report_behind(lasting)` writes the verdict "behind"
/// for that long (the engine puts it on its liveness row).
pub async fn watch<F>(starts: &Starts, busy: impl Fn() -> bool, mut report_behind: impl FnMut(Duration) -> F)
where
    F: Future<Output = anyhow::Result<()>>,
{
    loop {
        let (started, late, lateness) = period(starts, &busy).await;
        let behind = behind(started, late, lateness);
        metrics::pressure(behind, started, late, lateness);
        if behind && let Err(e) = report_behind(BEHIND_FOR).await {
            tracing::warn!(error = %e, "cannot report that this dispatcher is behind");
        }
    }
}

/// One period: the probe ticks while attempts run (idle, it sleeps the period through).
/// Returns the starts and the probe's mean lateness.
async fn period(starts: &Starts, busy: &impl Fn() -> bool) -> (u64, u64, Duration) {
    let end = Instant::now() + PERIOD;
    let (mut ticks, mut lateness) = (0u32, Duration::ZERO);
    while Instant::now() < end {
        if !busy() && ticks == 0 {
            tokio::time::sleep_until(end).await;
            break;
        }
        let at = Instant::now() + TICK;
        tokio::time::sleep_until(at).await;
        lateness += Instant::now().saturating_duration_since(at);
        ticks += 1;
    }
    let (started, late) = starts.take();
    (started, late, if ticks == 0 { Duration::ZERO } else { lateness / ticks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behind_needs_most_starts_late_and_a_starved_process() {
        let starved = Duration::from_millis(5);
        assert!(behind(1_000, 900, starved), "late and starved: behind");
        // A slow partner: its jobs wait long, but this process has CPU to spare.
        assert!(!behind(1_000, 900, Duration::from_micros(600)), "late but not starved: a partner's doing");
        // Starved, yet most attempts start promptly: keeping up.
        assert!(!behind(1_000, 400, starved), "starved but keeping up");
        // A handful of attempts says nothing.
        assert!(!behind(MIN_STARTED - 1, MIN_STARTED - 1, starved));
    }

    #[test]
    fn starts_count_the_late_ones_and_reset_when_taken() {
        let starts = Starts::default();
        starts.record(Duration::from_millis(1));
        starts.record(LATE);
        starts.record(Duration::from_secs(3));
        assert_eq!(starts.take(), (3, 2));
        assert_eq!(starts.take(), (0, 0));
    }
}
