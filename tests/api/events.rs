//! The outbox rows match the §6 envelope and are written with their change, never without.
use coursewire_proto::v1::*;
use tonic::Code;

use crate::fixtures::*;
use crate::harness::Harness;

async fn events_match_the_envelope(h: &Harness) {
    let mut c = h.clients();
    let w = world(&mut c).await;
    let e = enroll(&mut c, &w.user.id, &w.published.id).await.unwrap();
    let body: String = sqlx::query_scalar("SELECT body FROM events WHERE resource_id = $1")
        .bind(&e.id)
        .fetch_one(h.db.pool())
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(keys.len(), 6, "{keys:?}");
    for k in ["id", "type", "created_at", "organization_id", "sequence", "data"] {
        assert!(v.get(k).is_some(), "envelope lacks {k}");
    }
    assert!(v["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(v["type"], "enrollment.created");
    assert_eq!(v["organization_id"], "acme");
    assert_eq!(v["sequence"], 1);
    let created = v["created_at"].as_str().unwrap();
    assert_eq!(created.len(), "2026-11-24T10:00:00.123Z".len(), "{created}");
    assert!(created.ends_with('Z') && created.as_bytes()[19] == b'.');
    // data is the resource with proto field names.
    assert_eq!(v["data"]["id"], e.id.as_str());
    assert_eq!(v["data"]["published_course_id"], w.published.id.as_str());
    assert_eq!(v["data"]["state"], "ACTIVE");

    let listed =
        c.events.get_event(GetEventRequest { id: v["id"].as_str().unwrap().into() }).await.unwrap().into_inner();
    assert_eq!(listed.r#type, "enrollment.created");
    assert_eq!(listed.resource_id, e.id);
    let data = listed.data.unwrap();
    assert!(data.fields.contains_key("published_course_id"));
}

async fn a_failed_write_leaves_no_event(h: &Harness) {
    let mut c = h.clients();
    let w = world(&mut c).await;
    enroll(&mut c, &w.user.id, &w.published.id).await.unwrap();
    let events = h.count("events").await;
    let domain_users = h.count("domain_users").await;
    assert_err(enroll(&mut c, &w.user.id, &w.published.id).await, Code::AlreadyExists, "ENROLLMENT_EXISTS");
    let dup_course =
        PublishedCourse { course_id: w.course.id.clone(), domain_id: w.domain.id.clone(), ..Default::default() };
    assert_err(
        c.published
            .create_published_course(CreatePublishedCourseRequest {
                published_course: Some(dup_course),
                request_id: String::new(),
            })
            .await,
        Code::AlreadyExists,
        "COURSE_ALREADY_PUBLISHED",
    );
    assert_eq!(h.count("events").await, events);
    assert_eq!(h.count("domain_users").await, domain_users);

    // Types filter: exact and prefix; resource filter.
    let only = c
        .events
        .list_events(ListEventsRequest {
            types: vec!["course.created".into(), "domain.*".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let types: Vec<&str> = only.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(types, ["domain.created", "course.created"]);
}

async fn published_events_are_pruned_after_retention(h: &Harness) {
    let mut c = h.clients();
    let old = domain(&mut c, "old.example.com").await;
    while h.unpublished().await > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // 31 days later the pruner deletes it (retention is 30 days); newer events stay.
    h.clock.advance(31 * 86_400_000);
    let new = domain(&mut c, "new.example.com").await;
    while h.unpublished().await > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    h.prune().await;
    let left: Vec<String> = sqlx::query_scalar("SELECT resource_id FROM events").fetch_all(h.db.pool()).await.unwrap();
    assert!(!left.contains(&old.id), "the old event was pruned");
    assert!(left.contains(&new.id), "only events past retention are deleted");
}

crate::backend_tests!(
    events_match_the_envelope,
    a_failed_write_leaves_no_event,
    published_events_are_pruned_after_retention
);

/// Events are relayed in commit order: one committed while an older transaction still runs
/// (here in another database of the same cluster) waits for it, so it can never be overtaken
/// by an event that transaction commits, and goes out as soon as it ends, without a wake-up.
#[cfg_attr(not(cw_postgres), ignore = "skipped: COURSEWIRE_TEST_DATABASE_URL is not set")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_behind_a_running_transaction_waits_for_it_then_goes() {
    let h = Harness::start(crate::harness::Backend::Postgres).await;
    let admin = std::env::var("COURSEWIRE_TEST_DATABASE_URL").unwrap();
    let elsewhere = sqlx::PgPool::connect(&admin).await.unwrap();
    let mut older = elsewhere.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()").execute(&mut *older).await.unwrap();
    let mut c = h.clients();
    domain(&mut c, "behind.example.com").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(h.unpublished().await, 1, "not relayed while an older transaction may still commit");
    older.commit().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while h.unpublished().await > 0 {
        assert!(std::time::Instant::now() < deadline, "relayed once the older transaction ended");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
