//! Coursewire's webhook dispatcher: turns events into durable, signed deliveries.
//! The delivery pipeline arrives with the webhook issue; this crate holds its place in the
//! workspace layout (ARCHITECTURE §1).
