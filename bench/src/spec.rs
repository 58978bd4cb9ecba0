//! The traffic model: what to send, in which proportions, from which source tuples.
//!
//! A run is a set of *streams* (the flow groups of the report). A stream is one IP family, one
//! protocol, one kind (established flows, new flows, or the flow-opening packets of the
//! warm-up) and one frame size. The measured traffic interleaves the streams by weight
//! (smooth weighted round robin, so a 7:4:1 IMIX is 7 small frames spread among the others,
//! not 7 in a row); each stream walks its own source tuples.
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::Serialize;

/// Bytes of Ethernet FCS that a frame size includes but an mbuf does not hold.
pub const FCS_LEN: usize = 4;
/// Largest frame (including FCS) the generator builds: a 1500-byte MTU plus Ethernet.
pub const MAX_FRAME: usize = 1518;
/// The classic simple IMIX: 7 x 64, 4 x 570, 1 x 1518 bytes (frames including FCS).
pub const IMIX: [(usize, u32); 3] = [(64, 7), (570, 4), (1518, 1)];

/// IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// Transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP: new flows are SYNs, established ones ACKs.
    Tcp,
    /// UDP datagrams.
    Udp,
}

/// What a stream's packets are to the device under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Packets of established flows (TCP ACK), cycling over `--flows` source tuples.
    Est,
    /// The first packet of a brand-new flow (TCP SYN), a fresh source tuple every time.
    New,
    /// Warm-up: one packet per established flow (TCP SYN) so the device tracks it.
    Open,
    /// Readiness probes sent before anything else (fresh tuples, like `New`).
    Probe,
}

impl Kind {
    /// The tag byte carried in UDP payloads (TCP streams are told apart by their SYN flag).
    pub fn tag(self) -> u8 {
        match self {
            Kind::Est => 0,
            Kind::New => 1,
            Kind::Open => 2,
            Kind::Probe => 3,
        }
    }

    /// Whether a TCP packet of this kind is a SYN.
    pub fn syn(self) -> bool {
        !matches!(self, Kind::Est)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        })
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Est => "est",
            Kind::New => "new",
            Kind::Open => "open",
            Kind::Probe => "probe",
        })
    }
}

/// Frame sizes and their weights, e.g. `64`, `imix` or `64:7,570:4,1518:1` (bytes on the wire
/// including the 4-byte FCS, as RFC 2544 counts them; an mbuf holds 4 bytes fewer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizes(pub Vec<(usize, u32)>);

impl FromStr for Sizes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("imix") {
            return Ok(Sizes(IMIX.to_vec()));
        }
        let mut v = Vec::new();
        for part in s.split(',') {
            let (size, w) = match part.split_once(':') {
                Some((a, b)) => (a, b),
                None => (part, "1"),
            };
            let size: usize = size
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: expected a frame size in bytes, e.g. 64"))?;
            let w: u32 = w
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: expected SIZE:WEIGHT, e.g. 570:4"))?;
            if !(64..=MAX_FRAME).contains(&size) {
                return Err(format!(
                    "frame size {size} is outside 64..={MAX_FRAME} (sizes include the FCS)"
                ));
            }
            if w == 0 {
                return Err(format!("{part:?}: weight must be at least 1"));
            }
            v.push((size, w));
        }
        if v.is_empty() {
            return Err("no frame size given".into());
        }
        Ok(Sizes(v))
    }
}

/// A packet rate: `max`, or packets per second with an optional `k`/`M` suffix (`1.5M`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// As fast as the link accepts packets.
    Max,
    /// Packets per second.
    Pps(f64),
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        let (num, mult) = match t.chars().last() {
            Some('k') | Some('K') => (&t[..t.len() - 1], 1e3),
            Some('m') | Some('M') => (&t[..t.len() - 1], 1e6),
            _ => (t, 1.0),
        };
        let v: f64 = num
            .parse()
            .map_err(|_| format!("{s:?}: expected `max` or packets per second, e.g. 500k"))?;
        if !(v * mult).is_finite() || v * mult < 1.0 {
            return Err(format!(
                "{s:?}: the rate must be at least 1 packet per second"
            ));
        }
        Ok(Rate::Pps(v * mult))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Max => f.write_str("max"),
            Rate::Pps(p) => write!(f, "{p:.0} pps"),
        }
    }
}

/// An inclusive port range `A-B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?}: expected a port range such as 1024-65535"))?;
        let a: u16 = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: bad first port"))?;
        let b: u16 = b
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: bad last port"))?;
        if a == 0 || a > b {
            return Err(format!("{s:?}: need 1 <= first <= last"));
        }
        Ok(PortRange(a, b))
    }
}

/// A walk over source tuples: address `base + i / ports`, port `port_min + i % ports`, for
/// `i` in `start .. start + count` (wrapping inside `0..count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSpace {
    /// The low 32 bits of the first source address (an IPv4 address, or the last 32 bits of
    /// an IPv6 one whose upper 96 bits the template holds).
    pub base: u32,
    /// First source port.
    pub port_min: u16,
    /// Ports per address.
    pub ports: u32,
    /// Tuples in the space.
    pub count: u64,
    /// Index of the first tuple used.
    pub start: u64,
}

impl FlowSpace {
    /// The tuple at index `i` of the space: (low 32 bits of the source address, port).
    pub fn tuple(&self, i: u64) -> (u32, u16) {
        let j = i % self.count.max(1);
        let ports = u64::from(self.ports.max(1));
        (
            self.base.wrapping_add((j / ports) as u32),
            self.port_min + (j % ports) as u16,
        )
    }

    /// A cursor at the space's first tuple.
    pub fn cursor(&self) -> FlowCursor {
        let (ip, port) = self.tuple(self.start);
        FlowCursor {
            space: *self,
            idx: self.start % self.count.max(1),
            ip,
            port,
        }
    }
}

/// Walks a [`FlowSpace`] one tuple at a time without dividing.
#[derive(Debug, Clone, Copy)]
pub struct FlowCursor {
    space: FlowSpace,
    idx: u64,
    ip: u32,
    port: u16,
}

impl FlowCursor {
    /// The current tuple, then advances (wrapping at the end of the space).
    #[inline(always)]
    pub fn next_tuple(&mut self) -> (u32, u16) {
        let t = (self.ip, self.port);
        self.idx += 1;
        if self.idx >= self.space.count {
            self.idx = 0;
            self.ip = self.space.base;
            self.port = self.space.port_min;
        } else if u32::from(self.port - self.space.port_min) + 1 >= self.space.ports {
            self.port = self.space.port_min;
            self.ip = self.ip.wrapping_add(1);
        } else {
            self.port += 1;
        }
        t
    }
}

/// One stream: a flow group of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamDef {
    /// IP family.
    pub family: Family,
    /// Protocol.
    pub proto: Proto,
    /// Kind.
    pub kind: Kind,
    /// Frame size on the wire, including the FCS.
    pub frame: usize,
    /// Relative weight among the streams of its phase.
    pub weight: u64,
    /// Source tuples.
    pub flows: FlowSpace,
    /// Send at most this many packets (warm-up: one per flow).
    pub limit: Option<u64>,
}

impl StreamDef {
    /// Bytes in the mbuf (the frame without FCS).
    pub fn data_len(&self) -> usize {
        self.frame - FCS_LEN
    }

    /// The group name, e.g. `v4 tcp est 64B`.
    pub fn name(&self) -> String {
        format!(
            "{} {} {} {}B",
            self.family, self.proto, self.kind, self.frame
        )
    }
}

/// Bytes of the TSC stamp at the start of every payload (the templates write it, the
/// classifier reads it back; the smallest frame must hold it).
pub const STAMP_LEN: usize = 6;

/// Smallest frame (including FCS) that holds the headers plus the 6-byte stamp (and for UDP
/// the 2-byte tag), never below Ethernet's 64.
pub fn min_frame(family: Family, proto: Proto) -> usize {
    let l3 = match family {
        Family::V4 => 20,
        Family::V6 => 40,
    };
    let (l4, payload) = match proto {
        Proto::Tcp => (20, STAMP_LEN),
        Proto::Udp => (8, STAMP_LEN + 2),
    };
    (14 + l3 + l4 + payload + FCS_LEN).max(64)
}

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct TrafficSpec {
    /// Destination VIPs (at most one per family).
    pub vips: Vec<IpAddr>,
    /// Destination port.
    pub dport: u16,
    /// Protocol.
    pub proto: Proto,
    /// Frame sizes and weights.
    pub sizes: Sizes,
    /// Established flows in total (split evenly over the families).
    pub flows: u64,
    /// Share of packets that open brand-new flows, in permille (0..=1000).
    pub new_permille: u32,
    /// Client network for IPv4 sources.
    pub src_net4: IpNet,
    /// Client network for IPv6 sources.
    pub src_net6: IpNet,
    /// Source ports.
    pub src_ports: PortRange,
    /// Where new-flow tuples start (varies between runs so a device's table never sees a
    /// "new" tuple it already tracks).
    pub seed: u64,
}

/// The streams of each phase.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Streams of the measurement.
    pub measure: Vec<StreamDef>,
    /// One stream per family that opens every established flow once (empty without any).
    pub open: Vec<StreamDef>,
    /// One stream per family for readiness probes.
    pub probe: Vec<StreamDef>,
    /// Notes for the report (e.g. a size raised to the family's minimum).
    pub notes: Vec<String>,
}

/// Source address regions of one family: established flows from the bottom half of the
/// client network, new flows and probes from the top half.
fn regions(net: &IpNet, ports: u32) -> Result<(u32, u64, u32, u64), String> {
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    if host_bits < 2 {
        return Err(format!(
            "client network {net} is too small; use a /30 (/126) or larger"
        ));
    }
    let span: u64 = if host_bits >= 32 {
        1 << 32
    } else {
        1u64 << host_bits
    };
    let low = match net.network() {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(a) => {
            if host_bits < 32 {
                (u128::from(a) & 0xffff_ffff) as u32
            } else {
                0
            }
        }
    };
    let half = span / 2;
    // Skip the network address at the bottom; keep the top address (broadcast) unused.
    let est_base = low.wrapping_add(1);
    let est_ips = half - 1;
    let new_base = low.wrapping_add(half as u32);
    let new_ips = half - 1;
    Ok((
        est_base,
        est_ips * u64::from(ports),
        new_base,
        new_ips * u64::from(ports),
    ))
}

impl TrafficSpec {
    /// The families, in VIP order.
    pub fn families(&self) -> Vec<Family> {
        self.vips
            .iter()
            .map(|v| match v {
                IpAddr::V4(_) => Family::V4,
                IpAddr::V6(_) => Family::V6,
            })
            .collect()
    }

    /// Builds the streams of every phase.
    pub fn plan(&self) -> Result<Plan, String> {
        if self.vips.is_empty() {
            return Err("no VIP given (--vip)".into());
        }
        let fams = self.families();
        if fams.len() == 2 && fams[0] == fams[1] || fams.len() > 2 {
            return Err("give at most one VIP per family (--vip 10.0.0.1 --vip fd00::1)".into());
        }
        if self.new_permille > 1000 {
            return Err("the new-flow share is a percentage from 0 to 100".into());
        }
        let ports = u32::from(self.src_ports.1 - self.src_ports.0) + 1;
        let mut plan = Plan {
            measure: Vec::new(),
            open: Vec::new(),
            probe: Vec::new(),
            notes: Vec::new(),
        };
        let est_w = u64::from(1000 - self.new_permille);
        let new_w = u64::from(self.new_permille);
        let nf = fams.len() as u64;
        for (fi, fam) in fams.iter().enumerate() {
            let net = match fam {
                Family::V4 => &self.src_net4,
                Family::V6 => &self.src_net6,
            };
            let (est_base, est_cap, new_base, new_cap) = regions(net, ports)?;
            let flows = self.flows / nf + u64::from((fi as u64) < self.flows % nf);
            if est_w > 0 && flows == 0 {
                return Err("established traffic needs --flows of at least 1 per family".into());
            }
            if flows > est_cap {
                return Err(format!(
                    "{flows} flows do not fit in the lower half of client network {net} with \
                     {ports} ports per address; use a larger network or port range"
                ));
            }
            let est = FlowSpace {
                base: est_base,
                port_min: self.src_ports.0,
                ports,
                count: flows.max(1),
                start: 0,
            };
            let new_count = new_cap.min(1 << 40);
            let new = FlowSpace {
                base: new_base,
                port_min: self.src_ports.0,
                ports,
                count: new_count,
                start: self.seed % new_count,
            };
            let minf = min_frame(*fam, self.proto);
            let fix = |size: usize, notes: &mut Vec<String>| {
                if size < minf {
                    let n = format!(
                        "{fam} {}: {size}-byte frames cannot hold the headers and the stamp; \
                         sending {minf}-byte frames",
                        self.proto
                    );
                    if !notes.contains(&n) {
                        notes.push(n);
                    }
                    minf
                } else {
                    size
                }
            };
            for &(size, w) in &self.sizes.0 {
                let frame = fix(size, &mut plan.notes);
                if est_w > 0 {
                    plan.measure.push(StreamDef {
                        family: *fam,
                        proto: self.proto,
                        kind: Kind::Est,
                        frame,
                        weight: u64::from(w) * est_w,
                        flows: est,
                        limit: None,
                    });
                }
                if new_w > 0 {
                    plan.measure.push(StreamDef {
                        family: *fam,
                        proto: self.proto,
                        kind: Kind::New,
                        frame,
                        weight: u64::from(w) * new_w,
                        flows: new,
                        limit: None,
                    });
                }
            }
            if est_w > 0 {
                plan.open.push(StreamDef {
                    family: *fam,
                    proto: self.proto,
                    kind: Kind::Open,
                    frame: minf,
                    weight: flows,
                    flows: est,
                    limit: Some(flows),
                });
            }
            plan.probe.push(StreamDef {
                family: *fam,
                proto: self.proto,
                kind: Kind::Probe,
                frame: minf,
                weight: 1,
                flows: FlowSpace {
                    start: (self.seed + new_count / 2) % new_count,
                    ..new
                },
                limit: None,
            });
        }
        Ok(plan)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// An interleaving of stream indices in proportion to `weights` (smooth weighted round robin),
/// at most `max_len` long (weights are scaled down, keeping every stream, if they sum to more).
pub fn pattern(weights: &[u64], max_len: usize) -> Vec<u8> {
    assert!(weights.len() <= 255, "at most 255 streams");
    let mut w: Vec<u64> = weights.to_vec();
    let g = w.iter().copied().filter(|x| *x > 0).fold(0, gcd);
    if g == 0 {
        return Vec::new();
    }
    for x in &mut w {
        *x /= g;
    }
    let total: u64 = w.iter().sum();
    if total > max_len as u64 {
        let scale = total as f64 / max_len as f64;
        for x in &mut w {
            if *x > 0 {
                *x = ((*x as f64 / scale).round() as u64).max(1);
            }
        }
    }
    let total: i64 = w.iter().sum::<u64>() as i64;
    let mut cur = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            cur[i] += w[i] as i64;
            if cur[i] > cur[best] {
                best = i;
            }
        }
        cur[best] -= total;
        out.push(best as u8);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TrafficSpec {
        TrafficSpec {
            vips: vec!["10.200.100.1".parse().unwrap()],
            dport: 80,
            proto: Proto::Tcp,
            sizes: "64".parse().unwrap(),
            flows: 1_000_000,
            new_permille: 0,
            src_net4: "10.201.0.0/16".parse().unwrap(),
            src_net6: "fd00:201::/64".parse().unwrap(),
            src_ports: PortRange(1024, 65535),
            seed: 7,
        }
    }

    #[test]
    fn sizes_and_rates_parse() {
        assert_eq!("imix".parse::<Sizes>().unwrap().0, IMIX.to_vec());
        assert_eq!(
            "64:2,1518".parse::<Sizes>().unwrap().0,
            vec![(64, 2), (1518, 1)]
        );
        assert!("63".parse::<Sizes>().is_err());
        assert!("64:0".parse::<Sizes>().is_err());
        assert_eq!("max".parse::<Rate>().unwrap(), Rate::Max);
        assert_eq!("1.5M".parse::<Rate>().unwrap(), Rate::Pps(1.5e6));
        assert_eq!("500k".parse::<Rate>().unwrap(), Rate::Pps(5e5));
        assert!("0".parse::<Rate>().is_err());
        assert_eq!("1-2".parse::<PortRange>().unwrap(), PortRange(1, 2));
        assert!("2-1".parse::<PortRange>().is_err());
    }

    #[test]
    fn pattern_is_proportional_and_interleaved() {
        let p = pattern(&[7, 4, 1], 1000);
        assert_eq!(p.len(), 12);
        assert_eq!(p.iter().filter(|&&i| i == 0).count(), 7);
        assert_eq!(p.iter().filter(|&&i| i == 2).count(), 1);
        // never more than two small frames... of the heavy stream in a row at 7:4:1
        assert!(p.windows(3).all(|w| !(w[0] == 0 && w[1] == 0 && w[2] == 0)));
        let p = pattern(&[999, 1], 100);
        assert!(p.contains(&1), "every stream keeps a slot after scaling");
        assert!(pattern(&[0, 0], 10).is_empty());
    }

    #[test]
    fn cursor_walks_the_space_like_tuple() {
        let s = FlowSpace {
            base: 100,
            port_min: 10,
            ports: 3,
            count: 7,
            start: 5,
        };
        let mut c = s.cursor();
        for i in 5..5 + 20 {
            assert_eq!(c.next_tuple(), s.tuple(i), "index {i}");
        }
    }

    #[test]
    fn plan_splits_flows_and_phases() {
        let mut t = spec();
        t.vips.push("fd00:200::100".parse().unwrap());
        t.sizes = "imix".parse().unwrap();
        t.new_permille = 250;
        let p = t.plan().unwrap();
        assert_eq!(p.measure.len(), 2 * 3 * 2);
        assert_eq!(p.open.len(), 2);
        assert_eq!(p.open[0].limit, Some(500_000));
        assert_eq!(p.probe.len(), 2);
        // IPv6 TCP cannot be 64 bytes: raised, with a note.
        assert!(p
            .measure
            .iter()
            .all(|s| s.frame >= min_frame(s.family, s.proto)));
        assert_eq!(p.notes.len(), 1);
        // established and new tuples never overlap
        let est = p.measure[0].flows;
        let new = p.measure[1].flows;
        assert_eq!(p.measure[1].kind, Kind::New);
        let last_est = est.tuple(est.count - 1).0;
        assert!(last_est < new.base);
        // weights: est 750 x 7 vs new 250 x 7
        assert_eq!(p.measure[0].weight, 7 * 750);
        assert_eq!(p.measure[1].weight, 7 * 250);
    }

    #[test]
    fn plan_rejects_what_cannot_work() {
        let mut t = spec();
        t.src_net4 = "10.201.0.0/30".parse().unwrap();
        assert!(t.plan().is_err(), "1M flows in a /30");
        let mut t = spec();
        t.vips.push("10.1.1.1".parse().unwrap());
        assert!(t.plan().is_err(), "two IPv4 VIPs");
        let mut t = spec();
        t.new_permille = 1000;
        t.flows = 0;
        let p = t.plan().unwrap();
        assert!(p.open.is_empty(), "SYN-only needs no warm-up");
        assert_eq!(p.measure.len(), 1);
        assert_eq!(min_frame(Family::V4, Proto::Tcp), 64);
        assert_eq!(min_frame(Family::V6, Proto::Tcp), 84);
    }
}
