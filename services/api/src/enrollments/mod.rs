//! EnrollmentService: a user in a published course, with lesson progress and completion.
pub mod deadlines;
mod store;
pub(crate) mod write;

use std::sync::Arc;

use coursewire_proto::v1::batch_create_enrollments_response::{Result as BatchResult, result::Result as Outcome};
use coursewire_proto::v1::enrollment_service_server::EnrollmentService;
use coursewire_proto::v1::lesson_progress::State as LessonState;
use coursewire_proto::v1::*;
use pbjson_types::Empty;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::idempotency::Idempotency;
use crate::layers::auth::{Caller, caller};
use crate::page::Page;
use crate::resource::{item_error, mask_paths};
use coursewire_core::error::{ApiError, ApiResult, Reason};
use coursewire_core::ids::{check_id, kind};
use coursewire_core::validate::Violations;
use store::Filter;

pub struct EnrollmentApi(pub Arc<AppState>);

/// Items one BatchCreateEnrollments may carry.
pub const MAX_BATCH: usize = 1000;
/// Rows an export reads per query; memory stays bounded by this, whatever the total.
const EXPORT_CHUNK: i64 = 500;

fn check(field: &str, id: &str) -> ApiResult<()> {
    coursewire_core::ids::require(field, kind::ENROLLMENT, id)
}

/// An enrollment this call completed advances the learning paths that hold its course, in
/// the same transaction.
async fn course_completed(conn: &mut sqlx::AnyConnection, org: &str, e: &Enrollment, now: i64) -> ApiResult<()> {
    crate::learning_paths::members::course_completed(conn, org, &e.user_id, &e.published_course_id, now).await
}

fn score_ok(v: &mut Violations, field: &str, score: Option<f64>) {
    v.check(score.is_none_or(|s| s.is_finite() && (0.0..=100.0).contains(&s)), field, "must be between 0 and 100");
}

impl EnrollmentApi {
    /// Fills in the winner's id when a duplicate lost a race inside the database.
    async fn with_existing_id(&self, who: &Caller, r: &CreateEnrollmentRequest, mut e: ApiError) -> ApiError {
        if e.reason == Reason::EnrollmentExists && e.details.metadata.get("existing_id").is_none_or(|id| id.is_empty())
        {
            let id: Option<String> = sqlx::query_scalar(
                "SELECT id FROM enrollments WHERE org_id = $1 AND user_id = $2 AND published_course_id = $3 AND deleted_at IS NULL",
            )
            .bind(who.org())
            .bind(&r.user_id)
            .bind(&r.published_course_id)
            .fetch_optional(self.0.db.pool())
            .await
            .unwrap_or(None);
            e.details.metadata.insert("existing_id".into(), id.unwrap_or_default());
        }
        e
    }
}

#[tonic::async_trait]
impl EnrollmentService for EnrollmentApi {
    async fn create_enrollment(&self, req: Request<CreateEnrollmentRequest>) -> Result<Response<Enrollment>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let now = self.0.clock.now_ms();
        let dates = write::validate_create(&r, "", now)?;
        let idem = Idempotency::new(who.org(), &r.request_id, "CreateEnrollment", &r)?;
        let mut tx = self.0.db.begin().await?;
        if let Some(done) = Idempotency::replay(&idem, &mut tx, now).await? {
            return Ok(Response::new(done));
        }
        let e = match write::create(&mut tx, who.org(), &r, dates, now).await {
            Ok(e) => e,
            Err(err) => {
                drop(tx);
                return Err(self.with_existing_id(&who, &r, err).await.into());
            }
        };
        Idempotency::save(&idem, &mut tx, &e, now).await?;
        tx.commit().await?;
        if dates.due_at.is_some() || dates.expires_at.is_some() {
            self.0.deadlines.notify_one();
        }
        Ok(Response::new(e))
    }

    async fn get_enrollment(&self, req: Request<GetEnrollmentRequest>) -> Result<Response<Enrollment>, Status> {
        let who = caller(&req)?;
        check("id", &req.get_ref().id)?;
        let mut conn = self.0.db.pool().acquire().await.map_err(ApiError::from)?;
        Ok(Response::new(store::fetch(&mut conn, who.org(), &req.get_ref().id, self.0.clock.now_ms()).await?))
    }

    async fn list_enrollments(
        &self,
        req: Request<ListEnrollmentsRequest>,
    ) -> Result<Response<ListEnrollmentsResponse>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        let filter = Filter::try_from(r)?;
        let page = Page::new(&self.0.tokens, r.page_size, &r.page_token, &filter.scope(who.org()))?;
        let now = self.0.clock.now_ms();
        let rows = filter
            .query(who.org(), &page.after, page.limit(), now)
            .fetch_all(self.0.db.pool())
            .await
            .map_err(ApiError::from)?;
        let mut enrollments =
            rows.iter().map(|r| store::from_row(r, now)).collect::<Result<Vec<_>, _>>().map_err(ApiError::from)?;
        let next_page_token = page.finish(&mut enrollments, |e| &e.id);
        Ok(Response::new(ListEnrollmentsResponse { enrollments, next_page_token }))
    }

    async fn update_enrollment(&self, req: Request<UpdateEnrollmentRequest>) -> Result<Response<Enrollment>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let patch = r.enrollment.unwrap_or_default();
        check("enrollment.id", &patch.id)?;
        let paths = mask_paths(r.update_mask.as_ref(), &["expires_at", "due_at"])?;
        let now = self.0.clock.now_ms();
        let mut v = Violations::default();
        let dates = write::Dates::validate(
            &mut v,
            "enrollment.",
            patch.expires_at.as_ref().filter(|_| paths.contains(&"expires_at")),
            patch.due_at.as_ref().filter(|_| paths.contains(&"due_at")),
            now,
        );
        v.finish()?;
        let mut tx = self.0.db.begin().await?;
        let e = write::update_dates(&mut tx, who.org(), &patch.id, &patch.etag, &paths, dates, now).await?;
        tx.commit().await?;
        self.0.deadlines.notify_one();
        Ok(Response::new(e))
    }

    async fn delete_enrollment(&self, req: Request<DeleteEnrollmentRequest>) -> Result<Response<Empty>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        check("id", &r.id)?;
        let mut tx = self.0.db.begin().await?;
        write::delete(&mut tx, who.org(), &r.id, &r.etag, self.0.clock.now_ms()).await?;
        tx.commit().await?;
        Ok(Response::new(Empty {}))
    }

    async fn record_lesson_progress(
        &self,
        req: Request<RecordLessonProgressRequest>,
    ) -> Result<Response<RecordLessonProgressResponse>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        let mut v = Violations::default();
        check_id(&mut v, "enrollment_id", kind::ENROLLMENT, &r.enrollment_id);
        check_id(&mut v, "lesson_id", kind::LESSON, &r.lesson_id);
        let state = LessonState::try_from(r.state).unwrap_or(LessonState::Unspecified);
        v.check(state != LessonState::Unspecified, "state", "must be IN_PROGRESS or COMPLETED");
        score_ok(&mut v, "score", r.score);
        v.finish()?;
        let mut tx = self.0.db.begin().await?;
        let now = self.0.clock.now_ms();
        let (enrollment, lesson, completed) =
            write::record_progress(&mut tx, who.org(), &r.enrollment_id, &r.lesson_id, state, r.score, now).await?;
        if completed {
            course_completed(&mut tx, who.org(), &enrollment, now).await?;
        }
        tx.commit().await?;
        Ok(Response::new(RecordLessonProgressResponse { enrollment: Some(enrollment), lesson_progress: Some(lesson) }))
    }

    async fn complete_enrollment(
        &self,
        req: Request<CompleteEnrollmentRequest>,
    ) -> Result<Response<Enrollment>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        let mut v = Violations::default();
        check_id(&mut v, "id", kind::ENROLLMENT, &r.id);
        score_ok(&mut v, "score", r.score);
        v.finish()?;
        let mut tx = self.0.db.begin().await?;
        let now = self.0.clock.now_ms();
        let (e, completed) = write::complete(&mut tx, who.org(), &r.id, r.score, r.passed, now).await?;
        if completed {
            course_completed(&mut tx, who.org(), &e, now).await?;
        }
        tx.commit().await?;
        Ok(Response::new(e))
    }

    async fn batch_create_enrollments(
        &self,
        req: Request<BatchCreateEnrollmentsRequest>,
    ) -> Result<Response<BatchCreateEnrollmentsResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        if r.requests.is_empty() || r.requests.len() > MAX_BATCH {
            return Err(ApiError::field("requests", format!("must hold 1 to {MAX_BATCH} items")).into());
        }
        let idem = Idempotency::new(who.org(), &r.request_id, "BatchCreateEnrollments", &r)?;
        // A batch counts its items against its limit, all or nothing (see `policy`).
        let verdict = self.0.limiter.admit_items(&who, r.requests.len()).await?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        if let Some(done) = Idempotency::replay(&idem, &mut tx, now).await? {
            return Ok(Response::new(done));
        }
        let mut results = Vec::with_capacity(r.requests.len());
        for (i, item) in r.requests.iter().enumerate() {
            // Each item runs in its own savepoint: a failed item leaves no trace.
            let outcome = match write::validate_create(item, &format!("requests[{i}]."), now) {
                Err(e) => Err(e),
                Ok(dates) => {
                    let mut sp = tx.savepoint().await?;
                    match write::create(&mut sp, who.org(), item, dates, now).await {
                        Ok(e) => sp.commit().await.map(|_| e).map_err(ApiError::from),
                        Err(e) => {
                            sp.rollback().await.map_err(ApiError::from)?;
                            Err(e)
                        }
                    }
                }
            };
            results.push(BatchResult {
                result: Some(match outcome {
                    Ok(e) => Outcome::Enrollment(e),
                    Err(e) => Outcome::Error(item_error(e)),
                }),
            });
        }
        let response = BatchCreateEnrollmentsResponse { results };
        Idempotency::save(&idem, &mut tx, &response, now).await?;
        tx.commit().await?;
        self.0.deadlines.notify_one();
        let mut response = Response::new(response);
        if let Some(v) = verdict {
            v.headers(response.metadata_mut().as_mut());
        }
        Ok(response)
    }

    type ExportEnrollmentsStream = ReceiverStream<Result<Enrollment, Status>>;

    async fn export_enrollments(
        &self,
        req: Request<ExportEnrollmentsRequest>,
    ) -> Result<Response<Self::ExportEnrollmentsStream>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        let filter = Filter::try_from(r)?;
        if !r.after_id.is_empty() {
            check("after_id", &r.after_id)?;
        }
        let permit = self.0.streams.open(who.org())?;
        let (tx, rx) = tokio::sync::mpsc::channel(EXPORT_CHUNK as usize);
        let state = self.0.clone();
        let mut after = r.after_id.clone();
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                let now = state.clock.now_ms();
                let rows = match filter.query(who.org(), &after, EXPORT_CHUNK, now).fetch_all(state.db.pool()).await {
                    Ok(rows) => rows,
                    Err(e) => {
                        let _ = tx.send(Err(ApiError::from(e).into())).await;
                        return;
                    }
                };
                for row in &rows {
                    let item = store::from_row(row, now).map_err(|e| Status::from(ApiError::from(e)));
                    let id = item.as_ref().map(|e| e.id.clone()).unwrap_or_default();
                    tokio::select! {
                        sent = tx.send(item) => if sent.is_err() {
                            return; // the client went away: stop reading
                        },
                        _ = state.streams.stopping() => {
                            // Always end with the status: a stream that just stops looks complete.
                            let stop = crate::streams::shutting_down("resume_after_id", &after);
                            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tx.send(Err(stop))).await;
                            return;
                        }
                    }
                    if !id.is_empty() {
                        after = id;
                    }
                }
                if (rows.len() as i64) < EXPORT_CHUNK {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
