//! `sluicectl`: the operator's CLI, a thin client of `sluiced`'s admin socket.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde::de::DeserializeOwned;
use sluice_controlplane::admin::client::tables::{self, EXIT_NOT_FOUND, EXIT_OK, EXIT_UNREACHABLE};
use sluice_controlplane::admin::{api, client};

/// Writes to stdout; see [`emit`].
macro_rules! out {
    ($($t:tt)*) => { emit(format_args!($($t)*)) };
}

/// Writes a line to stdout; see [`emit`].
macro_rules! outln {
    () => { emit(format_args!("\n")) };
    ($($t:tt)*) => { emit(format_args!("{}\n", format_args!($($t)*))) };
}

/// Writes to stdout. A reader that went away (`sluicectl config | head -1`) ends the program
/// quietly with exit code 0, as the reader asked for no more; any other write error is
/// reported and exits 1. `print!` would panic on either.
fn emit(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(EXIT_OK);
        }
        eprintln!("sluicectl: cannot write to standard output: {e}");
        std::process::exit(tables::EXIT_FAILED);
    }
}

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  sluiced answered with an error (bad request, conflict, internal error)
  2  bad command line
  3  sluiced cannot be reached (not running, wrong --socket) or refused this user
  4  not found: no such Service or backend, or `conntrack lookup` found no flow";

/// Inspect and operate a running sluiced over its admin socket.
#[derive(Debug, Parser)]
#[command(name = "sluicectl", version, about, after_help = EXIT_CODES)]
struct Cli {
    /// The admin socket of sluiced ([admin] socket in its configuration).
    #[arg(
        long,
        global = true,
        env = "SLUICE_SOCKET",
        default_value = "/run/sluice/admin.sock"
    )]
    socket: PathBuf,
    /// Output format: human tables, or the API's JSON.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The daemon at a glance: snapshot, services, workers, drops, problems.
    Status,
    /// Served Services: VIPs, ports, method, policy, backends by state, traffic.
    Services,
    /// One Service with its frontends and backends (state, health, Maglev share, traffic).
    Service {
        /// NAMESPACE/NAME.
        name: String,
    },
    /// Every backend of every frontend.
    Backends {
        /// Only this Service (NAMESPACE/NAME).
        #[arg(long)]
        service: Option<String>,
    },
    /// Stop sending new flows to a backend address (in every Service); open flows stay.
    Drain {
        /// The backend's address.
        addr: IpAddr,
    },
    /// Undo `drain`.
    Undrain {
        /// The backend's address.
        addr: IpAddr,
    },
    /// Set a backend address's Maglev weight (0..=10000; `default` removes the override).
    Weight {
        /// The backend's address.
        addr: IpAddr,
        /// The weight, or `default`.
        weight: String,
    },
    /// Connection-table queries.
    Conntrack {
        #[command(subcommand)]
        cmd: ConntrackCmd,
    },
    /// Drop counters by reason (only reasons with drops, unless --all).
    Drops {
        /// Show every reason.
        #[arg(long)]
        all: bool,
    },
    /// Workers: core, queues, packets/s, busy ratio, conntrack fill.
    Workers,
    /// DPDK port counters (rx/tx, missed, errors).
    Ports,
    /// Health-check targets and their results.
    Health,
    /// Learned neighbours and next hops being resolved.
    Neighbours,
    /// The configuration file sluiced runs with (JSON).
    Config,
    /// sluiced's version.
    Version,
    /// Re-read the manifest directory now.
    Reload,
    /// Routed mode: BGP peers, their state, BIRD, and the announced prefixes.
    Bgp,
    /// L2 mode: the other hosts and their last heartbeat, each VIP's owner.
    L2,
    /// Flow sync: the peers, records sent and received, lag, drops by reason.
    Sync,
    /// The whole host: `drain` withdraws every BGP announcement (traffic moves to the other
    /// hosts; this one keeps forwarding), `undrain` announces again.
    Host {
        #[command(subcommand)]
        cmd: HostCmd,
    },
    /// Reset the counters the API reports (Prometheus metrics are not reset).
    ResetCounters,
    /// Capture packets on a DPDK port as pcapng, tcpdump-style, each with what Sluice did
    /// with it as a comment (`sluicectl capture -w - 'tcp port 80' | tshark -r -`).
    Capture {
        /// Port name from the configuration (default: the first port).
        #[arg(short = 'i', long)]
        port: Option<String>,
        /// Packets received (`in`), sent (`out`) or both (`inout`), as tcpdump's -Q.
        #[arg(short = 'Q', long, default_value = "inout")]
        direction: String,
        /// Filter expression in tcpdump's syntax (or give it as the last arguments).
        #[arg(short = 'f', long)]
        filter: Option<String>,
        /// Stop after this many packets.
        #[arg(short = 'c', long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        duration: Option<f64>,
        /// Bytes kept of each packet (default 262144: all of it).
        #[arg(short = 's', long)]
        snaplen: Option<u32>,
        /// Write the pcapng to this file; `-` for standard output (a pipe, not a terminal).
        #[arg(short = 'w', long)]
        write: String,
        /// The filter expression, as tcpdump takes it.
        #[arg(trailing_var_arg = true)]
        expression: Vec<String>,
    },
    /// One line per packet of a client, with what Sluice did with it (frontend, flow,
    /// backend and why, rewrite or drop reason).
    Trace {
        /// Client address, or address:port.
        #[arg(long)]
        client: String,
        /// Only packets to (and from) this VIP (address or address:port).
        #[arg(long)]
        vip: Option<String>,
        /// Port name from the configuration (default: the first port).
        #[arg(short = 'i', long)]
        port: Option<String>,
        /// Stop after this many packets.
        #[arg(short = 'c', long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        duration: Option<f64>,
    },
    /// Refreshing view of rates: workers and Services.
    Watch {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many refreshes (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum HostCmd {
    /// Withdraw every BGP announcement; keep forwarding (maintenance).
    Drain,
    /// Announce again.
    Undrain,
}

#[derive(Debug, Subcommand)]
enum ConntrackCmd {
    /// Flows of a client: which backend, state, idle time.
    Lookup {
        /// Client address, or address:port (`10.0.0.7`, `10.0.0.7:40000`, `[fd00::7]:40000`).
        client: String,
        /// Only flows to this VIP (address or address:port).
        #[arg(long)]
        vip: Option<String>,
        /// Only this protocol (tcp, udp or a number).
        #[arg(long)]
        protocol: Option<String>,
        /// At most this many flows per worker.
        #[arg(long, default_value_t = 100)]
        max: usize,
    },
}

/// An address with an optional port.
fn addr_port(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    s.trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
        .map(|a| (a, None))
        .map_err(|_| format!("{s:?} is not an address or address:port"))
}

/// Escapes a query value.
fn q(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What went wrong, and the exit code.
struct Failure {
    code: i32,
    message: String,
    /// The daemon's JSON error body, printed as is with `-o json`.
    body: Option<String>,
}

struct Ctl {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Ctl {
    /// A streamed request: each piece of the answer to `sink`.
    fn stream(
        &self,
        target: &str,
        body: String,
        sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), Failure> {
        let r = self
            .rt
            .block_on(client::stream(&self.socket, "POST", target, body, sink))
            .map_err(|e| Failure {
                code: EXIT_UNREACHABLE,
                message: e.to_string(),
                body: None,
            })?;
        match r {
            client::Streamed::Done => Ok(()),
            client::Streamed::Refused(a) => {
                let message = serde_json::from_str::<api::ErrorBody>(&a.body)
                    .map(|e| e.error)
                    .unwrap_or_else(|_| format!("HTTP {}: {}", a.status, a.body.trim()));
                Err(Failure {
                    code: tables::exit_code(a.status),
                    message,
                    body: Some(a.body),
                })
            }
        }
    }

    fn call(&self, method: &str, target: &str, body: Option<String>) -> Result<String, Failure> {
        let a = self
            .rt
            .block_on(client::request(&self.socket, method, target, body))
            .map_err(|e| Failure {
                code: EXIT_UNREACHABLE,
                message: e.to_string(),
                body: None,
            })?;
        if (200..300).contains(&a.status) {
            return Ok(a.body);
        }
        let message = serde_json::from_str::<api::ErrorBody>(&a.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| format!("HTTP {}: {}", a.status, a.body.trim()));
        Err(Failure {
            code: tables::exit_code(a.status),
            message,
            body: Some(a.body),
        })
    }

    fn get<T: DeserializeOwned>(&self, target: &str) -> Result<(T, String), Failure> {
        let body = self.call("GET", target, None)?;
        parse(&body).map(|v| (v, body))
    }
}

fn parse<T: DeserializeOwned>(body: &str) -> Result<T, Failure> {
    serde_json::from_str(body).map_err(|e| Failure {
        code: tables::EXIT_FAILED,
        message: format!(
            "cannot read sluiced's answer ({e}); is sluicectl the same version as sluiced?"
        ),
        body: None,
    })
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluicectl: cannot start the async runtime: {e}");
            std::process::exit(tables::EXIT_FAILED);
        }
    };
    let ctl = Ctl {
        socket: cli.socket.clone(),
        rt,
    };
    let json = cli.output == Output::Json;
    let code = match run(&ctl, &cli.cmd, json) {
        Ok(code) => code,
        Err(f) => {
            if json {
                // A closed stdout must not hide the failure's exit code.
                let mut stdout = std::io::stdout().lock();
                let _ = match f.body {
                    Some(b) => writeln!(stdout, "{}", b.trim_end()),
                    None => writeln!(
                        stdout,
                        "{}",
                        serde_json::json!({ "status": 0, "error": f.message })
                    ),
                };
            }
            eprintln!("sluicectl: {}", f.message);
            f.code
        }
    };
    std::process::exit(code);
}

/// Prints the JSON body, or the rendered table.
fn show<T: DeserializeOwned>(
    ctl: &Ctl,
    target: &str,
    json: bool,
    render: impl Fn(&T) -> String,
) -> Result<i32, Failure> {
    let (v, body) = ctl.get::<T>(target)?;
    if json {
        outln!("{}", body.trim_end());
    } else {
        out!("{}", render(&v));
    }
    Ok(EXIT_OK)
}

/// Counts what a pcapng stream holds as it passes: packets, and the dropped copies of its
/// statistics block.
#[derive(Default)]
struct PcapngTally {
    pending: Vec<u8>,
    packets: u64,
    dropped: Option<u64>,
}

impl PcapngTally {
    fn feed(&mut self, data: &[u8]) {
        use sluice_controlplane::capture::pcapng;
        self.pending.extend_from_slice(data);
        let (blocks, used) = pcapng::blocks_prefix(&self.pending);
        for b in blocks {
            match b.ty {
                pcapng::ENHANCED_PACKET => self.packets += 1,
                pcapng::INTERFACE_STATISTICS => self.dropped = pcapng::read_dropped(&b.body),
                _ => {}
            }
        }
        self.pending.drain(..used);
    }
}

fn usage(message: String) -> Failure {
    Failure {
        code: tables::EXIT_USAGE,
        message,
        body: None,
    }
}

#[allow(clippy::too_many_arguments)]
fn capture(
    ctl: &Ctl,
    port: &Option<String>,
    direction: &str,
    filter: &Option<String>,
    expression: &[String],
    count: Option<u64>,
    duration: Option<f64>,
    snaplen: Option<u32>,
    write: &str,
) -> Result<i32, Failure> {
    let filter = match (filter, expression.is_empty()) {
        (Some(_), false) => {
            return Err(usage(
                "give the filter either with -f or as the last arguments, not both".into(),
            ))
        }
        (Some(f), true) => f.clone(),
        (None, _) => expression.join(" "),
    };
    let mut out: Box<dyn Write> = if write == "-" {
        if std::io::stdout().is_terminal() {
            return Err(usage(
                "pcapng is binary: write it to a file (-w FILE) or a pipe (-w - | tshark -r -)"
                    .into(),
            ));
        }
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(write).map_err(|e| Failure {
            code: tables::EXIT_FAILED,
            message: format!("cannot create {write}: {e}"),
            body: None,
        })?)
    };
    let req = sluice_controlplane::admin::CaptureRequest {
        port: port.clone(),
        direction: Some(direction.to_owned()),
        filter: Some(filter),
        count,
        duration_seconds: duration,
        snaplen,
    };
    let body = serde_json::to_string(&req).unwrap_or_default();
    let mut tally = PcapngTally::default();
    let mut closed = false;
    let r = ctl.stream("/v1/capture", body, |d| {
        tally.feed(d);
        match out.write_all(d).and_then(|()| out.flush()) {
            // The reader went away (`| head -c`): it asked for no more.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                closed = true;
                Err(e)
            }
            r => r,
        }
    });
    if closed {
        return Ok(EXIT_OK);
    }
    r?;
    eprintln!(
        "sluicectl: {} packets captured, {} copies dropped (the reader did not keep up)",
        tally.packets,
        tally.dropped.unwrap_or(0)
    );
    Ok(EXIT_OK)
}

fn trace(
    ctl: &Ctl,
    client: &str,
    vip: &Option<String>,
    port: &Option<String>,
    count: Option<u64>,
    duration: Option<f64>,
    json: bool,
) -> Result<i32, Failure> {
    let (client, client_port) = addr_port(client).map_err(usage)?;
    let (vip, vip_port) = match vip {
        Some(v) => {
            let (a, p) = addr_port(v).map_err(usage)?;
            (Some(a), p)
        }
        None => (None, None),
    };
    let req = sluice_controlplane::admin::TraceRequest {
        client,
        client_port,
        vip,
        vip_port,
        port: port.clone(),
        count,
        duration_seconds: duration,
    };
    let body = serde_json::to_string(&req).unwrap_or_default();
    let mut pending = Vec::new();
    ctl.stream("/v1/trace", body, |d| {
        pending.extend_from_slice(d);
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line);
            if json {
                out!("{text}");
                continue;
            }
            match serde_json::from_str::<sluice_controlplane::capture::TraceLine>(&text) {
                Ok(l) if l.dir == "end" => {
                    eprintln!("sluicectl: trace ended ({}): {}", l.packet, l.verdict)
                }
                Ok(l) => outln!(
                    "{} {} w{} {}  {}",
                    time_of_day(l.time),
                    l.dir,
                    l.worker,
                    l.packet,
                    l.verdict
                ),
                Err(_) => out!("{text}"),
            }
        }
        Ok(())
    })?;
    Ok(EXIT_OK)
}

/// `HH:MM:SS.micros` (UTC) of a Unix time.
fn time_of_day(t: f64) -> String {
    let us = (t * 1e6) as u64;
    let s = us / 1_000_000;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        s / 3600 % 24,
        s / 60 % 60,
        s % 60,
        us % 1_000_000
    )
}

fn run(ctl: &Ctl, cmd: &Cmd, json: bool) -> Result<i32, Failure> {
    match cmd {
        Cmd::Capture {
            port,
            direction,
            filter,
            count,
            duration,
            snaplen,
            write,
            expression,
        } => capture(
            ctl, port, direction, filter, expression, *count, *duration, *snaplen, write,
        ),
        Cmd::Trace {
            client,
            vip,
            port,
            count,
            duration,
        } => trace(ctl, client, vip, port, *count, *duration, json),
        Cmd::Status => show(ctl, "/v1/status", json, tables::status),
        Cmd::Services => show(ctl, "/v1/services", json, |v: &Vec<api::ServiceSummary>| {
            tables::services(v)
        }),
        Cmd::Service { name } => {
            let (ns, n) = name.split_once('/').unwrap_or(("default", name.as_str()));
            show(
                ctl,
                &format!("/v1/services/{}/{}", q(ns), q(n)),
                json,
                tables::service,
            )
        }
        Cmd::Backends { service } => {
            let target = match service {
                Some(s) => format!("/v1/backends?service={}", q(s)),
                None => "/v1/backends".to_owned(),
            };
            show(ctl, &target, json, |v: &Vec<api::BackendRow>| {
                tables::backends(v)
            })
        }
        Cmd::Drain { addr } => write(ctl, json, "drained", *addr, "drain", None),
        Cmd::Undrain { addr } => write(ctl, json, "undrained", *addr, "undrain", None),
        Cmd::Weight { addr, weight } => {
            let w: Option<u32> = if weight == "default" {
                None
            } else {
                Some(weight.parse().map_err(|_| Failure {
                    code: tables::EXIT_USAGE,
                    message: format!("weight {weight:?}: use a number 0..=10000 or `default`"),
                    body: None,
                })?)
            };
            let body = serde_json::to_string(&api::WeightRequest { weight: w }).ok();
            write(ctl, json, "weighted", *addr, "weight", body)
        }
        Cmd::Conntrack {
            cmd:
                ConntrackCmd::Lookup {
                    client,
                    vip,
                    protocol,
                    max,
                },
        } => {
            let usage = |message: String| Failure {
                code: tables::EXIT_USAGE,
                message,
                body: None,
            };
            let (ip, port) = addr_port(client).map_err(usage)?;
            let mut target = format!("/v1/conntrack?client={}&max={max}", q(&ip.to_string()));
            if let Some(p) = port {
                target.push_str(&format!("&client_port={p}"));
            }
            if let Some(v) = vip {
                let (vip, vport) = addr_port(v).map_err(usage)?;
                target.push_str(&format!("&vip={}", q(&vip.to_string())));
                if let Some(p) = vport {
                    target.push_str(&format!("&vip_port={p}"));
                }
            }
            if let Some(p) = protocol {
                target.push_str(&format!("&protocol={}", q(p)));
            }
            let (v, body) = ctl.get::<api::Conntrack>(&target)?;
            if json {
                outln!("{}", body.trim_end());
            } else {
                out!("{}", tables::conntrack(&v));
            }
            Ok(if v.flows.is_empty() {
                EXIT_NOT_FOUND
            } else {
                EXIT_OK
            })
        }
        Cmd::Drops { all } => show(ctl, "/v1/drops", json, |d| tables::drops(d, *all)),
        Cmd::Workers => show(ctl, "/v1/workers", json, |v: &Vec<api::WorkerRow>| {
            tables::workers(v)
        }),
        Cmd::Ports => show(ctl, "/v1/ports", json, |v: &Vec<api::PortRow>| {
            tables::ports(v)
        }),
        Cmd::Health => show(ctl, "/v1/health", json, |v: &Vec<api::HealthRow>| {
            tables::health(v)
        }),
        Cmd::Neighbours => show(ctl, "/v1/neighbours", json, tables::neighbours),
        Cmd::Config => {
            // The configuration is JSON either way.
            let body = ctl.call("GET", "/v1/config", None)?;
            outln!("{}", body.trim_end());
            Ok(EXIT_OK)
        }
        Cmd::Version => show(ctl, "/v1/version", json, |v: &api::Version| {
            format!(
                "sluiced {} (API {}), sluicectl {}\n",
                v.version,
                v.api,
                env!("CARGO_PKG_VERSION")
            )
        }),
        Cmd::Reload => {
            let body = ctl.call("POST", "/v1/reload", None)?;
            let r: api::Reloaded = parse(&body)?;
            if json {
                outln!("{}", body.trim_end());
            } else {
                outln!(
                    "reloaded {}: {} service(s), snapshot generation {}",
                    r.dir,
                    r.services,
                    r.generation
                );
                for w in &r.warnings {
                    outln!("  warning: {w}");
                }
            }
            Ok(EXIT_OK)
        }
        Cmd::Bgp => show(ctl, "/v1/bgp", json, tables::bgp),
        Cmd::L2 => show(ctl, "/v1/l2", json, tables::l2),
        Cmd::Sync => show(ctl, "/v1/sync", json, tables::sync),
        Cmd::Host { cmd } => {
            let op = match cmd {
                HostCmd::Drain => "drain",
                HostCmd::Undrain => "undrain",
            };
            let body = ctl.call("POST", &format!("/v1/host/{op}"), None)?;
            let b: api::Bgp = parse(&body)?;
            if json {
                outln!("{}", body.trim_end());
            } else {
                outln!("host {op}ed: {} prefix(es) announced", b.announced.len());
            }
            Ok(EXIT_OK)
        }
        Cmd::ResetCounters => {
            let body = ctl.call("POST", "/v1/counters/reset", None)?;
            if json {
                outln!("{}", body.trim_end());
            } else {
                outln!("counters reset (the API counts from now; /metrics is not reset)");
            }
            Ok(EXIT_OK)
        }
        Cmd::Watch { interval, count } => watch(ctl, json, *interval, *count),
    }
}

fn write(
    ctl: &Ctl,
    json: bool,
    verb: &str,
    addr: IpAddr,
    op: &str,
    body: Option<String>,
) -> Result<i32, Failure> {
    let target = format!("/v1/backends/{}/{op}", q(&addr.to_string()));
    let body = ctl.call("POST", &target, body)?;
    let c: api::BackendChange = parse(&body)?;
    if json {
        outln!("{}", body.trim_end());
    } else {
        out!("{}", tables::change(verb, &c));
    }
    Ok(EXIT_OK)
}

/// One refresh of `watch`: rates per worker and per Service (from counter deltas).
fn watch(ctl: &Ctl, json: bool, interval: f64, count: Option<u64>) -> Result<i32, Failure> {
    let interval = Duration::from_secs_f64(interval.max(0.1));
    let tty = std::io::stdout().is_terminal() && !json;
    let mut prev: Option<(std::time::Instant, Vec<api::ServiceSummary>)> = None;
    let mut n = 0u64;
    loop {
        let (workers, _) = ctl.get::<Vec<api::WorkerRow>>("/v1/workers")?;
        let (services, _) = ctl.get::<Vec<api::ServiceSummary>>("/v1/services")?;
        let (status, _) = ctl.get::<api::Status>("/v1/status")?;
        let now = std::time::Instant::now();
        let rates: Vec<(String, f64, f64, f64)> = services
            .iter()
            .map(|s| {
                let before = prev
                    .as_ref()
                    .and_then(|(t, p)| p.iter().find(|x| x.service == s.service).map(|x| (*t, x)));
                match before {
                    Some((t, b)) => {
                        let dt = now.duration_since(t).as_secs_f64().max(1e-3);
                        let d = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
                        (
                            s.service.clone(),
                            d(s.traffic.packets, b.traffic.packets),
                            d(s.traffic.bytes, b.traffic.bytes) * 8.0,
                            d(s.traffic.new_flows, b.traffic.new_flows),
                        )
                    }
                    None => (s.service.clone(), 0.0, 0.0, 0.0),
                }
            })
            .collect();
        if json {
            let line = serde_json::json!({
                "time_unix": sluice_controlplane::admin::unix(std::time::SystemTime::now()),
                "generation": status.generation,
                "drops": status.drops,
                "workers": workers.iter().map(|w| serde_json::json!({
                    "worker": w.worker, "rx_pps": w.rx_pps, "tx_pps": w.tx_pps,
                    "busy_ratio": w.busy_ratio, "conntrack_fill": w.conntrack.fill,
                })).collect::<Vec<_>>(),
                "services": rates.iter().map(|(s, p, b, f)| serde_json::json!({
                    "service": s, "pps": p, "bps": b, "new_flows_per_s": f,
                })).collect::<Vec<_>>(),
            });
            outln!("{line}");
        } else {
            if tty {
                out!("\x1b[H\x1b[2J");
            }
            outln!(
                "sluiced {}  generation {}  services {}  backends a/d/down {}/{}/{}  drops {}  (every {:.1}s)",
                status.version,
                status.generation,
                status.services,
                status.backends.active,
                status.backends.draining,
                status.backends.down,
                status.drops,
                interval.as_secs_f64()
            );
            outln!();
            out!("{}", tables::workers(&workers));
            outln!();
            let rows: Vec<Vec<String>> = rates
                .iter()
                .map(|(s, p, b, f)| {
                    vec![
                        s.clone(),
                        tables::si(*p),
                        format!("{}b/s", tables::si(*b)),
                        tables::si(*f),
                    ]
                })
                .collect();
            out!(
                "{}",
                tables::table(&["SERVICE", "PACKETS/S", "BITS/S", "NEW-FLOWS/S"], &rows)
            );
            if !tty {
                outln!();
            }
        }
        prev = Some((now, services));
        n += 1;
        if count.is_some_and(|c| n >= c) {
            return Ok(EXIT_OK);
        }
        std::thread::sleep(interval);
    }
}
