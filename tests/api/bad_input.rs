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
        ..Default::default()
    };
    expect(c.enrollments.create_enrollment(past).await, f, &["expires_at"], "expiry in the past");
    let bad_nanos = CreateEnrollmentRequest {
        user_id: w.user.id.clone(),
        published_course_id: w.published.id.clone(),
        expires_at: Some(pbjson_types::Timestamp { seconds: 4_000_000_000, nanos: -5 }),
        ..Default::default()
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

/// What a fuzzer or a hostile client sends: bodies that do not decode, NUL bytes, forged
/// tokens, near-miss emails, header injection in URLs, a limit that admits nothing, and a
/// message over the size limit. Each gets its code and reason, and nothing is written.
async fn hostile_input_is_refused_cleanly(h: &Harness) {
    let mut c = h.clients();
    world(&mut c).await;
    crate::fixtures::user(&mut c, "second@example.com").await;
    let other = h.other_org("initech").await;
    let before = h.snapshot().await;
    let create_user = "/coursewire.v1.UserService/CreateUser";
    for (case, body) in [
        // user { email: <0xff 0xfe> }: a string field that is not UTF-8.
        ("invalid UTF-8", vec![0x0a, 0x04, 0x12, 0x02, 0xff, 0xfe]),
        ("truncated", vec![0x0a, 0x10, 0x12]),
        ("not protobuf", br#"{"user": {"email": "ada@example.com"}}"#.to_vec()),
    ] {
        let s = raw_call(h, &h.key, create_user, body).await.expect_err(case);
        assert_eq!(s.code(), INVALID, "{case}: {s:?}");
        assert_eq!(reason(&s), "MALFORMED_REQUEST", "{case}");
        assert!(!s.message().contains("prost") && !s.message().contains("DecodeError"), "{case}: {}", s.message());
    }
    let f = "INVALID_FIELD";
    let nul_filter = ListUsersRequest { email: "ada\0@example.com".into(), ..Default::default() };
    expect(c.users.list_users(nul_filter).await, f, &["email"], "NUL in the email filter");
    let nul_lookup = LookupUserRequest { key: Some(lookup_user_request::Key::ExternalId("x\0".into())) };
    expect(c.users.lookup_user(nul_lookup).await, f, &["external_id"], "NUL in a lookup");
    let nul_type = ListDeliveriesRequest { event_type: "user.created\0".into(), ..Default::default() };
    expect(c.webhooks.list_deliveries(nul_type).await, f, &["event_type"], "NUL in a delivery filter");

    // Page tokens are MACed: forged, tampered, or another organization's are refused alike.
    use base64::Engine;
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([&[0u8; 16][..], b"usr_\0"].concat());
    let page = c.users.list_users(ListUsersRequest { page_size: 1, ..Default::default() }).await.unwrap().into_inner();
    assert!(!page.next_page_token.is_empty());
    let mut tampered = page.next_page_token.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    for (case, token, key) in [
        ("forged token with a NUL", forged, h.key.clone()),
        ("tampered token", String::from_utf8(tampered).unwrap(), h.key.clone()),
        ("another organization's token", page.next_page_token.clone(), other),
    ] {
        let mut theirs = h.clients_with(&key);
        let r = theirs.users.list_users(ListUsersRequest { page_size: 1, page_token: token, ..Default::default() });
        expect(r.await, "INVALID_PAGE_TOKEN", &[], case);
    }

    let usr = |email: &str| CreateUserRequest {
        user: Some(User { email: email.into(), ..Default::default() }),
        ..Default::default()
    };
    for email in ["a@@example.com", "a@b@example.com", "a..b@example.com"] {
        expect(c.users.create_user(usr(email)).await, f, &["user.email"], email);
    }
    for url in ["https://x.com/a\r\nx-injected: 1", "https://x.com/a b", "https://x.com/a\nb"] {
        let hook = Webhook { url: url.into(), ..Default::default() };
        let r = c.webhooks.create_webhook(CreateWebhookRequest { webhook: Some(hook), request_id: String::new() });
        expect(r.await, f, &["webhook.url"], url);
    }
    let never = ApiKey { rate_limit: "0/1m".into(), ..crate::fixtures::star_key() };
    expect(c.keys.create_api_key(CreateApiKeyRequest { api_key: Some(never) }).await, f, &["rate_limit"], "0/1m");

    // Over the 4 MiB message limit: RESOURCE_EXHAUSTED, with ErrorInfo like every error.
    let huge = CreateUserRequest {
        user: Some(User { email: "big@example.com".into(), first_name: "x".repeat(5 << 20), ..Default::default() }),
        ..Default::default()
    };
    let s = c.users.create_user(huge).await.expect_err("over the limit");
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert_eq!(reason(&s), "MESSAGE_TOO_LARGE");
    assert_eq!(meta(&s, "limit_bytes").as_deref(), Some("4194304"));
    assert_eq!(h.snapshot().await, before, "no refused request wrote anything");
}

crate::backend_tests!(bad_input_is_refused_and_writes_nothing, hostile_input_is_refused_cleanly);
