//! # The per-packet pipeline
//!
//! `parse -> classify -> ACL -> conntrack -> affinity/Maglev -> rewrite`, on byte slices.
//! This file is its table of contents: the shared vocabulary ([`Verdict`], [`Pipeline`]) and
//! classification, which dispatches each packet once, on its family and then on what it is;
//! every stage after that is a file of its own:
//!
//! | file | stage |
//! |---|---|
//! | `buf.rs` | [`PacketBuf`], the frame the pipeline rewrites; [`VecBuf`] |
//! | `burst.rs` | [`Pipeline::process_burst`]: the burst's prefetch passes and its private cache |
//! | `family.rs` | `Family`: what differs between IPv4 and IPv6; the flow tables of each |
//! | `schedule.rs` | conntrack -> affinity -> Maglev; fragments |
//! | `limits.rs` | new-flow budgets: token buckets per frontend and per source prefix |
//! | `nat.rs` | `nat`: port slices, port allocation, reverse entries, rewrites, replies |
//! | `synproxy.rs` | the SYN proxy of `nat` TCP frontends: cookies, the backend handshake, sequence translation |
//! | `synauto.rs` | the SYN proxy's automatic mode: embryonic flows per frontend, engagement |
//! | `dsr.rs` | `dsr-l2` and `dsr-ipip` |
//! | `edge.rs` | ARP, NDP and ICMP answers; frames the dataplane originates |
//! | `flows.rs` | flow dumps for the admin API |
//! | `saved.rs` | flows kept across a planned restart: export at stop, restore at start |
//!
//! ## Design
//! - [`Pipeline::process_burst`] takes a burst of frames in [`PacketBuf`]s (mbufs in the
//!   worker, `Vec`s in tests and benchmarks) and writes a [`Verdict`] per frame;
//!   [`Pipeline::process`] takes one frame. They never allocate, lock, log or format; every
//!   table they touch was allocated in [`Pipeline::new`].
//! - Flow tables are per worker and per family: forward flows (client -> VIP), NAT reverse
//!   flows (backend -> local address), and ClientIP affinity. A forward entry stores the
//!   backend *id*; a backend that left the snapshot is noticed lazily at the next packet.
//! - Established flows keep their backend whatever its state (draining, down); only a backend
//!   removed from the snapshot ends them. New flows see only `Active` backends.
//! - `nat` gives each worker a disjoint slice of the local port range, so the owner of a reply
//!   is known from its destination port alone ([`Verdict::ToWorker`]). An ICMP error quoting
//!   a flow names no worker: it goes from worker to worker until the one holding the flow
//!   forwards it (`edge.rs`).
//! - No VLAN is configured: 802.1Q/802.1ad-tagged frames are dropped
//!   ([`DropReason::VlanTagged`]) rather than forwarded with their tag into another VLAN.
//! - Fragments: `dsr-*` Services balance them by 3-tuple (source, destination, protocol) without
//!   tracking, so every fragment of a datagram reaches the same backend; `nat` drops them
//!   ([`DropReason::NatFragment`]), since rewriting ports needs the whole datagram.
use std::net::IpAddr;
use std::sync::Arc;

use crate::conntrack::{ConntrackConfig, FlowState, Inserted, Timeouts, NO_SLOT};
use crate::snapshot::{AddrKind, Backend, BackendState, Frontend, Method, Snapshot};
use crate::stats::{bump, DropReason, WorkerStats};
use crate::wire::checksum;
use crate::wire::parse::{parse, Fragment, Parsed, L3};
use crate::wire::{proto, tcp::flags};

mod buf;
mod burst;
mod dsr;
pub mod edge;
mod family;
mod flows;
#[cfg(any(test, feature = "check"))]
mod inspect;
mod limits;
mod nat;
mod saved;
mod schedule;
mod synauto;
mod sync;
mod synproxy;

pub use buf::{PacketBuf, VecBuf};
pub use burst::BURST;
pub use family::{Aff, Fwd, Rev};
pub use flows::FlowEntry;
pub use limits::SourceLimitConfig;
pub use saved::{RestoreFlow, SavedFlow, SavedNat, SavedProxy, Unrestorable};
pub use synauto::CENSUS_SLOTS_PER_TICK;
pub use sync::WALK_SLOTS_PER_TICK;
pub use synproxy::{syn_cookie, CookieData, CookieKey, WSCALE as SYN_PROXY_WSCALE};

use family::{Family, Flows};
use nat::NatPorts;

/// A neighbour (ARP reply or neighbour advertisement) learned from the wire, for the control
/// plane's next-hop table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborEvent {
    /// The neighbour's address.
    pub ip: IpAddr,
    /// Its MAC.
    pub mac: [u8; 6],
}

/// What to do with a packet after [`Pipeline::process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit the (rewritten) frame on the port it came from.
    Tx,
    /// Hand the untouched frame to the worker with this index (NAT reply on the wrong queue).
    ToWorker(u16),
    /// A neighbour was learned; hand the event to the control plane, free the frame.
    Neighbor(NeighborEvent),
    /// Drop and count.
    Drop(DropReason),
}

/// Per-worker settings.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// This worker's index (0-based).
    pub worker: u16,
    /// Number of workers (NAT port slices).
    pub workers: u16,
    /// IPv4 forward and NAT-reverse table size and timeouts.
    pub conntrack: ConntrackConfig,
    /// IPv6 tables' capacity (the IPv4 tables use `conntrack.capacity`).
    pub conntrack_v6_capacity: usize,
    /// Affinity table capacity per family.
    pub affinity_capacity: usize,
    /// Where in its slice the worker starts handing out NAT ports. The daemon makes it differ
    /// between runs, so a restarted Sluice does not reuse the ports whose old connections
    /// backends may still hold (TIME_WAIT); tests leave it 0 for reproducible ports.
    pub nat_port_start: u32,
    /// Answer a non-SYN TCP segment of an unknown `nat` flow with a RST, so that the client
    /// fails at once instead of retransmitting until its timeout (the flow is lost: its NAT
    /// port lived on another host or process).
    pub reset_unknown_flows: bool,
    /// The per-source new-flow buckets: prefix lengths, table size, hash seed.
    pub source_limits: SourceLimitConfig,
    /// The SYN proxy's cookie key: the same for every worker of a host (a client's SYN and
    /// ACK may reach different workers after a change of queues); derived by the daemon from
    /// a configured fleet secret (the same on every host and across restarts), else drawn at
    /// every start; fixed in tests.
    pub syn_cookie_key: CookieKey,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            worker: 0,
            workers: 1,
            conntrack: ConntrackConfig {
                capacity: 1 << 20,
                timeouts: Timeouts::default(),
            },
            conntrack_v6_capacity: 1 << 18,
            affinity_capacity: 1 << 16,
            nat_port_start: 0,
            reset_unknown_flows: true,
            source_limits: SourceLimitConfig::default(),
            syn_cookie_key: CookieKey::default(),
        }
    }
}

/// Longest ClientIP affinity Kubernetes allows (`timeoutSeconds` ≤ 86400).
const MAX_AFFINITY_MS: u32 = 86_400_000;

/// One worker's pipeline: its flow tables, counters, NAT ports and burst cache.
#[derive(Debug)]
pub struct Pipeline {
    worker: u16,
    /// Number of workers (at least 1).
    workers: u16,
    /// The flow tables of both families.
    flows: Flows,
    /// This worker's NAT port slice and cursors.
    ports: NatPorts,
    /// New-flow budgets per frontend and per source prefix.
    limits: limits::Limits,
    stats: Arc<WorkerStats>,
    /// What the current burst's prefetch passes learned.
    burst: burst::Burst,
    /// See [`PipelineConfig::reset_unknown_flows`].
    reset_unknown_flows: bool,
    /// Where flows are published for the peer hosts (`None`: flow sync off).
    sync: Option<crossbeam_channel::Sender<SavedFlow>>,
    /// The walk publishing every own flow, if one is under way.
    walk: Option<sync::Walk>,
    /// See [`PipelineConfig::syn_cookie_key`].
    cookie_key: CookieKey,
    /// The SYN proxy's automatic mode: embryonic flows and engagement per frontend.
    auto: synauto::Auto,
}

/// Work already done for a packet (by the burst's prefetch passes, or nothing: [`Hint::NONE`]).
#[derive(Debug, Clone, Copy)]
struct Hint {
    /// The 5-tuple flow hash under the snapshot's seed.
    hash: Option<u64>,
    /// The frontend of (dst, proto, dport), if the packet is a first-fragment-free TCP/UDP
    /// packet to a served VIP port.
    frontend: Option<u32>,
    /// The slot the packet's flow lookup (forward, or NAT reverse for a reply) probably finds
    /// its entry in ([`NO_SLOT`]: none).
    slot: u32,
    /// For a TCP SYN to a NAT frontend without affinity: the backend Maglev picked.
    pick: Option<u32>,
    /// For the same SYN: the NAT port cursor the prefetch pass predicted, the backend, and the
    /// hash of the reverse key they give (reused if the prediction holds).
    rev: Option<nat::NatGuess>,
}

impl Hint {
    /// Nothing known.
    const NONE: Hint = Hint {
        hash: None,
        frontend: None,
        slot: NO_SLOT,
        pick: None,
        rev: None,
    };
}

/// A TCP/UDP packet (not a fragment) to a frontend, with what scheduling it needs.
#[derive(Clone, Copy)]
struct VipFlow<'a> {
    /// The packet.
    p: &'a Parsed,
    /// Its frontend.
    f: &'a Frontend,
    /// Its 5-tuple hash.
    h: u64,
    /// What the burst already worked out for it.
    hint: Hint,
    /// Now, on the worker's millisecond clock.
    now_ms: u32,
    /// For a TCP segment to a SYN-proxied frontend: its sequence and acknowledgement
    /// numbers (a cookie check if it opens a flow).
    proxy: Option<(u32, u32)>,
}

/// The scheduling decision for one packet to a VIP.
struct Choice<'s> {
    /// The backend, in the snapshot.
    backend: &'s Backend,
    /// NAT local port (0 for DSR).
    nat_port: u16,
    /// Index of the NAT local address.
    nat_addr: u8,
    /// The flow's [`Fwd::flags`].
    flags: u8,
    /// The flow's [`Fwd::seq`].
    seq: u32,
    /// If this packet opened the flow through the SYN proxy (a valid cookie): the client's
    /// initial sequence number.
    opened: Option<u32>,
}

impl Pipeline {
    /// Allocates every table this worker will ever use.
    pub fn new(cfg: &PipelineConfig, stats: Arc<WorkerStats>) -> Self {
        let v6 = ConntrackConfig {
            capacity: cfg.conntrack_v6_capacity,
            timeouts: cfg.conntrack.timeouts,
        };
        let aff = ConntrackConfig {
            capacity: cfg.affinity_capacity,
            timeouts: Timeouts {
                other_ms: MAX_AFFINITY_MS,
                ..cfg.conntrack.timeouts
            },
        };
        let p = Pipeline {
            worker: cfg.worker,
            workers: cfg.workers.max(1),
            flows: Flows::new(&cfg.conntrack, &v6, &aff),
            ports: NatPorts::new(cfg),
            limits: limits::Limits::new(&cfg.source_limits),
            stats,
            burst: burst::Burst::default(),
            reset_unknown_flows: cfg.reset_unknown_flows,
            sync: None,
            walk: None,
            cookie_key: cfg.syn_cookie_key,
            auto: synauto::Auto::default(),
        };
        crate::stats::set(
            &p.stats.ct_capacity,
            (p.flows.v4.fwd.capacity() + p.flows.v6.fwd.capacity()) as u64,
        );
        p
    }

    /// This worker's counters.
    pub fn stats(&self) -> &Arc<WorkerStats> {
        &self.stats
    }

    /// Bytes held by this worker's flow tables.
    pub fn table_bytes(&self) -> usize {
        self.flows.bytes()
    }

    /// Live forward flows (both families).
    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// Amortised expiry: scans up to `buckets` buckets of each table. Publishes table gauges.
    pub fn expire(&mut self, now_ms: u32, buckets: usize) -> usize {
        let n = self.expire_family::<[u8; 4]>(now_ms, buckets)
            + self.expire_family::<[u8; 16]>(now_ms, buckets);
        self.publish_table_stats();
        n
    }

    /// [`Pipeline::expire`] of one family's tables.
    fn expire_family<F: Family>(&mut self, now_ms: u32, buckets: usize) -> usize {
        let stats = &self.stats;
        let t = F::tables_mut(&mut self.flows);
        t.fwd.expire(now_ms, buckets, |e| closed(stats, e.value()))
            + t.rev.expire(now_ms, buckets, |_| {})
            + t.aff.expire(now_ms, buckets, |_| {})
    }

    /// Copies the conntrack counters into the shared stats.
    pub fn publish_table_stats(&self) {
        use crate::stats::set;
        let (a, b) = (self.flows.v4.fwd.stats(), self.flows.v6.fwd.stats());
        let s = &self.stats;
        set(&s.ct_hits, a.hits + b.hits);
        set(&s.ct_misses, a.misses + b.misses);
        set(&s.ct_inserts, a.inserts + b.inserts);
        set(&s.ct_evictions, a.evictions + b.evictions);
        let (ra, rb) = (self.flows.v4.rev.stats(), self.flows.v6.rev.stats());
        let all = [a, b, ra, rb];
        let sum = |f: fn(&crate::conntrack::ConntrackStats) -> u64| all.iter().map(|t| f(t)).sum();
        set(
            &s.ct_evictions_established,
            sum(|t| t.evictions_established),
        );
        set(&s.ct_evictions_embryonic, sum(|t| t.evictions_embryonic));
        set(&s.ct_refusals, sum(|t| t.refusals));
        set(&s.ct_expiries, a.expiries + b.expiries);
        set(&s.ct_entries, self.flows.len() as u64);
    }

    /// The worker that owns NAT local port `port`.
    #[inline(always)]
    pub fn nat_owner(snap: &Snapshot, workers: u16, port: u16) -> u16 {
        nat::owner(snap, workers, port)
    }

    /// Processes one frame (tests, tools; the worker uses [`Pipeline::process_burst`]).
    /// `now_ms` is a wrapping millisecond clock.
    #[inline]
    pub fn process<P: PacketBuf>(&mut self, snap: &Snapshot, pkt: &mut P, now_ms: u32) -> Verdict {
        let v = if !pkt.whole() {
            Verdict::Drop(DropReason::Multisegment)
        } else {
            match parse(pkt.data()) {
                Ok(p) => self.classify(snap, pkt, &p, Hint::NONE, now_ms),
                Err(_) => Verdict::Drop(DropReason::Malformed),
            }
        };
        self.count(v)
    }

    /// Counts a drop.
    #[inline(always)]
    fn count(&self, v: Verdict) -> Verdict {
        if let Verdict::Drop(r) = v {
            self.stats.drop_packet(r);
        }
        v
    }

    /// Classifies a parsed frame: ours at all, then its family, once; `hint` is what the burst
    /// already worked out for it.
    #[inline(always)]
    fn classify<P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkt: &mut P,
        p: &Parsed,
        hint: Hint,
        now_ms: u32,
    ) -> Verdict {
        let d = pkt.data();
        let dst_mac = mac_at(d, 0);
        if dst_mac != snap.local.mac && dst_mac[0] & 1 == 0 {
            return Verdict::Drop(DropReason::NotForUs);
        }
        // No VLAN is configured: a tagged frame forwarded (or answered) with its tag would
        // cross into the backend's VLAN.
        if p.vlan.is_some() {
            return Verdict::Drop(DropReason::VlanTagged);
        }
        match p.l3 {
            L3::Arp => self.arp(snap, pkt, p),
            L3::Ipv4 => {
                if !checksum::ipv4_header_ok(&d[usize::from(p.l3_off)..]) {
                    return Verdict::Drop(DropReason::BadIpChecksum);
                }
                self.ip::<[u8; 4], P>(snap, pkt, p, hint, now_ms)
            }
            L3::Ipv6 => self.ip::<[u8; 16], P>(snap, pkt, p, hint, now_ms),
            L3::Other => Verdict::Drop(DropReason::UnsupportedL3),
        }
    }

    /// An IP packet of family `F`: to a served VIP port (the common case first), neighbour
    /// discovery, to one of our own addresses (a NAT reply, ICMP), or to a VIP (other ports,
    /// fragments, ICMP).
    #[inline(always)]
    fn ip<F: Family, P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkt: &mut P,
        p: &Parsed,
        hint: Hint,
        now_ms: u32,
    ) -> Verdict {
        // One table lookup (none when the prefetch pass found the frontend already).
        if (p.proto == proto::TCP || p.proto == proto::UDP) && p.fragment == Fragment::No {
            let f = match hint.frontend {
                Some(id) => snap.frontend(id),
                None if hint.hash.is_some() => None,
                None => snap.frontend_for(&p.dst, F::V6, p.proto, p.dport),
            };
            if let Some(f) = f {
                let h = hint.hash.unwrap_or_else(|| flow_hash::<F>(snap, p));
                let flow = VipFlow {
                    p,
                    f,
                    h,
                    hint,
                    now_ms,
                    proxy: None,
                };
                return self.vip_flow::<F, P>(snap, pkt, &flow);
            }
        }
        if p.proto == F::ICMP && F::is_neighbor_discovery(p.icmp_type) {
            return self.ndp(snap, pkt, p);
        }
        match snap.addr_kind(&p.dst, F::V6) {
            None => Verdict::Drop(DropReason::NoVip),
            Some(AddrKind::Own) => match p.proto {
                proto::TCP | proto::UDP if p.fragment == Fragment::No => {
                    self.nat_reply::<F, P>(snap, pkt, p, hint, now_ms)
                }
                proto::TCP | proto::UDP => Verdict::Drop(DropReason::NatFragment),
                t if t == F::ICMP => self.icmp::<F, P>(snap, pkt, p, now_ms),
                _ => Verdict::Drop(DropReason::UnsupportedL4),
            },
            Some(AddrKind::Vip) => match p.proto {
                proto::TCP | proto::UDP => self.vip_packet::<F, P>(snap, pkt, p, now_ms),
                t if t == F::ICMP => self.icmp::<F, P>(snap, pkt, p, now_ms),
                _ => Verdict::Drop(DropReason::UnsupportedL4),
            },
        }
    }

    /// A TCP/UDP packet (not a fragment) to a frontend: ACL, schedule, count, send.
    #[inline(always)]
    fn vip_flow<F: Family, P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkt: &mut P,
        flow: &VipFlow<'_>,
    ) -> Verdict {
        let (p, f) = (flow.p, flow.f);
        if !allowed::<F>(f, p) {
            return Verdict::Drop(DropReason::SourceDenied);
        }
        let proxied = f.syn_proxy.enabled() && f.method == Method::Nat && p.proto == proto::TCP;
        let with_acks;
        let flow = if proxied && p.tcp_flags & (flags::SYN | flags::ACK) == flags::SYN {
            // `on`, or `auto` while engaged: a cookie; else scheduled as any SYN.
            if self.cookie_for_syn(f) {
                let v = self.syn_cookie::<F, P>(snap, pkt, p, flow.now_ms);
                if let (Verdict::Tx, Some(c)) = (v, self.stats.frontends.get(f.id as usize)) {
                    crate::stats::bump(&c.syn_cookies_sent, 1);
                }
                return v;
            }
            flow
        } else if proxied {
            with_acks = VipFlow {
                proxy: synproxy::seq_ack(pkt.data(), p),
                ..*flow
            };
            &with_acks
        } else {
            flow
        };
        let src_mac = mac_at(pkt.data(), 6);
        let choice = match self.schedule::<F>(snap, flow, src_mac) {
            Ok(c) => c,
            Err(DropReason::TcpNoFlow)
                if self.reset_unknown_flows && edge::tcp_reset::<F, P>(pkt, p, snap.local.mac) =>
            {
                bump(&self.stats.tcp_resets, 1);
                return Verdict::Tx;
            }
            Err(r) => return Verdict::Drop(r),
        };
        let b = choice.backend;
        if let Some(c) = self.stats.targets.get(b.id as usize) {
            bump(&c.packets, 1);
            bump(&c.bytes, pkt.data().len() as u64);
        }
        match f.method {
            Method::Nat if choice.flags & Fwd::PROXIED != 0 => {
                self.proxy_send::<F, P>(snap, pkt, p, &choice)
            }
            Method::Nat => nat::send::<F, P>(snap, pkt, p, &choice),
            m => dsr::send::<F, P>(snap, pkt, p, m, b),
        }
    }
}

/// Whether frontend `f`'s source ranges admit the packet's source.
#[inline(always)]
fn allowed<F: Family>(f: &Frontend, p: &Parsed) -> bool {
    f.source_ranges.is_empty()
        || f.source_ranges
            .iter()
            .any(|c| c.contains_raw(&p.src, F::V6))
}

/// A forward flow's entry was freed: one flow fewer to its backend.
#[inline(always)]
fn closed(stats: &WorkerStats, v: &Fwd) {
    // A synced entry was never counted as one of ours.
    if v.synced() {
        return;
    }
    if let Some(c) = stats.targets.get(v.backend as usize) {
        bump(&c.closed_flows, 1);
    }
}

/// Accounts for the flow a forward insert displaced, if any (replaced, expired or evicted).
#[inline(always)]
fn displaced_flow<K>(stats: &WorkerStats, r: &Inserted<K, Fwd>) {
    match r {
        Inserted::New | Inserted::Kept | Inserted::Refused => {}
        Inserted::Replaced { old } => closed(stats, old),
        Inserted::Expired { value, .. } | Inserted::Evicted { value, .. } => closed(stats, value),
    }
}

/// The 5-tuple flow hash of a parsed TCP/UDP packet of family `F` under the snapshot's seed.
#[inline(always)]
fn flow_hash<F: Family>(snap: &Snapshot, p: &Parsed) -> u64 {
    F::hash_5tuple(
        snap.hash_seed,
        F::from_raw(&p.src),
        F::from_raw(&p.dst),
        p.sport,
        p.dport,
        p.proto,
    )
}

/// The MAC address at `at` of a frame (zero if the frame is shorter; parsed frames are not).
#[inline(always)]
fn mac_at(d: &[u8], at: usize) -> [u8; 6] {
    d.get(at..at + 6)
        .and_then(|m| m.try_into().ok())
        .unwrap_or_default()
}

/// The address of `ip` in 16 bytes (an IPv4 address in the first four), as the parser stores
/// addresses.
#[inline(always)]
fn raw_ip(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => {
            let mut r = [0u8; 16];
            r[..4].copy_from_slice(&a.octets());
            r
        }
        IpAddr::V6(a) => a.octets(),
    }
}

/// A new flow's state from the TCP flags of its first packet (`Udp` when not TCP).
#[inline(always)]
fn flow_state(tcp: bool, fl: u8) -> FlowState {
    if !tcp {
        FlowState::Udp
    } else if fl & (flags::RST | flags::FIN) != 0 {
        FlowState::TcpClosing
    } else if fl & flags::SYN != 0 && fl & flags::ACK == 0 {
        FlowState::TcpSynSent
    } else {
        FlowState::TcpEstablished
    }
}

/// A tracked flow's next state given the TCP flags of its latest packet.
#[inline(always)]
fn next_state(cur: FlowState, tcp: bool, fl: u8) -> FlowState {
    if !tcp {
        return cur;
    }
    if fl & (flags::RST | flags::FIN) != 0 {
        FlowState::TcpClosing
    } else if fl & flags::SYN != 0 && fl & flags::ACK == 0 {
        // A new connection attempt on this 5-tuple (e.g. a retry after an RST): start over.
        FlowState::TcpSynSent
    } else if matches!(cur, FlowState::TcpSynSent) && fl & flags::ACK != 0 && fl & flags::SYN == 0 {
        FlowState::TcpEstablished
    } else {
        cur
    }
}

/// Maglev with down/draining backends skipped, no rebuild.
#[inline(always)]
fn pick<'s>(snap: &'s Snapshot, f: &Frontend, h: u64) -> Option<&'s Backend> {
    // The liveness test already finds the backend: keep it rather than look it up again.
    let live = std::cell::Cell::new(None);
    f.maglev.lookup_live(h, |i| {
        let b = f
            .backends
            .get(i as usize)
            .and_then(|id| snap.backend(*id))
            .filter(|b| b.state == BackendState::Active);
        live.set(b);
        b.is_some()
    })?;
    live.get()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{Conntrack, V4Key, V6Key};

    /// What a flow costs in the tables (slot plus 2-byte tag): the targets of docs/dataplane.md.
    #[test]
    fn flow_entry_sizes() {
        // IPv4: a DSR flow is one forward entry, a NAT flow a forward and a reverse entry.
        assert_eq!(Conntrack::<V4Key, Fwd>::bytes_per_slot(), 34);
        assert_eq!(Conntrack::<V4Key, Rev<[u8; 4]>>::bytes_per_slot(), 34);
        // IPv6: a forward entry fills a cache line; a reverse one a line and a half.
        assert_eq!(Conntrack::<V6Key, Fwd>::bytes_per_slot(), 66);
        assert_eq!(Conntrack::<V6Key, Rev<[u8; 16]>>::bytes_per_slot(), 98);
        assert_eq!(Conntrack::<V4Key, Aff>::bytes_per_slot(), 34);
    }
}
