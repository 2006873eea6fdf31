//! WebhookService and the dispatcher, end to end: real receivers on loopback, the in-process
//! dispatcher of the all-in-one, a ManualClock where retry timing is asserted.
use std::time::Duration;

use coursewire_api::clock::Clock;
use coursewire_dispatcher::signing::Secret;
use coursewire_proto::v1::delivery::State;
use coursewire_proto::v1::*;
use pbjson_types::FieldMask;
use tonic::Code;

use crate::backend_tests;
use crate::fixtures::{assert_err, enroll, violations, world};
use crate::harness::{Backend, Clients, Harness, Limits, dispatcher_config};
use crate::receiver::{Receiver, Reply};
use coursewire_dispatcher::Config as DispatcherConfig;

const WAIT: Duration = Duration::from_secs(10);

pub async fn create_hook(c: &mut Clients, url: &str, types: &[&str]) -> (Webhook, String) {
    let w =
        Webhook { url: url.into(), event_types: types.iter().map(|t| t.to_string()).collect(), ..Default::default() };
    let r = c.webhooks.create_webhook(CreateWebhookRequest { webhook: Some(w), request_id: String::new() }).await;
    let r = r.unwrap().into_inner();
    (r.webhook.unwrap(), r.secret)
}

pub async fn deliveries(c: &mut Clients, webhook_id: &str) -> Vec<Delivery> {
    let req = ListDeliveriesRequest { webhook_id: webhook_id.into(), page_size: 1000, ..Default::default() };
    c.webhooks.list_deliveries(req).await.unwrap().into_inner().deliveries
}

/// Polls until the endpoint's deliveries satisfy `done`.
pub async fn wait_deliveries(c: &mut Clients, webhook_id: &str, done: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got = deliveries(c, webhook_id).await;
        if done(&got) {
            return got;
        }
        assert!(std::time::Instant::now() < deadline, "deliveries never got there: {got:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn attempts(c: &mut Clients, delivery_id: &str) -> Vec<DeliveryAttempt> {
    let req = ListAttemptsRequest { delivery_id: delivery_id.into(), ..Default::default() };
    c.webhooks.list_attempts(req).await.unwrap().into_inner().attempts
}

fn ms(t: &Option<pbjson_types::Timestamp>) -> i64 {
    let t = t.as_ref().unwrap();
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// Verifies a request with our signer and with the stock Python `standardwebhooks` package
/// (an implementation independent of ours); they must agree.
pub fn verify(secret: &str, r: &crate::receiver::Received) -> bool {
    let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
    let ours =
        Secret::parse(secret).unwrap().verify(r.header("webhook-id"), ts, &r.body, r.header("webhook-signature"));
    assert_eq!(ours, python_verifies(secret, r), "our verifier and standardwebhooks disagree");
    ours
}

const PYTHON_VERIFY: &str = r#"
import json, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
d = json.load(sys.stdin)
try:
    Webhook(d["secret"]).verify(d["body"], d["headers"])
except WebhookVerificationError:
    sys.exit(3)
"#;

pub fn python_verifies(secret: &str, r: &crate::receiver::Received) -> bool {
    use std::io::Write;
    let headers: serde_json::Map<String, serde_json::Value> = ["webhook-id", "webhook-timestamp", "webhook-signature"]
        .iter()
        .map(|h| (h.to_string(), r.header(h).into()))
        .collect();
    let input = serde_json::json!({"secret": secret, "headers": headers, "body": String::from_utf8_lossy(&r.body)});
    let mut child = std::process::Command::new("python3")
        .args(["-c", PYTHON_VERIFY])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    match child.wait().unwrap().code() {
        Some(0) => true,
        Some(3) => false,
        other => panic!("python3 with standardwebhooks failed ({other:?}); `pip install standardwebhooks`"),
    }
}

async fn endpoint_crud(h: &Harness) {
    let mut c = h.clients();
    let (w, secret) = create_hook(&mut c, "https://hooks.example.com/cw", &["enrollment.*", "user.created"]).await;
    assert!(secret.starts_with("whsec_") && Secret::parse(&secret).is_ok());
    assert!(w.id.starts_with("wh_") && !w.disabled && w.etag == "\"1\"");
    assert_eq!(w.event_types, vec!["enrollment.*", "user.created"]);
    let got = c.webhooks.get_webhook(GetWebhookRequest { id: w.id.clone() }).await.unwrap().into_inner();
    assert_eq!(got, w);
    let shown = c.webhooks.get_webhook_secret(GetWebhookSecretRequest { id: w.id.clone() }).await.unwrap().into_inner();
    assert_eq!(shown.secret, secret);
    assert!(shown.previous_secret.is_empty());

    let patch = Webhook {
        id: w.id.clone(),
        description: "CRM sync".into(),
        headers: [("x-tenant".to_string(), "42".to_string())].into(),
        ..Default::default()
    };
    let mask = FieldMask { paths: vec!["description".into(), "headers".into()] };
    let updated = c
        .webhooks
        .update_webhook(UpdateWebhookRequest { webhook: Some(patch), update_mask: Some(mask) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.description, "CRM sync");
    assert_eq!(updated.url, w.url, "fields outside the mask are kept");
    assert_eq!(updated.headers["x-tenant"], "***", "header values are write-only");

    let disabled = c
        .webhooks
        .disable_webhook(DisableWebhookRequest { id: w.id.clone(), reason: "maintenance".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(disabled.disabled && disabled.disabled_reason == "maintenance" && disabled.disabled_at.is_some());
    let r = c.webhooks.send_test_event(SendTestEventRequest { id: w.id.clone() }).await;
    assert_err(r, Code::FailedPrecondition, "WEBHOOK_DISABLED");
    let enabled = c.webhooks.enable_webhook(EnableWebhookRequest { id: w.id.clone() }).await.unwrap().into_inner();
    assert!(!enabled.disabled && enabled.disabled_reason.is_empty());

    let list = c.webhooks.list_webhooks(ListWebhooksRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.webhooks.len(), 1);
    let stale = DeleteWebhookRequest { id: w.id.clone(), etag: "\"1\"".into() };
    assert_err(c.webhooks.delete_webhook(stale).await, Code::Aborted, "ETAG_MISMATCH");
    c.webhooks.delete_webhook(DeleteWebhookRequest { id: w.id.clone(), etag: String::new() }).await.unwrap();
    let gone = c.webhooks.get_webhook(GetWebhookRequest { id: w.id.clone() }).await;
    assert_err(gone, Code::NotFound, "NOT_FOUND");
}

async fn bad_endpoints_are_refused_and_nothing_is_written(h: &Harness) {
    let mut c = h.clients();
    let long = format!("https://x.com/{}", "a".repeat(2048));
    for (url, types, field) in [
        ("", vec![], "webhook.url"),
        ("ftp://x.com/hook", vec![], "webhook.url"),
        ("https://user:pw@x.com/hook", vec![], "webhook.url"),
        ("not a url", vec![], "webhook.url"),
        (long.as_str(), vec![], "webhook.url"),
        ("https://x.com/hook", vec!["enrolment.created"], "webhook.event_types"),
    ] {
        let w = Webhook {
            url: url.into(),
            event_types: types.into_iter().map(String::from).collect(),
            ..Default::default()
        };
        let r = c.webhooks.create_webhook(CreateWebhookRequest { webhook: Some(w), request_id: String::new() }).await;
        let s = assert_err(r, Code::InvalidArgument, "INVALID_FIELD");
        assert_eq!(violations(&s), vec![field.to_string()], "{url}");
    }
    let w = Webhook {
        url: "https://x.com/hook".into(),
        headers: [("Webhook-Signature".to_string(), "forged".to_string()), ("bad header".to_string(), "x".to_string())]
            .into(),
        max_rate_per_second: -1,
        max_concurrency: 100_000,
        ..Default::default()
    };
    let r = c.webhooks.create_webhook(CreateWebhookRequest { webhook: Some(w), request_id: String::new() }).await;
    let mut fields = violations(&assert_err(r, Code::InvalidArgument, "INVALID_FIELD"));
    fields.sort();
    assert_eq!(
        fields,
        vec![
            "webhook.headers[bad header]",
            "webhook.headers[webhook-signature]",
            "webhook.max_concurrency",
            "webhook.max_rate_per_second"
        ]
    );
    assert_eq!(h.count("webhook_endpoints").await, 0);
    let r = c.webhooks.get_webhook(GetWebhookRequest { id: "nope".into() }).await;
    assert_err(r, Code::InvalidArgument, "INVALID_FIELD");
}

async fn enroll_and_complete_arrive_signed(h: &Harness) {
    let mut c = h.clients();
    let receiver = Receiver::ok().await;
    let (hook, secret) = create_hook(&mut c, &receiver.url, &["enrollment.*"]).await;
    let w = world(&mut c).await;
    let e = enroll(&mut c, &w.user.id, &w.published.id).await.unwrap();
    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(got[0].json()["type"], "enrollment.created");
    c.enrollments
        .complete_enrollment(CompleteEnrollmentRequest { id: e.id.clone(), ..Default::default() })
        .await
        .unwrap();
    let got = receiver.wait_for(2, WAIT).await;
    let envelope = got[1].json();
    assert_eq!(envelope["type"], "enrollment.completed");
    assert_eq!(envelope["organization_id"], "acme");
    assert_eq!(envelope["data"]["id"], e.id);
    assert_eq!(envelope["sequence"], 2);
    for r in &got {
        assert!(verify(&secret, r), "signature verifies");
        assert_eq!(r.header("webhook-id"), r.json()["id"].as_str().unwrap());
        assert_eq!(r.header("content-type"), "application/json");
        assert!(r.header("user-agent").starts_with("Coursewire-Webhooks/"));
        let ts: u64 = r.header("webhook-timestamp").parse().unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert!(now.abs_diff(ts) < 60, "timestamps are wall-clock seconds");
    }
    // The body is the stored envelope, byte for byte.
    let req = GetEventRequest { id: envelope["id"].as_str().unwrap().into() };
    let event = c.events.get_event(req).await.unwrap().into_inner();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&got[1].body).unwrap()["data"]["id"], e.id);
    assert_eq!(event.r#type, "enrollment.completed");
    // Other types were filtered out; both deliveries succeeded with one attempt each.
    let ds =
        wait_deliveries(&mut c, &hook.id, |d| d.len() == 2 && d.iter().all(|d| d.state == State::Succeeded as i32))
            .await;
    for d in &ds {
        let a = attempts(&mut c, &d.id).await;
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].status_code, a[0].error.as_str()), (204, ""));
    }
}

async fn failures_are_retried_on_schedule_with_the_same_id(h: &Harness) {
    let mut c = h.clients();
    let receiver = Receiver::start(|n| if n < 2 { Reply::status(500) } else { Reply::status(204) }).await;
    let (hook, _) = create_hook(&mut c, &receiver.url, &[]).await;
    crate::fixtures::domain(&mut c, "retry.example.com").await;
    let mut last_attempt_at = 0;
    for (attempt, base) in [(1, 100), (2, 200)] {
        let ds = wait_deliveries(&mut c, &hook.id, |d| d.len() == 1 && d[0].attempt_count == attempt).await;
        let a = attempts(&mut c, &ds[0].id).await;
        assert_eq!(a.len() as i32, attempt);
        let at = ms(&a.last().unwrap().attempted_at);
        if attempt > 1 {
            assert!(at > last_attempt_at);
        }
        last_attempt_at = at;
        assert_eq!(ds[0].state, State::Pending as i32);
        assert_eq!(ds[0].last_status_code, 500);
        let delay = ms(&ds[0].next_attempt_at) - at;
        assert!(
            (base * 8 / 10..=base * 12 / 10).contains(&delay),
            "attempt {attempt}: next in {delay} ms, base {base}"
        );
        // Nothing happens until the clock reaches the next attempt.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(receiver.received().len() as i32, attempt);
        h.clock.advance(delay);
    }
    let ds = wait_deliveries(&mut c, &hook.id, |d| d[0].state == State::Succeeded as i32).await;
    assert_eq!(ds[0].attempt_count, 3);
    let got = receiver.received();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|r| r.header("webhook-id") == ds[0].event_id), "same webhook-id on every attempt");
    let codes: Vec<i32> = attempts(&mut c, &ds[0].id).await.iter().map(|a| a.status_code).collect();
    assert_eq!(codes, vec![500, 500, 204]);
}

async fn gone_disables_the_endpoint_and_tells_the_others(h: &Harness) {
    let mut c = h.clients();
    let gone = Receiver::start(|_| Reply::status(410)).await;
    let watcher = Receiver::ok().await;
    let (hook, _) = create_hook(&mut c, &gone.url, &["domain.created"]).await;
    let (_, _) = create_hook(&mut c, &watcher.url, &["webhook.disabled"]).await;
    crate::fixtures::domain(&mut c, "gone.example.com").await;
    let ds = wait_deliveries(&mut c, &hook.id, |d| d.len() == 1 && d[0].state == State::Failed as i32).await;
    assert_eq!(ds[0].attempt_count, 1, "410 stops the retries");
    let w = c.webhooks.get_webhook(GetWebhookRequest { id: hook.id.clone() }).await.unwrap().into_inner();
    assert!(w.disabled);
    assert!(w.disabled_reason.contains("410"), "{}", w.disabled_reason);
    let told = watcher.wait_for(1, WAIT).await;
    let envelope = told[0].json();
    assert_eq!(envelope["type"], "webhook.disabled");
    assert_eq!(envelope["data"]["id"], hook.id);
    assert_eq!(envelope["data"]["url"], gone.url);
    assert!(envelope["data"]["reason"].as_str().unwrap().contains("410"));
    // A disabled endpoint gets nothing new.
    crate::fixtures::domain(&mut c, "gone2.example.com").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gone.received().len(), 1);
    assert_eq!(deliveries(&mut c, &hook.id).await.len(), 1);
}

async fn retry_after_is_honoured(h: &Harness) {
    let mut c = h.clients();
    let receiver = Receiver::start(|n| {
        if n == 0 {
            Reply { headers: vec![("retry-after", "30".into())], ..Reply::status(429) }
        } else {
            Reply::status(204)
        }
    })
    .await;
    let (hook, _) = create_hook(&mut c, &receiver.url, &[]).await;
    crate::fixtures::domain(&mut c, "later.example.com").await;
    let ds = wait_deliveries(&mut c, &hook.id, |d| d.len() == 1 && d[0].attempt_count == 1).await;
    let at = ms(&attempts(&mut c, &ds[0].id).await[0].attempted_at);
    assert_eq!(ms(&ds[0].next_attempt_at) - at, 30_000, "Retry-After (30 s) beats the 100 ms schedule");
    h.clock.advance(29_000);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(receiver.received().len(), 1, "not before Retry-After");
    h.clock.advance(1_000);
    receiver.wait_for(2, WAIT).await;
}

async fn exhausted_deliveries_fail_then_retry_and_replay_resend_the_same_id(h: &Harness) {
    let mut c = h.clients();
    let receiver = Receiver::start(|_| Reply { body: "down for maintenance".into(), ..Reply::status(503) }).await;
    let (hook, _) = create_hook(&mut c, &receiver.url, &["domain.*"]).await;
    let started = h.clock.now_ms();
    crate::fixtures::domain(&mut c, "exhaust.example.com").await;
    for attempt in 1..=4 {
        let ds = wait_deliveries(&mut c, &hook.id, |d| d.len() == 1 && d[0].attempt_count == attempt).await;
        if attempt < 4 {
            h.clock.advance(ms(&ds[0].next_attempt_at) - h.clock.now_ms());
        }
    }
    let ds = wait_deliveries(&mut c, &hook.id, |d| d[0].state == State::Failed as i32).await;
    let failed = ds[0].clone();
    assert_eq!(failed.attempt_count, 4, "1 + the 3 delays of the schedule");
    assert!(failed.next_attempt_at.is_none());
    let a = attempts(&mut c, &failed.id).await;
    assert_eq!(a.len(), 4);
    assert_eq!(a[3].response_body, "down for maintenance");
    let only_failed = ListDeliveriesRequest { state: State::Failed as i32, ..Default::default() };
    assert_eq!(c.webhooks.list_deliveries(only_failed).await.unwrap().into_inner().deliveries.len(), 1);

    receiver.script(|_| Reply::status(204));
    let retried = c.webhooks.retry_delivery(RetryDeliveryRequest { id: failed.id.clone() }).await.unwrap().into_inner();
    assert_eq!(retried.state, State::Pending as i32);
    let got = receiver.wait_for(5, WAIT).await;
    assert_eq!(got[4].header("webhook-id"), failed.event_id);
    let ds = wait_deliveries(&mut c, &hook.id, |d| d[0].state == State::Succeeded as i32).await;
    assert_eq!(ds[0].attempt_count, 5);

    let end = Some(crate::fixtures::timestamp(h.clock.now_ms() + 1));
    let start = Some(crate::fixtures::timestamp(started));
    let replay =
        ReplayEventsRequest { webhook_id: hook.id.clone(), start_time: start, end_time: end, only_failed: true };
    let n = c.webhooks.replay_events(replay.clone()).await.unwrap().into_inner().delivery_count;
    assert_eq!(n, 0, "it has succeeded since");
    let all = ReplayEventsRequest { only_failed: false, ..replay };
    assert_eq!(c.webhooks.replay_events(all).await.unwrap().into_inner().delivery_count, 1);
    let got = receiver.wait_for(6, WAIT).await;
    assert_eq!(got[5].header("webhook-id"), failed.event_id, "a replay sends the same event id");
    let ds = deliveries(&mut c, &hook.id).await;
    assert_eq!(ds.len(), 2, "the replay is a delivery of its own");
    let bad = ReplayEventsRequest { webhook_id: hook.id.clone(), ..Default::default() };
    let s = assert_err(c.webhooks.replay_events(bad).await, Code::InvalidArgument, "INVALID_FIELD");
    assert_eq!(violations(&s), vec!["start_time"]);
}

async fn rotation_signs_with_both_secrets(h: &Harness) {
    let mut c = h.clients();
    let receiver = Receiver::ok().await;
    let (hook, old) = create_hook(&mut c, &receiver.url, &[]).await;
    let rotated = c
        .webhooks
        .rotate_webhook_secret(RotateWebhookSecretRequest { id: hook.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.previous_secret, old);
    assert_ne!(rotated.secret, old);
    assert_eq!(ms(&rotated.previous_expires_at) - h.clock.now_ms(), 24 * 3_600_000);
    crate::fixtures::domain(&mut c, "rotate.example.com").await;
    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(got[0].header("webhook-signature").split(' ').count(), 2);
    assert!(verify(&old, &got[0]) && verify(&rotated.secret, &got[0]));
    // After the overlap only the new secret signs.
    h.clock.advance(24 * 3_600_000 + 1);
    crate::fixtures::domain(&mut c, "rotate2.example.com").await;
    let got = receiver.wait_for(2, WAIT).await;
    assert_eq!(got[1].header("webhook-signature").split(' ').count(), 1);
    assert!(verify(&rotated.secret, &got[1]) && !verify(&old, &got[1]));
    let shown = c.webhooks.get_webhook_secret(GetWebhookSecretRequest { id: hook.id.clone() }).await.unwrap();
    assert!(shown.into_inner().previous_secret.is_empty());
}

async fn test_events_go_to_one_endpoint_and_custom_headers_are_sent(h: &Harness) {
    let mut c = h.clients();
    let (one, other) = (Receiver::ok().await, Receiver::ok().await);
    let (hook, secret) = create_hook(&mut c, &one.url, &[]).await;
    create_hook(&mut c, &other.url, &[]).await;
    let patch =
        Webhook { id: hook.id.clone(), headers: [("x-partner".into(), "acme-7".into())].into(), ..Default::default() };
    let mask = FieldMask { paths: vec!["headers".into()] };
    c.webhooks.update_webhook(UpdateWebhookRequest { webhook: Some(patch), update_mask: Some(mask) }).await.unwrap();
    let d = c.webhooks.send_test_event(SendTestEventRequest { id: hook.id.clone() }).await.unwrap().into_inner();
    assert_eq!(d.event_type, "webhook.test");
    let got = one.wait_for(1, WAIT).await;
    assert_eq!(got[0].json()["type"], "webhook.test");
    assert_eq!(got[0].header("x-partner"), "acme-7");
    assert!(verify(&secret, &got[0]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(other.received().is_empty(), "a test event goes to its endpoint only");
}

async fn organizations_only_see_and_get_their_own(h: &Harness) {
    let mut acme = h.clients();
    let other_key = h.other_org("globex").await;
    let mut globex = h.clients_with(&other_key);
    let (acme_rx, globex_rx) = (Receiver::ok().await, Receiver::ok().await);
    let (hook, _) = create_hook(&mut acme, &acme_rx.url, &[]).await;
    create_hook(&mut globex, &globex_rx.url, &[]).await;
    crate::fixtures::domain(&mut acme, "acme-only.example.com").await;
    acme_rx.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(globex_rx.received().is_empty(), "globex never gets acme's events");
    let r = globex.webhooks.get_webhook(GetWebhookRequest { id: hook.id.clone() }).await;
    assert_err(r, Code::NotFound, "NOT_FOUND");
    let r = globex.webhooks.get_webhook_secret(GetWebhookSecretRequest { id: hook.id.clone() }).await;
    assert_err(r, Code::NotFound, "NOT_FOUND");
    let d = deliveries(&mut acme, &hook.id).await;
    let r = globex.webhooks.retry_delivery(RetryDeliveryRequest { id: d[0].id.clone() }).await;
    assert_err(r, Code::NotFound, "NOT_FOUND");
    let r =
        globex.webhooks.list_attempts(ListAttemptsRequest { delivery_id: d[0].id.clone(), ..Default::default() }).await;
    assert_err(r, Code::NotFound, "NOT_FOUND");
    assert!(deliveries(&mut globex, &hook.id).await.is_empty());
}

async fn endpoints_failing_for_five_days_are_disabled(h: &Harness) {
    let mut c = h.clients();
    let failing = Receiver::start(|_| Reply::status(500)).await;
    let watcher = Receiver::ok().await;
    let (hook, _) = create_hook(&mut c, &failing.url, &["domain.*"]).await;
    create_hook(&mut c, &watcher.url, &["webhook.disabled"]).await;
    crate::fixtures::domain(&mut c, "fail1.example.com").await;
    wait_deliveries(&mut c, &hook.id, |d| d.len() == 1 && d[0].attempt_count == 1).await;
    // Four days later it still fails, but not for five days yet.
    h.clock.advance(4 * 86_400_000);
    crate::fixtures::domain(&mut c, "fail2.example.com").await;
    wait_deliveries(&mut c, &hook.id, |d| d.len() == 2 && d.iter().all(|d| d.attempt_count >= 1)).await;
    let w = c.webhooks.get_webhook(GetWebhookRequest { id: hook.id.clone() }).await.unwrap().into_inner();
    assert!(!w.disabled);
    h.clock.advance(86_400_000);
    crate::fixtures::domain(&mut c, "fail3.example.com").await;
    let told = watcher.wait_for(1, WAIT).await;
    assert_eq!(told[0].json()["type"], "webhook.disabled");
    let w = c.webhooks.get_webhook(GetWebhookRequest { id: hook.id.clone() }).await.unwrap().into_inner();
    assert!(w.disabled && w.disabled_reason.contains("failed since"), "{}", w.disabled_reason);
}

async fn a_success_resets_the_failure_streak(h: &Harness) {
    let mut c = h.clients();
    let flaky = Receiver::start(|n| if n == 1 { Reply::status(204) } else { Reply::status(500) }).await;
    let (hook, _) = create_hook(&mut c, &flaky.url, &["domain.*"]).await;
    crate::fixtures::domain(&mut c, "streak1.example.com").await;
    let ds = wait_deliveries(&mut c, &hook.id, |d| d.len() == 1 && d[0].attempt_count == 1).await;
    h.clock.advance(ms(&ds[0].next_attempt_at) - h.clock.now_ms());
    wait_deliveries(&mut c, &hook.id, |d| d[0].state == State::Succeeded as i32).await;
    h.clock.advance(6 * 86_400_000);
    crate::fixtures::domain(&mut c, "streak2.example.com").await;
    wait_deliveries(&mut c, &hook.id, |d| d.len() == 2 && d.iter().all(|d| d.attempt_count >= 1)).await;
    let w = c.webhooks.get_webhook(GetWebhookRequest { id: hook.id.clone() }).await.unwrap().into_inner();
    assert!(!w.disabled, "the streak restarted at the success");
}

backend_tests!(
    endpoints_failing_for_five_days_are_disabled,
    a_success_resets_the_failure_streak,
    endpoint_crud,
    bad_endpoints_are_refused_and_nothing_is_written,
    enroll_and_complete_arrive_signed,
    failures_are_retried_on_schedule_with_the_same_id,
    gone_disables_the_endpoint_and_tells_the_others,
    retry_after_is_honoured,
    exhausted_deliveries_fail_then_retry_and_replay_resend_the_same_id,
    rotation_signs_with_both_secrets,
    test_events_go_to_one_endpoint_and_custom_headers_are_sent,
    organizations_only_see_and_get_their_own,
);

async fn harness_with(config: DispatcherConfig) -> Harness {
    Harness::start_dispatching(Backend::Sqlite, Limits::Memory, "600/1m,5000/1h", config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_reserved_targets_are_refused() {
    let h = harness_with(DispatcherConfig { allow_private_targets: false, ..dispatcher_config() }).await;
    let mut c = h.clients();
    let receiver = Receiver::ok().await;
    let port = receiver.url.split(':').nth(2).unwrap().split('/').next().unwrap().to_string();
    let urls = [
        format!("http://127.0.0.1:{port}/hooks"),
        format!("http://localhost:{port}/hooks"),
        format!("http://[::1]:{port}/hooks"),
        format!("http://2130706433:{port}/hooks"),
        format!("http://0x7f.0.0.1:{port}/hooks"),
        format!("http://017700000001:{port}/hooks"),
        format!("http://[::ffff:127.0.0.1]:{port}/hooks"),
        format!("http://0.0.0.0:{port}/hooks"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[fd00:ec2::254]/latest/meta-data/".to_string(),
        "http://10.0.0.7/hooks".to_string(),
        "http://192.168.1.20/hooks".to_string(),
        "http://[fe80::1]/hooks".to_string(),
    ];
    let mut hooks = Vec::new();
    for url in &urls {
        hooks.push(create_hook(&mut c, url, &["domain.created"]).await.0);
    }
    crate::fixtures::domain(&mut c, "ssrf.example.com").await;
    for (hook, url) in hooks.iter().zip(&urls) {
        let ds = wait_deliveries(&mut c, &hook.id, |d| d.len() == 1 && d[0].attempt_count == 1).await;
        assert_eq!(ds[0].last_error, "refused_target", "{url}");
        assert_eq!(ds[0].state, State::Pending as i32, "retried on schedule like other failures");
    }
    assert!(receiver.received().is_empty(), "nothing reached the loopback receiver");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_does_not_delay_the_others() {
    let config = DispatcherConfig { timeout: Duration::from_secs(15), ..dispatcher_config() };
    let h = harness_with(config).await;
    let mut c = h.clients();
    let fast = Receiver::ok().await;
    create_hook(&mut c, &fast.url, &["domain.created"]).await;
    let latencies = |phase: &'static str| {
        let fast = &fast;
        let mut c = h.clients();
        async move {
            let before = fast.received().len();
            let mut ms = Vec::new();
            for i in 0..40 {
                let started = std::time::Instant::now();
                crate::fixtures::domain(&mut c, &format!("{phase}{i}.example.com")).await;
                let got = fast.wait_for(before + i + 1, WAIT).await;
                ms.push(got[before + i].at.duration_since(started).as_secs_f64() * 1000.0);
            }
            ms.sort_by(f64::total_cmp);
            ms[ms.len() * 99 / 100]
        }
    };
    let alone = latencies("alone").await;
    let slow = Receiver::start(|_| Reply { delay: Duration::from_secs(10), ..Reply::status(204) }).await;
    create_hook(&mut c, &slow.url, &["domain.created"]).await;
    let beside_slow = latencies("beside").await;
    eprintln!("fast endpoint p99: {alone:.1} ms alone, {beside_slow:.1} ms beside one that takes 10 s");
    assert!(slow.received().len() >= 16, "the slow endpoint is busy with its own deliveries");
    assert!(beside_slow <= alone * 3.0 + 50.0, "p99 {beside_slow:.1} ms vs {alone:.1} ms alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_finishes_attempts_in_flight() {
    let mut h = harness_with(dispatcher_config()).await;
    let mut c = h.clients();
    let receiver = Receiver::start(|_| Reply { delay: Duration::from_millis(800), ..Reply::status(204) }).await;
    let (hook, _) = create_hook(&mut c, &receiver.url, &["domain.created"]).await;
    crate::fixtures::domain(&mut c, "graceful.example.com").await;
    receiver.wait_for(1, WAIT).await;
    h.stop_dispatcher().await;
    let ds = deliveries(&mut c, &hook.id).await;
    assert_eq!(ds[0].state, State::Succeeded as i32, "the attempt in flight finished and was recorded");
    assert_eq!(ds[0].attempt_count, 1);
}
