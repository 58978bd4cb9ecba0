//! What the pipeline did with a captured packet, worked out around `process_burst` for the
//! packets a capture copies (and only those): a look at the packet and its flow before, the
//! verdict, and a look at the flow and the rewritten frame after. The pipeline itself is not
//! instrumented, so a packet no capture matches pays nothing for this.
use std::net::IpAddr;

use crate::conntrack::{Addr, FlowKey, FlowState, Key};
use crate::pipeline::{Pipeline, Verdict};
use crate::snapshot::{BackendState, Snapshot};
use crate::wire::parse::{parse, Parsed, L3};
use crate::wire::proto;
use crate::wire::tcp::flags;

/// What is known of a packet before the pipeline ran on it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Before {
    /// The parsed frame (`None`: it does not parse).
    parsed: Option<Parsed>,
    /// Its destination MAC.
    dst_mac: [u8; 6],
    /// The frontend (VIP, protocol, port) it is sent to.
    frontend: Option<u32>,
    /// Its tracked flow, if any: backend id and state.
    flow: Option<(u32, FlowState)>,
}

/// The backend a packet went to, as the worker's snapshot had it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendInfo {
    /// Backend id.
    pub id: u32,
    /// Address.
    pub addr: IpAddr,
    /// Port.
    pub port: u16,
    /// State (a draining or down backend keeps its established flows).
    pub state: BackendState,
}

/// Why the packet went to its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Why {
    /// Not scheduled (dropped before, answered, a reply, not to a frontend).
    #[default]
    None,
    /// The flow was tracked already.
    Existing,
    /// A new flow: Maglev on the 5-tuple. `primary`: the slot's backend was taken (else it
    /// was not active and the lookup went on to another slot).
    Maglev {
        /// The Maglev slot of the flow hash.
        slot: u32,
        /// Whether the slot's own backend was chosen.
        primary: bool,
    },
    /// A new flow of a ClientIP-affinity frontend, to Maglev's pick for the client address.
    MaglevClient {
        /// The Maglev slot of the client hash.
        slot: u32,
        /// Whether the slot's own backend was chosen.
        primary: bool,
    },
    /// A new flow of a ClientIP-affinity frontend, to the backend its client had (not
    /// Maglev's current pick for the client address).
    Affinity,
    /// Seen only as it left: a frontend's reply to the client of a tracked flow.
    Reply,
}

/// How the frame left (compared with how it came in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rewrite {
    /// Not sent, or sent unchanged.
    #[default]
    None,
    /// Addresses or ports rewritten (full NAT to the backend, or a NAT reply back to the
    /// client): the frame now goes `src:sport -> dst:dport`.
    Nat {
        /// New source.
        src: IpAddr,
        /// New source port.
        sport: u16,
        /// New destination.
        dst: IpAddr,
        /// New destination port.
        dport: u16,
    },
    /// Only the destination MAC changed (`dsr-l2`).
    DsrL2 {
        /// The backend's (or its next hop's) MAC.
        mac: [u8; 6],
    },
    /// Encapsulated (`dsr-ipip`): an outer header from `src` to `dst`.
    DsrIpip {
        /// Outer source.
        src: IpAddr,
        /// Outer destination (the backend).
        dst: IpAddr,
    },
    /// Answered by Sluice itself (ARP/NDP, ICMP echo) back to the sender.
    Answered,
    /// A TCP RST back to the client (a segment of a `nat` flow this host does not know).
    Reset,
}

/// What the pipeline did with one packet: carried by every capture record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Explain {
    /// The verdict.
    pub verdict: Verdict,
    /// The frontend the packet was sent to (or, for a reply to a client, came from).
    pub frontend: Option<u32>,
    /// The flow's state before the packet (`None`: not tracked, or not known).
    pub state_before: Option<FlowState>,
    /// The flow's state after it.
    pub state_after: Option<FlowState>,
    /// The backend of the flow after the packet.
    pub backend: Option<BackendInfo>,
    /// Why that backend.
    pub why: Why,
    /// How the frame left.
    pub rewrite: Rewrite,
}

impl Default for Explain {
    fn default() -> Self {
        Explain {
            verdict: Verdict::Tx,
            frontend: None,
            state_before: None,
            state_after: None,
            backend: None,
            why: Why::None,
            rewrite: Rewrite::None,
        }
    }
}

/// An address the parser stored in 16 bytes.
fn ip(raw: &[u8; 16], v6: bool) -> IpAddr {
    if v6 {
        IpAddr::from(*raw)
    } else {
        IpAddr::from([raw[0], raw[1], raw[2], raw[3]])
    }
}

fn v6(p: &Parsed) -> bool {
    p.l3 == L3::Ipv6
}

/// The frontend a parsed TCP/UDP packet is sent to.
fn frontend_of(snap: &Snapshot, p: &Parsed) -> Option<u32> {
    if !p.is_ip() || (p.proto != proto::TCP && p.proto != proto::UDP) {
        return None;
    }
    snap.frontend_id_for(&p.dst, v6(p), p.proto, p.dport)
}

/// The forward flow `src:sport -> dst:dport`: backend id and state.
fn flow_of(
    pipeline: &Pipeline,
    snap: &Snapshot,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    proto: u8,
) -> Option<(u32, FlowState)> {
    pipeline
        .find_flow(snap.hash_seed, src, dst, sport, dport, proto)
        .map(|(fwd, st, _)| (fwd.backend, st))
}

/// Looks at a frame before the pipeline runs on it.
pub fn before(pipeline: &Pipeline, snap: &Snapshot, frame: &[u8]) -> Before {
    let Ok(p) = parse(frame) else {
        return Before::default();
    };
    let mut dst_mac = [0u8; 6];
    dst_mac.copy_from_slice(&frame[..6]);
    let frontend = frontend_of(snap, &p);
    let flow = frontend.and_then(|_| {
        let v6 = v6(&p);
        flow_of(
            pipeline,
            snap,
            ip(&p.src, v6),
            ip(&p.dst, v6),
            p.sport,
            p.dport,
            p.proto,
        )
    });
    Before {
        parsed: Some(p),
        dst_mac,
        frontend,
        flow,
    }
}

/// The flow hash the pipeline uses for `src -> dst` (5-tuple, or the client address alone).
fn hash<A: Addr>(seed: u64, src: IpAddr, dst: IpAddr, sport: u16, dport: u16, pr: u8) -> u64 {
    let (Some(s), Some(d)) = (A::of_ip(src), A::of_ip(dst)) else {
        return 0;
    };
    Key::new(s, d, sport, dport, pr).flow_hash(seed)
}

/// Why a new flow of frontend `fid` got backend `chosen`.
fn why_new(snap: &Snapshot, fid: u32, p: &Parsed, chosen: u32) -> Why {
    let Some(f) = snap.frontend(fid) else {
        return Why::None;
    };
    let v6 = v6(p);
    let (src, dst) = (ip(&p.src, v6), ip(&p.dst, v6));
    let seed = snap.hash_seed;
    let h = |s, d, sp, dp, pr| {
        if v6 {
            hash::<[u8; 16]>(seed, s, d, sp, dp, pr)
        } else {
            hash::<[u8; 4]>(seed, s, d, sp, dp, pr)
        }
    };
    let primary_of = |hv: u64| {
        let slot = f.maglev.slot(hv);
        let at = f
            .maglev
            .entries()
            .get(slot)
            .and_then(|&i| f.backends.get(i as usize))
            .copied();
        (slot as u32, at == Some(chosen))
    };
    if f.affinity_ms.is_some() {
        let any = if v6 {
            IpAddr::from([0u8; 16])
        } else {
            IpAddr::from([0u8; 4])
        };
        let (slot, primary) = primary_of(h(src, any, 0, 0, 0));
        let pick = f.maglev.lookup_live(h(src, any, 0, 0, 0), |i| {
            f.backends
                .get(i as usize)
                .and_then(|id| snap.backend(*id))
                .is_some_and(|b| b.state == BackendState::Active)
        });
        if pick.and_then(|i| f.backends.get(i as usize).copied()) == Some(chosen) {
            return Why::MaglevClient { slot, primary };
        }
        return Why::Affinity;
    }
    let (slot, primary) = primary_of(h(src, dst, p.sport, p.dport, p.proto));
    Why::Maglev { slot, primary }
}

/// How the frame left, from the frame before (`b`) and after (`a`).
fn rewrite(b: &Before, a: &Parsed, frame: &[u8]) -> Rewrite {
    let Some(p) = b.parsed.as_ref() else {
        return Rewrite::None;
    };
    let av6 = v6(a);
    if a.is_ip() && (a.proto == 4 || a.proto == 41) && !(p.proto == 4 || p.proto == 41) {
        return Rewrite::DsrIpip {
            src: ip(&a.src, av6),
            dst: ip(&a.dst, av6),
        };
    }
    let swapped = a.src == p.dst && a.dst == p.src;
    if swapped && a.proto == proto::TCP && a.tcp_flags & flags::RST != 0 {
        return Rewrite::Reset;
    }
    if swapped || (a.l3 == L3::Arp && p.l3 == L3::Arp) {
        return Rewrite::Answered;
    }
    if a.src == p.src && a.dst == p.dst && a.sport == p.sport && a.dport == p.dport {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&frame[..6]);
        return if mac == b.dst_mac {
            Rewrite::None
        } else {
            Rewrite::DsrL2 { mac }
        };
    }
    Rewrite::Nat {
        src: ip(&a.src, av6),
        sport: a.sport,
        dst: ip(&a.dst, av6),
        dport: a.dport,
    }
}

fn backend_info(snap: &Snapshot, id: u32) -> Option<BackendInfo> {
    snap.backend(id).map(|b| BackendInfo {
        id,
        addr: b.addr,
        port: b.port,
        state: b.state,
    })
}

/// What the pipeline did with a packet, given what [`before`] saw, its verdict, and the
/// frame as the pipeline left it.
pub fn after(
    pipeline: &Pipeline,
    snap: &Snapshot,
    b: &Before,
    verdict: Verdict,
    frame: &[u8],
) -> Explain {
    let mut e = Explain {
        verdict,
        frontend: b.frontend,
        state_before: b.flow.map(|f| f.1),
        ..Explain::default()
    };
    if verdict == Verdict::Tx {
        if let Ok(a) = parse(frame) {
            e.rewrite = rewrite(b, &a, frame);
        }
    }
    let (Some(p), Some(fid)) = (b.parsed.as_ref(), b.frontend) else {
        return e;
    };
    let v6 = v6(p);
    let now = flow_of(
        pipeline,
        snap,
        ip(&p.src, v6),
        ip(&p.dst, v6),
        p.sport,
        p.dport,
        p.proto,
    );
    e.state_after = now.map(|f| f.1);
    if let Some((id, _)) = now {
        e.backend = backend_info(snap, id);
        let reopened = b.flow.is_some_and(|(_, st)| st == FlowState::TcpClosing)
            && p.tcp_flags & (flags::SYN | flags::ACK) == flags::SYN;
        e.why = match b.flow {
            Some((was, _)) if was == id && !reopened => Why::Existing,
            _ if matches!(verdict, Verdict::Tx) => why_new(snap, fid, p, id),
            _ => Why::None,
        };
    }
    e
}

/// What is known of a frame seen only as it leaves (captured on transmit, not on receive):
/// the forward flow it belongs to, if it is a client's packet to a frontend or a reply from
/// one to the client.
pub fn leaving(pipeline: &Pipeline, snap: &Snapshot, frame: &[u8]) -> Explain {
    let mut e = Explain::default();
    let Ok(p) = parse(frame) else {
        return e;
    };
    let v6 = v6(&p);
    let (src, dst) = (ip(&p.src, v6), ip(&p.dst, v6));
    let reply = if p.is_ip() && (p.proto == proto::TCP || p.proto == proto::UDP) {
        snap.frontend_id_for(&p.src, v6, p.proto, p.sport)
    } else {
        None
    };
    let (fid, flow) = match (frontend_of(snap, &p), reply) {
        (Some(f), _) => (
            Some(f),
            flow_of(pipeline, snap, src, dst, p.sport, p.dport, p.proto),
        ),
        (None, Some(f)) => (
            Some(f),
            flow_of(pipeline, snap, dst, src, p.dport, p.sport, p.proto),
        ),
        (None, None) => (None, None),
    };
    e.frontend = fid;
    if reply.is_some() && fid == reply {
        e.why = Why::Reply;
    }
    e.state_after = flow.map(|f| f.1);
    e.backend = flow.and_then(|(id, _)| backend_info(snap, id));
    e
}
