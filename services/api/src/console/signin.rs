//! Signing in and out: a sign-in link (`/console/signin?token=…`, single use), or an API key
//! typed into the sign-in form. Either answers 303 to `/console` with the session cookie.
//! The key is used once, to check it and open the session; the browser never keeps it.
use http::request::Parts;
use http::{Response, StatusCode, header};
use maud::html;
use tonic::body::Body;
use tonic::transport::server::TcpConnectInfo;

use super::security::{self, Form, Query, see_other, session_cookie};
use super::site::Site;
use super::view;
use crate::layers::auth::sessions::{self, Grant, Session};
use coursewire_core::error::ApiError;

/// `GET /console/signin`: with `?token=`, redeems the link; without, the sign-in form.
pub async fn page(site: &Site, req: &Parts) -> Response<Body> {
    let query = Query::of(req);
    let token = query.get("token").to_string();
    if token.is_empty() {
        let notice = if !query.get("ended").is_empty() {
            Some("Your session has ended. Sign in again.")
        } else if !query.get("signed_out").is_empty() {
            Some("You have signed out.")
        } else {
            None
        };
        return form(StatusCode::OK, notice);
    }
    let now = site.clock.now_ms();
    match sessions::redeem_link(&site.db, &token, now).await {
        Ok(Some(grant)) => open(site, req, &grant, "sign-in link").await,
        Ok(None) => form(
            StatusCode::UNAUTHORIZED,
            Some(
                "This sign-in link has been used, has expired or is not known. Ask for a new one, or sign in with an API key.",
            ),
        ),
        Err(e) => form(StatusCode::SERVICE_UNAVAILABLE, Some(&e.message)),
    }
}

/// `POST /console/signin`: the key typed into the form.
pub async fn with_key(site: &Site, req: &Parts, body: Body) -> Response<Body> {
    if !security::same_origin(&req.headers, &site.config) {
        return form(StatusCode::FORBIDDEN, Some("This form was sent from another site, so nothing was done."));
    }
    let peer = req.extensions.get::<TcpConnectInfo>().and_then(|i| i.remote_addr()).map(|a| a.ip());
    let secure = security::is_secure(req, &site.config);
    let form_data = match Form::parse(body).await {
        Ok(f) => f,
        Err(why) => return form(StatusCode::BAD_REQUEST, Some(&why)),
    };
    let caller = match site.auth.sign_in(form_data.get("key"), &req.headers, peer).await {
        Ok(caller) => caller,
        Err(e) => return form(StatusCode::UNAUTHORIZED, Some(&refusal(&e))),
    };
    let key = &caller.key;
    let grant = Grant { org_id: key.org_id.clone(), scopes: key.scopes.clone(), key_id: Some(key.id.clone()) };
    start(site, &grant, &format!("key sk_{}…", key.prefix), secure).await
}

/// Why a key could not sign in, as the form says it.
fn refusal(e: &ApiError) -> String {
    format!("{} ({})", capitalized(&e.message), e.reason)
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

async fn open(site: &Site, req: &Parts, grant: &Grant, actor: &str) -> Response<Body> {
    start(site, grant, actor, security::is_secure(req, &site.config)).await
}

async fn start(site: &Site, grant: &Grant, actor: &str, secure: bool) -> Response<Body> {
    match sessions::start_session(&site.db, grant, actor, site.clock.now_ms()).await {
        Ok(token) => {
            let mut response = see_other("/console");
            response.headers_mut().insert(header::SET_COOKIE, session_cookie(Some(&token), secure));
            response
        }
        Err(e) => form(StatusCode::SERVICE_UNAVAILABLE, Some(&e.message)),
    }
}

/// `POST /console/signout`: ends the session everywhere and clears the cookie.
pub async fn sign_out(site: &Site, session: &Session) -> Response<Body> {
    if let Err(e) = sessions::end_session(&site.db, &session.id, site.clock.now_ms()).await {
        return view::status_page(session, StatusCode::SERVICE_UNAVAILABLE, &e.message);
    }
    let mut response = see_other("/console/signin?signed_out=1");
    response.headers_mut().insert(header::SET_COOKIE, session_cookie(None, site.config.secure_cookies));
    response
}

/// A page that needs a session, requested without a live one: to the sign-in page (a page
/// load), or 401 (anything else, so no action runs).
pub fn required(req: &Parts, ended: ApiError) -> Response<Body> {
    let cross_site = req.headers.get("sec-fetch-site").is_some_and(|s| s == "cross-site");
    if req.method == http::Method::GET && cross_site && security::cookie(req).is_none() {
        // Arriving from a sign-in link opened on another site (an email, a partner's page):
        // the browser withholds a `SameSite=Strict` cookie all along that redirect chain.
        // Loading the page again from here sends it.
        let again = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/console").to_string();
        let body = html! {
            meta http-equiv="refresh" content={ "0; url=" (again) };
            p { a href=(again) { "Continue to the console" } }
        };
        return view::ok(view::bare("Signing in", body));
    }
    if req.method != http::Method::GET && req.method != http::Method::HEAD {
        return form(StatusCode::UNAUTHORIZED, Some("Your session has ended; sign in again. Nothing was done."));
    }
    let mut response = see_other("/console/signin");
    if security::cookie(req).is_some() {
        // A cookie of a session that ended: say so once, and drop it.
        tracing::debug!(reason = %ended.reason, "console session ended");
        response = see_other("/console/signin?ended=1");
        response.headers_mut().insert(header::SET_COOKIE, session_cookie(None, false));
    }
    response
}

/// The sign-in form, with a message when something went wrong.
fn form(status: StatusCode, problem: Option<&str>) -> Response<Body> {
    let body = html! {
        @if let Some(problem) = problem {
            p.flash.failed role="alert" { (problem) }
        }
        p { "Open a sign-in link (" code { "coursewire console link --org ORG" } " prints one), or sign in with an API key of your organization." }
        form.card method="post" action="/console/signin" autocomplete="off" {
            label for="key" { "API key" }
            input #key name="key" type="password" required autocomplete="off" spellcheck="false"
                placeholder="sk_…" aria-describedby="key-help";
            p #key-help .hint { "Used once to sign you in; it is not kept in your browser. The session may do what the key may do." }
            button type="submit" { "Sign in" }
        }
    };
    view::respond(status, view::bare("Sign in", body))
}
