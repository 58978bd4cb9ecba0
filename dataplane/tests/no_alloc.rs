//! Processing a burst allocates nothing: a counting global allocator watches the pipeline run
//! a burst of every kind of packet (new flows, established flows, NAT replies, DSR, IPIP
//! encapsulation, ARP, NDP, ICMP, drops) after the tables were allocated.
mod common;

use std::sync::Arc;

use common::*;
use dpdk_sys::CountingAlloc;
use sluice_dataplane::pipeline::{PacketBuf, Pipeline, PipelineConfig, VecBuf, Verdict};
use sluice_dataplane::stats::WorkerStats;

#[global_allocator]
static A: CountingAlloc = CountingAlloc::new();

#[test]
fn a_burst_allocates_nothing() {
    let snap = snapshot(1);
    let stats = Arc::new(WorkerStats::new(1024));
    let cfg = PipelineConfig {
        conntrack: sluice_dataplane::conntrack::ConntrackConfig {
            capacity: 1 << 14,
            ..Default::default()
        },
        conntrack_v6_capacity: 1 << 12,
        affinity_capacity: 1 << 10,
        ..PipelineConfig::default()
    };
    let mut pipe = Pipeline::new(&cfg, stats);
    let vip1 = [192, 0, 2, 1];
    let mut frames: Vec<Vec<u8>> = Vec::new();
    for i in 0..8 {
        frames.push(tcp4(CLIENT4, vip1, 41000 + i, 80, true, false, &[])); // nat new flows
    }
    for i in 0..4 {
        frames.push(tcp4(CLIENT4, vip1, 41000 + i, 80, false, true, b"abc")); // established
    }
    frames.push(udp4(CLIENT4, vip1, 5000, 53, b"q"));
    frames.push(tcp4(CLIENT4, [192, 0, 2, 2], 42000, 80, true, false, &[])); // dsr-l2
    frames.push(tcp4(CLIENT4, [192, 0, 2, 3], 42001, 80, true, false, b"x")); // dsr-ipip
    frames.push(tcp6(CLIENT6, v6("2001:db8::1"), 42002, 80, true, &[])); // nat v6
    frames.push(tcp6(CLIENT6, v6("2001:db8::2"), 42003, 80, true, b"y")); // ipip v6
    frames.push(tcp4(CLIENT4, [192, 0, 2, 7], 42004, 80, true, false, &[])); // affinity
    frames.push(tcp4(CLIENT4, [192, 0, 2, 99], 1, 80, true, false, &[])); // drop: no vip
    frames.push(tcp4([10, 8, 0, 1], [192, 0, 2, 4], 1, 80, true, false, &[])); // drop: acl
    let mut arp = vec![0u8; 42];
    sluice_dataplane::wire::ethernet::emit(&mut arp, [0xff; 6], CLIENT_MAC, 0x0806);
    sluice_dataplane::wire::arp::emit(&mut arp[14..], 1, CLIENT_MAC, CLIENT4, [0; 6], vip1);
    frames.push(arp);
    while frames.len() < 32 {
        let i = frames.len() as u16;
        frames.push(tcp4(CLIENT4, vip1, 43000 + i, 80, true, false, &[]));
    }
    // Buffers prepared before counting (in the worker they are mbufs from a pool).
    let mut bufs: Vec<VecBuf> = frames.iter().map(|f| VecBuf::new(f)).collect();
    let mut verdicts = [Verdict::Tx; 32];
    let before = A.count();
    // As the worker does: one burst.
    pipe.process_burst(&snap, &mut bufs, 5000, &mut verdicts);
    pipe.expire(6000, 64);
    let after = A.count();
    assert_eq!(
        after - before,
        0,
        "the pipeline allocated while processing a burst"
    );
    // And it did real work: most packets were forwarded.
    let tx = verdicts.iter().filter(|v| **v == Verdict::Tx).count();
    assert!(tx >= 28, "{verdicts:?}");
    assert!(
        bufs[14].data().len() > frames[14].len(),
        "IPIP grew the frame"
    );
}
