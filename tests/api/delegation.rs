//! Delegation, as an attacker holding a narrow key would try it: a key creates, changes and
//! revokes keys only within its own authority, and never widens (or otherwise changes) its
//! own scopes or allowlist. Every refusal writes nothing.
use coursewire_api::clock::Clock;
use coursewire_proto::v1::*;
use pbjson_types::FieldMask;
use tonic::Code;

use crate::fixtures::*;
use crate::harness::{Clients, Harness};

async fn create(c: &mut Clients, key: ApiKey) -> Result<CreateApiKeyResponse, tonic::Status> {
    c.keys.create_api_key(CreateApiKeyRequest { api_key: Some(key) }).await.map(|r| r.into_inner())
}

async fn update(c: &mut Clients, key: ApiKey, paths: &[&str]) -> Result<ApiKey, tonic::Status> {
    let mask = Some(FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() });
    c.keys.update_api_key(UpdateApiKeyRequest { api_key: Some(key), update_mask: mask }).await.map(|r| r.into_inner())
}

fn scoped(scopes: &[&str]) -> ApiKey {
    ApiKey { scopes: scopes.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

const DENIED: Code = Code::PermissionDenied;
const ESCALATION: &str = "SCOPE_ESCALATION";

async fn a_key_grants_only_what_it_holds(h: &Harness) {
    let mut admin = h.clients();
    let made = create(&mut admin, scoped(&["keys:write"])).await.unwrap();
    let mine = made.api_key.unwrap();
    let mut attacker = h.clients_with(&made.secret);
    let before = h.count("api_keys").await;

    assert_err(create(&mut attacker, scoped(&["*"])).await, DENIED, ESCALATION);
    assert_err(create(&mut attacker, scoped(&["users:read"])).await, DENIED, ESCALATION);
    assert_err(create(&mut attacker, scoped(&["keys:read", "webhooks:write"])).await, DENIED, ESCALATION);
    // Widening itself, or changing its own scopes at all.
    let own = |scopes: &[&str]| ApiKey { id: mine.id.clone(), ..scoped(scopes) };
    assert_err(update(&mut attacker, own(&["*"]), &["scopes"]).await, DENIED, ESCALATION);
    assert_err(update(&mut attacker, own(&["keys:read"]), &["scopes"]).await, DENIED, ESCALATION);
    let anywhere = ApiKey { id: mine.id.clone(), allowed_cidrs: vec!["10.0.0.0/8".into()], ..Default::default() };
    assert_err(update(&mut attacker, anywhere, &["allowed_cidrs"]).await, DENIED, ESCALATION);
    // Keys beyond its authority are out of reach: the bootstrap `*` key cannot be touched.
    let admin_key = admin.account.who_am_i(WhoAmIRequest {}).await.unwrap().into_inner().key_id;
    let relabel = ApiKey { id: admin_key.clone(), label: "owned".into(), ..Default::default() };
    assert_err(update(&mut attacker, relabel, &["label"]).await, DENIED, ESCALATION);
    let revoke = attacker.keys.revoke_api_key(RevokeApiKeyRequest { id: admin_key.clone() }).await;
    assert_err(revoke, DENIED, ESCALATION);
    assert_eq!(h.count("api_keys").await, before, "no refused call wrote a key");
    let still = admin.keys.get_api_key(GetApiKeyRequest { id: admin_key }).await.unwrap().into_inner();
    assert!(still.revoked_at.is_none() && still.label == "test" && still.scopes == ["*"]);

    // Within its authority it works: a narrower key, its own label, revoking what it made.
    let child = create(&mut attacker, scoped(&["keys:read"])).await.unwrap().api_key.unwrap();
    assert_eq!(child.scopes, ["keys:read"]);
    let label = ApiKey { id: mine.id.clone(), label: "delegate".into(), ..Default::default() };
    assert_eq!(update(&mut attacker, label, &["label"]).await.unwrap().label, "delegate");
    let same = ApiKey { id: mine.id.clone(), label: "delegate".into(), ..scoped(&["keys:write"]) };
    update(&mut attacker, same, &[]).await.expect("sending its own scopes unchanged is no change");
    attacker.keys.revoke_api_key(RevokeApiKeyRequest { id: child.id }).await.unwrap();

    // The escalated key never existed: nothing reads more than keys.
    assert_err(attacker.users.list_users(ListUsersRequest::default()).await, DENIED, "SCOPE_MISSING");
}

async fn scopes_are_never_implied(h: &Harness) {
    let mut c = h.clients();
    let before = h.count("api_keys").await;
    for scopes in [vec![], vec![String::new()], vec![" ".to_string()], vec!["users:read".into(), String::new()]] {
        let r = create(&mut c, ApiKey { scopes: scopes.clone(), ..Default::default() }).await;
        let s = assert_err(r, Code::InvalidArgument, "INVALID_FIELD");
        assert_eq!(violations(&s), ["scopes"], "{scopes:?}");
    }
    let made = create(&mut c, scoped(&["users:read"])).await.unwrap().api_key.unwrap();
    let cleared = ApiKey { id: made.id, ..Default::default() };
    assert_err(update(&mut c, cleared, &["scopes"]).await, Code::InvalidArgument, "INVALID_FIELD");
    assert_eq!(h.count("api_keys").await, before + 1);
}

async fn allowlists_expiry_and_limits_only_narrow(h: &Harness) {
    let mut admin = h.clients();
    let expires = h.clock.now_ms() + 86_400_000;
    let bounded = ApiKey {
        allowed_cidrs: vec!["127.0.0.0/8".into()],
        expires_at: Some(timestamp(expires)),
        rate_limit: "100/1m".into(),
        ..scoped(&["keys:write", "users:read"])
    };
    let made = create(&mut admin, bounded).await.unwrap();
    let mut k = h.clients_with(&made.secret);
    let narrow = || ApiKey {
        allowed_cidrs: vec!["127.0.0.1".into()],
        expires_at: Some(timestamp(expires - 1000)),
        rate_limit: "50/1m".into(),
        ..scoped(&["users:read"])
    };
    let before = h.count("api_keys").await;
    for (case, key) in [
        ("no allowlist", ApiKey { allowed_cidrs: vec![], ..narrow() }),
        ("a wider range", ApiKey { allowed_cidrs: vec!["0.0.0.0/0".into()], ..narrow() }),
        ("another range", ApiKey { allowed_cidrs: vec!["10.0.0.0/8".into()], ..narrow() }),
        ("no expiry", ApiKey { expires_at: None, ..narrow() }),
        ("a later expiry", ApiKey { expires_at: Some(timestamp(expires + 1000)), ..narrow() }),
        ("no limit", ApiKey { rate_limit: String::new(), ..narrow() }),
        ("a higher limit", ApiKey { rate_limit: "1000/1m".into(), ..narrow() }),
        ("a shorter window", ApiKey { rate_limit: "100/10s".into(), ..narrow() }),
    ] {
        let s = assert_err(create(&mut k, key).await, DENIED, ESCALATION);
        assert!(!s.message().is_empty(), "{case}");
    }
    assert_eq!(h.count("api_keys").await, before);
    let child = create(&mut k, narrow()).await.expect("a narrower key is fine").api_key.unwrap();
    let raise = ApiKey { id: child.id.clone(), rate_limit: "1000/1m".into(), ..Default::default() };
    assert_err(update(&mut k, raise, &["rate_limit"]).await, DENIED, ESCALATION);
    let own_raise = ApiKey { id: made.api_key.unwrap().id, rate_limit: "200/1m".into(), ..Default::default() };
    assert_err(update(&mut k, own_raise, &["rate_limit"]).await, DENIED, ESCALATION);
}

async fn platform_keys_manage_organizations_only(h: &Harness) {
    let platform = h.platform_key().await;
    let mut p = h.clients_with(&platform);
    assert_err(create(&mut p, scoped(&["*"])).await, DENIED, "ORGANIZATION_KEY_REQUIRED");
}

crate::backend_tests!(
    a_key_grants_only_what_it_holds,
    scopes_are_never_implied,
    allowlists_expiry_and_limits_only_narrow,
    platform_keys_manage_organizations_only,
);
