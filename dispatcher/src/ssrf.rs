//! Webhook SSRF guard: keeps deliveries away from loopback, private, link-local, cloud-metadata and other
//! reserved addresses unless the operator passed `--webhook-allow-private-targets`.
//!
//! Names are checked inside the resolver reqwest connects with ([`GuardedResolver`]), so the addresses that
//! were checked are exactly the ones connected to: there is no second lookup for a DNS answer that changes
//! (rebinding) to slip through. IP-literal hosts never reach a resolver in reqwest/hyper-util, so
//! [`check_literal`] must be called on every URL before it is sent.

use std::error::Error;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// Why a target was refused (also the error the resolver returns, so it can be found in a reqwest error's
/// source chain with [`refused_in`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub host: String,
    pub addr: Option<IpAddr>,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            Some(addr) => write!(f, "webhook target {} resolves to a private or reserved address {addr}", self.host)?,
            None => write!(f, "webhook target {} has no public address", self.host)?,
        }
        f.write_str("; set --webhook-allow-private-targets to allow it")
    }
}

impl Error for Refused {}

/// IPv4 networks a webhook must not reach: (network, prefix length).
const FORBIDDEN_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network", incl. unspecified 0.0.0.0
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // carrier-grade NAT
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local, incl. cloud metadata 169.254.169.254
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation (TEST-NET-1)
    (Ipv4Addr::new(192, 88, 99, 0), 24),  // 6to4 relay anycast (deprecated)
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation (TEST-NET-2)
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation (TEST-NET-3)
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, incl. broadcast 255.255.255.255
];

/// IPv6 networks a webhook must not reach: (network, prefix length).
const FORBIDDEN_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::UNSPECIFIED, 128),
    (Ipv6Addr::LOCALHOST, 128),
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48), // local-use NAT64: translator-defined, unknowable
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),     // discard-only
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32),    // Teredo: tunnels to an arbitrary IPv4 host
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),     // unique local, incl. AWS metadata fd00:ec2::254
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),    // link-local
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),    // site-local (deprecated)
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),     // multicast
];

/// IPv6 networks that carry an IPv4 address, which the IPv4 rules then judge, since traffic to them ends up
/// at that IPv4 host: (network, prefix length, offset of the four IPv4 octets).
const EMBEDS_V4: &[(Ipv6Addr, u8, usize)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96, 12), // IPv4-mapped ::ffff:a.b.c.d
    (Ipv6Addr::UNSPECIFIED, 96, 12),                      // IPv4-compatible ::a.b.c.d (deprecated)
    (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96, 12), // NAT64 well-known prefix
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16, 2),  // 6to4
];

/// Whether `addr` lies in `net`/`len`, for addresses of `bits` bits widened to u128.
fn within(addr: u128, net: u128, len: u8, bits: u32) -> bool {
    (addr ^ net).checked_shr(bits - u32::from(len)).unwrap_or(0) == 0
}

/// True for addresses a webhook must never reach unless private targets are allowed.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            FORBIDDEN_V4.iter().any(|&(net, len)| within(u32::from(v4).into(), u32::from(net).into(), len, 32))
        }
        IpAddr::V6(v6) => {
            let (bits, o) = (u128::from(v6), v6.octets());
            FORBIDDEN_V6.iter().any(|&(net, len)| within(bits, net.into(), len, 128))
                || EMBEDS_V4.iter().any(|&(net, len, at)| {
                    within(bits, net.into(), len, 128)
                        && is_forbidden(Ipv4Addr::new(o[at], o[at + 1], o[at + 2], o[at + 3]).into())
                })
        }
    }
}

/// Checks a URL whose host is an IP literal (returns Ok for domain names: the resolver checks those).
///
/// Needed because hyper-util connects to IP-literal hosts directly, without asking the resolver. `url` has
/// already normalised forms such as `2130706433`, `0x7f.1` or `017700000001` to `127.0.0.1`.
pub fn check_literal(url: &Url, allow_private: bool) -> Result<(), Refused> {
    let ip = match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(Host::Domain(_)) | None => return Ok(()),
    };
    if allow_private || !is_forbidden(ip) {
        return Ok(());
    }
    Err(Refused { host: url.host_str().unwrap_or_default().to_owned(), addr: Some(ip) })
}

/// Finds a [`Refused`] in an error's source chain (e.g. inside a `reqwest::Error`), so callers can tell a
/// policy refusal (permanent) from a network failure (worth retrying).
pub fn refused_in<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a Refused> {
    std::iter::successors(Some(err), |&e| e.source()).find_map(|e| e.downcast_ref::<Refused>())
}

/// Resolves names with `inner` and drops forbidden addresses; if none is left, fails with [`Refused`].
///
/// Install it with `reqwest::ClientBuilder::dns_resolver`: every connect then uses exactly the addresses
/// checked here, so an answer that changes between lookups is checked again rather than trusted. An empty
/// answer is passed on unchanged (nothing was refused; the connect fails on its own).
pub struct GuardedResolver {
    inner: Arc<dyn Resolve>,
    allow_private: bool,
}

impl GuardedResolver {
    pub fn new(inner: Arc<dyn Resolve>, allow_private: bool) -> Self {
        Self { inner, allow_private }
    }

    /// With the system resolver (getaddrinfo via `tokio::net::lookup_host`).
    pub fn system(allow_private: bool) -> Self {
        Self::new(Arc::new(SystemResolver), allow_private)
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        if self.allow_private {
            return self.inner.resolve(name);
        }
        let host = name.as_str().to_owned();
        let resolving = self.inner.resolve(name);
        Box::pin(async move {
            let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
                resolving.await?.partition(|addr| !is_forbidden(addr.ip()));
            match refused.first() {
                Some(first) if allowed.is_empty() => Err(Refused { host, addr: Some(first.ip()) }.into()),
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

/// The system resolver, usable as `inner` (reqwest's own getaddrinfo resolver is not public).
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move { Ok(Box::new(tokio::net::lookup_host((name.as_str().to_owned(), 0)).await?) as Addrs) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn forbidden_and_public_addresses() {
        // One or more per table row, plus IPv6 forms that embed a forbidden IPv4 address.
        let forbidden = "0.0.0.0 0.1.2.3 127.0.0.1 127.255.255.254 10.0.0.1 172.16.0.1 172.31.255.255 192.168.1.1 \
            100.64.0.1 100.127.255.255 169.254.169.254 192.0.0.8 192.0.2.1 198.51.100.7 203.0.113.9 198.18.0.1 \
            198.19.255.255 224.0.0.1 239.255.255.250 240.0.0.1 255.255.255.255 :: ::1 ::ffff:127.0.0.1 \
            ::ffff:169.254.169.254 ::ffff:10.0.0.1 ::127.0.0.1 64:ff9b::a00:1 64:ff9b::7f00:1 64:ff9b:1::1 \
            2002:7f00:1:: 2002:a9fe:a9fe::1 fc00::1 fd00:ec2::254 fe80::1 febf::1 fec0::1 ff02::1 2001:db8::1 \
            100::1 2001::1 2001:0:4136:e378::1";
        let public = "93.184.216.34 1.1.1.1 8.8.8.8 172.32.0.1 100.128.0.1 198.20.0.1 223.255.255.255 \
            2606:4700:4700::1111 2a00:1450:4001::200e ::ffff:93.184.216.34 2002:5db8:d822::";
        for ip in forbidden.split_whitespace() {
            assert!(is_forbidden(ip.parse().unwrap()), "{ip} should be forbidden");
        }
        for ip in public.split_whitespace() {
            assert!(!is_forbidden(ip.parse().unwrap()), "{ip} should be allowed");
        }
    }

    #[test]
    fn check_literal_refuses_private_literals_in_any_spelling() {
        let refused = "http://127.0.0.1:8080/ http://[::1]/ http://2130706433/ http://0x7f000001/ http://0x7f.1/ \
            http://017700000001/ http://[::ffff:7f00:1]/ http://169.254.169.254/latest/meta-data/ http://10.1.2.3/ \
            http://127.0.0.1./";
        for url in refused.split_whitespace() {
            let url = Url::parse(url).unwrap();
            let err = check_literal(&url, false).expect_err(url.as_str());
            assert!(err.addr.is_some_and(is_forbidden), "{url}: {err}");
            assert!(err.to_string().contains("--webhook-allow-private-targets"));
            assert_eq!(check_literal(&url, true), Ok(()), "{url} with private targets allowed");
        }
        for url in ["https://93.184.216.34/", "https://example.com/", "https://[2606:4700:4700::1111]/"] {
            assert_eq!(check_literal(&Url::parse(url).unwrap(), false), Ok(()), "{url}");
        }
    }

    /// Answers with `answer(n)` on its n-th call (counting from 0).
    struct Fake<F>(F, AtomicUsize);

    impl<F: Fn(usize) -> Vec<&'static str> + Send + Sync> Resolve for Fake<F> {
        fn resolve(&self, _: Name) -> Resolving {
            let ips: Vec<SocketAddr> = (self.0)(self.1.fetch_add(1, SeqCst))
                .iter()
                .map(|ip| SocketAddr::new(ip.parse().unwrap(), 0))
                .collect();
            Box::pin(async move { Ok(Box::new(ips.into_iter()) as Addrs) })
        }
    }

    fn guarded(answer: impl Fn(usize) -> Vec<&'static str> + Send + Sync + 'static, allow: bool) -> GuardedResolver {
        GuardedResolver::new(Arc::new(Fake(answer, AtomicUsize::new(0))), allow)
    }

    async fn lookup(resolver: &GuardedResolver) -> Result<Vec<IpAddr>, Refused> {
        match resolver.resolve("partner.example".parse().unwrap()).await {
            Ok(addrs) => Ok(addrs.map(|a| a.ip()).collect()),
            Err(err) => Err(err.downcast_ref::<Refused>().expect("a Refused").clone()),
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    #[tokio::test]
    async fn resolver_drops_forbidden_answers_and_checks_every_lookup() {
        let loopback = Refused { host: "partner.example".into(), addr: Some(ips(&["127.0.0.1"])[0]) };
        assert_eq!(lookup(&guarded(|_| vec!["127.0.0.1"], false)).await, Err(loopback.clone()));
        let mixed = guarded(|_| vec!["10.0.0.1", "93.184.216.34"], false);
        assert_eq!(lookup(&mixed).await, Ok(ips(&["93.184.216.34"])));
        // DNS rebinding: public on the first lookup, loopback afterwards. Each lookup is what gets connected to.
        let rebinding = guarded(|n| vec![if n == 0 { "93.184.216.34" } else { "127.0.0.1" }], false);
        assert_eq!(lookup(&rebinding).await, Ok(ips(&["93.184.216.34"])));
        assert_eq!(lookup(&rebinding).await, Err(loopback));
        assert_eq!(lookup(&guarded(|_| vec!["127.0.0.1"], true)).await, Ok(ips(&["127.0.0.1"])));
    }

    #[tokio::test]
    async fn real_client_never_connects_to_a_refused_name() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                counter.fetch_add(1, SeqCst);
                tokio::spawn(async move {
                    let _ = sock.read(&mut [0; 4096]).await;
                    let _ = sock.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").await;
                });
            }
        });
        let client = |allow| {
            reqwest::Client::builder()
                .dns_resolver(Arc::new(GuardedResolver::system(allow)))
                .no_proxy()
                .build()
                .unwrap()
        };
        let url = format!("http://localhost:{port}/");

        let err = client(false).post(&url).send().await.expect_err("localhost must be refused");
        let refused = refused_in(&err).unwrap_or_else(|| panic!("no Refused in {err:?}"));
        assert_eq!(refused.host, "localhost");
        assert!(refused.addr.is_some_and(|ip| ip.is_loopback()), "{refused}");
        assert_eq!(accepted.load(SeqCst), 0, "the refused request reached the listener");

        let resp = client(true).post(&url).send().await.expect("allowed with --webhook-allow-private-targets");
        assert_eq!(resp.status(), reqwest::StatusCode::NO_CONTENT);
        assert!(accepted.load(SeqCst) >= 1);
    }
}
