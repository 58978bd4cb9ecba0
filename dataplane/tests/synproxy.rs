//! Golden packets of the SYN proxy (`pipeline/synproxy.rs`), IPv4 and IPv6 through one path:
//! the cookie SYN-ACK, a forged ACK dropped, the backend's SYN, client data held back during
//! the backend's handshake, the ACK that completes it, and the sequence (and SACK, window)
//! translation of both directions afterwards. Expected frames are built with etherparse,
//! which computes every checksum from scratch.
mod common;
mod synproxy_support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use common::*;
use sluice_dataplane::conntrack::Timeouts;
use sluice_dataplane::pipeline::{
    syn_cookie, CookieData, CookieKey, PacketBuf, Pipeline, PipelineConfig, VecBuf, Verdict,
};
use sluice_dataplane::snapshot::{Snapshot, SynProxy};
use sluice_dataplane::stats::{DropReason, WorkerStats};
use synproxy_support::*;
// Named, so that they win over common's helpers of the same names.
use synproxy_support::{pipeline, run, snapshot, v4, v6};

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
        window: 502,
        opts: &[],
        ..cookie_ack(base, c)
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
    let ack = cookie_ack(bare_syn(5555, 900), c);
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
