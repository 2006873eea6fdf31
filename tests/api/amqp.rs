//! The relay against real RabbitMQ (`COURSEWIRE_TEST_AMQP_URL`): properties and bodies,
//! no loss through a broker outage (a TCP proxy we cut), replays after a crash between
//! publish and mark, and two relays on one Postgres.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use coursewire_api::events::amqp::AmqpBus;
use coursewire_api::events::relay::{Hub, Relay};
use coursewire_core::events::bus::{Bus, Confirm, Outgoing};
use coursewire_core::events::topology::Topology;
use coursewire_proto::v1::*;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::fixtures::*;
use crate::harness::{Backend, Harness, Limits, TestTopology};
use crate::proxy::Proxy;
use crate::receiver::{Receiver, Reply};
use coursewire_core::trace::TraceContext;
use coursewire_dispatcher::Source;

fn amqp_url() -> String {
    crate::harness::service_url("COURSEWIRE_TEST_AMQP_URL")
}

/// Exchange and queue names of this test only, deleted when it ends.
fn topology(url: &str) -> TestTopology {
    TestTopology::new(url, "test")
}

/// The same names, reached through `proxy`.
fn through(proxy: &Proxy, t: &Topology) -> Topology {
    let url = t.url.replacen(&broker_addr(&t.url), &format!("127.0.0.1:{}", proxy.port), 1);
    Topology { url, ..t.clone() }
}

pub(crate) struct Received {
    pub(crate) body: String,
    pub(crate) message_id: String,
    kind: String,
    content_type: String,
    delivery_mode: u8,
    org: String,
    traceparent: Option<String>,
}

/// A consumer on its own queue bound to `pattern`, collecting everything it receives.
pub(crate) async fn consume(url: &str, t: &Topology, pattern: &str) -> (Connection, Arc<Mutex<Vec<Received>>>) {
    let conn = Connection::connect(url, ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    t.declare(&ch).await.unwrap();
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.queue_bind(
        q.name().clone(),
        t.exchange.as_str().into(),
        pattern.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(q.name().clone(), "test".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let p = &d.properties;
            let header = |name: &str| match p.headers().as_ref().and_then(|h| h.inner().get(name).cloned()) {
                Some(AMQPValue::LongString(s)) => Some(s.to_string()),
                _ => None,
            };
            sink.lock().await.push(Received {
                body: String::from_utf8(d.data.clone()).unwrap(),
                message_id: p.message_id().as_ref().map(|s| s.to_string()).unwrap_or_default(),
                kind: p.kind().as_ref().map(|s| s.to_string()).unwrap_or_default(),
                content_type: p.content_type().as_ref().map(|s| s.to_string()).unwrap_or_default(),
                delivery_mode: p.delivery_mode().unwrap_or(0),
                org: header("organization_id").unwrap_or_default(),
                traceparent: header("traceparent"),
            });
            let _ = d.ack(BasicAckOptions::default()).await;
        }
    });
    (conn, got)
}

/// Waits until `n` distinct events arrived (redeliveries after an outage do not count).
async fn wait_for(got: &Arc<Mutex<Vec<Received>>>, n: usize, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    let distinct = || async {
        got.lock().await.iter().map(|r| r.message_id.clone()).collect::<std::collections::HashSet<_>>().len()
    };
    while distinct().await < n {
        assert!(tokio::time::Instant::now() < deadline, "received {} of {n}", distinct().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn amqp_harness(backend: Backend, bus: Arc<dyn Bus>) -> Harness {
    Harness::start_full(backend, Limits::Memory, "1000000/1m", bus, Hub::default(), None).await
}

#[cfg_attr(not(cw_amqp), ignore = "skipped: COURSEWIRE_TEST_AMQP_URL is not set")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_get_events_with_properties_and_the_logged_body() {
    let url = amqp_url();
    let t = topology(&url);
    let (_conn, got) = consume(&url, &t, "enrollment.*").await;
    let h = amqp_harness(Backend::Sqlite, AmqpBus::start(t.clone())).await;
    let mut c = h.clients();
    let w = world(&mut c).await;
    let e = enroll(&mut c, &w.user.id, &w.published.id).await.unwrap();
    c.enrollments
        .complete_enrollment(CompleteEnrollmentRequest { id: e.id.clone(), ..Default::default() })
        .await
        .unwrap();
    wait_for(&got, 2, Duration::from_secs(10)).await;
    let got = got.lock().await;
    assert_eq!(
        got.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(),
        ["enrollment.created", "enrollment.completed"],
        "only the bound routing keys, in order"
    );
    for r in got.iter() {
        let logged: String = sqlx::query_scalar("SELECT body FROM events WHERE id = $1")
            .bind(&r.message_id)
            .fetch_one(h.db.pool())
            .await
            .unwrap();
        assert_eq!(r.body, logged, "the body is the logged envelope");
        assert_eq!(r.content_type, "application/json");
        assert_eq!(r.delivery_mode, 2, "persistent");
        assert_eq!(r.org, "acme");
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["type"], r.kind.as_str());
    }
    // Consumers may see a message before the relay has marked its row (it marks after the
    // confirm), so wait for the marks.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if h.unpublished().await == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "every event is marked published after its confirm");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// W3C Trace Context from the call to each hop: the call is a span in the caller's trace;
/// the event's AMQP message names that span, and every webhook attempt is a child span of
/// it (same trace id, a span of its own). A call without a `traceparent`, or with a
/// malformed one, starts a new trace.
#[cfg_attr(not(cw_amqp), ignore = "skipped: COURSEWIRE_TEST_AMQP_URL is not set")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_links_the_call_the_publish_and_each_attempt() {
    let url = amqp_url();
    let t = topology(&url);
    let (_conn, got) = consume(&url, &t, "user.*").await;
    let dispatcher = Some((crate::harness::dispatcher_config(), Source::Amqp(t.0.clone())));
    let bus = AmqpBus::start(t.clone());
    let h = Harness::start_full(Backend::Sqlite, Limits::Memory, "1000000/1m", bus, Hub::default(), dispatcher);
    let h = h.await;
    let mut c = h.clients();
    let receiver = Receiver::start(|_| Reply::status(204)).await;
    crate::webhooks::create_hook(&mut c, &receiver.url, &["user.*"]).await;

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = format!("00-{trace}-00f067aa0ba902b7-01");
    let traced = |email: &str, traceparent: &str| {
        let user = User { email: email.into(), ..Default::default() };
        let mut req = tonic::Request::new(CreateUserRequest { user: Some(user), ..Default::default() });
        req.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
        req
    };
    c.users.create_user(traced("traced@example.com", &caller)).await.unwrap();
    c.users.create_user(traced("malformed@example.com", "00-not-a-trace-01")).await.unwrap();
    crate::fixtures::user(&mut c, "untraced@example.com").await;
    wait_for(&got, 3, Duration::from_secs(10)).await;
    let posts = receiver.wait_for(3, Duration::from_secs(10)).await;

    let parse = |s: &str| TraceContext::parse(s).unwrap_or_else(|| panic!("not a traceparent: {s:?}"));
    let email = |body: &str| {
        let event: serde_json::Value = serde_json::from_str(body).unwrap();
        event["data"]["email"].as_str().unwrap().to_string()
    };
    let got = got.lock().await;
    let published: HashMap<String, TraceContext> =
        got.iter().map(|r| (email(&r.body), parse(r.traceparent.as_deref().unwrap()))).collect();
    let attempted: HashMap<String, TraceContext> =
        posts.iter().map(|r| (email(std::str::from_utf8(&r.body).unwrap()), parse(r.header("traceparent")))).collect();
    let caller = parse(&caller);
    let (publish, attempt) = (published["traced@example.com"], attempted["traced@example.com"]);
    assert_eq!((publish.trace_id, attempt.trace_id), (caller.trace_id, caller.trace_id), "one trace");
    let spans = [caller.span_id, publish.span_id, attempt.span_id];
    assert!(spans[0] != spans[1] && spans[1] != spans[2] && spans[0] != spans[2], "each hop is its own span");
    for other in ["malformed@example.com", "untraced@example.com"] {
        assert_ne!(published[other].trace_id, caller.trace_id, "{other} starts its own trace");
        assert_eq!(published[other].trace_id, attempted[other].trace_id, "{other}: its publish and attempt share it");
    }
}

fn broker_addr(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap();
    let host = rest.rsplit('@').next().unwrap().split('/').next().unwrap();
    if host.contains(':') { host.to_string() } else { format!("{host}:5672") }
}

/// Checks every enrollment's events arrived, each resource's in sequence order; returns duplicates.
fn check_order(got: &[Received], enrollments: usize) -> usize {
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut duplicates = 0;
    for r in got {
        if !seen.insert(r.message_id.clone()) {
            duplicates += 1;
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let resource = v["data"]["id"].as_str().unwrap().to_string();
        let seq = v["sequence"].as_i64().unwrap();
        let prev = last.insert(resource.clone(), seq).unwrap_or(0);
        assert!(seq > prev, "{resource}: sequence {seq} after {prev}");
    }
    let created = got
        .iter()
        .filter(|r| r.kind == "enrollment.created")
        .map(|r| &r.message_id)
        .collect::<std::collections::HashSet<_>>();
    assert_eq!(created.len(), enrollments);
    duplicates
}

/// The API's bus connects and declares the topology at start, with no event written yet (an
/// internal service may bind its own queue first, as docs/events.md tells it to), and health
/// says whether the broker is reachable from the first moment.
#[cfg_attr(not(cw_amqp), ignore = "skipped: COURSEWIRE_TEST_AMQP_URL is not set")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topology_is_declared_at_start_and_health_tells_the_truth() {
    let url = amqp_url();
    let proxy = Proxy::start(&broker_addr(&url)).await;
    proxy.set_cut(true);
    let t = topology(&url);
    let h = amqp_harness(Backend::Sqlite, AmqpBus::start(through(&proxy, &t))).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(h.channel());
    let broker = |health: &mut tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>| {
        let mut health = health.clone();
        async move {
            let req = tonic_health::pb::HealthCheckRequest { service: "coursewire.broker".into() };
            health.check(req).await.unwrap().into_inner().status
        }
    };
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_ne!(broker(&mut health).await, serving, "never reached the broker: not serving");
    h.clients().account.ping(PingRequest {}).await.expect("the API serves without the broker");

    proxy.set_cut(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker(&mut health).await != serving {
        assert!(tokio::time::Instant::now() < deadline, "the broker came back but health did not say so");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.count("events").await, 0);
    let connection = Connection::connect(&url, ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let passive = lapin::options::ExchangeDeclareOptions { passive: true, ..Default::default() };
    channel
        .exchange_declare(t.exchange.as_str().into(), lapin::ExchangeKind::Topic, passive, FieldTable::default())
        .await
        .expect("the exchange exists before the first event");
}

#[cfg_attr(not(cw_amqp), ignore = "skipped: COURSEWIRE_TEST_AMQP_URL is not set")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_nothing() {
    let url = amqp_url();
    let proxy = Proxy::start(&broker_addr(&url)).await;
    let t = topology(&url);
    let (_conn, got) = consume(&url, &t, "#").await;
    let h = amqp_harness(Backend::Sqlite, AmqpBus::start(through(&proxy, &t))).await;
    let mut c = h.clients();
    let w = world(&mut c).await;
    let mut total_events = 4;
    for i in 0..500 {
        if i == 150 {
            proxy.set_cut(true);
        }
        if i == 350 {
            // About 10 s of outage while the API keeps committing.
            tokio::time::sleep(Duration::from_secs(8)).await;
            assert!(!*h.hub.bus_connected.borrow(), "health reports the broker down");
            h.clients().account.ping(PingRequest {}).await.expect("the API keeps answering");
            proxy.set_cut(false);
        }
        let u = user(&mut c, &format!("o{i}@example.com")).await;
        enroll(&mut c, &u.id, &w.published.id).await.unwrap();
        total_events += 3; // user.created, domain_user.created, enrollment.created
    }
    wait_for(&got, total_events, Duration::from_secs(60)).await;
    let got = got.lock().await;
    let duplicates = check_order(&got, 500);
    eprintln!("outage: {} messages for {total_events} events, {duplicates} duplicates", got.len());
    assert!(*h.hub.bus_connected.borrow());
}

/// A bus that publishes, then fails once as if the relay died before marking the rows.
struct CrashAfterPublish {
    inner: Arc<AmqpBus>,
    crashed: AtomicBool,
}

#[tonic::async_trait]
impl Bus for CrashAfterPublish {
    async fn send(&self, batch: Vec<Outgoing>) -> anyhow::Result<Confirm> {
        let confirm = self.inner.send(batch).await?;
        let crash = !self.crashed.swap(true, Ordering::SeqCst);
        Ok(Box::pin(async move {
            confirm.await?;
            if crash {
                anyhow::bail!("simulated crash between the confirm and moving the cursor");
            }
            Ok(())
        }))
    }
    fn connected(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.connected()
    }
}

#[cfg_attr(not(cw_amqp), ignore = "skipped: COURSEWIRE_TEST_AMQP_URL is not set")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_publish_and_mark_publishes_again() {
    let url = amqp_url();
    let t = topology(&url);
    let (_conn, got) = consume(&url, &t, "#").await;
    let bus = Arc::new(CrashAfterPublish { inner: AmqpBus::start(t.clone()), crashed: AtomicBool::new(false) });
    let h = amqp_harness(Backend::Sqlite, bus).await;
    let mut c = h.clients();
    let d = domain(&mut c, "crash.example.com").await;
    // One event, published twice.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.lock().await.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the event was not published again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = got.lock().await;
    assert!(got.iter().all(|r| r.kind == "domain.created"));
    assert_eq!(got[0].message_id, got[1].message_id, "the same event again, never lost");
    assert!(got[0].body.contains(&d.id));
}

#[cfg_attr(not(all(cw_postgres, cw_amqp)), ignore = "skipped: Postgres or RabbitMQ is not configured")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_postgres_share_the_work_without_loss() {
    let url = amqp_url();
    let t = topology(&url);
    let (_conn, got) = consume(&url, &t, "#").await;
    let h = amqp_harness(Backend::Postgres, AmqpBus::start(t.clone())).await;
    // A second API replica's relay on the same database: it waits while the first leads.
    let second = Relay {
        db: h.db.clone(),
        bus: AmqpBus::start(t.clone()),
        hub: Arc::new(Hub::default()),
        clock: h.clock.clone(),
    };
    let second = tokio::spawn(second.run(std::future::pending()));
    let mut c = h.clients();
    let w = world(&mut c).await;
    for i in 0..100 {
        let u = user(&mut c, &format!("p{i}@example.com")).await;
        enroll(&mut c, &u.id, &w.published.id).await.unwrap();
    }
    let total = 4 + 300;
    wait_for(&got, total, Duration::from_secs(30)).await;
    let duplicates = check_order(&got.lock().await, 100);
    assert_eq!(duplicates, 0, "one relay leads; the other publishes nothing twice");
    second.abort();
}
