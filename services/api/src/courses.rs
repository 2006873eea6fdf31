//! CourseService: courses and their ordered lessons.
use std::sync::Arc;

use coursewire_proto::v1::course_service_server::CourseService;
use coursewire_proto::v1::*;
use pbjson_types::Empty;
use sqlx::Row;
use sqlx::any::AnyRow;
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::clock::to_timestamp;
use crate::idempotency::Idempotency;
use crate::layers::auth::caller;
use crate::page::Page;
use crate::resource::{Table, check_etag, etag, flag, mask_paths};
use coursewire_core::error::{ApiError, ApiResult, Reason};
use coursewire_core::ids::{is_id, kind, new_id};
use coursewire_core::store::Tx;
use coursewire_core::validate::Violations;

pub struct CourseApi(pub Arc<AppState>);

/// Lessons one course may have.
const MAX_LESSONS: usize = 500;
pub const COURSES: Table = Table {
    name: "courses",
    kind: "course",
    events: "course",
    columns: "id, title, description, created_at, updated_at, sequence",
};

fn from_row(r: &AnyRow) -> Result<(Course, i64), sqlx::Error> {
    let sequence = r.try_get("sequence")?;
    let course = Course {
        id: r.try_get("id")?,
        title: r.try_get("title")?,
        description: r.try_get("description")?,
        lessons: Vec::new(),
        created_at: Some(to_timestamp(r.try_get("created_at")?)),
        updated_at: Some(to_timestamp(r.try_get("updated_at")?)),
        etag: etag(sequence),
    };
    Ok((course, sequence))
}

async fn load_lessons<'e>(
    conn: impl sqlx::Executor<'e, Database = sqlx::Any>,
    course_ids: &[&str],
) -> ApiResult<Vec<(String, Lesson)>> {
    if course_ids.is_empty() {
        return Ok(Vec::new());
    }
    let marks: Vec<String> = (1..=course_ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT course_id, id, title, required, position FROM lessons WHERE course_id IN ({}) ORDER BY course_id, position",
        marks.join(", ")
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for id in course_ids {
        q = q.bind(*id);
    }
    let rows = q.fetch_all(conn).await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("course_id")?,
                Lesson {
                    id: r.try_get("id")?,
                    title: r.try_get("title")?,
                    required: r.try_get::<i64, _>("required")? != 0,
                    position: r.try_get::<i64, _>("position")? as i32,
                },
            ))
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

pub(crate) async fn fetch(tx: &mut Tx, org: &str, id: &str) -> ApiResult<(Course, i64)> {
    let (mut course, seq) = from_row(&COURSES.get(&mut **tx, org, id).await?)?;
    course.lessons = load_lessons(&mut **tx, &[id]).await?.into_iter().map(|(_, l)| l).collect();
    Ok((course, seq))
}

fn validate(c: &mut Course, v: &mut Violations) {
    v.text("course.title", &c.title, 200);
    v.optional_text("course.description", &c.description, 10_000);
    v.check(c.lessons.len() <= MAX_LESSONS, "course.lessons", "at most 500 lessons");
    for (i, l) in c.lessons.iter_mut().enumerate() {
        v.text(&format!("course.lessons[{i}].title"), &l.title, 200);
        if !l.id.is_empty() && !is_id(kind::LESSON, &l.id) {
            v.add(&format!("course.lessons[{i}].id"), "must be empty (new lesson) or an existing lesson id");
        }
        l.position = i as i32;
    }
}

/// Replaces the course's lessons with `lessons`: kept ids keep their identity (and the
/// progress recorded against them), new lessons get ids, missing ones are removed.
async fn replace_lessons(tx: &mut Tx, course_id: &str, lessons: &mut [Lesson], existing: &[Lesson]) -> ApiResult<()> {
    for (i, l) in lessons.iter().enumerate() {
        if !l.id.is_empty() && !existing.iter().any(|e| e.id == l.id) {
            return Err(ApiError::field(&format!("course.lessons[{i}].id"), "is not a lesson of this course"));
        }
        if lessons[..i].iter().any(|o| !l.id.is_empty() && o.id == l.id) {
            return Err(ApiError::field(&format!("course.lessons[{i}].id"), "appears twice"));
        }
    }
    sqlx::query("DELETE FROM lessons WHERE course_id = $1").bind(course_id).execute(&mut **tx).await?;
    for l in lessons.iter_mut() {
        if l.id.is_empty() {
            l.id = new_id(kind::LESSON);
        }
        sqlx::query("INSERT INTO lessons (id, course_id, title, required, position) VALUES ($1, $2, $3, $4, $5)")
            .bind(&l.id)
            .bind(course_id)
            .bind(&l.title)
            .bind(flag(l.required))
            .bind(i64::from(l.position))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

fn check(field: &str, id: &str) -> ApiResult<()> {
    coursewire_core::ids::require(field, kind::COURSE, id)
}

#[tonic::async_trait]
impl CourseService for CourseApi {
    async fn create_course(&self, req: Request<CreateCourseRequest>) -> Result<Response<Course>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let mut c = r.course.clone().unwrap_or_default();
        let mut v = Violations::default();
        validate(&mut c, &mut v);
        for (i, l) in c.lessons.iter().enumerate() {
            v.check(l.id.is_empty(), &format!("course.lessons[{i}].id"), "must be empty on create");
        }
        v.finish()?;
        let idem = Idempotency::new(who.org(), &r.request_id, "CreateCourse", &r)?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        if let Some(done) = Idempotency::replay(&idem, &mut tx, now).await? {
            return Ok(Response::new(done));
        }
        c.id = new_id(kind::COURSE);
        c.created_at = Some(to_timestamp(now));
        c.updated_at = c.created_at;
        c.etag = etag(1);
        COURSES.insert(&mut tx, who.org(), &c.id, now, &[("title", &c.title), ("description", &c.description)]).await?;
        let id = c.id.clone();
        replace_lessons(&mut tx, &id, &mut c.lessons, &[]).await?;
        COURSES.record(&mut tx, who.org(), "created", (&c.id, 1), &c, now).await?;
        Idempotency::save(&idem, &mut tx, &c, now).await?;
        tx.commit().await?;
        Ok(Response::new(c))
    }

    async fn get_course(&self, req: Request<GetCourseRequest>) -> Result<Response<Course>, Status> {
        let who = caller(&req)?;
        check("id", &req.get_ref().id)?;
        let row = COURSES.get(self.0.db.pool(), who.org(), &req.get_ref().id).await?;
        let (mut c, _) = from_row(&row).map_err(ApiError::from)?;
        c.lessons = load_lessons(self.0.db.pool(), &[&c.id]).await?.into_iter().map(|(_, l)| l).collect();
        Ok(Response::new(c))
    }

    async fn list_courses(&self, req: Request<ListCoursesRequest>) -> Result<Response<ListCoursesResponse>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        let page = Page::new(&self.0.tokens, r.page_size, &r.page_token, &format!("courses|{}", who.org()))?;
        let rows = COURSES.page(self.0.db.pool(), who.org(), &page).await?;
        let mut courses =
            rows.iter().map(|r| from_row(r).map(|c| c.0)).collect::<Result<Vec<_>, _>>().map_err(ApiError::from)?;
        let next_page_token = page.finish(&mut courses, |c| &c.id);
        let ids: Vec<&str> = courses.iter().map(|c| c.id.as_str()).collect();
        let lessons = load_lessons(self.0.db.pool(), &ids).await?;
        for (course_id, lesson) in lessons {
            if let Some(c) = courses.iter_mut().find(|c| c.id == course_id) {
                c.lessons.push(lesson);
            }
        }
        Ok(Response::new(ListCoursesResponse { courses, next_page_token }))
    }

    async fn update_course(&self, req: Request<UpdateCourseRequest>) -> Result<Response<Course>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let patch = r.course.unwrap_or_default();
        check("course.id", &patch.id)?;
        let paths = mask_paths(r.update_mask.as_ref(), &["title", "description", "lessons"])?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        let (mut c, seq) = fetch(&mut tx, who.org(), &patch.id).await?;
        check_etag(&patch.etag, seq, "course")?;
        let existing = c.lessons.clone();
        for p in &paths {
            match *p {
                "title" => c.title = patch.title.clone(),
                "description" => c.description = patch.description.clone(),
                _ => c.lessons = patch.lessons.clone(),
            }
        }
        let mut v = Violations::default();
        validate(&mut c, &mut v);
        v.finish()?;
        let columns = [("title", c.title.as_str()), ("description", &c.description)];
        COURSES.update(&mut tx, who.org(), (&c.id, seq), now, &columns).await?;
        if paths.contains(&"lessons") {
            let id = c.id.clone();
            replace_lessons(&mut tx, &id, &mut c.lessons, &existing).await?;
        }
        c.etag = etag(seq + 1);
        c.updated_at = Some(to_timestamp(now));
        COURSES.record(&mut tx, who.org(), "updated", (&c.id, seq + 1), &c, now).await?;
        tx.commit().await?;
        Ok(Response::new(c))
    }

    async fn delete_course(&self, req: Request<DeleteCourseRequest>) -> Result<Response<Empty>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        check("id", &r.id)?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        let (mut c, seq) = fetch(&mut tx, who.org(), &r.id).await?;
        check_etag(&r.etag, seq, "course")?;
        let published: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM published_courses WHERE course_id = $1")
            .bind(&r.id)
            .fetch_one(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        if published > 0 {
            return Err(ApiError::new(
                Reason::CourseIsPublished,
                format!("the course is published to {published} domain(s)"),
            )
            .help("delete its published courses (PublishedCourseService.DeletePublishedCourse) first")
            .into());
        }
        COURSES.delete(&mut tx, who.org(), &r.id, seq).await?;
        c.etag = etag(seq + 1);
        COURSES.record(&mut tx, who.org(), "deleted", (&c.id, seq + 1), &c, now).await?;
        tx.commit().await?;
        Ok(Response::new(Empty {}))
    }
}
