//! One HTTP attempt: the Standard Webhooks headers, the envelope bytes as the body, no
//! redirects, a timeout, and addresses checked by the SSRF guard as they are connected to.
use std::sync::Arc;

use coursewire_core::trace::TraceContext;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT};

use crate::endpoints::Endpoint;
use crate::schedule::{Response, parse_retry_after};
use crate::signing::{Secret, signature_header};
use crate::ssrf::{self, GuardedResolver};

/// Response bytes kept per attempt.
pub const KEEP_BODY: usize = 4096;

/// What an attempt posts: the event's envelope (its exact bytes) and the trace the event
/// belongs to (the span of the call that caused it).
#[derive(Clone, Debug)]
pub struct Payload {
    pub body: Arc<str>,
    pub trace: Option<TraceContext>,
}

pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
}

/// What an attempt saw.
pub struct Attempt {
    pub response: Response,
    pub duration_ms: i64,
    pub body: String,
}

impl Sender {
    pub fn new(timeout: Duration, allow_private: bool, max_in_flight: usize) -> anyhow::Result<Sender> {
        // TLS uses ring, like the rest of the process; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            // Many endpoints may share one host: keep a connection for every attempt that may run.
            .pool_max_idle_per_host(max_in_flight)
            .pool_idle_timeout(Duration::from_secs(60))
            .dns_resolver(Arc::new(GuardedResolver::system(allow_private)))
            .user_agent(format!("Coursewire-Webhooks/{}", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Sender { client, allow_private })
    }

    /// POSTs `body` (event `event_id`) to `endpoint`, signed with `secrets`, as the span
    /// `trace` (its `traceparent`); `now` (epoch ms) is only used to read HTTP-date
    /// `Retry-After` values.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        secrets: &[Secret],
        event_id: &str,
        body: &Arc<str>,
        trace: Option<TraceContext>,
        now: i64,
    ) -> Attempt {
        let started = Instant::now();
        let (response, kept) =
            self.try_send(endpoint, secrets, event_id, body, trace, now).await.unwrap_or_else(|e| (e, String::new()));
        Attempt { response, duration_ms: started.elapsed().as_millis() as i64, body: kept }
    }

    async fn try_send(
        &self,
        endpoint: &Endpoint,
        secrets: &[Secret],
        event_id: &str,
        body: &Arc<str>,
        trace: Option<TraceContext>,
        now: i64,
    ) -> Result<(Response, String), Response> {
        let url = reqwest::Url::parse(&endpoint.url).map_err(|_| Response::Error("invalid_target"))?;
        ssrf::check_literal(&url, self.allow_private).map_err(|_| Response::Error("refused_target"))?;
        // The receiver compares this with its own clock, so it is wall time, not scheduling time.
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default();
        let mut request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", event_id)
            .header("webhook-timestamp", timestamp)
            .header("webhook-signature", signature_header(secrets, event_id, timestamp, body.as_bytes()));
        if let Some(trace) = trace {
            request = request.header("traceparent", trace.to_string());
        }
        for (name, value) in &endpoint.headers {
            if let (Ok(name), Ok(value)) = (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str()))
                && name != USER_AGENT
            {
                request = request.header(name, value);
            }
        }
        let response = request.body(body.to_string()).send().await.map_err(|e| Response::Error(error_kind(&e)))?;
        let code = response.status().as_u16();
        let retry_after =
            response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after(v, now));
        let mut kept = Vec::new();
        let mut response = response;
        // The status is what counts; a body cut short or too slow is kept as far as it came.
        while kept.len() < KEEP_BODY
            && let Ok(Some(chunk)) = response.chunk().await
        {
            kept.extend_from_slice(&chunk[..chunk.len().min(KEEP_BODY - kept.len())]);
        }
        Ok((Response::Status { code, retry_after }, String::from_utf8_lossy(&kept).into_owned()))
    }
}

fn error_kind(e: &reqwest::Error) -> &'static str {
    if ssrf::refused_in(e).is_some() {
        "refused_target"
    } else if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "io"
    }
}
