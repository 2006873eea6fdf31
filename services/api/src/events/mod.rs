//! Events on the API side: the relay that publishes the outbox (to RabbitMQ or the
//! in-process bus), EventService (the log, WatchEvents). Writing events (the outbox itself),
//! the envelope and the bus contract live in the shared core.
pub mod amqp;
pub mod relay;
mod service;
mod watch;

pub use coursewire_core::events::{Change, EVENT_TYPES, Mark, bus, in_order, record, topology};
pub use service::EventApi;
pub(crate) use service::type_terms;
