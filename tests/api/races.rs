//! Concurrency: completion happens once, and duplicate enrollments collapse to one.
use coursewire_proto::v1::enrollment::State;
use coursewire_proto::v1::*;
use futures::future::join_all;
use tonic::Code;

use crate::fixtures::*;
use crate::harness::Harness;

async fn completed_events(h: &Harness) -> usize {
    let mut c = h.clients();
    c.events
        .list_events(ListEventsRequest { types: vec!["enrollment.completed".into()], ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events
        .len()
}

async fn concurrent_completion_yields_one_event(h: &Harness) {
    let mut c = h.clients();
    let w = world(&mut c).await;
    let e = enroll(&mut c, &w.user.id, &w.published.id).await.unwrap();
    let calls = (0..16).map(|_| {
        let mut c = h.clients();
        let id = e.id.clone();
        async move {
            c.enrollments.complete_enrollment(CompleteEnrollmentRequest { id, score: None, passed: Some(true) }).await
        }
    });
    for r in join_all(calls).await {
        assert_eq!(r.unwrap().into_inner().state, State::Completed as i32);
    }
    assert_eq!(completed_events(h).await, 1);
}

async fn racing_last_lessons_complete_once(h: &Harness) {
    let mut c = h.clients();
    let w = world(&mut c).await;
    for round in 0..5 {
        let u = user(&mut c, &format!("racer{round}@example.com")).await;
        let e = enroll(&mut c, &u.id, &w.published.id).await.unwrap();
        // Both required lessons at once, several times each: exactly one completion.
        let calls = (0..6).map(|i| {
            let mut c = h.clients();
            let req = RecordLessonProgressRequest {
                enrollment_id: e.id.clone(),
                lesson_id: w.course.lessons[i % 2].id.clone(),
                state: lesson_progress::State::Completed as i32,
                score: None,
            };
            async move { c.enrollments.record_lesson_progress(req).await }
        });
        for r in join_all(calls).await {
            r.unwrap();
        }
        let got = c.enrollments.get_enrollment(GetEnrollmentRequest { id: e.id.clone() }).await.unwrap().into_inner();
        assert_eq!(got.state, State::Completed as i32, "round {round}");
        assert_eq!(completed_events(h).await, round + 1);
    }
}

async fn concurrent_duplicate_enrollment_creates_one(h: &Harness) {
    let mut c = h.clients();
    let w = world(&mut c).await;
    let calls = (0..16).map(|_| {
        let mut c = h.clients();
        let (u, p) = (w.user.id.clone(), w.published.id.clone());
        async move { enroll(&mut c, &u, &p).await }
    });
    let results = join_all(calls).await;
    let winners: Vec<&Enrollment> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1);
    for r in &results {
        if let Err(s) = r {
            assert_eq!(s.code(), Code::AlreadyExists);
            assert_eq!(meta(s, "existing_id").as_deref(), Some(winners[0].id.as_str()));
        }
    }
    assert_eq!(h.count("enrollments").await, 1);
    let created = c
        .events
        .list_events(ListEventsRequest {
            types: vec!["enrollment.created".into(), "domain_user.created".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(created.len(), 2, "one enrollment and one domain access, each with one event");
}

/// A delete and an update of the same resource at once: whichever wins, the loser fails
/// (ABORTED or NOT_FOUND) and writes no event, so no two events of one resource share a
/// sequence and the delete, when it happens, is the last.
async fn deletes_racing_updates_never_share_a_sequence(h: &Harness) {
    let mut c = h.clients();
    let lost = |r: Result<(), tonic::Status>| {
        if let Err(s) = r {
            // FAILED_PRECONDITION: a delete refused because a dependent survived its own race.
            assert!(matches!(s.code(), Code::Aborted | Code::NotFound | Code::FailedPrecondition), "{s:?}");
        }
    };
    for round in 0..8 {
        let d = domain(&mut c, &format!("race{round}.example.com")).await;
        let u = user(&mut c, &format!("race{round}@example.com")).await;
        let course = course(&mut c, 1).await;
        let p = publish(&mut c, &course.id, &d.id).await;
        let du = c
            .domain_users
            .create_domain_user(CreateDomainUserRequest {
                domain_user: Some(DomainUser { domain_id: d.id.clone(), user_id: u.id.clone(), ..Default::default() }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let (mut a, mut b) = (h.clients(), h.clients());
        let (x, y) = tokio::join!(
            a.domain_users.update_domain_user(UpdateDomainUserRequest {
                domain_user: Some(DomainUser { id: du.id.clone(), active: false, ..Default::default() }),
                update_mask: Some(pbjson_types::FieldMask { paths: vec!["active".into()] }),
            }),
            b.domain_users.delete_domain_user(DeleteDomainUserRequest { id: du.id.clone(), etag: String::new() })
        );
        lost(x.map(drop));
        lost(y.map(drop));
        let (x, y) = tokio::join!(
            a.published.update_published_course(UpdatePublishedCourseRequest {
                published_course: Some(PublishedCourse {
                    id: p.id.clone(),
                    enrollment_closed: true,
                    ..Default::default()
                }),
                update_mask: None,
            }),
            b.published.delete_published_course(DeletePublishedCourseRequest { id: p.id.clone(), etag: String::new() })
        );
        lost(x.map(drop));
        lost(y.map(drop));
        let renamed = Course { id: course.id.clone(), title: "Renamed".into(), ..Default::default() };
        let mask = Some(pbjson_types::FieldMask { paths: vec!["title".into()] });
        let (x, y) = tokio::join!(
            a.courses.update_course(UpdateCourseRequest { course: Some(renamed), update_mask: mask }),
            b.courses.delete_course(DeleteCourseRequest { id: course.id.clone(), etag: String::new() })
        );
        lost(x.map(drop));
        lost(y.map(drop));
        let renamed = User { id: u.id.clone(), first_name: "Renamed".into(), ..Default::default() };
        let mask = Some(pbjson_types::FieldMask { paths: vec!["first_name".into()] });
        let (x, y) = tokio::join!(
            a.users.update_user(UpdateUserRequest { user: Some(renamed), update_mask: mask }),
            b.users.delete_user(DeleteUserRequest { id: u.id.clone(), etag: String::new() })
        );
        lost(x.map(drop));
        lost(y.map(drop));
        let renamed = Domain { id: d.id.clone(), name: "Renamed".into(), ..Default::default() };
        let mask = Some(pbjson_types::FieldMask { paths: vec!["name".into()] });
        let (x, y) = tokio::join!(
            a.domains.update_domain(UpdateDomainRequest { domain: Some(renamed), update_mask: mask }),
            b.domains.delete_domain(DeleteDomainRequest { id: d.id.clone(), etag: String::new() })
        );
        lost(x.map(drop));
        lost(y.map(drop));
    }
    let events: Vec<(String, i64, String)> =
        sqlx::query_as("SELECT resource_id, sequence, type FROM events ORDER BY resource_id, id")
            .fetch_all(h.db.pool())
            .await
            .unwrap();
    let mut last: Option<&(String, i64, String)> = None;
    for e in &events {
        if let Some(prev) = last.filter(|p| p.0 == e.0) {
            assert!(e.1 > prev.1, "{} has events {prev:?} then {e:?}", e.0);
            assert!(!prev.2.ends_with(".deleted"), "{} changed after its delete: {e:?}", e.0);
        }
        last = Some(e);
    }
}

crate::backend_tests!(
    concurrent_completion_yields_one_event,
    racing_last_lessons_complete_once,
    concurrent_duplicate_enrollment_creates_one,
    deletes_racing_updates_never_share_a_sequence,
);
