//! What a rate-limit backend is: it decides for subjects (counters with their windows),
//! atomically. The limiter holds one; memory and Redis implement it.
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
}
