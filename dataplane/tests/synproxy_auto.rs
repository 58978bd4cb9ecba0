//! The SYN proxy's `auto` mode (`pipeline/synauto.rs`): it engages past its threshold of
//! embryonic flows and honours cookies after, its count does not drift, it counts IPv6 in
//! small tables, and a SYN it forwards on a proxied flow's 5-tuple opens a flow of its own.
mod common;
mod synproxy_support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use common::*;
use sluice_dataplane::pipeline::{
    syn_cookie, CookieData, PacketBuf, Pipeline, PipelineConfig, VecBuf, Verdict,
    CENSUS_SLOTS_PER_TICK,
};
use sluice_dataplane::snapshot::{Snapshot, SynProxy};
use sluice_dataplane::stats::WorkerStats;

use synproxy_support::*;
// Named, so that they win over common's helpers of the same names.
use synproxy_support::{snapshot, v4, v6};

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
    let ack = cookie_ack(bare_syn(3000, 41), c);
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
