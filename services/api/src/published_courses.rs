//! PublishedCourseService: a course made available on a domain, unique per pair.
use std::sync::Arc;

use coursewire_proto::v1::published_course_service_server::PublishedCourseService;
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
use coursewire_core::ids::{check_id, kind, new_id};
use coursewire_core::store::is_unique_violation;
use coursewire_core::validate::Violations;

pub struct PublishedCourseApi(pub Arc<AppState>);

/// The columns every read selects.
macro_rules! columns {
    () => {
        "id, course_id, domain_id, enrollment_closed, created_at, updated_at, sequence"
    };
}
const COLUMNS: &str = concat!(columns!(), " FROM published_courses");

pub const PUBLISHED_COURSES: Table =
    Table { name: "published_courses", kind: "published course", events: "published_course", columns: columns!() };

fn from_row(r: &AnyRow) -> Result<(PublishedCourse, i64), sqlx::Error> {
    let sequence = r.try_get("sequence")?;
    let p = PublishedCourse {
        id: r.try_get("id")?,
        course_id: r.try_get("course_id")?,
        domain_id: r.try_get("domain_id")?,
        enrollment_closed: r.try_get::<i64, _>("enrollment_closed")? != 0,
        created_at: Some(to_timestamp(r.try_get("created_at")?)),
        updated_at: Some(to_timestamp(r.try_get("updated_at")?)),
        etag: etag(sequence),
    };
    Ok((p, sequence))
}

pub(crate) async fn fetch<'e>(
    conn: impl sqlx::Executor<'e, Database = sqlx::Any>,
    org: &str,
    id: &str,
) -> ApiResult<(PublishedCourse, i64)> {
    Ok(from_row(&PUBLISHED_COURSES.get(conn, org, id).await?)?)
}

fn check(field: &str, id: &str) -> ApiResult<()> {
    coursewire_core::ids::require(field, kind::PUBLISHED_COURSE, id)
}

#[tonic::async_trait]
impl PublishedCourseService for PublishedCourseApi {
    async fn create_published_course(
        &self,
        req: Request<CreatePublishedCourseRequest>,
    ) -> Result<Response<PublishedCourse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let mut p = r.published_course.clone().unwrap_or_default();
        let mut v = Violations::default();
        check_id(&mut v, "published_course.course_id", kind::COURSE, &p.course_id);
        check_id(&mut v, "published_course.domain_id", kind::DOMAIN, &p.domain_id);
        v.finish()?;
        let idem = Idempotency::new(who.org(), &r.request_id, "CreatePublishedCourse", &r)?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        if let Some(done) = Idempotency::replay(&idem, &mut tx, now).await? {
            return Ok(Response::new(done));
        }
        crate::courses::fetch(&mut tx, who.org(), &p.course_id).await?;
        crate::domains::fetch(&mut *tx, who.org(), &p.domain_id).await?;
        p.id = new_id(kind::PUBLISHED_COURSE);
        p.created_at = Some(to_timestamp(now));
        p.updated_at = p.created_at;
        p.etag = etag(1);
        let insert = sqlx::query(
            "INSERT INTO published_courses (id, org_id, course_id, domain_id, enrollment_closed, created_at, updated_at, sequence) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, 1)",
        )
        .bind(&p.id)
        .bind(who.org())
        .bind(&p.course_id)
        .bind(&p.domain_id)
        .bind(flag(p.enrollment_closed))
        .bind(now)
        .execute(&mut *tx)
        .await;
        match insert {
            Err(e) if is_unique_violation(&e) => {
                return Err(ApiError::new(
                    Reason::CourseAlreadyPublished,
                    "this course is already published to this domain",
                )
                .into());
            }
            r => r.map_err(ApiError::from)?,
        };
        PUBLISHED_COURSES.record(&mut tx, who.org(), "created", (&p.id, 1), &p, now).await?;
        Idempotency::save(&idem, &mut tx, &p, now).await?;
        tx.commit().await?;
        Ok(Response::new(p))
    }

    async fn get_published_course(
        &self,
        req: Request<GetPublishedCourseRequest>,
    ) -> Result<Response<PublishedCourse>, Status> {
        let who = caller(&req)?;
        check("id", &req.get_ref().id)?;
        Ok(Response::new(fetch(self.0.db.pool(), who.org(), &req.get_ref().id).await?.0))
    }

    async fn list_published_courses(
        &self,
        req: Request<ListPublishedCoursesRequest>,
    ) -> Result<Response<ListPublishedCoursesResponse>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        let mut v = Violations::default();
        if !r.course_id.is_empty() {
            check_id(&mut v, "course_id", kind::COURSE, &r.course_id);
        }
        if !r.domain_id.is_empty() {
            check_id(&mut v, "domain_id", kind::DOMAIN, &r.domain_id);
        }
        v.finish()?;
        let page = Page::new(
            &self.0.tokens,
            r.page_size,
            &r.page_token,
            &format!("published_courses|{}|{}|{}", who.org(), r.course_id, r.domain_id),
        )?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} WHERE org_id = $1 AND id > $2 AND ($3 = '' OR course_id = $3) AND ($4 = '' OR domain_id = $4) ORDER BY id LIMIT $5"
        )))
        .bind(who.org())
        .bind(&page.after)
        .bind(&r.course_id)
        .bind(&r.domain_id)
        .bind(page.limit())
        .fetch_all(self.0.db.pool())
        .await
        .map_err(ApiError::from)?;
        let mut published_courses =
            rows.iter().map(|r| from_row(r).map(|p| p.0)).collect::<Result<Vec<_>, _>>().map_err(ApiError::from)?;
        let next_page_token = page.finish(&mut published_courses, |p| &p.id);
        Ok(Response::new(ListPublishedCoursesResponse { published_courses, next_page_token }))
    }

    async fn update_published_course(
        &self,
        req: Request<UpdatePublishedCourseRequest>,
    ) -> Result<Response<PublishedCourse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let patch = r.published_course.unwrap_or_default();
        check("published_course.id", &patch.id)?;
        mask_paths(r.update_mask.as_ref(), &["enrollment_closed"])?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        let (mut p, seq) = fetch(&mut *tx, who.org(), &patch.id).await?;
        check_etag(&patch.etag, seq, "published course")?;
        p.enrollment_closed = patch.enrollment_closed;
        let done = sqlx::query("UPDATE published_courses SET enrollment_closed = $1, updated_at = $2, sequence = sequence + 1 WHERE id = $3 AND sequence = $4")
            .bind(flag(p.enrollment_closed))
            .bind(now)
            .bind(&p.id)
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        if done.rows_affected() == 0 {
            return Err(ApiError::etag_mismatch("published course").into());
        }
        p.etag = etag(seq + 1);
        p.updated_at = Some(to_timestamp(now));
        PUBLISHED_COURSES.record(&mut tx, who.org(), "updated", (&p.id, seq + 1), &p, now).await?;
        tx.commit().await?;
        Ok(Response::new(p))
    }

    async fn delete_published_course(
        &self,
        req: Request<DeletePublishedCourseRequest>,
    ) -> Result<Response<Empty>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        check("id", &r.id)?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        let (mut p, seq) = fetch(&mut *tx, who.org(), &r.id).await?;
        check_etag(&r.etag, seq, "published course")?;
        let enrolled: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM enrollments WHERE published_course_id = $1 AND deleted_at IS NULL",
        )
        .bind(&r.id)
        .fetch_one(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        if enrolled > 0 {
            return Err(ApiError::new(
                Reason::PublishedCourseHasEnrollments,
                format!("{enrolled} enrollment(s) use this published course"),
            )
            .help("delete its enrollments (EnrollmentService.DeleteEnrollment) first")
            .into());
        }
        let path: Option<String> =
            sqlx::query_scalar("SELECT path_id FROM learning_path_courses WHERE published_course_id = $1 LIMIT 1")
                .bind(&r.id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(ApiError::from)?;
        if let Some(path) = path {
            return Err(ApiError::new(
                Reason::PublishedCourseInPath,
                "the published course is part of a learning path",
            )
            .with("learning_path_id", path)
            .help("remove it from the path's published_course_ids (UpdateLearningPath) first")
            .into());
        }
        // Deleted enrollments are kept for history until their published course goes.
        sqlx::query("DELETE FROM enrollments WHERE published_course_id = $1")
            .bind(&r.id)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        PUBLISHED_COURSES.delete(&mut tx, who.org(), &r.id, seq).await?;
        p.etag = etag(seq + 1);
        PUBLISHED_COURSES.record(&mut tx, who.org(), "deleted", (&p.id, seq + 1), &p, now).await?;
        tx.commit().await?;
        Ok(Response::new(Empty {}))
    }
}
