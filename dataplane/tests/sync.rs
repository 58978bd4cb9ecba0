//! Flow sync between hosts, at the pipeline: host A publishes its flows on its sync ring
//! (a TCP flow once established, a UDP flow at birth, never a lone SYN), host B installs them
//! as synced flows, and when A is gone B carries them on: the client's next segment reaches
//! the same backend from A's NAT address and port, the backend's reply to A's NAT address
//! reaches the client, B counts the flow adopted and tells its own peers. A synced flow never
//! replaces one of B's own, B never gives a peer's NAT address to a new flow, and a full sync
//! ring drops updates (counted) while forwarding goes on.
mod common;

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;

use common::*;
use sluice_dataplane::conntrack::FlowState;
use sluice_dataplane::pipeline::{SavedFlow, Verdict};
use sluice_dataplane::snapshot::Snapshot;

const VIP4: [u8; 4] = [192, 0, 2, 1];
const BACKEND4: [u8; 4] = [10, 0, 1, 1];
/// Host B's own NAT address (A's is common's NAT4).
const NAT4_B: [u8; 4] = [10, 0, 0, 4];

/// Host B's snapshot: the golden Services, B's own NAT address, then A's as a peer's.
fn snapshot_b() -> Snapshot {
    let a = snapshot(1);
    let mut local = a.local.clone();
    local.nat_ipv4 = vec![NAT4_B, NAT4];
    local.nat_ipv4_peers = 1;
    Snapshot::new(
        2,
        a.hash_seed,
        a.frontends().cloned().collect(),
        a.backends().cloned().collect(),
        local,
        1024,
    )
    .unwrap()
}

fn drain(rx: &crossbeam_channel::Receiver<SavedFlow>) -> Vec<SavedFlow> {
    rx.try_iter().collect()
}

#[test]
fn a_peers_flow_goes_on_through_the_survivor() {
    let snap_a = snapshot(1);
    let snap_b = snapshot_b();
    let (tx, rx) = crossbeam_channel::bounded(64);
    let mut a = pipeline();
    a.set_sync(Some(tx));

    // A: the SYN alone publishes nothing; the handshake's ACK publishes the flow.
    let (v, out) = run(
        &mut a,
        &snap_a,
        tcp4(CLIENT4, VIP4, 40000, 80, true, false, &[]),
        1,
    );
    assert_eq!(v, Verdict::Tx);
    let nat_port = u16::from_be_bytes([out[34], out[35]]);
    assert!(drain(&rx).is_empty(), "a lone SYN is not synced");
    let ack = tcp4(CLIENT4, VIP4, 40000, 80, false, true, &[]);
    assert_eq!(run(&mut a, &snap_a, ack, 2).0, Verdict::Tx);
    let synced = drain(&rx);
    assert_eq!(synced.len(), 1, "{synced:?}");
    let f = synced[0];
    assert_eq!(f.state, FlowState::TcpEstablished);
    assert_eq!((f.backend, f.backend_port), (IpAddr::from(BACKEND4), 8080));
    let n = f.nat.expect("a NAT flow carries its NAT side");
    assert_eq!(
        (n.addr, n.port, n.client_mac),
        (IpAddr::from(NAT4), nat_port, CLIENT_MAC)
    );
    // A UDP flow is published at birth.
    let dns = udp4(CLIENT4, VIP4, 5353, 53, b"q");
    assert_eq!(run(&mut a, &snap_a, dns, 3).0, Verdict::Tx);
    assert_eq!(drain(&rx).len(), 1);
    assert_eq!(a.stats().sync_published.load(Relaxed), 2);

    // B installs it as a synced flow: not counted as one of B's.
    let (tx_b, rx_b) = crossbeam_channel::bounded(64);
    let mut b = pipeline();
    b.set_sync(Some(tx_b));
    assert_eq!(b.install_synced(&snap_b, &synced, 10), 1);
    assert_eq!(b.stats().sync_installed.load(Relaxed), 1);
    assert_eq!(b.stats().new_flows.load(Relaxed), 0);

    // A is gone: the client's next segment reaches B and goes on from A's NAT address and port
    // to the same backend.
    let seg = tcp4(CLIENT4, VIP4, 40000, 80, false, true, b"x");
    let (v, out) = run(&mut b, &snap_b, seg, 11);
    assert_eq!(v, Verdict::Tx);
    assert_eq!(&out[26..30], &NAT4, "from A's NAT address");
    assert_eq!(&out[30..34], &BACKEND4, "to the same backend");
    assert_eq!(
        u16::from_be_bytes([out[34], out[35]]),
        nat_port,
        "A's NAT port"
    );
    assert_checksums_valid(&out);
    assert_eq!(b.stats().sync_adopted.load(Relaxed), 1);
    assert_eq!(
        b.stats().new_flows.load(Relaxed),
        1,
        "adopted: one of B's now"
    );
    let told = drain(&rx_b);
    assert_eq!(told.len(), 1, "B tells its peers it carries the flow now");
    assert_eq!(told[0].nat.map(|n| n.addr), Some(IpAddr::from(NAT4)));

    // The backend's reply to A's NAT address reaches the client from the VIP.
    let reply = tcp4(BACKEND4, NAT4, 8080, nat_port, false, true, b"y");
    let (v, out) = run(&mut b, &snap_b, reply, 12);
    assert_eq!(v, Verdict::Tx);
    assert_eq!(&out[0..6], &CLIENT_MAC);
    assert_eq!((&out[26..30], &out[30..34]), (&VIP4[..], &CLIENT4[..]));

    // B's own new flows take B's NAT address, never the peer's.
    for port in 41000..41020 {
        let (v, out) = run(
            &mut b,
            &snap_b,
            tcp4(CLIENT4, VIP4, port, 80, true, false, &[]),
            13,
        );
        assert_eq!(v, Verdict::Tx);
        assert_eq!(&out[26..30], &NAT4_B);
    }
}

#[test]
fn a_synced_flow_never_replaces_an_own_one() {
    let snap_b = snapshot_b();
    let mut b = pipeline();
    // B's own flow for the 5-tuple, to B's backend through B's NAT address.
    let syn = tcp4(CLIENT4, VIP4, 40000, 80, true, false, &[]);
    let (_, out) = run(&mut b, &snap_b, syn, 1);
    let own_port = u16::from_be_bytes([out[34], out[35]]);
    let peer = SavedFlow {
        worker: 0,
        client: IpAddr::from(CLIENT4),
        client_port: 40000,
        vip: IpAddr::from(VIP4),
        vip_port: 80,
        proto: 6,
        backend: IpAddr::from(BACKEND4),
        backend_port: 8080,
        state: FlowState::TcpEstablished,
        remaining_ms: 10_000,
        nat: Some(sluice_dataplane::pipeline::SavedNat {
            addr: IpAddr::from(NAT4),
            port: 25000,
            client_mac: CLIENT_MAC,
            state: FlowState::TcpEstablished,
            remaining_ms: 10_000,
        }),
        proxy: None,
    };
    assert_eq!(b.install_synced(&snap_b, &[peer], 2), 0);
    assert_eq!(b.stats().sync_conflicts.load(Relaxed), 1);
    let (_, out) = run(
        &mut b,
        &snap_b,
        tcp4(CLIENT4, VIP4, 40000, 80, false, true, b"x"),
        3,
    );
    assert_eq!(&out[26..30], &NAT4_B);
    assert_eq!(u16::from_be_bytes([out[34], out[35]]), own_port);
    // A flow naming a NAT address unknown here is not installed either.
    let stranger = SavedFlow {
        client_port: 40001,
        nat: peer.nat.map(|n| sluice_dataplane::pipeline::SavedNat {
            addr: "10.0.0.99".parse().unwrap(),
            ..n
        }),
        ..peer
    };
    assert_eq!(b.install_synced(&snap_b, &[stranger], 4), 0);
    assert_eq!(b.stats().sync_conflicts.load(Relaxed), 2);
}

#[test]
fn a_full_sync_ring_drops_updates_not_packets() {
    let snap = snapshot(1);
    let (tx, rx) = crossbeam_channel::bounded(4);
    let mut a = pipeline();
    a.set_sync(Some(tx));
    for port in 0..100u16 {
        let dns = udp4(CLIENT4, VIP4, 30000 + port, 53, b"q");
        assert_eq!(run(&mut a, &snap, dns, 1).0, Verdict::Tx);
    }
    assert_eq!(a.stats().sync_published.load(Relaxed), 4);
    assert_eq!(a.stats().sync_ring_full.load(Relaxed), 96);
    assert_eq!(drain(&rx).len(), 4);
}

#[test]
fn a_walk_publishes_every_own_flow_a_piece_at_a_time() {
    let snap = snapshot(1);
    let (tx, rx) = crossbeam_channel::bounded(1 << 16);
    let mut a = pipeline();
    for port in 0..300u16 {
        let dns = udp4(CLIENT4, VIP4, 30000 + port, 53, b"q");
        assert_eq!(run(&mut a, &snap, dns, 1).0, Verdict::Tx);
    }
    // Sync turned on later: nothing was published at birth.
    a.set_sync(Some(tx));
    a.start_sync_walk(false);
    let mut steps = 0;
    while a.sync_walking() {
        a.sync_walk_step(&snap, 2);
        steps += 1;
    }
    assert!(steps > 1, "the walk took {steps} step(s)");
    let own = drain(&rx);
    assert_eq!(own.len(), 300);
    assert_eq!(a.stats().sync_walks.load(Relaxed), 1);

    // A peer's flows installed here: a refresh leaves them out, a bulk transfer sends them.
    let peer: Vec<SavedFlow> = own
        .iter()
        .map(|f| SavedFlow {
            client_port: f.client_port + 1000,
            nat: f.nat.map(|n| sluice_dataplane::pipeline::SavedNat {
                port: n.port + 5000,
                ..n
            }),
            ..*f
        })
        .collect();
    assert_eq!(a.install_synced(&snap, &peer, 3), 300);
    for (all, want) in [(false, 300), (true, 600)] {
        a.start_sync_walk(all);
        while a.sync_walking() {
            a.sync_walk_step(&snap, 4);
        }
        assert_eq!(drain(&rx).len(), want, "all = {all}");
    }
}

#[test]
fn a_peers_nat_address_is_never_answered_by_arp() {
    use sluice_dataplane::pipeline::edge;
    use sluice_dataplane::stats::DropReason;
    let snap_b = snapshot_b();
    let mut b = pipeline();
    let ask = |target: [u8; 4]| {
        let mut buf = vec![0u8; edge::MIN_FRAME_LEN];
        let n = edge::arp_request(&mut buf, CLIENT_MAC, CLIENT4, target);
        buf.truncate(n.max(edge::MIN_FRAME_LEN));
        buf
    };
    assert_eq!(
        run(&mut b, &snap_b, ask(NAT4_B), 1).0,
        Verdict::Tx,
        "B's own"
    );
    assert_eq!(
        run(&mut b, &snap_b, ask(NAT4), 2).0,
        Verdict::Drop(DropReason::VipNotOwned),
        "A answers for its own NAT address"
    );
}
