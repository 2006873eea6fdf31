//! The one error type, transport-neutral, and (with the `grpc` feature, which the API turns
//! on) its one mapping to `tonic::Status`.
//!
//! Every error carries `ErrorInfo{reason, domain: "coursewire", metadata}`; validation errors
//! add `BadRequest` field violations and some add a `Help` hint. The reasons are listed in
//! docs/api.md. Internal errors are logged here and never leak details to the caller.
use std::collections::BTreeMap;
use std::time::Duration;

pub const ERROR_DOMAIN: &str = "coursewire";
tokio::task_local! {
    /// The address people reach the serving API by (`--console-base-url`, else its HTTP/JSON
    /// listener), for the call being served: every error's `Help` link is
    /// `<it>/docs/errors#REASON`, the reason's entry in the reference the gateway serves.
    static PUBLIC_URL: std::sync::Arc<str>;
}

/// Runs `call` for a server reached at `url`: the errors made inside link to its reference.
pub async fn linking_to<F: std::future::Future>(url: std::sync::Arc<str>, call: F) -> F::Output {
    PUBLIC_URL.scope(url, call).await
}

/// The error reference's entry for `reason` (a path only, outside a call).
pub fn reference_url(reason: Reason) -> String {
    let base = PUBLIC_URL.try_with(|url| url.clone()).unwrap_or_else(|_| "".into());
    format!("{}/docs/errors#{}", base.trim_end_matches('/'), reason.as_str())
}

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

/// Declares `Reason`: each reason with the code it always travels with and what it means
/// (docs/api.md's table is checked against this list by a test).
macro_rules! reasons {
    ($($variant:ident = $name:literal, $code:ident, $meaning:literal;)*) => {
        /// Why a call failed: `ErrorInfo.reason`, the stable name clients switch on.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $(#[doc = $meaning] $variant,)*
        }

        impl Reason {
            pub const ALL: &[Reason] = &[$(Reason::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(Reason::$variant => $name,)* }
            }

            pub fn code(self) -> Code {
                match self { $(Reason::$variant => Code::$code,)* }
            }

            pub fn meaning(self) -> &'static str {
                match self { $(Reason::$variant => $meaning,)* }
            }
        }
    };
}

reasons! {
    InvalidField = "INVALID_FIELD", InvalidArgument, "one or more fields are invalid; see `BadRequest.field_violations`";
    InvalidPageToken = "INVALID_PAGE_TOKEN", InvalidArgument, "the page token is malformed or from another list, organization or filter";
    RequestIdReused = "REQUEST_ID_REUSED", InvalidArgument, "the `request_id` was used with a different request in the last 24 h";
    MalformedRequest = "MALFORMED_REQUEST", InvalidArgument, "the message does not decode: truncated, not protobuf, or a string field that is not UTF-8";
    InvalidText = "INVALID_TEXT", InvalidArgument, "a text value holds a NUL byte that could not be stored";
    ReplayTooLarge = "REPLAY_TOO_LARGE", InvalidArgument, "more than 10,000 events match; replay a narrower time range";
    MessageTooLarge = "MESSAGE_TOO_LARGE", ResourceExhausted, "the message is over 4 MiB (`metadata.limit_bytes`); split it";
    MissingCredentials = "MISSING_CREDENTIALS", Unauthenticated, "no `authorization` or `x-api-key` header";
    MalformedCredentials = "MALFORMED_CREDENTIALS", Unauthenticated, "the header is not one of the accepted forms, or the key is not `sk_` + 48 hex";
    KeyUnknown = "KEY_UNKNOWN", Unauthenticated, "no such key";
    KeyRevoked = "KEY_REVOKED", Unauthenticated, "the key was revoked";
    KeyExpired = "KEY_EXPIRED", Unauthenticated, "the key's expiry has passed";
    ScopeMissing = "SCOPE_MISSING", PermissionDenied, "the key lacks the scope (`metadata.required_scope`)";
    ScopeEscalation = "SCOPE_ESCALATION", PermissionDenied, "a key asked for, or changed, a key beyond its own authority (see Delegation)";
    IpNotAllowed = "IP_NOT_ALLOWED", PermissionDenied, "the key has an IP allowlist and the caller is outside it";
    OrganizationSuspended = "ORGANIZATION_SUSPENDED", PermissionDenied, "the key's organization is suspended";
    PlatformKeyRequired = "PLATFORM_KEY_REQUIRED", PermissionDenied, "organization management needs a platform key";
    OrganizationKeyRequired = "ORGANIZATION_KEY_REQUIRED", PermissionDenied, "platform keys cannot call organization resources";
    NotFound = "NOT_FOUND", NotFound, "no such resource in your organization (`metadata.resource_id`)";
    DomainExists = "DOMAIN_EXISTS", AlreadyExists, "another domain has this hostname";
    UserEmailExists = "USER_EMAIL_EXISTS", AlreadyExists, "another user has this email, case-insensitively (`metadata.existing_id`)";
    UserExternalIdExists = "USER_EXTERNAL_ID_EXISTS", AlreadyExists, "another user has this external_id (`metadata.existing_id`)";
    CourseAlreadyPublished = "COURSE_ALREADY_PUBLISHED", AlreadyExists, "the course is already published to this domain";
    DomainUserExists = "DOMAIN_USER_EXISTS", AlreadyExists, "the user already has access to this domain";
    EnrollmentExists = "ENROLLMENT_EXISTS", AlreadyExists, "the user is already enrolled (`metadata.existing_id`)";
    GroupMemberExists = "GROUP_MEMBER_EXISTS", AlreadyExists, "the user is already a member of the group";
    PathEnrollmentExists = "PATH_ENROLLMENT_EXISTS", AlreadyExists, "the user is already enrolled in this learning path (`metadata.existing_id`)";
    OrganizationExists = "ORGANIZATION_EXISTS", AlreadyExists, "an organization with this id exists";
    RateLimited = "RATE_LIMITED", ResourceExhausted, "over a rate limit; see `RetryInfo`, `QuotaFailure` and the headers above";
    TooManyStreams = "TOO_MANY_STREAMS", ResourceExhausted, "the organization has `--max-streams-per-org` streams open on this server (`metadata.limit`)";
    SlowConsumer = "SLOW_CONSUMER", ResourceExhausted, "a WatchEvents stream left its buffer full too long; resume from `metadata.resume_after_event_id`";
    EtagMismatch = "ETAG_MISMATCH", Aborted, "the resource changed since you read it; read it again";
    RequestInProgress = "REQUEST_IN_PROGRESS", Aborted, "a request with the same `request_id` ran at the same time; retry";
    KeyAlreadyRevoked = "KEY_ALREADY_REVOKED", FailedPrecondition, "revoked keys cannot be changed";
    DomainHasPublishedCourses = "DOMAIN_HAS_PUBLISHED_COURSES", FailedPrecondition, "delete the domain's published courses first";
    CourseIsPublished = "COURSE_IS_PUBLISHED", FailedPrecondition, "delete the course's published courses first";
    PublishedCourseHasEnrollments = "PUBLISHED_COURSE_HAS_ENROLLMENTS", FailedPrecondition, "delete its enrollments first";
    PublishedCourseInPath = "PUBLISHED_COURSE_IN_PATH", FailedPrecondition, "remove it from its learning paths (`metadata.learning_path_id`) first";
    GroupHasMembers = "GROUP_HAS_MEMBERS", FailedPrecondition, "remove the group's members first";
    PathHasEnrollments = "PATH_HAS_ENROLLMENTS", FailedPrecondition, "delete the learning path's path enrollments first";
    UserHasEnrollments = "USER_HAS_ENROLLMENTS", FailedPrecondition, "delete the user's enrollments first";
    UserInactive = "USER_INACTIVE", FailedPrecondition, "inactive users cannot be enrolled";
    EnrollmentClosed = "ENROLLMENT_CLOSED", FailedPrecondition, "the published course has `enrollment_closed` set";
    EnrollmentExpired = "ENROLLMENT_EXPIRED", FailedPrecondition, "extend `expires_at` before recording progress or completing";
    KeyLimitReached = "KEY_LIMIT_REACHED", FailedPrecondition, "an organization holds at most 25 active keys";
    ConflictingChange = "CONFLICTING_CHANGE", FailedPrecondition, "something the request refers to was removed concurrently; retry";
    WebhookDisabled = "WEBHOOK_DISABLED", FailedPrecondition, "test events, retries and replays need the endpoint enabled (`EnableWebhook`)";
    DeliveriesBehind = "DELIVERIES_BEHIND", Unavailable, "webhook dispatchers are behind and writes are paced; this one would have waited past 3/4 of its deadline or 5 s: retry after `RetryInfo.retry_delay`, nothing was written";
    Unavailable = "UNAVAILABLE", Unavailable, "the database is unreachable, or the server is stopping (streams carry a resume cursor); retry with backoff";
    Internal = "INTERNAL", Internal, "a bug or an unexpected failure; it was logged";
}

/// Field violations one error lists.
pub const MAX_VIOLATIONS: usize = 20;

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Code {
    /// The canonical gRPC name (`INVALID_ARGUMENT`), as the docs write it.
    pub fn name(self) -> &'static str {
        match self {
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub reason: Reason,
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
    /// An error for `reason`, with the code that reason always has.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        ApiError { code: reason.code(), reason, message: message.into(), details: Box::default() }
    }

    /// One INVALID_ARGUMENT naming every bad field.
    /// INVALID_ARGUMENT naming the first `MAX_VIOLATIONS` bad fields (all of them would not
    /// fit in a response's headers for a request with hundreds of bad items).
    pub fn violations(mut violations: Vec<(String, String)>) -> Self {
        let more = violations.len().saturating_sub(MAX_VIOLATIONS);
        violations.truncate(MAX_VIOLATIONS);
        let fields: Vec<&str> = violations.iter().map(|(f, _)| f.as_str()).collect();
        let mut message = format!("invalid fields: {}", fields.join(", "));
        if more > 0 {
            message.push_str(&format!(" (and {more} more not listed)"));
        }
        let mut e = Self::new(Reason::InvalidField, message);
        e.details.violations = violations;
        e
    }

    pub fn field(field: &str, description: impl Into<String>) -> Self {
        Self::violations(vec![(field.to_string(), description.into())])
    }

    /// NOT_FOUND; also used for other organizations' resources, so existence never leaks.
    pub fn not_found(kind: &'static str, id: &str) -> Self {
        Self::new(Reason::NotFound, format!("{kind} {id:?} not found")).with("resource_id", id)
    }

    pub fn etag_mismatch(kind: &'static str) -> Self {
        Self::new(Reason::EtagMismatch, format!("the {kind} changed since it was read"))
            .help("read the resource again and retry with its current etag")
    }

    pub fn unauthenticated(reason: Reason, message: impl Into<String>) -> Self {
        debug_assert_eq!(reason.code(), Code::Unauthenticated);
        Self::new(reason, message)
            .help("send `authorization: Bearer sk_...`, `x-api-key: sk_...` or Basic auth with the key as user")
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Reason::Unavailable, message).help("retry with backoff")
    }

    /// Logs the cause and returns an INTERNAL without details.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, request_id = ?crate::request_id::current(), "internal error");
        Self::new(Reason::Internal, "internal error; it has been logged")
    }

    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.details.metadata.insert(key.to_string(), value.into());
        self
    }

    /// For create-or-reuse: the id of the resource that already exists when this error is
    /// `reason` and names one (`metadata.existing_id`); otherwise this error.
    pub fn existing(self, reason: Reason) -> ApiResult<String> {
        match self.details.metadata.get("existing_id") {
            Some(id) if self.reason == reason && !id.is_empty() => Ok(id.clone()),
            _ => Err(self),
        }
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
                tracing::warn!(error = %e, request_id = ?crate::request_id::current(), "database unavailable");
                ApiError::unavailable("the database is unavailable")
            }
            // Text Postgres cannot store (a NUL byte) that validation did not catch by name.
            sqlx::Error::Database(d) if d.code().as_deref() == Some("22021") => ApiError::new(
                Reason::InvalidText,
                "a text value contains a character that cannot be stored (a NUL byte)",
            )
            .help("remove NUL (\\0) characters from the request's text fields"),
            // A row this write refers to was removed by a concurrent call.
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => ApiError::new(
                Reason::ConflictingChange,
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

        let Details { mut metadata, violations, help, retry_after, quota } = *e.details;
        // Which call failed, for the caller to quote and the operator to find in the logs.
        if let Some(id) = crate::request_id::current() {
            metadata.insert("request_id".into(), id);
        }
        let mut details = ErrorDetails::new();
        details.set_error_info(e.reason.as_str(), ERROR_DOMAIN, metadata.into_iter().collect::<HashMap<_, _>>());
        for (field, description) in violations {
            details.add_bad_request_violation(field, description);
        }
        // Every error links to its reason's entry; the hint, where there is one, says what to do.
        let hint = help.unwrap_or_else(|| e.reason.meaning().to_string());
        details.add_help_link(hint, reference_url(e.reason));
        if let Some(delay) = retry_after {
            details.set_retry_info(Some(delay));
        }
        if let Some((subject, description)) = quota {
            details.add_quota_failure_violation(subject, description);
        }
        tonic::Status::with_error_details(tonic::Code::from_i32(e.code as i32), e.message, details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/api.md's reason table is exactly this list: every reason, its code and meaning.
    #[test]
    fn the_documented_reasons_are_the_reasons() {
        let docs = include_str!("../../../docs/api.md");
        let documented = crate::doc_tables::rows(docs, "### Error reasons");
        let ours: Vec<String> = Reason::ALL
            .iter()
            .map(|r| format!("| {} | `{}` | {} |", r.code().name(), r.as_str(), r.meaning()))
            .collect();
        let missing: Vec<_> = ours.iter().filter(|r| !documented.contains(&r.as_str())).collect();
        let unknown: Vec<_> = documented.iter().filter(|r| !ours.iter().any(|o| o == *r)).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "not in docs/api.md: {missing:#?}\nnot a Reason: {unknown:#?}"
        );
    }
}
