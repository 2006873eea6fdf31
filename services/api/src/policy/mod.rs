//! What every RPC needs and costs: the scope a key must hold, its call class, and how the
//! rate limit charges it. The one table the auth, rate limit, admission and metrics layers
//! read (none of them imports another for it). A test walks the descriptor set and fails if
//! any method is missing here. `windows` holds how many calls of a class fit.
pub mod windows;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallClass {
    Read,
    Modify,
    Remove,
}

impl CallClass {
    pub fn as_str(self) -> &'static str {
        match self {
            CallClass::Read => "read",
            CallClass::Modify => "modify",
            CallClass::Remove => "remove",
        }
    }
}

/// What a key must hold to call a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Any valid key of an organization.
    AnyKey,
    /// `RESOURCE:read` (or `RESOURCE:write`, or `*`).
    Reads(&'static str),
    /// `RESOURCE:write` (or `*`).
    Writes(&'static str),
    /// A platform key (organization management).
    Platform,
}

/// How the rate limit charges a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charge {
    /// One unit, by the rate limit layer before the call.
    PerCall,
    /// One unit per item (a batch), by its handler once it has counted the items
    /// (`Limiter::admit_items`); the rate limit layer lets it pass. A batch that does not
    /// fit is refused whole and counts nothing.
    PerItem,
}

#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub need: Need,
    pub class: CallClass,
    pub charge: Charge,
}

use CallClass::*;
use Charge::*;
use Need::*;

/// (gRPC path, what it needs, its call class, how it is charged)
const TABLE: &[(&str, Need, CallClass, Charge)] = &[
    ("/coursewire.v1.AccountService/Ping", AnyKey, Read, PerCall),
    ("/coursewire.v1.AccountService/WhoAmI", AnyKey, Read, PerCall),
    // Any key may hand on what it holds (delegation bounds the scopes).
    ("/coursewire.v1.AccountService/CreateConsoleLink", AnyKey, Modify, PerCall),
    // Each entry is shown only with the read scope of what it is about (keys, webhooks).
    ("/coursewire.v1.AccountService/ListActivity", AnyKey, Read, PerCall),
    ("/coursewire.v1.AccountService/GetUsage", AnyKey, Read, PerCall),
    ("/coursewire.v1.DomainService/CreateDomain", Writes("domains"), Modify, PerCall),
    ("/coursewire.v1.DomainService/GetDomain", Reads("domains"), Read, PerCall),
    ("/coursewire.v1.DomainService/ListDomains", Reads("domains"), Read, PerCall),
    ("/coursewire.v1.DomainService/UpdateDomain", Writes("domains"), Modify, PerCall),
    ("/coursewire.v1.DomainService/DeleteDomain", Writes("domains"), Remove, PerCall),
    ("/coursewire.v1.UserService/CreateUser", Writes("users"), Modify, PerCall),
    ("/coursewire.v1.UserService/GetUser", Reads("users"), Read, PerCall),
    ("/coursewire.v1.UserService/LookupUser", Reads("users"), Read, PerCall),
    ("/coursewire.v1.UserService/ListUsers", Reads("users"), Read, PerCall),
    ("/coursewire.v1.UserService/UpdateUser", Writes("users"), Modify, PerCall),
    ("/coursewire.v1.UserService/DeleteUser", Writes("users"), Remove, PerCall),
    ("/coursewire.v1.CourseService/CreateCourse", Writes("courses"), Modify, PerCall),
    ("/coursewire.v1.CourseService/GetCourse", Reads("courses"), Read, PerCall),
    ("/coursewire.v1.CourseService/ListCourses", Reads("courses"), Read, PerCall),
    ("/coursewire.v1.CourseService/UpdateCourse", Writes("courses"), Modify, PerCall),
    ("/coursewire.v1.CourseService/DeleteCourse", Writes("courses"), Remove, PerCall),
    ("/coursewire.v1.PublishedCourseService/CreatePublishedCourse", Writes("courses"), Modify, PerCall),
    ("/coursewire.v1.PublishedCourseService/GetPublishedCourse", Reads("courses"), Read, PerCall),
    ("/coursewire.v1.PublishedCourseService/ListPublishedCourses", Reads("courses"), Read, PerCall),
    ("/coursewire.v1.PublishedCourseService/UpdatePublishedCourse", Writes("courses"), Modify, PerCall),
    ("/coursewire.v1.PublishedCourseService/DeletePublishedCourse", Writes("courses"), Remove, PerCall),
    ("/coursewire.v1.DomainUserService/CreateDomainUser", Writes("users"), Modify, PerCall),
    ("/coursewire.v1.DomainUserService/GetDomainUser", Reads("users"), Read, PerCall),
    ("/coursewire.v1.DomainUserService/ListDomainUsers", Reads("users"), Read, PerCall),
    ("/coursewire.v1.DomainUserService/UpdateDomainUser", Writes("users"), Modify, PerCall),
    ("/coursewire.v1.DomainUserService/DeleteDomainUser", Writes("users"), Remove, PerCall),
    ("/coursewire.v1.EnrollmentService/CreateEnrollment", Writes("enrollments"), Modify, PerCall),
    ("/coursewire.v1.EnrollmentService/GetEnrollment", Reads("enrollments"), Read, PerCall),
    ("/coursewire.v1.EnrollmentService/ListEnrollments", Reads("enrollments"), Read, PerCall),
    ("/coursewire.v1.EnrollmentService/UpdateEnrollment", Writes("enrollments"), Modify, PerCall),
    ("/coursewire.v1.EnrollmentService/DeleteEnrollment", Writes("enrollments"), Remove, PerCall),
    ("/coursewire.v1.EnrollmentService/RecordLessonProgress", Writes("enrollments"), Modify, PerCall),
    ("/coursewire.v1.EnrollmentService/CompleteEnrollment", Writes("enrollments"), Modify, PerCall),
    ("/coursewire.v1.EnrollmentService/BatchCreateEnrollments", Writes("enrollments"), Modify, PerItem),
    ("/coursewire.v1.EnrollmentService/ExportEnrollments", Reads("enrollments"), Read, PerCall),
    ("/coursewire.v1.LearningPathService/CreateLearningPath", Writes("courses"), Modify, PerCall),
    ("/coursewire.v1.LearningPathService/GetLearningPath", Reads("courses"), Read, PerCall),
    ("/coursewire.v1.LearningPathService/ListLearningPaths", Reads("courses"), Read, PerCall),
    ("/coursewire.v1.LearningPathService/UpdateLearningPath", Writes("courses"), Modify, PerCall),
    ("/coursewire.v1.LearningPathService/DeleteLearningPath", Writes("courses"), Remove, PerCall),
    // Path enrollments enroll in courses: they need what course enrollments need.
    ("/coursewire.v1.LearningPathService/CreatePathEnrollment", Writes("enrollments"), Modify, PerCall),
    ("/coursewire.v1.LearningPathService/GetPathEnrollment", Reads("enrollments"), Read, PerCall),
    ("/coursewire.v1.LearningPathService/ListPathEnrollments", Reads("enrollments"), Read, PerCall),
    ("/coursewire.v1.LearningPathService/DeletePathEnrollment", Writes("enrollments"), Remove, PerCall),
    // Groups are people: `users`. Assigning enrolls every member: `enrollments:write`.
    ("/coursewire.v1.GroupService/CreateGroup", Writes("users"), Modify, PerCall),
    ("/coursewire.v1.GroupService/GetGroup", Reads("users"), Read, PerCall),
    ("/coursewire.v1.GroupService/ListGroups", Reads("users"), Read, PerCall),
    ("/coursewire.v1.GroupService/UpdateGroup", Writes("users"), Modify, PerCall),
    ("/coursewire.v1.GroupService/DeleteGroup", Writes("users"), Remove, PerCall),
    ("/coursewire.v1.GroupService/AddGroupMembers", Writes("users"), Modify, PerItem),
    ("/coursewire.v1.GroupService/RemoveGroupMembers", Writes("users"), Modify, PerItem),
    ("/coursewire.v1.GroupService/ListGroupMembers", Reads("users"), Read, PerCall),
    ("/coursewire.v1.GroupService/AssignToGroup", Writes("enrollments"), Modify, PerCall),
    ("/coursewire.v1.GroupService/UnassignFromGroup", Writes("enrollments"), Modify, PerCall),
    ("/coursewire.v1.GroupService/GetOperation", Reads("users"), Read, PerCall),
    ("/coursewire.v1.ApiKeyService/CreateApiKey", Writes("keys"), Modify, PerCall),
    ("/coursewire.v1.ApiKeyService/GetApiKey", Reads("keys"), Read, PerCall),
    ("/coursewire.v1.ApiKeyService/ListApiKeys", Reads("keys"), Read, PerCall),
    ("/coursewire.v1.ApiKeyService/UpdateApiKey", Writes("keys"), Modify, PerCall),
    ("/coursewire.v1.ApiKeyService/RevokeApiKey", Writes("keys"), Remove, PerCall),
    ("/coursewire.v1.OrganizationService/CreateOrganization", Platform, Modify, PerCall),
    ("/coursewire.v1.OrganizationService/GetOrganization", Platform, Read, PerCall),
    ("/coursewire.v1.OrganizationService/ListOrganizations", Platform, Read, PerCall),
    ("/coursewire.v1.OrganizationService/UpdateOrganization", Platform, Modify, PerCall),
    ("/coursewire.v1.EventService/ListEvents", Reads("events"), Read, PerCall),
    ("/coursewire.v1.EventService/GetEvent", Reads("events"), Read, PerCall),
    ("/coursewire.v1.EventService/WatchEvents", Reads("events"), Read, PerCall),
    // The catalogue describes; it holds no organization's data.
    ("/coursewire.v1.EventService/ListEventTypes", AnyKey, Read, PerCall),
    ("/coursewire.v1.WebhookService/CreateWebhook", Writes("webhooks"), Modify, PerCall),
    ("/coursewire.v1.WebhookService/GetWebhook", Reads("webhooks"), Read, PerCall),
    ("/coursewire.v1.WebhookService/ListWebhooks", Reads("webhooks"), Read, PerCall),
    ("/coursewire.v1.WebhookService/UpdateWebhook", Writes("webhooks"), Modify, PerCall),
    ("/coursewire.v1.WebhookService/DeleteWebhook", Writes("webhooks"), Remove, PerCall),
    // Reading a secret is a read call, but only keys that may write webhooks can do it.
    ("/coursewire.v1.WebhookService/GetWebhookSecret", Writes("webhooks"), Read, PerCall),
    ("/coursewire.v1.WebhookService/RotateWebhookSecret", Writes("webhooks"), Modify, PerCall),
    ("/coursewire.v1.WebhookService/EnableWebhook", Writes("webhooks"), Modify, PerCall),
    ("/coursewire.v1.WebhookService/DisableWebhook", Writes("webhooks"), Modify, PerCall),
    ("/coursewire.v1.WebhookService/SendTestEvent", Writes("webhooks"), Modify, PerCall),
    ("/coursewire.v1.WebhookService/ListDeliveries", Reads("webhooks"), Read, PerCall),
    ("/coursewire.v1.WebhookService/GetDelivery", Reads("webhooks"), Read, PerCall),
    ("/coursewire.v1.WebhookService/ListAttempts", Reads("webhooks"), Read, PerCall),
    ("/coursewire.v1.WebhookService/RetryDelivery", Writes("webhooks"), Modify, PerCall),
    ("/coursewire.v1.WebhookService/ReplayEvents", Writes("webhooks"), Modify, PerCall),
];

/// Scope resources a key may name (`RESOURCE:read` / `RESOURCE:write`).
pub const RESOURCES: &[&str] = &["users", "courses", "domains", "enrollments", "webhooks", "events", "keys"];

/// The policy of a gRPC path; `None` for paths that are not ours.
pub fn policy(path: &str) -> Option<Policy> {
    TABLE.iter().find(|(p, ..)| *p == path).map(|&(_, need, class, charge)| Policy { need, class, charge })
}

/// Every gRPC path of ours, with the public ones we serve (the bounded label set of the
/// per-call metrics).
pub fn methods() -> impl Iterator<Item = &'static str> {
    const PUBLIC: &[&str] = &[
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ];
    TABLE.iter().map(|(path, ..)| *path).chain(PUBLIC.iter().copied())
}

/// True for paths that need no key (health and reflection).
pub fn is_public(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn every_method_has_a_policy() {
        let set = prost_types::FileDescriptorSet::decode(coursewire_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut count = 0;
        for file in set.file.iter().filter(|f| f.package() == "coursewire.v1") {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/coursewire.v1.{}/{}", service.name(), method.name());
                    assert!(super::policy(&path).is_some(), "{path} has no scope/call class in policy.rs");
                    count += 1;
                }
            }
        }
        assert_eq!(count, super::TABLE.len(), "policy.rs lists methods the protos do not have");
    }
}
