//! The README cookbook as a test: from an empty organization to a completed enrollment.
use coursewire_proto::v1::enrollment::State;
use coursewire_proto::v1::lesson_progress::State as LessonState;
use coursewire_proto::v1::*;

use crate::fixtures::*;
use crate::harness::Harness;

async fn enroll_and_complete_through_lessons(h: &Harness) {
    let mut c = h.clients();
    c.account.ping(PingRequest {}).await.unwrap();
    let w = world(&mut c).await;
    assert_eq!(w.course.lessons.len(), 3);
    assert_eq!(w.course.lessons.iter().map(|l| l.position).collect::<Vec<_>>(), vec![0, 1, 2]);

    let e = enroll(&mut c, &w.user.id, &w.published.id).await.unwrap();
    assert!(e.id.starts_with("enr_"));
    assert_eq!(e.state, State::Active as i32);
    assert_eq!(e.course_id, w.course.id);
    assert_eq!(e.progress.unwrap(), Progress { lessons_completed: 0, lessons_required: 2, percent: 0 });
    assert_eq!(e.sequence, 1);

    // Enrolling granted access to the domain.
    let access = c
        .domain_users
        .list_domain_users(ListDomainUsersRequest { user_id: w.user.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(access.domain_users.len(), 1);
    assert_eq!(access.domain_users[0].domain_id, w.domain.id);

    let record = |lesson: usize, state: LessonState| RecordLessonProgressRequest {
        enrollment_id: e.id.clone(),
        lesson_id: w.course.lessons[lesson].id.clone(),
        state: state as i32,
        score: Some(90.0),
    };
    let r = c.enrollments.record_lesson_progress(record(0, LessonState::Completed)).await.unwrap().into_inner();
    let after_first = r.enrollment.unwrap();
    assert_eq!(after_first.state, State::Active as i32);
    assert_eq!(after_first.progress.unwrap().percent, 50);
    assert_eq!(r.lesson_progress.unwrap().state, LessonState::Completed as i32);

    // The optional lesson does not count.
    c.enrollments.record_lesson_progress(record(2, LessonState::Completed)).await.unwrap();
    let r = c.enrollments.record_lesson_progress(record(1, LessonState::Completed)).await.unwrap().into_inner();
    let done = r.enrollment.unwrap();
    assert_eq!(done.state, State::Completed as i32);
    assert!(done.completed_at.is_some());
    assert_eq!(done.progress.unwrap(), Progress { lessons_completed: 2, lessons_required: 2, percent: 100 });

    let got = c.enrollments.get_enrollment(GetEnrollmentRequest { id: e.id.clone() }).await.unwrap().into_inner();
    assert_eq!(got, done);

    let events = c
        .events
        .list_events(ListEventsRequest { types: vec!["enrollment.*".into()], ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    let types: Vec<&str> = events.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(
        types,
        [
            "enrollment.created",
            "enrollment.progressed",
            "enrollment.progressed",
            "enrollment.progressed",
            "enrollment.completed"
        ]
    );
    let sequences: Vec<i64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, [1, 2, 3, 4, 5], "one step per event of the same resource");
    assert_eq!(events.last().unwrap().sequence, done.sequence);

    // Recording again after completion does not complete twice.
    c.enrollments.record_lesson_progress(record(1, LessonState::Completed)).await.unwrap();
    let completed = c
        .events
        .list_events(ListEventsRequest { types: vec!["enrollment.completed".into()], ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(completed.len(), 1);
}

async fn explicit_completion_happens_once(h: &Harness) {
    let mut c = h.clients();
    let w = world(&mut c).await;
    let e = enroll(&mut c, &w.user.id, &w.published.id).await.unwrap();
    let req = CompleteEnrollmentRequest { id: e.id.clone(), score: Some(88.5), passed: Some(true) };
    let first = c.enrollments.complete_enrollment(req.clone()).await.unwrap().into_inner();
    assert_eq!(first.state, State::Completed as i32);
    assert_eq!(first.score, Some(88.5));
    assert_eq!(first.passed, Some(true));
    let again = c
        .enrollments
        .complete_enrollment(CompleteEnrollmentRequest { id: e.id.clone(), score: Some(10.0), passed: Some(false) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first, "a repeated completion changes nothing");
    let completed = c
        .events
        .list_events(ListEventsRequest { types: vec!["enrollment.completed".into()], ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(completed.len(), 1);
}

crate::backend_tests!(enroll_and_complete_through_lessons, explicit_completion_happens_once);
