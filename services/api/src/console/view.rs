//! What every console page shares: the layout (skip link, header, navigation, sign-out),
//! status pages, messages after an action, small formatting helpers, and the compiled-in
//! assets.
use http::{HeaderValue, Response, StatusCode, header};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;
use tonic::body::Body;

use super::api::Failure;
use crate::layers::auth::sessions::Session;

const CSS: &str = include_str!("../../assets/console/console.css");
const JS: &str = include_str!("../../assets/console/console.js");

/// A message shown above a page after an action.
pub enum Flash {
    None,
    Done(String),
    Failed(String),
}

/// The console's pages in the navigation: (path, label, the scope resource they read).
const NAV: &[(&str, &str, Option<&str>)] = &[
    ("/console", "Overview", None),
    ("/console/keys", "API keys", Some("keys")),
    ("/console/webhooks", "Webhooks", Some("webhooks")),
    ("/console/deliveries", "Deliveries", Some("webhooks")),
    ("/console/events", "Event catalogue", None),
    ("/console/activity", "Activity", None),
];

/// A whole page: `current` is the navigation entry it belongs to.
pub fn page(session: &Session, current: &str, title: &str, flash: &Flash, body: Markup) -> Markup {
    let key = &session.key;
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, true))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    div.brand { "Coursewire " span { "Console" } }
                    div.who {
                        span.org { (key.org_name) " " code { (key.org_id) } }
                        span.actor { "Signed in with " (session.actor) }
                        form method="post" action="/console/signout" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                nav aria-label="Console" {
                    ul {
                        @for (href, label, needs) in NAV {
                            @if needs.is_none_or(|r| key.scopes.allows(r, false)) {
                                li {
                                    @if *href == current {
                                        a href=(href) aria-current="page" { (label) }
                                    } @else {
                                        a href=(href) { (label) }
                                    }
                                }
                            }
                        }
                    }
                }
                main #main {
                    h1 { (title) }
                    @match flash {
                        Flash::None => {}
                        Flash::Done(text) => p.flash.done role="status" { (text) },
                        Flash::Failed(text) => p.flash.failed role="alert" { (text) },
                    }
                    (body)
                }
            }
        }
    }
}

/// Every page's head: its title, the stylesheet, and (signed in) the script.
fn head(title: &str, script: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Coursewire Console" }
            link rel="stylesheet" href="/console/assets/console.css";
            @if script { script src="/console/assets/console.js" defer {} }
        }
    }
}

/// A page with no session (sign-in, its errors).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, false))
            body.bare {
                main #main {
                    div.brand { "Coursewire " span { "Console" } }
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

pub fn respond(status: StatusCode, markup: Markup) -> Response<Body> {
    let mut response = Response::new(Body::new(http_body_util::Full::new(bytes::Bytes::from(markup.into_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response
}

pub fn ok(markup: Markup) -> Response<Body> {
    respond(StatusCode::OK, markup)
}

/// A page that says what went wrong (403, 404, 405), inside the console's frame.
pub fn status_page(session: &Session, status: StatusCode, text: &str) -> Response<Body> {
    let title = match status {
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        _ => status.canonical_reason().unwrap_or("Error"),
    };
    let body = html! {
        p { (text) }
        p { a href="/console" { "Back to the overview" } }
    };
    respond(status, page(session, "", title, &Flash::None, body))
}

/// The page for an API call that failed where the page cannot go on: its status (403 for
/// a scope the session lacks, 404 for an id that is not the organization's), its message.
pub fn failure_page(session: &Session, failure: &Failure) -> Response<Body> {
    let status = match failure.status {
        StatusCode::BAD_REQUEST => StatusCode::NOT_FOUND,
        s => s,
    };
    let text = match status {
        StatusCode::FORBIDDEN => format!("Your session may not see this page: {}", failure.explain()),
        StatusCode::NOT_FOUND => "There is no such item in your organization.".to_string(),
        _ => failure.explain(),
    };
    status_page(session, status, &text)
}

/// The hidden field every form of a session carries.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// An RFC 3339 time as a person reads it: `2026-12-02 18:16 UTC`, in a `<time>` element.
pub fn time(value: &Value) -> Markup {
    match value.as_str().filter(|s| s.len() >= 16) {
        Some(t) => html! { time datetime=(t) { (t[..10]) " " (t[11..16]) } },
        None => html! { span.muted { "—" } },
    }
}

/// A string field, or a dash.
/// A number of an API answer: 64-bit integers come as JSON strings (proto3 JSON), others as
/// numbers; 0 when absent.
pub fn number(value: &Value) -> i64 {
    value.as_str().and_then(|s| s.parse().ok()).or(value.as_i64()).unwrap_or(0)
}

pub fn text(value: &Value) -> Markup {
    match value.as_str().filter(|s| !s.is_empty()) {
        Some(s) => html! { (s) },
        None => html! { span.muted { "—" } },
    }
}

/// A table that scrolls sideways on a narrow screen, reachable by keyboard.
pub fn table(label: &str, head: &[&str], rows: Markup) -> Markup {
    html! {
        div.scroll role="region" aria-label=(label) tabindex="0" {
            table {
                thead { tr { @for h in head { th scope="col" { (h) } } } }
                tbody { (rows) }
            }
        }
    }
}

/// A button that copies `value` (with the script; the value is also selectable text).
pub fn copyable(id: &str, label: &str, value: &str) -> Markup {
    html! {
        div.copy {
            label for=(id) { (label) }
            input #(id) type="text" readonly value=(value) spellcheck="false" autocomplete="off";
            button type="button" data-copy=(id) { "Copy" }
        }
    }
}

/// The compiled-in stylesheet and script.
pub fn asset(name: &str) -> Response<Body> {
    let (body, kind) = match name {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return respond(StatusCode::NOT_FOUND, bare("Not found", html! { p { "No such file." } })),
    };
    let mut response = Response::new(Body::new(http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes()))));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    response
}
