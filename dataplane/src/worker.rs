//! # The pinned poll-mode worker
//!
//! One OS thread per core, pinned with `core_affinity` and registered with DPDK, owning its RX/TX
//! queues, its [`Pipeline`] (flow tables), its stats and its current snapshot.
//!
//! ## Design (after DPDK's l3fwd)
//! Per iteration: take the newest snapshot from the channel (the old one goes back on a second
//! channel so big tables are never freed on a worker core); run control commands; drain the
//! rings from other workers; `rx_burst` 32 per queue; run every packet through the pipeline;
//! buffer TX per queue and flush when a burst is full or after a short TSC deadline; amortise
//! conntrack expiry (a few buckets per iteration, every millisecond). Nothing here can fail
//! once the loop runs; all failures happen at start-up.
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use dpdk_sys::{
    register_thread, tsc, tsc_hz, Eal, Mbuf, MbufBatch, Mempool, RingConsumer, RingProducer,
    RxQueue, TxQueue,
};

use crate::edge;
use crate::pipeline::{FlowEntry, NeighborEvent, PacketBuf, Pipeline, PipelineConfig, Verdict};
use crate::snapshot::Snapshot;
use crate::stats::{bump, set, DropReason, WorkerStats};

impl PacketBuf for Mbuf {
    #[inline(always)]
    fn data(&self) -> &[u8] {
        Mbuf::data(self)
    }
    #[inline(always)]
    fn data_mut(&mut self) -> &mut [u8] {
        Mbuf::data_mut(self)
    }
    #[inline(always)]
    fn prepend(&mut self, n: usize) -> bool {
        Mbuf::prepend(self, n)
    }
    #[inline(always)]
    fn trim(&mut self, n: usize) -> bool {
        Mbuf::trim(self, n)
    }
}

/// Something the control plane asks a worker to send or answer.
#[derive(Debug, Clone)]
pub enum Command {
    /// Resolve a next hop: ARP request (IPv4) or neighbour solicitation (IPv6) from `from`.
    Resolve {
        /// Address to resolve.
        target: IpAddr,
        /// Our address to ask from (same family).
        from: IpAddr,
    },
    /// Announce an address we now own: gratuitous ARP / unsolicited NA.
    Announce(IpAddr),
    /// Find tracked forward flows (admin API), answered on `reply` off the packet path: an
    /// exact 5-tuple with one keyed lookup at the worker's next millisecond tick; a client
    /// query by scanning the family's table 16k slots per tick (a 2M-slot table in about 128
    /// ms; at most 1024 ticks for any table), so that no tick holds the worker's packets up for
    /// long.
    FindFlows {
        /// What to look for.
        query: FlowQuery,
        /// Where the answer goes (a full or closed channel drops it).
        reply: Sender<FlowAnswer>,
    },
}

/// Which forward flows [`Command::FindFlows`] asks for: every flow of `client`, narrowed by
/// the optional fields. With every field set, one exact 5-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowQuery {
    /// Client address.
    pub client: IpAddr,
    /// Client port.
    pub client_port: Option<u16>,
    /// VIP.
    pub vip: Option<IpAddr>,
    /// VIP port.
    pub vip_port: Option<u16>,
    /// IP protocol number.
    pub proto: Option<u8>,
    /// At most this many flows per worker.
    pub max: usize,
}

/// A worker's answer to [`Command::FindFlows`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowAnswer {
    /// The worker's index.
    pub worker: u16,
    /// The worker's millisecond clock when it answered (compare with `last_seen_ms`).
    pub now_ms: u32,
    /// Matching flows.
    pub flows: Vec<FlowEntry>,
}

/// Slots of a flow table an admin client scan reads per millisecond tick, at least: about
/// 0.5 MiB of IPv4 entries, tens of microseconds, so no tick holds the worker's packets up for
/// long. Tables over 16M slots are read in 1024 pieces instead, so a scan always ends within
/// about a second.
const SCAN_SLOTS_PER_TICK: usize = 16 * 1024;

/// A client-address [`FlowQuery`] being answered a piece per tick.
struct Scan {
    query: FlowQuery,
    reply: Sender<FlowAnswer>,
    /// Next slot to read.
    next: usize,
    /// Matches so far.
    flows: Vec<FlowEntry>,
}

impl Scan {
    /// Reads the next piece of the table; the answer once the scan is done.
    fn step(&mut self, pipeline: &Pipeline, worker: u16, now_ms: u32) -> Option<FlowAnswer> {
        let q = self.query;
        let next =
            pipeline.flows_from_slots(q.client, self.next, SCAN_SLOTS_PER_TICK, &mut self.flows);
        self.flows.retain(|f| {
            q.client_port.is_none_or(|p| p == f.sport)
                && q.vip.is_none_or(|v| v == f.dst)
                && q.vip_port.is_none_or(|p| p == f.dport)
                && q.proto.is_none_or(|p| p == f.proto)
        });
        match next {
            Some(n) if self.flows.len() < q.max => {
                self.next = n;
                None
            }
            _ => {
                // Entries can move between buckets while the scan spans ticks: a flow may be
                // seen twice (or, rarely, missed); keep one of each.
                let mut flows = std::mem::take(&mut self.flows);
                flows.sort_by_key(|f| (f.dst, f.sport, f.dport, f.proto));
                flows.dedup_by_key(|f| (f.dst, f.sport, f.dport, f.proto));
                flows.truncate(q.max);
                Some(FlowAnswer {
                    worker,
                    now_ms,
                    flows,
                })
            }
        }
    }
}

/// Answers an exact 5-tuple [`FlowQuery`] with one keyed lookup; `None` for a client query,
/// which needs a [`Scan`].
fn find_flow(
    pipeline: &Pipeline,
    seed: u64,
    q: &FlowQuery,
    worker: u16,
    now_ms: u32,
) -> Option<FlowAnswer> {
    let (Some(sport), Some(vip), Some(dport), Some(proto)) =
        (q.client_port, q.vip, q.vip_port, q.proto)
    else {
        return None;
    };
    let flows = pipeline
        .find_flow(seed, q.client, vip, sport, dport, proto)
        .map(|(fwd, state, last_seen_ms)| FlowEntry {
            src: q.client,
            dst: vip,
            sport,
            dport,
            proto,
            fwd,
            state,
            last_seen_ms,
        })
        .into_iter()
        .collect();
    Some(FlowAnswer {
        worker,
        now_ms,
        flows,
    })
}

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Worker index (also its queue number on every port).
    pub index: u16,
    /// Core to pin to (`None`: not pinned, for tests).
    pub core: Option<usize>,
    /// Pipeline and table sizes.
    pub pipeline: PipelineConfig,
    /// TX flush deadline in microseconds (a partial burst waits at most this long).
    pub tx_flush_us: u64,
    /// Conntrack buckets scanned per table per expiry tick (one tick per millisecond).
    pub expire_buckets: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            index: 0,
            core: None,
            pipeline: PipelineConfig::default(),
            tx_flush_us: 100,
            expire_buckets: 64,
        }
    }
}

/// The queues a worker owns: one RX/TX pair per port; packets leave by the port they came in.
#[derive(Debug)]
pub struct WorkerQueues {
    /// (rx, tx) per port.
    pub pairs: Vec<(RxQueue, TxQueue)>,
}

/// The channels between a worker and the control plane / other workers.
#[derive(Debug)]
pub struct WorkerLinks {
    /// New snapshots (the worker keeps the newest).
    pub snapshots: Receiver<Arc<Snapshot>>,
    /// Snapshots the worker no longer uses (freed by the control plane).
    pub retired: Sender<Arc<Snapshot>>,
    /// Neighbours learned from ARP replies / NAs.
    pub neighbors: Sender<NeighborEvent>,
    /// Commands from the control plane.
    pub commands: Receiver<Command>,
    /// Rings to other workers, indexed by worker (None for self).
    pub to_workers: Vec<Option<RingProducer>>,
    /// Rings from other workers.
    pub from_workers: Vec<RingConsumer>,
    /// Set to stop the loop.
    pub stop: Arc<AtomicBool>,
}

/// A running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    /// The worker's counters.
    pub stats: Arc<WorkerStats>,
    thread: Option<JoinHandle<Result<(), String>>>,
    stop: Arc<AtomicBool>,
}

impl WorkerHandle {
    /// Asks the worker to stop and waits for it.
    pub fn stop(mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        self.join_inner()
    }

    fn join_inner(&mut self) -> Result<(), String> {
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| "worker thread panicked".to_string())?,
            None => Ok(()),
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.join_inner();
    }
}

/// Starts a worker thread.
pub fn spawn(
    eal: Arc<Eal>,
    cfg: WorkerConfig,
    queues: WorkerQueues,
    links: WorkerLinks,
    pool: Arc<Mempool>,
    first: Arc<Snapshot>,
    max_backends: usize,
) -> std::io::Result<WorkerHandle> {
    let stats = Arc::new(WorkerStats::new(max_backends));
    let stop = links.stop.clone();
    let st = stats.clone();
    let thread = std::thread::Builder::new()
        .name(format!("sluice-w{}", cfg.index))
        .spawn(move || run(&eal, cfg, queues, links, &pool, first, st))?;
    Ok(WorkerHandle {
        stats,
        thread: Some(thread),
        stop,
    })
}

struct Loop {
    pipeline: Pipeline,
    snap: Arc<Snapshot>,
    tx: Vec<MbufBatch>,
    ring_out: Vec<MbufBatch>,
    tx_deadline: Vec<u64>,
}

fn run(
    eal: &Eal,
    cfg: WorkerConfig,
    mut queues: WorkerQueues,
    mut links: WorkerLinks,
    pool: &Mempool,
    first: Arc<Snapshot>,
    stats: Arc<WorkerStats>,
) -> Result<(), String> {
    if let Some(core) = cfg.core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            return Err(format!("worker {}: cannot pin to core {core}", cfg.index));
        }
    }
    let _reg = register_thread(eal).map_err(|e| format!("worker {}: {e}", cfg.index))?;
    let pipeline = Pipeline::new(&cfg.pipeline, stats.clone());
    let nports = queues.pairs.len();
    let nworkers = links.to_workers.len();
    let mut l = Loop {
        pipeline,
        snap: first,
        tx: (0..nports).map(|_| MbufBatch::new()).collect(),
        ring_out: (0..nworkers).map(|_| MbufBatch::new()).collect(),
        tx_deadline: vec![0; nports],
    };
    set(&stats.snapshot_generation, l.snap.generation);
    let hz = tsc_hz().max(1);
    let flush_ticks = hz / 1_000_000 * cfg.tx_flush_us.max(1);
    let ms_ticks = (hz / 1000).max(1);
    let start = tsc();
    let mut next_tick = start + ms_ticks;
    // Client flow queries in progress (admin), one table piece per tick.
    let mut scans: std::collections::VecDeque<Scan> = std::collections::VecDeque::new();
    let mut rx = MbufBatch::new();
    let mut last = start;
    while !links.stop.load(Ordering::Relaxed) {
        let now = tsc();
        let now_ms = ((now - start) / ms_ticks) as u32;
        // Newest snapshot wins; old ones go back to be freed off this core.
        while let Ok(s) = links.snapshots.try_recv() {
            let old = std::mem::replace(&mut l.snap, s);
            set(&stats.snapshot_generation, l.snap.generation);
            if let Err(e) = links.retired.try_send(old) {
                // The control plane went away; dropping here is the only option left.
                drop(e.into_inner());
            }
        }
        let mut work = 0usize;
        // Packets other workers passed to us (NAT replies for our port slice).
        for ri in 0..links.from_workers.len() {
            let n = links.from_workers[ri].dequeue(&mut rx);
            if n > 0 {
                bump(&stats.from_other_worker, n as u64);
                work += n;
                // They arrived on port 0's queues of another worker; send out port 0.
                process_burst(
                    &mut l,
                    &mut rx,
                    0,
                    now,
                    now_ms,
                    flush_ticks,
                    &mut queues,
                    &mut links.to_workers,
                    &links.neighbors,
                    &stats,
                );
            }
        }
        for port in 0..nports {
            let n = queues.pairs[port].0.rx_burst(&mut rx);
            if n == 0 {
                continue;
            }
            work += n;
            bump(&stats.rx_packets, n as u64);
            let bytes: usize = rx.iter_mut().map(|m| m.len()).sum();
            bump(&stats.rx_bytes, bytes as u64);
            process_burst(
                &mut l,
                &mut rx,
                port,
                now,
                now_ms,
                flush_ticks,
                &mut queues,
                &mut links.to_workers,
                &links.neighbors,
                &stats,
            );
        }
        // Hand-offs to other workers.
        for (w, b) in l.ring_out.iter_mut().enumerate() {
            if b.is_empty() {
                continue;
            }
            if let Some(Some(r)) = links.to_workers.get_mut(w) {
                r.enqueue(b);
            }
            let left = b.len();
            if left > 0 {
                for _ in 0..left {
                    stats.drop_packet(DropReason::RingFull);
                }
                b.free_all();
            }
        }
        // TX flush: at once when this iteration did not fill a burst (we are not saturated, so
        // waiting only adds latency), else when the deadline passes.
        let idle = work < dpdk_sys::BURST;
        for port in 0..nports {
            if !l.tx[port].is_empty() && (idle || now >= l.tx_deadline[port]) {
                flush(&mut l.tx[port], &mut queues.pairs[port].1, &stats);
            }
        }
        if now >= next_tick {
            next_tick = now + ms_ticks;
            while let Ok(c) = links.commands.try_recv() {
                match c {
                    Command::FindFlows { query, reply } => {
                        match find_flow(&l.pipeline, l.snap.hash_seed, &query, cfg.index, now_ms) {
                            Some(a) => {
                                let _ = reply.try_send(a);
                            }
                            None => scans.push_back(Scan {
                                query,
                                reply,
                                next: 0,
                                flows: Vec::new(),
                            }),
                        }
                    }
                    c => command(&l.snap, c, pool, &mut l.tx[0], &stats),
                }
            }
            if let Some(sc) = scans.front_mut() {
                if let Some(a) = sc.step(&l.pipeline, cfg.index, now_ms) {
                    let _ = sc.reply.try_send(a);
                    scans.pop_front();
                }
            }
            l.pipeline.expire(now_ms, cfg.expire_buckets);
        }
        let end = tsc();
        bump(&stats.polls, 1);
        bump(&stats.total_cycles, end - last);
        if work > 0 {
            bump(&stats.busy_polls, 1);
            bump(&stats.busy_cycles, end - now);
        }
        last = end;
    }
    for port in 0..nports {
        flush(&mut l.tx[port], &mut queues.pairs[port].1, &stats);
        l.tx[port].free_all();
    }
    l.pipeline.publish_table_stats();
    let _ = links.retired.try_send(l.snap);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn process_burst(
    l: &mut Loop,
    rx: &mut MbufBatch,
    port: usize,
    now: u64,
    now_ms: u32,
    flush_ticks: u64,
    queues: &mut WorkerQueues,
    to_workers: &mut [Option<RingProducer>],
    neighbors: &Sender<NeighborEvent>,
    stats: &WorkerStats,
) {
    let snap: &Snapshot = &l.snap;
    for m in rx.iter_mut() {
        l.pipeline.prefetch(snap, m);
    }
    l.pipeline.prefetch_entries(snap);
    for (i, mut m) in rx.drain().enumerate() {
        if m.segments() > 1 {
            stats.drop_packet(DropReason::Multisegment);
            continue;
        }
        match l.pipeline.process_prefetched(snap, i, &mut m, now_ms) {
            Verdict::Tx => {
                let b = &mut l.tx[port];
                if b.is_empty() {
                    l.tx_deadline[port] = now + flush_ticks;
                }
                if let Err(m) = b.push(m) {
                    flush(b, &mut queues.pairs[port].1, stats);
                    let _ = b.push(m);
                }
                if b.is_full() {
                    flush(b, &mut queues.pairs[port].1, stats);
                }
            }
            Verdict::ToWorker(w) => {
                let w = usize::from(w);
                match l.ring_out.get_mut(w) {
                    Some(b) => {
                        if let Err(m) = b.push(m) {
                            if let Some(Some(r)) = to_workers.get_mut(w) {
                                r.enqueue(b);
                            }
                            if b.push(m).is_err() {
                                stats.drop_packet(DropReason::RingFull);
                            }
                        }
                    }
                    None => stats.drop_packet(DropReason::RingFull),
                }
            }
            Verdict::Neighbor(ev) => {
                if neighbors.try_send(ev).is_err() {
                    stats.drop_packet(DropReason::ControlFull);
                }
            }
            Verdict::Drop(_) => {}
        }
    }
}

#[inline(always)]
fn flush(b: &mut MbufBatch, q: &mut TxQueue, stats: &WorkerStats) {
    if b.is_empty() {
        return;
    }
    let mut tries = 0;
    while !b.is_empty() && tries < 4 {
        let bytes: usize = b.iter_mut().map(|m| m.len()).sum();
        let before = b.len();
        let n = q.tx_burst(b);
        if n > 0 {
            bump(&stats.tx_packets, n as u64);
            // bytes of the sent ones: approximate by the average when partially sent
            bump(&stats.tx_bytes, (bytes * n / before) as u64);
        }
        tries += 1;
    }
    let left = b.len();
    if left > 0 {
        bump(&stats.drops[DropReason::TxFull as usize], left as u64);
        b.free_all();
    }
}

fn command(snap: &Snapshot, c: Command, pool: &Mempool, tx: &mut MbufBatch, stats: &WorkerStats) {
    let Some(mut m) = pool.alloc() else {
        return;
    };
    let mac = snap.local.mac;
    let Some(buf) = m.append(edge::ND_FRAME_LEN.max(edge::MIN_FRAME_LEN)) else {
        return;
    };
    let n = match c {
        Command::Resolve {
            target: IpAddr::V4(t),
            from: IpAddr::V4(f),
        } => edge::arp_request(buf, mac, f.octets(), t.octets()),
        Command::Resolve {
            target: IpAddr::V6(t),
            from: IpAddr::V6(f),
        } => edge::neighbor_solicit(buf, mac, f.octets(), t.octets()),
        Command::Resolve { .. } => return,
        Command::Announce(IpAddr::V4(a)) => edge::gratuitous_arp(buf, mac, a.octets()),
        Command::Announce(IpAddr::V6(a)) => edge::unsolicited_na(buf, mac, a.octets()),
        Command::FindFlows { .. } => return,
    };
    let total = m.len();
    m.trim(total - n);
    bump(&stats.neighbor_requests, 1);
    if let Err(m) = tx.push(m) {
        drop(m);
    }
}
