//! Time as a dependency, so windows, expiries and backoff are tested without sleeping.
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::sync::Notify;

pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;

    /// Completes once this clock reads `at_ms` or later (a real sleep for the system clock;
    /// for a manual clock, when a test moves it there).
    fn sleep_until(&self, at_ms: i64) -> BoxFuture<'static, ()> {
        let wait = Duration::from_millis((at_ms - self.now_ms()).max(0) as u64);
        Box::pin(tokio::time::sleep(wait))
    }
}

pub type SharedClock = Arc<dyn Clock>;

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }
}

/// A clock that only moves when told to.
pub struct ManualClock {
    now: Arc<AtomicI64>,
    moved: Arc<Notify>,
}

impl ManualClock {
    pub fn new(start_ms: i64) -> Arc<Self> {
        Arc::new(ManualClock { now: Arc::new(AtomicI64::new(start_ms)), moved: Arc::new(Notify::new()) })
    }
    pub fn set(&self, ms: i64) {
        self.now.store(ms, Ordering::SeqCst);
        self.moved.notify_waiters();
    }
    pub fn advance(&self, ms: i64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
        self.moved.notify_waiters();
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }

    fn sleep_until(&self, at_ms: i64) -> BoxFuture<'static, ()> {
        let (now, moved) = (self.now.clone(), self.moved.clone());
        Box::pin(async move {
            loop {
                let notified = moved.notified();
                if now.load(Ordering::SeqCst) >= at_ms {
                    return;
                }
                notified.await;
            }
        })
    }
}

/// Epoch milliseconds as RFC 3339 with milliseconds (`2026-11-24T10:00:00.123Z`).
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_when_moved_there() {
        let clock = ManualClock::new(1_000);
        let mut sleep = clock.sleep_until(1_500);
        assert!(futures::FutureExt::now_or_never(&mut sleep).is_none());
        clock.advance(400);
        assert!(futures::FutureExt::now_or_never(&mut sleep).is_none(), "not there yet");
        clock.advance(100);
        tokio::time::timeout(Duration::from_secs(1), sleep).await.expect("woken at 1,500");
    }
}
