//! What a capture says the pipeline did (`capture::explain`), around `Pipeline::process` on
//! the golden snapshot: new flows and their Maglev slot, established flows, NAT and DSR
//! rewrites, NAT replies, answers and drops.
mod common;

use std::net::IpAddr;
use std::sync::Arc;

use common::*;
use sluice_dataplane::capture::explain::{after, before, leaving};
use sluice_dataplane::capture::{Explain, Rewrite, Why};
use sluice_dataplane::conntrack::FlowState;
use sluice_dataplane::pipeline::{PacketBuf, Pipeline, PipelineConfig, VecBuf, Verdict};
use sluice_dataplane::snapshot::{BackendState, Snapshot};
use sluice_dataplane::stats::{DropReason, WorkerStats};

fn pipeline() -> Pipeline {
    let cfg = PipelineConfig {
        conntrack: sluice_dataplane::conntrack::ConntrackConfig {
            capacity: 1 << 12,
            timeouts: Default::default(),
        },
        conntrack_v6_capacity: 1 << 10,
        affinity_capacity: 1 << 10,
        ..PipelineConfig::default()
    };
    Pipeline::new(&cfg, Arc::new(WorkerStats::new(64)))
}

/// Runs `frame` through the pipeline, explained as a capture does.
fn run(pl: &mut Pipeline, snap: &Snapshot, frame: Vec<u8>) -> (Explain, Vec<u8>) {
    let b = before(pl, snap, &frame);
    let mut buf = VecBuf::new(&frame);
    let v = pl.process(snap, &mut buf, 1);
    let out = buf.data().to_vec();
    (after(pl, snap, &b, v, &out), out)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn nat_flow_new_then_established_then_reply() {
    let snap = snapshot(1);
    let mut pl = pipeline();
    let vip = [192, 0, 2, 1];
    let (e, _) = run(
        &mut pl,
        &snap,
        tcp4(CLIENT4, vip, 40000, 80, true, false, b""),
    );
    assert_eq!(e.verdict, Verdict::Tx);
    assert_eq!(e.frontend, Some(0));
    assert_eq!(e.state_before, None);
    assert_eq!(e.state_after, Some(FlowState::TcpSynSent));
    let b = e.backend.unwrap();
    assert_eq!((b.id, b.addr, b.port), (1, ip("10.0.1.1"), 8080));
    // One backend: every slot is its, so the slot's own backend was taken.
    assert!(
        matches!(e.why, Why::Maglev { primary: true, .. }),
        "{:?}",
        e.why
    );
    let Rewrite::Nat {
        src,
        sport,
        dst,
        dport,
    } = e.rewrite
    else {
        panic!("{:?}", e.rewrite)
    };
    assert_eq!((src, dst, dport), (ip("10.0.0.3"), ip("10.0.1.1"), 8080));
    assert!(sport >= NAT_PORT_MIN);

    let (e2, _) = run(
        &mut pl,
        &snap,
        tcp4(CLIENT4, vip, 40000, 80, false, true, b"x"),
    );
    assert_eq!(e2.why, Why::Existing);
    assert_eq!(e2.state_before, Some(FlowState::TcpSynSent));
    assert_eq!(e2.state_after, Some(FlowState::TcpEstablished));

    // The backend's reply to the NAT address goes back to the client from the VIP.
    let reply = tcp4([10, 0, 1, 1], NAT4, 8080, sport, false, true, b"y");
    let (e3, out) = run(&mut pl, &snap, reply);
    assert_eq!(e3.verdict, Verdict::Tx);
    assert_eq!(
        e3.rewrite,
        Rewrite::Nat {
            src: ip("192.0.2.1"),
            sport: 80,
            dst: IpAddr::from(CLIENT4),
            dport: 40000
        }
    );
    // Seen leaving only (a transmit capture): the flow it belongs to.
    let l = leaving(&pl, &snap, &out);
    assert_eq!(l.frontend, Some(0));
    assert_eq!(l.backend.map(|b| b.id), Some(1));
    assert_eq!(l.state_after, Some(FlowState::TcpEstablished));
    assert_eq!(l.why, Why::Reply);
}

#[test]
fn dsr_rewrites_and_drops_are_explained() {
    let snap = snapshot(1);
    let mut pl = pipeline();
    let (e, _) = run(
        &mut pl,
        &snap,
        tcp4(CLIENT4, [192, 0, 2, 2], 40001, 80, true, false, b""),
    );
    assert_eq!(e.rewrite, Rewrite::DsrL2 { mac: bmac(1) });
    let (e, _) = run(
        &mut pl,
        &snap,
        tcp4(CLIENT4, [192, 0, 2, 3], 40002, 80, true, false, b""),
    );
    assert_eq!(
        e.rewrite,
        Rewrite::DsrIpip {
            src: ip("10.0.0.2"),
            dst: ip("10.0.1.2")
        }
    );
    // A port the VIP does not serve.
    let (e, _) = run(
        &mut pl,
        &snap,
        tcp4(CLIENT4, [192, 0, 2, 1], 40003, 81, true, false, b""),
    );
    assert_eq!(e.verdict, Verdict::Drop(DropReason::PortNotServed));
    assert_eq!((e.frontend, e.backend), (None, None));
    // A source outside the frontend's ranges.
    let (e, _) = run(
        &mut pl,
        &snap,
        tcp4([10, 8, 0, 1], [192, 0, 2, 4], 40004, 80, true, false, b""),
    );
    assert_eq!(e.verdict, Verdict::Drop(DropReason::SourceDenied));
    assert_eq!(e.frontend, Some(6));
    assert_eq!(e.why, Why::None);
    // A segment of an unknown nat flow: a RST back.
    let (e, _) = run(
        &mut pl,
        &snap,
        tcp4(CLIENT4, [192, 0, 2, 1], 40005, 80, false, true, b"z"),
    );
    assert_eq!((e.verdict, e.rewrite), (Verdict::Tx, Rewrite::Reset));
}

#[test]
fn established_flow_to_a_draining_backend_keeps_it() {
    let snap = snapshot(1);
    let mut pl = pipeline();
    let vip = [192, 0, 2, 7];
    let (e, _) = run(
        &mut pl,
        &snap,
        tcp4(CLIENT4, vip, 40010, 80, true, false, b""),
    );
    let chosen = e.backend.unwrap().id;
    // Affinity frontend, first flow of the client: Maglev on the client address.
    assert!(matches!(e.why, Why::MaglevClient { .. }), "{:?}", e.why);
    // Drain the chosen backend: the established flow keeps it, and says so.
    let mut backends: Vec<_> = snap.backends().cloned().collect();
    for b in &mut backends {
        if b.id == chosen {
            b.state = BackendState::Draining;
        }
    }
    let drained = Snapshot::new(
        2,
        42,
        snap.frontends().cloned().collect(),
        backends,
        local(),
        1024,
    )
    .unwrap();
    let (e, _) = run(
        &mut pl,
        &drained,
        tcp4(CLIENT4, vip, 40010, 80, false, true, b"a"),
    );
    assert_eq!(e.why, Why::Existing);
    let b = e.backend.unwrap();
    assert_eq!((b.id, b.state), (chosen, BackendState::Draining));
    // A new flow of another client goes elsewhere; its slot's backend was not taken if it
    // was the drained one.
    let (e, _) = run(
        &mut pl,
        &drained,
        tcp4([10, 9, 9, 10], vip, 40011, 80, true, false, b""),
    );
    assert_ne!(e.backend.unwrap().id, chosen);
}
