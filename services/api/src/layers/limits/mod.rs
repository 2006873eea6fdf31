//! Rate limits per organization and call class, as an exact sliding window: a call counts
//! from the instant it is admitted until exactly one window later; rejected calls are not
//! counted; a batch counts its items and is admitted or rejected whole. Calendar windows
//! (`N/day`) reset at 00:00 UTC. Two backends share one trait: in-memory (one process) and
//! Redis (all replicas, one atomic Lua script per decision). The limiter also counts every
//! call of an organization by class and outcome (`usage`), for the console's overview.
pub mod backend;
pub mod layer;
mod memory;
mod redis;
pub mod usage;

use std::sync::Arc;
use std::time::Duration;

use coursewire_proto::v1::LimitStatus;

use crate::policy::windows::{self, ClassLimits, Span, Window, WindowState};
use backend::{Backend, Subject};
pub use memory::MemoryBackend;
pub use redis::RedisBackend;
use usage::{Counter, HOUR_MS, Outcome, Pending};

use crate::clock::SharedClock;
use crate::layers::auth::Caller;
use crate::policy::{CallClass, Charge, Policy};
use coursewire_core::error::{ApiError, Reason};

/// Marks a call already paid for: the pages after the first of one CSV download, which is
/// charged as one call. Only the gateway inserts it (a request extension, which no client
/// can send).
#[derive(Clone, Copy, Debug)]
pub struct Prepaid;

/// What to do when the backend cannot answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Admit the call (and log it): availability over strictness.
    Open,
    /// Refuse it with UNAVAILABLE.
    Closed,
}

/// The outcome of one decision, for headers and errors.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Ms until the window named here has room again (rejected) or its oldest unit expires.
    pub reset_ms: i64,
    pub subject: String,
    pub window: String,
    pub n: u64,
}

pub struct Limiter {
    backend: Arc<dyn Backend>,
    defaults: ClassLimits,
    on_error: OnError,
    clock: SharedClock,
    /// Call counts not yet added to the backend.
    usage: Pending,
    /// Held while pending counts go to the backend, so a reader waits for them.
    flushing: tokio::sync::Mutex<()>,
}

/// The limiter for `--rate-limits` on Redis (`redis_url`) or in memory.
pub async fn build(
    rate_limits: &str,
    redis_url: Option<&str>,
    on_error: OnError,
    clock: SharedClock,
) -> anyhow::Result<Arc<Limiter>> {
    let defaults =
        ClassLimits::uniform(windows::parse_windows(rate_limits).map_err(|e| anyhow::anyhow!("--rate-limits: {e}"))?);
    let backend: Arc<dyn Backend> = match redis_url {
        Some(url) => Arc::new(
            RedisBackend::connect(url, "coursewire:limits:").await.map_err(|e| anyhow::anyhow!("--redis-url: {e}"))?,
        ),
        None => Arc::new(MemoryBackend::default()),
    };
    Ok(Arc::new(Limiter::new(backend, defaults, on_error, clock)))
}

impl Limiter {
    pub fn new(backend: Arc<dyn Backend>, defaults: ClassLimits, on_error: OnError, clock: SharedClock) -> Self {
        Limiter { backend, defaults, on_error, clock, usage: Pending::default(), flushing: Default::default() }
    }

    /// Counts a call of `org` in `class` that ended with gRPC code `code`, for `calls`.
    pub fn count_call(self: &Arc<Self>, org: &str, class: CallClass, code: usize) {
        if org.is_empty() {
            return; // a platform key's call: no organization to show it to
        }
        let now = self.clock.now_ms();
        let counter =
            Counter { org: org.to_string(), hour: now.div_euclid(HOUR_MS), class, outcome: Outcome::of(code) };
        if self.usage.count(counter, now) {
            let limiter = Arc::clone(self);
            tokio::spawn(async move { limiter.flush_calls().await });
        }
    }

    /// Adds the pending call counts to the backend.
    async fn flush_calls(&self) {
        let _one_at_a_time = self.flushing.lock().await;
        let batch = self.usage.take();
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.backend.add_calls(&batch, self.clock.now_ms()).await {
            tracing::warn!(error = %e, "could not add call counts to the rate limit backend; the console's chart misses them");
        }
    }

    /// The organization's calls in the last 24 hours (this hour and the 23 before), by class
    /// and outcome, every pair present; and the start of the oldest hour.
    pub async fn calls(&self, org: &str) -> Result<(Vec<(CallClass, Outcome, u64)>, i64), ApiError> {
        // This replica's own latest calls first, so it shows them at once.
        self.flush_calls().await;
        let hours = usage::last_day(self.clock.now_ms());
        let found = self.backend.calls(org, hours.clone()).await.map_err(|e| {
            tracing::warn!(error = %e, "could not read call counts from the rate limit backend");
            ApiError::unavailable("call counts are unavailable: the rate limit backend did not answer")
        })?;
        let mut totals: Vec<(CallClass, Outcome, u64)> = [CallClass::Read, CallClass::Modify, CallClass::Remove]
            .into_iter()
            .flat_map(|class| Outcome::ALL.map(|outcome| (class, outcome, 0)))
            .collect();
        for (class, outcome, n) in found {
            if let Some(total) = totals.iter_mut().find(|t| t.0 == class && t.1 == outcome) {
                total.2 += n;
            }
        }
        Ok((totals, hours.start() * HOUR_MS))
    }

    /// The windows of `class` for the caller's organization (its overrides, or the defaults).
    pub fn windows<'a>(&'a self, caller: &'a Caller, class: CallClass) -> &'a [Window] {
        caller.key.org_limits.get(class).unwrap_or(self.defaults.get(class))
    }

    fn subjects<'a>(&'a self, caller: &'a Caller, class: CallClass) -> Vec<Subject<'a>> {
        let mut subjects = vec![Subject {
            key: format!("org:{}:{}", caller.org(), class.as_str()),
            windows: self.windows(caller, class),
        }];
        if let Some(windows) = &caller.key.key_limit {
            subjects.push(Subject { key: format!("key:{}", caller.key.id), windows });
        }
        subjects
    }

    /// Counts `n` units of `class` for the caller if they fit. `Ok(None)` when the backend
    /// failed and the limiter fails open.
    pub async fn admit(&self, caller: &Caller, class: CallClass, n: u64) -> Result<Option<Verdict>, ApiError> {
        let subjects = self.subjects(caller, class);
        let now = self.clock.now_ms();
        match self.backend.decide(&subjects, n, now).await {
            Ok(states) => {
                let v = verdict(&subjects, &states, n);
                crate::metrics::rate_limit_decided(class, v.allowed);
                Ok(Some(v))
            }
            Err(e) if self.on_error == OnError::Open => {
                crate::metrics::limiter_backend_error();
                tracing::warn!(error = %e, request_id = ?coursewire_core::request_id::current(), "rate limit backend failed; admitting the call (--rate-limit-on-backend-error open)");
                Ok(None)
            }
            Err(e) => {
                crate::metrics::limiter_backend_error();
                tracing::error!(error = %e, request_id = ?coursewire_core::request_id::current(), "rate limit backend failed; refusing the call (--rate-limit-on-backend-error closed)");
                Err(ApiError::unavailable("the rate limiter is unavailable"))
            }
        }
    }

    /// Admits a call the policy table charges per item (a batch) for its `n` items, in its
    /// call class: RESOURCE_EXHAUSTED with the limit headers when they do not all fit, else
    /// the verdict whose headers the response carries.
    pub async fn admit_items(&self, caller: &Caller, n: usize) -> Result<Option<Verdict>, tonic::Status> {
        let Some(Policy { class, charge: Charge::PerItem, .. }) = caller.policy else {
            // The layer charged this call already: charging it here too would count it twice.
            return Err(ApiError::internal("a call charged per call was charged per item").into());
        };
        let verdict = self.admit(caller, class, n as u64).await?;
        if let Some(v) = verdict.as_ref().filter(|v| !v.allowed) {
            let mut status = tonic::Status::from(v.rejection());
            v.headers(status.metadata_mut().as_mut());
            return Err(status);
        }
        Ok(verdict)
    }

    /// Every window of every class for the caller, without counting anything (WhoAmI).
    pub async fn status(&self, caller: &Caller) -> Vec<LimitStatus> {
        let mut out = Vec::new();
        for class in [CallClass::Read, CallClass::Modify, CallClass::Remove] {
            let subjects = self.subjects(caller, class);
            let Ok(states) = self.backend.decide(&subjects, 0, self.clock.now_ms()).await else { continue };
            for (si, (s, st)) in subjects.iter().zip(&states).enumerate() {
                if si > 0 && class != CallClass::Read {
                    continue; // the key's own limit is shared by all classes: show it once
                }
                for (w, st) in s.windows.iter().zip(st) {
                    out.push(LimitStatus {
                        call_class: if si == 0 { class.as_str().into() } else { "key".into() },
                        window: w.label.clone(),
                        limit: w.limit as i64,
                        remaining: w.limit.saturating_sub(st.count) as i64,
                        reset_seconds: ceil_seconds(st.reset_ms),
                    });
                }
            }
        }
        out
    }
}

/// Folds the window states into the one verdict the caller sees: when admitted, the
/// window with the least room left; when rejected, the window that frees up last.
fn verdict(subjects: &[Subject<'_>], states: &[Vec<WindowState>], n: u64) -> Verdict {
    let all = subjects.iter().zip(states).flat_map(|(s, st)| s.windows.iter().zip(st).map(move |(w, st)| (s, w, st)));
    let blocked = all.clone().filter(|(_, w, st)| st.count + n > w.limit).max_by_key(|(_, _, st)| st.retry_ms);
    if let Some((s, w, st)) = blocked {
        return Verdict {
            allowed: false,
            limit: w.limit,
            remaining: w.limit.saturating_sub(st.count),
            reset_ms: st.retry_ms,
            subject: s.key.clone(),
            window: w.label.clone(),
            n,
        };
    }
    let tightest = all.min_by_key(|(_, w, st)| w.limit - st.count - n);
    match tightest {
        Some((s, w, st)) => {
            let reset_ms = match (st.count, w.span) {
                (0, Span::Sliding(ms)) => ms, // this call is the oldest now
                _ => st.reset_ms,
            };
            Verdict {
                allowed: true,
                limit: w.limit,
                remaining: w.limit - st.count - n,
                reset_ms,
                subject: s.key.clone(),
                window: w.label.clone(),
                n,
            }
        }
        None => Verdict {
            allowed: true,
            limit: 0,
            remaining: 0,
            reset_ms: 0,
            subject: String::new(),
            window: String::new(),
            n,
        },
    }
}

fn ceil_seconds(ms: i64) -> i64 {
    (ms.max(0) + 999) / 1000
}

impl Verdict {
    /// `x-ratelimit-*` (and `retry-after` when rejected) for the response.
    pub fn headers(&self, headers: &mut http::HeaderMap) {
        if self.window.is_empty() {
            return;
        }
        headers.insert("x-ratelimit-limit", self.limit.into());
        headers.insert("x-ratelimit-remaining", self.remaining.into());
        headers.insert("x-ratelimit-reset", ceil_seconds(self.reset_ms).into());
        if !self.allowed {
            headers.insert("retry-after", ceil_seconds(self.reset_ms).into());
        }
    }

    /// RESOURCE_EXHAUSTED with RetryInfo, QuotaFailure and ErrorInfo{RATE_LIMITED}.
    pub fn rejection(&self) -> ApiError {
        let class = self.subject.rsplit(':').next().unwrap_or_default();
        let message = if self.n > self.limit {
            format!("{} units exceed the limit of {} per {} window", self.n, self.limit, self.window)
        } else {
            format!(
                "rate limit of {} per {} reached; retry in {} s",
                self.limit,
                self.window,
                ceil_seconds(self.reset_ms)
            )
        };
        let mut e = ApiError::new(Reason::RateLimited, message)
            .with("limit", self.limit.to_string())
            .with("window", self.window.clone())
            .with("call_class", class)
            .help("wait for RetryInfo.retry_delay, or ask for a higher limit");
        e.details.retry_after = Some(Duration::from_millis(self.reset_ms.max(0) as u64));
        e.details.quota = Some((self.subject.clone(), format!("{} calls per {} window", self.limit, self.window)));
        e
    }
}
