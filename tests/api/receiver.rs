//! A real HTTP receiver on loopback for webhook tests: records every request and answers as
//! the test scripts it (status, headers, delay), by request number.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::Notify;

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Received {
    /// Path and query.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

/// How to answer request number `n` (0-based).
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub delay: Duration,
    pub body: String,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply { status, headers: vec![], delay: Duration::ZERO, body: String::new() }
    }
}

/// How to answer: by request number (0-based), seeing the request.
type Script = Arc<dyn Fn(usize, &Received) -> Reply + Send + Sync>;

pub struct Receiver {
    pub url: String,
    got: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
    script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// A receiver answering 204 to everything.
    pub async fn ok() -> Receiver {
        Self::start(|_| Reply::status(204)).await
    }

    pub async fn start(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Receiver {
        Self::start_scripted(Arc::new(move |n, _| script(n))).await
    }

    /// A receiver that answers each request after looking at it.
    pub async fn start_with(script: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Receiver {
        Self::start_scripted(Arc::new(move |_, r| script(r))).await
    }

    async fn start_scripted(script: Script) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let arrived = Arc::new(Notify::new());
        let script: Arc<Mutex<Script>> = Arc::new(Mutex::new(script));
        let (g, a, s) = (got.clone(), arrived.clone(), script.clone());
        let handler = move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
            let (got, arrived, script) = (g.clone(), a.clone(), s.clone());
            async move {
                let request = Received { uri: uri.to_string(), headers, body, at: Instant::now() };
                let n = {
                    let mut got = got.lock().unwrap();
                    got.push(request.clone());
                    got.len() - 1
                };
                arrived.notify_waiters();
                let script = script.lock().unwrap().clone();
                let reply = script(n, &request);
                tokio::time::sleep(reply.delay).await;
                let mut response: Response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
                for (name, value) in reply.headers {
                    response.headers_mut().insert(name, value.parse().unwrap());
                }
                response
            }
        };
        let app = axum::Router::new().route("/hooks", axum::routing::post(handler));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { url, got, arrived, script, task }
    }

    /// Answers later requests with `script` instead.
    pub fn script(&self, script: impl Fn(usize) -> Reply + Send + Sync + 'static) {
        *self.script.lock().unwrap() = Arc::new(move |n, _| script(n));
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (panics after `within`).
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let arrived = self.arrived.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            let left = deadline.checked_duration_since(Instant::now()).unwrap_or_else(|| {
                panic!("expected {n} webhook requests within {within:?}, got {}", got.len());
            });
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), arrived).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
