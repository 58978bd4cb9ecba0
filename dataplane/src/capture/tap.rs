//! A worker's end of a capture: the filter, the buffers, the copies.
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use dpdk_sys::{Mbuf, BURST};

use super::bpf::Program;
use super::explain::{self, Before};
use super::{Direction, Record};
use crate::pipeline::{Pipeline, Verdict};
use crate::snapshot::Snapshot;
use crate::stats::bump;

/// A worker's capture counters (single writer: that worker).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct TapStats {
    /// Packets copied and queued for the control plane.
    pub copied: AtomicU64,
    /// Packets the filter matched but that were not copied: no free buffer, or the queue to
    /// the control plane full (the reader does not keep up).
    pub dropped: AtomicU64,
}

/// A received packet copied before the pipeline ran, waiting for its verdict.
#[derive(Debug)]
struct Pending {
    buf: Vec<u8>,
    orig_len: u32,
    before: Before,
}

/// One worker's part of a capture (see the module documentation of [`crate::capture`]).
#[derive(Debug)]
pub struct Tap {
    /// The port index captured.
    port: usize,
    /// Capture received / transmitted packets.
    rx: bool,
    tx: bool,
    /// Bytes copied per packet at most.
    snaplen: usize,
    filter: Arc<Program>,
    /// Empty buffers (allocated by the control plane), and the way back for one not used.
    free: Receiver<Vec<u8>>,
    recycle: Sender<Vec<u8>>,
    /// Full records, to the control plane.
    out: Sender<Record>,
    worker: u16,
    stats: Arc<TapStats>,
    /// Per packet of the current burst: its copy, if received and matched.
    pending: [Option<Pending>; BURST],
    /// How many of `pending` are set.
    npending: usize,
}

impl Clone for Tap {
    /// The same capture, with nothing pending.
    fn clone(&self) -> Self {
        Tap::new(
            self.port,
            self.rx,
            self.tx,
            self.snaplen,
            self.filter.clone(),
            (self.free.clone(), self.recycle.clone()),
            self.out.clone(),
            self.worker,
            self.stats.clone(),
        )
    }
}

impl Tap {
    /// Worker `worker`'s part of a capture of port index `port` (`rx`/`tx`: which
    /// directions), copying at most `snaplen` bytes a packet into buffers from the free list
    /// `free` (both ends: a buffer not handed on goes back) and handing them on `out`;
    /// `stats` counts for this worker alone.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        port: usize,
        rx: bool,
        tx: bool,
        snaplen: usize,
        filter: Arc<Program>,
        free: (Receiver<Vec<u8>>, Sender<Vec<u8>>),
        out: Sender<Record>,
        worker: u16,
        stats: Arc<TapStats>,
    ) -> Tap {
        let (free, recycle) = free;
        Tap {
            port,
            rx,
            tx,
            snaplen,
            filter,
            free,
            recycle,
            out,
            worker,
            stats,
            pending: std::array::from_fn(|_| None),
            npending: 0,
        }
    }

    /// This worker's counters for the capture.
    pub fn stats(&self) -> &Arc<TapStats> {
        &self.stats
    }

    /// Copies `m`'s frame into a free buffer, or counts a dropped copy.
    #[inline(always)]
    fn copy(&self, m: &Mbuf) -> Option<(Vec<u8>, u32)> {
        let Ok(mut buf) = self.free.try_recv() else {
            bump(&self.stats.dropped, 1);
            return None;
        };
        let d = m.data();
        // Within the buffer's capacity: extending never reallocates on this core.
        let n = d.len().min(self.snaplen).min(buf.capacity());
        buf.clear();
        buf.extend_from_slice(&d[..n]);
        Some((buf, d.len() as u32))
    }

    /// Hands a record to the control plane (a full queue counts a dropped copy and returns
    /// the buffer to the free list).
    #[inline(always)]
    fn send(&self, r: Record) {
        match self.out.try_send(r) {
            Ok(()) => bump(&self.stats.copied, 1),
            Err(e) => {
                bump(&self.stats.dropped, 1);
                // The free list has room for every buffer, so this does not fail while the
                // capture lives (and the worker frees nothing on its packet path).
                let _ = self.recycle.try_send(e.into_inner().data);
            }
        }
    }

    /// Before the pipeline: copies the received packets of `port` the filter matches and
    /// notes their flows. The loop runs the filter alone; a match is handled out of line.
    #[inline(never)]
    pub fn received(&mut self, port: usize, pkts: &[Mbuf], pipeline: &Pipeline, snap: &Snapshot) {
        if port != self.port || !self.rx {
            return;
        }
        for (i, m) in pkts.iter().enumerate() {
            if self.filter.matches(m.data()) {
                self.matched_rx(i, m, pipeline, snap);
            }
        }
    }

    /// A received packet the filter matched: its copy and its flow before the pipeline.
    #[inline(never)]
    fn matched_rx(&mut self, i: usize, m: &Mbuf, pipeline: &Pipeline, snap: &Snapshot) {
        // (A burst has at most BURST packets, so the slot is there.)
        if i >= self.pending.len() {
            return;
        }
        if let Some((buf, orig_len)) = self.copy(m) {
            let before = explain::before(pipeline, snap, m.data());
            self.pending[i] = Some(Pending {
                buf,
                orig_len,
                before,
            });
            self.npending += 1;
        }
    }

    /// After the pipeline: the verdicts of the packets copied on receipt, and copies of the
    /// transmitted packets the filter matches. `tsc`: when the burst was received. A burst
    /// with no copy pending (most) runs a loop of the filter alone.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    pub fn processed(
        &mut self,
        port: usize,
        pkts: &[Mbuf],
        verdicts: &[Verdict],
        pipeline: &Pipeline,
        snap: &Snapshot,
        tsc: u64,
    ) {
        if port != self.port {
            return;
        }
        if self.npending > 0 {
            self.processed_pending(port, pkts, verdicts, pipeline, snap, tsc);
            return;
        }
        if !self.tx {
            return;
        }
        for (m, &v) in pkts.iter().zip(verdicts) {
            if v == Verdict::Tx && self.filter.matches(m.data()) {
                self.matched_tx(port, m, None, pipeline, snap, tsc);
            }
        }
    }

    /// [`Tap::processed`] for a burst with copies pending: each one's verdict, and the
    /// transmit filter.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn processed_pending(
        &mut self,
        port: usize,
        pkts: &[Mbuf],
        verdicts: &[Verdict],
        pipeline: &Pipeline,
        snap: &Snapshot,
        tsc: u64,
    ) {
        for (i, (m, &v)) in pkts.iter().zip(verdicts).enumerate() {
            let mut seen = None;
            if let Some(p) = self.pending.get_mut(i).and_then(Option::take) {
                self.npending -= 1;
                let e = explain::after(pipeline, snap, &p.before, v, m.data());
                seen = Some(e);
                self.send(Record {
                    data: p.buf,
                    orig_len: p.orig_len,
                    tsc,
                    worker: self.worker,
                    port: port as u16,
                    dir: Direction::Rx,
                    explain: e,
                });
            }
            if self.tx && v == Verdict::Tx && self.filter.matches(m.data()) {
                self.matched_tx(port, m, seen, pipeline, snap, tsc);
            }
        }
    }

    /// A transmitted packet the filter matched: its copy, with `seen` (its verdict as
    /// received, if it was copied then too) or what its flow says as it leaves.
    #[inline(never)]
    fn matched_tx(
        &mut self,
        port: usize,
        m: &Mbuf,
        seen: Option<super::Explain>,
        pipeline: &Pipeline,
        snap: &Snapshot,
        tsc: u64,
    ) {
        if let Some((buf, orig_len)) = self.copy(m) {
            let explain = seen.unwrap_or_else(|| explain::leaving(pipeline, snap, m.data()));
            self.send(Record {
                data: buf,
                orig_len,
                tsc,
                worker: self.worker,
                port: port as u16,
                dir: Direction::Tx,
                explain,
            });
        }
    }
}
