//! The structure-aware fuzzer's world: a fixed universe of addresses (VIPs, backends, NAT
//! addresses, clients, strangers), the operations an input decodes to, the frames they build,
//! and two workers' pipelines reused across inputs, checked by `sluice_dataplane::check`.
//!
//! # Input format
//! An input is a sequence of operations, each a kind byte and its fields, read one byte (or
//! two, big-endian) at a time with `arbitrary::Unstructured`; selectors are reduced modulo
//! their set, and a short input reads zeros. [`Op::encode`] writes the same format, which
//! `fuzz/seeds/` are made with (`cargo run --bin seeds`).
use std::sync::{Arc, OnceLock};

pub mod raw;

use arbitrary::{Arbitrary, Unstructured};
use sluice_dataplane::check::{FxMap, Model, Step};
use sluice_dataplane::conntrack::{ConntrackConfig, Timeouts};
use sluice_dataplane::maglev::{MaglevBackend, MaglevTable};
use sluice_dataplane::pipeline::{CookieKey, PacketBuf, Pipeline, PipelineConfig, VecBuf, Verdict};

use sluice_dataplane::snapshot::{
    Backend, BackendState, Cidr, Frontend, Local, Method, Protocol, Snapshot, SynProxy,
};
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::wire::parse::{parse, L3};

/// Workers (each with its NAT port slice).
pub const WORKERS: u16 = 2;
/// Operations read from one input at most.
const MAX_OPS: usize = 48;
/// Frames of a burst at most (the worker's rx burst).
pub const BURST: usize = 32;
/// Our MAC.
pub const LB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
/// A router's MAC (strangers' frames come from it).
pub const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];
/// Ids (frontends and backends) at most: the per-backend counters the table check compares.
const MAX_IDS: usize = 16;
const NAT_PORT_MIN: u16 = 20000;
const NAT_PORT_MAX: u16 = 20063;
const SEED: u64 = 0x5eed;
/// The workers' SYN cookie key (the model is given it).
const COOKIE_KEY: CookieKey = CookieKey([0x5eed_c00c_1e00_0001, 0x5eed_c00c_1e00_0002]);

/// A v4 address in the parser's 16-byte form.
const fn a4(a: [u8; 4]) -> [u8; 16] {
    [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

const fn a6(last: u8, net: u8) -> [u8; 16] {
    [
        0x20, 0x01, 0x0d, 0xb8, 0, net, 0, 0, 0, 0, 0, 0, 0, 0, 0, last,
    ]
}

/// Destinations by family: the VIPs first, then own and NAT addresses, backends, strangers.
const DST4: [[u8; 16]; 10] = [
    a4([192, 0, 2, 1]),
    a4([192, 0, 2, 2]),
    a4([192, 0, 2, 3]),
    a4([192, 0, 2, 4]),
    a4([10, 0, 0, 2]),
    a4([10, 0, 0, 3]),
    a4([10, 0, 0, 4]),
    a4([10, 0, 1, 1]),
    a4([192, 0, 2, 99]),
    a4([224, 0, 0, 1]),
];
const DST6: [[u8; 16]; 8] = [
    a6(1, 0),
    a6(2, 0),
    a6(3, 0),
    a6(2, 0xaa),
    a6(3, 0xaa),
    a6(1, 0xbb),
    a6(99, 0),
    [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
];
/// Sources by family: clients (the first two inside the ACL frontend's range), a client
/// outside it, backends, a VIP (spoofed), the unspecified address.
const SRC4: [[u8; 16]; 8] = [
    a4([10, 9, 9, 9]),
    a4([10, 9, 0, 10]),
    a4([10, 8, 0, 1]),
    a4([203, 0, 113, 7]),
    a4([10, 0, 1, 1]),
    a4([10, 0, 1, 2]),
    a4([192, 0, 2, 1]),
    a4([0, 0, 0, 0]),
];
const SRC6: [[u8; 16]; 6] = [
    a6(9, 9),
    a6(10, 9),
    a6(7, 0x77),
    a6(1, 0xcc),
    a6(1, 0),
    [0; 16],
];
/// Ports: served and not, backends', NAT ports of both workers' slices, ephemeral.
const PORTS: [u16; 12] = [
    80, 53, 443, 81, 8080, 5353, 20000, 20001, 20032, 20063, 40000, 40001,
];

/// Each frontend's SYN proxy: `on` for the v4 ACL frontend (192.0.2.4:443), `auto` with the
/// smallest threshold for the v6 TCP `nat` one (2001:db8::1:80: plain NAT until two of its
/// handshakes are pending on a worker at a tick, then cookies), off for the rest.
const SYN_PROXY: [SynProxy; 9] = [
    SynProxy::Off,
    SynProxy::Off,
    SynProxy::Off,
    SynProxy::Off,
    SynProxy::On,
    SynProxy::Auto { threshold: 2 },
    SynProxy::Off,
    SynProxy::Off,
    SynProxy::Off,
];

/// The backends that can be in a snapshot, by id: (frontend, address, port). Each belongs to
/// one frontend (a backend id names a backend of one frontend); addresses are shared.
const BACKENDS: [(u32, &str, u16); 14] = [
    (0, "10.0.1.1", 8080),
    (0, "10.0.1.2", 8080),
    (0, "10.0.1.3", 8080),
    (1, "10.0.1.1", 5353),
    (1, "10.0.1.2", 5353),
    (2, "10.0.1.1", 80),
    (2, "10.0.1.2", 80),
    (3, "10.0.1.3", 80),
    (4, "10.0.1.2", 8443),
    (5, "2001:db8:cc::1", 8080),
    (5, "2001:db8:cc::2", 8080),
    (6, "2001:db8:cc::1", 5353),
    (7, "2001:db8:cc::2", 80),
    (8, "2001:db8:cc::1", 53),
];
const NAMES: [&str; 14] = [
    "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "b9", "b10", "b11", "b12", "b13", "b14",
];

/// A backend id's MAC (its next hop; one each, so an output names its backend).
pub fn backend_mac(id: u32) -> [u8; 6] {
    [2, 0, 0, 0, 1, id as u8]
}

/// A client's MAC by source index.
fn client_mac(i: usize) -> [u8; 6] {
    [2, 0, 0, 0, 0, 0xa0 + i as u8]
}

/// One backend's mutable part of the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BackendSlot {
    present: bool,
    /// It was in a snapshot of this input and left it.
    left: bool,
    state: BackendState,
    weight: u32,
    resolved: bool,
}

const INITIAL: BackendSlot = BackendSlot {
    present: true,
    left: false,
    state: BackendState::Active,
    weight: 1,
    resolved: true,
};

/// The backends of the first snapshot: all but two, which swaps can add.
fn initial_slots() -> [BackendSlot; 14] {
    let mut s = [INITIAL; 14];
    for i in [2, 10] {
        s[i].present = false;
    }
    s
}

/// A frontend: VIP, port, protocol, method, affinity, source range.
type FrontendSpec = (
    &'static str,
    u16,
    Protocol,
    Method,
    Option<u32>,
    Option<&'static str>,
);

/// The snapshot of a backend table.
fn build_snapshot(generation: u64, slots: &[BackendSlot; 14]) -> Result<Snapshot, String> {
    build_snapshot_with(generation, slots, &mut MaglevCache::default())
}

/// A frontend's Maglev table by what it is built from: the frontend and its backends' ids
/// and weights (a table is a pure function of them).
type MaglevCache = FxMap<(usize, Vec<(u32, u32)>), Arc<MaglevTable>>;

/// [`build_snapshot`], taking the frontends' Maglev tables from `maglevs` when built before.
fn build_snapshot_with(
    generation: u64,
    slots: &[BackendSlot; 14],
    maglevs: &mut MaglevCache,
) -> Result<Snapshot, String> {
    let fronts: [FrontendSpec; 9] = [
        ("192.0.2.1", 80, Protocol::Tcp, Method::Nat, None, None),
        ("192.0.2.1", 53, Protocol::Udp, Method::Nat, None, None),
        ("192.0.2.2", 80, Protocol::Tcp, Method::DsrL2, None, None),
        ("192.0.2.3", 80, Protocol::Tcp, Method::DsrIpip, None, None),
        (
            "192.0.2.4",
            443,
            Protocol::Tcp,
            Method::Nat,
            Some(60_000),
            Some("10.9.0.0/16"),
        ),
        ("2001:db8::1", 80, Protocol::Tcp, Method::Nat, None, None),
        ("2001:db8::1", 53, Protocol::Udp, Method::Nat, None, None),
        (
            "2001:db8::2",
            80,
            Protocol::Tcp,
            Method::DsrIpip,
            None,
            None,
        ),
        (
            "2001:db8::3",
            53,
            Protocol::Udp,
            Method::DsrL2,
            Some(10_000),
            Some("2001:db8:9::/48"),
        ),
    ];
    let mut frontends = Vec::new();
    for (fid, (vip, port, protocol, method, affinity_ms, range)) in fronts.into_iter().enumerate() {
        let ids: Vec<u32> = (0..BACKENDS.len())
            .filter(|&i| BACKENDS[i].0 == fid as u32 && slots[i].present)
            .map(|i| i as u32 + 1)
            .collect();
        let key = (
            fid,
            ids.iter()
                .map(|&id| (id, slots[id as usize - 1].weight))
                .collect::<Vec<_>>(),
        );
        let maglev = match maglevs.get(&key) {
            Some(m) => m.clone(),
            None => {
                let mb: Vec<MaglevBackend<'_>> = ids
                    .iter()
                    .map(|&id| MaglevBackend {
                        id: NAMES[id as usize - 1],
                        weight: slots[id as usize - 1].weight,
                    })
                    .collect();
                let m = Arc::new(MaglevTable::build(&mb, 31, 1).map_err(|e| e.to_string())?);
                maglevs.insert(key, m.clone());
                m
            }
        };
        frontends.push(Frontend {
            id: fid as u32,
            service: Arc::from("default/fuzz"),
            vip: vip.parse().expect("vip"),
            port,
            protocol,
            method,
            affinity_ms,
            source_ranges: range.iter().filter_map(|r| Cidr::parse(r)).collect(),
            flow_limit: None,
            source_flow_limit: None,
            syn_proxy: SYN_PROXY[fid],
            backends: ids,
            maglev,
        });
    }
    let backends = (0..BACKENDS.len())
        .filter(|&i| slots[i].present)
        .map(|i| Backend {
            id: i as u32 + 1,
            addr: BACKENDS[i].1.parse().expect("backend"),
            port: BACKENDS[i].2,
            mac: slots[i].resolved.then(|| backend_mac(i as u32 + 1)),
            weight: slots[i].weight,
            state: slots[i].state,
        })
        .collect();
    let local = Local {
        mac: LB_MAC,
        ipv4: vec![[10, 0, 0, 2]],
        ipv6: vec![[0x20, 1, 0xd, 0xb8, 0, 0xaa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]],
        nat_ipv4: vec![[10, 0, 0, 3], [10, 0, 0, 4]],
        nat_ipv6: vec![[0x20, 1, 0xd, 0xb8, 0, 0xaa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]],
        nat_port_min: NAT_PORT_MIN,
        nat_port_max: NAT_PORT_MAX,
        nat_ipv4_peers: 0,
        nat_ipv6_peers: 0,
        mtu: 1500,
    };
    Snapshot::new(generation, SEED, frontends, backends, local, MAX_IDS).map_err(|e| e.to_string())
}

/// The first snapshot of every input (built once).
fn initial_snapshot() -> Arc<Snapshot> {
    static S: OnceLock<Arc<Snapshot>> = OnceLock::new();
    S.get_or_init(|| Arc::new(build_snapshot(1, &initial_slots()).expect("the first snapshot")))
        .clone()
}

/// What a snapshot is built from: its generation and each backend's part of it (`left` is
/// the fuzzer's bookkeeping, not the snapshot's).
type SnapKey = (u64, [(bool, BackendState, u32, bool); 14]);

/// Snapshots at most in [`SnapCache`] (it starts again when full).
const SNAP_CACHE: usize = 4096;

/// Snapshots already built, by what they are built from: a snapshot is immutable and a pure
/// function of its key, so inputs that swap the same way (the fuzzer's mutations keep most of
/// an input) share it instead of building Maglev tables again. `None`: the build failed.
#[derive(Default)]
struct SnapCache {
    snaps: FxMap<SnapKey, Option<Arc<Snapshot>>>,
    maglevs: MaglevCache,
}

impl SnapCache {
    fn get(&mut self, generation: u64, slots: &[BackendSlot; 14]) -> Result<Arc<Snapshot>, String> {
        let key: SnapKey = (
            generation,
            slots.map(|s| (s.present, s.state, s.weight, s.resolved)),
        );
        if let Some(s) = self.snaps.get(&key) {
            return s.clone().ok_or_else(|| "not built (cached)".to_string());
        }
        if self.snaps.len() >= SNAP_CACHE {
            self.snaps.clear();
        }
        if self.maglevs.len() >= SNAP_CACHE {
            self.maglevs.clear();
        }
        let built = build_snapshot_with(generation, slots, &mut self.maglevs).map(Arc::new);
        self.snaps.insert(key, built.as_ref().ok().cloned());
        built
    }
}

/// How a frame is damaged after it is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// None.
    None,
    /// Cut to this many bytes.
    Truncate(u16),
    /// This byte (from the start of the IP header) XORed with a value.
    Flip(u16, u8),
    /// The IPv4 header checksum wrong.
    IpChecksum,
    /// The transport checksum wrong.
    L4Checksum,
    /// Padding after the IP packet.
    Pad(u8),
}

/// A packet built from typed fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pkt {
    /// IPv6.
    pub v6: bool,
    /// Index into the family's sources.
    pub src: u8,
    /// Index into the family's destinations.
    pub dst: u8,
    /// Source port (an index into [`PORTS`] below 12, else the value).
    pub sport: u16,
    /// Destination port (same).
    pub dport: u16,
    /// 0 TCP, 1 UDP, 2 ICMP echo (ICMPv6), 3 another ICMP type, 4 another protocol.
    pub kind: u8,
    /// TCP flags, or the ICMP type for kind 3.
    pub flags: u8,
    /// TCP options: 0 none, 1 MSS, 2 MSS+SACK+TS+WS, 3 garbage.
    pub options: u8,
    /// Payload length (255: 1460, to exceed the MTU once encapsulated).
    pub payload: u8,
    /// 0 not a fragment, 1 first fragment, 2 a later one.
    pub fragment: u8,
    /// 0 untagged, 1 802.1Q, 2 802.1ad + 802.1Q.
    pub vlan: u8,
    /// 0 to our MAC, 1 broadcast, 2 another MAC.
    pub to_mac: u8,
    /// IPv4 options (4 bytes of NOPs) or an IPv6 hop-by-hop header.
    pub ip_options: bool,
    /// Damage done after building.
    pub damage: Damage,
}

/// An operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// One packet, processed on its own (`Pipeline::process`).
    Packet(Pkt),
    /// Up to 32 packets, each worker's share in one `process_burst`.
    Burst(Vec<Pkt>),
    /// The backend's reply to the `n`-th latest NAT'd packet, with TCP flags and a payload.
    Reply { n: u8, flags: u8, payload: u8 },
    /// A router's ICMP error (`kind`: unreachable, frag needed / too big, time exceeded)
    /// quoting the packet a backend sent to the client of the `n`-th latest packet to a VIP;
    /// `cut` shortens the quote.
    IcmpError { n: u8, kind: u8, cut: u8 },
    /// The `n`-th latest packet to a VIP again, with other TCP flags.
    Again { n: u8, flags: u8 },
    /// The clock moves on.
    Advance(u32),
    /// A snapshot swap: backend `id` (an index) added, removed, drained, down, active,
    /// reweighted, unresolved or resolved (`what`).
    Swap { backend: u8, what: u8 },
    /// Expiry sweeps of this many buckets on every worker.
    Expire(u8),
    /// A raw frame.
    Raw(Vec<u8>),
    /// The client's answer to the `n`-th latest SYN-ACK of the SYN proxy (`how` % 4): its
    /// ACK, the ACK with data, the ACK with one bit of the cookie flipped (bit `how` / 4),
    /// or a zero-window probe (the ACK lost: its ISN as sequence number).
    CookieAck { n: u8, how: u8 },
}

/// A fuzzer input: operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The operations, in order.
    pub ops: Vec<Op>,
}

fn byte(u: &mut Unstructured<'_>) -> u8 {
    u8::arbitrary(u).unwrap_or(0)
}

fn word(u: &mut Unstructured<'_>) -> u16 {
    u16::from_be_bytes([byte(u), byte(u)])
}

impl Pkt {
    fn decode(u: &mut Unstructured<'_>) -> Pkt {
        let a = byte(u);
        let damage = match byte(u) {
            0..=199 => Damage::None,
            200..=209 => Damage::Truncate(word(u) % 1600),
            210..=229 => Damage::Flip(word(u) % 80, byte(u)),
            230..=236 => Damage::IpChecksum,
            237..=245 => Damage::L4Checksum,
            _ => Damage::Pad(byte(u)),
        };
        let port = |u: &mut Unstructured<'_>| {
            let b = byte(u);
            if b < 200 {
                u16::from(b % PORTS.len() as u8)
            } else {
                word(u)
            }
        };
        Pkt {
            v6: a & 1 != 0,
            kind: (a >> 1) % 5,
            fragment: match (a >> 4) & 7 {
                6 => 1,
                7 => 2,
                _ => 0,
            },
            ip_options: a & 0x80 != 0,
            src: byte(u),
            dst: byte(u),
            sport: port(u),
            dport: port(u),
            flags: byte(u),
            options: byte(u) % 4,
            payload: byte(u),
            vlan: match byte(u) {
                0..=239 => 0,
                240..=249 => 1,
                _ => 2,
            },
            to_mac: match byte(u) {
                0..=239 => 0,
                240..=249 => 1,
                _ => 2,
            },
            damage,
        }
    }

    /// Writes the bytes [`Pkt::decode`] reads back into this packet.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let frag = match self.fragment {
            1 => 6,
            2 => 7,
            _ => 0,
        };
        out.push(
            u8::from(self.v6) | (self.kind % 5) << 1 | frag << 4 | u8::from(self.ip_options) << 7,
        );
        match self.damage {
            Damage::None => out.push(0),
            Damage::Truncate(n) => out.extend([200, (n >> 8) as u8, n as u8]),
            Damage::Flip(at, x) => out.extend([210, (at >> 8) as u8, at as u8, x]),
            Damage::IpChecksum => out.push(230),
            Damage::L4Checksum => out.push(237),
            Damage::Pad(n) => out.extend([246, n]),
        }
        out.extend([self.src, self.dst]);
        for p in [self.sport, self.dport] {
            if p < PORTS.len() as u16 {
                out.push(p as u8);
            } else {
                out.extend([200, (p >> 8) as u8, p as u8]);
            }
        }
        out.extend([self.flags, self.options, self.payload]);
        out.push([0, 240, 250][usize::from(self.vlan % 3)]);
        out.push([0, 240, 250][usize::from(self.to_mac % 3)]);
    }

    fn port(p: u16) -> u16 {
        if p < PORTS.len() as u16 {
            PORTS[usize::from(p)]
        } else {
            p
        }
    }

    /// Source and destination addresses and the source's MAC.
    fn addrs(&self) -> ([u8; 16], [u8; 16], [u8; 6]) {
        let (src, dst) = if self.v6 {
            (
                SRC6[usize::from(self.src) % SRC6.len()],
                DST6[usize::from(self.dst) % DST6.len()],
            )
        } else {
            (
                SRC4[usize::from(self.src) % SRC4.len()],
                DST4[usize::from(self.dst) % DST4.len()],
            )
        };
        let n = if self.v6 { SRC6.len() } else { SRC4.len() };
        let i = usize::from(self.src) % n;
        let mac = if i == 3 {
            ROUTER_MAC
        } else {
            client_mac(i + if self.v6 { 8 } else { 0 })
        };
        (src, dst, mac)
    }

    /// The frame.
    pub fn frame(&self) -> Vec<u8> {
        self.frame_into(Vec::new())
    }

    /// The frame, written into `buf` (cleared first; its allocation reused).
    pub fn frame_into(&self, buf: Vec<u8>) -> Vec<u8> {
        let (src, dst, mac) = self.addrs();
        let to = match self.to_mac % 3 {
            0 => LB_MAC,
            1 => [0xff; 6],
            _ => [2, 0, 0, 0, 0, 0x55],
        };
        let payload_len = if self.payload == 255 {
            1460
        } else {
            usize::from(self.payload)
        };
        let (proto, l4) = match self.kind {
            0 => (
                6,
                tcp_header(
                    Pkt::port(self.sport),
                    Pkt::port(self.dport),
                    self.flags,
                    self.options,
                ),
            ),
            1 => (17, udp_header(Pkt::port(self.sport), Pkt::port(self.dport))),
            2 => (
                if self.v6 { 58 } else { 1 },
                icmp_header(if self.v6 { 128 } else { 8 }, 0, Pkt::port(self.sport)),
            ),
            3 => (if self.v6 { 58 } else { 1 }, icmp_header(self.flags, 0, 0)),
            _ => (
                [47u8, 132, 4, 41][usize::from(self.flags % 4)],
                Hdr::default(),
            ),
        };
        let mut f = Frame::new_in(buf, to, mac, self.vlan);
        f.ip(
            self.v6,
            src,
            dst,
            proto,
            &l4,
            &PAYLOAD[..payload_len],
            self.fragment,
            self.ip_options,
        );
        let mut v = f.bytes;
        let l3 = f.l3;
        match self.damage {
            Damage::None => {}
            Damage::Truncate(n) => v.truncate(usize::from(n)),
            Damage::Flip(at, x) => {
                if let Some(b) = v.get_mut(l3 + usize::from(at)) {
                    *b ^= x;
                }
            }
            Damage::IpChecksum => {
                if !self.v6 {
                    v[l3 + 10] ^= 0x40;
                }
            }
            Damage::L4Checksum => {
                if let Some(at) = f.l4_csum {
                    v[at] ^= 0x21;
                }
            }
            Damage::Pad(n) => v.extend(std::iter::repeat_n(0xee, usize::from(n % 64))),
        }
        v
    }
}

/// Payload bytes: byte `i` is `i` (mod 256).
static PAYLOAD: [u8; 1460] = {
    let mut p = [0u8; 1460];
    let mut i = 0;
    while i < p.len() {
        p[i] = i as u8;
        i += 1;
    }
    p
};

/// A transport header built on the stack (at most 40 bytes: TCP with options).
#[derive(Debug, Clone, Copy)]
struct Hdr {
    b: [u8; 40],
    n: usize,
}

impl Default for Hdr {
    fn default() -> Self {
        Hdr { b: [0; 40], n: 0 }
    }
}

impl std::ops::Deref for Hdr {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.b[..self.n]
    }
}

impl std::ops::DerefMut for Hdr {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.b[..self.n]
    }
}

fn tcp_header(sport: u16, dport: u16, flags: u8, options: u8) -> Hdr {
    let opts: &[u8] = match options {
        1 => &[2, 4, 5, 0xb4],
        2 => &[
            2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ],
        3 => &[0xfe, 6, 1, 2, 3, 4, 0, 0],
        _ => &[],
    };
    let len = 20 + opts.len();
    let mut h = Hdr { b: [0; 40], n: len };
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&1000u32.to_be_bytes());
    h[8..12].copy_from_slice(&(if flags & 0x10 != 0 { 5000u32 } else { 0 }).to_be_bytes());
    h[12] = ((len / 4) as u8) << 4;
    h[13] = flags;
    h[14..16].copy_from_slice(&65535u16.to_be_bytes());
    h[20..].copy_from_slice(opts);
    h
}

fn udp_header(sport: u16, dport: u16) -> Hdr {
    let mut h = Hdr { b: [0; 40], n: 8 };
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h
}

fn icmp_header(t: u8, code: u8, ident: u16) -> Hdr {
    let mut h = Hdr { b: [0; 40], n: 8 };
    h[..8].copy_from_slice(&[t, code, 0, 0, 0, 0, 0, 1]);
    h[4..6].copy_from_slice(&ident.to_be_bytes());
    h
}

fn sum(acc: u64, b: &[u8]) -> u64 {
    let mut words = b.chunks_exact(2);
    let mut a = (&mut words).fold(acc, |a, c| a + u64::from(u16::from_be_bytes([c[0], c[1]])));
    if let [last] = words.remainder() {
        a += u64::from(*last) << 8;
    }
    a
}

fn csum(s: u64) -> u16 {
    let mut s = s;
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// A frame under construction.
struct Frame {
    bytes: Vec<u8>,
    l3: usize,
    l4_csum: Option<usize>,
}

impl Frame {
    fn new(dst: [u8; 6], src: [u8; 6], vlan: u8) -> Frame {
        Frame::new_in(Vec::with_capacity(128), dst, src, vlan)
    }

    /// A frame written into `b` (cleared first; its allocation reused).
    fn new_in(mut b: Vec<u8>, dst: [u8; 6], src: [u8; 6], vlan: u8) -> Frame {
        b.clear();
        b.extend_from_slice(&dst);
        b.extend_from_slice(&src);
        match vlan % 3 {
            1 => b.extend_from_slice(&[0x81, 0, 0, 42]),
            2 => b.extend_from_slice(&[0x88, 0xa8, 0, 7, 0x81, 0, 0, 42]),
            _ => {}
        }
        Frame {
            l3: b.len() + 2,
            bytes: b,
            l4_csum: None,
        }
    }

    /// Appends an IP packet carrying `l4` (a transport header, its checksum field zero and
    /// filled here) and `payload`.
    #[allow(clippy::too_many_arguments)]
    fn ip(
        &mut self,
        v6: bool,
        src: [u8; 16],
        dst: [u8; 16],
        proto: u8,
        l4: &[u8],
        payload: &[u8],
        fragment: u8,
        options: bool,
    ) {
        let seg_len = l4.len() + payload.len();
        let n = if v6 { 16 } else { 4 };
        let ck = match proto {
            6 => Some(16),
            17 => Some(6),
            1 | 58 if seg_len >= 4 => Some(2),
            _ => None,
        };
        let b = &mut self.bytes;
        if v6 {
            b.extend_from_slice(&[0x86, 0xdd]);
            // Extension headers: hop-by-hop (options) first, then the fragment header.
            let mut ext = [0u8; 16];
            let mut el = 0;
            let mut next = proto;
            if options {
                let after = if fragment != 0 { 44 } else { proto };
                ext[..8].copy_from_slice(&[after, 0, 1, 4, 0, 0, 0, 0]);
                el = 8;
                next = 0;
            }
            if fragment != 0 {
                let off: u16 = if fragment == 2 { 8 << 3 } else { 1 };
                let o = off.to_be_bytes();
                ext[el..el + 8].copy_from_slice(&[proto, 0, o[0], o[1], 0, 0, 0, 7]);
                el += 8;
                if !options {
                    next = 44;
                }
            }
            let plen = (el + seg_len) as u16;
            b.extend_from_slice(&[0x60, 0, 0, 0]);
            b.extend_from_slice(&plen.to_be_bytes());
            b.extend_from_slice(&[next, 64]);
            b.extend_from_slice(&src);
            b.extend_from_slice(&dst);
            b.extend_from_slice(&ext[..el]);
        } else {
            b.extend_from_slice(&[0x08, 0x00]);
            let ihl = if options { 24 } else { 20 };
            let total = (ihl + seg_len) as u16;
            let frag: u16 = match fragment {
                1 => 0x2000,
                2 => 8,
                _ => 0,
            };
            let l3 = b.len();
            b.push(0x40 | (ihl / 4) as u8);
            b.push(0);
            b.extend_from_slice(&total.to_be_bytes());
            b.extend_from_slice(&[0, 7]);
            b.extend_from_slice(&frag.to_be_bytes());
            b.extend_from_slice(&[64, proto, 0, 0]);
            b.extend_from_slice(&src[..4]);
            b.extend_from_slice(&dst[..4]);
            if options {
                b.extend_from_slice(&[1, 1, 1, 0]);
            }
            let c = csum(sum(0, &b[l3..]));
            b[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        }
        let at = b.len();
        b.extend_from_slice(l4);
        b.extend_from_slice(payload);
        if let Some(c) = ck {
            if proto == 17 {
                b[at + 4..at + 6].copy_from_slice(&(seg_len as u16).to_be_bytes());
            }
            let pseudo = if proto == 1 {
                0
            } else {
                sum(sum(0, &src[..n]), &dst[..n]) + u64::from(proto) + seg_len as u64
            };
            let mut x = csum(sum(pseudo, &b[at..]));
            if proto == 17 && x == 0 {
                x = 0xffff;
            }
            b[at + c..at + c + 2].copy_from_slice(&x.to_be_bytes());
        }
        self.l4_csum = ck.map(|c| at + c);
    }
}

impl Op {
    fn decode(u: &mut Unstructured<'_>) -> Op {
        match byte(u) % 16 {
            0..=4 => Op::Packet(Pkt::decode(u)),
            5 | 6 => {
                let n = 1 + usize::from(byte(u)) % BURST;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    if u.is_empty() {
                        break;
                    }
                    v.push(Pkt::decode(u));
                }
                Op::Burst(v)
            }
            7 | 8 => Op::Reply {
                n: byte(u),
                flags: byte(u),
                payload: byte(u),
            },
            9 => Op::IcmpError {
                n: byte(u),
                kind: byte(u),
                cut: byte(u),
            },
            10 => Op::Again {
                n: byte(u),
                flags: byte(u),
            },
            11 => Op::Advance(match byte(u) % 12 {
                0 => 1,
                1 => 100,
                2 => 999,
                3 => 4_999,
                4 => 5_000,
                5 => 5_001,
                6 => 10_000,
                7 => 30_000,
                8 => 60_001,
                9 => 300_000,
                10 => u32::from(word(u)) * 10,
                // At most an hour: the tables require every entry to be looked at within
                // 2^31 ms (the worker sweeps them every millisecond), so no jump goes past it.
                _ => 3_600_000,
            }),
            12 => Op::Swap {
                backend: byte(u),
                what: byte(u),
            },
            13 => Op::Expire(byte(u)),
            15 => Op::CookieAck {
                n: byte(u),
                how: byte(u),
            },
            _ => {
                let n = usize::from(word(u) % 1600);
                let mut v = vec![0u8; n.min(u.len())];
                let _ = u.fill_buffer(&mut v);
                Op::Raw(v)
            }
        }
    }

    /// Writes the bytes [`Op::decode`] reads back into this operation.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Op::Packet(p) => {
                out.push(0);
                p.encode(out);
            }
            Op::Burst(ps) => {
                out.extend([5, (ps.len().max(1) - 1) as u8]);
                for p in ps {
                    p.encode(out);
                }
            }
            Op::Reply { n, flags, payload } => out.extend([7, *n, *flags, *payload]),
            Op::IcmpError { n, kind, cut } => out.extend([9, *n, *kind, *cut]),
            Op::Again { n, flags } => out.extend([10, *n, *flags]),
            Op::Advance(ms) => {
                let sel = [
                    1, 100, 999, 4_999, 5_000, 5_001, 10_000, 30_000, 60_001, 300_000,
                ]
                .iter()
                .position(|x| x == ms);
                match sel {
                    Some(i) => out.extend([11, i as u8]),
                    None => {
                        let w = (ms / 10).min(65535) as u16;
                        out.extend([11, 10, (w >> 8) as u8, w as u8]);
                    }
                }
            }
            Op::Swap { backend, what } => out.extend([12, *backend, *what]),
            Op::Expire(n) => out.extend([13, *n]),
            Op::CookieAck { n, how } => out.extend([15, *n, *how]),
            Op::Raw(v) => {
                let n = v.len().min(1599) as u16;
                out.extend([14, (n >> 8) as u8, n as u8]);
                out.extend_from_slice(&v[..usize::from(n)]);
            }
        }
    }
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < MAX_OPS {
            ops.push(Op::decode(u));
        }
        Ok(Input { ops })
    }

    fn arbitrary_take_rest(mut u: Unstructured<'a>) -> arbitrary::Result<Self> {
        Self::arbitrary(&mut u)
    }
}

impl Input {
    /// The bytes that decode to this input.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for op in &self.ops {
            op.encode(&mut out);
        }
        out
    }
}

/// A packet a client sent to a VIP (quoted by ICMP errors, sent again).
#[derive(Debug, Clone, Copy)]
struct Sent {
    pkt: Pkt,
}

/// A packet forwarded to a backend through NAT: what its reply looks like.
#[derive(Debug, Clone, Copy)]
struct Natted {
    v6: bool,
    backend: [u8; 16],
    nat: [u8; 16],
    bport: u16,
    nport: u16,
    proto: u8,
    mac: [u8; 6],
}

/// A SYN-ACK of the SYN proxy: what the client's answer looks like.
#[derive(Debug, Clone, Copy)]
struct Cookied {
    v6: bool,
    client: [u8; 16],
    vip: [u8; 16],
    cport: u16,
    vport: u16,
    /// The cookie (the SYN-ACK's sequence number) and the client's ISN + 1 (its ACK).
    seq: u32,
    ack: u32,
    mac: [u8; 6],
}

/// Two workers, their tables, the snapshot and the model, reused across inputs.
pub struct World {
    pipes: Vec<Pipeline>,
    model: Model,
    snap: Arc<Snapshot>,
    slots: [BackendSlot; 14],
    generation: u64,
    now_ms: u32,
    sent: Vec<Sent>,
    natted: Vec<Natted>,
    cookied: Vec<Cookied>,
    min_timeout_ms: u32,
    snaps: SnapCache,
    scratch: Scratch,
    /// `SLUICE_FUZZ_DEBUG` is set: every operation is printed.
    debug: bool,
    /// A digest of every frame fed to a worker, its verdict and its output, when asked for
    /// ([`World::traced`]): what shows that two runs behaved alike.
    trace: Option<u64>,
    /// Per worker: its tables were checked at the current snapshot and clock and have not
    /// changed since (so checking them again would give the same answer).
    checked: [bool; WORKERS as usize],
    /// Per worker: the table epochs its last check passed at, if the snapshot and the clock
    /// are still those of that check (`Pipeline::check_tables_since`).
    seen: [Option<[u64; 6]>; WORKERS as usize],
    /// Inputs run.
    runs: u64,
}

/// With debug assertions (as `fuzz/run` builds), every this many inputs the state after the
/// reset is compared with a new world's ([`World::state_dump`]).
const RESET_CHECK_EVERY: u64 = 1024;

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

impl World {
    /// Two workers' pipelines with small tables (so that buckets fill and entries are
    /// evicted).
    pub fn new() -> World {
        let timeouts = Timeouts::default();
        let pipes = (0..WORKERS)
            .map(|w| {
                let cfg = PipelineConfig {
                    worker: w,
                    workers: WORKERS,
                    conntrack: ConntrackConfig {
                        capacity: 64,
                        timeouts,
                    },
                    conntrack_v6_capacity: 32,
                    affinity_capacity: 16,
                    nat_port_start: 0,
                    reset_unknown_flows: true,
                    source_limits: Default::default(),
                    syn_cookie_key: COOKIE_KEY,
                };
                Pipeline::new(&cfg, Arc::new(WorkerStats::new(MAX_IDS)))
            })
            .collect();
        let t = timeouts;
        World {
            pipes,
            model: Model::with_cookie_key(COOKIE_KEY),
            snap: initial_snapshot(),
            slots: initial_slots(),
            generation: 1,
            now_ms: 1000,
            sent: Vec::new(),
            natted: Vec::new(),
            cookied: Vec::new(),
            min_timeout_ms: [
                t.tcp_syn_ms,
                t.tcp_established_ms,
                t.tcp_closing_ms,
                t.udp_ms,
                t.other_ms,
            ]
            .into_iter()
            .min()
            .unwrap_or(0),
            snaps: SnapCache::default(),
            scratch: Scratch::default(),
            debug: std::env::var_os("SLUICE_FUZZ_DEBUG").is_some(),
            trace: None,
            checked: [false; WORKERS as usize],
            seen: [None; WORKERS as usize],
            runs: 0,
        }
    }

    fn reset(&mut self) {
        for p in &mut self.pipes {
            p.reset(Arc::new(WorkerStats::new(MAX_IDS)));
        }
        self.model.reset();
        self.snap = initial_snapshot();
        self.slots = initial_slots();
        self.generation = 1;
        self.now_ms = 1000;
        self.sent.clear();
        self.natted.clear();
        self.cookied.clear();
        let snap = self.snap.clone();
        for p in &mut self.pipes {
            p.install_snapshot(&snap);
        }
        self.forget_checks();
    }

    /// The snapshot or the clock changed (or a new input begins): every check of every
    /// worker is due again.
    fn forget_checks(&mut self) {
        self.checked = [false; WORKERS as usize];
        self.seen = [None; WORKERS as usize];
    }

    /// Runs `input` as [`World::run`] does and returns a digest of every frame fed to a
    /// worker, its verdict and its output, and of the state left.
    pub fn traced(&mut self, input: &Input) -> (Result<(), String>, u64) {
        self.trace = Some(0xcbf2_9ce4_8422_2325);
        let r = self.run(input);
        let h = self.trace.take().unwrap_or(0);
        (r, h)
    }

    /// Everything the world holds that an input can change, written out: both pipelines
    /// (`Pipeline::state_dump`), the model, the snapshot (its generation, and whether it is
    /// the first), the backend table, the clock, the packets remembered and what is known to
    /// have been checked. Leaves out the caches (snapshots and Maglev tables, each a pure
    /// function of its key) and the scratch buffers (overwritten before every use).
    pub fn state_dump(&self) -> String {
        let mut d = String::new();
        for p in &self.pipes {
            d.push_str(&p.state_dump());
            d.push('\n');
        }
        d.push_str(&format!(
            "model {:?}\nsnapshot {} first {}\nslots {:?}\ngeneration {} now {}\nsent {:?}\nnatted {:?}\ncookied {:?}\nchecked {:?} seen {:?}",
            self.model,
            self.snap.generation,
            Arc::ptr_eq(&self.snap, &initial_snapshot()),
            self.slots,
            self.generation,
            self.now_ms,
            self.sent,
            self.natted,
            self.cookied,
            self.checked,
            // The epochs count from the tables' creation; what matters is which tables
            // changed since their last check.
            self.seen
                .iter()
                .zip(&self.pipes)
                .map(|(s, p)| s.map(|e| {
                    let now = p.table_epochs();
                    std::array::from_fn::<bool, 6, _>(|i| e[i] == now[i])
                }))
                .collect::<Vec<_>>()
        ));
        d
    }

    /// Runs one input from a fresh state; the first invariant violated, if any.
    pub fn run(&mut self, input: &Input) -> Result<(), String> {
        self.reset();
        if cfg!(debug_assertions) && self.runs.is_multiple_of(RESET_CHECK_EVERY) {
            static FRESH: OnceLock<String> = OnceLock::new();
            // A new world as an input finds it: reset, its snapshot installed.
            let fresh = FRESH.get_or_init(|| {
                let mut w = World::new();
                w.reset();
                w.state_dump()
            });
            assert!(
                self.state_dump() == *fresh,
                "the reset left state behind: a crash would not reproduce"
            );
        }
        self.runs += 1;
        let debug = self.debug;
        for (i, op) in input.ops.iter().enumerate() {
            if debug {
                eprintln!("op {i} at {} ms: {op:?}", self.now_ms);
            }
            self.op(op).map_err(|e| format!("op {i} {op:?}: {e}"))?;
            // Every worker's tables after every operation; a worker whose tables, snapshot
            // and clock are those it was last checked at would give the same answer.
            for (w, p) in self.pipes.iter().enumerate() {
                if !std::mem::replace(&mut self.checked[w], true) {
                    p.check_tables_since(&self.snap, self.now_ms, self.seen[w].as_ref())
                        .map_err(|e| format!("after op {i} {op:?}, worker {w}: {e}"))?;
                    self.seen[w] = Some(p.table_epochs());
                }
            }
        }
        Ok(())
    }

    fn op(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::Packet(p) => {
                self.remember(p);
                let f = p.frame_into(self.scratch.buf());
                self.deliver_one(f)
            }
            Op::Burst(ps) => {
                let mut frames = std::mem::take(&mut self.scratch.frames);
                for p in ps {
                    self.remember(p);
                    frames.push(p.frame_into(self.scratch.buf()));
                }
                self.deliver(frames, true)
            }
            Op::Reply { n, flags, payload } => {
                let Some(r) = nth(&self.natted, *n) else {
                    return Ok(());
                };
                let mut f = Frame::new_in(self.scratch.buf(), LB_MAC, r.mac, 0);
                let l4 = if r.proto == 6 {
                    tcp_header(r.bport, r.nport, *flags, 0)
                } else {
                    udp_header(r.bport, r.nport)
                };
                let payload = &PAYLOAD[..usize::from(*payload % 64)];
                f.ip(r.v6, r.backend, r.nat, r.proto, &l4, payload, 0, false);
                self.deliver_one(f.bytes)
            }
            Op::IcmpError { n, kind, cut } => {
                let Some(s) = nth(&self.sent, *n) else {
                    return Ok(());
                };
                let p = s.pkt;
                let (client, vip, _) = p.addrs();
                // The packet the backend sent to the client (VIP:port -> client:port) ...
                let mut quoted = Frame::new([0; 6], [0; 6], 0);
                let l4 = if p.kind == 1 {
                    udp_header(Pkt::port(p.dport), Pkt::port(p.sport))
                } else {
                    tcp_header(Pkt::port(p.dport), Pkt::port(p.sport), 0x18, 0)
                };
                quoted.ip(
                    p.v6,
                    vip,
                    client,
                    if p.kind == 1 { 17 } else { 6 },
                    &l4,
                    &[0; 8],
                    0,
                    false,
                );
                let mut q = quoted.bytes.split_off(quoted.l3);
                q.truncate(q.len().saturating_sub(usize::from(*cut % 48)));
                // ... which a router could not deliver, so tells the VIP.
                let (t, code) = match (p.v6, kind % 3) {
                    (false, 0) => (3, 3),
                    (false, 1) => (3, 4),
                    (false, _) => (11, 0),
                    (true, 0) => (1, 4),
                    (true, 1) => (2, 0),
                    (true, _) => (3, 0),
                };
                let mut h = icmp_header(t, code, 0);
                if t == 3 && code == 4 || p.v6 && t == 2 {
                    h[6..8].copy_from_slice(&1400u16.to_be_bytes());
                }
                let router = if p.v6 { a6(1, 0xee) } else { a4([10, 9, 0, 1]) };
                let mut f = Frame::new_in(self.scratch.buf(), LB_MAC, ROUTER_MAC, 0);
                f.ip(
                    p.v6,
                    router,
                    vip,
                    if p.v6 { 58 } else { 1 },
                    &h,
                    &q,
                    0,
                    false,
                );
                self.deliver_one(f.bytes)
            }
            Op::Again { n, flags } => {
                let Some(s) = nth(&self.sent, *n) else {
                    return Ok(());
                };
                let mut p = s.pkt;
                p.flags = *flags;
                p.damage = Damage::None;
                let f = p.frame_into(self.scratch.buf());
                self.deliver_one(f)
            }
            Op::Advance(ms) => {
                self.now_ms = self.now_ms.wrapping_add(*ms);
                // The worker's millisecond tick (the SYN proxy's census and engagement),
                // once per advance.
                for p in &mut self.pipes {
                    p.syn_proxy_tick(&self.snap, self.now_ms);
                }
                self.forget_checks();
                Ok(())
            }
            Op::Swap { backend, what } => {
                let i = usize::from(*backend) % self.slots.len();
                let prev = self.slots;
                let s = &mut self.slots[i];
                match what % 8 {
                    // A backend that left does not come back within an input: once it left,
                    // its flows' reverse entries cannot be found (they only expire), and the
                    // NAT-halves invariant exempts them only while it is gone.
                    0 => s.present = s.present || !s.left,
                    1 => {
                        s.left |= s.present;
                        s.present = false;
                    }
                    2 => s.state = BackendState::Draining,
                    3 => s.state = BackendState::Down,
                    4 => s.state = BackendState::Active,
                    5 => s.weight = u32::from(what / 8 % 4),
                    6 => s.resolved = false,
                    _ => s.resolved = true,
                }
                self.generation += 1;
                // A table the control plane could not build is not published (the last good
                // snapshot keeps serving).
                match self.snaps.get(self.generation, &self.slots) {
                    Ok(snap) => {
                        for p in &mut self.pipes {
                            p.install_snapshot(&snap);
                        }
                        self.snap = snap;
                        self.forget_checks();
                    }
                    Err(e) => {
                        if self.debug {
                            eprintln!("swap not published: {e}");
                        }
                        self.slots = prev;
                    }
                }
                Ok(())
            }
            Op::Expire(n) => {
                for p in &mut self.pipes {
                    p.expire(self.now_ms, usize::from(*n % 16) + 1);
                }
                self.checked = [false; WORKERS as usize];
                Ok(())
            }
            Op::Raw(v) => {
                let mut f = self.scratch.buf();
                f.extend_from_slice(v);
                self.deliver_one(f)
            }
            Op::CookieAck { n, how } => {
                let Some(c) = nth(&self.cookied, *n) else {
                    return Ok(());
                };
                let mut f = Frame::new_in(self.scratch.buf(), LB_MAC, c.mac, 0);
                let (mut seq, mut ack, mut flags, mut len) =
                    (c.ack, c.seq.wrapping_add(1), 0x10, 0);
                match how % 4 {
                    0 => {}
                    1 => (flags, len) = (0x18, 100),
                    2 => ack ^= 1 << (how / 4 % 32),
                    _ => seq = seq.wrapping_sub(1),
                }
                let mut h = tcp_header(c.cport, c.vport, flags, 0);
                h[4..8].copy_from_slice(&seq.to_be_bytes());
                h[8..12].copy_from_slice(&ack.to_be_bytes());
                f.ip(c.v6, c.client, c.vip, 6, &h, &PAYLOAD[..len], 0, false);
                self.deliver_one(f.bytes)
            }
        }
    }

    /// Keeps a packet to a VIP for later ICMP errors and retransmissions.
    fn remember(&mut self, p: &Pkt) {
        if p.kind <= 1 && usize::from(p.dst) % if p.v6 { DST6.len() } else { DST4.len() } < 4 {
            if self.sent.len() == 16 {
                self.sent.remove(0);
            }
            self.sent.push(Sent { pkt: *p });
        }
    }

    /// Feeds one frame to the worker RSS picks ([`World::deliver`]).
    fn deliver_one(&mut self, frame: Vec<u8>) -> Result<(), String> {
        let mut frames = std::mem::take(&mut self.scratch.frames);
        frames.push(frame);
        self.deliver(frames, false)
    }

    /// Feeds frames to the workers RSS picks, in one burst each (`burst`) or one by one;
    /// frames handed to another worker follow in further rounds. Checks every output. The
    /// frames' buffers go back to the scratch pool.
    fn deliver(&mut self, mut frames: Vec<Vec<u8>>, burst: bool) -> Result<(), String> {
        let sc = &mut self.scratch;
        for f in frames.drain(..) {
            sc.queues[usize::from(rss(&f))].push(f);
        }
        sc.frames = frames;
        let mut r = Ok(());
        'rounds: for _round in 0..4 {
            let mut any = false;
            for w in 0..usize::from(WORKERS) {
                let sc = &mut self.scratch;
                let inputs = std::mem::take(&mut sc.queues[w]);
                if inputs.is_empty() {
                    sc.queues[w] = inputs;
                    continue;
                }
                any = true;
                self.checked[w] = false;
                let n = inputs.len();
                while sc.bufs.len() < n {
                    sc.bufs.push(VecBuf::new(&[]));
                }
                for (b, f) in sc.bufs.iter_mut().zip(&inputs) {
                    b.reset(f);
                }
                sc.verdicts.clear();
                sc.verdicts.resize(n, Verdict::Tx);
                let (bufs, verdicts) = (&mut sc.bufs[..n], &mut sc.verdicts[..n]);
                let pipe = &mut self.pipes[w];
                if burst {
                    pipe.process_burst(&self.snap, bufs, self.now_ms, verdicts);
                } else {
                    for (b, v) in bufs.iter_mut().zip(verdicts.iter_mut()) {
                        *v = pipe.process(&self.snap, b, self.now_ms);
                    }
                }
                pipe.publish_table_stats();
                let evictions = pipe
                    .stats()
                    .ct_evictions
                    .load(std::sync::atomic::Ordering::Relaxed);
                let step = Step {
                    snap: &self.snap,
                    worker: w as u16,
                    workers: WORKERS,
                    now_ms: self.now_ms,
                    evictions,
                    min_timeout_ms: self.min_timeout_ms,
                };
                for ((input, b), v) in inputs.iter().zip(bufs.iter()).zip(verdicts.iter()) {
                    if let Some(h) = &mut self.trace {
                        *h = digest(
                            *h,
                            &[&[w as u8], input, format!("{v:?}").as_bytes(), b.data()],
                        );
                    }
                    if let Err(e) = self.model.packet(&step, input, *v, b.data()) {
                        r = Err(e);
                        break;
                    }
                    match *v {
                        Verdict::ToWorker(to) => {
                            let mut f = sc.pool.pop().unwrap_or_default();
                            f.clear();
                            f.extend_from_slice(b.data());
                            sc.next[usize::from(to)].push(f);
                        }
                        Verdict::Tx => {
                            note_nat(&mut self.natted, &self.snap, b.data());
                            note_cookie(&mut self.cookied, &self.snap, b.data());
                        }
                        _ => {}
                    }
                }
                if r.is_ok() {
                    r = self.model.burst_done(&step, pipe);
                }
                let mut inputs = inputs;
                sc.pool.append(&mut inputs);
                sc.queues[w] = inputs;
                if r.is_err() {
                    break 'rounds;
                }
            }
            if !any {
                break;
            }
            let sc = &mut self.scratch;
            std::mem::swap(&mut sc.queues, &mut sc.next);
        }
        // Frames left over (an error, or handed on past the last round) go back to the pool.
        let sc = &mut self.scratch;
        for q in sc.queues.iter_mut().chain(sc.next.iter_mut()) {
            sc.pool.append(q);
        }
        r
    }
}

/// Buffers reused across operations and inputs: what they hold never outlives one
/// [`World::deliver`] (frames are built into a buffer from the pool and return to it).
#[derive(Default)]
struct Scratch {
    /// An operation's frames, before RSS spreads them.
    frames: Vec<Vec<u8>>,
    /// Each worker's frames of the current round.
    queues: [Vec<Vec<u8>>; WORKERS as usize],
    /// Each worker's frames of the next round (handed over by another worker).
    next: [Vec<Vec<u8>>; WORKERS as usize],
    /// Packet buffers, one per frame of a round.
    bufs: Vec<VecBuf>,
    /// Their verdicts.
    verdicts: Vec<Verdict>,
    /// Spare frame buffers.
    pool: Vec<Vec<u8>>,
}

impl Scratch {
    /// An empty frame buffer.
    fn buf(&mut self) -> Vec<u8> {
        let mut b = self.pool.pop().unwrap_or_else(|| Vec::with_capacity(256));
        b.clear();
        b
    }
}

/// FNV-1a of `parts` (each with its length) onto `h`.
fn digest(mut h: u64, parts: &[&[u8]]) -> u64 {
    for p in parts {
        for b in (p.len() as u32).to_le_bytes().iter().chain(p.iter()) {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The `n`-th latest of `v` (modulo its length).
fn nth<T: Copy>(v: &[T], n: u8) -> Option<T> {
    (!v.is_empty()).then(|| v[v.len() - 1 - usize::from(n) % v.len()])
}

/// Remembers a frame NAT'd to a backend (from one of our NAT addresses), so a reply can be
/// made.
fn note_nat(natted: &mut Vec<Natted>, snap: &Snapshot, out: &[u8]) {
    let Ok(p) = parse(out) else {
        return;
    };
    let v6 = p.l3 == L3::Ipv6;
    let n = if v6 { 16 } else { 4 };
    let l = &snap.local;
    let ours = if v6 {
        l.nat_ipv6.iter().any(|a| a[..] == p.src[..n])
    } else {
        l.nat_ipv4.iter().any(|a| a[..] == p.src[..n])
    };
    if !ours || !(p.proto == 6 || p.proto == 17) {
        return;
    }
    if natted.len() == 16 {
        natted.remove(0);
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&out[0..6]);
    natted.push(Natted {
        v6,
        backend: p.dst,
        nat: p.src,
        bport: p.dport,
        nport: p.sport,
        proto: p.proto,
        mac,
    });
}

/// Remembers a SYN-ACK of the SYN proxy (from a VIP's port), so the client's ACK can be made.
fn note_cookie(cookied: &mut Vec<Cookied>, snap: &Snapshot, out: &[u8]) {
    let Ok(p) = parse(out) else {
        return;
    };
    if p.proto != 6 || p.tcp_flags & 0x17 != 0x12 {
        return;
    }
    let v6 = p.l3 == L3::Ipv6;
    let n = if v6 { 16 } else { 4 };
    let proxied = snap.frontends().any(|f| {
        let vip = match f.vip {
            std::net::IpAddr::V4(a) => a4(a.octets()),
            std::net::IpAddr::V6(a) => a.octets(),
        };
        f.syn_proxy != SynProxy::Off && vip[..n] == p.src[..n] && f.port == p.sport
    });
    let l4 = usize::from(p.l4_off);
    if !proxied || out.len() < l4 + 12 {
        return;
    }
    if cookied.len() == 16 {
        cookied.remove(0);
    }
    let be = |at: usize| u32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&out[0..6]);
    cookied.push(Cookied {
        v6,
        client: p.dst,
        vip: p.src,
        cport: p.dport,
        vport: p.sport,
        seq: be(l4 + 4),
        ack: be(l4 + 8),
        mac,
    });
}

/// The worker RSS gives a frame: a hash of its addresses and ports (0 if it does not parse).
fn rss(f: &[u8]) -> u16 {
    let Ok(p) = parse(f) else {
        return 0;
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in p
        .src
        .iter()
        .chain(&p.dst)
        .chain(&p.sport.to_be_bytes())
        .chain(&p.dport.to_be_bytes())
    {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(WORKERS)) as u16
}

/// An ARP frame (`op` 1 request, 2 reply) from `sha`/`spa` for `tpa`, broadcast for a request.
pub fn arp_frame(op: u16, sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut b = Vec::with_capacity(42);
    b.extend_from_slice(if op == 1 { &[0xff; 6] } else { &LB_MAC });
    b.extend_from_slice(&sha);
    b.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
    b.extend_from_slice(&op.to_be_bytes());
    b.extend_from_slice(&sha);
    b.extend_from_slice(&spa);
    b.extend_from_slice(&[0; 6]);
    b.extend_from_slice(&tpa);
    b
}

/// A neighbour solicitation (`advert` false) or advertisement for `target` from `src`, with a
/// link-layer address option.
pub fn nd_frame(advert: bool, src: [u8; 16], target: [u8; 16], mac: [u8; 6]) -> Vec<u8> {
    let mut body = vec![if advert { 136 } else { 135 }, 0, 0, 0, 0, 0, 0, 0];
    if advert {
        body[4] = 0x60;
    }
    body.extend_from_slice(&target);
    body.extend_from_slice(&[if advert { 2 } else { 1 }, 1]);
    body.extend_from_slice(&mac);
    let mut dst = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0];
    dst[13..].copy_from_slice(&target[13..]);
    let mut f = Frame::new(
        [0x33, 0x33, 0xff, target[13], target[14], target[15]],
        mac,
        0,
    );
    f.ip(true, src, dst, 58, &body[..4], &body[4..], 0, false);
    let mut v = f.bytes;
    // The hop limit of neighbour discovery.
    v[21] = 255;
    v
}
