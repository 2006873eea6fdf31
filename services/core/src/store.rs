//! The database: one sqlx `Any` pool over SQLite (embedded) or Postgres (production), one
//! set of migrations and queries with `$N` placeholders.
use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyConnection, AnyPool, ConnectOptions, Transaction};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard};

use crate::error::ApiResult;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend of a connection, for code that holds a connection rather than the `Db`
    /// (whose `backend` field says the same).
    pub fn of(conn: &AnyConnection) -> Backend {
        if conn.backend_name() == "PostgreSQL" { Backend::Postgres } else { Backend::Sqlite }
    }
}

/// Postgres channels that carry the wake-ups across processes.
pub const OUTBOX_CHANNEL: &str = "coursewire_outbox";
pub const DELIVERIES_CHANNEL: &str = "coursewire_deliveries";

#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    pub backend: Backend,
    /// The URL connected to (listeners open their own connections).
    url: Arc<str>,
    /// SQLite allows one writer: taking this before `BEGIN` queues writers in-process
    /// instead of failing them with SQLITE_BUSY when two deferred transactions upgrade.
    write_lock: Option<Arc<Mutex<()>>>,
    signals: Arc<Signals>,
}

/// Wake-ups that follow commits, so nothing polls: the outbox relay (events were written) and
/// the dispatchers (deliveries became due by an API call). Within a process a `Notify`; on
/// Postgres also a `NOTIFY` sent with the commit (listeners get it once the rows are visible),
/// except to the relay when it runs in this very process.
#[derive(Default)]
pub struct Signals {
    pub outbox: Notify,
    pub deliveries: Notify,
    relay_here: AtomicBool,
}

impl Signals {
    /// The relay of this process leads (or stopped leading): its wake-ups stay in-process.
    pub fn set_relay_here(&self, here: bool) {
        self.relay_here.store(here, Ordering::Relaxed);
    }
}

/// A write transaction (plus, on SQLite, the writer slot) and whom its commit wakes.
pub struct Tx {
    inner: Transaction<'static, Any>,
    _writer: Option<OwnedMutexGuard<()>>,
    signals: Arc<Signals>,
    postgres: bool,
    wake_relay: bool,
    wake_dispatchers: bool,
}

impl Deref for Tx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.inner
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.inner
    }
}

impl Tx {
    /// Commits, then wakes whom the transaction concerns.
    pub async fn commit(mut self) -> ApiResult<()> {
        if self.postgres {
            let relay = self.wake_relay && !self.signals.relay_here.load(Ordering::Relaxed);
            let notify = match (relay, self.wake_dispatchers) {
                (false, false) => None,
                (true, false) => Some(sqlx::query("SELECT pg_notify($1, '')").bind(OUTBOX_CHANNEL)),
                (false, true) => Some(sqlx::query("SELECT pg_notify($1, '')").bind(DELIVERIES_CHANNEL)),
                (true, true) => Some(
                    sqlx::query("SELECT pg_notify($1, ''), pg_notify($2, '')")
                        .bind(OUTBOX_CHANNEL)
                        .bind(DELIVERIES_CHANNEL),
                ),
            };
            if let Some(notify) = notify {
                notify.execute(&mut *self.inner).await?;
            }
        }
        self.inner.commit().await?;
        if self.wake_relay {
            self.signals.outbox.notify_one();
        }
        if self.wake_dispatchers {
            self.signals.deliveries.notify_one();
        }
        Ok(())
    }

    /// Its commit wakes the outbox relay (the transaction wrote events).
    pub fn wake_relay(&mut self) {
        self.wake_relay = true;
    }

    /// Its commit wakes the dispatchers (it made deliveries due).
    pub fn wake_dispatchers(&mut self) {
        self.wake_dispatchers = true;
    }

    /// A savepoint inside this transaction (for per-item work in batches).
    pub async fn savepoint(&mut self) -> ApiResult<Transaction<'_, Any>> {
        Ok(sqlx::Acquire::begin(&mut *self.inner).await?)
    }
}

impl Db {
    /// Connects (creating a SQLite file and its folder when missing) and applies migrations.
    pub async fn connect(url: &str) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            anyhow::bail!("--database-url must start with sqlite: or postgres:, got {:?}", redact(url));
        };
        let url = match backend {
            Backend::Sqlite => sqlite_url(url)?,
            Backend::Postgres => url.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url)
            .with_context(|| format!("--database-url {:?} is not a valid URL", redact(&url)))?
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .with_context(|| format!("cannot connect to the database at {}", redact(&url)))?;
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
        }
        let db = Db {
            pool,
            backend,
            url: url.as_str().into(),
            write_lock: (backend == Backend::Sqlite).then(Default::default),
            signals: Arc::default(),
        };
        db.migrate().await?;
        Ok(db)
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR.run(&self.pool).await.context("applying database migrations")?;
        Ok(())
    }

    /// The pool, for reads.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A write transaction whose commit wakes the outbox relay: what the API's writes use
    /// (they record events). A commit that recorded none costs the relay one empty look.
    pub async fn begin(&self) -> ApiResult<Tx> {
        let mut tx = self.begin_quiet().await?;
        tx.wake_relay();
        Ok(tx)
    }

    /// A write transaction that wakes nobody unless told (`Tx::wake_relay`, …).
    pub async fn begin_quiet(&self) -> ApiResult<Tx> {
        let writer = match &self.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        let inner = match self.backend {
            // IMMEDIATE takes the write lock up front (waiting up to busy_timeout), so a
            // transaction never fails half-way when another process or connection writes.
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(Tx {
            inner,
            _writer: writer,
            signals: self.signals.clone(),
            postgres: self.backend == Backend::Postgres,
            wake_relay: false,
            wake_dispatchers: false,
        })
    }

    /// The wake-ups of this database's commits.
    pub fn signals(&self) -> &Arc<Signals> {
        &self.signals
    }

    /// The URL this database was opened with (for listener connections).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// True while the database answers a trivial query.
    pub async fn is_healthy(&self) -> bool {
        let ping = sqlx::query("SELECT 1").execute(&self.pool);
        matches!(tokio::time::timeout(Duration::from_secs(2), ping).await, Ok(Ok(_)))
    }
}

/// Unique-constraint violations are expected outcomes (duplicates), not internal errors.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// The file of a `sqlite:` URL; `None` for other databases.
pub fn sqlite_path(url: &str) -> Option<String> {
    let rest = url.strip_prefix("sqlite:")?.trim_start_matches("//");
    Some(rest.split('?').next().unwrap_or_default().to_string())
}

/// `sqlite:path` with the file created (and its folder) when missing.
fn sqlite_url(url: &str) -> anyhow::Result<String> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let path = sqlite_path(url).unwrap_or_default();
    let path = path.as_str();
    if path.is_empty() || path == ":memory:" {
        anyhow::bail!("--database-url: SQLite needs a file path, e.g. sqlite:coursewire-data/coursewire.db");
    }
    if let Some(dir) = std::path::Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let sep = if rest.contains('?') { '&' } else { '?' };
    Ok(if rest.contains("mode=") { format!("sqlite://{rest}") } else { format!("sqlite://{rest}{sep}mode=rwc") })
}

/// The URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or_default();
            format!("{}://{}:***@{}", &url[..s], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}
