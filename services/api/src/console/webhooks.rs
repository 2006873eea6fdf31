//! `/console/webhooks`: endpoints with their health, create and edit (event types from the
//! catalogue, custom headers write-only), rotate the signing secret (the new one shown once),
//! enable and disable, send a test event, replay events since a time, delete.
use std::collections::BTreeMap;

use http::{Response, StatusCode};
use maud::{Markup, html};
use serde_json::{Value, json};
use tonic::body::Body;

use super::api::{Api, Failure, enc};
use super::security::{Form, see_other};
use super::view::{self, Flash};
use crate::layers::auth::sessions::Session;
use coursewire_core::events::EVENT_TYPES;

/// How an endpoint has fared, from its latest deliveries.
#[derive(Default)]
struct Health {
    last: Option<String>,
    succeeded: usize,
    settled: usize,
    /// Failed deliveries since the last success, newest first.
    streak: usize,
}

fn health_by_endpoint(deliveries: &Value) -> BTreeMap<String, Health> {
    let mut by = BTreeMap::<String, Health>::new();
    // Newest first (asked for in that order).
    let list = deliveries["deliveries"].as_array().cloned().unwrap_or_default();
    let mut streak_open = BTreeMap::<String, bool>::new();
    for d in &list {
        let id = d["webhook_id"].as_str().unwrap_or_default().to_string();
        let h = by.entry(id.clone()).or_default();
        if h.last.is_none() {
            h.last = d["updated_at"].as_str().map(String::from);
        }
        let open = streak_open.entry(id).or_insert(true);
        match d["state"].as_str() {
            Some("SUCCEEDED") => {
                h.succeeded += 1;
                h.settled += 1;
                *open = false;
            }
            Some("FAILED") => {
                h.settled += 1;
                if *open {
                    h.streak += 1;
                }
            }
            _ => {}
        }
    }
    by
}

pub async fn list(api: &mut Api, session: &Session) -> Response<Body> {
    let webhooks = match api.get("/v1/webhooks?page_size=1000").await {
        Ok(page) => page["webhooks"].as_array().cloned().unwrap_or_default(),
        Err(f) => return view::failure_page(session, &f),
    };
    let health = api
        .get("/v1/deliveries?page_size=1000&order_by=create_time%20desc")
        .await
        .map(|d| health_by_endpoint(&d))
        .unwrap_or_default();
    let may_write = session.key.scopes.allows("webhooks", true);
    let rows = html! {
        @for w in &webhooks {
            @let id = w["id"].as_str().unwrap_or_default();
            @let h = health.get(id);
            tr {
                td { a href={ "/console/webhooks/" (id) } { (view::text(&w["url"])) } }
                td { (view::text(&w["description"])) }
                td { (types(&w["event_types"])) }
                td {
                    @if w["disabled"] == true {
                        span.state.revoked { "disabled" } " " (view::text(&w["disabled_reason"]))
                    } @else { span.state.active { "enabled" } }
                }
                td { @match h.and_then(|h| h.last.clone()) { Some(t) => (view::time(&json!(t))), None => span.muted { "never" } } }
                td { @match h.filter(|h| h.settled > 0) { Some(h) => { (h.succeeded * 100 / h.settled) "%" }, None => span.muted { "—" } } }
                td { (h.map(|h| h.streak).unwrap_or(0)) }
            }
        }
    };
    let body = html! {
        p.toolbar {
            span { (webhooks.len()) " endpoints. Health is from each endpoint's latest deliveries." }
            @if may_write { a.button href="/console/webhooks/new" { "Add an endpoint" } }
        }
        (view::table("Webhook endpoints", &["URL", "Description", "Events", "State", "Last delivery", "Success rate", "Failures in a row"], rows))
    };
    view::ok(view::page(session, "/console/webhooks", "Webhooks", &Flash::None, body))
}

fn types(v: &Value) -> Markup {
    let items: Vec<&str> = v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    if items.is_empty() {
        html! { "all events" }
    } else {
        html! { (items.join(", ")) }
    }
}

pub fn new(session: &Session) -> Response<Body> {
    let body = endpoint_form(session, "/console/webhooks", &Value::Null, &[]);
    view::ok(view::page(session, "/console/webhooks", "Add an endpoint", &Flash::None, body))
}

fn endpoint_form(session: &Session, action: &str, w: &Value, problems: &[(String, String)]) -> Markup {
    let editing = w["id"].is_string();
    let chosen: Vec<&str> =
        w["event_types"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let problem = |field: &str| problems.iter().find(|(f, _)| f.ends_with(field)).map(|(_, d)| d.clone());
    let header_names: Vec<&String> = w["headers"].as_object().map(|m| m.keys().collect()).unwrap_or_default();
    let number = |f: &str| w[f].as_i64().filter(|n| *n > 0).map(|n| n.to_string()).unwrap_or_default();
    html! {
        form.card method="post" action=(action) {
            (view::csrf(session))
            label for="url" { "URL" }
            @if let Some(p) = problem("url") { p.problem role="alert" { (p) } }
            input #url name="url" type="url" required placeholder="https://example.com/webhooks" value=(w["url"].as_str().unwrap_or_default());
            label for="description" { "Description" }
            input #description name="description" type="text" maxlength="500" value=(w["description"].as_str().unwrap_or_default());
            fieldset aria-describedby="types-help" {
                legend { "Event types" }
                p #types-help .hint { "None checked: every event. See the " a href="/console/events" { "event catalogue" } "." }
                @if let Some(p) = problem("event_types") { p.problem role="alert" { (p) } }
                div.types {
                    @for t in EVENT_TYPES {
                        label.check { input type="checkbox" name="event_types" value=(t) checked[chosen.contains(t)]; " " code { (t) } }
                    }
                }
            }
            label for="headers" { "Custom headers" }
            @if let Some(p) = problem("headers") { p.problem role="alert" { (p) } }
            textarea #headers name="headers" rows="3" aria-describedby="headers-help" {}
            p #headers-help .hint {
                "One " code { "Name: value" } " per line, sent with every delivery. Values are write-only: they are never shown again."
                @if editing { " Leave empty to keep the current ones" @if !header_names.is_empty() { " (" (header_names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")) ")" } "." }
            }
            div.pair {
                div {
                    label for="rate" { "Max deliveries per second" }
                    input #rate name="max_rate_per_second" type="number" min="0" value=(number("max_rate_per_second"));
                }
                div {
                    label for="concurrency" { "Max in flight" }
                    input #concurrency name="max_concurrency" type="number" min="0" value=(number("max_concurrency"));
                }
            }
            p.hint { "0 or empty: the dispatcher's defaults." }
            button type="submit" { @if editing { "Save changes" } @else { "Add endpoint" } }
            " " a href="/console/webhooks" { "Cancel" }
        }
    }
}

/// The endpoint fields a form sets (headers only when some were typed: they are write-only).
fn fields(form: &Form) -> Result<Value, Failure> {
    let int = |name: &str| form.get(name).parse::<i64>().unwrap_or(0);
    let mut w = json!({
        "url": form.get("url"),
        "description": form.get("description"),
        "event_types": form.all("event_types"),
        "max_rate_per_second": int("max_rate_per_second"),
        "max_concurrency": int("max_concurrency"),
    });
    let lines = form.lines("headers");
    if !lines.is_empty() {
        let mut headers = serde_json::Map::new();
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                return Err(Failure {
                    status: StatusCode::BAD_REQUEST,
                    reason: "INVALID_FIELD".into(),
                    message: "each custom header is a `Name: value` line".into(),
                    fields: vec![("headers".into(), format!("{line:?} has no `:`"))],
                });
            };
            headers.insert(name.trim().to_string(), json!(value.trim()));
        }
        w["headers"] = Value::Object(headers);
    }
    Ok(w)
}

pub async fn create(api: &mut Api, session: &Session, form: &Form) -> Response<Body> {
    let result = match fields(form) {
        Ok(w) => api.post("/v1/webhooks", w).await,
        Err(f) => Err(f),
    };
    match result {
        Ok(created) => {
            let id = created["webhook"]["id"].as_str().unwrap_or_default().to_string();
            let body = html! {
                div.secret role="alert" {
                    p { strong { "Copy the signing secret now. It is shown once here." } " Your receiver verifies every delivery with it (Standard Webhooks)." }
                    (view::copyable("secret", "Signing secret", created["secret"].as_str().unwrap_or_default()))
                }
                p { a href={ "/console/webhooks/" (id) } { "Done — to the endpoint" } }
            };
            view::ok(view::page(session, "/console/webhooks", "Endpoint added", &Flash::None, body))
        }
        Err(f) if matches!(f.status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND) => view::failure_page(session, &f),
        Err(f) => {
            let shown = fields(form).unwrap_or(Value::Null);
            let body = endpoint_form(session, "/console/webhooks", &shown, &f.fields);
            let status = if f.status.is_client_error() { StatusCode::UNPROCESSABLE_ENTITY } else { f.status };
            view::respond(
                status,
                view::page(session, "/console/webhooks", "Add an endpoint", &Flash::Failed(f.explain()), body),
            )
        }
    }
}

pub async fn show(api: &mut Api, session: &Session, id: &str, flash: Flash) -> Response<Body> {
    let w = match api.get(&format!("/v1/webhooks/{}", enc(id))).await {
        Ok(w) => w,
        Err(f) => return view::failure_page(session, &f),
    };
    page(session, &w, flash, &[], StatusCode::OK)
}

fn page(
    session: &Session,
    w: &Value,
    flash: Flash,
    problems: &[(String, String)],
    status: StatusCode,
) -> Response<Body> {
    let id = w["id"].as_str().unwrap_or_default();
    let may_write = session.key.scopes.allows("webhooks", true);
    let disabled = w["disabled"] == true;
    let action = |name: &str, label: &str, class: &str| {
        html! {
            form.inline method="post" action={ "/console/webhooks/" (id) "/" (name) } {
                (view::csrf(session))
                button class=(class) type="submit" { (label) }
            }
        }
    };
    let body = html! {
        dl.facts {
            dt { "URL" } dd { (view::text(&w["url"])) }
            dt { "State" } dd { @if disabled { "disabled — " (view::text(&w["disabled_reason"])) } @else { "enabled" } }
            dt { "Events" } dd { (types(&w["event_types"])) }
            dt { "Created" } dd { (view::time(&w["created_at"])) }
        }
        p { a href={ "/console/deliveries?webhook_id=" (id) } { "Deliveries to this endpoint" } }
        @if may_write {
            section aria-labelledby="act-h" {
                h2 #act-h { "Actions" }
                div.actions {
                    (action("test", "Send a test event", ""))
                    @if disabled { (action("enable", "Enable", "")) } @else { (action("disable", "Disable", "")) }
                    (action("rotate", "Rotate the signing secret", ""))
                    a.button.danger href={ "/console/webhooks/" (id) "/delete" } { "Delete…" }
                }
                form.card method="post" action={ "/console/webhooks/" (id) "/replay" } {
                    (view::csrf(session))
                    label for="since" { "Replay events since (UTC)" }
                    input #since name="since" type="datetime-local" required;
                    label.check { input type="checkbox" name="only_failed" value="true"; " Only events whose delivery failed" }
                    button type="submit" { "Replay" }
                    p.hint { "Each event is delivered again with the same webhook-id (its event id), so receivers that deduplicate by it recognise the repeat." }
                }
            }
            section aria-labelledby="edit-h" {
                h2 #edit-h { "Edit" }
                (endpoint_form(session, &format!("/console/webhooks/{id}"), w, problems))
            }
        }
    };
    let title = format!("Endpoint {}", w["url"].as_str().unwrap_or(id));
    view::respond(status, view::page(session, "/console/webhooks", &title, &flash, body))
}

pub async fn update(api: &mut Api, session: &Session, id: &str, form: &Form) -> Response<Body> {
    let result = match fields(form) {
        Ok(w) => api.patch(&format!("/v1/webhooks/{}", enc(id)), w).await,
        Err(f) => Err(f),
    };
    match result {
        Ok(w) => page(session, &w, Flash::Done("Saved.".into()), &[], StatusCode::OK),
        Err(f) if matches!(f.status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND) => view::failure_page(session, &f),
        Err(f) => match api.get(&format!("/v1/webhooks/{}", enc(id))).await {
            Ok(w) => page(session, &w, Flash::Failed(f.explain()), &f.fields, StatusCode::UNPROCESSABLE_ENTITY),
            Err(f) => view::failure_page(session, &f),
        },
    }
}

pub async fn confirm_delete(api: &mut Api, session: &Session, id: &str) -> Response<Body> {
    let w = match api.get(&format!("/v1/webhooks/{}", enc(id))).await {
        Ok(w) => w,
        Err(f) => return view::failure_page(session, &f),
    };
    let body = html! {
        p { "Delete the endpoint " strong { (view::text(&w["url"])) } " with all its deliveries and attempts? This cannot be undone." }
        form method="post" action={ "/console/webhooks/" (id) "/delete" } {
            (view::csrf(session))
            button.danger type="submit" { "Yes, delete" }
            " " a href={ "/console/webhooks/" (id) } { "Cancel" }
        }
    };
    view::ok(view::page(session, "/console/webhooks", "Delete an endpoint", &Flash::None, body))
}

/// The buttons of an endpoint's page.
pub async fn act(api: &mut Api, session: &Session, id: &str, action: &str, form: &Form) -> Response<Body> {
    let path = format!("/v1/webhooks/{}", enc(id));
    let done = |text: &str| Flash::Done(text.to_string());
    let outcome = match action {
        "test" => api.post(&format!("{path}:sendTestEvent"), json!({})).await.map(|d| {
            (
                done("A test event is on its way."),
                Some(format!("/console/deliveries/{}", d["id"].as_str().unwrap_or_default())),
            )
        }),
        "enable" => api.post(&format!("{path}:enable"), json!({})).await.map(|_| (done("Enabled."), None)),
        "disable" => api
            .post(&format!("{path}:disable"), json!({"reason": "disabled in the console"}))
            .await
            .map(|_| (done("Disabled: nothing is delivered until it is enabled again."), None)),
        "delete" => api.delete(&path).await.map(|_| (done("Deleted."), Some("/console/webhooks".to_string()))),
        "rotate" => return rotate(api, session, id).await,
        "replay" => {
            let since = form.get("since");
            let start = if since.len() == 16 { format!("{since}:00Z") } else { format!("{since}Z") };
            let body = json!({"start_time": start, "only_failed": form.get("only_failed") == "true"});
            api.post(&format!("{path}:replayEvents"), body).await.map(|r| {
                let n = r["delivery_count"].as_i64().unwrap_or(0);
                (done(&format!("{n} events will be delivered again.")), None)
            })
        }
        _ => return view::status_page(session, StatusCode::NOT_FOUND, "There is no such action."),
    };
    match outcome {
        Ok((_, Some(to))) => see_other(&to),
        Ok((flash, None)) => show(api, session, id, flash).await,
        Err(f) if matches!(f.status, StatusCode::NOT_FOUND | StatusCode::FORBIDDEN) => view::failure_page(session, &f),
        Err(f) => show(api, session, id, Flash::Failed(f.explain())).await,
    }
}

async fn rotate(api: &mut Api, session: &Session, id: &str) -> Response<Body> {
    let secret = match api.post(&format!("/v1/webhooks/{}/secret:rotate", enc(id)), json!({})).await {
        Ok(s) => s,
        Err(f) => return view::failure_page(session, &f),
    };
    let body = html! {
        div.secret role="alert" {
            p { strong { "Copy the new signing secret now. It is shown once here." } }
            (view::copyable("secret", "New signing secret", secret["secret"].as_str().unwrap_or_default()))
        }
        p { "Until " (view::time(&secret["previous_expires_at"])) " UTC every delivery is signed with both the new and the previous secret, so receivers can switch over without missing one. Then only the new one signs." }
        p { a href={ "/console/webhooks/" (id) } { "Done — to the endpoint" } }
    };
    view::ok(view::page(session, "/console/webhooks", "Secret rotated", &Flash::None, body))
}
