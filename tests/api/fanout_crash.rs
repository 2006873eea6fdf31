//! A group fan-out survives `kill -9`: a group of 2,000 members assigned a 3-course path,
//! the API process killed mid-way, another started; the operation finishes with 6,000 course
//! enrollments and 2,000 path enrollments, each exactly once with exactly one event.
use std::process::Command;
use std::time::{Duration, Instant};

use coursewire_proto::v1::*;
use futures::future::join_all;

use crate::processes::{Cluster, clients};

const MEMBERS: usize = 2000;

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(pool).await.unwrap()
}

#[cfg_attr(not(all(cw_postgres, cw_amqp)), ignore = "skipped: Postgres or RabbitMQ is not configured")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_interrupted_by_kill_9_finishes_after_restart_without_duplicates() {
    let mut cluster = Cluster::start("5s").await;
    let mut c = clients(cluster.port, &cluster.key).await;
    let d = crate::fixtures::domain(&mut c, "crash.acme.com").await;
    let mut published = Vec::new();
    for _ in 0..3 {
        let course = crate::fixtures::course(&mut c, 1).await;
        published.push(crate::fixtures::publish(&mut c, &course.id, &d.id).await.id);
    }
    let path = LearningPath { title: "Onboarding".into(), published_course_ids: published, ..Default::default() };
    let path = c
        .paths
        .create_learning_path(CreateLearningPathRequest { learning_path: Some(path), request_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    let g = Group { name: "Everyone".into(), ..Default::default() };
    let g = c.groups.create_group(CreateGroupRequest { group: Some(g), request_id: String::new() }).await.unwrap();
    let g = g.into_inner();

    // 2,000 users from four writers, added to the group in two calls of 1,000.
    let writers = (0..4).map(|w| {
        let (port, key) = (cluster.port, cluster.key.clone());
        async move {
            let mut c = clients(port, &key).await;
            let mut ids = Vec::new();
            for i in (w..MEMBERS).step_by(4) {
                ids.push(crate::fixtures::user(&mut c, &format!("member{i}@example.com")).await.id);
            }
            ids
        }
    });
    let users: Vec<String> = join_all(writers).await.into_iter().flatten().collect();
    for chunk in users.chunks(1000) {
        let r = AddGroupMembersRequest { group_id: g.id.clone(), user_ids: chunk.to_vec(), request_id: String::new() };
        c.groups.add_group_members(r).await.unwrap();
    }

    let a = Assignment { target: Some(assignment::Target::LearningPathId(path.id.clone())), due_at: None };
    let op = c
        .groups
        .assign_to_group(AssignToGroupRequest { group_id: g.id.clone(), assignment: Some(a) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op.members_total, MEMBERS as i64);

    // Kill the API once a few batches are in.
    let get = GetOperationRequest { id: op.id.clone() };
    let started = Instant::now();
    let at_kill = loop {
        let now = c.groups.get_operation(get.clone()).await.unwrap().into_inner();
        if now.members_done >= 200 {
            break now;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the fan-out did not start: {now:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    Command::new("kill").arg("-KILL").arg(cluster.api.0.id().to_string()).status().unwrap();
    let _ = cluster.api.0.wait();
    assert!(!at_kill.done, "the kill came mid-way: {at_kill:?}");

    // Another API process takes the operation over once the dead one's lease lapses.
    let (_api, port) = (cluster.replica)();
    let mut c = clients(port, &cluster.key).await;
    let restarted = Instant::now();
    let done = loop {
        let now = c.groups.get_operation(get.clone()).await.unwrap().into_inner();
        if now.done {
            break now;
        }
        assert!(restarted.elapsed() < Duration::from_secs(180), "the fan-out did not finish: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "killed at {} of {MEMBERS} members; finished {:?} after the restart",
        at_kill.members_done,
        restarted.elapsed()
    );
    assert_eq!((done.members_done, done.members_failed), (MEMBERS as i64, 0));

    let pool = sqlx::PgPool::connect(&cluster.db.url).await.unwrap();
    let expected = (3 * MEMBERS) as i64;
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM enrollments").await, expected);
    assert_eq!(
        count(&pool, "SELECT COUNT(*) FROM (SELECT DISTINCT user_id, published_course_id FROM enrollments) p").await,
        expected
    );
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM events WHERE type = 'enrollment.created'").await, expected);
    assert_eq!(
        count(&pool, "SELECT COUNT(DISTINCT resource_id) FROM events WHERE type = 'enrollment.created'").await,
        expected
    );
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM path_enrollments").await, MEMBERS as i64);
    assert_eq!(
        count(&pool, "SELECT COUNT(*) FROM events WHERE type = 'path_enrollment.created'").await,
        MEMBERS as i64
    );
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM events WHERE type = 'operation.completed'").await, 1);
}
