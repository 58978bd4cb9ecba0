//! The raw `pipeline` target's world (`fuzz_targets/pipeline.rs`): its snapshot, its
//! pipeline, and the prelude every input starts from, so that raw frames also meet the SYN
//! proxy with flows in it.
//!
//! Frontends (all TCP):
//!
//! | id | VIP:port | method | SYN proxy |
//! |---|---|---|---|
//! | 0 | 192.0.2.1:80 | `nat` | off |
//! | 1 | 192.0.2.2:80 | `dsr-ipip` | off |
//! | 2 | 2001:db8::1:80 | `dsr-l2` | off |
//! | 3 | 192.0.2.4:443 | `nat` | on (the `flows` world's `on` frontend) |
//! | 4 | 2001:db8::3:80 | `nat` | on |
//! | 5 | 192.0.2.3:80 | `nat` | auto, threshold 2 |
//! | 6 | 2001:db8::4:80 | `nat` | auto, threshold 2 |
//!
//! The prelude, after every reset: one proxied flow established through each `on` frontend
//! (the client's SYN answered with a cookie, its ACK returning the cookie turned into the
//! backend's SYN, the backend's SYN-ACK turned into the client's window update: from then on
//! the flow's sequence numbers are translated); two SYNs forwarded to the IPv4 `auto`
//! frontend and a tick, which engage it, then a proxied flow through it; one SYN forwarded
//! to the IPv6 `auto` frontend, one short of its threshold, so that an input's SYN to it and
//! the tick after the input's first pass engage it. The prelude is built and checked once
//! ([`prelude`]); every input replays its frames, and a verdict that differs from the first
//! run's is a crash (the reset left something behind). [`seeds`] writes frames for the
//! prelude's flows: their segments both ways, forged cookie ACKs, ICMP errors quoting them.
use std::sync::{Arc, OnceLock};

use sluice_dataplane::check::transmitted;
use sluice_dataplane::conntrack::ConntrackConfig;
use sluice_dataplane::maglev::{MaglevBackend, MaglevTable};
use sluice_dataplane::pipeline::{CookieKey, PacketBuf, Pipeline, PipelineConfig, VecBuf, Verdict};
use sluice_dataplane::snapshot::{
    Backend, BackendState, Frontend, Local, Method, Protocol, Snapshot, SynProxy,
};
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::wire::parse::parse;

use super::{a4, icmp_header, Frame, Hdr, LB_MAC, ROUTER_MAC};

/// The clock of every frame the target processes.
pub const NOW_MS: u32 = 1;
/// Ids (frontends and backends) at most, the size of the per-frontend counters.
pub const MAX_IDS: usize = 16;
/// The pipeline's SYN cookie key.
const COOKIE_KEY: CookieKey = CookieKey([0x5eed_7a30_0000_0001, 0x5eed_7a30_0000_0002]);
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
/// A client's SYN options: MSS 1460, SACK permitted, NOP, window scale 7.
const CLIENT_SYN_OPTS: [u8; 12] = [2, 4, 5, 0xb4, 4, 2, 1, 3, 3, 7, 0, 0];
/// A backend's SYN-ACK options: MSS 1460, SACK permitted, NOP, window scale 9 (not the
/// proxy's 7: its windows are rescaled).
const BACKEND_SYN_OPTS: [u8; 12] = [2, 4, 5, 0xb4, 4, 2, 1, 3, 3, 9, 0, 0];
/// The client's and the backend's initial sequence numbers.
const CLIENT_ISN: u32 = 0x1000_0000;
const BACKEND_ISN: u32 = 0xfff0_0000;

/// A v6 address `2001:db8:NET::LAST`.
const fn a6(net: u8, last: u8) -> [u8; 16] {
    [
        0x20, 0x01, 0x0d, 0xb8, 0, net, 0, 0, 0, 0, 0, 0, 0, 0, 0, last,
    ]
}

/// Clients, by family.
const CLIENT4: [u8; 16] = a4([10, 9, 9, 9]);
const CLIENT6: [u8; 16] = a6(9, 9);
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xa0];
/// A router on the clients' side, by family (ICMP errors come from it).
const ROUTER4: [u8; 16] = a4([203, 0, 113, 1]);
const ROUTER6: [u8; 16] = a6(0x77, 1);

/// The target's snapshot (built once).
pub fn snapshot() -> &'static Snapshot {
    static S: OnceLock<Snapshot> = OnceLock::new();
    S.get_or_init(|| {
        let names = ["a", "b"];
        let mb: Vec<_> = names
            .iter()
            .map(|n| MaglevBackend { id: n, weight: 1 })
            .collect();
        let maglev = Arc::new(MaglevTable::build(&mb, 251, 1).unwrap());
        let fe = |id: u32, vip: &str, port: u16, method, syn_proxy, v6: bool| Frontend {
            id,
            service: Arc::from("default/fuzz"),
            vip: vip.parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
            method,
            affinity_ms: None,
            source_ranges: vec![],
            flow_limit: None,
            source_flow_limit: None,
            syn_proxy,
            backends: if v6 { vec![2, 3] } else { vec![0, 1] },
            maglev: maglev.clone(),
        };
        let be = |id: u32, a: &str| Backend {
            id,
            addr: a.parse().unwrap(),
            port: 8080,
            mac: Some([2, 0, 0, 0, 1, id as u8]),
            weight: 1,
            state: BackendState::Active,
        };
        let auto = SynProxy::Auto { threshold: 2 };
        Snapshot::new(
            1,
            1,
            vec![
                fe(0, "192.0.2.1", 80, Method::Nat, SynProxy::Off, false),
                fe(1, "192.0.2.2", 80, Method::DsrIpip, SynProxy::Off, false),
                // Its backends are IPv4: DSR-L2 only needs their MACs.
                fe(2, "2001:db8::1", 80, Method::DsrL2, SynProxy::Off, false),
                fe(3, "192.0.2.4", 443, Method::Nat, SynProxy::On, false),
                fe(4, "2001:db8::3", 80, Method::Nat, SynProxy::On, true),
                fe(5, "192.0.2.3", 80, Method::Nat, auto, false),
                fe(6, "2001:db8::4", 80, Method::Nat, auto, true),
            ],
            vec![
                be(0, "10.0.1.1"),
                be(1, "10.0.1.2"),
                be(2, "2001:db8:cc::1"),
                be(3, "2001:db8:cc::2"),
            ],
            Local {
                mac: LB_MAC,
                ipv4: vec![[10, 0, 0, 2]],
                ipv6: vec![[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]],
                nat_ipv4: vec![[10, 0, 0, 3]],
                nat_ipv6: vec![a6(0xaa, 3)],
                nat_port_min: 20000,
                nat_port_max: 30000,
                nat_ipv4_peers: 0,
                nat_ipv6_peers: 0,
                mtu: 1500,
            },
            MAX_IDS,
        )
        .unwrap()
    })
}

/// A new pipeline for the target (small tables, the fixed cookie key).
pub fn pipeline() -> Pipeline {
    let cfg = PipelineConfig {
        conntrack: ConntrackConfig {
            capacity: 64,
            ..Default::default()
        },
        conntrack_v6_capacity: 64,
        affinity_capacity: 64,
        syn_cookie_key: COOKIE_KEY,
        ..PipelineConfig::default()
    };
    Pipeline::new(&cfg, Arc::new(WorkerStats::new(MAX_IDS)))
}

/// A flow the prelude established through the SYN proxy.
#[derive(Debug, Clone, Copy)]
pub struct ProxiedFlow {
    /// IPv6.
    pub v6: bool,
    /// The client's address (the parser's 16-byte form) and port.
    pub client: ([u8; 16], u16),
    /// The VIP and its port.
    pub vip: ([u8; 16], u16),
    /// The NAT address and port the backend sees.
    pub nat: ([u8; 16], u16),
    /// The backend's address and port.
    pub backend: ([u8; 16], u16),
    /// The backend's MAC.
    pub backend_mac: [u8; 6],
    /// The cookie (the proxy's initial sequence number to the client).
    pub cookie: u32,
}

/// One step of the prelude.
#[derive(Debug, Clone)]
pub enum Step {
    /// A frame, processed on its own, and the verdict it got.
    Frame(Vec<u8>, Verdict),
    /// The SYN proxy's tick.
    Tick,
}

/// What every input starts from.
#[derive(Debug)]
pub struct Prelude {
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// The proxied flows they established.
    pub flows: Vec<ProxiedFlow>,
}

/// A TCP segment to build.
#[derive(Debug, Clone, Copy)]
pub struct Seg<'a> {
    /// IPv6.
    pub v6: bool,
    /// Source and destination MACs.
    pub macs: ([u8; 6], [u8; 6]),
    /// Source address and port.
    pub src: ([u8; 16], u16),
    /// Destination address and port.
    pub dst: ([u8; 16], u16),
    /// Sequence and acknowledgement numbers.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// TCP flags.
    pub flags: u8,
    /// Window.
    pub window: u16,
    /// Options (a multiple of 4 bytes, at most 20).
    pub opts: &'a [u8],
    /// Payload.
    pub payload: &'a [u8],
}

/// The TCP header of `s`, its checksum zero.
fn tcp_hdr(s: &Seg<'_>) -> Hdr {
    let len = 20 + s.opts.len();
    let mut h = Hdr { b: [0; 40], n: len };
    h[0..2].copy_from_slice(&s.src.1.to_be_bytes());
    h[2..4].copy_from_slice(&s.dst.1.to_be_bytes());
    h[4..8].copy_from_slice(&s.seq.to_be_bytes());
    h[8..12].copy_from_slice(&s.ack.to_be_bytes());
    h[12] = ((len / 4) as u8) << 4;
    h[13] = s.flags;
    h[14..16].copy_from_slice(&s.window.to_be_bytes());
    h[20..].copy_from_slice(s.opts);
    h
}

/// The frame of segment `s`, checksums filled.
pub fn tcp_frame(s: &Seg<'_>) -> Vec<u8> {
    let mut f = Frame::new(s.macs.1, s.macs.0, 0);
    f.ip(s.v6, s.src.0, s.dst.0, 6, &tcp_hdr(s), s.payload, 0, false);
    f.bytes
}

/// A router's ICMP error (`t`, `code`; `mtu` in the fourth word for "fragmentation needed"
/// and "packet too big") to `to`, quoting the IP packet of frame `quoted` (its Ethernet
/// header dropped, cut to `quote_len` bytes).
pub fn icmp_error(
    v6: bool,
    (t, code, mtu): (u8, u8, u32),
    to: [u8; 16],
    quoted: &[u8],
    quote_len: usize,
) -> Vec<u8> {
    let router = if v6 { ROUTER6 } else { ROUTER4 };
    let mut h = icmp_header(t, code, 0);
    h[4..8].copy_from_slice(&mtu.to_be_bytes());
    let q = &quoted[14..];
    let mut f = Frame::new(LB_MAC, ROUTER_MAC, 0);
    f.ip(
        v6,
        router,
        to,
        if v6 { 58 } else { 1 },
        &h,
        &q[..quote_len.min(q.len())],
        0,
        false,
    );
    f.bytes
}

/// Runs frame `f` through `p` in the prelude: its verdict and output; a transmitted frame
/// must pass the target's invariant.
fn step(p: &mut Pipeline, steps: &mut Vec<Step>, f: Vec<u8>) -> (Verdict, Vec<u8>) {
    let mut b = VecBuf::new(&f);
    let v = p.process(snapshot(), &mut b, NOW_MS);
    if v == Verdict::Tx {
        if let Err(e) = transmitted(&f, b.data()) {
            panic!("prelude: invariant violated: {e}");
        }
    }
    let out = b.data().to_vec();
    steps.push(Step::Frame(f, v));
    (v, out)
}

/// A client's SYN from `client` to `vip` with the usual options.
fn client_syn(v6: bool, client: ([u8; 16], u16), vip: ([u8; 16], u16)) -> Vec<u8> {
    tcp_frame(&Seg {
        v6,
        macs: (CLIENT_MAC, LB_MAC),
        src: client,
        dst: vip,
        seq: CLIENT_ISN,
        ack: 0,
        flags: SYN,
        window: 64_240,
        opts: &CLIENT_SYN_OPTS,
        payload: &[],
    })
}

/// Establishes a proxied flow from `client` to `vip`: the SYN and its cookie SYN-ACK, the
/// ACK and the backend's SYN, the backend's SYN-ACK and the client's window update.
fn handshake(
    p: &mut Pipeline,
    steps: &mut Vec<Step>,
    v6: bool,
    client: ([u8; 16], u16),
    vip: ([u8; 16], u16),
) -> ProxiedFlow {
    let (v, out) = step(p, steps, client_syn(v6, client, vip));
    let sa = parse(&out).expect("the SYN-ACK parses");
    assert!(
        v == Verdict::Tx && sa.tcp_flags == SYN | ACK && sa.dst == client.0,
        "prelude: the proxy answers the SYN to {vip:?}: {v:?}"
    );
    let l4 = usize::from(sa.l4_off);
    let cookie = u32::from_be_bytes(out[l4 + 4..l4 + 8].try_into().unwrap());
    let ack = tcp_frame(&Seg {
        v6,
        macs: (CLIENT_MAC, LB_MAC),
        src: client,
        dst: vip,
        seq: CLIENT_ISN.wrapping_add(1),
        ack: cookie.wrapping_add(1),
        flags: ACK,
        window: 502,
        opts: &[],
        payload: &[],
    });
    let (v, out) = step(p, steps, ack);
    let syn = parse(&out).expect("the backend's SYN parses");
    assert!(
        v == Verdict::Tx && syn.tcp_flags == SYN && syn.src != vip.0,
        "prelude: the cookie ACK to {vip:?} opens the flow: {v:?}"
    );
    let flow = ProxiedFlow {
        v6,
        client,
        vip,
        nat: (syn.src, syn.sport),
        backend: (syn.dst, syn.dport),
        backend_mac: out[0..6].try_into().unwrap(),
        cookie,
    };
    let (v, out) = step(
        p,
        steps,
        backend_seg(&flow, SYN | ACK, &BACKEND_SYN_OPTS, &[]),
    );
    let upd = parse(&out).expect("the window update parses");
    assert!(
        v == Verdict::Tx && upd.tcp_flags == ACK && upd.dst == client.0,
        "prelude: the backend's SYN-ACK reaches the client of {vip:?}: {v:?}"
    );
    flow
}

/// The backend's segment of `flow` to the NAT address: `flags`, `opts`, `payload`, its
/// sequence number after the SYN-ACK (or the SYN-ACK's).
pub fn backend_seg(flow: &ProxiedFlow, flags: u8, opts: &[u8], payload: &[u8]) -> Vec<u8> {
    tcp_frame(&Seg {
        v6: flow.v6,
        macs: (flow.backend_mac, LB_MAC),
        src: flow.backend,
        dst: flow.nat,
        seq: if flags & SYN != 0 {
            BACKEND_ISN
        } else {
            BACKEND_ISN.wrapping_add(1)
        },
        ack: CLIENT_ISN.wrapping_add(1),
        flags,
        window: 509,
        opts,
        payload,
    })
}

/// The client's segment of `flow` to the VIP: `flags`, `opts`, `payload`, acknowledging
/// the cookie (and `acked` more bytes).
pub fn client_seg(
    flow: &ProxiedFlow,
    flags: u8,
    acked: u32,
    opts: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    tcp_frame(&Seg {
        v6: flow.v6,
        macs: (CLIENT_MAC, LB_MAC),
        src: flow.client,
        dst: flow.vip,
        seq: CLIENT_ISN.wrapping_add(1),
        ack: flow.cookie.wrapping_add(1).wrapping_add(acked),
        flags,
        window: 502,
        opts,
        payload,
    })
}

/// Runs the prelude on a new pipeline and records it.
fn build_prelude() -> Prelude {
    let snap = snapshot();
    let mut p = pipeline();
    p.install_snapshot(snap);
    let mut steps = Vec::new();
    let mut flows = Vec::new();
    let (vip4_on, vip6_on) = ((a4([192, 0, 2, 4]), 443), (a6(0, 3), 80));
    let (vip4_auto, vip6_auto) = ((a4([192, 0, 2, 3]), 80), (a6(0, 4), 80));
    flows.push(handshake(
        &mut p,
        &mut steps,
        false,
        (CLIENT4, 40000),
        vip4_on,
    ));
    flows.push(handshake(
        &mut p,
        &mut steps,
        true,
        (CLIENT6, 40000),
        vip6_on,
    ));
    for port in [41000, 41001] {
        let (v, out) = step(
            &mut p,
            &mut steps,
            client_syn(false, (CLIENT4, port), vip4_auto),
        );
        assert!(
            v == Verdict::Tx && out[0..6] != CLIENT_MAC,
            "prelude: a SYN to the auto frontend is forwarded: {v:?}"
        );
    }
    p.syn_proxy_tick(snap, NOW_MS);
    steps.push(Step::Tick);
    assert!(
        p.syn_proxy_engaged(5),
        "prelude: two embryonic flows engage the proxy"
    );
    flows.push(handshake(
        &mut p,
        &mut steps,
        false,
        (CLIENT4, 42000),
        vip4_auto,
    ));
    let (v, out) = step(
        &mut p,
        &mut steps,
        client_syn(true, (CLIENT6, 41000), vip6_auto),
    );
    assert!(
        v == Verdict::Tx && out[0..6] != CLIENT_MAC,
        "prelude: a SYN to the IPv6 auto frontend is forwarded: {v:?}"
    );
    Prelude { steps, flows }
}

/// The prelude (built and checked on first use).
pub fn prelude() -> &'static Prelude {
    static P: OnceLock<Prelude> = OnceLock::new();
    P.get_or_init(build_prelude)
}

/// Replays the prelude on `p` (just reset) with the scratch buffer `b`; panics if a verdict
/// differs from the recorded one.
pub fn replay(p: &mut Pipeline, b: &mut VecBuf) {
    let snap = snapshot();
    p.install_snapshot(snap);
    for (i, s) in prelude().steps.iter().enumerate() {
        match s {
            Step::Frame(f, want) => {
                b.reset(f);
                let v = p.process(snap, b, NOW_MS);
                assert_eq!(v, *want, "prelude step {i} after a reset");
            }
            Step::Tick => p.syn_proxy_tick(snap, NOW_MS),
        }
    }
}

/// Seed frames for the prelude's flows, named: segments of each flow both ways (data with
/// SACK blocks, a repeated SYN-ACK, FIN, RST), forged and retransmitted cookie ACKs, new
/// SYNs to the proxied frontends, and ICMP errors quoting a flow's packet to the client.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let payload: Vec<u8> = (0..64u8).collect();
    // NOP, NOP, SACK with one block a few bytes into the proxy's sequence space.
    let sack = |c: u32| {
        let mut o = [1u8, 1, 5, 10, 0, 0, 0, 0, 0, 0, 0, 0];
        o[4..8].copy_from_slice(&c.wrapping_add(100).to_be_bytes());
        o[8..12].copy_from_slice(&c.wrapping_add(200).to_be_bytes());
        o
    };
    for (i, f) in prelude().flows.iter().enumerate() {
        let fam = if f.v6 { "v6" } else { "v4" };
        let name = |what: &str| format!("synproxy-raw-{i}-{fam}-{what}");
        let s = sack(f.cookie);
        out.push((
            name("client-data-sack"),
            client_seg(f, PSH | ACK, 1, &s, &payload),
        ));
        out.push((name("client-fin"), client_seg(f, FIN | ACK, 0, &[], &[])));
        out.push((
            name("backend-data"),
            backend_seg(f, PSH | ACK, &[], &payload),
        ));
        out.push((
            name("backend-syn-ack-again"),
            backend_seg(f, SYN | ACK, &BACKEND_SYN_OPTS, &[]),
        ));
        out.push((name("backend-rst"), backend_seg(f, RST | ACK, &[], &[])));
        // A cookie ACK from another port: the cookie is the flow's, the tuple is not.
        let forged = Seg {
            v6: f.v6,
            macs: (CLIENT_MAC, LB_MAC),
            src: (f.client.0, f.client.1 + 1),
            dst: f.vip,
            seq: CLIENT_ISN.wrapping_add(1),
            ack: f.cookie.wrapping_add(1),
            flags: ACK,
            window: 502,
            opts: &[],
            payload: &payload[..8],
        };
        out.push((name("forged-cookie-ack"), tcp_frame(&forged)));
        out.push((
            name("syn"),
            client_syn(f.v6, (f.client.0, f.client.1 + 2), f.vip),
        ));
        // What the proxy sent the client, quoted back by a router on the client's side.
        let to_client = tcp_frame(&Seg {
            v6: f.v6,
            macs: (LB_MAC, CLIENT_MAC),
            src: f.vip,
            dst: f.client,
            seq: f.cookie.wrapping_add(1),
            ack: CLIENT_ISN.wrapping_add(1),
            flags: PSH | ACK,
            window: 100,
            opts: &[],
            payload: &payload,
        });
        let (unreach, too_big) = if f.v6 {
            ((1, 4, 0), (2, 0, 1280))
        } else {
            ((3, 3, 0), (3, 4, 1400))
        };
        out.push((
            name("icmp-unreachable"),
            icmp_error(f.v6, unreach, f.vip.0, &to_client, 1000),
        ));
        let hdrs = if f.v6 { 40 + 8 } else { 20 + 8 };
        out.push((
            name("icmp-too-big-short-quote"),
            icmp_error(f.v6, too_big, f.vip.0, &to_client, hdrs),
        ));
    }
    // A second SYN to the IPv6 `auto` frontend: the tick after it engages the proxy, and the
    // burst's SYN gets a cookie.
    let second = client_syn(true, (CLIENT6, 41001), (a6(0, 4), 80));
    out.push(("synproxy-raw-auto-v6-engaging-syn".to_string(), second));
    out
}
