//! # `nat`: full NAT
//!
//! A new flow's destination becomes its backend and its source one of our NAT addresses and
//! a port of this worker's slice of the NAT port range ([`NatSlice`]); a reverse entry maps
//! the backend's reply (backend -> NAT address:port) back to the client and the VIP. A reply
//! whose port belongs to another worker's slice goes to that worker ([`Verdict::ToWorker`]).
use super::{
    closed, flow_hash, next_state, raw_ip, Choice, Family, Fwd, Hint, PacketBuf, Pipeline,
    PipelineConfig, Rev, Verdict,
};
use crate::conntrack::{FlowKey, FlowState, Insert, Inserted, Key, NO_SLOT};
use crate::hash::mix64;
use crate::snapshot::{Backend, Snapshot};
use crate::stats::{bump, DropReason};
use crate::wire::parse::Parsed;
use crate::wire::{be16, checksum, proto, put16};

/// Tries to find a free NAT port before giving up.
const NAT_PORT_TRIES: u32 = 64;

/// Port cursors per worker: a new flow takes its first port from the cursor of its
/// destination, (backend, NAT address), hashed into this many ([`port_counter`]).
pub(super) const PORT_COUNTERS: usize = 256;

/// The port cursor of flows to backend `backend` from NAT address `ai` (RFC 6056's
/// double-hash port selection, with the counters indexed by destination): ports are handed
/// out in sequence per destination, so a port comes back to the same reverse key only after
/// a whole slice of allocations to that destination, not to all of them together; with one
/// shared cursor a port's previous flow to the same backend was often still live, and every
/// such SYN searched on.
#[inline(always)]
pub(super) fn port_counter(backend: u32, ai: usize) -> usize {
    let x = u64::from(backend).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (ai as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    (x >> 56) as usize % PORT_COUNTERS
}

/// This worker's NAT ports: its slice of the snapshot's range and the cursors that hand its
/// ports out.
#[derive(Debug)]
pub(super) struct NatPorts {
    /// The next NAT port to try per destination counter ([`port_counter`]), as an offset into
    /// this worker's slice (reduced into the slice when used: a new snapshot may shrink it).
    /// A counter moves by one per allocation to its destinations.
    pub(super) cursors: [u32; PORT_COUNTERS],
    /// This worker's slice of the snapshot's NAT port range, worked out once per range.
    pub(super) slice: NatSlice,
}

impl NatPorts {
    /// The ports of worker `cfg.worker`, its cursors at `cfg.nat_port_start`.
    pub(super) fn new(cfg: &PipelineConfig) -> Self {
        NatPorts {
            cursors: [cfg.nat_port_start; PORT_COUNTERS],
            slice: NatSlice::new(1, 0, cfg.worker, cfg.workers),
        }
    }

    /// Both cursors back to the start of the slice and the slice forgotten, as
    /// [`NatPorts::new`] left them with `nat_port_start` 0 (a pipeline reused by the fuzzer).
    #[cfg(any(test, feature = "check"))]
    pub(super) fn rewind(&mut self) {
        self.cursors = [0; PORT_COUNTERS];
        self.slice = NatSlice::new(1, 0, self.slice.worker, self.slice.workers);
    }
}

/// What the burst's prefetch passes predicted of a SYN's NAT port allocation
/// ([`Pipeline::alloc_nat`]); used only where it still holds. (Small: a packet's hint is
/// copied whole; what the second pass learns later is in [`NatAhead`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NatGuess {
    /// The port cursor predicted for the SYN.
    pub(super) cursor: u32,
    /// The backend picked for it.
    pub(super) backend: u32,
    /// The hash of the reverse key (backend, cursor's port).
    pub(super) rh: u64,
}

/// What the second-pass prefetch of a SYN's reverse insert learned, for its
/// [`NatGuess`]: kept in the burst cache, per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NatAhead {
    /// The free slot the insert at the guessed port will fill ([`NO_SLOT`]: none).
    pub(super) slot: u32,
    /// If the guessed port looked in use (its reverse key's tag matched a slot): the search's
    /// first further try ([`retry_cursor`]) and its reverse key's hash.
    pub(super) spill: Option<(u32, u64)>,
}

impl NatAhead {
    /// Nothing learned.
    pub(super) const NONE: NatAhead = NatAhead {
        slot: NO_SLOT,
        spill: None,
    };
}

/// A new flow looking for a NAT port: what each port tried needs to build and record its
/// reverse entry.
pub(super) struct NatFlow<'a> {
    /// The client's packet.
    pub(super) p: &'a Parsed,
    /// The backend chosen.
    pub(super) b: &'a Backend,
    /// The packet's flow hash (it picks the NAT address).
    pub(super) h: u64,
    /// The reverse entry's initial state.
    pub(super) st: FlowState,
    /// Now, on the worker's millisecond clock.
    pub(super) now_ms: u32,
    /// The MAC the client's packet came from (replies go there).
    pub(super) src_mac: [u8; 6],
    /// The frontend id (gives the VIP and port replies come from).
    pub(super) frontend: u16,
}

impl Pipeline {
    /// Finds a free local port in this worker's slice and records the reverse flow.
    ///
    /// Every allocation first tries the port of its destination's cursor ([`port_counter`])
    /// and moves that cursor on by exactly one, so that the prefetch pass, which predicts the
    /// cursor of each SYN of a burst (`guess`: cursor, backend, reverse-key hash), predicts
    /// right for all of them: its prefetched reverse buckets are then the ones read. If that
    /// port is in use (its reverse key is live or not yet expired), the further tries jump
    /// through the slice at places drawn from the flow hash ([`retry_cursor`]) and move no
    /// cursor: a destination's recent flows hold a contiguous run of ports behind its
    /// cursor, which a search that stepped port by port could not get out of, and moving the
    /// cursor would put every later prediction of the burst off. The prefetch pass also
    /// predicts the first further try of the SYNs whose first port looks in use, so that it
    /// is prefetched too.
    #[inline(always)]
    pub(super) fn alloc_nat<F: Family>(
        &mut self,
        snap: &Snapshot,
        nf: &NatFlow<'_>,
        guess: Option<NatGuess>,
    ) -> Result<(u16, u8), DropReason> {
        let nat = self.ports.slice.of(snap);
        let counter = port_counter(nf.b.id, nat_addr_index(nf.h, F::nat_own(&snap.local).len()));
        let first = nat.wrap(self.ports.cursors[counter]);
        self.ports.cursors[counter] = nat.wrap(first + 1);
        // The prefetch pass's prediction of this backend holds: its hashes are this flow's.
        let guess = guess.filter(|g| g.backend == nf.b.id);
        let ahead = match guess {
            Some(_) => self.burst.nat_ahead(),
            None => NatAhead::NONE,
        };
        // ... and of this cursor: its reverse-key hash and insert slot are this one's.
        let known = guess
            .filter(|g| g.cursor == first)
            .map(|g| (g.rh, ahead.slot));
        if let Some(got) = self.take_nat_port::<F>(snap, nf, nat.port(first), known)? {
            return Ok(got);
        }
        self.nat_port_retry::<F>(snap, nat, nf, first, ahead.spill)
    }

    /// [`Pipeline::alloc_nat`] once the port at cursor `first` was in use: up to
    /// [`NAT_PORT_TRIES`] more ports ([`retry_cursor`]; every other port of a slice that
    /// small). `spill` is the prefetch pass's prediction of the first of them and its
    /// reverse-key hash.
    #[inline(never)]
    fn nat_port_retry<F: Family>(
        &mut self,
        snap: &Snapshot,
        nat: NatSlice,
        nf: &NatFlow<'_>,
        first: u32,
        spill: Option<(u32, u64)>,
    ) -> Result<(u16, u8), DropReason> {
        bump(&self.stats.nat_port_retries, 1);
        for i in 1..=NAT_PORT_TRIES.min(nat.per - 1) {
            let cursor = retry_cursor(&nat, first, nf.h, i);
            let known = spill
                .filter(|&(c, _)| c == cursor)
                .map(|(_, rh)| (rh, NO_SLOT));
            if let Some(got) = self.take_nat_port::<F>(snap, nf, nat.port(cursor), known)? {
                return Ok(got);
            }
        }
        Err(DropReason::NatPortsExhausted)
    }

    /// Takes NAT port `port` for new flow `nf` unless its reverse key is in use (live or not
    /// yet expired): `Some((port, NAT address index))` once the reverse entry is recorded,
    /// `None` if the port is taken. `known` is the reverse key's hash and the slot its insert
    /// was prefetched for, if known.
    #[inline(always)]
    fn take_nat_port<F: Family>(
        &mut self,
        snap: &Snapshot,
        nf: &NatFlow<'_>,
        port: u16,
        known: Option<(u64, u32)>,
    ) -> Result<Option<(u16, u8)>, DropReason> {
        let Some((rk, ai)) = rev_key::<F>(snap, nf.p, nf.b, nf.h, port) else {
            return Err(DropReason::NoNatAddress);
        };
        let (rh, at) = match known {
            Some(k) => k,
            None => (rev_hash_cold(&rk, snap.hash_seed), NO_SLOT),
        };
        let val = Rev {
            client: F::from_raw(&nf.p.src),
            client_port: nf.p.sport,
            client_mac: nf.src_mac,
            frontend: nf.frontend,
        };
        let rev = &mut F::tables_mut(&mut self.flows).rev;
        Ok(
            match rev.insert_at(rk, rh, val, nf.st, nf.now_ms, Insert::IfAbsent, at) {
                Inserted::Kept => None,
                Inserted::Refused => return Err(DropReason::FlowTableFull),
                Inserted::Evicted { key, value } => {
                    // The evicted reverse entry's flow ends with it.
                    self.end_nat_flow::<F>(snap, &key, &value);
                    Some((port, ai))
                }
                _ => Some((port, ai)),
            },
        )
    }

    /// A client's packet hit NAT flow `v` (to backend `b`, protocol `proto`) and moved it to
    /// `state`. The flow's reverse entry shares its lifetime: it is refreshed and takes the
    /// same state, so that neither half outlives the other (a reverse entry left in
    /// `TcpSynSent` by the backend's SYN-ACK used to expire 5 s later under an established
    /// flow, dropping the backend's first reply after a slow start and freeing its port for
    /// another flow). False if it is gone (evicted): the flow is then ended whole.
    #[inline(always)]
    pub(super) fn touch_rev<F: Family>(
        &mut self,
        snap: &Snapshot,
        proto: u8,
        b: &Backend,
        v: &Fwd,
        state: FlowState,
        now_ms: u32,
    ) -> bool {
        let (Some(&na), Some(ba)) = (
            F::nat(&snap.local).get(usize::from(v.nat_addr)),
            F::of_ip(b.addr),
        ) else {
            return false;
        };
        let rk = Key::new(ba, na, b.port, v.nat_port, proto);
        let rh = rk.flow_hash(snap.hash_seed);
        let rev = &mut F::tables_mut(&mut self.flows).rev;
        match rev.lookup(&rk, rh, NO_SLOT, now_ms, |_| {}) {
            Some(e) => {
                e.set_state(state);
                true
            }
            None => false,
        }
    }

    /// A backend's reply `p` hit reverse entry `v` (of a flow to `vip` and `port`) and moved
    /// it to `state`: refreshes the flow's forward entry in the same state. False if the
    /// forward entry is gone or now belongs to another flow of the client's 5-tuple.
    #[inline(always)]
    fn touch_fwd<F: Family>(
        &mut self,
        snap: &Snapshot,
        p: &Parsed,
        v: &Rev<F>,
        (vip, port): (F, u16),
        state: FlowState,
        now_ms: u32,
    ) -> bool {
        let fk = Key::new(v.client, vip, v.client_port, port, p.proto);
        let fh = fk.flow_hash(snap.hash_seed);
        let stats = &self.stats;
        let fwd = &mut F::tables_mut(&mut self.flows).fwd;
        match fwd.lookup(&fk, fh, NO_SLOT, now_ms, |e| closed(stats, e.value())) {
            Some(e) if e.value().nat_port == p.dport => {
                e.set_state(state);
                true
            }
            _ => false,
        }
    }

    /// Ends a forward entry (its reverse half is gone): removed and counted as closed.
    pub(super) fn end_fwd<F: Family>(&mut self, key: &Key<F>, h: u64, v: &Fwd) {
        if F::tables_mut(&mut self.flows).fwd.remove(key, h) {
            closed(&self.stats, v);
        }
    }

    /// Removes the reverse entry of NAT flow `v` (protocol `proto`), whose forward entry
    /// ended; nothing if the flow is not NAT'd or its backend left the snapshot (the entry
    /// then expires on its own).
    pub(super) fn end_rev<F: Family>(&mut self, snap: &Snapshot, proto: u8, v: &Fwd) {
        if v.nat_port == 0 {
            return;
        }
        let Some(b) = snap.backend(v.backend) else {
            return;
        };
        let (Some(&na), Some(ba)) = (
            F::nat(&snap.local).get(usize::from(v.nat_addr)),
            F::of_ip(b.addr),
        ) else {
            return;
        };
        let rk = Key::new(ba, na, b.port, v.nat_port, proto);
        let rh = rk.flow_hash(snap.hash_seed);
        F::tables_mut(&mut self.flows).rev.remove(&rk, rh);
    }

    /// Ends the forward entry of the NAT flow whose reverse entry (`rk` -> `r`) ended, if it
    /// is that flow's (uses the same port).
    fn end_nat_flow<F: Family>(&mut self, snap: &Snapshot, rk: &Key<F>, r: &Rev<F>) {
        let Some(f) = snap.frontend(u32::from(r.frontend)) else {
            return;
        };
        let Some(vip) = F::of_ip(f.vip) else {
            return;
        };
        let fk = Key::new(r.client, vip, r.client_port, f.port, rk.proto);
        let fh = fk.flow_hash(snap.hash_seed);
        let fwd = &F::tables(&self.flows).fwd;
        if let Some(v) = fwd.get(&fk, fh).map(|e| *e.value()) {
            if v.nat_port == rk.dport {
                self.end_fwd::<F>(&fk, fh, &v);
            }
        }
    }

    /// A packet to one of our addresses and a NAT port: the backend's reply to a NAT flow,
    /// translated back (source: the VIP and port; destination: the client) if it is ours,
    /// handed to the worker owning the port if not.
    pub(super) fn nat_reply<F: Family, P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkt: &mut P,
        p: &Parsed,
        hint: Hint,
        now_ms: u32,
    ) -> Verdict {
        let l = &snap.local;
        if p.dport < l.nat_port_min || p.dport > l.nat_port_max {
            return Verdict::Drop(DropReason::NatNoFlow);
        }
        let owner = self.ports.slice.of(snap).owner(p.dport);
        if owner != self.worker {
            bump(&self.stats.to_other_worker, 1);
            return Verdict::ToWorker(owner);
        }
        let tcp = p.proto == proto::TCP;
        let (src, dst) = (F::from_raw(&p.src), F::from_raw(&p.dst));
        let k = Key::new(src, dst, p.sport, p.dport, p.proto);
        let h = hint.hash.unwrap_or_else(|| flow_hash::<F>(snap, p));
        let rev = &mut F::tables_mut(&mut self.flows).rev;
        let (v, s, touch) = match rev.lookup_epoch(&k, h, hint.slot, now_ms, |_| {}) {
            Some((e, first)) => {
                let old = e.state();
                let s = next_state(old, tcp, p.tcp_flags);
                e.set_state(s);
                (*e.value(), s, first || s != old)
            }
            None => return Verdict::Drop(DropReason::NatNoFlow),
        };
        let Some(f) = snap.frontend(u32::from(v.frontend)) else {
            return Verdict::Drop(DropReason::NatNoFlow);
        };
        let vip = F::from_raw(&raw_ip(f.vip));
        if v.proxied() {
            // Every reply needs the forward entry: it holds the sequence offset.
            return self.proxy_reply::<F, P>(snap, pkt, p, (&k, h), &v, (vip, f.port), s, now_ms);
        }
        // The forward entry shares the flow's lifetime (see `touch_rev`): refreshed with the
        // reply, in the same state, when the reply is the reverse entry's first of an epoch
        // or changes its state. A flow whose forward entry is gone (evicted, or taken over by
        // a new flow of the client's 5-tuple) is over: so is its reverse entry. Evictions and
        // takeovers remove the reverse entry themselves; what this lookup finds gone within
        // an epoch is a flow whose backend left the snapshot.
        if touch && !self.touch_fwd::<F>(snap, p, &v, (vip, f.port), s, now_ms) {
            F::tables_mut(&mut self.flows).rev.remove(&k, h);
            return Verdict::Drop(DropReason::NatNoFlow);
        }
        // The fuzzer's self-test (never in a real build): UDP replies to IPv6 clients go to the
        // wrong client port.
        #[cfg(feature = "fuzz-broken-rewrite")]
        let v = Rev {
            client_port: v.client_port.wrapping_add(u16::from(F::V6 && !tcp)),
            ..v
        };
        let d = pkt.data_mut();
        rewrite_flow::<F>(d, p, vip, v.client, f.port, v.client_port);
        d[0..6].copy_from_slice(&v.client_mac);
        d[6..12].copy_from_slice(&l.mac);
        bump(&self.stats.nat_replies, 1);
        Verdict::Tx
    }
}

/// Sends a client's packet of a NAT flow to its backend: from NAT address and port `c` to
/// the backend's address and port.
#[inline(always)]
pub(super) fn send<F: Family, P: PacketBuf>(
    snap: &Snapshot,
    pkt: &mut P,
    p: &Parsed,
    c: &Choice<'_>,
) -> Verdict {
    let l = &snap.local;
    let b = c.backend;
    let Some(mac) = b.mac else {
        return Verdict::Drop(DropReason::NextHopUnresolved);
    };
    let (Some(ba), Some(&la)) = (F::of_ip(b.addr), F::nat(l).get(usize::from(c.nat_addr))) else {
        return Verdict::Drop(DropReason::NoNatAddress);
    };
    let d = pkt.data_mut();
    rewrite_flow::<F>(d, p, la, ba, c.nat_port, b.port);
    d[0..6].copy_from_slice(&mac);
    d[6..12].copy_from_slice(&l.mac);
    Verdict::Tx
}

/// The worker that owns NAT local port `port` ([`Pipeline::nat_owner`]).
#[inline(always)]
pub(super) fn owner(snap: &Snapshot, workers: u16, port: u16) -> u16 {
    let (lo, hi) = (snap.local.nat_port_min, snap.local.nat_port_max);
    if port < lo || port > hi {
        return 0;
    }
    NatSlice::new(lo, hi, 0, workers).owner(port)
}

/// One worker's slice of a NAT port range, with what the per-packet path needs precomputed:
/// an integer division costs tens of cycles, and a SYN needed four (two port cursors, two NAT
/// address choices) and a NAT reply two (its owning worker).
#[derive(Debug, Clone, Copy)]
pub(super) struct NatSlice {
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
    pub(super) fn of(&mut self, snap: &Snapshot) -> NatSlice {
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
    pub(super) fn wrap(&self, cursor: u32) -> u32 {
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
    pub(super) fn port(&self, cursor: u32) -> u16 {
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

/// Try `i` (1, 2, ...) of the search of a flow with hash `h` whose first port, at `first`,
/// was in use: in a slice of at most [`NAT_PORT_TRIES`] + 1 ports the next ones in turn (so
/// the search covers the slice), in a larger one a place drawn from the hash and `i`
/// (multiply-shift into the slice, never `first`). Independent tries: a port is in use about
/// as often as the destination's share of the slice is, whichever run of ports it is in.
#[inline(always)]
pub(super) fn retry_cursor(nat: &NatSlice, first: u32, h: u64, i: u32) -> u32 {
    let step = if nat.per <= NAT_PORT_TRIES + 1 {
        i
    } else {
        let r = mix64(h ^ u64::from(i)) >> 32;
        1 + ((r * u64::from(nat.per - 1)) >> 32) as u32
    };
    nat.wrap(first + step)
}

/// Index of the NAT address for flow hash `h` among `n` (> 0): the high half of the hash
/// scaled to `0..n` by a multiply, not a division.
#[inline(always)]
pub(super) fn nat_addr_index(h: u64, n: usize) -> usize {
    (((h >> 32) * n as u64) >> 32) as usize
}

/// The reverse key's hash out of line, for when the prefetch pass's guess did not hold: kept
/// cold so that the compiler does not hoist half of the hash into every allocation.
#[cold]
#[inline(never)]
fn rev_hash_cold<F: Family>(k: &Key<F>, seed: u64) -> u64 {
    k.flow_hash(seed)
}

/// The NAT reverse key (the backend's reply: backend -> NAT address and port) for a new flow
/// `p` (flow hash `h`) to backend `b` through NAT port `port`, and the index of the NAT
/// address; `None` if the family has no NAT address or the backend is of the other family.
/// [`Pipeline::alloc_nat`] and the prefetch pass's guess both use it, so they agree.
#[inline(always)]
pub(super) fn rev_key<F: Family>(
    snap: &Snapshot,
    p: &Parsed,
    b: &Backend,
    h: u64,
    port: u16,
) -> Option<(Key<F>, u8)> {
    let nat = F::nat_own(&snap.local);
    let ba = F::of_ip(b.addr)?;
    if nat.is_empty() {
        return None;
    }
    let ai = nat_addr_index(h, nat.len());
    Some((Key::new(ba, nat[ai], b.port, port, p.proto), ai as u8))
}

/// Rewrites addresses and ports of an IP packet with incremental checksum updates (IPv4
/// header, TCP/UDP checksum including the pseudo-header).
#[inline(always)]
pub(super) fn rewrite_flow<F: Family>(
    d: &mut [u8],
    p: &Parsed,
    new_src: F,
    new_dst: F,
    new_sport: u16,
    new_dport: u16,
) {
    let l3 = usize::from(p.l3_off);
    let l4 = usize::from(p.l4_off);
    let (a_off, alen) = (l3 + F::ADDRS_OFF, F::LEN);
    // The addresses' change, summed once (RFC 1624: ~old + new per word), serves both the IPv4
    // header checksum and the TCP/UDP one (whose pseudo-header holds the same addresses).
    let addrs = &mut d[a_off..a_off + 2 * alen];
    let delta = checksum::delta(&addrs[..alen], new_src.bytes())
        + checksum::delta(&addrs[alen..], new_dst.bytes());
    addrs[..alen].copy_from_slice(new_src.bytes());
    addrs[alen..].copy_from_slice(new_dst.bytes());
    F::update_header_checksum(&mut d[l3..], delta);
    let coff = if p.proto == proto::TCP {
        l4 + 16
    } else {
        l4 + 6
    };
    let c = be16(d, coff);
    let (osp, odp) = (be16(d, l4), be16(d, l4 + 2));
    put16(d, l4, new_sport);
    put16(d, l4 + 2, new_dport);
    if p.proto == proto::UDP && c == 0 && F::UDP_CHECKSUM_OPTIONAL {
        return; // IPv4 UDP without checksum stays without
    }
    let ports = u64::from(!osp) + u64::from(new_sport) + u64::from(!odp) + u64::from(new_dport);
    let mut c = checksum::apply(c, delta + ports);
    if p.proto == proto::UDP && c == 0 {
        c = 0xffff;
    }
    put16(d, coff, c);
}

#[cfg(test)]
mod tests {
    use super::*;

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
