//! Inserts into two full buckets ([`Conntrack::insert`]'s last resort): the embryonic victim
//! found from the tags' flags, the scan of the sixteen entries when none is flagged, the
//! cuckoo step, and the read-only prediction of the victim the burst prefetches for
//! ([`Conntrack::victim`]). The rules are in the module's "Eviction" section.

use super::{
    embryonic_lanes, first_lane, free_lanes, is_expired, pair_slot, stored_tag, tag_of, Conntrack,
    Entry, FlowKey, FlowState, Inserted, Rank, PAIR_LANES, SLOTS_PER_BUCKET, TAG_BITS,
};

/// What [`Conntrack::scan_full`] found in two full buckets: a slot to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Full {
    /// The first expired entry.
    Expired(usize),
    /// The lowest-ranked entry, and its rank.
    Victim(usize, Rank),
}

impl<K: FlowKey, V: Copy> Conntrack<K, V> {
    /// [`Conntrack::insert`] when both buckets are full: a flagged embryonic entry if one
    /// is still embryonic, else an expired slot of either bucket (reused), else an entry
    /// moved to its other bucket if that has room, else the flagged entry or the
    /// lowest-ranked of the two buckets evicted (or an embryonic newcomer refused; see
    /// [`Conntrack::insert`]).
    #[inline(never)]
    pub(super) fn insert_full(
        &mut self,
        b1: usize,
        b2: usize,
        tag: u16,
        entry: Entry<K, V>,
        now_ms: u32,
    ) -> Inserted<K, V> {
        let (flagged, mut stale) = self.flagged_victim(b1, b2, tag, now_ms);
        // Flags found stale (the entry left the embryonic state since its last lookup) are
        // cleared, so the next insert into these buckets does not read those entries again.
        while stale != 0 {
            let i = pair_slot(b1, b2, stale.trailing_zeros());
            stale &= stale - 1;
            let t = self.stored(i) & TAG_BITS;
            self.set_tag(i, t);
        }
        let (victim, rank) = match flagged.unwrap_or_else(|| self.scan_full(b1, b2, now_ms)) {
            Full::Expired(i) => {
                let old = self.put(i, tag, entry);
                self.stats.expiries += 1;
                return Inserted::Expired {
                    key: old.key,
                    value: old.value,
                };
            }
            Full::Victim(i, rank) => (i, rank),
        };
        // One cuckoo step: an entry whose other bucket has a free slot moves there. It reads
        // the alternate bucket of up to 16 entries (16 cache misses), and in a table that is
        // nearly full (a SYN flood) it almost never finds room: skip it above 95% occupancy,
        // where an insert must stay cheap and evicting the oldest is the answer anyway.
        let nearly_full = self.len * 20 >= self.capacity() * 19;
        for b in [b1, b2] {
            if nearly_full {
                break;
            }
            let tags = self.tags[b];
            for lane in 0..SLOTS_PER_BUCKET {
                let t = (tags >> (lane * 16)) as u16;
                let alt = self.alt(b, t & TAG_BITS);
                let free = free_lanes(&self.tags[alt]);
                if free != 0 {
                    let from = b * SLOTS_PER_BUCKET + lane;
                    let to = alt * SLOTS_PER_BUCKET + first_lane(free);
                    self.slots[to].0 = self.slots[from].0.take();
                    self.set_tag(to, t);
                    self.slots[from].0 = Some(entry);
                    self.set_tag(from, tag);
                    self.len += 1;
                    self.stats.inserts += 1;
                    self.stats.relocations += 1;
                    return Inserted::New;
                }
            }
        }
        if rank == Rank::Established && Rank::of(entry.state) == Rank::Embryonic {
            self.stats.refusals += 1;
            return Inserted::Refused;
        }
        let old = self.put(victim, tag, entry);
        self.stats.evictions += 1;
        match rank {
            Rank::Established => self.stats.evictions_established += 1,
            Rank::Embryonic => self.stats.evictions_embryonic += 1,
            Rank::Closing => {}
        }
        Inserted::Evicted {
            key: old.key,
            value: old.value,
        }
    }

    /// Sets or clears the [`EMBRYONIC`] flag of occupied slot `i` after its entry's state.
    /// Out of line: a lookup calls it once per epoch per flow.
    #[inline(never)]
    pub(super) fn sync_flag(&mut self, i: usize) {
        if let Some(e) = &self.slots[i].0 {
            let t = self.stored(i);
            let want = stored_tag(t & TAG_BITS, e.state);
            if t != want {
                self.set_tag(i, want);
            }
        }
    }

    /// The stored tag of slot `i` ([`stored_tag`]; 0 if free).
    #[inline(always)]
    pub(super) fn stored(&self, i: usize) -> u16 {
        dpdk_sys::get_lane(&self.tags[i / SLOTS_PER_BUCKET], i % SLOTS_PER_BUCKET)
    }

    /// The embryonic victim an insert with stored tag `tag` into the two full buckets `b1`,
    /// `b2` takes without scanning them, found from the tags' [`EMBRYONIC`] flags: of the
    /// flagged slots, in an order rotated by the tag (so that inserts spread their evictions
    /// over the flagged slots rather than always taking the first), the first whose entry is
    /// still embryonic, as [`Full::Expired`] if it has expired. `None` if no flagged slot
    /// holds an embryonic entry. Also the flagged lanes found stale (bit `l`: lane `l % 8` of
    /// `[b1, b2][l / 8]`). Reads one entry per flagged slot it looks at: in a SYN flood, one.
    #[inline(always)]
    fn flagged_victim(&self, b1: usize, b2: usize, tag: u16, now_ms: u32) -> (Option<Full>, u32) {
        let (mut order, turn) = self.flag_order(b1, b2, tag);
        let mut stale = 0;
        while order != 0 {
            let lane = (order.trailing_zeros() + turn) % PAIR_LANES;
            order &= order - 1;
            let i = pair_slot(b1, b2, lane);
            if let Some(e) = &self.slots[i].0 {
                if Rank::of(e.state) == Rank::Embryonic {
                    let full = if is_expired(e, now_ms, &self.timeouts) {
                        Full::Expired(i)
                    } else {
                        Full::Victim(i, Rank::Embryonic)
                    };
                    return (Some(full), stale);
                }
            }
            stale |= 1 << lane;
        }
        (None, stale)
    }

    /// The flagged lanes of buckets `b1`, `b2` (lane `l`: lane `l % 8` of `[b1, b2][l / 8]`),
    /// rotated right by the turn of stored tag `tag`, and that turn: bit `k` of the result is
    /// lane `(k + turn) % 16`.
    #[inline(always)]
    pub(super) fn flag_order(&self, b1: usize, b2: usize, tag: u16) -> (u32, u32) {
        let second = if b2 == b1 {
            0
        } else {
            embryonic_lanes(&self.tags[b2])
        };
        let flagged = embryonic_lanes(&self.tags[b1]) | second << SLOTS_PER_BUCKET;
        let turn = u32::from(tag) % PAIR_LANES;
        (
            (flagged >> turn | flagged << (PAIR_LANES - turn)) & 0xffff,
            turn,
        )
    }

    /// What an insert into the two full buckets `b1`, `b2` finds among their sixteen entries
    /// (eight cache lines for IPv4, which the burst prefetch fetches ahead for a new flow
    /// whose buckets are full: SYN floods live on this path): the first expired entry, to
    /// reuse, else the victim, the lowest-ranked ([`Rank`]) entry, the least recently seen
    /// among equals (the first of those in scan order), with its rank.
    #[inline(always)]
    fn scan_full(&self, b1: usize, b2: usize, now_ms: u32) -> Full {
        let mut victim = b1 * SLOTS_PER_BUCKET;
        let mut best = (Rank::Established, i32::MIN);
        let second = if b2 == b1 { None } else { Some(b2) };
        for b in std::iter::once(b1).chain(second) {
            for i in b * SLOTS_PER_BUCKET..(b + 1) * SLOTS_PER_BUCKET {
                if let Some(e) = &self.slots[i].0 {
                    if is_expired(e, now_ms, &self.timeouts) {
                        return Full::Expired(i);
                    }
                    let r = (Rank::of(e.state), e.idle_ms(now_ms));
                    if r > best {
                        best = r;
                        victim = i;
                    }
                }
            }
        }
        Full::Victim(victim, best.0)
    }

    /// The entry an insert of a new flow with `hash`, in `state`, at `now_ms` would evict if
    /// the table did not change before it: `None` if its buckets have room, hold an expired
    /// entry, or hold only flows it may not evict. (Where the table is under 95% full the
    /// insert may move an entry instead; this still names the victim.) Changes nothing: the
    /// burst reads it a few packets ahead of the insert, to prefetch what ending the victim's
    /// flow will read (a NAT flow's other half), once [`Conntrack::prefetch_insert`] has
    /// brought in its buckets.
    #[inline(always)]
    pub fn victim(&self, hash: u64, state: FlowState, now_ms: u32) -> Option<&Entry<K, V>> {
        let (b1, b2) = self.buckets(hash);
        if free_lanes(&self.tags[b1]) | free_lanes(&self.tags[b2]) != 0 {
            return None;
        }
        // The flag does not change the order (its bit is a multiple of 16).
        let (flagged, _) = self.flagged_victim(b1, b2, tag_of(hash), now_ms);
        match flagged.unwrap_or_else(|| self.scan_full(b1, b2, now_ms)) {
            Full::Victim(i, rank)
                if !(rank == Rank::Established && Rank::of(state) == Rank::Embryonic) =>
            {
                self.slots[i].0.as_ref()
            }
            _ => None,
        }
    }
}
