//! Command-line interface: every flag has an environment variable, and flags win.
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use coursewire_api::clock::{Clock, SystemClock, rfc3339};
use coursewire_api::events::amqp::AmqpBus;
use coursewire_api::events::relay::Hub;
use coursewire_api::layers::auth::{self, NewKey};
use coursewire_api::layers::limits::{self, OnError};
use coursewire_api::policy::windows::parse_windows;
use coursewire_api::{organizations, server, webhooks};
use coursewire_core::config::parse_duration;
use coursewire_core::events::bus::{Bus, InProcessBus};
use coursewire_core::events::topology::Topology;
use coursewire_core::secrets::Keyring;
use coursewire_core::store::Db;
use coursewire_dispatcher::{Flags as DispatcherFlags, Source};

use crate::app::{Application, Settings};

#[derive(Parser)]
#[command(name = "coursewire", version, about = "Coursewire: learning resources over gRPC, events and signed webhooks")]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Clone)]
pub struct Common {
    /// gRPC listen address.
    #[arg(long, env = "COURSEWIRE_LISTEN", default_value = "127.0.0.1:50051", global = true)]
    listen: String,
    /// sqlite:PATH (embedded) or postgres://… (production).
    #[arg(
        long,
        env = "COURSEWIRE_DATABASE_URL",
        default_value = "sqlite:coursewire-data/coursewire.db",
        global = true
    )]
    database_url: String,
    /// RabbitMQ URL; unset means the in-process bus (all-in-one only).
    #[arg(long, env = "COURSEWIRE_AMQP_URL", global = true)]
    amqp_url: Option<String>,
    #[arg(long, env = "COURSEWIRE_AMQP_EXCHANGE", default_value = "coursewire.events", global = true)]
    amqp_exchange: String,
    #[arg(long, env = "COURSEWIRE_AMQP_QUEUE", default_value = "coursewire.dispatcher", global = true)]
    amqp_queue: String,
    /// Redis URL for rate limits shared by replicas; unset means in-memory.
    #[arg(long, env = "COURSEWIRE_REDIS_URL", global = true)]
    redis_url: Option<String>,
    /// HTTP/JSON on an address of its own; unset: on the gRPC listener (`--listen`).
    #[arg(long, env = "COURSEWIRE_HTTP_LISTEN", global = true)]
    http_listen: Option<String>,
    /// Web origins whose pages may call the API (CORS), e.g. `https://portal.example.com`;
    /// comma-separated. Unset: none (same-origin pages only).
    #[arg(long, env = "COURSEWIRE_CORS_ALLOWED_ORIGINS", value_delimiter = ',', global = true)]
    cors_allowed_origins: Vec<String>,
    /// Prometheus metrics listen address (`/metrics`).
    #[arg(long, env = "COURSEWIRE_METRICS_LISTEN", default_value = "127.0.0.1:9464", global = true)]
    metrics_listen: String,
    /// Limits per organization and call class, e.g. `600/1m,5000/1h`.
    #[arg(long, env = "COURSEWIRE_RATE_LIMITS", default_value = "600/1m,5000/1h", global = true)]
    rate_limits: String,
    /// When the limiter's backend (Redis) fails: `open` admits calls, `closed` refuses them.
    #[arg(long, env = "COURSEWIRE_RATE_LIMIT_ON_BACKEND_ERROR", default_value = "open", value_parser = ["open", "closed"], global = true)]
    rate_limit_on_backend_error: String,
    /// The origin the web console's sign-in links point at, e.g. `https://lms.example.com`
    /// (behind a proxy). Unset: `http://` and the HTTP/JSON listen address.
    #[arg(long, env = "COURSEWIRE_CONSOLE_BASE_URL", global = true)]
    console_base_url: Option<String>,
    /// Origins that may show the console in a frame (an embedded partner portal), e.g.
    /// `https://partners.example.com`; comma-separated. Unset: none may.
    #[arg(long, env = "COURSEWIRE_CONSOLE_FRAME_ANCESTORS", value_delimiter = ',', global = true)]
    console_frame_ancestors: Vec<String>,
    /// Mark the console's session cookie `Secure` even on plain HTTP (a proxy in front ends TLS).
    #[arg(long, env = "COURSEWIRE_CONSOLE_SECURE_COOKIES", global = true)]
    console_secure_cookies: bool,
    /// Proxies whose `x-forwarded-for` names the client, as CIDRs (comma-separated).
    #[arg(long, env = "COURSEWIRE_TRUSTED_PROXIES", value_delimiter = ',', global = true)]
    trusted_proxies: Vec<String>,
    // The dispatcher's flags (`coursewire-dispatcher` has the same ones).
    #[command(flatten)]
    dispatcher: DispatcherFlags,
    /// How long published events stay in the event log.
    #[arg(long, env = "COURSEWIRE_EVENT_RETENTION", default_value = "30d", global = true)]
    event_retention: String,
    /// How long webhook deliveries and their attempts are kept.
    #[arg(long, env = "COURSEWIRE_DELIVERY_RETENTION", default_value = "30d", global = true)]
    delivery_retention: String,
    /// Base64 of 32 random bytes (`openssl rand -base64 32`): seals webhook secrets and custom
    /// header values at rest and signs page tokens. Required with Postgres; the embedded
    /// default keeps a generated one in its data directory.
    #[arg(long, env = "COURSEWIRE_SECRETS_KEY", hide_env_values = true, global = true)]
    secrets_key: Option<String>,
    /// Earlier secrets keys, still accepted for opening values while rotating (comma-separated).
    #[arg(
        long,
        env = "COURSEWIRE_PREVIOUS_SECRETS_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        global = true
    )]
    previous_secrets_keys: Vec<String>,
    /// WatchEvents and ExportEnrollments streams one organization may hold open per process.
    #[arg(long, env = "COURSEWIRE_MAX_STREAMS_PER_ORG", default_value_t = 8, global = true)]
    max_streams_per_org: usize,
    /// `text` or `json`; the level comes from RUST_LOG.
    #[arg(long, env = "COURSEWIRE_LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: String,
    /// Export the spans of calls to this OpenTelemetry collector (OTLP over gRPC, e.g.
    /// `http://127.0.0.1:4317`); without it no spans are made.
    #[arg(long, env = "COURSEWIRE_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// All-in-one: gRPC API, outbox relay and dispatcher in one process (the default).
    Run,
    /// The gRPC API and outbox relay only (production; needs --amqp-url).
    Api,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage organizations.
    #[command(subcommand)]
    Orgs(OrgsCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage the key that seals secrets at rest.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// The web console (docs/console.md).
    #[command(subcommand)]
    Console(ConsoleCommand),
    /// Ask a running server's gRPC health service; exits non-zero unless it is SERVING (for
    /// container probes). Needs no database.
    Health {
        /// The server to ask.
        #[arg(long, default_value = "127.0.0.1:50051")]
        addr: String,
        /// One service to ask about (`coursewire.v1.EnrollmentService`); empty: the server.
        #[arg(long, default_value = "")]
        service: String,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Re-seal every webhook secret and header value with --secrets-key. Run it after every
    /// process has the new key as --secrets-key and the old one in --previous-secrets-keys.
    RotateKey,
}

#[derive(Subcommand)]
enum ConsoleCommand {
    /// Print a single-use sign-in link to the console for an organization.
    Link {
        #[arg(long)]
        org: String,
        /// How long the link can be opened (1m to 24h).
        #[arg(long, default_value = "15m")]
        ttl: String,
        /// What the session may do: `*` or RESOURCE:read|write, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "*")]
        scopes: Vec<String>,
    },
}

#[derive(Subcommand)]
enum OrgsCommand {
    /// Create an organization with a slug id (`acme`); prints its id.
    Create {
        id: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Override an organization's limits per call class (`600/1m,5000/1h`; empty: default).
    SetLimits {
        id: String,
        #[arg(long)]
        read: Option<String>,
        #[arg(long)]
        modify: Option<String>,
        #[arg(long)]
        remove: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; its secret is printed alone as the last line of stdout, once.
    Create {
        #[arg(long, required_unless_present = "platform", conflicts_with = "platform")]
        org: Option<String>,
        /// A platform key (manages organizations) instead of an organization key.
        #[arg(long)]
        platform: bool,
        #[arg(long, default_value = "")]
        label: String,
        /// `*` or RESOURCE:read|write, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "*")]
        scopes: Vec<String>,
        /// Only accept calls from this address or CIDR (repeatable).
        #[arg(long = "allow-ip")]
        allow_ip: Vec<String>,
        /// Expire after this long, e.g. 30d.
        #[arg(long)]
        expires_in: Option<String>,
        /// An extra limit for this key across all call classes, e.g. 100/1m.
        #[arg(long, default_value = "")]
        rate_limit: String,
    },
    /// List an organization's keys (never their secrets).
    List {
        #[arg(long)]
        org: String,
    },
    /// Revoke a key for good.
    Revoke {
        #[arg(long)]
        org: String,
        key_id: String,
    },
}

impl Common {
    fn trusted(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        self.trusted_proxies
            .iter()
            .map(|c| {
                c.trim()
                    .parse::<ipnet::IpNet>()
                    .map_err(|_| anyhow::anyhow!("--trusted-proxies: {c:?} is not a CIDR like 10.0.0.0/8"))
            })
            .collect()
    }

    fn cors_origins(&self) -> anyhow::Result<Vec<String>> {
        origins("--cors-allowed-origins", &self.cors_allowed_origins)
    }

    /// The console's settings, checked.
    fn console(&self) -> anyhow::Result<coursewire_api::console::Config> {
        let base_url = match &self.console_base_url {
            Some(url) => origins("--console-base-url", std::slice::from_ref(url))?.remove(0),
            None => String::new(),
        };
        Ok(coursewire_api::console::Config {
            base_url,
            frame_ancestors: origins("--console-frame-ancestors", &self.console_frame_ancestors)?,
            secure_cookies: self.console_secure_cookies,
        })
    }

    /// Where sign-in links point: `--console-base-url`, else the HTTP/JSON listen address.
    fn console_base_url(&self) -> anyhow::Result<String> {
        let config = self.console()?;
        Ok(if config.base_url.is_empty() {
            format!("http://{}", self.http_listen.as_deref().unwrap_or(&self.listen))
        } else {
            config.base_url
        })
    }

    fn keyring(&self) -> anyhow::Result<Arc<Keyring>> {
        Ok(Arc::new(Keyring::for_database(
            &self.database_url,
            self.secrets_key.as_deref(),
            &self.previous_secrets_keys,
        )?))
    }

    /// Checks every value up front so bad config fails at start, naming the flag.
    fn validate(&self) -> anyhow::Result<()> {
        self.listen
            .parse::<std::net::SocketAddr>()
            .with_context(|| format!("--listen {:?} is not an address like 127.0.0.1:50051", self.listen))?;
        self.metrics_listen
            .parse::<std::net::SocketAddr>()
            .with_context(|| format!("--metrics-listen {:?} is not an address", self.metrics_listen))?;
        self.cors_origins()?;
        self.console()?;
        if let Some(http) = &self.http_listen {
            http.parse::<std::net::SocketAddr>()
                .with_context(|| format!("--http-listen {http:?} is not an address like 127.0.0.1:8080"))?;
        }
        parse_duration(&self.event_retention).map_err(|e| anyhow::anyhow!("--event-retention: {e}"))?;
        parse_duration(&self.delivery_retention).map_err(|e| anyhow::anyhow!("--delivery-retention: {e}"))?;
        if self.max_streams_per_org == 0 {
            bail!("--max-streams-per-org must be at least 1");
        }
        parse_windows(&self.rate_limits).map_err(|e| anyhow::anyhow!("--rate-limits: {e}"))?;
        self.trusted()?;
        if self.log_format != "text" && self.log_format != "json" {
            bail!("--log-format must be text or json");
        }
        Ok(())
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let common = cli.common;
    common.validate()?;
    let command = cli.command.unwrap_or(Command::Run);
    // Roles that touch sealed secrets check the key before anything else happens.
    let secrets = match command {
        Command::Run | Command::Api | Command::Secrets(_) => Some(common.keyring()?),
        _ => None,
    };
    if let Command::Health { addr, service } = &command {
        return health(addr, service).await;
    }
    let clock = Arc::new(SystemClock);
    let db = Db::connect(&common.database_url).await?;
    match command {
        Command::Health { .. } => unreachable!("answered above, without a database"),
        Command::Migrate => {
            println!("migrations applied");
            Ok(())
        }
        Command::Run => {
            bootstrap(&db, clock.now_ms()).await?;
            serve(common, db, clock, secrets.expect("checked above"), true).await
        }
        Command::Api => {
            if common.amqp_url.is_none() {
                bail!("`coursewire api` needs --amqp-url (COURSEWIRE_AMQP_URL): events leave through RabbitMQ");
            }
            serve(common, db, clock, secrets.expect("checked above"), false).await
        }
        Command::Orgs(OrgsCommand::Create { id, name }) => {
            organizations::create_org(&db, &id, &name, clock.now_ms()).await.map_err(api_error)?;
            println!("{id}");
            Ok(())
        }
        Command::Orgs(OrgsCommand::SetLimits { id, read, modify, remove }) => {
            let mut org = organizations::get_org(&db, &id).await.map_err(api_error)?;
            let limits = org.rate_limits.get_or_insert_with(Default::default);
            for (slot, value) in [(&mut limits.read, read), (&mut limits.modify, modify), (&mut limits.remove, remove)]
            {
                if let Some(v) = value {
                    *slot = v;
                }
            }
            let org = organizations::save_org(&db, &org, clock.now_ms()).await.map_err(api_error)?;
            let l = org.rate_limits.unwrap_or_default();
            let show = |v: &str| if v.is_empty() { format!("default ({})", common.rate_limits) } else { v.to_string() };
            println!("{id}: read {}; modify {}; remove {}", show(&l.read), show(&l.modify), show(&l.remove));
            Ok(())
        }
        Command::Keys(cmd) => keys(cmd, &db, clock.now_ms()).await,
        Command::Console(ConsoleCommand::Link { org, ttl, scopes }) => {
            console_link(&db, &common.console_base_url()?, &org, &ttl, &scopes, clock.now_ms()).await
        }
        Command::Secrets(SecretsCommand::RotateKey) => {
            let keyring = secrets.expect("checked above");
            let n = webhooks::endpoint::reseal(&db, &keyring, false).await?;
            println!("re-sealed the secrets of {n} webhook endpoint(s) with key {}", keyring.primary_id());
            Ok(())
        }
    }
}

/// Prints the server's (or `service`'s) health status; an error unless it is SERVING.
async fn health(addr: &str, service: &str) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let wait = std::time::Duration::from_secs(3);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .with_context(|| format!("--addr {addr:?} is not an address"))?
        .connect_timeout(wait)
        .timeout(wait)
        .connect()
        .await
        .with_context(|| format!("no gRPC server answers at {addr}"))?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = tonic_health::pb::HealthCheckRequest { service: service.into() };
    let status = client.check(request).await.with_context(|| format!("health check of {addr} failed"))?;
    let status = status.into_inner().status();
    println!("{}", status.as_str_name());
    if status != ServingStatus::Serving {
        bail!("{addr} is not serving ({})", status.as_str_name());
    }
    Ok(())
}

fn api_error(e: coursewire_core::error::ApiError) -> anyhow::Error {
    let details: Vec<String> = e.details.violations.iter().map(|(f, d)| format!("{f} {d}")).collect();
    if details.is_empty() {
        anyhow::anyhow!("{} ({})", e.message, e.reason)
    } else {
        anyhow::anyhow!("{}: {}", e.reason, details.join("; "))
    }
}

async fn keys(cmd: KeysCommand, db: &Db, now: i64) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create { org, platform: _, label, scopes, allow_ip, expires_in, rate_limit } => {
            let expires_at = match expires_in {
                Some(d) => {
                    Some(now + parse_duration(&d).map_err(|e| anyhow::anyhow!("--expires-in: {e}"))?.as_millis() as i64)
                }
                None => None,
            };
            let new = NewKey { org_id: org, label, scopes, allowed_cidrs: allow_ip, expires_at, rate_limit };
            let (key, secret) = auth::create_key(db, new, now, None).await.map_err(api_error)?;
            println!("id: {}\nprefix: {}\nscopes: {}", key.id, key.prefix, key.scopes.0.join(","));
            println!("{secret}");
        }
        KeysCommand::List { org } => {
            for k in auth::list_keys(db, &org, "", i64::MAX, true).await.map_err(api_error)? {
                let state = if k.revoked_at.is_some() {
                    "revoked"
                } else if k.expires_at.is_some_and(|t| t <= now) {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{}\tsk_{}…\t{state}\t{}\t{}\tcreated {}\tlast used {}",
                    k.id,
                    k.prefix,
                    k.scopes.0.join(","),
                    k.label,
                    rfc3339(k.created_at),
                    k.last_used_at().map(rfc3339).unwrap_or_else(|| "never".into())
                );
            }
        }
        KeysCommand::Revoke { org, key_id } => {
            auth::revoke_key(db, &org, &key_id, now, None).await.map_err(api_error)?;
            println!("revoked {key_id}");
        }
    }
    Ok(())
}

/// On an empty database: organization `default` and one key with scope `*`, shown once.
async fn bootstrap(db: &Db, now: i64) -> anyhow::Result<()> {
    let orgs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM organizations").fetch_one(db.pool()).await?;
    if orgs > 0 {
        return Ok(());
    }
    organizations::create_org(db, "default", "Default organization", now).await.map_err(api_error)?;
    let new = NewKey {
        org_id: Some("default".into()),
        label: "bootstrap".into(),
        scopes: vec!["*".into()],
        allowed_cidrs: vec![],
        expires_at: None,
        rate_limit: String::new(),
    };
    let (_, secret) = auth::create_key(db, new, now, None).await.map_err(api_error)?;
    eprintln!(
        "\nCreated organization `default` with a bootstrap API key (shown only once):\n\n    {secret}\n\nTry: export CW_KEY={secret}\n"
    );
    Ok(())
}

/// Origins as browsers send them: a scheme, a host and maybe a port; nothing else.
fn origins(flag: &str, values: &[String]) -> anyhow::Result<Vec<String>> {
    values
        .iter()
        .map(|o| o.trim().trim_end_matches('/').to_string())
        .map(|o| {
            let rest = o.strip_prefix("https://").or_else(|| o.strip_prefix("http://"));
            let host = rest.filter(|r| !r.is_empty() && !r.contains(['/', '?', '#', '@', '*', ' ', ';', ',']));
            host.map(|_| o.clone())
                .ok_or_else(|| anyhow::anyhow!("{flag}: {o:?} is not an origin like https://portal.example.com"))
        })
        .collect()
}

/// Prints a sign-in link for `org` (the operator's: any scopes the organization may hold).
async fn console_link(db: &Db, base: &str, org: &str, ttl: &str, scopes: &[String], now: i64) -> anyhow::Result<()> {
    use coursewire_api::layers::auth::Scopes;
    use coursewire_api::layers::auth::sessions::{self, Grant};
    organizations::get_org(db, org).await.map_err(api_error)?;
    let ttl = parse_duration(ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
    let scopes = Scopes::parse(scopes).map_err(|e| anyhow::anyhow!("--scopes: {e}"))?;
    let grant = Grant { org_id: org.to_string(), scopes, key_id: None };
    let (token, _) = sessions::create_link(db, &grant, ttl.as_millis() as i64, now).await.map_err(api_error)?;
    println!("{base}/console/signin?token={token}");
    Ok(())
}

/// The API and relay, plus the dispatcher when `with_dispatcher` (the all-in-one).
async fn serve(
    common: Common,
    db: Db,
    clock: Arc<SystemClock>,
    secrets: Arc<Keyring>,
    with_dispatcher: bool,
) -> anyhow::Result<()> {
    // Rows written before secrets were sealed (an upgrade) are sealed now.
    let sealed = webhooks::endpoint::reseal(&db, &secrets, true).await?;
    if sealed > 0 {
        tracing::info!(endpoints = sealed, "sealed webhook secrets stored in clear by an earlier version");
    }
    let on_error = if common.rate_limit_on_backend_error == "closed" { OnError::Closed } else { OnError::Open };
    let limiter = limits::build(&common.rate_limits, common.redis_url.as_deref(), on_error, clock.clone()).await?;
    let listener = tokio::net::TcpListener::bind(&common.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", common.listen))?;
    let http_listener = match &common.http_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--http-listen {addr}: cannot bind"))?,
        ),
        None => None,
    };
    let topology = common.amqp_url.as_ref().map(|url| Topology {
        url: url.clone(),
        exchange: common.amqp_exchange.clone(),
        queue: common.amqp_queue.clone(),
    });
    let in_process = InProcessBus::new();
    let (bus, source): (Arc<dyn Bus>, Source) = match topology {
        Some(t) => (AmqpBus::start(t.clone()), Source::Amqp(t)),
        None => (in_process.clone(), Source::InProcess(in_process.subscribe())),
    };
    let dispatcher = if with_dispatcher { Some((common.dispatcher.clone().into(), source)) } else { None };
    let retention = (
        parse_duration(&common.event_retention).map_err(anyhow::Error::msg)?,
        parse_duration(&common.delivery_retention).map_err(anyhow::Error::msg)?,
    );
    let metrics_addr = common.metrics_listen.parse().context("--metrics-listen")?;
    // One endpoint serves the API's series and, in the all-in-one, the dispatcher's.
    let pool = db.clone();
    let collect = move || coursewire_api::metrics::record_pool(&pool);
    let metrics = tokio::spawn(async move {
        if let Err(e) = coursewire_core::telemetry::serve(metrics_addr, collect, Default::default()).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    let app = Application::build(Settings {
        db,
        clock,
        secrets,
        limiter,
        listener,
        http_listener,
        cors_allowed_origins: common.cors_origins()?,
        trusted_proxies: common.trusted()?,
        max_streams_per_org: common.max_streams_per_org,
        hub: Arc::new(Hub::default()),
        bus: Some(bus),
        dispatcher,
        retention: Some(retention),
        console: common.console()?,
    })
    .await?;
    let served = app.run_until(server::shutdown_signal()).await;
    metrics.abort();
    served
}
