//! The DPDK side: EAL, one port, template mbufs, and the single-core poll loop.
//!
//! ## Design
//! One thread, the EAL main lcore, pinned by EAL to `--core`. Each loop iteration receives up
//! to four bursts (counting, stamping latency, answering ARP/NDP), then refills and sends one
//! burst of template packets, then flushes any neighbour replies. A phase (readiness probes,
//! warm-up, measurement) ends when its time, count or per-stream limits are reached, and is
//! followed by a drain during which nothing is sent and everything still in flight is counted.
//! Counters are plain fields: one thread owns them.
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use dpdk_sys::{
    tsc, tsc_hz, Eal, Mbuf, MbufBatch, Mempool, Port, PortConfig, RxQueue, TxQueue, BURST,
};
use hdrhistogram::Histogram;
use ipnet::IpNet;
use sluice_dataplane::pipeline::edge;
use sluice_dataplane::wire::{arp, checksum, ethernet, icmp, ipv6};

use crate::classify::{Classifier, Rx, RxKey};
use crate::report::{self, Generator, Group, Latency, Phase, Ready, Report, Requested};
use crate::spec::{Family, FlowCursor, Rate, StreamDef, TrafficSpec, FCS_LEN};
use crate::template::{Endpoints, Template, STAMP_MASK};

/// Highest latency the histograms hold (larger values are recorded as this).
const MAX_LATENCY_NS: u64 = 10_000_000_000;
/// Receive bursts per loop iteration, at most.
const RX_BURSTS: usize = 4;
/// Probes per stream in one readiness round.
const PROBES_PER_ROUND: usize = 8;

/// How to reach the device under test: one port, opened once per process.
#[derive(Debug, Clone)]
pub struct PortOptions {
    /// DPDK device string: a virtual device (`net_memif0,role=client,socket=...`) or a PCI
    /// address.
    pub device: String,
    /// Core of the poll loop (the EAL main lcore).
    pub core: usize,
    /// EAL `--file-prefix`.
    pub file_prefix: String,
    /// Extra EAL arguments, passed last.
    pub eal_args: Vec<String>,
    /// Wait at most this long for the link and for VIP resolution.
    pub link_timeout: Duration,
    /// Print a progress line every second.
    pub progress: bool,
}

/// One run of traffic over an open port.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The traffic.
    pub traffic: TrafficSpec,
    /// Packet rate.
    pub rate: Rate,
    /// Measurement time (unless `count` ends it first).
    pub duration: Duration,
    /// Packets to send in the measurement.
    pub count: Option<u64>,
    /// Open the established flows first (one SYN or datagram each), then measure.
    pub warmup: bool,
    /// Destination MAC; `None` resolves the VIPs by ARP/NDP.
    pub dst_mac: Option<[u8; 6]>,
    /// Networks whose ARP requests and neighbour solicitations the generator answers (the
    /// backends it stands in for).
    pub answer: Vec<IpNet>,
    /// Wait at most this long for the device to forward probes (zero: do not wait).
    pub ready_timeout: Duration,
    /// Receive-only time after each phase.
    pub drain: Duration,
    /// Template mbufs per stream.
    pub slots: usize,
    /// Label for the report.
    pub label: String,
}

/// Whether a device string names a virtual device (otherwise it is a PCI address).
pub fn is_vdev(device: &str) -> bool {
    device.starts_with("net_") || device.starts_with("eth_")
}

/// The EAL arguments for `opts`.
pub fn eal_args(opts: &PortOptions) -> Vec<String> {
    let mut a = vec![
        "sluice-pktgen".to_string(),
        "-l".into(),
        opts.core.to_string(),
        format!("--file-prefix={}", opts.file_prefix),
        "--in-memory".into(),
    ];
    if is_vdev(&opts.device) {
        a.push("--no-pci".into());
        a.push(format!("--vdev={}", opts.device));
    } else {
        a.push("-a".into());
        a.push(opts.device.clone());
    }
    a.extend(opts.eal_args.iter().cloned());
    a
}

/// One stream at run time.
struct Stream {
    def: StreamDef,
    tpl: Template,
    slots: Vec<Mbuf>,
    next_slot: usize,
    cursor: FlowCursor,
    sent: u64,
    tx: u64,
    tx_bytes: u64,
    rx: u64,
    rx_bytes: u64,
    hist: Histogram<u64>,
}

#[derive(Clone, Copy, Default)]
struct Pending {
    stream: u8,
    slot: u32,
    src: u32,
    sport: u16,
}

#[derive(Default, Clone, Copy)]
struct LoopStats {
    tx_offered: u64,
    tx_refused: u64,
    slot_busy: u64,
    rate_skipped: u64,
    rx_bursts: u64,
    rx_full: u64,
    busy_cycles: u64,
    total_cycles: u64,
    other_rx: u64,
}

/// How a phase stops sending.
#[derive(Clone, Copy)]
enum Stop {
    Ticks(u64),
    Count(u64),
    Limits,
}

struct Engine<'s> {
    rxq: &'s mut RxQueue,
    txq: &'s mut TxQueue,
    pool: &'s Mempool,
    mac: [u8; 6],
    hz: u64,
    ns_mult: u128,
    streams: Vec<Stream>,
    classifier: Classifier,
    pending: [Pending; BURST],
    npending: usize,
    ctl: MbufBatch,
    rxb: MbufBatch,
    st: LoopStats,
    all: Histogram<u64>,
    answer: Vec<IpNet>,
    vips: Vec<IpAddr>,
    vip_macs: [Option<[u8; 6]>; 2],
    arp_replies: u64,
    nd_replies: u64,
    stop: Arc<AtomicBool>,
    progress: bool,
    // Declared last: dropped after `streams`, whose templates it holds.
    tpl_pool: Option<Mempool>,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

fn fam_idx(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

impl Engine<'_> {
    fn ticks(&self, d: Duration) -> u64 {
        (d.as_secs_f64() * self.hz as f64) as u64
    }

    fn secs(&self, ticks: u64) -> f64 {
        ticks as f64 / self.hz as f64
    }

    /// Receives up to [`RX_BURSTS`] bursts; returns the packets received.
    #[inline]
    fn poll_rx(&mut self) -> usize {
        let mut total = 0;
        for _ in 0..RX_BURSTS {
            let n = self.rxq.rx_burst(&mut self.rxb);
            if n == 0 {
                break;
            }
            total += n;
            self.st.rx_bursts += 1;
            if n == BURST {
                self.st.rx_full += 1;
            }
            let now = tsc();
            let mut slow = false;
            for m in self.rxb.iter_mut() {
                match self.classifier.classify(m.data()) {
                    Rx::Data { group, stamp } => {
                        let s = &mut self.streams[usize::from(group)];
                        s.rx += 1;
                        s.rx_bytes += (m.len() + FCS_LEN) as u64;
                        let ticks = now.wrapping_sub(stamp) & STAMP_MASK;
                        let ns = ((u128::from(ticks) * self.ns_mult) >> 32) as u64;
                        s.hist.saturating_record(ns.max(1));
                    }
                    Rx::Arp | Rx::Nd => slow = true,
                    Rx::Other => self.st.other_rx += 1,
                }
            }
            if slow {
                let mut batch = std::mem::take(&mut self.rxb);
                for m in batch.drain() {
                    match self.classifier.classify(m.data()) {
                        Rx::Arp => self.on_arp(&m),
                        Rx::Nd => self.on_nd(&m),
                        _ => {}
                    }
                }
                self.rxb = batch;
            } else {
                self.rxb.free_all();
            }
            if n < BURST {
                break;
            }
        }
        total
    }

    fn answers(&self, ip: IpAddr) -> bool {
        self.answer.iter().any(|n| n.contains(&ip))
    }

    fn learn_vip(&mut self, ip: IpAddr, mac: [u8; 6]) {
        if self.vips.contains(&ip) {
            let i = match ip {
                IpAddr::V4(_) => 0,
                IpAddr::V6(_) => 1,
            };
            self.vip_macs[i] = Some(mac);
        }
    }

    fn on_arp(&mut self, m: &Mbuf) {
        let d = m.data();
        let Ok(a) = arp::Packet::new_checked(&d[ethernet::HEADER_LEN..]) else {
            return;
        };
        let (op, sha, spa, tpa) = (a.op(), a.sha(), a.spa(), a.tpa());
        self.learn_vip(IpAddr::from(spa), sha);
        if op == arp::OP_REQUEST && spa != tpa && self.answers(IpAddr::from(tpa)) {
            let mac = self.mac;
            let sent = self.send_ctl(|buf| {
                ethernet::emit(buf, sha, mac, ethernet::ethertype::ARP);
                arp::emit(
                    &mut buf[ethernet::HEADER_LEN..],
                    arp::OP_REPLY,
                    mac,
                    tpa,
                    sha,
                    spa,
                );
                buf[edge::ARP_FRAME_LEN..edge::MIN_FRAME_LEN].fill(0);
                edge::MIN_FRAME_LEN
            });
            if sent {
                self.arp_replies += 1;
            }
        }
    }

    fn on_nd(&mut self, m: &Mbuf) {
        let d = m.data();
        let l3 = ethernet::HEADER_LEN;
        let l4 = l3 + ipv6::HEADER_LEN;
        if d.len() < l4 + 24 {
            return;
        }
        let Ok(msg) = icmp::Message::new_checked(&d[l4..]) else {
            return;
        };
        let Some(target) = msg.nd_target() else {
            return;
        };
        let mut src = [0u8; 16];
        src.copy_from_slice(&d[l3 + 8..l3 + 24]);
        let src_mac = [d[6], d[7], d[8], d[9], d[10], d[11]];
        match msg.msg_type() {
            icmp::v6::NEIGHBOR_ADVERT => {
                let mac = msg
                    .nd_lladdr(icmp::v6::OPT_TARGET_LLADDR)
                    .unwrap_or(src_mac);
                self.learn_vip(IpAddr::from(target), mac);
            }
            icmp::v6::NEIGHBOR_SOLICIT if self.answers(IpAddr::from(target)) => {
                let mac = self.mac;
                // A DAD probe (from ::) is answered to all-nodes.
                let (dst, dst_mac, flags) = if src == [0u8; 16] {
                    let mut a = [0u8; 16];
                    a[0] = 0xff;
                    a[1] = 0x02;
                    a[15] = 1;
                    (a, icmp::multicast_mac(a), icmp::v6::NA_OVERRIDE)
                } else {
                    (src, src_mac, icmp::v6::NA_SOLICITED | icmp::v6::NA_OVERRIDE)
                };
                let sent = self.send_ctl(|buf| {
                    ethernet::emit(buf, dst_mac, mac, ethernet::ethertype::IPV6);
                    ipv6::emit(&mut buf[l3..], target, dst, 58, 32, 255);
                    icmp::emit_neighbor_advert(&mut buf[l4..l4 + 32], flags, target, mac);
                    let c = !checksum::fold(checksum::sum(
                        checksum::pseudo_v6(target, dst, 58, 32),
                        &buf[l4..l4 + 32],
                    ));
                    buf[l4 + 2..l4 + 4].copy_from_slice(&c.to_be_bytes());
                    edge::ND_FRAME_LEN
                });
                if sent {
                    self.nd_replies += 1;
                }
            }
            _ => {}
        }
    }

    /// Builds a control frame with `f` (which returns its length) and queues it.
    fn send_ctl(&mut self, f: impl FnOnce(&mut [u8]) -> usize) -> bool {
        if self.ctl.is_full() {
            return false;
        }
        let Some(mut m) = self.pool.alloc() else {
            return false;
        };
        let room = edge::ND_FRAME_LEN.max(edge::MIN_FRAME_LEN);
        let Some(buf) = m.append(room) else {
            return false;
        };
        let n = f(buf);
        m.trim(room - n);
        self.ctl.push(m).is_ok()
    }

    fn flush_ctl(&mut self) {
        if !self.ctl.is_empty() {
            self.txq.tx_burst(&mut self.ctl);
        }
    }

    /// Adds up to `want` packets from `pattern` to the pending burst. Streams whose limit is
    /// reached are skipped; returns false when every stream of the pattern is exhausted.
    #[inline]
    fn fill(&mut self, want: usize, pattern: &[u8], pos: &mut usize) -> bool {
        let mut added = 0;
        let mut misses = 0;
        while added < want && self.npending < BURST {
            let si = usize::from(pattern[*pos]);
            let s = &mut self.streams[si];
            if let Some(limit) = s.def.limit {
                if s.sent >= limit {
                    *pos = (*pos + 1) % pattern.len();
                    misses += 1;
                    if misses > pattern.len() {
                        return false;
                    }
                    continue;
                }
            }
            let slot = s.next_slot;
            if s.slots[slot].refcnt() != 1 {
                self.st.slot_busy += 1;
                break;
            }
            misses = 0;
            s.next_slot = if slot + 1 == s.slots.len() {
                0
            } else {
                slot + 1
            };
            s.sent += 1;
            let (src, sport) = s.cursor.next_tuple();
            self.pending[self.npending] = Pending {
                stream: si as u8,
                slot: slot as u32,
                src,
                sport,
            };
            self.npending += 1;
            added += 1;
            *pos += 1;
            if *pos == pattern.len() {
                *pos = 0;
            }
        }
        true
    }

    /// Stamps and sends the pending burst; keeps what the link refused. Returns packets sent.
    #[inline]
    fn flush(&mut self) -> usize {
        let n = self.npending;
        if n == 0 {
            return 0;
        }
        let stamp = tsc();
        for p in &self.pending[..n] {
            let s = &mut self.streams[usize::from(p.stream)];
            let tpl = &s.tpl;
            tpl.patch(s.slots[p.slot as usize].data_mut(), p.src, p.sport, stamp);
        }
        let streams = &self.streams;
        let k = self.txq.tx_burst_shared(
            self.pending[..n]
                .iter()
                .map(|p| &streams[usize::from(p.stream)].slots[p.slot as usize]),
        );
        for p in &self.pending[..k] {
            let s = &mut self.streams[usize::from(p.stream)];
            s.tx += 1;
            s.tx_bytes += s.def.frame as u64;
        }
        self.st.tx_offered += n as u64;
        self.st.tx_refused += (n - k) as u64;
        self.pending.copy_within(k..n, 0);
        self.npending = n - k;
        k
    }

    /// Drops the pending burst (never sent): gives back the packets to their streams' limits.
    fn discard_pending(&mut self) {
        for p in &self.pending[..self.npending] {
            self.streams[usize::from(p.stream)].sent -= 1;
        }
        self.npending = 0;
    }

    fn reset(&mut self, active: &[usize]) {
        for s in &mut self.streams {
            s.tx = 0;
            s.tx_bytes = 0;
            s.rx = 0;
            s.rx_bytes = 0;
            s.hist.reset();
        }
        self.all.reset();
        self.st = LoopStats::default();
        self.classifier = Classifier::new(
            active
                .iter()
                .map(|&i| (RxKey::of(&self.streams[i].def), i as u8)),
        );
    }

    fn interrupted(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn totals(&self, active: &[usize]) -> (u64, u64) {
        active.iter().fold((0, 0), |(t, r), &i| {
            (t + self.streams[i].tx, r + self.streams[i].rx)
        })
    }

    /// Runs one phase: sends `active` streams by `pattern` until `stop`, then drains.
    fn phase(
        &mut self,
        name: &str,
        active: &[usize],
        pattern: &[u8],
        rate: Rate,
        stop: Stop,
        drain: Duration,
    ) -> Phase {
        self.reset(active);
        let hz = self.hz;
        let drain_ticks = self.ticks(drain);
        let t0 = tsc();
        let mut pos = 0usize;
        let mut issued: u64 = 0; // sent + pending
        let mut skipped: u64 = 0;
        let per_tick = match rate {
            Rate::Max => 0.0,
            Rate::Pps(r) => r / hz as f64,
        };
        let debt_cap = match rate {
            Rate::Max => 0,
            Rate::Pps(r) => ((r / 1000.0) as u64).max(2 * BURST as u64),
        };
        let mut sending = true;
        let mut t_end = t0;
        let mut drain_end = 0u64;
        let mut last = t0;
        let mut next_print = t0 + hz;
        let (mut ptx, mut prx, mut pt) = (0u64, 0u64, t0);
        loop {
            let now = tsc();
            let mut work = self.poll_rx();
            if sending {
                let mut want = BURST - self.npending;
                if per_tick > 0.0 {
                    let allowed = ((now - t0) as f64 * per_tick) as u64 - skipped;
                    if allowed > issued + debt_cap {
                        let d = allowed - issued - debt_cap;
                        skipped += d;
                        self.st.rate_skipped += d;
                    }
                    let allowed = ((now - t0) as f64 * per_tick) as u64 - skipped;
                    want = want.min(allowed.saturating_sub(issued) as usize);
                }
                if let Stop::Count(c) = stop {
                    want = want.min(c.saturating_sub(issued) as usize);
                }
                let mut exhausted = false;
                if want > 0 {
                    let before = self.npending;
                    exhausted = !self.fill(want, pattern, &mut pos);
                    issued += (self.npending - before) as u64;
                }
                work += self.flush();
                let done = match stop {
                    Stop::Ticks(t) => now - t0 >= t,
                    Stop::Count(c) => issued >= c && self.npending == 0,
                    Stop::Limits => exhausted && self.npending == 0,
                };
                if done || self.interrupted() {
                    self.discard_pending();
                    sending = false;
                    t_end = now;
                    drain_end = now
                        + if self.interrupted() {
                            drain_ticks.min(hz / 10)
                        } else {
                            drain_ticks
                        };
                }
            } else if now >= drain_end {
                break;
            }
            self.flush_ctl();
            let end = tsc();
            self.st.total_cycles += end - last;
            if work > 0 {
                self.st.busy_cycles += end - now;
            }
            last = end;
            if self.progress && end >= next_print {
                next_print = end + hz;
                let (tx, rx) = self.totals(active);
                let dt = self.secs(end - pt).max(1e-9);
                let lost = tx.saturating_sub(rx);
                self.merge_all(active);
                let p99 = if self.all.is_empty() {
                    "-".to_string()
                } else {
                    report::fmt_ns(self.all.value_at_quantile(0.99))
                };
                eprintln!(
                    "[{name} {:5.1}s] tx {:.3} Mpps  rx {:.3} Mpps  sent {tx}  lost {lost}  p99 {p99}",
                    self.secs(end - t0),
                    (tx - ptx) as f64 / dt / 1e6,
                    (rx - prx) as f64 / dt / 1e6,
                );
                (ptx, prx, pt) = (tx, rx, end);
            }
        }
        self.merge_all(active);
        self.summarise(active, self.secs(t_end - t0), rate)
    }

    /// Sums the active streams' histograms into `all` (once per progress line and at the end,
    /// so each packet is recorded once).
    fn merge_all(&mut self, active: &[usize]) {
        self.all.reset();
        for &i in active {
            let _ = self.all.add(&self.streams[i].hist);
        }
    }

    fn summarise(&self, active: &[usize], seconds: f64, rate: Rate) -> Phase {
        let mut groups = Vec::new();
        let (mut tx, mut rx, mut txb, mut rxb) = (0, 0, 0, 0);
        for &i in active {
            let s = &self.streams[i];
            tx += s.tx;
            rx += s.rx;
            txb += s.tx_bytes;
            rxb += s.rx_bytes;
            groups.push(Group {
                name: s.def.name(),
                tx_packets: s.tx,
                rx_packets: s.rx,
                lost: s.tx.saturating_sub(s.rx),
                latency: Latency::of(&s.hist),
            });
        }
        let secs = seconds.max(1e-9);
        let lost = tx.saturating_sub(rx);
        let st = &self.st;
        let bp = if st.tx_offered == 0 {
            0.0
        } else {
            st.tx_refused as f64 * 100.0 / st.tx_offered as f64
        };
        let tx_pps = tx as f64 / secs;
        let requested = match rate {
            Rate::Max => None,
            Rate::Pps(r) => Some(r),
        };
        let busy = if st.total_cycles == 0 {
            0.0
        } else {
            st.busy_cycles as f64 * 100.0 / st.total_cycles as f64
        };
        let (limited_by, verdict) = report::verdict(requested, tx_pps, bp, busy);
        Phase {
            seconds,
            tx_packets: tx,
            tx_bytes: txb,
            rx_packets: rx,
            rx_bytes: rxb,
            lost,
            loss_pct: if tx == 0 {
                0.0
            } else {
                lost as f64 * 100.0 / tx as f64
            },
            tx_pps,
            rx_pps: rx as f64 / secs,
            rx_gbps: rxb as f64 * 8.0 / secs / 1e9,
            latency: Latency::of(&self.all),
            groups,
            other_rx: st.other_rx,
            generator: Generator {
                tx_offered: st.tx_offered,
                tx_refused: st.tx_refused,
                backpressure_pct: bp,
                slot_busy: st.slot_busy,
                rate_skipped: st.rate_skipped,
                rx_full_bursts_pct: if st.rx_bursts == 0 {
                    0.0
                } else {
                    st.rx_full as f64 * 100.0 / st.rx_bursts as f64
                },
                busy_pct: busy,
                limited_by: limited_by.into(),
                verdict,
            },
        }
    }

    /// Receives (and answers ARP/NDP) for `d`, sending nothing else.
    fn idle(&mut self, d: Duration) {
        let end = tsc() + self.ticks(d);
        while tsc() < end && !self.interrupted() {
            if self.poll_rx() == 0 {
                std::hint::spin_loop();
            }
            self.flush_ctl();
        }
    }

    /// Asks for the VIPs' MACs until every family has one.
    fn resolve_vips(&mut self, src: &[(IpAddr, IpAddr)], timeout: Duration) -> Result<()> {
        let t0 = tsc();
        let limit = self.ticks(timeout);
        loop {
            let missing: Vec<(IpAddr, IpAddr)> = src
                .iter()
                .copied()
                .filter(|(vip, _)| self.vip_macs[fam_idx(family_of(*vip))].is_none())
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if tsc() - t0 > limit || self.interrupted() {
                bail!(
                    "no ARP/NDP answer for {} within {:?}: is the device under test serving it? \
                     (for a device that does not answer, such as testpmd, pass --dst-mac)",
                    missing
                        .iter()
                        .map(|(v, _)| v.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    timeout
                );
            }
            let mac = self.mac;
            for (vip, from) in missing {
                match (vip, from) {
                    (IpAddr::V4(v), IpAddr::V4(f)) => {
                        self.send_ctl(|b| edge::arp_request(b, mac, f.octets(), v.octets()));
                    }
                    (IpAddr::V6(v), IpAddr::V6(f)) => {
                        self.send_ctl(|b| edge::neighbor_solicit(b, mac, f.octets(), v.octets()));
                    }
                    _ => {}
                }
            }
            self.flush_ctl();
            self.idle(Duration::from_millis(200));
        }
    }

    /// Sends rounds of probes until one comes back whole.
    fn wait_ready(&mut self, probes: &[usize], timeout: Duration) -> Result<Ready> {
        let t0 = tsc();
        let limit = self.ticks(timeout);
        let pattern: Vec<u8> = probes.iter().map(|&i| i as u8).collect();
        let mut pos = 0;
        let (mut sent, mut back) = (0u64, 0u64);
        self.reset(probes);
        loop {
            let before = self.totals(probes);
            let want = PROBES_PER_ROUND * probes.len();
            let mut round = 0;
            while round < want {
                let issue = (want - round).saturating_sub(self.npending);
                self.fill(issue.min(BURST - self.npending), &pattern, &mut pos);
                round += self.flush();
                self.poll_rx();
                self.flush_ctl();
                if self.interrupted() || tsc() - t0 > limit {
                    break;
                }
            }
            self.discard_pending();
            self.idle(Duration::from_millis(100));
            let after = self.totals(probes);
            let (s, r) = (after.0 - before.0, after.1 - before.1);
            sent += s;
            back += r;
            if r >= s && s > 0 {
                return Ok(Ready {
                    seconds: self.secs(tsc() - t0),
                    probes_sent: sent,
                    probes_returned: back,
                });
            }
            if tsc() - t0 > limit || self.interrupted() {
                bail!(
                    "the device under test forwarded {back} of {sent} probe packets in {:?}; \
                     check the VIP and port, --dst-mac, and that the backends' networks are \
                     given with --answer",
                    timeout
                );
            }
        }
    }
}

fn family_of(ip: IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

/// The address whose low 32 bits the templates of `family` replace (IPv4: any).
fn src_base(spec: &TrafficSpec, family: Family) -> IpAddr {
    match family {
        Family::V4 => spec.src_net4.network(),
        Family::V6 => spec.src_net6.network(),
    }
}

/// An open port: EAL, the receive pool, the port and its queues. Scenarios run one after the
/// other over the same link; between them nothing polls the port.
///
/// DPDK 22.11's `net_memif` crashes a thread that polls while the peer disconnects (the
/// control thread unmaps the rings under it). So a session keeps the link up across scenarios,
/// and [`Session::close`] can wait, not polling, for the peer to go first.
pub struct Session {
    // Field order is drop order: queues, port, pool, then EAL.
    rxq: RxQueue,
    txq: TxQueue,
    port: Port,
    pool: Mempool,
    eal: Eal,
    opts: PortOptions,
    mac: [u8; 6],
    driver: String,
    hz: u64,
    vip_macs: Vec<(IpAddr, [u8; 6])>,
    stop: Arc<AtomicBool>,
    pools_made: u32,
}

impl Session {
    /// Starts EAL, opens and starts the port, and waits for its link.
    pub fn open(opts: &PortOptions, stop: Arc<AtomicBool>) -> Result<Session> {
        let eal = Eal::init(&eal_args(opts)).context("EAL init")?;
        let hz = tsc_hz();
        if hz == 0 {
            bail!("EAL reports no TSC frequency");
        }
        let pool = Mempool::new("pktgen_rx", 8191, 256, Mempool::DEFAULT_DATA_ROOM, -1)
            .context("receive mempool (more hugepages?)")?;
        let name = opts.device.split(',').next().unwrap_or(&opts.device);
        let mut port = Port::by_name(&eal, name).with_context(|| format!("port {name}"))?;
        let driver = port.driver_name().unwrap_or_default();
        let (mut rxqs, mut txqs) = port
            .configure(
                &PortConfig {
                    rx_queues: 1,
                    tx_queues: 1,
                    rx_descriptors: 1024,
                    tx_descriptors: 1024,
                    rss: false,
                    promiscuous: true,
                },
                &pool,
            )
            .context("port configure")?;
        port.start().context("port start")?;
        let mac = port.mac().context("port MAC")?;
        let t0 = std::time::Instant::now();
        while !port.link().map(|l| l.up).unwrap_or(false) {
            if t0.elapsed() > opts.link_timeout || stop.load(Ordering::Relaxed) {
                bail!(
                    "link of {} did not come up within {:?} (is the peer running?)",
                    opts.device,
                    opts.link_timeout
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Session {
            rxq: rxqs.pop().ok_or_else(|| anyhow!("no RX queue"))?,
            txq: txqs.pop().ok_or_else(|| anyhow!("no TX queue"))?,
            port,
            pool,
            eal,
            opts: opts.clone(),
            mac,
            driver,
            hz,
            vip_macs: Vec::new(),
            stop,
            pools_made: 0,
        })
    }

    /// Whether the link is up.
    pub fn link_up(&self) -> bool {
        self.port.link().map(|l| l.up).unwrap_or(false)
    }

    /// Waits, without polling, until the peer brings the link down or `linger` passes; then
    /// stops the port and EAL.
    pub fn close(mut self, linger: Duration) {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < linger && self.link_up() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.port.stop();
        // Queue handles own nothing; the port goes before its pool, EAL last.
        let Session {
            port, pool, eal, ..
        } = self;
        drop(port);
        drop(pool);
        drop(eal);
    }

    /// Runs one scenario: optional VIP resolution, readiness probes, warm-up, measurement.
    pub fn run(&mut self, sc: &Scenario) -> Result<Report> {
        let plan = sc.traffic.plan().map_err(|e| anyhow!(e))?;
        let nstreams = plan.measure.len() + plan.open.len() + plan.probe.len();
        if nstreams > 255 {
            bail!("too many flow groups ({nstreams}); use fewer sizes");
        }
        let slots = sc.slots.max(2 * BURST);
        let probe_slots = 2 * BURST;
        let nslots =
            (plan.measure.len() + plan.open.len()) * slots + plan.probe.len() * probe_slots;
        self.pools_made += 1;
        let tpl_pool = Mempool::new(
            &format!("pktgen_tpl{}", self.pools_made),
            (nslots + 64) as u32,
            0,
            Mempool::DEFAULT_DATA_ROOM,
            -1,
        )
        .with_context(|| format!("template mempool of {nslots} mbufs (more hugepages?)"))?;
        let mut vip_macs = [None; 2];
        for (ip, mac) in &self.vip_macs {
            if sc.traffic.vips.contains(ip) {
                vip_macs[fam_idx(family_of(*ip))] = Some(*mac);
            }
        }
        if let Some(m) = sc.dst_mac {
            vip_macs = [Some(m), Some(m)];
        }
        let mut e = Engine {
            rxq: &mut self.rxq,
            txq: &mut self.txq,
            pool: &self.pool,
            mac: self.mac,
            hz: self.hz,
            ns_mult: (1_000_000_000u128 << 32) / u128::from(self.hz),
            streams: Vec::with_capacity(nstreams),
            classifier: Classifier::default(),
            pending: [Pending::default(); BURST],
            npending: 0,
            ctl: MbufBatch::new(),
            rxb: MbufBatch::new(),
            st: LoopStats::default(),
            all: hist(),
            answer: sc.answer.clone(),
            vips: sc.traffic.vips.clone(),
            vip_macs,
            arp_replies: 0,
            nd_replies: 0,
            stop: self.stop.clone(),
            progress: self.opts.progress,
            tpl_pool: Some(tpl_pool),
        };
        let result = drive(
            &mut e,
            sc,
            &plan,
            &self.driver,
            &self.opts,
            slots,
            probe_slots,
        );
        for ip in &sc.traffic.vips {
            if let Some(m) = e.vip_macs[fam_idx(family_of(*ip))] {
                if sc.dst_mac.is_none() {
                    self.vip_macs.retain(|(v, _)| v != ip);
                    self.vip_macs.push((*ip, m));
                }
            }
        }
        // Templates back to their pool, then the pool; batches back to the receive pool.
        e.discard_pending();
        e.streams.clear();
        e.tpl_pool = None;
        drop(e);
        result
    }
}

fn drive(
    e: &mut Engine<'_>,
    sc: &Scenario,
    plan: &crate::spec::Plan,
    driver: &str,
    port: &PortOptions,
    slots: usize,
    probe_slots: usize,
) -> Result<Report> {
    let spec = &sc.traffic;
    // Destination MACs.
    let asks: Vec<(IpAddr, IpAddr)> = spec
        .vips
        .iter()
        .filter(|v| e.vip_macs[fam_idx(family_of(**v))].is_none())
        .map(|v| {
            let fam = family_of(*v);
            let base = plan
                .probe
                .iter()
                .find(|s| s.family == fam)
                .map(|s| s.flows.base)
                .unwrap_or(1);
            (*v, with_low32(src_base(spec, fam), base))
        })
        .collect();
    if !asks.is_empty() {
        e.resolve_vips(&asks, port.link_timeout)?;
    }
    // Templates.
    let mut build = |defs: &[StreamDef], n: usize| -> Result<Vec<usize>> {
        let mut idx = Vec::new();
        for d in defs {
            let fam = d.family;
            let vip = spec
                .vips
                .iter()
                .copied()
                .find(|v| family_of(*v) == fam)
                .ok_or_else(|| anyhow!("no VIP for {fam}"))?;
            let ep = Endpoints {
                dst_mac: e.vip_macs[fam_idx(fam)].unwrap_or([0xff; 6]),
                src_mac: e.mac,
                src: src_base(spec, fam),
                dst: vip,
                dport: spec.dport,
            };
            let tpl = Template::build(d, &ep);
            let mut ring = Vec::with_capacity(n);
            let pool = e
                .tpl_pool
                .as_ref()
                .ok_or_else(|| anyhow!("no template pool"))?;
            for _ in 0..n {
                let mut m = pool
                    .alloc()
                    .ok_or_else(|| anyhow!("template mempool exhausted"))?;
                let buf = m.append(tpl.frame.len()).ok_or_else(|| {
                    anyhow!("frame of {} bytes does not fit an mbuf", tpl.frame.len())
                })?;
                buf.copy_from_slice(&tpl.frame);
                ring.push(m);
            }
            idx.push(e.streams.len());
            e.streams.push(Stream {
                def: d.clone(),
                cursor: d.flows.cursor(),
                tpl,
                slots: ring,
                next_slot: 0,
                sent: 0,
                tx: 0,
                tx_bytes: 0,
                rx: 0,
                rx_bytes: 0,
                hist: hist(),
            });
        }
        Ok(idx)
    };
    let probe = build(&plan.probe, probe_slots)?;
    let open = build(&plan.open, slots)?;
    let measure = build(&plan.measure, slots)?;

    let ready = if sc.ready_timeout.is_zero() {
        None
    } else {
        let r = e.wait_ready(&probe, sc.ready_timeout)?;
        // Let a device that just learned its next hops publish them before the load starts.
        e.idle(Duration::from_millis(200));
        Some(r)
    };

    let warmup = if sc.warmup && !open.is_empty() && !e.interrupted() {
        let weights: Vec<u64> = open.iter().map(|&i| e.streams[i].def.weight).collect();
        let pat: Vec<u8> = crate::spec::pattern(&weights, 4096)
            .into_iter()
            .map(|k| open[usize::from(k)] as u8)
            .collect();
        // As fast as the device takes them: a warm-up only has to open every flow once.
        let w = e.phase("warm-up", &open, &pat, Rate::Max, Stop::Limits, sc.drain);
        Some(w)
    } else {
        None
    };

    let weights: Vec<u64> = measure.iter().map(|&i| e.streams[i].def.weight).collect();
    let pat: Vec<u8> = crate::spec::pattern(&weights, 65536)
        .into_iter()
        .map(|k| measure[usize::from(k)] as u8)
        .collect();
    let stop = match sc.count {
        Some(c) => Stop::Count(c),
        None => Stop::Ticks(e.ticks(sc.duration)),
    };
    let interrupted_before = e.interrupted();
    let m = e.phase("measure", &measure, &pat, sc.rate, stop, sc.drain);
    Ok(Report {
        label: sc.label.clone(),
        device: port.device.clone(),
        driver: driver.to_string(),
        tsc_hz: e.hz,
        requested: Requested {
            rate: sc.rate.to_string(),
            duration_s: sc.duration.as_secs_f64(),
            count: sc.count,
            sizes: spec
                .sizes
                .0
                .iter()
                .map(|(s, w)| format!("{s}:{w}"))
                .collect::<Vec<_>>()
                .join(","),
            proto: spec.proto.to_string(),
            vips: spec.vips.iter().map(|v| v.to_string()).collect(),
            dport: spec.dport,
            flows: spec.flows,
            new_flow_pct: f64::from(spec.new_permille) / 10.0,
        },
        notes: plan.notes.clone(),
        ready,
        warmup,
        measure: m,
        arp_replies: e.arp_replies,
        nd_replies: e.nd_replies,
        interrupted: interrupted_before || e.interrupted(),
    })
}

/// `base` with its low 32 bits replaced (IPv4: the whole address).
fn with_low32(base: IpAddr, low: u32) -> IpAddr {
    match base {
        IpAddr::V4(_) => IpAddr::V4(low.into()),
        IpAddr::V6(a) => {
            let v = (u128::from(a) & !0xffff_ffffu128) | u128::from(low);
            IpAddr::V6(v.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eal_arguments() {
        let o = PortOptions {
            device: "net_memif0,role=client,socket=/tmp/x.sock".into(),
            core: 0,
            file_prefix: "pg".into(),
            eal_args: vec!["--log-level=7".into()],
            link_timeout: Duration::from_secs(1),
            progress: false,
        };
        let a = eal_args(&o);
        assert!(a.contains(&"--vdev=net_memif0,role=client,socket=/tmp/x.sock".to_string()));
        assert!(a.contains(&"--no-pci".to_string()));
        assert_eq!(a.last().unwrap(), "--log-level=7");
        let mut o2 = o;
        o2.device = "0000:3b:00.0".into();
        let a = eal_args(&o2);
        assert!(a.windows(2).any(|w| w[0] == "-a" && w[1] == "0000:3b:00.0"));
        assert_eq!(
            with_low32("fd00:201::".parse().unwrap(), 7),
            "fd00:201::7".parse::<IpAddr>().unwrap()
        );
    }
}
