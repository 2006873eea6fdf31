//! What a rate-limit backend is: it decides for subjects (counters with their windows),
//! atomically, and keeps the hourly call counts (`usage`). The limiter holds one; memory and
//! Redis implement it.
use std::ops::RangeInclusive;

use super::usage::{Counter, Outcome};
use crate::policy::CallClass;
use crate::policy::windows::{Window, WindowState};

/// One counter and the windows that apply to it.
pub struct Subject<'a> {
    pub key: String,
    pub windows: &'a [Window],
}

#[tonic::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The state of every window of every subject before this call; when `n` more fit in
    /// all of them (and `n > 0`), records `n` units for every subject, atomically.
    async fn decide(&self, subjects: &[Subject<'_>], n: u64, now: i64) -> anyhow::Result<Vec<Vec<WindowState>>>;

    /// Adds call counts; each hour's are kept `usage::KEEP_MS`.
    async fn add_calls(&self, counts: &[(Counter, u64)], now: i64) -> anyhow::Result<()>;

    /// An organization's call counts in `hours`, by class and outcome.
    async fn calls(&self, org: &str, hours: RangeInclusive<i64>) -> anyhow::Result<Vec<(CallClass, Outcome, u64)>>;
}
