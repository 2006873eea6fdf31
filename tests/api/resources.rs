//! CRUD behaviour of each resource: uniqueness, update masks, etags, delete guards.
use coursewire_proto::v1::*;
use pbjson_types::FieldMask;
use tonic::Code;

use coursewire_api::clock::Clock;

use crate::fixtures::*;
use crate::harness::Harness;

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() })
}

async fn domains_crud_and_etags(h: &Harness) {
    let mut c = h.clients();
    let d = domain(&mut c, "Learn.Example.COM.").await;
    assert_eq!(d.hostname, "learn.example.com", "hostnames are normalized");
    assert_eq!(c.domains.get_domain(GetDomainRequest { id: d.id.clone() }).await.unwrap().into_inner(), d);

    let dup = Domain { hostname: "learn.example.com".into(), name: "Again".into(), ..Default::default() };
    assert_err(
        c.domains.create_domain(CreateDomainRequest { domain: Some(dup), request_id: String::new() }).await,
        Code::AlreadyExists,
        "DOMAIN_EXISTS",
    );

    let patch = Domain { id: d.id.clone(), name: "Renamed".into(), etag: d.etag.clone(), ..Default::default() };
    let updated = c
        .domains
        .update_domain(UpdateDomainRequest { domain: Some(patch.clone()), update_mask: mask(&["name"]) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.name, "Renamed");
    assert_eq!(updated.hostname, d.hostname, "fields outside the mask are kept");
    assert_ne!(updated.etag, d.etag);

    // The old etag is stale now.
    assert_err(
        c.domains.update_domain(UpdateDomainRequest { domain: Some(patch), update_mask: mask(&["name"]) }).await,
        Code::Aborted,
        "ETAG_MISMATCH",
    );
    assert_err(
        c.domains.delete_domain(DeleteDomainRequest { id: d.id.clone(), etag: d.etag.clone() }).await,
        Code::Aborted,
        "ETAG_MISMATCH",
    );
    let bad_mask = Domain { id: d.id.clone(), ..Default::default() };
    assert_err(
        c.domains.update_domain(UpdateDomainRequest { domain: Some(bad_mask), update_mask: mask(&["id"]) }).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );

    c.domains.delete_domain(DeleteDomainRequest { id: d.id.clone(), etag: updated.etag }).await.unwrap();
    assert_err(c.domains.get_domain(GetDomainRequest { id: d.id.clone() }).await, Code::NotFound, "NOT_FOUND");
    let types: Vec<String> = c
        .events
        .list_events(ListEventsRequest { resource_id: d.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .map(|e| e.r#type)
        .collect();
    assert_eq!(types, ["domain.created", "domain.updated", "domain.deleted"]);
}

async fn users_are_unique_by_email_and_external_id(h: &Harness) {
    let mut c = h.clients();
    let u = User {
        email: "Grace@Example.com".into(),
        external_id: "hr-1".into(),
        first_name: "Grace".into(),
        ..Default::default()
    };
    let grace =
        c.users.create_user(CreateUserRequest { user: Some(u), ..Default::default() }).await.unwrap().into_inner();
    assert!(grace.active, "users are active unless created inactive");

    let same_email = User { email: "grace@EXAMPLE.com".into(), ..Default::default() };
    let s = assert_err(
        c.users.create_user(CreateUserRequest { user: Some(same_email), ..Default::default() }).await,
        Code::AlreadyExists,
        "USER_EMAIL_EXISTS",
    );
    assert_eq!(meta(&s, "existing_id"), Some(grace.id.clone()));
    let same_external = User { email: "other@example.com".into(), external_id: "hr-1".into(), ..Default::default() };
    assert_err(
        c.users.create_user(CreateUserRequest { user: Some(same_external), ..Default::default() }).await,
        Code::AlreadyExists,
        "USER_EXTERNAL_ID_EXISTS",
    );

    use lookup_user_request::Key;
    let by_email = c
        .users
        .lookup_user(LookupUserRequest { key: Some(Key::Email("GRACE@example.COM".into())) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_email.id, grace.id);
    let by_external = c
        .users
        .lookup_user(LookupUserRequest { key: Some(Key::ExternalId("hr-1".into())) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_external.id, grace.id);
    assert_err(
        c.users.lookup_user(LookupUserRequest { key: Some(Key::ExternalId("hr-2".into())) }).await,
        Code::NotFound,
        "NOT_FOUND",
    );

    let listed = c
        .users
        .list_users(ListUsersRequest { email: "GRACE@example.com".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.users.len(), 1);

    let patch = User { id: grace.id.clone(), active: false, ..Default::default() };
    let inactive = c
        .users
        .update_user(UpdateUserRequest { user: Some(patch), update_mask: mask(&["active"]) })
        .await
        .unwrap()
        .into_inner();
    assert!(!inactive.active);
    assert_eq!(inactive.email, grace.email);
}

async fn courses_keep_lesson_identity_on_update(h: &Harness) {
    let mut c = h.clients();
    let course = course(&mut c, 2).await;
    let (first, second) = (course.lessons[0].clone(), course.lessons[1].clone());
    let new_lessons =
        vec![second.clone(), Lesson { title: "New".into(), required: true, ..Default::default() }, first.clone()];
    let patch = Course { id: course.id.clone(), lessons: new_lessons, ..Default::default() };
    let updated = c
        .courses
        .update_course(UpdateCourseRequest { course: Some(patch), update_mask: mask(&["lessons"]) })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = updated.lessons.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids[0], second.id);
    assert_eq!(ids[2], first.id);
    assert!(ids[1].starts_with("les_"));
    assert_eq!(updated.lessons.iter().map(|l| l.position).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(updated.title, course.title);

    let foreign = Course {
        id: course.id.clone(),
        lessons: vec![Lesson { id: "les_01jd3xkq7w8h2m4n6p8r0t2v4x".into(), title: "X".into(), ..Default::default() }],
        ..Default::default()
    };
    assert_err(
        c.courses.update_course(UpdateCourseRequest { course: Some(foreign), update_mask: mask(&["lessons"]) }).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );

    let listed = c.courses.list_courses(ListCoursesRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.courses.len(), 1);
    assert_eq!(listed.courses[0].lessons.len(), 3);
}

async fn deleting_published_things_needs_unpublishing_first(h: &Harness) {
    let mut c = h.clients();
    let w = world(&mut c).await;
    let s = assert_err(
        c.courses.delete_course(DeleteCourseRequest { id: w.course.id.clone(), etag: String::new() }).await,
        Code::FailedPrecondition,
        "COURSE_IS_PUBLISHED",
    );
    assert!(s.message().contains("published"), "{}", s.message());
    assert_err(
        c.domains.delete_domain(DeleteDomainRequest { id: w.domain.id.clone(), etag: String::new() }).await,
        Code::FailedPrecondition,
        "DOMAIN_HAS_PUBLISHED_COURSES",
    );

    let e = enroll(&mut c, &w.user.id, &w.published.id).await.unwrap();
    assert_err(
        c.published
            .delete_published_course(DeletePublishedCourseRequest { id: w.published.id.clone(), etag: String::new() })
            .await,
        Code::FailedPrecondition,
        "PUBLISHED_COURSE_HAS_ENROLLMENTS",
    );
    assert_err(
        c.users.delete_user(DeleteUserRequest { id: w.user.id.clone(), etag: String::new() }).await,
        Code::FailedPrecondition,
        "USER_HAS_ENROLLMENTS",
    );

    c.enrollments.delete_enrollment(DeleteEnrollmentRequest { id: e.id.clone(), etag: String::new() }).await.unwrap();
    assert_err(
        c.enrollments.get_enrollment(GetEnrollmentRequest { id: e.id.clone() }).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    c.published
        .delete_published_course(DeletePublishedCourseRequest { id: w.published.id.clone(), etag: String::new() })
        .await
        .unwrap();
    c.courses.delete_course(DeleteCourseRequest { id: w.course.id.clone(), etag: String::new() }).await.unwrap();
    c.domains.delete_domain(DeleteDomainRequest { id: w.domain.id.clone(), etag: String::new() }).await.unwrap();
    // The domain's access rows went with it, each with its own event.
    assert_eq!(h.count("domain_users").await, 0);
    let deleted = c
        .events
        .list_events(ListEventsRequest { types: vec!["domain_user.deleted".into()], ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(deleted.len(), 1);
    c.users.delete_user(DeleteUserRequest { id: w.user.id.clone(), etag: String::new() }).await.unwrap();
}

async fn enrollment_rules(h: &Harness) {
    let mut c = h.clients();
    let w = world(&mut c).await;
    let e = enroll(&mut c, &w.user.id, &w.published.id).await.unwrap();
    let s = assert_err(enroll(&mut c, &w.user.id, &w.published.id).await, Code::AlreadyExists, "ENROLLMENT_EXISTS");
    assert_eq!(meta(&s, "existing_id"), Some(e.id.clone()));

    // Closed published courses refuse new enrollments.
    let other = user(&mut c, "bob@example.com").await;
    let close = PublishedCourse { id: w.published.id.clone(), enrollment_closed: true, ..Default::default() };
    c.published
        .update_published_course(UpdatePublishedCourseRequest {
            published_course: Some(close),
            update_mask: mask(&["enrollment_closed"]),
        })
        .await
        .unwrap();
    assert_err(enroll(&mut c, &other.id, &w.published.id).await, Code::FailedPrecondition, "ENROLLMENT_CLOSED");

    // An enrollment past expires_at reads as EXPIRED and refuses progress.
    let soon = h.clock.now_ms() + 60_000;
    let patch = Enrollment {
        id: e.id.clone(),
        expires_at: Some(pbjson_types::Timestamp { seconds: soon / 1000, nanos: 0 }),
        ..Default::default()
    };
    let updated = c
        .enrollments
        .update_enrollment(UpdateEnrollmentRequest { enrollment: Some(patch), update_mask: mask(&["expires_at"]) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.state, enrollment::State::Active as i32);
    h.clock.advance(120_000);
    let got = c.enrollments.get_enrollment(GetEnrollmentRequest { id: e.id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.state, enrollment::State::Expired as i32);
    let expired = c
        .enrollments
        .list_enrollments(ListEnrollmentsRequest { state: enrollment::State::Expired as i32, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(expired.enrollments.len(), 1);
    let rec = RecordLessonProgressRequest {
        enrollment_id: e.id.clone(),
        lesson_id: w.course.lessons[0].id.clone(),
        state: lesson_progress::State::Completed as i32,
        score: None,
    };
    assert_err(c.enrollments.record_lesson_progress(rec).await, Code::FailedPrecondition, "ENROLLMENT_EXPIRED");
    assert_err(
        c.enrollments.complete_enrollment(CompleteEnrollmentRequest { id: e.id.clone(), ..Default::default() }).await,
        Code::FailedPrecondition,
        "ENROLLMENT_EXPIRED",
    );

    // A lesson of another course is not found.
    let other_course = course(&mut c, 1).await;
    let clear = Enrollment { id: e.id.clone(), ..Default::default() };
    c.enrollments
        .update_enrollment(UpdateEnrollmentRequest { enrollment: Some(clear), update_mask: mask(&["expires_at"]) })
        .await
        .unwrap();
    let rec = RecordLessonProgressRequest {
        enrollment_id: e.id.clone(),
        lesson_id: other_course.lessons[0].id.clone(),
        state: lesson_progress::State::Completed as i32,
        score: None,
    };
    assert_err(c.enrollments.record_lesson_progress(rec).await, Code::NotFound, "NOT_FOUND");
}

async fn domain_users_crud(h: &Harness) {
    let mut c = h.clients();
    let d = domain(&mut c, "a.example.com").await;
    let u = user(&mut c, "x@example.com").await;
    let du = DomainUser { domain_id: d.id.clone(), user_id: u.id.clone(), ..Default::default() };
    let created = c
        .domain_users
        .create_domain_user(CreateDomainUserRequest { domain_user: Some(du.clone()), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(created.active);
    assert_err(
        c.domain_users
            .create_domain_user(CreateDomainUserRequest { domain_user: Some(du), ..Default::default() })
            .await,
        Code::AlreadyExists,
        "DOMAIN_USER_EXISTS",
    );
    let patch = DomainUser { id: created.id.clone(), active: false, etag: created.etag.clone(), ..Default::default() };
    let updated = c
        .domain_users
        .update_domain_user(UpdateDomainUserRequest { domain_user: Some(patch), update_mask: mask(&["active"]) })
        .await
        .unwrap()
        .into_inner();
    assert!(!updated.active);
    c.domain_users
        .delete_domain_user(DeleteDomainUserRequest { id: created.id.clone(), etag: updated.etag })
        .await
        .unwrap();
    assert_err(
        c.domain_users.get_domain_user(GetDomainUserRequest { id: created.id }).await,
        Code::NotFound,
        "NOT_FOUND",
    );
}

async fn idempotent_creates(h: &Harness) {
    let mut c = h.clients();
    let req = CreateUserRequest {
        user: Some(User { email: "idem@example.com".into(), ..Default::default() }),
        request_id: "req-1".into(),
        inactive: false,
    };
    let first = c.users.create_user(req.clone()).await.unwrap().into_inner();
    let again = c.users.create_user(req.clone()).await.unwrap().into_inner();
    assert_eq!(first, again, "same request_id and body: same response");
    assert_eq!(h.count("users").await, 1);
    assert_eq!(h.count("events").await, 1);
    let mut other = req;
    other.user.as_mut().unwrap().email = "other@example.com".into();
    assert_err(c.users.create_user(other.clone()).await, Code::InvalidArgument, "REQUEST_ID_REUSED");
    // After 24 hours the id may be used again.
    h.clock.advance(24 * 3600 * 1000 + 1);
    c.users.create_user(other).await.unwrap();
    assert_eq!(h.count("users").await, 2);
}

crate::backend_tests!(
    domains_crud_and_etags,
    users_are_unique_by_email_and_external_id,
    courses_keep_lesson_identity_on_update,
    deleting_published_things_needs_unpublishing_first,
    enrollment_rules,
    domain_users_crud,
    idempotent_creates,
);
