//! Semantic checks that involve several keys, run after parsing; each names the key it
//! rejects and says what to do.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};

use super::{
    check_maglev_size, u128_to_ip, Config, MaglevSize, SourceKind, MAX_CONNTRACK_CAPACITY, MAX_MTU,
    MIN_MTU,
};

impl Config {
    /// Semantic checks; returns the offending key and a message that says what to do.
    ///
    /// # Errors
    /// `(key, message)` of the first problem found.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_owned(), m));

        // [[ports]]
        if self.ports.is_empty() {
            return err(
                "ports",
                "no port configured; add a [[ports]] table with name, device and ipv4/ipv6 \
                 (see docs/configuration.md)"
                    .to_owned(),
            );
        }
        if self.ports.len() > 1 {
            return err(
                "ports",
                format!(
                    "{} [[ports]] are configured but Sluice serves one port (VIPs, next hops \
                     and announcements use the first); keep one [[ports]] table and give it \
                     every address",
                    self.ports.len()
                ),
            );
        }
        let mut names = BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            let k = |f: &str| format!("ports[{i}].{f}");
            if p.name.trim().is_empty() {
                return err(
                    &k("name"),
                    "is empty; give the port a name such as \"lb0\"".to_owned(),
                );
            }
            if !names.insert(p.name.as_str()) {
                return err(
                    &k("name"),
                    format!("port name {:?} is used twice; names must be unique", p.name),
                );
            }
            if p.device.trim().is_empty() {
                return err(
                    &k("device"),
                    "is empty; use a PCI address (\"0000:3b:00.0\") or a virtual device \
                     (\"net_af_packet0,iface=sl-lb0\")"
                        .to_owned(),
                );
            }
            if p.ipv4.is_empty() && p.ipv6.is_empty() {
                return err(
                    &k("ipv4"),
                    "the port has no address; list at least one in ipv4 (\"10.99.0.2/24\") or ipv6"
                        .to_owned(),
                );
            }
            for (j, a) in p.ipv4.iter().enumerate() {
                if a.addr().is_unspecified() || a.addr().is_multicast() || a.addr().is_broadcast() {
                    return err(
                        &format!("ports[{i}].ipv4[{j}]"),
                        format!("{a} is not a unicast address"),
                    );
                }
            }
            for (j, a) in p.ipv6.iter().enumerate() {
                if a.addr().is_unspecified() || a.addr().is_multicast() {
                    return err(
                        &format!("ports[{i}].ipv6[{j}]"),
                        format!("{a} is not a unicast address"),
                    );
                }
            }
            if let Some(g) = p.gateway_v4 {
                if !p.on_link(IpAddr::V4(g)) {
                    return err(
                        &k("gateway_v4"),
                        format!("{g} is not inside any of the port's ipv4 subnets; a gateway must be on-link"),
                    );
                }
            }
            if let Some(g) = p.gateway_v6 {
                if !p.on_link(IpAddr::V6(g)) && !is_link_local_v6(g) {
                    return err(
                        &k("gateway_v6"),
                        format!("{g} is not inside any of the port's ipv6 subnets nor link-local; a gateway must be on-link"),
                    );
                }
            }
            if !(MIN_MTU..=MAX_MTU).contains(&p.mtu) {
                return err(
                    &k("mtu"),
                    format!(
                        "{} is out of range; use {MIN_MTU}..={MAX_MTU} (usually 1500): a packet \
                         buffer holds a {}-byte frame and jumbo frames are not supported",
                        p.mtu,
                        dpdk_sys::Mempool::DEFAULT_MAX_FRAME
                    ),
                );
            }
        }

        // [workers]
        let w = &self.workers;
        if w.cores.is_empty() {
            return err(
                "workers.cores",
                "is empty; list at least one core, e.g. [1]".to_owned(),
            );
        }
        let mut seen = BTreeSet::new();
        for c in &w.cores {
            if !seen.insert(*c) {
                return err("workers.cores", format!("core {c} is listed twice"));
            }
        }
        if w.cores.len() > usize::from(u16::MAX) {
            return err("workers.cores", "too many cores".to_owned());
        }
        if let Some(cc) = &w.control_cores {
            if let Some(c) = cc.iter().find(|c| seen.contains(c)) {
                return err(
                    "workers.control_cores",
                    format!("core {c} is also a worker core; a worker core busy-polls and must not run the control plane"),
                );
            }
        }
        if w.tx_flush_us == 0 || w.tx_flush_us > 1_000_000 {
            return err(
                "workers.tx_flush_us",
                format!(
                    "{} is out of range; use 1..=1000000 (default 100)",
                    w.tx_flush_us
                ),
            );
        }
        if w.idle_sleep_us == 0 || w.idle_sleep_us > 10_000 {
            return err(
                "workers.idle_sleep_us",
                format!(
                    "{} is out of range; use 1..=10000 (default 100)",
                    w.idle_sleep_us
                ),
            );
        }

        // [tables]
        let t = &self.tables;
        for (k, v) in [
            ("tables.conntrack_capacity", t.conntrack_capacity),
            ("tables.conntrack_v6_capacity", t.conntrack_v6_capacity),
            ("tables.affinity_capacity", t.affinity_capacity),
        ] {
            if v == 0 || v > MAX_CONNTRACK_CAPACITY {
                return err(
                    k,
                    format!("{v} is out of range; use 1..={MAX_CONNTRACK_CAPACITY}"),
                );
            }
        }
        if let MaglevSize::Fixed(n) = t.maglev_size {
            check_maglev_size(n).map_err(|m| ("tables.maglev_size".to_owned(), m))?;
        }
        if t.max_backends == 0 || t.max_backends > 1 << 24 {
            return err(
                "tables.max_backends",
                format!("{} is out of range; use 1..=16777216", t.max_backends),
            );
        }
        for (k, v, lo, hi) in t.timeouts.ranges() {
            if !(lo..=hi).contains(&v) {
                return err(k, format!("{v} is out of range; use {lo}..={hi}"));
            }
        }

        // [limits]
        self.limits.check()?;

        // [nat]
        let n = &self.nat;
        if n.port_min == 0 {
            return err(
                "nat.port_min",
                "0 is not a port; use 1024 or above (default 20000)".to_owned(),
            );
        }
        if n.port_min > n.port_max {
            return err(
                "nat.port_min",
                format!(
                    "{} is above nat.port_max {}; swap them or lower port_min",
                    n.port_min, n.port_max
                ),
            );
        }
        let per_worker = (u32::from(n.port_max) - u32::from(n.port_min) + 1) / w.cores.len() as u32;
        if per_worker == 0 {
            return err(
                "nat.port_min",
                format!(
                    "the range {}..={} has fewer ports than the {} workers; widen it",
                    n.port_min,
                    n.port_max,
                    w.cores.len()
                ),
            );
        }
        for (i, a) in n.addresses.iter().enumerate() {
            if a.is_unspecified() || a.is_multicast() {
                return err(
                    &format!("nat.addresses[{i}]"),
                    format!("{a} is not a unicast address"),
                );
            }
        }

        // [forwarding]
        if self.forwarding.hash_seed > i64::MAX as u64 {
            return err("forwarding.hash_seed", "must be at most 2^63-1".to_owned());
        }
        // The key file is read at start; a bad one stops the start here, before DPDK.
        if self.forwarding.syn_cookie_key_file.is_some() {
            if let Err((k, m)) = self.syn_cookie_key() {
                return err(&k, m);
            }
        }
        let t = self.forwarding.syn_proxy_auto_threshold;
        if !(2..=super::MAX_SYN_PROXY_AUTO_THRESHOLD).contains(&t) {
            return err(
                "forwarding.syn_proxy_auto_threshold",
                format!(
                    "{t} is not 2 to {}: it counts the embryonic flows of one frontend on one \
                     worker that engage the SYN proxy (it disengages below half); use e.g. \
                     {} (the default) or leave the key out",
                    super::MAX_SYN_PROXY_AUTO_THRESHOLD,
                    super::DEFAULT_SYN_PROXY_AUTO_THRESHOLD
                ),
            );
        }

        // [[pools]]
        let mut pool_names = BTreeSet::new();
        let mut blocks: Vec<(u128, u128, bool, String)> = Vec::new();
        let own: Vec<(IpAddr, String)> = self
            .ports
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                p.ipv4
                    .iter()
                    .map(move |a| (IpAddr::V4(a.addr()), format!("ports[{i}].ipv4")))
                    .chain(
                        p.ipv6
                            .iter()
                            .map(move |a| (IpAddr::V6(a.addr()), format!("ports[{i}].ipv6"))),
                    )
            })
            .chain(n.addresses.iter().map(|a| (*a, "nat.addresses".to_owned())))
            .collect();
        for (i, p) in self.pools.iter().enumerate() {
            let k = |f: &str| format!("pools[{i}].{f}");
            if p.name.trim().is_empty() {
                return err(&k("name"), "is empty; give the pool a name".to_owned());
            }
            if !pool_names.insert(p.name.as_str()) {
                return err(
                    &k("name"),
                    format!("pool name {:?} is used twice; names must be unique", p.name),
                );
            }
            if p.cidrs.is_empty() && p.ranges.is_empty() {
                return err(
                    &k("cidrs"),
                    "the pool has no addresses; list cidrs (\"10.99.0.96/27\") or ranges \
                     (\"10.99.0.100-10.99.0.120\")"
                        .to_owned(),
                );
            }
            if let Some(ns) = &p.namespaces {
                if ns.is_empty() {
                    return err(
                        &k("namespaces"),
                        "is empty, so no Service could use the pool; remove the key to allow every namespace"
                            .to_owned(),
                    );
                }
            }
            for (lo, hi, v6) in p.blocks() {
                if let Some((_, _, _, other)) = blocks
                    .iter()
                    .find(|(l, h, f, _)| *f == v6 && lo <= *h && *l <= hi)
                {
                    return err(
                        &k("cidrs"),
                        format!(
                            "{}-{} overlaps pool {other:?}; pools must not share addresses",
                            u128_to_ip(lo, v6),
                            u128_to_ip(hi, v6)
                        ),
                    );
                }
                blocks.push((lo, hi, v6, p.name.clone()));
            }
            if let Some((a, key)) = own.iter().find(|(a, _)| p.contains(*a)) {
                return err(
                    &k("cidrs"),
                    format!("the pool contains {a}, Sluice's own address in {key}; take it out of the pool"),
                );
            }
        }

        // [health]
        let h = &self.health;
        if h.interval_ms == 0 {
            return err(
                "health.interval_ms",
                "must be at least 1 (default 1000)".to_owned(),
            );
        }
        if h.timeout_ms == 0 {
            return err(
                "health.timeout_ms",
                "must be at least 1 (default 500)".to_owned(),
            );
        }
        if h.rise == 0 {
            return err("health.rise", "must be at least 1 (default 2)".to_owned());
        }
        if h.fall == 0 {
            return err("health.fall", "must be at least 1 (default 3)".to_owned());
        }
        if !h.http_path.starts_with('/')
            || h.http_path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return err(
                "health.http_path",
                format!(
                    "{:?} is not a request path; it must start with '/' and have no spaces",
                    h.http_path
                ),
            );
        }

        // [source]
        let s = &self.source;
        if s.poll_interval_ms == 0 {
            return err(
                "source.poll_interval_ms",
                "must be at least 1 (default 500)".to_owned(),
            );
        }
        if s.load_balancer_class.trim().is_empty() {
            return err(
                "source.load_balancer_class",
                "is empty; use \"sluice.dev/dpdk\" (and serve_unclassed = true to also serve Services without a class)"
                    .to_owned(),
            );
        }
        if !(1..=10_000).contains(&s.debounce_ms) {
            return err(
                "source.debounce_ms",
                format!(
                    "{} is out of range; use 1 to 10000 (default 50)",
                    s.debounce_ms
                ),
            );
        }
        if s.leader_election && s.lease_name.trim().is_empty() {
            return err(
                "source.lease_name",
                "is empty; name the Lease (default \"sluice\") or set leader_election = false"
                    .to_owned(),
            );
        }
        if s.leader_election {
            let duration_ms = u64::from(s.lease_duration_seconds) * 1000;
            if !(1..=3600).contains(&s.lease_duration_seconds) {
                return err(
                    "source.lease_duration_seconds",
                    format!(
                        "{} is out of range; use 1 to 3600 (default 15)",
                        s.lease_duration_seconds
                    ),
                );
            }
            if s.lease_retry_ms < 100 {
                return err(
                    "source.lease_retry_ms",
                    format!(
                        "{} is too short; use at least 100 (default 2000)",
                        s.lease_retry_ms
                    ),
                );
            }
            if s.lease_renew_deadline_ms <= s.lease_retry_ms
                || s.lease_renew_deadline_ms >= duration_ms
            {
                let example = duration_ms * 2 / 3;
                let fix = if example > s.lease_retry_ms {
                    format!("for example {example}")
                } else {
                    "raise lease_duration_seconds or lower lease_retry_ms".to_owned()
                };
                return err(
                    "source.lease_renew_deadline_ms",
                    format!(
                        "{} must be longer than lease_retry_ms ({}) and shorter than \
                         lease_duration_seconds ({} s), so that a leader that cannot renew stops \
                         writing before a standby may take over; {fix}",
                        s.lease_renew_deadline_ms, s.lease_retry_ms, s.lease_duration_seconds,
                    ),
                );
            }
        }
        if s.kind == SourceKind::Manifests && s.manifest_dir.as_os_str().is_empty() {
            return err(
                "source.manifest_dir",
                "is empty; name the directory of Service/EndpointSlice/Node YAML files".to_owned(),
            );
        }

        // [l2]
        if let Some(l) = &self.l2 {
            l.validate()?;
            if l.membership == super::L2Membership::Leases && s.kind != SourceKind::Kubernetes {
                return err(
                    "l2.membership",
                    "\"leases\" needs source.kind = \"kubernetes\"; use \"static\" and list \
                     the hosts in [[l2.peers]]"
                        .to_owned(),
                );
            }
            if self.bgp.is_some() {
                return err(
                    "l2",
                    "and [bgp] are both set; a fleet runs in one mode: announce the VIPs over \
                     BGP or own them on one segment"
                        .to_owned(),
                );
            }
        }

        // [sync]
        if let Some(y) = &self.sync {
            y.validate(&self.nat.addresses)?;
            // L2 mode takes a lost peer's NAT addresses over by the peer's L2 name.
            if let Some(l) = self
                .l2
                .as_ref()
                .filter(|l| l.membership == super::L2Membership::Static)
            {
                for (i, p) in y.peers.iter().enumerate() {
                    if !l.peers.iter().any(|q| q.name == p.name) {
                        return err(
                            &format!("sync.peers[{i}].name"),
                            format!(
                                "{:?} is not a host of [[l2.peers]]; with [l2], name each sync \
                                 peer by its l2.host",
                                p.name
                            ),
                        );
                    }
                }
                if y.host != l.host {
                    return err(
                        "sync.host",
                        format!(
                            "{:?} differs from l2.host {:?}; use the same name",
                            y.host, l.host
                        ),
                    );
                }
            }
        }

        // [bgp]
        if let Some(b) = &self.bgp {
            let pools: Vec<&str> = self.pools.iter().map(|p| p.name.as_str()).collect();
            b.validate(&pools)?;
            let own = self.own_addresses();
            let hops = [
                ("bgp.next_hop_v4", b.next_hop_v4.map(IpAddr::V4)),
                ("bgp.next_hop_v6", b.next_hop_v6.map(IpAddr::V6)),
            ];
            for (key, hop) in hops {
                if let Some(h) = hop.filter(|h| !own.contains(h)) {
                    return err(
                        key,
                        format!(
                            "{h} is not an address of any [[ports]]; the routers send the \
                             announced traffic to it, so it must be the DPDK port's address \
                             (leave it out for the first port's)"
                        ),
                    );
                }
            }
        }
        Ok(())
    }
}

fn is_link_local_v6(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}
