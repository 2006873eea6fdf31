//! API keys and organizations over gRPC: shown once, listed without secrets, limited to 25,
//! revoked everywhere within a second, scopes and IP allowlists enforced on every method.
use std::time::Duration;

use coursewire_api::policy::{Need, policy};
use coursewire_proto::v1::*;
use prost::Message;
use tonic::Code;

use crate::fixtures::*;
use crate::harness::{Harness, WithKey};

async fn keys_are_shown_once_and_listed_without_secrets(h: &Harness) {
    let mut c = h.clients();
    let new = ApiKey {
        label: "LMS sync".into(),
        scopes: vec!["users:read".into(), "enrollments:write".into()],
        allowed_cidrs: vec!["127.0.0.1".into(), "2001:db8::/32".into()],
        ..Default::default()
    };
    let created = c.keys.create_api_key(CreateApiKeyRequest { api_key: Some(new) }).await.unwrap().into_inner();
    let key = created.api_key.unwrap();
    assert!(created.secret.starts_with(&format!("sk_{}", key.prefix)));
    assert_eq!(key.allowed_cidrs, ["127.0.0.1/32", "2001:db8::/32"]);
    let got = c.keys.get_api_key(GetApiKeyRequest { id: key.id.clone() }).await.unwrap().into_inner();
    assert_eq!(got, key);
    let listed = c.keys.list_api_keys(ListApiKeysRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.api_keys.len(), 2);
    let wire = listed.encode_to_vec();
    assert!(!wire.windows(created.secret.len()).any(|w| w == created.secret.as_bytes()), "no secret in List");

    // The new key works, within its scopes.
    let mut partner = h.clients_with(&created.secret);
    partner.users.list_users(ListUsersRequest::default()).await.unwrap();
    let who = partner.account.who_am_i(WhoAmIRequest {}).await.unwrap().into_inner();
    assert_eq!(who.key_label, "LMS sync");
    assert_err(
        partner.keys.list_api_keys(ListApiKeysRequest::default()).await,
        Code::PermissionDenied,
        "SCOPE_MISSING",
    );

    let patch = ApiKey { id: key.id.clone(), scopes: vec!["users:write".into()], ..Default::default() };
    let mask = Some(pbjson_types::FieldMask { paths: vec!["scopes".into()] });
    let updated = c
        .keys
        .update_api_key(UpdateApiKeyRequest { api_key: Some(patch), update_mask: mask })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.scopes, ["users:write"]);
    assert_eq!(updated.label, "LMS sync");

    let revoked = c.keys.revoke_api_key(RevokeApiKeyRequest { id: key.id.clone() }).await.unwrap().into_inner();
    assert!(revoked.revoked_at.is_some());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_err(partner.account.ping(PingRequest {}).await, Code::Unauthenticated, "KEY_REVOKED");
    let active = c.keys.list_api_keys(ListApiKeysRequest::default()).await.unwrap().into_inner();
    assert_eq!(active.api_keys.len(), 1, "revoked keys are hidden unless asked for");
    let all = c
        .keys
        .list_api_keys(ListApiKeysRequest { include_revoked: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.api_keys.len(), 2);
}

async fn an_organization_holds_at_most_25_keys(h: &Harness) {
    let mut c = h.clients();
    for i in 1..25 {
        c.keys
            .create_api_key(CreateApiKeyRequest { api_key: Some(ApiKey { label: format!("k{i}"), ..star_key() }) })
            .await
            .unwrap();
    }
    let s = assert_err(
        c.keys.create_api_key(CreateApiKeyRequest { api_key: Some(star_key()) }).await,
        Code::FailedPrecondition,
        "KEY_LIMIT_REACHED",
    );
    assert!(s.message().contains("25"));
    let first = c
        .keys
        .list_api_keys(ListApiKeysRequest { page_size: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .api_keys
        .remove(0);
    let last = c.keys.list_api_keys(ListApiKeysRequest::default()).await.unwrap().into_inner().api_keys.pop().unwrap();
    assert_ne!(first.id, last.id);
    c.keys.revoke_api_key(RevokeApiKeyRequest { id: last.id }).await.unwrap();
    c.keys
        .create_api_key(CreateApiKeyRequest { api_key: Some(star_key()) })
        .await
        .expect("a revoked key frees its slot");
    let bad = ApiKey {
        scopes: vec!["root".into()],
        allowed_cidrs: vec!["300.1.1.1/8".into()],
        rate_limit: "many".into(),
        ..Default::default()
    };
    let s = assert_err(
        c.keys.create_api_key(CreateApiKeyRequest { api_key: Some(bad) }).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    assert_eq!(violations(&s), ["scopes", "allowed_cidrs", "rate_limit"]);
}

/// Calls `path` with an empty message; the auth layer answers before any handler runs.
async fn call(h: &Harness, key: &str, path: &str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(tonic::service::interceptor::InterceptedService::new(
        h.channel(),
        WithKey(format!("Bearer {key}").parse().unwrap()),
    ));
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<pbjson_types::Empty, pbjson_types::Empty>::default();
    // Allowed streaming calls (WatchEvents) never end by themselves: a timeout means admitted.
    let call = grpc.unary(tonic::Request::new(pbjson_types::Empty {}), path.parse().unwrap(), codec);
    match tokio::time::timeout(Duration::from_secs(2), call).await {
        Ok(Ok(_)) | Err(_) => tonic::Status::ok(""),
        Ok(Err(s)) => s,
    }
}

fn methods() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(coursewire_proto::FILE_DESCRIPTOR_SET).unwrap();
    set.file
        .iter()
        .filter(|f| f.package() == "coursewire.v1")
        .flat_map(|f| {
            f.service
                .iter()
                .flat_map(|s| s.method.iter().map(move |m| format!("/coursewire.v1.{}/{}", s.name(), m.name())))
        })
        .collect()
}

async fn scopes_and_allowlists_hold_on_every_method(h: &Harness) {
    let events_only = h.scoped_key(&["events:read"]).await;
    let mut checked = 0;
    for path in methods() {
        let need = policy(&path).unwrap().need;
        let s = call(h, &events_only, &path).await;
        match need {
            Need::AnyKey | Need::Reads("events") => assert_ne!(s.code(), Code::PermissionDenied, "{path}"),
            Need::Platform => assert_eq!(reason(&s), "PLATFORM_KEY_REQUIRED", "{path}"),
            _ => {
                assert_eq!(reason(&s), "SCOPE_MISSING", "{path}");
                checked += 1;
            }
        }
    }
    assert!(checked > 30);

    let mut c = h.clients();
    let elsewhere = ApiKey { allowed_cidrs: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()], ..star_key() };
    let far =
        c.keys.create_api_key(CreateApiKeyRequest { api_key: Some(elsewhere) }).await.unwrap().into_inner().secret;
    for path in methods() {
        assert_eq!(reason(&call(h, &far, &path).await), "IP_NOT_ALLOWED", "{path}");
    }
    let here = ApiKey { allowed_cidrs: vec!["127.0.0.0/8".into()], ..star_key() };
    let near = c.keys.create_api_key(CreateApiKeyRequest { api_key: Some(here) }).await.unwrap().into_inner().secret;
    h.clients_with(&near).account.ping(PingRequest {}).await.expect("loopback is inside 127.0.0.0/8");
}

async fn organizations_are_managed_by_platform_keys(h: &Harness) {
    let platform = h.platform_key().await;
    let mut p = h.clients_with(&platform);
    let org = Organization {
        id: "initech".into(),
        name: "Initech".into(),
        rate_limits: Some(RateLimits { read: "100/1m".into(), ..Default::default() }),
        ..Default::default()
    };
    let created =
        p.orgs.create_organization(CreateOrganizationRequest { organization: Some(org) }).await.unwrap().into_inner();
    assert_eq!(created.rate_limits.as_ref().unwrap().read, "100/1m");
    let listed = p.orgs.list_organizations(ListOrganizationsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.organizations.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), ["acme", "initech"]);
    let bad = Organization { id: "x".into(), ..Default::default() };
    assert_err(
        p.orgs.create_organization(CreateOrganizationRequest { organization: Some(bad) }).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    let bad_limits = Organization {
        id: "acme".into(),
        rate_limits: Some(RateLimits { modify: "lots".into(), ..Default::default() }),
        ..Default::default()
    };
    let mask = Some(pbjson_types::FieldMask { paths: vec!["rate_limits".into()] });
    let s = assert_err(
        p.orgs
            .update_organization(UpdateOrganizationRequest { organization: Some(bad_limits), update_mask: mask })
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    assert_eq!(violations(&s), ["rate_limits.modify"]);
    assert_err(
        p.users.list_users(ListUsersRequest::default()).await,
        Code::PermissionDenied,
        "ORGANIZATION_KEY_REQUIRED",
    );
    assert_err(
        h.clients().orgs.list_organizations(ListOrganizationsRequest::default()).await,
        Code::PermissionDenied,
        "PLATFORM_KEY_REQUIRED",
    );

    // Suspending an organization refuses its keys (within the 1 s auth cache).
    let suspend = Organization { id: "acme".into(), suspended: true, ..Default::default() };
    let mask = Some(pbjson_types::FieldMask { paths: vec!["suspended".into()] });
    let updated = p
        .orgs
        .update_organization(UpdateOrganizationRequest { organization: Some(suspend), update_mask: mask })
        .await
        .unwrap()
        .into_inner();
    assert!(updated.suspended);
    assert_eq!(updated.name, "Acme");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_err(h.clients().account.ping(PingRequest {}).await, Code::PermissionDenied, "ORGANIZATION_SUSPENDED");
}

async fn revocation_reaches_another_replica_within_a_second(h: &Harness) {
    let replica = h.replica().await;
    let mut c = h.clients();
    let created = c.keys.create_api_key(CreateApiKeyRequest { api_key: Some(star_key()) }).await.unwrap().into_inner();
    let mut on_replica = replica.clients_with(&created.secret);
    on_replica.account.ping(PingRequest {}).await.unwrap();
    c.keys.revoke_api_key(RevokeApiKeyRequest { id: created.api_key.unwrap().id }).await.unwrap();
    let revoked_at = std::time::Instant::now();
    loop {
        match on_replica.account.ping(PingRequest {}).await {
            Ok(_) => assert!(revoked_at.elapsed() < Duration::from_secs(1), "still accepted after 1 s"),
            Err(s) => {
                assert_eq!(reason(&s), "KEY_REVOKED");
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

crate::backend_tests!(
    keys_are_shown_once_and_listed_without_secrets,
    an_organization_holds_at_most_25_keys,
    scopes_and_allowlists_hold_on_every_method,
    organizations_are_managed_by_platform_keys,
    revocation_reaches_another_replica_within_a_second,
);
