//! # Flow sync between Sluice hosts (`[sync]`)
//!
//! One thread per daemon, off the workers' cores, every millisecond:
//!
//! 1. **Receive**: every datagram on the sync socket is checked ([`message::decode`]: HMAC
//!    under the shared key; then the sender must be a listed peer at its listed address,
//!    within [`MAX_SKEW_MS`] of our clock, and not a replay, [`message::Replay`]); anything
//!    else is dropped and counted by reason and can create no flow. Valid flow records go to
//!    every worker in one [`Command::InstallSynced`] per millisecond, and each worker installs
//!    what is its to hold (`dataplane/src/pipeline/sync.rs`).
//! 2. **Send**: the workers' sync rings are drained with `try_recv` (so a worker's publish
//!    never takes a lock), packed into datagrams of up to [`message::MAX_PAYLOAD`] bytes and
//!    sent to every peer at most every `batch_ms`, under a token bucket of `max_rate` records
//!    per second and peer (the excess is dropped and counted).
//! 3. **Walks**: every `refresh_seconds` every worker is told to publish all its own flows
//!    ([`Command::SyncWalk`]); when a peer asks for a bulk transfer, its synced flows too (a
//!    restarted peer gets its own flows back). When the walks are done and the rings
//!    drained, the requester gets [`message::Kind::BulkDone`].
//! 4. **Start**: [`Sync::wait_bulk`] asks each peer for a bulk transfer and waits (bounded by
//!    `bulk_timeout_ms`) until each has sent it, before the daemon announces anything.
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use sluice_dataplane::conntrack::FlowState;
use sluice_dataplane::pipeline::SavedFlow;
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::worker::Command;
use tracing::{info, warn};

use crate::admin::api::{SyncPeerRow, SyncStatus};
use crate::config::SyncConfig;
use crate::l2::message::unix_ms;

pub mod message;

use message::{Header, Invalid, Kind, Replay};

/// The largest difference between a message's clock and ours that is accepted.
pub const MAX_SKEW_MS: u64 = 30_000;

/// Why the sync service could not start.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A configuration value (key, what is wrong).
    #[error("{0}: {1}")]
    Config(String, String),
    /// The socket.
    #[error("sync socket {0}: {1}")]
    Socket(SocketAddr, std::io::Error),
    /// The thread.
    #[error("sync thread: {0}")]
    Thread(std::io::Error),
}

/// What the workers and the daemon share with the sync thread.
pub struct SyncLinks {
    /// Each worker's sync ring (receiving end).
    pub rings: Vec<Receiver<SavedFlow>>,
    /// Each worker's command channel.
    pub commands: Vec<Sender<Command>>,
    /// Each worker's counters (walks done, ring drops).
    pub stats: Vec<Arc<WorkerStats>>,
}

/// Counters and per-peer state, shared with the admin API.
#[derive(Debug, Default)]
struct Shared {
    status: Mutex<SyncStatus>,
}

/// The running sync service.
pub struct Sync {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    /// Set when this host wants bulk transfers; cleared by the thread when every peer
    /// answered or the wait timed out.
    bulk_wanted: Arc<AtomicBool>,
    bulk_timeout: Duration,
}

/// The sync rings for `workers` workers of `ring_size` updates each: (senders for the
/// workers, receivers for [`SyncLinks`]).
pub fn rings(
    workers: usize,
    ring_size: usize,
) -> (Vec<Sender<SavedFlow>>, Vec<Receiver<SavedFlow>>) {
    (0..workers)
        .map(|_| crossbeam_channel::bounded(ring_size))
        .unzip()
}

impl Sync {
    /// Binds the sync socket and starts the thread.
    ///
    /// # Errors
    /// A bad key file, a socket that cannot be bound, a thread that cannot start.
    pub fn start(cfg: &SyncConfig, links: SyncLinks) -> Result<Sync, SyncError> {
        let key = cfg.key_bytes().map_err(|(k, m)| SyncError::Config(k, m))?;
        let at = SocketAddr::new(cfg.address, cfg.port);
        let sock = UdpSocket::bind(at).map_err(|e| SyncError::Socket(at, e))?;
        sock.set_nonblocking(true)
            .map_err(|e| SyncError::Socket(at, e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::default());
        let bulk_wanted = Arc::new(AtomicBool::new(cfg.bulk_timeout_ms > 0));
        {
            let mut s = lock(&shared.status);
            s.host = cfg.host.clone();
            s.address = Some(at);
            s.peers = cfg
                .peers
                .iter()
                .map(|p| SyncPeerRow {
                    name: p.name.clone(),
                    address: p.address,
                    nat_addresses: p.nat_addresses.clone(),
                    ..SyncPeerRow::default()
                })
                .collect();
        }
        let mut t = Thread {
            cfg: cfg.clone(),
            key,
            sock,
            links,
            stop: stop.clone(),
            shared: shared.clone(),
            bulk_wanted: bulk_wanted.clone(),
            boot: boot_id(),
            seq: 0,
            peers: cfg
                .peers
                .iter()
                .map(|p| PeerState {
                    addr: SocketAddr::new(p.address, cfg.port),
                    tokens: 0.0,
                    replay: Replay::default(),
                    bulk_done: false,
                })
                .collect(),
        };
        let thread = std::thread::Builder::new()
            .name("sluice-sync".into())
            .spawn(move || t.run())
            .map_err(SyncError::Thread)?;
        info!(host = %cfg.host, address = %at, peers = cfg.peers.len(), "flow sync started");
        Ok(Sync {
            stop,
            thread: Some(thread),
            shared,
            bulk_wanted,
            bulk_timeout: Duration::from_millis(cfg.bulk_timeout_ms),
        })
    }

    /// Waits until every peer has sent its bulk transfer or `bulk_timeout_ms` passed;
    /// returns the peers that answered.
    pub fn wait_bulk(&self) -> usize {
        let end = Instant::now() + self.bulk_timeout;
        while self.bulk_wanted.load(Ordering::Relaxed) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.bulk_wanted.store(false, Ordering::Relaxed);
        let s = self.status();
        let done = s.peers.iter().filter(|p| p.bulk_done).count();
        info!(
            answered = done,
            peers = s.peers.len(),
            flows = s.records_received,
            "bulk transfer from peers"
        );
        done
    }

    /// The state for `sluicectl sync` and the metrics.
    pub fn status(&self) -> SyncStatus {
        lock(&self.shared.status).clone()
    }

    /// A handle the admin API reads the state through.
    pub fn view(&self) -> SyncView {
        SyncView(self.shared.clone())
    }

    /// Stops the thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sync {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Reads the sync service's state (for the admin API).
#[derive(Clone)]
pub struct SyncView(Arc<Shared>);

impl std::fmt::Debug for SyncView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncView")
    }
}

impl crate::admin::SyncReport for SyncView {
    fn status(&self) -> SyncStatus {
        lock(&self.0.status).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn boot_id() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15
}

struct PeerState {
    addr: SocketAddr,
    tokens: f64,
    replay: Replay,
    bulk_done: bool,
}

struct Thread {
    cfg: SyncConfig,
    key: Vec<u8>,
    sock: UdpSocket,
    links: SyncLinks,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    bulk_wanted: Arc<AtomicBool>,
    boot: u64,
    seq: u64,
    peers: Vec<PeerState>,
}

/// Records drained from the rings per millisecond at most (bounds one iteration).
const DRAIN_PER_TICK: usize = 65_536;
/// Datagrams received per millisecond at most: a flood of them (each costs an HMAC) cannot
/// keep the thread from sending.
const RECV_PER_TICK: usize = 4096;
/// Synced flows per install command at most: what a worker inserts in one tick.
const INSTALL_PER_COMMAND: usize = 4096;

impl Thread {
    fn run(&mut self) {
        let tick = Duration::from_millis(1);
        let batch = Duration::from_millis(self.cfg.batch_ms);
        let refresh = Duration::from_secs(self.cfg.refresh_seconds);
        let mut next_send = Instant::now();
        let mut next_refresh = Instant::now() + refresh;
        let mut next_ask = Instant::now();
        let mut last = Instant::now();
        // Peers waiting for our BulkDone: (peer index, walks counted when they asked).
        let mut bulk_for: Vec<(usize, u64)> = Vec::new();
        let mut buf = vec![0u8; 65_536];
        let mut got: Vec<SavedFlow> = Vec::new();
        let mut out: Vec<SavedFlow> = Vec::new();
        let mut msg: Vec<u8> = Vec::with_capacity(message::MAX_LEN);
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let dt = now.duration_since(last).as_secs_f64();
            last = now;
            let rate = self.cfg.max_rate as f64;
            for p in &mut self.peers {
                p.tokens = (p.tokens + rate * dt).min((rate / 10.0).max(1000.0));
            }
            // 1. Receive.
            got.clear();
            let mut budget = RECV_PER_TICK;
            while budget > 0 {
                budget -= 1;
                let Ok((n, from)) = self.sock.recv_from(&mut buf) else {
                    break;
                };
                match self.accept(&buf[..n], from, &mut got) {
                    Ok((i, Kind::BulkRequest)) => {
                        info!(peer = %self.cfg.peers[i].name, "bulk transfer asked");
                        bulk_for.retain(|(p, _)| *p != i);
                        bulk_for.push((i, self.walks()));
                        self.walk_all(true);
                    }
                    Ok((i, Kind::BulkDone)) => {
                        self.peers[i].bulk_done = true;
                        lock(&self.shared.status).peers[i].bulk_done = true;
                    }
                    Ok((_, Kind::Flows)) => {}
                    Err(reason) => {
                        *lock(&self.shared.status)
                            .dropped
                            .entry(reason.to_owned())
                            .or_default() += 1;
                    }
                }
            }
            // In pieces, so that no worker's tick installs more than INSTALL_PER_COMMAND.
            for piece in got.chunks(INSTALL_PER_COMMAND) {
                let flows: Arc<[SavedFlow]> = piece.into();
                let mut s = lock(&self.shared.status);
                for c in &self.links.commands {
                    if c.try_send(Command::InstallSynced(flows.clone())).is_err() {
                        s.install_dropped += flows.len() as u64;
                    }
                }
            }
            // 2. Send.
            if now >= next_send {
                next_send = now + batch;
                out.clear();
                for r in &self.links.rings {
                    while out.len() < DRAIN_PER_TICK {
                        match r.try_recv() {
                            Ok(f) => out.push(f),
                            Err(_) => break,
                        }
                    }
                }
                if !out.is_empty() {
                    self.send_flows(&out, &mut msg);
                }
            }
            // 3. Walks: the periodic refresh, and bulk transfers that are done.
            if now >= next_refresh {
                next_refresh = now + refresh;
                self.walk_all(false);
            }
            if !bulk_for.is_empty() && self.rings_empty() {
                let walks = self.walks();
                let workers = self.links.stats.len() as u64;
                let (done, wait): (Vec<_>, Vec<_>) = bulk_for
                    .drain(..)
                    .partition(|&(_, at)| walks >= at + workers);
                bulk_for = wait;
                for (i, _) in done {
                    self.send_control(i, Kind::BulkDone, &mut msg);
                    info!(peer = %self.cfg.peers[i].name, "bulk transfer sent");
                }
            }
            // 4. Our own bulk request, repeated until every peer answered.
            if self.bulk_wanted.load(Ordering::Relaxed) {
                if self.peers.iter().all(|p| p.bulk_done) {
                    self.bulk_wanted.store(false, Ordering::Relaxed);
                } else if now >= next_ask {
                    next_ask = now + Duration::from_millis(250);
                    for i in 0..self.peers.len() {
                        if !self.peers[i].bulk_done {
                            self.send_control(i, Kind::BulkRequest, &mut msg);
                        }
                    }
                }
            }
            self.publish_counters();
            std::thread::sleep(tick);
        }
    }

    /// Checks a datagram; its records go to `out`. Returns the peer's index and the kind,
    /// or the reason it was dropped.
    fn accept(
        &mut self,
        d: &[u8],
        from: SocketAddr,
        out: &mut Vec<SavedFlow>,
    ) -> Result<(usize, Kind), &'static str> {
        let start = out.len();
        let h: Header = message::decode(d, &self.key, out).map_err(|e| match e {
            Invalid::Malformed => "malformed",
            Invalid::BadKey => "bad_key",
        })?;
        let reject = |out: &mut Vec<SavedFlow>, why| {
            out.truncate(start);
            Err(why)
        };
        let Some(i) = self.cfg.peers.iter().position(|p| p.name == h.host) else {
            return reject(out, "unknown_host");
        };
        if from.ip() != self.cfg.peers[i].address {
            return reject(out, "wrong_address");
        }
        if unix_ms().abs_diff(h.unix_ms) > MAX_SKEW_MS {
            return reject(out, "stale");
        }
        if !self.peers[i].replay.accept(h.boot, h.seq, h.unix_ms) {
            return reject(out, "replay");
        }
        // A synced copy lives at least two refresh periods (the origin sends its live flows
        // again every period), except a closing one, which ends on its own timeout.
        let floor = (self.cfg.refresh_seconds * 2000).min(u64::from(u32::MAX)) as u32;
        for f in &mut out[start..] {
            if f.state != FlowState::TcpClosing {
                f.remaining_ms = f.remaining_ms.max(floor);
                if let Some(n) = &mut f.nat {
                    n.remaining_ms = n.remaining_ms.max(floor);
                }
            }
        }
        let n = (out.len() - start) as u64;
        let mut s = lock(&self.shared.status);
        let row = &mut s.peers[i];
        row.messages_received += 1;
        row.records_received += n;
        row.last_heard_unix_ms = Some(unix_ms());
        row.lag_ms = Some(unix_ms().saturating_sub(h.unix_ms));
        s.records_received += n;
        Ok((i, h.kind))
    }

    fn header(&mut self, kind: Kind) -> Header {
        self.seq += 1;
        Header {
            kind,
            host: self.cfg.host.clone(),
            boot: self.boot,
            seq: self.seq,
            unix_ms: unix_ms(),
        }
    }

    fn send_control(&mut self, i: usize, kind: Kind, msg: &mut Vec<u8>) {
        let h = self.header(kind);
        message::begin(msg, &h);
        message::finish(msg, 0, &self.key);
        let _ = self.sock.send_to(msg, self.peers[i].addr);
    }

    /// Sends `flows` to every peer, as far as its token bucket allows.
    fn send_flows(&mut self, flows: &[SavedFlow], msg: &mut Vec<u8>) {
        let mut sent = vec![0u64; self.peers.len()];
        let mut limited = 0u64;
        let mut datagrams = 0u64;
        let mut bytes = 0u64;
        let mut rest = flows;
        while !rest.is_empty() {
            // One datagram's worth.
            let mut len = 0;
            let mut n = 0;
            while n < rest.len() && n < 255 {
                let l = message::record_len(&rest[n]);
                if len + l > message::MAX_PAYLOAD {
                    break;
                }
                len += l;
                n += 1;
            }
            let (chunk, tail) = rest.split_at(n.max(1));
            rest = tail;
            let c = chunk.len() as f64;
            if self.peers.iter().all(|p| p.tokens < c) {
                // Over every peer's rate: not worth signing.
                limited += (chunk.len() * self.peers.len()) as u64;
                continue;
            }
            let h = self.header(Kind::Flows);
            message::begin(msg, &h);
            for f in chunk {
                message::put_record(msg, f);
            }
            message::finish(msg, chunk.len() as u8, &self.key);
            for (i, p) in self.peers.iter_mut().enumerate() {
                if p.tokens < c {
                    limited += chunk.len() as u64;
                    continue;
                }
                p.tokens -= c;
                match self.sock.send_to(msg, p.addr) {
                    Ok(_) => {
                        sent[i] += chunk.len() as u64;
                        datagrams += 1;
                        bytes += msg.len() as u64;
                    }
                    Err(_) => limited += chunk.len() as u64,
                }
            }
        }
        let mut s = lock(&self.shared.status);
        for (row, n) in s.peers.iter_mut().zip(&sent) {
            row.records_sent += n;
        }
        s.records_sent += sent.iter().sum::<u64>();
        s.send_dropped += limited;
        s.datagrams_sent += datagrams;
        s.bytes_sent += bytes;
    }

    /// Tells every worker to publish all its own flows, and with `all` its synced ones too.
    fn walk_all(&self, all: bool) {
        for c in &self.links.commands {
            if c.try_send(Command::SyncWalk { all }).is_err() {
                warn!("a worker's command channel is full: sync walk not started");
            }
        }
    }

    /// Walks done by all workers, summed.
    fn walks(&self) -> u64 {
        self.links
            .stats
            .iter()
            .map(|s| s.sync_walks.load(Ordering::Relaxed))
            .sum()
    }

    fn rings_empty(&self) -> bool {
        self.links.rings.iter().all(Receiver::is_empty)
    }

    fn publish_counters(&self) {
        let st = &self.links.stats;
        let sum = |f: fn(&WorkerStats) -> u64| st.iter().map(|s| f(s)).sum::<u64>();
        let mut s = lock(&self.shared.status);
        s.published = sum(|w| w.sync_published.load(Ordering::Relaxed));
        s.ring_full = sum(|w| w.sync_ring_full.load(Ordering::Relaxed));
        s.installed = sum(|w| w.sync_installed.load(Ordering::Relaxed));
        s.conflicts = sum(|w| w.sync_conflicts.load(Ordering::Relaxed));
        s.adopted = sum(|w| w.sync_adopted.load(Ordering::Relaxed));
        s.walks = sum(|w| w.sync_walks.load(Ordering::Relaxed));
        s.ring_queued = self.links.rings.iter().map(|r| r.len() as u64).sum();
    }
}

#[cfg(test)]
mod tests;
