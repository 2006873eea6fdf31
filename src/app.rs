//! The application, assembled in one place (as zero-to-production's `Application::build`):
//! the `coursewire` binary, the test harness and the benchmarks all start it through
//! `Application::build`, so what runs in tests is what runs in production. Turning flags into
//! `Settings` is the CLI's job; this module only wires the parts together and stops them in
//! the right order.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use coursewire_api::clock::SharedClock;
use coursewire_api::enrollments::deadlines::Deadlines;
use coursewire_api::events::relay::{Hub, Relay};
use coursewire_api::groups::fanout::FanOut;
use coursewire_api::layers::limits::Limiter;
use coursewire_api::retention::Retention;
use coursewire_api::{AppState, server};
use coursewire_core::events::bus::Bus;
use coursewire_core::secrets::Keyring;
use coursewire_core::store::Db;
use coursewire_dispatcher::{Config as DispatcherConfig, Dispatcher, Source};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// What the application is made of. The caller owns the resources (database, clock, keys,
/// limiter, listener) so that tests can keep handles on them.
pub struct Settings {
    pub db: Db,
    pub clock: SharedClock,
    pub secrets: Arc<Keyring>,
    pub limiter: Arc<Limiter>,
    pub listener: tokio::net::TcpListener,
    /// HTTP/JSON on a listener of its own (`--http-listen`); `None`: on `listener`.
    pub http_listener: Option<tokio::net::TcpListener>,
    /// Origins whose web pages may call the API (CORS); empty: none.
    pub cors_allowed_origins: Vec<String>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub max_streams_per_org: usize,
    pub hub: Arc<Hub>,
    /// Where the relay publishes events; `None`: this replica leaves relaying to others.
    pub bus: Option<Arc<dyn Bus>>,
    /// A dispatcher in this process (the all-in-one), reading from `Source`.
    pub dispatcher: Option<(DispatcherConfig, Source)>,
    /// Pruning of old events and deliveries: (event retention, delivery retention).
    pub retention: Option<(Duration, Duration)>,
    /// The web console; an empty `base_url` means this server's HTTP/JSON listener.
    pub console: coursewire_api::console::Config,
}

/// A running application: the gRPC server on `addr`, and its background tasks.
pub struct Application {
    addr: SocketAddr,
    stop_serving: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    relay: Option<(watch::Sender<bool>, JoinHandle<()>)>,
    dispatcher: Option<(watch::Sender<bool>, JoinHandle<anyhow::Result<()>>)>,
    /// Tasks that hold nothing worth finishing: aborted when the application stops.
    background: Vec<JoinHandle<()>>,
}

impl Application {
    /// Starts every part: the server accepts calls as soon as this returns.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let Settings {
            db,
            clock,
            secrets,
            limiter,
            listener,
            http_listener,
            cors_allowed_origins,
            trusted_proxies,
            max_streams_per_org,
            hub,
            bus,
            dispatcher,
            retention,
            mut console,
        } = settings;
        let addr = listener.local_addr()?;
        if console.base_url.is_empty() {
            let http = http_listener.as_ref().map_or(Ok(addr), |l| l.local_addr())?;
            console.base_url = format!("http://{http}");
        }
        let mut background = Vec::new();
        let relay = bus.map(|bus| {
            let relay = Relay { db: db.clone(), bus, hub: hub.clone(), clock: clock.clone() };
            let (stop, stopped) = watch::channel(false);
            (stop, tokio::spawn(relay.run(stopped_when(stopped))))
        });
        if let Some((events, deliveries)) = retention {
            let retention = Retention { db: db.clone(), clock: clock.clone(), events, deliveries };
            background.push(tokio::spawn(retention.run()));
        }
        let dispatcher = match dispatcher {
            Some((config, source)) => {
                let (stop, stopped) = watch::channel(false);
                let dispatcher = Dispatcher::new(db.clone(), clock.clone(), secrets.clone(), config)?;
                let task = tokio::spawn(dispatcher.run(source, stopped_when(stopped)));
                Some((stop, task))
            }
            None => None,
        };
        let mut state = AppState::new(db.clone(), clock.clone(), limiter, hub, secrets, max_streams_per_org);
        state.console = console;
        let state = Arc::new(state);
        // Every replica runs the deadline scheduler: each deadline is claimed by one of them.
        let deadlines = Deadlines { db, clock, wake: state.deadlines.clone() };
        background.push(tokio::spawn(deadlines.run()));
        // And a fan-out worker: operations are leased, one replica runs each at a time.
        let fanout = FanOut {
            db: state.db.clone(),
            clock: state.clock.clone(),
            wake: state.fanout.clone(),
            owner: coursewire_core::ids::new_id(coursewire_core::ids::kind::WORKER),
        };
        background.push(tokio::spawn(fanout.run()));
        let (stop_serving, stopped) = oneshot::channel::<()>();
        let listeners = server::Listeners { grpc: listener, http: http_listener, cors_allowed_origins };
        let server = tokio::spawn(server::serve(state, trusted_proxies, listeners, async {
            let _ = stopped.await;
        }));
        Ok(Application { addr, stop_serving: Some(stop_serving), server: Some(server), relay, dispatcher, background })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `signal`, then stops as on SIGTERM (see `stop`).
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let mut server = self.server.take().expect("the server runs");
        let ended = tokio::select! {
            _ = signal => None,
            // The server ended by itself (it failed): stop the rest too, and say why.
            ended = &mut server => Some(ended),
        };
        match ended {
            None => {
                self.server = Some(server);
                self.stop().await
            }
            Some(ended) => {
                let stopped = self.stop().await;
                ended??;
                stopped
            }
        }
    }

    /// Stops in order: the server drains its calls; the relay sends nothing new, waits for
    /// the confirmations of what it sent (the in-process dispatcher's answers among them, so
    /// the dispatcher still runs) and saves its cursor past them before another replica may
    /// lead, so a deploy publishes nothing twice; then the dispatcher finishes its attempts
    /// in flight.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.stop_server().await?;
        self.stop_relay().await?;
        self.stop_dispatcher().await?;
        for task in self.background.drain(..) {
            task.abort();
        }
        Ok(())
    }

    /// Stops serving and waits until the calls in progress are answered.
    pub async fn stop_server(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop_serving.take() {
            let _ = stop.send(());
        }
        match self.server.take() {
            Some(server) => server.await?,
            None => Ok(()),
        }
    }

    /// Stops the relay as SIGTERM would (see `Relay::run`).
    pub async fn stop_relay(&mut self) -> anyhow::Result<()> {
        match self.relay.take() {
            Some((stop, task)) => {
                let _ = stop.send(true);
                Ok(task.await?)
            }
            None => Ok(()),
        }
    }

    /// Stops the dispatcher as SIGTERM would: no new work, attempts in flight finish.
    pub async fn stop_dispatcher(&mut self) -> anyhow::Result<()> {
        match self.dispatcher.take() {
            Some((stop, task)) => {
                let _ = stop.send(true);
                task.await?
            }
            None => Ok(()),
        }
    }

    /// Cancels every task at once (no draining): what dropping does.
    pub fn abort(&mut self) {
        if let Some(task) = self.server.take() {
            task.abort();
        }
        if let Some((_, task)) = self.relay.take() {
            task.abort();
        }
        if let Some((_, task)) = self.dispatcher.take() {
            task.abort();
        }
        for task in self.background.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Application {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Completes once `stop` says so (or its sender is gone).
async fn stopped_when(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
