//! # The per-packet pipeline
//!
//! `parse -> classify -> ACL -> conntrack -> affinity/Maglev -> rewrite`, on byte slices.
//!
//! ## Design
//! - [`Pipeline::process`] takes one frame in a [`PacketBuf`] (an mbuf in the worker, a `Vec`
//!   in tests and benchmarks) and returns a [`Verdict`]. It never allocates, locks, logs or
//!   formats; every table it touches was allocated in [`Pipeline::new`].
//! - Flow tables are per worker and per family: forward flows (client -> VIP), NAT reverse
//!   flows (backend -> local address), and ClientIP affinity. A forward entry stores the
//!   backend *id*; a backend that left the snapshot is noticed lazily at the next packet.
//! - Established flows keep their backend whatever its state (draining, down); only a backend
//!   removed from the snapshot ends them. New flows see only `Active` backends.
//! - `nat` gives each worker a disjoint slice of the local port range, so the owner of a reply
//!   is known from its destination port alone ([`Verdict::ToWorker`]).
//! - Fragments: `dsr-*` Services balance them by 3-tuple (source, destination, protocol) without
//!   tracking, so every fragment of a datagram reaches the same backend; `nat` drops them
//!   ([`DropReason::NatFragment`]), since rewriting ports needs the whole datagram.
use std::net::IpAddr;
use std::sync::Arc;

use crate::conntrack::{
    Conntrack, ConntrackConfig, Entry, FlowKey, FlowState, Insert, Inserted, Timeouts, V4Key,
    V6Key, NO_SLOT,
};
use crate::hash;
use crate::snapshot::{AddrKind, Backend, BackendState, Frontend, Method, Snapshot};
use crate::stats::{bump, DropReason, WorkerStats};
use crate::wire::checksum::{self, update16};
use crate::wire::parse::{parse, parse_into, Fragment, Parsed, L3};
use crate::wire::{arp, be16, ethernet, icmp, ipv4, ipv6, proto, put16, tcp::flags};

/// A packet buffer the pipeline can rewrite and grow at the front (for encapsulation).
pub trait PacketBuf {
    /// The frame bytes.
    fn data(&self) -> &[u8];
    /// The frame bytes, writable.
    fn data_mut(&mut self) -> &mut [u8];
    /// Grows the frame by `n` bytes at the front; false if there is no headroom.
    fn prepend(&mut self, n: usize) -> bool;
    /// Shrinks the frame by `n` bytes at the end; false if shorter than `n`.
    fn trim(&mut self, n: usize) -> bool;
}

/// A `Vec`-backed [`PacketBuf`] with headroom, for tests, benchmarks and fuzzing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VecBuf {
    buf: Vec<u8>,
    start: usize,
}

impl VecBuf {
    /// Headroom given by [`VecBuf::new`], as an mbuf has (`RTE_PKTMBUF_HEADROOM`).
    pub const HEADROOM: usize = 128;

    /// A buffer holding `frame` with [`Self::HEADROOM`] bytes free in front.
    pub fn new(frame: &[u8]) -> Self {
        let mut buf = vec![0u8; Self::HEADROOM + frame.len()];
        buf[Self::HEADROOM..].copy_from_slice(frame);
        VecBuf {
            buf,
            start: Self::HEADROOM,
        }
    }

    /// Replaces the content with `frame`, reusing the allocation when it fits.
    pub fn reset(&mut self, frame: &[u8]) {
        self.buf.resize(Self::HEADROOM + frame.len(), 0);
        self.buf[Self::HEADROOM..].copy_from_slice(frame);
        self.start = Self::HEADROOM;
    }
}

// Inlined always, as the worker's `Mbuf` accessors are, so that the benchmarks measure the
// pipeline and not a call per access.
impl PacketBuf for VecBuf {
    #[inline(always)]
    fn data(&self) -> &[u8] {
        &self.buf[self.start..]
    }
    #[inline(always)]
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..]
    }
    fn prepend(&mut self, n: usize) -> bool {
        if n > self.start {
            return false;
        }
        self.start -= n;
        true
    }
    fn trim(&mut self, n: usize) -> bool {
        if n > self.buf.len() - self.start {
            return false;
        }
        self.buf.truncate(self.buf.len() - n);
        true
    }
}

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

/// Forward-flow value: which backend, and the NAT local address/port if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fwd {
    /// Backend id.
    pub backend: u32,
    /// NAT local port (0 for DSR).
    pub nat_port: u16,
    /// Index into the NAT local addresses of the family.
    pub nat_addr: u8,
    /// Reserved.
    pub flags: u8,
}

/// NAT reverse value (IPv4): where the reply goes back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rev4 {
    /// Client address.
    pub client: [u8; 4],
    /// Client port.
    pub client_port: u16,
    /// MAC the client's packets came from (client or router), replies go there.
    pub client_mac: [u8; 6],
    /// Frontend id (gives the VIP and port to put back as the source); below
    /// [`MAX_FRONTENDS`](crate::snapshot::MAX_FRONTENDS), so 16 bits: with them the entry fits a 32-byte slot.
    pub frontend: u16,
}

/// NAT reverse value (IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rev6 {
    /// Client address.
    pub client: [u8; 16],
    /// Client port.
    pub client_port: u16,
    /// MAC the client's packets came from.
    pub client_mac: [u8; 6],
    /// Frontend id (below [`MAX_FRONTENDS`](crate::snapshot::MAX_FRONTENDS)).
    pub frontend: u16,
}

/// One tracked forward flow, as [`Pipeline::flows_from`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowEntry {
    /// Client address.
    pub src: IpAddr,
    /// VIP.
    pub dst: IpAddr,
    /// Client port.
    pub sport: u16,
    /// VIP port.
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Backend and NAT local port.
    pub fwd: Fwd,
    /// Protocol state.
    pub state: FlowState,
    /// When the flow was last seen, on the worker's millisecond clock.
    pub last_seen_ms: u32,
}

/// ClientIP affinity value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Aff {
    /// Backend id.
    pub backend: u32,
    /// When the affinity ends (ms, wrapping clock).
    pub expires_ms: u32,
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
        }
    }
}

/// Longest ClientIP affinity Kubernetes allows (`timeoutSeconds` ≤ 86400).
const MAX_AFFINITY_MS: u32 = 86_400_000;
/// Flows whose second-pass prefetch is issued before a burst's first packet is processed; the
/// rest follow as packets are processed, this far ahead.
const PF_AHEAD: usize = 16;
/// Tries to find a free NAT port before giving up.
const NAT_PORT_TRIES: u32 = 64;
/// Table bit 3 of a `Pipeline::pf` entry without bit 2: nothing to prefetch in the second pass
/// (the place kept for a SYN's NAT reverse entry until `prefetch_entries` fills it in).
const PF_NOTHING: u8 = 8;

/// One worker's pipeline: its flow tables, counters and NAT port cursor.
#[derive(Debug)]
pub struct Pipeline {
    worker: u16,
    fwd4: Conntrack<V4Key, Fwd>,
    fwd6: Conntrack<V6Key, Fwd>,
    rev4: Conntrack<V4Key, Rev4>,
    rev6: Conntrack<V6Key, Rev6>,
    aff4: Conntrack<V4Key, Aff>,
    aff6: Conntrack<V6Key, Aff>,
    /// The next NAT port to try, as an offset into this worker's slice (reduced into the
    /// slice when used: a new snapshot may shrink it). Moves by one per allocation.
    nat_cursor: u32,
    /// The second cursor (same form): where an allocation whose first port was in use goes
    /// on looking.
    nat_spill: u32,
    /// This worker's slice of the snapshot's NAT port range, worked out once per range.
    nat: NatSlice,
    stats: Arc<WorkerStats>,
    /// Burst prefetch: (table, flow hash) per flow lookup of the current burst; table bits 0-1
    /// pick fwd4/fwd6/rev4/rev6, bit 2 marks a new flow (a SYN's insert), bit 3 an insert
    /// whose key is expected absent (a SYN's forward and NAT reverse entries: no entry to
    /// prefetch).
    pf: [(u8, u64); 64],
    /// The slot each entry of `pf` found by its second-pass prefetch ([`NO_SLOT`]: none), a
    /// hint that spares the lookup its search.
    pf_slot: [u32; 64],
    pf_len: usize,
    /// NAT port allocations predicted so far in this burst's prefetch pass.
    pf_syn: u32,
    /// TCP SYNs to NAT frontends in this burst's first pass (whose reverse entries
    /// `prefetch_entries` works out).
    pf_nat_syns: u32,
    /// The next entry of `pf` whose second-pass prefetch is still to be issued.
    pf_next: usize,
    /// Burst parse cache: what [`Pipeline::prefetch`] learned about each packet of the burst,
    /// reused by [`Pipeline::process_prefetched`] so a packet is parsed and hashed once.
    pre: [Pre; 32],
    /// Entries of `pre` written by the current burst's `prefetch` calls.
    pre_fill: usize,
    /// Entries of `pre` valid for `process_prefetched` (set by `prefetch_entries`).
    pre_ready: usize,
}

/// What the prefetch pass learned about one packet of a burst.
#[derive(Debug, Clone, Copy, Default)]
struct Pre {
    /// The frame's length when parsed: a packet of another length is parsed again.
    len: usize,
    /// Whether the frame parsed (`p` is meaningful only then).
    ok: bool,
    /// The parse.
    p: Parsed,
    /// Its hint for the processing pass.
    hint: Hint,
}

/// Work already done for a packet: its 5-tuple hash and the frontend it addresses.
#[derive(Debug, Clone, Copy, Default)]
struct Hint {
    /// The 5-tuple flow hash under the snapshot's seed.
    hash: Option<u64>,
    /// The frontend of (dst, proto, dport), if the packet is a first-fragment-free TCP/UDP
    /// packet to a served VIP port.
    frontend: Option<u32>,
    /// The index in `Pipeline::pf` of the packet's own flow lookup (forward, or NAT reverse
    /// for a reply), if it has one.
    pf: Option<u8>,
    /// For a TCP SYN to a NAT frontend without affinity: the index in `Pipeline::pf` kept
    /// for its NAT reverse entry, filled in by [`Pipeline::prefetch_entries`].
    rev_pf: Option<u8>,
    /// For the same SYN: the backend Maglev picked.
    pick: Option<u32>,
    /// For the same SYN: the NAT port cursor the prefetch pass predicted, the backend, and the
    /// hash of the reverse key they give (reused if the prediction holds).
    rev: Option<(u32, u32, u64)>,
}

#[inline(always)]
fn k4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8) -> V4Key {
    V4Key {
        src,
        dst,
        sport,
        dport,
        proto,
    }
}

#[inline(always)]
fn k6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, proto: u8) -> V6Key {
    V6Key {
        src,
        dst,
        sport,
        dport,
        proto,
    }
}

/// The second-pass prefetch of one remembered flow: the entry its lookup compares (if `find`;
/// the slot is returned as the lookup's hint) and, for a new flow, the slot its insert fills
/// or the victims it scans.
#[inline(always)]
fn second_pass<K: FlowKey, V: Copy>(t: &Conntrack<K, V>, h: u64, find: bool, new: bool) -> u32 {
    let slot = if find { t.prefetch_entry(h) } else { NO_SLOT };
    if new {
        t.prefetch_insert(h);
    }
    slot
}

/// A forward flow's entry was freed: one flow fewer to its backend.
#[inline(always)]
fn closed(stats: &WorkerStats, v: &Fwd) {
    if let Some(c) = stats.targets.get(v.backend as usize) {
        bump(&c.closed_flows, 1);
    }
}

/// Accounts for the flow a forward insert displaced, if any (replaced, expired or evicted).
#[inline(always)]
fn displaced_flow<K>(stats: &WorkerStats, r: &Inserted<K, Fwd>) {
    match r {
        Inserted::New | Inserted::Kept => {}
        Inserted::Replaced { old } => closed(stats, old),
        Inserted::Expired { value, .. } | Inserted::Evicted { value, .. } => closed(stats, value),
    }
}

/// The 5-tuple flow hash of a parsed TCP/UDP packet under the snapshot's seed.
#[inline(always)]
fn flow_hash(snap: &Snapshot, p: &Parsed, v6: bool) -> u64 {
    if v6 {
        hash::hash_v6_5tuple(snap.hash_seed, p.src, p.dst, p.sport, p.dport, p.proto)
    } else {
        hash::hash_v4_5tuple(
            snap.hash_seed,
            a4(&p.src),
            a4(&p.dst),
            p.sport,
            p.dport,
            p.proto,
        )
    }
}

/// The MAC address at `at` of a frame (zero if the frame is shorter; parsed frames are not).
#[inline(always)]
fn mac_at(d: &[u8], at: usize) -> [u8; 6] {
    d.get(at..at + 6)
        .and_then(|m| m.try_into().ok())
        .unwrap_or_default()
}

#[inline(always)]
fn a4(a: &[u8; 16]) -> [u8; 4] {
    [a[0], a[1], a[2], a[3]]
}

#[inline(always)]
fn raw_ip(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(x) => {
            let mut r = [0u8; 16];
            r[..4].copy_from_slice(&x.octets());
            r
        }
        IpAddr::V6(x) => x.octets(),
    }
}

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

/// The scheduling decision for one packet to a VIP.
struct Choice<'s> {
    /// The backend, in the snapshot.
    backend: &'s Backend,
    nat_port: u16,
    nat_addr: u8,
}

impl Pipeline {
    /// Allocates every table this worker will ever use.
    pub fn new(cfg: &PipelineConfig, stats: Arc<WorkerStats>) -> Self {
        let v6cfg = ConntrackConfig {
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
            fwd4: Conntrack::new(&cfg.conntrack),
            fwd6: Conntrack::new(&v6cfg),
            rev4: Conntrack::new(&cfg.conntrack),
            rev6: Conntrack::new(&v6cfg),
            aff4: Conntrack::new(&aff),
            aff6: Conntrack::new(&aff),
            nat_cursor: cfg.nat_port_start,
            nat_spill: cfg.nat_port_start,
            nat: NatSlice::new(1, 0, cfg.worker, cfg.workers),
            stats,
            pf: [(0, 0); 64],
            pf_slot: [NO_SLOT; 64],
            pf_len: 0,
            pf_syn: 0,
            pf_nat_syns: 0,
            pf_next: 0,
            pre: [Pre::default(); 32],
            pre_fill: 0,
            pre_ready: 0,
        };
        crate::stats::set(
            &p.stats.ct_capacity,
            (p.fwd4.capacity() + p.fwd6.capacity()) as u64,
        );
        p
    }

    /// This worker's counters.
    pub fn stats(&self) -> &Arc<WorkerStats> {
        &self.stats
    }

    /// Bytes held by this worker's flow tables.
    pub fn table_bytes(&self) -> usize {
        self.fwd4.bytes()
            + self.fwd6.bytes()
            + self.rev4.bytes()
            + self.rev6.bytes()
            + self.aff4.bytes()
            + self.aff6.bytes()
    }

    /// Live forward flows (both families).
    pub fn flows(&self) -> usize {
        self.fwd4.len() + self.fwd6.len()
    }

    /// Amortised expiry: scans up to `buckets` buckets of each table. Publishes table gauges.
    pub fn expire(&mut self, now_ms: u32, buckets: usize) -> usize {
        let stats = &self.stats;
        let n = self
            .fwd4
            .expire(now_ms, buckets, |e| closed(stats, e.value()))
            + self
                .fwd6
                .expire(now_ms, buckets, |e| closed(stats, e.value()))
            + self.rev4.expire(now_ms, buckets, |_| {})
            + self.rev6.expire(now_ms, buckets, |_| {})
            + self.aff4.expire(now_ms, buckets, |_| {})
            + self.aff6.expire(now_ms, buckets, |_| {});
        self.publish_table_stats();
        n
    }

    /// Copies the conntrack counters into the shared stats.
    pub fn publish_table_stats(&self) {
        use crate::stats::set;
        let (a, b) = (self.fwd4.stats(), self.fwd6.stats());
        let s = &self.stats;
        set(&s.ct_hits, a.hits + b.hits);
        set(&s.ct_misses, a.misses + b.misses);
        set(&s.ct_inserts, a.inserts + b.inserts);
        set(&s.ct_evictions, a.evictions + b.evictions);
        set(&s.ct_expiries, a.expiries + b.expiries);
        set(&s.ct_entries, (self.fwd4.len() + self.fwd6.len()) as u64);
    }
    /// Looks up the forward flow of a client 5-tuple (admin/diagnostics, off the hot path):
    /// a keyed lookup with the snapshot's hash seed, which neither refreshes the entry nor
    /// counts in the hit/miss statistics.
    pub fn find_flow(
        &self,
        seed: u64,
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        dport: u16,
        proto: u8,
    ) -> Option<(Fwd, FlowState, u32)> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let (s, d) = (s.octets(), d.octets());
                let h = hash::hash_v4_5tuple(seed, s, d, sport, dport, proto);
                self.fwd4
                    .get(&k4(s, d, sport, dport, proto), h)
                    .map(|e| (*e.value(), e.state(), e.last_seen_ms()))
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let (s, d) = (s.octets(), d.octets());
                let h = hash::hash_v6_5tuple(seed, s, d, sport, dport, proto);
                self.fwd6
                    .get(&k6(s, d, sport, dport, proto), h)
                    .map(|e| (*e.value(), e.state(), e.last_seen_ms()))
            }
            _ => None,
        }
    }

    /// Forward flows of client `src` (any port, VIP and protocol), at most `max`, in table
    /// order (admin/diagnostics: a linear scan of one family's table, off the hot path).
    pub fn flows_from(&self, src: IpAddr, max: usize) -> Vec<FlowEntry> {
        let mut out = Vec::new();
        self.flows_from_slots(src, 0, usize::MAX, &mut out);
        out.truncate(max);
        out
    }

    /// Slots in the forward table of `src`'s family (the range of [`Pipeline::flows_from_slots`]).
    pub fn flow_slots(&self, src: IpAddr) -> usize {
        match src {
            IpAddr::V4(_) => self.fwd4.capacity(),
            IpAddr::V6(_) => self.fwd6.capacity(),
        }
    }

    /// Appends to `out` the forward flows of client `src` held in slots `start..start + count`
    /// of its family's table: an admin scan a worker spreads over many millisecond ticks, so
    /// that no tick holds up its packets for long. Returns the next slot to scan, or `None`
    /// when the table is done.
    pub fn flows_from_slots(
        &self,
        src: IpAddr,
        start: usize,
        count: usize,
        out: &mut Vec<FlowEntry>,
    ) -> Option<usize> {
        fn collect<K: FlowKey>(
            t: &Conntrack<K, Fwd>,
            src: IpAddr,
            start: usize,
            count: usize,
            out: &mut Vec<FlowEntry>,
            parts: impl Fn(&K) -> (bool, IpAddr, u16, u16, u8),
        ) -> Option<usize> {
            out.extend(t.entries_in(start, count).filter_map(|e| {
                let (mine, dst, sport, dport, proto) = parts(e.key());
                mine.then_some(FlowEntry {
                    src,
                    dst,
                    sport,
                    dport,
                    proto,
                    fwd: *e.value(),
                    state: e.state(),
                    last_seen_ms: e.last_seen_ms(),
                })
            }));
            let next = start.saturating_add(count);
            (next < t.capacity()).then_some(next)
        }
        match src {
            IpAddr::V4(a) => collect(&self.fwd4, src, start, count, out, |k| {
                (
                    k.src == a.octets(),
                    IpAddr::from(k.dst),
                    k.sport,
                    k.dport,
                    k.proto,
                )
            }),
            IpAddr::V6(a) => collect(&self.fwd6, src, start, count, out, |k| {
                (
                    k.src == a.octets(),
                    IpAddr::from(k.dst),
                    k.sport,
                    k.dport,
                    k.proto,
                )
            }),
        }
    }

    /// The worker that owns NAT local port `port`.
    #[inline(always)]
    pub fn nat_owner(snap: &Snapshot, workers: u16, port: u16) -> u16 {
        let (lo, hi) = (snap.local.nat_port_min, snap.local.nat_port_max);
        if port < lo || port > hi {
            return 0;
        }
        NatSlice::new(lo, hi, 0, workers).owner(port)
    }

    /// First pass of burst prefetching: parses `pkt`, computes its flow hash, finds its
    /// frontend and prefetches the tag words of the two buckets its flow may live in
    /// (`prefetcht0`), remembering all of it as the burst's next packet. A worker calls it for
    /// every packet of a burst (at most 32), then [`Pipeline::prefetch_entries`], then
    /// [`Pipeline::process_prefetched`] for each packet in the same order: the burst's cache
    /// misses on the (much larger than cache) flow tables overlap instead of stalling one
    /// packet at a time, and no packet is parsed or hashed twice.
    #[inline]
    pub fn prefetch<P: PacketBuf>(&mut self, snap: &Snapshot, pkt: &P) {
        if self.pre_fill == 0 {
            // A new burst: nothing of the last one may be reused, even if the caller skips
            // prefetch_entries (then every packet is processed from scratch).
            self.pf_len = 0;
            self.pf_next = 0;
            self.pf_syn = 0;
            self.pf_nat_syns = 0;
            self.pre_ready = 0;
        }
        let Some(slot) = self.pre.get_mut(self.pre_fill) else {
            return;
        };
        self.pre_fill += 1;
        let data = pkt.data();
        slot.len = data.len();
        slot.hint = Hint::default();
        slot.ok = parse_into(data, &mut slot.p).is_ok();
        if !slot.ok {
            return;
        }
        let p = &slot.p;
        if p.proto != proto::TCP && p.proto != proto::UDP || p.fragment != Fragment::No {
            return;
        }
        let v6 = match p.l3 {
            L3::Ipv4 => false,
            L3::Ipv6 => true,
            _ => return,
        };
        let h = flow_hash(snap, p, v6);
        let fe = snap.frontend_id_for(&p.dst, v6, p.proto, p.dport);
        slot.hint = Hint {
            hash: Some(h),
            frontend: fe,
            pf: None,
            rev_pf: None,
            pick: None,
            rev: None,
        };
        let nat_reply = fe.is_none()
            && p.dport >= snap.local.nat_port_min
            && p.dport <= snap.local.nat_port_max
            && matches!(snap.addr_kind(&p.dst, v6), Some(AddrKind::Own));
        if fe.is_none() && !nat_reply {
            return;
        }
        // A TCP SYN opens a flow: its insert may need a victim from a full bucket. Its lookup
        // is expected to miss (bit 3: no entry to prefetch; a retransmitted SYN then reads its
        // entry unprefetched), which spares the second pass a tag search per SYN.
        let syn = p.proto == proto::TCP && p.tcp_flags & (flags::SYN | flags::ACK) == flags::SYN;
        let new = syn && !nat_reply;
        let table =
            u8::from(v6) | (u8::from(nat_reply) << 1) | (u8::from(new) << 2) | (u8::from(new) << 3);
        match table & 3 {
            0 => self.fwd4.prefetch(h),
            1 => self.fwd6.prefetch(h),
            2 => self.rev4.prefetch(h),
            _ => self.rev6.prefetch(h),
        }
        if let Some(e) = self.pf.get_mut(self.pf_len) {
            *e = (table, h);
            slot.hint.pf = Some(self.pf_len as u8);
            self.pf_len += 1;
        }
        // A TCP SYN to a NAT frontend will take a NAT port. Its backend (Maglev), its port and
        // so its reverse key are worked out by `prefetch_entries`, once the Maglev entry
        // fetched here has arrived (a table of 65537 entries falls out of the caches under
        // flow-table traffic: read here, it stalled every SYN); the reverse entry's place in
        // `pf`, right after the forward one, is kept now, as a no-op until then.
        let Some(f) = fe.and_then(|id| snap.frontend(id)) else {
            return;
        };
        if f.method != Method::Nat || f.affinity_ms.is_some() || !syn {
            return;
        }
        if let Some(e) = f.maglev.entry_for(h) {
            dpdk_sys::prefetch(e);
        }
        if let Some(e) = self.pf.get_mut(self.pf_len) {
            *e = (u8::from(v6) | PF_NOTHING, h);
            slot.hint.rev_pf = Some(self.pf_len as u8);
            self.pf_len += 1;
            self.pf_nat_syns += 1;
        }
    }

    /// Second pass: for each TCP SYN to a NAT frontend, picks the backend (its Maglev entry is
    /// in cache by now), predicts its NAT port and prefetches the reverse-table buckets its
    /// port check and reverse insert read; then prefetches the entries the first few
    /// remembered flows' lookups will compare (their tags are in cache by now), and readies
    /// the burst for [`Pipeline::process_prefetched`], which prefetches the rest a few packets
    /// ahead so that the misses overlap with processing rather than stall a pass of their own.
    /// `snap` is the snapshot the burst was prefetched with.
    #[inline]
    pub fn prefetch_entries(&mut self, snap: &Snapshot) {
        // Established traffic has no SYN: skip the loop.
        let todo = if self.pf_nat_syns != 0 {
            self.pre_fill
        } else {
            0
        };
        let nat = self.nat.of(snap);
        for pre in &mut self.pre[..todo] {
            let Some(j) = pre.hint.rev_pf else {
                continue;
            };
            let (Some(h), Some(f)) = (
                pre.hint.hash,
                pre.hint.frontend.and_then(|id| snap.frontend(id)),
            ) else {
                continue;
            };
            let Some(b) = pick(snap, f, h) else {
                continue;
            };
            pre.hint.pick = Some(b.id);
            // The cursor moves by exactly one per allocation (see `alloc_nat`): this SYN's
            // port is the cursor's `pf_syn`-th next. A retransmitted SYN, which takes no port,
            // puts the burst's later predictions off (each then costs one useless prefetch).
            let cursor = nat.wrap(nat.wrap(self.nat_cursor) + self.pf_syn);
            self.pf_syn += 1;
            let v6 = pre.p.l3 == L3::Ipv6;
            let Some(rk) = nat_rev_key(snap, &pre.p, v6, b, h, nat.port(cursor)) else {
                continue;
            };
            let rh = rk.hash(snap.hash_seed);
            pre.hint.rev = Some((cursor, b.id, rh));
            // Bit 3: only the insert's slot matters (the port is expected free), no entry.
            let table = if v6 { 3 | 4 | 8 } else { 2 | 4 | 8 };
            match table & 3 {
                2 => self.rev4.prefetch(rh),
                _ => self.rev6.prefetch(rh),
            }
            self.pf[usize::from(j)] = (table, rh);
        }
        self.pf_issue(PF_AHEAD);
        self.pre_ready = self.pre_fill;
        self.pre_fill = 0;
    }

    /// Issues the second-pass prefetches of the remembered flows up to (not including) `upto`.
    #[inline(always)]
    fn pf_issue(&mut self, upto: usize) {
        let end = upto.min(self.pf_len);
        while self.pf_next < end {
            let (table, h) = self.pf[self.pf_next];
            // Bit 2: a new flow: also the slot its insert fills (or the victims it scans).
            let new = table & 4 != 0;
            let find = table & 8 == 0;
            self.pf_slot[self.pf_next] = match table & 3 {
                0 => second_pass(&self.fwd4, h, find, new),
                1 => second_pass(&self.fwd6, h, find, new),
                2 => second_pass(&self.rev4, h, find, new),
                _ => second_pass(&self.rev6, h, find, new),
            };
            self.pf_next += 1;
        }
    }

    /// The slot the second-pass prefetch found for the packet's flow lookup, once issued.
    #[inline(always)]
    fn slot_hint(&self, hint: Hint) -> u32 {
        match hint.pf {
            Some(i) if usize::from(i) < self.pf_next => self.pf_slot[usize::from(i)],
            _ => NO_SLOT,
        }
    }

    /// Processes packet `i` (0-based, in [`Pipeline::prefetch`] order) of the burst readied by
    /// [`Pipeline::prefetch_entries`], reusing its parse, hash and frontend. A packet that does
    /// not match what was prefetched at `i` (another length, or `i` outside the burst) is
    /// simply processed from scratch, as by [`Pipeline::process`].
    #[inline]
    pub fn process_prefetched<P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        i: usize,
        pkt: &mut P,
        now_ms: u32,
    ) -> Verdict {
        // Keep the second-pass prefetches PF_AHEAD flows ahead (two per packet: a new TCP flow
        // has two, its forward and its NAT reverse bucket).
        self.pf_issue(self.pf_next + 2);
        let (p, hint) = match self.pre.get(i) {
            Some(pre) if i < self.pre_ready && pre.len == pkt.data().len() => {
                if !pre.ok {
                    self.stats.drop_packet(DropReason::Malformed);
                    return Verdict::Drop(DropReason::Malformed);
                }
                (pre.p, pre.hint)
            }
            _ => return self.process(snap, pkt, now_ms),
        };
        let v = self.classify_parsed(snap, pkt, &p, hint, now_ms);
        if let Verdict::Drop(r) = v {
            self.stats.drop_packet(r);
        }
        v
    }

    /// Processes one frame. `now_ms` is a wrapping millisecond clock.
    #[inline]
    pub fn process<P: PacketBuf>(&mut self, snap: &Snapshot, pkt: &mut P, now_ms: u32) -> Verdict {
        let v = self.classify(snap, pkt, now_ms);
        if let Verdict::Drop(r) = v {
            self.stats.drop_packet(r);
        }
        v
    }

    #[inline(always)]
    fn classify<P: PacketBuf>(&mut self, snap: &Snapshot, pkt: &mut P, now_ms: u32) -> Verdict {
        match parse(pkt.data()) {
            Ok(p) => self.classify_parsed(snap, pkt, &p, Hint::default(), now_ms),
            Err(_) => Verdict::Drop(DropReason::Malformed),
        }
    }

    #[inline(always)]
    fn classify_parsed<P: PacketBuf>(
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
        match p.l3 {
            L3::Arp => self.arp(snap, pkt, p),
            L3::Ipv4 => {
                let l3 = usize::from(p.l3_off);
                if !checksum::ipv4_header_ok(&d[l3..]) {
                    return Verdict::Drop(DropReason::BadIpChecksum);
                }
                self.ip(snap, pkt, p, false, hint, now_ms)
            }
            L3::Ipv6 => self.ip(snap, pkt, p, true, hint, now_ms),
            L3::Other => Verdict::Drop(DropReason::UnsupportedL3),
        }
    }

    fn arp<P: PacketBuf>(&mut self, snap: &Snapshot, pkt: &mut P, p: &Parsed) -> Verdict {
        let l3 = usize::from(p.l3_off);
        let d = pkt.data_mut();
        let a = match arp::Packet::new_checked(&d[l3..]) {
            Ok(a) => a,
            Err(_) => return Verdict::Drop(DropReason::Malformed),
        };
        let (op, sha, spa, tpa) = (a.op(), a.sha(), a.spa(), a.tpa());
        let mut t = [0u8; 16];
        t[..4].copy_from_slice(&tpa);
        let ours = snap.addr_kind(&t, false).is_some();
        if op == arp::OP_REQUEST && ours && spa != tpa {
            // Rewrite only the MACs: the EtherType (or VLAN tag) stays as received.
            let mac = snap.local.mac;
            d[0..6].copy_from_slice(&sha);
            d[6..12].copy_from_slice(&mac);
            arp::emit(&mut d[l3..], arp::OP_REPLY, mac, tpa, sha, spa);
            bump(&self.stats.neighbor_replies, 1);
            return Verdict::Tx;
        }
        let mut s = [0u8; 16];
        s[..4].copy_from_slice(&spa);
        if (op == arp::OP_REPLY || spa == tpa)
            && snap.addr_kind(&s, false).is_none()
            && spa != [0; 4]
        {
            return Verdict::Neighbor(NeighborEvent {
                ip: IpAddr::from(spa),
                mac: sha,
            });
        }
        Verdict::Drop(DropReason::ArpNotOurs)
    }

    #[inline(always)]
    fn ip<P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkt: &mut P,
        p: &Parsed,
        v6: bool,
        hint: Hint,
        now_ms: u32,
    ) -> Verdict {
        // The common case first: TCP/UDP to a served VIP port, one table lookup (none when the
        // prefetch pass found the frontend already).
        if (p.proto == proto::TCP || p.proto == proto::UDP) && p.fragment == Fragment::No {
            let f = match hint.frontend {
                Some(id) => snap.frontend(id),
                None if hint.hash.is_some() => None,
                None => snap.frontend_for(&p.dst, v6, p.proto, p.dport),
            };
            if let Some(f) = f {
                let h = hint.hash.unwrap_or_else(|| flow_hash(snap, p, v6));
                return self.vip_flow(snap, pkt, p, v6, f, h, hint, now_ms);
            }
        }
        if v6
            && p.proto == proto::ICMPV6
            && matches!(
                p.icmp_type,
                icmp::v6::NEIGHBOR_SOLICIT | icmp::v6::NEIGHBOR_ADVERT
            )
        {
            return self.ndp(snap, pkt, p);
        }
        match snap.addr_kind(&p.dst, v6) {
            None => Verdict::Drop(DropReason::NoVip),
            Some(AddrKind::Own) => match p.proto {
                proto::TCP | proto::UDP if p.fragment == Fragment::No => {
                    self.nat_reply(snap, pkt, p, v6, hint, now_ms)
                }
                proto::TCP | proto::UDP => Verdict::Drop(DropReason::NatFragment),
                proto::ICMP | proto::ICMPV6 => self.icmp(snap, pkt, p, v6, now_ms),
                _ => Verdict::Drop(DropReason::UnsupportedL4),
            },
            Some(AddrKind::Vip) => match p.proto {
                proto::TCP | proto::UDP => self.vip_packet(snap, pkt, p, v6, now_ms),
                proto::ICMP | proto::ICMPV6 => self.icmp(snap, pkt, p, v6, now_ms),
                _ => Verdict::Drop(DropReason::UnsupportedL4),
            },
        }
    }

    #[inline(always)]
    fn vip_packet<P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkt: &mut P,
        p: &Parsed,
        v6: bool,
        now_ms: u32,
    ) -> Verdict {
        let f = if p.fragment == Fragment::Later {
            match snap.dsr_frontend_any_port(&p.dst, v6, p.proto) {
                Some(f) => f,
                None => {
                    return Verdict::Drop(if snap.frontends().any(|f| raw_ip(f.vip) == p.dst) {
                        DropReason::NatFragment
                    } else {
                        DropReason::PortNotServed
                    })
                }
            }
        } else {
            match snap.frontend_for(&p.dst, v6, p.proto, p.dport) {
                Some(f) => f,
                None => return Verdict::Drop(DropReason::PortNotServed),
            }
        };
        if p.fragment == Fragment::No {
            let h = flow_hash(snap, p, v6);
            return self.vip_flow(snap, pkt, p, v6, f, h, Hint::default(), now_ms);
        }
        if !f.source_ranges.is_empty()
            && !f.source_ranges.iter().any(|c| c.contains_raw(&p.src, v6))
        {
            return Verdict::Drop(DropReason::SourceDenied);
        }
        if f.method == Method::Nat {
            return Verdict::Drop(DropReason::NatFragment);
        }
        // 3-tuple: every fragment of a datagram goes to the same backend, untracked.
        let h = if v6 {
            hash::hash_v6_5tuple(snap.hash_seed, p.src, p.dst, 0, 0, p.proto)
        } else {
            hash::hash_v4_5tuple(snap.hash_seed, a4(&p.src), a4(&p.dst), 0, 0, p.proto)
        };
        let Some(b) = pick(snap, f, h) else {
            return Verdict::Drop(DropReason::NoBackend);
        };
        self.send_dsr(snap, pkt, p, v6, f.method, b)
    }

    /// A TCP/UDP packet (not a fragment) to frontend `f`; `h` is its 5-tuple hash, `hint`
    /// what the prefetch pass already worked out for it.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn vip_flow<P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkt: &mut P,
        p: &Parsed,
        v6: bool,
        f: &Frontend,
        h: u64,
        hint: Hint,
        now_ms: u32,
    ) -> Verdict {
        if !f.source_ranges.is_empty()
            && !f.source_ranges.iter().any(|c| c.contains_raw(&p.src, v6))
        {
            return Verdict::Drop(DropReason::SourceDenied);
        }
        let d = pkt.data();
        let src_mac = mac_at(d, 6);
        let choice = match self.schedule(snap, f, p, v6, h, hint, now_ms, src_mac) {
            Ok(c) => c,
            Err(r) => return Verdict::Drop(r),
        };
        let b = choice.backend;
        let t = &self.stats.targets;
        if let Some(c) = t.get(b.id as usize) {
            bump(&c.packets, 1);
            bump(&c.bytes, pkt.data().len() as u64);
        }
        match f.method {
            Method::Nat => self.send_nat(snap, pkt, p, v6, b, &choice),
            m => self.send_dsr(snap, pkt, p, v6, m, b),
        }
    }

    /// Conntrack, then affinity, then Maglev. Inserts new flows.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn schedule<'s>(
        &mut self,
        snap: &'s Snapshot,
        f: &Frontend,
        p: &Parsed,
        v6: bool,
        h: u64,
        hint: Hint,
        now_ms: u32,
        src_mac: [u8; 6],
    ) -> Result<Choice<'s>, DropReason> {
        let tcp = p.proto == proto::TCP;
        let fl = p.tcp_flags;
        let at = self.slot_hint(hint);
        // Established flow?
        let hit = if v6 {
            let k = k6(p.src, p.dst, p.sport, p.dport, p.proto);
            let stats = &self.stats;
            let gone = |e: &Entry<V6Key, Fwd>| closed(stats, e.value());
            self.fwd6.lookup(&k, h, at, now_ms, gone).map(|e| {
                let s = next_state(e.state(), tcp, fl);
                e.set_state(s);
                *e.value()
            })
        } else {
            let k = k4(a4(&p.src), a4(&p.dst), p.sport, p.dport, p.proto);
            let stats = &self.stats;
            let gone = |e: &Entry<V4Key, Fwd>| closed(stats, e.value());
            self.fwd4.lookup(&k, h, at, now_ms, gone).map(|e| {
                let s = next_state(e.state(), tcp, fl);
                e.set_state(s);
                *e.value()
            })
        };
        // A miss leaves the key absent (an expired entry was freed): insert without a search.
        let absent = hit.is_none();
        if let Some(v) = hit {
            if let Some(b) = snap.backend(v.backend) {
                if b.mac.is_some() && (f.method != Method::Nat || v.nat_port != 0) {
                    return Ok(Choice {
                        backend: b,
                        nat_port: v.nat_port,
                        nat_addr: v.nat_addr,
                    });
                }
            }
            // The backend left the snapshot (or the method changed): schedule anew below.
        }
        if tcp && f.method == Method::Nat && !(fl & flags::SYN != 0 && fl & flags::ACK == 0) {
            return Err(DropReason::TcpNoFlow);
        }
        // ClientIP affinity.
        let mut chosen: Option<&Backend> = None;
        if let Some(aff_ms) = f.affinity_ms {
            let ak_h = if v6 {
                hash::hash_v6_5tuple(snap.hash_seed, p.src, p.dst, 0, p.dport, p.proto)
            } else {
                hash::hash_v4_5tuple(snap.hash_seed, a4(&p.src), a4(&p.dst), 0, p.dport, p.proto)
            };
            let got = if v6 {
                let k = k6(p.src, p.dst, 0, p.dport, p.proto);
                self.aff6
                    .lookup(&k, ak_h, NO_SLOT, now_ms, |_| {})
                    .map(|e| *e.value())
            } else {
                let k = k4(a4(&p.src), a4(&p.dst), 0, p.dport, p.proto);
                self.aff4
                    .lookup(&k, ak_h, NO_SLOT, now_ms, |_| {})
                    .map(|e| *e.value())
            };
            if let Some(a) = got {
                if (a.expires_ms.wrapping_sub(now_ms) as i32) > 0 {
                    chosen = snap
                        .backend(a.backend)
                        .filter(|b| b.state == BackendState::Active && f.backends.contains(&b.id));
                }
            }
            if chosen.is_none() {
                // Maglev on the client address alone: the same client lands on the same
                // backend on every worker and every Sluice host.
                let ch = if v6 {
                    hash::hash_v6_5tuple(snap.hash_seed, p.src, [0; 16], 0, 0, 0)
                } else {
                    hash::hash_v4_5tuple(snap.hash_seed, a4(&p.src), [0; 4], 0, 0, 0)
                };
                chosen = pick(snap, f, ch);
            }
            if let Some(b) = chosen {
                let val = Aff {
                    backend: b.id,
                    expires_ms: now_ms.wrapping_add(aff_ms.min(MAX_AFFINITY_MS)),
                };
                if v6 {
                    let _ = self.aff6.insert(
                        k6(p.src, p.dst, 0, p.dport, p.proto),
                        ak_h,
                        val,
                        FlowState::Other,
                        now_ms,
                        Insert::Replace,
                    );
                } else {
                    let _ = self.aff4.insert(
                        k4(a4(&p.src), a4(&p.dst), 0, p.dport, p.proto),
                        ak_h,
                        val,
                        FlowState::Other,
                        now_ms,
                        Insert::Replace,
                    );
                }
            }
        } else {
            chosen = match hint.pick.and_then(|id| snap.backend(id)) {
                Some(b) => Some(b),
                None => pick(snap, f, h),
            };
        }
        let Some(b) = chosen else {
            return Err(DropReason::NoBackend);
        };
        if b.mac.is_none() {
            return Err(DropReason::NextHopUnresolved);
        }
        let (nat_port, nat_addr) = if f.method == Method::Nat {
            // A snapshot holds only frontend ids below MAX_FRONTENDS (2^16).
            self.alloc_nat(snap, p, v6, b, h, hint.rev, now_ms, src_mac, f.id as u16)?
        } else {
            (0, 0)
        };
        let val = Fwd {
            backend: b.id,
            nat_port,
            nat_addr,
            flags: 0,
        };
        let st = flow_state(tcp, fl);
        if v6 {
            let k = k6(p.src, p.dst, p.sport, p.dport, p.proto);
            let displaced = if absent {
                self.fwd6.insert(k, h, val, st, now_ms, Insert::New)
            } else {
                self.fwd6.insert(k, h, val, st, now_ms, Insert::Replace)
            };
            displaced_flow(&self.stats, &displaced);
        } else {
            let k = k4(a4(&p.src), a4(&p.dst), p.sport, p.dport, p.proto);
            let displaced = if absent {
                self.fwd4.insert(k, h, val, st, now_ms, Insert::New)
            } else {
                self.fwd4.insert(k, h, val, st, now_ms, Insert::Replace)
            };
            displaced_flow(&self.stats, &displaced);
        }
        bump(&self.stats.new_flows, 1);
        if let Some(c) = self.stats.targets.get(b.id as usize) {
            bump(&c.new_flows, 1);
        }
        Ok(Choice {
            backend: b,
            nat_port,
            nat_addr,
        })
    }

    /// Finds a free local port in this worker's slice and records the reverse flow.
    ///
    /// Every allocation first tries the cursor's port and moves the cursor on by exactly one,
    /// so that the prefetch pass, which predicts the cursor of each SYN of a burst (`guess`:
    /// cursor, backend, reverse-key hash), predicts right for all of them: its prefetched
    /// reverse buckets are then the ones read. If that port is in use (its reverse key is
    /// live or not yet expired), the further tries take the ports of a second cursor, which
    /// moves past every port it tried; moving the first cursor instead would put every later
    /// prediction of the burst one port off, and each of those SYNs would read reverse
    /// buckets nobody prefetched.
    #[allow(clippy::too_many_arguments)]
    fn alloc_nat(
        &mut self,
        snap: &Snapshot,
        p: &Parsed,
        v6: bool,
        b: &Backend,
        h: u64,
        guess: Option<(u32, u32, u64)>,
        now_ms: u32,
        src_mac: [u8; 6],
        frontend: u16,
    ) -> Result<(u16, u8), DropReason> {
        let nf = NatFlow {
            p,
            v6,
            b,
            h,
            st: flow_state(p.proto == proto::TCP, p.tcp_flags),
            now_ms,
            src_mac,
            frontend,
        };
        let nat = self.nat.of(snap);
        let first = nat.wrap(self.nat_cursor);
        self.nat_cursor = nat.wrap(first + 1);
        // The prefetch pass's prediction of this cursor (and so of this backend) holds: its
        // reverse-key hash is this one.
        let known = guess
            .filter(|&(c, id, _)| c == first && id == b.id)
            .map(|(.., rh)| rh);
        if let Some(got) = self.take_nat_port(snap, &nf, nat.port(first), known)? {
            return Ok(got);
        }
        self.nat_port_retry(snap, nat, &nf)
    }

    /// [`Pipeline::alloc_nat`] once the cursor's port was in use: up to [`NAT_PORT_TRIES`]
    /// more ports (every port of a slice that small) from the second cursor.
    #[inline(never)]
    fn nat_port_retry(
        &mut self,
        snap: &Snapshot,
        nat: NatSlice,
        nf: &NatFlow<'_>,
    ) -> Result<(u16, u8), DropReason> {
        bump(&self.stats.nat_port_retries, 1);
        for _ in 0..NAT_PORT_TRIES.min(nat.per) {
            let cursor = nat.wrap(self.nat_spill);
            self.nat_spill = nat.wrap(cursor + 1);
            if let Some(got) = self.take_nat_port(snap, nf, nat.port(cursor), None)? {
                return Ok(got);
            }
        }
        Err(DropReason::NatPortsExhausted)
    }

    /// Takes NAT port `port` for new flow `nf` unless its reverse key is in use (live or not
    /// yet expired): `Some((port, NAT address index))` once the reverse entry is recorded,
    /// `None` if the port is taken. `rh` is the reverse key's hash if known.
    #[inline(always)]
    fn take_nat_port(
        &mut self,
        snap: &Snapshot,
        nf: &NatFlow<'_>,
        port: u16,
        rh: Option<u64>,
    ) -> Result<Option<(u16, u8)>, DropReason> {
        let &NatFlow {
            p,
            v6,
            b,
            h,
            st,
            now_ms,
            src_mac,
            frontend,
        } = nf;
        let Some(rk) = nat_rev_key(snap, p, v6, b, h, port) else {
            return Err(DropReason::NoNatAddress);
        };
        let rh = match rh {
            Some(rh) => rh,
            None => rev_hash_cold(&rk, snap.hash_seed),
        };
        Ok(match rk {
            RevKey::V4(k, ai) => {
                let val = Rev4 {
                    client: a4(&p.src),
                    client_port: p.sport,
                    client_mac: src_mac,
                    frontend,
                };
                match self.rev4.insert(k, rh, val, st, now_ms, Insert::IfAbsent) {
                    Inserted::Kept => None,
                    _ => Some((k.dport, ai)),
                }
            }
            RevKey::V6(k, ai) => {
                let val = Rev6 {
                    client: p.src,
                    client_port: p.sport,
                    client_mac: src_mac,
                    frontend,
                };
                match self.rev6.insert(k, rh, val, st, now_ms, Insert::IfAbsent) {
                    Inserted::Kept => None,
                    _ => Some((k.dport, ai)),
                }
            }
        })
    }
}

/// A new flow looking for a NAT port: what each port tried needs to build and record its
/// reverse entry.
struct NatFlow<'a> {
    /// The client's packet.
    p: &'a Parsed,
    /// Whether it is IPv6.
    v6: bool,
    /// The backend chosen.
    b: &'a Backend,
    /// The packet's flow hash (it picks the NAT address).
    h: u64,
    /// The reverse entry's initial state.
    st: FlowState,
    /// Now, on the worker's millisecond clock.
    now_ms: u32,
    /// The MAC the client's packet came from (replies go there).
    src_mac: [u8; 6],
    /// The frontend id (gives the VIP and port replies come from).
    frontend: u16,
}

/// One worker's slice of a NAT port range, with what the per-packet path needs precomputed:
/// an integer division costs tens of cycles, and a SYN needed four (two port cursors, two NAT
/// address choices) and a NAT reply two (its owning worker).
#[derive(Debug, Clone, Copy)]
struct NatSlice {
    /// The range it was computed for (`nat_port_min`, `nat_port_max`).
    range: (u16, u16),
    /// Ports per worker (at least 1).
    per: u32,
    /// The first port of this worker's slice.
    first: u32,
    /// `ceil(2^32 / per)`: `(n * recip) >> 32 == n / per` for every `n < 2^16`.
    recip: u64,
    /// The worker whose slice it is.
    worker: u16,
    /// Workers (at least 1).
    workers: u16,
}

impl NatSlice {
    /// Worker `worker`'s slice of `min..=max` split among `workers`.
    fn new(min: u16, max: u16, worker: u16, workers: u16) -> Self {
        let workers = workers.max(1);
        let per = ((u32::from(max) + 1).saturating_sub(u32::from(min)) / u32::from(workers)).max(1);
        NatSlice {
            range: (min, max),
            per,
            first: u32::from(min) + per * u32::from(worker),
            recip: (1u64 << 32).div_ceil(u64::from(per)),
            worker,
            workers,
        }
    }

    /// The same worker's slice of `snap`'s NAT port range, recomputed only when the range
    /// changed.
    #[inline(always)]
    fn of(&mut self, snap: &Snapshot) -> NatSlice {
        let l = &snap.local;
        if self.range != (l.nat_port_min, l.nat_port_max) {
            *self = self.recompute(snap);
        }
        *self
    }

    #[cold]
    #[inline(never)]
    fn recompute(&self, snap: &Snapshot) -> NatSlice {
        let l = &snap.local;
        NatSlice::new(l.nat_port_min, l.nat_port_max, self.worker, self.workers)
    }

    /// `cursor` reduced into the slice: `cursor % per`, without a division when `cursor` is
    /// below `2 per` (always, but right after a snapshot shrank the slice).
    #[inline(always)]
    fn wrap(&self, cursor: u32) -> u32 {
        if cursor < self.per {
            cursor
        } else if cursor - self.per < self.per {
            cursor - self.per
        } else {
            cursor % self.per
        }
    }

    /// The port of a reduced cursor.
    #[inline(always)]
    fn port(&self, cursor: u32) -> u16 {
        (self.first + cursor) as u16
    }

    /// The worker owning NAT port `port` (in the range): [`Pipeline::nat_owner`] without a
    /// division.
    #[inline(always)]
    fn owner(&self, port: u16) -> u16 {
        let n = u64::from(port.wrapping_sub(self.range.0));
        (((n * self.recip) >> 32) as u16).min(self.workers - 1)
    }
}

/// Index of the NAT address for flow hash `h` among `n` (> 0): the high half of the hash
/// scaled to `0..n` by a multiply, not a division.
#[inline(always)]
fn nat_addr_index(h: u64, n: usize) -> usize {
    (((h >> 32) * n as u64) >> 32) as usize
}

/// A NAT reverse key (the backend's reply: backend -> NAT address and port) and the index of
/// the NAT address.
enum RevKey {
    V4(V4Key, u8),
    V6(V6Key, u8),
}

impl RevKey {
    /// The key's flow hash under `seed`.
    #[inline(always)]
    fn hash(&self, seed: u64) -> u64 {
        match self {
            RevKey::V4(k, _) => k.flow_hash(seed),
            RevKey::V6(k, _) => k.flow_hash(seed),
        }
    }
}

/// [`RevKey::hash`] out of line, for when the prefetch pass's guess did not hold: kept cold so
/// that the compiler does not hoist half of the hash into every allocation.
#[cold]
#[inline(never)]
fn rev_hash_cold(k: &RevKey, seed: u64) -> u64 {
    k.hash(seed)
}

/// The reverse key for a new flow `p` (flow hash `h`) to backend `b` through NAT port `port`;
/// `None` if the family has no NAT address or the backend is of the other family.
/// [`Pipeline::alloc_nat`] and the prefetch pass's guess both use it, so they agree.
#[inline(always)]
fn nat_rev_key(
    snap: &Snapshot,
    p: &Parsed,
    v6: bool,
    b: &Backend,
    h: u64,
    port: u16,
) -> Option<RevKey> {
    let l = &snap.local;
    match (b.addr, v6) {
        (IpAddr::V4(ba), false) if !l.nat_ipv4.is_empty() => {
            let ai = nat_addr_index(h, l.nat_ipv4.len());
            let rk = k4(ba.octets(), l.nat_ipv4[ai], b.port, port, p.proto);
            Some(RevKey::V4(rk, ai as u8))
        }
        (IpAddr::V6(ba), true) if !l.nat_ipv6.is_empty() => {
            let ai = nat_addr_index(h, l.nat_ipv6.len());
            let rk = k6(ba.octets(), l.nat_ipv6[ai], b.port, port, p.proto);
            Some(RevKey::V6(rk, ai as u8))
        }
        _ => None,
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

/// Rewrites addresses and ports of an IP packet with incremental checksum updates (IPv4
/// header, TCP/UDP checksum including the pseudo-header). `new_src`/`new_dst` are 4 or 16 bytes.
#[inline(always)]
fn rewrite_flow(
    d: &mut [u8],
    p: &Parsed,
    v6: bool,
    new_src: &[u8],
    new_dst: &[u8],
    new_sport: u16,
    new_dport: u16,
) {
    let l3 = usize::from(p.l3_off);
    let l4 = usize::from(p.l4_off);
    let (a_off, alen) = if v6 { (l3 + 8, 16) } else { (l3 + 12, 4) };
    // The addresses' change, summed once (RFC 1624: ~old + new per word), serves both the IPv4
    // header checksum and the TCP/UDP one (whose pseudo-header holds the same addresses).
    let addrs = &mut d[a_off..a_off + 2 * alen];
    let delta = checksum::delta(&addrs[..alen], new_src) + checksum::delta(&addrs[alen..], new_dst);
    addrs[..alen].copy_from_slice(new_src);
    addrs[alen..].copy_from_slice(new_dst);
    if !v6 {
        let c = be16(d, l3 + 10);
        put16(d, l3 + 10, checksum::apply(c, delta));
    }
    let coff = if p.proto == proto::TCP {
        l4 + 16
    } else {
        l4 + 6
    };
    let c = be16(d, coff);
    let (osp, odp) = (be16(d, l4), be16(d, l4 + 2));
    put16(d, l4, new_sport);
    put16(d, l4 + 2, new_dport);
    if p.proto == proto::UDP && c == 0 && !v6 {
        return; // IPv4 UDP without checksum stays without
    }
    let ports = u64::from(!osp) + u64::from(new_sport) + u64::from(!odp) + u64::from(new_dport);
    let mut c = checksum::apply(c, delta + ports);
    if p.proto == proto::UDP && c == 0 {
        c = 0xffff;
    }
    put16(d, coff, c);
}

impl Pipeline {
    #[inline(always)]
    fn send_nat<P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkt: &mut P,
        p: &Parsed,
        v6: bool,
        b: &Backend,
        c: &Choice<'_>,
    ) -> Verdict {
        let l = &snap.local;
        let Some(mac) = b.mac else {
            return Verdict::Drop(DropReason::NextHopUnresolved);
        };
        let d = pkt.data_mut();
        match (v6, b.addr) {
            (false, IpAddr::V4(ba)) => {
                let Some(la) = l.nat_ipv4.get(usize::from(c.nat_addr)) else {
                    return Verdict::Drop(DropReason::NoNatAddress);
                };
                rewrite_flow(d, p, false, la, &ba.octets(), c.nat_port, b.port);
            }
            (true, IpAddr::V6(ba)) => {
                let Some(la) = l.nat_ipv6.get(usize::from(c.nat_addr)) else {
                    return Verdict::Drop(DropReason::NoNatAddress);
                };
                rewrite_flow(d, p, true, la, &ba.octets(), c.nat_port, b.port);
            }
            _ => return Verdict::Drop(DropReason::NoNatAddress),
        }
        d[0..6].copy_from_slice(&mac);
        d[6..12].copy_from_slice(&l.mac);
        Verdict::Tx
    }

    #[inline(always)]
    fn send_dsr<P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkt: &mut P,
        p: &Parsed,
        v6: bool,
        m: Method,
        b: &Backend,
    ) -> Verdict {
        let l = &snap.local;
        let Some(mac) = b.mac else {
            return Verdict::Drop(DropReason::NextHopUnresolved);
        };
        if m == Method::DsrIpip {
            let l3 = usize::from(p.l3_off);
            let inner = usize::from(p.l3_end) - l3;
            let outer = if v6 {
                ipv6::HEADER_LEN
            } else {
                ipv4::MIN_HEADER_LEN
            };
            if l.mtu != 0 && inner + outer > usize::from(l.mtu) {
                return Verdict::Drop(DropReason::TooBig);
            }
            let (src, dst) = match (v6, b.addr) {
                (false, IpAddr::V4(ba)) => match l.ipv4.first() {
                    Some(s) => (raw_ip(IpAddr::from(*s)), raw_ip(IpAddr::V4(ba))),
                    None => return Verdict::Drop(DropReason::NoNatAddress),
                },
                (true, IpAddr::V6(ba)) => match l.ipv6.first() {
                    Some(s) => (*s, ba.octets()),
                    None => return Verdict::Drop(DropReason::NoNatAddress),
                },
                _ => return Verdict::Drop(DropReason::NoNatAddress),
            };
            let pad = pkt.data().len() - usize::from(p.l3_end);
            if !pkt.prepend(outer) {
                return Verdict::Drop(DropReason::NoHeadroom);
            }
            if pad > 0 {
                pkt.trim(pad);
            }
            let d = pkt.data_mut();
            d.copy_within(outer..outer + l3, 0);
            if v6 {
                ipv6::emit(&mut d[l3..], src, dst, proto::IPV6, inner as u16, 64);
            } else {
                ipv4::emit(
                    &mut d[l3..],
                    a4(&src),
                    a4(&dst),
                    proto::IPIP,
                    inner as u16,
                    64,
                    0,
                );
            }
        }
        let d = pkt.data_mut();
        d[0..6].copy_from_slice(&mac);
        d[6..12].copy_from_slice(&l.mac);
        Verdict::Tx
    }

    fn nat_reply<P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkt: &mut P,
        p: &Parsed,
        v6: bool,
        hint: Hint,
        now_ms: u32,
    ) -> Verdict {
        let h = hint.hash;
        let at = self.slot_hint(hint);
        let l = &snap.local;
        if p.dport < l.nat_port_min || p.dport > l.nat_port_max {
            return Verdict::Drop(DropReason::NatNoFlow);
        }
        let owner = self.nat.of(snap).owner(p.dport);
        if owner != self.worker {
            bump(&self.stats.to_other_worker, 1);
            return Verdict::ToWorker(owner);
        }
        let tcp = p.proto == proto::TCP;
        let (client, cport, cmac, fid) = if v6 {
            let k = k6(p.src, p.dst, p.sport, p.dport, p.proto);
            let h = h.unwrap_or_else(|| flow_hash(snap, p, true));
            match self.rev6.lookup(&k, h, at, now_ms, |_| {}) {
                Some(e) => {
                    let s = next_state(e.state(), tcp, p.tcp_flags);
                    e.set_state(s);
                    let v = *e.value();
                    (v.client, v.client_port, v.client_mac, v.frontend)
                }
                None => return Verdict::Drop(DropReason::NatNoFlow),
            }
        } else {
            let k = k4(a4(&p.src), a4(&p.dst), p.sport, p.dport, p.proto);
            let h = h.unwrap_or_else(|| flow_hash(snap, p, false));
            match self.rev4.lookup(&k, h, at, now_ms, |_| {}) {
                Some(e) => {
                    let s = next_state(e.state(), tcp, p.tcp_flags);
                    e.set_state(s);
                    let v = *e.value();
                    let mut c = [0u8; 16];
                    c[..4].copy_from_slice(&v.client);
                    (c, v.client_port, v.client_mac, v.frontend)
                }
                None => return Verdict::Drop(DropReason::NatNoFlow),
            }
        };
        let Some(f) = snap.frontend(u32::from(fid)) else {
            return Verdict::Drop(DropReason::NatNoFlow);
        };
        let vip = raw_ip(f.vip);
        let alen = if v6 { 16 } else { 4 };
        let d = pkt.data_mut();
        rewrite_flow(d, p, v6, &vip[..alen], &client[..alen], f.port, cport);
        d[0..6].copy_from_slice(&cmac);
        d[6..12].copy_from_slice(&l.mac);
        bump(&self.stats.nat_replies, 1);
        Verdict::Tx
    }

    fn icmp<P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkt: &mut P,
        p: &Parsed,
        v6: bool,
        now_ms: u32,
    ) -> Verdict {
        if p.fragment != Fragment::No {
            return Verdict::Drop(DropReason::IcmpUnsupported);
        }
        let l3 = usize::from(p.l3_off);
        let l4 = usize::from(p.l4_off);
        let echo = if v6 {
            icmp::v6::ECHO_REQUEST
        } else {
            icmp::v4::ECHO_REQUEST
        };
        if p.icmp_type == echo {
            let d = pkt.data_mut();
            ethernet::Frame::new_unchecked(&mut d[..]).swap_macs();
            let (reply, hop) = if v6 {
                (icmp::v6::ECHO_REPLY, 64u8)
            } else {
                (icmp::v4::ECHO_REPLY, 64u8)
            };
            let old_word = u16::from_be_bytes([d[l4], d[l4 + 1]]);
            d[l4] = reply;
            let new_word = u16::from_be_bytes([d[l4], d[l4 + 1]]);
            let c = update16(be16(d, l4 + 2), old_word, new_word);
            put16(d, l4 + 2, c);
            if v6 {
                let mut ip = ipv6::Packet::new_unchecked(&mut d[l3..]);
                let (s, t) = (ip.src(), ip.dst());
                ip.set_src(t);
                ip.set_dst(s);
                ip.set_hop_limit(hop);
            } else {
                let mut tmp = [0u8; 4];
                tmp.copy_from_slice(&d[l3 + 12..l3 + 16]);
                d.copy_within(l3 + 16..l3 + 20, l3 + 12);
                d[l3 + 16..l3 + 20].copy_from_slice(&tmp);
                ipv4::Packet::new_unchecked(&mut d[l3..]).set_ttl(hop);
            }
            bump(&self.stats.echo_replies, 1);
            return Verdict::Tx;
        }
        let is_error = if v6 {
            matches!(
                p.icmp_type,
                icmp::v6::DEST_UNREACH | icmp::v6::PACKET_TOO_BIG | icmp::v6::TIME_EXCEEDED
            )
        } else {
            matches!(
                p.icmp_type,
                icmp::v4::DEST_UNREACH | icmp::v4::TIME_EXCEEDED
            )
        };
        if !is_error {
            return Verdict::Drop(DropReason::IcmpUnsupported);
        }
        self.icmp_error(snap, pkt, p, v6, now_ms)
    }

    /// An ICMP error quoting a packet we (or a DSR backend) sent as VIP -> client: forward it to
    /// the flow's backend, translated back for `nat`.
    fn icmp_error<P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkt: &mut P,
        p: &Parsed,
        v6: bool,
        now_ms: u32,
    ) -> Verdict {
        let l4 = usize::from(p.l4_off);
        let end = usize::from(p.l3_end);
        let q = l4 + icmp::HEADER_LEN;
        let d = pkt.data();
        // The quoted header: at least the IP header and the first 4 bytes of L4 (ports).
        let (isrc, idst, iproto, ihl) = if v6 {
            if end < q + ipv6::HEADER_LEN + 4 {
                return Verdict::Drop(DropReason::Malformed);
            }
            let ip = ipv6::Packet::new_unchecked(&d[q..end]);
            (ip.src(), ip.dst(), ip.next_header(), ipv6::HEADER_LEN)
        } else {
            if end < q + ipv4::MIN_HEADER_LEN + 4 {
                return Verdict::Drop(DropReason::Malformed);
            }
            let ihl = usize::from(d[q] & 0x0f) * 4;
            if ihl < ipv4::MIN_HEADER_LEN || end < q + ihl + 4 {
                return Verdict::Drop(DropReason::Malformed);
            }
            let mut s = [0u8; 16];
            let mut t = [0u8; 16];
            s[..4].copy_from_slice(&d[q + 12..q + 16]);
            t[..4].copy_from_slice(&d[q + 16..q + 20]);
            (s, t, d[q + 9], ihl)
        };
        if iproto != proto::TCP && iproto != proto::UDP {
            return Verdict::Drop(DropReason::IcmpErrorNoFlow);
        }
        let isport = be16(d, q + ihl);
        let idport = be16(d, q + ihl + 2);
        // Quoted VIP:vport -> client:cport is the reverse of the client's flow.
        let Some(f) = snap.frontend_for(&isrc, v6, iproto, isport) else {
            return Verdict::Drop(DropReason::IcmpErrorNoFlow);
        };
        let fv = if v6 {
            let h = hash::hash_v6_5tuple(snap.hash_seed, idst, isrc, idport, isport, iproto);
            self.fwd6
                .lookup(
                    &k6(idst, isrc, idport, isport, iproto),
                    h,
                    NO_SLOT,
                    now_ms,
                    |_| {},
                )
                .map(|e| *e.value())
        } else {
            let h =
                hash::hash_v4_5tuple(snap.hash_seed, a4(&idst), a4(&isrc), idport, isport, iproto);
            self.fwd4
                .lookup(
                    &k4(a4(&idst), a4(&isrc), idport, isport, iproto),
                    h,
                    NO_SLOT,
                    now_ms,
                    |_| {},
                )
                .map(|e| *e.value())
        };
        let Some(fv) = fv else {
            return Verdict::Drop(DropReason::IcmpErrorNoFlow);
        };
        let Some(b) = snap.backend(fv.backend) else {
            return Verdict::Drop(DropReason::IcmpErrorNoFlow);
        };
        bump(&self.stats.icmp_errors_forwarded, 1);
        if f.method != Method::Nat {
            return self.send_dsr(snap, pkt, p, v6, f.method, b);
        }
        // nat: the backend sent backend:bport -> local:lport; show it that packet.
        let Some(mac) = b.mac else {
            return Verdict::Drop(DropReason::NextHopUnresolved);
        };
        let l = &snap.local;
        let la = if v6 {
            l.nat_ipv6.get(usize::from(fv.nat_addr)).copied()
        } else {
            l.nat_ipv4.get(usize::from(fv.nat_addr)).map(|a| {
                let mut r = [0u8; 16];
                r[..4].copy_from_slice(a);
                r
            })
        };
        let Some(la) = la else {
            return Verdict::Drop(DropReason::NoNatAddress);
        };
        let ba = raw_ip(b.addr);
        let l3 = usize::from(p.l3_off);
        let d = pkt.data_mut();
        let alen = if v6 { 16 } else { 4 };
        let (aoff, ioff) = if v6 {
            (l3 + 24, q + 8)
        } else {
            (l3 + 16, q + 12)
        };
        // outer destination -> backend
        d[aoff..aoff + alen].copy_from_slice(&ba[..alen]);
        // quoted source -> backend:bport, destination -> local:lport
        d[ioff..ioff + alen].copy_from_slice(&ba[..alen]);
        d[ioff + alen..ioff + 2 * alen].copy_from_slice(&la[..alen]);
        put16(d, q + ihl, b.port);
        put16(d, q + ihl + 2, fv.nat_port);
        if !v6 {
            ipv4::Packet::new_unchecked(&mut d[q..]).fill_checksum();
            ipv4::Packet::new_unchecked(&mut d[l3..]).fill_checksum();
        }
        put16(d, l4 + 2, 0);
        let c = if v6 {
            let mut src = [0u8; 16];
            src.copy_from_slice(&d[l3 + 8..l3 + 24]);
            let ps = checksum::pseudo_v6(src, ba, proto::ICMPV6, (end - l4) as u32);
            !checksum::fold(checksum::sum(ps, &d[l4..end]))
        } else {
            checksum::checksum(&d[l4..end])
        };
        put16(d, l4 + 2, c);
        d[0..6].copy_from_slice(&mac);
        d[6..12].copy_from_slice(&l.mac);
        Verdict::Tx
    }

    fn ndp<P: PacketBuf>(&mut self, snap: &Snapshot, pkt: &mut P, p: &Parsed) -> Verdict {
        let l3 = usize::from(p.l3_off);
        let l4 = usize::from(p.l4_off);
        let end = usize::from(p.l3_end);
        let d = pkt.data();
        let Ok(m) = icmp::Message::new_checked(&d[l4..end]) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let Some(target) = m.nd_target() else {
            return Verdict::Drop(DropReason::Malformed);
        };
        if p.icmp_type == icmp::v6::NEIGHBOR_ADVERT {
            if snap.addr_kind(&target, true).is_some() {
                return Verdict::Drop(DropReason::NdpNotOurs);
            }
            let mac = m
                .nd_lladdr(icmp::v6::OPT_TARGET_LLADDR)
                .unwrap_or([d[6], d[7], d[8], d[9], d[10], d[11]]);
            return Verdict::Neighbor(NeighborEvent {
                ip: IpAddr::from(target),
                mac,
            });
        }
        // Neighbour solicitation: answer for VIPs and own addresses, not DAD probes.
        if snap.addr_kind(&target, true).is_none()
            || p.src == [0u8; 16]
            || l4 != l3 + ipv6::HEADER_LEN
            || end - l4 < 32
        {
            return Verdict::Drop(DropReason::NdpNotOurs);
        }
        let asker = p.src;
        let mac = snap.local.mac;
        let frame_len = d.len();
        let d = pkt.data_mut();
        let src_mac = mac_at(d, 6);
        d[0..6].copy_from_slice(&src_mac);
        d[6..12].copy_from_slice(&mac);
        ipv6::emit(&mut d[l3..], target, asker, proto::ICMPV6, 32, 255);
        icmp::emit_neighbor_advert(
            &mut d[l4..l4 + 32],
            icmp::v6::NA_SOLICITED | icmp::v6::NA_OVERRIDE,
            target,
            mac,
        );
        let ps = checksum::pseudo_v6(target, asker, proto::ICMPV6, 32);
        let c = !checksum::fold(checksum::sum(ps, &d[l4..l4 + 32]));
        put16(d, l4 + 2, c);
        let extra = frame_len - (l4 + 32);
        if extra > 0 {
            pkt.trim(extra);
        }
        bump(&self.stats.neighbor_replies, 1);
        Verdict::Tx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a flow costs in the tables (slot plus 2-byte tag): the targets of docs/dataplane.md.
    #[test]
    fn flow_entry_sizes() {
        // IPv4: a DSR flow is one forward entry, a NAT flow a forward and a reverse entry.
        assert_eq!(Conntrack::<V4Key, Fwd>::bytes_per_slot(), 34);
        assert_eq!(Conntrack::<V4Key, Rev4>::bytes_per_slot(), 34);
        // IPv6: a forward entry fills a cache line; a reverse one a line and a half.
        assert_eq!(Conntrack::<V6Key, Fwd>::bytes_per_slot(), 66);
        assert_eq!(Conntrack::<V6Key, Rev6>::bytes_per_slot(), 98);
        assert_eq!(Conntrack::<V4Key, Aff>::bytes_per_slot(), 34);
    }

    /// The precomputed NAT slice agrees with the divisions it replaces, for every port of
    /// ranges from one port to all of them and worker counts from 1 to 64.
    #[test]
    fn nat_slice_matches_division() {
        let ranges = [
            (1024u16, 1024u16),
            (1024, 1087),
            (1024, 65535),
            (1, 65535),
            (0, 65535),
        ];
        for (min, max) in ranges {
            for workers in [1u16, 2, 3, 7, 16, 63, 64] {
                let span = u32::from(max) - u32::from(min) + 1;
                let per = (span / u32::from(workers)).max(1);
                for worker in [0, workers / 2, workers - 1] {
                    let s = NatSlice::new(min, max, worker, workers);
                    assert_eq!(s.per, per);
                    for cursor in [
                        0,
                        1,
                        per - 1,
                        per,
                        per + 1,
                        2 * per - 1,
                        2 * per,
                        5 * per + 3,
                    ] {
                        assert_eq!(
                            s.wrap(cursor),
                            cursor % per,
                            "{min}-{max}/{workers} {cursor}"
                        );
                    }
                    assert_eq!(
                        u32::from(s.port(s.wrap(per + 1))),
                        u32::from(min) + per * u32::from(worker) + 1 % per
                    );
                }
                let s = NatSlice::new(min, max, 0, workers);
                for port in min..=max {
                    let want = ((u32::from(port - min) / per) as u16).min(workers - 1);
                    assert_eq!(s.owner(port), want, "{min}-{max}/{workers} port {port}");
                }
            }
        }
        for n in 1..=8 {
            for h in [
                0u64,
                1 << 32,
                u64::MAX,
                0x8000_0000_0000_0000,
                0x1234_5678_9abc_def0,
            ] {
                assert!(nat_addr_index(h, n) < n);
            }
            // Every address gets used.
            let used: std::collections::HashSet<usize> =
                (0..64u64).map(|i| nat_addr_index(i << 58, n)).collect();
            assert_eq!(used.len(), n);
        }
    }
}
