//! # IPAM: VIPs for Services
//!
//! [`Ipam::assign`] gives every served Service one VIP per family of
//! [`Service::families`], from the `[[pools]]` of the configuration. It is deterministic (the
//! same inputs give the same VIPs on every Sluice host) and stable (a Service keeps its VIP for
//! as long as it keeps being served).
//!
//! ## Rules
//! Three passes over the Services in namespace/name order; each pass runs for every Service
//! before the next starts:
//! 1. **Held.** The address this IPAM assigned in its last run, else the one in
//!    `status.loadBalancer.ingress` (so a restarted Sluice keeps every VIP), if it is still in a
//!    pool the Service may use and not held by a Service it may not share with. When the
//!    Service requests an address for the family, only that address can be held. Holding comes
//!    first, so nothing ever takes a running Service's VIP away.
//! 2. **Requested.** `sluice.dev/load-balancer-ips` (comma-separated, at most one per family),
//!    then `spec.loadBalancerIP`. Honoured when the address is in a pool open to the namespace
//!    (and the pool the Service selects, if any) and free or shareable; otherwise the family
//!    stays without a VIP and an [`Issue`] says why. A request that cannot be read (not an
//!    address, a family the Service does not have, two addresses of one family) leaves the
//!    whole Service without VIPs ([`IssueReason::InvalidRequest`]): Sluice does not guess
//!    what was meant, and an automatic address would have to be taken back once the request
//!    is fixed.
//! 3. **Automatic.** A Service with a sharing key first joins an address that a Service with the
//!    same key holds, if their ports do not clash. Otherwise it gets the first free address of
//!    the first eligible pool in configuration order: the pool named by
//!    `sluice.dev/address-pool`, or else any `auto_assign` pool, open to the namespace.
//!
//! **Pools** are chosen per Service: `namespaces` restricts a pool to some namespaces, and the
//! annotation `sluice.dev/address-pool: <name>` selects one pool (it may be an
//! `auto_assign = false` pool, which serves only Services that ask for it). That is how
//! "internal" and "external" address ranges coexist.
//!
//! **Sharing.** Two Services share an address when both carry `sluice.dev/allow-shared-ip`
//! with the same value and no protocol/port pair appears in both (as MetalLB does). The
//! dataplane keys frontends by VIP, protocol and port, so shared VIPs need nothing else.
//!
//! **Follower mode** ([`Ipam::set_follow_status`]): an instance that is not the Kubernetes
//! leader assigns nothing itself; it serves exactly the addresses of
//! `status.loadBalancer.ingress` that pass the same checks, so several Sluice hosts serve what
//! the leader wrote.
//!
//! **Release.** A Service that is deleted, or stops being served (type or class changed),
//! is not in the next run's input: its addresses are free for others at once.
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{u128_to_ip, PoolConfig};
use crate::model::{IpFamily, L4Protocol, ObjectKey, Service};

/// Annotation: requested VIPs, comma-separated, at most one per family.
pub const ANNOTATION_IPS: &str = "sluice.dev/load-balancer-ips";
/// Annotation: the pool to take the Service's VIPs from (by `[[pools]]` name).
pub const ANNOTATION_POOL: &str = "sluice.dev/address-pool";
/// Annotation: a sharing key; Services with the same key may share a VIP when their ports do
/// not clash.
pub const ANNOTATION_SHARING: &str = "sluice.dev/allow-shared-ip";

/// Why a Service lacks a VIP (or has a questionable one). The names are the `reason` of the
/// Kubernetes Events Sluice records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum IssueReason {
    /// The requested address is in no pool.
    RequestedIPOutsidePools,
    /// The requested address is in a pool the Service may not use (namespace or pool
    /// annotation).
    RequestedIPNotAllowed,
    /// The requested address is held by a Service it may not share with.
    RequestedIPUnavailable,
    /// A request annotation is malformed, names the wrong family, or asks twice for a family.
    InvalidRequest,
    /// `sluice.dev/address-pool` names a pool that does not exist.
    UnknownPool,
    /// No pool is open to the Service (namespace, family, auto-assign).
    NoPool,
    /// Every eligible pool is full.
    PoolExhausted,
    /// `status.loadBalancer.ingress` lists an address that is not (or no longer) assigned.
    StatusMismatch,
    /// This instance follows the leader and status has no VIP for the family yet.
    AwaitingLeader,
}

impl IssueReason {
    /// The reason as Kubernetes Events spell it (`PoolExhausted`).
    pub fn as_str(self) -> &'static str {
        match self {
            IssueReason::RequestedIPOutsidePools => "RequestedIPOutsidePools",
            IssueReason::RequestedIPNotAllowed => "RequestedIPNotAllowed",
            IssueReason::RequestedIPUnavailable => "RequestedIPUnavailable",
            IssueReason::InvalidRequest => "InvalidIPRequest",
            IssueReason::UnknownPool => "UnknownPool",
            IssueReason::NoPool => "NoPool",
            IssueReason::PoolExhausted => "PoolExhausted",
            IssueReason::StatusMismatch => "StatusMismatch",
            IssueReason::AwaitingLeader => "AwaitingLeader",
        }
    }
}

impl fmt::Display for IssueReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One IPAM finding about a Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Issue {
    /// Machine-readable reason.
    pub reason: IssueReason,
    /// What is wrong and what to do, for operators.
    pub message: String,
}

/// The result of one [`Ipam::assign`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// VIPs per served Service, in the order of its families (missing families are left out).
    pub vips: BTreeMap<ObjectKey, Vec<IpAddr>>,
    /// Findings per Service (only Services with findings have an entry).
    pub issues: BTreeMap<ObjectKey, Vec<Issue>>,
}

/// The allocator. It remembers its last assignment, which is what keeps VIPs stable.
#[derive(Debug, Default, Clone)]
pub struct Ipam {
    last: Arc<Assignment>,
    follow_status: bool,
}

/// The VIPs one Service got, by family.
#[derive(Debug, Clone, Copy, Default)]
struct Got([Option<IpAddr>; 2]);

impl Got {
    fn slot(f: IpFamily) -> usize {
        match f {
            IpFamily::V4 => 0,
            IpFamily::V6 => 1,
        }
    }
    fn get(&self, f: &IpFamily) -> Option<IpAddr> {
        self.0[Self::slot(*f)]
    }
    fn contains_key(&self, f: &IpFamily) -> bool {
        self.get(f).is_some()
    }
    fn insert(&mut self, f: IpFamily, ip: IpAddr) {
        self.0[Self::slot(f)] = Some(ip);
    }
}

/// Who holds an address.
struct Holder<'a> {
    first: &'a ObjectKey,
    sharing: Option<&'a str>,
    /// The first holder's ports.
    ports: &'a [(L4Protocol, u16)],
    /// Ports of Services that joined.
    more: Vec<(L4Protocol, u16)>,
}

/// What a Service brings to IPAM, computed once per run.
struct Want<'a> {
    svc: &'a Service,
    families: Vec<IpFamily>,
    requests: BTreeMap<IpFamily, (IpAddr, &'static str)>,
    pool: Option<&'a str>,
    sharing: Option<&'a str>,
    ports: Vec<(L4Protocol, u16)>,
    /// A request could not be read: the Service gets no VIP until it is fixed.
    invalid_request: bool,
}

impl Ipam {
    /// An allocator with no memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// VIPs of the last run, per Service.
    pub fn assigned(&self) -> &BTreeMap<ObjectKey, Vec<IpAddr>> {
        &self.last.vips
    }

    /// Follower mode: take VIPs only from `status.loadBalancer.ingress`, allocate nothing.
    pub fn set_follow_status(&mut self, follow: bool) {
        self.follow_status = follow;
    }

    /// Whether the allocator is in follower mode.
    pub fn follows_status(&self) -> bool {
        self.follow_status
    }

    /// Assigns VIPs to `served` (which must be sorted by namespace/name, as [`crate::model::
    /// Model::services`] iterates) from `pools`.
    pub fn assign(&mut self, pools: &[PoolConfig], served: &[&Service]) -> Arc<Assignment> {
        let mut issues: BTreeMap<ObjectKey, Vec<Issue>> = BTreeMap::new();
        let wants: Vec<Want<'_>> = served
            .iter()
            .map(|svc| {
                let mut is = Vec::new();
                let w = want(svc, pools, &mut is);
                if !is.is_empty() {
                    issues.insert(svc.key.clone(), is);
                }
                w
            })
            .collect();
        // Pool membership without allocating per lookup.
        let blocks: Vec<Vec<(u128, u128, bool)>> = pools.iter().map(PoolConfig::blocks).collect();
        let contains = |i: usize, ip: IpAddr| {
            let a = crate::config::ip_to_u128(ip);
            blocks[i]
                .iter()
                .any(|&(lo, hi, v6)| v6 == ip.is_ipv6() && (lo..=hi).contains(&a))
        };
        let mut used: HashMap<IpAddr, Holder<'_>> = HashMap::new();
        let mut got: Vec<Got> = vec![Got::default(); wants.len()];

        // 1. Held addresses. The last assignment is sorted like `wants`: walk it alongside.
        let mut last = self.last.vips.iter().peekable();
        for (i, w) in wants.iter().enumerate() {
            while last.next_if(|(k, _)| **k < w.svc.key).is_some() {}
            let previous: &[IpAddr] = last
                .next_if(|(k, _)| **k == w.svc.key)
                .map_or(&[], |(_, v)| v.as_slice());
            if w.invalid_request && !self.follow_status {
                continue;
            }
            for &fam in &w.families {
                let status = w.svc.ingress_ips.iter().copied();
                let none: &[IpAddr] = &[];
                let (from_last, from_status, only): (&[IpAddr], bool, Option<IpAddr>) =
                    if self.follow_status {
                        (none, true, None)
                    } else if let Some((req, _)) = w.requests.get(&fam) {
                        let held = previous.contains(req) || w.svc.ingress_ips.contains(req);
                        (none, false, held.then_some(*req))
                    } else {
                        (previous, true, None)
                    };
                let mut candidates = only
                    .into_iter()
                    .chain(from_last.iter().copied())
                    .chain(status.filter(|_| from_status));
                let pick = candidates.find(|ip| {
                    IpFamily::of(*ip) == fam
                        && (0..pools.len()).any(|p| contains(p, *ip) && may_use(&pools[p], w))
                        && used.get(ip).is_none_or(|h| may_join(h, w).is_ok())
                });
                if let Some(ip) = pick {
                    take(&mut used, ip, w);
                    got[i].insert(fam, ip);
                }
            }
        }

        if !self.follow_status {
            // 2. Explicit requests.
            for (i, w) in wants.iter().enumerate().filter(|(_, w)| !w.invalid_request) {
                for (&fam, &(ip, source)) in &w.requests {
                    if got[i].contains_key(&fam) {
                        continue;
                    }
                    let is = issues.entry(w.svc.key.clone()).or_default();
                    let Some(p) = (0..pools.len())
                        .find(|p| contains(*p, ip))
                        .map(|p| &pools[p])
                    else {
                        is.push(Issue {
                            reason: IssueReason::RequestedIPOutsidePools,
                            message: format!(
                                "requested IP {ip} ({source}) is outside every pool; add it to a [[pools]] entry or request an address from one"
                            ),
                        });
                        continue;
                    };
                    if !p.allows_namespace(&w.svc.key.namespace) {
                        is.push(Issue {
                            reason: IssueReason::RequestedIPNotAllowed,
                            message: format!(
                                "requested IP {ip} ({source}) is in pool {:?}, which is not open to namespace {:?}; add the namespace to its namespaces",
                                p.name, w.svc.key.namespace
                            ),
                        });
                        continue;
                    }
                    if let Some(want_pool) = w.pool.filter(|n| *n != p.name) {
                        is.push(Issue {
                            reason: IssueReason::RequestedIPNotAllowed,
                            message: format!(
                                "requested IP {ip} ({source}) is in pool {:?}, but annotation {ANNOTATION_POOL} selects pool {want_pool:?}; request an address of that pool or change the annotation",
                                p.name
                            ),
                        });
                        continue;
                    }
                    if let Some(h) = used.get(&ip) {
                        if let Err(why) = may_join(h, w) {
                            is.push(Issue {
                                reason: IssueReason::RequestedIPUnavailable,
                                message: format!(
                                    "requested IP {ip} ({source}) is already used by Service {why}; request another address"
                                ),
                            });
                            continue;
                        }
                    }
                    take(&mut used, ip, w);
                    got[i].insert(fam, ip);
                }
            }

            // 3. Automatic assignment.
            let mut scan_from: HashMap<(&str, bool), usize> = HashMap::new();
            for (i, w) in wants.iter().enumerate().filter(|(_, w)| !w.invalid_request) {
                for &fam in &w.families {
                    if got[i].contains_key(&fam) || w.requests.contains_key(&fam) {
                        continue;
                    }
                    if w.pool.is_some_and(|n| !pools.iter().any(|p| p.name == n)) {
                        continue; // reported by want()
                    }
                    let v6 = fam == IpFamily::V6;
                    let eligible: Vec<usize> = (0..pools.len())
                        .filter(|&i| {
                            let p = &pools[i];
                            blocks[i].iter().any(|b| b.2 == v6)
                                && may_use(p, w)
                                && (w.pool.is_some() || p.auto_assign)
                        })
                        .collect();
                    let is = issues.entry(w.svc.key.clone()).or_default();
                    if eligible.is_empty() {
                        is.push(Issue {
                            reason: IssueReason::NoPool,
                            message: match w.pool {
                                Some(n) => format!(
                                    "no {} VIP: pool {n:?} (annotation {ANNOTATION_POOL}) has no {} addresses or is not open to namespace {:?}",
                                    fam.name(),
                                    fam.name(),
                                    w.svc.key.namespace
                                ),
                                None => format!(
                                    "no {} VIP: no auto-assign pool with {} addresses is open to namespace {:?}; add one to [[pools]]",
                                    fam.name(),
                                    fam.name(),
                                    w.svc.key.namespace
                                ),
                            },
                        });
                        continue;
                    }
                    let shared = w.sharing.and_then(|_| {
                        used.iter()
                            .filter(|(ip, h)| {
                                IpFamily::of(**ip) == fam
                                    && h.sharing == w.sharing
                                    && eligible.iter().any(|p| contains(*p, **ip))
                                    && may_join(h, w).is_ok()
                            })
                            .map(|(ip, _)| *ip)
                            .min()
                    });
                    let pick = shared.or_else(|| {
                        eligible.iter().map(|&i| &pools[i]).find_map(|p| {
                            // `used` only grows during a run, so every address the pool lists
                            // before the last one it handed out is still used: skip those
                            // without a lookup.
                            let skip = scan_from.get(&(p.name.as_str(), v6)).copied().unwrap_or(0);
                            let calls = std::cell::Cell::new(0usize);
                            let ip = first_free(p, v6, |a| {
                                let n = calls.get();
                                calls.set(n + 1);
                                n < skip || used.contains_key(&a)
                            })?;
                            scan_from.insert((p.name.as_str(), v6), calls.get() - 1);
                            Some(ip)
                        })
                    });
                    match pick {
                        Some(ip) => {
                            take(&mut used, ip, w);
                            got[i].insert(fam, ip);
                        }
                        None => is.push(Issue {
                            reason: IssueReason::PoolExhausted,
                            message: format!(
                                "no {} VIP: every pool open to namespace {:?}{} is full; add addresses to [[pools]]",
                                fam.name(),
                                w.svc.key.namespace,
                                w.pool.map(|n| format!(" and selected by {ANNOTATION_POOL} ({n:?})")).unwrap_or_default()
                            ),
                        }),
                    }
                }
            }
        }

        let mut out = Assignment::default();
        for (i, w) in wants.iter().enumerate() {
            let vips: Vec<IpAddr> = w.families.iter().filter_map(|f| got[i].get(f)).collect();
            if self.follow_status {
                for f in w.families.iter().filter(|f| !got[i].contains_key(f)) {
                    issues.entry(w.svc.key.clone()).or_default().push(Issue {
                        reason: IssueReason::AwaitingLeader,
                        message: format!(
                            "no {} VIP in status.loadBalancer.ingress yet; the leader instance assigns it",
                            f.name()
                        ),
                    });
                }
            } else if !vips.is_empty() {
                for ip in &w.svc.ingress_ips {
                    if !vips.contains(ip) {
                        issues.entry(w.svc.key.clone()).or_default().push(Issue {
                            reason: IssueReason::StatusMismatch,
                            message: format!(
                                "status.loadBalancer.ingress lists {ip}, which is not assigned (outside the open pools, taken, or replaced)"
                            ),
                        });
                    }
                }
            }
            out.vips.insert(w.svc.key.clone(), vips);
        }
        issues.retain(|_, v| !v.is_empty());
        out.issues = issues;
        self.last = Arc::new(out);
        self.last.clone()
    }
}

/// Whether `w` may take addresses of pool `p` at all (namespace and pool annotation).
fn may_use(p: &PoolConfig, w: &Want<'_>) -> bool {
    p.allows_namespace(&w.svc.key.namespace) && w.pool.is_none_or(|n| n == p.name)
}

/// Whether `w` may share an address `h` holds; the error names the holder and why not.
fn may_join(h: &Holder<'_>, w: &Want<'_>) -> Result<(), String> {
    match (h.sharing, w.sharing) {
        (Some(a), Some(b)) if a == b => {}
        (Some(_), Some(_)) => {
            return Err(format!(
                "{} (a different {ANNOTATION_SHARING} key)",
                h.first
            ))
        }
        _ => return Err(h.first.to_string()),
    }
    if let Some((proto, port)) = w
        .ports
        .iter()
        .find(|p| h.ports.contains(p) || h.more.contains(p))
    {
        return Err(format!(
            "{} (it shares the address, but both use {} port {port})",
            h.first,
            proto.name()
        ));
    }
    Ok(())
}

fn take<'a>(used: &mut HashMap<IpAddr, Holder<'a>>, ip: IpAddr, w: &'a Want<'a>) {
    used.entry(ip)
        .and_modify(|h| h.more.extend(w.ports.iter().copied()))
        .or_insert_with(|| Holder {
            first: &w.svc.key,
            sharing: w.sharing,
            ports: &w.ports,
            more: Vec::new(),
        });
}

fn want<'a>(svc: &'a Service, pools: &[PoolConfig], issues: &mut Vec<Issue>) -> Want<'a> {
    let families = svc.families();
    let mut requests = BTreeMap::new();
    let mut ask = |ip: IpAddr, source: &'static str, issues: &mut Vec<Issue>| {
        let fam = IpFamily::of(ip);
        if !families.contains(&fam) {
            issues.push(Issue {
                reason: IssueReason::InvalidRequest,
                message: format!(
                    "{source} requests {ip}, but the Service's ipFamilies do not include {}; add it or drop the request (the Service gets no address until then)",
                    fam.name()
                ),
            });
        } else if let Some((first, _)) = requests.get(&fam) {
            if *first != ip {
                issues.push(Issue {
                    reason: IssueReason::InvalidRequest,
                    message: format!(
                        "{source} requests a second {} address {ip}; request at most one per family (the Service gets no address until then)",
                        fam.name()
                    ),
                });
            }
        } else {
            requests.insert(fam, (ip, source));
        }
    };
    if let Some(v) = svc.annotations.get(ANNOTATION_IPS) {
        for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<IpAddr>() {
                Ok(ip) => ask(ip, "annotation sluice.dev/load-balancer-ips", issues),
                Err(_) => issues.push(Issue {
                    reason: IssueReason::InvalidRequest,
                    message: format!(
                        "annotation {ANNOTATION_IPS}: {part:?} is not an IP address; list addresses separated by commas (the Service gets no address until then)"
                    ),
                }),
            }
        }
    }
    if let Some(ip) = svc.load_balancer_ip {
        ask(ip, "spec.loadBalancerIP", issues);
    }
    let pool = svc
        .annotations
        .get(ANNOTATION_POOL)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty());
    if let Some(n) = pool {
        if !pools.iter().any(|p| p.name == n) {
            let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
            issues.push(Issue {
                reason: IssueReason::UnknownPool,
                message: format!(
                    "annotation {ANNOTATION_POOL} names pool {n:?}, which is not configured; use one of: {}",
                    names.join(", ")
                ),
            });
        }
    }
    let sharing = svc
        .annotations
        .get(ANNOTATION_SHARING)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty());
    let mut ports: Vec<(L4Protocol, u16)> =
        svc.ports.iter().map(|p| (p.protocol, p.port)).collect();
    ports.sort_unstable();
    ports.dedup();
    let invalid_request = issues
        .iter()
        .any(|i| i.reason == IssueReason::InvalidRequest);
    Want {
        svc,
        families,
        requests,
        pool,
        sharing,
        ports,
        invalid_request,
    }
}

/// The first address of the family (`v6`) that `is_used` rejects nowhere, in the order the
/// pool lists its CIDRs, then its ranges; `None` when the family is exhausted. Takes at most
/// one step per used address, so huge IPv6 pools cost nothing.
fn first_free(pool: &PoolConfig, v6: bool, is_used: impl Fn(IpAddr) -> bool) -> Option<IpAddr> {
    for (lo, hi, fam) in pool.blocks() {
        if fam != v6 {
            continue;
        }
        let mut a = lo;
        loop {
            let ip = u128_to_ip(a, v6);
            if !is_used(ip) {
                return Some(ip);
            }
            if a == hi {
                break;
            }
            a += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::manifest;

    fn pools(toml: &str) -> Vec<PoolConfig> {
        let base = "[[ports]]\nname = \"p\"\ndevice = \"net_null0\"\nipv4 = [\"10.0.0.2/24\"]\n";
        crate::config::Config::parse(&format!("{base}{toml}"), "t.toml")
            .unwrap()
            .pools
    }

    #[test]
    fn first_free_walks_cidrs_then_ranges_skipping_used() {
        let p = &pools(
            "[[pools]]\nname = \"lab\"\nranges = [\"10.99.0.100-10.99.0.120\", \"fd00:99::100-fd00:99::120\"]\n",
        )[0];
        assert_eq!(first_free(p, false, |_| false), Some(ip("10.99.0.100")));
        assert_eq!(first_free(p, true, |_| false), Some(ip("fd00:99::100")));
        let used = ip("10.99.0.100");
        assert_eq!(first_free(p, false, |a| a == used), Some(ip("10.99.0.101")));
        assert_eq!(first_free(p, false, |_| true), None);

        // /30: neither the network nor the broadcast address; /126: not the all-zero one.
        let p = &PoolConfig {
            name: "p".into(),
            cidrs: vec![
                "10.0.0.0/30".parse().unwrap(),
                "fd00::/126".parse().unwrap(),
            ],
            ranges: vec![],
            namespaces: None,
            auto_assign: true,
        };
        assert_eq!(first_free(p, false, |_| false), Some(ip("10.0.0.1")));
        let (one, two) = (ip("10.0.0.1"), ip("10.0.0.2"));
        assert_eq!(first_free(p, false, |a| a == one || a == two), None);
        assert_eq!(first_free(p, true, |_| false), Some(ip("fd00::1")));
    }

    const POOLS: &str = r#"
[[pools]]
name = "external"
ranges = ["192.0.2.10-192.0.2.12", "2001:db8::10-2001:db8::11"]

[[pools]]
name = "internal"
cidrs = ["10.50.0.0/29"]
auto_assign = false

[[pools]]
name = "team-a"
ranges = ["198.51.100.1-198.51.100.1"]
namespaces = ["a"]
"#;

    /// Services `ns/name` with `extra` spec lines, `ann` annotations and `ports` (TCP).
    fn svc(ns: &str, name: &str, ann: &str, extra: &str, ports: &[u16]) -> String {
        let mut p = String::new();
        for port in ports {
            p.push_str(&format!("    - {{name: p{port}, port: {port}}}\n"));
        }
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n  annotations: {{{ann}}}\nspec:\n  type: LoadBalancer\n  ports:\n{p}{extra}---\n"
        )
    }

    fn run(ipam: &mut Ipam, pools: &[PoolConfig], yaml: &str) -> Arc<Assignment> {
        let m = manifest::parse_str(yaml, "t.yaml").unwrap().model;
        let served: Vec<&Service> = m.services.values().collect();
        ipam.assign(pools, &served)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn key(ns: &str, n: &str) -> ObjectKey {
        ObjectKey::new(ns, n)
    }

    fn reasons(a: &Assignment, ns: &str, n: &str) -> Vec<IssueReason> {
        a.issues
            .get(&key(ns, n))
            .map(|v| v.iter().map(|i| i.reason).collect())
            .unwrap_or_default()
    }

    #[test]
    fn exhaustion_and_pool_selection() {
        let p = pools(POOLS);
        let mut y = String::new();
        for n in ["s1", "s2", "s3", "s4"] {
            y.push_str(&svc("default", n, "", "", &[80]));
        }
        y.push_str(&svc(
            "default",
            "int",
            "sluice.dev/address-pool: internal",
            "",
            &[80],
        ));
        y.push_str(&svc(
            "default",
            "bad",
            "sluice.dev/address-pool: nope",
            "",
            &[80],
        ));
        y.push_str(&svc(
            "a",
            "team",
            "sluice.dev/address-pool: team-a",
            "",
            &[80],
        ));
        y.push_str(&svc(
            "b",
            "team",
            "sluice.dev/address-pool: team-a",
            "",
            &[80],
        ));
        let a = run(&mut Ipam::new(), &p, &y);
        assert_eq!(a.vips[&key("default", "s1")], vec![ip("192.0.2.10")]);
        assert_eq!(a.vips[&key("default", "s3")], vec![ip("192.0.2.12")]);
        assert!(a.vips[&key("default", "s4")].is_empty());
        assert_eq!(
            reasons(&a, "default", "s4"),
            vec![IssueReason::PoolExhausted]
        );
        // The internal pool does not auto-assign, but serves Services that select it.
        assert_eq!(a.vips[&key("default", "int")], vec![ip("10.50.0.1")]);
        assert_eq!(
            reasons(&a, "default", "bad"),
            vec![IssueReason::UnknownPool]
        );
        assert_eq!(a.vips[&key("a", "team")], vec![ip("198.51.100.1")]);
        assert_eq!(reasons(&a, "b", "team"), vec![IssueReason::NoPool]);
    }

    #[test]
    fn requests_held_first_and_refused_with_reasons() {
        let p = pools(POOLS);
        let mut ipam = Ipam::new();
        let y = svc("default", "web", "", "", &[80]);
        let a = run(&mut ipam, &p, &y);
        assert_eq!(a.vips[&key("default", "web")], vec![ip("192.0.2.10")]);
        // A Service that sorts first requests web's address: web keeps it.
        let mut y2 = svc(
            "default",
            "aaa",
            "",
            "  loadBalancerIP: 192.0.2.10\n",
            &[80],
        );
        y2.push_str(&y);
        y2.push_str(&svc(
            "default",
            "out",
            "",
            "  loadBalancerIP: 203.0.113.9\n",
            &[80],
        ));
        y2.push_str(&svc(
            "default",
            "ns",
            "",
            "  loadBalancerIP: 198.51.100.1\n",
            &[80],
        ));
        y2.push_str(&svc(
            "default",
            "wrongpool",
            "sluice.dev/address-pool: internal, sluice.dev/load-balancer-ips: 192.0.2.12",
            "",
            &[80],
        ));
        y2.push_str(&svc(
            "default",
            "ok",
            "sluice.dev/load-balancer-ips: \"192.0.2.11\"",
            "",
            &[80],
        ));
        let a = run(&mut ipam, &p, &y2);
        assert_eq!(a.vips[&key("default", "web")], vec![ip("192.0.2.10")]);
        assert!(a.vips[&key("default", "aaa")].is_empty());
        assert_eq!(
            reasons(&a, "default", "aaa"),
            vec![IssueReason::RequestedIPUnavailable]
        );
        assert!(a.issues[&key("default", "aaa")][0]
            .message
            .contains("already used by Service default/web"));
        assert_eq!(
            reasons(&a, "default", "out"),
            vec![IssueReason::RequestedIPOutsidePools]
        );
        assert_eq!(
            reasons(&a, "default", "ns"),
            vec![IssueReason::RequestedIPNotAllowed]
        );
        assert_eq!(
            reasons(&a, "default", "wrongpool"),
            vec![IssueReason::RequestedIPNotAllowed]
        );
        assert_eq!(a.vips[&key("default", "ok")], vec![ip("192.0.2.11")]);
    }

    #[test]
    fn sharing_needs_the_same_key_and_distinct_ports() {
        let p = pools(POOLS);
        let k = "sluice.dev/allow-shared-ip: dns";
        let mut y = svc("default", "dns-tcp", k, "", &[53]);
        y.push_str(&svc("default", "dns-udp", k, "", &[53]).replace(
            "{name: p53, port: 53}",
            "{name: p53, port: 53, protocol: UDP}",
        ));
        y.push_str(&svc("default", "dns-web", k, "", &[80]));
        y.push_str(&svc("default", "dns-zclash", k, "", &[80]));
        y.push_str(&svc(
            "default",
            "other",
            "sluice.dev/allow-shared-ip: x",
            "",
            &[8080],
        ));
        let a = run(&mut Ipam::new(), &p, &y);
        let shared = vec![ip("192.0.2.10")];
        assert_eq!(a.vips[&key("default", "dns-tcp")], shared);
        assert_eq!(a.vips[&key("default", "dns-udp")], shared);
        assert_eq!(a.vips[&key("default", "dns-web")], shared);
        // Port 80 is taken on the shared address: its own address.
        assert_eq!(
            a.vips[&key("default", "dns-zclash")],
            vec![ip("192.0.2.11")]
        );
        assert_eq!(a.vips[&key("default", "other")], vec![ip("192.0.2.12")]);

        // An explicit request for a held shared address needs the key too.
        let mut ipam = Ipam::new();
        run(&mut ipam, &p, &y);
        let mut y2 = y.clone();
        y2.push_str(&svc(
            "default",
            "zzz",
            "",
            "  loadBalancerIP: 192.0.2.10\n",
            &[9999],
        ));
        let a = run(&mut ipam, &p, &y2);
        assert_eq!(
            reasons(&a, "default", "zzz"),
            vec![IssueReason::RequestedIPUnavailable]
        );
    }

    #[test]
    fn status_keeps_ips_across_restarts_and_followers_only_read_status() {
        let p = pools(POOLS);
        let y = format!(
            "{}{}",
            svc("default", "a", "", "", &[80]),
            svc("default", "b", "", "", &[80])
        );
        let mut m = manifest::parse_str(&y, "t.yaml").unwrap().model;
        m.services
            .get_mut(&key("default", "a"))
            .unwrap()
            .ingress_ips = vec![ip("192.0.2.12")];
        let served: Vec<&Service> = m.services.values().collect();
        let a = Ipam::new().assign(&p, &served);
        assert_eq!(a.vips[&key("default", "a")], vec![ip("192.0.2.12")]);
        assert_eq!(a.vips[&key("default", "b")], vec![ip("192.0.2.10")]);

        let mut follower = Ipam::new();
        follower.set_follow_status(true);
        let a = follower.assign(&p, &served);
        assert_eq!(a.vips[&key("default", "a")], vec![ip("192.0.2.12")]);
        assert!(a.vips[&key("default", "b")].is_empty());
        assert_eq!(
            reasons(&a, "default", "b"),
            vec![IssueReason::AwaitingLeader]
        );

        // A status address outside every pool is not served, even by a follower.
        m.services
            .get_mut(&key("default", "b"))
            .unwrap()
            .ingress_ips = vec![ip("203.0.113.1")];
        let served: Vec<&Service> = m.services.values().collect();
        let a = follower.assign(&p, &served);
        assert!(a.vips[&key("default", "b")].is_empty());
    }

    #[test]
    fn released_when_gone() {
        let p = pools(POOLS);
        let mut ipam = Ipam::new();
        let y = format!(
            "{}{}",
            svc("default", "a", "", "", &[80]),
            svc("default", "b", "", "", &[80])
        );
        run(&mut ipam, &p, &y);
        let a = run(
            &mut ipam,
            &p,
            &format!(
                "{}{}",
                svc("default", "b", "", "", &[80]),
                svc("default", "c", "", "", &[80])
            ),
        );
        assert_eq!(a.vips[&key("default", "b")], vec![ip("192.0.2.11")]);
        assert_eq!(a.vips[&key("default", "c")], vec![ip("192.0.2.10")]);
    }
}
