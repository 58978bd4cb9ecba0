//! Active flows per backend (`new_flows - closed_flows`) stay equal to what the worker's
//! conntrack holds, whichever way an entry leaves: expiry by the amortised sweep, expiry found
//! by a lookup, eviction from a full bucket, or replacement when a flow's backend left the
//! snapshot and it was scheduled anew.
mod common;

use std::sync::Arc;

use common::*;
use sluice_dataplane::conntrack::ConntrackConfig;
use sluice_dataplane::pipeline::{Pipeline, PipelineConfig, VecBuf, Verdict};
use sluice_dataplane::snapshot::{Method, Protocol, Snapshot};
use sluice_dataplane::stats::WorkerStats;

fn active(stats: &WorkerStats, id: u32) -> u64 {
    stats.targets[id as usize].active_flows()
}

fn total_active(stats: &WorkerStats) -> u64 {
    stats.targets.iter().map(|c| c.active_flows()).sum()
}

fn send(pipe: &mut Pipeline, snap: &Snapshot, frame: &[u8], now_ms: u32) -> Verdict {
    let mut b = VecBuf::new(frame);
    pipe.process(snap, &mut b, now_ms)
}

#[test]
fn active_flows_follow_the_table() {
    let snap = snapshot(1);
    let stats = Arc::new(WorkerStats::new(1024));
    let cfg = PipelineConfig {
        conntrack: ConntrackConfig {
            capacity: 64, // 8 buckets: easy to fill
            ..Default::default()
        },
        conntrack_v6_capacity: 64,
        affinity_capacity: 64,
        ..PipelineConfig::default()
    };
    let mut pipe = Pipeline::new(&cfg, stats.clone());
    // 10 TCP flows to backend 1 (192.0.2.1:80), 5 UDP flows to backend 2 (192.0.2.1:53).
    for i in 0..10u16 {
        let syn = tcp4(CLIENT4, [192, 0, 2, 1], 41000 + i, 80, true, false, &[]);
        assert_eq!(send(&mut pipe, &snap, &syn, 1000), Verdict::Tx);
    }
    for i in 0..5u16 {
        let q = udp4(CLIENT4, [192, 0, 2, 1], 42000 + i, 53, b"q");
        assert_eq!(send(&mut pipe, &snap, &q, 1000), Verdict::Tx);
    }
    assert_eq!(active(&stats, 1), 10);
    assert_eq!(active(&stats, 2), 5);
    assert_eq!(total_active(&stats), pipe.flows() as u64);
    // Packets of tracked flows change nothing.
    let ack = tcp4(CLIENT4, [192, 0, 2, 1], 41000, 80, false, true, &[]);
    assert_eq!(send(&mut pipe, &snap, &ack, 1500), Verdict::Tx);
    assert_eq!(active(&stats, 1), 10);

    // The SYN timeout (5 s) passes for the nine unanswered SYNs; a SYN retransmitted by one of
    // them finds its entry expired (freed by the lookup) and opens the flow again.
    let again = tcp4(CLIENT4, [192, 0, 2, 1], 41001, 80, true, false, &[]);
    assert_eq!(send(&mut pipe, &snap, &again, 7000), Verdict::Tx);
    assert_eq!(active(&stats, 1), 10, "one freed by the lookup, one opened");
    // The sweep frees the other eight (the established flow and the UDP flows stay).
    pipe.expire(7000, 1 << 10);
    assert_eq!(active(&stats, 1), 2);
    assert_eq!(active(&stats, 2), 5);
    assert_eq!(total_active(&stats), pipe.flows() as u64);

    // Backend 2 leaves the snapshot; frontend 1 now goes to backend 4. A datagram of a tracked
    // flow is scheduled anew: the flow moves from 2 to 4.
    let moved = Snapshot::new(
        2,
        42,
        vec![
            frontend(0, "192.0.2.1", 80, Protocol::Tcp, Method::Nat, vec![1]),
            frontend(1, "192.0.2.1", 53, Protocol::Udp, Method::Nat, vec![4]),
        ],
        vec![backend(1, "10.0.1.1", 8080), backend(4, "10.0.1.4", 8080)],
        local(),
        1024,
    )
    .unwrap();
    let q = udp4(CLIENT4, [192, 0, 2, 1], 42000, 53, b"q");
    assert_eq!(send(&mut pipe, &moved, &q, 8000), Verdict::Tx);
    assert_eq!(active(&stats, 2), 4);
    assert_eq!(active(&stats, 4), 1);
    assert_eq!(total_active(&stats), pipe.flows() as u64);

    // Far more flows than slots: evictions keep the count exact.
    for i in 0..500u16 {
        let syn = tcp4(
            [10, 9, 8, (i % 250) as u8],
            [192, 0, 2, 1],
            1000 + i,
            80,
            true,
            false,
            &[],
        );
        assert_eq!(send(&mut pipe, &moved, &syn, 9000), Verdict::Tx);
    }
    assert!(
        stats.targets[1]
            .closed_flows
            .load(std::sync::atomic::Ordering::Relaxed)
            > 400
    );
    assert!(pipe.flows() <= 64);
    assert_eq!(total_active(&stats), pipe.flows() as u64);
    // And everything expires eventually.
    pipe.expire(9000 + 400_000, 1 << 10);
    assert_eq!(pipe.flows(), 0);
    assert_eq!(total_active(&stats), 0);
}

/// The admin client scan, read a few slots at a time as a worker spreads it over ticks, finds
/// exactly what one full scan finds.
#[test]
fn client_scan_in_pieces_matches_a_full_scan() {
    let snap = snapshot(1);
    let mut pipe = Pipeline::new(&PipelineConfig::default(), Arc::new(WorkerStats::new(1024)));
    for i in 0..50u16 {
        let syn = tcp4(CLIENT4, [192, 0, 2, 1], 43000 + i, 80, true, false, &[]);
        assert_eq!(send(&mut pipe, &snap, &syn, 1000), Verdict::Tx);
        let other = tcp4(
            [10, 7, 7, 7],
            [192, 0, 2, 1],
            43000 + i,
            80,
            true,
            false,
            &[],
        );
        assert_eq!(send(&mut pipe, &snap, &other, 1000), Verdict::Tx);
    }
    let client = std::net::IpAddr::from(CLIENT4);
    let full = pipe.flows_from(client, usize::MAX);
    assert_eq!(full.len(), 50);
    let mut pieces = Vec::new();
    let mut next = Some(0);
    let mut steps = 0;
    while let Some(start) = next {
        next = pipe.flows_from_slots(client, start, 4096, &mut pieces);
        steps += 1;
    }
    assert_eq!(steps, pipe.flow_slots(client).div_ceil(4096));
    assert_eq!(pieces, full);
}
