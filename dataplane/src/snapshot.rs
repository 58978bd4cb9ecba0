//! # Snapshots: the immutable configuration a worker reads
//!
//! ## Design
//! The control plane compiles Services, EndpointSlices and Nodes into one [`Snapshot`]: the VIP
//! table, per-frontend (VIP:port) Maglev tables built off the hot path, backend descriptors with
//! resolved next-hop MACs, source ranges and affinity settings. It is validated once by
//! [`Snapshot::new`] and never mutated: a change is a new snapshot with a higher generation,
//! published to every worker as an `Arc<Snapshot>`.
//!
//! Frontend and backend *ids* are stable across snapshots (the control plane allocates them
//! and reuses one only after it left every snapshot), so a conntrack entry that stores a backend
//! id finds the same backend in the next snapshot, or notices lazily that it is gone. A backend
//! id names one backend *of one frontend* (the control plane keys its ids by frontend, address
//! and port), so an established flow's hit needs no membership check: if the id is still in the
//! snapshot, it is still a backend of the flow's frontend.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::hash;
use crate::maglev::MaglevTable;

/// How a frontend forwards to its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Full NAT: destination to the backend, source to a Sluice local address and port.
    Nat,
    /// Direct server return on the same L2 segment: only the destination MAC changes.
    DsrL2,
    /// Direct server return through IP-in-IP (IPv6-in-IPv6) encapsulation.
    DsrIpip,
}

impl Method {
    /// Name as used in config and annotations.
    pub fn name(self) -> &'static str {
        match self {
            Method::Nat => "nat",
            Method::DsrL2 => "dsr-l2",
            Method::DsrIpip => "dsr-ipip",
        }
    }
    /// Parses a config/annotation value.
    pub fn parse(s: &str) -> Option<Method> {
        match s {
            "nat" => Some(Method::Nat),
            "dsr-l2" => Some(Method::DsrL2),
            "dsr-ipip" => Some(Method::DsrIpip),
            _ => None,
        }
    }
}

/// Health/administrative state of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendState {
    /// Receives new flows.
    Active,
    /// No new flows; established flows continue (operator drain, or removed from the
    /// EndpointSlice while connections may still be open).
    Draining,
    /// Failing health checks: no new flows; established flows continue.
    Down,
}

/// L4 protocol of a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => crate::wire::proto::TCP,
            Protocol::Udp => crate::wire::proto::UDP,
        }
    }
}

/// A CIDR prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// True when `a` (16 bytes; IPv4 in the first 4) of family `v6` is inside.
    #[inline]
    pub fn contains_raw(&self, a: &[u8; 16], v6: bool) -> bool {
        let (net, bits): ([u8; 16], usize) = match self.addr {
            IpAddr::V4(x) if !v6 => {
                let mut n = [0u8; 16];
                n[..4].copy_from_slice(&x.octets());
                (n, usize::from(self.prefix.min(32)))
            }
            IpAddr::V6(x) if v6 => (x.octets(), usize::from(self.prefix.min(128))),
            _ => return false,
        };
        let full = bits / 8;
        if a[..full] != net[..full] {
            return false;
        }
        let rem = bits % 8;
        if rem == 0 {
            return true;
        }
        let mask = 0xffu8 << (8 - rem);
        a[full] & mask == net[full] & mask
    }

    /// Parses `a.b.c.d/n` or `x::y/n` (a bare address is a host route).
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }
}

/// A new-flow budget as one worker applies it: a token bucket of `burst` new flows refilled
/// at `rate` per second. The control plane divides a host's configured limit among the
/// workers ([`FlowLimit::per_worker`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowLimit {
    /// New flows per second.
    pub rate: u32,
    /// The bucket's size: the most new flows admitted at once after a quiet spell (at least 1,
    /// at most [`FlowLimit::MAX_BURST`]).
    pub burst: u32,
}

impl FlowLimit {
    /// The largest burst (a bucket counts thousandths of a flow in 32 bits).
    pub const MAX_BURST: u32 = 4_000_000;

    /// One worker's share of a host-wide limit of `rate` new flows per second and bursts of
    /// `burst` (0: one second's worth, `rate`) among `workers`: each share rounded up, so the
    /// host admits at most `workers - 1` more per second and per burst than configured.
    /// `None` when `rate` is 0 (no limit).
    pub fn per_worker(rate: u32, burst: u32, workers: usize) -> Option<FlowLimit> {
        if rate == 0 {
            return None;
        }
        let w = workers.max(1) as u32;
        let burst = if burst == 0 { rate } else { burst };
        Some(FlowLimit {
            rate: rate.div_ceil(w),
            burst: burst.div_ceil(w).clamp(1, Self::MAX_BURST),
        })
    }
}

/// A backend as the dataplane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Stable id (indexes [`Snapshot::backends`] and per-backend counters).
    pub id: u32,
    /// Address traffic is sent to (node InternalIP or pod IP).
    pub addr: IpAddr,
    /// Port (nodePort or targetPort); DSR methods keep the VIP port and ignore it.
    pub port: u16,
    /// MAC of the next hop toward `addr`; `None` until resolved (flows are not sent then).
    pub mac: Option<[u8; 6]>,
    /// Maglev weight.
    pub weight: u32,
    /// Health/administrative state.
    pub state: BackendState,
}

/// When a frontend's SYNs are answered by the SYN proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SynProxy {
    /// Never: SYNs go to the backend.
    #[default]
    Off,
    /// Always.
    On,
    /// While the worker holds at least `threshold` embryonic flows of the frontend, until
    /// they fall below half of it; ACKs with a valid cookie are accepted at any time.
    Auto {
        /// Embryonic flows per worker that engage the proxy (at least 2).
        threshold: u32,
    },
}

impl SynProxy {
    /// Whether the proxy may answer (on or auto): cookie ACKs are then honoured.
    #[inline(always)]
    pub fn enabled(self) -> bool {
        self != SynProxy::Off
    }
}

/// One VIP:port:protocol of a Service.
#[derive(Debug, Clone)]
pub struct Frontend {
    /// Stable id.
    pub id: u32,
    /// `namespace/name` of the Service, plus the port name, for operators.
    pub service: Arc<str>,
    /// The VIP.
    pub vip: IpAddr,
    /// The VIP port.
    pub port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Forwarding method.
    pub method: Method,
    /// ClientIP session affinity timeout in milliseconds (`None`: no affinity).
    pub affinity_ms: Option<u32>,
    /// Allowed source ranges (`loadBalancerSourceRanges`); empty allows everyone.
    pub source_ranges: Vec<Cidr>,
    /// New flows this frontend admits, per worker (`None`: no limit).
    pub flow_limit: Option<FlowLimit>,
    /// New flows this frontend admits from one source prefix, per worker (`None`: no limit).
    pub source_flow_limit: Option<FlowLimit>,
    /// SYN proxy (`nat` TCP only): SYNs are answered with a cookie and the backend sees a
    /// connection only once the client's ACK returns a valid one (`pipeline/synproxy.rs`);
    /// always, or only while the frontend's embryonic flows are many (`pipeline/synauto.rs`).
    pub syn_proxy: SynProxy,
    /// Backend ids in Maglev index order (`maglev` entries index this list).
    pub backends: Vec<u32>,
    /// The Maglev table over `backends`, built by the control plane.
    pub maglev: Arc<MaglevTable>,
}

/// Our own identity on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Local {
    /// Our port's MAC.
    pub mac: [u8; 6],
    /// Our IPv4 addresses (answered by ARP and used as NAT/encapsulation sources).
    pub ipv4: Vec<[u8; 4]>,
    /// Our IPv6 addresses.
    pub ipv6: Vec<[u8; 16]>,
    /// Full-NAT local IPv4 addresses (a subset of, or in addition to, `ipv4`).
    pub nat_ipv4: Vec<[u8; 4]>,
    /// Full-NAT local IPv6 addresses.
    pub nat_ipv6: Vec<[u8; 16]>,
    /// How many of the last `nat_ipv4` addresses are peer hosts' (flow sync): packets to them
    /// are accepted as NAT replies of synced flows, but no new flow is given one.
    pub nat_ipv4_peers: usize,
    /// The same for `nat_ipv6`.
    pub nat_ipv6_peers: usize,
    /// First NAT local port (inclusive).
    pub nat_port_min: u16,
    /// Last NAT local port (inclusive).
    pub nat_port_max: u16,
    /// MTU of the port (bytes of IP packet).
    pub mtu: u16,
}

/// Why a snapshot is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Two frontends share an id.
    #[error("frontend id {0} used twice")]
    DuplicateFrontend(u32),
    /// Two backends share an id.
    #[error("backend id {0} used twice")]
    DuplicateBackend(u32),
    /// Two frontends claim the same VIP, protocol and port.
    #[error("{0} and {1} both claim the same VIP, protocol and port")]
    VipClash(Arc<str>, Arc<str>),
    /// A frontend names a backend that is not in the snapshot.
    #[error("frontend {0} refers to unknown backend id {1}")]
    UnknownBackend(Arc<str>, u32),
    /// The Maglev table does not match the backend list.
    #[error("frontend {0}: Maglev table built for a different backend list")]
    MaglevMismatch(Arc<str>),
    /// A NAT port range is empty.
    #[error("NAT port range {0}..={1} is empty")]
    BadNatPorts(u16, u16),
    /// Too many ids for the preallocated counters.
    #[error("id {0} exceeds the configured maximum {1}; raise tables.max_backends")]
    IdTooLarge(u32, usize),
    /// A frontend id at or above [`MAX_FRONTENDS`].
    #[error("frontend id {0} is not below {MAX_FRONTENDS}, the most frontends (VIP, protocol, port) a Sluice host serves")]
    FrontendIdTooLarge(u32),
}

/// Frontend ids are below this (2^16): a NAT reverse entry stores one in 16 bits, which keeps
/// it in a 32-byte conntrack slot. A frontend is one (VIP, protocol, port); 65,536 of them is,
/// e.g., 16,384 dual-stack Services of two ports each.
pub const MAX_FRONTENDS: usize = 1 << 16;

/// Key of the VIP table: family, address, protocol (0 = address entry), port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
struct VipKey {
    addr: [u8; 16],
    v6: bool,
    proto: u8,
    port: u16,
}

const EMPTY: u32 = u32::MAX;

/// A key of a [`VipTable`]: compared with `==`, spread over the table by `slot`.
trait VipSlot: Copy + Eq + Default {
    /// The key's home slot (before masking).
    fn slot(&self) -> usize;
}

impl VipSlot for VipKey {
    #[inline(always)]
    fn slot(&self) -> usize {
        let a = u64::from_le_bytes(self.addr[..8].try_into().unwrap_or_default());
        let b = u64::from_le_bytes(self.addr[8..].try_into().unwrap_or_default());
        let c = (u64::from(self.proto) << 32) | (u64::from(self.port) << 8) | u64::from(self.v6);
        // One 64x64->128 multiply: the table is small and built by us, so a fast mix is enough
        // (this runs for every packet).
        hash::fold_mul(
            a ^ c.rotate_left(40) ^ 0x9e37_79b9_7f4a_7c15,
            b ^ c ^ 0xc2b2_ae3d_27d4_eb4f,
        ) as usize
    }
}

/// An IPv4 key packed in one word ([`v4_key`]): one multiply to spread, one compare to match.
impl VipSlot for u64 {
    #[inline(always)]
    fn slot(&self) -> usize {
        hash::fold_mul(*self ^ 0x9e37_79b9_7f4a_7c15, 0xc2b2_ae3d_27d4_eb4f) as usize
    }
}

/// The IPv4 table's key of (the IPv4 address in the first 4 bytes of `addr`, protocol, port).
#[inline(always)]
fn v4_key(addr: &[u8; 16], proto: u8, port: u16) -> u64 {
    let a = u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]);
    (u64::from(a) << 32) | (u64::from(proto) << 16) | u64::from(port)
}

/// An open-addressing table from (VIP, protocol, port) to frontend id, built once: one for
/// IPv4 keys packed in a word, one for IPv6.
#[derive(Debug, Clone)]
struct VipTable<K> {
    keys: Box<[K]>,
    vals: Box<[u32]>,
    mask: usize,
}

impl<K: VipSlot> VipTable<K> {
    fn build(entries: impl Iterator<Item = (K, u32)> + Clone) -> Self {
        let cap = (entries.clone().count() * 2).next_power_of_two().max(16);
        let mut t = VipTable {
            keys: vec![K::default(); cap].into_boxed_slice(),
            vals: vec![EMPTY; cap].into_boxed_slice(),
            mask: cap - 1,
        };
        for (k, v) in entries {
            let mut i = k.slot() & t.mask;
            while t.vals[i] != EMPTY && t.keys[i] != k {
                i = (i + 1) & t.mask;
            }
            t.keys[i] = k;
            t.vals[i] = v;
        }
        t
    }

    #[inline(always)]
    fn get(&self, k: &K) -> Option<u32> {
        let mut i = k.slot() & self.mask;
        loop {
            let v = self.vals[i];
            if v == EMPTY {
                return None;
            }
            if self.keys[i] == *k {
                return Some(v);
            }
            i = (i + 1) & self.mask;
        }
    }
}

/// The VIP tables of both families.
#[derive(Debug, Clone)]
struct Vips {
    v4: VipTable<u64>,
    v6: VipTable<VipKey>,
}

impl Vips {
    fn build(entries: &[(VipKey, u32)]) -> Self {
        Vips {
            v4: VipTable::build(
                entries
                    .iter()
                    .filter(|(k, _)| !k.v6)
                    .map(|(k, v)| (v4_key(&k.addr, k.proto, k.port), *v)),
            ),
            v6: VipTable::build(entries.iter().filter(|(k, _)| k.v6).copied()),
        }
    }

    #[inline(always)]
    fn get(&self, addr: &[u8; 16], v6: bool, proto: u8, port: u16) -> Option<u32> {
        if v6 {
            self.v6.get(&VipKey {
                addr: *addr,
                v6,
                proto,
                port,
            })
        } else {
            self.v4.get(&v4_key(addr, proto, port))
        }
    }
}

/// What a destination address is to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrKind {
    /// A VIP of at least one frontend.
    Vip,
    /// One of our own (or NAT local) addresses.
    Own,
}

/// The immutable configuration a worker forwards by.
#[derive(Debug)]
pub struct Snapshot {
    /// Monotonic generation number.
    pub generation: u64,
    /// Seed of the flow hash (identical on every Sluice host so they choose alike).
    pub hash_seed: u64,
    /// Frontends by id.
    frontends: Vec<Option<Frontend>>,
    /// Backends by id.
    backends: Vec<Option<Backend>>,
    /// Our identity.
    pub local: Local,
    vips: Vips,
    /// VIPs whose ARP/NDP another Sluice host answers (L2 mode), sorted.
    l2_silent: Vec<([u8; 16], bool)>,
    /// Peer hosts' NAT addresses (flow sync), sorted: replies to them are accepted, ARP/NDP
    /// for them is never answered (the peer answers for its own).
    peer_nat: Vec<([u8; 16], bool)>,
}

/// Address-entry marker in the VIP table.
const ADDR_VIP: u8 = 0;
const ADDR_OWN: u8 = 255;

fn raw(a: IpAddr) -> ([u8; 16], bool) {
    match a {
        IpAddr::V4(x) => {
            let mut r = [0u8; 16];
            r[..4].copy_from_slice(&x.octets());
            (r, false)
        }
        IpAddr::V6(x) => (x.octets(), true),
    }
}

impl Snapshot {
    /// Validates and indexes a snapshot. `max_ids` bounds frontend/backend ids (the workers'
    /// per-backend counters are preallocated to it).
    pub fn new(
        generation: u64,
        hash_seed: u64,
        frontends: Vec<Frontend>,
        backends: Vec<Backend>,
        local: Local,
        max_ids: usize,
    ) -> Result<Snapshot, SnapshotError> {
        if local.nat_port_min > local.nat_port_max {
            return Err(SnapshotError::BadNatPorts(
                local.nat_port_min,
                local.nat_port_max,
            ));
        }
        let mut bt: Vec<Option<Backend>> = Vec::new();
        for b in backends {
            let i = b.id as usize;
            if i >= max_ids {
                return Err(SnapshotError::IdTooLarge(b.id, max_ids));
            }
            if bt.len() <= i {
                bt.resize(i + 1, None);
            }
            if bt[i].is_some() {
                return Err(SnapshotError::DuplicateBackend(b.id));
            }
            bt[i] = Some(b);
        }
        let mut entries: Vec<(VipKey, u32)> = Vec::new();
        // Index of `entries` by key: duplicate checks stay O(1) with tens of thousands of VIPs.
        let mut seen: HashMap<VipKey, u32> = HashMap::new();
        let mut ft: Vec<Option<Frontend>> = Vec::new();
        for f in frontends {
            let i = f.id as usize;
            if i >= max_ids {
                return Err(SnapshotError::IdTooLarge(f.id, max_ids));
            }
            if i >= MAX_FRONTENDS {
                return Err(SnapshotError::FrontendIdTooLarge(f.id));
            }
            for id in &f.backends {
                if bt.get(*id as usize).and_then(Option::as_ref).is_none() {
                    return Err(SnapshotError::UnknownBackend(f.service.clone(), *id));
                }
            }
            let n = f.backends.len() as u32;
            // A table's entries index the backend list it was built from, so a table built for
            // `n` backends fits without a scan of its (up to 16M) entries.
            let fits =
                f.maglev.backend_count() == n as usize || f.maglev.entries().iter().all(|e| *e < n);
            if !fits || (n > 0 && f.maglev.entries().is_empty()) {
                return Err(SnapshotError::MaglevMismatch(f.service.clone()));
            }
            let (addr, v6) = raw(f.vip);
            let key = VipKey {
                addr,
                v6,
                proto: f.protocol.number(),
                port: f.port,
            };
            if let Some(other) = seen.get(&key) {
                let o = ft[*other as usize]
                    .as_ref()
                    .map(|o| o.service.clone())
                    .unwrap_or_default();
                return Err(SnapshotError::VipClash(o, f.service.clone()));
            }
            seen.insert(key, f.id);
            entries.push((key, f.id));
            let akey = VipKey {
                addr,
                v6,
                proto: ADDR_VIP,
                port: 0,
            };
            if seen.insert(akey, f.id).is_none() {
                entries.push((akey, f.id));
            }
            if ft.len() <= i {
                ft.resize(i + 1, None);
            }
            if ft[i].is_some() {
                return Err(SnapshotError::DuplicateFrontend(f.id));
            }
            ft[i] = Some(f);
        }
        let own4 = local.ipv4.iter().chain(&local.nat_ipv4).map(|a| {
            let mut r = [0u8; 16];
            r[..4].copy_from_slice(a);
            (r, false)
        });
        let own6 = local.ipv6.iter().chain(&local.nat_ipv6).map(|a| (*a, true));
        for (addr, v6) in own4.chain(own6) {
            let k = VipKey {
                addr,
                v6,
                proto: ADDR_OWN,
                port: 0,
            };
            if seen.insert(k, 0).is_none() {
                entries.push((k, 0));
            }
        }
        let mut peer_nat: Vec<([u8; 16], bool)> = {
            let (n4, n6) = (&local.nat_ipv4, &local.nat_ipv6);
            let p4 = n4[n4.len() - local.nat_ipv4_peers.min(n4.len())..].iter();
            let p6 = n6[n6.len() - local.nat_ipv6_peers.min(n6.len())..].iter();
            p4.map(|a| raw(IpAddr::from(*a)))
                .chain(p6.map(|a| (*a, true)))
                .collect()
        };
        peer_nat.sort_unstable();
        Ok(Snapshot {
            generation,
            hash_seed,
            frontends: ft,
            backends: bt,
            local,
            vips: Vips::build(&entries),
            l2_silent: Vec::new(),
            peer_nat,
        })
    }

    /// An empty snapshot (generation 0): drops everything but answers for `local`.
    pub fn empty(local: Local) -> Snapshot {
        Snapshot::new(0, 0, Vec::new(), Vec::new(), local, 0).unwrap_or_else(|_| Snapshot {
            generation: 0,
            hash_seed: 0,
            frontends: Vec::new(),
            backends: Vec::new(),
            local: Local::default(),
            vips: Vips::build(&[]),
            l2_silent: Vec::new(),
            peer_nat: Vec::new(),
        })
    }

    /// The frontend serving (dst, proto, port), if any.
    #[inline(always)]
    pub fn frontend_for(
        &self,
        dst: &[u8; 16],
        v6: bool,
        proto: u8,
        port: u16,
    ) -> Option<&Frontend> {
        self.frontend(self.frontend_id_for(dst, v6, proto, port)?)
    }

    /// The id of the frontend serving (`dst`, `proto`, `port`), as [`Snapshot::frontend_for`].
    #[inline(always)]
    pub fn frontend_id_for(&self, dst: &[u8; 16], v6: bool, proto: u8, port: u16) -> Option<u32> {
        self.vips.get(dst, v6, proto, port)
    }

    /// What `dst` is to us: a VIP, our own address, or nothing.
    #[inline(always)]
    pub fn addr_kind(&self, dst: &[u8; 16], v6: bool) -> Option<AddrKind> {
        if self.vips.get(dst, v6, ADDR_VIP, 0).is_some() {
            return Some(AddrKind::Vip);
        }
        self.vips.get(dst, v6, ADDR_OWN, 0).map(|_| AddrKind::Own)
    }

    /// L2 mode: this host does not answer ARP/NDP for `vips` (another host owns them). The
    /// workers still forward their traffic, e.g. from clients whose caches are not updated yet.
    pub fn set_l2_silent(&mut self, vips: impl IntoIterator<Item = IpAddr>) {
        let mut v: Vec<([u8; 16], bool)> = vips.into_iter().map(raw).collect();
        v.sort_unstable();
        v.dedup();
        self.l2_silent = v;
    }

    /// L2 mode with flow sync: this host has taken over `addrs`, NAT addresses of peers that
    /// are gone, and answers ARP/NDP for them (it holds their synced flows).
    pub fn answer_peer_nat(&mut self, addrs: impl IntoIterator<Item = IpAddr>) {
        for a in addrs {
            let r = raw(a);
            self.peer_nat.retain(|x| *x != r);
        }
    }

    /// Whether this host answers ARP/NDP for `addr`, a VIP or one of our addresses (false for
    /// a VIP another host owns in L2 mode, and for a peer's NAT address). Not on the data
    /// path: neighbour requests only.
    pub fn answers_neighbors_for(&self, addr: &[u8; 16], v6: bool) -> bool {
        self.l2_silent.binary_search(&(*addr, v6)).is_err()
            && self.peer_nat.binary_search(&(*addr, v6)).is_err()
    }

    /// Some frontend on VIP `dst` with protocol `proto` (any port) using a DSR method: used for
    /// non-first fragments, which carry no port.
    pub fn dsr_frontend_any_port(&self, dst: &[u8; 16], v6: bool, proto: u8) -> Option<&Frontend> {
        self.frontends.iter().flatten().find(|f| {
            let (a, fv6) = raw(f.vip);
            a == *dst && fv6 == v6 && f.protocol.number() == proto && f.method != Method::Nat
        })
    }

    /// The frontend with this id.
    #[inline(always)]
    pub fn frontend(&self, id: u32) -> Option<&Frontend> {
        self.frontends.get(id as usize).and_then(Option::as_ref)
    }

    /// The backend with this id.
    #[inline(always)]
    pub fn backend(&self, id: u32) -> Option<&Backend> {
        self.backends.get(id as usize).and_then(Option::as_ref)
    }

    /// Every frontend.
    pub fn frontends(&self) -> impl Iterator<Item = &Frontend> {
        self.frontends.iter().flatten()
    }

    /// Every backend.
    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        self.backends.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maglev::MaglevBackend;

    fn fe(id: u32, vip: &str, port: u16, backends: Vec<u32>) -> Frontend {
        let names: Vec<String> = backends.iter().map(|b| format!("b{b}")).collect();
        let mb: Vec<MaglevBackend<'_>> = names
            .iter()
            .map(|n| MaglevBackend { id: n, weight: 1 })
            .collect();
        Frontend {
            id,
            service: Arc::from(format!("default/s{id}")),
            vip: vip.parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
            method: Method::Nat,
            affinity_ms: None,
            source_ranges: vec![],
            flow_limit: None,
            source_flow_limit: None,
            syn_proxy: SynProxy::Off,
            backends,
            maglev: Arc::new(MaglevTable::build(&mb, 251, 0).unwrap()),
        }
    }

    fn be(id: u32) -> Backend {
        Backend {
            id,
            addr: format!("10.0.0.{id}").parse().unwrap(),
            port: 8080,
            mac: Some([2, 0, 0, 0, 0, id as u8]),
            weight: 1,
            state: BackendState::Active,
        }
    }

    #[test]
    fn lookup_and_validation() {
        let local = Local {
            ipv4: vec![[10, 0, 0, 2]],
            nat_port_min: 1024,
            nat_port_max: 65535,
            nat_ipv4_peers: 0,
            nat_ipv6_peers: 0,
            ..Local::default()
        };
        let s = Snapshot::new(
            1,
            7,
            vec![
                fe(0, "192.0.2.1", 80, vec![1, 2]),
                fe(3, "2001:db8::1", 443, vec![2]),
            ],
            vec![be(1), be(2)],
            local.clone(),
            64,
        )
        .unwrap();
        let mut d = [0u8; 16];
        d[..4].copy_from_slice(&[192, 0, 2, 1]);
        assert_eq!(s.frontend_for(&d, false, 6, 80).map(|f| f.id), Some(0));
        assert!(s.frontend_for(&d, false, 6, 81).is_none());
        assert!(s.frontend_for(&d, false, 17, 80).is_none());
        assert_eq!(s.addr_kind(&d, false), Some(AddrKind::Vip));
        let v6: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            s.frontend_for(&v6.octets(), true, 6, 443).map(|f| f.id),
            Some(3)
        );
        let mut own = [0u8; 16];
        own[..4].copy_from_slice(&[10, 0, 0, 2]);
        assert_eq!(s.addr_kind(&own, false), Some(AddrKind::Own));
        assert_eq!(s.backend(2).map(|b| b.port), Some(8080));

        let clash = Snapshot::new(
            2,
            7,
            vec![
                fe(0, "192.0.2.1", 80, vec![1]),
                fe(1, "192.0.2.1", 80, vec![1]),
            ],
            vec![be(1)],
            local.clone(),
            64,
        );
        assert!(matches!(clash, Err(SnapshotError::VipClash(..))));
        let unknown = Snapshot::new(
            2,
            7,
            vec![fe(0, "192.0.2.1", 80, vec![9])],
            vec![be(1)],
            local.clone(),
            64,
        );
        assert!(matches!(unknown, Err(SnapshotError::UnknownBackend(_, 9))));
        let big = Snapshot::new(2, 7, vec![], vec![be(70)], local, 64);
        assert!(matches!(big, Err(SnapshotError::IdTooLarge(70, 64))));
    }

    /// The per-family VIP tables: every frontend found, nothing else, and an IPv6 VIP whose
    /// first four bytes spell an IPv4 VIP never answers for it (nor the other way round).
    #[test]
    fn vip_tables_per_family() {
        let local = Local {
            ipv4: vec![[10, 0, 0, 2]],
            ipv6: vec![[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]],
            nat_port_min: 1024,
            nat_port_max: 65535,
            nat_ipv4_peers: 0,
            nat_ipv6_peers: 0,
            ..Local::default()
        };
        let mut fes = Vec::new();
        for i in 0..200u32 {
            let vip = if i % 2 == 0 {
                format!("192.0.{}.{}", i / 100, i % 100 + 1)
            } else {
                // c000:201:: begins with the bytes of 192.0.2.1.
                format!("c000:{:x}::{:x}", 0x200 + i / 100, i % 100 + 1)
            };
            fes.push(fe(i, &vip, 80 + (i % 3) as u16, vec![1]));
        }
        let s = Snapshot::new(1, 7, fes.clone(), vec![be(1)], local, 256).unwrap();
        for f in &fes {
            let (addr, v6) = raw(f.vip);
            assert_eq!(
                s.frontend_id_for(&addr, v6, 6, f.port),
                Some(f.id),
                "{}",
                f.vip
            );
            assert_eq!(s.frontend_id_for(&addr, !v6, 6, f.port), None, "{}", f.vip);
            assert_eq!(s.frontend_id_for(&addr, v6, 17, f.port), None, "{}", f.vip);
            assert_eq!(
                s.frontend_id_for(&addr, v6, 6, f.port + 3),
                None,
                "{}",
                f.vip
            );
            assert_eq!(s.addr_kind(&addr, v6), Some(AddrKind::Vip), "{}", f.vip);
        }
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[192, 0, 9, 9]);
        assert_eq!(s.addr_kind(&a, false), None);
        a[..4].copy_from_slice(&[10, 0, 0, 2]);
        assert_eq!(s.addr_kind(&a, false), Some(AddrKind::Own));
        assert_eq!(s.addr_kind(&a, true), None);
        let own6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        assert_eq!(s.addr_kind(&own6, true), Some(AddrKind::Own));
        assert_eq!(s.addr_kind(&own6, false), None);
    }

    #[test]
    fn cidr_contains() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[10, 1, 200, 3]);
        assert!(c.contains_raw(&a, false));
        a[1] = 2;
        assert!(!c.contains_raw(&a, false));
        assert!(!c.contains_raw(&a, true));
        let c6 = Cidr::parse("fd00::/7").unwrap();
        let x: std::net::Ipv6Addr = "fdab::1".parse().unwrap();
        assert!(c6.contains_raw(&x.octets(), true));
        let c12 = Cidr::parse("10.16.0.0/12").unwrap();
        a[..4].copy_from_slice(&[10, 31, 0, 1]);
        assert!(c12.contains_raw(&a, false));
        a[1] = 32;
        assert!(!c12.contains_raw(&a, false));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert_eq!(Cidr::parse("10.0.0.1").unwrap().prefix, 32);
    }
}
