//! Coursewire's gRPC API: one module per resource (handler and queries side by side),
//! with auth as a tower layer, one error type, and the event outbox.
pub mod account;
pub mod api_keys;
pub mod auth;
pub mod clock;
pub mod config;
pub mod courses;
pub mod domain_users;
pub mod domains;
pub mod enrollments;
pub mod error;
pub mod events;
pub mod idempotency;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod organizations;
pub mod page;
pub mod published_courses;
pub mod resource;
pub mod server;
pub mod store;
pub mod users;
pub mod validate;
pub mod webhooks;

use clock::SharedClock;
use store::Db;

/// What every handler shares.
pub struct AppState {
    pub db: Db,
    pub clock: SharedClock,
    pub limiter: std::sync::Arc<limits::Limiter>,
    /// What the event relay tells readers (WatchEvents) and health.
    pub hub: std::sync::Arc<events::relay::Hub>,
}
