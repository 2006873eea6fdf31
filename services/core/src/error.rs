//! The one error type, transport-neutral, and (with the `grpc` feature, which the API turns
//! on) its one mapping to `tonic::Status`.
//!
//! Every error carries `ErrorInfo{reason, domain: "coursewire", metadata}`; validation errors
//! add `BadRequest` field violations and some add a `Help` hint. The reasons are listed in
//! docs/api.md. Internal errors are logged here and never leak details to the caller.
use std::collections::BTreeMap;
use std::time::Duration;

pub const ERROR_DOMAIN: &str = "coursewire";
/// Where the reason table lives; sent in `Help` links.
#[cfg(feature = "grpc")]
const DOCS: &str = "docs/api.md#error-reasons";

pub type ApiResult<T> = Result<T, ApiError>;

/// What kind of failure, named and numbered as gRPC's status codes (HTTP maps from them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Code {
    InvalidArgument = 3,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub reason: &'static str,
    pub message: String,
    /// Boxed: errors travel through every `Result`, and most carry no details.
    pub details: Box<Details>,
}

#[derive(Debug, Default)]
pub struct Details {
    pub metadata: BTreeMap<String, String>,
    pub violations: Vec<(String, String)>,
    pub help: Option<String>,
    pub retry_after: Option<Duration>,
    /// (subject, description) of a QuotaFailure.
    pub quota: Option<(String, String)>,
}

impl ApiError {
    pub fn new(code: Code, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: Box::default() }
    }

    pub fn invalid(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, reason, message)
    }

    /// One INVALID_ARGUMENT naming every bad field.
    pub fn violations(violations: Vec<(String, String)>) -> Self {
        let fields: Vec<&str> = violations.iter().map(|(f, _)| f.as_str()).collect();
        let mut e = Self::invalid("INVALID_FIELD", format!("invalid fields: {}", fields.join(", ")));
        e.details.violations = violations;
        e
    }

    pub fn field(field: &str, description: impl Into<String>) -> Self {
        Self::violations(vec![(field.to_string(), description.into())])
    }

    /// NOT_FOUND; also used for other organizations' resources, so existence never leaks.
    pub fn not_found(kind: &'static str, id: &str) -> Self {
        Self::new(Code::NotFound, "NOT_FOUND", format!("{kind} {id:?} not found")).with("resource_id", id)
    }

    pub fn already_exists(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::AlreadyExists, reason, message)
    }

    pub fn precondition(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, reason, message)
    }

    pub fn etag_mismatch(kind: &'static str) -> Self {
        Self::new(Code::Aborted, "ETAG_MISMATCH", format!("the {kind} changed since it was read"))
            .help("read the resource again and retry with its current etag")
    }

    pub fn unauthenticated(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, reason, message)
            .help("send `authorization: Bearer sk_...`, `x-api-key: sk_...` or Basic auth with the key as user")
    }

    pub fn permission_denied(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::PermissionDenied, reason, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, "UNAVAILABLE", message).help("retry with backoff")
    }

    /// Logs the cause and returns an INTERNAL without details.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(Code::Internal, "INTERNAL", "internal error; it has been logged")
    }

    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.details.metadata.insert(key.to_string(), value.into());
        self
    }

    pub fn help(mut self, hint: impl Into<String>) -> Self {
        self.details.help = Some(hint.into());
        self
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::unavailable("the database is unavailable")
            }
            // Text Postgres cannot store (a NUL byte) that validation did not catch by name.
            sqlx::Error::Database(d) if d.code().as_deref() == Some("22021") => ApiError::invalid(
                "INVALID_TEXT",
                "a text value contains a character that cannot be stored (a NUL byte)",
            )
            .help("remove NUL (\\0) characters from the request's text fields"),
            // A row this write refers to was removed by a concurrent call.
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => ApiError::precondition(
                "CONFLICTING_CHANGE",
                "a resource this request refers to was changed or removed concurrently",
            )
            .help("read the resources again and retry"),
            _ => ApiError::internal(e),
        }
    }
}

#[cfg(feature = "grpc")]
impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> tonic::Status {
        use std::collections::HashMap;
        use tonic_types::{ErrorDetails, StatusExt};

        let Details { metadata, violations, help, retry_after, quota } = *e.details;
        let mut details = ErrorDetails::new();
        details.set_error_info(e.reason, ERROR_DOMAIN, metadata.into_iter().collect::<HashMap<_, _>>());
        for (field, description) in violations {
            details.add_bad_request_violation(field, description);
        }
        if let Some(hint) = help {
            details.add_help_link(hint, DOCS);
        }
        if let Some(delay) = retry_after {
            details.set_retry_info(Some(delay));
        }
        if let Some((subject, description)) = quota {
            details.add_quota_failure_violation(subject, description);
        }
        tonic::Status::with_error_details(tonic::Code::from_i32(e.code as i32), e.message, details)
    }
}
