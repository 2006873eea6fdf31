//! The web console (docs/console.md): pages under `/console` for API keys, webhooks,
//! deliveries and the event catalogue, served on the listener that serves HTTP/JSON.
//!
//! It is a client of the API, in the same process. A page reads and writes through `api::Api`,
//! which sends HTTP/JSON calls into the rest of the request pipeline (gateway, auth, limits,
//! admission, the resource services) with the session's authority attached as a
//! `SessionGrant`. So every console action is authorized, scoped to the organization, counted
//! against its limits and recorded as events exactly as the same call from a key would be;
//! nothing here decides what a session may do.
//!
//! ```text
//!   request_id → metrics → console ─┬─ /console/…: sign-in, session, CSRF → a page (view.rs)
//!                                   │                 └─ api::Api ─┐
//!                                   └─ everything else ────────────┴→ CORS → gateway → … → services
//! ```
//!
//! Pages are server-rendered HTML (maud: compile-checked, escaped by default) with one small
//! script (copy buttons, live delivery updates); every asset is compiled into the binary.
mod activity;
mod api;
mod catalogue;
mod deliveries;
mod keys;
mod overview;
mod security;
mod signin;
mod site;
mod view;
mod webhooks;

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use tonic::body::Body;
use tower::util::BoxCloneService;
use tower::{BoxError, ServiceExt};

use crate::layers::auth::sessions::Session;
use api::{Api, Pipeline};
use security::Form;
pub use site::{Config, Site};
pub use view::Flash;

#[derive(Clone)]
pub struct ConsoleLayer {
    site: Option<Arc<Site>>,
}

impl ConsoleLayer {
    pub fn new(site: Arc<Site>) -> Self {
        ConsoleLayer { site: Some(site) }
    }

    /// Disabled, it passes every request on (the gRPC listener when `--http-listen` is set).
    pub fn enabled(self, enabled: bool) -> Self {
        ConsoleLayer { site: self.site.filter(|_| enabled) }
    }
}

impl<S> tower::Layer<S> for ConsoleLayer {
    type Service = Console<S>;
    fn layer(&self, inner: S) -> Console<S> {
        Console { site: self.site.clone(), inner }
    }
}

#[derive(Clone)]
pub struct Console<S> {
    site: Option<Arc<Site>>,
    inner: S,
}

impl<S> tower::Service<Request<Body>> for Console<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path();
        let ours = path == "/console" || path.starts_with("/console/");
        let Some(site) = self.site.clone().filter(|_| ours) else {
            return Box::pin(inner.call(req));
        };
        let pipeline: Pipeline = BoxCloneService::new(inner.map_err(Into::into));
        Box::pin(async move { Ok(route(site, pipeline, req).await) })
    }
}

/// `/console/…` split into its segments (`/console/keys/key_1` → `["keys", "key_1"]`).
fn segments(path: &str) -> Vec<&str> {
    path.trim_start_matches("/console").split('/').filter(|s| !s.is_empty()).collect()
}

/// Answers a console request, with the console's security headers on every answer.
async fn route(site: Arc<Site>, pipeline: Pipeline, req: Request<Body>) -> Response<Body> {
    // The head alone is kept across awaits (a body is not `Sync`).
    let (req, body) = req.into_parts();
    let mut response = answer(&site, pipeline, &req, body).await;
    security::harden(&mut response, &site.config, security::is_secure(&req, &site.config));
    response
}

async fn answer(site: &Arc<Site>, pipeline: Pipeline, req: &http::request::Parts, body: Body) -> Response<Body> {
    let path = req.uri.path().to_string();
    let segments = segments(&path);
    let method = req.method.clone();
    // What needs no session: assets, and signing in.
    match (&method, segments.as_slice()) {
        (&Method::GET, ["assets", name]) => return view::asset(name),
        (&Method::GET, ["signin"]) => return signin::page(site, req).await,
        (&Method::POST, ["signin"]) => return signin::with_key(site, req, body).await,
        _ => {}
    }
    let session = match security::session(site, req).await {
        Ok(session) => session,
        Err(ended) => return signin::required(req, ended),
    };
    let mut api = Api::new(pipeline, &session, req);
    if method == Method::POST {
        let form = match Form::read(site, &session, req, body).await {
            Ok(form) => form,
            Err(refused) => return refused,
        };
        return post(site, &mut api, &session, &segments, form).await;
    }
    if method != Method::GET && method != Method::HEAD {
        return view::status_page(&session, StatusCode::METHOD_NOT_ALLOWED, "This page is only read or posted to.");
    }
    let query = security::Query::of(req);
    let now = site.clock.now_ms();
    match segments.as_slice() {
        [] => overview::page(&mut api, &session, now).await,
        ["keys"] => keys::list(&mut api, &session, now).await,
        ["keys", "new"] => keys::new(&session),
        ["keys", id] => keys::edit(&mut api, &session, id).await,
        ["keys", id, "revoke"] => keys::confirm_revoke(&mut api, &session, id).await,
        ["webhooks"] => webhooks::list(&mut api, &session).await,
        ["webhooks", "new"] => webhooks::new(&session),
        ["webhooks", id] => webhooks::show(&mut api, &session, id, Flash::None).await,
        ["webhooks", id, "delete"] => webhooks::confirm_delete(&mut api, &session, id).await,
        ["deliveries"] => deliveries::list(&mut api, &session, &query).await,
        ["deliveries", id] => deliveries::show(&mut api, &session, id, Flash::None).await,
        ["events"] => catalogue::page(&session),
        ["activity"] => activity::page(&mut api, &session, &query).await,
        _ => view::status_page(&session, StatusCode::NOT_FOUND, "There is no such page in the console."),
    }
}

/// A form was posted (its session and CSRF token already checked).
async fn post(site: &Site, api: &mut Api, session: &Session, segments: &[&str], form: Form) -> Response<Body> {
    match segments {
        ["signout"] => signin::sign_out(site, session).await,
        ["keys"] => keys::create(api, session, &form, site.clock.now_ms()).await,
        ["keys", id] => keys::update(api, session, id, &form).await,
        ["keys", id, "revoke"] => keys::revoke(api, session, id).await,
        ["webhooks"] => webhooks::create(api, session, &form).await,
        ["webhooks", id] => webhooks::update(api, session, id, &form).await,
        ["webhooks", id, action] => webhooks::act(api, session, id, action, &form).await,
        ["deliveries", id, "retry"] => deliveries::retry(api, session, id).await,
        _ => view::status_page(session, StatusCode::NOT_FOUND, "There is no such action in the console."),
    }
}
