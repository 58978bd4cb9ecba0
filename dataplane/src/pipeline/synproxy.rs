//! # SYN proxy for `nat` TCP frontends
//!
//! A frontend with [`Frontend::syn_proxy`](crate::snapshot::Frontend::syn_proxy) answers
//! every SYN itself, with a SYN-ACK whose initial sequence number is a cookie, and keeps no
//! state for it. Only a client's ACK that returns a valid cookie opens a flow: it is
//! scheduled as any new flow (budgets, affinity, Maglev, NAT port) and turned into the SYN
//! the backend sees, with the client's own initial sequence number and the options the
//! cookie kept. The proxy's SYN-ACK offered a zero window, so the client holds its data; the
//! backend's SYN-ACK becomes the window update that releases it, and the client's first
//! segment, translated, completes the backend's handshake (a backend that repeats its
//! SYN-ACK, the client having sent nothing, gets the ACK from the proxy). From then on the
//! flow's sequence numbers are translated by the difference between the backend's initial
//! sequence number and the cookie ([`Fwd::seq`]). A spoofed SYN therefore costs one SYN-ACK
//! and no table entry, and no backend ever sees it.
//!
//! ## The cookie
//!
//! 32 bits: a 25-bit MAC over the 4-tuple, the client's initial sequence number, the cookie
//! epoch and the 7 data bits, then the data bits: the MSS index (2 bits: the largest of the
//! family's [`Family::COOKIE_MSS`] not above the client's MSS), SACK permitted (1 bit) and the
//! client's window scale (4 bits, 15: none). The MAC is SipHash-2-4 under the host's key
//! ([`super::PipelineConfig::syn_cookie_key`]: from a fleet secret, or drawn at start). The epoch is the worker's millisecond
//! clock over 65,536 (65.5 s); an ACK is checked against the current and the previous epoch,
//! so a cookie lives 65 to 131 s. Forging one blindly succeeds with probability 2^-24 per try.
//!
//! ## Options
//!
//! - MSS: the client is offered the port's MTU less the headers; the backend is offered the
//!   cookie's MSS (at most the client's).
//! - Window scale: a client that offered one is offered [`WSCALE`] back, and the backend is
//!   offered the client's. The backend's own scale is recorded from its SYN-ACK (the high
//!   four bits of [`Fwd::flags`]) and the backend's windows are rescaled to [`WSCALE`] on the
//!   way to the client (rounded down, at most 65,535: never more than the backend offered). A
//!   backend that refuses scaling is recorded as scale 0; the client's windows then reach it
//!   unscaled, which understates them (safe, slower).
//! - SACK permitted: echoed to the client and passed to the backend; the SACK blocks of the
//!   client's segments are translated like its acknowledgements.
//! - Timestamps are never offered (to either side), so there is no timestamp to translate:
//!   the proxied connection goes without PAWS and timestamp RTT samples. Linux keeps the
//!   window scale and SACK of a cookie in the timestamp; this cookie keeps them in itself.
//!
//! ## What it costs
//!
//! A SYN: a SipHash and a rewrite, no lookup. A proxied flow's client segment: its
//! acknowledgement (and SACK blocks) rewritten with the checksum. A backend reply: one more
//! lookup (the forward entry holds the offset; the reverse entry of an IPv4 flow has no
//! room, so [`Rev::PROXIED`] only marks it), the sequence number and maybe the window.
//! Client data that arrives before the backend's SYN-ACK anyway (the zero window
//! notwithstanding) is dropped ([`DropReason::SynProxyHandshake`]) and retransmitted by the
//! client.
use super::{mac_at, Choice, Family, Fwd, Pipeline, Rev, Verdict};
use crate::conntrack::{FlowKey, FlowState, Key, NO_SLOT};
use crate::hash::siphash24;
use crate::snapshot::Snapshot;
use crate::stats::{bump, DropReason};
use crate::wire::parse::Parsed;
use crate::wire::tcp::{self, flags, option, SynOptions};
use crate::wire::{be16, be32, checksum, proto, put16, put32};

use super::PacketBuf;
use std::net::{IpAddr, SocketAddr};

/// The window scale the proxy offers a client that offered one (Linux's with its default
/// buffers).
pub const WSCALE: u8 = 7;
/// The cookie epoch is the millisecond clock shifted right by this (65.5 s).
const EPOCH_SHIFT: u32 = 16;
/// Data bits at the bottom of a cookie.
const DATA_BITS: u32 = 7;
/// The window-scale value of the cookie's data that means "none offered".
const NO_WSCALE: u32 = 15;
/// The window of the proxy's SYN-ACK: zero, so that the client holds its data until the
/// backend has answered (the window update made of the backend's SYN-ACK releases it)
/// instead of sending it into a handshake that has to drop it.
const SYN_ACK_WINDOW: u16 = 0;

/// The SYN cookie key: two SipHash keys, the same on every worker of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CookieKey(pub [u64; 2]);

/// What a cookie remembers of the client's SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieData {
    /// Index into [`Family::COOKIE_MSS`].
    pub mss_index: u8,
    /// SACK permitted.
    pub sack: bool,
    /// The client's window scale, if it offered one.
    pub wscale: Option<u8>,
}

impl CookieData {
    /// What to keep of a SYN's options, for family `F`'s MSS table.
    fn of_syn<F: Family>(o: &SynOptions) -> CookieData {
        let mss = o.mss.unwrap_or(F::COOKIE_MSS[0]);
        let mss_index = F::COOKIE_MSS.iter().rposition(|&m| m <= mss).unwrap_or(0) as u8;
        CookieData {
            mss_index,
            sack: o.sack_perm,
            wscale: o.wscale,
        }
    }

    /// The 7 data bits.
    fn bits(self) -> u32 {
        u32::from(self.mss_index & 3)
            | (u32::from(self.sack) << 2)
            | (self.wscale.map_or(NO_WSCALE, u32::from) << 3)
    }

    /// The data of a cookie (its low bits).
    pub fn of_cookie(cookie: u32) -> CookieData {
        let ws = (cookie >> 3) & 0xf;
        CookieData {
            mss_index: (cookie & 3) as u8,
            sack: cookie & 4 != 0,
            wscale: (ws != NO_WSCALE).then_some(ws.min(u32::from(tcp::MAX_WSCALE)) as u8),
        }
    }

    /// The options of the SYN to the backend.
    fn backend_options<F: Family>(self) -> SynOptions {
        SynOptions {
            mss: Some(F::COOKIE_MSS[usize::from(self.mss_index & 3)]),
            wscale: self.wscale,
            sack_perm: self.sack,
            timestamps: false,
        }
    }
}

/// The cookie for a SYN `src:sport -> dst:dport` with initial sequence number `isn`, at
/// `now_ms`, keeping `data`.
pub(super) fn cookie<F: Family>(
    key: &CookieKey,
    now_ms: u32,
    (src, dst, sport, dport): (F, F, u16, u16),
    isn: u32,
    data: CookieData,
) -> u32 {
    let bits = data.bits();
    (mac::<F>(
        key,
        now_ms >> EPOCH_SHIFT,
        (src, dst, sport, dport),
        isn,
        bits,
    ) << DATA_BITS)
        | bits
}

/// What cookie `c` (a client's acknowledgement less one) keeps, if it is valid for the SYN
/// `src:sport -> dst:dport` with initial sequence number `isn` in this epoch or the last.
pub(super) fn check_cookie<F: Family>(
    key: &CookieKey,
    now_ms: u32,
    tuple: (F, F, u16, u16),
    isn: u32,
    c: u32,
) -> Option<CookieData> {
    let bits = c & ((1 << DATA_BITS) - 1);
    let epoch = now_ms >> EPOCH_SHIFT;
    let m = c >> DATA_BITS;
    // The previous epoch wraps with the clock (2^16 epochs in 2^32 ms).
    let prev = epoch.wrapping_sub(1) & (u32::MAX >> EPOCH_SHIFT);
    (m == mac::<F>(key, epoch, tuple, isn, bits) || m == mac::<F>(key, prev, tuple, isn, bits))
        .then(|| CookieData::of_cookie(c))
}

/// The cookie the proxy answers a SYN from `client` to `vip` with initial sequence number
/// `isn` at `now_ms` (tests and tools; `None` if the two are of different families).
pub fn syn_cookie(
    key: &CookieKey,
    now_ms: u32,
    client: SocketAddr,
    vip: SocketAddr,
    isn: u32,
    data: CookieData,
) -> Option<u32> {
    let (cp, vp) = (client.port(), vip.port());
    match (client.ip(), vip.ip()) {
        (IpAddr::V4(c), IpAddr::V4(v)) => Some(cookie::<[u8; 4]>(
            key,
            now_ms,
            (c.octets(), v.octets(), cp, vp),
            isn,
            data,
        )),
        (IpAddr::V6(c), IpAddr::V6(v)) => Some(cookie::<[u8; 16]>(
            key,
            now_ms,
            (c.octets(), v.octets(), cp, vp),
            isn,
            data,
        )),
        _ => None,
    }
}

/// The cookie's 25-bit MAC.
fn mac<F: Family>(
    key: &CookieKey,
    epoch: u32,
    (src, dst, sport, dport): (F, F, u16, u16),
    isn: u32,
    bits: u32,
) -> u32 {
    let mut b = [0u8; 48];
    let n = F::LEN;
    b[..n].copy_from_slice(src.bytes());
    b[n..2 * n].copy_from_slice(dst.bytes());
    let r = 2 * n;
    b[r..r + 2].copy_from_slice(&sport.to_be_bytes());
    b[r + 2..r + 4].copy_from_slice(&dport.to_be_bytes());
    b[r + 4..r + 8].copy_from_slice(&isn.to_be_bytes());
    b[r + 8..r + 12].copy_from_slice(&epoch.to_be_bytes());
    b[r + 12] = bits as u8;
    (siphash24(key.0[0], key.0[1], &b[..r + 13]) >> (64 - (32 - DATA_BITS))) as u32
}

/// The MSS the proxy offers clients: the port's MTU (1500 if unset) less the IP and TCP
/// headers.
fn our_mss<F: Family>(snap: &Snapshot) -> u16 {
    let mtu = if snap.local.mtu == 0 {
        1500
    } else {
        snap.local.mtu
    };
    mtu.saturating_sub((F::HEADER_LEN + tcp::MIN_HEADER_LEN) as u16)
}

/// The TCP fields the proxy reads of a segment.
#[derive(Clone, Copy)]
struct Seg {
    seq: u32,
    ack: u32,
    window: u16,
    /// Header length.
    hl: usize,
}

/// The TCP header of `p` in `d`, if whole.
fn seg(d: &[u8], p: &Parsed) -> Option<Seg> {
    let (l4, end) = (usize::from(p.l4_off), usize::from(p.l3_end));
    if end > d.len() || end < l4 + tcp::MIN_HEADER_LEN {
        return None;
    }
    let s = tcp::Segment::new_unchecked(&d[l4..end]);
    let hl = s.header_len();
    if hl < tcp::MIN_HEADER_LEN || l4 + hl > end {
        return None;
    }
    Some(Seg {
        seq: s.seq(),
        ack: s.ack(),
        window: s.window(),
        hl,
    })
}

/// The (sequence, acknowledgement) numbers of the TCP segment `p` in `d`, for the cookie
/// check of a segment to a proxied frontend.
pub(super) fn seq_ack(d: &[u8], p: &Parsed) -> Option<(u32, u32)> {
    seg(d, p).map(|s| (s.seq, s.ack))
}

/// Makes the frame a fixed IP header at `l3` (no IPv4 options or IPv6 extension headers) and
/// a TCP header with `opt_len` bytes of options, nothing after; the Ethernet header kept, the
/// rest to be written. The offset of the TCP header, or `None` without headroom to grow.
fn reshape<F: Family, P: PacketBuf>(pkt: &mut P, l3: usize, opt_len: usize) -> Option<usize> {
    let t = l3 + F::HEADER_LEN;
    let want = t + tcp::MIN_HEADER_LEN + opt_len;
    let have = pkt.data().len();
    if want > have {
        let grow = want - have;
        if !pkt.prepend(grow) {
            return None;
        }
        pkt.data_mut().copy_within(grow..grow + l3, 0);
    } else if !pkt.trim(have - want) {
        return None;
    }
    Some(t)
}

/// A TCP segment the proxy writes.
struct Out<'a> {
    src: u16,
    dst: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    options: &'a [u8],
}

/// Writes a frame from `mac` to `to_mac`: a fixed IP header `src -> dst` at `l3` and the TCP
/// segment `o` at `t` (right after it), with its checksum.
fn emit<F: Family>(
    d: &mut [u8],
    (l3, t): (usize, usize),
    (mac, to_mac): ([u8; 6], [u8; 6]),
    (src, dst): (F, F),
    o: &Out<'_>,
) {
    d[0..6].copy_from_slice(&to_mac);
    d[6..12].copy_from_slice(&mac);
    let len = tcp::MIN_HEADER_LEN + o.options.len();
    F::emit_ip(&mut d[l3..], src, dst, proto::TCP, len as u16);
    put16(d, t, o.src);
    put16(d, t + 2, o.dst);
    put32(d, t + 4, o.seq);
    put32(d, t + 8, o.ack);
    d[t + 12] = ((len / 4) as u8) << 4;
    d[t + 13] = o.flags;
    put16(d, t + 14, o.window);
    put16(d, t + 16, 0);
    put16(d, t + 18, 0);
    d[t + tcp::MIN_HEADER_LEN..t + len].copy_from_slice(o.options);
    let ps = F::pseudo(src, dst, proto::TCP, len as u16);
    let c = tcp::l4_checksum(ps, &d[t..t + len], 16);
    put16(d, t + 16, c);
}

/// Adds `delta` to the 32-bit field at `at`, keeping the checksum at `coff` right.
#[inline(always)]
fn add32(d: &mut [u8], at: usize, coff: usize, delta: u32) {
    let old = be32(d, at);
    let new = old.wrapping_add(delta);
    put32(d, at, new);
    put16(d, coff, checksum::update32(be16(d, coff), old, new));
}

/// Adds `delta` to both edges of every SACK block in the options of the TCP header at `l4`
/// (`hl` bytes long).
fn shift_sack(d: &mut [u8], l4: usize, hl: usize, delta: u32) {
    let coff = l4 + tcp::field::CHECKSUM;
    let (mut i, end) = (l4 + tcp::MIN_HEADER_LEN, l4 + hl);
    while i < end {
        match d[i] {
            option::END => break,
            option::NOP => i += 1,
            kind => {
                let Some(&len) = d.get(i + 1).filter(|_| i + 1 < end) else {
                    break;
                };
                let len = usize::from(len);
                if len < 2 || i + len > end {
                    break;
                }
                if kind == option::SACK {
                    let mut b = i + 2;
                    while b + 8 <= i + len {
                        add32(d, b, coff, delta);
                        add32(d, b + 4, coff, delta);
                        b += 8;
                    }
                }
                i += len;
            }
        }
    }
}

impl Pipeline {
    /// A SYN to a proxied frontend: answered in place with a SYN-ACK whose sequence number is
    /// the cookie. Nothing is stored.
    pub(super) fn syn_cookie<F: Family, P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkt: &mut P,
        p: &Parsed,
        now_ms: u32,
    ) -> Verdict {
        let d = pkt.data();
        let Some(s) = seg(d, p) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let l4 = usize::from(p.l4_off);
        let o = SynOptions::parse(&d[l4 + tcp::MIN_HEADER_LEN..l4 + s.hl]);
        let data = CookieData::of_syn::<F>(&o);
        let (src, dst) = (F::from_raw(&p.src), F::from_raw(&p.dst));
        let c = cookie::<F>(
            &self.cookie_key,
            now_ms,
            (src, dst, p.sport, p.dport),
            s.seq,
            data,
        );
        let ours = SynOptions {
            mss: Some(our_mss::<F>(snap)),
            wscale: data.wscale.map(|_| WSCALE),
            sack_perm: data.sack,
            timestamps: false,
        };
        let mut opts = [0u8; SynOptions::MAX_LEN];
        let n = ours.emit(&mut opts);
        let from = mac_at(d, 6);
        let l3 = usize::from(p.l3_off);
        let Some(t) = reshape::<F, P>(pkt, l3, n) else {
            return Verdict::Drop(DropReason::NoHeadroom);
        };
        let out = Out {
            src: p.dport,
            dst: p.sport,
            seq: c,
            ack: s.seq.wrapping_add(1),
            flags: flags::SYN | flags::ACK,
            window: SYN_ACK_WINDOW,
            options: &opts[..n],
        };
        emit::<F>(
            pkt.data_mut(),
            (l3, t),
            (snap.local.mac, from),
            (dst, src),
            &out,
        );
        bump(&self.stats.syn_cookies_sent, 1);
        Verdict::Tx
    }

    /// Whether the ACK `seq_ack` of new flow `p` returns a valid cookie: what it keeps and
    /// the client's initial sequence number. The client's ACK has that number plus one; a
    /// zero-window probe (its ACK lost, the client probes the proxy's zero window) has it
    /// and no data, and is tried both ways.
    pub(super) fn valid_cookie<F: Family>(
        &self,
        p: &Parsed,
        (seq, ack): (u32, u32),
        now_ms: u32,
    ) -> Option<(CookieData, u32)> {
        if p.tcp_flags & (flags::SYN | flags::RST | flags::ACK) != flags::ACK {
            return None;
        }
        let (src, dst) = (F::from_raw(&p.src), F::from_raw(&p.dst));
        let tuple = (src, dst, p.sport, p.dport);
        let c = ack.wrapping_sub(1);
        let isn = seq.wrapping_sub(1);
        if let Some(d) = check_cookie::<F>(&self.cookie_key, now_ms, tuple, isn, c) {
            return Some((d, isn));
        }
        let empty = p.l3_end == p.l4_off + tcp::MIN_HEADER_LEN as u16;
        if empty {
            return check_cookie::<F>(&self.cookie_key, now_ms, tuple, seq, c).map(|d| (d, seq));
        }
        None
    }

    /// A client's segment of a proxied flow (`c`): the SYN to the backend if its ACK just
    /// opened the flow, dropped while the backend's SYN-ACK is awaited, else translated and
    /// sent as any NAT flow's.
    pub(super) fn proxy_send<F: Family, P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkt: &mut P,
        p: &Parsed,
        c: &Choice<'_>,
    ) -> Verdict {
        if c.flags & Fwd::HANDSHAKE != 0 {
            return match c.opened {
                Some(isn) => self.backend_syn::<F, P>(snap, pkt, p, c, isn),
                None => Verdict::Drop(DropReason::SynProxyHandshake),
            };
        }
        let Some(s) = seg(pkt.data(), p) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let d = pkt.data_mut();
        let l4 = usize::from(p.l4_off);
        if p.tcp_flags & flags::ACK != 0 {
            add32(d, l4 + 8, l4 + tcp::field::CHECKSUM, c.seq);
        }
        if s.hl > tcp::MIN_HEADER_LEN {
            shift_sack(d, l4, s.hl, c.seq);
        }
        super::nat::send::<F, P>(snap, pkt, p, c)
    }

    /// The client's ACK `p` opened flow `c`: it becomes the SYN to the backend, with the
    /// client's initial sequence number `isn` and the options its cookie kept.
    fn backend_syn<F: Family, P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkt: &mut P,
        p: &Parsed,
        c: &Choice<'_>,
        isn: u32,
    ) -> Verdict {
        let Some(s) = seg(pkt.data(), p) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        bump(&self.stats.syn_cookies_valid, 1);
        let data = CookieData::of_cookie(c.seq);
        let mut opts = [0u8; SynOptions::MAX_LEN];
        let n = data.backend_options::<F>().emit(&mut opts);
        // The client's window is scaled by its own shift; a SYN's is not.
        let window = match data.wscale {
            Some(ws) => (u32::from(s.window) << ws).min(65_535) as u16,
            None => s.window,
        };
        let (from, to) = (mac_at(pkt.data(), 6), mac_at(pkt.data(), 0));
        let l3 = usize::from(p.l3_off);
        let Some(t) = reshape::<F, P>(pkt, l3, n) else {
            return Verdict::Drop(DropReason::NoHeadroom);
        };
        let (src, dst) = (F::from_raw(&p.src), F::from_raw(&p.dst));
        let out = Out {
            src: p.sport,
            dst: p.dport,
            seq: isn,
            ack: 0,
            flags: flags::SYN,
            window,
            options: &opts[..n],
        };
        // Still the client's packet to the VIP (MACs as received): the NAT rewrite follows.
        emit::<F>(pkt.data_mut(), (l3, t), (to, from), (src, dst), &out);
        let syn = Parsed {
            l4_off: t as u16,
            l3_end: (t + tcp::MIN_HEADER_LEN + n) as u16,
            tcp_flags: flags::SYN,
            ..*p
        };
        super::nat::send::<F, P>(snap, pkt, &syn, c)
    }

    /// A backend's segment `p` of proxied NAT flow `v` (reverse key `rk`, hash `rh`), to
    /// `vip` and `port`, the reverse entry now in `state`: its first SYN-ACK becomes the
    /// client's window update, a repeated one our ACK to it; any other segment is translated
    /// for the client (sequence number, window) and sent to it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn proxy_reply<F: Family, P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkt: &mut P,
        p: &Parsed,
        (rk, rh): (&Key<F>, u64),
        v: &Rev<F>,
        (vip, port): (F, u16),
        state: FlowState,
        now_ms: u32,
    ) -> Verdict {
        let Some(s) = seg(pkt.data(), p) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let fk = Key::new(v.client, vip, v.client_port, port, p.proto);
        let fh = fk.flow_hash(snap.hash_seed);
        let stats = &self.stats;
        let t = F::tables_mut(&mut self.flows);
        let found = t
            .fwd
            .lookup(&fk, fh, NO_SLOT, now_ms, |e| {
                super::closed(stats, e.value())
            })
            .filter(|e| e.value().nat_port == p.dport && e.value().proxied());
        let Some(e) = found else {
            t.rev.remove(rk, rh);
            return Verdict::Drop(DropReason::NatNoFlow);
        };
        let fv = *e.value();
        let fl = p.tcp_flags;
        if fv.flags & Fwd::HANDSHAKE != 0 {
            if fl & (flags::SYN | flags::ACK | flags::RST) == flags::SYN | flags::ACK {
                let data = CookieData::of_cookie(fv.seq);
                let l4 = usize::from(p.l4_off);
                let o = SynOptions::parse(&pkt.data()[l4 + tcp::MIN_HEADER_LEN..l4 + s.hl]);
                // Without the client's scaling, neither side scales: nothing to rescale.
                let ws = match data.wscale {
                    Some(_) => o.wscale.unwrap_or(0),
                    None => WSCALE,
                };
                let nv = Fwd {
                    flags: Fwd::PROXIED | (ws << 4),
                    seq: s.seq.wrapping_sub(fv.seq),
                    ..fv
                };
                *e.value_mut() = nv;
                e.set_state(FlowState::TcpEstablished);
                if let Some(r) = t.rev.lookup(rk, rh, NO_SLOT, now_ms, |_| {}) {
                    r.set_state(FlowState::TcpEstablished);
                }
                // Established: the peers learn it, with its offset.
                if self.sync.is_some() {
                    let st = FlowState::TcpEstablished;
                    self.publish::<F>(snap, &fk, &nv, st, v.reply_mac());
                }
                // The client learns the backend's window: its data, carrying the ACK the
                // backend waits for, completes the backend's handshake.
                let bytes = u32::from(s.window);
                let window = (bytes >> data.wscale.map_or(0, |_| WSCALE)).max(1) as u16;
                let out = Out {
                    src: port,
                    dst: v.client_port,
                    seq: fv.seq.wrapping_add(1),
                    ack: s.ack,
                    flags: flags::ACK,
                    window,
                    options: &[],
                };
                bump(&self.stats.nat_replies, 1);
                return self.answer::<F, P>(snap, pkt, p, (vip, v.client), v.reply_mac(), &out);
            }
            if fl & flags::RST == 0 {
                // Dropped: the reverse entry keeps the forward one's state (a FIN would have
                // moved it to closing, whose longer timeout would outlive the forward entry
                // still awaiting the backend's SYN-ACK, and keep its NAT port).
                let fs = e.state();
                if let Some(r) = t.rev.lookup(rk, rh, NO_SLOT, now_ms, |_| {}) {
                    r.set_state(fs);
                }
                return Verdict::Drop(DropReason::SynProxyHandshake);
            }
            // The backend refused: the client hears it, at the sequence number it expects.
            e.set_state(state);
            let d = pkt.data_mut();
            let l4 = usize::from(p.l4_off);
            let want = fv.seq.wrapping_add(1);
            add32(
                d,
                l4 + 4,
                l4 + tcp::field::CHECKSUM,
                want.wrapping_sub(s.seq),
            );
        } else if fl & (flags::SYN | flags::ACK | flags::RST) == flags::SYN | flags::ACK {
            // The backend repeats its SYN-ACK: the client sent nothing that completed its
            // handshake (a server that speaks first). This ACK does, in a 64 KiB window
            // (511 units of the usual scale; the client's next segment brings its own).
            // Both halves take the reply's state (a FIN with it closes them together).
            e.set_state(state);
            let out = Out {
                src: p.dport,
                dst: p.sport,
                seq: s.ack,
                ack: s.seq.wrapping_add(1),
                flags: flags::ACK,
                window: 65_535 >> WSCALE,
                options: &[],
            };
            let from = mac_at(pkt.data(), 6);
            let (backend, nat) = (F::from_raw(&p.src), F::from_raw(&p.dst));
            return self.answer::<F, P>(snap, pkt, p, (nat, backend), from, &out);
        } else {
            e.set_state(state);
            let d = pkt.data_mut();
            let l4 = usize::from(p.l4_off);
            let coff = l4 + tcp::field::CHECKSUM;
            add32(d, l4 + 4, coff, fv.seq.wrapping_neg());
            let ws = fv.backend_wscale();
            if ws != WSCALE && fl & flags::SYN == 0 {
                let w = ((u32::from(s.window) << ws) >> WSCALE).min(65_535) as u16;
                let at = l4 + tcp::field::WIN_SIZE;
                put16(d, coff, checksum::update16(be16(d, coff), s.window, w));
                put16(d, at, w);
            }
        }
        let d = pkt.data_mut();
        super::nat::rewrite_flow::<F>(d, p, vip, v.client, port, v.client_port);
        d[0..6].copy_from_slice(&v.reply_mac());
        d[6..12].copy_from_slice(&snap.local.mac);
        bump(&self.stats.nat_replies, 1);
        Verdict::Tx
    }

    /// Replaces frame `p` with the segment `out` from `src` to `dst`, sent to `to_mac`.
    fn answer<F: Family, P: PacketBuf>(
        &self,
        snap: &Snapshot,
        pkt: &mut P,
        p: &Parsed,
        (src, dst): (F, F),
        to_mac: [u8; 6],
        out: &Out<'_>,
    ) -> Verdict {
        let l3 = usize::from(p.l3_off);
        let Some(t) = reshape::<F, P>(pkt, l3, 0) else {
            return Verdict::Drop(DropReason::NoHeadroom);
        };
        emit::<F>(
            pkt.data_mut(),
            (l3, t),
            (snap.local.mac, to_mac),
            (src, dst),
            out,
        );
        Verdict::Tx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: CookieKey = CookieKey([0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210]);

    fn tuple4() -> ([u8; 4], [u8; 4], u16, u16) {
        ([10, 0, 0, 1], [192, 0, 2, 10], 40000, 80)
    }

    /// A cookie decodes to what it keeps within two epochs, not after, and not for another
    /// tuple, sequence number, key, or a flipped bit.
    #[test]
    fn cookie_round_trip_expiry_forgery() {
        let data = CookieData {
            mss_index: 3,
            sack: true,
            wscale: Some(7),
        };
        let t0 = 5 << EPOCH_SHIFT;
        let c = cookie::<[u8; 4]>(&KEY, t0 + 10, tuple4(), 1000, data);
        assert_eq!(
            check_cookie::<[u8; 4]>(&KEY, t0, tuple4(), 1000, c),
            Some(data)
        );
        let next = t0 + (1 << EPOCH_SHIFT) + 5;
        assert_eq!(
            check_cookie::<[u8; 4]>(&KEY, next, tuple4(), 1000, c),
            Some(data)
        );
        let late = t0 + (2 << EPOCH_SHIFT);
        assert_eq!(check_cookie::<[u8; 4]>(&KEY, late, tuple4(), 1000, c), None);
        assert_eq!(check_cookie::<[u8; 4]>(&KEY, t0, tuple4(), 1001, c), None);
        let (s, d, sp, dp) = tuple4();
        assert_eq!(
            check_cookie::<[u8; 4]>(&KEY, t0, (s, d, sp + 1, dp), 1000, c),
            None
        );
        let other = CookieKey([1, 2]);
        assert_eq!(check_cookie::<[u8; 4]>(&other, t0, tuple4(), 1000, c), None);
        for bit in 0..32 {
            assert_eq!(
                check_cookie::<[u8; 4]>(&KEY, t0, tuple4(), 1000, c ^ (1 << bit)),
                None,
                "bit {bit}"
            );
        }
        // Across the clock's wrap: epoch 0 accepts a cookie of the last epoch.
        let c = cookie::<[u8; 4]>(&KEY, u32::MAX, tuple4(), 7, data);
        assert_eq!(check_cookie::<[u8; 4]>(&KEY, 3, tuple4(), 7, c), Some(data));
    }

    /// Every data value survives the cookie; the MSS index is the largest table entry not
    /// above the client's MSS, per family.
    #[test]
    fn cookie_data() {
        for mss_index in 0..4 {
            for sack in [false, true] {
                for wscale in [None, Some(0), Some(7), Some(14)] {
                    let d = CookieData {
                        mss_index,
                        sack,
                        wscale,
                    };
                    let six = ([1u8; 16], [2u8; 16], 1, 2);
                    let c = cookie::<[u8; 16]>(&KEY, 99, six, 5, d);
                    assert_eq!(CookieData::of_cookie(c), d);
                    assert_eq!(check_cookie::<[u8; 16]>(&KEY, 99, six, 5, c), Some(d));
                }
            }
        }
        let of = |mss: Option<u16>| {
            CookieData::of_syn::<[u8; 4]>(&SynOptions {
                mss,
                ..SynOptions::default()
            })
            .mss_index
        };
        assert_eq!(
            (
                of(None),
                of(Some(100)),
                of(Some(1460)),
                of(Some(1459)),
                of(Some(9000))
            ),
            (0, 0, 3, 2, 3)
        );
        let v6 = CookieData::of_syn::<[u8; 16]>(&SynOptions {
            mss: Some(1440),
            ..SynOptions::default()
        });
        assert_eq!(v6.mss_index, 2);
    }

    /// Forged cookies: of 200,000 random acknowledgements for one tuple, about 2^-24 each
    /// (two epochs of a 25-bit MAC) pass; none is expected.
    #[test]
    fn random_acks_do_not_pass() {
        let mut x = 1u64;
        let mut passed = 0;
        for _ in 0..200_000 {
            x = crate::hash::mix64(x.wrapping_add(0x9e37_79b9_7f4a_7c15));
            if check_cookie::<[u8; 4]>(&KEY, 1 << 20, tuple4(), 55, x as u32).is_some() {
                passed += 1;
            }
        }
        assert!(passed <= 1, "{passed} forged cookies passed");
    }
}
