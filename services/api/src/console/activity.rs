//! `/console/activity`: who (a key, a console session, the operator) created, changed or
//! revoked keys and webhooks, and when — `ListActivity`, newest first.
use http::Response;
use maud::html;
use tonic::body::Body;

use super::api::{Api, enc};
use super::security::Query;
use super::view::{self, Flash};
use crate::layers::auth::sessions::Session;
use coursewire_core::ids::{self, kind};

pub async fn page(api: &mut Api, session: &Session, query: &Query) -> Response<Body> {
    let token = query.get("page_token");
    let path = if token.is_empty() {
        "/v1/activity?page_size=100".to_string()
    } else {
        format!("/v1/activity?page_size=100&page_token={}", enc(token))
    };
    let page = match api.get(&path).await {
        Ok(page) => page,
        Err(f) => return view::failure_page(session, &f),
    };
    let entries = page["entries"].as_array().cloned().unwrap_or_default();
    let link = |id: &str| {
        if ids::is_id(kind::WEBHOOK, id) { Some(format!("/console/webhooks/{id}")) } else { None }
    };
    let rows = html! {
        @for e in &entries {
            @let target = e["target_id"].as_str().unwrap_or_default();
            tr {
                td { (view::time(&e["time"])) }
                td { (view::text(&e["actor"])) }
                td { code { (view::text(&e["action"])) } }
                td { @match link(target) { Some(href) => a href=(href) { code { (target) } }, None => code { (target) } } }
                td { (view::text(&e["summary"])) }
            }
        }
        @if entries.is_empty() { tr { td colspan="5" { "Nothing yet." } } }
    };
    let next = page["next_page_token"].as_str().unwrap_or_default();
    let body = html! {
        p.hint { "Changes to API keys and webhook endpoints, newest first: those your session may read." }
        (view::table("Activity", &["Time", "Who", "What", "Key or endpoint", "Details"], rows))
        @if !next.is_empty() { p { a href={ "/console/activity?page_token=" (enc(next)) } { "Older" } } }
    };
    view::ok(view::page(session, "/console/activity", "Activity", &Flash::None, body))
}
