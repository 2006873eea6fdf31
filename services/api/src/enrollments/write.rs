//! Enrollment writes. Each runs inside the caller's transaction and records its events
//! there; completion is a conditional update, so it happens exactly once under races.
use coursewire_proto::v1::enrollment::State;
use coursewire_proto::v1::lesson_progress::State as LessonState;
use coursewire_proto::v1::{CreateEnrollmentRequest, Enrollment, LessonProgress, Progress};
use sqlx::{AnyConnection, Row};

use super::store::fetch;
use crate::clock::{opt_timestamp, to_timestamp};
use crate::resource::opt_time;
use coursewire_core::error::{ApiError, ApiResult, Reason};
use coursewire_core::events::{self, Change};
use coursewire_core::ids::{check_id, kind, new_id};
use coursewire_core::store::is_unique_violation;
use coursewire_core::validate::Violations;

async fn record(conn: &mut AnyConnection, org: &str, kind: &str, e: &Enrollment, now: i64) -> ApiResult<()> {
    events::record(conn, Change { org, kind, resource_id: &e.id, sequence: e.sequence, data: e, now }).await.map(|_| ())
}

/// An enrollment's deadlines, as epoch ms.
#[derive(Clone, Copy, Debug, Default)]
pub struct Dates {
    pub expires_at: Option<i64>,
    pub due_at: Option<i64>,
}

impl Dates {
    /// Both dates, each (when set) in the future.
    pub fn validate(
        v: &mut Violations,
        prefix: &str,
        expires_at: Option<&pbjson_types::Timestamp>,
        due_at: Option<&pbjson_types::Timestamp>,
        now: i64,
    ) -> Dates {
        let mut future = |field: &str, t| {
            let field = format!("{prefix}{field}");
            let ms = opt_time(v, &field, t);
            v.check(ms.is_none_or(|t| t > now), &field, "must be in the future");
            ms
        };
        Dates { expires_at: future("expires_at", expires_at), due_at: future("due_at", due_at) }
    }
}

pub fn validate_create(r: &CreateEnrollmentRequest, prefix: &str, now: i64) -> ApiResult<Dates> {
    let mut v = Violations::default();
    check_id(&mut v, &format!("{prefix}user_id"), kind::USER, &r.user_id);
    check_id(&mut v, &format!("{prefix}published_course_id"), kind::PUBLISHED_COURSE, &r.published_course_id);
    let dates = Dates::validate(&mut v, prefix, r.expires_at.as_ref(), r.due_at.as_ref(), now);
    v.finish()?;
    Ok(dates)
}

fn duplicate(id: String) -> ApiError {
    ApiError::new(Reason::EnrollmentExists, "the user is already enrolled in this published course")
        .with("existing_id", id)
        .help("use the existing enrollment (its id is in metadata.existing_id)")
}

/// What creating an enrollment needs to know, read in one round trip.
struct Target {
    active: bool,
    course_id: String,
    domain_id: String,
    enrollment_closed: bool,
    lessons_required: i64,
    existing_id: Option<String>,
}

async fn target(conn: &mut AnyConnection, org: &str, r: &CreateEnrollmentRequest) -> ApiResult<Target> {
    let row = sqlx::query(
        "SELECT u.active, p.course_id, p.domain_id, p.enrollment_closed, \
           (SELECT COUNT(*) FROM lessons l WHERE l.course_id = p.course_id AND l.required = 1) AS lessons_required, \
           (SELECT e.id FROM enrollments e WHERE e.user_id = u.id AND e.published_course_id = p.id AND e.deleted_at IS NULL) AS existing_id \
         FROM users u JOIN published_courses p ON p.org_id = u.org_id WHERE u.id = $1 AND p.id = $2 AND u.org_id = $3",
    )
    .bind(&r.user_id)
    .bind(&r.published_course_id)
    .bind(org)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        // Say which one is missing.
        crate::users::fetch(&mut *conn, org, &r.user_id).await?;
        return Err(ApiError::not_found("published course", &r.published_course_id));
    };
    Ok(Target {
        active: row.try_get::<i64, _>("active")? != 0,
        course_id: row.try_get("course_id")?,
        domain_id: row.try_get("domain_id")?,
        enrollment_closed: row.try_get::<i64, _>("enrollment_closed")? != 0,
        lessons_required: row.try_get("lessons_required")?,
        existing_id: row.try_get("existing_id")?,
    })
}

/// Creates the enrollment, granting domain access when the user lacks it.
pub async fn create(
    conn: &mut AnyConnection,
    org: &str,
    r: &CreateEnrollmentRequest,
    dates: Dates,
    now: i64,
) -> ApiResult<Enrollment> {
    let t = target(conn, org, r).await?;
    // An existing enrollment is reported first: `ensure` reuses it whatever else changed.
    if let Some(id) = t.existing_id {
        return Err(duplicate(id));
    }
    if !t.active {
        return Err(ApiError::new(Reason::UserInactive, "the user is inactive")
            .help("activate the user (UpdateUser active=true) first"));
    }
    if t.enrollment_closed {
        return Err(ApiError::new(Reason::EnrollmentClosed, "this published course does not accept new enrollments"));
    }
    crate::domain_access::ensure(conn, org, &t.domain_id, &r.user_id, now).await?;
    let e = Enrollment {
        id: new_id(kind::ENROLLMENT),
        user_id: r.user_id.clone(),
        published_course_id: r.published_course_id.clone(),
        course_id: t.course_id,
        domain_id: t.domain_id,
        state: State::Active as i32,
        enrolled_at: Some(to_timestamp(now)),
        expires_at: opt_timestamp(dates.expires_at),
        due_at: opt_timestamp(dates.due_at),
        overdue_at: None,
        progress: Some(Progress { lessons_completed: 0, lessons_required: t.lessons_required as i32, percent: 0 }),
        completed_at: None,
        score: None,
        passed: None,
        sequence: 1,
        updated_at: Some(to_timestamp(now)),
        etag: crate::resource::etag(1),
    };
    let insert = sqlx::query(
        "INSERT INTO enrollments (id, org_id, user_id, published_course_id, course_id, domain_id, state, enrolled_at, expires_at, due_at, updated_at, sequence) \
         VALUES ($1, $2, $3, $4, $5, $6, 'ACTIVE', $7, $8, $9, $7, 1)",
    )
    .bind(&e.id)
    .bind(org)
    .bind(&e.user_id)
    .bind(&e.published_course_id)
    .bind(&e.course_id)
    .bind(&e.domain_id)
    .bind(now)
    .bind(dates.expires_at)
    .bind(dates.due_at)
    .execute(&mut *conn)
    .await;
    match insert {
        // A concurrent create won the race; its id is readable once it commits.
        Err(e) if is_unique_violation(&e) => return Err(duplicate(String::new())),
        r => r?,
    };
    record(conn, org, "enrollment.created", &e, now).await?;
    Ok(e)
}

/// The user's live enrollment in the published course: the existing one (reused as it is),
/// or a new one with `dates`. Returns its id.
pub async fn ensure(
    conn: &mut AnyConnection,
    org: &str,
    user_id: &str,
    published_course_id: &str,
    dates: Dates,
    now: i64,
) -> ApiResult<String> {
    let r = CreateEnrollmentRequest {
        user_id: user_id.into(),
        published_course_id: published_course_id.into(),
        expires_at: opt_timestamp(dates.expires_at),
        due_at: opt_timestamp(dates.due_at),
        request_id: String::new(),
    };
    create(conn, org, &r, dates, now).await.map(|e| e.id).or_else(|e| e.existing(Reason::EnrollmentExists))
}

/// Bumps the enrollment's sequence: a row lock that serializes writers to one enrollment.
async fn lock(conn: &mut AnyConnection, org: &str, id: &str, now: i64) -> ApiResult<Enrollment> {
    let done = sqlx::query("UPDATE enrollments SET sequence = sequence + 1, updated_at = $1 WHERE id = $2 AND org_id = $3 AND deleted_at IS NULL")
        .bind(now)
        .bind(id)
        .bind(org)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("enrollment", id));
    }
    fetch(conn, org, id, now).await
}

fn expired(e: &Enrollment) -> ApiResult<()> {
    if e.state == State::Expired as i32 {
        return Err(ApiError::new(Reason::EnrollmentExpired, "the enrollment has expired")
            .help("extend expires_at with UpdateEnrollment first"));
    }
    Ok(())
}

/// Records a lesson's state; completing the last required lesson completes the enrollment
/// (then `true`: the caller advances the learning paths, see `complete_now`). A completed
/// lesson stays completed (a later IN_PROGRESS only updates the score).
pub async fn record_progress(
    conn: &mut AnyConnection,
    org: &str,
    id: &str,
    lesson_id: &str,
    state: LessonState,
    score: Option<f64>,
    now: i64,
) -> ApiResult<(Enrollment, LessonProgress, bool)> {
    let e = lock(conn, org, id, now).await?;
    expired(&e)?;
    let part_of_course: Option<i64> =
        sqlx::query_scalar("SELECT required FROM lessons WHERE id = $1 AND course_id = $2")
            .bind(lesson_id)
            .bind(&e.course_id)
            .fetch_optional(&mut *conn)
            .await?;
    if part_of_course.is_none() {
        return Err(ApiError::not_found("lesson", lesson_id).with("course_id", &e.course_id));
    }
    let state_text = if state == LessonState::Completed { "COMPLETED" } else { "IN_PROGRESS" };
    let completed_at = (state == LessonState::Completed).then_some(now);
    sqlx::query(
        "INSERT INTO lesson_progress (enrollment_id, lesson_id, state, score, updated_at, completed_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (enrollment_id, lesson_id) DO UPDATE SET \
           state = CASE WHEN lesson_progress.state = 'COMPLETED' THEN 'COMPLETED' ELSE excluded.state END, \
           score = COALESCE(excluded.score, lesson_progress.score), \
           updated_at = excluded.updated_at, \
           completed_at = COALESCE(lesson_progress.completed_at, excluded.completed_at)",
    )
    .bind(id)
    .bind(lesson_id)
    .bind(state_text)
    .bind(score)
    .bind(now)
    .bind(completed_at)
    .execute(&mut *conn)
    .await?;
    let row = sqlx::query("SELECT state, score, updated_at, completed_at FROM lesson_progress WHERE enrollment_id = $1 AND lesson_id = $2")
        .bind(id)
        .bind(lesson_id)
        .fetch_one(&mut *conn)
        .await?;
    let lesson = LessonProgress {
        enrollment_id: id.into(),
        lesson_id: lesson_id.into(),
        state: if row.try_get::<String, _>("state")? == "COMPLETED" {
            LessonState::Completed
        } else {
            LessonState::InProgress
        } as i32,
        score: row.try_get("score")?,
        updated_at: Some(to_timestamp(row.try_get("updated_at")?)),
        completed_at: opt_timestamp(row.try_get("completed_at")?),
    };
    let e = fetch(conn, org, id, now).await?;
    record(conn, org, "enrollment.progressed", &e, now).await?;
    let p = e.progress.unwrap_or_default();
    let last = e.state == State::Active as i32 && p.lessons_required > 0 && p.lessons_completed >= p.lessons_required;
    if last && let Some(completed) = complete_now(conn, org, id, None, None, now).await? {
        return Ok((completed, lesson, true));
    }
    Ok((e, lesson, false))
}

/// Completes an ACTIVE enrollment; `None` when it was not ACTIVE (nothing written). The
/// learning paths that hold its course advance in the same transaction, by the caller
/// (`learning_paths::members::course_completed`): path enrollments are built on course
/// enrollments, so this module does not reach up into them.
async fn complete_now(
    conn: &mut AnyConnection,
    org: &str,
    id: &str,
    score: Option<f64>,
    passed: Option<bool>,
    now: i64,
) -> ApiResult<Option<Enrollment>> {
    let done = sqlx::query(
        "UPDATE enrollments SET state = 'COMPLETED', completed_at = $1, score = COALESCE($2, score), passed = COALESCE($3, passed), \
         updated_at = $1, sequence = sequence + 1 \
         WHERE id = $4 AND org_id = $5 AND deleted_at IS NULL AND state = 'ACTIVE' AND (expires_at IS NULL OR expires_at > $1)",
    )
    .bind(now)
    .bind(score)
    .bind(passed.map(i64::from))
    .bind(id)
    .bind(org)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(None);
    }
    let e = fetch(conn, org, id, now).await?;
    record(conn, org, "enrollment.completed", &e, now).await?;
    Ok(Some(e))
}

/// Explicit completion; repeating it returns the completed enrollment unchanged (`true`
/// when this call completed it).
pub async fn complete(
    conn: &mut AnyConnection,
    org: &str,
    id: &str,
    score: Option<f64>,
    passed: Option<bool>,
    now: i64,
) -> ApiResult<(Enrollment, bool)> {
    if let Some(e) = complete_now(conn, org, id, score, passed, now).await? {
        return Ok((e, true));
    }
    let e = fetch(conn, org, id, now).await?;
    expired(&e)?;
    Ok((e, false))
}

/// Sets the dates named in `paths` (`expires_at`, `due_at`). Extending an expired enrollment
/// reactivates it; moving `due_at` clears `overdue_at`, so the new date fires its event again.
/// Reads the enrollment under a row lock (Postgres; SQLite has one writer), so that nothing
/// else, the deadline scheduler included, changes it before this transaction writes: a
/// write without an etag then never fails because of a concurrent one.
async fn fetch_locked(conn: &mut AnyConnection, org: &str, id: &str, now: i64) -> ApiResult<Enrollment> {
    sqlx::query("UPDATE enrollments SET sequence = sequence WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL")
        .bind(id)
        .bind(org)
        .execute(&mut *conn)
        .await?;
    fetch(conn, org, id, now).await
}

pub async fn update_dates(
    conn: &mut AnyConnection,
    org: &str,
    id: &str,
    etag: &str,
    paths: &[&str],
    dates: Dates,
    now: i64,
) -> ApiResult<Enrollment> {
    let current = fetch_locked(conn, org, id, now).await?;
    crate::resource::check_etag(etag, current.sequence, "enrollment")?;
    let old = |t: &Option<pbjson_types::Timestamp>| t.as_ref().and_then(crate::clock::from_timestamp);
    let expires_at = if paths.contains(&"expires_at") { dates.expires_at } else { old(&current.expires_at) };
    let due_at = if paths.contains(&"due_at") { dates.due_at } else { old(&current.due_at) };
    let reactivate = expires_at.is_none_or(|t| t > now);
    let rearm = due_at != old(&current.due_at);
    let done = sqlx::query(
        "UPDATE enrollments SET expires_at = $1, due_at = $2, \
           state = CASE WHEN state = 'EXPIRED' AND $3 = 1 THEN 'ACTIVE' ELSE state END, \
           overdue_at = CASE WHEN $4 = 1 THEN NULL ELSE overdue_at END, \
           updated_at = $5, sequence = sequence + 1 WHERE id = $6 AND sequence = $7",
    )
    .bind(expires_at)
    .bind(due_at)
    .bind(i64::from(reactivate))
    .bind(i64::from(rearm))
    .bind(now)
    .bind(id)
    .bind(current.sequence)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::etag_mismatch("enrollment"));
    }
    let e = fetch(conn, org, id, now).await?;
    record(conn, org, "enrollment.updated", &e, now).await?;
    Ok(e)
}

/// Soft delete: the row stays for history; a new enrollment of the same pair is allowed.
pub async fn delete(conn: &mut AnyConnection, org: &str, id: &str, etag: &str, now: i64) -> ApiResult<()> {
    let current = fetch_locked(conn, org, id, now).await?;
    crate::resource::check_etag(etag, current.sequence, "enrollment")?;
    let done = sqlx::query("UPDATE enrollments SET deleted_at = $1, updated_at = $1, sequence = sequence + 1 WHERE id = $2 AND sequence = $3")
        .bind(now)
        .bind(id)
        .bind(current.sequence)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::etag_mismatch("enrollment"));
    }
    let mut e = current;
    e.sequence += 1;
    e.etag = crate::resource::etag(e.sequence);
    e.updated_at = Some(to_timestamp(now));
    record(conn, org, "enrollment.deleted", &e, now).await
}
