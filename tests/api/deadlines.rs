//! Due dates and expiry: the scheduler turns each passed date into one event, also with
//! several schedulers at once, and never for completed, deleted or moved enrollments.
use std::time::Duration;

use coursewire_api::clock::Clock;
use coursewire_api::enrollments::deadlines::Deadlines;
use coursewire_proto::v1::enrollment::State;
use coursewire_proto::v1::*;
use futures::future::join_all;
use pbjson_types::FieldMask;
use tonic::Code;

use crate::fixtures::*;
use crate::harness::Harness;

const HOUR: i64 = 3_600_000;

async fn enroll_with(
    h: &Harness,
    user_id: &str,
    published: &str,
    due: Option<i64>,
    expires: Option<i64>,
) -> Enrollment {
    let r = CreateEnrollmentRequest {
        user_id: user_id.into(),
        published_course_id: published.into(),
        due_at: due.map(timestamp),
        expires_at: expires.map(timestamp),
        ..Default::default()
    };
    h.clients().enrollments.create_enrollment(r).await.unwrap().into_inner()
}

/// Events of `kind`, as (resource id, sequence).
async fn fired(h: &Harness, kind: &str) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT resource_id, sequence FROM events WHERE type = $1 ORDER BY resource_id")
        .bind(kind)
        .fetch_all(h.db.pool())
        .await
        .unwrap()
}

/// A scheduler of its own on the harness' database and clock (as another replica runs one).
fn scheduler(h: &Harness) -> Deadlines {
    Deadlines { db: h.db.clone(), clock: h.clock.clone(), wake: Default::default() }
}

async fn each_deadline_fires_once_across_schedulers(h: &Harness) {
    let mut c = h.clients();
    let w = world(&mut c).await;
    let now = h.clock.now_ms();
    let mut users = Vec::new();
    for name in ["late", "done", "gone", "moved"] {
        users.push(user(&mut c, &format!("{name}@example.com")).await);
    }
    let late = enroll_with(h, &users[0].id, &w.published.id, Some(now + HOUR), Some(now + 2 * HOUR)).await;
    let done = enroll_with(h, &users[1].id, &w.published.id, Some(now + HOUR), Some(now + 2 * HOUR)).await;
    let gone = enroll_with(h, &users[2].id, &w.published.id, Some(now + HOUR), Some(now + 2 * HOUR)).await;
    let moved = enroll_with(h, &users[3].id, &w.published.id, Some(now + HOUR), None).await;
    assert_eq!(late.due_at, Some(timestamp(now + HOUR)));
    c.enrollments
        .complete_enrollment(CompleteEnrollmentRequest { id: done.id.clone(), ..Default::default() })
        .await
        .unwrap();
    c.enrollments
        .delete_enrollment(DeleteEnrollmentRequest { id: gone.id.clone(), etag: String::new() })
        .await
        .unwrap();
    let patch = Enrollment { id: moved.id.clone(), due_at: Some(timestamp(now + 3 * HOUR)), ..Default::default() };
    let mask = Some(FieldMask { paths: vec!["due_at".into()] });
    c.enrollments
        .update_enrollment(UpdateEnrollmentRequest { enrollment: Some(patch), update_mask: mask })
        .await
        .unwrap();

    // Nothing is due yet.
    assert_eq!(scheduler(h).fire_due().await.unwrap(), 0);

    // Past the due date: four schedulers at once (the application's own runs too).
    h.clock.advance(HOUR + 1);
    let counts = join_all((0..4).map(|_| async { scheduler(h).fire_due().await.unwrap() })).await;
    assert!(counts.iter().sum::<usize>() <= 1, "{counts:?}");
    assert_eq!(fired(h, "enrollment.overdue").await, vec![(late.id.clone(), 2)]);
    let got = c.enrollments.get_enrollment(GetEnrollmentRequest { id: late.id.clone() }).await.unwrap().into_inner();
    assert_eq!((got.state, got.overdue_at), (State::Active as i32, Some(timestamp(now + HOUR + 1))));
    let listed = c
        .enrollments
        .list_enrollments(ListEnrollmentsRequest { due_before: Some(timestamp(now + 2 * HOUR)), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .enrollments;
    let ids: Vec<&str> = listed.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), 2, "late and done are due before then: {ids:?}");

    // Past the expiry: EXPIRED is stored and emitted once; the completed one stays completed.
    h.clock.advance(HOUR);
    join_all((0..4).map(|_| async { scheduler(h).fire_due().await.unwrap() })).await;
    assert_eq!(fired(h, "enrollment.expired").await, vec![(late.id.clone(), 3)]);
    let stored: String = sqlx::query_scalar("SELECT state FROM enrollments WHERE id = $1")
        .bind(&late.id)
        .fetch_one(h.db.pool())
        .await
        .unwrap();
    assert_eq!(stored, "EXPIRED");
    let got = c.enrollments.get_enrollment(GetEnrollmentRequest { id: done.id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.state, State::Completed as i32);

    // The moved due date fires at its new time, once.
    h.clock.advance(HOUR);
    assert!(scheduler(h).fire_due().await.unwrap() + scheduler(h).fire_due().await.unwrap() <= 1);
    assert_eq!(fired(h, "enrollment.overdue").await.len(), 2);
    assert_eq!(fired(h, "enrollment.expired").await.len(), 1);

    // Extending an expired enrollment reactivates it; it can expire (and be told) again.
    let extend =
        Enrollment { id: late.id.clone(), expires_at: Some(timestamp(h.clock.now_ms() + HOUR)), ..Default::default() };
    let mask = Some(FieldMask { paths: vec!["expires_at".into()] });
    let got = c
        .enrollments
        .update_enrollment(UpdateEnrollmentRequest { enrollment: Some(extend), update_mask: mask })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.state, State::Active as i32);
    h.clock.advance(HOUR);
    scheduler(h).fire_due().await.unwrap();
    assert_eq!(fired(h, "enrollment.expired").await.len(), 2);
}

/// The application's own scheduler sleeps on the clock: moving the clock past a due date is
/// enough for the event to appear, with no call to the scheduler.
async fn the_running_scheduler_wakes_when_the_clock_passes_a_date(h: &Harness) {
    let mut c = h.clients();
    let w = world(&mut c).await;
    let late = enroll_with(h, &w.user.id, &w.published.id, Some(h.clock.now_ms() + HOUR), None).await;
    h.clock.advance(HOUR);
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while fired(h, "enrollment.overdue").await.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "no enrollment.overdue within 10 s of the clock passing due_at");
    assert_eq!(fired(h, "enrollment.overdue").await, vec![(late.id, 2)]);
}

async fn bad_dates_are_refused(h: &Harness) {
    let mut c = h.clients();
    let w = world(&mut c).await;
    let before = h.snapshot().await;
    let past = CreateEnrollmentRequest {
        user_id: w.user.id.clone(),
        published_course_id: w.published.id.clone(),
        due_at: Some(timestamp(h.clock.now_ms() - 1000)),
        ..Default::default()
    };
    let s = assert_err(c.enrollments.create_enrollment(past).await, Code::InvalidArgument, "INVALID_FIELD");
    assert_eq!(violations(&s), vec!["due_at".to_string()]);
    let e = enroll(&mut c, &w.user.id, &w.published.id).await.unwrap();
    let after_create = h.snapshot().await;
    assert_ne!(before, after_create);
    let patch = Enrollment { id: e.id.clone(), due_at: Some(timestamp(1000)), ..Default::default() };
    let mask = Some(FieldMask { paths: vec!["due_at".into()] });
    let s = assert_err(
        c.enrollments.update_enrollment(UpdateEnrollmentRequest { enrollment: Some(patch), update_mask: mask }).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    assert_eq!(violations(&s), vec!["enrollment.due_at".to_string()]);
    let s = assert_err(
        c.enrollments
            .list_enrollments(ListEnrollmentsRequest {
                due_before: Some(pbjson_types::Timestamp { seconds: 1, nanos: -1 }),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    assert_eq!(violations(&s), vec!["due_before".to_string()]);
    assert_eq!(after_create, h.snapshot().await, "refused calls wrote nothing");
}

crate::backend_tests!(
    each_deadline_fires_once_across_schedulers,
    the_running_scheduler_wakes_when_the_clock_passes_a_date,
    bad_dates_are_refused,
);
