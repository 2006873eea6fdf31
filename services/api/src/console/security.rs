//! The console's browser security: the session cookie, the headers on every page, and the
//! checks on every form post (the session's anti-forgery token and the `Origin`).
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use subtle::ConstantTimeEq;
use tonic::body::Body;

use super::site::{Config, Site};
use super::view;
use crate::layers::auth::sessions::Session;
use coursewire_core::error::ApiError;

/// The session cookie. `Path=/console`: the API's own paths never see it.
pub const COOKIE: &str = "cw_console";
/// Forms are small; anything larger is not one of ours.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// Whether the browser reached us over TLS (directly, or as a trusted proxy says), or the
/// operator asked for `Secure` cookies regardless.
pub fn is_secure(req: &Parts, config: &Config) -> bool {
    config.secure_cookies
        || config.base_url.starts_with("https://")
        || req.uri.scheme_str() == Some("https")
        || req.headers.get("x-forwarded-proto").is_some_and(|p| p == "https")
}

/// The headers every console answer carries.
pub fn harden(response: &mut Response<Body>, config: &Config, secure: bool) {
    let frame_ancestors =
        if config.frame_ancestors.is_empty() { "'none'".to_string() } else { config.frame_ancestors.join(" ") };
    // No inline script or style anywhere: the one script and stylesheet are our own files.
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
         form-action 'self'; base-uri 'none'; frame-ancestors {frame_ancestors}"
    );
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_str(&csp).expect("origins were checked at start"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Sign-in URLs carry a token: never send them, or any console URL, to another site.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if config.frame_ancestors.is_empty() {
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        // Pages hold an organization's data, and once a secret: keep them out of caches.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if secure {
        h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
}

/// `Set-Cookie` for a new session (or, with `None`, one that clears it).
pub fn session_cookie(token: Option<&str>, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let cookie = match token {
        Some(token) => format!("{COOKIE}={token}; Path=/console; HttpOnly; SameSite=Strict{secure}"),
        None => format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&cookie).expect("tokens are hex")
}

/// The session cookie's value, if the request has one.
pub fn cookie(req: &Parts) -> Option<String> {
    req.headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// The request's live session, or why there is none.
pub async fn session(site: &Site, req: &Parts) -> Result<Session, ApiError> {
    let token = cookie(req).ok_or_else(|| {
        ApiError::unauthenticated(coursewire_core::error::Reason::MissingCredentials, "not signed in")
    })?;
    site.auth.session(&token).await
}

/// A 303 to `to` (a console path), as every successful post answers: the browser then loads
/// the page with GET, so reloading it posts nothing twice.
pub fn see_other(to: &str) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    response.headers_mut().insert(header::LOCATION, HeaderValue::from_str(to).expect("console paths are ASCII"));
    response
}

/// Whether the request came from a page of this very origin. A browser names the page's
/// origin in `Origin`, which must then be ours (the `Host` it asked, or the configured base
/// URL). Our pages send no referrer (`no-referrer`), and under that policy browsers send
/// `Origin: null` even for the console's own forms; then `Sec-Fetch-Site` (sent by every
/// current browser, and not settable by a page) must say `same-origin`. A client that sends
/// neither header is not a browser a cross-site page could drive; the form's token still
/// has to match.
pub fn same_origin(headers: &HeaderMap, config: &Config) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let fetch_site = headers.get("sec-fetch-site").and_then(|s| s.to_str().ok());
    match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        Some("null") => fetch_site == Some("same-origin"),
        Some(origin) => {
            let authority = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
            authority.is_some_and(|a| !host.is_empty() && a.eq_ignore_ascii_case(host))
                || (!config.base_url.is_empty() && origin.eq_ignore_ascii_case(config.base_url.trim_end_matches('/')))
        }
        None => fetch_site.is_none_or(|s| s == "same-origin"),
    }
}

/// A posted form, once its origin and anti-forgery token have been checked.
pub struct Form(Vec<(String, String)>);

impl Form {
    /// Reads the body of a session's post, refusing it (403, nothing done) unless it came
    /// from one of this session's pages.
    pub async fn read(site: &Site, session: &Session, req: &Parts, body: Body) -> Result<Form, Response<Body>> {
        let forbidden = |why: &str| view::status_page(session, StatusCode::FORBIDDEN, why);
        if !same_origin(&req.headers, &site.config) {
            return Err(forbidden("This form was sent from another site, so nothing was done."));
        }
        let form = Form::parse(body).await.map_err(|why| forbidden(&why))?;
        let token = form.get("csrf");
        if !bool::from(token.as_bytes().ct_eq(session.csrf.as_bytes())) {
            return Err(forbidden(
                "This form is out of date or was not sent from this console (its security token \
                 does not match your session). Reload the page and try again.",
            ));
        }
        Ok(form)
    }

    /// The fields of an `application/x-www-form-urlencoded` body.
    pub async fn parse(body: Body) -> Result<Form, String> {
        let body = http_body_util::Limited::new(body, MAX_FORM_BYTES)
            .collect()
            .await
            .map_err(|_| "The form is too large.".to_string())?
            .to_bytes();
        Ok(Form(form_urlencoded::parse(&body).into_owned().collect()))
    }

    /// The first value of `name`, trimmed ("" when absent).
    pub fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.trim()).unwrap_or_default()
    }

    /// Every non-blank value of `name` (checkboxes, multi-selects).
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0.iter().filter(|(n, v)| n == name && !v.trim().is_empty()).map(|(_, v)| v.trim().to_string()).collect()
    }

    /// The non-blank lines of a text area.
    pub fn lines(&self, name: &str) -> Vec<String> {
        self.get(name).lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
    }
}

/// A page's query parameters.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn of(req: &Parts) -> Query {
        Query(form_urlencoded::parse(req.uri.query().unwrap_or_default().as_bytes()).into_owned().collect())
    }

    pub fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.trim()).unwrap_or_default()
    }
}
