//! The sync thread against real UDP sockets on loopback (no DPDK): a peer's valid flows reach
//! the workers; forged, replayed, stale, misaddressed and unknown messages are dropped and
//! counted and reach no worker; published flows go out signed; a bulk request starts a walk
//! of every flow and is answered once the workers finished it.
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_dataplane::conntrack::FlowState;
use sluice_dataplane::pipeline::{SavedFlow, SavedNat};
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::worker::Command;

use super::message::{self, Header, Kind};
use super::{Sync, SyncLinks};
use crate::config::{SyncConfig, SyncPeer};
use crate::l2::message::unix_ms;

const KEY: &[u8] = b"0123456789abcdef-sync";

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(port: u16) -> SyncConfig {
    SyncConfig {
        host: "h1".into(),
        address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
        port,
        key: Some(String::from_utf8(KEY.to_vec()).unwrap()),
        key_file: None,
        ring_size: 1024,
        max_rate: 100_000,
        batch_ms: 1,
        refresh_seconds: 3600,
        bulk_timeout_ms: 0,
        peers: vec![SyncPeer {
            name: "p2".into(),
            address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            nat_addresses: vec![],
        }],
    }
}

fn flow(port: u16) -> SavedFlow {
    SavedFlow {
        worker: 0,
        client: "10.9.9.9".parse().unwrap(),
        client_port: port,
        vip: "192.0.2.1".parse().unwrap(),
        vip_port: 80,
        proto: 6,
        backend: "10.0.1.1".parse().unwrap(),
        backend_port: 8080,
        state: FlowState::TcpEstablished,
        remaining_ms: 8_000_000,
        nat: Some(SavedNat {
            addr: "10.0.0.3".parse().unwrap(),
            port: 20000 + port,
            client_mac: [2, 0, 0, 0, 0, 1],
            state: FlowState::TcpEstablished,
            remaining_ms: 8_000_000,
        }),
        proxy: None,
    }
}

fn datagram(
    kind: Kind,
    host: &str,
    seq: u64,
    unix_ms: u64,
    key: &[u8],
    flows: &[SavedFlow],
) -> Vec<u8> {
    let mut out = Vec::new();
    message::begin(
        &mut out,
        &Header {
            kind,
            host: host.into(),
            boot: 77,
            seq,
            unix_ms,
        },
    );
    for f in flows {
        message::put_record(&mut out, f);
    }
    message::finish(&mut out, flows.len() as u8, key);
    out
}

/// Waits up to 2 s for `f` to hold.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(2);
    while !f() {
        assert!(Instant::now() < end, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn only_a_listed_peers_fresh_signed_messages_reach_the_workers() {
    let port = free_port();
    let (ring_tx, ring_rx) = crossbeam_channel::bounded(1024);
    let (cmd_tx, cmd_rx) = crossbeam_channel::bounded(64);
    let stats = Arc::new(WorkerStats::new(16));
    let sync = Sync::start(
        &config(port),
        SyncLinks {
            rings: vec![ring_rx],
            commands: vec![cmd_tx],
            stats: vec![stats.clone()],
        },
    )
    .unwrap();
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let peer = UdpSocket::bind(("127.0.0.2", port)).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let stranger = UdpSocket::bind("127.0.0.3:0").unwrap();

    // A valid message: its flows reach the worker.
    let good = datagram(Kind::Flows, "p2", 1, unix_ms(), KEY, &[flow(1), flow(2)]);
    peer.send_to(&good, to).unwrap();
    match cmd_rx.recv_timeout(Duration::from_secs(2)).unwrap() {
        Command::InstallSynced(f) => assert_eq!(&f[..], &[flow(1), flow(2)]),
        c => panic!("unexpected {c:?}"),
    }

    // Forged, replayed, stale, misaddressed, unknown, garbage: each dropped and counted.
    let now = unix_ms();
    peer.send_to(&good, to).unwrap();
    let other_key = datagram(
        Kind::Flows,
        "p2",
        2,
        now,
        b"another-key-0123456",
        &[flow(3)],
    );
    peer.send_to(&other_key, to).unwrap();
    let mut flipped = datagram(Kind::Flows, "p2", 3, now, KEY, &[flow(4)]);
    flipped[45] ^= 0x10;
    peer.send_to(&flipped, to).unwrap();
    let stale = datagram(Kind::Flows, "p2", 4, now - 60_000, KEY, &[flow(5)]);
    peer.send_to(&stale, to).unwrap();
    let unknown = datagram(Kind::Flows, "p9", 1, now, KEY, &[flow(6)]);
    peer.send_to(&unknown, to).unwrap();
    let misaddressed = datagram(Kind::Flows, "p2", 5, now, KEY, &[flow(7)]);
    stranger.send_to(&misaddressed, to).unwrap();
    peer.send_to(b"SLSY but not really", to).unwrap();
    let want = [
        ("bad_key", 2),
        ("malformed", 1),
        ("replay", 1),
        ("stale", 1),
        ("unknown_host", 1),
        ("wrong_address", 1),
    ];
    eventually("every bad datagram counted", || {
        sync.status().dropped.values().sum::<u64>() == 7
    });
    let st = sync.status();
    for (reason, n) in want {
        assert_eq!(
            st.dropped.get(reason).copied(),
            Some(n),
            "{reason}: {:?}",
            st.dropped
        );
    }
    assert!(
        cmd_rx.try_recv().is_err(),
        "no bad datagram reached a worker"
    );
    assert_eq!(st.records_received, 2);
    assert_eq!(st.peers[0].records_received, 2);

    // What a worker publishes goes out signed, to the peer.
    ring_tx.send(flow(9)).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(from, to);
    let mut got = Vec::new();
    let h = message::decode(&buf[..n], KEY, &mut got).unwrap();
    assert_eq!((h.kind, h.host.as_str()), (Kind::Flows, "h1"));
    assert_eq!(got, vec![flow(9)]);

    // A bulk request: every worker walks all its flows; the answer comes once they are done.
    let ask = datagram(Kind::BulkRequest, "p2", 6, unix_ms(), KEY, &[]);
    peer.send_to(&ask, to).unwrap();
    match cmd_rx.recv_timeout(Duration::from_secs(2)).unwrap() {
        Command::SyncWalk { all } => assert!(all, "a bulk transfer includes synced flows"),
        c => panic!("unexpected {c:?}"),
    }
    std::thread::sleep(Duration::from_millis(50));
    peer.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    assert!(
        peer.recv_from(&mut buf).is_err(),
        "no answer before the walk ends"
    );
    stats.sync_walks.store(1, Relaxed);
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let (n, _) = peer.recv_from(&mut buf).unwrap();
    let h = message::decode(&buf[..n], KEY, &mut Vec::new()).unwrap();
    assert_eq!(h.kind, Kind::BulkDone);
    sync.stop();
}
