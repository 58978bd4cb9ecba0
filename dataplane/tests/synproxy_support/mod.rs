//! Fixtures of the SYN proxy's integration tests (`synproxy.rs`, `synproxy_auto.rs`): segment
//! and frame builders, the two families' addresses, the golden snapshot with SYN-proxied NAT
//! frontends, and the handshakes the tests share.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::common::*;
use etherparse::{Ethernet2Header, IpNumber, Ipv4Header, Ipv6Header, TcpHeader};
use sluice_dataplane::pipeline::{
    syn_cookie, CookieData, CookieKey, PacketBuf, Pipeline, PipelineConfig, VecBuf, Verdict,
};
use sluice_dataplane::snapshot::{Method, Protocol, Snapshot, SynProxy};
use sluice_dataplane::stats::WorkerStats;

pub const KEY: CookieKey = CookieKey([0x5eed_0001, 0x5eed_0002]);
pub const NOW: u32 = 3_600_000;
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// A TCP segment to build.
#[derive(Clone, Copy)]
pub struct Seg<'a> {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub opts: &'a [u8],
    pub payload: &'a [u8],
}

/// An Ethernet frame `mac -> to_mac` carrying `s` from `src` to `dst` (IPv4: TTL 64, id 0,
/// DF clear, as the proxy writes its headers).
pub fn frame(mac: [u8; 6], to_mac: [u8; 6], src: IpAddr, dst: IpAddr, s: &Seg<'_>) -> Vec<u8> {
    let mut t = TcpHeader::new(s.sport, s.dport, s.seq, s.window);
    t.acknowledgment_number = s.ack;
    t.fin = s.flags & FIN != 0;
    t.syn = s.flags & SYN != 0;
    t.rst = s.flags & RST != 0;
    t.psh = s.flags & PSH != 0;
    t.ack = s.flags & ACK != 0;
    t.set_options_raw(s.opts).unwrap();
    let len = t.header_len() + s.payload.len();
    let mut out = Vec::new();
    let (ether_type, csum) = match (src, dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mut ip =
                Ipv4Header::new(len as u16, 64, IpNumber::TCP, a.octets(), b.octets()).unwrap();
            ip.dont_fragment = false;
            ip.header_checksum = ip.calc_header_checksum();
            let c = t.calc_checksum_ipv4(&ip, s.payload).unwrap();
            let mut b = Vec::new();
            ip.write(&mut b).unwrap();
            (etherparse::EtherType::IPV4, (b, c))
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let ip = Ipv6Header {
                traffic_class: 0,
                flow_label: Default::default(),
                payload_length: len as u16,
                next_header: IpNumber::TCP,
                hop_limit: 64,
                source: a.octets(),
                destination: b.octets(),
            };
            let c = t.calc_checksum_ipv6(&ip, s.payload).unwrap();
            let mut b = Vec::new();
            ip.write(&mut b).unwrap();
            (etherparse::EtherType::IPV6, (b, c))
        }
        _ => panic!("mixed families"),
    };
    Ethernet2Header {
        source: mac,
        destination: to_mac,
        ether_type,
    }
    .write(&mut out)
    .unwrap();
    out.extend_from_slice(&csum.0);
    t.checksum = csum.1;
    t.write(&mut out).unwrap();
    out.extend_from_slice(s.payload);
    out
}

/// One family's addresses.
pub struct Fam {
    pub client: IpAddr,
    pub vip: IpAddr,
    pub nat: IpAddr,
    pub backend: IpAddr,
    /// The MSS the proxy offers (MTU 1500 less the headers).
    pub our_mss: u16,
    /// The client's MSS and the table entry the cookie keeps of it.
    pub client_mss: u16,
    pub mss_index: u8,
    pub mss_kept: u16,
}

pub fn v4() -> Fam {
    Fam {
        client: IpAddr::from(CLIENT4),
        vip: "192.0.2.1".parse().unwrap(),
        nat: IpAddr::from(NAT4),
        backend: "10.0.1.1".parse().unwrap(),
        our_mss: 1460,
        client_mss: 1460,
        mss_index: 3,
        mss_kept: 1460,
    }
}

pub fn v6() -> Fam {
    Fam {
        client: IpAddr::from(CLIENT6),
        vip: "2001:db8::1".parse().unwrap(),
        nat: IpAddr::from(NAT6),
        backend: "fd00:1::1".parse().unwrap(),
        our_mss: 1440,
        client_mss: 1430,
        mss_index: 1,
        mss_kept: 1420,
    }
}

/// The NAT frontends of the golden snapshot (0: IPv4, 4: IPv6), SYN-proxied.
pub fn snapshot() -> Snapshot {
    let mut a = frontend(0, "192.0.2.1", 80, Protocol::Tcp, Method::Nat, vec![1]);
    a.syn_proxy = SynProxy::On;
    let mut b = frontend(4, "2001:db8::1", 80, Protocol::Tcp, Method::Nat, vec![3]);
    b.syn_proxy = SynProxy::On;
    Snapshot::new(
        1,
        42,
        vec![a, b],
        vec![backend(1, "10.0.1.1", 8080), backend(3, "fd00:1::1", 8080)],
        local(),
        1024,
    )
    .unwrap()
}

pub fn pipeline() -> (Pipeline, Arc<WorkerStats>) {
    let stats = Arc::new(WorkerStats::new(16));
    let mut cfg = PipelineConfig {
        syn_cookie_key: KEY,
        ..PipelineConfig::default()
    };
    cfg.conntrack.capacity = 1 << 12;
    cfg.conntrack_v6_capacity = 1 << 12;
    cfg.affinity_capacity = 1 << 10;
    (Pipeline::new(&cfg, stats.clone()), stats)
}

/// Runs `input` and checks the verdict and, if given, the exact output frame.
pub fn run(
    pipe: &mut Pipeline,
    snap: &Snapshot,
    desc: &str,
    input: Vec<u8>,
    verdict: Verdict,
    want: Option<Vec<u8>>,
) {
    let mut b = VecBuf::new(&input);
    let v = pipe.process(snap, &mut b, NOW);
    assert_eq!(v, verdict, "{desc}: verdict");
    if let Some(w) = want {
        assert_checksums_valid(b.data());
        assert_eq!(b.data(), &w[..], "{desc}: output bytes");
    }
}

/// Linux's SYN options: MSS, SACK permitted, timestamps, NOP, window scale 7.
pub fn linux_syn_options(mss: u16) -> [u8; 20] {
    let m = mss.to_be_bytes();
    [
        2, 4, m[0], m[1], 4, 2, 8, 10, 0, 1, 2, 3, 0, 0, 0, 0, 1, 3, 3, 7,
    ]
}

/// A client's SYN without options from port `sport`, initial sequence number `seq`, to port 80.
pub fn bare_syn(sport: u16, seq: u32) -> Seg<'static> {
    Seg {
        sport,
        dport: 80,
        seq,
        ack: 0,
        flags: SYN,
        window: 1000,
        opts: &[],
        payload: &[],
    }
}

/// The client's ACK of cookie `c` answering `syn`: its next sequence number, `c + 1`
/// acknowledged, the rest (window, options) as in the SYN.
pub fn cookie_ack(syn: Seg<'_>, c: u32) -> Seg<'_> {
    Seg {
        seq: syn.seq.wrapping_add(1),
        ack: c.wrapping_add(1),
        flags: ACK,
        ..syn
    }
}

/// Sends the SYN frame `syn` and returns the cookie of the SYN-ACK it is answered with.
pub fn cookie_for(pipe: &mut Pipeline, snap: &Snapshot, syn: &[u8]) -> u32 {
    let mut b = VecBuf::new(syn);
    assert_eq!(pipe.process(snap, &mut b, NOW), Verdict::Tx);
    let d = b.data();
    u32::from_be_bytes(d[d.len() - 24 + 4..][..4].try_into().unwrap())
}

/// Sends family `fam`'s client SYN from port `sport` with ISN `isn` and its cookie ACK, so that
/// the proxy opens the flow and sends the backend's SYN; returns the cookie.
pub fn handshake_to_backend(
    pipe: &mut Pipeline,
    snap: &Snapshot,
    fam: &Fam,
    sport: u16,
    isn: u32,
) -> u32 {
    let client = |s: &Seg<'_>| frame(CLIENT_MAC, LB_MAC, fam.client, fam.vip, s);
    let syn = bare_syn(sport, isn);
    let c = cookie_for(pipe, snap, &client(&syn));
    let ack = cookie_ack(syn, c);
    let mut b = VecBuf::new(&client(&ack));
    assert_eq!(pipe.process(snap, &mut b, NOW), Verdict::Tx);
    c
}

/// Runs one frame through `pipe` at `now`: the verdict and the frame after it.
pub fn through(pipe: &mut Pipeline, snap: &Snapshot, f: &[u8], now: u32) -> (Verdict, Vec<u8>) {
    let mut b = VecBuf::new(f);
    let v = pipe.process(snap, &mut b, now);
    (v, b.data().to_vec())
}

/// A proxied IPv4 connection through its handshake on `pipe` (the client at port 6000, ISN
/// 1000; the backend at ISN 5,000,000 with window scale 9): the frames of the client's and
/// the backend's next segments, whose outputs show the translation.
pub fn proxied_handshake(pipe: &mut Pipeline, snap: &Snapshot) -> (Vec<u8>, Vec<u8>) {
    let fam = v4();
    let bm = bmac(1);
    let syn_opts = linux_syn_options(1460);
    let syn = Seg {
        window: 64240,
        opts: &syn_opts,
        ..bare_syn(6000, 1000)
    };
    let client = |s: &Seg<'_>| frame(CLIENT_MAC, LB_MAC, fam.client, fam.vip, s);
    let (v, out) = through(pipe, snap, &client(&syn), NOW);
    assert_eq!(v, Verdict::Tx, "the cookie SYN-ACK");
    let c = u32::from_be_bytes(out[38..42].try_into().unwrap());
    assert_eq!(c, handshake_cookie());
    let ack = Seg {
        window: 502,
        opts: &[],
        ..cookie_ack(syn, c)
    };
    let (v, out) = through(pipe, snap, &client(&ack), NOW);
    assert_eq!((v, &out[0..6]), (Verdict::Tx, &bm[..]), "the backend's SYN");
    let nat_port = u16::from_be_bytes([out[34], out[35]]);
    let from_backend = |s: &Seg<'_>| frame(bm, LB_MAC, fam.backend, fam.nat, s);
    let syn_ack = Seg {
        sport: 8080,
        dport: nat_port,
        seq: 5_000_000,
        ack: 1001,
        flags: SYN | ACK,
        window: 65160,
        opts: &[2, 4, 5, 180, 1, 1, 4, 2, 1, 3, 3, 9],
        payload: &[],
    };
    let (v, out) = through(pipe, snap, &from_backend(&syn_ack), NOW);
    assert_eq!(
        (v, &out[0..6]),
        (Verdict::Tx, &CLIENT_MAC[..]),
        "window update"
    );
    let req = Seg {
        flags: ACK | PSH,
        payload: b"GET / HTTP/1.1\r\n\r\n",
        ..ack
    };
    let resp = Seg {
        sport: 8080,
        dport: nat_port,
        seq: 5_000_001,
        ack: 1019,
        flags: ACK | PSH,
        window: 200,
        opts: &[],
        payload: b"HTTP/1.1 200 OK\r\n\r\n",
    };
    (client(&req), from_backend(&resp))
}

/// The cookie the client of [`proxied_handshake`] is answered with.
pub fn handshake_cookie() -> u32 {
    let fam = v4();
    syn_cookie(
        &KEY,
        NOW,
        SocketAddr::new(fam.client, 6000),
        SocketAddr::new(fam.vip, 80),
        1000,
        CookieData {
            mss_index: 3,
            sack: true,
            wscale: Some(7),
        },
    )
    .unwrap()
}
