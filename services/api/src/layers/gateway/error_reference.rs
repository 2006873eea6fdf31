//! `/docs/errors`: the error reference every error's `Help` link points at — each `Reason`
//! with its gRPC code, HTTP status and meaning, one anchor per reason
//! (`/docs/errors#RATE_LIMITED`), generated from the same table as docs/api.md's.
use std::sync::LazyLock;

use bytes::Bytes;
use maud::{DOCTYPE, html};
use tonic::body::Body;

use super::response::{code_name, http_status};
use coursewire_core::error::{ApiError, Reason};

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;max-width:60rem;margin:0 auto;padding:1rem;color:#1d2330}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;vertical-align:top;padding:.4rem .6rem;border-bottom:1px solid #d5dae3}\
tr:target{background:#fff4c2}code{font-family:ui-monospace,monospace;font-size:.95em}";

static PAGE: LazyLock<Bytes> = LazyLock::new(|| {
    let rows = Reason::ALL.iter().map(|&reason| {
        let status = tonic::Status::from(ApiError::new(reason, ""));
        (reason.as_str(), code_name(status.code()), http_status(&status), reason.meaning())
    });
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Coursewire API errors" }
                link rel="stylesheet" href="/docs/errors.css";
            }
            body {
                main {
                    h1 { "Errors" }
                    p {
                        "Every error carries " code { "google.rpc.ErrorInfo" } " with one of these reasons "
                        "(over HTTP/JSON: " code { "error.details[].reason" } "). Switch on the reason; the "
                        "message is for people. The full guide is docs/api.md in the repository; the "
                        "machine-readable contract is " a href="/openapi.json" { "/openapi.json" } "."
                    }
                    table {
                        thead { tr { th scope="col" { "Reason" } th scope="col" { "gRPC code" } th scope="col" { "HTTP" } th scope="col" { "Meaning" } } }
                        tbody {
                            @for (name, code, http, meaning) in rows {
                                tr id=(name) {
                                    td { a href={ "#" (name) } { code { (name) } } }
                                    td { (code) }
                                    td { (http.as_u16()) }
                                    td { (meaning) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Bytes::from(page.into_string())
});

/// The page, or its stylesheet, at `path`.
pub fn file(path: &str) -> Option<http::Response<Body>> {
    let (content_type, bytes) = match path {
        "/docs/errors" => ("text/html; charset=utf-8", PAGE.clone()),
        "/docs/errors.css" => ("text/css; charset=utf-8", Bytes::from_static(STYLE.as_bytes())),
        _ => return None,
    };
    // No script at all, never framed.
    let csp = "default-src 'none'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'";
    Some(super::docs::served(content_type, bytes, csp))
}
