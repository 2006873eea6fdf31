//! Coursewire's webhook dispatcher: turns events into durable, signed deliveries.
//!
//! Built so far: Standard Webhooks signing (`signing`). The delivery pipeline (intake,
//! scheduler, sender, retries) is the webhook issue's remaining work.
pub mod signing;
