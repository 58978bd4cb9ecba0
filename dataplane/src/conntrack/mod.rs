//! Per-worker connection tracking: a fixed-capacity hash table of flows with TCP-state-aware
//! timeouts, expiry in small steps and eviction of the least recently seen flow.
//!
//! # Design
//!
//! Each worker owns one table per address family ([`Conntrack<V4Key, V>`],
//! [`Conntrack<V6Key, V>`]); nothing is shared, so there are no locks and the counters are plain
//! single-writer `u64`s. Everything is allocated, and every page written, in
//! [`Conntrack::new`]; afterwards no operation allocates, locks, logs or formats, and none can
//! fail: a full table evicts.
//!
//! **Layout.** The table is a power-of-two number of buckets of [`SLOTS_PER_BUCKET`] (8) slots,
//! kept as two parallel arrays (DPDK's `rte_hash` has the same shape: two candidate buckets of
//! eight, 16-bit signatures):
//!
//! - `tags`: one `u128` per bucket holding eight 16-bit stored tags: 15 bits of the flow hash
//!   (0 meaning "free") and a flag, [`EMBRYONIC`], set while the entry is embryonic. Four
//!   buckets share a cache line. A lookup compares all eight tags of a bucket at once, the
//!   flag masked off (one SSE2 AND and compare on x86-64, `dpdk_sys::lanes_eq_masked`), and
//!   reads a full key only on a tag match, so a miss touches no entry at all (a false tag
//!   match, which costs one entry read, happens in about one miss in 2048: 16 slots, 15-bit
//!   tags).
//! - `slots`: `Option<Entry<K, V>>` per slot, each slot aligned to 32 bytes; `Entry` stores
//!   the key, the value, the [`FlowState`] and the last-seen time, and `Option` costs nothing
//!   (it uses the unused values of the `FlowState` byte). An IPv4 entry with an 8-byte value is
//!   28 bytes (align-4 value such as `[u32; 2]`) or 32 (`u64`), so a slot is 32 bytes and never
//!   straddles two cache lines: a hit touches exactly one line of entries. (Unaligned 28-byte
//!   slots straddled lines 3 times in 8 and cost a hit about 20 ns more in the benchmark.) With
//!   its tag, **an IPv4 slot costs 34 bytes**, a NAT flow (forward and reverse entry) 68. An
//!   IPv6 entry is 52-56 bytes, its slot one full cache line: **66 bytes** with the tag.
//!
//! **Two choices.** A flow hash names two buckets: `b1` from its low 24 bits and `b2 = b1 ^
//! (odd number derived from the tag)`, never equal to `b1`; because `b2` depends on `b1` and
//! the tag alone, an entry can move between its two buckets without its key being rehashed (as
//! in a cuckoo filter). A new flow goes to whichever bucket has more free slots (`b1` on a
//! tie). When both are full, the insert reuses an expired slot among the 16, else moves one of
//! the 16 entries to *its* other bucket if that has a free slot (one cuckoo step), and only
//! then evicts. Measured by filling a 2^20-slot table with no expiry (the ignored test
//! `occupancy_report`): no eviction up to 90% occupancy, 0.008% of inserts at 95%; with one
//! choice and 8 slots, about 0.8% of flows would already find their bucket full at 50%
//! (Poisson estimate). A lookup checks `b1`, then `b2`: a miss compares two tag words and
//! reads no entry.
//!
//! **Time** is a `u32` of milliseconds from an arbitrary origin, compared by wrapping
//! subtraction read as signed: the clock may wrap (every 49.7 days) freely, as long as every
//! entry is looked at by [`Conntrack::expire`] (or a lookup) within 24.8 days, which the worker's
//! periodic expiry guarantees. Timeouts above `i32::MAX` ms are clamped to it.
//!
//! **Expiry** is lazy and amortised: a lookup that finds an expired entry frees it and reports a
//! miss; an insert into two full buckets reuses an expired slot of either bucket before it
//! evicts a live flow;
//! and [`Conntrack::expire`] scans a bounded number of buckets from a cursor, so a worker can
//! call it once per poll iteration at a cost it chooses.
//!
//! **Eviction**: when both buckets are full and no entry can move, an embryonic flow goes
//! first, found from the tags' flags without reading the other entries: of the flagged
//! slots, in an order rotated by the new flow's tag (so evictions spread over them), the
//! first whose entry is still embryonic (reused as expired if it has expired). A flag is set
//! when an entry is stored embryonic and follows the entry's state at the flow's first lookup
//! in each epoch ([`same_epoch`]), so it can be stale for about an epoch after a state
//! change; a stale flag is skipped, never trusted, and cleared. With no embryonic flow flagged, the insert scans the 16
//! entries: the first expired one is reused, else the lowest-ranked is evicted ([`Rank`]:
//! embryonic flows first, then closing ones, then established, UDP and other flows; the
//! least recently seen first among equals). Either way the entry is handed back in
//! [`Inserted::Evicted`], so the caller can release what the value stood for (a NAT port, a
//! reverse entry). A handshake never evicts an established flow: a new embryonic entry whose
//! buckets hold nothing else is refused ([`Inserted::Refused`]), so a SYN flood cannot push
//! out the connections it competes with. In a SYN flood the flagged victim costs one cache
//! line of entries per insert into full buckets; the scan costs eight (IPv4), which the
//! burst prefetch fetches ahead.
//!
//! **Prefetch.** A worker overlaps a burst's cache misses in two passes (the pipeline's
//! `burst` stage): [`Conntrack::prefetch`] issues `prefetcht0` for the tag words of a flow's
//! two buckets as each packet is parsed; once those are in cache,
//! [`Conntrack::prefetch_entry`] prefetches the entry a hit will compare and returns its slot,
//! a hint that spares [`Conntrack::lookup`] its search, and [`Conntrack::prefetch_insert`]
//! the slot a new flow's insert fills (or the victims it scans). A prefetch never faults, so
//! `dpdk_sys::prefetch` is a safe function. The measurements are in docs/dataplane-tables.md.
//!
//! The flow key, state and timeout types are in [`flow`]; the tests in `tests.rs`.

mod evict;
mod flow;
#[cfg(test)]
mod tests;

pub use flow::{Addr, FlowKey, FlowState, Key, Timeouts, V4Key, V6Key};

use dpdk_sys::HugeSlice;

/// "No slot": what [`Conntrack::prefetch_entry`] returns on a miss, and the hint of a lookup
/// that has none.
pub const NO_SLOT: u32 = u32::MAX;
/// Slots per bucket: eight, so that the bucket's tags are one `u128`.
pub const SLOTS_PER_BUCKET: usize = 8;

/// The largest capacity: 2^24 buckets (the bucket indices take 24 bits of the flow hash).
pub const MAX_CAPACITY: usize = SLOTS_PER_BUCKET << 24;

/// The smallest number of buckets (two, so that a flow's two buckets differ).
const MIN_BUCKETS: usize = 2;

/// The default capacity: 2^20 slots, 32 MiB of IPv4 entries.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// How to size a [`Conntrack`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// Slots wanted. Rounded up to a power-of-two number of 8-slot buckets (so choose a power of
    /// two to get exactly it); at least 16, at most [`MAX_CAPACITY`]. Leave 10% headroom over
    /// the expected number of concurrent entries: evictions start at about 90-95% occupancy.
    pub capacity: usize,
    /// Idle timeouts per state.
    pub timeouts: Timeouts,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CAPACITY,
            timeouts: Timeouts::default(),
        }
    }
}

/// One tracked flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<K, V> {
    /// The flow key.
    key: K,
    /// Protocol state; selects the timeout.
    state: FlowState,
    /// When the flow was last seen (inserted, or hit by a lookup), in ms.
    last_seen_ms: u32,
    /// The pipeline's value.
    value: V,
}

impl<K, V> Entry<K, V> {
    /// A new entry, seen at `now_ms`.
    #[inline(always)]
    fn new(key: K, value: V, state: FlowState, now_ms: u32) -> Self {
        Entry {
            key,
            state,
            last_seen_ms: now_ms,
            value,
        }
    }

    /// The flow key.
    #[inline]
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The pipeline's value (e.g. backend and NAT information).
    #[inline]
    pub fn value(&self) -> &V {
        &self.value
    }

    /// The pipeline's value, to update in place.
    #[inline]
    pub fn value_mut(&mut self) -> &mut V {
        &mut self.value
    }

    /// The flow's state.
    #[inline]
    pub fn state(&self) -> FlowState {
        self.state
    }

    /// Changes the flow's state (and so its timeout from now on), e.g. from
    /// [`FlowState::TcpSynSent`] to [`FlowState::TcpEstablished`].
    #[inline]
    pub fn set_state(&mut self, state: FlowState) {
        self.state = state;
    }

    /// When the flow was last seen, in the table's milliseconds.
    #[inline]
    pub fn last_seen_ms(&self) -> u32 {
        self.last_seen_ms
    }

    /// Milliseconds since the flow was last seen (wrapping; negative if `now_ms` is earlier).
    #[inline]
    pub fn idle_ms(&self, now_ms: u32) -> i32 {
        now_ms.wrapping_sub(self.last_seen_ms) as i32
    }

    /// Milliseconds since the end of the epoch ([`EPOCH_MS`]) the flow was last seen in: what
    /// its timeout is measured against (negative while that epoch lasts).
    #[inline(always)]
    fn lapsed_ms(&self, now_ms: u32) -> i32 {
        now_ms.wrapping_sub(self.last_seen_ms | (EPOCH_MS - 1)) as i32
    }
}

/// The clock's grain for expiry, in milliseconds (a power of two): an entry's timeout runs
/// from the end of the epoch it was last seen in, so that entries last seen in the same epoch
/// in the same state expire at the same moment. Both halves of a NAT flow rely on it: a
/// packet refreshes the other half only when its own half was last seen in an earlier epoch
/// or changes state ([`same_epoch`]), not on every packet, and the halves still live and die
/// together. Timeouts are thus up to one epoch longer than configured.
pub const EPOCH_MS: u32 = 1024;

/// Whether `a` and `b` (milliseconds on one clock) fall in the same [`EPOCH_MS`].
#[inline(always)]
#[must_use]
pub fn same_epoch(a: u32, b: u32) -> bool {
    (a ^ b) < EPOCH_MS
}

/// What [`Conntrack::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "an evicted or expired value may hold resources (a NAT port) to release"]
pub enum Inserted<K, V> {
    /// Stored in a free slot.
    New,
    /// The key was present; its value, state and last-seen time were overwritten.
    Replaced {
        /// The previous value.
        old: V,
    },
    /// Both buckets were full; took the slot of an entry that had expired.
    Expired {
        /// The expired entry's key.
        key: K,
        /// The expired entry's value.
        value: V,
    },
    /// Both buckets were full of live entries, none of which could move; evicted the one
    /// of lowest rank ([`Rank`]), the least recently seen among equals.
    Evicted {
        /// The evicted entry's key.
        key: K,
        /// The evicted entry's value.
        value: V,
    },
    /// [`Insert::IfAbsent`] found the key present (live or expired): nothing changed.
    Kept,
    /// The new entry is embryonic ([`FlowState::TcpSynSent`]) and both its buckets were full
    /// of established flows, which a handshake never evicts: nothing was stored.
    Refused,
}

/// What an insert into two full buckets may evict, lowest first: embryonic flows (a SYN
/// flood's), then closing ones, then the rest (established TCP, UDP and other flows), each the
/// least recently seen first. A new embryonic flow evicts only the first two kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rank {
    /// Established TCP, UDP and other flows: evicted only for a flow that is not embryonic.
    Established = 0,
    /// TCP flows after FIN or RST.
    Closing = 1,
    /// TCP flows whose handshake has not completed.
    Embryonic = 2,
}

impl Rank {
    /// The rank of a flow in `state`.
    #[inline(always)]
    #[must_use]
    pub fn of(state: FlowState) -> Rank {
        match state {
            FlowState::TcpSynSent => Rank::Embryonic,
            FlowState::TcpClosing => Rank::Closing,
            _ => Rank::Established,
        }
    }
}

/// What [`Conntrack::insert`] does about an entry that already holds the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// Overwrite it ([`Inserted::Replaced`]).
    Replace,
    /// Keep it and store nothing ([`Inserted::Kept`]): a search and an insert in one.
    IfAbsent,
    /// There is none: a lookup of the key just missed and nothing was inserted since, so the
    /// search (two tag words and any tag matches) is skipped. Inserting a key that is present
    /// would store it twice (checked in debug builds).
    New,
}

impl<K, V> Inserted<K, V> {
    /// Whether a live entry was evicted to make room.
    #[must_use]
    pub fn evicted(&self) -> bool {
        matches!(self, Inserted::Evicted { .. })
    }
}

/// Counters of one table (single writer: the owning worker).
///
/// Invariant: `len == inserts - evictions - expiries - removals`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConntrackStats {
    /// Lookups that found a live entry.
    pub hits: u64,
    /// Lookups that found nothing, or an expired entry.
    pub misses: u64,
    /// Inserts that created an entry (not counting replacements).
    pub inserts: u64,
    /// Inserts that overwrote an entry with the same key.
    pub replacements: u64,
    /// Live entries evicted because both of a new flow's buckets were full.
    pub evictions: u64,
    /// Of `evictions`, those of established TCP, UDP or other flows ([`Rank::Established`]).
    pub evictions_established: u64,
    /// Of `evictions`, those of embryonic flows ([`Rank::Embryonic`]).
    pub evictions_embryonic: u64,
    /// Embryonic inserts refused ([`Inserted::Refused`]): both buckets held only established
    /// flows.
    pub refusals: u64,
    /// Expired entries freed (by a lookup, an insert or [`Conntrack::expire`]).
    pub expiries: u64,
    /// Entries removed by [`Conntrack::remove`].
    pub removals: u64,
    /// Entries moved to their other bucket to make room for a new one (one cuckoo step).
    pub relocations: u64,
}

/// A per-worker connection table: fixed capacity, two-choice buckets of 8 slots with 16-bit tags.
/// See the [module docs](self).
#[derive(Debug)]
pub struct Conntrack<K, V> {
    /// Eight 16-bit tags per bucket; 0 means the slot is free. (Huge pages: see below.)
    tags: HugeSlice<u128>,
    /// `SLOTS_PER_BUCKET` slots per bucket; `Some` exactly where the tag is non-zero.
    slots: HugeSlice<Slot<K, V>>,
    /// Number of buckets - 1.
    mask: usize,
    /// Timeouts indexed by `FlowState as usize`.
    timeouts: [u32; 5],
    /// Occupied slots.
    len: usize,
    /// The next bucket [`Conntrack::expire`] scans.
    cursor: usize,
    /// Counters.
    stats: ConntrackStats,
    /// Calls that may have changed the table (the invariant checks skip a table that did not
    /// change since they last passed it). Fuzzer and tests only.
    #[cfg(any(test, feature = "check"))]
    epoch: u64,
}

/// A slot, aligned to 32 bytes so that an IPv4 entry never straddles two cache lines (a
/// lookup then touches exactly one line of entries) and an IPv6 entry fills one line.
#[derive(Clone, Copy, Debug)]
#[repr(align(32))]
struct Slot<K, V>(Option<Entry<K, V>>);

/// The flag bit of a stored tag: set while the entry is embryonic ([`Rank::Embryonic`]) as of
/// its insert or its first lookup in the current epoch, so that an insert into two full buckets finds an embryonic
/// victim from the tags alone ([`Conntrack::insert`]). The other 15 bits are the tag proper.
const EMBRYONIC: u16 = 0x8000;
/// The bits of a stored tag that come from the flow hash.
const TAG_BITS: u16 = !EMBRYONIC;
/// Lanes of a flow's two buckets.
const PAIR_LANES: u32 = 2 * SLOTS_PER_BUCKET as u32;

/// Slot of lane `lane` (0..16) of the bucket pair `b1`, `b2`: lane `lane % 8` of
/// `[b1, b2][lane / 8]`.
#[inline(always)]
fn pair_slot(b1: usize, b2: usize, lane: u32) -> usize {
    let lane = lane as usize;
    let b = if lane < SLOTS_PER_BUCKET { b1 } else { b2 };
    b * SLOTS_PER_BUCKET + lane % SLOTS_PER_BUCKET
}

/// The lanes (bit `i`: slot `i` of the bucket) of tag word `w` holding `tag` (a [`tag_of`],
/// the flag bit ignored). One SSE2 AND and compare on x86-64 ([`dpdk_sys::lanes_eq_masked`]).
#[inline(always)]
fn lanes(w: &u128, tag: u16) -> u32 {
    dpdk_sys::lanes_eq_masked(w, TAG_BITS, tag)
}

/// The free lanes of tag word `w` (stored tag 0).
#[inline(always)]
fn free_lanes(w: &u128) -> u32 {
    dpdk_sys::lanes_eq(w, 0)
}

/// The lanes of tag word `w` whose entry is flagged [`EMBRYONIC`].
#[inline(always)]
fn embryonic_lanes(w: &u128) -> u32 {
    dpdk_sys::lanes_eq_masked(w, EMBRYONIC, EMBRYONIC)
}

/// The tag stored for an entry with tag `tag` in `state`: the tag, flagged [`EMBRYONIC`] if
/// the state is.
#[inline(always)]
fn stored_tag(tag: u16, state: FlowState) -> u16 {
    if Rank::of(state) == Rank::Embryonic {
        tag | EMBRYONIC
    } else {
        tag
    }
}

/// The number of lanes set in a lane mask.
#[inline(always)]
fn count_lanes(mask: u32) -> u32 {
    dpdk_sys::lane_count(mask)
}

/// The lowest lane (slot within its bucket) set in a non-zero lane mask.
#[inline(always)]
fn first_lane(mask: u32) -> usize {
    mask.trailing_zeros() as usize
}

/// The tag of a flow hash: 15 of its top bits, with 0 (the "free" mark) moved to 1.
#[inline(always)]
fn tag_of(hash: u64) -> u16 {
    let t = (hash >> 48) as u16 & TAG_BITS;
    t + u16::from(t == 0)
}

/// Whether `e` has expired at `now_ms` under `timeouts`.
#[inline(always)]
fn is_expired<K, V>(e: &Entry<K, V>, now_ms: u32, timeouts: &[u32; 5]) -> bool {
    e.lapsed_ms(now_ms) >= timeouts[e.state as usize] as i32
}

impl<K: FlowKey, V: Copy> Conntrack<K, V> {
    /// Allocates the whole table, writing every page so that no page fault happens later.
    ///
    /// # Panics
    /// If `cfg.capacity` exceeds [`MAX_CAPACITY`] (a configuration error, caught at start-up).
    #[must_use]
    pub fn new(cfg: &ConntrackConfig) -> Self {
        assert!(
            cfg.capacity <= MAX_CAPACITY,
            "conntrack capacity {} is above the maximum {MAX_CAPACITY}; lower it",
            cfg.capacity
        );
        let buckets = cfg
            .capacity
            .div_ceil(SLOTS_PER_BUCKET)
            .next_power_of_two()
            .max(MIN_BUCKETS);
        // HugeSlice writes every element, so the first packets take no page faults.
        Self {
            tags: HugeSlice::new(buckets, 0u128),
            slots: HugeSlice::new(buckets * SLOTS_PER_BUCKET, Slot(None)),
            mask: buckets - 1,
            timeouts: cfg.timeouts.as_array(),
            len: 0,
            cursor: 0,
            stats: ConntrackStats::default(),
            #[cfg(any(test, feature = "check"))]
            epoch: 0,
        }
    }

    /// Counts a call that may change the table ([`Conntrack::epoch`]).
    #[inline(always)]
    fn touch(&mut self) {
        #[cfg(any(test, feature = "check"))]
        {
            self.epoch = self.epoch.wrapping_add(1);
        }
    }

    /// The other bucket of an entry with tag `tag` in bucket `b`: `b ^ (odd number derived
    /// from the tag)`. Depends on the tag alone, so an entry can be moved to its other bucket
    /// without its key being hashed again, and never equals `b`.
    #[inline(always)]
    fn alt(&self, b: usize, tag: u16) -> usize {
        let spread = (u64::from(tag).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize;
        b ^ ((spread & self.mask) | 1)
    }

    /// The two buckets of a flow hash: `b1` from its low 24 bits, `b2 = alt(b1, tag)`.
    #[inline(always)]
    fn buckets(&self, hash: u64) -> (usize, usize) {
        let b1 = hash as usize & self.mask;
        (b1, self.alt(b1, tag_of(hash)))
    }

    /// The slot of `key` in bucket `b`, if there.
    #[inline(always)]
    fn find_in(&self, b: usize, tag: u16, key: &K) -> Option<usize> {
        let mut m = lanes(&self.tags[b], tag);
        while m != 0 {
            let i = b * SLOTS_PER_BUCKET + first_lane(m);
            if let Some(e) = &self.slots[i].0 {
                if e.key == *key {
                    return Some(i);
                }
            }
            m &= m - 1;
        }
        None
    }

    /// The slot of `key`, if present (expired or not).
    #[inline(always)]
    fn find(&self, key: &K, hash: u64) -> Option<usize> {
        let tag = tag_of(hash);
        let (b1, b2) = self.buckets(hash);
        // A plain match: `Option::or_else` was left as a call on the miss path.
        match self.find_in(b1, tag, key) {
            Some(i) => Some(i),
            None => self.find_in(b2, tag, key),
        }
    }

    /// Sets the tag of slot `i`.
    #[inline(always)]
    fn set_tag(&mut self, i: usize, tag: u16) {
        dpdk_sys::set_lane(
            &mut self.tags[i / SLOTS_PER_BUCKET],
            i % SLOTS_PER_BUCKET,
            tag,
        );
    }

    /// Frees slot `i`, returning what it held.
    #[inline]
    fn release(&mut self, i: usize) -> Option<Entry<K, V>> {
        let e = self.slots[i].0.take();
        if e.is_some() {
            self.set_tag(i, 0);
            self.len -= 1;
        }
        e
    }

    /// Finds the live entry of `key` (with `hash`, its flow hash) and marks it seen at `now_ms`.
    ///
    /// `hint` is the slot the entry probably sits in (what [`Conntrack::prefetch_entry`]
    /// returned for it earlier in the burst), or [`NO_SLOT`]: if that slot holds `key` the
    /// search is skipped, otherwise it is done as usual; the result is the same either way.
    /// An entry found expired is freed, handed to `on_expired` first (so the caller can
    /// account for the flow that ended), and reported as a miss (counted in `expiries`).
    #[inline(always)]
    pub fn lookup(
        &mut self,
        key: &K,
        hash: u64,
        hint: u32,
        now_ms: u32,
        on_expired: impl FnOnce(&Entry<K, V>),
    ) -> Option<&mut Entry<K, V>> {
        self.lookup_epoch(key, hash, hint, now_ms, on_expired)
            .map(|(e, _)| e)
    }

    /// [`Conntrack::lookup`], which also says whether the entry was last seen in an earlier
    /// epoch than `now_ms` ([`same_epoch`]): the first time it is seen in this one.
    #[inline(always)]
    pub fn lookup_epoch(
        &mut self,
        key: &K,
        hash: u64,
        hint: u32,
        now_ms: u32,
        on_expired: impl FnOnce(&Entry<K, V>),
    ) -> Option<(&mut Entry<K, V>, bool)> {
        self.touch();
        let at_hint = match self.slots.get(hint as usize) {
            Some(Slot(Some(e))) => e.key == *key,
            _ => false,
        };
        let found = if at_hint {
            Some(hint as usize)
        } else {
            self.find(key, hash)
        };
        let Some(i) = found else {
            self.stats.misses += 1;
            return None;
        };
        let (expired, first) = match &self.slots[i].0 {
            Some(e) => (
                is_expired(e, now_ms, &self.timeouts),
                !same_epoch(e.last_seen_ms, now_ms),
            ),
            None => (true, false),
        };
        if expired {
            if let Some(e) = self.release(i) {
                on_expired(&e);
            }
            self.stats.misses += 1;
            self.stats.expiries += 1;
            return None;
        }
        // The caller may have changed the state since (a handshake completed): the flag
        // follows it at the flow's first packet of each epoch, so a stale flag lasts at most
        // about an epoch, and an established packet pays for it once per epoch, not each time.
        if first {
            self.sync_flag(i);
        }
        let e = self.slots[i].0.as_mut()?;
        e.last_seen_ms = now_ms;
        self.stats.hits += 1;
        Some((e, first))
    }

    /// Whether `key` has an entry, expired or not; changes nothing (no counters, no refresh).
    fn contains(&self, key: &K, hash: u64) -> bool {
        self.find(key, hash).is_some()
    }

    /// The entry of `key`, live or expired, without refreshing it or counting a hit or miss
    /// (diagnostics, off the hot path).
    #[inline]
    pub fn get(&self, key: &K, hash: u64) -> Option<&Entry<K, V>> {
        self.find(key, hash).and_then(|i| self.slots[i].0.as_ref())
    }

    /// Stores `key -> value` in state `state`, seen at `now_ms`; `mode` says what to do about
    /// an entry already holding `key` ([`Insert`]).
    ///
    /// A new entry takes a free slot in the first bucket while it has three free slots, else
    /// in the less loaded of the two. If both are full: an embryonic entry flagged in their
    /// tags (expired or not; see the module's "Eviction"), else the slot of an expired entry
    /// in either; failing that, one of their entries moves to its other bucket to make room;
    /// failing that, the flagged embryonic entry or the lowest-ranked ([`Rank`]) of the two
    /// buckets' 16 entries is evicted, except that an embryonic entry never evicts an
    /// established one: it is then refused
    /// ([`Inserted::Refused`]). Never allocates; the returned [`Inserted`] says which happened
    /// and hands back any value displaced.
    #[inline(always)]
    pub fn insert(
        &mut self,
        key: K,
        hash: u64,
        value: V,
        state: FlowState,
        now_ms: u32,
        mode: Insert,
    ) -> Inserted<K, V> {
        self.insert_at(key, hash, value, state, now_ms, mode, NO_SLOT)
    }

    /// [`Conntrack::insert`], where `at` is the slot [`Conntrack::prefetch_insert`] returned
    /// for `hash` earlier in the burst (or [`NO_SLOT`]): a new entry takes that slot if it is
    /// still free (and one of the key's), which spares the insert its choice of bucket and
    /// slot; otherwise it is placed as by `insert`. (Between the two calls only the burst's
    /// earlier packets change the table, and rarely these buckets.)
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn insert_at(
        &mut self,
        key: K,
        hash: u64,
        value: V,
        state: FlowState,
        now_ms: u32,
        mode: Insert,
        at: u32,
    ) -> Inserted<K, V> {
        self.touch();
        let entry = Entry::new(key, value, state, now_ms);
        match mode {
            Insert::Replace => {
                if let Some(i) = self.find(&key, hash) {
                    if let Some(old) = self.slots[i].0.replace(entry) {
                        self.set_tag(i, stored_tag(tag_of(hash), state));
                        self.stats.replacements += 1;
                        return Inserted::Replaced { old: old.value };
                    }
                }
            }
            Insert::IfAbsent => {
                if self.contains(&key, hash) {
                    return Inserted::Kept;
                }
            }
            Insert::New => {
                debug_assert!(!self.contains(&key, hash), "Insert::New of a present key");
            }
        }
        let (b1, b2) = self.buckets(hash);
        let at = at as usize;
        let b = at / SLOTS_PER_BUCKET;
        // NO_SLOT names no bucket of the table.
        let tag = stored_tag(tag_of(hash), state);
        if (b == b1 || b == b2) && free_lanes(&self.tags[b]) & (1 << (at % SLOTS_PER_BUCKET)) != 0 {
            return self.place(at, tag, entry);
        }
        self.insert_absent(b1, b2, tag, entry, now_ms)
    }

    /// Stores `entry` in the free slot `i`.
    #[inline(always)]
    fn place(&mut self, i: usize, tag: u16, entry: Entry<K, V>) -> Inserted<K, V> {
        self.slots[i].0 = Some(entry);
        self.set_tag(i, tag);
        self.len += 1;
        self.stats.inserts += 1;
        Inserted::New
    }

    /// Stores `entry`, absent from the table, in its buckets `b1`/`b2`, under the stored tag
    /// `tag` ([`stored_tag`]).
    #[inline(always)]
    fn insert_absent(
        &mut self,
        b1: usize,
        b2: usize,
        tag: u16,
        entry: Entry<K, V>,
        now_ms: u32,
    ) -> Inserted<K, V> {
        let (b, free) = self.insert_bucket(b1, b2);
        if free != 0 {
            return self.place(b * SLOTS_PER_BUCKET + first_lane(free), tag, entry);
        }
        self.insert_full(b1, b2, tag, entry, now_ms)
    }

    /// The bucket a new flow with buckets `b1`, `b2` goes to, and its free lanes (0: both
    /// full). The first bucket while it has three free slots or more (DPDK's rte_hash also
    /// fills the primary bucket first), else the less loaded of the two (the first on a tie):
    /// most flows then live in their first bucket, where a lookup looks first, while a nearly
    /// full first bucket keeps room for the flows whose second bucket it is.
    #[inline(always)]
    fn insert_bucket(&self, b1: usize, b2: usize) -> (usize, u32) {
        let free1 = free_lanes(&self.tags[b1]);
        let n1 = count_lanes(free1);
        if n1 >= 3 {
            return (b1, free1);
        }
        let free2 = free_lanes(&self.tags[b2]);
        if n1 >= count_lanes(free2) {
            (b1, free1)
        } else {
            (b2, free2)
        }
    }

    /// Stores `entry` in the occupied slot `i`, returning the entry it displaces.
    #[inline]
    fn put(&mut self, i: usize, tag: u16, entry: Entry<K, V>) -> Entry<K, V> {
        self.set_tag(i, tag);
        self.stats.inserts += 1;
        // Occupied by the callers' contract; a free slot would return the new entry itself.
        self.slots[i].0.replace(entry).unwrap_or(entry)
    }

    /// Removes the entry of `key`, live or expired; whether there was one.
    #[inline]
    pub fn remove(&mut self, key: &K, hash: u64) -> bool {
        self.touch();
        match self.find(key, hash) {
            Some(i) => {
                self.release(i);
                self.stats.removals += 1;
                true
            }
            None => false,
        }
    }

    /// Scans the next `max_buckets` buckets (8 slots each) from an internal cursor, wrapping
    /// around, and frees the entries that have expired at `now_ms`, handing each to
    /// `on_expired` first (to account for a flow that ended, say); returns how many.
    ///
    /// Call it every poll iteration with a small budget: a full sweep takes
    /// `capacity / 8 / max_buckets` calls.
    pub fn expire(
        &mut self,
        now_ms: u32,
        max_buckets: usize,
        mut on_expired: impl FnMut(&Entry<K, V>),
    ) -> usize {
        self.touch();
        let mut freed = 0;
        for _ in 0..max_buckets.min(self.mask + 1) {
            let b = self.cursor;
            self.cursor = (b + 1) & self.mask;
            let mut used = !free_lanes(&self.tags[b]) & 0xff;
            while used != 0 {
                let i = b * SLOTS_PER_BUCKET + first_lane(used);
                used &= used - 1;
                if let Some(e) = &self.slots[i].0 {
                    if is_expired(e, now_ms, &self.timeouts) {
                        on_expired(e);
                        self.release(i);
                        freed += 1;
                    }
                }
            }
        }
        self.stats.expiries += freed as u64;
        freed
    }

    /// First pass of a burst: prefetches (`prefetcht0`) the tag words of `hash`'s two
    /// buckets, so that the second pass finds them in cache. Nothing is loaded, so the core
    /// never stalls on it. (Both words, though most flows live in their first bucket: fetching
    /// the second only once the first showed no match costs the flows that live there a
    /// dependent round trip to memory, measured worse.)
    #[inline(always)]
    pub fn prefetch(&self, hash: u64) {
        let (b1, b2) = self.buckets(hash);
        dpdk_sys::prefetch(&self.tags[b1]);
        dpdk_sys::prefetch(&self.tags[b2]);
    }

    /// Second pass, once both buckets' tags are in cache: prefetches the entry a hit on `hash`
    /// will compare (the first tag match, in the first bucket, else in the second) and returns
    /// its slot, the hint for [`Conntrack::lookup`]; [`NO_SLOT`], prefetching nothing, on a
    /// miss.
    #[inline(always)]
    pub fn prefetch_entry(&self, hash: u64) -> u32 {
        match self.first_match(hash) {
            Some(i) => {
                dpdk_sys::prefetch(&self.slots[i].0);
                i as u32
            }
            None => NO_SLOT,
        }
    }

    /// Second pass, for a flow about to be inserted (a SYN): prefetches the slot the insert
    /// will fill, or, if both buckets are full, the entry of the flagged embryonic victim the
    /// insert will take, or with none flagged each cache line of entries of both buckets
    /// (eight for IPv4), which the insert scans for an expired entry or a victim. The slot,
    /// for [`Conntrack::insert_at`]; [`NO_SLOT`] if both buckets were full.
    #[inline(always)]
    pub fn prefetch_insert(&self, hash: u64) -> u32 {
        let (b1, b2) = self.buckets(hash);
        let (b, free) = self.insert_bucket(b1, b2);
        if free != 0 {
            let i = b * SLOTS_PER_BUCKET + first_lane(free);
            dpdk_sys::prefetch(&self.slots[i].0);
            i as u32
        } else {
            // An embryonic victim found from the flags: its entry is the one line the insert
            // reads (when it is still embryonic, as it is unless a lookup is overdue).
            let (order, turn) = self.flag_order(b1, b2, tag_of(hash));
            if order != 0 {
                let i = pair_slot(b1, b2, (order.trailing_zeros() + turn) % PAIR_LANES);
                dpdk_sys::prefetch(&self.slots[i].0);
                return NO_SLOT;
            }
            let per_line = (64 / std::mem::size_of::<Slot<K, V>>()).max(1);
            for b in [b1, b2] {
                for i in (b * SLOTS_PER_BUCKET..(b + 1) * SLOTS_PER_BUCKET).step_by(per_line) {
                    dpdk_sys::prefetch(&self.slots[i].0);
                }
            }
            NO_SLOT
        }
    }

    /// The first slot whose tag matches `hash`, in its first bucket, else in its second.
    #[inline(always)]
    fn first_match(&self, hash: u64) -> Option<usize> {
        let tag = tag_of(hash);
        let (b1, b2) = self.buckets(hash);
        let m1 = lanes(&self.tags[b1], tag);
        let (b, m) = if m1 != 0 {
            (b1, m1)
        } else {
            (b2, lanes(&self.tags[b2], tag))
        };
        (m != 0).then(|| b * SLOTS_PER_BUCKET + first_lane(m))
    }

    /// Frees every slot and zeroes the counters and the expiry cursor: the table as
    /// [`Conntrack::new`] left it, without allocating (the fuzzer reuses its tables across
    /// inputs). Touches every slot: off the packet path.
    pub fn clear(&mut self) {
        self.touch();
        self.tags.fill(0);
        for s in self.slots.iter_mut() {
            s.0 = None;
        }
        self.len = 0;
        self.cursor = 0;
        self.stats = ConntrackStats::default();
    }

    /// Checks the occupancy counter against the entries held, and the counters against each
    /// other (`len == inserts - evictions - expiries - removals`): the fuzzer's invariant.
    /// Every slot is looked at once: each holds an entry exactly where its tag is set.
    #[cfg(any(test, feature = "check"))]
    pub fn check_occupancy(&self) -> Result<(), String> {
        let mut held = 0;
        for (b, t) in self.tags.iter().enumerate() {
            let tagged = !free_lanes(t) & 0xff;
            let slots = &self.slots[b * SLOTS_PER_BUCKET..(b + 1) * SLOTS_PER_BUCKET];
            let filled = slots
                .iter()
                .enumerate()
                .fold(0u32, |m, (i, s)| m | u32::from(s.0.is_some()) << i);
            if filled != tagged {
                return Err(format!(
                    "bucket {b}: slots {filled:#010b} hold entries, tags {tagged:#010b} are set"
                ));
            }
            held += count_lanes(filled) as usize;
        }
        if held != self.len {
            return Err(format!("len {} but {held} entries held", self.len));
        }
        let s = &self.stats;
        let sum = s
            .inserts
            .wrapping_sub(s.evictions)
            .wrapping_sub(s.expiries)
            .wrapping_sub(s.removals);
        if sum != held as u64 {
            return Err(format!(
                "inserts - evictions - expiries - removals = {sum}, {held} entries held ({s:?})"
            ));
        }
        Ok(())
    }

    /// Everything the table holds (tags, slots, counters, expiry cursor), written out: two
    /// tables with the same dump behave alike. Leaves out [`Conntrack::epoch`], the checks'
    /// bookkeeping. For the fuzzer's proof that a cleared table is a new one.
    #[cfg(any(test, feature = "check"))]
    pub fn dump(&self) -> String
    where
        K: std::fmt::Debug,
        V: std::fmt::Debug,
    {
        format!(
            "tags {:?} slots {:?} mask {} timeouts {:?} len {} cursor {} {:?}",
            &self.tags[..],
            &self.slots[..],
            self.mask,
            self.timeouts,
            self.len,
            self.cursor,
            self.stats
        )
    }

    /// How many calls that may change the table ([`Conntrack::lookup`], `insert`, `remove`,
    /// `expire`, `clear`: every `&mut self` method) were made: the table is the same as when
    /// this last had the same value. The fields are private, so nothing else changes it.
    #[cfg(any(test, feature = "check"))]
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The entries held, found through the tags (a free bucket costs one compare, not eight):
    /// the invariant checks' scan. Those of [`Conntrack::entries_in`] once
    /// [`Conntrack::check_occupancy`] passed.
    #[cfg(any(test, feature = "check"))]
    pub fn occupied(&self) -> impl Iterator<Item = &Entry<K, V>> + '_ {
        self.tags.iter().enumerate().flat_map(move |(b, t)| {
            let mut m = !free_lanes(t) & 0xff;
            std::iter::from_fn(move || {
                (m != 0).then(|| {
                    let i = first_lane(m);
                    m &= m - 1;
                    b * SLOTS_PER_BUCKET + i
                })
            })
            .filter_map(move |i| self.slots[i].0.as_ref())
        })
    }

    /// Occupied slots (live entries and expired ones not yet freed).
    #[inline]
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no slot is occupied.
    #[inline]
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots in the table (the configured capacity rounded up).
    #[inline]
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The idle timeout of `state` in this table, in milliseconds.
    #[inline]
    #[must_use]
    pub fn timeout_ms(&self, state: FlowState) -> u32 {
        self.timeouts[state as usize]
    }

    /// Milliseconds `e` has left before it expires at `now_ms` (0: expired).
    #[must_use]
    pub fn remaining_ms(&self, e: &Entry<K, V>, now_ms: u32) -> u32 {
        let left = i64::from(self.timeout_ms(e.state)) - i64::from(e.lapsed_ms(now_ms));
        left.clamp(0, i64::from(i32::MAX)) as u32
    }

    /// The counters.
    #[inline]
    #[must_use]
    pub fn stats(&self) -> &ConntrackStats {
        &self.stats
    }

    /// Memory held by the table, in bytes: tags, slots and the struct itself.
    #[must_use]
    pub fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.tags)
            + std::mem::size_of_val(&*self.slots)
            + std::mem::size_of::<Self>()
    }

    /// Bytes per slot: the slot plus its 2-byte tag.
    #[must_use]
    pub fn bytes_per_slot() -> usize {
        std::mem::size_of::<Slot<K, V>>() + 2
    }

    /// The occupied entries, expired or not, among slots `start..start + count` (clamped to
    /// the table), in table order: lets an admin scan walk the table a bounded piece at a time.
    pub fn entries_in(
        &self,
        start: usize,
        count: usize,
    ) -> impl Iterator<Item = &Entry<K, V>> + '_ {
        let lo = start.min(self.slots.len());
        let hi = start.saturating_add(count).min(self.slots.len());
        self.slots[lo..hi].iter().filter_map(|s| s.0.as_ref())
    }
}
