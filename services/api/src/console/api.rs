//! The console's client of the API: HTTP/JSON calls sent into the rest of the pipeline with
//! the session's authority (`SessionGrant`) instead of a key. Whatever a key's call goes
//! through — routes, auth and scopes, limits, idempotency, events — these go through too.
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tonic::body::Body;
use tonic::transport::server::TcpConnectInfo;
use tower::util::BoxCloneService;
use tower::{BoxError, Service, ServiceExt};

use crate::layers::auth::sessions::{Session, SessionGrant};

/// The rest of the pipeline, as the console calls it.
pub type Pipeline = BoxCloneService<Request<Body>, Response<Body>, BoxError>;

pub struct Api {
    pipeline: Pipeline,
    grant: SessionGrant,
    /// What the browser's request carried that the API reads: request id, forwarded-for.
    headers: HeaderMap,
    peer: Option<TcpConnectInfo>,
}

/// An API call that did not succeed, as the console shows it.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub reason: String,
    pub message: String,
    /// Field violations: (field, what is wrong).
    pub fields: Vec<(String, String)>,
}

impl Failure {
    fn from_json(status: StatusCode, body: &Value) -> Failure {
        let error = &body["error"];
        let details = error["details"].as_array().cloned().unwrap_or_default();
        let reason = details.iter().find_map(|d| d["reason"].as_str()).unwrap_or_default().to_string();
        let fields = details
            .iter()
            .filter_map(|d| d["field_violations"].as_array())
            .flatten()
            .map(|v| {
                (
                    v["field"].as_str().unwrap_or_default().to_string(),
                    v["description"].as_str().unwrap_or_default().into(),
                )
            })
            .collect();
        let message = error["message"].as_str().unwrap_or("the call failed").to_string();
        Failure { status, reason, message, fields }
    }

    /// What to tell a person, with the reason code support will ask for.
    pub fn explain(&self) -> String {
        let mut text = self.message.clone();
        for (field, what) in &self.fields {
            text.push_str(&format!("; {field}: {what}"));
        }
        if !self.reason.is_empty() {
            text.push_str(&format!(" ({})", self.reason));
        }
        text
    }
}

impl Api {
    pub fn new(pipeline: Pipeline, session: &Session, req: &http::request::Parts) -> Api {
        let mut headers = HeaderMap::new();
        for name in ["x-request-id", "x-forwarded-for", "traceparent"] {
            if let Some(v) = req.headers.get(name) {
                headers.insert(name, v.clone());
            }
        }
        Api {
            pipeline,
            grant: SessionGrant(session.key.clone()),
            headers,
            peer: req.extensions.get::<TcpConnectInfo>().cloned(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Result<Value, Failure> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&mut self, path: &str, body: Value) -> Result<Value, Failure> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&mut self, path: &str, body: Value) -> Result<Value, Failure> {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&mut self, path: &str) -> Result<Value, Failure> {
        self.call(Method::DELETE, path, None).await
    }

    async fn call(&mut self, method: Method, path: &str, body: Option<Value>) -> Result<Value, Failure> {
        let body = body.map(|b| serde_json::to_vec(&b).expect("JSON")).unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::new(http_body_util::Full::new(bytes::Bytes::from(body))))
            .expect("console calls are well-formed");
        req.headers_mut().extend(self.headers.clone());
        req.headers_mut().insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        req.extensions_mut().insert(self.grant.clone());
        if let Some(peer) = &self.peer {
            req.extensions_mut().insert(peer.clone());
        }
        let failed = |message: String| Failure {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            reason: "INTERNAL".into(),
            message,
            fields: vec![],
        };
        let response = self
            .pipeline
            .ready()
            .await
            .map_err(|e| failed(e.to_string()))?
            .call(req)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        let bytes = response.into_body().collect().await.map_err(|e| failed(e.to_string()))?.to_bytes();
        let json: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| failed(format!("the API answered with no JSON: {e}")))?
        };
        if status.is_success() { Ok(json) } else { Err(Failure::from_json(status, &json)) }
    }
}

/// `s` percent-encoded for a path segment or query value.
pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
