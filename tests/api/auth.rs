//! Authentication forms and failures, scopes, and what a key may see.
use base64::Engine;
use coursewire_api::clock::Clock;
use coursewire_api::layers::auth;
use coursewire_proto::v1::account_service_client::AccountServiceClient;
use coursewire_proto::v1::*;
use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::fixtures::*;
use crate::harness::Harness;

async fn ping_with(h: &Harness, header: &'static str, value: &str) -> Result<(), tonic::Status> {
    let mut client = AccountServiceClient::new(h.channel());
    let mut req = tonic::Request::new(PingRequest {});
    req.metadata_mut().insert(header, MetadataValue::try_from(value).unwrap());
    client.ping(req).await.map(|_| ())
}

async fn the_three_header_forms_work(h: &Harness) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{}:", h.key));
    ping_with(h, "authorization", &format!("Bearer {}", h.key)).await.unwrap();
    ping_with(h, "authorization", &format!("Basic {basic}")).await.unwrap();
    ping_with(h, "x-api-key", &h.key).await.unwrap();
    let who = h.clients().account.who_am_i(WhoAmIRequest {}).await.unwrap().into_inner();
    assert_eq!(who.organization_id, "acme");
    assert_eq!(who.key_prefix, &h.key[3..11]);
    assert_eq!(who.scopes, ["*"]);
}

async fn bad_credentials_say_what_is_wrong(h: &Harness) {
    let mut client = AccountServiceClient::new(h.channel());
    assert_err(client.ping(PingRequest {}).await, Code::Unauthenticated, "MISSING_CREDENTIALS");
    let unknown = format!("sk_{}", "0".repeat(48));
    assert_err(ping_with(h, "x-api-key", &unknown).await, Code::Unauthenticated, "KEY_UNKNOWN");
    for (header, value) in [
        ("authorization", format!("Token {}", h.key)),
        ("authorization", format!("Bearer  {}", h.key)),
        ("authorization", "Basic %%%notbase64".to_string()),
        ("authorization", format!("Bearer {}", "x".repeat(10_000))),
        ("x-api-key", "sk_short".to_string()),
    ] {
        let s = assert_err(ping_with(h, header, &value).await, Code::Unauthenticated, "MALFORMED_CREDENTIALS");
        assert!(!s.message().contains(&h.key), "errors never echo secrets");
    }

    let (key, secret) = auth::create_key(
        &h.db,
        auth::NewKey {
            org_id: Some("acme".into()),
            label: "soon gone".into(),
            scopes: vec!["*".into()],
            allowed_cidrs: vec![],
            expires_at: Some(h.clock.now_ms() + 1000),
            rate_limit: String::new(),
        },
        h.clock.now_ms(),
        None,
    )
    .await
    .unwrap();
    ping_with(h, "x-api-key", &secret).await.unwrap();
    h.clock.advance(1000);
    assert_err(ping_with(h, "x-api-key", &secret).await, Code::Unauthenticated, "KEY_EXPIRED");

    let other = h.scoped_key(&["*"]).await;
    ping_with(h, "x-api-key", &other).await.unwrap();
    let other_id = auth::list_keys(&h.db, "acme", "", 100, true)
        .await
        .unwrap()
        .into_iter()
        .find(|k| other.starts_with(&format!("sk_{}", k.prefix)))
        .unwrap()
        .id;
    auth::revoke_key(&h.db, "acme", &other_id, h.clock.now_ms(), None).await.unwrap();
    // Revocation is visible within the auth cache's 1 s.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_err(ping_with(h, "x-api-key", &other).await, Code::Unauthenticated, "KEY_REVOKED");
    assert!(key.id.starts_with("key_"));
}

async fn keys_are_stored_hashed(h: &Harness) {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT prefix, secret_hash FROM api_keys").fetch_all(h.db.pool()).await.unwrap();
    for (prefix, hash) in rows {
        assert_eq!(hash.len(), 64);
        assert!(!hash.contains(&h.key[3..]), "no secret at rest");
        assert_eq!(prefix.len(), 8);
    }
    assert_eq!(rows_with_secret(h).await, 0);
}

async fn rows_with_secret(h: &Harness) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE secret_hash = $1 OR prefix = $1")
        .bind(&h.key)
        .fetch_one(h.db.pool())
        .await
        .unwrap()
}

async fn scopes_limit_what_a_key_may_do(h: &Harness) {
    let mut admin = h.clients();
    let w = world(&mut admin).await;
    let reader = h.scoped_key(&["users:read"]).await;
    let mut c = h.clients_with(&reader);
    c.users.get_user(GetUserRequest { id: w.user.id.clone() }).await.unwrap();
    c.account.ping(PingRequest {}).await.unwrap();
    let s = assert_err(
        c.users
            .create_user(CreateUserRequest {
                user: Some(User { email: "n@example.com".into(), ..Default::default() }),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "SCOPE_MISSING",
    );
    assert_eq!(meta(&s, "required_scope").as_deref(), Some("users:write"));
    assert_err(
        c.courses.get_course(GetCourseRequest { id: w.course.id.clone() }).await,
        Code::PermissionDenied,
        "SCOPE_MISSING",
    );
    assert_err(enroll(&mut c, &w.user.id, &w.published.id).await, Code::PermissionDenied, "SCOPE_MISSING");

    let writer = h.scoped_key(&["enrollments:write"]).await;
    let mut c = h.clients_with(&writer);
    let e = enroll(&mut c, &w.user.id, &w.published.id).await.unwrap();
    c.enrollments.get_enrollment(GetEnrollmentRequest { id: e.id }).await.expect("write implies read");
    assert_err(c.events.list_events(ListEventsRequest::default()).await, Code::PermissionDenied, "SCOPE_MISSING");
}

async fn health_and_reflection_need_no_key(h: &Harness) {
    let mut health = tonic_health::pb::health_client::HealthClient::new(h.channel());
    let status =
        health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(status.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

crate::backend_tests!(
    the_three_header_forms_work,
    bad_credentials_say_what_is_wrong,
    keys_are_stored_hashed,
    scopes_limit_what_a_key_may_do,
    health_and_reflection_need_no_key,
);
