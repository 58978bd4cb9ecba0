//! # Packet capture on the worker
//!
//! `sluicectl capture` and `sluicectl trace`: a worker copies the packets a capture's filter
//! matches, with what the pipeline did to each ([`Explain`]), and hands the copies to the
//! control plane, which writes pcapng or trace lines.
//!
//! ## Design
//! - A capture is a [`Tap`] per worker, sent as a `Command::Capture` (and taken away the same
//!   way). Without one the worker's cost is one branch per burst (`Option` test), not even
//!   one per packet.
//! - The filter is a tcpdump expression compiled by libpcap to classic BPF
//!   (`dpdk_sys::PcapProgram`) and run by [`bpf::Program`] on the frame's bytes: before the
//!   pipeline for received packets, after it for transmitted ones.
//! - Copies go into buffers the control plane allocated up front, passed around on two
//!   bounded lock-free channels: a free list the worker takes from and a queue of full
//!   records it gives to. No buffer free, or the queue full: the copy is not made and
//!   `TapStats::dropped` counts it; forwarding never waits. The control plane polls the
//!   queue (it never blocks on it, so the worker's `try_send` never has a sleeper to wake).
//! - The capture never holds an mbuf: it copies bytes, so it cannot leak or starve the
//!   packet pool whatever the reader does.
//! - [`Explain`] is worked out only for copied packets ([`explain`]): a flow lookup before
//!   and after the pipeline, the verdict, and a look at the rewritten frame.
pub mod bpf;
pub mod explain;
#[cfg(feature = "dpdk")]
mod tap;

pub use explain::{BackendInfo, Explain, Rewrite, Why};
#[cfg(feature = "dpdk")]
pub use tap::{Tap, TapStats};

/// Which way a captured packet went through the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received (before the pipeline).
    Rx,
    /// Transmitted (after it).
    Tx,
}

/// One captured packet.
#[derive(Debug, Clone)]
pub struct Record {
    /// The first bytes of the frame (at most the snap length).
    pub data: Vec<u8>,
    /// The frame's length on the wire.
    pub orig_len: u32,
    /// TSC when the worker received the burst.
    pub tsc: u64,
    /// Worker index.
    pub worker: u16,
    /// Port index (in the configuration's order).
    pub port: u16,
    /// Received or transmitted.
    pub dir: Direction,
    /// What the pipeline did with it.
    pub explain: Explain,
}
