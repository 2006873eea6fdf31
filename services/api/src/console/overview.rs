//! `/console`: the organization at a glance — what is left of each rate-limit window, calls
//! and deliveries of the last 24 hours by outcome, and the endpoints that need attention.
use http::Response;
use maud::{Markup, html};
use serde_json::Value;
use tonic::body::Body;

use super::api::{Api, enc};
use super::view::{self, Flash};
use crate::layers::auth::sessions::Session;
use coursewire_core::clock::rfc3339;

const DAY_MS: i64 = 24 * 3_600_000;

pub async fn page(api: &mut Api, session: &Session, now: i64) -> Response<Body> {
    let who = match api.get("/v1/whoami").await {
        Ok(who) => who,
        Err(f) => return view::failure_page(session, &f),
    };
    let usage = api.get("/v1/usage").await.ok();
    let may_read_webhooks = session.key.scopes.allows("webhooks", false);
    let (deliveries, attention) = if may_read_webhooks {
        let since = enc(&rfc3339(now - DAY_MS));
        let deliveries = api.get(&format!("/v1/deliveries?page_size=1000&created_after={since}")).await;
        let webhooks = api.get("/v1/webhooks?page_size=1000").await;
        (deliveries.ok(), webhooks.ok())
    } else {
        (None, None)
    };
    let body = html! {
        section aria-labelledby="org-h" {
            h2 #org-h { "Organization" }
            dl.facts {
                dt { "Name" } dd { (view::text(&who["organization_name"])) }
                dt { "Id" } dd { code { (view::text(&who["organization_id"])) } }
                dt { "This session may" } dd { (session.key.scopes.0.join(", ")) }
            }
        }
        section aria-labelledby="limits-h" {
            h2 #limits-h { "Rate limits left now" }
            p.hint { "Per call class, for the whole organization: what remains of each window." }
            (limits(&who["limits"]))
        }
        @if let Some(usage) = &usage {
            section aria-labelledby="calls-h" {
                h2 #calls-h { "Calls in the last 24 hours" }
                (calls(usage))
            }
        }
        @if let Some(deliveries) = &deliveries {
            section aria-labelledby="dlv-h" {
                h2 #dlv-h { "Deliveries in the last 24 hours" }
                (outcomes(deliveries))
            }
        }
        @if let Some(webhooks) = &attention {
            section aria-labelledby="att-h" {
                h2 #att-h { "Endpoints that need attention" }
                (needs_attention(webhooks))
            }
        }
    };
    view::ok(view::page(session, "/console", "Overview", &Flash::None, body))
}

/// Each window as a meter: remaining of limit.
fn limits(limits: &Value) -> Markup {
    let rows = limits.as_array().cloned().unwrap_or_default();
    html! {
        ul.meters {
            @for l in &rows {
                @let limit = view::number(&l["limit"]);
                @let left = view::number(&l["remaining"]);
                li {
                    span.label { (view::text(&l["call_class"])) " · per " (view::text(&l["window"])) }
                    meter min="0" max=(limit) value=(left) aria-label={ (l["call_class"].as_str().unwrap_or("")) " calls left per " (l["window"].as_str().unwrap_or("")) } {}
                    span.figure { (left) " of " (limit) " left" }
                }
            }
        }
    }
}

/// Deliveries by state, as a bar chart (SVG attributes only: the CSP allows no inline style).
fn outcomes(page: &Value) -> Markup {
    let list = page["deliveries"].as_array().cloned().unwrap_or_default();
    let count = |state: &str| list.iter().filter(|d| d["state"] == state).count();
    let bars = [
        ("Succeeded", count("SUCCEEDED"), "ok"),
        ("Pending", count("PENDING"), "wait"),
        ("Failed", count("FAILED"), "bad"),
    ];
    let max = bars.iter().map(|b| b.1).max().unwrap_or(0).max(1);
    let more = !page["next_page_token"].as_str().unwrap_or_default().is_empty();
    html! {
        figure.chart {
            svg viewBox="0 0 320 96" role="img" aria-labelledby="dlv-cap" {
                @for (i, (label, n, class)) in bars.iter().enumerate() {
                    @let y = 8 + i * 30;
                    text x="0" y=(y + 14) { (label) }
                    rect class=(class) x="90" y=(y) height="20" width=(1 + n * 180 / max) {}
                    text x=(96 + n * 180 / max) y=(y + 14) { (n) }
                }
            }
            figcaption #dlv-cap {
                (bars[0].1) " succeeded, " (bars[1].1) " pending, " (bars[2].1) " failed"
                @if more { " (the latest 1,000)" }
                ". " a href="/console/deliveries" { "See deliveries" }
            }
        }
    }
}

/// The outcomes of a call, in the order the chart stacks them: (API name, words, CSS class).
const CALL_OUTCOMES: [(&str, &str, &str); 4] = [
    ("succeeded", "succeeded", "ok"),
    ("refused", "refused", "wait"),
    ("rate_limited", "rate-limited", "limit"),
    ("failed", "failed", "bad"),
];

/// A piece of a stacked bar: x, width, CSS class.
type Segment = (u64, u64, &'static str);

/// Calls by class, each a bar stacked by outcome, with the figures in words beneath.
fn calls(usage: &Value) -> Markup {
    let list = usage["calls"].as_array().cloned().unwrap_or_default();
    let count = |class: &str, outcome: &str| -> u64 {
        let found = list.iter().find(|c| c["call_class"] == class && c["outcome"] == outcome);
        found.map_or(0, |c| view::number(&c["count"]).max(0) as u64)
    };
    let classes = ["read", "modify", "remove"];
    let totals: Vec<u64> = classes.iter().map(|c| CALL_OUTCOMES.iter().map(|o| count(c, o.0)).sum()).collect();
    let max = totals.iter().copied().max().unwrap_or(0).max(1);
    // Per class, its outcomes' segments laid end to end from x = 70, and where they end.
    let bars: Vec<(Vec<Segment>, u64)> = classes
        .iter()
        .map(|class| {
            let mut x = 70;
            let segments = CALL_OUTCOMES
                .iter()
                .map(|(outcome, _, css)| {
                    let w = count(class, outcome) * 200 / max;
                    x += w;
                    (x - w, w, *css)
                })
                .filter(|s| s.1 > 0)
                .collect();
            (segments, x)
        })
        .collect();
    html! {
        figure.chart {
            svg viewBox="0 0 320 96" role="img" aria-labelledby="calls-cap" {
                @for (i, (segments, end)) in bars.iter().enumerate() {
                    @let y = 8 + i * 30;
                    text x="0" y=(y + 14) { (classes[i]) }
                    @for (x, w, css) in segments {
                        rect class=(css) x=(x) y=(y) height="20" width=(w) {}
                    }
                    text x=(end + 6) y=(y + 14) { (totals[i]) }
                }
            }
            figcaption #calls-cap {
                @for (i, class) in classes.iter().enumerate() {
                    span.line {
                        strong { (class) } ": " (totals[i]) " — "
                        @for (j, (outcome, words, css)) in CALL_OUTCOMES.iter().enumerate() {
                            @if j > 0 { ", " }
                            span.swatch.(css) {} (count(class, outcome)) " " (words)
                        }
                    }
                }
            }
        }
    }
}

fn needs_attention(page: &Value) -> Markup {
    let list = page["webhooks"].as_array().cloned().unwrap_or_default();
    let disabled: Vec<&Value> = list.iter().filter(|w| w["disabled"] == true).collect();
    html! {
        @if disabled.is_empty() {
            p { "Every endpoint is enabled. " a href="/console/webhooks" { "See webhooks" } }
        } @else {
            ul {
                @for w in disabled {
                    li {
                        a href={ "/console/webhooks/" (w["id"].as_str().unwrap_or("")) } { (view::text(&w["url"])) }
                        " — disabled: " (view::text(&w["disabled_reason"]))
                    }
                }
            }
        }
    }
}
