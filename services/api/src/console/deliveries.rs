//! `/console/deliveries`: deliveries filtered by endpoint, event type, outcome and time,
//! newest first; new ones appear without reloading (the script fetches `?part=rows`). A
//! delivery's page lists every attempt and can retry it.
use http::Response;
use maud::{Markup, html};
use serde_json::{Value, json};
use tonic::body::Body;

use super::api::{Api, enc};
use super::security::{Query, see_other};
use super::view::{self, Flash};
use crate::layers::auth::sessions::Session;
use coursewire_core::events::EVENT_TYPES;

const STATES: &[&str] = &["PENDING", "SUCCEEDED", "FAILED"];

pub async fn list(api: &mut Api, session: &Session, query: &Query) -> Response<Body> {
    let (webhook, event_type, state, since) =
        (query.get("webhook_id"), query.get("event_type"), query.get("state"), query.get("since"));
    let mut path = "/v1/deliveries?page_size=200&order_by=create_time%20desc".to_string();
    for (name, value) in [("webhook_id", webhook), ("event_type", event_type), ("state", state)] {
        if !value.is_empty() {
            path.push_str(&format!("&{name}={}", enc(value)));
        }
    }
    if since.len() == 10 {
        path.push_str(&format!("&created_after={}", enc(&format!("{since}T00:00:00Z"))));
    }
    let page = match api.get(&path).await {
        Ok(page) => page,
        Err(f) => return view::failure_page(session, &f),
    };
    let list = page["deliveries"].as_array().cloned().unwrap_or_default();
    let rows = rows(&list);
    if query.get("part") == "rows" {
        // The script's refresh: the table body alone.
        return view::ok(rows);
    }
    let webhooks = api.get("/v1/webhooks?page_size=1000").await.ok();
    let endpoints = webhooks.as_ref().and_then(|w| w["webhooks"].as_array().cloned()).unwrap_or_default();
    let body = html! {
        form.filters method="get" action="/console/deliveries" {
            div {
                label for="f-endpoint" { "Endpoint" }
                select #f-endpoint name="webhook_id" {
                    option value="" { "Any" }
                    @for w in &endpoints {
                        @let id = w["id"].as_str().unwrap_or_default();
                        option value=(id) selected[id == webhook] { (w["url"].as_str().unwrap_or(id)) }
                    }
                }
            }
            div {
                label for="f-type" { "Event type" }
                select #f-type name="event_type" {
                    option value="" { "Any" }
                    @for t in EVENT_TYPES { option value=(t) selected[*t == event_type] { (t) } }
                }
            }
            div {
                label for="f-state" { "Outcome" }
                select #f-state name="state" {
                    option value="" { "Any" }
                    @for s in STATES { option value=(s) selected[*s == state] { (s.to_lowercase()) } }
                }
            }
            div {
                label for="f-since" { "Since (UTC)" }
                input #f-since name="since" type="date" value=(since);
            }
            button type="submit" { "Filter" }
        }
        p.hint #live aria-live="polite" { "The newest 200 matching deliveries; new ones appear as they are made." }
        div.scroll role="region" aria-label="Deliveries" tabindex="0" {
            table {
                thead { tr { @for h in ["Created", "Event", "Endpoint", "Outcome", "Attempts", "Last status", ""] { th scope="col" { (h) } } } }
                tbody data-live={ "/console/deliveries?" (live_query(webhook, event_type, state, since)) "&part=rows" } { (rows) }
            }
        }
    };
    view::ok(view::page(session, "/console/deliveries", "Deliveries", &Flash::None, body))
}

fn live_query(webhook: &str, event_type: &str, state: &str, since: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("webhook_id", webhook)
        .append_pair("event_type", event_type)
        .append_pair("state", state)
        .append_pair("since", since)
        .finish()
}

fn rows(list: &[Value]) -> Markup {
    html! {
        @for d in list {
            @let id = d["id"].as_str().unwrap_or_default();
            tr {
                td { (view::time(&d["created_at"])) }
                td { code { (view::text(&d["event_type"])) } }
                td { code { (view::text(&d["webhook_id"])) } }
                td { (outcome(&d["state"])) }
                td { (d["attempt_count"].as_i64().unwrap_or(0)) }
                td { @match d["last_status_code"].as_i64().filter(|c| *c > 0) { Some(c) => (c), None => span.muted { "—" } } }
                td { a href={ "/console/deliveries/" (id) } aria-label={ "Delivery " (id) } { "Details" } }
            }
        }
        @if list.is_empty() { tr { td colspan="7" { "No deliveries match." } } }
    }
}

fn outcome(state: &Value) -> Markup {
    let (class, text) = match state.as_str() {
        Some("SUCCEEDED") => ("active", "succeeded"),
        Some("FAILED") => ("revoked", "failed"),
        _ => ("pending", "pending"),
    };
    html! { span class={ "state " (class) } { (text) } }
}

pub async fn show(api: &mut Api, session: &Session, id: &str, flash: Flash) -> Response<Body> {
    let d = match api.get(&format!("/v1/deliveries/{}", enc(id))).await {
        Ok(d) => d,
        Err(f) => return view::failure_page(session, &f),
    };
    let attempts = match api.get(&format!("/v1/deliveries/{}/attempts?page_size=100", enc(id))).await {
        Ok(a) => a["attempts"].as_array().cloned().unwrap_or_default(),
        Err(f) => return view::failure_page(session, &f),
    };
    let rows = html! {
        @for a in &attempts {
            tr {
                td { (view::time(&a["attempted_at"])) }
                td { (a["duration_ms"].as_str().unwrap_or("0")) " ms" }
                td { @match a["status_code"].as_i64().filter(|c| *c > 0) { Some(c) => (c), None => span.muted { "—" } } }
                td { (view::text(&a["error"])) }
                td { @if let Some(body) = a["response_body"].as_str().filter(|b| !b.is_empty()) { pre.excerpt { (body) } } @else { span.muted { "—" } } }
            }
        }
        @if attempts.is_empty() { tr { td colspan="5" { "No attempt yet." } } }
    };
    let webhook = d["webhook_id"].as_str().unwrap_or_default();
    let body = html! {
        dl.facts {
            dt { "Event" } dd { code { (view::text(&d["event_type"])) } " " code { (view::text(&d["event_id"])) } }
            dt { "Endpoint" } dd { a href={ "/console/webhooks/" (webhook) } { code { (webhook) } } }
            dt { "Outcome" } dd { (outcome(&d["state"])) }
            dt { "Next attempt" } dd { (view::time(&d["next_attempt_at"])) }
        }
        @if session.key.scopes.allows("webhooks", true) {
            form method="post" action={ "/console/deliveries/" (id) "/retry" } {
                (view::csrf(session))
                button type="submit" { "Retry now" }
            }
        }
        h2 { "Attempts" }
        (view::table("Attempts", &["Time", "Duration", "Status", "Error", "Response (excerpt)"], rows))
    };
    view::ok(view::page(session, "/console/deliveries", &format!("Delivery {id}"), &flash, body))
}

pub async fn retry(api: &mut Api, session: &Session, id: &str) -> Response<Body> {
    match api.post(&format!("/v1/deliveries/{}:retry", enc(id)), json!({})).await {
        Ok(_) => see_other(&format!("/console/deliveries/{id}")),
        Err(f) if f.status.is_client_error() && f.status.as_u16() != 404 && f.status.as_u16() != 403 => {
            show(api, session, id, Flash::Failed(f.explain())).await
        }
        Err(f) => view::failure_page(session, &f),
    }
}
