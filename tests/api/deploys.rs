//! Deploys, as an operator makes them: two `coursewire api` replicas and two
//! `coursewire-dispatcher`s on Postgres and RabbitMQ, a steady load of CreateEnrollment calls
//! round-robin over the two APIs (each with a `request_id`, retried once on the other replica
//! when it fails), and a rolling restart: each process in turn gets SIGTERM and is started
//! again once the one before it is ready. Then `kill -9` in place of SIGTERM, for the API that
//! relays and for a dispatcher.
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coursewire_proto::v1::*;
use tokio::sync::watch;
use tonic::transport::Channel;

use coursewire_proto::v1::enrollment_service_client::EnrollmentServiceClient;
use coursewire_proto::v1::user_service_client::UserServiceClient;

use crate::harness::{Authed, Clients, Process, TestDatabase, TestTopology, WithKey, free_port, service_url};
use crate::processes::{acme_key, dispatcher_bin, secrets_key};
use crate::receiver::Receiver;

/// The load: new learners enrolled a second (a CreateUser and a CreateEnrollment each), over both replicas (the machine's 2 cores run
/// the four processes, Postgres, RabbitMQ and this test).
const CALLS_PER_S: u64 = 50;
/// What the relay logs as it takes the lead.
const LEADS: &str = "this replica now relays events";

/// A process whose stderr lines are kept, each with when it was read.
struct Logged {
    process: Process,
    log: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Logged {
    /// Starts `cmd` and waits until it printed `ready`.
    fn start(mut cmd: Command, ready: &'static str) -> Logged {
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let log: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let (is_ready, ready_rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let done = line.contains(ready);
                sink.lock().unwrap().push((Instant::now(), line));
                if done {
                    let _ = is_ready.send(());
                }
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            panic!("never printed {ready:?}: {:#?}", log.lock().unwrap());
        }
        Logged { process: Process(child), log }
    }

    /// When it first logged a line containing `what` after `after`.
    fn logged(&self, what: &str, after: Instant) -> Option<Instant> {
        self.log.lock().unwrap().iter().find(|(at, line)| *at > after && line.contains(what)).map(|(at, _)| *at)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(signal).arg(self.process.0.id().to_string()).status().unwrap();
        assert!(status.success());
    }

    /// Waits (up to 30 s) for the process to end.
    async fn ended(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.process.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "did not stop in 30 s: {:#?}", self.log.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The processes of one deployment, each started again on the same addresses.
struct Deployment {
    /// The flags every process gets: database, RabbitMQ names, secrets key, webhook settings.
    common: Vec<String>,
    api_ports: [u16; 2],
    api_metrics: [u16; 2],
    dispatcher_metrics: [u16; 2],
    apis: [Option<Logged>; 2],
    dispatchers: [Option<Logged>; 2],
    key: String,
    amqp: String,
    /// Dropped (with its database) after the processes stopped.
    _db: TestDatabase,
    /// Last, so it is deleted after the processes stopped (fields drop in order).
    topology: TestTopology,
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    Api(usize),
    Dispatcher(usize),
}

impl Deployment {
    async fn start() -> Deployment {
        let (pg, amqp) = (service_url("COURSEWIRE_TEST_DATABASE_URL"), service_url("COURSEWIRE_TEST_AMQP_URL"));
        let db = TestDatabase::create(&pg).await;
        let topology = TestTopology::new(&amqp, "cwdeploy");
        let key = acme_key(&db.url);
        let secrets_key = secrets_key();
        let common = [
            "--database-url",
            db.url.as_str(),
            "--amqp-url",
            amqp.as_str(),
            "--secrets-key",
            secrets_key.as_str(),
            "--amqp-exchange",
            topology.exchange.as_str(),
            "--amqp-queue",
            topology.queue.as_str(),
            "--webhook-allow-private-targets",
            "--webhook-timeout",
            "2s",
        ];
        let mut d = Deployment {
            common: common.iter().map(|s| s.to_string()).collect(),
            api_ports: [free_port(), free_port()],
            api_metrics: [free_port(), free_port()],
            dispatcher_metrics: [free_port(), free_port()],
            apis: [None, None],
            dispatchers: [None, None],
            key,
            amqp,
            _db: db,
            topology,
        };
        // The first API leads the relay before the second starts.
        for slot in [Slot::Api(0), Slot::Api(1), Slot::Dispatcher(0), Slot::Dispatcher(1)] {
            d.launch(slot);
        }
        d
    }

    /// Starts the process of `slot` and waits until it is ready.
    fn launch(&mut self, slot: Slot) {
        match slot {
            Slot::Api(i) => {
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_coursewire"));
                cmd.env_remove("COURSEWIRE_REDIS_URL").args(&self.common);
                cmd.args(["--metrics-listen", &format!("127.0.0.1:{}", self.api_metrics[i])]);
                cmd.args([
                    "api",
                    "--listen",
                    &format!("127.0.0.1:{}", self.api_ports[i]),
                    "--rate-limits",
                    "100000/1m",
                ]);
                self.apis[i] = Some(Logged::start(cmd, "listening"));
            }
            Slot::Dispatcher(i) => {
                let mut cmd = Command::new(dispatcher_bin());
                cmd.args(&self.common);
                cmd.args(["--metrics-listen", &format!("127.0.0.1:{}", self.dispatcher_metrics[i])]);
                self.dispatchers[i] = Some(Logged::start(cmd, "consuming events"));
            }
        }
    }

    fn process(&mut self, slot: Slot) -> &mut Option<Logged> {
        match slot {
            Slot::Api(i) => &mut self.apis[i],
            Slot::Dispatcher(i) => &mut self.dispatchers[i],
        }
    }

    /// The API that relays now: the last to log that it took the lead.
    fn leader(&self) -> usize {
        let took = |i: usize| {
            let p = self.apis[i].as_ref()?;
            p.log.lock().unwrap().iter().rev().find(|(_, l)| l.contains(LEADS)).map(|(at, _)| *at)
        };
        match (took(0), took(1)) {
            (Some(a), Some(b)) => usize::from(b > a),
            (Some(_), None) => 0,
            (None, Some(_)) => 1,
            (None, None) => panic!("no API leads the relay"),
        }
    }

    /// Stops `slot` with `signal` and starts it again once it ended. When it is the API that
    /// relays, returns how long after the signal the other one led.
    async fn restart(&mut self, slot: Slot, signal: &str) -> Option<Duration> {
        let led = matches!(slot, Slot::Api(i) if i == self.leader());
        let mut process = self.process(slot).take().expect("running");
        let sent = Instant::now();
        process.signal(signal);
        let status = process.ended().await;
        if signal == "-TERM" {
            assert!(
                status.success(),
                "{slot:?} exits cleanly on SIGTERM: {status}: {:#?}",
                process.log.lock().unwrap()
            );
        }
        let exited = sent.elapsed();
        let takeover = if let (true, Slot::Api(i)) = (led, slot) {
            let other = self.apis[1 - i].as_ref().expect("the other API runs");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(at) = other.logged(LEADS, sent) {
                    break Some(at - sent);
                }
                assert!(Instant::now() < deadline, "no API took the relay over within 10 s");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        } else {
            None
        };
        drop(process);
        self.launch(slot);
        eprintln!(
            "{slot:?} {signal}: ended in {exited:?}, ready again in {:?}; relay taken over in {takeover:?}",
            sent.elapsed()
        );
        takeover
    }

    async fn clients(&self, i: usize) -> Clients {
        let channel = Channel::from_shared(format!("http://127.0.0.1:{}", self.api_ports[i])).unwrap().connect_lazy();
        crate::harness::clients_for(channel, WithKey(format!("Bearer {}", self.key).parse().unwrap()))
    }
}

/// One replica's clients, as the load uses them.
#[derive(Clone)]
struct Api {
    users: UserServiceClient<Authed>,
    enrollments: EnrollmentServiceClient<Authed>,
}

impl Api {
    fn of(c: &Clients) -> Api {
        Api { users: c.users.clone(), enrollments: c.enrollments.clone() }
    }
}

/// A steady load until `stop`: each tick a new learner (`{phase}-{n}@example.com`) is created
/// and enrolled, round-robin over `apis`, so the load lasts however long the restart takes on a
/// busy machine. A call that fails is retried once, on the other replica, with the same
/// `request_id`. Returns each enrollment's id, or why a call failed after its retry.
async fn load(
    apis: [Api; 2],
    phase: &'static str,
    course: String,
    stop: watch::Receiver<bool>,
) -> Vec<Result<String, String>> {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / CALLS_PER_S));
    let mut calls = Vec::new();
    for n in 0.. {
        tick.tick().await;
        if *stop.borrow() {
            break;
        }
        let (first, other) = (apis[n % 2].clone(), apis[(n + 1) % 2].clone());
        let course = course.clone();
        calls.push(tokio::spawn(async move {
            let describe = |s: tonic::Status| format!("{}: {}", s.code(), s.message());
            let user = CreateUserRequest {
                user: Some(User { email: format!("{phase}-{n}@example.com"), ..Default::default() }),
                request_id: format!("user-{phase}-{n}"),
                ..Default::default()
            };
            let user_id = match create_user(first.users.clone(), user.clone()).await {
                Ok(id) => id,
                Err(_) => create_user(other.users.clone(), user).await.map_err(describe)?,
            };
            let request = CreateEnrollmentRequest {
                request_id: format!("enroll-{phase}-{n}"),
                user_id,
                published_course_id: course,
                ..Default::default()
            };
            match enroll(first.enrollments, request.clone()).await {
                Ok(id) => Ok(id),
                Err(_) => enroll(other.enrollments, request).await.map_err(describe),
            }
        }));
    }
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    results
}

async fn create_user(
    mut client: UserServiceClient<Authed>,
    request: CreateUserRequest,
) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(request);
    request.set_timeout(Duration::from_secs(10));
    Ok(client.create_user(request).await?.into_inner().id)
}

async fn enroll(
    mut client: EnrollmentServiceClient<Authed>,
    request: CreateEnrollmentRequest,
) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(request);
    request.set_timeout(Duration::from_secs(10));
    Ok(client.create_enrollment(request).await?.into_inner().id)
}

/// The enrollment an event (or a POST of it) is about.
fn subject(envelope: &serde_json::Value) -> String {
    envelope["data"]["id"].as_str().expect("an enrollment event").to_string()
}

/// Counts per key.
fn tally<'a>(keys: impl Iterator<Item = &'a str>) -> HashMap<&'a str, usize> {
    let mut counts = HashMap::new();
    for key in keys {
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// Waits until every enrollment of `wanted` was published and POSTed (panics after `within`).
async fn arrived(
    wanted: &HashSet<String>,
    published: &Arc<tokio::sync::Mutex<Vec<crate::amqp::Received>>>,
    receiver: &Receiver,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let on_bus: HashSet<String> = published
            .lock()
            .await
            .iter()
            .map(|m| subject(&serde_json::from_str(&m.body).unwrap()))
            .filter(|e| wanted.contains(e))
            .collect();
        let posted: HashSet<String> =
            receiver.received().iter().map(|r| subject(&r.json())).filter(|e| wanted.contains(e)).collect();
        if on_bus.len() == wanted.len() && posted.len() == wanted.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "of {} enrollments, {} were published and {} POSTed",
            wanted.len(),
            on_bus.len(),
            posted.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The rolling restart sends nothing twice: 0 failed calls (after one retry on the other
/// replica), 0 lost events, 0 duplicate publishes (a queue of our own bound to the exchange
/// counts message ids), 0 duplicate POSTs (by `webhook-id`), and every POST the receiver got
/// is in ListAttempts. Then `kill -9` of the relaying API and of a dispatcher: 0 lost, and
/// every duplicate carries its event's `webhook-id`.
#[cfg_attr(not(all(cw_postgres, cw_amqp)), ignore = "skipped: Postgres or RabbitMQ is not configured")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_sends_nothing_twice_and_a_kill_loses_nothing() {
    let mut d = Deployment::start().await;
    let began = Instant::now();
    let receiver = Receiver::ok().await;
    let (_bus, published) = crate::amqp::consume(&d.amqp, &d.topology, "enrollment.created").await;
    let mut c = d.clients(0).await;
    let (hook, _) = crate::webhooks::create_hook(&mut c, &receiver.url, &["enrollment.created"]).await;
    let world = crate::fixtures::world(&mut c).await;
    let apis = [Api::of(&d.clients(0).await), Api::of(&d.clients(1).await)];

    // The rolling restart, under load: each process in turn, the next once this one is ready.
    let (stop, stopped) = watch::channel(false);
    let calls = tokio::spawn(load(apis.clone(), "rolling", world.published.id.clone(), stopped));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut takeovers = Vec::new();
    for slot in [Slot::Api(0), Slot::Api(1), Slot::Dispatcher(0), Slot::Dispatcher(1)] {
        takeovers.extend(d.restart(slot, "-TERM").await);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.send_replace(true);
    let results = calls.await.unwrap();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{} of {} calls failed after a retry: {failed:?}", failed.len(), results.len());
    let enrolled: HashSet<String> = results.into_iter().map(Result::unwrap).collect();
    arrived(&enrolled, &published, &receiver, Duration::from_secs(20)).await;
    // Time for any second copy to arrive before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let messages = published.lock().await;
    let bodies: Vec<serde_json::Value> = messages.iter().map(|m| serde_json::from_str(&m.body).unwrap()).collect();
    let publishes = tally(messages.iter().map(|m| m.message_id.as_str()));
    let twice: Vec<_> = publishes.iter().filter(|(_, n)| **n > 1).collect();
    assert_eq!(publishes.len(), enrolled.len(), "one event per enrollment, none lost");
    assert!(bodies.iter().all(|b| enrolled.contains(&subject(b))));
    assert!(twice.is_empty(), "published twice: {twice:?}");
    let published_once = publishes.len();
    drop(messages);
    let posts = receiver.received();
    let per_event = tally(posts.iter().map(|r| r.header("webhook-id")));
    let twice: Vec<_> = per_event.iter().filter(|(_, n)| **n > 1).collect();
    assert_eq!(per_event.len(), enrolled.len(), "one delivery per enrollment, none lost");
    assert!(twice.is_empty(), "POSTed twice: {twice:?}");
    // Every POST is in the attempt log.
    let logged = attempts_per_event(&mut c, &hook.id).await;
    let unlogged: Vec<_> =
        per_event.iter().filter(|(id, n)| logged.get(**id).copied().unwrap_or(0) != **n).map(|(id, _)| id).collect();
    assert!(unlogged.is_empty(), "POSTs missing from ListAttempts: {unlogged:?}");
    let rolled = began.elapsed();
    eprintln!(
        "rolling restart: {} calls, 0 failed; {} events published once each; {} POSTs, one per event, all in \
         ListAttempts; relay taken over {takeovers:?} after SIGTERM",
        enrolled.len(),
        published_once,
        posts.len()
    );

    // `kill -9` of the relaying API, then of a dispatcher, under load.
    let (stop, stopped) = watch::channel(false);
    let calls = tokio::spawn(load(apis, "killed", world.published.id.clone(), stopped));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let leader = d.leader();
    let killed_takeover = d.restart(Slot::Api(leader), "-KILL").await;
    d.restart(Slot::Dispatcher(0), "-KILL").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.send_replace(true);
    let results = calls.await.unwrap();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{} of {} calls failed after a retry: {failed:?}", failed.len(), results.len());
    let killed: HashSet<String> = results.into_iter().map(Result::unwrap).collect();
    // The killed dispatcher's leases lapse after 5 s; what it held is sent again then.
    arrived(&killed, &published, &receiver, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let posts: Vec<_> = receiver.received().into_iter().filter(|r| killed.contains(&subject(&r.json()))).collect();
    for post in &posts {
        assert_eq!(post.header("webhook-id"), post.json()["id"].as_str().unwrap(), "a POST names its event");
    }
    let messages = published.lock().await;
    let publishes = messages.iter().filter(|m| killed.contains(&subject(&serde_json::from_str(&m.body).unwrap())));
    let publishes = publishes.count();
    let events = tally(posts.iter().map(|r| r.header("webhook-id"))).len();
    assert_eq!(events, killed.len(), "none lost");
    eprintln!(
        "kill -9: {} calls, 0 failed, 0 lost; {} publishes and {} POSTs for {} events (duplicates carry their \
         event's webhook-id); relay taken over {killed_takeover:?} after kill -9; {:?} in all ({rolled:?} for the \
         rolling restart)",
        killed.len(),
        publishes,
        posts.len(),
        events,
        began.elapsed()
    );
}

/// POSTs per event at `receiver`, once every enrollment of `wanted` was POSTed, after a second
/// for any second copy to arrive.
async fn posts_per_event(receiver: &Receiver, wanted: &HashSet<String>) -> HashMap<String, usize> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let posted: HashSet<String> = receiver.received().iter().map(|r| subject(&r.json())).collect();
        if wanted.is_subset(&posted) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} enrollments POSTed",
            wanted.intersection(&posted).count(),
            wanted.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let posts = receiver.received();
    tally(posts.iter().map(|r| r.header("webhook-id"))).into_iter().map(|(id, n)| (id.to_string(), n)).collect()
}

/// Attempts in ListAttempts per event, for every delivery of `webhook_id`.
async fn attempts_per_event(c: &mut Clients, webhook_id: &str) -> HashMap<String, usize> {
    let mut logged = HashMap::new();
    let mut page_token = String::new();
    loop {
        let list =
            ListDeliveriesRequest { webhook_id: webhook_id.into(), page_size: 1000, page_token, ..Default::default() };
        let page = c.webhooks.list_deliveries(list).await.unwrap().into_inner();
        for delivery in page.deliveries {
            let list = ListAttemptsRequest { delivery_id: delivery.id.clone(), page_size: 100, ..Default::default() };
            let attempts = c.webhooks.list_attempts(list).await.unwrap().into_inner().attempts;
            *logged.entry(delivery.event_id).or_default() += attempts.len();
        }
        if page.next_page_token.is_empty() {
            return logged;
        }
        page_token = page.next_page_token;
    }
}

/// The all-in-one (SQLite, the dispatcher in-process) stopped with SIGTERM under load and
/// started again: every enrollment is POSTed exactly once, and every POST is in ListAttempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_all_in_one_stopped_under_load_posts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics) = (free_port(), free_port());
    let start = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_coursewire"));
        cmd.current_dir(dir.path())
            .env_remove("COURSEWIRE_DATABASE_URL")
            .env_remove("COURSEWIRE_AMQP_URL")
            .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .arg("--webhook-allow-private-targets");
        Logged::start(cmd, "listening")
    };
    let mut app = start();
    let key = app
        .log
        .lock()
        .unwrap()
        .iter()
        .find_map(|(_, l)| l.split_whitespace().find(|w| w.starts_with("sk_")).map(String::from));
    let key = key.expect("the bootstrap key is printed");
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect_lazy();
    let mut c = crate::harness::clients_for(channel, WithKey(format!("Bearer {key}").parse().unwrap()));
    let receiver = Receiver::ok().await;
    let (hook, _) = crate::webhooks::create_hook(&mut c, &receiver.url, &["enrollment.created"]).await;
    let world = crate::fixtures::world(&mut c).await;
    let (stop, stopped) = watch::channel(false);
    let api = Api::of(&c);
    let calls = tokio::spawn(load([api.clone(), api], "all-in-one", world.published.id.clone(), stopped));
    tokio::time::sleep(Duration::from_millis(700)).await;
    app.signal("-TERM");
    let status = app.ended().await;
    assert!(status.success(), "SIGTERM exits cleanly: {status}");
    drop(app);
    let _app = start();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.send_replace(true);
    // Calls made while it was down fail (there is no other replica); those answered count.
    let results = calls.await.unwrap();
    let down = results.iter().position(Result::is_err).unwrap_or(results.len());
    let answered_after = down == results.len() || results[down..].iter().any(Result::is_ok);
    assert!(down > 0 && answered_after, "calls were answered on both sides of the restart: {results:?}");
    let enrolled: HashSet<String> = results.into_iter().filter_map(Result::ok).collect();
    let posts = posts_per_event(&receiver, &enrolled).await;
    let twice: Vec<_> = posts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "POSTed twice: {twice:?}");
    let logged = attempts_per_event(&mut c, &hook.id).await;
    let unlogged: Vec<_> = posts.iter().filter(|(id, n)| logged.get(id.as_str()).copied() != Some(**n)).collect();
    assert!(unlogged.is_empty(), "POSTs missing from ListAttempts: {unlogged:?}");
}
