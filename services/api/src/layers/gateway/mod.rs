//! HTTP/JSON on the gRPC port: every RPC at the path its `google.api.http` rule names,
//! transcoded into a gRPC call to the same service stack, so auth, rate limits, metrics,
//! request ids and errors are the gRPC API's own, and nothing here knows any resource.
//!
//! gRPC and gRPC-Web requests (`content-type: application/grpc…`) pass through untouched;
//! everything else is HTTP/JSON, or the OpenAPI document (`/openapi.json`) and the
//! interactive reference built on it (`/docs`), and the error reference every error links to
//! (`/docs/errors`).
mod csv;
mod docs;
mod error_reference;
pub mod openapi;
mod request;
pub mod response;
pub mod routes;

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use tonic::body::Body;

use coursewire_core::error::{ApiError, Reason};
use routes::{Matched, Routes};

/// Largest request or response message, in bytes (a full batch of 1,000 items fits).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// A JSON body may be larger than its protobuf message (names, quotes, base64).
const MAX_JSON_BYTES: usize = 2 * MAX_MESSAGE_BYTES;

/// The routes, and the OpenAPI document describing them (served at `/openapi.json`).
struct Gateway {
    routes: Routes,
    openapi: bytes::Bytes,
}

#[derive(Clone)]
pub struct HttpJsonLayer {
    gateway: Arc<Gateway>,
    enabled: bool,
}

impl HttpJsonLayer {
    pub fn new() -> anyhow::Result<Self> {
        let routes = Routes::from_pool(&routes::pool())?;
        let openapi = serde_json::to_vec(&openapi::document(&routes))?.into();
        Ok(HttpJsonLayer { gateway: Arc::new(Gateway { routes, openapi }), enabled: true })
    }

    /// Disabled, it passes every request on (a gRPC listener when `--http-listen` is set).
    pub fn enabled(self, enabled: bool) -> Self {
        HttpJsonLayer { enabled, ..self }
    }
}

impl<S> tower::Layer<S> for HttpJsonLayer {
    type Service = HttpJson<S>;
    fn layer(&self, inner: S) -> HttpJson<S> {
        HttpJson { gateway: self.enabled.then(|| self.gateway.clone()), inner }
    }
}

#[derive(Clone)]
pub struct HttpJson<S> {
    gateway: Option<Arc<Gateway>>,
    inner: S,
}

impl<S> tower::Service<http::Request<Body>> for HttpJson<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(gateway) = self.gateway.clone().filter(|_| !is_grpc(&req)) else {
            return Box::pin(inner.call(req));
        };
        Box::pin(async move {
            // The reference needs no key, like reflection: it describes, it does not call.
            if req.method() == http::Method::GET {
                if req.uri().path() == "/openapi.json" {
                    let headers = http::HeaderMap::new();
                    return Ok(response::json_response(StatusCode::OK, gateway.openapi.clone(), headers));
                }
                if let Some(page) = docs::file(req.uri().path()).or_else(|| error_reference::file(req.uri().path())) {
                    return Ok(page);
                }
            }
            let (route, bindings) = match gateway.routes.find(req.method(), req.uri().path()) {
                Matched::Route(route, bindings) => (route, bindings),
                Matched::WrongVerb(verbs) => return Ok(wrong_verb(req.method(), &verbs)),
                Matched::None => return Ok(no_route(&req)),
            };
            let (mut parts, body) = req.into_parts();
            let body = match http_body_util::Limited::new(body, MAX_JSON_BYTES).collect().await {
                Ok(body) => body.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    let e =
                        ApiError::new(Reason::MessageTooLarge, format!("bodies are limited to {MAX_JSON_BYTES} bytes"))
                            .with("limit_bytes", MAX_JSON_BYTES.to_string());
                    return Ok(error(e));
                }
                Err(e) => {
                    return Ok(error(ApiError::new(
                        Reason::MalformedRequest,
                        format!("the body could not be read: {e}"),
                    )));
                }
            };
            let (csv, query) = match csv::asked(&parts.headers, parts.uri.query()) {
                Ok(asked) => asked,
                Err(e) => return Ok(error(e)),
            };
            let message = match request::encode(route, bindings, query.as_deref(), &body) {
                Ok(message) => message,
                Err(e) => return Ok(error(e)),
            };
            // The same request, as gRPC: headers (credentials, request id, forwarded-for,
            // traceparent) and extensions (the peer address) carry over.
            parts.method = http::Method::POST;
            parts.uri = route.grpc_path.parse().expect("a gRPC path is a valid URI");
            if coursewire_core::trace::exporting() {
                // The call's span (see `request_id`) takes the method's name, as a gRPC call's does.
                tracing::Span::current().record("otel.name", route.grpc_path.trim_start_matches('/'));
            }
            parts.version = http::Version::HTTP_2;
            parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.remove(header::ACCEPT_ENCODING);
            if let Some(options) = csv {
                let call = csv::Call { uri: parts.uri, headers: parts.headers, extensions: parts.extensions };
                return Ok(csv::respond(inner, route, call, message, options).await);
            }
            let response = inner.call(http::Request::from_parts(parts, response::grpc_body(message))).await?;
            let output = route.method.output();
            Ok(if route.server_streaming() {
                response::ndjson(response, output)
            } else {
                response::unary(response, &output).await
            })
        })
    }
}

fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn error(e: ApiError) -> http::Response<Body> {
    response::error_response(&tonic::Status::from(e), http::HeaderMap::new())
}

fn no_route<B>(req: &http::Request<B>) -> http::Response<Body> {
    let path = req.uri().path();
    error(
        ApiError::new(Reason::NotFound, format!("no method at {} {path}", req.method()))
            .with("path", path)
            .help("/openapi.json lists every path"),
    )
}

fn wrong_verb(verb: &http::Method, allowed: &[http::Method]) -> http::Response<Body> {
    let allow = allowed.iter().map(http::Method::as_str).collect::<Vec<_>>().join(", ");
    let body = serde_json::json!({"error": {
        "code": 405,
        "status": "METHOD_NOT_ALLOWED",
        "message": format!("{verb} is not allowed here; use {allow}"),
        "details": [],
    }});
    let mut response = response::json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        serde_json::to_vec(&body).expect("JSON"),
        http::HeaderMap::new(),
    );
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_str(&allow).expect("method names are ASCII"));
    response
}
