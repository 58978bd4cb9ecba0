//! ICMP errors reach the worker that holds the flow they quote. RSS spreads a flow by the
//! client's addresses and ports, but an error from a router by the router's address, so the
//! error often lands on another worker; it is handed on, worker to worker, as the worker does
//! with `Verdict::ToWorker` over its rings, until the holder forwards it.
mod common;

use std::sync::Arc;

use common::*;
use etherparse::PacketBuilder;
use sluice_dataplane::conntrack::ConntrackConfig;
use sluice_dataplane::pipeline::edge::HANDED_MAC;
use sluice_dataplane::pipeline::{PacketBuf, Pipeline, PipelineConfig, VecBuf, Verdict};
use sluice_dataplane::snapshot::Snapshot;
use sluice_dataplane::stats::{DropReason, WorkerStats};

const DSR_VIP: [u8; 4] = [192, 0, 2, 2];
const NAT_VIP: [u8; 4] = [192, 0, 2, 1];
const ROUTER: [u8; 4] = [10, 9, 0, 1];
const BACKEND: [u8; 4] = [10, 0, 1, 1];

fn workers(n: u16) -> Vec<(Pipeline, Arc<WorkerStats>)> {
    (0..n)
        .map(|w| {
            let stats = Arc::new(WorkerStats::new(1024));
            let d = PipelineConfig::default();
            let cfg = PipelineConfig {
                worker: w,
                workers: n,
                conntrack: ConntrackConfig {
                    capacity: 1 << 12,
                    ..d.conntrack
                },
                conntrack_v6_capacity: 1 << 10,
                affinity_capacity: 1 << 10,
                ..d
            };
            (Pipeline::new(&cfg, stats.clone()), stats)
        })
        .collect()
}

/// A router's "fragmentation needed" for the packet VIP:80 -> client:`cport` (what a backend
/// sends with DSR, or Sluice sends for `nat` after translating the reply).
fn frag_needed(vip: [u8; 4], cport: u16) -> Vec<u8> {
    let mut quoted = Vec::new();
    PacketBuilder::ipv4(vip, CLIENT4, 64)
        .tcp(80, cport, 9, 1000)
        .write(&mut quoted, &[0; 8])
        .unwrap();
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4(ROUTER, vip, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut v, &quoted)
        .unwrap();
    v
}

/// Processes `frame` on worker `first` in a burst (the worker's path) and follows hand-offs
/// as the rings would. Returns the worker that decided, its verdict, the frame and the
/// workers visited.
fn deliver(
    ws: &mut [(Pipeline, Arc<WorkerStats>)],
    s: &Snapshot,
    first: usize,
    frame: &[u8],
) -> (usize, Verdict, Vec<u8>, Vec<usize>) {
    let mut buf = [VecBuf::new(frame)];
    let mut at = first;
    let mut visited = vec![first];
    loop {
        let mut v = [Verdict::Tx];
        ws[at].0.process_burst(s, &mut buf, 20, &mut v);
        match v[0] {
            Verdict::ToWorker(w) => {
                at = usize::from(w);
                visited.push(at);
                assert!(visited.len() <= ws.len() + 1, "hand-offs end: {visited:?}");
            }
            v => return (at, v, buf[0].data().to_vec(), visited),
        }
    }
}

/// Opens a flow from the client's port `cport` to `vip`:80 on worker `w`.
fn open(ws: &mut [(Pipeline, Arc<WorkerStats>)], s: &Snapshot, w: usize, vip: [u8; 4], cport: u16) {
    let mut b = VecBuf::new(&tcp4(CLIENT4, vip, cport, 80, true, false, &[]));
    assert_eq!(ws[w].0.process(s, &mut b, 10), Verdict::Tx, "SYN forwarded");
}

#[test]
fn dsr_error_on_the_other_of_two_workers_reaches_the_backend() {
    let s = snapshot(1);
    let mut ws = workers(2);
    open(&mut ws, &s, 1, DSR_VIP, 40001);
    let err = frag_needed(DSR_VIP, 40001);
    let (at, v, out, visited) = deliver(&mut ws, &s, 0, &err);
    assert_eq!((at, v), (1, Verdict::Tx), "forwarded by the holder");
    assert_eq!(visited, vec![0, 1]);
    // Exactly the error, MACs rewritten toward the backend: no trace of the hand-off.
    let mut want = err.clone();
    want[0..6].copy_from_slice(&bmac(1));
    want[6..12].copy_from_slice(&LB_MAC);
    assert_eq!(out, want);
    let s0 = &ws[0].1;
    assert_eq!(s0.drops_of(DropReason::IcmpErrorNoFlow), 0);
    assert_eq!(
        s0.to_other_worker
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn nat_error_on_the_other_worker_is_translated_for_the_backend() {
    let s = snapshot(1);
    let mut ws = workers(2);
    open(&mut ws, &s, 1, NAT_VIP, 40002);
    let (at, v, out, _) = deliver(&mut ws, &s, 0, &frag_needed(NAT_VIP, 40002));
    assert_eq!((at, v), (1, Verdict::Tx));
    assert_eq!(&out[0..6], &bmac(1));
    assert_eq!(&out[6..12], &LB_MAC);
    assert_eq!(&out[30..34], &BACKEND, "outer destination: the backend");
    // The quoted packet is the one the backend sent: backend:8080 -> NAT address.
    let q = 14 + 20 + 8;
    assert_eq!(&out[q + 12..q + 16], &BACKEND);
    assert_eq!(&out[q + 16..q + 20], &NAT4);
    assert_checksums_valid(&out);
}

#[test]
fn every_worker_looks_once_then_the_error_is_dropped() {
    let s = snapshot(1);
    for n in [1u16, 2, 3, 4] {
        let mut ws = workers(n);
        let first = usize::from(n) - 1;
        let (at, v, _, visited) = deliver(&mut ws, &s, first, &frag_needed(DSR_VIP, 49999));
        assert_eq!(v, Verdict::Drop(DropReason::IcmpErrorNoFlow), "{n} workers");
        assert_eq!(
            visited.len(),
            usize::from(n),
            "each of {n} workers looked once"
        );
        let drops: u64 = ws
            .iter()
            .map(|w| w.1.drops_of(DropReason::IcmpErrorNoFlow))
            .sum();
        assert_eq!(drops, 1, "counted once, by the last to look (worker {at})");
    }
}

#[test]
fn the_holder_is_found_among_four_workers() {
    let s = snapshot(1);
    for holder in 0..4 {
        for first in 0..4 {
            let mut ws = workers(4);
            open(&mut ws, &s, holder, DSR_VIP, 40003);
            let (at, v, out, _) = deliver(&mut ws, &s, first, &frag_needed(DSR_VIP, 40003));
            assert_eq!((at, v), (holder, Verdict::Tx), "from {first}");
            assert_eq!(&out[6..12], &LB_MAC);
        }
    }
}

/// A frame from the wire with the hand-off's source MAC and a large count is not sent round
/// the workers again: a forged count only cuts its own search short.
#[test]
fn forged_hand_off_mac_ends_its_own_search() {
    let s = snapshot(1);
    let mut ws = workers(3);
    let mut err = frag_needed(DSR_VIP, 49998);
    err[6..12].copy_from_slice(&HANDED_MAC);
    err[11] = 200;
    let (_, v, _, visited) = deliver(&mut ws, &s, 0, &err);
    assert_eq!(v, Verdict::Drop(DropReason::IcmpErrorNoFlow));
    assert_eq!(visited, vec![0]);
}
