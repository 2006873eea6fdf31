//! LearningPathService: learning paths (an ordered list of published courses) and the users
//! enrolled in them (`members`).
pub mod members;

use std::sync::Arc;

use coursewire_proto::v1::learning_path_service_server::LearningPathService;
use coursewire_proto::v1::*;
use pbjson_types::Empty;
use sqlx::AnyConnection;
use sqlx::Row;
use sqlx::any::AnyRow;
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::clock::to_timestamp;
use crate::enrollments::write::Dates;
use crate::idempotency::Idempotency;
use crate::layers::auth::caller;
use crate::page::Page;
use crate::published_courses::PUBLISHED_COURSES;
use crate::resource::{check_etag, etag, mask_paths};
use coursewire_core::error::{ApiError, ApiResult, Reason};
use coursewire_core::ids::{check_id, kind, new_id};
use coursewire_core::validate::Violations;
use members::{MEMBERS, PATHS};

pub struct LearningPathApi(pub Arc<AppState>);

/// Courses one path may hold.
const MAX_COURSES: usize = 100;

fn from_row(r: &AnyRow) -> Result<(LearningPath, i64), sqlx::Error> {
    let sequence = r.try_get("sequence")?;
    let path = LearningPath {
        id: r.try_get("id")?,
        title: r.try_get("title")?,
        description: r.try_get("description")?,
        published_course_ids: Vec::new(),
        created_at: Some(to_timestamp(r.try_get("created_at")?)),
        updated_at: Some(to_timestamp(r.try_get("updated_at")?)),
        etag: etag(sequence),
    };
    Ok((path, sequence))
}

/// Path `id` of `org` with its courses, and its sequence.
async fn fetch(conn: &mut AnyConnection, org: &str, id: &str) -> ApiResult<(LearningPath, i64)> {
    let (mut path, sequence) = from_row(&PATHS.get(&mut *conn, org, id).await?)?;
    path.published_course_ids = members::courses_of(conn, id).await?;
    Ok((path, sequence))
}

fn validate(p: &LearningPath, v: &mut Violations) {
    v.text("learning_path.title", &p.title, 200);
    v.optional_text("learning_path.description", &p.description, 10_000);
    v.check(p.published_course_ids.len() <= MAX_COURSES, "learning_path.published_course_ids", "at most 100 courses");
    for (i, id) in p.published_course_ids.iter().enumerate() {
        let field = format!("learning_path.published_course_ids[{i}]");
        check_id(v, &field, kind::PUBLISHED_COURSE, id);
        v.check(!p.published_course_ids[..i].contains(id), &field, "appears twice");
    }
}

/// Replaces the path's courses with `ids`, each checked to be a published course of `org`.
async fn replace_courses(conn: &mut AnyConnection, org: &str, path_id: &str, ids: &[String]) -> ApiResult<()> {
    sqlx::query("DELETE FROM learning_path_courses WHERE path_id = $1").bind(path_id).execute(&mut *conn).await?;
    for (position, id) in ids.iter().enumerate() {
        PUBLISHED_COURSES.get(&mut *conn, org, id).await?;
        sqlx::query("INSERT INTO learning_path_courses (path_id, published_course_id, position) VALUES ($1, $2, $3)")
            .bind(path_id)
            .bind(id)
            .bind(position as i64)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

fn check(field: &str, id: &str) -> ApiResult<()> {
    coursewire_core::ids::require(field, kind::LEARNING_PATH, id)
}

#[tonic::async_trait]
impl LearningPathService for LearningPathApi {
    async fn create_learning_path(
        &self,
        req: Request<CreateLearningPathRequest>,
    ) -> Result<Response<LearningPath>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let mut p = r.learning_path.clone().unwrap_or_default();
        let mut v = Violations::default();
        validate(&p, &mut v);
        v.finish()?;
        let idem = Idempotency::new(who.org(), &r.request_id, "CreateLearningPath", &r)?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        if let Some(done) = Idempotency::replay(&idem, &mut tx, now).await? {
            return Ok(Response::new(done));
        }
        p.id = new_id(kind::LEARNING_PATH);
        p.created_at = Some(to_timestamp(now));
        p.updated_at = p.created_at;
        p.etag = etag(1);
        PATHS.insert(&mut tx, who.org(), &p.id, now, &[("title", &p.title), ("description", &p.description)]).await?;
        replace_courses(&mut tx, who.org(), &p.id, &p.published_course_ids).await?;
        PATHS.record(&mut tx, who.org(), "created", (&p.id, 1), &p, now).await?;
        Idempotency::save(&idem, &mut tx, &p, now).await?;
        tx.commit().await?;
        Ok(Response::new(p))
    }

    async fn get_learning_path(&self, req: Request<GetLearningPathRequest>) -> Result<Response<LearningPath>, Status> {
        let who = caller(&req)?;
        check("id", &req.get_ref().id)?;
        let mut conn = self.0.db.pool().acquire().await.map_err(ApiError::from)?;
        Ok(Response::new(fetch(&mut conn, who.org(), &req.get_ref().id).await?.0))
    }

    async fn list_learning_paths(
        &self,
        req: Request<ListLearningPathsRequest>,
    ) -> Result<Response<ListLearningPathsResponse>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        let page = Page::new(&self.0.tokens, r.page_size, &r.page_token, &format!("learning_paths|{}", who.org()))?;
        let mut conn = self.0.db.pool().acquire().await.map_err(ApiError::from)?;
        let rows = PATHS.page(&mut *conn, who.org(), &page).await?;
        let mut learning_paths =
            rows.iter().map(|r| from_row(r).map(|p| p.0)).collect::<Result<Vec<_>, _>>().map_err(ApiError::from)?;
        let next_page_token = page.finish(&mut learning_paths, |p| &p.id);
        for p in &mut learning_paths {
            p.published_course_ids = members::courses_of(&mut conn, &p.id).await?;
        }
        Ok(Response::new(ListLearningPathsResponse { learning_paths, next_page_token }))
    }

    async fn update_learning_path(
        &self,
        req: Request<UpdateLearningPathRequest>,
    ) -> Result<Response<LearningPath>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let patch = r.learning_path.unwrap_or_default();
        check("learning_path.id", &patch.id)?;
        let paths = mask_paths(r.update_mask.as_ref(), &["title", "description", "published_course_ids"])?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        let (mut p, seq) = fetch(&mut tx, who.org(), &patch.id).await?;
        check_etag(&patch.etag, seq, PATHS.kind)?;
        let before = p.published_course_ids.clone();
        for field in &paths {
            match *field {
                "title" => p.title = patch.title.clone(),
                "description" => p.description = patch.description.clone(),
                _ => p.published_course_ids = patch.published_course_ids.clone(),
            }
        }
        let mut v = Violations::default();
        validate(&p, &mut v);
        v.finish()?;
        let columns = [("title", p.title.as_str()), ("description", &p.description)];
        PATHS.update(&mut tx, who.org(), (&p.id, seq), now, &columns).await?;
        p.etag = etag(seq + 1);
        p.updated_at = Some(to_timestamp(now));
        PATHS.record(&mut tx, who.org(), "updated", (&p.id, seq + 1), &p, now).await?;
        if p.published_course_ids != before {
            replace_courses(&mut tx, who.org(), &p.id, &p.published_course_ids).await?;
            let added: Vec<String> = p.published_course_ids.iter().filter(|id| !before.contains(id)).cloned().collect();
            members::courses_changed(&mut tx, who.org(), &p.id, &added, now).await?;
        }
        tx.commit().await?;
        Ok(Response::new(p))
    }

    async fn delete_learning_path(&self, req: Request<DeleteLearningPathRequest>) -> Result<Response<Empty>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        check("id", &r.id)?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        let (mut p, seq) = fetch(&mut tx, who.org(), &r.id).await?;
        check_etag(&r.etag, seq, PATHS.kind)?;
        let enrolled: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM path_enrollments WHERE path_id = $1 AND deleted_at IS NULL")
                .bind(&r.id)
                .fetch_one(&mut *tx)
                .await
                .map_err(ApiError::from)?;
        if enrolled > 0 {
            return Err(ApiError::new(
                Reason::PathHasEnrollments,
                format!("{enrolled} user(s) are enrolled in this learning path"),
            )
            .help("delete its path enrollments (LearningPathService.DeletePathEnrollment) first")
            .into());
        }
        // Deleted path enrollments are kept for history until their path goes.
        sqlx::query("DELETE FROM path_enrollments WHERE path_id = $1")
            .bind(&r.id)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        PATHS.delete(&mut tx, who.org(), &r.id, seq).await?;
        p.etag = etag(seq + 1);
        PATHS.record(&mut tx, who.org(), "deleted", (&p.id, seq + 1), &p, now).await?;
        tx.commit().await?;
        Ok(Response::new(Empty {}))
    }

    async fn create_path_enrollment(
        &self,
        req: Request<CreatePathEnrollmentRequest>,
    ) -> Result<Response<PathEnrollment>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let now = self.0.clock.now_ms();
        let mut v = Violations::default();
        check_id(&mut v, "learning_path_id", kind::LEARNING_PATH, &r.learning_path_id);
        check_id(&mut v, "user_id", kind::USER, &r.user_id);
        let dates = Dates::validate(&mut v, "", r.expires_at.as_ref(), r.due_at.as_ref(), now);
        v.finish()?;
        let idem = Idempotency::new(who.org(), &r.request_id, "CreatePathEnrollment", &r)?;
        let mut tx = self.0.db.begin().await?;
        if let Some(done) = Idempotency::replay(&idem, &mut tx, now).await? {
            return Ok(Response::new(done));
        }
        let pe = members::create(&mut tx, who.org(), &r.learning_path_id, &r.user_id, dates, now).await?;
        Idempotency::save(&idem, &mut tx, &pe, now).await?;
        tx.commit().await?;
        if dates.due_at.is_some() || dates.expires_at.is_some() {
            self.0.deadlines.notify_one();
        }
        Ok(Response::new(pe))
    }

    async fn get_path_enrollment(
        &self,
        req: Request<GetPathEnrollmentRequest>,
    ) -> Result<Response<PathEnrollment>, Status> {
        let who = caller(&req)?;
        coursewire_core::ids::require("id", kind::PATH_ENROLLMENT, &req.get_ref().id)?;
        Ok(Response::new(members::fetch(self.0.db.pool(), who.org(), &req.get_ref().id).await?))
    }

    async fn list_path_enrollments(
        &self,
        req: Request<ListPathEnrollmentsRequest>,
    ) -> Result<Response<ListPathEnrollmentsResponse>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        let mut v = Violations::default();
        if !r.learning_path_id.is_empty() {
            check_id(&mut v, "learning_path_id", kind::LEARNING_PATH, &r.learning_path_id);
        }
        if !r.user_id.is_empty() {
            check_id(&mut v, "user_id", kind::USER, &r.user_id);
        }
        v.finish()?;
        let scope = format!("path_enrollments|{}|{}|{}", who.org(), r.learning_path_id, r.user_id);
        let page = Page::new(&self.0.tokens, r.page_size, &r.page_token, &scope)?;
        // An empty filter matches every row: `$n = ''` short-circuits it.
        let sql = format!(
            "SELECT {} {} AND pe.org_id = $1 AND pe.id > $2 AND ($3 = '' OR pe.path_id = $3) \
             AND ($4 = '' OR pe.user_id = $4) ORDER BY pe.id LIMIT $5",
            MEMBERS.columns,
            members::SELECT_LIVE
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(who.org())
            .bind(&page.after)
            .bind(&r.learning_path_id)
            .bind(&r.user_id)
            .bind(page.limit())
            .fetch_all(self.0.db.pool())
            .await
            .map_err(ApiError::from)?;
        let mut path_enrollments =
            rows.iter().map(members::from_row).collect::<Result<Vec<_>, _>>().map_err(ApiError::from)?;
        let next_page_token = page.finish(&mut path_enrollments, |e| &e.id);
        Ok(Response::new(ListPathEnrollmentsResponse { path_enrollments, next_page_token }))
    }

    async fn delete_path_enrollment(
        &self,
        req: Request<DeletePathEnrollmentRequest>,
    ) -> Result<Response<Empty>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        coursewire_core::ids::require("id", kind::PATH_ENROLLMENT, &r.id)?;
        let mut tx = self.0.db.begin().await?;
        members::delete(&mut tx, who.org(), &r.id, &r.etag, self.0.clock.now_ms()).await?;
        tx.commit().await?;
        Ok(Response::new(Empty {}))
    }
}
