//! A fast webhook receiver on loopback (answers 204, like nginx would) that notes when each
//! request arrived, keyed by the envelope's `data.id`.
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::http::StatusCode;

#[derive(Clone, Default)]
pub struct Receiver {
    arrivals: Arc<Mutex<Vec<(String, Instant)>>>,
    pub url: String,
}

impl Receiver {
    pub async fn start() -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let receiver = Receiver { arrivals: Arc::default(), url };
        let arrivals = receiver.arrivals.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: Bytes| {
                let arrivals = arrivals.clone();
                async move {
                    let at = Instant::now();
                    let id = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["data"]["id"].as_str().map(String::from))
                        .unwrap_or_default();
                    arrivals.lock().unwrap().push((id, at));
                    StatusCode::NO_CONTENT
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(receiver)
    }

    pub fn count(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }

    /// Takes the arrivals noted so far.
    pub fn take(&self) -> Vec<(String, Instant)> {
        std::mem::take(&mut *self.arrivals.lock().unwrap())
    }

    /// Waits until `n` requests arrived; returns when the last did.
    pub async fn wait_for(&self, n: usize, within: std::time::Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(last) = { self.arrivals.lock().unwrap().get(n.saturating_sub(1)).map(|a| a.1) } {
                return Ok(last);
            }
            anyhow::ensure!(Instant::now() < deadline, "only {} of {n} requests arrived in {within:?}", self.count());
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
}

/// Milliseconds at percentile `p` of `values` (sorted here).
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let v = values.get(((values.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
    (v * 10.0).round() / 10.0
}
