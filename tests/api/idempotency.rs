//! `request_id` retries: every create that takes one answers an identical retry with the first
//! response and writes nothing more, however the retry's maps happen to be ordered; another
//! body under the same id is REQUEST_ID_REUSED.
use coursewire_proto::v1::*;
use tonic::Code;

use crate::fixtures::*;
use crate::harness::Harness;

/// Sends `make()` three times (each a freshly built message) and checks that the retries
/// return the first response and leave the row counts alone.
macro_rules! retried {
    ($h:expr, $client:expr, $method:ident, $make:expr) => {{
        let first = $client.$method($make()).await.unwrap().into_inner();
        let counts = $h.snapshot().await;
        for _ in 0..2 {
            assert_eq!($client.$method($make()).await.unwrap().into_inner(), first);
        }
        assert_eq!($h.snapshot().await, counts, "a retry writes nothing");
        first
    }};
}

async fn every_create_replays_an_identical_retry(h: &Harness) {
    let mut c = h.clients();
    let d = retried!(h, c.domains, create_domain, || CreateDomainRequest {
        domain: Some(Domain { hostname: "idem.example.com".into(), name: "Idem".into(), ..Default::default() }),
        request_id: "r-domain".into(),
    });
    let u = retried!(h, c.users, create_user, || CreateUserRequest {
        user: Some(User { email: "idem@example.com".into(), ..Default::default() }),
        request_id: "r-user".into(),
        ..Default::default()
    });
    let course = retried!(h, c.courses, create_course, || CreateCourseRequest {
        course: Some(Course {
            title: "Idem".into(),
            lessons: vec![Lesson { title: "One".into(), required: true, ..Default::default() }],
            ..Default::default()
        }),
        request_id: "r-course".into(),
    });
    let p = retried!(h, c.published, create_published_course, || CreatePublishedCourseRequest {
        published_course: Some(PublishedCourse {
            course_id: course.id.clone(),
            domain_id: d.id.clone(),
            ..Default::default()
        }),
        request_id: "r-published".into(),
    });
    let other = user(&mut c, "other@example.com").await;
    retried!(h, c.domain_users, create_domain_user, || CreateDomainUserRequest {
        domain_user: Some(DomainUser { domain_id: d.id.clone(), user_id: other.id.clone(), ..Default::default() }),
        request_id: "r-domain-user".into(),
        ..Default::default()
    });
    retried!(h, c.enrollments, create_enrollment, || CreateEnrollmentRequest {
        user_id: u.id.clone(),
        published_course_id: p.id.clone(),
        request_id: "r-enrollment".into(),
        ..Default::default()
    });
    let third = user(&mut c, "third@example.com").await;
    retried!(h, c.enrollments, batch_create_enrollments, || BatchCreateEnrollmentsRequest {
        requests: vec![
            CreateEnrollmentRequest {
                user_id: third.id.clone(),
                published_course_id: p.id.clone(),
                ..Default::default()
            },
            // An item that fails carries metadata (a map) in the response.
            CreateEnrollmentRequest { user_id: u.id.clone(), published_course_id: p.id.clone(), ..Default::default() },
        ],
        request_id: "r-batch".into(),
    });
    // Several custom headers: a map whose order must not change the fingerprint.
    let hook = || CreateWebhookRequest {
        webhook: Some(Webhook {
            url: "https://hooks.example.com/idem".into(),
            headers: (0..8).map(|i| (format!("x-h{i}"), format!("v{i}"))).collect(),
            ..Default::default()
        }),
        request_id: "r-webhook".into(),
    };
    let made = retried!(h, c.webhooks, create_webhook, hook);
    assert!(made.secret.starts_with("whsec_"));

    let mut changed = hook();
    changed.webhook.as_mut().unwrap().headers.insert("x-h0".into(), "other".into());
    assert_err(c.webhooks.create_webhook(changed).await, Code::InvalidArgument, "REQUEST_ID_REUSED");
}

crate::backend_tests!(every_create_replays_an_identical_retry);
