//! A client that reuses a source port opens a new connection on a 5-tuple whose old flow is
//! still in the table (closing, not yet expired). When that old flow's backend is no longer
//! active (drained or down), the new connection is scheduled anew over the live backends, as
//! IPVS does for a reused connection whose destination is unavailable; packets of the old
//! connection itself, and a retransmitted SYN of a connection still opening, keep their
//! backend.
mod common;

use std::sync::Arc;

use common::*;
use etherparse::PacketBuilder;
use sluice_dataplane::conntrack::ConntrackConfig;
use sluice_dataplane::pipeline::{PacketBuf, Pipeline, PipelineConfig, VecBuf, Verdict};
use sluice_dataplane::snapshot::{BackendState, Method, Protocol, Snapshot};
use sluice_dataplane::stats::WorkerStats;

const VIP: [u8; 4] = [192, 0, 2, 9];

/// One dsr-l2 frontend on VIP:80 over backends 1 and 2; `drained` is not active.
fn snap(generation: u64, drained: Option<u32>) -> Snapshot {
    let mut backends = vec![backend(1, "10.0.1.1", 80), backend(2, "10.0.1.2", 80)];
    for b in &mut backends {
        if Some(b.id) == drained {
            b.state = BackendState::Draining;
        }
    }
    Snapshot::new(
        generation,
        42,
        vec![frontend(
            0,
            "192.0.2.9",
            80,
            Protocol::Tcp,
            Method::DsrL2,
            vec![1, 2],
        )],
        backends,
        local(),
        1024,
    )
    .unwrap()
}

/// A TCP segment from the client's port `sport` to VIP:80 with the given flags.
fn seg(sport: u16, syn: bool, ack: bool, fin: bool) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4(CLIENT4, VIP, 64)
        .tcp(sport, 80, 1000, 65535);
    if syn {
        b = b.syn();
    }
    if ack {
        b = b.ack(1);
    }
    if fin {
        b = b.fin();
    }
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    v
}

/// Sends one frame; the backend it went to (dsr-l2 rewrites the destination MAC to it).
fn backend_of(pipe: &mut Pipeline, snap: &Snapshot, frame: &[u8], now_ms: u32) -> u32 {
    let mut b = VecBuf::new(frame);
    assert_eq!(pipe.process(snap, &mut b, now_ms), Verdict::Tx);
    let mac = &b.data()[0..6];
    (1..=2)
        .find(|&id| mac == bmac(id))
        .unwrap_or_else(|| panic!("sent to an unknown MAC {mac:02x?}"))
}

/// New flows counted for backend `id`, and its active flows.
fn counts(pipe: &Pipeline, id: u32) -> (u64, u64) {
    let c = &pipe.stats().targets[id as usize];
    (
        c.new_flows.load(std::sync::atomic::Ordering::Relaxed),
        c.active_flows(),
    )
}

fn pipeline() -> Pipeline {
    let cfg = PipelineConfig {
        conntrack: ConntrackConfig {
            capacity: 1024,
            ..Default::default()
        },
        conntrack_v6_capacity: 64,
        affinity_capacity: 64,
        ..PipelineConfig::default()
    };
    Pipeline::new(&cfg, Arc::new(WorkerStats::new(1024)))
}

#[test]
fn a_reused_port_whose_old_backend_is_drained_is_scheduled_anew() {
    let mut pipe = pipeline();
    let live = snap(1, None);
    // Open and close a connection: its flow stays in the table, closing.
    let sport = 40000;
    let first = backend_of(&mut pipe, &live, &seg(sport, true, false, false), 1000);
    assert_eq!(
        backend_of(&mut pipe, &live, &seg(sport, false, true, true), 1001),
        first
    );
    // Its backend is drained; the old connection's last packets still reach it.
    let drained = snap(2, Some(first));
    assert_eq!(
        backend_of(&mut pipe, &drained, &seg(sport, false, true, false), 1002),
        first
    );
    // The client reuses the port for a new connection: it goes to the live backend, and its
    // next packets follow it there.
    let other = 3 - first;
    assert_eq!(
        backend_of(&mut pipe, &drained, &seg(sport, true, false, false), 1003),
        other
    );
    assert_eq!(
        backend_of(&mut pipe, &drained, &seg(sport, false, true, false), 1004),
        other
    );
}

#[test]
fn a_retransmitted_syn_keeps_its_drained_backend() {
    let mut pipe = pipeline();
    let live = snap(1, None);
    let sport = 40001;
    let first = backend_of(&mut pipe, &live, &seg(sport, true, false, false), 1000);
    let drained = snap(2, Some(first));
    // Still opening (no FIN or RST seen): the same connection, the same backend.
    assert_eq!(
        backend_of(&mut pipe, &drained, &seg(sport, true, false, false), 1500),
        first
    );
}

#[test]
fn a_reused_port_whose_old_backend_is_active_keeps_it() {
    let mut pipe = pipeline();
    let live = snap(1, None);
    let sport = 40002;
    let first = backend_of(&mut pipe, &live, &seg(sport, true, false, false), 1000);
    backend_of(&mut pipe, &live, &seg(sport, false, true, true), 1001);
    assert_eq!(counts(&pipe, first), (1, 1));
    assert_eq!(
        backend_of(&mut pipe, &live, &seg(sport, true, false, false), 1002),
        first
    );
    // A second connection, counted as one; still one flow held.
    assert_eq!(counts(&pipe, first), (2, 1));
    assert_eq!(pipe.flows(), 1);
    // A retransmission of its SYN is not another connection.
    backend_of(&mut pipe, &live, &seg(sport, true, false, false), 1003);
    assert_eq!(counts(&pipe, first), (2, 1));
}
