//! Coursewire's gRPC API: the request pipeline every call passes (`layers`, reading the
//! method table in `policy`), one module per resource (handler and queries side by side),
//! the event relay and EventService (`events`), all assembled by `server`. Core types
//! (store, errors, ids, config, secrets, events) are imported from `coursewire_core`.
pub mod account;
pub mod api_keys;
pub mod clock;
pub mod console;
pub mod courses;
pub mod domain_access;
pub mod domain_users;
pub mod domains;
pub mod enrollments;
pub mod events;
pub mod groups;
pub mod idempotency;
pub mod layers;
pub mod learning_paths;
pub mod metrics;
pub mod organizations;
pub mod page;
pub mod policy;
pub mod published_courses;
pub mod resource;
pub mod retention;
pub mod server;
pub mod streams;
pub mod users;
pub mod webhooks;

use std::sync::Arc;

use clock::SharedClock;
use coursewire_core::secrets::Keyring;
use coursewire_core::store::Db;
use page::TokenKey;

/// What every handler shares.
pub struct AppState {
    pub db: Db,
    pub clock: SharedClock,
    pub limiter: Arc<layers::limits::Limiter>,
    /// Paces writes while the webhook dispatchers are behind (backpressure).
    pub admission: Arc<layers::admission::Admission>,
    /// What the event relay tells readers (WatchEvents) and health.
    pub hub: Arc<events::relay::Hub>,
    /// Seals webhook secrets and header values at rest.
    pub secrets: Arc<Keyring>,
    /// Signs page tokens (derived from the secrets key, so every replica agrees).
    pub tokens: TokenKey,
    /// Long-lived streams: a cap per organization, and the signal to end them.
    pub streams: Arc<streams::Streams>,
    /// Wakes this replica's deadline scheduler after a write that sets a date.
    pub deadlines: Arc<tokio::sync::Notify>,
    /// Wakes this replica's fan-out worker after a call started an operation.
    pub fanout: Arc<tokio::sync::Notify>,
    /// How the web console is served; `base_url` is where sign-in links point.
    pub console: console::Config,
}

impl AppState {
    pub fn new(
        db: Db,
        clock: SharedClock,
        limiter: Arc<layers::limits::Limiter>,
        hub: Arc<events::relay::Hub>,
        secrets: Arc<Keyring>,
        streams_per_org: usize,
    ) -> AppState {
        let tokens = TokenKey::new(secrets.subkey("coursewire page tokens"));
        AppState {
            admission: layers::admission::Admission::new(db.clone(), clock.clone()),
            db,
            clock,
            limiter,
            hub,
            secrets,
            tokens,
            streams: streams::Streams::new(streams_per_org),
            deadlines: Arc::default(),
            fanout: Arc::default(),
            console: console::Config::default(),
        }
    }
}
