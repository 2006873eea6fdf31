//! Learning paths: enrolling in a path enrolls in its courses (reusing enrollments), the path
//! completes exactly once, course changes reach members, and the usual rules and isolation.
use coursewire_proto::v1::path_enrollment::State;
use coursewire_proto::v1::*;
use futures::future::join_all;
use pbjson_types::FieldMask;
use tonic::Code;

use crate::fixtures::*;
use crate::harness::{Clients, Harness};

/// Three courses of one lesson each, published to one domain, and a path of them.
pub struct PathWorld {
    pub published: Vec<PublishedCourse>,
    pub path: LearningPath,
}

pub async fn path_world(c: &mut Clients) -> PathWorld {
    let d = domain(c, "paths.acme.com").await;
    let mut published = Vec::new();
    for _ in 0..3 {
        let course = course(c, 1).await;
        published.push(publish(c, &course.id, &d.id).await);
    }
    let path = new_path(c, "Onboarding", published.iter().map(|p| p.id.clone()).collect()).await.unwrap();
    PathWorld { published, path }
}

async fn new_path(c: &mut Clients, title: &str, ids: Vec<String>) -> Result<LearningPath, tonic::Status> {
    let path = LearningPath { title: title.into(), published_course_ids: ids, ..Default::default() };
    let r = CreateLearningPathRequest { learning_path: Some(path), request_id: String::new() };
    c.paths.create_learning_path(r).await.map(|r| r.into_inner())
}

async fn join(c: &mut Clients, path_id: &str, user_id: &str) -> Result<PathEnrollment, tonic::Status> {
    let r =
        CreatePathEnrollmentRequest { learning_path_id: path_id.into(), user_id: user_id.into(), ..Default::default() };
    c.paths.create_path_enrollment(r).await.map(|r| r.into_inner())
}

/// The user's live enrollments, by published course.
async fn enrollments_of(c: &mut Clients, user_id: &str) -> Vec<Enrollment> {
    let r = ListEnrollmentsRequest { user_id: user_id.into(), ..Default::default() };
    c.enrollments.list_enrollments(r).await.unwrap().into_inner().enrollments
}

async fn complete(c: &mut Clients, enrollment_id: &str) {
    let r = CompleteEnrollmentRequest { id: enrollment_id.into(), ..Default::default() };
    c.enrollments.complete_enrollment(r).await.unwrap();
}

async fn events_of(h: &Harness, kind: &str, resource_id: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE type = $1 AND resource_id = $2")
        .bind(kind)
        .bind(resource_id)
        .fetch_one(h.db.pool())
        .await
        .unwrap()
}

async fn a_path_enrolls_in_each_course_and_completes_once(h: &Harness) {
    let mut c = h.clients();
    let w = path_world(&mut c).await;
    let ada = user(&mut c, "ada@example.com").await;
    // An enrollment the user already has is reused, not duplicated.
    let existing = enroll(&mut c, &ada.id, &w.published[0].id).await.unwrap();
    let pe = join(&mut c, &w.path.id, &ada.id).await.unwrap();
    assert_eq!(pe.state, State::Active as i32);
    assert_eq!(pe.progress, Some(PathProgress { courses_completed: 0, courses_total: 3, percent: 0 }));
    let mine = enrollments_of(&mut c, &ada.id).await;
    assert_eq!(mine.len(), 3);
    assert!(mine.iter().any(|e| e.id == existing.id));
    assert_eq!(events_of(h, "path_enrollment.created", &pe.id).await, 1);

    // Completed in any order, the path completes with the last one, once.
    for (i, e) in [&mine[2], &mine[0], &mine[1]].into_iter().enumerate() {
        complete(&mut c, &e.id).await;
        let got =
            c.paths.get_path_enrollment(GetPathEnrollmentRequest { id: pe.id.clone() }).await.unwrap().into_inner();
        let progress = got.progress.unwrap();
        assert_eq!(progress.courses_completed, i as i32 + 1);
        assert_eq!(got.state == State::Completed as i32, i == 2, "after {} courses", i + 1);
    }
    complete(&mut c, &mine[1].id).await;
    assert_eq!(events_of(h, "path_enrollment.completed", &pe.id).await, 1);

    // The last two courses completed at the same time: exactly one completion, every round.
    for round in 0..6 {
        let u = user(&mut c, &format!("racer{round}@example.com")).await;
        let pe = join(&mut c, &w.path.id, &u.id).await.unwrap();
        let mine = enrollments_of(&mut c, &u.id).await;
        complete(&mut c, &mine[0].id).await;
        let calls = mine[1..].iter().map(|e| {
            let mut c = h.clients();
            let id = e.id.clone();
            async move { complete(&mut c, &id).await }
        });
        join_all(calls).await;
        let got =
            c.paths.get_path_enrollment(GetPathEnrollmentRequest { id: pe.id.clone() }).await.unwrap().into_inner();
        assert_eq!(got.state, State::Completed as i32, "round {round}");
        assert_eq!(got.sequence, 2, "round {round}: created, then completed");
        assert_eq!(events_of(h, "path_enrollment.completed", &pe.id).await, 1, "round {round}");
    }
}

async fn changing_a_paths_courses_reaches_its_members(h: &Harness) {
    let mut c = h.clients();
    let w = path_world(&mut c).await;
    let ada = user(&mut c, "ada@example.com").await;
    let pe = join(&mut c, &w.path.id, &ada.id).await.unwrap();
    let d = domain(&mut c, "more.acme.com").await;
    let extra_course = course(&mut c, 1).await;
    let extra = publish(&mut c, &extra_course.id, &d.id).await;

    // Adding a course enrolls the members in it.
    let mut ids: Vec<String> = w.path.published_course_ids.clone();
    ids.insert(1, extra.id.clone());
    let patch = LearningPath { id: w.path.id.clone(), published_course_ids: ids.clone(), ..Default::default() };
    let mask = Some(FieldMask { paths: vec!["published_course_ids".into()] });
    let updated = c
        .paths
        .update_learning_path(UpdateLearningPathRequest { learning_path: Some(patch), update_mask: mask.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.published_course_ids, ids, "kept in the order given");
    assert_eq!(updated.etag, "\"2\"");
    let mine = enrollments_of(&mut c, &ada.id).await;
    assert_eq!(mine.len(), 4);
    assert!(mine.iter().any(|e| e.published_course_id == extra.id));

    // Completing three, then removing the fourth (incomplete) course completes the path;
    // the removed course's enrollment stays.
    for e in mine.iter().filter(|e| e.published_course_id != w.published[2].id) {
        complete(&mut c, &e.id).await;
    }
    let fewer: Vec<String> = ids.iter().filter(|id| **id != w.published[2].id).cloned().collect();
    let patch = LearningPath { id: w.path.id.clone(), published_course_ids: fewer, ..Default::default() };
    c.paths
        .update_learning_path(UpdateLearningPathRequest { learning_path: Some(patch), update_mask: mask })
        .await
        .unwrap();
    let got = c.paths.get_path_enrollment(GetPathEnrollmentRequest { id: pe.id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.state, State::Completed as i32);
    assert_eq!(got.progress.unwrap().courses_total, 3);
    assert_eq!(enrollments_of(&mut c, &ada.id).await.len(), 4, "removing a course deletes no enrollment");
    assert_eq!(events_of(h, "path_enrollment.completed", &pe.id).await, 1);
}

async fn path_rules_and_bad_input(h: &Harness) {
    let mut c = h.clients();
    let w = path_world(&mut c).await;
    let ada = user(&mut c, "ada@example.com").await;
    let pe = join(&mut c, &w.path.id, &ada.id).await.unwrap();

    let dup = assert_err(join(&mut c, &w.path.id, &ada.id).await, Code::AlreadyExists, "PATH_ENROLLMENT_EXISTS");
    assert_eq!(meta(&dup, "existing_id"), Some(pe.id.clone()));
    let remove = DeleteLearningPathRequest { id: w.path.id.clone(), etag: String::new() };
    assert_err(c.paths.delete_learning_path(remove.clone()).await, Code::FailedPrecondition, "PATH_HAS_ENROLLMENTS");
    let unpublish = DeletePublishedCourseRequest { id: w.published[0].id.clone(), etag: String::new() };
    for e in enrollments_of(&mut c, &ada.id).await {
        let r = DeleteEnrollmentRequest { id: e.id, etag: String::new() };
        c.enrollments.delete_enrollment(r).await.unwrap();
    }
    let s = assert_err(
        c.published.delete_published_course(unpublish).await,
        Code::FailedPrecondition,
        "PUBLISHED_COURSE_IN_PATH",
    );
    assert_eq!(meta(&s, "learning_path_id"), Some(w.path.id.clone()));

    // Bad input is refused with the field named, and writes nothing.
    let before = (h.snapshot().await, h.count("learning_paths").await, h.count("path_enrollments").await);
    let p = &w.published[0].id;
    for (ids, title, field) in [
        (vec![p.clone(), p.clone()], "Twice", "learning_path.published_course_ids[1]"),
        (vec!["crs_nope".to_string()], "Wrong kind", "learning_path.published_course_ids[0]"),
        (vec![], "", "learning_path.title"),
        (vec![p.clone(); 101], "Too long", "learning_path.published_course_ids"),
    ] {
        let s = assert_err(new_path(&mut c, title, ids).await, Code::InvalidArgument, "INVALID_FIELD");
        assert!(violations(&s).contains(&field.to_string()), "{field}: {:?}", violations(&s));
    }
    let unknown = "pub_00000000000000000000000000".to_string();
    assert_err(new_path(&mut c, "Unknown", vec![unknown]).await, Code::NotFound, "NOT_FOUND");
    let bad = CreatePathEnrollmentRequest {
        learning_path_id: w.path.id.clone(),
        user_id: ada.id.clone(),
        due_at: Some(timestamp(1000)),
        ..Default::default()
    };
    let s = assert_err(c.paths.create_path_enrollment(bad).await, Code::InvalidArgument, "INVALID_FIELD");
    assert_eq!(violations(&s), vec!["due_at".to_string()]);
    let swapped = CreatePathEnrollmentRequest {
        learning_path_id: ada.id.clone(),
        user_id: w.path.id.clone(),
        ..Default::default()
    };
    let s = assert_err(c.paths.create_path_enrollment(swapped).await, Code::InvalidArgument, "INVALID_FIELD");
    assert_eq!(violations(&s), vec!["learning_path_id".to_string(), "user_id".to_string()]);
    let after = (h.snapshot().await, h.count("learning_paths").await, h.count("path_enrollments").await);
    assert_eq!(before, after, "refused calls wrote nothing");

    // Removing the member lets the path go; deleted path enrollments do not block it.
    let r = DeletePathEnrollmentRequest { id: pe.id.clone(), etag: "\"1\"".into() };
    c.paths.delete_path_enrollment(r).await.unwrap();
    assert_err(
        c.paths.get_path_enrollment(GetPathEnrollmentRequest { id: pe.id.clone() }).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    c.paths.delete_learning_path(remove).await.unwrap();
    assert_eq!(events_of(h, "learning_path.deleted", &w.path.id).await, 1);
    assert_eq!(events_of(h, "path_enrollment.deleted", &pe.id).await, 1);
}

async fn paths_are_isolated_between_organizations(h: &Harness) {
    let mut c = h.clients();
    let w = path_world(&mut c).await;
    let ada = user(&mut c, "ada@example.com").await;
    let pe = join(&mut c, &w.path.id, &ada.id).await.unwrap();
    let other_key = h.other_org("globex").await;
    let mut o = h.clients_with(&other_key);
    let before = (h.snapshot().await, h.count("learning_paths").await, h.count("path_enrollments").await);
    let nf = Code::NotFound;
    assert_err(o.paths.get_learning_path(GetLearningPathRequest { id: w.path.id.clone() }).await, nf, "NOT_FOUND");
    let patch = LearningPath { id: w.path.id.clone(), title: "Mine".into(), ..Default::default() };
    let r = UpdateLearningPathRequest { learning_path: Some(patch), update_mask: None };
    assert_err(o.paths.update_learning_path(r).await, nf, "NOT_FOUND");
    let r = DeleteLearningPathRequest { id: w.path.id.clone(), etag: String::new() };
    assert_err(o.paths.delete_learning_path(r).await, nf, "NOT_FOUND");
    assert_err(o.paths.get_path_enrollment(GetPathEnrollmentRequest { id: pe.id.clone() }).await, nf, "NOT_FOUND");
    let r = DeletePathEnrollmentRequest { id: pe.id.clone(), etag: String::new() };
    assert_err(o.paths.delete_path_enrollment(r).await, nf, "NOT_FOUND");
    assert_err(join(&mut o, &w.path.id, &ada.id).await, nf, "NOT_FOUND");
    // Another organization's published course cannot be put in a path.
    assert_err(new_path(&mut o, "Theirs", vec![w.published[0].id.clone()]).await, nf, "NOT_FOUND");
    let listed = o.paths.list_learning_paths(ListLearningPathsRequest::default()).await.unwrap().into_inner();
    assert!(listed.learning_paths.is_empty());
    let r = ListPathEnrollmentsRequest { user_id: w.path.id.clone(), ..Default::default() };
    let s = assert_err(o.paths.list_path_enrollments(r).await, Code::InvalidArgument, "INVALID_FIELD");
    assert_eq!(violations(&s), vec!["user_id".to_string()]);
    let mask = Some(FieldMask { paths: vec!["etag".into()] });
    let r = UpdateLearningPathRequest {
        learning_path: Some(LearningPath { id: w.path.id.clone(), ..Default::default() }),
        update_mask: mask,
    };
    let s = assert_err(c.paths.update_learning_path(r).await, Code::InvalidArgument, "INVALID_FIELD");
    assert_eq!(violations(&s), vec!["update_mask".to_string()]);
    let listed = o.paths.list_path_enrollments(ListPathEnrollmentsRequest::default()).await.unwrap().into_inner();
    assert!(listed.path_enrollments.is_empty());
    let after = (h.snapshot().await, h.count("learning_paths").await, h.count("path_enrollments").await);
    assert_eq!(before, after, "nothing written across organizations");

    // A key that may read courses cannot enroll anyone in a path.
    let reader = h.scoped_key(&["courses:read", "enrollments:read"]).await;
    let mut r = h.clients_with(&reader);
    let other = user(&mut c, "bob@example.com").await;
    assert_err(join(&mut r, &w.path.id, &other.id).await, Code::PermissionDenied, "SCOPE_MISSING");
    let mine = r
        .paths
        .list_path_enrollments(ListPathEnrollmentsRequest { learning_path_id: w.path.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.path_enrollments.len(), 1);
}

crate::backend_tests!(
    a_path_enrolls_in_each_course_and_completes_once,
    changing_a_paths_courses_reaches_its_members,
    path_rules_and_bad_input,
    paths_are_isolated_between_organizations,
);
