//! # sluice-dataplane: packets in, packets out
//!
//! The per-packet pipeline of Sluice and the pinned poll-mode worker that runs it.
//!
//! ## Design
//! - Everything but `worker` works on byte slices and never sees DPDK types, so the pipeline
//!   is unit-tested, fuzzed and benchmarked without hugepages. The worker is behind the `dpdk`
//!   feature (default); without it the crate builds and tests without libdpdk.
//! - Tables are built before a worker's loop starts (conntrack) or by the control plane
//!   (snapshots, Maglev tables). Nothing on the per-packet path allocates, locks, logs or formats.
//! - Verdicts, not errors: a packet is forwarded, answered, handed to another worker or dropped
//!   with a [`stats::DropReason`] that indexes a counter array.
#![forbid(unsafe_code)]

pub mod capture;
#[cfg(any(test, feature = "check"))]
pub mod check;
pub mod conntrack;
pub mod hash;
pub mod maglev;
pub mod pipeline;
pub mod snapshot;
pub mod stats;
pub mod wire;
#[cfg(feature = "dpdk")]
pub mod worker;
