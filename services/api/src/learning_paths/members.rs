//! Path enrollments: a user in a learning path. Progress is derived from the user's course
//! enrollments at read time; completion is decided under a lock on the path enrollment row,
//! so it happens exactly once, also when the last two courses complete at the same time.
use coursewire_proto::v1::path_enrollment::State;
use coursewire_proto::v1::{PathEnrollment, PathProgress};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::clock::{opt_timestamp, to_timestamp};
use crate::enrollments::write::{self as course_enrollments, Dates};
use crate::resource::{Table, etag};
use coursewire_core::error::{ApiError, ApiResult, Reason};
use coursewire_core::ids::{kind, new_id};
use coursewire_core::store::is_unique_violation;

/// The learning paths (served by the LearningPathService in `mod.rs`; here because a path
/// enrollment checks its path exists, and this module must not import its parent back).
pub const PATHS: Table = Table {
    name: "learning_paths",
    kind: "learning path",
    events: "learning_path",
    columns: "id, title, description, created_at, updated_at, sequence",
};

pub const MEMBERS: Table = Table {
    name: "path_enrollments",
    kind: "path enrollment",
    events: "path_enrollment",
    columns: "pe.id, pe.path_id, pe.user_id, pe.state, pe.enrolled_at, pe.due_at, pe.completed_at, \
              pe.updated_at, pe.sequence, \
              (SELECT COUNT(*) FROM learning_path_courses c WHERE c.path_id = pe.path_id) AS courses_total, \
              (SELECT COUNT(*) FROM learning_path_courses c JOIN enrollments e \
                 ON e.published_course_id = c.published_course_id AND e.user_id = pe.user_id \
                 AND e.deleted_at IS NULL AND e.state = 'COMPLETED' \
               WHERE c.path_id = pe.path_id) AS courses_completed",
};

/// `MEMBERS`' live rows (deleted path enrollments are kept for history), aliased `pe`.
pub const SELECT_LIVE: &str = "FROM path_enrollments pe WHERE pe.deleted_at IS NULL";

pub fn from_row(r: &AnyRow) -> Result<PathEnrollment, sqlx::Error> {
    let completed = r.try_get::<String, _>("state")? == "COMPLETED";
    let total: i64 = r.try_get("courses_total")?;
    let done: i64 = r.try_get("courses_completed")?;
    let percent = match (completed, total) {
        (true, _) => 100,
        (false, 0) => 0,
        _ => done * 100 / total,
    };
    let sequence = r.try_get("sequence")?;
    Ok(PathEnrollment {
        id: r.try_get("id")?,
        learning_path_id: r.try_get("path_id")?,
        user_id: r.try_get("user_id")?,
        state: if completed { State::Completed } else { State::Active } as i32,
        progress: Some(PathProgress {
            courses_completed: done as i32,
            courses_total: total as i32,
            percent: percent as i32,
        }),
        enrolled_at: Some(to_timestamp(r.try_get("enrolled_at")?)),
        completed_at: opt_timestamp(r.try_get("completed_at")?),
        due_at: opt_timestamp(r.try_get("due_at")?),
        sequence,
        updated_at: Some(to_timestamp(r.try_get("updated_at")?)),
        etag: etag(sequence),
    })
}

/// The live path enrollment `id` of `org`.
pub async fn fetch<'e>(
    conn: impl sqlx::Executor<'e, Database = sqlx::Any>,
    org: &str,
    id: &str,
) -> ApiResult<PathEnrollment> {
    let sql = format!("SELECT {} {SELECT_LIVE} AND pe.id = $1 AND pe.org_id = $2", MEMBERS.columns);
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(org)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| ApiError::not_found(MEMBERS.kind, id))?;
    Ok(from_row(&row)?)
}

fn duplicate(id: String) -> ApiError {
    ApiError::new(Reason::PathEnrollmentExists, "the user is already enrolled in this learning path")
        .with("existing_id", id)
        .help("use the existing path enrollment (its id is in metadata.existing_id)")
}

/// The path's courses, in order.
pub async fn courses_of(conn: &mut AnyConnection, path_id: &str) -> ApiResult<Vec<String>> {
    Ok(sqlx::query_scalar("SELECT published_course_id FROM learning_path_courses WHERE path_id = $1 ORDER BY position")
        .bind(path_id)
        .fetch_all(conn)
        .await?)
}

/// Enrolls the user in the path (checked to be `org`'s) and in each of its courses.
pub async fn create(
    conn: &mut AnyConnection,
    org: &str,
    path_id: &str,
    user_id: &str,
    dates: Dates,
    now: i64,
) -> ApiResult<PathEnrollment> {
    PATHS.get(&mut *conn, org, path_id).await?;
    crate::users::fetch(&mut *conn, org, user_id).await?;
    let existing: Option<String> = sqlx::query_scalar(
        "SELECT id FROM path_enrollments WHERE path_id = $1 AND user_id = $2 AND deleted_at IS NULL",
    )
    .bind(path_id)
    .bind(user_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = existing {
        return Err(duplicate(id));
    }
    let id = new_id(kind::PATH_ENROLLMENT);
    let insert = sqlx::query(
        "INSERT INTO path_enrollments (id, org_id, path_id, user_id, state, enrolled_at, due_at, updated_at, sequence) \
         VALUES ($1, $2, $3, $4, 'ACTIVE', $5, $6, $5, 1)",
    )
    .bind(&id)
    .bind(org)
    .bind(path_id)
    .bind(user_id)
    .bind(now)
    .bind(dates.due_at)
    .execute(&mut *conn)
    .await;
    match insert {
        // A concurrent create won the race; its id is readable once it commits.
        Err(e) if is_unique_violation(&e) => return Err(duplicate(String::new())),
        r => r?,
    };
    for published_course_id in courses_of(conn, path_id).await? {
        course_enrollments::ensure(conn, org, user_id, &published_course_id, dates, now).await?;
    }
    let pe = fetch(&mut *conn, org, &id).await?;
    MEMBERS.record(conn, org, "created", (&id, 1), &pe, now).await?;
    Ok(complete_if_done(conn, org, &id, now).await?.unwrap_or(pe))
}

/// The user's live path enrollment in the path: the existing one, or a new one (with its
/// course enrollments). Returns its id.
pub async fn ensure(
    conn: &mut AnyConnection,
    org: &str,
    path_id: &str,
    user_id: &str,
    dates: Dates,
    now: i64,
) -> ApiResult<String> {
    let created = create(conn, org, path_id, user_id, dates, now).await;
    created.map(|pe| pe.id).or_else(|e| e.existing(Reason::PathEnrollmentExists))
}

/// Completes the path enrollment if every course of its path is completed; `Some` when this
/// call completed it. The first statement locks the row (Postgres) or runs under SQLite's one
/// writer, and the progress is read after it: of two transactions completing the last two
/// courses, the second to take the lock sees the first's completion, so exactly one of them
/// completes the path.
pub async fn complete_if_done(
    conn: &mut AnyConnection,
    org: &str,
    id: &str,
    now: i64,
) -> ApiResult<Option<PathEnrollment>> {
    let locked = sqlx::query(
        "UPDATE path_enrollments SET updated_at = updated_at WHERE id = $1 AND state = 'ACTIVE' AND deleted_at IS NULL",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    if locked.rows_affected() == 0 {
        return Ok(None);
    }
    let pe = fetch(&mut *conn, org, id).await?;
    let progress = pe.progress.unwrap_or_default();
    if progress.courses_total == 0 || progress.courses_completed < progress.courses_total {
        return Ok(None);
    }
    sqlx::query(
        "UPDATE path_enrollments SET state = 'COMPLETED', completed_at = $1, updated_at = $1, sequence = sequence + 1 \
         WHERE id = $2",
    )
    .bind(now)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    let pe = fetch(&mut *conn, org, id).await?;
    MEMBERS.record(conn, org, "completed", (id, pe.sequence), &pe, now).await?;
    Ok(Some(pe))
}

/// After a course enrollment completed: completes the user's path enrollments it finishes.
pub async fn course_completed(
    conn: &mut AnyConnection,
    org: &str,
    user_id: &str,
    published_course_id: &str,
    now: i64,
) -> ApiResult<()> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT pe.id FROM path_enrollments pe JOIN learning_path_courses c ON c.path_id = pe.path_id \
         WHERE pe.user_id = $1 AND c.published_course_id = $2 AND pe.state = 'ACTIVE' AND pe.deleted_at IS NULL \
         ORDER BY pe.id",
    )
    .bind(user_id)
    .bind(published_course_id)
    .fetch_all(&mut *conn)
    .await?;
    for id in ids {
        complete_if_done(conn, org, &id, now).await?;
    }
    Ok(())
}

/// After a path's courses changed: enrolls its ACTIVE members in the `added` courses, and
/// completes those whose remaining courses are all completed.
pub async fn courses_changed(
    conn: &mut AnyConnection,
    org: &str,
    path_id: &str,
    added: &[String],
    now: i64,
) -> ApiResult<()> {
    let members: Vec<(String, String, Option<i64>)> = sqlx::query_as(
        "SELECT id, user_id, due_at FROM path_enrollments WHERE path_id = $1 AND state = 'ACTIVE' AND deleted_at IS NULL \
         ORDER BY id",
    )
    .bind(path_id)
    .fetch_all(&mut *conn)
    .await?;
    for (id, user_id, due_at) in members {
        for published_course_id in added {
            course_enrollments::ensure(
                conn,
                org,
                &user_id,
                published_course_id,
                Dates { due_at, expires_at: None },
                now,
            )
            .await?;
        }
        complete_if_done(conn, org, &id, now).await?;
    }
    Ok(())
}

/// Soft delete: the row stays for history; the user's course enrollments stay.
pub async fn delete(conn: &mut AnyConnection, org: &str, id: &str, sent_etag: &str, now: i64) -> ApiResult<()> {
    let mut pe = fetch(&mut *conn, org, id).await?;
    crate::resource::check_etag(sent_etag, pe.sequence, MEMBERS.kind)?;
    let done = sqlx::query(
        "UPDATE path_enrollments SET deleted_at = $1, updated_at = $1, sequence = sequence + 1 WHERE id = $2 AND sequence = $3",
    )
    .bind(now)
    .bind(id)
    .bind(pe.sequence)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::etag_mismatch(MEMBERS.kind));
    }
    pe.sequence += 1;
    pe.etag = etag(pe.sequence);
    pe.updated_at = Some(to_timestamp(now));
    MEMBERS.record(conn, org, "deleted", (id, pe.sequence), &pe, now).await
}
