//! `/console/events`: the event catalogue (`crate::events::catalogue`, the same one
//! `ListEventTypes` serves): each type's meaning, routing key, example and JSON Schema.
use http::Response;
use maud::html;
use tonic::body::Body;

use super::view::{self, Flash};
use crate::events::catalogue::catalogue;
use crate::layers::auth::sessions::Session;

pub fn page(session: &Session) -> Response<Body> {
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let body = html! {
        p {
            "Every change writes one event. Webhooks receive it as a signed POST (Standard Webhooks); "
            "internal services bind a queue to the RabbitMQ exchange " code { "coursewire.events" }
            " with the type as routing key (" code { "enrollment.*" } " works). Tools read this catalogue at "
            code { "GET /v1/eventTypes" } "."
        }
        nav aria-label="Event types" {
            ul.index { @for t in catalogue() { li { a href={ "#" (t.name) } { code { (t.name) } } } } }
        }
        @for t in catalogue() {
            section.event id=(t.name) aria-labelledby={ "h-" (t.name) } {
                h2 id={ "h-" (t.name) } { code { (t.name) } }
                dl.facts {
                    dt { "Emitted" } dd { (t.when) }
                    dt { "Payload (data)" } dd { (t.payload) }
                    dt { "Routing key" } dd { code { (t.name) } }
                }
                details {
                    summary { "Example envelope" }
                    pre tabindex="0" { code { (pretty(&t.example)) } }
                }
                details {
                    summary { "JSON Schema of data" }
                    pre tabindex="0" { code { (pretty(&t.data_schema)) } }
                }
            }
        }
    };
    view::ok(view::page(session, "/console/events", "Event catalogue", &Flash::None, body))
}
