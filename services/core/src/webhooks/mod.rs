//! Webhook tables shared by the API (which manages endpoints and lists deliveries) and the
//! dispatcher (which sends, records attempts and disables endpoints).
pub mod deliveries;
pub mod endpoints;
