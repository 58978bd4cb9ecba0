//! `sluice-pktgen`: a DPDK traffic generator for load balancers (see the crate docs).
#![forbid(unsafe_code)]

use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use clap::{Args, Parser};
use ipnet::IpNet;
use sluice_bench::engine::{PortOptions, Scenario, Session};
use sluice_bench::spec::{PortRange, Proto, Rate, Sizes, TrafficSpec};

/// Sends N flows of TCP or UDP toward a load balancer's VIPs over a DPDK port, receives what
/// comes back, and reports throughput, loss per flow group and latency percentiles.
///
/// Against sluiced on a memif link (sluiced is the memif server; sluice-pktgen answers ARP for
/// the backends, so NAT-forwarded packets come back to it):
///
///   sluice-pktgen --device net_memif0,role=client,socket=/run/sluice-bench/memif.sock
///   --vip 10.200.100.1 --port 80 --flows 1000000 --size 64 --duration 10
///   --answer 10.200.1.0/24
///
/// With --serve it keeps the port open and runs one scenario per line of standard input
/// (the scenario options below, e.g. `--vip 10.200.100.1 --size imix --label imix`), writing
/// one JSON report per line to standard output, until end of input.
#[derive(Debug, Parser)]
#[command(name = "sluice-pktgen", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    port: PortArgs,
    #[command(flatten)]
    scenario: ScenarioArgs,
    /// Run scenarios read from standard input, one per line, over one connection.
    #[arg(long)]
    serve: bool,
    /// After the last scenario, wait up to this many seconds (not polling) for the peer to
    /// bring the link down before closing the port. A memif peer that is still polling when
    /// the link drops may crash (DPDK 22.11), so stop the device under test first.
    #[arg(long, default_value_t = 0.0)]
    linger: f64,
    /// Print the report as JSON on stdout (progress and errors stay on stderr).
    #[arg(long)]
    json: bool,
}

/// Options of the port, fixed for the process.
#[derive(Debug, Args)]
struct PortArgs {
    /// DPDK device: a virtual device string (net_memif0,role=client,socket=PATH;
    /// net_af_xdp0,iface=eth1; net_af_packet0,iface=veth0) or a PCI address.
    #[arg(long)]
    device: String,
    /// Core of the poll loop (EAL main lcore).
    #[arg(long, default_value_t = 0)]
    core: usize,
    /// EAL --file-prefix (two DPDK processes on one host need different ones).
    #[arg(long, default_value = "sluice-pktgen")]
    file_prefix: String,
    /// Extra EAL argument (repeatable), e.g. --eal=--log-level=lib.eal:debug.
    #[arg(long = "eal", allow_hyphen_values = true)]
    eal_args: Vec<String>,
    /// Seconds to wait for the link and for ARP/NDP answers.
    #[arg(long, default_value_t = 10.0)]
    link_timeout: f64,
    /// No progress line.
    #[arg(long, short)]
    quiet: bool,
}

/// Options of one scenario (also the syntax of a --serve input line).
#[derive(Debug, Args)]
struct ScenarioArgs {
    /// Destination VIP; give one IPv4 and one IPv6 VIP for dual-stack traffic (split evenly).
    #[arg(long = "vip", required_unless_present = "serve")]
    vips: Vec<IpAddr>,
    /// Destination port.
    #[arg(long, default_value_t = 80)]
    port: u16,
    /// Protocol.
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    proto: Proto,
    /// Frame size in bytes including the 4-byte FCS (64..=1518), `imix` (64:7,570:4,1518:1)
    /// or SIZE:WEIGHT,... Sizes below a family's minimum are raised (IPv6 TCP: 84).
    #[arg(long, default_value = "64")]
    size: Sizes,
    /// Established flows (source tuples cycled over), in total.
    #[arg(long, default_value_t = 1024)]
    flows: u64,
    /// Percentage of packets that open a brand-new flow (TCP SYN from a never-used source
    /// tuple); 100 sends SYNs only.
    #[arg(long, default_value_t = 0.0)]
    new_flows: f64,
    /// Packets per second (`500k`, `1.2M`) or `max`.
    #[arg(long, default_value = "max")]
    rate: Rate,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop the measurement after this many packets instead.
    #[arg(long)]
    count: Option<u64>,
    /// Skip the warm-up that opens every established flow once (SYN or first datagram)
    /// before measuring.
    #[arg(long)]
    no_warmup: bool,
    /// Destination MAC (the device under test); without it the VIPs are resolved by ARP/NDP.
    #[arg(long, value_parser = parse_mac)]
    dst_mac: Option<[u8; 6]>,
    /// Answer ARP and neighbour solicitations for this network (repeatable): the backends the
    /// generator stands in for, so forwarded packets come back to it.
    #[arg(long = "answer")]
    answer: Vec<IpNet>,
    /// Client network of IPv4 sources (established flows from its lower half, new flows from
    /// its upper half).
    #[arg(long, default_value = "10.201.0.0/16")]
    src_net: IpNet,
    /// Client network of IPv6 sources.
    #[arg(long, default_value = "fd00:201::/64")]
    src_net6: IpNet,
    /// Source ports.
    #[arg(long, default_value = "1024-65535")]
    src_ports: PortRange,
    /// Where new-flow tuples start (default: from the clock, so repeated runs use fresh ones).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds to wait for the device to forward readiness probes (0: do not probe).
    #[arg(long, default_value_t = 15.0)]
    ready_timeout: f64,
    /// Milliseconds of receiving after each phase, to count packets still in flight.
    #[arg(long, default_value_t = 200)]
    drain_ms: u64,
    /// Template mbufs per flow group.
    #[arg(long, default_value_t = 4096)]
    slots: usize,
    /// A name for this run in the report.
    #[arg(long, default_value = "")]
    label: String,
}

/// A --serve input line.
#[derive(Debug, Parser)]
#[command(name = "scenario", no_binary_name = true)]
struct Line {
    #[command(flatten)]
    scenario: ScenarioArgs,
    /// (Not accepted on a line; present so `--vip` is required here.)
    #[arg(long, hide = true)]
    serve: bool,
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{s:?}: expected a MAC such as 02:00:00:00:00:01"));
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?}: bad MAC byte {p:?}"))?;
    }
    Ok(m)
}

fn secs(v: f64, what: &str) -> Result<Duration> {
    if !v.is_finite() || v < 0.0 {
        bail!("{what} must be a non-negative number of seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

impl ScenarioArgs {
    fn scenario(self) -> Result<Scenario> {
        if !(0.0..=100.0).contains(&self.new_flows) {
            bail!("--new-flows is a percentage from 0 to 100");
        }
        if !matches!(self.src_net, IpNet::V4(_)) || !matches!(self.src_net6, IpNet::V6(_)) {
            bail!("--src-net must be an IPv4 network and --src-net6 an IPv6 one");
        }
        let seed = self.seed.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        Ok(Scenario {
            traffic: TrafficSpec {
                vips: self.vips,
                dport: self.port,
                proto: self.proto,
                sizes: self.size,
                flows: self.flows,
                new_permille: (self.new_flows * 10.0).round() as u32,
                src_net4: self.src_net,
                src_net6: self.src_net6,
                src_ports: self.src_ports,
                seed,
            },
            rate: self.rate,
            duration: secs(self.duration, "--duration")?,
            count: self.count,
            warmup: !self.no_warmup,
            dst_mac: self.dst_mac,
            answer: self.answer,
            ready_timeout: secs(self.ready_timeout, "--ready-timeout")?,
            drain: Duration::from_millis(self.drain_ms),
            slots: self.slots,
            label: self.label,
        })
    }
}

fn main() {
    let cli = Cli::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("sluice-pktgen: cannot handle signal {sig}: {e}");
        }
    }
    if let Err(e) = run(cli, stop) {
        eprintln!("sluice-pktgen: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli, stop: Arc<AtomicBool>) -> Result<()> {
    let port = PortOptions {
        device: cli.port.device,
        core: cli.port.core,
        file_prefix: cli.port.file_prefix,
        eal_args: cli.port.eal_args,
        link_timeout: secs(cli.port.link_timeout, "--link-timeout")?,
        progress: !cli.port.quiet,
    };
    let linger = secs(cli.linger, "--linger")?;
    let first = if cli.serve {
        None
    } else {
        Some(cli.scenario.scenario()?)
    };
    let mut session = Session::open(&port, stop.clone())?;
    let result = match first {
        Some(sc) => session.run(&sc).map(|r| {
            if cli.json {
                println!("{}", r.json());
            } else {
                print!("{}", r.human());
            }
            let _ = std::io::stdout().flush();
        }),
        None => serve(&mut session, &stop),
    };
    session.close(linger);
    result
}

/// One scenario per input line, one JSON report (or `{"error": ...}`) per output line.
fn serve(session: &mut Session, stop: &AtomicBool) -> Result<()> {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = line?;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if t == "quit" || stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let report = Line::try_parse_from(t.split_whitespace())
            .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))
            .and_then(|l| l.scenario.scenario())
            .and_then(|sc| session.run(&sc));
        match report {
            Ok(r) => writeln!(out, "{}", serde_json::to_string(&r)?)?,
            Err(e) => writeln!(out, "{}", serde_json::json!({ "error": format!("{e:#}") }))?,
        }
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn cli_parses() {
        Cli::try_parse_from([
            "sluice-pktgen",
            "--device",
            "net_memif0",
            "--vip",
            "10.0.0.1",
            "--vip",
            "fd00::1",
            "--size",
            "imix",
            "--rate",
            "1.5M",
            "--dst-mac",
            "02:00:00:00:00:01",
            "--eal=--log-level=7",
        ])
        .unwrap();
        assert!(
            Cli::try_parse_from(["sluice-pktgen", "--device", "x"]).is_err(),
            "needs --vip"
        );
        Cli::try_parse_from(["sluice-pktgen", "--device", "x", "--serve"]).unwrap();
        let l = Line::try_parse_from("--vip 10.0.0.1 --size imix --label a".split_whitespace())
            .unwrap();
        assert_eq!(l.scenario.label, "a");
        assert!(Line::try_parse_from("--device x".split_whitespace()).is_err());
        assert!(parse_mac("02:00:00:00:00").is_err());
        assert_eq!(Rate::from_str("max").unwrap(), Rate::Max);
    }
}
