//! Bounded storage: idempotency records go after 24 hours, deliveries and their attempts after
//! the delivery retention (30 days here), in batches; ReplayEvents counts before it loads.
use coursewire_api::clock::Clock;
use coursewire_proto::v1::*;
use tonic::Code;

use crate::fixtures::*;
use crate::harness::Harness;
use crate::receiver::Receiver;
use crate::webhooks::{create_hook, wait_deliveries};

const DAY: i64 = 86_400_000;

async fn idempotency_records_expire_after_a_day(h: &Harness) {
    let mut c = h.clients();
    let req = |email: &str| CreateUserRequest {
        user: Some(User { email: email.into(), ..Default::default() }),
        request_id: "r-1".into(),
        ..Default::default()
    };
    c.users.create_user(req("one@example.com")).await.unwrap();
    assert_err(c.users.create_user(req("two@example.com")).await, Code::InvalidArgument, "REQUEST_ID_REUSED");
    h.clock.advance(DAY - 1000);
    h.prune().await;
    assert_eq!(h.count("idempotency").await, 1, "kept for its 24 hours");
    h.clock.advance(2000);
    h.prune().await;
    assert_eq!(h.count("idempotency").await, 0);
    c.users.create_user(req("two@example.com")).await.expect("the request id is free again");
}

async fn deliveries_and_attempts_are_pruned_after_retention(h: &Harness) {
    let mut c = h.clients();
    let receiver = Receiver::ok().await;
    let (hook, _) = create_hook(&mut c, &receiver.url, &["domain.created"]).await;
    domain(&mut c, "old.example.com").await;
    wait_deliveries(&mut c, &hook.id, |d| d.len() == 1 && d[0].attempt_count == 1).await;
    h.clock.advance(31 * DAY);
    domain(&mut c, "new.example.com").await;
    wait_deliveries(&mut c, &hook.id, |d| d.len() == 2 && d.iter().all(|d| d.attempt_count == 1)).await;
    h.prune().await;
    let left = crate::webhooks::deliveries(&mut c, &hook.id).await;
    assert_eq!(left.len(), 1, "only the delivery past retention went");
    assert_eq!(h.count("webhook_attempts").await, 1, "with its attempts");
    assert!(ms(&left[0].created_at) > h.clock.now_ms() - DAY);
}

fn ms(t: &Option<pbjson_types::Timestamp>) -> i64 {
    t.as_ref().map(|t| t.seconds * 1000).unwrap()
}

async fn replay_over_the_cap_is_refused_before_loading(h: &Harness) {
    let mut c = h.clients();
    let (hook, _) = create_hook(&mut c, "https://hooks.example.com/replay", &["user.*"]).await;
    // 10,001 user events (and as many of a type the endpoint does not want), written directly
    // before the relay's cursor (txid -1), so it leaves them alone: only the replay could make
    // deliveries of them.
    let now = h.clock.now_ms();
    for (kind, from) in [("user.created", 0), ("domain.created", 20_000)] {
        for chunk in (from..from + 10_001).collect::<Vec<i64>>().chunks(1000) {
            let values: Vec<String> = chunk
                .iter()
                .map(|i| format!("('evt_{i:026}', 'acme', '{kind}', 'usr_{i:026}', 1, {now}, '{{}}', -1)"))
                .collect();
            let sql = format!(
                "INSERT INTO events (id, org_id, type, resource_id, sequence, created_at, body, txid) VALUES {}",
                values.join(", ")
            );
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(h.db.pool()).await.unwrap();
        }
    }
    let replay = |end: i64| ReplayEventsRequest {
        webhook_id: hook.id.clone(),
        start_time: Some(timestamp(now - 1000)),
        end_time: Some(timestamp(end)),
        only_failed: false,
    };
    let s = assert_err(c.webhooks.replay_events(replay(now + 1000)).await, Code::InvalidArgument, "REPLAY_TOO_LARGE");
    assert!(s.message().contains("10001"), "{}", s.message());
    assert_eq!(h.count("webhook_deliveries").await, 0, "nothing written");
}

crate::backend_tests!(
    idempotency_records_expire_after_a_day,
    deliveries_and_attempts_are_pruned_after_retention,
    replay_over_the_cap_is_refused_before_loading,
);
