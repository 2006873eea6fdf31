//! Webhooks through real processes: the all-in-one `coursewire` delivering to the README's
//! Python receiver, and `coursewire api` + two `coursewire-dispatcher`s on Postgres and
//! RabbitMQ, one of them killed with SIGKILL mid-way.
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coursewire_proto::v1::*;
use tonic::transport::Channel;

use crate::harness::{Clients, Process, WithKey, free_port, service_url};
use crate::receiver::{Receiver, Reply};

pub(crate) fn dispatcher_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_coursewire")).with_file_name("coursewire-dispatcher");
    assert!(bin.exists(), "{} is built by `cargo test --workspace`", bin.display());
    bin
}

/// Starts `cmd`, waits for a stderr line containing `ready`, and returns the process and
/// every stderr line up to it.
pub(crate) fn spawn(mut cmd: Command, ready: &str) -> (Process, Vec<String>) {
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref().map_while(Result::ok) {
        let done = line.contains(ready);
        seen.push(line);
        if done {
            break;
        }
    }
    assert!(seen.last().is_some_and(|l| l.contains(ready)), "never printed {ready:?}: {seen:#?}");
    std::thread::spawn(move || lines.for_each(drop));
    (Process(child), seen)
}

/// The all-in-one `coursewire` as a user starts it (embedded SQLite, in a directory of its
/// own), with `extra` flags, once it listens.
pub(crate) struct AllInOne {
    pub server: Process,
    pub port: u16,
    pub metrics_port: u16,
    /// The bootstrap key it printed.
    pub key: String,
    /// Last: removed after the process stopped (fields drop in order).
    _dir: tempfile::TempDir,
}

impl AllInOne {
    /// Its working directory (its SQLite database is in there), for CLI commands on it.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }
}

pub(crate) fn all_in_one(extra: &[&str]) -> AllInOne {
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coursewire"));
    cmd.current_dir(dir.path())
        .env_remove("COURSEWIRE_DATABASE_URL")
        .env_remove("COURSEWIRE_AMQP_URL")
        .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .args(extra);
    let (server, lines) = spawn(cmd, "listening");
    let key = lines.iter().find_map(|l| l.split_whitespace().find(|w| w.starts_with("sk_")).map(String::from));
    AllInOne { server, port, metrics_port, key: key.expect("the bootstrap key is printed"), _dir: dir }
}

pub(crate) async fn clients(port: u16, key: &str) -> Clients {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.unwrap();
    crate::harness::clients_for(channel, WithKey(format!("Bearer {key}").parse().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_in_one_delivers_to_the_readme_python_receiver() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme.split("<!-- partner-receiver:start -->").nth(1).unwrap();
    let script = block.split("<!-- partner-receiver:end -->").next().unwrap();
    let script = script.trim().trim_start_matches("```python").trim_end_matches("```");

    let mut app = all_in_one(&["--webhook-allow-private-targets"]);
    let mut c = clients(app.port, &app.key).await;

    let receiver_port = free_port();
    let url = format!("http://127.0.0.1:{receiver_port}/");
    let (_, secret) = crate::webhooks::create_hook(&mut c, &url, &["enrollment.*"]).await;
    let mut python = Command::new("python3")
        .args(["-c", script])
        .env("COURSEWIRE_WEBHOOK_SECRET", &secret)
        .env("PORT", receiver_port.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let python_out = BufReader::new(python.stdout.take().unwrap());
    let _python = Process(python);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", receiver_port)).is_err() {
        assert!(Instant::now() < deadline, "the Python receiver did not start (is standardwebhooks installed?)");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A forged request is refused by the receiver (it really verifies).
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", receiver_port)).unwrap();
    let forged = "POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\
        webhook-id: evt_forged\r\nwebhook-timestamp: 1700000000\r\nwebhook-signature: v1,AAAA\r\n\r\n{}";
    std::io::Write::write_all(&mut socket, forged.as_bytes()).unwrap();
    let mut answer = [0u8; 12];
    std::io::Read::read_exact(&mut socket, &mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.0 400", "the receiver refuses a bad signature");

    let w = crate::fixtures::world(&mut c).await;
    let e = crate::fixtures::enroll(&mut c, &w.user.id, &w.published.id).await.unwrap();
    c.enrollments
        .complete_enrollment(CompleteEnrollmentRequest { id: e.id.clone(), ..Default::default() })
        .await
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || python_out.lines().map_while(Result::ok).for_each(|l| drop(tx.send(l))));
    let mut types = Vec::new();
    while types.len() < 2 {
        let line = rx.recv_timeout(Duration::from_secs(15)).expect("the receiver verified and printed the events");
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert!(fields[0].starts_with("evt_") && fields[2] == e.id, "{line}");
        types.push(fields[1].to_string());
    }
    types.sort();
    assert_eq!(types, vec!["enrollment.completed", "enrollment.created"]);

    Command::new("kill").arg("-TERM").arg(app.server.0.id().to_string()).status().unwrap();
    let status = app.server.0.wait().unwrap();
    assert!(status.success(), "SIGTERM exits cleanly: {status}");
}

/// `coursewire api` and two `coursewire-dispatcher`s on a fresh Postgres database and
/// RabbitMQ names of their own, with an organization and key made by the CLI.
pub(crate) struct Cluster {
    pub db: crate::harness::TestDatabase,
    pub port: u16,
    pub key: String,
    pub api: Process,
    dispatchers: Vec<Process>,
    /// Starts another `coursewire api` on the same database and RabbitMQ; returns its port.
    pub replica: Box<dyn Fn() -> (Process, u16) + Send>,
    /// Last, so it is deleted after the processes stopped (fields drop in order).
    _topology: crate::harness::TestTopology,
}

/// Creates organization `acme` in the database at `database_url` with the real CLI, and
/// returns the key `coursewire keys create` printed for it.
pub(crate) fn acme_key(database_url: &str) -> String {
    let bin = env!("CARGO_BIN_EXE_coursewire");
    let out = Command::new(bin).args(["orgs", "create", "acme", "--database-url", database_url]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let out =
        Command::new(bin).args(["keys", "create", "--org", "acme", "--database-url", database_url]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().lines().last().unwrap().to_string()
}

impl Cluster {
    pub async fn start(retry_schedule: &str) -> Cluster {
        let (pg, amqp) = (service_url("COURSEWIRE_TEST_DATABASE_URL"), service_url("COURSEWIRE_TEST_AMQP_URL"));
        let db = crate::harness::TestDatabase::create(&pg).await;
        let topology = crate::harness::TestTopology::new(&amqp, "cwtest");
        let (exchange, queue) = (topology.exchange.clone(), topology.queue.clone());
        let secrets_key = secrets_key();
        let common = |cmd: &mut Command| {
            cmd.env_remove("COURSEWIRE_REDIS_URL")
                .args(["--database-url", &db.url, "--amqp-url", &amqp, "--secrets-key", &secrets_key])
                .args(["--amqp-exchange", &exchange, "--amqp-queue", &queue])
                .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
                .args(["--webhook-allow-private-targets", "--webhook-timeout", "2s"])
                .args(["--webhook-retry-schedule", retry_schedule]);
        };
        let bin = env!("CARGO_BIN_EXE_coursewire");
        let key = acme_key(&db.url);
        let args: Vec<String> = {
            let mut probe = Command::new(bin);
            common(&mut probe);
            probe.get_args().map(|a| a.to_string_lossy().into_owned()).collect()
        };
        let api = move || {
            let port = free_port();
            let mut api = Command::new(bin);
            api.env_remove("COURSEWIRE_REDIS_URL").args(&args);
            api.args(["api", "--listen", &format!("127.0.0.1:{port}"), "--rate-limits", "100000/1m"]);
            (spawn(api, "listening").0, port)
        };
        let (first, port) = api();
        let mut dispatchers = Vec::new();
        for _ in 0..2 {
            let mut d = Command::new(dispatcher_bin());
            common(&mut d);
            dispatchers.push(spawn(d, "consuming events").0);
        }
        Cluster { db, _topology: topology, port, key, api: first, dispatchers, replica: Box::new(api) }
    }

    /// Endpoints for `user.created` at `receiver`, told apart by their query (`?a`, `?b`, …).
    async fn endpoints(&self, receiver: &Receiver, paths: &[&str], max_concurrency: i32) {
        let mut c = clients(self.port, &self.key).await;
        for path in paths {
            let w = Webhook {
                url: format!("{}?{path}", receiver.url),
                event_types: vec!["user.created".into()],
                max_concurrency,
                ..Default::default()
            };
            let create = CreateWebhookRequest { webhook: Some(w), request_id: String::new() };
            c.webhooks.create_webhook(create).await.unwrap();
        }
    }

    /// Creates `n` users (one `user.created` event each), in the background.
    async fn users(&self, n: usize) -> tokio::task::JoinHandle<()> {
        let mut writer = clients(self.port, &self.key).await;
        tokio::spawn(async move {
            for i in 0..n {
                crate::fixtures::user(&mut writer, &format!("learner{i}@example.com")).await;
            }
        })
    }
}

/// A write through an API replica that does not relay reaches the bus at once: its commit
/// notifies the leading relay (LISTEN/NOTIFY), which would otherwise look only every 10 s.
#[cfg_attr(not(all(cw_postgres, cw_amqp)), ignore = "skipped: Postgres or RabbitMQ is not configured")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_does_not_relay_wakes_the_one_that_does() {
    let cluster = Cluster::start("5s").await;
    let receiver = Receiver::ok().await;
    cluster.endpoints(&receiver, &["a"], 0).await;
    // The first API took the relay's lock as it started; this one waits for it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_replica, port) = (cluster.replica)();
    let mut c = clients(port, &cluster.key).await;
    for i in 0..5 {
        let started = Instant::now();
        crate::fixtures::user(&mut c, &format!("via-replica{i}@example.com")).await;
        receiver.wait_for(i + 1, Duration::from_secs(5)).await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "write {i} took {took:?} to arrive: the relay was not woken");
    }
}

/// Requests per (webhook-id, endpoint) once `expected` distinct deliveries arrived.
async fn requests_per_delivery(
    receiver: &Receiver,
    expected: usize,
    within: Duration,
) -> HashMap<(String, String), usize> {
    let deadline = Instant::now() + within;
    loop {
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        for r in receiver.received() {
            *seen.entry((r.header("webhook-id").to_string(), r.uri.clone())).or_default() += 1;
        }
        if seen.len() >= expected {
            return seen;
        }
        assert!(Instant::now() < deadline, "only {} of {expected} deliveries arrived", seen.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// No faults, two dispatchers: each delivery is sent exactly as often as its answers ask —
/// once at `?a`, twice at `?b` (a 500, then the retry) — never once more.
#[cfg_attr(not(all(cw_postgres, cw_amqp)), ignore = "skipped: Postgres or RabbitMQ is not configured")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_send_each_attempt_exactly_once() {
    let cluster = Cluster::start("300ms").await;
    // `?b` fails every event's first request; its retry (300 ms later, ±20%) succeeds. Both
    // endpoints take 4 at a time, so many deliveries wait and are claimed, by either dispatcher.
    let first_seen = std::sync::Mutex::new(std::collections::HashSet::new());
    let receiver = Receiver::start_with(move |r: &crate::receiver::Received| {
        let fresh = r.uri.ends_with("?b") && first_seen.lock().unwrap().insert(r.header("webhook-id").to_string());
        Reply { delay: Duration::from_millis(5), ..Reply::status(if fresh { 500 } else { 204 }) }
    })
    .await;
    cluster.endpoints(&receiver, &["a", "b"], 4).await;
    cluster.users(500).await.await.unwrap();
    requests_per_delivery(&receiver, 1000, Duration::from_secs(60)).await;
    // Let any stray duplicate arrive before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = requests_per_delivery(&receiver, 1000, Duration::ZERO).await;
    let wrong: Vec<_> = seen.iter().filter(|((_, uri), n)| **n != if uri.ends_with("?b") { 2 } else { 1 }).collect();
    assert_eq!(seen.len(), 1000);
    assert!(wrong.is_empty(), "sent more (or less) often than asked: {wrong:?}");
    assert_eq!(receiver.received().len(), 1500, "0 duplicates");
}

/// `kill -9` of one dispatcher mid-way: nothing is lost, the deliveries it held are retaken
/// within 10 s (its leases run out and the survivor wakes for exactly that), and any
/// duplicate carries the same `webhook-id` (counted and reported).
#[cfg_attr(not(all(cw_postgres, cw_amqp)), ignore = "skipped: Postgres or RabbitMQ is not configured")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_dispatchers_work_is_retaken_within_10_s() {
    let mut cluster = Cluster::start("5s").await;
    // Two endpoints × 300 events = 600 deliveries; answers take 250 ms and each endpoint takes
    // 8 at a time, so each dispatcher holds deliveries (leased) waiting in its lanes: its
    // share takes longer than intake waits before writing a batch.
    let receiver = Receiver::start(|_| Reply { delay: Duration::from_millis(250), ..Reply::status(204) }).await;
    cluster.endpoints(&receiver, &["a", "b"], 8).await;
    let writes = cluster.users(300).await;
    let victim = cluster.dispatchers.remove(0);
    let pid = victim.0.id();
    let pool = sqlx::PgPool::connect(&cluster.db.url).await.unwrap();
    let held_by_victim = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending' AND lease_owner LIKE $1",
        )
        .bind(format!("{pid}-%"))
        .fetch_one(&pool)
        .await
        .unwrap();
        n
    };
    // Kill it once it holds deliveries (written as leased to it, still waiting in its lanes).
    let start = Instant::now();
    while held_by_victim().await == 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "the victim never held a delivery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Command::new("kill").arg("-KILL").arg(pid.to_string()).status().unwrap();
    let killed = Instant::now();
    drop(victim);
    let at_kill = receiver.received().len();
    assert!(at_kill < 600, "the kill came mid-way ({at_kill} requests had arrived)");

    // Whatever the victim held (leased to it) is taken by the survivor once its leases lapse.
    let held_at_kill = held_by_victim().await;
    while held_by_victim().await > 0 {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the killed dispatcher's deliveries were not retaken in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let retaken = killed.elapsed();
    writes.await.unwrap();
    let seen = requests_per_delivery(&receiver, 600, Duration::from_secs(60)).await;
    let total: usize = seen.values().sum();
    eprintln!(
        "all 600 deliveries arrived ({at_kill} requests before the kill); {held_at_kill} held by the killed \
         dispatcher, retaken after {retaken:?}; {} duplicates, each with its delivery's webhook-id",
        total - 600
    );
    assert!(held_at_kill > 0, "the kill came while the victim held deliveries");
    assert_eq!(seen.len(), 600);
}

/// A fresh operator key, as `openssl rand -base64 32` makes one.
pub fn secrets_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(ulid::Ulid::new().0.to_be_bytes().repeat(2))
}

/// The operator's key, end to end: production refuses to start without one (naming the flag),
/// the embedded default makes its own (mode 0600) and never writes a secret in clear, and
/// `coursewire secrets rotate-key` moves every value to a new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secrets_key_is_required_generated_and_rotated() {
    let bin = env!("CARGO_BIN_EXE_coursewire");
    for (args, says) in [(vec![], "--secrets-key"), (vec!["--secrets-key", "c2hvcnQ="], "32 bytes")] {
        let out = Command::new(bin)
            .env_remove("COURSEWIRE_SECRETS_KEY")
            .args(["api", "--database-url", "postgres://127.0.0.1:1/nowhere", "--amqp-url", "amqp://127.0.0.1:1/%2f"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{stderr}");
    }

    let dir = tempfile::tempdir().unwrap();
    let start = |extra: &[&str]| {
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.current_dir(dir.path())
            .env_remove("COURSEWIRE_DATABASE_URL")
            .env_remove("COURSEWIRE_AMQP_URL")
            .env_remove("COURSEWIRE_SECRETS_KEY")
            .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", &format!("127.0.0.1:{}", free_port())])
            .args(extra);
        let (server, lines) = spawn(cmd, "listening");
        (server, lines, port)
    };
    let (server, lines, port) = start(&[]);
    let key = lines.iter().find_map(|l| l.split_whitespace().find(|w| w.starts_with("sk_")).map(String::from)).unwrap();
    let mut c = clients(port, &key).await;
    let hook = Webhook {
        url: "https://hooks.example.com/cw".into(),
        headers: [("authorization".to_string(), "Bearer partner-secret-9q".to_string())].into_iter().collect(),
        ..Default::default()
    };
    let made = c.webhooks.create_webhook(CreateWebhookRequest { webhook: Some(hook), request_id: String::new() });
    let made = made.await.unwrap().into_inner();
    let id = made.webhook.unwrap().id;
    drop(server);

    let data = dir.path().join("coursewire-data");
    let key_file = data.join("secrets.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    for file in std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().path()) {
        let bytes = std::fs::read(&file).unwrap();
        for needle in ["whsec_", "partner-secret-9q", &made.secret[6..]] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_bytes()), "{needle} in {}", file.display());
        }
    }

    let old = std::fs::read_to_string(&key_file).unwrap().trim().to_string();
    let new = secrets_key();
    let out = Command::new(bin)
        .current_dir(dir.path())
        .env_remove("COURSEWIRE_DATABASE_URL")
        .args(["secrets", "rotate-key", "--secrets-key", &new, "--previous-secrets-keys", &old])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("re-sealed the secrets of 1 webhook endpoint"), "{out:?}");

    // With only the new key, the secret is still there.
    let (_server, _, port) = start(&["--secrets-key", &new]);
    let mut c = clients(port, &key).await;
    let shown = c.webhooks.get_webhook_secret(GetWebhookSecretRequest { id }).await.unwrap().into_inner();
    assert_eq!(shown.secret, made.secret);
}

/// `coursewire health --addr` against the dispatcher's metrics address, until `want`
/// (SERVING or not) or 15 s.
fn dispatcher_health(port: u16, service: &str, want: bool) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_coursewire"))
            .args(["health", "--addr", &format!("127.0.0.1:{port}"), "--service", service])
            .output()
            .unwrap();
        if out.status.success() == want || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The dispatcher answers gRPC health beside `/metrics`: SERVING while its database answers,
/// and `coursewire.broker` SERVING only while it consumes from RabbitMQ.
#[cfg_attr(not(all(cw_postgres, cw_amqp)), ignore = "skipped: Postgres or RabbitMQ is not configured")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatcher_health_follows_its_dependencies() {
    let (pg, amqp) = (service_url("COURSEWIRE_TEST_DATABASE_URL"), service_url("COURSEWIRE_TEST_AMQP_URL"));
    let db = crate::harness::TestDatabase::create(&pg).await;
    let topology = crate::harness::TestTopology::new(&amqp, "cwhealth");
    let start = |amqp_url: &str| {
        let port = free_port();
        let mut cmd = Command::new(dispatcher_bin());
        cmd.args(["--database-url", &db.url, "--amqp-url", amqp_url, "--secrets-key", &secrets_key()])
            .args(["--amqp-exchange", &topology.exchange, "--amqp-queue", &topology.queue])
            .args(["--metrics-listen", &format!("127.0.0.1:{port}")]);
        (spawn(cmd, "dispatcher started").0, port)
    };
    // RabbitMQ unreachable: the process serves (retries live in the database), the broker not.
    let (_cut_off, port) = start(&format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port()));
    let overall = dispatcher_health(port, "", true);
    assert!(overall.status.success(), "{overall:?}");
    assert_eq!(String::from_utf8_lossy(&overall.stdout).trim(), "SERVING");
    let broker = dispatcher_health(port, "coursewire.broker", false);
    assert!(!broker.status.success(), "no broker, yet {broker:?}");
    let metrics = crate::harness::http().get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains("coursewire_webhook_deliveries_total"), "{metrics}");

    let (_consuming, port) = start(&amqp);
    let broker = dispatcher_health(port, "coursewire.broker", true);
    assert!(broker.status.success(), "consuming, yet {broker:?}");
}
