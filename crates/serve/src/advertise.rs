//! [`Advertise`]: the address a server registers, and the detection of a
//! routable address of this host for a wildcard bind.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

use tracing::{info, warn};

use crate::{Error, ErrorKind};

/// The address clients should use, `HOST[:PORT]`: what `--advertise` takes.
/// Without a port the bound port is used.
///
/// A wildcard (`0.0.0.0`, `::`) is rejected: it is where a server listens,
/// not an address anyone can connect to.
///
/// ```
/// use etcdlb_serve::Advertise;
///
/// let a = Advertise::parse("game-1.internal").unwrap();
/// assert_eq!(a.address(50051), "game-1.internal:50051");
/// assert_eq!(Advertise::parse("10.0.0.5:7000").unwrap().address(50051), "10.0.0.5:7000");
/// assert_eq!(Advertise::parse("2001:db8::1").unwrap().address(1), "[2001:db8::1]:1");
/// assert!(Advertise::parse("0.0.0.0:50051").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advertise {
    /// A host name or an IP address, IPv6 in brackets.
    host: String,
    port: Option<u16>,
}

const EXPECTED: &str =
    "expected HOST or HOST:PORT, such as 10.0.0.5, game-1.internal:50051 or [2001:db8::1]:50051";

impl Advertise {
    /// Parses `HOST`, `HOST:PORT`, `[IPv6]`, `[IPv6]:PORT` or a bare IPv6
    /// address; the error ([`ErrorKind::InvalidConfig`]) is one line that
    /// says what is expected.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::new(ErrorKind::InvalidConfig, format!("{why}: {EXPECTED}"));
        let s = s.trim();
        if s.is_empty() {
            return Err(bad("empty address"));
        }
        let (ip, port) = if let Ok(socket) = s.parse::<SocketAddr>() {
            (Some(socket.ip()), Some(socket.port()))
        } else if let Ok(ip) = s.parse::<IpAddr>() {
            (Some(ip), None)
        } else if let Some(ip) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let ip = ip
                .parse::<Ipv6Addr>()
                .map_err(|_| bad("not an IPv6 address in the brackets"))?;
            (Some(IpAddr::V6(ip)), None)
        } else {
            let (host, port) = match s.rsplit_once(':') {
                Some((host, port)) => {
                    let port = port
                        .parse::<u16>()
                        .map_err(|_| bad("the port must be a number from 1 to 65535"))?;
                    (host, Some(port))
                }
                None => (s, None),
            };
            if !is_host_name(host) {
                return Err(bad(
                    "not a host name or an IP address (IPv6 with a port needs brackets)",
                ));
            }
            if port == Some(0) {
                return Err(bad("port 0 is not a port clients can connect to"));
            }
            return Ok(Self {
                host: host.to_owned(),
                port,
            });
        };
        let ip = ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        if ip.is_unspecified() {
            return Err(bad(&format!(
                "{ip} is a wildcard, where a server listens, not an address clients can connect to"
            )));
        }
        if port == Some(0) {
            return Err(bad("port 0 is not a port clients can connect to"));
        }
        Ok(Self {
            host: SocketAddr::new(ip, 0)
                .to_string()
                .trim_end_matches(":0")
                .to_owned(),
            port,
        })
    }

    /// The `host:port` to register, with `bound_port` when no port was
    /// given.
    pub fn address(&self, bound_port: u16) -> String {
        format!("{}:{}", self.host, self.port.unwrap_or(bound_port))
    }
}

impl FromStr for Advertise {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl fmt::Display for Advertise {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// The address to register for a server bound to `bound`: `advertise` if
/// given; else `bound` itself, unless it is a wildcard, in which case a
/// routable address of this host ([`detect_host_address`]) with the bound
/// port. Never a wildcard.
///
/// ```
/// use std::net::SocketAddr;
/// use etcdlb_serve::{Advertise, advertised_address};
///
/// let bound: SocketAddr = "127.0.0.1:41234".parse().unwrap();
/// assert_eq!(advertised_address(bound, None), "127.0.0.1:41234");
/// let host = Advertise::parse("game-1.internal").unwrap();
/// assert_eq!(advertised_address(bound, Some(&host)), "game-1.internal:41234");
/// let any: SocketAddr = "0.0.0.0:41234".parse().unwrap();
/// assert!(!advertised_address(any, None).starts_with("0.0.0.0"));
/// ```
pub fn advertised_address(bound: SocketAddr, advertise: Option<&Advertise>) -> String {
    if let Some(advertise) = advertise {
        return advertise.address(bound.port());
    }
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let detected = detect_host_address(bound.is_ipv6());
    let address = SocketAddr::new(detected, bound.port());
    if detected.is_loopback() {
        warn!(
            bound = %bound,
            "no network interface other than loopback: registering {address}, which only this \
             host can reach (give --advertise HOST to register another)"
        );
    } else {
        info!(bound = %bound, "wildcard bind: registering this host's address {address}");
    }
    address.to_string()
}

/// A routable address of this host: the first address of an interface that
/// is up, neither loopback nor link-local (those need a zone or stay on one
/// link). IPv4 first for an IPv4 wildcard; for `::` (dual stack on Linux) a
/// global IPv6 address first, else IPv4. Loopback only when nothing else
/// exists.
///
/// ```
/// let ip = etcdlb_serve::detect_host_address(false);
/// assert!(!ip.is_unspecified());
/// ```
pub fn detect_host_address(prefer_ipv6: bool) -> IpAddr {
    let candidates: Vec<IpAddr> = match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces
            .into_iter()
            .filter(|i| !i.is_loopback() && i.is_oper_up())
            .map(|i| i.ip())
            .filter(|ip| routable(*ip))
            .collect(),
        Err(e) => {
            warn!(error = %e, "cannot list this host's network interfaces");
            Vec::new()
        }
    };
    let first = |v6: bool| candidates.iter().copied().find(|ip| ip.is_ipv6() == v6);
    let found = if prefer_ipv6 {
        first(true).or_else(|| first(false))
    } else {
        first(false)
    };
    found.unwrap_or(if prefer_ipv6 {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    })
}

fn routable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified()),
        IpAddr::V6(v6) => {
            // fe80::/10
            let link_local = v6.segments()[0] & 0xffc0 == 0xfe80;
            !(v6.is_loopback() || v6.is_unspecified() || link_local || v6.is_multicast())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        Advertise::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn hosts_ips_and_ports_are_accepted() {
        for (given, registered) in [
            ("10.0.0.5", "10.0.0.5:9"),
            ("10.0.0.5:7000", "10.0.0.5:7000"),
            ("game-1.svc.local", "game-1.svc.local:9"),
            ("game-1.svc.local:80", "game-1.svc.local:80"),
            ("localhost", "localhost:9"),
            ("[::1]", "[::1]:9"),
            ("[::1]:80", "[::1]:80"),
            ("fd00::2", "[fd00::2]:9"),
            (" 127.0.0.1:1 ", "127.0.0.1:1"),
        ] {
            let a = Advertise::parse(given).unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(a.address(9), registered, "{given}");
        }
    }

    #[test]
    fn wildcards_are_never_advertised() {
        assert_eq!(
            err("0.0.0.0"),
            format!(
                "0.0.0.0 is a wildcard, where a server listens, not an address clients can \
                 connect to: {EXPECTED}"
            )
        );
        assert!(err("[::]:50051").starts_with(":: is a wildcard"));
        assert!(err("::").starts_with(":: is a wildcard"));
    }

    #[test]
    fn bad_values_say_what_is_expected_in_one_line() {
        for (given, why) in [
            ("", "empty address"),
            ("h:0", "port 0 is not a port clients can connect to"),
            ("127.0.0.1:0", "port 0 is not a port clients can connect to"),
            ("h:x", "the port must be a number from 1 to 65535"),
            ("h:70000", "the port must be a number from 1 to 65535"),
            (
                "a b",
                "not a host name or an IP address (IPv6 with a port needs brackets)",
            ),
            (
                "http://h:1",
                "not a host name or an IP address (IPv6 with a port needs brackets)",
            ),
            ("[nope]", "not an IPv6 address in the brackets"),
            (
                "-h",
                "not a host name or an IP address (IPv6 with a port needs brackets)",
            ),
        ] {
            assert_eq!(err(given), format!("{why}: {EXPECTED}"), "{given:?}");
        }
    }

    #[test]
    fn a_wildcard_bind_registers_one_of_this_hosts_addresses() {
        let interfaces: Vec<IpAddr> = if_addrs::get_if_addrs()
            .expect("list interfaces")
            .into_iter()
            .map(|i| i.ip())
            .collect();
        for bound in ["0.0.0.0:4000", "[::]:4000"] {
            let bound: SocketAddr = bound.parse().unwrap();
            let registered: SocketAddr = advertised_address(bound, None)
                .parse()
                .expect("an IP address and a port");
            assert_eq!(registered.port(), 4000);
            assert!(!registered.ip().is_unspecified(), "{registered}");
            assert!(
                interfaces.contains(&registered.ip()),
                "{registered} is not among this host's addresses {interfaces:?}"
            );
            // Loopback only when the host has nothing else.
            if interfaces.iter().any(|ip| routable(*ip)) {
                assert!(!registered.ip().is_loopback(), "{registered}");
            }
        }
    }

    #[test]
    fn link_local_and_loopback_are_not_routable() {
        for ip in ["127.0.0.1", "::1", "fe80::1", "169.254.1.1", "0.0.0.0"] {
            assert!(!routable(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["192.0.2.2", "fd00::2", "2001:db8::1", "10.1.2.3"] {
            assert!(routable(ip.parse().unwrap()), "{ip}");
        }
    }
}
