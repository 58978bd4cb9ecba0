//! # The pinned poll-mode worker
//!
//! One OS thread per core, pinned with `core_affinity` and registered with DPDK, owning its RX/TX
//! queues, its [`Pipeline`] (flow tables), its stats and its current snapshot.
//!
//! ## Design (after DPDK's l3fwd)
//! The per-core state is one struct (`Lcore`; `Out` is where processed packets go). Per
//! iteration: take the newest snapshot from the channel (the old one goes back on a second
//! channel so big tables are never freed on a worker core); run control commands; drain the
//! rings from other workers; `rx_burst` 32 per queue; run each burst through the pipeline (`Pipeline::process_burst`);
//! buffer TX per queue and flush when a burst is full or after a short TSC deadline; amortise
//! conntrack expiry (a few buckets per iteration, every millisecond). Nothing here can fail
//! once the loop runs; all failures happen at start-up.
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use dpdk_sys::{
    register_thread, tsc, tsc_hz, Eal, Mbuf, MbufBatch, Mempool, RingConsumer, RingProducer,
    RxQueue, TxQueue, BURST,
};

use crate::capture::Tap;
use crate::pipeline::edge;
use crate::pipeline::{
    FlowEntry, NeighborEvent, PacketBuf, Pipeline, PipelineConfig, RestoreFlow, SavedFlow, Verdict,
};
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
    #[inline(always)]
    fn whole(&self) -> bool {
        self.segments() == 1
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
    /// Start (`Some`) or stop (`None`) this worker's part of a packet capture
    /// ([`crate::capture`]); a new one replaces the old.
    Capture(Option<Box<Tap>>),
    /// Install flows synced from peer hosts: each worker resolves them against its own
    /// snapshot and takes what is its to hold (`Pipeline::install_synced`).
    InstallSynced(Arc<[SavedFlow]>),
    /// Publish flows on the sync ring, a piece per millisecond tick; `sync_walks` counts the
    /// walks done. `all`: every flow, synced ones included (a peer's bulk transfer: a
    /// restarted peer gets its own flows back); otherwise only own flows (the periodic
    /// refresh, which must not keep a peer's flows alive after the peer let them go).
    SyncWalk {
        /// Synced flows too.
        all: bool,
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
    /// Idle mode: after [`IDLE_AFTER_POLLS`] empty polls in a row the worker sleeps this many
    /// microseconds per poll until a packet arrives. `None`: busy-poll (the default).
    pub idle_sleep_us: Option<u64>,
    /// Flows the previous process saved, resolved against the first snapshot: inserted before
    /// the first poll.
    pub restore: Vec<RestoreFlow>,
    /// Export the live flows when the worker stops ([`WorkerHandle::stop_saving`]).
    pub save_flows: bool,
    /// The sync ring: where the worker publishes its flows for the peer hosts (`None`: flow
    /// sync off). Its receiver must be drained with `try_recv` only, so that a publish never
    /// takes the channel's waker lock.
    pub sync: Option<Sender<SavedFlow>>,
}

/// Empty polls in a row after which a worker in idle mode starts to sleep between polls.
pub const IDLE_AFTER_POLLS: u32 = 128;

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            index: 0,
            core: None,
            pipeline: PipelineConfig::default(),
            tx_flush_us: 100,
            expire_buckets: 64,
            idle_sleep_us: None,
            restore: Vec::new(),
            save_flows: false,
            sync: None,
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
    thread: Option<JoinHandle<Result<Vec<SavedFlow>, String>>>,
    stop: Arc<AtomicBool>,
}

impl WorkerHandle {
    /// Asks the worker to stop and waits for it.
    pub fn stop(self) -> Result<(), String> {
        self.stop_saving().map(drop)
    }

    /// Asks the worker to stop, waits for it and returns the flows it exported (none unless
    /// [`WorkerConfig::save_flows`]).
    pub fn stop_saving(mut self) -> Result<Vec<SavedFlow>, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.join_inner()
    }

    fn join_inner(&mut self) -> Result<Vec<SavedFlow>, String> {
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| "worker thread panicked".to_string())?,
            None => Ok(Vec::new()),
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

/// One worker's per-core state (DPDK l3fwd's per-lcore conf): everything its loop touches,
/// owned by its thread.
struct Lcore {
    /// Worker index.
    index: u16,
    pipeline: Pipeline,
    /// The snapshot in use (one per iteration).
    snap: Arc<Snapshot>,
    /// RX queue per port.
    rxq: Vec<RxQueue>,
    /// Rings from other workers.
    from_workers: Vec<RingConsumer>,
    /// The burst being processed, and a verdict per packet.
    rx: MbufBatch,
    verdicts: [Verdict; BURST],
    /// Where processed packets go.
    out: Out,
    /// Client flow queries in progress (admin), one table piece per tick.
    scans: VecDeque<Scan>,
    /// Conntrack buckets scanned per table per tick.
    expire_buckets: usize,
    stats: Arc<WorkerStats>,
    /// The packet capture in progress, if any: tested once per burst.
    capture: Option<Box<Tap>>,
}

/// Where a worker's processed packets go: buffered TX per port, hand-offs to other workers,
/// learned neighbours.
struct Out {
    /// TX queue per port, its buffered burst and when that must leave (TSC).
    txq: Vec<TxQueue>,
    tx: Vec<MbufBatch>,
    tx_deadline: Vec<u64>,
    /// How long a partial TX burst may wait (TSC ticks).
    flush_ticks: u64,
    /// Packets for other workers (NAT replies for their port slices), per worker, and the
    /// rings to them.
    ring_out: Vec<MbufBatch>,
    to_workers: Vec<Option<RingProducer>>,
    neighbors: Sender<NeighborEvent>,
    stats: Arc<WorkerStats>,
}

fn run(
    eal: &Eal,
    cfg: WorkerConfig,
    queues: WorkerQueues,
    links: WorkerLinks,
    pool: &Mempool,
    first: Arc<Snapshot>,
    stats: Arc<WorkerStats>,
) -> Result<Vec<SavedFlow>, String> {
    if let Some(core) = cfg.core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            return Err(format!("worker {}: cannot pin to core {core}", cfg.index));
        }
    }
    let _reg = register_thread(eal).map_err(|e| format!("worker {}: {e}", cfg.index))?;
    let WorkerLinks {
        snapshots,
        retired,
        neighbors,
        commands,
        to_workers,
        from_workers,
        stop,
    } = links;
    let (rxq, txq): (Vec<RxQueue>, Vec<TxQueue>) = queues.pairs.into_iter().unzip();
    let nports = txq.len();
    let hz = tsc_hz().max(1);
    let mut l = Lcore {
        index: cfg.index,
        pipeline: Pipeline::new(&cfg.pipeline, stats.clone()),
        snap: first,
        rxq,
        from_workers,
        rx: MbufBatch::new(),
        verdicts: [Verdict::Tx; BURST],
        out: Out {
            txq,
            tx: (0..nports).map(|_| MbufBatch::new()).collect(),
            tx_deadline: vec![0; nports],
            flush_ticks: hz / 1_000_000 * cfg.tx_flush_us.max(1),
            ring_out: (0..to_workers.len()).map(|_| MbufBatch::new()).collect(),
            to_workers,
            neighbors,
            stats: stats.clone(),
        },
        scans: VecDeque::new(),
        expire_buckets: cfg.expire_buckets,
        stats: stats.clone(),
        capture: None,
    };
    set(&stats.snapshot_generation, l.snap.generation);
    l.pipeline.install_snapshot(&l.snap);
    // The previous process's flows, before any packet: on the clock's first millisecond.
    l.pipeline.restore_flows(&l.snap, &cfg.restore, 0);
    drop(cfg.restore);
    l.pipeline.set_sync(cfg.sync);
    let ms_ticks = (hz / 1000).max(1);
    let start = tsc();
    let mut next_tick = start + ms_ticks;
    let mut last = start;
    let idle_sleep = cfg.idle_sleep_us.map(std::time::Duration::from_micros);
    let mut empty_polls = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let now = tsc();
        let now_ms = ((now - start) / ms_ticks) as u32;
        // Newest snapshot wins; old ones go back to be freed off this core.
        let mut swapped = false;
        while let Ok(s) = snapshots.try_recv() {
            let old = std::mem::replace(&mut l.snap, s);
            set(&stats.snapshot_generation, l.snap.generation);
            if let Err(e) = retired.try_send(old) {
                // The control plane went away; dropping here is the only option left.
                drop(e.into_inner());
            }
            swapped = true;
        }
        if swapped {
            // Per-frontend state sized for the new snapshot (off the per-packet path).
            l.pipeline.install_snapshot(&l.snap);
        }
        let work = l.poll(now, now_ms);
        if now >= next_tick {
            next_tick = now + ms_ticks;
            while let Ok(c) = commands.try_recv() {
                l.command(c, pool, now_ms);
            }
            l.tick(now_ms);
        }
        let end = tsc();
        bump(&stats.polls, 1);
        bump(&stats.total_cycles, end - last);
        if work > 0 {
            bump(&stats.busy_polls, 1);
            bump(&stats.busy_cycles, end - now);
            empty_polls = 0;
        } else if let Some(d) = idle_sleep {
            // Idle mode, for hosts whose cores are shared: give the core away while no
            // packet comes. The first packet after a quiet spell waits up to `d` longer.
            empty_polls = empty_polls.saturating_add(1);
            if empty_polls >= IDLE_AFTER_POLLS {
                bump(&stats.idle_sleeps, 1);
                std::thread::sleep(d);
            }
        }
        last = end;
    }
    for port in 0..nports {
        l.out.flush(port);
        l.out.tx[port].free_all();
    }
    l.pipeline.publish_table_stats();
    let mut saved = Vec::new();
    if cfg.save_flows {
        let now_ms = ((tsc() - start) / ms_ticks) as u32;
        l.pipeline.export_flows(&l.snap, now_ms, &mut saved);
    }
    let _ = retired.try_send(l.snap);
    Ok(saved)
}

impl Lcore {
    /// One poll: the rings from other workers, then every port's RX queue, each burst
    /// processed and its packets sent on their way; hand-offs; TX flush. Returns the packets
    /// received.
    #[inline(always)]
    fn poll(&mut self, now: u64, now_ms: u32) -> usize {
        let mut work = 0usize;
        // Packets other workers passed to us (NAT replies for our port slice).
        for ri in 0..self.from_workers.len() {
            let n = self.from_workers[ri].dequeue(&mut self.rx);
            if n > 0 {
                bump(&self.stats.from_other_worker, n as u64);
                work += n;
                // They arrived on port 0's queues of another worker; send out port 0. That
                // worker's capture saw them received.
                self.burst(0, now, now_ms, false);
            }
        }
        for port in 0..self.rxq.len() {
            let n = self.rxq[port].rx_burst(&mut self.rx);
            if n == 0 {
                continue;
            }
            work += n;
            bump(&self.stats.rx_packets, n as u64);
            let bytes: usize = self.rx.iter_mut().map(|m| m.len()).sum();
            bump(&self.stats.rx_bytes, bytes as u64);
            self.burst(port, now, now_ms, true);
        }
        self.out.hand_off();
        // TX flush: at once when this iteration did not fill a burst (we are not saturated, so
        // waiting only adds latency), else when the deadline passes.
        let idle = work < BURST;
        for port in 0..self.out.tx.len() {
            if !self.out.tx[port].is_empty() && (idle || now >= self.out.tx_deadline[port]) {
                self.out.flush(port);
            }
        }
        work
    }

    /// Runs the burst in `self.rx` (received on `port`; `received`: from the port, not from
    /// another worker) through the pipeline and sends each packet where its verdict says.
    #[inline(always)]
    fn burst(&mut self, port: usize, now: u64, now_ms: u32, received: bool) {
        let n = self.rx.len();
        if received {
            if let Some(t) = self.capture.as_deref_mut() {
                t.received(port, self.rx.as_mut_slice(), &self.pipeline, &self.snap);
            }
        }
        let verdicts = &mut self.verdicts[..n];
        self.pipeline
            .process_burst(&self.snap, self.rx.as_mut_slice(), now_ms, verdicts);
        if let Some(t) = self.capture.as_deref_mut() {
            let pkts = self.rx.as_mut_slice();
            t.processed(port, pkts, verdicts, &self.pipeline, &self.snap, now);
        }
        for (m, &v) in self.rx.drain().zip(verdicts.iter()) {
            self.out.deliver(m, v, port, now);
        }
    }

    /// A control-plane command, at the millisecond tick.
    fn command(&mut self, c: Command, pool: &Mempool, now_ms: u32) {
        match c {
            Command::FindFlows { query, reply } => {
                let seed = self.snap.hash_seed;
                match find_flow(&self.pipeline, seed, &query, self.index, now_ms) {
                    Some(a) => {
                        let _ = reply.try_send(a);
                    }
                    None => self.scans.push_back(Scan {
                        query,
                        reply,
                        next: 0,
                        flows: Vec::new(),
                    }),
                }
            }
            Command::Capture(t) => {
                // The old tap (if any) is dropped here, at the tick: its buffers are the
                // control plane's and go back with the channels.
                self.capture = t;
            }
            Command::InstallSynced(flows) => {
                self.pipeline.install_synced(&self.snap, &flows, now_ms);
            }
            Command::SyncWalk { all } => self.pipeline.start_sync_walk(all),
            c => command(&self.snap, c, pool, &mut self.out.tx[0], &self.stats),
        }
    }

    /// The millisecond tick: a piece of the oldest flow scan, amortised expiry.
    fn tick(&mut self, now_ms: u32) {
        if let Some(sc) = self.scans.front_mut() {
            if let Some(a) = sc.step(&self.pipeline, self.index, now_ms) {
                let _ = sc.reply.try_send(a);
                self.scans.pop_front();
            }
        }
        self.pipeline.expire(now_ms, self.expire_buckets);
        self.pipeline.syn_proxy_tick(&self.snap, now_ms);
        if self.pipeline.sync_walking() {
            self.pipeline.sync_walk_step(&self.snap, now_ms);
        }
    }
}

impl Out {
    /// Sends packet `m`, received on `port`, where verdict `v` says.
    #[inline(always)]
    fn deliver(&mut self, m: Mbuf, v: Verdict, port: usize, now: u64) {
        match v {
            Verdict::Tx => {
                let b = &mut self.tx[port];
                if b.is_empty() {
                    self.tx_deadline[port] = now + self.flush_ticks;
                }
                if let Err(m) = b.push(m) {
                    self.flush(port);
                    let _ = self.tx[port].push(m);
                }
                if self.tx[port].is_full() {
                    self.flush(port);
                }
            }
            Verdict::ToWorker(w) => {
                let w = usize::from(w);
                match self.ring_out.get_mut(w) {
                    Some(b) => {
                        if let Err(m) = b.push(m) {
                            if let Some(Some(r)) = self.to_workers.get_mut(w) {
                                r.enqueue(b);
                            }
                            if b.push(m).is_err() {
                                self.stats.drop_packet(DropReason::RingFull);
                            }
                        }
                    }
                    None => self.stats.drop_packet(DropReason::RingFull),
                }
            }
            Verdict::Neighbor(ev) => {
                if self.neighbors.try_send(ev).is_err() {
                    self.stats.drop_packet(DropReason::ControlFull);
                }
            }
            Verdict::Drop(_) => {}
        }
    }

    /// Hands the packets collected for other workers to their rings (what does not fit is
    /// dropped and counted).
    #[inline(always)]
    fn hand_off(&mut self) {
        for (w, b) in self.ring_out.iter_mut().enumerate() {
            if b.is_empty() {
                continue;
            }
            if let Some(Some(r)) = self.to_workers.get_mut(w) {
                r.enqueue(b);
            }
            let left = b.len();
            if left > 0 {
                for _ in 0..left {
                    self.stats.drop_packet(DropReason::RingFull);
                }
                b.free_all();
            }
        }
    }

    /// Sends port `port`'s buffered burst.
    #[inline(always)]
    fn flush(&mut self, port: usize) {
        flush(&mut self.tx[port], &mut self.txq[port], &self.stats);
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
        Command::FindFlows { .. }
        | Command::Capture(_)
        | Command::InstallSynced(_)
        | Command::SyncWalk { .. } => return,
    };
    let total = m.len();
    m.trim(total - n);
    bump(&stats.neighbor_requests, 1);
    if let Err(m) = tx.push(m) {
        drop(m);
    }
}
