//! # Packet capture and trace (`sluicectl capture`, `sluicectl trace`)
//!
//! The control plane's half of a capture: it gives every worker a
//! [`Tap`](sluice_dataplane::capture::Tap) (a compiled filter, buffers, a queue), collects the
//! copies, turns them into pcapng ([`pcapng`]) or trace lines ([`describe`]), and streams them
//! to the admin client until the packet count or the duration is reached or the client goes
//! away; then it takes the taps back.
//!
//! ## Design
//! - One capture at a time ([`Gate`]): a second is refused, so the workers' cost is bounded.
//! - The workers copy into [`BUFFERS`] buffers allocated here and never wait: with no free
//!   buffer a copy is dropped and counted (pcapng `isb_osdrop`, the trace's last line). The
//!   queue is read every [`POLL`] with `try_recv`, never a blocking receive, so a worker's
//!   `try_send` has no sleeping reader to wake (no lock on its path).
//! - pcapng is written here from the copies (see [`pcapng`] for why not `rte_pcapng`).
//! - Ending: the taps are taken back with `Command::Capture(None)`; the session waits (up to
//!   a second) until every worker dropped its tap, so the buffers are freed here, not on a
//!   worker core. Nothing of a capture holds an mbuf.
pub mod describe;
pub mod pcapng;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use hyper::body::Bytes;
use sluice_dataplane::capture::bpf::Program;
use sluice_dataplane::capture::{Direction, Record, Tap, TapStats};
use sluice_dataplane::worker::Command;
use tokio::sync::mpsc;

pub use describe::Names;

/// Buffers (copies in flight) a capture allocates: about 4.5 MB at the mbuf data room.
pub const BUFFERS: usize = 2048;

/// How often the session reads the workers' queue.
pub const POLL: Duration = Duration::from_millis(2);

/// Largest snap length, as tcpdump's default.
pub const MAX_SNAPLEN: u32 = 262_144;

/// Allows one capture at a time.
#[derive(Debug, Default, Clone)]
pub struct Gate(Arc<AtomicBool>);

/// Held while a capture runs; dropping it lets the next one start.
#[derive(Debug)]
pub struct GateGuard(Arc<AtomicBool>);

impl Gate {
    /// Enters, or `None` while another capture runs.
    pub fn try_enter(&self) -> Option<GateGuard> {
        self.0
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| GateGuard(self.0.clone()))
    }

    /// Whether a capture runs.
    pub fn busy(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What the session streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// pcapng.
    Pcapng,
    /// Trace lines (JSON, one per packet) for the client at this address: its packets as
    /// received, and the packets sent to it.
    Trace {
        /// The client traced.
        client: IpAddr,
    },
}

/// A capture to run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Port index (configuration order).
    pub port: usize,
    /// Its name and DPDK device (the pcapng interface).
    pub port_name: String,
    /// The DPDK device string.
    pub device: String,
    /// Capture received / transmitted packets.
    pub rx: bool,
    /// See `rx`.
    pub tx: bool,
    /// Bytes kept per packet.
    pub snaplen: u32,
    /// The filter expression (for the pcapng interface description).
    pub filter: String,
    /// Stop after this many packets.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// pcapng or trace lines.
    pub output: Output,
}

/// One line of `sluicectl trace` (`POST /v1/trace` streams them, one JSON object a line).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TraceLine {
    /// Unix time of the packet (seconds); for the last line, when the trace ended.
    pub time: f64,
    /// `rx`, `tx`, or `end` for the last line.
    pub dir: String,
    /// The worker that handled it.
    pub worker: u16,
    /// The packet (`10.99.0.11:40112 -> 10.99.0.100:80 TCP SYN`); for the last line why
    /// the trace ended.
    pub packet: String,
    /// What Sluice did with it; for the last line the counts.
    pub verdict: String,
}

/// A worker to capture on: its index and command channel.
pub type WorkerCommands = (u16, Sender<Command>);

/// Starts a capture on `workers` with `filter`; the stream of its output (pcapng or trace
/// lines) arrives on the receiver, which ends when the capture does. `guard` is released
/// when it ends. `names` names the frontends in verdicts.
pub fn start(
    spec: Spec,
    filter: Program,
    workers: &[WorkerCommands],
    names: Names,
    guard: GateGuard,
) -> mpsc::Receiver<Bytes> {
    let (sink, stream) = mpsc::channel(64);
    let (free_tx, free_rx) = crossbeam_channel::bounded::<Vec<u8>>(BUFFERS);
    let cap = (spec.snaplen as usize).min(usize::from(dpdk_sys::Mempool::DEFAULT_DATA_ROOM));
    for _ in 0..BUFFERS {
        let _ = free_tx.try_send(Vec::with_capacity(cap));
    }
    let (out_tx, out_rx) = crossbeam_channel::bounded::<Record>(BUFFERS);
    let filter = Arc::new(filter);
    let mut stats = Vec::new();
    let mut commands = Vec::new();
    for (index, cmd) in workers {
        let st = Arc::new(TapStats::default());
        let tap = Tap::new(
            spec.port,
            spec.rx,
            spec.tx,
            spec.snaplen as usize,
            filter.clone(),
            (free_rx.clone(), free_tx.clone()),
            out_tx.clone(),
            *index,
            st.clone(),
        );
        let _ = cmd.try_send(Command::Capture(Some(Box::new(tap))));
        stats.push(st);
        commands.push(cmd.clone());
    }
    drop(out_tx);
    let session = Session {
        spec,
        names,
        clock: Clock::now(),
        stats,
        commands,
        free: (free_rx, free_tx),
        out: out_rx,
        _filter: filter,
        _guard: guard,
    };
    tokio::spawn(session.run(sink));
    stream
}

/// TSC to Unix time.
#[derive(Debug, Clone, Copy)]
struct Clock {
    unix_ns: u64,
    tsc: u64,
    hz: u64,
}

impl Clock {
    fn now() -> Clock {
        let unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Clock {
            unix_ns,
            tsc: dpdk_sys::tsc(),
            hz: dpdk_sys::tsc_hz().max(1),
        }
    }

    fn unix_ns(&self, tsc: u64) -> u64 {
        let d = i128::from(tsc) - i128::from(self.tsc);
        let ns = d * 1_000_000_000 / i128::from(self.hz);
        (i128::from(self.unix_ns) + ns).max(0) as u64
    }
}

/// Why a capture ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Count,
    Duration,
    ClientGone,
}

struct Session {
    spec: Spec,
    names: Names,
    clock: Clock,
    /// Each worker's tap counters (a strong count of 1: the worker dropped its tap).
    stats: Vec<Arc<TapStats>>,
    commands: Vec<Sender<Command>>,
    /// Both ends of the free list, kept until every tap is gone.
    free: (crossbeam_channel::Receiver<Vec<u8>>, Sender<Vec<u8>>),
    out: crossbeam_channel::Receiver<Record>,
    /// Held so that the program is freed here, after the workers dropped their taps.
    _filter: Arc<Program>,
    _guard: GateGuard,
}

impl Session {
    async fn run(mut self, sink: mpsc::Sender<Bytes>) {
        let started = Instant::now();
        let mut head = Vec::new();
        if self.spec.output == Output::Pcapng {
            pcapng::section_header(&mut head, &format!("sluiced {}", env!("CARGO_PKG_VERSION")));
            pcapng::interface(
                &mut head,
                &self.spec.port_name,
                &format!("{} (filter: {})", self.spec.device, self.spec.filter),
                self.spec.snaplen,
            );
        }
        let mut written = 0u64;
        let mut end = End::ClientGone;
        if sink.send(Bytes::from(head)).await.is_ok() {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            end = loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = sink.closed() => break End::ClientGone,
                }
                let mut chunk = Vec::new();
                while let Ok(r) = self.out.try_recv() {
                    if self.spec.count.is_none_or(|c| written < c) && self.write(&r, &mut chunk) {
                        written += 1;
                    }
                    let _ = self.free.1.try_send(r.data);
                }
                if !chunk.is_empty() && sink.send(Bytes::from(chunk)).await.is_err() {
                    break End::ClientGone;
                }
                if self.spec.count.is_some_and(|c| written >= c) {
                    break End::Count;
                }
                if self.spec.duration.is_some_and(|d| started.elapsed() >= d) {
                    break End::Duration;
                }
            };
        }
        self.stop().await;
        let dropped: u64 = self.stats.iter().map(|s| load(&s.dropped)).sum();
        let copied: u64 = self.stats.iter().map(|s| load(&s.copied)).sum();
        let now = self.clock.unix_ns(dpdk_sys::tsc());
        let mut tail = Vec::new();
        match self.spec.output {
            Output::Pcapng => pcapng::statistics(
                &mut tail,
                0,
                self.clock.unix_ns,
                now,
                pcapng::Counts {
                    accepted: copied + dropped,
                    dropped,
                    delivered: written,
                },
            ),
            Output::Trace { .. } => {
                let why = match end {
                    End::Count => "packet count reached",
                    End::Duration => "duration reached",
                    End::ClientGone => "client went away",
                };
                let line = TraceLine {
                    time: now as f64 / 1e9,
                    dir: "end".into(),
                    worker: 0,
                    packet: why.into(),
                    verdict: format!("{written} packets shown, {dropped} copies dropped"),
                };
                json_line(&mut tail, &line);
            }
        }
        if end != End::ClientGone {
            let _ = sink.send(Bytes::from(tail)).await;
        }
        tracing::info!(
            port = %self.spec.port_name,
            filter = %self.spec.filter,
            written,
            dropped,
            reason = ?end,
            "capture ended"
        );
    }

    /// Appends record `r` to `chunk` in the output's format; false when it is left out.
    fn write(&self, r: &Record, chunk: &mut Vec<u8>) -> bool {
        let ts = self.clock.unix_ns(r.tsc);
        let verdict = describe::verdict(&r.explain, &self.names);
        match self.spec.output {
            Output::Pcapng => {
                let dir = match r.dir {
                    Direction::Rx => pcapng::Flow::Inbound,
                    Direction::Tx => pcapng::Flow::Outbound,
                };
                let comment = format!("worker {}: {verdict}", r.worker);
                pcapng::packet(chunk, 0, ts, &r.data, r.orig_len, dir, &comment);
                true
            }
            Output::Trace { client } => {
                // A client's packet sent on unchanged (DSR-L2) would show twice: its
                // receipt carries the verdict already.
                if r.dir == Direction::Tx && from(&r.data) == Some(client) {
                    return false;
                }
                let line = TraceLine {
                    time: ts as f64 / 1e9,
                    dir: match r.dir {
                        Direction::Rx => "rx",
                        Direction::Tx => "tx",
                    }
                    .into(),
                    worker: r.worker,
                    packet: describe::packet(&r.data),
                    verdict,
                };
                json_line(chunk, &line);
                true
            }
        }
    }

    /// Takes the taps back and waits (up to a second) until every worker dropped its own.
    async fn stop(&mut self) {
        for c in &self.commands {
            let _ = c.try_send(Command::Capture(None));
        }
        let t = Instant::now();
        while self.stats.iter().any(|s| Arc::strong_count(s) > 1)
            && t.elapsed() < Duration::from_secs(1)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        while let Ok(r) = self.out.try_recv() {
            drop(r);
        }
    }
}

fn load(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn json_line(out: &mut Vec<u8>, line: &TraceLine) {
    if serde_json::to_writer(&mut *out, line).is_ok() {
        out.push(b'\n');
    }
}

/// The source address of a frame, if it is IP.
fn from(frame: &[u8]) -> Option<IpAddr> {
    let p = sluice_dataplane::wire::parse::parse(frame).ok()?;
    match p.l3 {
        sluice_dataplane::wire::parse::L3::Ipv4 => Some(IpAddr::from(p.src4())),
        sluice_dataplane::wire::parse::L3::Ipv6 => Some(IpAddr::from(p.src)),
        _ => None,
    }
}
