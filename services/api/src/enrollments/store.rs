//! Enrollment rows: mapping, the progress computed from lessons, and list filters.
use coursewire_proto::v1::enrollment::State;
use coursewire_proto::v1::{Enrollment, Progress};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Any, AnyConnection, Row};

use crate::clock::{from_timestamp, opt_timestamp, to_timestamp};
use crate::resource::etag;
use coursewire_core::error::{ApiError, ApiResult};
use coursewire_core::ids::{check_id, kind};
use coursewire_core::validate::Violations;

/// Progress is derived from the course's current lessons, so editing a course never
/// leaves stored counters stale.
pub const SELECT: &str = "SELECT e.id, e.user_id, e.published_course_id, e.course_id, e.domain_id, e.state, \
     e.enrolled_at, e.expires_at, e.due_at, e.overdue_at, e.completed_at, e.score, e.passed, e.updated_at, e.sequence, \
     (SELECT COUNT(*) FROM lessons l WHERE l.course_id = e.course_id AND l.required = 1) AS lessons_required, \
     (SELECT COUNT(*) FROM lesson_progress p JOIN lessons l ON l.id = p.lesson_id \
        WHERE p.enrollment_id = e.id AND l.required = 1 AND p.state = 'COMPLETED') AS lessons_completed \
     FROM enrollments e";

pub fn from_row(r: &AnyRow, now: i64) -> Result<Enrollment, sqlx::Error> {
    let expires_at: Option<i64> = r.try_get("expires_at")?;
    let stored: String = r.try_get("state")?;
    let completed = stored == "COMPLETED";
    // Expiry shows at once, before the scheduler stores it (and emits its event).
    let state = match (stored.as_str(), expires_at) {
        ("COMPLETED", _) => State::Completed,
        ("EXPIRED", _) => State::Expired,
        (_, Some(t)) if t <= now => State::Expired,
        _ => State::Active,
    };
    let required: i64 = r.try_get("lessons_required")?;
    let done: i64 = r.try_get("lessons_completed")?;
    let percent = if completed {
        100
    } else if required == 0 {
        0
    } else {
        done * 100 / required
    };
    let sequence = r.try_get("sequence")?;
    Ok(Enrollment {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        published_course_id: r.try_get("published_course_id")?,
        course_id: r.try_get("course_id")?,
        domain_id: r.try_get("domain_id")?,
        state: state as i32,
        enrolled_at: Some(to_timestamp(r.try_get("enrolled_at")?)),
        expires_at: opt_timestamp(expires_at),
        progress: Some(Progress {
            lessons_completed: done as i32,
            lessons_required: required as i32,
            percent: percent as i32,
        }),
        completed_at: opt_timestamp(r.try_get("completed_at")?),
        score: r.try_get("score")?,
        passed: r.try_get::<Option<i64>, _>("passed")?.map(|p| p != 0),
        sequence,
        updated_at: Some(to_timestamp(r.try_get("updated_at")?)),
        etag: etag(sequence),
        due_at: opt_timestamp(r.try_get("due_at")?),
        overdue_at: opt_timestamp(r.try_get("overdue_at")?),
    })
}

/// The live (not deleted) enrollment `id` of `org`.
pub async fn fetch(conn: &mut AnyConnection, org: &str, id: &str, now: i64) -> ApiResult<Enrollment> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE e.id = $1 AND e.org_id = $2 AND e.deleted_at IS NULL"
    )))
    .bind(id)
    .bind(org)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| ApiError::not_found("enrollment", id))?;
    Ok(from_row(&row, now)?)
}

/// Filters shared by ListEnrollments and ExportEnrollments.
#[derive(Debug, Default)]
pub struct Filter {
    pub user_id: String,
    pub course_id: String,
    pub published_course_id: String,
    pub state: i32,
    pub updated_after: Option<i64>,
    pub completed_after: Option<i64>,
    pub completed_before: Option<i64>,
    pub due_before: Option<i64>,
    /// The courses of this learning path, for the users enrolled in it.
    pub learning_path_id: String,
    /// What this group assigns (its courses, its paths' courses), for its members.
    pub group_id: String,
}

type Ts = Option<pbjson_types::Timestamp>;

/// ListEnrollments and ExportEnrollments filter by the same fields, with the same names.
macro_rules! filter_from {
    ($($request:ty),*) => {$(
        impl TryFrom<&$request> for Filter {
            type Error = ApiError;
            fn try_from(r: &$request) -> ApiResult<Filter> {
                let ids = [&r.user_id, &r.course_id, &r.published_course_id, &r.learning_path_id, &r.group_id];
                let times = [&r.updated_after, &r.completed_after, &r.completed_before, &r.due_before];
                Filter::new(ids.map(|s| s.as_str()), r.state, times)
            }
        }
    )*};
}
filter_from!(coursewire_proto::v1::ListEnrollmentsRequest, coursewire_proto::v1::ExportEnrollmentsRequest);

impl Filter {
    /// `ids`: user, course, published course, learning path, group; `times`: updated after,
    /// completed after, completed before, due before.
    fn new(ids: [&str; 5], state: i32, times: [&Ts; 4]) -> ApiResult<Filter> {
        let [user_id, course_id, published_course_id, learning_path_id, group_id] = ids;
        let [updated_after, completed_after, completed_before, due_before] = times;
        let mut v = Violations::default();
        for (field, prefix, id) in [
            ("user_id", kind::USER, user_id),
            ("course_id", kind::COURSE, course_id),
            ("published_course_id", kind::PUBLISHED_COURSE, published_course_id),
            ("learning_path_id", kind::LEARNING_PATH, learning_path_id),
            ("group_id", kind::GROUP, group_id),
        ] {
            if !id.is_empty() {
                check_id(&mut v, field, prefix, id);
            }
        }
        v.check(State::try_from(state).is_ok(), "state", "must be ACTIVE, COMPLETED or EXPIRED");
        let mut time = |field: &str, t: &Ts| {
            let ms = t.as_ref().map(from_timestamp);
            v.check(ms != Some(None), field, "is out of range");
            ms.flatten()
        };
        let filter = Filter {
            user_id: user_id.into(),
            course_id: course_id.into(),
            published_course_id: published_course_id.into(),
            state,
            updated_after: time("updated_after", updated_after),
            completed_after: time("completed_after", completed_after),
            completed_before: time("completed_before", completed_before),
            due_before: time("due_before", due_before),
            learning_path_id: learning_path_id.into(),
            group_id: group_id.into(),
        };
        v.finish()?;
        Ok(filter)
    }

    /// `SELECT … WHERE` for this filter after id `after`, ordered by id, with every value bound.
    pub fn query(
        &self,
        org: &str,
        after: &str,
        limit: i64,
        now: i64,
    ) -> sqlx::query::Query<'static, Any, AnyArguments> {
        let mut sql = format!("{SELECT} WHERE e.org_id = $1 AND e.deleted_at IS NULL AND e.id > $2");
        let mut texts: Vec<String> = vec![org.into(), after.into()];
        for (column, value) in [
            ("user_id", &self.user_id),
            ("course_id", &self.course_id),
            ("published_course_id", &self.published_course_id),
        ] {
            if !value.is_empty() {
                texts.push(value.clone());
                sql.push_str(&format!(" AND e.{column} = ${}", texts.len()));
            }
        }
        if !self.learning_path_id.is_empty() {
            texts.push(self.learning_path_id.clone());
            let n = texts.len();
            sql.push_str(&format!(
                " AND e.published_course_id IN (SELECT published_course_id FROM learning_path_courses WHERE path_id = ${n}) \
                 AND e.user_id IN (SELECT user_id FROM path_enrollments WHERE path_id = ${n} AND deleted_at IS NULL)"
            ));
        }
        if !self.group_id.is_empty() {
            texts.push(self.group_id.clone());
            let n = texts.len();
            sql.push_str(&format!(
                " AND e.user_id IN (SELECT user_id FROM group_members WHERE group_id = ${n} AND removed_at IS NULL) \
                 AND (e.published_course_id IN (SELECT target_id FROM group_assignments WHERE group_id = ${n}) \
                   OR e.published_course_id IN (SELECT c.published_course_id FROM group_assignments a \
                     JOIN learning_path_courses c ON c.path_id = a.target_id WHERE a.group_id = ${n}))"
            ));
        }
        let mut ints: Vec<i64> = Vec::new();
        let mut int_term = |sql: &mut String, term: &str, value: i64| {
            ints.push(value);
            sql.push_str(&term.replace('?', &format!("${}", texts.len() + ints.len())));
        };
        match State::try_from(self.state).unwrap_or(State::Unspecified) {
            State::Unspecified => {}
            State::Completed => sql.push_str(" AND e.state = 'COMPLETED'"),
            State::Active => {
                int_term(&mut sql, " AND e.state = 'ACTIVE' AND (e.expires_at IS NULL OR e.expires_at > ?)", now)
            }
            State::Expired => {
                int_term(&mut sql, " AND (e.state = 'EXPIRED' OR (e.state = 'ACTIVE' AND e.expires_at <= ?))", now)
            }
        }
        if let Some(t) = self.updated_after {
            int_term(&mut sql, " AND e.updated_at > ?", t);
        }
        if let Some(t) = self.completed_after {
            int_term(&mut sql, " AND e.completed_at > ?", t);
        }
        if let Some(t) = self.completed_before {
            int_term(&mut sql, " AND e.completed_at < ?", t);
        }
        if let Some(t) = self.due_before {
            int_term(&mut sql, " AND e.due_at < ?", t);
        }
        int_term(&mut sql, " ORDER BY e.id LIMIT ?", limit);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for t in texts {
            q = q.bind(t);
        }
        for i in ints {
            q = q.bind(i);
        }
        q
    }

    /// Distinguishes page tokens of different filters.
    pub fn scope(&self, org: &str) -> String {
        format!("enrollments|{org}|{self:?}")
    }
}
