//! Rate limits, exactly as the contract states, with a controllable clock: the same tests
//! over the in-memory and the Redis backend.
use std::time::Duration;

use coursewire_api::clock::Clock;
use coursewire_proto::v1::*;
use futures::StreamExt;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::fixtures::*;
use crate::harness::{Backend, Harness, Limits};

async fn harness(l: Limits, limits: &str) -> Harness {
    Harness::start_with(Backend::Sqlite, l, limits).await
}

fn header(m: &tonic::metadata::MetadataMap, name: &str) -> String {
    m.get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

/// `n` Pings, 64 in flight at a time.
async fn pings(h: &Harness, n: usize) -> Vec<Result<tonic::Response<pbjson_types::Empty>, Status>> {
    let calls = (0..n).map(|_| {
        let mut c = h.clients();
        async move { c.account.ping(PingRequest {}).await }
    });
    futures::stream::iter(calls).buffer_unordered(64).collect().await
}

fn rejected(s: &Status, retry: Duration) {
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert_eq!(reason(s), "RATE_LIMITED");
    assert_eq!(
        s.get_details_retry_info().and_then(|r| r.retry_delay),
        Some(retry),
        "RetryInfo: when the oldest counted call expires"
    );
    let q = s.get_details_quota_failure().expect("QuotaFailure");
    assert!(
        q.violations[0].subject.ends_with(":read")
            || q.violations[0].subject.ends_with(":modify")
            || q.violations[0].subject.starts_with("key:"),
        "{q:?}"
    );
    assert_eq!(header(s.metadata(), "retry-after"), retry.as_millis().div_ceil(1000).to_string());
    assert_eq!(header(s.metadata(), "x-ratelimit-remaining"), "0");
}

async fn the_601st_read_waits_exactly_for_the_first(l: Limits) {
    let h = harness(l, "600/1m,5000/1h").await;
    let results = pings(&h, 600).await;
    assert!(results.iter().all(|r| r.is_ok()));
    let mut c = h.clients();
    let s = c.account.ping(PingRequest {}).await.unwrap_err();
    rejected(&s, Duration::from_secs(60));
    assert_eq!(header(s.metadata(), "x-ratelimit-limit"), "600");

    h.clock.advance(59_999);
    let s = c.account.ping(PingRequest {}).await.unwrap_err();
    rejected(&s, Duration::from_millis(1));
    h.clock.advance(1);
    let ok = c.account.ping(PingRequest {}).await.expect("the first call's slot frees exactly 60 s after it");
    // The minute window holds 1 of 600, the hour window 601 of 5000: the tighter one is shown.
    assert_eq!(header(ok.metadata(), "x-ratelimit-limit"), "600");
    assert_eq!(header(ok.metadata(), "x-ratelimit-remaining"), "599");
    assert_eq!(header(ok.metadata(), "x-ratelimit-reset"), "60");
}

async fn the_hour_example(l: Limits) {
    let h = harness(l, "5000/1h").await;
    let noon = h.clock.now_ms();
    h.clients().account.ping(PingRequest {}).await.unwrap();
    h.clock.set(noon + 59 * 60_000);
    let results = pings(&h, 4999).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).take(3).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let mut c = h.clients();
    rejected(&c.account.ping(PingRequest {}).await.unwrap_err(), Duration::from_secs(60));
    h.clock.set(noon + 3_600_000 - 1);
    rejected(&c.account.ping(PingRequest {}).await.unwrap_err(), Duration::from_millis(1));
    h.clock.set(noon + 3_600_000);
    c.account.ping(PingRequest {}).await.expect("13:00: the 12:00 call expired");
    rejected(&c.account.ping(PingRequest {}).await.unwrap_err(), Duration::from_secs(59 * 60));
    h.clock.set(noon + 59 * 60_000 + 3_600_000);
    c.account.ping(PingRequest {}).await.expect("13:59: the 12:59 calls expired");
}

async fn classes_are_counted_apart_and_rejections_are_free(l: Limits) {
    let h = harness(l, "2/1m").await;
    let mut c = h.clients();
    c.account.ping(PingRequest {}).await.unwrap();
    let d = domain(&mut c, "a.example.com").await;
    h.clock.advance(10_000);
    c.account.ping(PingRequest {}).await.unwrap();
    let s = c.account.ping(PingRequest {}).await.unwrap_err();
    rejected(&s, Duration::from_secs(50));
    assert_eq!(meta(&s, "call_class").as_deref(), Some("read"));
    // modify and remove have their own counters.
    domain(&mut c, "b.example.com").await;
    let s = c
        .domains
        .create_domain(CreateDomainRequest {
            domain: Some(Domain { hostname: "c.example.com".into(), name: "C".into(), ..Default::default() }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(meta(&s, "call_class").as_deref(), Some("modify"));
    c.domains.delete_domain(DeleteDomainRequest { id: d.id, etag: String::new() }).await.unwrap();
    // Rejected calls were not counted: at t+60 s exactly the first read's slot frees.
    for _ in 0..5 {
        assert!(c.account.ping(PingRequest {}).await.is_err());
    }
    h.clock.advance(50_000);
    c.account.ping(PingRequest {}).await.unwrap();
    assert_eq!(h.count("domains").await, 1);
}

async fn a_batch_counts_its_items_all_or_nothing(l: Limits) {
    let h = harness(l, "10/1m").await;
    let mut c = h.clients();
    let w = world(&mut c).await; // 4 modify calls
    let mut users = Vec::new();
    for i in 0..2 {
        users.push(user(&mut c, &format!("b{i}@example.com")).await); // 6 modify calls
    }
    let item = |u: &User| CreateEnrollmentRequest {
        user_id: u.id.clone(),
        published_course_id: w.published.id.clone(),
        ..Default::default()
    };
    let batch = |n: usize| BatchCreateEnrollmentsRequest {
        requests: (0..n).map(|i| item(&users[i % 2])).collect(),
        request_id: String::new(),
    };
    let s = c.enrollments.batch_create_enrollments(batch(5)).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert_eq!(h.count("enrollments").await, 0, "a rejected batch writes nothing");
    let ok = c.enrollments.batch_create_enrollments(batch(4)).await.unwrap();
    assert_eq!(header(ok.metadata(), "x-ratelimit-remaining"), "0");
    assert_eq!(h.count("enrollments").await, 2);
    assert!(
        c.domains
            .create_domain(CreateDomainRequest::default())
            .await
            .is_err_and(|s| s.code() == Code::ResourceExhausted)
    );
}

async fn a_daily_window_resets_at_midnight_utc(l: Limits) {
    let h = harness(l, "3/day").await;
    let day = 86_400_000;
    let midnight = (h.clock.now_ms() / day + 1) * day;
    h.clock.set(midnight - 1000);
    assert!(pings(&h, 3).await.iter().all(|r| r.is_ok()));
    let mut c = h.clients();
    rejected(&c.account.ping(PingRequest {}).await.unwrap_err(), Duration::from_secs(1));
    h.clock.set(midnight);
    c.account.ping(PingRequest {}).await.expect("a new UTC day");
}

async fn org_overrides_and_key_limits(l: Limits) {
    let h = harness(l, "600/1m").await;
    let other = h.other_org("globex").await;
    let mut org = coursewire_api::organizations::get_org(&h.db, "acme").await.unwrap();
    org.rate_limits = Some(RateLimits { read: "2/1m".into(), ..Default::default() });
    coursewire_api::organizations::save_org(&h.db, &org, h.clock.now_ms()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // the auth cache refreshes within 1 s
    assert_eq!(pings(&h, 3).await.iter().filter(|r| r.is_ok()).count(), 2);
    h.clients_with(&other).account.ping(PingRequest {}).await.expect("other organizations keep the default");

    // A key's own limit applies on top of its organization's.
    let mut c = h.clients_with(&other);
    let created = c
        .keys
        .create_api_key(CreateApiKeyRequest {
            api_key: Some(ApiKey { label: "partner".into(), rate_limit: "1/1m".into(), ..star_key() }),
        })
        .await
        .unwrap()
        .into_inner();
    let mut limited = h.clients_with(&created.secret);
    limited.account.ping(PingRequest {}).await.unwrap();
    let s = limited.account.ping(PingRequest {}).await.unwrap_err();
    rejected(&s, Duration::from_secs(60));
    c.account.ping(PingRequest {}).await.expect("the organization's other keys are unaffected");

    let who = c.account.who_am_i(WhoAmIRequest {}).await.unwrap().into_inner();
    let read = who.limits.iter().find(|l| l.call_class == "read").unwrap();
    assert_eq!((read.limit, read.window.as_str()), (600, "1m"));
    assert!(read.remaining < 600 && read.remaining > 590, "{read:?}");
    assert!(who.limits.iter().any(|l| l.call_class == "modify" && l.remaining == 599));
}

/// The organization's calls by class and outcome, as `GetUsage` reports them.
async fn usage(h: &Harness, key: &str) -> Vec<(String, String, i64)> {
    let u = h.clients_with(key).account.get_usage(GetUsageRequest {}).await.unwrap().into_inner();
    let hour = 3_600_000;
    let start = coursewire_api::clock::from_timestamp(u.start_time.as_ref().unwrap()).unwrap();
    assert_eq!(start, (h.clock.now_ms() / hour - 23) * hour, "this hour and the 23 before");
    u.calls.into_iter().map(|c| (c.call_class, c.outcome, c.count)).collect()
}

fn count(usage: &[(String, String, i64)], class: &str, outcome: &str) -> i64 {
    usage.iter().find(|u| u.0 == class && u.1 == outcome).unwrap_or_else(|| panic!("{class} {outcome} in {usage:?}")).2
}

async fn calls_are_counted_by_class_and_outcome(l: Limits) {
    let h = harness(l, "5/1m").await;
    let mut c = h.clients();
    assert!(pings(&h, 3).await.iter().all(|r| r.is_ok()));
    let missing = c.domains.get_domain(GetDomainRequest { id: "dom_01jd3k2m4n5p6q7r8s9t0v1w2x".into() }).await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);
    c.account.ping(PingRequest {}).await.unwrap();
    rejected(&c.account.ping(PingRequest {}).await.unwrap_err(), Duration::from_secs(60));
    domain(&mut c, "counted.example.com").await;
    // Past the window (GetUsage is a read too).
    h.clock.advance(61_000);
    c.account.ping(PingRequest {}).await.unwrap();
    let seen = usage(&h, &h.key).await;
    assert_eq!(seen.len(), 12, "every class with every outcome: {seen:?}");
    assert_eq!(count(&seen, "read", "succeeded"), 5, "{seen:?}");
    assert_eq!(count(&seen, "read", "refused"), 1);
    assert_eq!(count(&seen, "read", "rate_limited"), 1);
    assert_eq!(count(&seen, "modify", "succeeded"), 1);
    assert_eq!(seen.iter().filter(|u| u.0 == "remove").map(|u| u.2).sum::<i64>(), 0);
    // Each GetUsage counts too, once, whether its counts went to the backend or not yet.
    h.clock.advance(2_000);
    assert_eq!(count(&usage(&h, &h.key).await, "read", "succeeded"), 6);
    assert_eq!(count(&usage(&h, &h.key).await, "read", "succeeded"), 7);
    // Another organization's calls are its own; a day later these are gone.
    let other = h.other_org("globex").await;
    let theirs = usage(&h, &other).await;
    assert!(theirs.iter().all(|u| u.2 == 0), "{theirs:?}");
    h.clock.advance(24 * 3_600_000);
    let later = usage(&h, &h.key).await;
    assert!(later.iter().all(|u| u.2 == 0), "{later:?}");
}

macro_rules! limiter_tests {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::harness::Limits::Memory).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(cw_redis), ignore = "skipped: COURSEWIRE_TEST_REDIS_URL is not set")]
                async fn $name() {
                    super::$name(crate::harness::Limits::Redis).await;
                }
            )*
        }
    };
}

limiter_tests!(
    the_601st_read_waits_exactly_for_the_first,
    the_hour_example,
    classes_are_counted_apart_and_rejections_are_free,
    a_batch_counts_its_items_all_or_nothing,
    a_daily_window_resets_at_midnight_utc,
    org_overrides_and_key_limits,
    calls_are_counted_by_class_and_outcome,
);

#[cfg_attr(not(cw_redis), ignore = "skipped: COURSEWIRE_TEST_REDIS_URL is not set")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_fails_open_or_closed_as_configured() {
    let url = crate::harness::service_url("COURSEWIRE_TEST_REDIS_URL");
    let target = url.trim_start_matches("redis://").split('/').next().unwrap().to_string();
    for policy in [coursewire_api::layers::limits::OnError::Open, coursewire_api::layers::limits::OnError::Closed] {
        let proxy = crate::proxy::Proxy::start(&target).await;
        let h = Harness::start_with(Backend::Sqlite, Limits::RedisVia(proxy.port, policy), "600/1m").await;
        let mut c = h.clients();
        let ok = c.account.ping(PingRequest {}).await.unwrap();
        assert_eq!(header(ok.metadata(), "x-ratelimit-remaining"), "599");
        proxy.set_cut(true);
        tokio::time::sleep(Duration::from_millis(100)).await; // the proxy drops its connections
        let r = c.account.ping(PingRequest {}).await;
        match policy {
            coursewire_api::layers::limits::OnError::Open => {
                r.expect("fail open: admitted while Redis is unreachable");
            }
            coursewire_api::layers::limits::OnError::Closed => {
                assert_err(r, Code::Unavailable, "UNAVAILABLE");
            }
        }
    }
}
