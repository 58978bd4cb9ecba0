//! What to announce: from the addresses the daemon wants announced (VIPs with their pool, the
//! host's NAT addresses) to a deterministic set of prefixes with BGP attributes.
//!
//! A VIP is announced as a /32 or /128, or as its covering prefix when its pool's
//! advertisement sets an aggregation length (MetalLB's `aggregationLength`). Several VIPs of
//! one aggregate become one prefix whose attributes are merged: the union of the communities
//! and the highest local preference. NAT addresses and VIPs without a pool are host routes
//! without attributes. The set is ordered, so equal inputs render byte-identical configs and
//! "nothing changed" is a plain comparison.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::bgp::{AdvertisementConfig, BgpConfig, Community, LargeCommunity};

/// One address the daemon wants announced.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Announcement {
    /// The address (a VIP or a NAT address).
    pub addr: IpAddr,
    /// The pool the VIP came from; `None` for NAT addresses and VIPs outside every pool.
    pub pool: Option<String>,
    /// A peer host's NAT address, announced with a longer AS path ([`BACKUP_PREPEND`]) so
    /// that routers prefer the peer's own announcement while it lives (flow sync).
    pub backup: bool,
}

/// How many times a backup announcement prepends the local ASN.
pub const BACKUP_PREPEND: u8 = 3;

impl Announcement {
    /// A VIP of `pool`.
    pub fn vip(addr: IpAddr, pool: &str) -> Announcement {
        Announcement {
            addr,
            pool: Some(pool.to_owned()),
            backup: false,
        }
    }

    /// A host address (NAT source address, or a VIP outside every pool).
    pub fn host(addr: IpAddr) -> Announcement {
        Announcement {
            addr,
            pool: None,
            backup: false,
        }
    }

    /// A peer host's NAT address, as a backup (flow sync's NAT address takeover).
    pub fn backup(addr: IpAddr) -> Announcement {
        Announcement {
            addr,
            pool: None,
            backup: true,
        }
    }
}

/// BGP attributes of one announced prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteAttrs {
    /// Standard communities.
    pub communities: BTreeSet<Community>,
    /// Large communities.
    pub large_communities: BTreeSet<LargeCommunity>,
    /// LOCAL_PREF (iBGP only).
    pub local_preference: Option<u32>,
    /// Prepend the local ASN this many times (0: none): a backup route.
    pub prepend: u8,
}

impl RouteAttrs {
    fn merge(&mut self, a: &AdvertisementConfig) {
        self.communities.extend(a.communities.iter().copied());
        self.large_communities
            .extend(a.large_communities.iter().copied());
        self.local_preference = match (self.local_preference, a.local_preference) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
    }
}

/// The prefixes to announce, with their attributes, in a fixed order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixSet {
    routes: BTreeMap<IpNet, RouteAttrs>,
    /// The local ASN (what a backup route prepends).
    asn: u32,
}

impl PrefixSet {
    /// The prefixes for `wanted` under `cfg`'s advertisements.
    pub fn build(cfg: &BgpConfig, wanted: &[Announcement]) -> PrefixSet {
        let mut routes: BTreeMap<IpNet, RouteAttrs> = BTreeMap::new();
        for w in wanted {
            let adv = w.pool.as_deref().and_then(|p| {
                cfg.advertisements
                    .iter()
                    .find(|a| a.pools.iter().any(|x| x == p))
            });
            let len = match (w.addr, adv) {
                (IpAddr::V4(_), Some(a)) => a.aggregation_length,
                (IpAddr::V6(_), Some(a)) => a.aggregation_length_v6,
                (IpAddr::V4(_), None) => 32,
                (IpAddr::V6(_), None) => 128,
            };
            // `validate` bounds the lengths; a host route is the safe fallback.
            let net = IpNet::new(w.addr, len)
                .map(|n| n.trunc())
                .unwrap_or_else(|_| IpNet::from(w.addr));
            let attrs = routes.entry(net).or_default();
            if let Some(a) = adv {
                attrs.merge(a);
            }
            if w.backup {
                attrs.prepend = BACKUP_PREPEND;
            }
        }
        PrefixSet {
            routes,
            asn: cfg.asn,
        }
    }

    /// The local ASN the set was built for.
    pub fn asn(&self) -> u32 {
        self.asn
    }

    /// The prefixes and their attributes, IPv4 before IPv6, each in address order.
    pub fn iter(&self) -> impl Iterator<Item = (&IpNet, &RouteAttrs)> {
        self.routes.iter()
    }

    /// The prefixes alone.
    pub fn prefixes(&self) -> Vec<IpNet> {
        self.routes.keys().copied().collect()
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether nothing is announced.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BgpConfig {
        toml::from_str(
            r#"
asn = 64512
[[peers]]
address = "10.98.0.1"
asn = 65000
[[advertisements]]
pools = ["agg"]
communities = ["65000:1"]
local_preference = 100
aggregation_length = 24
aggregation_length_v6 = 64
[[advertisements]]
pools = ["tagged"]
communities = ["65000:2", "no-export"]
large_communities = ["64512:7:9"]
local_preference = 300
"#,
        )
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn host_routes_and_aggregates() {
        let c = cfg();
        let set = PrefixSet::build(
            &c,
            &[
                Announcement::vip(ip("10.98.0.100"), "plain"),
                Announcement::vip(ip("10.98.5.7"), "agg"),
                Announcement::vip(ip("10.98.5.9"), "agg"),
                Announcement::vip(ip("fd00:98::100"), "agg"),
                Announcement::host(ip("10.98.0.21")),
                Announcement::vip(ip("fd00:98::7"), "tagged"),
            ],
        );
        let got: Vec<String> = set.prefixes().iter().map(|p| p.to_string()).collect();
        assert_eq!(
            got,
            [
                "10.98.0.21/32",
                "10.98.0.100/32",
                "10.98.5.0/24",
                "fd00:98::/64",
                "fd00:98::7/128"
            ]
        );
        let attrs: BTreeMap<String, RouteAttrs> = set
            .iter()
            .map(|(p, a)| (p.to_string(), a.clone()))
            .collect();
        assert_eq!(attrs["10.98.0.100/32"], RouteAttrs::default());
        assert_eq!(attrs["10.98.0.21/32"], RouteAttrs::default());
        assert_eq!(
            attrs["10.98.5.0/24"].communities,
            BTreeSet::from([Community(65000, 1)])
        );
        let t = &attrs["fd00:98::7/128"];
        assert_eq!(t.local_preference, Some(300));
        assert_eq!(
            t.communities,
            BTreeSet::from([Community(65000, 2), Community(65535, 65281)])
        );
        assert_eq!(
            t.large_communities,
            BTreeSet::from([LargeCommunity(64512, 7, 9)])
        );
    }

    #[test]
    fn a_shared_aggregate_merges_attributes() {
        let mut c = cfg();
        c.advertisements[1].aggregation_length = 24;
        let set = PrefixSet::build(
            &c,
            &[
                Announcement::vip(ip("10.98.5.7"), "agg"),
                Announcement::vip(ip("10.98.5.8"), "tagged"),
            ],
        );
        assert_eq!(set.len(), 1);
        let (_, a) = set.iter().next().unwrap();
        assert_eq!(a.local_preference, Some(300));
        assert_eq!(a.communities.len(), 3);
    }

    #[test]
    fn order_of_input_does_not_matter() {
        let c = cfg();
        let mut w = vec![
            Announcement::vip(ip("10.98.0.101"), "plain"),
            Announcement::vip(ip("10.98.0.100"), "tagged"),
            Announcement::host(ip("fd00:98::21")),
        ];
        let a = PrefixSet::build(&c, &w);
        w.reverse();
        assert_eq!(a, PrefixSet::build(&c, &w));
        assert!(PrefixSet::build(&c, &[]).is_empty());
    }
}
