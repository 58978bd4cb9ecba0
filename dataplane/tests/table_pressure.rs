//! Table pressure: a SYN flood from spoofed sources into tables 7/8 full of established NAT
//! flows evicts no established flow (neither half), every established flow goes on to the same
//! backend and NAT port, and what the flood could not place is dropped and counted.
mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use common::*;
use sluice_dataplane::conntrack::ConntrackConfig;
use sluice_dataplane::pipeline::{Pipeline, PipelineConfig, Verdict};
use sluice_dataplane::stats::{DropReason, WorkerStats};

const VIP: [u8; 4] = [192, 0, 2, 1];
const BACKEND: [u8; 4] = [10, 0, 1, 1];

fn nat_port(out: &[u8]) -> u16 {
    u16::from_be_bytes([out[34], out[35]])
}

#[test]
fn a_syn_flood_never_evicts_established_flows() {
    let snap = snapshot(1);
    let stats = Arc::new(WorkerStats::new(1024));
    let cfg = PipelineConfig {
        conntrack: ConntrackConfig {
            capacity: 256,
            ..Default::default()
        },
        conntrack_v6_capacity: 64,
        affinity_capacity: 64,
        ..PipelineConfig::default()
    };
    let mut pipe = Pipeline::new(&cfg, stats.clone());
    // 224 established NAT flows: seven eighths of the forward table, and of the reverse one.
    let mut est = Vec::new();
    for i in 0..224u16 {
        let client = [10, 9, (i / 200) as u8, (i % 200) as u8];
        let sport = 30000 + i;
        let (v, out) = run(
            &mut pipe,
            &snap,
            tcp4(client, VIP, sport, 80, true, false, &[]),
            1000,
        );
        assert_eq!(v, Verdict::Tx);
        let port = nat_port(&out);
        let synack = tcp4(BACKEND, NAT4, 8080, port, true, true, &[]);
        assert_eq!(run(&mut pipe, &snap, synack, 1001).0, Verdict::Tx);
        let ack = tcp4(client, VIP, sport, 80, false, true, &[]);
        assert_eq!(run(&mut pipe, &snap, ack, 1002).0, Verdict::Tx);
        est.push((client, sport, port));
    }
    pipe.publish_table_stats();
    assert_eq!(stats.ct_evictions.load(Relaxed), 0, "room for them all");
    // A flood of 9,000 SYNs from spoofed sources and ports (fewer than the NAT ports left, so
    // that the port cursor does not wrap onto the established flows' ports).
    let mut x: u32 = 0x9e37_79b9;
    let (mut sent, mut refused) = (0, 0);
    for n in 0..9_000u32 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let src = [172, 16 + (x >> 28) as u8, (x >> 8) as u8, x as u8];
        let syn = tcp4(
            src,
            VIP,
            1024 + (x >> 16) as u16 % 60000,
            80,
            true,
            false,
            &[],
        );
        match run(&mut pipe, &snap, syn, 2000 + n / 10).0 {
            Verdict::Tx => sent += 1,
            Verdict::Drop(DropReason::FlowTableFull) => refused += 1,
            v => panic!("a flood SYN got {v:?}"),
        }
    }
    pipe.publish_table_stats();
    let now = 2000 + 9_000 / 10;
    // Every established flow goes on: same NAT port, and its replies come back.
    for &(client, sport, port) in &est {
        let (v, out) = run(
            &mut pipe,
            &snap,
            tcp4(client, VIP, sport, 80, false, true, b"more"),
            now,
        );
        assert_eq!(v, Verdict::Tx, "flow {client:?}:{sport}");
        assert_eq!(
            nat_port(&out),
            port,
            "flow {client:?}:{sport} kept its port"
        );
        assert_eq!(&out[30..34], &BACKEND);
        let reply = tcp4(BACKEND, NAT4, 8080, port, false, true, b"ok");
        let (v, out) = run(&mut pipe, &snap, reply, now);
        assert_eq!(v, Verdict::Tx, "reply to {client:?}:{sport}");
        assert_eq!(&out[30..34], &client);
    }
    assert_eq!(stats.ct_evictions_established.load(Relaxed), 0);
    // The flood churned through the free half: evicting its own embryonic flows, and refused
    // where a SYN's buckets held only established flows.
    assert!(stats.ct_evictions_embryonic.load(Relaxed) > 1000);
    assert_eq!(sent + refused, 9_000);
    assert_eq!(stats.ct_refusals.load(Relaxed) as usize, refused);
    assert_eq!(stats.drops_of(DropReason::FlowTableFull) as usize, refused);
    assert!(refused > 0, "some SYN met two buckets of established flows");
}
