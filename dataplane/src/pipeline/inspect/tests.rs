//! The table invariants of [`Pipeline::check_tables`] fire on tables that break them.
use std::sync::Arc;

use super::super::{PacketBuf, PipelineConfig, VecBuf, Verdict};
use super::*;
use crate::conntrack::{FlowState, Insert};
use crate::maglev::{MaglevBackend, MaglevTable};
use crate::snapshot::{Backend, BackendState, FlowLimit, Frontend, Local, Protocol, SynProxy};

fn snap() -> Snapshot {
    snap_with(SynProxy::Off)
}

/// [`snap`] with its frontend's SYN proxy set to `syn_proxy`.
fn snap_with(syn_proxy: SynProxy) -> Snapshot {
    let mb = [MaglevBackend {
        id: "b1",
        weight: 1,
    }];
    Snapshot::new(
        1,
        7,
        vec![Frontend {
            id: 0,
            service: Arc::from("default/inspect"),
            vip: "192.0.2.1".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
            method: Method::Nat,
            affinity_ms: None,
            source_ranges: vec![],
            // Limits high enough never to refuse, so that their buckets fill (and must reset).
            flow_limit: Some(FlowLimit {
                rate: 1000,
                burst: 1000,
            }),
            source_flow_limit: Some(FlowLimit {
                rate: 1000,
                burst: 1000,
            }),
            syn_proxy,
            backends: vec![1],
            maglev: Arc::new(MaglevTable::build(&mb, 31, 1).unwrap()),
        }],
        vec![Backend {
            id: 1,
            addr: "10.0.1.1".parse().unwrap(),
            port: 8080,
            mac: Some([2, 0, 0, 0, 1, 1]),
            weight: 1,
            state: BackendState::Active,
        }],
        Local {
            mac: [2, 0, 0, 0, 0, 1],
            ipv4: vec![[10, 0, 0, 2]],
            nat_ipv4: vec![[10, 0, 0, 3]],
            nat_port_min: 20000,
            nat_port_max: 20999,
            mtu: 1500,
            ..Local::default()
        },
        16,
    )
    .unwrap()
}

/// An Ethernet + IPv4 + TCP frame with TCP flags `flags`.
fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xaa], [2, 0, 0, 0, 0, 1])
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 65535);
    if flags & 0x02 != 0 {
        b = b.syn();
    }
    if flags & 0x10 != 0 {
        b = b.ack(1);
    }
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    v
}

fn pipeline() -> Pipeline {
    let cfg = PipelineConfig {
        conntrack: crate::conntrack::ConntrackConfig {
            capacity: 64,
            ..Default::default()
        },
        conntrack_v6_capacity: 64,
        affinity_capacity: 64,
        ..PipelineConfig::default()
    };
    Pipeline::new(&cfg, Arc::new(WorkerStats::new(16)))
}

fn nat_flow(pipe: &mut Pipeline, s: &Snapshot) {
    let mut b = VecBuf::new(&tcp([10, 9, 9, 9], [192, 0, 2, 1], 40000, 80, 0x02));
    assert_eq!(pipe.process(s, &mut b, 10), Verdict::Tx);
    pipe.check_tables(s, 10).unwrap();
}

#[test]
fn nat_halves_fire_when_one_is_missing() {
    let s = snap();
    let mut pipe = pipeline();
    nat_flow(&mut pipe, &s);
    let k = *pipe
        .flows
        .v4
        .rev
        .entries_in(0, usize::MAX)
        .next()
        .unwrap()
        .key();
    assert!(pipe.flows.v4.rev.remove(&k, k.flow_hash(s.hash_seed)));
    let e = pipe.check_tables(&s, 10).unwrap_err();
    assert!(e.contains("reverse entry") && e.contains("missing"), "{e}");

    pipe.reset(Arc::new(WorkerStats::new(16)));
    pipe.check_tables(&s, 10).unwrap();
    nat_flow(&mut pipe, &s);
    let k = *pipe
        .flows
        .v4
        .fwd
        .entries_in(0, usize::MAX)
        .next()
        .unwrap()
        .key();
    assert!(pipe.flows.v4.fwd.remove(&k, k.flow_hash(s.hash_seed)));
    let e = pipe.check_tables(&s, 10).unwrap_err();
    // The forward entry's removal is also a flow that closed without being counted.
    assert!(e.contains("forward entries hold it"), "{e}");
}

#[test]
fn active_flows_must_equal_forward_entries() {
    let s = snap();
    let mut pipe = pipeline();
    let k = Key::new([10, 9, 9, 8], [192, 0, 2, 9], 1, 80, 6);
    let v = Fwd {
        backend: 1,
        ..Fwd::default()
    };
    let _ = pipe.flows.v4.fwd.insert(
        k,
        k.flow_hash(s.hash_seed),
        v,
        FlowState::TcpEstablished,
        10,
        Insert::New,
    );
    let e = pipe.check_tables(&s, 10).unwrap_err();
    assert!(
        e.contains("backend 1: 0 new - 0 closed flows, but 1"),
        "{e}"
    );
}

/// Regression (found by the fuzzer): the backend's SYN-ACK left the reverse entry in
/// `TcpSynSent` (5 s) while the client's ACK made the forward one established (300 s), so a
/// server that took more than 5 s to answer a request had its reply dropped (`nat_no_flow`)
/// and its NAT port handed to the next flow. Both halves now share one lifetime.
#[test]
fn slow_first_reply_keeps_the_nat_flow() {
    let s = snap();
    let mut pipe = pipeline();
    let client = [10, 9, 9, 9];
    let send = |pipe: &mut Pipeline, f: Vec<u8>, now: u32| {
        let mut b = VecBuf::new(&f);
        let v = pipe.process(&s, &mut b, now);
        pipe.check_tables(&s, now).unwrap();
        (v, b)
    };
    let (v, out) = send(&mut pipe, tcp(client, [192, 0, 2, 1], 40000, 80, 0x02), 10);
    assert_eq!(v, Verdict::Tx);
    let port = u16::from_be_bytes([out.data()[34], out.data()[35]]);
    let synack = tcp([10, 0, 1, 1], [10, 0, 0, 3], 8080, port, 0x12);
    assert_eq!(send(&mut pipe, synack, 20).0, Verdict::Tx);
    let ack = tcp(client, [192, 0, 2, 1], 40000, 80, 0x10);
    assert_eq!(send(&mut pipe, ack.clone(), 30).0, Verdict::Tx);
    // The request, then the server thinks for 6 s.
    assert_eq!(send(&mut pipe, ack, 40).0, Verdict::Tx);
    let reply = tcp([10, 0, 1, 1], [10, 0, 0, 3], 8080, port, 0x10);
    let (v, back) = send(&mut pipe, reply, 6_040);
    assert_eq!(v, Verdict::Tx, "the slow reply reaches the client");
    assert_eq!(&back.data()[30..34], &client);
    // The flow lasts as long as either side speaks: the client alone keeps it for 400 s.
    for t in 1..=4 {
        let ack = tcp(client, [192, 0, 2, 1], 40000, 80, 0x10);
        assert_eq!(send(&mut pipe, ack, 6_040 + t * 100_000).0, Verdict::Tx);
    }
    let reply = tcp([10, 0, 1, 1], [10, 0, 0, 3], 8080, port, 0x10);
    assert_eq!(send(&mut pipe, reply, 406_100).0, Verdict::Tx);
}

/// Regression (found by the fuzzer): an echo request or a segment of an unknown NAT flow sent
/// to the broadcast MAC was answered from the broadcast MAC (the MACs were swapped); a group
/// address is never a source. Answers now come from our MAC.
#[test]
fn answers_to_broadcast_frames_come_from_our_mac() {
    let s = snap();
    let mut pipe = pipeline();
    let mut ack = tcp([10, 9, 9, 9], [192, 0, 2, 1], 40000, 80, 0x10);
    let mut echo = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xaa], [0xff; 6])
        .ipv4([10, 9, 9, 9], [192, 0, 2, 1], 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut echo, b"ping")
        .unwrap();
    ack[0..6].copy_from_slice(&[0xff; 6]);
    for f in [ack, echo] {
        let mut b = VecBuf::new(&f);
        assert_eq!(pipe.process(&s, &mut b, 10), Verdict::Tx);
        assert_eq!(
            &b.data()[0..6],
            &[2, 0, 0, 0, 0, 0xaa],
            "back to the sender"
        );
        assert_eq!(&b.data()[6..12], &s.local.mac, "from our MAC");
    }
}

/// A pipeline that carried flows (NAT, in bursts, evictions, a snapshot with another NAT
/// range) and was reset holds exactly what a new one holds: nothing leaks into the fuzzer's
/// next input.
#[test]
fn reset_leaves_a_new_pipeline() {
    let s = snap();
    let mut pipe = pipeline();
    let fresh = pipeline().state_dump();
    assert_eq!(pipe.state_dump(), fresh);
    for i in 0..100u16 {
        let mut b = VecBuf::new(&tcp([10, 9, 9, 9], [192, 0, 2, 1], 40000 + i, 80, 0x02));
        pipe.process(&s, &mut b, 10);
    }
    let mut burst: Vec<VecBuf> = (0..8u16)
        .map(|i| VecBuf::new(&tcp([10, 9, 9, 8], [192, 0, 2, 1], 50000 + i, 80, 0x02)))
        .collect();
    let mut verdicts = [Verdict::Tx; 8];
    pipe.process_burst(&s, &mut burst, 20, &mut verdicts);
    pipe.expire(5000, 4);
    assert_ne!(pipe.state_dump(), fresh);
    pipe.reset(Arc::new(WorkerStats::new(16)));
    assert_eq!(pipe.state_dump(), fresh);
}

/// A reset forgets the SYN proxy's `auto` state: an engaged frontend is not engaged in the
/// next input once the snapshot is installed again (`install_snapshot` keeps the state of a
/// frontend that stays `auto`, so a reset that left it made the fuzzer's inputs depend on the
/// one before), and the dump shows the state.
#[test]
fn reset_forgets_the_syn_proxy_auto_state() {
    let s = snap_with(SynProxy::Auto { threshold: 2 });
    let mut fresh = pipeline();
    fresh.install_snapshot(&s);
    let fresh = fresh.state_dump();
    let mut pipe = pipeline();
    pipe.install_snapshot(&s);
    assert_eq!(pipe.state_dump(), fresh);
    for i in 0..2u16 {
        let mut b = VecBuf::new(&tcp([10, 9, 9, 9], [192, 0, 2, 1], 40000 + i, 80, 0x02));
        assert_eq!(pipe.process(&s, &mut b, 10), Verdict::Tx);
    }
    pipe.syn_proxy_tick(&s, 11);
    assert!(pipe.syn_proxy_engaged(0));
    pipe.reset(Arc::new(WorkerStats::new(16)));
    // Still engaged with its tables empty: the dump must tell (it did not).
    pipe.install_snapshot(&s);
    assert!(!pipe.syn_proxy_engaged(0), "engaged across a reset");
    assert_eq!(pipe.syn_proxy_pressure(0), 0);
    assert_eq!(pipe.state_dump(), fresh);
}
