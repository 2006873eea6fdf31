//! Webhook tables shared by the API (which manages endpoints and lists deliveries) and the
//! dispatcher (which sends, records attempts and disables endpoints), and the backpressure
//! signal from the dispatchers to the API.
pub mod deliveries;
pub mod endpoints;
pub mod pressure;
