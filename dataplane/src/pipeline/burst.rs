//! # The burst: the worker's one entry point, with two prefetch passes
//!
//! [`Pipeline::process_burst`] processes up to [`BURST`] frames at a time in three passes,
//! so that the burst's cache misses on the (much larger than cache) flow tables overlap
//! instead of stalling one packet at a time, and no packet is parsed or hashed twice:
//!
//! 1. **First pass**, per packet: parse, flow hash, frontend; prefetch (`prefetcht0`) the tag
//!    words of the two buckets its flow may live in; for a TCP SYN to a `nat` frontend, also
//!    its Maglev entry. What it learned goes into the burst cache ([`Burst`]).
//! 2. **Second pass**: for each such SYN, pick the backend (its Maglev entry is in cache by
//!    now), predict its NAT port and prefetch the reverse-table buckets its port check and
//!    reverse insert read; then the entries the first [`PF_AHEAD`] flow lookups will compare
//!    (their tags are in cache by now).
//! 3. **Processing**, per packet, with what the passes learned; the remaining entry
//!    prefetches are issued a few packets ahead, so that their misses overlap with work. A
//!    SYN's reverse-insert prefetch that finds its predicted NAT port's tag in use (about a
//!    third of SYNs when the reverse table is full, as under a SYN flood) prefetches that
//!    entry, which the port check compares, and the reverse buckets of the port the search
//!    will try next (`predict_spill`), instead of the insert's slot. An insert into two full
//!    buckets evicts, and ending the victim's flow reads its other half (a NAT flow's reverse
//!    entry, or forward entry) from the other table, two cache misses in a row; so
//!    [`VICTIM_AHEAD`] packets ahead the burst works out the victim from the prefetched
//!    buckets and prefetches the other half's tags, and one packet ahead its entry
//!    (`victims_ahead`, `victims_next`). Prefetches only: the insert decides as before.
use super::family::{Fam, Tables};
use super::nat::{NatAhead, NatGuess, NatSlice, PORT_COUNTERS};
use super::{flow_hash, nat, pick, Family, Hint, PacketBuf, Pipeline, Verdict};
use crate::conntrack::{FlowKey, FlowState, Key, NO_SLOT};
use crate::snapshot::{AddrKind, Method, Snapshot, SynProxy};
use crate::stats::DropReason;
use crate::wire::parse::{parse_into, Fragment, Parsed, L3};
use crate::wire::{proto, tcp::flags};

/// Frames processed together (the worker's rx burst); a longer slice is taken in bursts of
/// this many.
pub const BURST: usize = 32;

/// Flow lookups whose second-pass prefetch is issued before a burst's first packet is
/// processed; the rest follow as packets are processed, this far ahead.
const PF_AHEAD: usize = 16;

/// How many packets ahead of processing a SYN's predicted victims' other halves get their
/// tag prefetch (their entries' follows one packet ahead).
const VICTIM_AHEAD: usize = 3;

/// Flow lookups a burst remembers: two per packet (a new `nat` flow has a forward and a
/// reverse entry).
const PF_MAX: usize = 2 * BURST;

/// Which table of a family a remembered lookup is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    /// The forward table.
    Fwd,
    /// The NAT reverse table.
    Rev,
}

/// What the second pass prefetches for one remembered flow lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    /// Nothing (yet): the place kept for a SYN's NAT reverse entry until the second pass
    /// predicts its port.
    Nothing,
    /// The entry a lookup will compare; its slot becomes the lookup's hint.
    Find(Table),
    /// The slot a new flow's insert fills, or the victims it scans. Its lookup is expected to
    /// miss (a retransmitted SYN then reads its entry unprefetched), which spares the second
    /// pass a tag search per SYN.
    Insert(Table),
}

/// One remembered flow lookup: the family's table, what to prefetch, the flow hash, the
/// packet's index in the burst.
#[derive(Debug, Clone, Copy)]
struct Lookup {
    fam: Fam,
    job: Job,
    hash: u64,
    pkt: u8,
}

impl Lookup {
    const NONE: Lookup = Lookup {
        fam: Fam::V4,
        job: Job::Nothing,
        hash: 0,
        pkt: 0,
    };
}

/// What the first pass learned about one packet of the burst.
#[derive(Debug, Clone, Copy)]
struct Pre {
    /// Why the packet is dropped before classification (not whole, or malformed), if it is;
    /// `p` is meaningful only when not.
    drop: Option<DropReason>,
    /// The parse.
    p: Parsed,
    /// Its hint for processing (the slot is filled in then).
    hint: Hint,
    /// The index in [`Burst::lookups`] of the packet's own flow lookup (forward, or NAT
    /// reverse for a reply), if it has one.
    lookup: Option<u8>,
    /// For a TCP SYN to a NAT frontend without affinity: the index in [`Burst::lookups`]
    /// kept for its NAT reverse entry, filled in by the second pass.
    rev_lookup: Option<u8>,
}

impl Default for Pre {
    fn default() -> Self {
        Pre {
            drop: None,
            p: Parsed::default(),
            hint: Hint::NONE,
            lookup: None,
            rev_lookup: None,
        }
    }
}

/// The burst cache: what the prefetch passes learned, private to this stage.
#[derive(Debug)]
pub(super) struct Burst {
    /// Per packet of the current burst.
    pre: [Pre; BURST],
    /// The burst's flow lookups, in packet order.
    lookups: [Lookup; PF_MAX],
    /// The slot each lookup's second-pass prefetch found ([`NO_SLOT`]: none), a hint that
    /// spares the lookup its search.
    slots: [u32; PF_MAX],
    /// Entries of `lookups` in use.
    len: usize,
    /// The next entry of `lookups` whose second-pass prefetch is still to be issued.
    next: usize,
    /// TCP SYNs to NAT frontends in this burst (whose reverse entries the second pass works
    /// out).
    nat_syns: u32,
    /// Packets in the burst.
    n: usize,
    /// Bit `j`: lookup `j` is an insert whose second-pass prefetch found both buckets full.
    full: u64,
    /// Bit `j`: `other[j]` holds the hash of the other half of lookup `j`'s predicted victim.
    victims: u64,
    /// Per lookup: the hash of its predicted victim's other half (in the other table).
    other: [u64; PF_MAX],
    /// Per packet: what the second-pass prefetch of a SYN's reverse insert learned (read only
    /// with the packet's [`NatGuess`]).
    nat: [NatAhead; BURST],
    /// The packet being processed.
    cur: usize,
    /// Per port counter ([`nat::port_counter`]): SYNs of this burst the second pass has
    /// predicted a port of it for so far (zero outside the second pass).
    pending: [u8; PORT_COUNTERS],
    /// The counters `pending` counts for, to zero them after the second pass.
    touched: [u8; BURST],
    /// Entries of `touched` in use.
    ntouched: usize,
}

impl Default for Burst {
    fn default() -> Self {
        Burst {
            pre: [Pre::default(); BURST],
            lookups: [Lookup::NONE; PF_MAX],
            slots: [NO_SLOT; PF_MAX],
            len: 0,
            next: 0,
            nat_syns: 0,
            n: 0,
            full: 0,
            victims: 0,
            other: [0; PF_MAX],
            nat: [NatAhead::NONE; BURST],
            cur: 0,
            pending: [0; PORT_COUNTERS],
            touched: [0; BURST],
            ntouched: 0,
        }
    }
}

impl Burst {
    /// Back to [`Burst::default`] in place (a pipeline reused by the fuzzer), without a
    /// temporary of the whole cache.
    #[cfg(any(test, feature = "check"))]
    pub(super) fn clear(&mut self) {
        self.pre.fill(Pre::default());
        self.lookups.fill(Lookup::NONE);
        self.slots.fill(NO_SLOT);
        self.len = 0;
        self.next = 0;
        self.nat_syns = 0;
        self.n = 0;
        self.full = 0;
        self.victims = 0;
        self.other.fill(0);
        self.nat.fill(NatAhead::NONE);
        self.cur = 0;
        self.pending.fill(0);
        self.touched.fill(0);
        self.ntouched = 0;
    }

    /// What the second pass learned about the NAT allocation of the packet being processed
    /// (meaningful with its [`NatGuess`] only).
    #[inline(always)]
    pub(super) fn nat_ahead(&self) -> NatAhead {
        self.nat[self.cur % BURST]
    }

    /// Remembers a flow lookup; its index, if there was room (always: two per packet).
    #[inline(always)]
    fn push(&mut self, l: Lookup) -> Option<u8> {
        let e = self.lookups.get_mut(self.len)?;
        *e = l;
        self.len += 1;
        Some((self.len - 1) as u8)
    }

    /// The slot the second-pass prefetch found for lookup `i`, once issued.
    #[inline(always)]
    fn slot(&self, i: Option<u8>) -> u32 {
        match i {
            Some(i) if usize::from(i) < self.next => self.slots[usize::from(i)],
            _ => NO_SLOT,
        }
    }
}

impl Pipeline {
    /// Processes a burst of frames, the worker's way: `verdicts[i]` is what to do with
    /// `pkts[i]` (rewritten in place). `now_ms` is a wrapping millisecond clock. Frames are
    /// taken [`BURST`] at a time; `verdicts` must be as long as `pkts` (frames beyond it are
    /// left unprocessed). One call per burst, never inlined: the unit `scripts/instructions`
    /// counts.
    #[inline(never)]
    pub fn process_burst<P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkts: &mut [P],
        now_ms: u32,
        verdicts: &mut [Verdict],
    ) {
        debug_assert!(verdicts.len() >= pkts.len(), "a verdict per frame");
        for (pkts, verdicts) in pkts.chunks_mut(BURST).zip(verdicts.chunks_mut(BURST)) {
            self.first_pass(snap, pkts);
            self.second_pass(snap, pkts.len());
            for (i, (pkt, v)) in pkts.iter_mut().zip(verdicts).enumerate() {
                *v = self.process_prefetched(snap, i, pkt, now_ms);
            }
        }
    }

    /// The first pass over a burst (at most [`BURST`] frames).
    #[inline(always)]
    fn first_pass<P: PacketBuf>(&mut self, snap: &Snapshot, pkts: &[P]) {
        let b = &mut self.burst;
        b.len = 0;
        b.next = 0;
        b.nat_syns = 0;
        b.n = pkts.len().min(BURST);
        b.full = 0;
        b.victims = 0;
        for (pkt, i) in pkts.iter().zip(0..BURST) {
            let pre = &mut b.pre[i];
            pre.hint = Hint::NONE;
            pre.lookup = None;
            pre.rev_lookup = None;
            pre.drop = if !pkt.whole() {
                Some(DropReason::Multisegment)
            } else if parse_into(pkt.data(), &mut pre.p).is_err() {
                Some(DropReason::Malformed)
            } else {
                None
            };
            if pre.drop.is_some() {
                continue;
            }
            if pre.p.proto != proto::TCP && pre.p.proto != proto::UDP
                || pre.p.fragment != Fragment::No
            {
                continue;
            }
            let l3 = pre.p.l3;
            match l3 {
                L3::Ipv4 => first::<[u8; 4]>(snap, &self.flows.v4, b, i),
                L3::Ipv6 => first::<[u8; 16]>(snap, &self.flows.v6, b, i),
                _ => {}
            }
        }
    }

    /// The second pass: NAT SYNs' backends, ports and reverse entries; the first
    /// [`PF_AHEAD`] entry prefetches. `n` packets were first-passed.
    #[inline(always)]
    fn second_pass(&mut self, snap: &Snapshot, n: usize) {
        // Established traffic has no SYN: skip the loop.
        let todo = if self.burst.nat_syns != 0 { n } else { 0 };
        let nat = self.ports.slice.of(snap);
        for i in 0..todo {
            let Pre { rev_lookup, p, .. } = &self.burst.pre[i];
            if rev_lookup.is_none() {
                continue;
            }
            let l3 = p.l3;
            let cursors = &self.ports.cursors;
            let predicted = match l3 {
                L3::Ipv4 => {
                    predict::<[u8; 4]>(snap, &self.flows.v4, &mut self.burst, i, nat, cursors)
                }
                _ => predict::<[u8; 16]>(snap, &self.flows.v6, &mut self.burst, i, nat, cursors),
            };
            if let Some((backend, cursor, rh)) = predicted {
                self.burst.pre[i].hint.rev = Some(NatGuess {
                    cursor,
                    backend,
                    rh,
                });
                self.burst.nat[i] = NatAhead::NONE;
            }
        }
        let b = &mut self.burst;
        for &c in &b.touched[..b.ntouched] {
            b.pending[usize::from(c)] = 0;
        }
        b.ntouched = 0;
        self.issue(snap, PF_AHEAD);
    }

    /// Issues the second-pass prefetches of the remembered lookups up to (not including)
    /// `upto`.
    #[inline(always)]
    fn issue(&mut self, snap: &Snapshot, upto: usize) {
        let end = upto.min(self.burst.len);
        while self.burst.next < end {
            let n = self.burst.next;
            let l = self.burst.lookups[n];
            let (slot, seen) = match l.fam {
                Fam::V4 => second(&self.flows.v4, l.job, l.hash),
                Fam::V6 => second(&self.flows.v6, l.job, l.hash),
            };
            self.burst.slots[n] = slot;
            self.burst.next = n + 1;
            match seen {
                Seen::Nothing => {}
                Seen::Full => self.burst.full |= 1 << n,
                Seen::Taken => self.predict_spill(snap, l),
            }
            if l.job == Job::Insert(Table::Rev) {
                // The reverse insert's slot, for its first port.
                self.burst.nat[usize::from(l.pkt) % BURST].slot = slot;
            }
        }
    }

    /// The SYN of reverse lookup `l` will probably find its NAT port in use (its predicted
    /// reverse key's tag matched): predicts the port its search tries next
    /// ([`nat::retry_cursor`] from its predicted first cursor) and prefetches that port's
    /// reverse buckets.
    #[inline(never)]
    fn predict_spill(&mut self, snap: &Snapshot, l: Lookup) {
        let nat = self.ports.slice.of(snap);
        let i = usize::from(l.pkt) % BURST;
        let pre = &self.burst.pre[i];
        let (Some(g), Some(h)) = (pre.hint.rev, pre.hint.hash) else {
            return;
        };
        let cursor = nat::retry_cursor(&nat, g.cursor, h, 1);
        let port = nat.port(cursor);
        let rh = match l.fam {
            Fam::V4 => spill::<[u8; 4]>(snap, &self.flows.v4, pre, port),
            Fam::V6 => spill::<[u8; 16]>(snap, &self.flows.v6, pre, port),
        };
        self.burst.nat[i].spill = rh.map(|rh| (cursor, rh));
    }

    /// Packet `j`'s inserts into full buckets: works out each one's victim (its buckets were
    /// prefetched a few packets ago), and prefetches the tags of the victim's other half, which
    /// ending its flow will look up.
    #[inline(never)]
    fn victims_ahead(&mut self, snap: &Snapshot, j: usize, now_ms: u32) {
        if j >= self.burst.n {
            return;
        }
        let pre = &self.burst.pre[j];
        for x in [pre.lookup, pre.rev_lookup].into_iter().flatten() {
            let x = usize::from(x);
            if x >= self.burst.next || self.burst.full & (1 << x) == 0 {
                continue;
            }
            let l = self.burst.lookups[x];
            let other = match l.fam {
                Fam::V4 => other_half::<[u8; 4]>(snap, &self.flows.v4, l, now_ms),
                Fam::V6 => other_half::<[u8; 16]>(snap, &self.flows.v6, l, now_ms),
            };
            if let Some(h) = other {
                self.burst.other[x] = h;
                self.burst.victims |= 1 << x;
            }
        }
    }

    /// Packet `j`'s predicted victims' other halves: their tags are in cache by now, so
    /// prefetches their entries.
    #[inline(never)]
    fn victims_next(&mut self, j: usize) {
        if j >= self.burst.n {
            return;
        }
        let pre = &self.burst.pre[j];
        for x in [pre.lookup, pre.rev_lookup].into_iter().flatten() {
            let x = usize::from(x);
            if self.burst.victims & (1 << x) == 0 {
                continue;
            }
            self.burst.victims &= !(1 << x);
            let l = self.burst.lookups[x];
            let h = self.burst.other[x];
            // The victim of a forward insert has its other half in the reverse table, and
            // the other way round.
            match (l.fam, l.job) {
                (Fam::V4, Job::Insert(Table::Fwd)) => self.flows.v4.rev.prefetch_entry(h),
                (Fam::V4, _) => self.flows.v4.fwd.prefetch_entry(h),
                (Fam::V6, Job::Insert(Table::Fwd)) => self.flows.v6.rev.prefetch_entry(h),
                (Fam::V6, _) => self.flows.v6.fwd.prefetch_entry(h),
            };
        }
    }

    /// Processes packet `i` of the burst with what the passes learned.
    #[inline(always)]
    fn process_prefetched<P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        i: usize,
        pkt: &mut P,
        now_ms: u32,
    ) -> Verdict {
        // Keep the second-pass prefetches PF_AHEAD lookups ahead (two per packet: a new TCP
        // flow has two, its forward and its NAT reverse entry).
        self.issue(snap, self.burst.next + 2);
        if self.burst.full != 0 {
            self.victims_ahead(snap, i + VICTIM_AHEAD, now_ms);
        }
        if self.burst.victims != 0 {
            self.victims_next(i + 1);
        }
        self.burst.cur = i;
        let pre = self.burst.pre[i];
        let v = match pre.drop {
            Some(r) => Verdict::Drop(r),
            None => {
                let hint = Hint {
                    slot: self.burst.slot(pre.lookup),
                    ..pre.hint
                };
                self.classify(snap, pkt, &pre.p, hint, now_ms)
            }
        };
        self.count(v)
    }
}

/// The first pass's work on TCP/UDP packet `i` of family `F` (not a fragment): hash,
/// frontend, the tag prefetch of its flow lookup, and for a SYN to a NAT frontend its
/// Maglev entry and a place for its reverse entry.
#[inline(always)]
fn first<F: Family>(snap: &Snapshot, t: &Tables<F>, b: &mut Burst, i: usize) {
    let p = &b.pre[i].p;
    let h = flow_hash::<F>(snap, p);
    let fe = snap.frontend_id_for(&p.dst, F::V6, p.proto, p.dport);
    let nat_reply = fe.is_none()
        && p.dport >= snap.local.nat_port_min
        && p.dport <= snap.local.nat_port_max
        && matches!(snap.addr_kind(&p.dst, F::V6), Some(AddrKind::Own));
    // A TCP SYN opens a flow: its insert may need a victim from a full bucket.
    let syn = p.proto == proto::TCP && p.tcp_flags & (flags::SYN | flags::ACK) == flags::SYN;
    b.pre[i].hint.hash = Some(h);
    b.pre[i].hint.frontend = fe;
    if fe.is_none() && !nat_reply {
        return;
    }
    let job = if nat_reply {
        Job::Find(Table::Rev)
    } else if syn {
        Job::Insert(Table::Fwd)
    } else {
        Job::Find(Table::Fwd)
    };
    if nat_reply {
        t.rev.prefetch(h);
    } else {
        t.fwd.prefetch(h);
    }
    b.pre[i].lookup = b.push(Lookup {
        fam: F::FAM,
        job,
        hash: h,
        pkt: i as u8,
    });
    // A TCP SYN to a NAT frontend will take a NAT port. Its backend (Maglev), its port and
    // so its reverse key are worked out by the second pass, once the Maglev entry fetched
    // here has arrived (a table of 65537 entries falls out of the caches under flow-table
    // traffic: read here, it stalled every SYN); the reverse entry's place, right after the
    // forward one, is kept now, as a no-op until then.
    let Some(f) = fe.and_then(|id| snap.frontend(id)) else {
        return;
    };
    // A SYN-proxied frontend's SYN takes no port (the proxy answers it).
    if f.method != Method::Nat || f.affinity_ms.is_some() || !syn || f.syn_proxy == SynProxy::On {
        return;
    }
    if let Some(e) = f.maglev.entry_for(h) {
        dpdk_sys::prefetch(e);
    }
    let rev = b.push(Lookup {
        fam: F::FAM,
        job: Job::Nothing,
        hash: h,
        pkt: i as u8,
    });
    if rev.is_some() {
        b.pre[i].rev_lookup = rev;
        b.nat_syns += 1;
    }
}

/// The second pass's work on the SYN at `i` of family `F` to a NAT frontend: picks its
/// backend, and, its NAT port predicted to be `port`, prefetches its reverse entry's buckets
/// and remembers the insert. The backend and the reverse key's hash, if there is one.
#[inline(always)]
fn predict<F: Family>(
    snap: &Snapshot,
    t: &Tables<F>,
    b: &mut Burst,
    i: usize,
    nat: NatSlice,
    cursors: &[u32; PORT_COUNTERS],
) -> Option<(u32, u32, u64)> {
    let pre = &mut b.pre[i];
    let (Some(j), Some(h)) = (pre.rev_lookup, pre.hint.hash) else {
        return None;
    };
    let f = pre.hint.frontend.and_then(|id| snap.frontend(id))?;
    let be = pick(snap, f, h)?;
    pre.hint.pick = Some(be.id);
    // Each allocation moves its destination's cursor by exactly one (see `alloc_nat`): this
    // SYN's port is that cursor's n-th next, n the burst's SYNs before it to the same
    // counter. A retransmitted SYN, which takes no port, puts the burst's later predictions
    // for its counter off (each then costs one useless prefetch).
    let c = nat::port_counter(be.id, nat::nat_addr_index(h, F::nat_own(&snap.local).len()));
    let cursor = nat.wrap(nat.wrap(cursors[c]) + u32::from(b.pending[c]));
    if b.pending[c] == 0 {
        b.touched[b.ntouched] = c as u8;
        b.ntouched += 1;
    }
    b.pending[c] += 1;
    let pre = &mut b.pre[i];
    let (rk, _) = nat::rev_key::<F>(snap, &pre.p, be, h, nat.port(cursor))?;
    let rh = rk.flow_hash(snap.hash_seed);
    // Only the insert's slot matters (the port is expected free), no entry.
    t.rev.prefetch(rh);
    b.lookups[usize::from(j)] = Lookup {
        fam: F::FAM,
        job: Job::Insert(Table::Rev),
        hash: rh,
        pkt: i as u8,
    };
    Some((be.id, cursor, rh))
}

/// The spill prediction's work on the SYN `pre` of family `F` ([`Pipeline::predict_spill`]):
/// the hash of its reverse key at NAT port `port`, whose buckets are prefetched.
#[inline(always)]
fn spill<F: Family>(snap: &Snapshot, t: &Tables<F>, pre: &Pre, port: u16) -> Option<u64> {
    let h = pre.hint.hash?;
    let be = snap.backend(pre.hint.rev?.backend)?;
    let (rk, _) = nat::rev_key::<F>(snap, &pre.p, be, h, port)?;
    let rh = rk.flow_hash(snap.hash_seed);
    t.rev.prefetch(rh);
    Some(rh)
}

/// The other half of the victim that SYN lookup `l` (an insert into two full buckets of
/// family `F`'s tables) will evict, as things stand: a forward victim's NAT reverse entry, a
/// reverse victim's forward entry. Prefetches its tags and returns its hash; `None` if no
/// victim is expected or it has no other half (not NAT, or its backend or frontend is gone).
#[inline(always)]
fn other_half<F: Family>(snap: &Snapshot, t: &Tables<F>, l: Lookup, now_ms: u32) -> Option<u64> {
    let syn = FlowState::TcpSynSent;
    if l.job == Job::Insert(Table::Fwd) {
        let e = t.fwd.victim(l.hash, syn, now_ms)?;
        let v = e.value();
        if v.nat_port == 0 {
            return None;
        }
        let b = snap.backend(v.backend)?;
        let na = F::nat(&snap.local).get(usize::from(v.nat_addr))?;
        let rk = Key::new(F::of_ip(b.addr)?, *na, b.port, v.nat_port, e.key().proto);
        let rh = rk.flow_hash(snap.hash_seed);
        t.rev.prefetch(rh);
        Some(rh)
    } else {
        let e = t.rev.victim(l.hash, syn, now_ms)?;
        let r = e.value();
        let f = snap.frontend(u32::from(r.frontend))?;
        let fk = Key::new(
            r.client,
            F::of_ip(f.vip)?,
            r.client_port,
            f.port,
            e.key().proto,
        );
        let fh = fk.flow_hash(snap.hash_seed);
        t.fwd.prefetch(fh);
        Some(fh)
    }
}

/// What a second-pass prefetch saw, besides the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Nothing more.
    Nothing,
    /// An insert whose buckets are both full: it will evict.
    Full,
    /// A reverse insert whose key's tag matched a slot: its NAT port is probably in use.
    Taken,
}

/// The second-pass prefetch of one remembered lookup in table set `t`: the slot found (the
/// entry a lookup will compare, its hint; the free slot an insert will fill), or [`NO_SLOT`];
/// and what else it saw.
#[inline(always)]
fn second<F: Family>(t: &Tables<F>, job: Job, h: u64) -> (u32, Seen) {
    let insert = |slot: u32| {
        let seen = if slot == NO_SLOT {
            Seen::Full
        } else {
            Seen::Nothing
        };
        (slot, seen)
    };
    match job {
        Job::Nothing => (NO_SLOT, Seen::Nothing),
        Job::Find(Table::Fwd) => (t.fwd.prefetch_entry(h), Seen::Nothing),
        Job::Find(Table::Rev) => (t.rev.prefetch_entry(h), Seen::Nothing),
        Job::Insert(Table::Fwd) => insert(t.fwd.prefetch_insert(h)),
        Job::Insert(Table::Rev) => {
            // A tag match: the port check compares that entry, and probably finds the port
            // in use (no insert at this key).
            if t.rev.prefetch_entry(h) != NO_SLOT {
                (NO_SLOT, Seen::Taken)
            } else {
                insert(t.rev.prefetch_insert(h))
            }
        }
    }
}
