//! Long-lived server streams (WatchEvents, ExportEnrollments). Each holds a permit: at most
//! `per_org` at once per organization in this process, so one tenant cannot pin the server's
//! connections and database reads. When the server stops, every stream is told to end, with
//! a cursor to resume from, instead of holding the graceful shutdown open.
use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use coursewire_core::error::{ApiError, ApiResult, Reason};

pub const DEFAULT_PER_ORG: usize = 8;

pub struct Streams {
    per_org: usize,
    open: Mutex<HashMap<String, usize>>,
    stopping: watch::Sender<bool>,
}

/// One open stream; dropping it frees its place.
pub struct Permit {
    streams: Arc<Streams>,
    org: String,
}

impl Streams {
    pub fn new(per_org: usize) -> Arc<Streams> {
        Arc::new(Streams { per_org, open: Mutex::default(), stopping: watch::channel(false).0 })
    }

    /// A place for one more stream of `org`, or RESOURCE_EXHAUSTED / TOO_MANY_STREAMS.
    pub fn open(self: &Arc<Self>, org: &str) -> ApiResult<Permit> {
        let mut open = self.open.lock();
        let count = open.entry(org.to_string()).or_default();
        if *count >= self.per_org {
            return Err(ApiError::new(
                Reason::TooManyStreams,
                format!("your organization already has {} streams open on this server", self.per_org),
            )
            .with("limit", self.per_org.to_string())
            .help("close a WatchEvents or ExportEnrollments stream you no longer read, then retry"));
        }
        *count += 1;
        Ok(Permit { streams: self.clone(), org: org.to_string() })
    }

    /// Completes once the server is stopping (at once if it already is).
    pub async fn stopping(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Tells every stream to end.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }
}

impl Permit {
    pub fn org(&self) -> &str {
        &self.org
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock();
        if let Some(count) = open.get_mut(&self.org) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.org);
            }
        }
    }
}

/// The status a stream ends with when the server stops: UNAVAILABLE (retry elsewhere or
/// later) with the cursor to resume from in `ErrorInfo.metadata[cursor_field]`.
pub fn shutting_down(cursor_field: &str, cursor: &str) -> tonic::Status {
    ApiError::unavailable("the server is shutting down; resume the stream from the cursor in the metadata")
        .with(cursor_field, cursor)
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_per_organization() {
        let s = Streams::new(2);
        let a = s.open("acme").unwrap();
        let _b = s.open("acme").unwrap();
        assert_eq!(s.open("acme").err().unwrap().reason, coursewire_core::error::Reason::TooManyStreams);
        let _other = s.open("initech").expect("other organizations are counted apart");
        drop(a);
        s.open("acme").expect("a closed stream frees its place");
    }
}
