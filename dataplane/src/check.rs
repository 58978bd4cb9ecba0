//! # The pipeline's invariants, checked on every output like a reference model
//!
//! Test support (feature `check`, and `cargo test`): the structure-aware fuzzer
//! (`fuzz/fuzz_targets/flows.rs`) calls [`Model::packet`] for every frame it feeds a pipeline
//! and [`crate::pipeline::Pipeline::check_tables`] after every step; the unit tests below show
//! that each check fires on a frame or a table that breaks it.
//!
//! What a transmitted frame must be:
//! - it parses, carries no VLAN tag, its IPv4 header checksum verifies, and every TCP, UDP,
//!   ICMP or ICMPv6 checksum that verified in the frame it came from still verifies (Sluice
//!   does not verify transport checksums: a wrong one may pass through wrong);
//! - a packet forwarded to a frontend goes to a backend of that frontend in the current
//!   snapshot, rewritten exactly as its method says (`nat`: NAT address and a port of this
//!   worker's slice to the backend's address and port, nothing else changed; `dsr-l2`: MACs
//!   only; `dsr-ipip`: the packet unchanged inside a tunnel header to the backend), never to a
//!   backend that is not `Active` unless the flow was sent there before (its pinned backend),
//!   and an established flow keeps its backend while nothing can have ended its entry;
//! - a NAT reply is the exact inverse of its flow's forward rewrite (source the VIP and port,
//!   destination the client and port, to the client's MAC; nothing else changed);
//! - nothing from a source outside the frontend's ranges, to a VIP port not served, or with a
//!   VLAN tag is ever transmitted;
//! - the SYN proxy (a `nat` TCP frontend whose `syn_proxy` is `on` or `auto`): a SYN it
//!   answers gets a SYN-ACK back to the client (addresses, ports and MACs swapped, checksums
//!   valid, acknowledging the client's ISN + 1, zero window, its sequence number a valid
//!   cookie by [`syn_cookie`] under the model's key) and leaves no flow entry; a SYN to an
//!   `on` frontend is never forwarded; an ACK dropped as a bad cookie does not return a
//!   valid one and leaves no entry; a segment that becomes the backend's SYN returns a valid
//!   cookie and is that SYN (the client's ISN, no acknowledgement, the flow's NAT rewrite,
//!   checksum valid); the backend's first SYN-ACK becomes an ACK to the client from the VIP
//!   (sequence number cookie + 1, its acknowledgement kept) and fixes the flow's offset (its
//!   ISN less the cookie); after it, client segments go to the backend with their ACK (and
//!   SACK edges) raised by the offset and backend segments to the client with their sequence
//!   number lowered by it, the window rescaled as the proxy's docs say, nothing else changed;
//!   a repeated SYN-ACK is answered with an ACK back to the backend; a backend RST during the
//!   handshake reaches the client at sequence number cookie + 1; no other segment of a flow
//!   in its handshake is transmitted.
//!
//! Checksums are verified here with an RFC 1071 sum of its own, not `wire::checksum`, and
//! frontends are found by a scan of the snapshot, not its VIP table.
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};

use crate::conntrack::FlowState;
use crate::pipeline::{
    syn_cookie, CookieData, CookieKey, Fwd, Pipeline, Verdict, SYN_PROXY_WSCALE,
};
use crate::snapshot::{Backend, BackendState, Frontend, Method, Snapshot, SynProxy};
use crate::stats::DropReason;
use crate::wire::parse::{parse, Fragment, Parsed, L3};
use crate::wire::proto;

/// The context of one packet: the snapshot, the worker that processed it and its clock.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    /// The snapshot the packet was processed under.
    pub snap: &'a Snapshot,
    /// The worker that processed it.
    pub worker: u16,
    /// Workers in all.
    pub workers: u16,
    /// Its millisecond clock.
    pub now_ms: u32,
    /// Forward-table evictions of this worker so far (both families), after the packet.
    pub evictions: u64,
    /// The shortest conntrack timeout: a flow seen more recently cannot have expired.
    pub min_timeout_ms: u32,
}

/// A 5-tuple, either family (IPv4 in the first 4 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// IPv6.
    pub v6: bool,
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
}

impl Tuple {
    /// The tuple of a parsed packet.
    pub fn of(p: &Parsed) -> Tuple {
        Tuple {
            v6: p.l3 == L3::Ipv6,
            src: p.src,
            dst: p.dst,
            sport: p.sport,
            dport: p.dport,
            proto: p.proto,
        }
    }

    /// The other direction.
    pub fn reversed(&self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            ..*self
        }
    }

    fn ip(&self, a: &[u8; 16]) -> IpAddr {
        if self.v6 {
            IpAddr::from(*a)
        } else {
            IpAddr::from([a[0], a[1], a[2], a[3]])
        }
    }

    /// The forward entry `pipe` holds for this tuple (under hash seed `seed`), if any.
    fn flow_in(&self, pipe: &Pipeline, seed: u64) -> Option<(Fwd, FlowState, u32)> {
        pipe.find_flow(
            seed,
            self.ip(&self.src),
            self.ip(&self.dst),
            self.sport,
            self.dport,
            self.proto,
        )
    }
}

/// What the model remembers of a flow a worker forwarded.
#[derive(Debug, Clone, Copy)]
struct Seen {
    backend: u32,
    at_ms: u32,
    evictions: u64,
}

/// What the model remembers of a NAT flow, by the backend's reply tuple.
#[derive(Debug, Clone)]
struct NatSeen {
    /// The client's tuple (client -> VIP).
    client: Tuple,
    /// The MACs the flow's packets came from (its replies go to the first one's).
    macs: Vec<[u8; 6]>,
}

/// What the model knows of a SYN-proxied flow, by the client's tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proxied {
    /// The cookie its ACK returned.
    cookie: u32,
    /// The backend's ISN less the cookie, and the backend's window scale as the proxy
    /// records it, once the backend's SYN-ACK came.
    offset: Option<(u32, u8)>,
}

/// A multiply-rotate hasher (FxHash's): the model's keys are the fuzzer's own tuples, so
/// SipHash's resistance to chosen keys buys nothing and costs the fuzzer a tenth of its time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fx(u64);

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u8(&mut self, x: u8) {
        self.write_u64(u64::from(x));
    }

    fn write_u16(&mut self, x: u16) {
        self.write_u64(u64::from(x));
    }

    fn write_u32(&mut self, x: u32) {
        self.write_u64(u64::from(x));
    }

    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` hashed by [`Fx`] (the model's and the fuzz harness's caches).
pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

/// The reference model: what was forwarded where, per worker.
#[derive(Default)]
pub struct Model {
    flows: FxMap<(u16, Tuple), Seen>,
    nat: FxMap<(u16, Tuple), NatSeen>,
    /// Flows to a frontend of which a packet of the current burst was dropped, with no packet
    /// of theirs forwarded since: whether one of those was a TCP SYN (without ACK). The
    /// pipeline may have recorded such a flow, or (a SYN on a closing flow) moved it, before
    /// the drop; [`Model::burst_done`] learns what it recorded.
    dropped: FxMap<(u16, Tuple), bool>,
    /// SYN-proxied flows (by worker and client tuple).
    proxied: FxMap<(u16, Tuple), Proxied>,
    /// Flows whose latest packet of the current burst the SYN proxy answered or refused: the
    /// worker must hold no entry for them at the burst's end, unless the model knew one.
    no_entry: Vec<(u16, Tuple)>,
    /// The SYN cookie key of the pipelines checked.
    cookie_key: CookieKey,
    /// A frame as it should be, rebuilt for each comparison.
    scratch: Scratch,
}

/// In a canonical order (a map's own order depends on its history): two models with the
/// same entries print alike.
impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut flows: Vec<String> = self.flows.iter().map(|e| format!("{e:?}")).collect();
        let mut nat: Vec<String> = self.nat.iter().map(|e| format!("{e:?}")).collect();
        let mut proxied: Vec<String> = self.proxied.iter().map(|e| format!("{e:?}")).collect();
        flows.sort();
        nat.sort();
        proxied.sort();
        f.debug_struct("Model")
            .field("flows", &flows)
            .field("nat", &nat)
            .field("proxied", &proxied)
            .finish_non_exhaustive()
    }
}

/// A buffer rebuilt before every use: not the model's state, so not in its `Debug` (the
/// fuzzer compares a reset model's with a new one's).
#[derive(Default)]
struct Scratch(Vec<u8>);

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("_")
    }
}

/// RFC 1071 sum of `b` onto `acc` (an odd last byte padded with zero).
fn sum(acc: u64, b: &[u8]) -> u64 {
    let mut words = b.chunks_exact(2);
    let mut a = (&mut words).fold(acc, |a, c| a + u64::from(u16::from_be_bytes([c[0], c[1]])));
    if let [last] = words.remainder() {
        a += u64::from(*last) << 8;
    }
    a
}

/// Folds a sum to 16 bits.
fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn addr_len(p: &Parsed) -> usize {
    if p.l3 == L3::Ipv6 {
        16
    } else {
        4
    }
}

/// Whether the IPv4 header at `p.l3_off` verifies (true for other frames).
pub fn ip_checksum_ok(frame: &[u8], p: &Parsed) -> bool {
    if p.l3 != L3::Ipv4 {
        return true;
    }
    let l3 = usize::from(p.l3_off);
    let ihl = usize::from(frame[l3] & 0x0f) * 4;
    fold(sum(0, &frame[l3..l3 + ihl])) == 0xffff
}

/// Whether the transport checksum (TCP, UDP, ICMP, ICMPv6) of a parsed frame verifies; `None`
/// where there is none to verify (a fragment, another protocol, IPv4 UDP without checksum).
pub fn l4_checksum_ok(frame: &[u8], p: &Parsed) -> Option<bool> {
    let (l4, end) = (usize::from(p.l4_off), usize::from(p.l3_end));
    if !p.is_ip() || p.fragment != Fragment::No || l4 == 0 || l4 > end || end > frame.len() {
        return None;
    }
    let seg = &frame[l4..end];
    let n = addr_len(p);
    let pseudo = sum(sum(0, &p.src[..n]), &p.dst[..n]) + u64::from(p.proto) + seg.len() as u64;
    let v6 = p.l3 == L3::Ipv6;
    let ok = match p.proto {
        proto::TCP => fold(sum(pseudo, seg)) == 0xffff,
        proto::UDP if !v6 && seg.get(6..8) == Some(&[0, 0]) => return None,
        proto::UDP => fold(sum(pseudo, seg)) == 0xffff,
        proto::ICMP if !v6 => fold(sum(0, seg)) == 0xffff,
        proto::ICMPV6 if v6 => fold(sum(pseudo, seg)) == 0xffff,
        _ => return None,
    };
    Some(ok)
}

/// Checks a transmitted frame on its own and against the frame it came from: it parses,
/// carries no tag, its IPv4 header verifies, and a transport checksum that verified before
/// still does. Returns its parse.
pub fn transmitted(input: &[u8], output: &[u8]) -> Result<Parsed, String> {
    let po = parse(output).map_err(|e| format!("transmitted frame does not parse: {e}"))?;
    if po.vlan.is_some() {
        return Err("transmitted frame is VLAN-tagged".into());
    }
    if po.l3 == L3::Other {
        return Err(format!(
            "transmitted frame of EtherType {:#06x}",
            po.ethertype
        ));
    }
    if !ip_checksum_ok(output, &po) {
        return Err("transmitted IPv4 header checksum does not verify".into());
    }
    if l4_checksum_ok(output, &po) == Some(false) {
        let before = parse(input).ok().and_then(|pi| l4_checksum_ok(input, &pi));
        if before != Some(false) {
            return Err(format!(
                "transmitted transport checksum (protocol {}) does not verify, it did before",
                po.proto
            ));
        }
    }
    Ok(po)
}

/// The frontend of (VIP, protocol, port) by a scan of the snapshot.
fn frontend_of<'s>(snap: &'s Snapshot, t: &Tuple) -> Option<&'s Frontend> {
    snap.frontends().find(|f| {
        raw(f.vip) == (t.dst, t.v6) && f.protocol.number() == t.proto && f.port == t.dport
    })
}

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

/// Whether `src` is inside frontend `f`'s source ranges (everyone when there are none).
fn admitted(f: &Frontend, src: &[u8; 16], v6: bool) -> bool {
    f.source_ranges.is_empty()
        || f.source_ranges.iter().any(|c| {
            let (net, cv6) = raw(c.addr);
            if cv6 != v6 {
                return false;
            }
            let bits = u32::from(c.prefix.min(if v6 { 128 } else { 32 }));
            let (a, n) = (u128::from_be_bytes(*src), u128::from_be_bytes(net));
            let (a, n) = if v6 { (a, n) } else { (a >> 96, n >> 96) };
            let width = if v6 { 128 } else { 32 };
            bits == 0 || (a ^ n) >> (width - bits) == 0
        })
}

/// The owner of NAT port `port` among `workers` (the slices of docs/dataplane.md).
fn nat_owner(snap: &Snapshot, workers: u16, port: u16) -> Option<u16> {
    let (lo, hi) = (snap.local.nat_port_min, snap.local.nat_port_max);
    if port < lo || port > hi {
        return None;
    }
    let per = ((u32::from(hi) + 1 - u32::from(lo)) / u32::from(workers.max(1))).max(1);
    Some(((u32::from(port - lo) / per) as u16).min(workers.max(1) - 1))
}

/// Offsets of the fields a rewrite may change: the IPv4 header checksum and the transport
/// checksum (none for other protocols).
fn checksum_offsets(p: &Parsed) -> [Option<usize>; 2] {
    let l4 = usize::from(p.l4_off);
    let ip = (p.l3 == L3::Ipv4).then(|| usize::from(p.l3_off) + 10);
    let t = match p.proto {
        proto::TCP => Some(l4 + 16),
        proto::UDP => Some(l4 + 6),
        _ => None,
    };
    [ip, t]
}

/// `input` rewritten to `eth_dst`/`eth_src` and tuple `t` (ports at the transport header),
/// its checksum fields taken from `output`: what a rewrite of addresses and ports must give.
/// Written into `e` (the model's scratch buffer, so that checking allocates nothing).
fn rewritten<'e>(
    e: &'e mut Vec<u8>,
    input: &[u8],
    p: &Parsed,
    output: &[u8],
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    t: &Tuple,
) -> &'e [u8] {
    e.clear();
    e.extend_from_slice(input);
    e[0..6].copy_from_slice(&eth_dst);
    e[6..12].copy_from_slice(&eth_src);
    let n = addr_len(p);
    let a = usize::from(p.l3_off) + if n == 16 { 8 } else { 12 };
    e[a..a + n].copy_from_slice(&t.src[..n]);
    e[a + n..a + 2 * n].copy_from_slice(&t.dst[..n]);
    let l4 = usize::from(p.l4_off);
    e[l4..l4 + 2].copy_from_slice(&t.sport.to_be_bytes());
    e[l4 + 2..l4 + 4].copy_from_slice(&t.dport.to_be_bytes());
    for off in checksum_offsets(p).into_iter().flatten() {
        if let (Some(d), Some(s)) = (e.get_mut(off..off + 2), output.get(off..off + 2)) {
            d.copy_from_slice(s);
        }
    }
    e
}

fn be32_at(d: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

/// The (sequence, acknowledgement, window) of the TCP header of `p` in `d`, if whole.
fn tcp_fields(d: &[u8], p: &Parsed) -> Option<(u32, u32, u16)> {
    let l4 = usize::from(p.l4_off);
    if p.proto != proto::TCP || l4 == 0 || l4 + 20 > usize::from(p.l3_end) || l4 + 20 > d.len() {
        return None;
    }
    Some((
        be32_at(d, l4 + 4),
        be32_at(d, l4 + 8),
        u16::from_be_bytes([d[l4 + 14], d[l4 + 15]]),
    ))
}

/// The offsets of the TCP options of `p` in `d` with their kind and length (a walk that
/// stops at END or a malformed option, as the proxy's does).
fn tcp_options(d: &[u8], p: &Parsed) -> Vec<(usize, u8, usize)> {
    let l4 = usize::from(p.l4_off);
    let mut v = Vec::new();
    let Some(&off) = d.get(l4 + 12) else {
        return v;
    };
    let end = (l4 + usize::from(off >> 4) * 4)
        .min(usize::from(p.l3_end))
        .min(d.len());
    let mut i = l4 + 20;
    while i < end {
        match d[i] {
            0 => break,
            1 => i += 1,
            kind => {
                if i + 1 >= end {
                    break;
                }
                let len = usize::from(d[i + 1]);
                if len < 2 || i + len > end {
                    break;
                }
                v.push((i, kind, len));
                i += len;
            }
        }
    }
    v
}

fn socket(t: &Tuple, a: &[u8; 16], port: u16) -> SocketAddr {
    SocketAddr::new(t.ip(a), port)
}

/// Whether a frame is a TCP segment with exactly the flags `f` (of FIN, SYN, RST, ACK).
fn flags_are(p: &Parsed, f: u8) -> bool {
    p.proto == proto::TCP && p.tcp_flags & 0x17 == f
}

fn mac(d: &[u8], at: usize) -> [u8; 6] {
    let mut m = [0u8; 6];
    m.copy_from_slice(&d[at..at + 6]);
    m
}

impl Model {
    /// An empty model.
    pub fn new() -> Self {
        Model::default()
    }

    /// An empty model of pipelines whose SYN cookie key is `key`.
    pub fn with_cookie_key(key: CookieKey) -> Self {
        Model {
            cookie_key: key,
            ..Model::default()
        }
    }

    /// Forgets everything (a new input of the fuzzer).
    pub fn reset(&mut self) {
        self.flows.clear();
        self.nat.clear();
        self.dropped.clear();
        self.proxied.clear();
        self.no_entry.clear();
    }

    /// Whether `c` is a cookie the proxy may have answered the SYN `t` (client -> VIP) with
    /// initial sequence number `isn`, in this cookie epoch or the last (65,536 ms each).
    fn cookie_ok(&self, t: &Tuple, now_ms: u32, isn: u32, c: u32) -> bool {
        let (client, vip) = (socket(t, &t.src, t.sport), socket(t, &t.dst, t.dport));
        let data = CookieData::of_cookie(c);
        [now_ms, now_ms.wrapping_sub(1 << 16)]
            .into_iter()
            .any(|now| syn_cookie(&self.cookie_key, now, client, vip, isn, data) == Some(c))
    }

    /// The client's ISN that the ACK `pi` (a segment to proxied frontend `t`) returns a
    /// valid cookie for: its sequence number less one, or (an empty segment, a zero-window
    /// probe) the sequence number itself.
    fn cookie_isn(&self, t: &Tuple, now_ms: u32, input: &[u8], pi: &Parsed) -> Option<u32> {
        if pi.tcp_flags & 0x16 != 0x10 {
            return None;
        }
        let (seq, ack, _) = tcp_fields(input, pi)?;
        let c = ack.wrapping_sub(1);
        if self.cookie_ok(t, now_ms, seq.wrapping_sub(1), c) {
            return Some(seq.wrapping_sub(1));
        }
        let empty = pi.l3_end == pi.l4_off + 20;
        (empty && self.cookie_ok(t, now_ms, seq, c)).then_some(seq)
    }

    /// Checks what worker `s.worker` did with `input` (verdict `v`, the frame rewritten in
    /// place into `output`) and learns from it. A burst's packets are checked in the order
    /// they were processed, then [`Model::burst_done`] is called.
    pub fn packet(
        &mut self,
        s: &Step<'_>,
        input: &[u8],
        v: Verdict,
        output: &[u8],
    ) -> Result<(), String> {
        let Ok(pi) = parse(input) else {
            return match v {
                Verdict::Drop(_) => Ok(()),
                v => Err(format!("an unparseable frame got {v:?}")),
            };
        };
        if !self.no_entry.is_empty() && pi.is_ip() {
            let key = (s.worker, Tuple::of(&pi));
            self.no_entry.retain(|k| *k != key);
        }
        match v {
            Verdict::Drop(DropReason::SynProxyBadCookie) => {
                self.bad_cookie(s, input, &pi)?;
                self.note_dropped(s, &pi);
                Ok(())
            }
            Verdict::Drop(_) => {
                self.note_dropped(s, &pi);
                Ok(())
            }
            Verdict::Neighbor(_) => Ok(()),
            Verdict::ToWorker(n) => {
                if pi.vlan.is_some() {
                    return Err("a VLAN-tagged frame was handed to another worker".into());
                }
                if n >= s.workers || n == s.worker {
                    return Err(format!(
                        "handed to worker {n} (this is {} of {})",
                        s.worker, s.workers
                    ));
                }
                Ok(())
            }
            Verdict::Tx => self.tx(s, input, &pi, output),
        }
    }

    /// An ACK dropped as a bad cookie: to a SYN-proxied frontend, and its cookie is not valid.
    fn bad_cookie(&mut self, s: &Step<'_>, input: &[u8], pi: &Parsed) -> Result<(), String> {
        let t = Tuple::of(pi);
        let proxied = frontend_of(s.snap, &t)
            .is_some_and(|f| f.syn_proxy.enabled() && f.method == Method::Nat);
        if !proxied || pi.proto != proto::TCP {
            return Err(format!(
                "dropped as a bad cookie, not to a proxied frontend: {t:?}"
            ));
        }
        if let Some(isn) = self.cookie_isn(&t, s.now_ms, input, pi) {
            return Err(format!(
                "a valid cookie (client ISN {isn}) was dropped as a bad one: {t:?}"
            ));
        }
        let key = (s.worker, t);
        if !self.flows.contains_key(&key) {
            self.no_entry.push(key);
        }
        Ok(())
    }

    /// After a drop: the pipeline may have recorded the packet's flow (or, for a SYN, moved
    /// it) before dropping the packet (an encapsulated packet too big, say); noted, for the
    /// burst's later packets of the flow and for [`Model::burst_done`].
    fn note_dropped(&mut self, s: &Step<'_>, pi: &Parsed) {
        if !pi.is_ip() || pi.fragment != Fragment::No {
            return;
        }
        let t = Tuple::of(pi);
        if frontend_of(s.snap, &t).is_none() {
            return;
        }
        let syn = pi.proto == proto::TCP && pi.tcp_flags & 0x12 == 0x02;
        *self.dropped.entry((s.worker, t)).or_default() |= syn;
    }

    /// After the last packet of a burst of worker `s.worker` (`pipe` as the burst left it):
    /// a flow the pipeline recorded although its packet was dropped is pinned all the same.
    /// Read here, not at the drop: the tables then already hold what the burst's later
    /// packets did (a later SYN of the flow may have moved it), which the checks of the
    /// packets between must not see.
    ///
    /// Also checks that the flows whose last packet of the burst the SYN proxy answered with
    /// a cookie or refused as a bad cookie have no entry (unless the model knew one).
    pub fn burst_done(&mut self, s: &Step<'_>, pipe: &Pipeline) -> Result<(), String> {
        for (w, t) in std::mem::take(&mut self.no_entry) {
            if w != s.worker {
                continue;
            }
            if t.flow_in(pipe, s.snap.hash_seed).is_some() {
                return Err(format!(
                    "the SYN proxy answered or refused {t:?}, yet worker {w} holds its flow"
                ));
            }
        }
        if self.dropped.is_empty() {
            return Ok(());
        }
        let mine: Vec<(u16, Tuple)> = self
            .dropped
            .keys()
            .filter(|(w, _)| *w == s.worker)
            .copied()
            .collect();
        for (w, t) in mine {
            self.dropped.remove(&(w, t));
            if let Some((fwd, _, _)) = t.flow_in(pipe, s.snap.hash_seed) {
                self.flows.insert(
                    (w, t),
                    Seen {
                        backend: fwd.backend,
                        at_ms: s.now_ms,
                        evictions: s.evictions,
                    },
                );
            }
        }
        Ok(())
    }

    /// A transmitted frame.
    fn tx(&mut self, s: &Step<'_>, input: &[u8], pi: &Parsed, output: &[u8]) -> Result<(), String> {
        let po = transmitted(input, output)?;
        if pi.vlan.is_some() {
            return Err("a VLAN-tagged frame was transmitted".into());
        }
        let local = &s.snap.local;
        let dst_mac = mac(input, 0);
        if dst_mac != local.mac && dst_mac[0] & 1 == 0 {
            return Err("a frame for another MAC was transmitted".into());
        }
        if mac(output, 6) != local.mac {
            return Err("a transmitted frame does not come from our MAC".into());
        }
        if !pi.is_ip() {
            return Ok(()); // an ARP reply
        }
        let t = Tuple::of(pi);
        let l4 = pi.proto == proto::TCP || pi.proto == proto::UDP;
        if l4 && pi.fragment == Fragment::Later {
            let f = s.snap.frontends().find(|f| {
                raw(f.vip) == (t.dst, t.v6)
                    && f.protocol.number() == t.proto
                    && f.method != Method::Nat
            });
            return match f {
                None => Err("a later fragment to no dsr frontend was transmitted".into()),
                Some(f) if !admitted(f, &t.src, t.v6) => {
                    Err("a fragment from a denied source was transmitted".into())
                }
                Some(_) => self.backend_of_output(s, output, None).map(|_| ()),
            };
        }
        if l4 {
            if let Some(f) = frontend_of(s.snap, &t) {
                if !admitted(f, &t.src, t.v6) {
                    return Err(format!(
                        "a packet from a denied source was transmitted: {t:?}"
                    ));
                }
                if pi.fragment != Fragment::No {
                    if f.method == Method::Nat {
                        return Err("a fragment to a nat frontend was transmitted".into());
                    }
                    return self.backend_of_output(s, output, Some(f)).map(|_| ());
                }
                return self.forwarded(s, f, input, pi, output, &po);
            }
            if s.snap.frontends().any(|f| raw(f.vip) == (t.dst, t.v6)) {
                return Err(format!(
                    "a packet to a VIP port not served was transmitted: {t:?}"
                ));
            }
            if pi.fragment == Fragment::No {
                return self.nat_reply(s, input, pi, output, &po);
            }
            return Err("a fragment to our own address was transmitted".into());
        }
        if mac(output, 0) != mac(input, 6) {
            // An ICMP error forwarded to the quoted flow's backend.
            self.backend_of_output(s, output, None)?;
        }
        Ok(()) // echo replies and neighbour advertisements: the frame checks above
    }

    /// The backend a forwarded frame goes to, by its destination MAC (each backend of the
    /// fuzzer's snapshots has its own), which must be one of frontend `f`'s if given.
    fn backend_of_output<'s>(
        &self,
        s: &Step<'s>,
        output: &[u8],
        f: Option<&Frontend>,
    ) -> Result<&'s Backend, String> {
        let m = mac(output, 0);
        let b = s
            .snap
            .backends()
            .find(|b| b.mac == Some(m))
            .ok_or_else(|| format!("forwarded to MAC {m:02x?}, no backend's"))?;
        if let Some(f) = f {
            if !f.backends.contains(&b.id) {
                return Err(format!(
                    "forwarded to backend {} which is not one of frontend {}'s {:?}",
                    b.id, f.id, f.backends
                ));
            }
        }
        Ok(b)
    }

    /// A packet to frontend `f`, transmitted: forwarded to a backend, or a RST to the client.
    fn forwarded(
        &mut self,
        s: &Step<'_>,
        f: &Frontend,
        input: &[u8],
        pi: &Parsed,
        output: &[u8],
        po: &Parsed,
    ) -> Result<(), String> {
        let t = Tuple::of(pi);
        let local = &s.snap.local;
        let proxy = f.syn_proxy.enabled() && f.method == Method::Nat && pi.proto == proto::TCP;
        if mac(output, 0) == mac(input, 6) && Tuple::of(po) == t.reversed() {
            if proxy && pi.tcp_flags & 0x12 == 0x02 {
                return self.syn_ack(s, input, pi, output, po);
            }
            // The RST for a segment of an unknown nat flow.
            let syn_only = pi.tcp_flags & 0x12 == 0x02;
            if f.method != Method::Nat || pi.proto != proto::TCP || syn_only {
                return Err(format!("answered a packet to frontend {} itself", f.id));
            }
            if po.tcp_flags & 0x04 == 0 || pi.tcp_flags & 0x04 != 0 {
                return Err(
                    "the answer to an unknown nat flow is not a RST, or answers a RST".into(),
                );
            }
            return Ok(());
        }
        let b = self.backend_of_output(s, output, Some(f))?;
        let key = (s.worker, t);
        let seen = self.flows.get(&key).copied();
        let syn_only = pi.proto == proto::TCP && pi.tcp_flags & 0x12 == 0x02;
        // A cookie ACK may end a closing flow and open another, scheduled anew.
        let reopened = proxy && pi.tcp_flags & 0x02 == 0 && flags_are(po, 0x02);
        if proxy && syn_only && f.syn_proxy == SynProxy::On {
            return Err(format!(
                "a SYN to `on` frontend {} was forwarded: {t:?}",
                f.id
            ));
        }
        // A SYN of the flow dropped earlier in this burst may have moved it (and what it
        // moved to is Active: a burst has one snapshot).
        let syn_dropped = self.dropped.remove(&key).unwrap_or(false);
        if b.state != BackendState::Active && seen.map(|x| x.backend) != Some(b.id) {
            return Err(format!(
                "a new flow {t:?} went to backend {} in state {:?}",
                b.id, b.state
            ));
        }
        if let Some(x) = seen {
            let kept = s
                .snap
                .backend(x.backend)
                .filter(|old| old.mac.is_some() && f.backends.contains(&old.id));
            let recent = s.now_ms.wrapping_sub(x.at_ms) < s.min_timeout_ms;
            if kept.is_some()
                && x.backend != b.id
                && recent
                && x.evictions == s.evictions
                && !syn_only
                && !syn_dropped
                && !reopened
            {
                return Err(format!(
                    "flow {t:?} moved from backend {} to {} within {} ms, nothing evicted",
                    x.backend,
                    b.id,
                    s.now_ms.wrapping_sub(x.at_ms)
                ));
            }
        }
        self.flows.insert(
            key,
            Seen {
                backend: b.id,
                at_ms: s.now_ms,
                evictions: s.evictions,
            },
        );
        let (ba, bv6) = raw(b.addr);
        if bv6 != t.v6 {
            return Err(format!(
                "a {} packet went to backend {} of the other family",
                if t.v6 { "v6" } else { "v4" },
                b.id
            ));
        }
        let bmac = b.mac.unwrap_or_default();
        match f.method {
            Method::DsrL2 => {
                let same = output.len() == input.len()
                    && output[0..6] == bmac
                    && output[6..12] == local.mac
                    && output[12..] == input[12..];
                if !same {
                    return Err("dsr-l2 changed more than the MACs".into());
                }
            }
            Method::DsrIpip => {
                let (l3, end) = (usize::from(pi.l3_off), usize::from(pi.l3_end));
                let inner = &input[l3..end];
                let outer_len = if t.v6 { 40 } else { 20 };
                let own = if t.v6 {
                    local.ipv6.first().map(|a| a.to_vec())
                } else {
                    local.ipv4.first().map(|a| a.to_vec())
                };
                let n = addr_len(pi);
                let ok = output.len() == l3 + outer_len + inner.len()
                    && output[l3 + outer_len..] == *inner
                    && po.proto == if t.v6 { proto::IPV6 } else { proto::IPIP }
                    && po.dst[..n] == ba[..n]
                    && own.as_deref() == Some(&po.src[..n])
                    && output[..6] == bmac;
                if !ok {
                    return Err(
                        "dsr-ipip: not the packet unchanged in a tunnel to its backend".into(),
                    );
                }
            }
            Method::Nat => {
                let n = addr_len(pi);
                let nat: Vec<&[u8]> = if t.v6 {
                    local.nat_ipv6.iter().map(|a| &a[..]).collect()
                } else {
                    local.nat_ipv4.iter().map(|a| &a[..]).collect()
                };
                if !nat.contains(&&po.src[..n]) {
                    return Err(format!(
                        "nat: source {:?} is not a NAT address",
                        &po.src[..n]
                    ));
                }
                if nat_owner(s.snap, s.workers, po.sport) != Some(s.worker) {
                    return Err(format!(
                        "nat: port {} is not in worker {}'s slice",
                        po.sport, s.worker
                    ));
                }
                let to = Tuple {
                    src: po.src,
                    dst: ba,
                    sport: po.sport,
                    dport: b.port,
                    ..t
                };
                if proxy {
                    self.proxied_forward(s, (&t, &to), input, pi, output, po, bmac)?;
                } else if rewritten(&mut self.scratch.0, input, pi, output, bmac, local.mac, &to)
                    != output
                {
                    return Err(format!("nat: not the rewrite {t:?} -> {to:?}"));
                }
                let rec = self
                    .nat
                    .entry((s.worker, to.reversed()))
                    .or_insert(NatSeen {
                        client: t,
                        macs: Vec::new(),
                    });
                if rec.client != t {
                    rec.client = t;
                    rec.macs.clear();
                }
                let m = mac(input, 6);
                if !rec.macs.contains(&m) {
                    rec.macs.push(m);
                }
            }
        }
        Ok(())
    }

    /// A packet to one of our addresses, transmitted: a NAT reply, which must be the exact
    /// inverse of its flow's forward rewrite.
    fn nat_reply(
        &mut self,
        s: &Step<'_>,
        input: &[u8],
        pi: &Parsed,
        output: &[u8],
        po: &Parsed,
    ) -> Result<(), String> {
        let t = Tuple::of(pi);
        if po.tcp_flags & 0x04 != 0 && mac(output, 0) == mac(input, 6) && pi.tcp_flags & 0x04 == 0 {
            return Err(format!("a RST answered a packet to our address {t:?}"));
        }
        let Some(rec) = self.nat.get(&(s.worker, t)) else {
            return Err(format!(
                "a reply {t:?} was translated, but no flow was NAT'd to it"
            ));
        };
        let c = rec.client;
        let to_mac = mac(output, 0);
        if let Some(&px) = self.proxied.get(&(s.worker, c)) {
            return self.proxied_reply(s, (&t, &c, px), input, pi, output, po);
        }
        if !rec.macs.contains(&to_mac) {
            return Err(format!(
                "NAT reply {t:?} sent to MAC {to_mac:02x?}, not its client's"
            ));
        }
        let want = rewritten(
            &mut self.scratch.0,
            input,
            pi,
            output,
            to_mac,
            s.snap.local.mac,
            &c.reversed(),
        );
        if want != output {
            return Err(format!(
                "NAT reply {t:?} is not the inverse of its flow {c:?}: got {:?}",
                Tuple::of(po)
            ));
        }
        Ok(())
    }
}

mod synproxy;

#[cfg(test)]
mod tests;
