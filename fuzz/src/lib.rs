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

mod frame;
pub mod raw;
mod universe;

use frame::*;
pub use frame::{arp_frame, nd_frame};
use universe::*;
pub use universe::{backend_mac, BURST, LB_MAC, ROUTER_MAC, WORKERS};

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
