//! The run's results: a human table and the same content as JSON (`--json`).
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in nanoseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    /// Packets measured.
    pub samples: u64,
    /// Smallest.
    pub min_ns: u64,
    /// Median.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Largest.
    pub max_ns: u64,
    /// Mean.
    pub mean_ns: f64,
}

impl Latency {
    /// The percentiles of `h`, `None` when it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        Some(Latency {
            samples: h.len(),
            min_ns: h.min(),
            p50_ns: h.value_at_quantile(0.50),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
            mean_ns: h.mean(),
        })
    }
}

/// One flow group (stream).
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// e.g. `v4 tcp est 64B`.
    pub name: String,
    /// Packets the link accepted.
    pub tx_packets: u64,
    /// Packets that came back.
    pub rx_packets: u64,
    /// `tx - rx` (0 if more came back).
    pub lost: u64,
    /// Latency of the packets that came back.
    pub latency: Option<Latency>,
}

/// How the generator itself fared: the evidence for who set the rate.
#[derive(Debug, Clone, Serialize)]
pub struct Generator {
    /// Packets handed to `tx_burst`, counting each retry.
    pub tx_offered: u64,
    /// Of those, refused by the link (its ring was full).
    pub tx_refused: u64,
    /// `tx_refused / tx_offered` in percent.
    pub backpressure_pct: f64,
    /// Times a template was still held by the driver when its turn came.
    pub slot_busy: u64,
    /// Packets a fixed rate could not send in time (the schedule moved on without them).
    pub rate_skipped: u64,
    /// Receive bursts that came back full (a backlog on the generator's receive side).
    pub rx_full_bursts_pct: f64,
    /// Share of loop time spent doing work (sending or receiving), in percent.
    pub busy_pct: f64,
    /// `device`, `both`, `generator` or `none` (a fixed rate was reached); see [`verdict`].
    pub limited_by: String,
    /// One sentence that says why.
    pub verdict: String,
}

/// The results of one phase (warm-up or measurement).
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// Seconds from first to last packet sent.
    pub seconds: f64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes sent (frames including FCS).
    pub tx_bytes: u64,
    /// Packets received back.
    pub rx_packets: u64,
    /// Bytes received back (frames including FCS).
    pub rx_bytes: u64,
    /// `tx - rx`.
    pub lost: u64,
    /// Lost share in percent.
    pub loss_pct: f64,
    /// Send rate.
    pub tx_pps: f64,
    /// Receive rate: the throughput.
    pub rx_pps: f64,
    /// Receive rate in Gbit/s of frames including FCS (no preamble or gap).
    pub rx_gbps: f64,
    /// Latency of everything that came back.
    pub latency: Option<Latency>,
    /// Per flow group.
    pub groups: Vec<Group>,
    /// Received frames that belonged to no group of this phase (not counted in `rx`).
    pub other_rx: u64,
    /// Evidence about the generator.
    pub generator: Generator,
}

/// The readiness wait.
#[derive(Debug, Clone, Serialize)]
pub struct Ready {
    /// Seconds until the device forwarded every probe of a round.
    pub seconds: f64,
    /// Probes sent.
    pub probes_sent: u64,
    /// Probes that came back.
    pub probes_returned: u64,
}

/// What was asked for.
#[derive(Debug, Clone, Serialize)]
pub struct Requested {
    /// `max` or packets per second.
    pub rate: String,
    /// Seconds of measurement (when not stopped by `count`).
    pub duration_s: f64,
    /// Packets to send, if a count was given.
    pub count: Option<u64>,
    /// Frame sizes and weights.
    pub sizes: String,
    /// `tcp` or `udp`.
    pub proto: String,
    /// Destination VIPs.
    pub vips: Vec<String>,
    /// Destination port.
    pub dport: u16,
    /// Established flows.
    pub flows: u64,
    /// Share of new flows in percent.
    pub new_flow_pct: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Free text naming the run.
    pub label: String,
    /// The device string.
    pub device: String,
    /// Its DPDK driver.
    pub driver: String,
    /// TSC frequency used for latency.
    pub tsc_hz: u64,
    /// What was asked for.
    pub requested: Requested,
    /// Adjustments made (e.g. frame sizes raised to a family's minimum).
    pub notes: Vec<String>,
    /// The readiness wait, if any.
    pub ready: Option<Ready>,
    /// The warm-up that opened the established flows, if any.
    pub warmup: Option<Phase>,
    /// The measurement.
    pub measure: Phase,
    /// ARP replies sent for `--answer` networks.
    pub arp_replies: u64,
    /// Neighbour advertisements sent for `--answer` networks.
    pub nd_replies: u64,
    /// Stopped early by a signal.
    pub interrupted: bool,
}

/// Formats nanoseconds as `12.3us`.
pub fn fmt_ns(ns: u64) -> String {
    if ns >= 10_000_000 {
        format!("{:.1}ms", ns as f64 / 1e6)
    } else if ns >= 1_000 {
        format!("{:.1}us", ns as f64 / 1e3)
    } else {
        format!("{ns}ns")
    }
}

fn lat_cols(l: &Option<Latency>) -> String {
    match l {
        Some(l) => format!(
            "{:>9} {:>9} {:>9} {:>9}",
            fmt_ns(l.p50_ns),
            fmt_ns(l.p99_ns),
            fmt_ns(l.p999_ns),
            fmt_ns(l.max_ns)
        ),
        None => format!("{:>9} {:>9} {:>9} {:>9}", "-", "-", "-", "-"),
    }
}

fn pct(lost: u64, tx: u64) -> f64 {
    if tx == 0 {
        0.0
    } else {
        lost as f64 * 100.0 / tx as f64
    }
}

impl Phase {
    fn table(&self, out: &mut String) {
        let w = self
            .groups
            .iter()
            .map(|g| g.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let _ = writeln!(
            out,
            "  {:<w$} {:>12} {:>12} {:>10} {:>7}  {:>9} {:>9} {:>9} {:>9}",
            "group", "tx", "rx", "lost", "loss", "p50", "p99", "p99.9", "max"
        );
        for g in &self.groups {
            let _ = writeln!(
                out,
                "  {:<w$} {:>12} {:>12} {:>10} {:>6.2}%  {}",
                g.name,
                g.tx_packets,
                g.rx_packets,
                g.lost,
                pct(g.lost, g.tx_packets),
                lat_cols(&g.latency)
            );
        }
        if self.groups.len() > 1 {
            let _ = writeln!(
                out,
                "  {:<w$} {:>12} {:>12} {:>10} {:>6.2}%  {}",
                "total",
                self.tx_packets,
                self.rx_packets,
                self.lost,
                self.loss_pct,
                lat_cols(&self.latency)
            );
        }
        let _ = writeln!(
            out,
            "  rate: tx {:.3} Mpps, rx {:.3} Mpps ({:.3} Gbit/s) over {:.2} s{}",
            self.tx_pps / 1e6,
            self.rx_pps / 1e6,
            self.rx_gbps,
            self.seconds,
            if self.other_rx > 0 {
                format!("; {} other frames received", self.other_rx)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "  generator: {} (link refused {:.1}% of offers, busy {:.0}%{})",
            self.generator.verdict,
            self.generator.backpressure_pct,
            self.generator.busy_pct,
            if self.generator.slot_busy > 0 {
                format!(", {} template waits", self.generator.slot_busy)
            } else {
                String::new()
            }
        );
    }
}

impl Report {
    /// The human-readable report.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let r = &self.requested;
        let _ = writeln!(
            out,
            "sluice-pktgen{}: {} ({}), {} {} to {} port {}, sizes {}, {} flows, {:.1}% new, rate {}",
            if self.label.is_empty() {
                String::new()
            } else {
                format!(" [{}]", self.label)
            },
            self.device,
            self.driver,
            r.proto,
            if r.vips.len() > 1 { "dual-stack" } else { "" },
            r.vips.join(" + "),
            r.dport,
            r.sizes,
            r.flows,
            r.new_flow_pct,
            r.rate
        );
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        if let Some(rd) = &self.ready {
            let _ = writeln!(
                out,
                "ready after {:.2} s ({} of {} probes returned)",
                rd.seconds, rd.probes_returned, rd.probes_sent
            );
        }
        if let Some(w) = &self.warmup {
            let _ = writeln!(
                out,
                "warm-up: opened {} flows in {:.2} s, {} came back ({:.2}% lost)",
                w.tx_packets, w.seconds, w.rx_packets, w.loss_pct
            );
        }
        let _ = writeln!(
            out,
            "measurement{}:",
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        );
        self.measure.table(&mut out);
        if self.arp_replies + self.nd_replies > 0 {
            let _ = writeln!(
                out,
                "answered {} ARP requests and {} neighbour solicitations for backend addresses",
                self.arp_replies, self.nd_replies
            );
        }
        out
    }

    /// The JSON report.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Decides who set the rate, from what the generator saw: the share of offered packets the
/// link refused (its ring toward the device was full) and the share of time the generator's
/// loop had work.
///
/// - A fixed rate that was reached: `none`.
/// - The link refused 1% or more: the device (or the link) pushed back: `device`; but if the
///   generator was also busy 90% of the time or more and the link refused less than half the
///   offers, both were near their limit and the device may be somewhat faster: `both`.
/// - The link refused (almost) nothing: the generator set the rate: `generator`.
pub fn verdict(
    requested_pps: Option<f64>,
    achieved_pps: f64,
    backpressure_pct: f64,
    busy_pct: f64,
) -> (&'static str, String) {
    const REFUSED: f64 = 1.0;
    match requested_pps {
        Some(r) if achieved_pps >= 0.99 * r => ("none", "the requested rate was reached".into()),
        _ if backpressure_pct >= REFUSED && busy_pct >= 90.0 && backpressure_pct < 50.0 => (
            "both",
            "the link refused some packets but the generator had no idle time: both were near \
             their limit, the device under test may be somewhat faster than this"
                .into(),
        ),
        _ if backpressure_pct >= REFUSED => (
            "device",
            "the link refused packets: the device under test (or the link) set the rate".into(),
        ),
        Some(r) => (
            "generator",
            format!(
                "the generator reached only {:.1}% of the requested rate and the link refused \
                 nothing: the generator is the limit (or it was descheduled)",
                achieved_pps * 100.0 / r
            ),
        ),
        None => (
            "generator",
            "the link refused nothing: the generator, not the device under test, is the limit \
             (the device may be faster than this)"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(verdict(None, 1e6, 30.0, 60.0).0, "device");
        assert_eq!(verdict(None, 1e6, 30.0, 95.0).0, "both");
        assert_eq!(verdict(None, 1e6, 80.0, 95.0).0, "device");
        assert_eq!(verdict(None, 1e6, 0.0, 99.0).0, "generator");
        assert_eq!(verdict(Some(1e6), 0.995e6, 0.0, 10.0).0, "none");
        assert_eq!(verdict(Some(1e6), 0.5e6, 0.0, 10.0).0, "generator");
        assert_eq!(verdict(Some(1e6), 0.5e6, 20.0, 10.0).0, "device");
    }

    #[test]
    fn latency_and_formatting() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 3).unwrap();
        assert!(Latency::of(&h).is_none());
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let l = Latency::of(&h).unwrap();
        assert_eq!(l.samples, 1000);
        assert!((499_000..=501_000).contains(&l.p50_ns));
        assert!((989_000..=991_000).contains(&l.p99_ns));
        assert_eq!(fmt_ns(950), "950ns");
        assert_eq!(fmt_ns(12_345), "12.3us");
        assert_eq!(fmt_ns(25_000_000), "25.0ms");
    }
}
