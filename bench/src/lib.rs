//! # sluice-bench: `sluice-pktgen` and Sluice's benchmark scenarios
//!
//! `sluice-pktgen` is a DPDK traffic generator for load balancers. It sends N flows of TCP or
//! UDP toward VIPs (IPv4, IPv6 or both), with a fixed frame size or IMIX, a share of brand-new
//! flows (TCP SYNs) among established ones, at a fixed rate or as fast as the link takes them,
//! and receives what comes back: it counts per flow group and measures latency from a TSC
//! timestamp it writes into each payload.
//!
//! ## Design
//! - Everything but [`engine`] is pure and unit-tested without hugepages: the traffic model
//!   ([`spec`]), the frame templates and their per-packet patch ([`template`]), the receive
//!   classifier ([`classify`]) and the report ([`report`]).
//! - **Precomputed template mbufs.** At start-up every stream gets a ring of complete frames in
//!   mbufs. Per packet the generator rewrites only what varies (source address and port, a
//!   48-bit TSC stamp, and the two checksums from precomputed partial sums) and lends the
//!   mbuf to the driver with one more reference (`TxQueue::tx_burst_shared`), so it never
//!   allocates, copies or frees on the send path.
//! - **It is the backends.** With full NAT the device under test sends every forwarded packet
//!   to a backend's MAC; the generator answers ARP and NDP for the backend networks it is told
//!   about (`--answer`), so those packets come back to it and are counted as received.
//! - **It says when it is the limit.** At maximum rate a device that is slower than the
//!   generator refuses packets (its receive ring is full); if the link never refused anything,
//!   the generator, not the device, set the rate, and the report says so.
//! - One core: the poll loop runs on the EAL main lcore; no other thread of the generator
//!   busy-waits.
#![forbid(unsafe_code)]

pub mod classify;
pub mod engine;
pub mod report;
pub mod spec;
pub mod template;
