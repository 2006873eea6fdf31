//! `/console/keys`: the organization's API keys. Create (the secret shown once), edit label,
//! scopes and allowlist, revoke after a confirmation. Every action is the API's own call
//! (`CreateApiKey`, `UpdateApiKey`, `RevokeApiKey`), so delegation decides what a session
//! may grant: never more than it holds.
use http::{Response, StatusCode};
use maud::{Markup, html};
use serde_json::{Value, json};
use tonic::body::Body;

use super::api::{Api, Failure, enc};
use super::security::{Form, see_other};
use super::view::{self, Flash};
use crate::layers::auth::sessions::Session;
use crate::policy::RESOURCES;

/// Active keys an organization may hold (the API enforces it; the page shows it).
const MAX_KEYS: usize = 25;

/// What each scope resource covers, for the scope picker.
fn covers(resource: &str) -> &'static str {
    match resource {
        "users" => "users, their domain access and groups",
        "courses" => "courses, published courses and learning paths",
        "domains" => "domains",
        "enrollments" => "enrollments, lesson progress, path enrollments, group assignments",
        "webhooks" => "webhook endpoints, deliveries, attempts, replays",
        "events" => "the event log (ListEvents, WatchEvents)",
        "keys" => "API keys (within this key's own authority)",
        _ => "",
    }
}

pub async fn list(api: &mut Api, session: &Session, now: i64) -> Response<Body> {
    let keys = match api.get("/v1/apiKeys?page_size=100&include_revoked=true").await {
        Ok(page) => page["api_keys"].as_array().cloned().unwrap_or_default(),
        Err(f) => return view::failure_page(session, &f),
    };
    let now = coursewire_core::clock::rfc3339(now);
    let state = |k: &Value| state(k, &now);
    let active = keys.iter().filter(|k| state(k) == "active").count();
    let may_write = session.key.scopes.allows("keys", true);
    let rows = html! {
        @for k in &keys {
            @let id = k["id"].as_str().unwrap_or_default();
            tr {
                td { code { "sk_" (k["prefix"].as_str().unwrap_or_default()) "…" } }
                td { (view::text(&k["label"])) }
                td { (join(&k["scopes"])) }
                td { (join(&k["allowed_cidrs"])) }
                td { (view::time(&k["created_at"])) }
                td { (view::time(&k["last_used_at"])) }
                td { (view::time(&k["expires_at"])) }
                td { span class={ "state " (state(k)) } { (state(k)) } }
                td.actions {
                    @if may_write && state(k) == "active" {
                        a href={ "/console/keys/" (id) } aria-label={ "Edit key sk_" (k["prefix"].as_str().unwrap_or_default()) } { "Edit" }
                        " "
                        a href={ "/console/keys/" (id) "/revoke" } aria-label={ "Revoke key sk_" (k["prefix"].as_str().unwrap_or_default()) } { "Revoke" }
                    }
                }
            }
        }
    };
    let body = html! {
        p.toolbar {
            span { (active) " of " (MAX_KEYS) " active keys. Revoked and expired keys do not count." }
            @if may_write && active < MAX_KEYS { a.button href="/console/keys/new" { "Create a key" } }
        }
        (view::table("API keys", &["Key", "Label", "Scopes", "Allowed IPs", "Created", "Last used", "Expires", "State", ""], rows))
    };
    view::ok(view::page(session, "/console/keys", "API keys", &Flash::None, body))
}

/// `now` as RFC 3339 (UTC, same width), so times compare as strings.
fn state(k: &Value, now: &str) -> &'static str {
    if k["revoked_at"].is_string() {
        "revoked"
    } else if k["expires_at"].as_str().is_some_and(|t| t <= now) {
        "expired"
    } else {
        "active"
    }
}

fn join(v: &Value) -> Markup {
    let items: Vec<&str> = v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    if items.is_empty() {
        html! { span.muted { "—" } }
    } else {
        html! { (items.join(", ")) }
    }
}

pub fn new(session: &Session) -> Response<Body> {
    let body = key_form(session, "/console/keys", &Value::Null, &[]);
    view::ok(view::page(session, "/console/keys", "Create a key", &Flash::None, body))
}

/// The form for a new key, or the editable fields of `key`.
fn key_form(session: &Session, action: &str, key: &Value, problems: &[(String, String)]) -> Markup {
    let editing = key.is_object();
    let held: Vec<&str> =
        key["scopes"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let cidrs: Vec<&str> =
        key["allowed_cidrs"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let problem = |field: &str| problems.iter().find(|(f, _)| f.ends_with(field)).map(|(_, d)| d.clone());
    let mine = &session.key.scopes;
    html! {
        form.card method="post" action=(action) {
            (view::csrf(session))
            label for="label" { "Label" }
            input #label name="label" type="text" maxlength="200" value=(key["label"].as_str().unwrap_or_default());
            fieldset aria-describedby="scopes-help" {
                legend { "Scopes" }
                p #scopes-help .hint { "What the key may call. Write implies read. You can grant only what this session holds." }
                @if let Some(p) = problem("scopes") { p.problem role="alert" { (p) } }
                @if mine.0.iter().any(|s| s == "*") {
                    label.check { input type="checkbox" name="scopes" value="*" checked[held.contains(&"*")]; " " code { "*" } " — everything, including future resources" }
                }
                div.scopes {
                    @for r in RESOURCES {
                        div.scope {
                            span.resource { (r) span.hint { " — " (covers(r)) } }
                            @for access in ["read", "write"] {
                                @let scope = format!("{r}:{access}");
                                @if mine.allows(r, access == "write") {
                                    label.check { input type="checkbox" name="scopes" value=(scope) checked[held.contains(&scope.as_str())]; " " (access) }
                                }
                            }
                        }
                    }
                }
            }
            label for="cidrs" { "Allowed IP addresses" }
            @if let Some(p) = problem("allowed_cidrs") { p.problem role="alert" { (p) } }
            textarea #cidrs name="allowed_cidrs" rows="3" aria-describedby="cidrs-help" { (cidrs.join("\n")) }
            p #cidrs-help .hint { "One address or CIDR per line (203.0.113.0/24). Empty: any address." }
            @if !editing {
                label for="expires" { "Expires" }
                select #expires name="expires_in" {
                    option value="" { "Never" }
                    option value="7" { "In 7 days" }
                    option value="30" { "In 30 days" }
                    option value="90" { "In 90 days" }
                    option value="365" { "In a year" }
                }
                label for="rate_limit" { "Per-key limit" }
                @if let Some(p) = problem("rate_limit") { p.problem role="alert" { (p) } }
                input #rate_limit name="rate_limit" type="text" placeholder="e.g. 100/1m" aria-describedby="limit-help";
                p #limit-help .hint { "Optional, across all call classes, on top of the organization's limits." }
            }
            button type="submit" { @if editing { "Save changes" } @else { "Create key" } }
            " " a href="/console/keys" { "Cancel" }
        }
    }
}

/// The API key fields a form sets.
fn fields(form: &Form) -> Value {
    json!({
        "label": form.get("label"),
        "scopes": form.all("scopes"),
        "allowed_cidrs": form.lines("allowed_cidrs"),
    })
}

pub async fn create(api: &mut Api, session: &Session, form: &Form, now: i64) -> Response<Body> {
    let mut key = fields(form);
    if let Ok(days) = form.get("expires_in").parse::<i64>() {
        key["expires_at"] = json!(coursewire_core::clock::rfc3339(now + days * 86_400_000));
    }
    key["rate_limit"] = json!(form.get("rate_limit"));
    match api.post("/v1/apiKeys", key.clone()).await {
        Ok(created) => {
            let prefix = created["api_key"]["prefix"].as_str().unwrap_or_default();
            let secret = created["secret"].as_str().unwrap_or_default();
            let body = html! {
                div.secret role="alert" {
                    p { strong { "Copy this key now. It will not be shown again." } " Coursewire keeps only its hash." }
                    (view::copyable("secret", &format!("Secret of key sk_{prefix}…"), secret))
                }
                p { a href="/console/keys" { "Done — back to API keys" } }
            };
            view::ok(view::page(session, "/console/keys", "Key created", &Flash::None, body))
        }
        Err(f) => form_again(session, "/console/keys", "Create a key", &key, &f),
    }
}

fn form_again(session: &Session, action: &str, title: &str, key: &Value, f: &Failure) -> Response<Body> {
    if matches!(f.status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND) {
        return view::failure_page(session, f);
    }
    let status = if f.status.is_client_error() { StatusCode::UNPROCESSABLE_ENTITY } else { f.status };
    let body = key_form(session, action, key, &f.fields);
    view::respond(status, view::page(session, "/console/keys", title, &Flash::Failed(f.explain()), body))
}

pub async fn edit(api: &mut Api, session: &Session, id: &str) -> Response<Body> {
    match api.get(&format!("/v1/apiKeys/{}", enc(id))).await {
        Ok(key) => {
            let action = format!("/console/keys/{id}");
            let body = key_form(session, &action, &key, &[]);
            let title = format!("Edit key sk_{}…", key["prefix"].as_str().unwrap_or_default());
            view::ok(view::page(session, "/console/keys", &title, &Flash::None, body))
        }
        Err(f) => view::failure_page(session, &f),
    }
}

pub async fn update(api: &mut Api, session: &Session, id: &str, form: &Form) -> Response<Body> {
    let key = fields(form);
    match api.patch(&format!("/v1/apiKeys/{}", enc(id)), key.clone()).await {
        Ok(_) => see_other("/console/keys"),
        Err(f) => {
            let mut shown = key;
            shown["id"] = json!(id);
            form_again(session, &format!("/console/keys/{id}"), "Edit key", &shown, &f)
        }
    }
}

pub async fn confirm_revoke(api: &mut Api, session: &Session, id: &str) -> Response<Body> {
    let key = match api.get(&format!("/v1/apiKeys/{}", enc(id))).await {
        Ok(key) => key,
        Err(f) => return view::failure_page(session, &f),
    };
    let prefix = key["prefix"].as_str().unwrap_or_default();
    let body = html! {
        p { "Revoke key " code { "sk_" (prefix) "…" } " (" (view::text(&key["label"])) ")? "
            "Every call with it is refused within a second, on every server, and any console session it opened ends. This cannot be undone." }
        form method="post" action={ "/console/keys/" (id) "/revoke" } {
            (view::csrf(session))
            button.danger type="submit" { "Yes, revoke" }
            " " a href="/console/keys" { "Cancel" }
        }
    };
    view::ok(view::page(session, "/console/keys", "Revoke a key", &Flash::None, body))
}

pub async fn revoke(api: &mut Api, session: &Session, id: &str) -> Response<Body> {
    match api.post(&format!("/v1/apiKeys/{}:revoke", enc(id)), json!({})).await {
        Ok(_) => see_other("/console/keys"),
        Err(f) => view::failure_page(session, &f),
    }
}
