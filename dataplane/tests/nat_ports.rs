//! NAT ports come from the worker's own slice of the snapshot's port range, also when a new
//! snapshot brings another range (the worker keeps its slice precomputed, so a stale slice
//! would hand out another worker's ports); replies go to the worker owning their port; a full
//! slice drops new flows with `nat_ports_exhausted`.
mod common;

use std::sync::Arc;

use common::*;
use sluice_dataplane::pipeline::{PacketBuf, Pipeline, PipelineConfig, VecBuf, Verdict};
use sluice_dataplane::snapshot::{Local, Method, Protocol, Snapshot};
use sluice_dataplane::stats::{DropReason, WorkerStats};
use std::sync::atomic::Ordering::Relaxed;

const VIP: [u8; 4] = [192, 0, 2, 1];
const BACKEND: [u8; 4] = [10, 0, 1, 1];

/// One NAT frontend (192.0.2.1:80, backend 10.0.1.1:8080) with NAT ports `min..=max`.
fn snap(generation: u64, min: u16, max: u16) -> Snapshot {
    let local = Local {
        nat_port_min: min,
        nat_port_max: max,
        ..local()
    };
    Snapshot::new(
        generation,
        42,
        vec![frontend(
            0,
            "192.0.2.1",
            80,
            Protocol::Tcp,
            Method::Nat,
            vec![1],
        )],
        vec![backend(1, "10.0.1.1", 8080)],
        local,
        64,
    )
    .unwrap()
}

/// Sends SYNs from client ports `first..first + n`, as one burst each of up to 32 (the
/// worker's path), and returns each verdict with the NAT port of a forwarded SYN.
fn syns(pipe: &mut Pipeline, s: &Snapshot, first: u16, n: u16) -> Vec<(Verdict, Option<u16>)> {
    syns_at(pipe, s, first, n, 10)
}

/// [`syns`] at time `now_ms`.
fn syns_at(
    pipe: &mut Pipeline,
    s: &Snapshot,
    first: u16,
    n: u16,
    now_ms: u32,
) -> Vec<(Verdict, Option<u16>)> {
    let mut out = Vec::new();
    let frames: Vec<Vec<u8>> = (first..first + n)
        .map(|p| tcp4(CLIENT4, VIP, p, 80, true, false, &[]))
        .collect();
    for chunk in frames.chunks(32) {
        let mut bufs: Vec<VecBuf> = chunk.iter().map(|f| VecBuf::new(f)).collect();
        let mut verdicts = vec![Verdict::Tx; bufs.len()];
        pipe.process_burst(s, &mut bufs, now_ms, &mut verdicts);
        for (b, &v) in bufs.iter().zip(&verdicts) {
            let d = b.data();
            let port = (v == Verdict::Tx).then(|| {
                assert_eq!(&d[30..34], &BACKEND, "forwarded to the backend");
                u16::from_be_bytes([d[34], d[35]])
            });
            out.push((v, port));
        }
    }
    out
}

/// The backend's reply to NAT port `port`, processed on its own.
fn reply(pipe: &mut Pipeline, s: &Snapshot, port: u16) -> Verdict {
    let mut b = VecBuf::new(&tcp4(BACKEND, NAT4, 8080, port, true, true, &[]));
    pipe.process(s, &mut b, 11)
}

#[test]
fn ports_follow_the_snapshot_range() {
    // Worker 1 of 3.
    let stats = Arc::new(WorkerStats::new(64));
    let cfg = PipelineConfig {
        worker: 1,
        workers: 3,
        ..PipelineConfig::default()
    };
    let mut pipe = Pipeline::new(&cfg, stats.clone());

    // Range A: 20000..=29999, 3333 ports per worker; worker 1 owns 23333..=26665.
    let a = snap(1, 20000, 29999);
    let got = syns(&mut pipe, &a, 40000, 50);
    let ports: Vec<u16> = got
        .iter()
        .map(|(v, p)| p.unwrap_or_else(|| panic!("{v:?}")))
        .collect();
    assert_eq!(ports, (23333..23383).collect::<Vec<u16>>());
    assert_eq!(reply(&mut pipe, &a, 23333), Verdict::Tx);
    assert_eq!(reply(&mut pipe, &a, 20000), Verdict::ToWorker(0));
    assert_eq!(reply(&mut pipe, &a, 26666), Verdict::ToWorker(2));
    // The ports beyond 3 x 3333 belong to the last worker.
    assert_eq!(reply(&mut pipe, &a, 29999), Verdict::ToWorker(2));

    // Range B: 40000..=40300, 100 ports per worker; worker 1 owns 40100..=40199. The cursor
    // (at offset 50 of the old slice) is reduced into the new one.
    let b = snap(2, 40000, 40300);
    let got = syns(&mut pipe, &b, 41000, 120);
    let ports: Vec<u16> = got.iter().filter_map(|(_, p)| *p).collect();
    assert_eq!(ports.len(), 100, "the slice holds 100 ports");
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (40100..40200).collect::<Vec<u16>>(),
        "each port once"
    );
    assert_eq!(
        ports[0], 40150,
        "from the cursor, reduced into the new slice"
    );
    // Then the slice is full: every port is taken by a live flow to the one backend.
    for (v, _) in &got[100..] {
        assert_eq!(*v, Verdict::Drop(DropReason::NatPortsExhausted));
    }
    assert_eq!(stats.drops_of(DropReason::NatPortsExhausted), 20);
    assert_eq!(reply(&mut pipe, &b, 40150), Verdict::Tx);
    assert_eq!(reply(&mut pipe, &b, 40099), Verdict::ToWorker(0));
    assert_eq!(reply(&mut pipe, &b, 40200), Verdict::ToWorker(2));
    assert_eq!(reply(&mut pipe, &b, 40300), Verdict::ToWorker(2));

    // Back to range A: its slice again, continuing from the cursor.
    let got = syns(&mut pipe, &snap(3, 20000, 29999), 42000, 5);
    for (v, p) in &got {
        let p = p.unwrap_or_else(|| panic!("{v:?}"));
        assert!(
            (23333..=26665).contains(&p),
            "port {p} outside worker 1's slice of A"
        );
    }
}

/// An allocation tries the cursor's port first and moves the cursor by one; if that port is in
/// use it searches on, in a small slice port by port so as to cover it whole, and counts a
/// retry (`nat_port_retries`, the port-pressure counter operators see).
#[test]
fn a_port_in_use_is_searched_past_and_counted() {
    let stats = Arc::new(WorkerStats::new(64));
    let mut pipe = Pipeline::new(&PipelineConfig::default(), stats.clone());
    // Eight ports, 30000..=30007, one backend: eight flows fill the slice.
    let s = snap(1, 30000, 30007);
    let port = |got: &[(Verdict, Option<u16>)]| -> Vec<u16> {
        got.iter()
            .map(|(v, p)| p.unwrap_or_else(|| panic!("{v:?}")))
            .collect()
    };
    assert_eq!(
        port(&syns_at(&mut pipe, &s, 40000, 4, 10)),
        [30000, 30001, 30002, 30003]
    );
    assert_eq!(
        port(&syns_at(&mut pipe, &s, 41000, 4, 2000)),
        [30004, 30005, 30006, 30007]
    );
    assert_eq!(
        stats.nat_port_retries.load(Relaxed),
        0,
        "every first try was free"
    );
    // The cursor is back at 30000: each of four more SYNs finds its port in use, searches the
    // whole slice and is dropped.
    for (v, _) in syns_at(&mut pipe, &s, 42000, 4, 2000) {
        assert_eq!(v, Verdict::Drop(DropReason::NatPortsExhausted));
    }
    assert_eq!(stats.nat_port_retries.load(Relaxed), 4);
    // The first four flows' SYN timeout (5 s from the end of the 1,024 ms epoch they were
    // seen in) passes and the expiry frees them; the cursor is at 30004, still in use (seen in
    // the next epoch), so the next SYN searches on and takes the first free port.
    pipe.expire(6100, 1 << 20);
    assert_eq!(port(&syns_at(&mut pipe, &s, 43000, 1, 6100)), [30000]);
    assert_eq!(stats.nat_port_retries.load(Relaxed), 5);
    assert_eq!(reply(&mut pipe, &s, 30000), Verdict::Tx);
}

/// In a larger slice the search jumps (tries drawn from the flow hash) rather than stepping
/// port by port: the flows to one destination hold a contiguous run of ports behind its
/// cursor, and a search that stepped on from a taken port would find 64 more of that run
/// taken and drop the SYN although a third of the slice is free.
#[test]
fn a_search_jumps_out_of_a_run_of_taken_ports() {
    let stats = Arc::new(WorkerStats::new(64));
    let mut pipe = Pipeline::new(&PipelineConfig::default(), stats.clone());
    // 1000 ports, 30000..=30999: 400 flows seen at 2000 ms, 300 at 10 ms, 300 at 2000 ms.
    let s = snap(1, 30000, 30999);
    let mut got = syns_at(&mut pipe, &s, 20000, 400, 2000);
    got.extend(syns_at(&mut pipe, &s, 20400, 300, 10));
    got.extend(syns_at(&mut pipe, &s, 20700, 300, 2000));
    let ports: Vec<u16> = got
        .iter()
        .map(|(v, p)| p.unwrap_or_else(|| panic!("{v:?}")))
        .collect();
    assert_eq!(ports, (30000..31000).collect::<Vec<u16>>(), "in sequence");
    // The middle 300 time out; the cursor is back at 30000, in use, and so are the 399 ports
    // after it.
    pipe.expire(6100, 1 << 20);
    let retries = stats.nat_port_retries.load(Relaxed);
    for (v, port) in syns_at(&mut pipe, &s, 21000, 8, 6100) {
        let port = port.unwrap_or_else(|| panic!("dropped: {v:?}"));
        assert!((30400..30700).contains(&port), "port {port} was in use");
    }
    assert_eq!(stats.nat_port_retries.load(Relaxed), retries + 8);
}

/// `Pipeline::nat_owner`, the public form the worker and tools use, agrees with the worker's
/// own routing of replies.
#[test]
fn nat_owner_agrees_with_reply_routing() {
    let s = snap(1, 1024, 65535);
    for workers in [1u16, 2, 3, 7] {
        for worker in 0..workers {
            let cfg = PipelineConfig {
                worker,
                workers,
                ..PipelineConfig::default()
            };
            let mut pipe = Pipeline::new(&cfg, Arc::new(WorkerStats::new(64)));
            for port in (1024..=65535u16).step_by(997).chain([1024, 65535]) {
                let owner = Pipeline::nat_owner(&s, workers, port);
                let v = reply(&mut pipe, &s, port);
                if owner == worker {
                    // Ours: no flow there, so dropped as such, not passed on.
                    assert_eq!(v, Verdict::Drop(DropReason::NatNoFlow), "port {port}");
                } else {
                    assert_eq!(v, Verdict::ToWorker(owner), "port {port}");
                }
            }
        }
    }
}

/// A closed NAT flow keeps its port towards its backend for the closing timeout (60 s by
/// default), longer than Linux holds the backend's side in TIME_WAIT, even though the worker's
/// expiry sweep runs meanwhile: a new flow reusing that port would hit the old connection's
/// TIME_WAIT on the backend. After the timeout the port is handed out again.
#[test]
fn a_closed_flows_port_waits_out_time_wait() {
    use etherparse::PacketBuilder;
    let stats = Arc::new(WorkerStats::new(64));
    let mut pipe = Pipeline::new(&PipelineConfig::default(), stats.clone());
    let s = snap(1, 30000, 30007);
    let send = |pipe: &mut Pipeline, frame: Vec<u8>, now: u32| {
        let mut b = VecBuf::new(&frame);
        pipe.process(&s, &mut b, now)
    };
    let fin = |src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16| {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv4(src, dst, 64)
            .tcp(sport, dport, 2000, 65535)
            .fin()
            .ack(1)
            .write(&mut v, &[])
            .unwrap();
        v
    };
    // A connection on port 30000, established, then closed by both sides.
    assert_eq!(
        syns_at(&mut pipe, &s, 40000, 1, 10)[0],
        (Verdict::Tx, Some(30000))
    );
    let synack = tcp4(BACKEND, NAT4, 8080, 30000, true, true, &[]);
    assert_eq!(send(&mut pipe, synack, 11), Verdict::Tx);
    let ack = tcp4(CLIENT4, VIP, 40000, 80, false, true, &[]);
    assert_eq!(send(&mut pipe, ack, 12), Verdict::Tx);
    assert_eq!(
        send(&mut pipe, fin(CLIENT4, VIP, 40000, 80), 13),
        Verdict::Tx
    );
    assert_eq!(
        send(&mut pipe, fin(BACKEND, NAT4, 8080, 30000), 14),
        Verdict::Tx
    );
    // 50 s later, after a full expiry sweep: the other seven ports go to new flows, and the
    // eighth new flow finds no port (30000 is still held).
    pipe.expire(50_000, 1 << 20);
    let got = syns_at(&mut pipe, &s, 41000, 8, 50_000);
    let ports: Vec<u16> = got.iter().filter_map(|(_, p)| *p).collect();
    assert_eq!(ports, (30001..=30007).collect::<Vec<u16>>());
    assert_eq!(got[7].0, Verdict::Drop(DropReason::NatPortsExhausted));
    // Once the closing timeout has passed (and the new flows' SYN timeout), every port is free.
    pipe.expire(62_000, 1 << 20);
    let got = syns_at(&mut pipe, &s, 42000, 8, 62_000);
    let mut ports: Vec<u16> = got.iter().filter_map(|(_, p)| *p).collect();
    ports.sort_unstable();
    assert_eq!(ports, (30000..=30007).collect::<Vec<u16>>());
}
