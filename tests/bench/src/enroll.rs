//! CreateEnrollment through the API on Postgres vs pgbench running the same inserts
//! (domain access and its event, enrollment and its event) in one transaction, at the same concurrency.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use coursewire_api::clock::{Clock, SystemClock};
use coursewire_core::store::Db;
use coursewire_proto::v1::*;
use serde_json::json;
use tonic::Request;
use tonic::transport::Channel;

use crate::{PHASE, report};

/// In-flight calls (and pgbench clients); equal to the server's Postgres pool size.
const CLIENTS: usize = 16;
/// Learners created up front: more than either side can enroll in one phase.
const LEARNERS: i64 = 200_000;

fn admin_url() -> String {
    std::env::var("COURSEWIRE_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn authed<T>(msg: T, key: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    req
}

pub async fn run() -> anyhow::Result<()> {
    let admin = admin_url();
    let name = format!("cw_bench_{}", SystemClock.now_ms());
    let admin_pool = sqlx::PgPool::connect(&admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin_pool).await?;
    let url = format!("{}/{name}", admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base));
    let result = measure(&url, &name).await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&admin_pool)
        .await;
    result
}

async fn measure(url: &str, name: &str) -> anyhow::Result<()> {
    let db = Db::connect(url).await?;
    let key = crate::bench_org(&db).await?;
    // Learners for both sides, inserted directly: only enrollment is measured.
    insert_users(&db, LEARNERS * 2).await?;

    let app = crate::start_server(db.clone()).await?;
    let addr = app.addr();
    let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;

    let ours_pub = published_course(channel.clone(), &key).await?;
    // Ours: CreateEnrollment for learners 1..LEARNERS.
    let next = Arc::new(AtomicU64::new(1));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let mut client =
                coursewire_proto::v1::enrollment_service_client::EnrollmentServiceClient::new(channel.clone());
            let (next, key, pub_id) = (next.clone(), key.clone(), ours_pub.clone());
            tokio::spawn(async move {
                while start.elapsed() < PHASE {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let req = CreateEnrollmentRequest {
                        user_id: format!("usr_{n:026}"),
                        published_course_id: pub_id.clone(),
                        ..Default::default()
                    };
                    client.create_enrollment(authed(req, &key)).await.expect("create enrollment");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let ours = (next.load(Ordering::Relaxed) - 1) as f64 / start.elapsed().as_secs_f64();

    let (dom, crs): (String, String) =
        sqlx::query_as("SELECT domain_id, course_id FROM published_courses WHERE id = $1")
            .bind(&ours_pub)
            .fetch_one(db.pool())
            .await?;
    // Baseline: the same three inserts (plus a sequence draw for unique learners) in pgbench.
    let script = format!(
        "SELECT nextval('bench_learner') + {LEARNERS} AS n \\gset\n\
         BEGIN;\n\
         INSERT INTO domain_users (id, org_id, domain_id, user_id, active, created_at, updated_at, sequence) VALUES ('dus_' || lpad(:n::text, 26, '0'), 'bench', '{dom}', 'usr_' || lpad(:n::text, 26, '0'), 1, 0, 0, 1) ON CONFLICT (domain_id, user_id) DO NOTHING;\n\
         INSERT INTO events (id, org_id, type, resource_id, sequence, created_at, body) VALUES ('evt_d' || lpad(:n::text, 25, '0'), 'bench', 'domain_user.created', 'dus_' || lpad(:n::text, 26, '0'), 1, 0, '{body}');\n\
         INSERT INTO enrollments (id, org_id, user_id, published_course_id, course_id, domain_id, state, enrolled_at, updated_at, sequence) VALUES ('enr_' || lpad(:n::text, 26, '0'), 'bench', 'usr_' || lpad(:n::text, 26, '0'), '{pubid}', '{crs}', '{dom}', 'ACTIVE', 0, 0, 1);\n\
         INSERT INTO events (id, org_id, type, resource_id, sequence, created_at, body) VALUES ('evt_' || lpad(:n::text, 26, '0'), 'bench', 'enrollment.created', 'enr_' || lpad(:n::text, 26, '0'), 1, 0, '{body}');\n\
         COMMIT;\n",
        pubid = ours_pub,
        body = sample_body(),
    );
    sqlx::query("CREATE SEQUENCE bench_learner").execute(db.pool()).await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("enroll.sql");
    std::fs::write(&path, script)?;
    let out = tokio::process::Command::new("pgbench")
        .args([
            "-n",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-c",
            &CLIENTS.to_string(),
            "-j",
            "2",
            "-T",
            &PHASE.as_secs().to_string(),
            "-f",
        ])
        .arg(&path)
        .arg(name)
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "pgbench failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let baseline: f64 = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no tps in pgbench output: {text}"))?;
    report(json!({
        "scenario": "enroll",
        "coursewire_enrollments_per_s": ours.round(),
        "pgbench_same_inserts_per_s": baseline.round(),
        "ratio": (ours / baseline * 1000.0).round() / 1000.0,
        "target_ratio": 0.7,
        "clients": CLIENTS,
        "seconds_per_phase": PHASE.as_secs(),
    }));
    Ok(())
}

/// An event body of the size a real `enrollment.created` has.
pub fn sample_body() -> String {
    let data = json!({"id": "enr_01jd3xkq7w8h2m4n6p8r0t2v4x", "user_id": "usr_01jd3xkq7w8h2m4n6p8r0t2v4x", "published_course_id": "pub_01jd3xkq7w8h2m4n6p8r0t2v4x",
        "course_id": "crs_01jd3xkq7w8h2m4n6p8r0t2v4x", "domain_id": "dom_01jd3xkq7w8h2m4n6p8r0t2v4x", "state": "ACTIVE", "enrolled_at": "2026-11-24T10:00:00.123Z",
        "progress": {"lessons_completed": 0, "lessons_required": 5, "percent": 0}, "sequence": "1", "updated_at": "2026-11-24T10:00:00.123Z", "etag": "\"1\""});
    json!({"id": "evt_01jd3xkq7w8h2m4n6p8r0t2v4x", "type": "enrollment.created", "created_at": "2026-11-24T10:00:00.123Z", "organization_id": "bench", "sequence": 1, "data": data}).to_string()
}

/// Learners `usr_000…1` to `count`, inserted directly (setup, never measured).
pub async fn insert_users(db: &Db, count: i64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO users (id, org_id, email, email_lower, first_name, last_name, active, created_at, updated_at, sequence) \
         SELECT 'usr_' || lpad(n::text, 26, '0'), 'bench', 'l' || n || '@example.com', 'l' || n || '@example.com', 'L', 'N', 1, 0, 0, 1 \
         FROM generate_series(1, $1) AS n",
    )
    .bind(count)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// A domain and a five-lesson course published to it, through the API; the published course's id.
pub async fn published_course(channel: Channel, key: &str) -> anyhow::Result<String> {
    let mut c = coursewire_proto::v1::domain_service_client::DomainServiceClient::new(channel.clone());
    let d = Domain { hostname: "bench.example.com".into(), name: "B".into(), ..Default::default() };
    let domain =
        c.create_domain(authed(CreateDomainRequest { domain: Some(d), request_id: String::new() }, key)).await?;
    let mut courses = coursewire_proto::v1::course_service_client::CourseServiceClient::new(channel.clone());
    let lessons = (0..5).map(|i| Lesson { title: format!("L{i}"), required: true, ..Default::default() }).collect();
    let course = Course { title: "Bench".into(), lessons, ..Default::default() };
    let course = courses
        .create_course(authed(CreateCourseRequest { course: Some(course), request_id: String::new() }, key))
        .await?;
    let mut published =
        coursewire_proto::v1::published_course_service_client::PublishedCourseServiceClient::new(channel);
    let p =
        PublishedCourse { course_id: course.into_inner().id, domain_id: domain.into_inner().id, ..Default::default() };
    let publish = authed(CreatePublishedCourseRequest { published_course: Some(p), request_id: String::new() }, key);
    Ok(published.create_published_course(publish).await?.into_inner().id)
}
