//! BatchCreateEnrollments (partial success, idempotency) and the streaming export.
use coursewire_proto::v1::batch_create_enrollments_response::result::Result as Outcome;
use coursewire_proto::v1::*;
use tonic::Code;

use crate::fixtures::*;
use crate::harness::Harness;

async fn batch_is_partial_and_idempotent(h: &Harness) {
    let mut c = h.clients();
    let w = world(&mut c).await;
    let other = user(&mut c, "other@example.com").await;
    let item = |u: &str| CreateEnrollmentRequest {
        user_id: u.into(),
        published_course_id: w.published.id.clone(),
        ..Default::default()
    };
    let req = BatchCreateEnrollmentsRequest {
        requests: vec![item(&w.user.id), item(&w.user.id), item("usr_bad"), item(&other.id)],
        request_id: "batch-1".into(),
    };
    let results = c.enrollments.batch_create_enrollments(req.clone()).await.unwrap().into_inner().results;
    assert_eq!(results.len(), 4);
    let first = match &results[0].result {
        Some(Outcome::Enrollment(e)) => e.clone(),
        other => panic!("{other:?}"),
    };
    match &results[1].result {
        Some(Outcome::Error(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (Code::AlreadyExists as i32, "ENROLLMENT_EXISTS"));
            assert_eq!(e.metadata.get("existing_id"), Some(&first.id));
        }
        other => panic!("{other:?}"),
    }
    match &results[2].result {
        Some(Outcome::Error(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (Code::InvalidArgument as i32, "INVALID_FIELD"))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(results[3].result, Some(Outcome::Enrollment(_))));
    assert_eq!(h.count("enrollments").await, 2);
    let events = h.count("events").await;

    let again = c.enrollments.batch_create_enrollments(req).await.unwrap().into_inner().results;
    assert_eq!(again, results, "a retried batch returns the same results");
    assert_eq!(h.count("events").await, events, "and writes nothing");
}

async fn export_streams_everything_in_chunks(h: &Harness) {
    let mut c = h.clients();
    let w = world(&mut c).await;
    let mut items = Vec::new();
    for i in 0..620 {
        if i % 500 == 499 {
            h.clock.advance(60_000); // stay inside the default 600 modify calls per minute
        }
        let u = user(&mut c, &format!("learner{i}@example.com")).await;
        items.push(CreateEnrollmentRequest {
            user_id: u.id,
            published_course_id: w.published.id.clone(),
            ..Default::default()
        });
    }
    for chunk in items.chunks(310) {
        h.clock.advance(60_000); // each batch of 310 counts 310 modify calls
        let results = c
            .enrollments
            .batch_create_enrollments(BatchCreateEnrollmentsRequest {
                requests: chunk.to_vec(),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        assert!(results.iter().all(|r| matches!(r.result, Some(Outcome::Enrollment(_)))));
    }
    let mut stream = c.enrollments.export_enrollments(ExportEnrollmentsRequest::default()).await.unwrap().into_inner();
    let mut ids = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        ids.push(e.id);
    }
    assert_eq!(ids.len(), 620);
    assert!(ids.windows(2).all(|p| p[0] < p[1]), "in id order, no duplicates across chunks");
    let filtered = ExportEnrollmentsRequest { user_id: items[7].user_id.clone(), ..Default::default() };
    let mut stream = c.enrollments.export_enrollments(filtered).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());
    assert!(stream.message().await.unwrap().is_none());
}

crate::backend_tests!(batch_is_partial_and_idempotent, export_streams_everything_in_chunks);
