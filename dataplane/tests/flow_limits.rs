//! New-flow budgets: a frontend's token bucket drops the new flows above it and counts them
//! while its established flows keep forwarding; buckets refill with the worker's clock; source
//! prefixes have buckets of their own, so one prefix cannot spend another's; IPv4 and IPv6 go
//! through the same code; a new snapshot's limit applies at once.
mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use common::*;
use sluice_dataplane::pipeline::{Pipeline, PipelineConfig, SourceLimitConfig, Verdict};
use sluice_dataplane::snapshot::{FlowLimit, Frontend, Method, Protocol, Snapshot};
use sluice_dataplane::stats::{DropReason, WorkerStats};

const VIP4: [u8; 4] = [192, 0, 2, 1];
const VIP4_DSR: [u8; 4] = [192, 0, 2, 2];

fn vip6() -> [u8; 16] {
    v6("2001:db8::1")
}

/// Frontends 0 (IPv4 TCP nat), 1 (IPv4 UDP nat), 2 (IPv4 TCP dsr-l2, never limited) and 4
/// (IPv6 TCP nat), each of the first three and the last with `vip` and `source` as limits.
fn limited(generation: u64, vip: Option<FlowLimit>, source: Option<FlowLimit>) -> Snapshot {
    let lim = |mut f: Frontend| {
        f.flow_limit = vip;
        f.source_flow_limit = source;
        f
    };
    Snapshot::new(
        generation,
        42,
        vec![
            lim(frontend(
                0,
                "192.0.2.1",
                80,
                Protocol::Tcp,
                Method::Nat,
                vec![1],
            )),
            lim(frontend(
                1,
                "192.0.2.1",
                53,
                Protocol::Udp,
                Method::Nat,
                vec![2],
            )),
            frontend(2, "192.0.2.2", 80, Protocol::Tcp, Method::DsrL2, vec![1]),
            lim(frontend(
                4,
                "2001:db8::1",
                80,
                Protocol::Tcp,
                Method::Nat,
                vec![3],
            )),
        ],
        vec![
            backend(1, "10.0.1.1", 8080),
            backend(2, "10.0.1.2", 8080),
            backend(3, "fd00:1::1", 8080),
        ],
        local(),
        1024,
    )
    .unwrap()
}

fn limit(rate: u32, burst: u32) -> Option<FlowLimit> {
    Some(FlowLimit { rate, burst })
}

fn pipe_with(source_limits: SourceLimitConfig) -> (Pipeline, Arc<WorkerStats>) {
    let stats = Arc::new(WorkerStats::new(1024));
    let cfg = PipelineConfig {
        conntrack_v6_capacity: 1 << 12,
        affinity_capacity: 64,
        source_limits,
        ..PipelineConfig::default()
    };
    (Pipeline::new(&cfg, stats.clone()), stats)
}

/// A new connection's SYN, or a segment of an open one, from client number `c` (IPv4: 10.9.x.y;
/// IPv6: fd00:9::x:y, each in a /24 or /64 of its own every 256 clients).
fn seg(v6: bool, c: u16, syn: bool) -> Vec<u8> {
    let sport = 40000 + c;
    if v6 {
        let mut src = CLIENT6;
        src[7] = (c >> 8) as u8;
        src[15] = c as u8;
        tcp6(src, vip6(), sport, 80, syn, b"x")
    } else {
        tcp4(
            [10, 9, (c >> 8) as u8, c as u8],
            VIP4,
            sport,
            80,
            syn,
            !syn,
            b"x",
        )
    }
}

/// Runs the frames and counts the verdicts: transmitted, dropped for `reason`.
fn count(
    pipe: &mut Pipeline,
    snap: &Snapshot,
    frames: Vec<Vec<u8>>,
    now: u32,
    r: DropReason,
) -> (usize, usize) {
    let (mut tx, mut dropped) = (0, 0);
    for f in frames {
        match run(pipe, snap, f, now).0 {
            Verdict::Tx => tx += 1,
            Verdict::Drop(d) if d == r => dropped += 1,
            v => panic!("unexpected verdict {v:?}"),
        }
    }
    (tx, dropped)
}

#[test]
fn a_burst_above_the_vip_budget_is_dropped_while_established_flows_forward() {
    for v6 in [false, true] {
        let snap = limited(1, limit(10, 5), None);
        let (mut pipe, stats) = pipe_with(SourceLimitConfig::default());
        let syns = (0..20).map(|c| seg(v6, c, true)).collect();
        let (tx, dropped) = count(&mut pipe, &snap, syns, 1000, DropReason::VipFlowLimit);
        assert_eq!((tx, dropped), (5, 15), "v6 {v6}");
        assert_eq!(stats.drops_of(DropReason::VipFlowLimit), 15);
        assert_eq!(stats.drops_of(DropReason::SourceFlowLimit), 0);
        // The five admitted flows keep forwarding with the bucket empty, many times over.
        for _ in 0..10 {
            let segs = (0..5).map(|c| seg(v6, c, false)).collect();
            assert_eq!(
                count(&mut pipe, &snap, segs, 1000, DropReason::VipFlowLimit),
                (5, 0)
            );
        }
        // A retransmitted SYN of a refused flow is still a new flow: refused.
        assert_eq!(
            run(&mut pipe, &snap, seg(v6, 7, true), 1000).0,
            Verdict::Drop(DropReason::VipFlowLimit)
        );
        // Another frontend, without a limit, is not affected.
        let dsr = tcp4([10, 9, 0, 99], VIP4_DSR, 999, 80, true, false, &[]);
        assert_eq!(run(&mut pipe, &snap, dsr, 1000).0, Verdict::Tx);
        assert_eq!(stats.drops_of(DropReason::VipFlowLimit), 16);
        // Counted for the frontend that refused them, too.
        let fe = &stats.frontends[if v6 { 4 } else { 0 }];
        assert_eq!(fe.limited_vip.load(Relaxed), 16);
        assert_eq!(fe.limited_source.load(Relaxed), 0);
        assert_eq!(stats.frontends[2].limited_vip.load(Relaxed), 0);
    }
    // UDP: the first datagram of a flow is the new flow; the later ones are not limited.
    let snap = limited(1, limit(1, 2), None);
    let (mut pipe, stats) = pipe_with(SourceLimitConfig::default());
    let dgram = |c: u8| udp4([10, 9, 0, c], VIP4, 5000, 53, b"q");
    let firsts = (0..4).map(dgram).collect();
    assert_eq!(
        count(&mut pipe, &snap, firsts, 1000, DropReason::VipFlowLimit),
        (2, 2)
    );
    let again = (0..2).flat_map(|c| [dgram(c), dgram(c)]).collect();
    assert_eq!(
        count(&mut pipe, &snap, again, 1000, DropReason::VipFlowLimit),
        (4, 0)
    );
    assert_eq!(stats.drops_of(DropReason::VipFlowLimit), 2);
}

#[test]
fn the_bucket_refills_with_the_clock() {
    for v6 in [false, true] {
        // 10 flows a second: one every 100 ms, up to 5 at once.
        let snap = limited(1, limit(10, 5), None);
        let (mut pipe, _) = pipe_with(SourceLimitConfig::default());
        let mut c = 0u16;
        let mut syn = |pipe: &mut Pipeline, now: u32| {
            c += 1;
            run(pipe, &snap, seg(v6, c, true), now).0 == Verdict::Tx
        };
        let admitted =
            |pipe: &mut Pipeline,
             syn: &mut dyn FnMut(&mut Pipeline, u32) -> bool,
             now: u32,
             n: usize| { (0..n).filter(|_| syn(pipe, now)).count() };
        assert_eq!(admitted(&mut pipe, &mut syn, 5_000, 8), 5);
        assert_eq!(
            admitted(&mut pipe, &mut syn, 5_099, 3),
            0,
            "99 ms refill less than a flow"
        );
        assert_eq!(
            admitted(&mut pipe, &mut syn, 5_100, 3),
            1,
            "100 ms refill one"
        );
        assert_eq!(
            admitted(&mut pipe, &mut syn, 5_350, 3),
            2,
            "250 ms more: two and a half"
        );
        assert_eq!(
            admitted(&mut pipe, &mut syn, 5_400, 3),
            1,
            "the half and one more half"
        );
        // A long quiet spell fills the bucket up to its burst, no more.
        assert_eq!(admitted(&mut pipe, &mut syn, 65_000, 20), 5);
        // Across the wrap of the 32-bit millisecond clock.
        assert_eq!(admitted(&mut pipe, &mut syn, u32::MAX - 50, 20), 5);
        assert_eq!(
            admitted(&mut pipe, &mut syn, 49, 3),
            1,
            "100 ms later, past the wrap"
        );
    }
}

#[test]
fn source_prefixes_have_budgets_of_their_own() {
    for v6 in [false, true] {
        // Three new flows per source prefix, ten per frontend.
        let snap = limited(1, limit(1, 10), limit(1, 3));
        let (mut pipe, stats) = pipe_with(SourceLimitConfig::default());
        // Prefix A (clients 0..256 share a /24, or a /64) floods; prefix B (256..) is next.
        let a = (0..50).map(|c| seg(v6, c, true)).collect();
        assert_eq!(
            count(&mut pipe, &snap, a, 1000, DropReason::SourceFlowLimit),
            (3, 47)
        );
        let b = (256..259).map(|c| seg(v6, c, true)).collect();
        assert_eq!(
            count(&mut pipe, &snap, b, 1000, DropReason::SourceFlowLimit),
            (3, 0)
        );
        assert_eq!(stats.drops_of(DropReason::SourceFlowLimit), 47);
        let fe = &stats.frontends[if v6 { 4 } else { 0 }];
        assert_eq!(fe.limited_source.load(Relaxed), 47);
        assert_eq!(fe.limited_vip.load(Relaxed), 0);
        // A refused flow took no token from the frontend: 10 - 6 are left for prefixes C, D.
        let c = (512..514).map(|c| seg(v6, c, true)).collect();
        assert_eq!(
            count(&mut pipe, &snap, c, 1000, DropReason::SourceFlowLimit),
            (2, 0)
        );
        let d = (768..770).map(|c| seg(v6, c, true)).collect();
        assert_eq!(
            count(&mut pipe, &snap, d, 1000, DropReason::SourceFlowLimit),
            (2, 0)
        );
        let e = (1024..1026).map(|c| seg(v6, c, true)).collect();
        assert_eq!(
            count(&mut pipe, &snap, e, 1000, DropReason::VipFlowLimit),
            (0, 2)
        );
    }
}

#[test]
fn the_prefix_length_is_configurable() {
    for v6 in [false, true] {
        let snap = limited(1, None, limit(1, 3));
        // /16 and /32: clients 0..256 and 256.. are in one prefix now.
        let (mut pipe, _) = pipe_with(SourceLimitConfig {
            prefix_v4: 16,
            prefix_v6: 32,
            ..SourceLimitConfig::default()
        });
        let a = (0..2).map(|c| seg(v6, c, true)).collect();
        assert_eq!(
            count(&mut pipe, &snap, a, 1000, DropReason::SourceFlowLimit),
            (2, 0)
        );
        let b = (256..259).map(|c| seg(v6, c, true)).collect();
        assert_eq!(
            count(&mut pipe, &snap, b, 1000, DropReason::SourceFlowLimit),
            (1, 2)
        );
        // Host prefixes: every client a budget of its own.
        let (mut pipe, _) = pipe_with(SourceLimitConfig {
            prefix_v4: 32,
            prefix_v6: 128,
            ..SourceLimitConfig::default()
        });
        let each = (0..40).map(|c| seg(v6, c, true)).collect();
        assert_eq!(
            count(&mut pipe, &snap, each, 1000, DropReason::SourceFlowLimit),
            (40, 0)
        );
    }
}

#[test]
fn a_new_snapshot_changes_the_limit_at_once() {
    let (mut pipe, _) = pipe_with(SourceLimitConfig::default());
    let s1 = limited(1, limit(10, 5), None);
    let syns = |from: u16| (from..from + 20).map(|c| seg(false, c, true)).collect();
    assert_eq!(
        count(&mut pipe, &s1, syns(0), 1000, DropReason::VipFlowLimit),
        (5, 15)
    );
    // A larger burst: the five flows taken still count against it.
    let s2 = limited(2, limit(10, 8), None);
    assert_eq!(
        count(&mut pipe, &s2, syns(100), 1000, DropReason::VipFlowLimit),
        (3, 17)
    );
    // No limit: everything is admitted.
    let s3 = limited(3, None, None);
    assert_eq!(
        count(&mut pipe, &s3, syns(200), 1000, DropReason::VipFlowLimit),
        (20, 0)
    );
    // A smaller one: the debt left over is honoured, refilled at the new rate (1000 a second).
    let s4 = limited(4, limit(1000, 2), None);
    assert_eq!(
        count(&mut pipe, &s4, syns(300), 1000, DropReason::VipFlowLimit),
        (0, 20)
    );
    assert_eq!(
        count(&mut pipe, &s4, syns(400), 1010, DropReason::VipFlowLimit),
        (2, 18)
    );
}
