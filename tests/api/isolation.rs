//! Tenant isolation: another organization's key sees nothing and changes nothing.
use coursewire_proto::v1::*;
use tonic::Code;

use crate::fixtures::*;
use crate::harness::Harness;

async fn other_orgs_get_not_found_everywhere(h: &Harness) {
    let mut acme = h.clients();
    let w = world(&mut acme).await;
    let e = enroll(&mut acme, &w.user.id, &w.published.id).await.unwrap();
    let du = acme
        .domain_users
        .list_domain_users(ListDomainUsersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .domain_users
        .remove(0);
    let event = acme.events.list_events(ListEventsRequest::default()).await.unwrap().into_inner().events.remove(0);
    let before = h.snapshot().await;

    let other_key = h.other_org("globex").await;
    let mut c = h.clients_with(&other_key);
    let nf = Code::NotFound;
    assert_err(c.domains.get_domain(GetDomainRequest { id: w.domain.id.clone() }).await, nf, "NOT_FOUND");
    assert_err(
        c.domains
            .update_domain(UpdateDomainRequest {
                domain: Some(Domain { id: w.domain.id.clone(), name: "x".into(), ..w.domain.clone() }),
                update_mask: None,
            })
            .await,
        nf,
        "NOT_FOUND",
    );
    assert_err(
        c.domains.delete_domain(DeleteDomainRequest { id: w.domain.id.clone(), etag: String::new() }).await,
        nf,
        "NOT_FOUND",
    );
    assert_err(c.users.get_user(GetUserRequest { id: w.user.id.clone() }).await, nf, "NOT_FOUND");
    assert_err(
        c.users.update_user(UpdateUserRequest { user: Some(w.user.clone()), update_mask: None }).await,
        nf,
        "NOT_FOUND",
    );
    assert_err(
        c.users.delete_user(DeleteUserRequest { id: w.user.id.clone(), etag: String::new() }).await,
        nf,
        "NOT_FOUND",
    );
    use lookup_user_request::Key;
    assert_err(
        c.users.lookup_user(LookupUserRequest { key: Some(Key::Email(w.user.email.clone())) }).await,
        nf,
        "NOT_FOUND",
    );
    assert_err(c.courses.get_course(GetCourseRequest { id: w.course.id.clone() }).await, nf, "NOT_FOUND");
    assert_err(
        c.courses.update_course(UpdateCourseRequest { course: Some(w.course.clone()), update_mask: None }).await,
        nf,
        "NOT_FOUND",
    );
    assert_err(
        c.courses.delete_course(DeleteCourseRequest { id: w.course.id.clone(), etag: String::new() }).await,
        nf,
        "NOT_FOUND",
    );
    assert_err(
        c.published.get_published_course(GetPublishedCourseRequest { id: w.published.id.clone() }).await,
        nf,
        "NOT_FOUND",
    );
    assert_err(
        c.published
            .update_published_course(UpdatePublishedCourseRequest {
                published_course: Some(w.published.clone()),
                update_mask: None,
            })
            .await,
        nf,
        "NOT_FOUND",
    );
    assert_err(
        c.published
            .delete_published_course(DeletePublishedCourseRequest { id: w.published.id.clone(), etag: String::new() })
            .await,
        nf,
        "NOT_FOUND",
    );
    let publish_theirs =
        PublishedCourse { course_id: w.course.id.clone(), domain_id: w.domain.id.clone(), ..Default::default() };
    assert_err(
        c.published
            .create_published_course(CreatePublishedCourseRequest {
                published_course: Some(publish_theirs),
                request_id: String::new(),
            })
            .await,
        nf,
        "NOT_FOUND",
    );
    assert_err(c.domain_users.get_domain_user(GetDomainUserRequest { id: du.id.clone() }).await, nf, "NOT_FOUND");
    assert_err(
        c.domain_users
            .update_domain_user(UpdateDomainUserRequest { domain_user: Some(du.clone()), update_mask: None })
            .await,
        nf,
        "NOT_FOUND",
    );
    assert_err(
        c.domain_users.delete_domain_user(DeleteDomainUserRequest { id: du.id.clone(), etag: String::new() }).await,
        nf,
        "NOT_FOUND",
    );
    let access = DomainUser { domain_id: w.domain.id.clone(), user_id: w.user.id.clone(), ..Default::default() };
    assert_err(
        c.domain_users
            .create_domain_user(CreateDomainUserRequest { domain_user: Some(access), ..Default::default() })
            .await,
        nf,
        "NOT_FOUND",
    );
    assert_err(enroll(&mut c, &w.user.id, &w.published.id).await, nf, "NOT_FOUND");
    assert_err(c.enrollments.get_enrollment(GetEnrollmentRequest { id: e.id.clone() }).await, nf, "NOT_FOUND");
    assert_err(
        c.enrollments
            .update_enrollment(UpdateEnrollmentRequest { enrollment: Some(e.clone()), update_mask: None })
            .await,
        nf,
        "NOT_FOUND",
    );
    assert_err(
        c.enrollments.delete_enrollment(DeleteEnrollmentRequest { id: e.id.clone(), etag: String::new() }).await,
        nf,
        "NOT_FOUND",
    );
    let rec = RecordLessonProgressRequest {
        enrollment_id: e.id.clone(),
        lesson_id: w.course.lessons[0].id.clone(),
        state: lesson_progress::State::Completed as i32,
        score: None,
    };
    assert_err(c.enrollments.record_lesson_progress(rec).await, nf, "NOT_FOUND");
    assert_err(
        c.enrollments.complete_enrollment(CompleteEnrollmentRequest { id: e.id.clone(), ..Default::default() }).await,
        nf,
        "NOT_FOUND",
    );
    assert_err(c.events.get_event(GetEventRequest { id: event.id.clone() }).await, nf, "NOT_FOUND");

    // Batch items fail one by one with the same NOT_FOUND.
    let batch = BatchCreateEnrollmentsRequest {
        requests: vec![CreateEnrollmentRequest {
            user_id: w.user.id.clone(),
            published_course_id: w.published.id.clone(),
            ..Default::default()
        }],
        request_id: String::new(),
    };
    let results = c.enrollments.batch_create_enrollments(batch).await.unwrap().into_inner().results;
    match &results[0].result {
        Some(batch_create_enrollments_response::result::Result::Error(err)) => {
            assert_eq!(err.code, Code::NotFound as i32)
        }
        other => panic!("expected an error, got {other:?}"),
    }

    // Lists and exports show nothing of acme.
    assert!(c.domains.list_domains(ListDomainsRequest::default()).await.unwrap().into_inner().domains.is_empty());
    assert!(c.users.list_users(ListUsersRequest::default()).await.unwrap().into_inner().users.is_empty());
    assert!(c.courses.list_courses(ListCoursesRequest::default()).await.unwrap().into_inner().courses.is_empty());
    assert!(
        c.published
            .list_published_courses(ListPublishedCoursesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .published_courses
            .is_empty()
    );
    assert!(
        c.domain_users
            .list_domain_users(ListDomainUsersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .domain_users
            .is_empty()
    );
    assert!(
        c.enrollments
            .list_enrollments(ListEnrollmentsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .enrollments
            .is_empty()
    );
    assert!(c.events.list_events(ListEventsRequest::default()).await.unwrap().into_inner().events.is_empty());
    let mut export = c.enrollments.export_enrollments(ExportEnrollmentsRequest::default()).await.unwrap().into_inner();
    assert!(export.message().await.unwrap().is_none());

    // A page token of acme's is refused, not honoured.
    let page =
        acme.users.list_users(ListUsersRequest { page_size: 1, ..Default::default() }).await.unwrap().into_inner();
    let _ = user(&mut acme, "second@example.com").await;
    let page = acme
        .users
        .list_users(ListUsersRequest { page_size: 1, page_token: page.next_page_token, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(!page.next_page_token.is_empty() || page.users.len() == 1);
    let first =
        acme.users.list_users(ListUsersRequest { page_size: 1, ..Default::default() }).await.unwrap().into_inner();
    assert_err(
        c.users
            .list_users(ListUsersRequest { page_size: 1, page_token: first.next_page_token, ..Default::default() })
            .await,
        Code::InvalidArgument,
        "INVALID_PAGE_TOKEN",
    );

    let mut after = h.snapshot().await;
    after[1] -= 1; // the second acme user created above
    after[8] -= 1; // and its event
    after[10] -= 1; // globex's key
    assert_eq!(after, before, "nothing changed");
}

crate::backend_tests!(other_orgs_get_not_found_everywhere);
