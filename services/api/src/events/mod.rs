//! Events on the API side: the relay that publishes the outbox (to RabbitMQ or the
//! in-process bus), EventService (the log, WatchEvents). Writing events (the outbox itself),
//! the envelope and the bus contract live in the shared core.
pub mod amqp;
pub mod catalogue;
mod log;
pub mod relay;
mod service;
mod watch;

pub(crate) use log::type_terms;
pub use service::EventApi;
