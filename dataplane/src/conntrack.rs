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
//! - `tags`: one `u128` per bucket holding eight 16-bit tags (the top 16 bits of the flow hash,
//!   0 meaning "free"). Four buckets share a cache line. A lookup compares all eight tags of a
//!   bucket at once (one SSE2 compare on x86-64, `dpdk_sys::lanes_eq`) and reads a full key
//!   only on a tag match, so a miss touches no entry at all (a false tag match, which costs
//!   one entry read, happens in about one miss in 4096: 16 slots, 16-bit tags).
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
//! miss; an insert into two full buckets reuses an expired slot of its first bucket before it
//! evicts a live flow;
//! and [`Conntrack::expire`] scans a bounded number of buckets from a cursor, so a worker can
//! call it once per poll iteration at a cost it chooses.
//!
//! **Eviction**: when both buckets are full, nothing in the first has expired and no entry can
//! move, the entry with the oldest last-seen time among the first bucket's 8 is evicted (four
//! cache lines, which the burst prefetch can fetch ahead for a SYN; scanning all 16 would
//! double the misses of every insert during a SYN flood) and handed back in
//! [`Inserted::Evicted`], so the caller can release what the value stood for (a NAT port, a
//! reverse entry).
//!
//! **Prefetch.** This crate has no FFI or raw-pointer code (it forbids it), so it has no prefetch
//! instruction of its own; three ways
//! are offered to get a burst's cache misses overlapped:
//!
//! - [`Conntrack::prefetch_burst`] (recommended): plain loads, arranged so that the core keeps
//!   as many misses in flight as it can: the tag words of the whole burst first, then the
//!   candidate entry of every flow from a precomputed list of slot indices. Demand loads block
//!   retirement, so the loops are kept short; this is what makes them overlap.
//! - [`Conntrack::prefetch`]: the two tag words of one flow through [`std::hint::black_box`].
//!   Helps misses a little; does nothing for hits, whose cost is the entry.
//! - [`Conntrack::prefetch_with`] then [`Conntrack::prefetch_entry_with`] (two passes over the
//!   burst): hand the tag words, then the candidate slot, to a caller-supplied function, e.g.
//!   `dpdk_sys::prefetch` (`prefetcht0`; a prefetch never faults, so that wrapper is safe).
//!   The fastest on the development VM: hits take about two thirds of the time they take with
//!   `prefetch_burst` (docs/dataplane-tables.md).

use dpdk_sys::HugeSlice;

use crate::hash::{hash_v4_5tuple, hash_v6_5tuple};

/// "No slot": what [`Conntrack::prefetch_entry_slot`] returns on a miss.
pub const NO_SLOT: u32 = u32::MAX;

/// Slots per bucket: eight, so that the bucket's tags are one `u128`.
pub const SLOTS_PER_BUCKET: usize = 8;

/// The largest capacity: 2^24 buckets (the bucket indices take 24 bits of the flow hash).
pub const MAX_CAPACITY: usize = SLOTS_PER_BUCKET << 24;

/// The most hashes [`Conntrack::prefetch_burst`] handles in one step (a worker's burst).
pub const PREFETCH_BURST: usize = 32;

/// The smallest number of buckets (two, so that a flow's two buckets differ).
const MIN_BUCKETS: usize = 2;

/// The default capacity: 2^20 slots, 32 MiB of IPv4 entries.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// A key the table can hold: a small `Copy` value compared with `==`.
///
/// The table itself takes the hash as an argument, so that the pipeline hashes each packet once
/// and can reuse the value (e.g. for Maglev); `flow_hash` is the conventional way to compute it.
pub trait FlowKey: Copy + Eq {
    /// The key's stable hash under `seed` (see [`crate::hash`]).
    fn flow_hash(&self, seed: u64) -> u64;
}

/// An IPv4 flow: 13 bytes, packed (alignment 1), so that an entry with a 14-byte value
/// still fits a 32-byte slot. Addresses are as on the wire; ports are numbers (host order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C, packed)]
pub struct V4Key {
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// Source port (or ICMP identifier; 0 when the protocol has none).
    pub sport: u16,
    /// Destination port (0 when the protocol has none).
    pub dport: u16,
    /// IP protocol number (6 TCP, 17 UDP, ...).
    pub proto: u8,
}

impl FlowKey for V4Key {
    #[inline]
    fn flow_hash(&self, seed: u64) -> u64 {
        hash_v4_5tuple(seed, self.src, self.dst, self.sport, self.dport, self.proto)
    }
}

/// An IPv6 flow: 37 bytes, packed (alignment 1). Addresses are as on the wire; ports are
/// numbers (host order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C, packed)]
pub struct V6Key {
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port (or ICMPv6 identifier; 0 when the protocol has none).
    pub sport: u16,
    /// Destination port (0 when the protocol has none).
    pub dport: u16,
    /// Next-header protocol number (6 TCP, 17 UDP, ...).
    pub proto: u8,
}

impl FlowKey for V6Key {
    #[inline]
    fn flow_hash(&self, seed: u64) -> u64 {
        hash_v6_5tuple(seed, self.src, self.dst, self.sport, self.dport, self.proto)
    }
}

/// What the table knows of a flow's protocol state; selects its idle timeout in [`Timeouts`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowState {
    /// TCP, SYN seen, handshake not complete.
    TcpSynSent = 0,
    /// TCP, handshake complete.
    TcpEstablished = 1,
    /// TCP, FIN or RST seen.
    TcpClosing = 2,
    /// UDP.
    Udp = 3,
    /// Any other protocol (ICMP echo, ...).
    Other = 4,
}

impl FlowState {
    /// Every state, in `repr` order.
    pub const ALL: [FlowState; 5] = [
        FlowState::TcpSynSent,
        FlowState::TcpEstablished,
        FlowState::TcpClosing,
        FlowState::Udp,
        FlowState::Other,
    ];

    /// A stable lower-case name for the admin API and metrics labels.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            FlowState::TcpSynSent => "tcp_syn_sent",
            FlowState::TcpEstablished => "tcp_established",
            FlowState::TcpClosing => "tcp_closing",
            FlowState::Udp => "udp",
            FlowState::Other => "other",
        }
    }
}

/// Idle timeouts per [`FlowState`], in milliseconds. An entry expires once it has not been seen
/// for its state's timeout (0: at once). Values above `i32::MAX` are clamped to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// [`FlowState::TcpSynSent`]; default 5 s (a handshake that takes longer is retried by the
    /// client with a new SYN, which re-creates the entry; short keeps SYN floods from filling
    /// the table).
    pub tcp_syn_ms: u32,
    /// [`FlowState::TcpEstablished`]; default 300 s (idle established connections; longer-lived
    /// idle connections should use keepalives, as behind any cloud load balancer).
    pub tcp_established_ms: u32,
    /// [`FlowState::TcpClosing`]; default 10 s (lets the last FIN/ACK exchange and a few
    /// retransmissions through).
    pub tcp_closing_ms: u32,
    /// [`FlowState::Udp`]; default 30 s (as common NAT and conntrack defaults).
    pub udp_ms: u32,
    /// [`FlowState::Other`]; default 30 s.
    pub other_ms: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn_ms: 5_000,
            tcp_established_ms: 300_000,
            tcp_closing_ms: 10_000,
            udp_ms: 30_000,
            other_ms: 30_000,
        }
    }
}

impl Timeouts {
    /// The timeout of `state`, in milliseconds.
    #[must_use]
    pub fn get(&self, state: FlowState) -> u32 {
        self.as_array()[state as usize]
    }

    /// The timeouts indexed by `FlowState as usize`, clamped to `i32::MAX`.
    fn as_array(&self) -> [u32; 5] {
        [
            self.tcp_syn_ms,
            self.tcp_established_ms,
            self.tcp_closing_ms,
            self.udp_ms,
            self.other_ms,
        ]
        .map(|t| t.min(i32::MAX as u32))
    }
}

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
    /// Both buckets were full of live entries, none of which could move; evicted the least
    /// recently seen one.
    Evicted {
        /// The evicted entry's key.
        key: K,
        /// The evicted entry's value.
        value: V,
    },
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
}

/// A slot, aligned to 32 bytes so that an IPv4 entry never straddles two cache lines (a
/// lookup then touches exactly one line of entries) and an IPv6 entry fills one line.
#[derive(Clone, Copy, Debug)]
#[repr(align(32))]
struct Slot<K, V>(Option<Entry<K, V>>);

/// The lanes (bit `i`: slot `i` of the bucket) of tag word `w` holding `tag`; with tag 0, the
/// free slots. One SSE2 compare on x86-64 ([`dpdk_sys::lanes_eq`]).
#[inline(always)]
fn lanes(w: &u128, tag: u16) -> u32 {
    dpdk_sys::lanes_eq(w, tag)
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

/// The tag of a flow hash: its top 16 bits, with 0 (the "free" mark) moved to 1.
#[inline(always)]
fn tag_of(hash: u64) -> u16 {
    let t = (hash >> 48) as u16;
    t + u16::from(t == 0)
}

/// Whether `e` has expired at `now_ms` under `timeouts`.
#[inline(always)]
fn is_expired<K, V>(e: &Entry<K, V>, now_ms: u32, timeouts: &[u32; 5]) -> bool {
    e.idle_ms(now_ms) >= timeouts[e.state as usize] as i32
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
    /// An entry found expired is freed and reported as a miss (and counted in `expiries`).
    #[inline]
    pub fn lookup(&mut self, key: &K, hash: u64, now_ms: u32) -> Option<&mut Entry<K, V>> {
        self.lookup_with(key, hash, now_ms, |_| {})
    }

    /// [`Conntrack::lookup`], calling `on_expired` with an entry found expired before it is
    /// freed (so the caller can account for the flow that ended).
    #[inline]
    pub fn lookup_with(
        &mut self,
        key: &K,
        hash: u64,
        now_ms: u32,
        on_expired: impl FnOnce(&Entry<K, V>),
    ) -> Option<&mut Entry<K, V>> {
        let found = self.find(key, hash);
        self.lookup_found(found, now_ms, on_expired)
    }

    /// [`Conntrack::lookup_with`] where the entry of `key` is probably in slot `hint` (what
    /// [`Conntrack::prefetch_entry_slot`] returned for it earlier in the burst): if that slot
    /// holds `key` the search is skipped, otherwise (the entry moved, or `hint` is
    /// [`NO_SLOT`]) it is done as usual. The same result either way.
    #[inline(always)]
    pub fn lookup_hinted_with(
        &mut self,
        key: &K,
        hash: u64,
        hint: u32,
        now_ms: u32,
        on_expired: impl FnOnce(&Entry<K, V>),
    ) -> Option<&mut Entry<K, V>> {
        let at_hint = match self.slots.get(hint as usize) {
            Some(Slot(Some(e))) => e.key == *key,
            _ => false,
        };
        let found = if at_hint {
            Some(hint as usize)
        } else {
            self.find(key, hash)
        };
        self.lookup_found(found, now_ms, on_expired)
    }

    /// The rest of a lookup once the key's slot is known (`None`: absent).
    #[inline(always)]
    fn lookup_found(
        &mut self,
        found: Option<usize>,
        now_ms: u32,
        on_expired: impl FnOnce(&Entry<K, V>),
    ) -> Option<&mut Entry<K, V>> {
        let Some(i) = found else {
            self.stats.misses += 1;
            return None;
        };
        let expired = match &self.slots[i].0 {
            Some(e) => is_expired(e, now_ms, &self.timeouts),
            None => true,
        };
        if expired {
            if let Some(e) = self.release(i) {
                on_expired(&e);
            }
            self.stats.misses += 1;
            self.stats.expiries += 1;
            return None;
        }
        let e = self.slots[i].0.as_mut()?;
        e.last_seen_ms = now_ms;
        self.stats.hits += 1;
        Some(e)
    }

    /// Whether `key` has an entry, expired or not; changes nothing (no counters, no refresh).
    #[must_use]
    pub fn contains(&self, key: &K, hash: u64) -> bool {
        self.find(key, hash).is_some()
    }

    /// The entry of `key`, live or expired, without refreshing it or counting a hit or miss
    /// (diagnostics, off the hot path).
    #[inline]
    pub fn get(&self, key: &K, hash: u64) -> Option<&Entry<K, V>> {
        self.find(key, hash).and_then(|i| self.slots[i].0.as_ref())
    }

    /// Stores `key -> value` in state `state`, seen at `now_ms`.
    ///
    /// Replaces the entry of the same key if there is one. Otherwise takes a free slot in the
    /// first bucket while it has three free slots, else the less loaded of the two; if both
    /// are full, the slot of an expired entry in the first; failing that, moves one of their
    /// entries to its other bucket to make room; failing that, evicts the least recently seen
    /// of the first bucket's 8 entries. Never fails and
    /// never allocates; the returned [`Inserted`] says which happened and hands back any value
    /// displaced.
    #[inline]
    pub fn insert(
        &mut self,
        key: K,
        hash: u64,
        value: V,
        state: FlowState,
        now_ms: u32,
    ) -> Inserted<K, V> {
        let entry = Entry::new(key, value, state, now_ms);
        if let Some(i) = self.find(&key, hash) {
            if let Some(old) = self.slots[i].0.replace(entry) {
                self.stats.replacements += 1;
                return Inserted::Replaced { old: old.value };
            }
        }
        let (b1, b2) = self.buckets(hash);
        self.insert_absent(b1, b2, tag_of(hash), entry, now_ms)
    }

    /// [`Conntrack::insert`] of a key the caller knows is not in the table, because a
    /// [`Conntrack::lookup`] or [`Conntrack::contains`] of it just missed with nothing inserted
    /// since: skips the search for an entry to replace (two tag words and any tag matches).
    /// Never returns [`Inserted::Replaced`]. Inserting a key that is present would store it
    /// twice (checked in debug builds).
    #[inline]
    pub fn insert_new(
        &mut self,
        key: K,
        hash: u64,
        value: V,
        state: FlowState,
        now_ms: u32,
    ) -> Inserted<K, V> {
        debug_assert!(
            self.find(&key, hash).is_none(),
            "insert_new of a present key"
        );
        let (b1, b2) = self.buckets(hash);
        let entry = Entry::new(key, value, state, now_ms);
        self.insert_absent(b1, b2, tag_of(hash), entry, now_ms)
    }

    /// [`Conntrack::insert_new`] if `key` is absent (`Some`, what the insert did); `None`,
    /// changing nothing, if it is present, live or expired: [`Conntrack::contains`] and the
    /// insert in one search.
    #[inline]
    pub fn insert_if_absent(
        &mut self,
        key: K,
        hash: u64,
        value: V,
        state: FlowState,
        now_ms: u32,
    ) -> Option<Inserted<K, V>> {
        if self.contains(&key, hash) {
            return None;
        }
        Some(self.insert_new(key, hash, value, state, now_ms))
    }

    /// Stores `entry`, absent from the table, in its buckets `b1`/`b2`.
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
            let i = b * SLOTS_PER_BUCKET + first_lane(free);
            self.slots[i].0 = Some(entry);
            self.set_tag(i, tag);
            self.len += 1;
            self.stats.inserts += 1;
            return Inserted::New;
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
        let free1 = lanes(&self.tags[b1], 0);
        let n1 = count_lanes(free1);
        if n1 >= 3 {
            return (b1, free1);
        }
        let free2 = lanes(&self.tags[b2], 0);
        if n1 >= count_lanes(free2) {
            (b1, free1)
        } else {
            (b2, free2)
        }
    }

    /// [`Conntrack::insert`] when both buckets are full: reuse an expired slot of the first,
    /// else move an entry to its other bucket if that has room, else evict the least recently
    /// seen of the first.
    #[inline(never)]
    fn insert_full(
        &mut self,
        b1: usize,
        b2: usize,
        tag: u16,
        entry: Entry<K, V>,
        now_ms: u32,
    ) -> Inserted<K, V> {
        // Expired or oldest among the first bucket's eight only: four cache lines, which the
        // burst prefetch fetches ahead for a new flow whose first bucket is full (SYN floods
        // live on this path), rather than eight.
        let mut oldest = b1 * SLOTS_PER_BUCKET;
        let mut oldest_idle = i32::MIN;
        for i in b1 * SLOTS_PER_BUCKET..(b1 + 1) * SLOTS_PER_BUCKET {
            if let Some(e) = &self.slots[i].0 {
                if is_expired(e, now_ms, &self.timeouts) {
                    let old = self.put(i, tag, entry);
                    self.stats.expiries += 1;
                    return Inserted::Expired {
                        key: old.key,
                        value: old.value,
                    };
                }
                let idle = e.idle_ms(now_ms);
                if idle > oldest_idle {
                    oldest_idle = idle;
                    oldest = i;
                }
            }
        }
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
                let alt = self.alt(b, t);
                let free = lanes(&self.tags[alt], 0);
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
        let old = self.put(oldest, tag, entry);
        self.stats.evictions += 1;
        Inserted::Evicted {
            key: old.key,
            value: old.value,
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
    /// around, and frees the entries that have expired at `now_ms`; returns how many.
    ///
    /// Call it every poll iteration with a small budget: a full sweep takes
    /// `capacity / 8 / max_buckets` calls.
    #[inline]
    pub fn expire(&mut self, now_ms: u32, max_buckets: usize) -> usize {
        self.expire_with(now_ms, max_buckets, |_| {})
    }

    /// [`Conntrack::expire`], calling `on_expired` with each entry before it is freed (to
    /// release a NAT port, say).
    pub fn expire_with(
        &mut self,
        now_ms: u32,
        max_buckets: usize,
        mut on_expired: impl FnMut(&Entry<K, V>),
    ) -> usize {
        let mut freed = 0;
        for _ in 0..max_buckets.min(self.mask + 1) {
            let b = self.cursor;
            self.cursor = (b + 1) & self.mask;
            let mut used = !lanes(&self.tags[b], 0) & 0xff;
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

    /// Loads the tag words of both of `hash`'s buckets, so that a later lookup or insert finds
    /// them in cache. Call it for a whole burst before the lookups: the loads are independent,
    /// so their cache misses overlap. (Real loads kept alive by [`std::hint::black_box`]: this
    /// crate cannot issue a prefetch instruction itself.)
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        let (b1, b2) = self.buckets(hash);
        std::hint::black_box(self.tags[b1]);
        std::hint::black_box(self.tags[b2]);
    }

    /// Prefetches a whole burst (up to [`PREFETCH_BURST`] hashes at a time) with demand loads
    /// kept as lean as possible: first the tag words of every flow, then, once those are in
    /// cache, the candidate entries, from a precomputed list of indices, so that the core has
    /// as many cache misses in flight as it can. Prefer it to per-flow [`Conntrack::prefetch`]
    /// when the burst's hashes are in an array.
    #[inline]
    pub fn prefetch_burst(&self, hashes: &[u64]) {
        let mut acc = 0u128;
        for chunk in hashes.chunks(PREFETCH_BURST) {
            for &h in chunk {
                let (b1, b2) = self.buckets(h);
                acc ^= self.tags[b1] ^ self.tags[b2];
            }
            let mut slots = [0usize; PREFETCH_BURST];
            let mut n = 0;
            for &h in chunk {
                slots[n] = self.first_match(h).unwrap_or(0);
                n += 1;
            }
            for &i in &slots[..n] {
                acc ^= u128::from(self.slots[i].0.is_some());
            }
        }
        std::hint::black_box(acc);
    }

    /// Hands `prefetch` the tag words of `hash`'s two buckets, for a real prefetch instruction
    /// from `dpdk-sys` (the one crate allowed to issue it):
    /// `ct.prefetch_with(h, |r| dpdk_sys::prefetch(r))`. Unlike [`Conntrack::prefetch`] nothing
    /// is loaded here, so the core never stalls on it. Follow it with
    /// [`Conntrack::prefetch_entry_with`] (and, for a flow about to be inserted,
    /// [`Conntrack::prefetch_insert_with`]) in a second pass over the burst. (Both words, though
    /// most flows live in their first bucket: fetching the second only once the first showed no
    /// match costs the flows that live there a dependent round trip to memory, measured worse.)
    #[inline]
    pub fn prefetch_with(&self, hash: u64, mut prefetch: impl FnMut(&u128)) {
        let (b1, b2) = self.buckets(hash);
        prefetch(&self.tags[b1]);
        prefetch(&self.tags[b2]);
    }

    /// For a flow about to be inserted (a SYN), in the second pass (both buckets' tags are in
    /// cache): hands `prefetch` the slot the insert will fill, or, if both buckets are full,
    /// each cache line of entries of the first bucket (four), which the insert scans for an
    /// expired or least recently seen victim.
    #[inline]
    pub fn prefetch_insert_with(&self, hash: u64, mut prefetch: impl FnMut(&Option<Entry<K, V>>)) {
        let (b1, b2) = self.buckets(hash);
        let (b, free) = self.insert_bucket(b1, b2);
        if free != 0 {
            prefetch(&self.slots[b * SLOTS_PER_BUCKET + first_lane(free)].0);
        } else {
            let per_line = (64 / std::mem::size_of::<Slot<K, V>>()).max(1);
            for i in (b1 * SLOTS_PER_BUCKET..(b1 + 1) * SLOTS_PER_BUCKET).step_by(per_line) {
                prefetch(&self.slots[i].0);
            }
        }
    }

    /// Second pass, once both buckets' tags are in cache: hands `entry` the slot a hit on
    /// `hash` will compare (the first tag match, in the first bucket, else in the second);
    /// nothing on a miss: `ct.prefetch_entry_with(h, dpdk_sys::prefetch)`.
    #[inline]
    pub fn prefetch_entry_with(&self, hash: u64, entry: impl FnMut(&Option<Entry<K, V>>)) {
        let _ = self.prefetch_entry_slot(hash, entry);
    }

    /// [`Conntrack::prefetch_entry_with`], returning the slot it handed to `entry` (the first
    /// tag match), or [`NO_SLOT`] on a miss: a hint for [`Conntrack::lookup_hinted_with`].
    #[inline(always)]
    pub fn prefetch_entry_slot(
        &self,
        hash: u64,
        mut entry: impl FnMut(&Option<Entry<K, V>>),
    ) -> u32 {
        match self.first_match(hash) {
            Some(i) => {
                entry(&self.slots[i].0);
                i as u32
            }
            None => NO_SLOT,
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

    /// The counters.
    #[inline]
    #[must_use]
    pub fn stats(&self) -> &ConntrackStats {
        &self.stats
    }

    /// The timeouts in force (clamped).
    #[must_use]
    pub fn timeouts(&self) -> Timeouts {
        let [tcp_syn_ms, tcp_established_ms, tcp_closing_ms, udp_ms, other_ms] = self.timeouts;
        Timeouts {
            tcp_syn_ms,
            tcp_established_ms,
            tcp_closing_ms,
            udp_ms,
            other_ms,
        }
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

    /// Every occupied entry, expired or not, in table order. For admin lookups off the hot path
    /// (it walks the whole table).
    pub fn iter(&self) -> impl Iterator<Item = &Entry<K, V>> + '_ {
        self.slots.iter().filter_map(|s| s.0.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::mix64;
    use proptest::prelude::*;
    use std::collections::HashMap;

    type Value = [u32; 2];

    fn v4(i: u32) -> V4Key {
        V4Key {
            src: (0x0a00_0000 | i).to_be_bytes(),
            dst: [192, 0, 2, 1],
            sport: (i % 50_000) as u16 + 1024,
            dport: 80,
            proto: 6,
        }
    }

    fn table(capacity: usize) -> Conntrack<V4Key, Value> {
        Conntrack::new(&ConntrackConfig {
            capacity,
            timeouts: Timeouts::default(),
        })
    }

    fn consistent<K: FlowKey, V: Copy>(t: &Conntrack<K, V>) {
        let s = t.stats();
        assert_eq!(
            t.len() as u64,
            s.inserts - s.evictions - s.expiries - s.removals,
            "{s:?}"
        );
        assert_eq!(t.iter().count(), t.len());
        let tagged: u32 = t.tags.iter().map(|w| 8 - lanes(w, 0).count_ones()).sum();
        assert_eq!(tagged as usize, t.len());
        for (i, s) in t.slots.iter().enumerate() {
            let tag = (t.tags[i / SLOTS_PER_BUCKET] >> ((i % SLOTS_PER_BUCKET) * 16)) as u16;
            assert_eq!(s.0.is_some(), tag != 0, "slot {i}");
        }
    }

    #[test]
    fn sizes() {
        use std::mem::size_of;
        assert_eq!(size_of::<V4Key>(), 13);
        assert_eq!(size_of::<V6Key>(), 37);
        assert_eq!(size_of::<FlowState>(), 1);
        // The entry targets: at most 32 bytes for IPv4 with an 8-byte value...
        assert_eq!(size_of::<Entry<V4Key, u64>>(), 32);
        assert_eq!(size_of::<Entry<V4Key, [u32; 2]>>(), 28);
        assert_eq!(size_of::<Entry<V6Key, u64>>(), 56);
        assert_eq!(size_of::<Entry<V6Key, [u32; 2]>>(), 52);
        // ...`Option` is free (the `FlowState` niche)...
        assert_eq!(size_of::<Option<Entry<V4Key, u64>>>(), 32);
        assert_eq!(size_of::<Option<Entry<V6Key, u64>>>(), 56);
        // ...and a slot is aligned to 32 bytes (one cache line per entry), plus a 2-byte tag.
        assert_eq!(size_of::<Slot<V4Key, u64>>(), 32);
        assert_eq!(size_of::<Slot<V4Key, [u32; 2]>>(), 32);
        assert_eq!(size_of::<Slot<V6Key, u64>>(), 64);
        assert_eq!(Conntrack::<V4Key, [u32; 2]>::bytes_per_slot(), 34);
        assert_eq!(Conntrack::<V4Key, u64>::bytes_per_slot(), 34);
        assert_eq!(Conntrack::<V6Key, u64>::bytes_per_slot(), 66);
    }

    #[test]
    fn capacity_rounding_and_bytes() {
        assert_eq!(table(0).capacity(), 16);
        assert_eq!(table(17).capacity(), 32);
        assert_eq!(table(1000).capacity(), 1024);
        assert_eq!(table(1024).capacity(), 1024);
        let t = table(1 << 16);
        assert_eq!(t.bytes(), (1 << 16) * 34 + std::mem::size_of_val(&t));
        assert!(t.is_empty());
    }

    #[test]
    #[should_panic(expected = "above the maximum")]
    fn capacity_limit() {
        let _ = table(MAX_CAPACITY + 1);
    }

    #[test]
    fn lane_masks_name_slots() {
        // Lane i of a tag word is slot i of its bucket: what set_tag writes, lanes finds.
        let mut t = table(64);
        for (i, tag) in [(3usize, 0x8001u16), (8 + 7, 0xffff), (16, 1)] {
            t.set_tag(i, tag);
            let b = i / SLOTS_PER_BUCKET;
            assert_eq!(
                lanes(&t.tags[b], tag),
                1 << (i % SLOTS_PER_BUCKET),
                "slot {i}"
            );
            assert_eq!(first_lane(lanes(&t.tags[b], tag)), i % SLOTS_PER_BUCKET);
            assert_eq!(count_lanes(lanes(&t.tags[b], 0)), 7);
            t.set_tag(i, 0);
            assert_eq!(lanes(&t.tags[b], 0), 0xff);
        }
    }

    #[test]
    fn insert_lookup_remove() {
        let mut t = table(1024);
        let seed = 7;
        for i in 0..500 {
            let k = v4(i);
            assert_eq!(
                t.insert(k, k.flow_hash(seed), [i, 0], FlowState::TcpEstablished, 0),
                Inserted::New
            );
        }
        assert_eq!(t.len(), 500);
        for i in 0..500 {
            let k = v4(i);
            let e = t.lookup(&k, k.flow_hash(seed), 10).expect("present");
            assert_eq!(e.key(), &k);
            assert_eq!(e.value(), &[i, 0]);
            assert_eq!(e.last_seen_ms(), 10);
            e.value_mut()[1] = 9;
        }
        let k = v4(3);
        let h = k.flow_hash(seed);
        assert_eq!(t.lookup(&k, h, 11).unwrap().value(), &[3, 9]);
        assert_eq!(
            t.insert(k, h, [1, 1], FlowState::Udp, 12),
            Inserted::Replaced { old: [3, 9] }
        );
        assert_eq!(t.lookup(&k, h, 13).unwrap().state(), FlowState::Udp);
        assert!(t.remove(&k, h));
        assert!(!t.remove(&k, h));
        assert!(t.lookup(&k, h, 14).is_none());
        assert!(t.lookup(&v4(9999), v4(9999).flow_hash(seed), 14).is_none());
        assert_eq!(t.len(), 499);
        let s = *t.stats();
        assert_eq!(
            (s.hits, s.misses, s.inserts, s.replacements, s.removals),
            (502, 2, 500, 1, 1)
        );
        consistent(&t);
    }

    #[test]
    fn v6_keys() {
        let mut t: Conntrack<V6Key, u64> = Conntrack::new(&ConntrackConfig::default());
        let mut k = V6Key {
            src: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            ..V6Key::default()
        };
        k.dst = k.src;
        k.dst[15] = 2;
        k.sport = 5000;
        k.dport = 443;
        k.proto = 17;
        let h = k.flow_hash(1);
        assert_eq!(t.insert(k, h, 42, FlowState::Udp, 0), Inserted::New);
        let mut other = k;
        other.sport = 5001;
        assert!(t.lookup(&other, other.flow_hash(1), 1).is_none());
        assert_eq!(t.lookup(&k, h, 1).map(|e| *e.value()), Some(42));
        assert_eq!(t.capacity(), DEFAULT_CAPACITY);
    }

    #[test]
    fn prefetch_helpers_point_at_the_right_places() {
        let mut t = table(1024);
        let k = v4(5);
        let h = k.flow_hash(2);
        let _ = t.insert(k, h, [5, 5], FlowState::Udp, 0);
        t.prefetch(h);
        t.prefetch_burst(&[h, h ^ 1, 0, u64::MAX]);
        let mut tags = Vec::new();
        t.prefetch_with(h, |w| tags.push(*w != 0));
        assert_eq!(
            tags,
            [true, false],
            "an empty table puts the entry in its first bucket"
        );
        let mut seen = None;
        t.prefetch_entry_with(h, |e| seen = e.map(|e| *e.key()));
        assert_eq!(seen, Some(k));
        let other = v4(6);
        let mut called = false;
        t.prefetch_entry_with(other.flow_hash(2), |_| called = true);
        assert!(!called, "no tag match, nothing to prefetch");
        let mut free = None;
        t.prefetch_insert_with(other.flow_hash(2), |e| free = Some(e.is_none()));
        assert_eq!(free, Some(true), "the free slot an insert would fill");
    }

    #[test]
    fn slot_hints_and_insert_new() {
        let mut t = table(1024);
        let keys: Vec<(V4Key, u64)> = (0..300).map(|i| (v4(i), v4(i).flow_hash(2))).collect();
        for (i, (k, h)) in keys.iter().enumerate() {
            assert!(t.lookup(k, *h, 0).is_none());
            assert_eq!(
                t.insert_new(*k, *h, [i as u32, 0], FlowState::Udp, 0),
                Inserted::New
            );
        }
        consistent(&t);
        for (i, (k, h)) in keys.iter().enumerate() {
            // The hint a second-pass prefetch gives is the entry's slot.
            let mut seen = None;
            let slot = t.prefetch_entry_slot(*h, |e| seen = e.map(|e| *e.key()));
            assert_eq!(seen, Some(*k));
            let got = t
                .lookup_hinted_with(k, *h, slot, 1, |_| {})
                .map(|e| e.value()[0]);
            assert_eq!(got, Some(i as u32));
            // A wrong or stale hint (another flow's slot, no slot, out of range) gives the same
            // answer by the search.
            let other = t.prefetch_entry_slot(keys[(i + 1) % keys.len()].1, |_| {});
            for hint in [other, NO_SLOT, u32::MAX - 1] {
                let got = t
                    .lookup_hinted_with(k, *h, hint, 1, |_| {})
                    .map(|e| e.value()[0]);
                assert_eq!(got, Some(i as u32), "hint {hint}");
            }
        }
        // An expired entry at the hinted slot is freed and reported, as by a plain lookup.
        let (k, h) = keys[0];
        let slot = t.prefetch_entry_slot(h, |_| {});
        let mut gone = None;
        let late = Timeouts::default().udp_ms + 10;
        assert!(t
            .lookup_hinted_with(&k, h, slot, late, |e| gone = Some(e.value()[0]))
            .is_none());
        assert_eq!(gone, Some(0));
        assert_eq!(t.prefetch_entry_slot(h, |_| {}), NO_SLOT);
        consistent(&t);
        // insert_if_absent: once, and not over a present key (whose value stays).
        assert_eq!(
            t.insert_if_absent(k, h, [7, 7], FlowState::Udp, late),
            Some(Inserted::New)
        );
        assert_eq!(t.insert_if_absent(k, h, [8, 8], FlowState::Udp, late), None);
        assert_eq!(t.get(&k, h).map(|e| *e.value()), Some([7, 7]));
        let (k1, h1) = keys[1];
        assert_eq!(
            t.insert_if_absent(k1, h1, [9, 9], FlowState::Udp, late),
            None
        );
        consistent(&t);
    }

    #[test]
    fn timeouts_follow_state() {
        let to = Timeouts::default();
        let mut t = table(1024);
        let states = FlowState::ALL;
        for (i, &s) in states.iter().enumerate() {
            let k = v4(i as u32);
            let _ = t.insert(k, k.flow_hash(0), [0; 2], s, 0);
        }
        // A SYN entry lives 5 s, then expire() frees it.
        assert_eq!(t.expire(to.tcp_syn_ms - 1, usize::MAX), 0);
        assert_eq!(t.expire(to.tcp_syn_ms, usize::MAX), 1);
        assert!(!t.contains(&v4(0), v4(0).flow_hash(0)));
        assert_eq!(t.expire(to.tcp_closing_ms, usize::MAX), 1);
        assert_eq!(t.expire(to.udp_ms, usize::MAX), 2); // UDP and other: 30 s
        assert_eq!(t.len(), 1);
        // Established: 300 s; a lookup refreshes it.
        let k = v4(1);
        let h = k.flow_hash(0);
        assert!(t.lookup(&k, h, to.tcp_established_ms - 1).is_some());
        assert_eq!(t.expire(to.tcp_established_ms, usize::MAX), 0);
        assert!(t.lookup(&k, h, 2 * to.tcp_established_ms - 2).is_some());
        // Found expired by a lookup: a miss, freed, counted.
        assert!(t.lookup(&k, h, 3 * to.tcp_established_ms).is_none());
        assert!(t.is_empty());
        assert_eq!(t.stats().expiries, 5);
        assert_eq!(t.stats().misses, 1);
        consistent(&t);

        // A handshake completing moves the entry to the established timeout.
        let k = v4(77);
        let h = k.flow_hash(0);
        let _ = t.insert(k, h, [0; 2], FlowState::TcpSynSent, 1000);
        t.lookup(&k, h, 1001)
            .unwrap()
            .set_state(FlowState::TcpEstablished);
        assert_eq!(t.expire(1001 + to.tcp_syn_ms * 10, usize::MAX), 0);
        assert_eq!(to.get(FlowState::Udp), 30_000);
    }

    #[test]
    fn expire_is_amortised() {
        let mut t = table(1024); // 128 buckets
        for i in 0..600 {
            let k = v4(i);
            let _ = t.insert(k, k.flow_hash(3), [0; 2], FlowState::Udp, 0);
        }
        let mut freed = 0;
        let mut seen = Vec::new();
        for _ in 0..16 {
            freed += t.expire_with(60_000, 8, |e| seen.push(e.key().src));
        }
        assert_eq!(freed, 600);
        assert_eq!(seen.len(), 600);
        assert!(t.is_empty());
        assert_eq!(t.expire(60_000, 1_000_000), 0);
        consistent(&t);
    }

    /// All keys in the two buckets of a 2-bucket table, with one shared tag.
    fn crowded(i: u32) -> u64 {
        (0xabcd << 48) | u64::from(i)
    }

    #[test]
    fn full_buckets_evict_the_oldest() {
        let mut t = table(16); // 2 buckets: every key's buckets are {0, 1}
        for i in 0..16 {
            assert_eq!(
                t.insert(v4(i), crowded(i), [i, 0], FlowState::TcpEstablished, i * 10),
                Inserted::New
            );
        }
        // Key i's first bucket is i % 2, and the first keys filled their first buckets, so key
        // 1 (seen at 10) is the oldest of bucket 1. Refreshing it makes key 3 (30) the oldest.
        assert!(t.lookup(&v4(1), crowded(1), 500).is_some());
        let r = t.insert(
            v4(101),
            crowded(101),
            [101, 0],
            FlowState::TcpEstablished,
            600,
        );
        assert!(r.evicted());
        assert_eq!(
            r,
            Inserted::Evicted {
                key: v4(3),
                value: [3, 0]
            }
        );
        assert!(!t.contains(&v4(3), crowded(3)));
        assert!(t.contains(&v4(101), crowded(101)));
        assert_eq!(t.stats().evictions, 1);
        assert_eq!(t.len(), 16);
        // With an expired SYN entry among them, it is reused instead of evicting.
        let _ = t.insert(v4(2), crowded(2), [2, 0], FlowState::TcpSynSent, 600);
        let r = t.insert(v4(100), crowded(100), [100, 0], FlowState::Udp, 600 + 5_000);
        assert_eq!(
            r,
            Inserted::Expired {
                key: v4(2),
                value: [2, 0]
            }
        );
        assert_eq!(t.stats().evictions, 1);
        assert_eq!(t.stats().expiries, 1);
        consistent(&t);
    }

    #[test]
    fn clock_wrap_is_harmless() {
        let mut t = table(64);
        let start = u32::MAX - 1_000;
        let k = v4(1);
        let h = k.flow_hash(0);
        let _ = t.insert(k, h, [1, 1], FlowState::Udp, start);
        // 29 s later, across the wrap: still live.
        let later = start.wrapping_add(29_000);
        assert!(later < start);
        assert!(t.lookup(&k, h, later).is_some());
        assert_eq!(t.expire(later.wrapping_add(29_999), usize::MAX), 0);
        assert_eq!(t.expire(later.wrapping_add(30_000), usize::MAX), 1);
        // Eviction order across the wrap: the entry seen before the wrap is the oldest.
        let mut t = table(16);
        for i in 0..16 {
            let _ = t.insert(
                v4(i),
                crowded(i),
                [0; 2],
                FlowState::TcpEstablished,
                start.wrapping_add(i * 100),
            );
        }
        let r = t.insert(
            v4(98),
            crowded(98),
            [0; 2],
            FlowState::TcpEstablished,
            start.wrapping_add(2_000),
        );
        assert_eq!(
            r,
            Inserted::Evicted {
                key: v4(0),
                value: [0; 2]
            }
        );
    }

    #[test]
    fn loaded_table_keeps_almost_everything() {
        // Two choices and one cuckoo step: at 90% load nothing is evicted.
        let mut t = table(1 << 16);
        let n = (1 << 16) * 9 / 10;
        let mut evicted = 0;
        for i in 0..n {
            let k = v4(i);
            evicted += u32::from(
                t.insert(k, k.flow_hash(11), [0; 2], FlowState::TcpEstablished, 0)
                    .evicted(),
            );
        }
        assert_eq!(evicted, 0, "evictions at 90% load");
        assert!(t.stats().relocations > 0);
        consistent(&t);
    }

    /// The occupancy figures of docs/dataplane-tables.md:
    /// `cargo test -p sluice-dataplane --release --lib conntrack::tests::occupancy_report -- --ignored --nocapture`
    #[test]
    #[ignore = "a report, slow in debug builds"]
    fn occupancy_report() {
        let capacity = 1 << 20;
        for pct in [50, 80, 90, 95, 100] {
            let mut t = table(capacity);
            let n = (capacity * pct / 100) as u32;
            for i in 0..n {
                let k = V4Key {
                    src: i.to_be_bytes(),
                    ..v4(0)
                };
                let _ = t.insert(k, k.flow_hash(5), [0; 2], FlowState::Udp, 0);
            }
            let s = t.stats();
            println!(
                "{pct:>3}% of {capacity} slots: {} evictions ({:.4}% of inserts), {} relocations",
                s.evictions,
                s.evictions as f64 * 100.0 / f64::from(n),
                s.relocations
            );
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Op {
        Insert(u32, FlowState),
        Lookup(u32),
        Remove(u32),
        Advance(u32),
        Expire(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let state = prop::sample::select(FlowState::ALL.to_vec());
        prop_oneof![
            4 => (0..48u32, state).prop_map(|(k, s)| Op::Insert(k, s)),
            3 => (0..48u32).prop_map(Op::Lookup),
            1 => (0..48u32).prop_map(Op::Remove),
            2 => (0..12_000u32).prop_map(Op::Advance),
            1 => (0..6usize).prop_map(Op::Expire),
        ]
    }

    /// A hash that crowds 48 keys into 4 buckets and gives many of them the same tag.
    fn test_hash(k: u32) -> u64 {
        let h = mix64(u64::from(k));
        if k.is_multiple_of(3) {
            (h & !(0xffff << 48)) | (0x1234 << 48)
        } else {
            h
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Model test against a `HashMap`: no live entry is ever lost unless both of the new
        /// key's buckets were full (and then only the oldest of its first bucket), expired entries are reported as
        /// such, and the counters add up.
        #[test]
        fn never_loses_a_live_entry(ops in prop::collection::vec(op(), 1..300)) {
            let timeouts = Timeouts { tcp_syn_ms: 2_000, tcp_established_ms: 40_000, tcp_closing_ms: 5_000, udp_ms: 10_000, other_ms: 0 };
            let mut t: Conntrack<V4Key, Value> = Conntrack::new(&ConntrackConfig { capacity: 32, timeouts });
            // key -> (value, state, last seen)
            let mut model: HashMap<u32, (Value, FlowState, u32)> = HashMap::new();
            let mut now = u32::MAX - 50_000; // wraps during most runs
            let live = |m: &(Value, FlowState, u32), now: u32| (now.wrapping_sub(m.2) as i32) < timeouts.get(m.1) as i32;
            let id = |k: &V4Key| u32::from_be_bytes(k.src) & 0xff_ffff;
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Insert(k, s) => {
                        let h = test_hash(k);
                        let (b1, b2) = t.buckets(h);
                        let full = lanes(&t.tags[b1], 0) == 0 && lanes(&t.tags[b2], 0) == 0;
                        // An insert into two full buckets picks its victim in the first.
                        let in_buckets: Vec<u32> = t.slots[b1 * SLOTS_PER_BUCKET..(b1 + 1) * SLOTS_PER_BUCKET]
                            .iter()
                            .filter_map(|s| s.0.as_ref()).map(|e| id(e.key())).collect();
                        let value = [k, n as u32];
                        match t.insert(v4(k), h, value, s, now) {
                            Inserted::New => prop_assert!(!model.contains_key(&k)),
                            Inserted::Replaced { old } => prop_assert_eq!(Some(old), model.get(&k).map(|m| m.0)),
                            Inserted::Expired { key, value } => {
                                prop_assert!(full);
                                let m = model.remove(&id(&key)).unwrap();
                                prop_assert_eq!(m.0, value);
                                prop_assert!(!live(&m, now));
                            }
                            Inserted::Evicted { key, value } => {
                                prop_assert!(full, "evicted while a bucket had room");
                                let m = model.remove(&id(&key)).unwrap();
                                prop_assert_eq!(m.0, value);
                                prop_assert!(live(&m, now));
                                // Nothing in the first bucket was expired, and the victim was its oldest.
                                for other in &in_buckets {
                                    let o = &model[other];
                                    prop_assert!(live(o, now));
                                    prop_assert!(o.2.wrapping_sub(m.2) as i32 >= 0);
                                }
                            }
                        }
                        model.insert(k, (value, s, now));
                    }
                    Op::Lookup(k) => {
                        let got = t.lookup(&v4(k), test_hash(k), now).map(|e| *e.value());
                        match model.get_mut(&k) {
                            Some(m) if live(m, now) => {
                                prop_assert_eq!(got, Some(m.0));
                                m.2 = now;
                            }
                            Some(_) => {
                                prop_assert_eq!(got, None);
                                model.remove(&k);
                            }
                            None => prop_assert_eq!(got, None),
                        }
                    }
                    Op::Remove(k) => prop_assert_eq!(t.remove(&v4(k), test_hash(k)), model.remove(&k).is_some()),
                    Op::Advance(ms) => now = now.wrapping_add(ms),
                    Op::Expire(buckets) => {
                        let mut freed = Vec::new();
                        let count = t.expire_with(now, buckets, |e| freed.push(id(e.key())));
                        prop_assert_eq!(count, freed.len());
                        for k in freed {
                            let m = model.remove(&k).unwrap();
                            prop_assert!(!live(&m, now));
                        }
                    }
                }
                // Every entry of the model, live or not yet freed, is in the table, and nothing else.
                prop_assert_eq!(t.len(), model.len());
                for k in model.keys() {
                    prop_assert!(t.contains(&v4(*k), test_hash(*k)), "lost key {}", k);
                }
                consistent(&t);
            }
        }
    }
}
