//! Each check of the model fires on an output that breaks it, and passes the pipeline's own.
use std::sync::Arc;

use etherparse::PacketBuilder;

use super::*;
use crate::maglev::{MaglevBackend, MaglevTable};
use crate::pipeline::{PacketBuf, PipelineConfig, VecBuf};
use crate::snapshot::{Backend, Cidr, Local, Protocol, SynProxy};
use crate::stats::{DropReason, WorkerStats};

const LB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xaa];
const CLIENT: [u8; 4] = [10, 9, 9, 9];
const NAT: [u8; 4] = [10, 0, 0, 3];

fn bmac(id: u32) -> [u8; 6] {
    [2, 0, 0, 0, 1, id as u8]
}

fn snap(draining: u32) -> Snapshot {
    snap_with(draining, SynProxy::Off)
}

/// [`snap`] with frontend 0 (192.0.2.1:80, `nat`) SYN-proxied as `proxy` says.
fn snap_with(draining: u32, proxy: SynProxy) -> Snapshot {
    let fe = |id: u32, vip: &str, method, backends: Vec<u32>| {
        let names: Vec<String> = backends.iter().map(|b| format!("b{b}")).collect();
        let mb: Vec<_> = names
            .iter()
            .map(|n| MaglevBackend { id: n, weight: 1 })
            .collect();
        Frontend {
            id,
            service: Arc::from("default/check"),
            vip: vip.parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
            method,
            affinity_ms: None,
            source_ranges: vec![],
            flow_limit: None,
            source_flow_limit: None,
            syn_proxy: SynProxy::Off,
            backends,
            maglev: Arc::new(MaglevTable::build(&mb, 31, 1).unwrap()),
        }
    };
    let be = |id: u32| Backend {
        id,
        addr: format!("10.0.1.{id}").parse().unwrap(),
        port: 8080,
        mac: Some(bmac(id)),
        weight: 1,
        state: if id == draining {
            BackendState::Draining
        } else {
            BackendState::Active
        },
    };
    let mut acl = fe(2, "192.0.2.4", Method::Nat, vec![4]);
    acl.source_ranges = vec![Cidr::parse("10.8.0.0/16").unwrap()];
    Snapshot::new(
        1,
        7,
        vec![
            Frontend {
                syn_proxy: proxy,
                ..fe(0, "192.0.2.1", Method::Nat, vec![1])
            },
            fe(1, "192.0.2.2", Method::DsrL2, vec![3, 5]),
            acl,
            fe(3, "192.0.2.5", Method::Nat, vec![1, 2]),
            fe(4, "192.0.2.6", Method::DsrIpip, vec![1, 2]),
        ],
        (1..=5).map(be).collect(),
        Local {
            mac: LB_MAC,
            ipv4: vec![[10, 0, 0, 2]],
            nat_ipv4: vec![NAT],
            nat_port_min: 20000,
            nat_port_max: 20999,
            nat_ipv4_peers: 0,
            nat_ipv6_peers: 0,
            mtu: 1500,
            ..Local::default()
        },
        16,
    )
    .unwrap()
}

/// An Ethernet + IPv4 + TCP frame; `flags`: SYN 2, ACK 0x10.
fn tcp(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    ports: (u16, u16),
    flags: u8,
) -> Vec<u8> {
    tcp_with(macs, src, dst, ports, flags, b"payload")
}

/// [`tcp`] with a payload of its own; `flags`: FIN 1, SYN 2, RST 4, ACK 0x10.
fn tcp_with(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    ports: (u16, u16),
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src, dst, 64)
        .tcp(ports.0, ports.1, 1000, 65535);
    if flags & 1 != 0 {
        b = b.fin();
    }
    if flags & 2 != 0 {
        b = b.syn();
    }
    if flags & 4 != 0 {
        b = b.rst();
    }
    if flags & 0x10 != 0 {
        b = b.ack(5);
    }
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn step(snap: &Snapshot, now_ms: u32) -> Step<'_> {
    Step {
        snap,
        worker: 0,
        workers: 1,
        now_ms,
        evictions: 0,
        min_timeout_ms: 5000,
    }
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

/// Runs `input` through `pipe` and the model; the output and the model's judgement.
fn run(
    m: &mut Model,
    pipe: &mut Pipeline,
    s: &Step<'_>,
    input: &[u8],
) -> (Vec<u8>, Result<(), String>) {
    let mut b = VecBuf::new(input);
    let v = pipe.process(s.snap, &mut b, s.now_ms);
    assert_eq!(v, Verdict::Tx, "the pipeline transmits {input:02x?}");
    let out = b.data().to_vec();
    let r = m
        .packet(s, input, v, &out)
        .and_then(|()| m.burst_done(s, pipe));
    (out, r)
}

fn err(r: Result<(), String>, want: &str) {
    match r {
        Err(e) => assert!(e.contains(want), "{e:?} should say {want:?}"),
        Ok(()) => panic!("the check did not fire (wanted {want:?})"),
    }
}

#[test]
fn frame_checks_fire() {
    let input = tcp((CLIENT_MAC, LB_MAC), CLIENT, [192, 0, 2, 2], (40000, 80), 2);
    assert!(transmitted(&input, &input).is_ok());
    err(
        transmitted(&input, &input[..40]).map(|_| ()),
        "does not parse",
    );
    let mut tagged = input.clone();
    tagged.splice(12..12, [0x81, 0x00, 0x00, 42]);
    err(transmitted(&input, &tagged).map(|_| ()), "VLAN-tagged");
    let mut bad_ip = input.clone();
    bad_ip[14 + 10] ^= 1;
    err(
        transmitted(&input, &bad_ip).map(|_| ()),
        "IPv4 header checksum",
    );
    let mut bad_tcp = input.clone();
    bad_tcp[14 + 20 + 16] ^= 1;
    err(
        transmitted(&input, &bad_tcp).map(|_| ()),
        "transport checksum",
    );
    // A transport checksum that was wrong before may stay wrong.
    assert!(transmitted(&bad_tcp, &bad_tcp).is_ok());
}

#[test]
fn forwarding_checks_fire() {
    let s1 = snap(0);
    let mut pipe = pipeline();
    let mut m = Model::new();
    let st = step(&s1, 10);
    let syn = tcp((CLIENT_MAC, LB_MAC), CLIENT, [192, 0, 2, 2], (40000, 80), 2);
    let (out, r) = run(&mut m, &mut pipe, &st, &syn);
    r.unwrap();
    let to = out[5];
    // Another backend's MAC: not one of the frontend's.
    let mut foreign = out.clone();
    foreign[0..6].copy_from_slice(&bmac(4));
    err(
        m.packet(&st, &syn, Verdict::Tx, &foreign),
        "not one of frontend",
    );
    // dsr-l2 may change the MACs only.
    let mut changed = out.clone();
    *changed.last_mut().unwrap() ^= 1;
    fix_tcp4(&mut changed);
    err(m.packet(&st, &syn, Verdict::Tx, &changed), "dsr-l2 changed");
    // The flow moving to the frontend's other backend within the shortest timeout.
    let other = if u32::from(to) == 3 { 5 } else { 3 };
    let ack = tcp(
        (CLIENT_MAC, LB_MAC),
        CLIENT,
        [192, 0, 2, 2],
        (40000, 80),
        0x10,
    );
    let mut moved = ack.clone();
    moved[0..6].copy_from_slice(&bmac(other));
    moved[6..12].copy_from_slice(&LB_MAC);
    err(
        m.packet(&step(&s1, 20), &ack, Verdict::Tx, &moved),
        "moved from backend",
    );
    // ... which is fine once it may have expired.
    assert!(m
        .packet(&step(&s1, 9000), &ack, Verdict::Tx, &moved)
        .is_ok());
    // A new flow to a draining backend; a pinned one may go on.
    let s2 = snap(other);
    let new = tcp((CLIENT_MAC, LB_MAC), CLIENT, [192, 0, 2, 2], (40001, 80), 2);
    let mut to_draining = new.clone();
    to_draining[0..6].copy_from_slice(&bmac(other));
    to_draining[6..12].copy_from_slice(&LB_MAC);
    err(
        m.packet(&step(&s2, 9001), &new, Verdict::Tx, &to_draining),
        "new flow",
    );
    assert!(m
        .packet(&step(&s2, 9002), &ack, Verdict::Tx, &moved)
        .is_ok());
}

#[test]
fn policy_checks_fire() {
    let s = snap(0);
    let mut m = Model::new();
    let st = step(&s, 10);
    let fwd = |f: &[u8]| {
        let mut o = f.to_vec();
        o[0..6].copy_from_slice(&bmac(4));
        o[6..12].copy_from_slice(&LB_MAC);
        o
    };
    let denied = tcp((CLIENT_MAC, LB_MAC), CLIENT, [192, 0, 2, 4], (40000, 80), 2);
    err(
        m.packet(&st, &denied, Verdict::Tx, &fwd(&denied)),
        "denied source",
    );
    let closed = tcp((CLIENT_MAC, LB_MAC), CLIENT, [192, 0, 2, 2], (40000, 81), 2);
    err(
        m.packet(&st, &closed, Verdict::Tx, &fwd(&closed)),
        "not served",
    );
    let mut tagged = tcp((CLIENT_MAC, LB_MAC), CLIENT, [192, 0, 2, 2], (40000, 80), 2);
    tagged.splice(12..12, [0x81, 0x00, 0x00, 42]);
    let mut out = tcp((CLIENT_MAC, LB_MAC), CLIENT, [192, 0, 2, 2], (40000, 80), 2);
    out[0..6].copy_from_slice(&bmac(3));
    out[6..12].copy_from_slice(&LB_MAC);
    err(m.packet(&st, &tagged, Verdict::Tx, &out), "VLAN-tagged");
    err(
        m.packet(&st, &tagged, Verdict::ToWorker(1), &tagged),
        "VLAN-tagged",
    );
}

#[test]
fn nat_checks_fire() {
    let s = snap(0);
    let mut pipe = pipeline();
    let mut m = Model::new();
    let st = step(&s, 10);
    let syn = tcp((CLIENT_MAC, LB_MAC), CLIENT, [192, 0, 2, 1], (40000, 80), 2);
    let (out, r) = run(&mut m, &mut pipe, &st, &syn);
    r.unwrap();
    let port = u16::from_be_bytes([out[34], out[35]]);
    // The forward rewrite may change addresses and ports only.
    let mut payload = out.clone();
    *payload.last_mut().unwrap() ^= 1;
    let mut fixed = payload.clone();
    fix_tcp4(&mut fixed);
    err(
        m.packet(&st, &syn, Verdict::Tx, &fixed),
        "nat: not the rewrite",
    );
    // The reply, translated back: passes; with the client port off by one: fires.
    let reply = tcp((bmac(1), LB_MAC), [10, 0, 1, 1], NAT, (8080, port), 0x12);
    let (back, r) = run(&mut m, &mut pipe, &st, &reply);
    r.unwrap();
    let mut wrong = back.clone();
    wrong[36..38].copy_from_slice(&40001u16.to_be_bytes());
    fix_tcp4(&mut wrong);
    err(
        m.packet(&st, &reply, Verdict::Tx, &wrong),
        "not the inverse",
    );
    let mut to_mac = back.clone();
    to_mac[0..6].copy_from_slice(&bmac(9));
    err(
        m.packet(&st, &reply, Verdict::Tx, &to_mac),
        "not its client's",
    );
    // A reply to a port no flow was given.
    let stray = tcp(
        (bmac(1), LB_MAC),
        [10, 0, 1, 1],
        NAT,
        (8080, port + 1),
        0x12,
    );
    err(
        m.packet(&st, &stray, Verdict::Tx, &back),
        "no flow was NAT'd",
    );
}

/// Runs `frames` through `pipe` in one burst and the model, in order; the verdicts, the
/// outputs' destination MACs and the model's first complaint.
fn run_burst(
    m: &mut Model,
    pipe: &mut Pipeline,
    s: &Step<'_>,
    frames: &[Vec<u8>],
) -> (Vec<Verdict>, Vec<[u8; 6]>, Result<(), String>) {
    let mut bufs: Vec<VecBuf> = frames.iter().map(|f| VecBuf::new(f)).collect();
    let mut verdicts = vec![Verdict::Tx; bufs.len()];
    pipe.process_burst(s.snap, &mut bufs, s.now_ms, &mut verdicts);
    let mut r = Ok(());
    for ((input, b), v) in frames.iter().zip(&bufs).zip(&verdicts) {
        r = r.and_then(|()| m.packet(s, input, *v, b.data()));
    }
    let r = r.and_then(|()| m.burst_done(s, pipe));
    let macs = bufs.iter().map(|b| mac(b.data(), 0)).collect();
    (verdicts, macs, r)
}

/// The fuzzer's crash-draining input, reduced: a NAT flow pinned (closing) to a backend
/// that then drains; in one burst, packets of the flow, one of them dropped before any
/// table is touched (for another MAC), more of them, then a SYN that reopens the flow on the
/// other backend. The model once read the flow's backend at the drop from the tables as the
/// whole burst left them (the SYN's), and took the next packet to the pinned backend for a
/// new flow sent to a draining one.
#[test]
fn a_drop_mid_burst_does_not_learn_what_later_packets_did() {
    let vip = [192, 0, 2, 5];
    let mut pipe = pipeline();
    let mut m = Model::new();
    let s1 = snap(0);
    let st1 = step(&s1, 10);
    let open_close = tcp((CLIENT_MAC, LB_MAC), CLIENT, vip, (80, 80), 0x03);
    let (out, r) = run(&mut m, &mut pipe, &st1, &open_close);
    r.unwrap();
    let pinned = u32::from(out[5]);
    let other = 3 - pinned;
    let s2 = snap(pinned);
    let st2 = step(&s2, 20);
    let seg = tcp((CLIENT_MAC, LB_MAC), CLIENT, vip, (80, 80), 0);
    let mut stray = seg.clone();
    stray[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 0x55]);
    stray.splice(12..12, [0x88, 0xa8, 0, 7, 0x81, 0, 0, 42]);
    let syn = tcp((CLIENT_MAC, LB_MAC), CLIENT, vip, (80, 80), 0x02);
    let burst = [seg.clone(), stray, seg.clone(), seg, syn];
    let (v, macs, r) = run_burst(&mut m, &mut pipe, &st2, &burst);
    let want = [
        Verdict::Tx,
        Verdict::Drop(DropReason::NotForUs),
        Verdict::Tx,
        Verdict::Tx,
        Verdict::Tx,
    ];
    assert_eq!(v, want);
    // The pipeline keeps the flow on its draining backend, and the SYN opens a new
    // connection on an active one.
    let (p, o) = (bmac(pinned), bmac(other));
    assert_eq!([macs[0], macs[2], macs[3], macs[4]], [p, p, p, o]);
    r.unwrap();
}

/// A SYN dropped after the pipeline moved its closing flow off a draining backend (its
/// encapsulation too big) lets the burst's next packet of the flow go where the SYN was
/// sent, within the shortest timeout and with nothing evicted.
#[test]
fn a_dropped_syn_may_move_its_flow_within_a_burst() {
    let vip = [192, 0, 2, 6];
    let mut pipe = pipeline();
    let mut m = Model::new();
    let s1 = snap(0);
    let st1 = step(&s1, 10);
    let open_close = tcp((CLIENT_MAC, LB_MAC), CLIENT, vip, (40000, 80), 0x03);
    let (out, r) = run(&mut m, &mut pipe, &st1, &open_close);
    r.unwrap();
    let pinned = u32::from(out[5]);
    let other = 3 - pinned;
    let s2 = snap(pinned);
    let st2 = step(&s2, 20);
    let big_syn = tcp_with(
        (CLIENT_MAC, LB_MAC),
        CLIENT,
        vip,
        (40000, 80),
        0x02,
        &[0; 1460],
    );
    let ack = tcp((CLIENT_MAC, LB_MAC), CLIENT, vip, (40000, 80), 0x10);
    let (v, macs, r) = run_burst(&mut m, &mut pipe, &st2, &[big_syn, ack.clone()]);
    assert_eq!(v, [Verdict::Drop(DropReason::TooBig), Verdict::Tx]);
    assert_eq!(macs[1], bmac(other));
    r.unwrap();
    // The backend the flow moved to drains too: the flow is pinned there.
    let s3 = snap(other);
    let st3 = step(&s3, 30);
    let (out, r) = run(&mut m, &mut pipe, &st3, &ack);
    assert_eq!(mac(&out, 0), bmac(other));
    r.unwrap();
}

/// A flow recorded by a packet that was dropped (a SYN too big to encapsulate) is pinned:
/// once its backend drains, its next packet may still go there.
#[test]
fn a_flow_recorded_by_a_dropped_packet_is_pinned() {
    let vip = [192, 0, 2, 6];
    let mut pipe = pipeline();
    let mut m = Model::new();
    let s1 = snap(0);
    let st1 = step(&s1, 10);
    let big_syn = tcp_with(
        (CLIENT_MAC, LB_MAC),
        CLIENT,
        vip,
        (40001, 80),
        0x02,
        &[0; 1460],
    );
    let (v, _, r) = run_burst(&mut m, &mut pipe, &st1, &[big_syn]);
    assert_eq!(v, [Verdict::Drop(DropReason::TooBig)]);
    r.unwrap();
    let (fwd, _, _) = pipe
        .find_flow(
            s1.hash_seed,
            IpAddr::from(CLIENT),
            IpAddr::from(vip),
            40001,
            80,
            6,
        )
        .expect("the dropped SYN's flow");
    let pinned = fwd.backend;
    let s2 = snap(pinned);
    let ack = tcp((CLIENT_MAC, LB_MAC), CLIENT, vip, (40001, 80), 0x10);
    let (out, r) = run(&mut m, &mut pipe, &step(&s2, 30), &ack);
    assert_eq!(mac(&out, 0), bmac(pinned));
    r.unwrap();
}

/// Recomputes the TCP checksum of an Ethernet + IPv4 (no options) + TCP frame.
fn fix_tcp4(f: &mut [u8]) {
    f[50..52].copy_from_slice(&[0, 0]);
    let p = parse(f).unwrap();
    let seg = &f[34..usize::from(p.l3_end)];
    let ps = sum(sum(0, &f[26..34]), &[]) + 6 + seg.len() as u64;
    let c = !fold(sum(ps, seg));
    f[50..52].copy_from_slice(&c.to_be_bytes());
}

/// Sets the sequence and acknowledgement numbers of an IPv4 TCP frame (Ethernet 14, IPv4 20
/// without options) and makes its checksum right again.
fn set_seq_ack(f: &mut [u8], seq: u32, ack: u32) {
    f[38..42].copy_from_slice(&seq.to_be_bytes());
    f[42..46].copy_from_slice(&ack.to_be_bytes());
    fix_tcp_checksum(f);
}

/// Makes the TCP checksum of such a frame right (the segment runs to the frame's end).
fn fix_tcp_checksum(f: &mut [u8]) {
    f[50..52].fill(0);
    let len = f.len() - 34;
    let ps = sum(sum(0, &f[26..30]), &f[30..34]) + u64::from(proto::TCP) + len as u64;
    let c = !fold(sum(ps, &f[34..]));
    f[50..52].copy_from_slice(&c.to_be_bytes());
}

/// The SYN proxy's checks: a SYN-ACK with a forged cookie, a wrong acknowledgement or
/// checksum; a valid cookie dropped as a bad one; a backend SYN with another ISN; an entry
/// left for a SYN the proxy answered.
#[test]
fn syn_proxy_checks_fire() {
    let snap = snap_with(0, SynProxy::On);
    let mut pipe = pipeline();
    let mut m = Model::new();
    let s = &step(&snap, 1000);
    let vip = [192, 0, 2, 1];
    let syn = tcp_with((CLIENT_MAC, LB_MAC), CLIENT, vip, (40000, 80), 2, b"");
    let (synack, r) = run(&mut m, &mut pipe, s, &syn);
    r.unwrap();
    let cookie = u32::from_be_bytes(synack[38..42].try_into().unwrap());
    // The SYN-ACK: its cookie, its acknowledgement, its checksum.
    let mut forged = synack.clone();
    set_seq_ack(&mut forged, cookie ^ 0x100, 1001);
    err(m.packet(s, &syn, Verdict::Tx, &forged), "no valid cookie");
    let mut wrong_ack = synack.clone();
    set_seq_ack(&mut wrong_ack, cookie, 1000);
    err(m.packet(s, &syn, Verdict::Tx, &wrong_ack), "acknowledges");
    let mut bad_sum = synack.clone();
    bad_sum[50] ^= 1;
    err(m.packet(s, &syn, Verdict::Tx, &bad_sum), "checksum");
    // A bad cookie is dropped; a valid one must not be.
    let mut ack = tcp_with((CLIENT_MAC, LB_MAC), CLIENT, vip, (40000, 80), 0x10, b"");
    set_seq_ack(&mut ack, 1001, (cookie ^ 0x100).wrapping_add(1));
    let mut b = VecBuf::new(&ack);
    let v = pipe.process(s.snap, &mut b, s.now_ms);
    assert_eq!(v, Verdict::Drop(DropReason::SynProxyBadCookie));
    m.packet(s, &ack, v, b.data()).unwrap();
    m.burst_done(s, &pipe).unwrap();
    set_seq_ack(&mut ack, 1001, cookie.wrapping_add(1));
    let bad = Verdict::Drop(DropReason::SynProxyBadCookie);
    err(m.packet(s, &ack, bad, &ack), "valid cookie");
    // The valid ACK becomes the backend's SYN, with the client's ISN.
    let (backend_syn, r) = run(&mut m, &mut pipe, s, &ack);
    r.unwrap();
    let mut other_isn = backend_syn.clone();
    other_isn[38..42].copy_from_slice(&1001u32.to_be_bytes());
    fix_tcp_checksum(&mut other_isn);
    err(m.packet(s, &ack, Verdict::Tx, &other_isn), "backend's SYN");
    // A SYN-ACK the proxy sent although it holds the flow: not "no entry".
    let mut fresh = Model::new();
    fresh.packet(s, &syn, Verdict::Tx, &synack).unwrap();
    err(fresh.burst_done(s, &pipe), "holds its flow");
}
