//! The client's address: the TCP peer, or, when the peer is a configured trusted proxy,
//! the nearest address in `Forwarded` / `X-Forwarded-For` that is not itself a trusted
//! proxy. Headers from anyone else are ignored, so a client cannot choose its address.

use std::net::IpAddr;

use axum::http::HeaderMap;
use axum::http::request::Parts;

use crate::state::AppState;

/// An address range, `10.0.0.0/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Self> {
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|&n| n <= max)?,
            None => max,
        };
        Some(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Parses `http.trusted_proxies`.
pub fn parse_all(list: &[String]) -> anyhow::Result<Vec<Cidr>> {
    list.iter()
        .map(|s| {
            Cidr::parse(s).ok_or_else(|| {
                anyhow::anyhow!("http.trusted_proxies: '{s}' is not an address or range")
            })
        })
        .collect()
}

/// The forwarding chain a proxy reports, nearest hop last.
fn forwarded_chain(headers: &HeaderMap) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for v in headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for element in v.split(',') {
            for pair in element.split(';') {
                if let Some((k, val)) = pair.trim().split_once('=')
                    && k.trim().eq_ignore_ascii_case("for")
                {
                    let val = val.trim().trim_matches('"');
                    let host = match val.strip_prefix('[') {
                        Some(rest) => rest.split(']').next().unwrap_or(""),
                        None => val.split(':').next().unwrap_or(""),
                    };
                    if let Ok(ip) = host.parse() {
                        out.push(ip);
                    }
                }
            }
        }
    }
    if out.is_empty() {
        for v in headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            out.extend(v.split(',').filter_map(|s| s.trim().parse::<IpAddr>().ok()));
        }
    }
    out
}

/// The client address for a peer and headers, given the trusted proxies.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    if !trusted.iter().any(|c| c.contains(peer)) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_chain(headers).into_iter().rev() {
        client = hop;
        if !trusted.iter().any(|c| c.contains(hop)) {
            break;
        }
    }
    client
}

/// The client address of a request, as text.
pub fn client_ip(parts: &Parts, state: &AppState) -> Option<String> {
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()?
        .0
        .ip();
    Some(resolve(peer, &parts.headers, &state.trusted_proxies).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|_| unreachable!()),
                v.parse().unwrap_or_else(|_| unreachable!()),
            );
        }
        m
    }

    #[test]
    fn only_trusted_peers_may_forward() {
        let trusted = parse_all(&["10.0.0.0/8".into(), "::1".into()]).unwrap_or_default();
        let xff = h(&[("x-forwarded-for", "203.0.113.7, 10.1.2.3")]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or_else(|_| unreachable!());
        assert_eq!(resolve(ip("10.0.0.1"), &xff, &trusted), ip("203.0.113.7"));
        assert_eq!(
            resolve(ip("198.51.100.1"), &xff, &trusted),
            ip("198.51.100.1"),
            "untrusted peer"
        );
        let spoof = h(&[("x-forwarded-for", "1.1.1.1, 203.0.113.7")]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &spoof, &trusted),
            ip("203.0.113.7"),
            "the nearest untrusted hop"
        );
        let fwd = h(&[(
            "forwarded",
            "for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.2",
        )]);
        assert_eq!(resolve(ip("::1"), &fwd, &trusted), ip("2001:db8::1"));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nonsense").is_none());
        assert!(Cidr::parse("::ffff:0:0/96").is_some());
        assert!(Cidr::parse("10.0.0.0/8").is_some_and(|c| c.contains(ip("::ffff:10.9.9.9"))));
    }
}
