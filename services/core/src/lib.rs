//! What the gRPC API (`coursewire-api`) and the webhook dispatcher (`coursewire-dispatcher`)
//! both stand on: the store and its migrations, the clock, configuration parsing, ids, the
//! one error type, sealed secrets, the outbox (event envelope, bus, RabbitMQ topology), the
//! webhook tables, the small Prometheus endpoint, and the contracts between the processes
//! (`wire`: message headers, the event envelope, the signing-secret form). Neither side
//! depends on the other.
pub mod activity;
pub mod clock;
pub mod config;
pub mod error;
pub mod events;
#[cfg(feature = "health")]
pub mod health;
pub mod ids;
pub mod request_id;
pub mod secrets;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod trace;
pub mod validate;
pub mod webhooks;
pub mod wire;

/// Tables in docs/ read by code: the event catalogue, and tests that keep docs and code equal.
pub mod doc_tables;
