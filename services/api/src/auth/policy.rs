//! Which scope and call class every RPC needs: the one table auth and limits read.
//! A test walks the descriptor set and fails if any method is missing here.

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

#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub need: Need,
    pub class: CallClass,
}

use CallClass::*;
use Need::*;

/// (gRPC path, what it needs, its call class)
const TABLE: &[(&str, Need, CallClass)] = &[
    ("/coursewire.v1.AccountService/Ping", AnyKey, Read),
    ("/coursewire.v1.AccountService/WhoAmI", AnyKey, Read),
    ("/coursewire.v1.DomainService/CreateDomain", Writes("domains"), Modify),
    ("/coursewire.v1.DomainService/GetDomain", Reads("domains"), Read),
    ("/coursewire.v1.DomainService/ListDomains", Reads("domains"), Read),
    ("/coursewire.v1.DomainService/UpdateDomain", Writes("domains"), Modify),
    ("/coursewire.v1.DomainService/DeleteDomain", Writes("domains"), Remove),
    ("/coursewire.v1.UserService/CreateUser", Writes("users"), Modify),
    ("/coursewire.v1.UserService/GetUser", Reads("users"), Read),
    ("/coursewire.v1.UserService/LookupUser", Reads("users"), Read),
    ("/coursewire.v1.UserService/ListUsers", Reads("users"), Read),
    ("/coursewire.v1.UserService/UpdateUser", Writes("users"), Modify),
    ("/coursewire.v1.UserService/DeleteUser", Writes("users"), Remove),
    ("/coursewire.v1.CourseService/CreateCourse", Writes("courses"), Modify),
    ("/coursewire.v1.CourseService/GetCourse", Reads("courses"), Read),
    ("/coursewire.v1.CourseService/ListCourses", Reads("courses"), Read),
    ("/coursewire.v1.CourseService/UpdateCourse", Writes("courses"), Modify),
    ("/coursewire.v1.CourseService/DeleteCourse", Writes("courses"), Remove),
    ("/coursewire.v1.PublishedCourseService/CreatePublishedCourse", Writes("courses"), Modify),
    ("/coursewire.v1.PublishedCourseService/GetPublishedCourse", Reads("courses"), Read),
    ("/coursewire.v1.PublishedCourseService/ListPublishedCourses", Reads("courses"), Read),
    ("/coursewire.v1.PublishedCourseService/UpdatePublishedCourse", Writes("courses"), Modify),
    ("/coursewire.v1.PublishedCourseService/DeletePublishedCourse", Writes("courses"), Remove),
    ("/coursewire.v1.DomainUserService/CreateDomainUser", Writes("users"), Modify),
    ("/coursewire.v1.DomainUserService/GetDomainUser", Reads("users"), Read),
    ("/coursewire.v1.DomainUserService/ListDomainUsers", Reads("users"), Read),
    ("/coursewire.v1.DomainUserService/UpdateDomainUser", Writes("users"), Modify),
    ("/coursewire.v1.DomainUserService/DeleteDomainUser", Writes("users"), Remove),
    ("/coursewire.v1.EnrollmentService/CreateEnrollment", Writes("enrollments"), Modify),
    ("/coursewire.v1.EnrollmentService/GetEnrollment", Reads("enrollments"), Read),
    ("/coursewire.v1.EnrollmentService/ListEnrollments", Reads("enrollments"), Read),
    ("/coursewire.v1.EnrollmentService/UpdateEnrollment", Writes("enrollments"), Modify),
    ("/coursewire.v1.EnrollmentService/DeleteEnrollment", Writes("enrollments"), Remove),
    ("/coursewire.v1.EnrollmentService/RecordLessonProgress", Writes("enrollments"), Modify),
    ("/coursewire.v1.EnrollmentService/CompleteEnrollment", Writes("enrollments"), Modify),
    ("/coursewire.v1.EnrollmentService/BatchCreateEnrollments", Writes("enrollments"), Modify),
    ("/coursewire.v1.EnrollmentService/ExportEnrollments", Reads("enrollments"), Read),
    ("/coursewire.v1.LearningPathService/CreateLearningPath", Writes("courses"), Modify),
    ("/coursewire.v1.LearningPathService/GetLearningPath", Reads("courses"), Read),
    ("/coursewire.v1.LearningPathService/ListLearningPaths", Reads("courses"), Read),
    ("/coursewire.v1.LearningPathService/UpdateLearningPath", Writes("courses"), Modify),
    ("/coursewire.v1.LearningPathService/DeleteLearningPath", Writes("courses"), Remove),
    // Path enrollments enroll in courses: they need what course enrollments need.
    ("/coursewire.v1.LearningPathService/CreatePathEnrollment", Writes("enrollments"), Modify),
    ("/coursewire.v1.LearningPathService/GetPathEnrollment", Reads("enrollments"), Read),
    ("/coursewire.v1.LearningPathService/ListPathEnrollments", Reads("enrollments"), Read),
    ("/coursewire.v1.LearningPathService/DeletePathEnrollment", Writes("enrollments"), Remove),
    // Groups are people: `users`. Assigning enrolls every member: `enrollments:write`.
    ("/coursewire.v1.GroupService/CreateGroup", Writes("users"), Modify),
    ("/coursewire.v1.GroupService/GetGroup", Reads("users"), Read),
    ("/coursewire.v1.GroupService/ListGroups", Reads("users"), Read),
    ("/coursewire.v1.GroupService/UpdateGroup", Writes("users"), Modify),
    ("/coursewire.v1.GroupService/DeleteGroup", Writes("users"), Remove),
    ("/coursewire.v1.GroupService/AddGroupMembers", Writes("users"), Modify),
    ("/coursewire.v1.GroupService/RemoveGroupMembers", Writes("users"), Modify),
    ("/coursewire.v1.GroupService/ListGroupMembers", Reads("users"), Read),
    ("/coursewire.v1.GroupService/AssignToGroup", Writes("enrollments"), Modify),
    ("/coursewire.v1.GroupService/UnassignFromGroup", Writes("enrollments"), Modify),
    ("/coursewire.v1.GroupService/GetOperation", Reads("users"), Read),
    ("/coursewire.v1.ApiKeyService/CreateApiKey", Writes("keys"), Modify),
    ("/coursewire.v1.ApiKeyService/GetApiKey", Reads("keys"), Read),
    ("/coursewire.v1.ApiKeyService/ListApiKeys", Reads("keys"), Read),
    ("/coursewire.v1.ApiKeyService/UpdateApiKey", Writes("keys"), Modify),
    ("/coursewire.v1.ApiKeyService/RevokeApiKey", Writes("keys"), Remove),
    ("/coursewire.v1.OrganizationService/CreateOrganization", Platform, Modify),
    ("/coursewire.v1.OrganizationService/GetOrganization", Platform, Read),
    ("/coursewire.v1.OrganizationService/ListOrganizations", Platform, Read),
    ("/coursewire.v1.OrganizationService/UpdateOrganization", Platform, Modify),
    ("/coursewire.v1.EventService/ListEvents", Reads("events"), Read),
    ("/coursewire.v1.EventService/GetEvent", Reads("events"), Read),
    ("/coursewire.v1.EventService/WatchEvents", Reads("events"), Read),
    ("/coursewire.v1.WebhookService/CreateWebhook", Writes("webhooks"), Modify),
    ("/coursewire.v1.WebhookService/GetWebhook", Reads("webhooks"), Read),
    ("/coursewire.v1.WebhookService/ListWebhooks", Reads("webhooks"), Read),
    ("/coursewire.v1.WebhookService/UpdateWebhook", Writes("webhooks"), Modify),
    ("/coursewire.v1.WebhookService/DeleteWebhook", Writes("webhooks"), Remove),
    // Reading a secret is a read call, but only keys that may write webhooks can do it.
    ("/coursewire.v1.WebhookService/GetWebhookSecret", Writes("webhooks"), Read),
    ("/coursewire.v1.WebhookService/RotateWebhookSecret", Writes("webhooks"), Modify),
    ("/coursewire.v1.WebhookService/EnableWebhook", Writes("webhooks"), Modify),
    ("/coursewire.v1.WebhookService/DisableWebhook", Writes("webhooks"), Modify),
    ("/coursewire.v1.WebhookService/SendTestEvent", Writes("webhooks"), Modify),
    ("/coursewire.v1.WebhookService/ListDeliveries", Reads("webhooks"), Read),
    ("/coursewire.v1.WebhookService/GetDelivery", Reads("webhooks"), Read),
    ("/coursewire.v1.WebhookService/ListAttempts", Reads("webhooks"), Read),
    ("/coursewire.v1.WebhookService/RetryDelivery", Writes("webhooks"), Modify),
    ("/coursewire.v1.WebhookService/ReplayEvents", Writes("webhooks"), Modify),
];

/// Methods whose handler charges the rate limit per item (a batch counts its items).
const PER_ITEM: &[&str] = &[
    "/coursewire.v1.EnrollmentService/BatchCreateEnrollments",
    "/coursewire.v1.GroupService/AddGroupMembers",
    "/coursewire.v1.GroupService/RemoveGroupMembers",
];

pub fn counts_per_item(path: &str) -> bool {
    PER_ITEM.contains(&path)
}

/// Scope resources a key may name (`RESOURCE:read` / `RESOURCE:write`).
pub const RESOURCES: &[&str] = &["users", "courses", "domains", "enrollments", "webhooks", "events", "keys"];

/// The policy of a gRPC path; `None` for paths that are not ours.
pub fn policy(path: &str) -> Option<Policy> {
    TABLE.iter().find(|(p, _, _)| *p == path).map(|&(_, need, class)| Policy { need, class })
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
    TABLE.iter().map(|(path, _, _)| *path).chain(PUBLIC.iter().copied())
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
