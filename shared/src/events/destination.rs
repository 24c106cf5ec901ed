//! Where events may be sent: http(s) URLs whose host resolves only to public addresses, so
//! that a client cannot make Ebra probe its own network (the VPC, the metadata service at
//! 169.254.169.254, services on loopback).
//!
//! The check runs twice: when a URL is registered (every address its host resolves to must
//! be public), and at every delivery, inside the HTTP client's DNS resolution
//! ([`super::delivery`]): the client connects only to the addresses that passed, so a name
//! that resolved to a public address at registration and to a private one later (DNS
//! rebinding) is refused at delivery. `ALLOW_PRIVATE_WEBHOOK_URLS` (set by `ebra dev`) lifts
//! both checks.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use url::{Host, Url};

/// The longest URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

/// Why a URL may not receive events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// Not an http(s) URL Ebra can post to.
    #[error("{0}")]
    Invalid(String),
    /// Its host is, or resolves to, an address that is not public.
    #[error("{host} {reason}; only public addresses receive events (ALLOW_PRIVATE_WEBHOOK_URLS lifts this)")]
    NotPublic { host: String, reason: String },
    /// Its host does not resolve.
    #[error("{host} does not resolve: {reason}")]
    Unresolvable { host: String, reason: String },
}

/// Resolves host names; the system's resolver, or a table in tests.
pub trait HostResolver: Send + Sync {
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, std::io::Result<Vec<IpAddr>>>;
}

/// The operating system's resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl HostResolver for SystemResolver {
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, std::io::Result<Vec<IpAddr>>> {
        async move {
            let addrs = tokio::net::lookup_host((host, 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        }
        .boxed()
    }
}

/// A fixed table of names (tests: a name that resolves to a private address, or that
/// changes its answer between registration and delivery).
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    pub names: Arc<std::sync::Mutex<HashMap<String, Vec<IpAddr>>>>,
}

impl StaticResolver {
    pub fn with(names: &[(&str, &[IpAddr])]) -> Self {
        let resolver = Self::default();
        for (name, addrs) in names {
            resolver.set(name, addrs);
        }
        resolver
    }

    pub fn set(&self, name: &str, addrs: &[IpAddr]) {
        if let Ok(mut names) = self.names.lock() {
            names.insert(name.to_ascii_lowercase(), addrs.to_vec());
        }
    }
}

impl HostResolver for StaticResolver {
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, std::io::Result<Vec<IpAddr>>> {
        let found = self
            .names
            .lock()
            .ok()
            .and_then(|names| names.get(&host.to_ascii_lowercase()).cloned());
        async move {
            found.ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such name in the table")
            })
        }
        .boxed()
    }
}

/// The rule for event destinations, with the resolver it asks.
#[derive(Clone)]
pub struct DestinationPolicy {
    allow_private: bool,
    resolver: Arc<dyn HostResolver>,
}

impl std::fmt::Debug for DestinationPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationPolicy")
            .field("allow_private", &self.allow_private)
            .finish()
    }
}

impl DestinationPolicy {
    pub fn new(allow_private: bool, resolver: Arc<dyn HostResolver>) -> Self {
        Self {
            allow_private,
            resolver,
        }
    }

    /// The system resolver.
    pub fn system(allow_private: bool) -> Self {
        Self::new(allow_private, Arc::new(SystemResolver))
    }

    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    /// A URL as registered: its shape ([`parse_url`]), then every address of its host
    /// public (unless private addresses are allowed).
    pub async fn check(&self, raw: &str) -> Result<Url, DestinationError> {
        let url = parse_url(raw)?;
        if !self.allow_private {
            match url.host() {
                Some(Host::Ipv4(ip)) => require_public(&url, IpAddr::V4(ip))?,
                Some(Host::Ipv6(ip)) => require_public(&url, IpAddr::V6(ip))?,
                Some(Host::Domain(name)) => {
                    let addrs = self.resolve(name).await?;
                    if let Some(private) = addrs.iter().find(|ip| !is_public(**ip)) {
                        return Err(DestinationError::NotPublic {
                            host: name.to_owned(),
                            reason: format!("resolves to {private}, which is not public"),
                        });
                    }
                }
                None => return Err(DestinationError::Invalid("the URL has no host".into())),
            }
        }
        Ok(url)
    }

    /// The addresses a delivery to `host` may connect to: those it resolves to that are
    /// public (all of them when private addresses are allowed). An error when none is.
    pub async fn vetted(&self, host: &str) -> Result<Vec<IpAddr>, DestinationError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            if !self.allow_private && !is_public(ip) {
                return Err(DestinationError::NotPublic {
                    host: host.to_owned(),
                    reason: "is not a public address".into(),
                });
            }
            return Ok(vec![ip]);
        }
        let addrs = self.resolve(host).await?;
        if self.allow_private {
            return Ok(addrs);
        }
        let public: Vec<IpAddr> = addrs.iter().copied().filter(|ip| is_public(*ip)).collect();
        if public.is_empty() {
            return Err(DestinationError::NotPublic {
                host: host.to_owned(),
                reason: format!(
                    "resolves only to addresses that are not public ({})",
                    addrs
                        .iter()
                        .map(IpAddr::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        Ok(public)
    }

    async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, DestinationError> {
        let unresolvable = |reason: String| DestinationError::Unresolvable {
            host: host.to_owned(),
            reason,
        };
        let addrs = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.resolver.lookup(host),
        )
        .await
        .map_err(|_| unresolvable("the lookup timed out".into()))?
        .map_err(|e| unresolvable(e.to_string()))?;
        if addrs.is_empty() {
            return Err(unresolvable("no address".into()));
        }
        Ok(addrs)
    }
}

fn require_public(url: &Url, ip: IpAddr) -> Result<(), DestinationError> {
    if is_public(ip) {
        Ok(())
    } else {
        Err(DestinationError::NotPublic {
            host: url.host_str().unwrap_or_default().to_owned(),
            reason: "is not a public address".into(),
        })
    }
}

/// An event destination's shape: an absolute http(s) URL with a host, no credentials, no
/// fragment, at most [`MAX_URL_BYTES`]. Numeric hosts are read as browsers read them
/// (`http://2130706433/` is 127.0.0.1).
pub fn parse_url(raw: &str) -> Result<Url, DestinationError> {
    let invalid = |message: &str| DestinationError::Invalid(message.to_owned());
    if raw.len() > MAX_URL_BYTES {
        return Err(invalid("must be at most 2048 bytes"));
    }
    if raw.trim() != raw || raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid("must not contain spaces or control characters"));
    }
    let url =
        Url::parse(raw).map_err(|e| DestinationError::Invalid(format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("must be an http or https URL"));
    }
    if url.host().is_none() || url.host_str().is_some_and(str::is_empty) {
        return Err(invalid("must have a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("must not carry credentials (user:password@)"));
    }
    if url.fragment().is_some() {
        return Err(invalid("must not have a fragment (#...)"));
    }
    if url.port() == Some(0) {
        return Err(invalid("must not use port 0"));
    }
    Ok(url)
}

/// Whether `ip` is a public unicast address: not private, loopback, link-local, unique-local,
/// shared (CGNAT), multicast, unspecified, reserved or for documentation, and not an
/// IPv4-mapped, NAT64 or 6to4 form of one of those.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let not_public = a == 0 // "this network", 0.0.0.0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 169 && b == 254) // link-local, the cloud metadata service
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 192 && b == 168)
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || a >= 224; // multicast, reserved, broadcast
    !not_public
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    let embedded_v4 =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return false;
    }
    match segments {
        // IPv4-mapped (::ffff:a.b.c.d): the IPv4 address decides.
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => is_public_v4(embedded_v4(hi, lo)),
        // IPv4-compatible (deprecated) and the rest of ::/96.
        [0, 0, 0, 0, 0, 0, _, _] => false,
        // NAT64 (64:ff9b::/96): the IPv4 address decides; 64:ff9b:1::/48 is local use.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => is_public_v4(embedded_v4(hi, lo)),
        [0x64, 0xff9b, 1, ..] => false,
        // Discard-only (100::/64).
        [0x100, 0, 0, 0, ..] => false,
        // 6to4 (2002::/16): the IPv4 address in bits 16..48 decides.
        [0x2002, hi, lo, ..] => is_public_v4(embedded_v4(hi, lo)),
        // IETF protocol assignments (2001::/23, Teredo among them) and documentation.
        [0x2001, second, ..] if second < 0x200 => false,
        [0x2001, 0xdb8, ..] => false,
        // Unique local (fc00::/7), link-local (fe80::/10), site-local (fec0::/10).
        [first, ..] if (first & 0xfe00) == 0xfc00 => false,
        [first, ..] if (first & 0xffc0) == 0xfe80 => false,
        [first, ..] if (first & 0xffc0) == 0xfec0 => false,
        _ => true,
    }
}

/// [`SocketAddr`]s for `ips`, port 0 (the HTTP client puts the URL's port in).
pub fn socket_addrs(ips: &[IpAddr]) -> Vec<SocketAddr> {
    ips.iter().map(|ip| SocketAddr::new(*ip, 0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(raw: &str) -> IpAddr {
        raw.parse().unwrap()
    }

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for raw in [
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
            "ff02::1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001::1",
            "2001:db8::1",
            "100::1",
        ] {
            assert!(!is_public(ip(raw)), "{raw} must not be public");
        }
    }

    #[test]
    fn public_addresses_are_public() {
        for raw in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "169.253.1.1",
            "2606:4700:4700::1111",
            "::ffff:93.184.216.34",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
        ] {
            assert!(is_public(ip(raw)), "{raw} must be public");
        }
    }

    #[test]
    fn url_shapes() {
        assert!(parse_url("https://hooks.example.com/ebra?x=1").is_ok());
        for bad in [
            "ftp://example.com/x",
            "https://user:pw@example.com/",
            "https://example.com/#frag",
            "/relative",
            "https://",
            " https://example.com/",
            "https://example.com/a b",
            "https://example.com:0/",
            "javascript:alert(1)",
        ] {
            assert!(parse_url(bad).is_err(), "{bad} must be refused");
        }
        // Numeric hosts are read as the IPv4 addresses they spell.
        assert_eq!(
            parse_url("http://2130706433/").unwrap().host_str(),
            Some("127.0.0.1")
        );
    }

    #[tokio::test]
    async fn registration_refuses_every_private_form() {
        let resolver = StaticResolver::with(&[
            ("internal.example.test", &[ip("10.0.0.5")]),
            (
                "mixed.example.test",
                &[ip("93.184.216.34"), ip("127.0.0.1")],
            ),
            ("public.example.test", &[ip("93.184.216.34")]),
        ]);
        let policy = DestinationPolicy::new(false, Arc::new(resolver.clone()));
        for url in [
            "http://127.0.0.1/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.1/",
            "http://[::1]:8080/",
            "http://[::ffff:127.0.0.1]/",
            "http://2130706433/",
            "http://0x7f.1/",
            "https://internal.example.test/hook",
            "https://mixed.example.test/hook",
        ] {
            let refused = policy.check(url).await;
            assert!(
                matches!(refused, Err(DestinationError::NotPublic { .. })),
                "{url}: {refused:?}"
            );
        }
        assert!(matches!(
            policy.check("https://nowhere.example.test/").await,
            Err(DestinationError::Unresolvable { .. })
        ));
        assert!(policy
            .check("https://public.example.test/hook")
            .await
            .is_ok());
        let open = DestinationPolicy::new(true, Arc::new(resolver));
        assert!(open.check("http://127.0.0.1:9/hook").await.is_ok());
    }

    #[tokio::test]
    async fn delivery_keeps_only_public_addresses() {
        let resolver = StaticResolver::with(&[
            (
                "mixed.example.test",
                &[ip("127.0.0.1"), ip("93.184.216.34")],
            ),
            ("rebound.example.test", &[ip("169.254.169.254")]),
        ]);
        let policy = DestinationPolicy::new(false, Arc::new(resolver));
        assert_eq!(
            policy.vetted("mixed.example.test").await.unwrap(),
            vec![ip("93.184.216.34")]
        );
        assert!(matches!(
            policy.vetted("rebound.example.test").await,
            Err(DestinationError::NotPublic { .. })
        ));
        assert!(policy.vetted("[::1]").await.is_err());
        assert!(policy.vetted("127.0.0.1").await.is_err());
    }
}
