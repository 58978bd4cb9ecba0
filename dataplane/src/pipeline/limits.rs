//! # New-flow budgets: token buckets per frontend and per source prefix
//!
//! A packet that would open a flow (its conntrack lookup missed) is admitted only while its
//! frontend's bucket and its (source prefix, frontend) bucket hold a token
//! ([`crate::snapshot::Frontend::flow_limit`], [`crate::snapshot::Frontend::source_flow_limit`]);
//! otherwise it is dropped as [`DropReason::VipFlowLimit`] or [`DropReason::SourceFlowLimit`].
//! Packets of tracked flows never come here.
//!
//! ## Design
//! - Per worker: each worker has its own buckets and applies its share of a host's limit (the
//!   control plane divides it, [`crate::snapshot::FlowLimit::per_worker`]); nothing is shared.
//! - A bucket is one `u64`: the worker's millisecond clock at its last use (low half) and its
//!   *debt* in thousandths of a flow (high half), the tokens taken and not yet refilled. A
//!   zeroed bucket is a full one, so both tables are allocated zeroed (untouched pages cost
//!   no memory) and a limit turned on by a new snapshot starts with a full burst.
//! - Refilled lazily when used: `rate` flows per second is `rate` thousandths per millisecond,
//!   exact in integers. A flow costs 1000; it is admitted while the debt after it stays within
//!   `burst * 1000`. A snapshot that changes a limit needs no work here: the next packet
//!   refills at the new rate and compares with the new burst.
//! - Frontend buckets: one per possible frontend id ([`MAX_FRONTENDS`], 512 KiB of zeroed
//!   memory per worker), indexed by id.
//! - Source buckets: a fixed table (its size from the config, a power of two), indexed by a
//!   seeded hash of (source address masked to its prefix, family, frontend id). Two keys that
//!   share a bucket share its budget; the table is not resized or aged.
//! - A refused flow took no token, and a bucket whose clock is more than 2^32 ms (49.7 days)
//!   old counts from its stamp modulo 2^32: it may still owe part of a burst.
use crate::hash::hash_2x64;
use crate::snapshot::{FlowLimit, Frontend, MAX_FRONTENDS};
use crate::stats::DropReason;
use crate::wire::parse::Parsed;

/// The source buckets of one worker: fixed at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimitConfig {
    /// The prefix length of an IPv4 source's bucket key (1 to 32).
    pub prefix_v4: u8,
    /// The prefix length of an IPv6 source's bucket key (1 to 128).
    pub prefix_v6: u8,
    /// Buckets in the table (rounded up to a power of two, at least 1).
    pub buckets: usize,
    /// Seed of the hash that spreads keys over the buckets (the daemon draws one per start,
    /// so that which prefixes share a bucket cannot be worked out in advance).
    pub seed: u64,
}

impl Default for SourceLimitConfig {
    fn default() -> Self {
        SourceLimitConfig {
            prefix_v4: 24,
            prefix_v6: 64,
            buckets: 1 << 16,
            seed: 0,
        }
    }
}

/// Thousandths of a flow: what one new flow costs a bucket.
const FLOW: u64 = 1000;

/// One worker's new-flow buckets.
#[derive(Debug)]
pub(super) struct Limits {
    /// By frontend id.
    frontends: Box<[u64]>,
    /// By hashed (source prefix, frontend).
    sources: Box<[u64]>,
    /// `sources.len() - 1`.
    mask: usize,
    /// Masks of the source address (16 bytes big-endian; IPv4 in the first 4) per family.
    mask_v4: u128,
    mask_v6: u128,
    seed: u64,
    /// Whether a bucket was written since the last reset: resetting untouched buckets (every
    /// fuzz input whose Services have no limit) costs nothing instead of clearing 1 MiB.
    written: bool,
}

/// The top `bits` bits of 128 set.
fn prefix_mask(bits: u8) -> u128 {
    match bits.min(128) {
        0 => 0,
        b => u128::MAX << (128 - u32::from(b)),
    }
}

impl Limits {
    /// Zeroed (full) buckets for every frontend id and `cfg.buckets` source buckets.
    pub(super) fn new(cfg: &SourceLimitConfig) -> Self {
        let n = cfg.buckets.max(1).next_power_of_two();
        Limits {
            frontends: vec![0u64; MAX_FRONTENDS].into_boxed_slice(),
            sources: vec![0u64; n].into_boxed_slice(),
            mask: n - 1,
            mask_v4: prefix_mask(cfg.prefix_v4.min(32)),
            mask_v6: prefix_mask(cfg.prefix_v6),
            seed: cfg.seed,
            written: false,
        }
    }

    /// Every bucket full again.
    #[cfg(any(test, feature = "check"))]
    pub(super) fn reset(&mut self) {
        if std::mem::take(&mut self.written) {
            self.frontends.fill(0);
            self.sources.fill(0);
        }
    }

    /// The buckets in use, as `(table, index, bucket)` text (a new or reset table: empty).
    #[cfg(any(test, feature = "check"))]
    pub(super) fn dump(&self) -> String {
        let used = |name: &'static str, t: &[u64]| {
            t.iter()
                .enumerate()
                .filter(|(_, b)| **b != 0)
                .map(move |(i, b)| format!("({name} {i} {b:#x})"))
                .collect::<Vec<_>>()
        };
        let mut out = used("frontend", &self.frontends);
        out.extend(used("source", &self.sources));
        out.join(" ")
    }

    /// Whether frontend `f` admits a new flow from `p`'s source now; takes a token from each
    /// of its buckets if so, none if not. The frontend's bucket is asked first, so a flood
    /// from many prefixes is stopped there without touching a source bucket.
    #[inline(always)]
    pub(super) fn admit(
        &mut self,
        f: &Frontend,
        p: &Parsed,
        v6: bool,
        now_ms: u32,
    ) -> Result<(), DropReason> {
        let fi = f.id as usize;
        // The frontend's debt after refilling, if it has a limit (ids are below MAX_FRONTENDS).
        let fd = match (f.flow_limit, self.frontends.get(fi)) {
            (Some(lim), Some(b)) => {
                let d = debt(*b, lim, now_ms);
                if !fits(d, lim) {
                    return Err(DropReason::VipFlowLimit);
                }
                Some(d)
            }
            _ => None,
        };
        if let Some(lim) = f.source_flow_limit {
            let i = self.source_slot(f.id, &p.src, v6);
            let d = debt(self.sources[i], lim, now_ms);
            if !fits(d, lim) {
                return Err(DropReason::SourceFlowLimit);
            }
            self.sources[i] = stamp(d + FLOW, now_ms);
            self.written = true;
        }
        if let (Some(d), Some(b)) = (fd, self.frontends.get_mut(fi)) {
            *b = stamp(d + FLOW, now_ms);
            self.written = true;
        }
        Ok(())
    }

    /// The source bucket of (`src` masked to its family's prefix, family, frontend `id`).
    #[inline(always)]
    fn source_slot(&self, id: u32, src: &[u8; 16], v6: bool) -> usize {
        let m = if v6 { self.mask_v6 } else { self.mask_v4 };
        let a = u128::from_be_bytes(*src) & m;
        let h = hash_2x64(
            self.seed ^ (u64::from(id) << 1 | u64::from(v6)),
            (a >> 64) as u64,
            a as u64,
        );
        h as usize & self.mask
    }
}

/// The debt of bucket `b` (thousandths of a flow) after refilling it under `lim` for the
/// time since its stamp. A refusal leaves the bucket as it was: refilling later from the same
/// stamp gives the same result.
#[inline(always)]
fn debt(b: u64, lim: FlowLimit, now_ms: u32) -> u64 {
    let (stamp, owed) = (b as u32, b >> 32);
    let paid = u64::from(lim.rate) * u64::from(now_ms.wrapping_sub(stamp));
    owed.saturating_sub(paid)
}

/// Whether one more flow fits a bucket owing `debt` under `lim`.
#[inline(always)]
fn fits(debt: u64, lim: FlowLimit) -> bool {
    debt + FLOW <= u64::from(lim.burst.min(FlowLimit::MAX_BURST)) * FLOW
}

/// A bucket owing `debt` (at most `MAX_BURST * 1000` < 2^32, as [`fits`] ensures) as of
/// `now_ms`.
#[inline(always)]
fn stamp(debt: u64, now_ms: u32) -> u64 {
    (debt << 32) | u64::from(now_ms)
}
