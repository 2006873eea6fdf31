//! Test harness: the real server in-process on a free port, over a fresh SQLite file or a
//! fresh Postgres database, with an organization and key made through the real code path.
use std::sync::Arc;
use std::time::Duration;

use coursewire::app::{Application, Settings};
use coursewire_api::clock::{Clock, ManualClock, SystemClock};
use coursewire_api::events::relay::Hub;
use coursewire_api::layers::auth::{self, NewKey};
use coursewire_api::layers::limits::{self, Limiter, MemoryBackend, OnError, RedisBackend};
use coursewire_api::policy::windows::{ClassLimits, parse_windows};
use coursewire_api::retention::Retention;
use coursewire_core::events::bus::{Bus, InProcessBus};
use coursewire_core::events::topology::Topology;
use coursewire_core::secrets::Keyring;
use coursewire_core::store::Db;
use coursewire_dispatcher::{Config as DispatcherConfig, Source};
use coursewire_proto::v1::account_service_client::AccountServiceClient;
use coursewire_proto::v1::api_key_service_client::ApiKeyServiceClient;
use coursewire_proto::v1::course_service_client::CourseServiceClient;
use coursewire_proto::v1::domain_service_client::DomainServiceClient;
use coursewire_proto::v1::domain_user_service_client::DomainUserServiceClient;
use coursewire_proto::v1::enrollment_service_client::EnrollmentServiceClient;
use coursewire_proto::v1::event_service_client::EventServiceClient;
use coursewire_proto::v1::group_service_client::GroupServiceClient;
use coursewire_proto::v1::learning_path_service_client::LearningPathServiceClient;
use coursewire_proto::v1::organization_service_client::OrganizationServiceClient;
use coursewire_proto::v1::published_course_service_client::PublishedCourseServiceClient;
use coursewire_proto::v1::user_service_client::UserServiceClient;
use coursewire_proto::v1::webhook_service_client::WebhookServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Streams one organization may hold open (the server's default).
pub const STREAMS_PER_ORG: usize = coursewire_api::streams::DEFAULT_PER_ORG;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Harness {
    pub db: Db,
    pub clock: Arc<ManualClock>,
    /// The key that seals this server's secrets at rest, and its bytes.
    pub secrets: Arc<Keyring>,
    pub secrets_key: [u8; 32],
    /// Key (scope `*`) of organization `acme`.
    pub key: String,
    channel: Channel,
    pub hub: Arc<Hub>,
    /// The application as the binary builds it (`coursewire::app`).
    app: Application,
    cleanup: Cleanup,
}

/// The dispatcher settings of test harnesses: a short schedule, loopback receivers allowed.
pub fn dispatcher_config() -> DispatcherConfig {
    DispatcherConfig {
        retry_schedule: [100, 200, 400].map(Duration::from_millis).to_vec(),
        timeout: Duration::from_secs(2),
        allow_private_targets: true,
        ..DispatcherConfig::default()
    }
}

enum Cleanup {
    /// Held so the folder (and database) lives as long as the harness.
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(#[allow(dead_code)] TestDatabase),
}

/// A fresh Postgres database, dropped (with its connections) when this is dropped.
pub struct TestDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

impl TestDatabase {
    pub async fn create(admin_url: &str) -> TestDatabase {
        let name = format!("cw_test_{}", ulid::Ulid::new().to_string().to_lowercase());
        let admin = sqlx::PgPool::connect(admin_url).await.expect("connect to COURSEWIRE_TEST_DATABASE_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.unwrap();
        admin.close().await;
        TestDatabase { url: with_database(admin_url, &name), admin_url: admin_url.to_string(), name }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        on_own_runtime(async move {
            if let Ok(admin) = sqlx::PgPool::connect(&admin_url).await {
                let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await;
            }
        });
    }
}

/// Exchange and queue names of one test, deleted with everything in them when this is
/// dropped: nothing a test published piles up in the broker from run to run.
pub struct TestTopology(pub Topology);

impl TestTopology {
    pub fn new(url: &str, prefix: &str) -> TestTopology {
        let id = ulid::Ulid::new().to_string().to_lowercase();
        TestTopology(Topology {
            url: url.into(),
            exchange: format!("{prefix}.{id}.events"),
            queue: format!("{prefix}.{id}.dispatcher"),
        })
    }
}

impl std::ops::Deref for TestTopology {
    type Target = Topology;
    fn deref(&self) -> &Topology {
        &self.0
    }
}

impl Drop for TestTopology {
    fn drop(&mut self) {
        let topology = self.0.clone();
        on_own_runtime(async move {
            let cleanup = async {
                let connection = topology.connect().await?;
                topology.delete(&connection.create_channel().await?).await?;
                connection.close(0, "test done".into()).await?;
                anyhow::Ok(())
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), cleanup).await;
        });
    }
}

/// Runs cleanup from `Drop`, outside the test's runtime: a helper thread with its own.
fn on_own_runtime(cleanup: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(cleanup)
    })
    .join();
}

/// Which rate limit backend a harness uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Limits {
    Memory,
    /// Real Redis at `COURSEWIRE_TEST_REDIS_URL`, with keys unique to this harness.
    Redis,
    /// Redis through a proxy on this local port, with this policy for backend errors.
    RedisVia(u16, OnError),
}

impl Limits {
    pub async fn limiter(self, rate_limits: &str, clock: Arc<ManualClock>) -> Arc<Limiter> {
        let defaults = ClassLimits::uniform(parse_windows(rate_limits).unwrap());
        let backend: Arc<dyn limits::backend::Backend> = match self {
            Limits::Memory => Arc::new(MemoryBackend::default()),
            Limits::Redis => {
                let url = service_url("COURSEWIRE_TEST_REDIS_URL");
                let prefix = format!("cwtest:{}:", ulid::Ulid::new());
                Arc::new(RedisBackend::connect(&url, &prefix).await.expect("connect to COURSEWIRE_TEST_REDIS_URL"))
            }
            Limits::RedisVia(port, _) => {
                let prefix = format!("cwtest:{}:", ulid::Ulid::new());
                Arc::new(
                    RedisBackend::connect(&format!("redis://127.0.0.1:{port}"), &prefix)
                        .await
                        .expect("connect through the proxy"),
                )
            }
        };
        let on_error = if let Limits::RedisVia(_, policy) = self { policy } else { OnError::Open };
        Arc::new(Limiter::new(backend, defaults, on_error, clock))
    }
}

/// Adds the API key to every call.
#[derive(Clone)]
pub struct WithKey(pub MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for WithKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub type Authed = InterceptedService<Channel, WithKey>;

/// A child process (a real binary) killed when the test lets go of it.
pub struct Process(pub std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An HTTP client for the tests' own requests (plain HTTP on loopback; reqwest is built
/// without a default TLS provider, so one is installed).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The URL of an outside service a running test needs. Tests that need one are ignored
/// (reported as skipped) when it was not configured as they were built (`build.rs`), so a
/// test that runs without it — built with `COURSEWIRE_REQUIRE_SERVICES=1`, or run with
/// `--ignored` — fails here rather than passing without having run.
pub fn service_url(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set (see the README's Test section)"))
}

impl Harness {
    pub async fn start(backend: Backend) -> Harness {
        Self::start_with(backend, Limits::Memory, "600/1m,5000/1h").await
    }

    /// A harness whose limiter uses `limits` with `rate_limits` for every class.
    pub async fn start_with(backend: Backend, limits: Limits, rate_limits: &str) -> Harness {
        Self::start_dispatching(backend, limits, rate_limits, dispatcher_config()).await
    }

    /// Like the all-in-one: the relay hands events in-process to a dispatcher run with `config`.
    pub async fn start_dispatching(
        backend: Backend,
        limits: Limits,
        rate_limits: &str,
        config: DispatcherConfig,
    ) -> Harness {
        let bus = InProcessBus::new();
        let source = Source::InProcess(bus.subscribe());
        Self::start_full(backend, limits, rate_limits, bus, Hub::default(), Some((config, source))).await
    }

    /// A harness whose relay publishes to `bus`.
    pub async fn start_full(
        backend: Backend,
        limits: Limits,
        rate_limits: &str,
        bus: Arc<dyn Bus>,
        hub: Hub,
        dispatch: Option<(DispatcherConfig, Source)>,
    ) -> Harness {
        // Server logs go to the test's captured output, shown when it fails.
        let _ = tracing_subscriber::fmt().with_env_filter("warn,coursewire_api=info").with_test_writer().try_init();
        let (url, cleanup) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                (format!("sqlite:{}", dir.path().join("test.db").display()), Cleanup::Sqlite(dir))
            }
            Backend::Postgres => {
                let admin_url = service_url("COURSEWIRE_TEST_DATABASE_URL");
                let db = TestDatabase::create(&admin_url).await;
                (db.url.clone(), Cleanup::Postgres(db))
            }
        };
        let db = Db::connect(&url).await.expect("connect and migrate");
        let clock = ManualClock::new(SystemClock.now_ms());
        coursewire_api::organizations::create_org(&db, "acme", "Acme", clock.now_ms()).await.unwrap();
        let key = new_key(&db, "acme", &["*"], clock.now_ms()).await;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let limiter = limits.limiter(rate_limits, clock.clone()).await;
        let hub = Arc::new(hub);
        let secrets_key: [u8; 32] = std::array::from_fn(|_| rand::random());
        let secrets = Arc::new(Keyring::new(secrets_key, vec![]));
        let app = Application::build(Settings {
            db: db.clone(),
            clock: clock.clone(),
            secrets: secrets.clone(),
            limiter,
            listener,
            http_listener: None,
            cors_allowed_origins: Vec::new(),
            trusted_proxies: vec![],
            max_streams_per_org: STREAMS_PER_ORG,
            hub: hub.clone(),
            bus: Some(bus),
            dispatcher: dispatch,
            // Tests prune explicitly, at the harness clock's time (`prune`).
            retention: None,
            console: Default::default(),
        })
        .await
        .unwrap();
        let channel = Channel::from_shared(format!("http://{}", app.addr())).unwrap().connect().await.unwrap();
        Harness { db, clock, secrets, secrets_key, key, hub, channel, app, cleanup }
    }

    /// A second server on the same database (another replica, with its own caches; it leaves
    /// relaying to this one).
    pub async fn replica(&self) -> Replica {
        let app = Application::build(Settings {
            db: self.db.clone(),
            clock: self.clock.clone(),
            secrets: self.secrets.clone(),
            limiter: Limits::Memory.limiter("600/1m,5000/1h", self.clock.clone()).await,
            listener: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            http_listener: None,
            cors_allowed_origins: Vec::new(),
            trusted_proxies: vec![],
            max_streams_per_org: STREAMS_PER_ORG,
            hub: self.hub.clone(),
            bus: None,
            dispatcher: None,
            retention: None,
            console: Default::default(),
        })
        .await
        .unwrap();
        let channel = Channel::from_shared(format!("http://{}", app.addr())).unwrap().connect().await.unwrap();
        Replica { channel, _app: app }
    }

    /// Stops the server as SIGTERM would, and waits until it has drained its calls.
    pub async fn stop_server(&mut self) {
        tokio::time::timeout(Duration::from_secs(10), self.app.stop_server())
            .await
            .expect("the server stopped within 10 s")
            .unwrap();
    }

    /// One pass of the server's pruning, at the harness clock's time (30-day retentions).
    pub async fn prune(&self) -> u64 {
        let month = Duration::from_secs(30 * 86400);
        let retention = Retention { db: self.db.clone(), clock: self.clock.clone(), events: month, deliveries: month };
        retention.prune_all().await.unwrap()
    }

    /// Stops the dispatcher as SIGTERM would: no new work, attempts in flight finish.
    pub async fn stop_dispatcher(&mut self) {
        self.app.stop_dispatcher().await.unwrap();
    }

    /// Where the server listens (for clients other than the typed gRPC ones).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.app.addr()
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn with_key(&self, key: &str) -> WithKey {
        WithKey(format!("Bearer {key}").parse().unwrap())
    }

    /// A second organization and its key, for isolation tests.
    pub async fn other_org(&self, id: &str) -> String {
        coursewire_api::organizations::create_org(&self.db, id, id, self.clock.now_ms()).await.unwrap();
        new_key(&self.db, id, &["*"], self.clock.now_ms()).await
    }

    /// A platform key (manages organizations only).
    pub async fn platform_key(&self) -> String {
        let new = NewKey {
            org_id: None,
            label: "ops".into(),
            scopes: vec![],
            allowed_cidrs: vec![],
            expires_at: None,
            rate_limit: String::new(),
        };
        auth::create_key(&self.db, new, self.clock.now_ms(), None).await.unwrap().1
    }

    pub async fn scoped_key(&self, scopes: &[&str]) -> String {
        new_key(&self.db, "acme", scopes, self.clock.now_ms()).await
    }

    pub fn clients(&self) -> Clients {
        Clients::new(self.channel(), self.with_key(&self.key))
    }

    pub fn clients_with(&self, key: &str) -> Clients {
        Clients::new(self.channel(), self.with_key(key))
    }

    /// Rows in `table` (to prove rejected calls wrote nothing).
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(self.db.pool())
            .await
            .unwrap()
    }

    /// Events not yet confirmed by the bus (past the relay's cursor).
    pub async fn unpublished(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM events \
             WHERE (txid, id) > (SELECT published_txid, published_id FROM relay_cursor WHERE id = 1)",
        )
        .fetch_one(self.db.pool())
        .await
        .unwrap()
    }

    /// Row counts of every resource table, for "nothing changed" assertions.
    pub async fn snapshot(&self) -> Vec<i64> {
        let mut out = Vec::new();
        for t in [
            "domains",
            "users",
            "courses",
            "lessons",
            "published_courses",
            "domain_users",
            "enrollments",
            "lesson_progress",
            "events",
            "idempotency",
            "api_keys",
            "webhook_endpoints",
        ] {
            out.push(self.count(t).await);
        }
        out
    }
}

async fn new_key(db: &Db, org: &str, scopes: &[&str], now: i64) -> String {
    let new = NewKey {
        org_id: Some(org.into()),
        label: "test".into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        allowed_cidrs: vec![],
        expires_at: None,
        rate_limit: String::new(),
    };
    auth::create_key(db, new, now, None).await.unwrap().1
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let root = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // The tasks go first: closing the pool waits for the connections they hold.
        self.app.abort();
        if let Cleanup::Postgres(_) = &self.cleanup {
            // Close our connections first, so dropping the database does not have to cut them.
            let pool = self.db.pool().clone();
            on_own_runtime(async move { pool.close().await });
        }
    }
}

pub struct Replica {
    channel: Channel,
    _app: Application,
}

impl Replica {
    pub fn addr(&self) -> std::net::SocketAddr {
        self._app.addr()
    }

    pub fn clients_with(&self, key: &str) -> Clients {
        Clients::new(self.channel.clone(), WithKey(format!("Bearer {key}").parse().unwrap()))
    }
}

/// Typed clients that send the key on every call.
pub struct Clients {
    pub account: AccountServiceClient<Authed>,
    pub domains: DomainServiceClient<Authed>,
    pub users: UserServiceClient<Authed>,
    pub courses: CourseServiceClient<Authed>,
    pub published: PublishedCourseServiceClient<Authed>,
    pub domain_users: DomainUserServiceClient<Authed>,
    pub enrollments: EnrollmentServiceClient<Authed>,
    pub paths: LearningPathServiceClient<Authed>,
    pub groups: GroupServiceClient<Authed>,
    pub events: EventServiceClient<Authed>,
    pub keys: ApiKeyServiceClient<Authed>,
    pub orgs: OrganizationServiceClient<Authed>,
    pub webhooks: WebhookServiceClient<Authed>,
}

/// Clients for a server started some other way (a real process).
pub fn clients_for(channel: Channel, key: WithKey) -> Clients {
    Clients::new(channel, key)
}

impl Clients {
    fn new(channel: Channel, key: WithKey) -> Clients {
        let svc = || InterceptedService::new(channel.clone(), key.clone());
        Clients {
            account: AccountServiceClient::new(svc()),
            domains: DomainServiceClient::new(svc()),
            users: UserServiceClient::new(svc()),
            courses: CourseServiceClient::new(svc()),
            published: PublishedCourseServiceClient::new(svc()),
            domain_users: DomainUserServiceClient::new(svc()),
            enrollments: EnrollmentServiceClient::new(svc()),
            paths: LearningPathServiceClient::new(svc()),
            groups: GroupServiceClient::new(svc()),
            events: EventServiceClient::new(svc()),
            keys: ApiKeyServiceClient::new(svc()),
            orgs: OrganizationServiceClient::new(svc()),
            webhooks: WebhookServiceClient::new(svc()),
        }
    }
}

/// Runs each listed test over SQLite and over Postgres (when configured).
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = $crate::harness::Harness::start($crate::harness::Backend::Sqlite).await;
                    super::$name(&h).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(cw_postgres), ignore = "skipped: COURSEWIRE_TEST_DATABASE_URL is not set")]
                async fn $name() {
                    let h = $crate::harness::Harness::start($crate::harness::Backend::Postgres).await;
                    super::$name(&h).await;
                }
            )*
        }
    };
}
