//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016), with weights and live-backend skipping.
//!
//! # Design
//!
//! The table is built by the control plane, off the hot path, and the dataplane only indexes
//! it: a flat `Box<[u32]>` of `M` entries (`M` prime, by default [`auto_size`] of the number of
//! backends: a rung of [`SIZE_LADDER`] with at least [`SLOTS_PER_BACKEND`] slots per backend),
//! each the index of a backend in the slice given to [`MaglevTable::build`]. A lookup is one
//! multiply and one load.
//!
//! **Population** is the paper's algorithm. Each backend `b` has a permutation of the slots,
//! `offset(b) = h1(b) mod M`, `skip(b) = h2(b) mod (M - 1) + 1`, `perm(b)[j] = (offset + j *
//! skip) mod M`, where `h1`, `h2` are [`hash_bytes`] of the backend id under two seeds derived
//! from the table seed. Backends then take turns, each claiming the next slot of its
//! permutation that is still free, until the table is full. With equal weights every backend
//! ends with `floor(M/N)` or `ceil(M/N)` entries.
//!
//! - **Weights** use per-round credit: each round every backend gains its weight in credit and
//!   takes a turn when its credit reaches the largest weight `W`, paying `W`. A backend of
//!   weight `w` thus takes `w/W` turns per round and ends with about `M * w / sum(w)` entries;
//!   weight 0 takes none. Build time grows with `W / mean(w)` (rounds in which light backends
//!   only gain credit): keep weights within a small range of each other.
//! - **Determinism.** Backends are taken in the byte order of their ids, not in the order given,
//!   and the permutations depend only on the id and the seed, so every host given the same set
//!   of `(id, weight)` and the same seed builds the same table, whatever the input order. The
//!   entries still hold indices into the caller's slice. The seed comes from configuration and
//!   must be equal on all hosts of an ECMP group.
//! - **Speed.** The permutation is walked incrementally (`next += skip; if next >= M { next -=
//!   M }`), with no division per probe, two positions per step (`c` and `c + skip`, advancing
//!   by `2 * skip`) so that consecutive bitmap tests do not wait on each other, and occupancy
//!   is a bitmap (8 KiB at `M = 65537`) that stays in L1/L2 while the `M * ln M` probes run.
//!   Nothing is allocated inside the loop. (1.2 ms at M = 65537, N = 1000; 13.5 ms at
//!   M = 655373; see docs/dataplane-tables.md.)
//! - **Slot of a flow** is `(flow_hash * M) >> 64` (Lemire's multiply-shift range reduction)
//!   rather than `flow_hash mod M`: the same uniformity for a well-mixed hash, no division.
//!
//! **Live skipping** ([`MaglevTable::lookup_live`]): a backend that is down or draining keeps
//! its entries; a flow whose primary entry points at it is rehashed to `mix64(flow_hash + i)`
//! for `i = 1..=`[`LIVE_REHASH_PROBES`], then, if all of those are dead too, the table is
//! scanned linearly from the primary slot. Flows whose primary backend is live never move, and
//! the flows of a dead backend spread over the others in proportion to their shares. No
//! rebuild, so no other flow is disturbed when a backend flaps.

use crate::hash::{hash_bytes, mix64};

/// A common fixed table size, a prime (2^16 + 1): the size of every table before
/// [`auto_size`], and the one error messages suggest. [`auto_size`] chooses it for 55 to 218
/// backends.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// The largest table size accepted: 2^24 - 3, the largest prime below 2^24 (64 MiB of entries).
pub const MAX_TABLE_SIZE: u32 = 16_777_213;

/// The table sizes [`auto_size`] chooses from: primes about four times apart (the first prime
/// above each power of 4 times 1024, and [`MAX_TABLE_SIZE`] on top). A fixed list, so that every
/// host derives the same size from the same backend count, and a size change (which remaps
/// almost every flow) happens only when the count crosses a rung.
pub const SIZE_LADDER: [u32; 8] = [
    1031,
    4099,
    16_411,
    65_537,
    262_147,
    1_048_583,
    4_194_319,
    MAX_TABLE_SIZE,
];

/// Slots per backend [`auto_size`] keeps at least: the smallest rung of [`SIZE_LADDER`] with
/// `M >= SLOTS_PER_BACKEND * N`.
///
/// Chosen from measurements (`disruption_report`, docs/dataplane-tables.md). The Maglev paper
/// asks for `M >= 100 * N`, which keeps balance within 1% but not the flows moved by removing
/// one backend near the `1/N` minimum: the excess shrinks with `M` (roughly as
/// `sqrt(N / M)`). At 300 slots per backend, removing one backend moved at most `1/N + 0.6`
/// percentage points from the 262147 rung up (N = 219..=5000; worst 0.57 pp), but up to
/// 0.83 pp at 65537 (N = 55..=218) and 2 pp on the smaller rungs (N <= 54), where only
/// much larger tables do better (N = 10 needs about 65537 slots for 0.6 pp). Above 409 slots
/// per backend, 10 backends would take the 16411 rung, and 10,000 such Services 640 MiB of
/// tables, over the control plane's 500 MiB target; 300 keeps them at 4099 slots (16 KiB).
pub const SLOTS_PER_BACKEND: u32 = 300;

/// The most backends rung `size` serves under [`auto_size`]: `size / SLOTS_PER_BACKEND`.
#[must_use]
pub fn rung_capacity(size: u32) -> usize {
    (size / SLOTS_PER_BACKEND) as usize
}

/// The table size for `backends` backends: the smallest rung of [`SIZE_LADDER`] with at least
/// [`SLOTS_PER_BACKEND`] slots per backend, or the largest rung when none has (above 55,924
/// backends; balance then degrades to `ceil(M/N) / (M/N)`). A pure function of the count, so
/// every host given the same backends chooses the same size.
#[must_use]
pub fn auto_size(backends: usize) -> u32 {
    SIZE_LADDER
        .iter()
        .copied()
        .find(|&m| rung_capacity(m) >= backends)
        .unwrap_or(MAX_TABLE_SIZE)
}

/// The table size for `backends` backends when the fleet has recorded `recorded` for the
/// frontend: `recorded` while it is a rung of [`SIZE_LADDER`] that still serves the count
/// ([`rung_capacity`]) and the count has not fallen below half the capacity of the rung under
/// it; otherwise [`auto_size`]. This is the hysteresis that keeps a Service whose backend
/// count oscillates around a rung from resizing (and so remapping its flows) at each
/// crossing: growing past a rung resizes at once, shrinking only once the count has halved
/// below the smaller rung's capacity. A pure function of its two inputs, so every host that
/// reads the same recorded size and the same backends chooses the same size.
#[must_use]
pub fn sticky_size(recorded: u32, backends: usize) -> u32 {
    let Some(rung) = SIZE_LADDER.iter().position(|&m| m == recorded) else {
        return auto_size(backends);
    };
    let floor = rung
        .checked_sub(1)
        .map_or(0, |below| rung_capacity(SIZE_LADDER[below]).div_ceil(2));
    if backends <= rung_capacity(recorded) && backends >= floor {
        recorded
    } else {
        auto_size(backends)
    }
}

/// How many rehash probes [`MaglevTable::lookup_live`] makes before it falls back to a linear
/// scan.
pub const LIVE_REHASH_PROBES: u64 = 8;

/// Salt XORed into the seed for the offset hash `h1`.
const OFFSET_SALT: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
/// Salt XORed into the seed for the skip hash `h2`.
const SKIP_SALT: u64 = 0x6d61_676c_6576_736b; // "maglevsk"

/// One backend as Maglev sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend<'a> {
    /// Stable identity, e.g. `"10.0.0.1:8080"`. It alone decides the backend's permutation, so
    /// it must be the same on every host and across restarts, and unique within a table.
    pub id: &'a str,
    /// Relative weight; 0 means the backend gets no entries.
    pub weight: u32,
}

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// The size is not a prime number.
    #[error(
        "Maglev table size {0} is not prime; use a prime such as 65537 (the default) or \
         655373, e.g. the next prime {next}",
        next = next_prime(*.0)
    )]
    NotPrime(u32),
    /// The table has fewer slots than backends that want entries.
    #[error(
        "Maglev table size {size} is smaller than the {backends} backends with a non-zero \
         weight; use \"auto\" or a prime with at least {SLOTS_PER_BACKEND} slots per backend \
         (e.g. {suggestion})",
        suggestion = auto_size(*.backends)
    )]
    TooSmall {
        /// The requested size.
        size: u32,
        /// Backends with a non-zero weight.
        backends: usize,
    },
    /// The size is above [`MAX_TABLE_SIZE`].
    #[error("Maglev table size {0} is above the maximum {MAX_TABLE_SIZE}; use a smaller prime")]
    TooLarge(u32),
    /// More backends than a `u32` index can name.
    #[error("{0} backends is more than a Maglev table can index; split the service")]
    TooManyBackends(usize),
    /// Two backends share an id, so the table would depend on input order.
    #[error("backend id {0:?} appears more than once; every backend needs a unique id (ip:port)")]
    DuplicateId(String),
}

/// A populated Maglev lookup table: `size()` slots, each the index of a backend in the slice
/// given to [`MaglevTable::build`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevTable {
    /// Backend index per slot; empty when no backend has a non-zero weight.
    entries: Box<[u32]>,
    /// The prime table size `M`.
    size: u32,
    /// The length of the backend slice given to `build`.
    backends: u32,
}

/// A backend's walk through its permutation during population.
struct Walk {
    /// The next slot of the permutation to try.
    next: u32,
    /// The permutation's stride, in `1..M`.
    skip: u32,
    /// `2 * skip mod M`.
    skip2: u32,
    /// Accumulated weight credit.
    credit: u64,
    /// The weight.
    weight: u64,
    /// The backend's index in the caller's slice.
    index: u32,
}

impl MaglevTable {
    /// Builds the table for `backends` with `size` slots (a prime, e.g. [`DEFAULT_TABLE_SIZE`])
    /// and the hash `seed` (equal on every host of an ECMP group).
    ///
    /// The result depends only on the set of `(id, weight)` pairs, `size` and `seed`, not on the
    /// order of `backends`; entries are indices into `backends`. With no backend of non-zero
    /// weight (including an empty slice) the table is empty and every lookup returns `None`.
    ///
    /// # Errors
    /// [`MaglevError`] when `size` is not a prime in `[backends with weight > 0,
    /// MAX_TABLE_SIZE]`, when two backends share an id, or when there are more than
    /// `u32::MAX - 1` backends.
    pub fn build(
        backends: &[MaglevBackend<'_>],
        size: u32,
        seed: u64,
    ) -> Result<Self, MaglevError> {
        if size > MAX_TABLE_SIZE {
            return Err(MaglevError::TooLarge(size));
        }
        if !is_prime(size) {
            return Err(MaglevError::NotPrime(size));
        }
        let count = u32::try_from(backends.len())
            .ok()
            .filter(|&n| n < u32::MAX)
            .ok_or(MaglevError::TooManyBackends(backends.len()))?;

        let mut order: Vec<u32> = (0..count).collect();
        order.sort_unstable_by(|&a, &b| backends[a as usize].id.cmp(backends[b as usize].id));
        if let Some(w) = order
            .windows(2)
            .find(|w| backends[w[0] as usize].id == backends[w[1] as usize].id)
        {
            return Err(MaglevError::DuplicateId(
                backends[w[0] as usize].id.to_owned(),
            ));
        }

        let active = backends.iter().filter(|b| b.weight > 0).count();
        if active == 0 {
            return Ok(Self {
                entries: Box::new([]),
                size,
                backends: count,
            });
        }
        if active > size as usize {
            return Err(MaglevError::TooSmall {
                size,
                backends: active,
            });
        }

        let m = u64::from(size);
        let mut walks: Vec<Walk> = order
            .iter()
            .filter(|&&i| backends[i as usize].weight > 0)
            .map(|&i| {
                let b = &backends[i as usize];
                let h1 = hash_bytes(seed ^ OFFSET_SALT, b.id.as_bytes());
                let h2 = hash_bytes(seed ^ SKIP_SALT, b.id.as_bytes());
                let skip = (h2 % (m - 1) + 1) as u32;
                Walk {
                    next: (h1 % m) as u32,
                    skip,
                    skip2: add_mod(skip, skip, size),
                    credit: 0,
                    weight: u64::from(b.weight),
                    index: i,
                }
            })
            .collect();
        let max_weight = walks.iter().map(|w| w.weight).max().unwrap_or(1);

        let mut entries = vec![0u32; size as usize].into_boxed_slice();
        let mut taken = vec![0u64; (size as usize).div_ceil(64)];
        let mut filled = 0u32;
        'rounds: loop {
            for w in &mut walks {
                w.credit += w.weight;
                if w.credit < max_weight {
                    continue;
                }
                w.credit -= max_weight;
                // Probe two permutation positions per step (c and c + skip), advancing by
                // 2 * skip: two independent bitmap tests instead of one dependent chain.
                let mut c = w.next;
                let c = loop {
                    let c1 = add_mod(c, w.skip, size);
                    if taken[(c / 64) as usize] & (1 << (c % 64)) == 0 {
                        w.next = c1;
                        break c;
                    }
                    if taken[(c1 / 64) as usize] & (1 << (c1 % 64)) == 0 {
                        w.next = add_mod(c1, w.skip, size);
                        break c1;
                    }
                    c = add_mod(c, w.skip2, size);
                };
                taken[(c / 64) as usize] |= 1 << (c % 64);
                entries[c as usize] = w.index;
                filled += 1;
                if filled == size {
                    break 'rounds;
                }
            }
        }
        Ok(Self {
            entries,
            size,
            backends: count,
        })
    }

    /// The table size `M` it was built with (also when it is empty).
    #[must_use]
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The number of backends in the slice it was built from (including weight 0 ones).
    #[must_use]
    pub fn backend_count(&self) -> usize {
        self.backends as usize
    }

    /// Whether the table has no entries (no backend had a non-zero weight).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The slot a flow hash maps to: `(flow_hash * len) >> 64`, in `0..len`.
    #[inline(always)]
    pub fn slot(&self, flow_hash: u64) -> usize {
        ((u128::from(flow_hash) * self.entries.len() as u128) >> 64) as usize
    }

    /// The backend for a flow: an index into the slice given to [`MaglevTable::build`], or
    /// `None` when the table is empty. One multiply and one load; no allocation.
    #[inline]
    #[must_use]
    pub fn lookup(&self, flow_hash: u64) -> Option<u32> {
        self.entries.get(self.slot(flow_hash)).copied()
    }

    /// The entry [`MaglevTable::lookup`] and [`MaglevTable::lookup_live`] read first for
    /// `flow_hash` (`None` if the table is empty): for a prefetch ahead of the lookup.
    #[inline(always)]
    #[must_use]
    pub fn entry_for(&self, flow_hash: u64) -> Option<&u32> {
        self.entries.get(self.slot(flow_hash))
    }

    /// The backend for a flow, skipping backends for which `is_live` is false (down or draining)
    /// without a rebuild.
    ///
    /// If the primary entry's backend is live it is returned, so such flows never move when
    /// other backends go down. Otherwise the flow is rehashed with `mix64(flow_hash + i)` for
    /// `i = 1..=`[`LIVE_REHASH_PROBES`], then the table is scanned from the primary slot on;
    /// the first live backend found is returned. `None` only if no backend with entries is
    /// live (or the table is empty). `is_live` is called with backend indices and must be cheap
    /// (e.g. a bitmap test); no allocation.
    #[inline]
    pub fn lookup_live(&self, flow_hash: u64, is_live: impl Fn(u32) -> bool) -> Option<u32> {
        let len = self.entries.len();
        if len == 0 {
            return None;
        }
        let primary = self.slot(flow_hash);
        let b = self.entries[primary];
        if is_live(b) {
            return Some(b);
        }
        self.rehash_live(flow_hash, primary, is_live)
    }

    /// The slow part of [`MaglevTable::lookup_live`]: rehash probes, then a linear scan.
    #[inline(never)]
    fn rehash_live(
        &self,
        flow_hash: u64,
        primary: usize,
        is_live: impl Fn(u32) -> bool,
    ) -> Option<u32> {
        for i in 1..=LIVE_REHASH_PROBES {
            let b = self.entries[self.slot(mix64(flow_hash.wrapping_add(i)))];
            if is_live(b) {
                return Some(b);
            }
        }
        let (before, after) = self.entries.split_at(primary);
        after[1..]
            .iter()
            .chain(before)
            .copied()
            .find(|&b| is_live(b))
    }

    /// The entries: `size()` backend indices, or none if the table is empty.
    #[must_use]
    pub fn entries(&self) -> &[u32] {
        &self.entries
    }

    /// How many entries each backend holds, indexed like the slice given to `build` (for the
    /// admin API's "share of the Maglev table"). Allocates; not for the hot path.
    #[must_use]
    pub fn shares(&self) -> Vec<u32> {
        let mut shares = vec![0u32; self.backends as usize];
        for &b in self.entries.iter() {
            shares[b as usize] += 1;
        }
        shares
    }
}

/// `(a + b) mod m` for `a, b < m <= MAX_TABLE_SIZE` (no overflow, no division).
#[inline(always)]
fn add_mod(a: u32, b: u32, m: u32) -> u32 {
    let s = a + b;
    if s >= m {
        s - m
    } else {
        s
    }
}

/// Whether `n` is prime (deterministic trial division by 6k ± 1; at most ~22,000 steps).
#[must_use]
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d = 5u64;
    while d * d <= n {
        if n % d == 0 || n % (d + 2) == 0 {
            return false;
        }
        d += 6;
    }
    true
}

/// The smallest prime `>= n`, capped at [`MAX_TABLE_SIZE`] (for suggestions in error messages).
#[must_use]
pub fn next_prime(n: u32) -> u32 {
    (n.max(2)..=MAX_TABLE_SIZE)
        .find(|&p| is_prime(p))
        .unwrap_or(MAX_TABLE_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Equal-weight backends named like `10.0.x.y:8080`.
    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:8080", i / 256, i % 256))
            .collect()
    }

    fn backends(names: &[String], weight: u32) -> Vec<MaglevBackend<'_>> {
        names
            .iter()
            .map(|id| MaglevBackend { id, weight })
            .collect()
    }

    /// The table with indices replaced by ids, to compare tables built from different slices.
    fn by_id<'a>(t: &MaglevTable, b: &[MaglevBackend<'a>]) -> Vec<&'a str> {
        t.entries().iter().map(|&i| b[i as usize].id).collect()
    }

    /// max load / mean load over backends with a non-zero share.
    fn imbalance(t: &MaglevTable) -> f64 {
        let shares = t.shares();
        let max = *shares.iter().max().unwrap();
        f64::from(max) * shares.len() as f64 / f64::from(t.size())
    }

    /// The balance bound: max/mean <= 1.01, except where no table of `size` entries over
    /// `n` backends can meet it, because some backend must hold `ceil(size / n)` entries (e.g.
    /// N = 992 at M = 65537: 67 / 66.07 = 1.014); there the bound is that least possible
    /// max/mean.
    fn balance_bound(size: u32, n: usize) -> f64 {
        let mean = f64::from(size) / n as f64;
        1.01f64.max(mean.ceil() / mean) + 1e-12
    }

    /// Large N are slow in unoptimised builds; keep the debug test suite quick.
    const BIG_N: usize = if cfg!(debug_assertions) { 300 } else { 1000 };

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65537));
        assert!(is_prime(655_373));
        assert!(is_prime(MAX_TABLE_SIZE));
        assert!(!is_prime(65536));
        assert!(!is_prime(655_371));
        assert!(!is_prime(65537 * 3));
        assert!(!is_prime(4_294_967_291 - 2)); // 2^32 - 7, odd composite (3 * 1431655761)
        assert!(is_prime(4_294_967_291)); // the largest u32 prime
        assert_eq!(next_prime(65536), 65537);
        assert_eq!(next_prime(655_370), 655_373);
    }

    #[test]
    fn balanced_for_fixed_n() {
        for n in [1, 2, 3, 10, 100, 946, 992, BIG_N] {
            let ids = names(n);
            let t = MaglevTable::build(&backends(&ids, 1), DEFAULT_TABLE_SIZE, 1).unwrap();
            assert_eq!(t.entries().len(), DEFAULT_TABLE_SIZE as usize);
            assert!(
                imbalance(&t) <= balance_bound(DEFAULT_TABLE_SIZE, n),
                "n = {n}: imbalance {}",
                imbalance(&t)
            );
            let shares = t.shares();
            let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            assert!(max - min <= 1, "n = {n}: shares {min}..={max}");
        }
    }

    #[test]
    fn empty_and_zero_weight() {
        let t = MaglevTable::build(&[], DEFAULT_TABLE_SIZE, 0).unwrap();
        assert!(t.is_empty());
        assert_eq!(t.size(), DEFAULT_TABLE_SIZE);
        assert_eq!(t.lookup(12345), None);
        assert_eq!(t.lookup_live(12345, |_| true), None);
        assert!(t.shares().is_empty());

        let ids = names(3);
        let mut b = backends(&ids, 0);
        let t = MaglevTable::build(&b, 7, 0).unwrap();
        assert!(t.is_empty());
        assert_eq!(t.shares(), [0, 0, 0]);
        b[1].weight = 5;
        let t = MaglevTable::build(&b, 7, 0).unwrap();
        assert_eq!(t.shares(), [0, 7, 0]);
        assert_eq!(t.lookup(u64::MAX), Some(1));
    }

    #[test]
    fn errors_say_what_to_do() {
        let ids = names(3);
        let b = backends(&ids, 1);
        let e = MaglevTable::build(&b, 65536, 0).unwrap_err();
        assert_eq!(e, MaglevError::NotPrime(65536));
        assert!(e.to_string().contains("next prime 65537"), "{e}");
        assert_eq!(
            MaglevTable::build(&b, 0, 0).unwrap_err(),
            MaglevError::NotPrime(0)
        );
        assert_eq!(
            MaglevTable::build(&b, 1, 0).unwrap_err(),
            MaglevError::NotPrime(1)
        );
        let e = MaglevTable::build(&b, 2, 0).unwrap_err();
        assert_eq!(
            e,
            MaglevError::TooSmall {
                size: 2,
                backends: 3
            }
        );
        assert!(e.to_string().contains("e.g. 1031"), "{e}");
        assert_eq!(MaglevTable::build(&b, 3, 0).unwrap().shares(), [1, 1, 1]);
        let e = MaglevTable::build(&b, 4_294_967_291, 0).unwrap_err();
        assert_eq!(e, MaglevError::TooLarge(4_294_967_291));
        let dup = [b[0], b[1], b[0]];
        let e = MaglevTable::build(&dup, 7, 0).unwrap_err();
        assert_eq!(e, MaglevError::DuplicateId("10.0.0.0:8080".into()));
        assert!(e.to_string().contains("unique"), "{e}");
    }

    #[test]
    fn seed_changes_the_table() {
        let ids = names(10);
        let b = backends(&ids, 1);
        let t1 = MaglevTable::build(&b, 251, 1).unwrap();
        let t2 = MaglevTable::build(&b, 251, 2).unwrap();
        assert_ne!(t1, t2);
        assert_eq!(t1, MaglevTable::build(&b, 251, 1).unwrap());
    }

    #[test]
    fn pinned_table() {
        // Hosts of one ECMP group must agree across versions too: a change here moves flows.
        let ids = names(3);
        let t = MaglevTable::build(&backends(&ids, 1), 13, 0).unwrap();
        assert_eq!(t.entries(), PINNED_13);
    }

    const PINNED_13: &[u32] = &[1, 0, 1, 2, 0, 0, 1, 2, 2, 0, 0, 1, 2];

    #[test]
    fn weights_are_proportional() {
        let ids = names(20);
        let mut b = backends(&ids, 1);
        for x in b.iter_mut().step_by(2) {
            x.weight = 2;
        }
        b[1].weight = 0;
        let t = MaglevTable::build(&b, DEFAULT_TABLE_SIZE, 9).unwrap();
        let s = t.shares();
        assert_eq!(s[1], 0);
        let heavy: u32 = s.iter().step_by(2).sum();
        let light: u32 = s.iter().skip(3).step_by(2).sum();
        // 10 backends of weight 2 and 9 of weight 1: 20/29 and 9/29 of the table.
        let ratio = (f64::from(heavy) / 10.0) / (f64::from(light) / 9.0);
        assert!((1.97..=2.03).contains(&ratio), "ratio {ratio}");
        for (i, &x) in s.iter().enumerate() {
            let expect = f64::from(DEFAULT_TABLE_SIZE) * f64::from(b[i].weight) / 29.0;
            assert!(
                (f64::from(x) - expect).abs() <= expect * 0.02 + 1.0,
                "{i}: {x} vs {expect}"
            );
        }
    }

    #[test]
    fn down_backend_moves_only_its_own_flows() {
        let ids = names(10);
        let b = backends(&ids, 1);
        let t = MaglevTable::build(&b, DEFAULT_TABLE_SIZE, 3).unwrap();
        let down = 4;
        let mut moved_to = [0u32; 10];
        for k in 0..100_000u64 {
            let h = mix64(k);
            let p = t.lookup(h).unwrap();
            let l = t.lookup_live(h, |i| i != down).unwrap();
            if p == down {
                assert_ne!(l, down);
                moved_to[l as usize] += 1;
            } else {
                assert_eq!(l, p, "flow {k} moved from a live backend");
            }
        }
        // The dead backend's ~10,000 flows spread over the other nine (~1,111 each).
        for (i, &m) in moved_to.iter().enumerate() {
            if i != down as usize {
                assert!((800..=1450).contains(&m), "backend {i} got {m}");
            }
        }
    }

    #[test]
    fn lookup_live_scans_when_rehash_fails() {
        let ids = names(50);
        let b = backends(&ids, 1);
        let t = MaglevTable::build(&b, 1009, 3).unwrap();
        // Only one backend live: most flows need the linear scan and all must find it.
        for k in 0..2000u64 {
            assert_eq!(t.lookup_live(mix64(k), |i| i == 17), Some(17));
        }
        assert_eq!(t.lookup_live(5, |_| false), None);
        // Live backends with no entries do not count.
        let mut b = b;
        b[3].weight = 0;
        let t = MaglevTable::build(&b, 1009, 3).unwrap();
        assert_eq!(t.lookup_live(5, |i| i == 3), None);
    }

    /// Fraction of slots whose backend id differs.
    fn changed(a: &[&str], b: &[&str]) -> f64 {
        a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
    }

    /// Removes backend `gone` and returns the fraction of slots whose backend changed.
    fn removal_change(n: usize, gone: usize, size: u32, seed: u64) -> f64 {
        let ids = names(n);
        let all = backends(&ids, 1);
        let t = MaglevTable::build(&all, size, seed).unwrap();
        let mut rest = all.clone();
        rest.remove(gone);
        let t2 = MaglevTable::build(&rest, size, seed).unwrap();
        changed(&by_id(&t, &all), &by_id(&t2, &rest))
    }

    /// Removing a backend must move its own `1/N` of the table; Maglev moves a little more
    /// (the paper's "not minimally disruptive"), the less the larger `M / N`. The worst extra
    /// over 50 seeds (`disruption_report`, docs/dataplane-tables.md): at M = 262139 and above,
    /// under +0.55 pp for every N from 3 to 1000, so "at most 1/N + 0.6 pp" holds there; at the
    /// default M = 65537, up to +1.07 pp (N = 400) and, for N = 3, +3.6 pp. Checked here on a
    /// few seeds against those bounds.
    #[test]
    fn removing_one_backend_disturbs_little() {
        let cases: &[(u32, &[usize], f64)] = &[
            (262_139, &[3, 10, 50, 100, 200, 400, 700, BIG_N], 0.006),
            (655_373, &[3, 100, BIG_N], 0.006),
            (DEFAULT_TABLE_SIZE, &[10, 50, 100, 400, BIG_N], 0.0125),
            (DEFAULT_TABLE_SIZE, &[2, 3], 0.04),
        ];
        for &(size, ns, extra) in cases {
            for &n in ns {
                for seed in [5u64, 11, 23] {
                    let gone = (seed as usize * 7919) % n;
                    let c = removal_change(n, gone, size, seed);
                    assert!(
                        c <= 1.0 / n as f64 + extra,
                        "M = {size}, n = {n}, seed {seed}: {:.3}% changed",
                        c * 100.0
                    );
                }
            }
        }
    }

    /// The disruption figures of docs/dataplane-tables.md:
    /// `cargo test -p sluice-dataplane --release --lib maglev::tests::disruption_report -- --ignored --nocapture`
    /// (`MAGLEV_SIZES=65537,262139 MAGLEV_NS=10,100 MAGLEV_SEEDS=50` to choose other sizes,
    /// counts and the number of seeds).
    #[test]
    #[ignore = "a report, slow in debug builds"]
    fn disruption_report() {
        let sizes: Vec<u32> = std::env::var("MAGLEV_SIZES")
            .map(|v| v.split(',').map(|x| x.parse().unwrap()).collect())
            .unwrap_or(vec![DEFAULT_TABLE_SIZE, 131_071, 262_139, 655_373]);
        let ns: Vec<usize> = std::env::var("MAGLEV_NS")
            .map(|v| v.split(',').map(|x| x.parse().unwrap()).collect())
            .unwrap_or(vec![3, 10, 50, 100, 200, 400, 700, 1000]);
        let seeds: u64 = std::env::var("MAGLEV_SEEDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50);
        for &size in &sizes {
            for &n in &ns {
                let mut extra: Vec<f64> = (0..seeds)
                    .map(|seed| {
                        let c = removal_change(n, (seed as usize * 7919) % n, size, seed);
                        (c - 1.0 / n as f64) * 100.0
                    })
                    .collect();
                extra.sort_by(f64::total_cmp);
                println!(
                    "M = {size:>6}, N = {n:>4}: minimum {:.3}%, extra median {:.3} pp, max {:.3} pp",
                    100.0 / n as f64,
                    extra[extra.len() / 2],
                    extra[extra.len() - 1]
                );
            }
        }
    }

    #[test]
    fn the_ladder_is_prime_and_rising() {
        for w in SIZE_LADDER.windows(2) {
            assert!(w[0] < w[1], "{w:?}");
        }
        for m in SIZE_LADDER {
            assert!(is_prime(m), "{m}");
            assert!(m <= MAX_TABLE_SIZE);
            // Each rung is the first prime above its power of two (the top: the largest prime
            // below 2^24), so nobody has to wonder why 16411 and not 16417.
            if m != MAX_TABLE_SIZE {
                assert_eq!(next_prime(m.next_power_of_two() / 2 + 1), m);
            }
        }
        assert_eq!(auto_size(0), SIZE_LADDER[0]);
        assert_eq!(auto_size(1), SIZE_LADDER[0]);
        for w in SIZE_LADDER.windows(2) {
            let cap = rung_capacity(w[0]);
            assert_eq!(auto_size(cap), w[0]);
            assert_eq!(auto_size(cap + 1), w[1]);
            assert!(w[1] as usize >= (cap + 1) * SLOTS_PER_BACKEND as usize);
        }
        assert_eq!(auto_size(5000), 4_194_319);
        assert_eq!(auto_size(usize::MAX), MAX_TABLE_SIZE);
    }

    /// The most a removal may move beyond `1/N`, by rung of the automatic size: 0.6 pp from
    /// 262147 up; on the smaller rungs, where Maglev cannot do that at a size a small Service
    /// can afford, a little above the worst measured over 50 seeds (docs/dataplane-tables.md).
    fn removal_excess_bound(m: u32) -> f64 {
        match m {
            1031 => 0.04,
            4099 => 0.03,
            16_411 => 0.025,
            65_537 => 0.0125,
            _ => 0.006,
        }
    }

    /// The bounds the automatic size keeps for `n` backends and `seed`: balance
    /// `max/mean <= max(1.01, ceil(M/N) / (M/N))`, and removal of one backend moving at most
    /// `1/N` + [`removal_excess_bound`]. Returns the removal's extra share over `1/N` (0 for
    /// `n = 1`, where the removal moves every flow, `1/N` of them).
    fn check_auto_size(n: usize, seed: u64) -> f64 {
        check_size(auto_size(n), n, seed)
    }

    /// [`check_auto_size`] at size `m`, e.g. a rung [`sticky_size`] keeps below its range.
    fn check_size(m: u32, n: usize, seed: u64) -> f64 {
        let ids = names(n);
        let all = backends(&ids, 1);
        let t = MaglevTable::build(&all, m, seed).unwrap();
        assert!(
            imbalance(&t) <= balance_bound(m, n),
            "M = {m}, N = {n}, seed {seed}: imbalance {}",
            imbalance(&t)
        );
        if n == 1 {
            return 0.0;
        }
        let mut rest = all.clone();
        rest.remove((seed as usize).wrapping_mul(7919) % n);
        let t2 = MaglevTable::build(&rest, m, seed).unwrap();
        let extra = changed(&by_id(&t, &all), &by_id(&t2, &rest)) - 1.0 / n as f64;
        assert!(
            extra <= removal_excess_bound(m) + 1e-12,
            "M = {m}, N = {n}, seed {seed}: removal moved {:.3} pp more than 1/N",
            extra * 100.0
        );
        extra
    }

    /// A sweep of the automatic size's bounds quick enough for every test run: N = 1..=40
    /// (where the seed matters most), the first and last N of each rung, and a stride, on
    /// three seeds. Debug builds stop at the 262147 rung (N <= 873); release builds go to
    /// N = 5000. `ladder_bounds_exhaustive` checks every N.
    #[test]
    fn auto_size_keeps_balance_and_removal_bounds() {
        let top = if cfg!(debug_assertions) { 873 } else { 5000 };
        let mut ns: Vec<usize> = (1..=40).collect();
        for m in SIZE_LADDER {
            let cap = rung_capacity(m);
            ns.extend([cap.saturating_sub(1), cap, cap + 1, cap + 2]);
        }
        ns.extend((41..=top).step_by(if cfg!(debug_assertions) { 97 } else { 331 }));
        ns.retain(|&n| (1..=top).contains(&n));
        ns.sort_unstable();
        ns.dedup();
        for &n in &ns {
            for seed in [1u64, 0x5eed, 0xdead_beef] {
                check_auto_size(n, seed ^ n as u64);
            }
        }
    }

    /// The recorded size holds while the count oscillates around a rung, in both directions,
    /// and gives way when the count outgrows it or halves below the smaller rung's capacity.
    #[test]
    fn sticky_size_has_hysteresis() {
        for (i, &m) in SIZE_LADDER.iter().enumerate().take(SIZE_LADDER.len() - 1) {
            let cap = rung_capacity(m);
            // Grown to this rung: a count that falls back just below it keeps the rung.
            assert_eq!(sticky_size(m, cap), m);
            if i > 0 {
                let below = SIZE_LADDER[i - 1];
                let floor = rung_capacity(below).div_ceil(2);
                assert_eq!(sticky_size(m, rung_capacity(below)), m, "M = {m}");
                assert_eq!(sticky_size(m, floor), m, "M = {m}");
                // Halved below the smaller rung: shrink to what the count alone asks.
                assert_eq!(sticky_size(m, floor - 1), auto_size(floor - 1), "M = {m}");
                assert!(sticky_size(m, floor - 1) < m);
                // Shrunk to the smaller rung: growing back just past its capacity grows.
                assert_eq!(sticky_size(below, rung_capacity(below) + 1), m);
            }
            // One past the rung's capacity: grow, whatever was recorded.
            assert_eq!(sticky_size(m, cap + 1), auto_size(cap + 1));
            assert!(sticky_size(m, cap + 1) > m);
        }
        // The counts a kept rung serves below its own range keep the balance bound (Maglev's
        // fill gives every backend the same count, give or take one). What it does to the
        // removal share: `kept_rung_removal_report`.
        for (i, &m) in SIZE_LADDER.iter().enumerate().skip(1).take(3) {
            let below = rung_capacity(SIZE_LADDER[i - 1]);
            for n in below.div_ceil(2)..=below {
                assert_eq!(sticky_size(m, n), m);
                let ids = names(n);
                let t = MaglevTable::build(&backends(&ids, 1), m, n as u64).unwrap();
                assert!(imbalance(&t) <= balance_bound(m, n), "M = {m}, N = {n}");
            }
        }
        // An oscillation across a rung boundary flips the size once, not at every crossing.
        let cap = rung_capacity(SIZE_LADDER[1]);
        let mut m = auto_size(cap);
        let mut sizes = Vec::new();
        for n in [cap, cap + 1, cap, cap + 1, cap, cap + 1, cap] {
            m = sticky_size(m, n);
            sizes.push(m);
        }
        sizes.dedup();
        assert_eq!(sizes, [SIZE_LADDER[1], SIZE_LADDER[2]]);
        // A recorded size that is not a rung (a peer's mistake, or a fixed size) is ignored.
        assert_eq!(sticky_size(65_521, 10), auto_size(10));
        assert_eq!(sticky_size(0, 0), auto_size(0));
    }

    /// The removal share over `1/N` at the rung [`sticky_size`] keeps below its range, against
    /// the rung [`auto_size`] would choose, over `MAGLEV_SEEDS` seeds (200) per N: median and
    /// worst, in percentage points. For docs/dataplane-tables.md:
    /// `cargo test -p sluice-dataplane --release --lib maglev::tests::kept_rung_removal_report -- --ignored --nocapture`
    #[test]
    #[ignore = "a report, tens of seconds in release builds"]
    fn kept_rung_removal_report() {
        let seeds: u64 = std::env::var("MAGLEV_SEEDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200);
        for (i, &m) in SIZE_LADDER.iter().enumerate().skip(1).take(3) {
            let below = rung_capacity(SIZE_LADDER[i - 1]);
            for n in below.div_ceil(2).max(2)..=below {
                let ids = names(n);
                let all = backends(&ids, 1);
                let mut kept = Vec::new();
                let mut auto = Vec::new();
                for seed in (0..seeds).map(|k| mix64(k ^ ((n as u64) << 32))) {
                    let mut rest = all.clone();
                    rest.remove((seed as usize).wrapping_mul(7919) % n);
                    for (size, out) in [(m, &mut kept), (auto_size(n), &mut auto)] {
                        let t = MaglevTable::build(&all, size, seed).unwrap();
                        let t2 = MaglevTable::build(&rest, size, seed).unwrap();
                        out.push(
                            (changed(&by_id(&t, &all), &by_id(&t2, &rest)) - 1.0 / n as f64)
                                * 100.0,
                        );
                    }
                }
                let stats = |v: &mut Vec<f64>| {
                    v.sort_by(f64::total_cmp);
                    (v[v.len() / 2], v[v.len() - 1])
                };
                let (k50, kmax) = stats(&mut kept);
                let (a50, amax) = stats(&mut auto);
                println!(
                    "N = {n:>3}: kept M = {m:>6}: p50 {k50:.2} max {kmax:.2} pp; auto M = {:>6}: p50 {a50:.2} max {amax:.2} pp",
                    auto_size(n)
                );
            }
        }
    }

    /// Every N from 1 to `MAGLEV_MAX_N` (5000) at its automatic size, `MAGLEV_SEEDS` seeds
    /// each (1; seeds differ between N), on two threads; prints the worst removal extra per
    /// rung. For docs/dataplane-tables.md:
    /// `cargo test -p sluice-dataplane --release --lib maglev::tests::ladder_bounds_exhaustive -- --ignored --nocapture`
    #[test]
    #[ignore = "minutes even in release builds"]
    fn ladder_bounds_exhaustive() {
        let env = |k: &str, d: usize| -> usize {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        let max_n = env("MAGLEV_MAX_N", 5000);
        let seeds = env("MAGLEV_SEEDS", 1) as u64;
        let next = std::sync::atomic::AtomicUsize::new(1);
        let worst = std::sync::Mutex::new(std::collections::BTreeMap::<u32, (f64, usize)>::new());
        let started = std::time::Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| loop {
                    // Largest N first, so the two threads finish together.
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i > max_n {
                        return;
                    }
                    let n = max_n + 1 - i;
                    for k in 0..seeds {
                        let e = check_auto_size(n, mix64(n as u64 * 1000 + k));
                        let mut w = worst.lock().unwrap();
                        let r = w.entry(auto_size(n)).or_insert((f64::MIN, 0));
                        if e > r.0 {
                            *r = (e, n);
                        }
                    }
                });
            }
        });
        for (m, (e, n)) in worst.into_inner().unwrap() {
            println!(
                "M = {m:>7} (N {:>4}..={:>4}): worst extra {:.3} pp at N = {n}",
                SIZE_LADDER
                    .iter()
                    .take_while(|&&r| r < m)
                    .last()
                    .map_or(1, |&r| rung_capacity(r) + 1),
                rung_capacity(m).min(max_n),
                e * 100.0
            );
        }
        println!(
            "N = 1..={max_n}, {seeds} seed(s) each: bounds held ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn balanced_for_random_n(n in 1..=BIG_N, seed in any::<u64>()) {
            let ids = names(n);
            let t = MaglevTable::build(&backends(&ids, 1), DEFAULT_TABLE_SIZE, seed).unwrap();
            prop_assert!(imbalance(&t) <= balance_bound(DEFAULT_TABLE_SIZE, n));
            let shares = t.shares();
            let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            prop_assert!(max - min <= 1, "shares {}..={}", min, max);
        }

        #[test]
        fn order_does_not_matter(
            n in 1..200usize,
            seed in any::<u64>(),
            perm in any::<u64>(),
        ) {
            let ids = names(n);
            let mut b = backends(&ids, 1);
            for (i, x) in b.iter_mut().enumerate() {
                x.weight = 1 + (i % 3) as u32;
            }
            let t = MaglevTable::build(&b, 4099, seed).unwrap();
            // Fisher-Yates with a proptest-chosen stream.
            let mut shuffled = b.clone();
            let mut st = perm;
            for i in (1..shuffled.len()).rev() {
                st = mix64(st.wrapping_add(i as u64));
                shuffled.swap(i, (st % (i as u64 + 1)) as usize);
            }
            let t2 = MaglevTable::build(&shuffled, 4099, seed).unwrap();
            prop_assert_eq!(by_id(&t, &b), by_id(&t2, &shuffled));
        }

        /// Removing one backend at the default size moves at most 1/N + 1.25 pp at the
        /// median of seven seeds. A single seed is not bounded so: the share has heavy tails
        /// (a few pp over 1/N for some seeds and backend sets; `kept_rung_removal_report`,
        /// docs/dataplane-tables.md), which a bound per seed turned into a flaky test.
        #[test]
        fn removal_disturbance_random(n in 10..=BIG_N, gone in any::<prop::sample::Index>(), seed in any::<u64>()) {
            let mut extra: Vec<f64> = (0..7u64)
                .map(|k| {
                    removal_change(n, gone.index(n), DEFAULT_TABLE_SIZE, mix64(seed ^ k))
                        - 1.0 / n as f64
                })
                .collect();
            extra.sort_by(f64::total_cmp);
            prop_assert!(extra[3] <= 0.0125, "n = {}: median extra {:.3} pp", n, extra[3] * 100.0);
        }

        #[test]
        fn marking_down_moves_no_other_key(n in 2..100usize, down in any::<prop::sample::Index>(), seed in any::<u64>()) {
            let ids = names(n);
            let b = backends(&ids, 1);
            let t = MaglevTable::build(&b, 1009, seed).unwrap();
            let down = down.index(n) as u32;
            for k in 0..2000u64 {
                let h = hash_bytes(seed, &k.to_le_bytes());
                let p = t.lookup(h).unwrap();
                let l = t.lookup_live(h, |i| i != down).unwrap();
                prop_assert!(l != down);
                if p != down {
                    prop_assert_eq!(l, p);
                }
            }
        }
    }
}
