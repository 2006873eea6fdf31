//! Partner credentials stay secret: custom header values are write-only, `webhook.disabled`
//! carries no headers or secrets, signing secrets and header values are sealed at rest (the raw
//! database holds neither), and the operator's key can be rotated without losing a value.
use coursewire_api::webhooks::endpoint::{reseal, secret_context};
use coursewire_core::secrets::Keyring;
use coursewire_proto::v1::*;
use pbjson_types::FieldMask;
use prost::Message;
use sqlx::{Column, Row};
use tonic::Code;

use crate::fixtures::*;
use crate::harness::{Clients, Harness};
use crate::receiver::{Receiver, Reply};
use crate::webhooks::verify;

const WAIT: std::time::Duration = std::time::Duration::from_secs(10);
const TOKEN: &str = "Bearer partner-token-5f1d9c";

fn headers(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn create_with_headers(c: &mut Clients, url: &str, types: &[&str], h: &[(&str, &str)]) -> CreateWebhookResponse {
    let w = Webhook {
        url: url.into(),
        event_types: types.iter().map(|t| t.to_string()).collect(),
        headers: headers(h),
        ..Default::default()
    };
    c.webhooks
        .create_webhook(CreateWebhookRequest { webhook: Some(w), request_id: String::new() })
        .await
        .unwrap()
        .into_inner()
}

async fn header_values_are_write_only(h: &Harness) {
    let mut c = h.clients();
    let receiver = Receiver::ok().await;
    let made = create_with_headers(
        &mut c,
        &receiver.url,
        &["domain.created"],
        &[("authorization", TOKEN), ("x-tenant", "t-42"), ("x-region", "eu")],
    )
    .await;
    let hook = made.webhook.unwrap();
    assert_eq!(hook.headers, headers(&[("authorization", "***"), ("x-region", "***"), ("x-tenant", "***")]));
    let reader = h.scoped_key(&["webhooks:read"]).await;
    let mut r = h.clients_with(&reader);
    let got = r.webhooks.get_webhook(GetWebhookRequest { id: hook.id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.headers, hook.headers);
    let listed = r.webhooks.list_webhooks(ListWebhooksRequest::default()).await.unwrap().into_inner();
    let wire = listed.encode_to_vec();
    assert!(!wire.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()), "no header value in List");
    assert_err(
        r.webhooks.get_webhook_secret(GetWebhookSecretRequest { id: hook.id.clone() }).await,
        Code::PermissionDenied,
        "SCOPE_MISSING",
    );

    // An update that echoes `***` keeps the stored value; others are replaced or dropped.
    let patch = Webhook {
        id: hook.id.clone(),
        headers: headers(&[("authorization", "***"), ("x-tenant", "t-43")]),
        ..Default::default()
    };
    let mask = Some(FieldMask { paths: vec!["headers".into()] });
    let updated = c.webhooks.update_webhook(UpdateWebhookRequest { webhook: Some(patch), update_mask: mask.clone() });
    assert_eq!(updated.await.unwrap().into_inner().headers, headers(&[("authorization", "***"), ("x-tenant", "***")]));
    domain(&mut c, "headers.example.com").await;
    let sent = receiver.wait_for(1, WAIT).await;
    assert_eq!(sent[0].header("authorization"), TOKEN);
    assert_eq!(sent[0].header("x-tenant"), "t-43");
    assert!(sent[0].headers.get("x-region").is_none());

    // `***` for a header that has no stored value is refused, and changes nothing.
    let before = h.count("webhook_endpoints").await;
    let stored: String =
        sqlx::query_scalar("SELECT headers FROM webhook_endpoints").fetch_one(h.db.pool()).await.unwrap();
    let patch = Webhook { id: hook.id.clone(), headers: headers(&[("x-new", "***")]), ..Default::default() };
    let r = c.webhooks.update_webhook(UpdateWebhookRequest { webhook: Some(patch), update_mask: mask }).await;
    let s = assert_err(r, Code::InvalidArgument, "INVALID_FIELD");
    assert_eq!(violations(&s), ["webhook.headers[x-new]"]);
    let after: String =
        sqlx::query_scalar("SELECT headers FROM webhook_endpoints").fetch_one(h.db.pool()).await.unwrap();
    assert_eq!((h.count("webhook_endpoints").await, after), (before, stored));
}

async fn webhook_disabled_carries_no_credentials(h: &Harness) {
    let mut c = h.clients();
    let gone = Receiver::start(|_| Reply::status(410)).await;
    let watcher = Receiver::ok().await;
    let made = create_with_headers(&mut c, &gone.url, &["domain.created"], &[("authorization", TOKEN)]).await;
    create_with_headers(&mut c, &watcher.url, &["webhook.disabled"], &[("x-watcher", "w-secret-1")]).await;
    domain(&mut c, "gone.example.com").await;
    let told = watcher.wait_for(1, WAIT).await;
    let body = String::from_utf8_lossy(&told[0].body).to_string();
    let envelope = told[0].json();
    assert_eq!(envelope["type"], "webhook.disabled");
    let mut keys: Vec<&str> = envelope["data"].as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["disabled_at", "id", "reason", "url"]);
    assert_eq!(envelope["data"]["id"], made.webhook.unwrap().id);
    for secret in [TOKEN, "w-secret-1", "whsec_", &made.secret] {
        assert!(!body.contains(secret), "{secret} leaked into webhook.disabled");
    }
    let logged = c
        .events
        .list_events(ListEventsRequest { types: vec!["webhook.disabled".into()], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let logged = serde_json::to_string(&logged.events[0].data).unwrap();
    assert!(!logged.contains("partner-token") && !logged.contains("whsec_"), "{logged}");
}

/// Every text value of every table, as stored (idempotency responses decoded too).
async fn every_stored_text(h: &Harness) -> Vec<String> {
    let tables: Vec<String> = match h.db.backend {
        coursewire_core::store::Backend::Sqlite => {
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'").fetch_all(h.db.pool()).await
        }
        coursewire_core::store::Backend::Postgres => {
            sqlx::query_scalar("SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'")
                .fetch_all(h.db.pool())
                .await
        }
    }
    .unwrap();
    assert!(tables.iter().any(|t| t == "webhook_endpoints") && tables.iter().any(|t| t == "idempotency"));
    let mut out = Vec::new();
    for table in tables.iter().filter(|t| !t.starts_with("_sqlx") && !t.starts_with("sqlite_")) {
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM {table}"))).fetch_all(h.db.pool()).await.unwrap();
        for row in &rows {
            for col in row.columns() {
                if let Ok(Some(text)) = row.try_get::<Option<String>, _>(col.ordinal()) {
                    if table == "idempotency" && col.name() == "response" {
                        use base64::Engine;
                        let bytes = base64::engine::general_purpose::STANDARD.decode(&text).unwrap();
                        out.push(String::from_utf8_lossy(&bytes).to_string());
                    }
                    out.push(text);
                }
            }
        }
    }
    out
}

async fn secrets_are_sealed_at_rest(h: &Harness) {
    let mut c = h.clients();
    let receiver = Receiver::ok().await;
    let w = Webhook {
        url: receiver.url.clone(),
        headers: headers(&[("authorization", TOKEN), ("x-api-key", "partner-key-77aa")]),
        ..Default::default()
    };
    let first = c
        .webhooks
        .create_webhook(CreateWebhookRequest { webhook: Some(w), request_id: "create-hook-1".into() })
        .await
        .unwrap()
        .into_inner();
    let id = first.webhook.as_ref().unwrap().id.clone();
    let rotated = c.webhooks.rotate_webhook_secret(RotateWebhookSecretRequest { id: id.clone() }).await.unwrap();
    let rotated = rotated.into_inner();
    c.webhooks.send_test_event(SendTestEventRequest { id: id.clone() }).await.unwrap();
    let got = receiver.wait_for(1, WAIT).await;
    assert!(verify(&rotated.secret, &got[0]) && verify(&first.secret, &got[0]), "both secrets still sign");
    assert_eq!(got[0].header("x-api-key"), "partner-key-77aa");

    let stored = every_stored_text(h).await;
    for needle in ["whsec_", TOKEN, "partner-token", "partner-key-77aa", &first.secret[6..], &rotated.secret[6..]] {
        let hit = stored.iter().find(|v| v.contains(needle));
        assert!(hit.is_none(), "{needle:?} is stored in clear: {hit:?}");
    }
    // The stored idempotency response replays with the secret filled in from the sealed column.
    let w = Webhook {
        url: receiver.url.clone(),
        headers: headers(&[("x-api-key", "partner-key-77aa"), ("authorization", TOKEN)]),
        ..Default::default()
    };
    let again = c
        .webhooks
        .create_webhook(CreateWebhookRequest { webhook: Some(w), request_id: "create-hook-1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.webhook, first.webhook);
    assert_eq!(again.secret, rotated.secret, "the current secret");
    assert_eq!(h.count("webhook_endpoints").await, 1);
}

async fn the_secrets_key_rotates_without_losing_a_value(h: &Harness) {
    let mut c = h.clients();
    let receiver = Receiver::ok().await;
    let made = create_with_headers(&mut c, &receiver.url, &[], &[("authorization", TOKEN)]).await;
    let id = made.webhook.unwrap().id;
    // An endpoint left in clear by a version before encryption.
    let legacy = "wh_01jd3xkq7w8h2m4n6p8r0t2v4x";
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, org_id, url, description, event_types, headers, max_rate, max_concurrency, \
         secret, disabled_reason, sequence, event_sequence, created_at, updated_at) \
         VALUES ($1, 'acme', $2, '', '[]', $3, 0, 0, $4, '', 1, 0, 0, 0)",
    )
    .bind(legacy)
    .bind(&receiver.url)
    .bind(r#"{"authorization":"Bearer legacy-token"}"#)
    .bind(&made.secret)
    .execute(h.db.pool())
    .await
    .unwrap();
    assert_eq!(reseal(&h.db, &h.secrets, true).await.unwrap(), 1, "only the legacy row is sealed at start");
    assert!(!every_stored_text(h).await.iter().any(|v| v.contains("legacy-token") || v.contains("whsec_")));

    let new_key: [u8; 32] = std::array::from_fn(|i| i as u8 ^ 0x5a);
    let rotated = Keyring::new(new_key, vec![h.secrets_key]);
    assert_eq!(reseal(&h.db, &rotated, false).await.unwrap(), 2, "every endpoint re-sealed");
    assert_eq!(reseal(&h.db, &rotated, false).await.unwrap(), 0, "nothing left to rotate");
    let new_only = Keyring::new(new_key, vec![]);
    for endpoint in [id.as_str(), legacy] {
        let sealed: String = sqlx::query_scalar("SELECT secret FROM webhook_endpoints WHERE id = $1")
            .bind(endpoint)
            .fetch_one(h.db.pool())
            .await
            .unwrap();
        assert_eq!(new_only.open(&sealed, &secret_context(endpoint)).unwrap(), made.secret, "{endpoint}");
        assert!(h.secrets.open(&sealed, &secret_context(endpoint)).is_err(), "the old key no longer opens it");
    }
}

crate::backend_tests!(
    header_values_are_write_only,
    webhook_disabled_carries_no_credentials,
    secrets_are_sealed_at_rest,
    the_secrets_key_rotates_without_losing_a_value,
);
