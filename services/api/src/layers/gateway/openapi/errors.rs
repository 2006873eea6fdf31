//! What an operation may answer besides its result, written once as components and
//! referenced by each operation: the errors, each with the `Error` body and an example made
//! by the mapping the gateway answers with, and the headers (request id, rate limits).
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::layers::gateway::response::error_json;
use crate::layers::gateway::routes::Route;
use coursewire_core::error::{ApiError, Reason};

/// An error answer: HTTP status, component name, when it is given, an example.
struct Kind {
    status: &'static str,
    name: &'static str,
    when: &'static str,
    example: fn() -> ApiError,
}

const KINDS: &[Kind] = &[
    Kind {
        status: "400",
        name: "BadRequest",
        when: "The request is invalid (`INVALID_FIELD` with `BadRequest.field_violations`, `INVALID_PAGE_TOKEN`, \
            `MALFORMED_REQUEST`, …) or the resource's state forbids it (`FAILED_PRECONDITION` reasons). Nothing was \
            written.",
        example: || ApiError::field("email", "must be an email address"),
    },
    Kind {
        status: "401",
        name: "Unauthenticated",
        when: "No key, a malformed one, or a key that is unknown, revoked or expired.",
        example: || {
            ApiError::new(Reason::MissingCredentials, "send an API key: Basic (key as user), Bearer or x-api-key")
        },
    },
    Kind {
        status: "403",
        name: "PermissionDenied",
        when: "The key lacks the scope (`metadata.required_scope`), the caller is outside its IP allowlist, or its \
            organization is suspended.",
        example: || {
            ApiError::new(Reason::ScopeMissing, "this key lacks the scope users:write")
                .with("required_scope", "users:write")
        },
    },
    Kind {
        status: "404",
        name: "NotFound",
        when: "No such resource in your organization (`metadata.resource_id`).",
        example: || {
            ApiError::new(Reason::NotFound, "no such user in your organization")
                .with("resource_id", "usr_01jd3k2m4n5p6q7r8s9t0v1w2x")
        },
    },
    Kind {
        status: "409",
        name: "Conflict",
        when: "It exists already (`…_EXISTS`), the `etag` is stale (`ETAG_MISMATCH`), or the same `request_id` is \
            still running (`REQUEST_IN_PROGRESS`).",
        example: || ApiError::new(Reason::EnrollmentExists, "the user is enrolled in this course already"),
    },
    Kind {
        status: "413",
        name: "PayloadTooLarge",
        when: "The body is over the size limit (`metadata.limit_bytes`).",
        example: || {
            ApiError::new(Reason::MessageTooLarge, "bodies are limited to 8388608 bytes").with("limit_bytes", "8388608")
        },
    },
    Kind {
        status: "429",
        name: "RateLimited",
        when: "The organization's (or the key's) window for this call class is full: retry after `retry-after` \
            seconds (`RetryInfo`); nothing was counted.",
        example: || {
            let mut e = ApiError::new(Reason::RateLimited, "rate limit of 600 per 1m reached; retry in 12 s")
                .with("call_class", "read")
                .with("limit", "600")
                .with("window", "1m");
            e.details.retry_after = Some(Duration::from_secs(12));
            e
        },
    },
    Kind {
        status: "503",
        name: "Unavailable",
        when: "A dependency is down, or writes are paced while webhook deliveries catch up (`DELIVERIES_BEHIND`): \
            retry after `RetryInfo`; nothing was written.",
        example: || ApiError::new(Reason::Unavailable, "the database is unavailable; retry"),
    },
];

/// `components.responses` and `components.headers`.
pub fn components() -> (Map<String, Value>, Value) {
    let responses = KINDS
        .iter()
        .map(|k| {
            let example = error_json(&tonic::Status::from((k.example)()));
            let mut headers = json!({"x-request-id": {"$ref": "#/components/headers/RequestId"}});
            if k.status == "429" || k.status == "503" {
                headers["retry-after"] = json!({"$ref": "#/components/headers/RetryAfter"});
            }
            let response = json!({
                "description": k.when,
                "headers": headers,
                "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Error"},
                    "example": example,
                }},
            });
            (k.name.to_string(), response)
        })
        .collect();
    let integer = |description: &str| json!({"description": description, "schema": {"type": "integer", "minimum": 0}});
    let headers = json!({
        "RequestId": {
            "description": "This call's id (yours, when you sent an acceptable `x-request-id`): quote it to the operator.",
            "schema": {"type": "string"},
        },
        "RateLimitLimit": integer("The limit of the window with the least room left."),
        "RateLimitRemaining": integer("Calls left in that window after this one."),
        "RateLimitReset": integer("Seconds until its oldest counted call stops counting."),
        "RetryAfter": integer("Seconds until the call would be admitted."),
    });
    (responses, headers)
}

/// The headers of a successful answer.
pub fn success_headers() -> Value {
    json!({
        "x-request-id": {"$ref": "#/components/headers/RequestId"},
        "x-ratelimit-limit": {"$ref": "#/components/headers/RateLimitLimit"},
        "x-ratelimit-remaining": {"$ref": "#/components/headers/RateLimitRemaining"},
        "x-ratelimit-reset": {"$ref": "#/components/headers/RateLimitReset"},
    })
}

/// An operation's responses: its result, the errors it can give, and `default` for the rest.
pub fn responses(route: &Route, ok: Value) -> Value {
    let name = route.method.name();
    let names_a_resource = route.variables().next().is_some() || !route.body.is_empty();
    let creates = ["Create", "Update", "Batch", "Record", "Complete"].iter().any(|p| name.starts_with(p));
    let mut out = Map::new();
    out.insert("200".into(), ok);
    for k in KINDS {
        let applies = match k.status {
            "404" => names_a_resource || name.starts_with("Get"),
            "409" => creates,
            "413" => !route.body.is_empty(),
            _ => true,
        };
        if applies {
            out.insert(k.status.into(), json!({"$ref": format!("#/components/responses/{}", k.name)}));
        }
    }
    out.insert(
        "default".into(),
        json!({
            "description": "Any other error: the HTTP status, and the gRPC status with its ErrorInfo reason.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }),
    );
    Value::Object(out)
}
