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

crate::backend_tests!(
    concurrent_completion_yields_one_event,
    racing_last_lessons_complete_once,
    concurrent_duplicate_enrollment_creates_one
);
