//! Backpressure at the API: while a live dispatcher says it is behind, writes wait for their
//! turn, and a write whose turn lies beyond its deadline is refused with DELIVERIES_BEHIND
//! and writes nothing; reads are never paced; the report of a dispatcher that is no longer
//! alive counts for nothing. (When a dispatcher says so is the dispatcher's unit tests and
//! the e2e benchmark: it takes a CPU-starved process.)
use std::time::Duration;

use coursewire_api::clock::Clock;
use coursewire_proto::v1::*;
use futures::StreamExt;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use crate::fixtures::*;
use crate::harness::Harness;

/// A dispatcher's liveness row (alive or lapsed), as it writes one while it holds
/// deliveries, and its report that it is behind.
async fn dispatcher_behind(h: &Harness, owner: &str, alive: bool) {
    let now = h.clock.now_ms();
    sqlx::query("INSERT INTO dispatcher_liveness (owner, alive_until) VALUES ($1, $2)")
        .bind(owner)
        .bind(if alive { now + 5_000 } else { now - 1 })
        .execute(h.db.pool())
        .await
        .unwrap();
    coursewire_core::webhooks::pressure::report_behind(&h.db, owner, now + 60_000).await.unwrap();
}

/// `n` CreateUser calls at once, each with a 1 s deadline.
async fn creates(h: &Harness, n: usize) -> Vec<Result<User, Status>> {
    let calls = (0..n).map(|i| {
        let mut c = h.clients();
        async move {
            let u = User { email: format!("paced{i}@example.com"), first_name: "P".into(), ..Default::default() };
            let mut req = Request::new(CreateUserRequest { user: Some(u), ..Default::default() });
            req.set_timeout(Duration::from_secs(1));
            c.users.create_user(req).await.map(|r| r.into_inner())
        }
    });
    futures::stream::iter(calls).buffer_unordered(n).collect().await
}

async fn writes_wait_their_turn_and_those_past_their_deadline_write_nothing(h: &Harness) {
    dispatcher_behind(h, "dsp-busy", true).await;
    let before = h.count("users").await;
    let results = creates(h, 30).await;
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    // Nothing was admitted before: the pace starts at its floor, 10 writes a second, and a
    // call waits at most 3/4 of its 1 s deadline: room for about 8 turns.
    assert!((1..=10).contains(&admitted), "{admitted} of 30 admitted");
    for s in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(s.code(), Code::Unavailable, "{s:?}");
        assert_eq!(reason(s), "DELIVERIES_BEHIND");
        let retry = s.get_details_retry_info().and_then(|r| r.retry_delay).expect("RetryInfo");
        assert!(retry > Duration::from_millis(750) && retry < Duration::from_secs(5), "{retry:?}");
    }
    assert_eq!(h.count("users").await - before, admitted as i64, "a refused write writes nothing");

    // Reads are never paced.
    let reads = (0..30).map(|_| {
        let mut c = h.clients();
        async move {
            let mut req = Request::new(ListUsersRequest::default());
            req.set_timeout(Duration::from_millis(300));
            c.users.list_users(req).await
        }
    });
    let reads: Vec<_> = futures::stream::iter(reads).buffer_unordered(30).collect().await;
    assert!(reads.iter().all(|r| r.is_ok()), "{reads:?}");
}

async fn a_lapsed_dispatchers_report_counts_for_nothing(h: &Harness) {
    dispatcher_behind(h, "dsp-dead", false).await;
    let results = creates(h, 30).await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
}

crate::backend_tests!(
    writes_wait_their_turn_and_those_past_their_deadline_write_nothing,
    a_lapsed_dispatchers_report_counts_for_nothing,
);
