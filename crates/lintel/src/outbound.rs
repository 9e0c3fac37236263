//! The one guard every request Lintel makes to another server goes through (`http`
//! jobs now, webhooks next): http and https only, no redirects, and no loopback,
//! private, link-local, multicast, unspecified or otherwise internal address, whether
//! the URL names it literally or a name resolves to it. Names are resolved by
//! [`GuardedResolver`] and the connection uses only the addresses it let through, so a
//! name that changes its answer between the check and the connection (DNS rebinding)
//! gains nothing. `outbound.allow_hosts` lists the exceptions: CIDRs or host names.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not an absolute http(s) URL with a host.
    BadUrl(String),
    /// The address (literal or resolved) is internal and not allowed.
    Internal(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::BadUrl(m) => write!(f, "{m}"),
            Refused::Internal(m) => write!(f, "{m}"),
        }
    }
}

/// The allowed exceptions.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    nets: Vec<(IpAddr, u8)>,
    names: Vec<String>,
}

/// Parses `a.b.c.d/n`, `v6/n` or a bare address (a /32 or /128).
fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr.trim().parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.trim().parse::<u8>().ok().filter(|l| *l <= max)?,
        None => max,
    };
    Some((ip, len))
}

fn in_net(ip: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_unspecified()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return internal_v4(v4);
    }
    let seg = ip.segments();
    let embedded = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    // Forms that reach an IPv4 address are judged by it: NAT64 (64:ff9b::/96), SIIT
    // (::ffff:0:a.b.c.d) and 6to4 (2002:a.b.c.d::/48).
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] {
        return internal_v4(embedded(seg[6], seg[7]));
    }
    if seg[0..4] == [0, 0, 0, 0] && seg[4] == 0xffff && seg[5] == 0 {
        return internal_v4(embedded(seg[6], seg[7]));
    }
    if seg[0] == 0x2002 {
        return internal_v4(embedded(seg[1], seg[2]));
    }
    // The local-use NAT64 prefix (64:ff9b:1::/48) translates to whatever the local
    // network chose: internal.
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1 {
        return true;
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00 // unique local
        || (seg[0] & 0xffc0) == 0xfe80 // link-local
        || (seg[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (seg[0..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible
}

/// Whether an address is internal (loopback, private, link-local, multicast,
/// unspecified, reserved...).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

impl Guard {
    /// The guard of `outbound.allow_hosts`; an entry that is neither a CIDR nor a host
    /// name is an error (reported at start).
    pub fn new(allow: &[String]) -> anyhow::Result<Self> {
        let mut g = Guard::default();
        for entry in allow {
            let e = entry.trim();
            if let Some(net) = parse_cidr(e) {
                g.nets.push(net);
            } else if !e.is_empty()
                && !e.contains('/')
                && e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                g.names.push(e.to_ascii_lowercase());
            } else {
                anyhow::bail!("outbound.allow_hosts: {e:?} is neither a CIDR nor a host name");
            }
        }
        Ok(g)
    }

    /// Whether a connection to `ip` may be made.
    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        !is_internal(ip) || self.nets.iter().any(|n| in_net(ip, *n))
    }

    fn name_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.names.contains(&host)
    }

    /// Checks a destination before any request: scheme, host, and a literal address.
    /// Names are checked again, address by address, when they are resolved.
    pub fn check_url(&self, raw: &str) -> Result<url::Url, Refused> {
        let url =
            url::Url::parse(raw).map_err(|_| Refused::BadUrl("must be an absolute URL".into()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused::BadUrl("must be an http or https URL".into()));
        }
        match url.host() {
            None => Err(Refused::BadUrl("must name a host".into())),
            Some(url::Host::Ipv4(ip)) => self.literal(IpAddr::V4(ip)).map(|()| url),
            Some(url::Host::Ipv6(ip)) => self.literal(IpAddr::V6(ip)).map(|()| url),
            Some(url::Host::Domain(d)) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                if d == "localhost" || d.ends_with(".localhost") {
                    if self.name_allowed(&d) {
                        return Ok(url);
                    }
                    return Err(Refused::Internal(
                        "points at this machine (localhost); allow it in outbound.allow_hosts"
                            .into(),
                    ));
                }
                Ok(url)
            }
        }
    }

    fn literal(&self, ip: IpAddr) -> Result<(), Refused> {
        if self.ip_allowed(ip) {
            Ok(())
        } else {
            Err(Refused::Internal(format!(
                "{ip} is an internal address; allow it in outbound.allow_hosts"
            )))
        }
    }
}

/// Resolves names for outbound requests, keeping only addresses the guard allows.
pub struct GuardedResolver {
    guard: Arc<Guard>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let trusted = guard.name_allowed(&host);
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| trusted || guard.ip_allowed(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "{host} resolves to no address outbound requests may reach (internal addresses are refused)"
                )
                .into());
            }
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

/// The guard and the client outbound requests go through.
#[derive(Clone)]
pub struct Outbound {
    pub guard: Arc<Guard>,
    pub client: reqwest::Client,
}

impl Outbound {
    /// A client that resolves through the guard, follows no redirect and uses no proxy.
    pub fn new(allow: &[String]) -> anyhow::Result<Self> {
        let guard = Arc::new(Guard::new(allow)?);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .dns_resolver(Arc::new(GuardedResolver {
                guard: guard.clone(),
            }))
            .user_agent(concat!("Lintel/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { guard, client })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_by_literal() {
        let g = Guard::new(&[]).unwrap();
        for bad in [
            "http://127.0.0.1/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://0.0.0.0/",
            "http://224.0.0.1/",
            "http://100.64.0.1/",
            "http://[::1]/",
            "http://[::]/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[64:ff9b::a00:1]/",
            "http://[64:ff9b:1::a9fe:a9fe]/",
            "http://[::ffff:0:7f00:1]/",
            "http://[2002:a9fe:a9fe::1]/",
            "http://localhost:8080/",
            "http://2130706433/",
            "http://0x7f000001/",
        ] {
            assert!(
                matches!(g.check_url(bad), Err(Refused::Internal(_))),
                "{bad} must be refused"
            );
        }
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "nope",
            "http://",
        ] {
            assert!(g.check_url(bad).is_err(), "{bad}");
        }
        for good in [
            "https://example.com/hook",
            "http://93.184.216.34/",
            "https://[2606:4700::1]/",
        ] {
            assert!(g.check_url(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn allow_hosts_takes_cidrs_and_names() {
        let g = Guard::new(&[
            "127.0.0.1/32".into(),
            "10.0.0.0/8".into(),
            "localhost".into(),
        ])
        .unwrap();
        assert!(g.check_url("http://127.0.0.1:9000/").is_ok());
        assert!(g.check_url("http://10.200.0.1/").is_ok());
        assert!(g.check_url("http://127.0.0.2/").is_err());
        assert!(g.check_url("http://localhost/").is_ok());
        assert!(Guard::new(&["not a host/x".into()]).is_err());
        assert!(Guard::new(&["10.0.0.0/33".into()]).is_err());
    }

    #[tokio::test]
    async fn names_resolving_to_internal_addresses_are_refused_at_connection() {
        use reqwest::dns::Resolve;
        use std::str::FromStr;
        let strict = GuardedResolver {
            guard: Arc::new(Guard::new(&[]).unwrap()),
        };
        let name = reqwest::dns::Name::from_str("localhost").unwrap();
        let err = strict
            .resolve(name)
            .await
            .err()
            .expect("localhost is refused");
        assert!(
            err.to_string()
                .contains("no address outbound requests may reach"),
            "{err}"
        );
        let allowed = GuardedResolver {
            guard: Arc::new(Guard::new(&["127.0.0.0/8".into(), "::1/128".into()]).unwrap()),
        };
        let name = reqwest::dns::Name::from_str("localhost").unwrap();
        let addrs: Vec<SocketAddr> = allowed.resolve(name).await.expect("allowed").collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
