//! Golden packets of the SYN proxy (`pipeline/synproxy.rs`), IPv4 and IPv6 through one path:
//! the cookie SYN-ACK, a forged ACK dropped, the backend's SYN, client data held back during
//! the backend's handshake, the ACK that completes it, and the sequence (and SACK, window)
//! translation of both directions afterwards. Expected frames are built with etherparse,
//! which computes every checksum from scratch.
mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use common::*;
use etherparse::{Ethernet2Header, IpNumber, Ipv4Header, Ipv6Header, TcpHeader};
use sluice_dataplane::conntrack::Timeouts;
use sluice_dataplane::pipeline::{
    syn_cookie, CookieData, CookieKey, PacketBuf, Pipeline, PipelineConfig, VecBuf, Verdict,
    CENSUS_SLOTS_PER_TICK,
};
use sluice_dataplane::snapshot::{Method, Protocol, Snapshot, SynProxy};
use sluice_dataplane::stats::{DropReason, WorkerStats};

const KEY: CookieKey = CookieKey([0x5eed_0001, 0x5eed_0002]);
const NOW: u32 = 3_600_000;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// A TCP segment to build.
#[derive(Clone, Copy)]
struct Seg<'a> {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    opts: &'a [u8],
    payload: &'a [u8],
}

/// An Ethernet frame `mac -> to_mac` carrying `s` from `src` to `dst` (IPv4: TTL 64, id 0,
/// DF clear, as the proxy writes its headers).
fn frame(mac: [u8; 6], to_mac: [u8; 6], src: IpAddr, dst: IpAddr, s: &Seg<'_>) -> Vec<u8> {
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
struct Fam {
    client: IpAddr,
    vip: IpAddr,
    nat: IpAddr,
    backend: IpAddr,
    /// The MSS the proxy offers (MTU 1500 less the headers).
    our_mss: u16,
    /// The client's MSS and the table entry the cookie keeps of it.
    client_mss: u16,
    mss_index: u8,
    mss_kept: u16,
}

fn v4() -> Fam {
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

fn v6() -> Fam {
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
fn snapshot() -> Snapshot {
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

fn pipeline() -> (Pipeline, Arc<WorkerStats>) {
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
fn run(
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
fn linux_syn_options(mss: u16) -> [u8; 20] {
    let m = mss.to_be_bytes();
    [
        2, 4, m[0], m[1], 4, 2, 8, 10, 0, 1, 2, 3, 0, 0, 0, 0, 1, 3, 3, 7,
    ]
}

/// A client's SYN without options from port `sport`, initial sequence number `seq`, to port 80.
fn bare_syn(sport: u16, seq: u32) -> Seg<'static> {
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

/// Sends the SYN frame `syn` and returns the cookie of the SYN-ACK it is answered with.
fn cookie_for(pipe: &mut Pipeline, snap: &Snapshot, syn: &[u8]) -> u32 {
    let mut b = VecBuf::new(syn);
    assert_eq!(pipe.process(snap, &mut b, NOW), Verdict::Tx);
    let d = b.data();
    u32::from_be_bytes(d[d.len() - 24 + 4..][..4].try_into().unwrap())
}

/// Sends family `fam`'s client SYN from port `sport` with ISN `isn` and its cookie ACK, so that
/// the proxy opens the flow and sends the backend's SYN; returns the cookie.
fn handshake_to_backend(
    pipe: &mut Pipeline,
    snap: &Snapshot,
    fam: &Fam,
    sport: u16,
    isn: u32,
) -> u32 {
    let client = |s: &Seg<'_>| frame(CLIENT_MAC, LB_MAC, fam.client, fam.vip, s);
    let syn = bare_syn(sport, isn);
    let c = cookie_for(pipe, snap, &client(&syn));
    let ack = Seg {
        seq: isn.wrapping_add(1),
        ack: c.wrapping_add(1),
        flags: ACK,
        ..syn
    };
    let mut b = VecBuf::new(&client(&ack));
    assert_eq!(pipe.process(snap, &mut b, NOW), Verdict::Tx);
    c
}

/// The whole life of a proxied connection in family `fam`.
fn proxied_connection(fam: &Fam, count_before: u64) {
    let snap = snapshot();
    let (mut pipe, stats) = pipeline();
    let (cport, nat_port, bport) = (40000u16, NAT_PORT_MIN, 8080u16);
    let bm = bmac(if fam.backend.is_ipv4() { 1 } else { 3 });
    let syn_opts = linux_syn_options(fam.client_mss);
    let client = |s: &Seg<'_>| frame(CLIENT_MAC, LB_MAC, fam.client, fam.vip, s);
    let base = Seg {
        sport: cport,
        dport: 80,
        seq: 1000,
        ack: 0,
        flags: SYN,
        window: 64240,
        opts: &syn_opts,
        payload: &[],
    };

    // 1. The SYN is answered with a cookie; nothing is stored.
    let data = CookieData {
        mss_index: fam.mss_index,
        sack: true,
        wscale: Some(7),
    };
    let c = syn_cookie(
        &KEY,
        NOW,
        SocketAddr::new(fam.client, cport),
        SocketAddr::new(fam.vip, 80),
        1000,
        data,
    )
    .unwrap();
    assert_eq!(CookieData::of_cookie(c), data);
    let m = fam.our_mss.to_be_bytes();
    let syn_ack = frame(
        LB_MAC,
        CLIENT_MAC,
        fam.vip,
        fam.client,
        &Seg {
            sport: 80,
            dport: cport,
            seq: c,
            ack: 1001,
            flags: SYN | ACK,
            window: 0,
            opts: &[2, 4, m[0], m[1], 1, 1, 4, 2, 1, 3, 3, 7],
            payload: &[],
        },
    );
    run(
        &mut pipe,
        &snap,
        "SYN -> cookie SYN-ACK",
        client(&base),
        Verdict::Tx,
        Some(syn_ack),
    );
    assert_eq!(pipe.flows(), 0, "a SYN stores nothing");
    assert_eq!(stats.syn_cookies_sent.load(Relaxed), 1);

    // 2. An ACK whose cookie does not verify opens nothing and is not answered.
    let ack = Seg {
        seq: 1001,
        ack: c.wrapping_add(1),
        flags: ACK,
        window: 502,
        opts: &[],
        ..base
    };
    for bad in [c.wrapping_add(2), c ^ 0x100, c ^ 0x8000_0000] {
        run(
            &mut pipe,
            &snap,
            "forged ACK",
            client(&Seg { ack: bad, ..ack }),
            Verdict::Drop(DropReason::SynProxyBadCookie),
            None,
        );
    }
    // The right cookie for another client sequence number (a SYN never seen) fails too.
    run(
        &mut pipe,
        &snap,
        "ACK of another ISN",
        client(&Seg { seq: 5001, ..ack }),
        Verdict::Drop(DropReason::SynProxyBadCookie),
        None,
    );
    assert_eq!(pipe.flows(), 0);
    assert_eq!(
        stats.drops[DropReason::SynProxyBadCookie as usize].load(Relaxed),
        4
    );

    // 3. The ACK with the cookie becomes the backend's SYN: the client's ISN, the kept MSS,
    // SACK permitted and the client's window scale; its window unscaled.
    let k = fam.mss_kept.to_be_bytes();
    let backend_syn = frame(
        LB_MAC,
        bm,
        fam.nat,
        fam.backend,
        &Seg {
            sport: nat_port,
            dport: bport,
            seq: 1000,
            ack: 0,
            flags: SYN,
            window: 64256,
            opts: &[2, 4, k[0], k[1], 1, 1, 4, 2, 1, 3, 3, 7],
            payload: &[],
        },
    );
    run(
        &mut pipe,
        &snap,
        "cookie ACK -> backend SYN",
        client(&ack),
        Verdict::Tx,
        Some(backend_syn),
    );
    assert_eq!(pipe.flows(), 1);
    assert_eq!(stats.syn_cookies_valid.load(Relaxed), 1);
    assert_eq!(stats.new_flows.load(Relaxed), count_before + 1);

    // 4. Client data before the backend answered: dropped (the client retransmits).
    let req = Seg {
        flags: ACK | PSH,
        payload: b"GET / HTTP/1.1\r\n\r\n",
        ..ack
    };
    run(
        &mut pipe,
        &snap,
        "data during the backend handshake",
        client(&req),
        Verdict::Drop(DropReason::SynProxyHandshake),
        None,
    );

    // 5. The backend's SYN-ACK (window scale 9) becomes a window update for the client
    // (whose data will complete the backend's handshake): 65160 bytes in units of 2^7.
    let bisn = 5_000_000u32;
    let from_backend = |s: &Seg<'_>| frame(bm, LB_MAC, fam.backend, fam.nat, s);
    let b_syn_ack = Seg {
        sport: bport,
        dport: nat_port,
        seq: bisn,
        ack: 1001,
        flags: SYN | ACK,
        window: 65160,
        opts: &[2, 4, 5, 180, 1, 1, 4, 2, 1, 3, 3, 9],
        payload: &[],
    };
    let update = frame(
        LB_MAC,
        CLIENT_MAC,
        fam.vip,
        fam.client,
        &Seg {
            sport: 80,
            dport: cport,
            seq: c.wrapping_add(1),
            ack: 1001,
            flags: ACK,
            window: 509,
            opts: &[],
            payload: &[],
        },
    );
    run(
        &mut pipe,
        &snap,
        "backend SYN-ACK -> window update to the client",
        from_backend(&b_syn_ack),
        Verdict::Tx,
        Some(update),
    );
    // The backend repeats its SYN-ACK (nothing from the client completed its handshake):
    // answered with the ACK.
    let our_ack = frame(
        LB_MAC,
        bm,
        fam.nat,
        fam.backend,
        &Seg {
            sport: nat_port,
            dport: bport,
            seq: 1001,
            ack: bisn + 1,
            flags: ACK,
            window: 511,
            opts: &[],
            payload: &[],
        },
    );
    run(
        &mut pipe,
        &snap,
        "repeated backend SYN-ACK -> ACK",
        from_backend(&b_syn_ack),
        Verdict::Tx,
        Some(our_ack),
    );

    // 6. The client's request (retransmitted): its acknowledgement gains the offset.
    let to_backend = |s: &Seg<'_>| frame(LB_MAC, bm, fam.nat, fam.backend, s);
    let fwd = Seg {
        sport: nat_port,
        dport: bport,
        ack: bisn + 1,
        ..req
    };
    run(
        &mut pipe,
        &snap,
        "client data, acknowledgement translated",
        client(&req),
        Verdict::Tx,
        Some(to_backend(&fwd)),
    );
    // A SACK block's edges gain it too.
    let edge = |o: u32| c.wrapping_add(1 + o).to_be_bytes();
    let (l, r) = (edge(100), edge(200));
    let sack = [1, 1, 5, 10, l[0], l[1], l[2], l[3], r[0], r[1], r[2], r[3]];
    let (bl, br) = ((bisn + 101).to_be_bytes(), (bisn + 201).to_be_bytes());
    let sack_out = [
        1, 1, 5, 10, bl[0], bl[1], bl[2], bl[3], br[0], br[1], br[2], br[3],
    ];
    let sacked = Seg {
        seq: 1019,
        flags: ACK,
        opts: &sack,
        payload: &[],
        ..ack
    };
    run(
        &mut pipe,
        &snap,
        "client SACK, edges translated",
        client(&sacked),
        Verdict::Tx,
        Some(to_backend(&Seg {
            sport: nat_port,
            dport: bport,
            ack: bisn + 1,
            opts: &sack_out,
            ..sacked
        })),
    );

    // 7. The backend's response: its sequence number loses the offset and its window
    // (scale 9) is rescaled to the proxy's 7 for the client.
    let resp = Seg {
        sport: bport,
        dport: nat_port,
        seq: bisn + 1,
        ack: 1019,
        flags: ACK | PSH,
        window: 1000,
        opts: &[],
        payload: b"HTTP/1.1 200 OK\r\n\r\n",
    };
    let to_client = frame(
        LB_MAC,
        CLIENT_MAC,
        fam.vip,
        fam.client,
        &Seg {
            sport: 80,
            dport: cport,
            seq: c.wrapping_add(1),
            window: 4000,
            ..resp
        },
    );
    run(
        &mut pipe,
        &snap,
        "backend data, sequence and window translated",
        from_backend(&resp),
        Verdict::Tx,
        Some(to_client),
    );
    assert_eq!(pipe.flows(), 1);
}

/// A client whose ACK was lost probes the zero window (sequence number one below its next,
/// no data): the probe's cookie is valid and opens the flow with the right ISN.
#[test]
fn zero_window_probe_opens_the_flow() {
    for fam in [v4(), v6()] {
        let snap = snapshot();
        let (mut pipe, _) = pipeline();
        let client = |s: &Seg<'_>| frame(CLIENT_MAC, LB_MAC, fam.client, fam.vip, s);
        let syn = bare_syn(40003, 900);
        let c = cookie_for(&mut pipe, &snap, &client(&syn));
        let probe = Seg {
            seq: 900,
            ack: c.wrapping_add(1),
            flags: ACK,
            ..syn
        };
        let mut b = VecBuf::new(&client(&probe));
        assert_eq!(pipe.process(&snap, &mut b, NOW), Verdict::Tx, "probe");
        let d = b.data();
        let t = d.len() - 24;
        assert_eq!(d[t + 13], SYN, "a SYN to the backend");
        assert_eq!(u32::from_be_bytes(d[t + 4..t + 8].try_into().unwrap()), 900);
        // With data, sequence number one below the ISN's next is no cookie's.
        let (mut pipe, _) = pipeline();
        let mut b = VecBuf::new(&client(&Seg {
            payload: b"x",
            ..probe
        }));
        assert_eq!(
            pipe.process(&snap, &mut b, NOW),
            Verdict::Drop(DropReason::SynProxyBadCookie)
        );
    }
}

#[test]
fn proxied_connection_ipv4() {
    proxied_connection(&v4(), 0);
}

#[test]
fn proxied_connection_ipv6() {
    proxied_connection(&v6(), 0);
}

/// A client that offers no options: the SYN-ACK offers only the MSS, the backend is offered
/// the smallest MSS and nothing else, and no window is rescaled (neither side scales).
#[test]
fn client_without_options() {
    let fam = v4();
    let snap = snapshot();
    let (mut pipe, _) = pipeline();
    let client = |s: &Seg<'_>| frame(CLIENT_MAC, LB_MAC, fam.client, fam.vip, s);
    let syn = Seg {
        sport: 40001,
        dport: 80,
        seq: 77,
        ack: 0,
        flags: SYN,
        window: 29200,
        opts: &[],
        payload: &[],
    };
    let data = CookieData {
        mss_index: 0,
        sack: false,
        wscale: None,
    };
    let c = syn_cookie(
        &KEY,
        NOW,
        SocketAddr::new(fam.client, 40001),
        SocketAddr::new(fam.vip, 80),
        77,
        data,
    )
    .unwrap();
    let want = frame(
        LB_MAC,
        CLIENT_MAC,
        fam.vip,
        fam.client,
        &Seg {
            sport: 80,
            dport: 40001,
            seq: c,
            ack: 78,
            flags: SYN | ACK,
            window: 0,
            opts: &[2, 4, 5, 180],
            payload: &[],
        },
    );
    run(
        &mut pipe,
        &snap,
        "bare SYN",
        client(&syn),
        Verdict::Tx,
        Some(want),
    );
    let ack = Seg {
        seq: 78,
        ack: c.wrapping_add(1),
        flags: ACK,
        window: 29200,
        ..syn
    };
    let to_backend = frame(
        LB_MAC,
        bmac(1),
        fam.nat,
        fam.backend,
        &Seg {
            sport: NAT_PORT_MIN,
            dport: 8080,
            seq: 77,
            ack: 0,
            flags: SYN,
            window: 29200,
            opts: &[2, 4, 2, 24],
            payload: &[],
        },
    );
    run(
        &mut pipe,
        &snap,
        "bare cookie ACK",
        client(&ack),
        Verdict::Tx,
        Some(to_backend),
    );
    let from_backend = |s: &Seg<'_>| frame(bmac(1), LB_MAC, fam.backend, fam.nat, s);
    let b = Seg {
        sport: 8080,
        dport: NAT_PORT_MIN,
        seq: 9,
        ack: 78,
        flags: SYN | ACK,
        window: 28960,
        opts: &[2, 4, 5, 180],
        payload: &[],
    };
    // The window update: the backend's bytes as they are (the client does not scale).
    let update = frame(
        LB_MAC,
        CLIENT_MAC,
        fam.vip,
        fam.client,
        &Seg {
            sport: 80,
            dport: 40001,
            seq: c.wrapping_add(1),
            ack: 78,
            flags: ACK,
            window: 28960,
            opts: &[],
            payload: &[],
        },
    );
    run(
        &mut pipe,
        &snap,
        "bare SYN-ACK",
        from_backend(&b),
        Verdict::Tx,
        Some(update),
    );
    // A window the backend sends reaches the client as it is.
    let resp = Seg {
        seq: 10,
        flags: ACK,
        window: 1234,
        payload: b"x",
        ..b
    };
    let want = frame(
        LB_MAC,
        CLIENT_MAC,
        fam.vip,
        fam.client,
        &Seg {
            sport: 80,
            dport: 40001,
            seq: c.wrapping_add(1),
            ..resp
        },
    );
    run(
        &mut pipe,
        &snap,
        "unscaled reply",
        from_backend(&resp),
        Verdict::Tx,
        Some(want),
    );
}

/// A backend that refuses the connection: its RST reaches the client at the sequence number
/// the client expects (the cookie's next), and the flow closes.
#[test]
fn backend_refusal_reaches_the_client() {
    for fam in [v4(), v6()] {
        let snap = snapshot();
        let (mut pipe, _) = pipeline();
        let bm = bmac(if fam.backend.is_ipv4() { 1 } else { 3 });
        let c = handshake_to_backend(&mut pipe, &snap, &fam, 40002, 500);
        let rst = Seg {
            sport: 8080,
            dport: NAT_PORT_MIN,
            seq: 0,
            ack: 501,
            flags: RST | ACK,
            window: 0,
            opts: &[],
            payload: &[],
        };
        let want = frame(
            LB_MAC,
            CLIENT_MAC,
            fam.vip,
            fam.client,
            &Seg {
                sport: 80,
                dport: 40002,
                seq: c.wrapping_add(1),
                ..rst
            },
        );
        run(
            &mut pipe,
            &snap,
            "backend RST",
            frame(bm, LB_MAC, fam.backend, fam.nat, &rst),
            Verdict::Tx,
            Some(want),
        );
    }
}

/// A backend's FIN before its SYN-ACK is dropped and leaves the flow's reverse entry in the
/// forward entry's state: both expire together (found by `fuzz/run flows`:
/// the FIN moved the reverse entry to closing, 60 s, while the forward entry still awaited
/// the SYN-ACK, 5 s).
#[test]
fn backend_fin_during_handshake_keeps_the_nat_halves_together() {
    for fam in [v4(), v6()] {
        let snap = snapshot();
        let (mut pipe, _) = pipeline();
        let bm = bmac(if fam.backend.is_ipv4() { 1 } else { 3 });
        handshake_to_backend(&mut pipe, &snap, &fam, 40003, 700);
        let fin = Seg {
            sport: 8080,
            dport: NAT_PORT_MIN,
            seq: 9000,
            ack: 701,
            flags: FIN | ACK,
            window: 1000,
            opts: &[],
            payload: &[],
        };
        run(
            &mut pipe,
            &snap,
            "backend FIN in the handshake",
            frame(bm, LB_MAC, fam.backend, fam.nat, &fin),
            Verdict::Drop(DropReason::SynProxyHandshake),
            None,
        );
        // Both halves expire together, within twice the forward entry's SYN timeout (a
        // closing reverse entry would live 60 s).
        let t = Timeouts::default();
        assert!(2 * t.tcp_syn_ms < t.tcp_closing_ms);
        assert_eq!(
            pipe.expire(NOW + 2 * t.tcp_syn_ms, usize::MAX),
            2,
            "forward and reverse"
        );
        assert_eq!(pipe.flows(), 0);
    }
}

/// A repeated SYN-ACK of the backend with FIN set is answered with our ACK and closes both
/// halves of the flow together (found by `fuzz/run flows`: it moved the reverse entry to
/// closing, 60 s, and left the forward entry established, which then outlived it).
#[test]
fn repeated_syn_ack_with_fin_closes_both_halves() {
    let snap = snapshot();
    let (mut pipe, _) = pipeline();
    let (_, resp) = proxied_handshake(&mut pipe, &snap);
    // The backend's SYN-ACK again (its ISN, to the flow's NAT port), with FIN.
    let fam = v4();
    let nat_port = u16::from_be_bytes([resp[36], resp[37]]);
    let again = frame(
        bmac(1),
        LB_MAC,
        fam.backend,
        fam.nat,
        &Seg {
            sport: 8080,
            dport: nat_port,
            seq: 5_000_000,
            ack: 1001,
            flags: SYN | ACK | FIN,
            window: 65160,
            opts: &[],
            payload: &[],
        },
    );
    let (v, _) = through(&mut pipe, &snap, &again, NOW);
    assert_eq!(v, Verdict::Tx, "our ACK to the repeated SYN-ACK");
    let to = Timeouts::default();
    assert!(2 * to.tcp_closing_ms < to.tcp_established_ms);
    assert_eq!(
        pipe.expire(NOW + 2 * to.tcp_closing_ms, usize::MAX),
        2,
        "forward and reverse expire together"
    );
    assert_eq!(pipe.flows(), 0);
}

/// Without the proxy, an ACK of no flow is still answered with a RST (nothing changed for
/// other frontends), and a proxied frontend's SYN takes no NAT port from later flows.
#[test]
fn unproxied_frontends_unchanged() {
    let mut s = snapshot();
    let fe: Vec<_> = s
        .frontends()
        .map(|f| {
            let mut f = f.clone();
            f.syn_proxy = SynProxy::Off;
            f
        })
        .collect();
    s = Snapshot::new(
        2,
        42,
        fe,
        vec![backend(1, "10.0.1.1", 8080), backend(3, "fd00:1::1", 8080)],
        local(),
        1024,
    )
    .unwrap();
    let (mut pipe, stats) = pipeline();
    let fam = v4();
    let ack = frame(
        CLIENT_MAC,
        LB_MAC,
        fam.client,
        fam.vip,
        &Seg {
            sport: 1,
            dport: 80,
            seq: 1,
            ack: 1,
            flags: ACK,
            window: 1,
            opts: &[],
            payload: &[],
        },
    );
    let mut b = VecBuf::new(&ack);
    assert_eq!(pipe.process(&s, &mut b, NOW), Verdict::Tx);
    assert_eq!(stats.tcp_resets.load(Relaxed), 1);
    assert_eq!(stats.syn_cookies_sent.load(Relaxed), 0);
}

/// The golden snapshot with both frontends `auto` at `threshold`, and a pipeline that knows
/// it (tables of `slots` slots per family).
fn auto_setup(threshold: u32, slots: usize) -> (Snapshot, Pipeline, Arc<WorkerStats>) {
    let s = snapshot();
    let fe: Vec<_> = s
        .frontends()
        .map(|f| {
            let mut f = f.clone();
            f.syn_proxy = SynProxy::Auto { threshold };
            f
        })
        .collect();
    let snap = Snapshot::new(
        2,
        42,
        fe,
        vec![backend(1, "10.0.1.1", 8080), backend(3, "fd00:1::1", 8080)],
        local(),
        1024,
    )
    .unwrap();
    let stats = Arc::new(WorkerStats::new(16));
    let mut cfg = PipelineConfig {
        syn_cookie_key: KEY,
        ..PipelineConfig::default()
    };
    cfg.conntrack.capacity = slots;
    cfg.conntrack_v6_capacity = slots;
    cfg.affinity_capacity = 1 << 10;
    let mut pipe = Pipeline::new(&cfg, stats.clone());
    pipe.install_snapshot(&snap);
    (snap, pipe, stats)
}

/// The client's IPv4 SYN from `sport` (ISN `seq`), processed at `now`: whether it went to
/// the backend (`true`) or was answered with a cookie SYN-ACK (`false`).
fn syn_forwarded(pipe: &mut Pipeline, snap: &Snapshot, sport: u16, seq: u32, now: u32) -> bool {
    syn_forwarded_in(&v4(), pipe, snap, sport, seq, now)
}

/// [`syn_forwarded`] of family `fam`.
fn syn_forwarded_in(
    fam: &Fam,
    pipe: &mut Pipeline,
    snap: &Snapshot,
    sport: u16,
    seq: u32,
    now: u32,
) -> bool {
    let f = frame(
        CLIENT_MAC,
        LB_MAC,
        fam.client,
        fam.vip,
        &bare_syn(sport, seq),
    );
    let mut b = VecBuf::new(&f);
    assert_eq!(
        pipe.process(snap, &mut b, now),
        Verdict::Tx,
        "SYN from {sport}"
    );
    let to = &b.data()[0..6];
    if to == bmac(1) || to == bmac(3) {
        return true;
    }
    assert_eq!(
        to, CLIENT_MAC,
        "SYN from {sport}: neither forwarded nor answered"
    );
    let d = b.data();
    assert_eq!(d[d.len() - 24 + 13], SYN | ACK, "a SYN-ACK");
    false
}

/// Ticks the pipeline (expiry, the SYN proxy's census and windows) every millisecond of
/// `from..to`.
fn ticks(pipe: &mut Pipeline, snap: &Snapshot, from: u32, to: u32) {
    for t in from..to {
        pipe.expire(t, 64);
        pipe.syn_proxy_tick(snap, t);
    }
}

/// `auto`: below the threshold SYNs go to the backend and open embryonic flows; at it the
/// tick engages the proxy and the next SYNs (a flood) get cookies and store nothing; once
/// the flood's flows expired and its cookie windows passed, the proxy disengages, and an
/// ACK with a cookie issued while it was engaged still opens its connection.
#[test]
fn auto_engages_past_threshold_and_honours_cookies_after() {
    let (snap, mut pipe, stats) = auto_setup(8, 1 << 10);
    let mut now = NOW;
    for port in 1000..1007 {
        assert!(
            syn_forwarded(&mut pipe, &snap, port, 1, now),
            "below the threshold"
        );
    }
    ticks(&mut pipe, &snap, now, now + 2);
    now += 2;
    assert_eq!(pipe.syn_proxy_pressure(0), 7);
    assert!(!pipe.syn_proxy_engaged(0));
    assert_eq!(pipe.flows(), 7);
    // One handshake completes: no longer embryonic.
    let fam = v4();
    let ack = Seg {
        seq: 2,
        ack: 1,
        flags: ACK,
        ..bare_syn(1000, 1)
    };
    let f = frame(CLIENT_MAC, LB_MAC, fam.client, fam.vip, &ack);
    assert_eq!(pipe.process(&snap, &mut VecBuf::new(&f), now), Verdict::Tx);
    ticks(&mut pipe, &snap, now, now + 1);
    assert_eq!(pipe.syn_proxy_pressure(0), 6);
    for port in 1007..1009 {
        assert!(syn_forwarded(&mut pipe, &snap, port, 1, now));
    }
    ticks(&mut pipe, &snap, now, now + 1);
    now += 1;
    assert!(pipe.syn_proxy_engaged(0), "8 embryonic flows engage it");
    assert_eq!(stats.syn_proxy_engaged.load(Relaxed), 1);
    assert_eq!(stats.syn_proxy_engagements.load(Relaxed), 1);
    // Per frontend too: frontend 0 is engaged, frontend 4 is not.
    assert_eq!(stats.frontends[0].syn_proxy_engaged.load(Relaxed), 1);
    assert_eq!(stats.frontends[4].syn_proxy_engaged.load(Relaxed), 0);
    assert!(
        !pipe.syn_proxy_engaged(4),
        "the other frontend is not under pressure"
    );
    // The flood: cookies, no entries.
    for port in 2000..2100 {
        assert!(!syn_forwarded(&mut pipe, &snap, port, 7, now), "engaged");
    }
    assert_eq!(pipe.flows(), 9);
    assert_eq!(stats.syn_cookies_sent.load(Relaxed), 100);
    assert_eq!(stats.frontends[0].syn_cookies_sent.load(Relaxed), 100);
    // A real client among the flood keeps its cookie SYN-ACK's cookie.
    let issued = now;
    let c = syn_cookie(
        &KEY,
        issued,
        SocketAddr::new(fam.client, 3000),
        SocketAddr::new(fam.vip, 80),
        41,
        CookieData::of_cookie(0),
    )
    .unwrap();
    assert!(!syn_forwarded(&mut pipe, &snap, 3000, 41, now));
    // The flood stops; its embryonic flows expire (5 s) and its cookies leave the two
    // 5-second windows: the proxy disengages.
    ticks(&mut pipe, &snap, now, now + 9_000);
    now += 9_000;
    assert!(pipe.syn_proxy_engaged(0), "the flood's cookies still count");
    ticks(&mut pipe, &snap, now, now + 3_000);
    now += 3_000;
    assert!(
        !pipe.syn_proxy_engaged(0),
        "pressure {}",
        pipe.syn_proxy_pressure(0)
    );
    assert_eq!(stats.syn_proxy_engaged.load(Relaxed), 0);
    assert_eq!(stats.frontends[0].syn_proxy_engaged.load(Relaxed), 0);
    assert_eq!(pipe.embryonic_flows(&snap, 0, now), 0);
    // The cookie ACK of the handshake begun while engaged opens a backend connection.
    let ack = Seg {
        seq: 42,
        ack: c.wrapping_add(1),
        flags: ACK,
        ..bare_syn(3000, 41)
    };
    let f = frame(CLIENT_MAC, LB_MAC, fam.client, fam.vip, &ack);
    let mut b = VecBuf::new(&f);
    assert_eq!(pipe.process(&snap, &mut b, now), Verdict::Tx);
    assert_eq!(&b.data()[0..6], bmac(1), "the backend's SYN");
    assert_eq!(b.data()[14 + 20 + 13], SYN);
    assert_eq!(stats.syn_cookies_valid.load(Relaxed), 1);
    // And new SYNs go to the backend again.
    assert!(syn_forwarded(&mut pipe, &snap, 4000, 1, now));
}

/// The embryonic count cannot drift: after any mix of SYNs, completed and reset handshakes,
/// retransmissions, evictions from a full table and expiries, one census with no traffic
/// leaves the pressure equal to the embryonic flows in the table, exactly; between censuses
/// it is off by at most what happened since the last one.
#[test]
fn auto_embryonic_count_does_not_drift() {
    // A small table (evictions) and a threshold never reached (no cookies).
    let (snap, mut pipe, _) = auto_setup(1 << 30, 256);
    let fam = v4();
    let mut now = NOW;
    let mut x = 7u64;
    let mut rnd = |n: u64| {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (x >> 33) % n
    };
    let full_census = 2 * 256 / CENSUS_SLOTS_PER_TICK as u32 + 2;
    let (mut base, mut max) = (0, 0);
    for round in 0..40 {
        let mut ops = 0u32;
        for _ in 0..rnd(400) {
            let port = 1000 + rnd(600) as u16;
            let seg = match rnd(10) {
                0..=4 => bare_syn(port, 1),
                5..=6 => Seg {
                    seq: 2,
                    ack: 1,
                    flags: ACK,
                    ..bare_syn(port, 1)
                },
                7 => Seg {
                    seq: 2,
                    ack: 1,
                    flags: RST | ACK,
                    ..bare_syn(port, 1)
                },
                8 => Seg {
                    seq: 2,
                    ack: 1,
                    flags: FIN | ACK,
                    ..bare_syn(port, 1)
                },
                _ => {
                    now += rnd(2_000) as u32;
                    pipe.expire(now, rnd(64) as usize);
                    continue;
                }
            };
            let f = frame(CLIENT_MAC, LB_MAC, fam.client, fam.vip, &seg);
            pipe.process(&snap, &mut VecBuf::new(&f), now);
            ops += 1;
        }
        // Between censuses only what left unseen (expired, evicted) is still counted.
        let exact = pipe.embryonic_flows(&snap, 0, now);
        let p = pipe.syn_proxy_pressure(0);
        assert!(
            exact <= p && p <= base + ops,
            "round {round}: pressure {p}, exact {exact}, {base} at the census, {ops} packets since"
        );
        ticks(&mut pipe, &snap, now, now + full_census);
        now += full_census;
        let exact = pipe.embryonic_flows(&snap, 0, now);
        assert_eq!(pipe.syn_proxy_pressure(0), exact, "round {round}");
        assert!(!pipe.syn_proxy_engaged(0));
        base = exact;
        max = max.max(exact);
    }
    assert!(max > 20, "the rounds held embryonic flows: {max}");
    // Everything expires: nothing is left over.
    ticks(&mut pipe, &snap, now + 400_000, now + 400_000 + full_census);
    assert_eq!(pipe.syn_proxy_pressure(0), 0);
}

/// The census counts the IPv6 table too when the IPv4 one is smaller than a census piece
/// (or not a multiple of it): the piece that crosses from one table into the other reads
/// both. It read only the IPv4 slots there, so every census set an IPv6 `auto` frontend's
/// count to 0, and with 256 slots per table its embryonic flows never engaged the proxy.
#[test]
fn auto_census_counts_ipv6_in_small_tables() {
    let slots = 256;
    assert!(slots < CENSUS_SLOTS_PER_TICK);
    let (snap, mut pipe, _) = auto_setup(4, slots);
    let fam = v6();
    let now = NOW;
    for port in 1000..1004 {
        assert!(syn_forwarded_in(&fam, &mut pipe, &snap, port, 1, now));
    }
    assert_eq!(pipe.embryonic_flows(&snap, 4, now), 4);
    // One tick is a whole census of both 256-slot tables.
    ticks(&mut pipe, &snap, now, now + 1);
    assert_eq!(pipe.syn_proxy_pressure(4), 4, "after a census");
    assert!(
        pipe.syn_proxy_engaged(4),
        "4 embryonic IPv6 flows engage it"
    );
    assert!(!syn_forwarded_in(&fam, &mut pipe, &snap, 2000, 1, now + 1));
    ticks(&mut pipe, &snap, now + 1, now + 3);
    assert_eq!(pipe.syn_proxy_pressure(4), 5, "the census and the cookie");
}

/// An `auto` frontend, no longer engaged, forwards a SYN from the client port of a proxied
/// connection, established or closing: the new connection is not proxied (the backend chose
/// its own ISN for the client), so the backend's SYN-ACK reaches the client as a plain NAT
/// reply. The entry used to be kept with its proxy flag, so the SYN-ACK was taken for a
/// repeated one and answered to the backend, and the backend's segments were shifted by the
/// old offset (found by the `flows` fuzzer once its IPv6 `auto` frontend could engage).
#[test]
fn a_forwarded_syn_on_a_proxied_flow_is_not_proxied() {
    for closing in [false, true] {
        forwarded_syn_on_a_proxied_flow(closing);
    }
}

fn forwarded_syn_on_a_proxied_flow(closing: bool) {
    let (snap, mut pipe, _) = auto_setup(2, 1 << 12);
    let fam = v4();
    for port in [1000, 1001] {
        assert!(syn_forwarded(&mut pipe, &snap, port, 1, NOW));
    }
    ticks(&mut pipe, &snap, NOW, NOW + 1);
    assert!(pipe.syn_proxy_engaged(0));
    proxied_handshake(&mut pipe, &snap);
    // The two forwarded handshakes complete; the cookie came back: no pressure left.
    for port in [1000, 1001] {
        let ack = Seg {
            seq: 2,
            ack: 1,
            flags: ACK,
            ..bare_syn(port, 1)
        };
        let f = frame(CLIENT_MAC, LB_MAC, fam.client, fam.vip, &ack);
        assert_eq!(
            pipe.process(&snap, &mut VecBuf::new(&f), NOW + 1),
            Verdict::Tx
        );
    }
    ticks(&mut pipe, &snap, NOW + 1, NOW + 2);
    assert!(!pipe.syn_proxy_engaged(0), "disengaged");
    let client = |s: &Seg<'_>| frame(CLIENT_MAC, LB_MAC, fam.client, fam.vip, s);
    if closing {
        let fin = Seg {
            seq: 1001,
            ack: handshake_cookie().wrapping_add(1),
            flags: FIN | ACK,
            window: 502,
            ..bare_syn(6000, 0)
        };
        let (v, _) = through(&mut pipe, &snap, &client(&fin), NOW + 2);
        assert_eq!(v, Verdict::Tx, "the client's FIN");
    }
    // A new connection from the same port: forwarded as it is.
    let (v, out) = through(&mut pipe, &snap, &client(&bare_syn(6000, 9000)), NOW + 3);
    assert_eq!(
        (v, &out[0..6]),
        (Verdict::Tx, &bmac(1)[..]),
        "the SYN forwarded (closing {closing})"
    );
    assert_eq!(u32::from_be_bytes(out[38..42].try_into().unwrap()), 9000);
    let nat_port = u16::from_be_bytes([out[34], out[35]]);
    let syn_ack = Seg {
        sport: 8080,
        dport: nat_port,
        seq: 7_000_000,
        ack: 9001,
        flags: SYN | ACK,
        window: 65160,
        opts: &[],
        payload: &[],
    };
    let f = frame(bmac(1), LB_MAC, fam.backend, fam.nat, &syn_ack);
    let (v, out) = through(&mut pipe, &snap, &f, NOW + 3);
    assert_eq!(
        (v, &out[0..6]),
        (Verdict::Tx, &CLIENT_MAC[..]),
        "the backend's SYN-ACK goes to the client (closing {closing})"
    );
    assert_eq!(out[47], SYN | ACK);
    assert_eq!(
        u32::from_be_bytes(out[38..42].try_into().unwrap()),
        7_000_000
    );
    assert_eq!(u32::from_be_bytes(out[42..46].try_into().unwrap()), 9001);
}

/// Two hosts (pipelines) with the same cookie key, as a configured secret gives them (the
/// control plane derives it: `config::cookie_key_of`): a SYN answered by one and its ACK
/// landing on the other (an ECMP change, a failover, a restart) opens the connection there;
/// with another key (a random one per start) the ACK is refused.
#[test]
fn a_cookie_from_another_host_with_the_same_key_is_honoured() {
    let snap = snapshot();
    let (mut a, _) = pipeline();
    let (mut b, stats_b) = pipeline();
    let fam = v4();
    let syn = frame(
        CLIENT_MAC,
        LB_MAC,
        fam.client,
        fam.vip,
        &bare_syn(5555, 900),
    );
    let c = cookie_for(&mut a, &snap, &syn);
    let ack = Seg {
        seq: 901,
        ack: c.wrapping_add(1),
        flags: ACK,
        ..bare_syn(5555, 900)
    };
    let f = frame(CLIENT_MAC, LB_MAC, fam.client, fam.vip, &ack);
    let mut buf = VecBuf::new(&f);
    assert_eq!(b.process(&snap, &mut buf, NOW + 1_000), Verdict::Tx);
    assert_eq!(
        &buf.data()[0..6],
        bmac(1),
        "the backend's SYN, from the other host"
    );
    assert_eq!(stats_b.syn_cookies_valid.load(Relaxed), 1);
    let mut cfg = PipelineConfig {
        syn_cookie_key: CookieKey([7, 8]),
        ..PipelineConfig::default()
    };
    cfg.conntrack.capacity = 1 << 12;
    cfg.conntrack_v6_capacity = 1 << 12;
    cfg.affinity_capacity = 1 << 10;
    let mut other = Pipeline::new(&cfg, Arc::new(WorkerStats::new(16)));
    assert_eq!(
        other.process(&snap, &mut VecBuf::new(&f), NOW + 1_000),
        Verdict::Drop(DropReason::SynProxyBadCookie)
    );
}

/// Runs one frame through `pipe` at `now`: the verdict and the frame after it.
fn through(pipe: &mut Pipeline, snap: &Snapshot, f: &[u8], now: u32) -> (Verdict, Vec<u8>) {
    let mut b = VecBuf::new(f);
    let v = pipe.process(snap, &mut b, now);
    (v, b.data().to_vec())
}

/// A proxied IPv4 connection through its handshake on `pipe` (the client at port 6000, ISN
/// 1000; the backend at ISN 5,000,000 with window scale 9): the frames of the client's and
/// the backend's next segments, whose outputs show the translation.
fn proxied_handshake(pipe: &mut Pipeline, snap: &Snapshot) -> (Vec<u8>, Vec<u8>) {
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
        seq: 1001,
        ack: c.wrapping_add(1),
        flags: ACK,
        window: 502,
        opts: &[],
        ..syn
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

/// A proxied flow saved at stop (its sequence offset and the backend's window scale with it)
/// and restored by the next process translates both directions exactly as the process that
/// opened it: the client's acknowledgement gains the offset, the backend's sequence number
/// loses it and its window is rescaled.
#[test]
fn a_restored_proxied_flow_translates_as_before() {
    let snap = snapshot();
    let (mut a, _) = pipeline();
    let (req, resp) = proxied_handshake(&mut a, &snap);
    let mut saved = Vec::new();
    a.export_flows(&snap, NOW, &mut saved);
    assert_eq!(saved.len(), 1, "the proxied flow is saved");
    let p = saved[0].proxy.expect("with the proxy's state");
    assert_eq!(
        (p.seq, p.backend_wscale, p.handshake),
        (5_000_000u32.wrapping_sub(handshake_cookie()), 9, false)
    );
    let restore: Vec<_> = saved.iter().map(|f| f.resolve(&snap).unwrap()).collect();
    let (mut b, _) = pipeline();
    assert_eq!(b.restore_flows(&snap, &restore, NOW), 1);
    for (what, f) in [("client data", &req), ("backend response", &resp)] {
        let (va, oa) = through(&mut a, &snap, f, NOW + 10);
        let (vb, ob) = through(&mut b, &snap, f, NOW + 10);
        assert_eq!(va, Verdict::Tx, "{what}");
        assert_checksums_valid(&oa);
        assert_eq!(
            (vb, ob),
            (va, oa),
            "{what}: restored flow, same translation"
        );
    }
    // What the translation is: the backend's numbers on its side, the cookie's on the
    // client's.
    let at = |f: &[u8], o: usize| u32::from_be_bytes(f[o..o + 4].try_into().unwrap());
    let (_, to_backend) = through(&mut b, &snap, &req, NOW + 20);
    assert_eq!(
        at(&to_backend, 42),
        5_000_001,
        "the client's ACK gains the offset"
    );
    let (_, to_client) = through(&mut b, &snap, &resp, NOW + 20);
    assert_eq!(at(&to_client, 38), handshake_cookie().wrapping_add(1));
}

/// The cookie the client of [`proxied_handshake`] is answered with.
fn handshake_cookie() -> u32 {
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

/// A proxied flow is published to the peers once its backend answered, with its offset; a
/// peer that installs it and then gets the flow's packets (a failover) translates them as
/// the origin did.
#[test]
fn a_synced_proxied_flow_translates_on_the_peer() {
    let snap = snapshot();
    let (mut a, _) = pipeline();
    let (tx, rx) = crossbeam_channel::bounded(16);
    a.set_sync(Some(tx));
    let (req, resp) = proxied_handshake(&mut a, &snap);
    let published: Vec<_> = rx.try_iter().collect();
    assert_eq!(published.len(), 1, "published when established");
    assert!(published[0].proxy.is_some_and(|p| !p.handshake));
    let (mut b, stats_b) = pipeline();
    assert_eq!(b.install_synced(&snap, &published, NOW), 1);
    for (what, f) in [("client data", &req), ("backend response", &resp)] {
        let (va, oa) = through(&mut a, &snap, f, NOW + 10);
        let (vb, ob) = through(&mut b, &snap, f, NOW + 10);
        assert_eq!(va, Verdict::Tx, "{what}");
        assert_eq!((vb, ob), (va, oa), "{what}: the peer translates alike");
    }
    assert_eq!(stats_b.sync_adopted.load(Relaxed), 1);
}

/// An ICMP "fragmentation needed" on the client's path quotes a proxied flow's segment as
/// the client saw it (VIP -> client, the cookie's sequence numbers): the backend gets it
/// quoting its own segment (backend -> NAT address, its own sequence number).
#[test]
fn an_icmp_error_quoting_a_proxied_flow_has_its_sequence_translated() {
    let snap = snapshot();
    let (mut pipe, stats) = pipeline();
    proxied_handshake(&mut pipe, &snap);
    let fam = v4();
    let seg = Seg {
        sport: 80,
        dport: 6000,
        seq: handshake_cookie().wrapping_add(1),
        ack: 1019,
        flags: ACK | PSH,
        window: 200,
        opts: &[],
        payload: &[0x55; 64],
    };
    let sent = frame(LB_MAC, CLIENT_MAC, fam.vip, fam.client, &seg);
    let mut err = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4([10, 9, 0, 254], [192, 0, 2, 1], 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut err, &sent[14..14 + 20 + 28])
        .unwrap();
    let (v, out) = through(&mut pipe, &snap, &err, NOW + 10);
    assert_eq!(v, Verdict::Tx);
    assert_eq!(stats.icmp_errors_forwarded.load(Relaxed), 1);
    assert_eq!(&out[0..6], bmac(1), "to the backend");
    assert_checksums_valid(&out);
    // Ethernet, IPv4, ICMP (8), then the quoted IPv4 header and TCP.
    let q = 14 + 20 + 8;
    let quoted_tcp = q + 20;
    assert_eq!(&out[q + 12..q + 16], &[10, 0, 1, 1], "from the backend");
    assert_eq!(&out[q + 16..q + 20], &[10, 0, 0, 3], "to the NAT address");
    assert_eq!(
        u16::from_be_bytes([out[quoted_tcp], out[quoted_tcp + 1]]),
        8080
    );
    let seq = u32::from_be_bytes(out[quoted_tcp + 4..quoted_tcp + 8].try_into().unwrap());
    assert_eq!(seq, 5_000_001, "the backend's own sequence number");
}
