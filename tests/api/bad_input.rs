//! Bad input: each case gets the right code and reason, names the bad fields, and writes nothing.
use coursewire_proto::v1::*;
use tonic::{Code, Status};

use crate::fixtures::*;
use crate::harness::Harness;

const INVALID: Code = Code::InvalidArgument;

fn expect(r: Result<impl std::fmt::Debug, Status>, reason: &str, fields: &[&str], case: &str) {
    let s = r.expect_err(case);
    assert_eq!(s.code(), INVALID, "{case}: {s:?}");
    assert_eq!(crate::fixtures::reason(&s), reason, "{case}");
    let got = violations(&s);
    for f in fields {
        assert!(got.iter().any(|g| g == f), "{case}: {f} not in {got:?}");
    }
}

async fn bad_input_is_refused_and_writes_nothing(h: &Harness) {
    let mut c = h.clients();
    let w = world(&mut c).await;
    let before = h.snapshot().await;
    let long = "x".repeat(201);
    let dom = |hostname: &str, name: &str| CreateDomainRequest {
        domain: Some(Domain { hostname: hostname.into(), name: name.into(), ..Default::default() }),
        request_id: String::new(),
    };
    let usr = |email: &str| CreateUserRequest {
        user: Some(User { email: email.into(), ..Default::default() }),
        ..Default::default()
    };
    let f = "INVALID_FIELD";

    expect(c.domains.create_domain(dom("", "")).await, f, &["domain.hostname", "domain.name"], "empty domain");
    expect(c.domains.create_domain(CreateDomainRequest::default()).await, f, &["domain.hostname"], "missing domain");
    expect(c.domains.create_domain(dom("not a host", "A")).await, f, &["domain.hostname"], "hostname with spaces");
    expect(c.domains.create_domain(dom("-x.example.com", "A")).await, f, &["domain.hostname"], "label starting with -");
    expect(c.domains.create_domain(dom("192.168.1.1", "A")).await, f, &["domain.hostname"], "IP as hostname");
    expect(
        c.domains.create_domain(dom(&format!("{}.com", "a".repeat(64)), "A")).await,
        f,
        &["domain.hostname"],
        "label over 63",
    );
    expect(c.domains.create_domain(dom("ok.example.com", &long)).await, f, &["domain.name"], "name too long");
    expect(
        c.domains.create_domain(dom("ok.example.com", "bell\u{7}")).await,
        f,
        &["domain.name"],
        "control characters",
    );
    expect(c.users.create_user(usr("")).await, f, &["user.email"], "empty email");
    expect(c.users.create_user(usr("not-an-email")).await, f, &["user.email"], "email without @");
    expect(c.users.create_user(usr("a@b")).await, f, &["user.email"], "email without dot in domain");
    expect(c.users.create_user(usr("a b@example.com")).await, f, &["user.email"], "email with space");
    expect(
        c.users.create_user(usr(&format!("{}@example.com", "a".repeat(65)))).await,
        f,
        &["user.email"],
        "local part too long",
    );
    let long_names = CreateUserRequest {
        user: Some(User {
            email: "ok@example.com".into(),
            first_name: long.clone(),
            external_id: "e".repeat(129),
            ..Default::default()
        }),
        ..Default::default()
    };
    expect(c.users.create_user(long_names).await, f, &["user.first_name", "user.external_id"], "every bad field named");
    let untitled = CreateCourseRequest {
        course: Some(Course { title: " ".into(), lessons: vec![Lesson::default()], ..Default::default() }),
        request_id: String::new(),
    };
    expect(c.courses.create_course(untitled).await, f, &["course.title", "course.lessons[0].title"], "blank titles");
    let too_many = CreateCourseRequest {
        course: Some(Course {
            title: "T".into(),
            lessons: vec![Lesson { title: "L".into(), ..Default::default() }; 501],
            ..Default::default()
        }),
        request_id: String::new(),
    };
    expect(c.courses.create_course(too_many).await, f, &["course.lessons"], "too many lessons");
    let with_ids = CreateCourseRequest {
        course: Some(Course {
            title: "T".into(),
            lessons: vec![Lesson { id: "les_x".into(), title: "L".into(), ..Default::default() }],
            ..Default::default()
        }),
        request_id: String::new(),
    };
    expect(c.courses.create_course(with_ids).await, f, &["course.lessons[0].id"], "lesson ids on create");

    // Ids of the wrong kind or shape.
    expect(c.users.get_user(GetUserRequest { id: w.course.id.clone() }).await, f, &["id"], "course id as user id");
    expect(c.users.get_user(GetUserRequest { id: String::new() }).await, f, &["id"], "empty id");
    expect(
        c.courses.get_course(GetCourseRequest { id: "crs_'; DROP TABLE courses; --".into() }).await,
        f,
        &["id"],
        "injection-shaped id",
    );
    expect(
        c.domains.get_domain(GetDomainRequest { id: w.domain.id.to_uppercase() }).await,
        f,
        &["id"],
        "uppercased id",
    );
    expect(enroll(&mut c, &w.published.id, &w.user.id).await, f, &["user_id", "published_course_id"], "swapped ids");
    let past = CreateEnrollmentRequest {
        user_id: w.user.id.clone(),
        published_course_id: w.published.id.clone(),
        expires_at: Some(pbjson_types::Timestamp { seconds: 1, nanos: 0 }),
        request_id: String::new(),
    };
    expect(c.enrollments.create_enrollment(past).await, f, &["expires_at"], "expiry in the past");
    let bad_nanos = CreateEnrollmentRequest {
        user_id: w.user.id.clone(),
        published_course_id: w.published.id.clone(),
        expires_at: Some(pbjson_types::Timestamp { seconds: 4_000_000_000, nanos: -5 }),
        request_id: String::new(),
    };
    expect(c.enrollments.create_enrollment(bad_nanos).await, f, &["expires_at"], "timestamp out of range");

    // Enums and numbers.
    let e_missing = RecordLessonProgressRequest {
        enrollment_id: "enr_01jd3xkq7w8h2m4n6p8r0t2v4x".into(),
        lesson_id: w.course.lessons[0].id.clone(),
        state: 99,
        score: None,
    };
    expect(c.enrollments.record_lesson_progress(e_missing).await, f, &["state"], "unknown lesson state");
    let unspecified = RecordLessonProgressRequest {
        enrollment_id: "enr_01jd3xkq7w8h2m4n6p8r0t2v4x".into(),
        lesson_id: w.course.lessons[0].id.clone(),
        state: 0,
        score: Some(101.0),
    };
    expect(
        c.enrollments.record_lesson_progress(unspecified).await,
        f,
        &["state", "score"],
        "unspecified state and score over 100",
    );
    let nan =
        CompleteEnrollmentRequest { id: "enr_01jd3xkq7w8h2m4n6p8r0t2v4x".into(), score: Some(f64::NAN), passed: None };
    expect(c.enrollments.complete_enrollment(nan).await, f, &["score"], "NaN score");
    expect(
        c.enrollments.list_enrollments(ListEnrollmentsRequest { state: 7, ..Default::default() }).await,
        f,
        &["state"],
        "unknown enrollment state filter",
    );

    // Pages.
    expect(
        c.users.list_users(ListUsersRequest { page_size: -1, ..Default::default() }).await,
        f,
        &["page_size"],
        "negative page_size",
    );
    expect(
        c.users.list_users(ListUsersRequest { page_token: "garbage".into(), ..Default::default() }).await,
        "INVALID_PAGE_TOKEN",
        &[],
        "garbage page token",
    );
    expect(
        c.users.list_users(ListUsersRequest { page_token: "djF8eHx5".into(), ..Default::default() }).await,
        "INVALID_PAGE_TOKEN",
        &[],
        "forged page token",
    );
    let huge =
        c.users.list_users(ListUsersRequest { page_size: i32::MAX, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(huge.users.len(), 1, "huge page sizes are coerced to the maximum (AIP-158)");
    expect(
        c.events.list_events(ListEventsRequest { types: vec!["DROP TABLE".into()], ..Default::default() }).await,
        f,
        &["types"],
        "bad event type filter",
    );

    // Masks, batches and request ids.
    let mask = Some(pbjson_types::FieldMask { paths: vec!["created_at".into()] });
    expect(
        c.users.update_user(UpdateUserRequest { user: Some(w.user.clone()), update_mask: mask }).await,
        f,
        &["update_mask"],
        "read-only mask path",
    );
    let empty_batch = BatchCreateEnrollmentsRequest::default();
    expect(c.enrollments.batch_create_enrollments(empty_batch).await, f, &["requests"], "empty batch");
    let item = CreateEnrollmentRequest {
        user_id: w.user.id.clone(),
        published_course_id: w.published.id.clone(),
        ..Default::default()
    };
    let oversized = BatchCreateEnrollmentsRequest { requests: vec![item; 1001], request_id: String::new() };
    expect(c.enrollments.batch_create_enrollments(oversized).await, f, &["requests"], "batch over 1,000");
    let mut bad_request_id = usr("ok@example.com");
    bad_request_id.request_id = "has spaces in it".into();
    expect(c.users.create_user(bad_request_id).await, f, &["request_id"], "request_id with spaces");

    // Duplicates are ALREADY_EXISTS, not INVALID_ARGUMENT.
    assert_err(c.users.create_user(usr(&w.user.email.to_uppercase())).await, Code::AlreadyExists, "USER_EMAIL_EXISTS");
    assert_err(c.domains.create_domain(dom(&w.domain.hostname, "Dup")).await, Code::AlreadyExists, "DOMAIN_EXISTS");
    let again =
        PublishedCourse { course_id: w.course.id.clone(), domain_id: w.domain.id.clone(), ..Default::default() };
    assert_err(
        c.published
            .create_published_course(CreatePublishedCourseRequest {
                published_course: Some(again),
                request_id: String::new(),
            })
            .await,
        Code::AlreadyExists,
        "COURSE_ALREADY_PUBLISHED",
    );

    assert_eq!(h.snapshot().await, before, "no rejected request wrote anything");
}

crate::backend_tests!(bad_input_is_refused_and_writes_nothing);
