//! Flows kept across a planned restart: a pipeline's flows exported at stop, resolved by
//! address against the next process's snapshot (whose ids differ) and restored into a fresh
//! pipeline go on as before: the client's next segment reaches the same backend through the
//! same NAT port, the backend's reply reaches the client, a restored NAT port is not handed out
//! again, and flows whose frontend or backend is gone are refused with their reason.
mod common;

use std::net::IpAddr;

use common::*;
use sluice_dataplane::conntrack::FlowState;
use sluice_dataplane::pipeline::{RestoreFlow, SavedFlow, Unrestorable, Verdict};
use sluice_dataplane::snapshot::{Method, Protocol, Snapshot};

const VIP4: [u8; 4] = [192, 0, 2, 1];
const DSR4: [u8; 4] = [192, 0, 2, 2];
const IPIP4: [u8; 4] = [192, 0, 2, 3];
const VIP6: &str = "2001:db8::1";
const BACKEND4: [u8; 4] = [10, 0, 1, 1];

/// The golden snapshot's flows in the next process: the same Services under other ids, the
/// `dsr-ipip` frontend (192.0.2.3:80) gone.
fn next_snapshot() -> Snapshot {
    Snapshot::new(
        7,
        42,
        vec![
            frontend(20, "192.0.2.1", 80, Protocol::Tcp, Method::Nat, vec![11]),
            frontend(22, "192.0.2.2", 80, Protocol::Tcp, Method::DsrL2, vec![11]),
            frontend(24, VIP6, 80, Protocol::Tcp, Method::Nat, vec![13]),
        ],
        vec![
            backend(11, "10.0.1.1", 8080),
            backend(13, "fd00:1::1", 8080),
        ],
        local(),
        1024,
    )
    .unwrap()
}

#[test]
fn flows_survive_export_and_restore() {
    let old = snapshot(1);
    let mut a = pipeline();
    // Established flows: NAT IPv4, NAT IPv6, dsr-l2, dsr-ipip (whose frontend will be gone).
    let (v, out) = run(
        &mut a,
        &old,
        tcp4(CLIENT4, VIP4, 40000, 80, true, false, &[]),
        1,
    );
    assert_eq!(v, Verdict::Tx);
    let nat_port = u16::from_be_bytes([out[34], out[35]]);
    run(
        &mut a,
        &old,
        tcp4(CLIENT4, VIP4, 40000, 80, false, true, &[]),
        2,
    );
    let v6 = tcp6(CLIENT6, common::v6(VIP6), 40001, 80, true, &[]);
    assert_eq!(run(&mut a, &old, v6, 3).0, Verdict::Tx);
    for vip in [DSR4, IPIP4] {
        let syn = tcp4(CLIENT4, vip, 40002, 80, true, false, &[]);
        assert_eq!(run(&mut a, &old, syn, 4).0, Verdict::Tx);
    }

    let mut saved = Vec::new();
    a.export_flows(&old, 1_000, &mut saved);
    assert_eq!(saved.len(), 4, "{saved:?}");
    let nat4 = saved
        .iter()
        .find(|f| f.vip == IpAddr::from(VIP4))
        .expect("the NAT flow was saved");
    assert_eq!(nat4.backend, IpAddr::from(BACKEND4));
    assert_eq!(nat4.backend_port, 8080);
    assert_eq!(nat4.state, FlowState::TcpEstablished);
    // Last seen at 2 ms: its 300 s run from the end of that epoch (1,023 ms).
    assert_eq!(
        nat4.remaining_ms,
        300_000 + (sluice_dataplane::conntrack::EPOCH_MS - 1) - 1_000
    );
    let n = nat4.nat.expect("with its NAT side");
    assert_eq!((n.addr, n.port), (IpAddr::from(NAT4), nat_port));
    assert_eq!(n.client_mac, CLIENT_MAC);
    assert!(saved
        .iter()
        .filter(|f| f.vip != IpAddr::from(VIP4) && f.vip != VIP6.parse::<IpAddr>().unwrap())
        .all(|f| f.nat.is_none()));

    // The next process: other ids, one frontend gone.
    let next = next_snapshot();
    let (ok, refused): (Vec<_>, Vec<_>) = saved
        .iter()
        .map(|f| f.resolve(&next))
        .partition(Result::is_ok);
    let ok: Vec<RestoreFlow> = ok.into_iter().map(Result::unwrap).collect();
    assert_eq!(ok.len(), 3);
    assert_eq!(refused, vec![Err(Unrestorable::FrontendGone)]);
    let r4 = ok.iter().find(|r| r.flow == *nat4).unwrap();
    assert_eq!((r4.frontend, r4.backend, r4.nat_addr), (20, 11, 0));

    let mut b = pipeline();
    assert_eq!(b.restore_flows(&next, &ok, 0), 3);
    assert_eq!(b.flows(), 3);

    // The client's next segment: same backend, same NAT port, no new scheduling.
    let (v, out) = run(
        &mut b,
        &next,
        tcp4(CLIENT4, VIP4, 40000, 80, false, true, b"x"),
        5,
    );
    assert_eq!(v, Verdict::Tx);
    assert_eq!(&out[26..30], &NAT4, "from the NAT address");
    assert_eq!(&out[30..34], &BACKEND4, "to the same backend");
    assert_eq!(
        u16::from_be_bytes([out[34], out[35]]),
        nat_port,
        "same NAT port"
    );
    assert_checksums_valid(&out);
    // The backend's reply goes back to the client, from the VIP.
    let reply = tcp4(BACKEND4, NAT4, 8080, nat_port, false, true, b"y");
    let (v, out) = run(&mut b, &next, reply, 6);
    assert_eq!(v, Verdict::Tx);
    assert_eq!(&out[0..6], &CLIENT_MAC);
    assert_eq!((&out[26..30], &out[30..34]), (&VIP4[..], &CLIENT4[..]));
    assert_eq!(u16::from_be_bytes([out[34], out[35]]), 80);
    // The IPv6 NAT flow and the dsr-l2 flow go on too (non-SYN segments of unknown NAT flows
    // would be reset).
    let seg6 = tcp6(CLIENT6, common::v6(VIP6), 40001, 80, false, b"z");
    assert_eq!(run(&mut b, &next, seg6, 7).0, Verdict::Tx);
    let dsr = tcp4(CLIENT4, DSR4, 40002, 80, false, true, b"z");
    assert_eq!(run(&mut b, &next, dsr, 7).0, Verdict::Tx);
    assert_eq!(b.flows(), 3, "no flow was scheduled anew");

    // A new client's SYN gets another NAT port: the restored one is taken (the fresh
    // pipeline's cursor starts at the first port of the range, which the old one used too).
    let (v, out) = run(
        &mut b,
        &next,
        tcp4(CLIENT4, VIP4, 40100, 80, true, false, &[]),
        8,
    );
    assert_eq!(v, Verdict::Tx);
    assert_ne!(u16::from_be_bytes([out[34], out[35]]), nat_port);

    // Restored flows count as new (active = new - closed stays the table's count).
    let s = b.stats();
    assert_eq!(s.new_flows.load(std::sync::atomic::Ordering::Relaxed), 4);
}

#[test]
fn unrestorable_flows_name_their_reason() {
    let next = next_snapshot();
    let base = SavedFlow {
        worker: 0,
        client: IpAddr::from(CLIENT4),
        client_port: 1,
        vip: IpAddr::from(VIP4),
        vip_port: 80,
        proto: 6,
        backend: IpAddr::from(BACKEND4),
        backend_port: 8080,
        state: FlowState::TcpEstablished,
        remaining_ms: 1000,
        nat: None,
        proxy: None,
    };
    assert!(base.resolve(&next).is_ok());
    let gone = SavedFlow {
        backend: "10.0.1.2".parse().unwrap(),
        ..base
    };
    assert_eq!(gone.resolve(&next), Err(Unrestorable::BackendGone));
    let other_port = SavedFlow {
        backend_port: 9090,
        ..base
    };
    assert_eq!(other_port.resolve(&next), Err(Unrestorable::BackendGone));
    let udp = SavedFlow { proto: 17, ..base };
    assert_eq!(udp.resolve(&next), Err(Unrestorable::FrontendGone));
    let nat = SavedFlow {
        nat: Some(sluice_dataplane::pipeline::SavedNat {
            addr: "10.0.0.99".parse().unwrap(),
            port: 20000,
            client_mac: CLIENT_MAC,
            state: FlowState::TcpEstablished,
            remaining_ms: 1000,
        }),
        ..base
    };
    assert_eq!(nat.resolve(&next), Err(Unrestorable::NatAddressGone));
    let expired = SavedFlow {
        remaining_ms: 0,
        ..base
    };
    assert_eq!(expired.resolve(&next), Err(Unrestorable::Expired));
}

/// Right after a start the backends' next hops are unresolved: a restored flow's segments are
/// dropped (the client retransmits) rather than reset as unknown, and reach the same backend
/// once the next hop is known.
#[test]
fn restored_flow_waits_for_its_next_hop() {
    let old = snapshot(1);
    let mut a = pipeline();
    run(
        &mut a,
        &old,
        tcp4(CLIENT4, VIP4, 40000, 80, true, false, &[]),
        1,
    );
    let mut saved = Vec::new();
    a.export_flows(&old, 2, &mut saved);
    let resolved = next_snapshot();
    let restore: Vec<RestoreFlow> = saved
        .iter()
        .map(|f| f.resolve(&resolved).unwrap())
        .collect();
    let mut unresolved = backend(11, "10.0.1.1", 8080);
    unresolved.mac = None;
    let first = Snapshot::new(
        1,
        42,
        vec![frontend(
            20,
            "192.0.2.1",
            80,
            Protocol::Tcp,
            Method::Nat,
            vec![11],
        )],
        vec![unresolved],
        local(),
        1024,
    )
    .unwrap();
    let mut b = pipeline();
    assert_eq!(b.restore_flows(&first, &restore, 0), 1);
    let seg = || tcp4(CLIENT4, VIP4, 40000, 80, false, true, b"x");
    assert_eq!(
        run(&mut b, &first, seg(), 5).0,
        Verdict::Drop(sluice_dataplane::stats::DropReason::NextHopUnresolved)
    );
    let (v, out) = run(&mut b, &resolved, seg(), 6);
    assert_eq!(v, Verdict::Tx);
    assert_eq!(&out[30..34], &BACKEND4);
}
