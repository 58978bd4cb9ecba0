//! `[[pools]]`: the address pools IPAM hands VIPs out of (what they hold; allocating from
//! them is IPAM's job, in `compile::ipam`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::Deserialize;

use super::de::{de_nets, de_ranges};

/// An inclusive address range `a-b` of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpRange {
    /// First address.
    pub start: IpAddr,
    /// Last address (same family, not below `start`).
    pub end: IpAddr,
}

impl IpRange {
    /// Parses `a-b` (spaces around `-` allowed).
    pub fn parse(s: &str) -> Result<IpRange, String> {
        let Some((a, b)) = s.split_once('-') else {
            return Err(format!(
                "{s:?} is not a range; write it as \"10.99.0.100-10.99.0.120\" (or list a CIDR under `cidrs`)"
            ));
        };
        let start: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{:?} in range {s:?} is not an IP address", a.trim()))?;
        let end: IpAddr = b
            .trim()
            .parse()
            .map_err(|_| format!("{:?} in range {s:?} is not an IP address", b.trim()))?;
        if start.is_ipv4() != end.is_ipv4() {
            return Err(format!(
                "range {s:?} mixes IPv4 and IPv6; use one range per family"
            ));
        }
        if ip_to_u128(end) < ip_to_u128(start) {
            return Err(format!(
                "range {s:?} ends before it starts; write it as \"{end}-{start}\""
            ));
        }
        Ok(IpRange { start, end })
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.start.is_ipv4()
            && (ip_to_u128(self.start)..=ip_to_u128(self.end)).contains(&ip_to_u128(ip))
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// `[[pools]]`: addresses IPAM hands out as VIPs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// A unique name.
    pub name: String,
    /// Networks (`10.99.0.96/27`, `fd00:99::100/120`). In IPv4 networks of /30 and larger
    /// the network and broadcast addresses are not handed out; in IPv6 networks of /126 and
    /// larger the all-zero (subnet-router anycast) address is not.
    #[serde(default, deserialize_with = "de_nets")]
    pub cidrs: Vec<IpNet>,
    /// Inclusive ranges (`10.99.0.100-10.99.0.120`); every address is handed out.
    #[serde(default, deserialize_with = "de_ranges")]
    pub ranges: Vec<IpRange>,
    /// Namespaces whose Services may use the pool. Default: all.
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    /// Whether IPAM picks addresses from this pool for Services that request none; when false
    /// the pool serves only explicitly requested addresses. Default: true.
    #[serde(default = "default_true")]
    pub auto_assign: bool,
}

fn default_true() -> bool {
    true
}

impl PoolConfig {
    /// Whether `ip` is one of the pool's addresses.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.blocks()
            .iter()
            .any(|&(lo, hi, v6)| v6 == ip.is_ipv6() && (lo..=hi).contains(&ip_to_u128(ip)))
    }

    /// Whether Services of `namespace` may use the pool.
    pub fn allows_namespace(&self, namespace: &str) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|ns| ns.iter().any(|n| n == namespace))
    }

    /// The pool's usable addresses as inclusive `(first, last, is_v6)` integer blocks.
    pub(crate) fn blocks(&self) -> Vec<(u128, u128, bool)> {
        let mut out = Vec::with_capacity(self.cidrs.len() + self.ranges.len());
        for n in &self.cidrs {
            let (lo, hi) = (ip_to_u128(n.network()), ip_to_u128(n.broadcast()));
            let b = match n {
                IpNet::V4(n) if n.prefix_len() <= 30 => (lo + 1, hi - 1, false),
                IpNet::V4(_) => (lo, hi, false),
                IpNet::V6(n) if n.prefix_len() <= 126 => (lo + 1, hi, true),
                IpNet::V6(_) => (lo, hi, true),
            };
            out.push(b);
        }
        for r in &self.ranges {
            out.push((ip_to_u128(r.start), ip_to_u128(r.end), r.start.is_ipv6()));
        }
        out
    }
}

/// An address as a 128-bit integer (IPv4 in the low 32 bits).
pub(crate) fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The inverse of [`ip_to_u128`].
pub(crate) fn u128_to_ip(a: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        IpAddr::V4(Ipv4Addr::from(a as u32))
    }
}
