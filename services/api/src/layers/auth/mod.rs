//! Authentication and authorization as a layer: every call except health and reflection
//! must carry a valid key whose scopes cover the method (see `crate::policy`). The layer
//! puts the resulting `Caller` into the request extensions for the layers below and the
//! handlers. The keys themselves: `keys` (secrets), `record` (a key as read), `store`
//! (their rows), `delegation` (what a key may grant), `sessions` (the web console's sign-in
//! links and sessions, which the console passes down as a `SessionGrant`).
pub mod delegation;
pub mod keys;
mod record;
pub mod sessions;
mod store;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use parking_lot::Mutex;
use subtle::ConstantTimeEq;
use tonic::Status;
use tonic::transport::server::TcpConnectInfo;

pub use record::{KeyRecord, Scopes};
pub use store::{NewKey, create_key, get_key, list_keys, revoke_key, update_key};

use crate::clock::SharedClock;
use crate::layers::around::{Inner, Next, Response, Rule};
use crate::policy::{self, Need, Policy};
use coursewire_core::error::{ApiError, ApiResult, Reason};
use coursewire_core::store::Db;

/// Revocations and changes become visible to every replica within this time.
const CACHE_TTL: Duration = Duration::from_secs(1);
/// `last_used_at` is written at most this often per key.
const LAST_USED_EVERY_MS: i64 = 60_000;

/// Who is calling: inserted by the auth layer, read by handlers.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key: Arc<KeyRecord>,
    pub policy: Option<Policy>,
}

impl Caller {
    /// The organization every query is scoped to.
    pub fn org(&self) -> &str {
        &self.key.org_id
    }
}

/// The caller of a request that passed the auth layer.
pub fn caller<T>(req: &tonic::Request<T>) -> ApiResult<Caller> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| ApiError::internal("request reached a handler without auth"))
}

/// Key lookups by secret hash, with when they were loaded (`None`: no such key).
type KeyCache = HashMap<String, (Instant, Option<Arc<KeyRecord>>)>;

pub struct Authenticator {
    db: Db,
    clock: SharedClock,
    cache: Mutex<KeyCache>,
    /// Peers whose `x-forwarded-for` names the client (`--trusted-proxies`).
    trusted_proxies: Vec<IpNet>,
}

impl Authenticator {
    pub fn new(db: Db, clock: SharedClock, trusted_proxies: Vec<IpNet>) -> Arc<Self> {
        Arc::new(Authenticator { db, clock, cache: Mutex::new(HashMap::new()), trusted_proxies })
    }

    pub async fn authenticate(&self, headers: &http::HeaderMap, path: &str, peer: Option<IpAddr>) -> ApiResult<Caller> {
        let secret = keys::from_headers(headers)?;
        let key = self.key(&secret, false).await?;
        let caller = self.admit(key.clone(), path, headers, peer)?;
        let now = self.clock.now_ms();
        if key.touch_due(now, LAST_USED_EVERY_MS) {
            let db = self.db.clone();
            let id = key.id.clone();
            tokio::spawn(async move { store::touch_last_used(&db, &id, now).await });
        }
        Ok(caller)
    }

    /// The key whose secret this is, valid or not (`fresh`: read now, not from the cache).
    async fn key(&self, secret: &str, fresh: bool) -> ApiResult<Arc<KeyRecord>> {
        let hash = keys::hash(secret);
        let found =
            if fresh { store::find_key(&self.db, &hash).await?.map(Arc::new) } else { self.lookup(&hash).await? };
        let key = found.ok_or_else(|| ApiError::unauthenticated(Reason::KeyUnknown, "the API key is not known"))?;
        // The lookup is by hash; compare in constant time anyway so no code path branches
        // on a partial match.
        if !bool::from(key.secret_hash.as_bytes().ct_eq(hash.as_bytes())) {
            return Err(ApiError::unauthenticated(Reason::KeyUnknown, "the API key is not known"));
        }
        Ok(key)
    }

    /// Whether `key` (a key, or a console session's authority) may call `path` now, from
    /// this client: the one check every call passes, whatever its credentials.
    pub fn admit(
        &self,
        key: Arc<KeyRecord>,
        path: &str,
        headers: &http::HeaderMap,
        peer: Option<IpAddr>,
    ) -> ApiResult<Caller> {
        let now = self.clock.now_ms();
        if key.revoked_at.is_some() {
            return Err(ApiError::unauthenticated(Reason::KeyRevoked, "the API key was revoked"));
        }
        if key.expires_at.is_some_and(|t| t <= now) {
            return Err(ApiError::unauthenticated(Reason::KeyExpired, "the API key has expired"));
        }
        if key.org_suspended {
            return Err(ApiError::new(Reason::OrganizationSuspended, "the organization is suspended"));
        }
        if !key.allowed_cidrs.is_empty()
            && !client_ip(&self.trusted_proxies, headers, peer)
                .is_some_and(|ip| key.allowed_cidrs.iter().any(|net| net.contains(&ip)))
        {
            return Err(ApiError::new(Reason::IpNotAllowed, "this key may not be used from your IP address")
                .help("add your address to the key's allowed CIDRs"));
        }
        let policy = policy::policy(path);
        if let Some(p) = policy {
            authorize(&key, p.need)?;
        }
        Ok(Caller { key, policy })
    }

    /// Signs in to the console with a key's secret: the key, if it may be used from here
    /// (as any call would be checked; signing in needs no scope). Read fresh: a session
    /// outlives the cache, so a key revoked a moment ago must not open one.
    pub async fn sign_in(&self, secret: &str, headers: &http::HeaderMap, peer: Option<IpAddr>) -> ApiResult<Caller> {
        let key = self.key(secret.trim(), true).await?;
        if key.platform {
            return Err(ApiError::new(
                Reason::OrganizationKeyRequired,
                "platform keys manage organizations; sign in with an organization's key",
            ));
        }
        self.admit(key, "/coursewire.v1.AccountService/WhoAmI", headers, peer)
    }

    /// The live console session whose cookie is `token`.
    pub async fn session(&self, token: &str) -> ApiResult<sessions::Session> {
        sessions::find_session(&self.db, token, self.clock.now_ms()).await
    }

    async fn lookup(&self, hash: &str) -> ApiResult<Option<Arc<KeyRecord>>> {
        if let Some((at, key)) = self.cache.lock().get(hash)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(key.clone());
        }
        let key = store::find_key(&self.db, hash).await?.map(Arc::new);
        let mut cache = self.cache.lock();
        if cache.len() > 10_000 {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
        }
        cache.insert(hash.to_string(), (Instant::now(), key.clone()));
        Ok(key)
    }
}

/// The client address: the TCP peer, or — when the peer is a trusted proxy — the
/// right-most `x-forwarded-for` entry that is not itself a trusted proxy.
fn client_ip(trusted: &[IpNet], headers: &http::HeaderMap, peer: Option<IpAddr>) -> Option<IpAddr> {
    let peer = peer.map(|p| p.to_canonical())?;
    if !trusted.iter().any(|n| n.contains(&peer)) {
        return Some(peer);
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    let mut client = peer;
    for hop in forwarded.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip.to_canonical();
                if !trusted.iter().any(|n| n.contains(&client)) {
                    break;
                }
            }
            // A garbled hop: trust nothing further left.
            Err(_) => break,
        }
    }
    Some(client)
}

fn authorize(key: &KeyRecord, need: Need) -> ApiResult<()> {
    let denied = |scope: String| {
        ApiError::new(Reason::ScopeMissing, format!("this key lacks the scope {scope}"))
            .with("required_scope", scope)
            .help("create a key with the scope this method needs (see docs/api.md)")
    };
    match need {
        Need::Platform if !key.platform => {
            Err(ApiError::new(Reason::PlatformKeyRequired, "only platform keys may manage organizations"))
        }
        Need::Platform => Ok(()),
        _ if key.platform => Err(ApiError::new(
            Reason::OrganizationKeyRequired,
            "platform keys only manage organizations; use an organization's key",
        )),
        Need::AnyKey => Ok(()),
        Need::Reads(r) if key.scopes.allows(r, false) => Ok(()),
        Need::Writes(r) if key.scopes.allows(r, true) => Ok(()),
        Need::Reads(r) => Err(denied(format!("{r}:read"))),
        Need::Writes(r) => Err(denied(format!("{r}:write"))),
    }
}

/// The auth layer's rule (run by `Around`): every call but health and reflection is
/// authenticated and authorized before it goes on, carrying its `Caller`.
#[derive(Clone)]
pub struct Authenticate(pub Arc<Authenticator>);

impl Rule for Authenticate {
    async fn call<S: Inner<B>, B: Send + 'static>(
        self,
        mut req: http::Request<B>,
        next: Next<S>,
    ) -> Result<Response, S::Error> {
        if policy::is_public(req.uri().path()) {
            return next.run(req).await;
        }
        let peer = req.extensions().get::<TcpConnectInfo>().and_then(|i| i.remote_addr()).map(|a| a.ip());
        // A call the console makes for a session carries the session's authority instead of a key.
        let authenticated = match req.extensions().get::<sessions::SessionGrant>() {
            Some(grant) => self.0.admit(grant.0.clone(), req.uri().path(), req.headers(), peer),
            None => self.0.authenticate(req.headers(), req.uri().path(), peer).await,
        };
        match authenticated {
            Ok(caller) => {
                if coursewire_core::trace::exporting() {
                    let span = tracing::Span::current();
                    span.record("organization", caller.org());
                    span.record("api_key", caller.key.prefix.as_str());
                }
                req.extensions_mut().insert(caller);
                next.run(req).await
            }
            Err(e) => {
                crate::metrics::auth_failed(e.reason.as_str());
                Ok(Status::from(e).into_http())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-for", value.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy = Some("10.1.2.3".parse().unwrap());
        let stranger = Some("203.0.113.9".parse().unwrap());
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(&trusted, &xff("198.51.100.7"), proxy), ip("198.51.100.7"));
        assert_eq!(
            client_ip(&trusted, &xff("198.51.100.7"), stranger),
            stranger,
            "spoofed header from an untrusted peer"
        );
        assert_eq!(
            client_ip(&trusted, &xff("1.1.1.1, 198.51.100.7, 10.9.9.9"), proxy),
            ip("198.51.100.7"),
            "right-most untrusted hop"
        );
        assert_eq!(client_ip(&trusted, &xff("garbage"), proxy), proxy);
        assert_eq!(
            client_ip(&[], &http::HeaderMap::new(), ip("::ffff:127.0.0.1")),
            ip("127.0.0.1"),
            "IPv4-mapped peers are IPv4"
        );
    }
}
