//! Words for what the pipeline did with a captured packet: the pcapng comment and the
//! `sluicectl trace` line.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use sluice_dataplane::capture::{Explain, Rewrite, Why};
use sluice_dataplane::conntrack::FlowState;
use sluice_dataplane::pipeline::Verdict;
use sluice_dataplane::snapshot::BackendState;
use sluice_dataplane::wire::parse::{parse, L3};
use sluice_dataplane::wire::proto;
use sluice_dataplane::wire::tcp::flags;

use crate::compile::CompileReport;
use crate::model::L4Protocol;

/// A frontend as the operator knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendName {
    /// `namespace/name:port-name`.
    pub name: String,
    /// VIP.
    pub vip: IpAddr,
    /// VIP port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// Forwarding method.
    pub method: &'static str,
}

/// Frontend names by id, from the last compile report.
#[derive(Debug, Clone, Default)]
pub struct Names {
    frontends: HashMap<u32, FrontendName>,
}

impl Names {
    /// The frontends of `report`.
    pub fn from_report(report: &CompileReport) -> Names {
        let frontends = report
            .services
            .iter()
            .flat_map(|s| &s.frontends)
            .map(|f| {
                (
                    f.id,
                    FrontendName {
                        name: f.name.clone(),
                        vip: f.vip,
                        port: f.port,
                        protocol: match f.protocol {
                            L4Protocol::Tcp => "tcp",
                            L4Protocol::Udp => "udp",
                            L4Protocol::Sctp => "sctp",
                        },
                        method: f.method.name(),
                    },
                )
            })
            .collect();
        Names { frontends }
    }
}

fn sock(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn state(s: FlowState) -> &'static str {
    match s {
        FlowState::TcpSynSent => "SYN_SENT",
        FlowState::TcpEstablished => "ESTABLISHED",
        FlowState::TcpClosing => "CLOSING",
        FlowState::Udp => "UDP",
        FlowState::Other => "OTHER",
    }
}

fn backend_state(s: BackendState) -> &'static str {
    match s {
        BackendState::Active => "active",
        BackendState::Draining => "draining",
        BackendState::Down => "down",
    }
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What the pipeline did, in one line: the pcapng comment of a captured packet and the
/// verdict half of a trace line.
pub fn verdict(e: &Explain, names: &Names) -> String {
    let mut s = String::new();
    if let Some(id) = e.frontend {
        match names.frontends.get(&id) {
            Some(f) => {
                let _ = write!(
                    s,
                    "frontend {} ({} {}, {}); ",
                    f.name,
                    sock(f.vip, f.port),
                    f.protocol,
                    f.method
                );
            }
            None => {
                let _ = write!(s, "frontend #{id}; ");
            }
        }
    }
    match e.verdict {
        Verdict::Drop(r) => {
            let _ = write!(s, "drop {}", r.name());
            if let Some(b) = e.backend {
                let _ = write!(s, " (flow to {})", sock(b.addr, b.port));
            }
            return s;
        }
        Verdict::ToWorker(w) => {
            let _ = write!(s, "to worker {w} (it owns the flow's NAT port)");
            return s;
        }
        Verdict::Neighbor(n) => {
            let _ = write!(s, "neighbour {} is at {}", n.ip, mac(n.mac));
            return s;
        }
        Verdict::Tx => {}
    }
    match (e.state_before, e.state_after, e.why) {
        (_, Some(after), Why::Existing) => {
            let before = e.state_before.map_or("?", state);
            if before == state(after) {
                let _ = write!(s, "flow {} ", state(after));
            } else {
                let _ = write!(s, "flow {before}->{} ", state(after));
            }
        }
        (_, Some(after), Why::Maglev { .. } | Why::MaglevClient { .. } | Why::Affinity) => {
            let _ = write!(s, "new flow {} ", state(after));
        }
        (_, Some(after), Why::Reply) => {
            let _ = write!(s, "reply of flow {} ", state(after));
        }
        (_, Some(after), Why::None) => {
            let _ = write!(s, "flow {} ", state(after));
        }
        (_, None, _) => {}
    }
    if let Some(b) = e.backend {
        let arrow = if e.why == Why::Reply { "from" } else { "->" };
        let _ = write!(s, "{arrow} {}", sock(b.addr, b.port));
        if b.state != BackendState::Active {
            let _ = write!(s, " ({})", backend_state(b.state));
        }
        match e.why {
            Why::Existing => s.push_str(" via existing flow"),
            Why::Maglev { slot, primary } => {
                let _ = write!(s, " via Maglev (slot {slot}");
                if !primary {
                    s.push_str("; its backend is not active, next live one");
                }
                s.push(')');
            }
            Why::MaglevClient { slot, primary } => {
                let _ = write!(
                    s,
                    " via ClientIP affinity: Maglev on the client address (slot {slot}"
                );
                if !primary {
                    s.push_str("; its backend is not active, next live one");
                }
                s.push(')');
            }
            Why::Affinity => s.push_str(" via ClientIP affinity (the client's remembered backend)"),
            Why::Reply | Why::None => {}
        }
        s.push_str("; ");
    }
    match e.rewrite {
        // A packet seen only as it left: what it was before is not known.
        Rewrite::None if e.why == Why::Reply => s.push_str("sent to the client"),
        Rewrite::None => s.push_str("sent"),
        Rewrite::Nat {
            src,
            sport,
            dst,
            dport,
        } => {
            if e.frontend.is_some() && e.backend.is_some() {
                let _ = write!(s, "NAT {} -> {}", sock(src, sport), sock(dst, dport));
            } else {
                let _ = write!(s, "NAT reply {} -> {}", sock(src, sport), sock(dst, dport));
            }
        }
        Rewrite::DsrL2 { mac: m } => {
            let _ = write!(s, "DSR-L2 to MAC {}", mac(m));
        }
        Rewrite::DsrIpip { src, dst } => {
            let _ = write!(s, "DSR-IPIP encapsulated {src} -> {dst}");
        }
        Rewrite::Answered => s.push_str("answered by Sluice"),
        Rewrite::Reset => s.push_str("RST to the client (no flow for this segment on this host)"),
    }
    s
}

/// The packet in one line: `10.99.0.11:40112 -> 10.99.0.100:80 TCP SYN`.
pub fn packet(frame: &[u8]) -> String {
    let Ok(p) = parse(frame) else {
        return format!("{} bytes (not parsed)", frame.len());
    };
    let v6 = p.l3 == L3::Ipv6;
    let ip = |raw: &[u8; 16]| -> IpAddr {
        if v6 {
            IpAddr::from(*raw)
        } else {
            IpAddr::from([raw[0], raw[1], raw[2], raw[3]])
        }
    };
    match p.l3 {
        L3::Arp => return "ARP".to_owned(),
        L3::Other => return format!("ethertype 0x{:04x}", p.ethertype),
        L3::Ipv4 | L3::Ipv6 => {}
    }
    let (src, dst) = (ip(&p.src), ip(&p.dst));
    match p.proto {
        proto::TCP => {
            let f = p.tcp_flags;
            let mut names = Vec::new();
            for (bit, n) in [
                (flags::SYN, "SYN"),
                (flags::FIN, "FIN"),
                (flags::RST, "RST"),
                (flags::PSH, "PSH"),
                (flags::ACK, "ACK"),
            ] {
                if f & bit != 0 {
                    names.push(n);
                }
            }
            format!(
                "{} -> {} TCP {}",
                sock(src, p.sport),
                sock(dst, p.dport),
                names.join(",")
            )
        }
        proto::UDP => format!("{} -> {} UDP", sock(src, p.sport), sock(dst, p.dport)),
        pr if pr == proto::ICMP || pr == proto::ICMPV6 => {
            format!(
                "{src} -> {dst} ICMP type {} code {}",
                p.icmp_type, p.icmp_code
            )
        }
        4 | 41 => format!("{src} -> {dst} IP-in-IP"),
        pr => format!("{src} -> {dst} protocol {pr}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_dataplane::capture::BackendInfo;
    use sluice_dataplane::stats::DropReason;

    #[test]
    fn verdicts_read_as_the_trace_shows_them() {
        let names = Names::default();
        let e = Explain {
            verdict: Verdict::Tx,
            frontend: Some(3),
            state_before: None,
            state_after: Some(FlowState::TcpSynSent),
            backend: Some(BackendInfo {
                id: 1,
                addr: "10.99.0.22".parse().unwrap(),
                port: 8080,
                state: BackendState::Active,
            }),
            why: Why::Maglev {
                slot: 48211,
                primary: true,
            },
            rewrite: Rewrite::Nat {
                src: "10.99.0.3".parse().unwrap(),
                sport: 23001,
                dst: "10.99.0.22".parse().unwrap(),
                dport: 8080,
            },
        };
        assert_eq!(
            verdict(&e, &names),
            "frontend #3; new flow SYN_SENT -> 10.99.0.22:8080 via Maglev (slot 48211); \
             NAT 10.99.0.3:23001 -> 10.99.0.22:8080"
        );
        let d = Explain {
            verdict: Verdict::Drop(DropReason::PortNotServed),
            ..Explain::default()
        };
        assert_eq!(verdict(&d, &names), "drop port_not_served");
    }
}
