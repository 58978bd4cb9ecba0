//! The worker on real DPDK: a ring-backed port (rte_eth_from_rings) is the wire. Packets in,
//! rewritten packets out, a snapshot swap mid-stream loses no packet, established flows keep
//! their backend and new flows see the new backend set. Needs root (hugepages): scripts/test.
mod common;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dpdk_sys::{Eal, MbufBatch, MbufRing, Mempool, PortConfig};
use sluice_dataplane::pipeline::{Pipeline, PipelineConfig};
use sluice_dataplane::snapshot::{Method, Protocol, Snapshot};
use sluice_dataplane::worker::{
    self, Command, FlowAnswer, FlowQuery, WorkerConfig, WorkerLinks, WorkerQueues,
};

const VIP: [u8; 4] = [192, 0, 2, 10];

fn snap(generation: u64, backends: Vec<u32>) -> Snapshot {
    Snapshot::new(
        generation,
        42,
        vec![frontend(
            0,
            "192.0.2.10",
            80,
            Protocol::Tcp,
            Method::DsrL2,
            backends,
        )],
        vec![
            backend(1, "10.0.1.1", 8080),
            backend(2, "10.0.1.2", 8080),
            backend(4, "10.0.1.4", 8080),
        ],
        local(),
        1024,
    )
    .unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// EAL starts once per process; the tests share it.
fn eal() -> Arc<Eal> {
    static EAL: std::sync::OnceLock<Arc<Eal>> = std::sync::OnceLock::new();
    EAL.get_or_init(|| {
        Arc::new(
            Eal::init(&[
                "worker-test",
                "--no-pci",
                "--in-memory",
                "-l",
                "0",
                "--log-level=lib.eal:error",
            ])
            .expect("EAL init (needs root + hugepages: run sudo scripts/test)"),
        )
    })
    .clone()
}

#[test]
fn worker_forwards_swaps_snapshots_and_keeps_flows() {
    let eal = eal();
    let pool = Arc::new(Mempool::new("w_pool", 8191, 256, Mempool::DEFAULT_DATA_ROOM, -1).unwrap());
    let mut wire = MbufRing::port(&eal, "w_wire", 4096).unwrap();
    let (mut rxq, mut txq) = wire.port.configure(&PortConfig::default(), &pool).unwrap();
    wire.port.start().unwrap();

    let (snap_tx, snap_rx) = crossbeam_channel::bounded(4);
    let (ret_tx, ret_rx) = crossbeam_channel::bounded(4);
    let (nb_tx, nb_rx) = crossbeam_channel::bounded(64);
    let (cmd_tx, cmd_rx) = crossbeam_channel::bounded(64);
    let stop = Arc::new(AtomicBool::new(false));
    let links = WorkerLinks {
        snapshots: snap_rx,
        retired: ret_tx,
        neighbors: nb_tx,
        commands: cmd_rx,
        to_workers: vec![None],
        from_workers: vec![],
        stop: stop.clone(),
    };
    let queues = WorkerQueues {
        pairs: vec![(rxq.remove(0), txq.remove(0))],
    };
    // Idle mode: the worker sleeps between polls while the test prepares the next burst,
    // and must still forward every packet.
    let cfg = WorkerConfig {
        tx_flush_us: 50,
        idle_sleep_us: Some(50),
        ..WorkerConfig::default()
    };
    let h = worker::spawn(
        eal.clone(),
        cfg,
        queues,
        links,
        pool.clone(),
        Arc::new(snap(1, vec![1, 2])),
        1024,
    )
    .unwrap();
    let stats = h.stats.clone();

    let send = |frames: &[Vec<u8>], inject: &mut dpdk_sys::RingProducer| {
        for chunk in frames.chunks(32) {
            let mut b = MbufBatch::new();
            for f in chunk {
                let mut m = pool.alloc().expect("mbuf");
                m.append(f.len()).unwrap().copy_from_slice(f);
                b.push(m).unwrap();
            }
            while !b.is_empty() {
                inject.enqueue(&mut b);
            }
        }
    };
    let mut captured: Vec<Vec<u8>> = Vec::new();
    let collect = |want: usize, capture: &mut dpdk_sys::RingConsumer, out: &mut Vec<Vec<u8>>| {
        let t = Instant::now();
        while out.len() < want {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "got {} of {want} packets",
                out.len()
            );
            let mut b = MbufBatch::new();
            capture.dequeue(&mut b);
            for m in b.drain() {
                out.push(m.data().to_vec());
            }
        }
    };

    // 1. 400 new flows with generation 1 ([1, 2]); the snapshot with a third backend arrives
    //    halfway through the stream.
    let syns: Vec<Vec<u8>> = (0..400)
        .map(|i| tcp4(CLIENT4, VIP, 30000 + i, 80, true, false, &[]))
        .collect();
    send(&syns[..200], &mut wire.inject);
    snap_tx.send(Arc::new(snap(2, vec![1, 2, 4]))).unwrap();
    send(&syns[200..], &mut wire.inject);
    collect(400, &mut wire.capture, &mut captured);
    wait_for("generation 2", || {
        stats.snapshot_generation.load(Relaxed) == 2
    });
    let retired = ret_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("old snapshot handed back");
    assert_eq!(retired.generation, 1);
    // Every packet came out, in order, with only the MACs rewritten.
    let mut first_backend = Vec::new();
    for (i, out) in captured.iter().enumerate() {
        assert_eq!(&out[6..12], &LB_MAC);
        assert_eq!(&out[12..], &syns[i][12..], "packet {i} otherwise untouched");
        first_backend.push(out[5]);
    }
    assert_eq!(stats.rx_packets.load(Relaxed), 400);
    assert_eq!(stats.tx_packets.load(Relaxed), 400);
    assert_eq!(stats.total_drops(), 0);

    // 2. The same flows again (ACKs): each keeps the backend it had, whatever Maglev says now.
    let acks: Vec<Vec<u8>> = (0..400)
        .map(|i| tcp4(CLIENT4, VIP, 30000 + i, 80, false, true, b"data"))
        .collect();
    send(&acks, &mut wire.inject);
    let mut again = Vec::new();
    collect(400, &mut wire.capture, &mut again);
    for (i, out) in again.iter().enumerate() {
        assert_eq!(
            out[5], first_backend[i],
            "flow {i} kept its backend across the swap"
        );
    }

    // 3. New flows see the third backend.
    let fresh: Vec<Vec<u8>> = (0..600)
        .map(|i| tcp4(CLIENT4, VIP, 50000 + i, 80, true, false, &[]))
        .collect();
    send(&fresh, &mut wire.inject);
    let mut third = Vec::new();
    collect(600, &mut wire.capture, &mut third);
    let to4 = third.iter().filter(|o| o[5] == 4).count();
    assert!(to4 > 100, "new flows reach the new backend ({to4} of 600)");

    // 4. A neighbour resolution request goes out as an ARP request.
    cmd_tx
        .send(Command::Resolve {
            target: "10.0.1.9".parse().unwrap(),
            from: "10.0.0.2".parse().unwrap(),
        })
        .unwrap();
    let mut arp = Vec::new();
    collect(1, &mut wire.capture, &mut arp);
    assert_eq!(&arp[0][12..14], &[0x08, 0x06]);
    assert_eq!(&arp[0][38..42], &[10, 0, 1, 9]);
    // ... and the reply comes back to the control plane.
    let mut reply = vec![0u8; 60];
    sluice_dataplane::wire::ethernet::emit(&mut reply, LB_MAC, bmac(9), 0x0806);
    sluice_dataplane::wire::arp::emit(&mut reply[14..], 2, bmac(9), [10, 0, 1, 9], LB_MAC, LB4);
    send(&[reply], &mut wire.inject);
    let ev = nb_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(ev.ip, "10.0.1.9".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(ev.mac, bmac(9));

    // 5. The admin API's conntrack lookup: answered at the worker's tick, off the packet path.
    let ask = |query: FlowQuery| -> FlowAnswer {
        let (tx, rx) = crossbeam_channel::bounded(1);
        cmd_tx
            .send(Command::FindFlows { query, reply: tx })
            .unwrap();
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the worker answers")
    };
    let client = std::net::IpAddr::from(CLIENT4);
    let exact = ask(FlowQuery {
        client,
        client_port: Some(30005),
        vip: Some(std::net::IpAddr::from(VIP)),
        vip_port: Some(80),
        proto: Some(6),
        max: 10,
    });
    assert_eq!(exact.worker, 0);
    assert_eq!(exact.flows.len(), 1);
    let f = exact.flows[0];
    assert_eq!((f.sport, f.dport, f.proto), (30005, 80, 6));
    assert_eq!(f.fwd.backend, u32::from(first_backend[5]));
    assert_eq!(
        f.state,
        sluice_dataplane::conntrack::FlowState::TcpEstablished
    );
    assert!(exact.now_ms.wrapping_sub(f.last_seen_ms) < 60_000);
    let some = ask(FlowQuery {
        client,
        client_port: None,
        vip: None,
        vip_port: None,
        proto: None,
        max: 10,
    });
    assert_eq!(some.flows.len(), 10, "capped at max");
    let none = ask(FlowQuery {
        client: "10.8.8.8".parse().unwrap(),
        client_port: None,
        vip: None,
        vip_port: None,
        proto: None,
        max: 10,
    });
    assert!(none.flows.is_empty());

    h.stop().unwrap();
    assert_eq!(stats.tx_packets.load(Relaxed), 1401);
    assert_eq!(stats.rx_packets.load(Relaxed), 1401);
    assert!(stats.polls.load(Relaxed) > 0);
    assert!(stats.idle_sleeps.load(Relaxed) > 0, "idle mode never slept");
    drop(wire);
    assert_eq!(pool.in_use(), 0, "no mbuf leaked");
}

/// Two workers, each on its own ring port. A NAT flow opened through worker 0 owns a port of
/// worker 0's slice; its reply arrives at worker 1 (as RSS could deliver it), which hands it to
/// worker 0 over their SP/SC ring; worker 0 translates it back and sends it out of its port.
#[test]
fn nat_reply_on_the_wrong_worker_reaches_its_owner() {
    let eal = eal();
    let pool =
        Arc::new(Mempool::new("w2_pool", 8191, 256, Mempool::DEFAULT_DATA_ROOM, -1).unwrap());
    let mut wires = Vec::new();
    let mut pairs = Vec::new();
    for i in 0..2 {
        let mut w = MbufRing::port(&eal, &format!("w2_wire{i}"), 1024).unwrap();
        let (mut rx, mut tx) = w.port.configure(&PortConfig::default(), &pool).unwrap();
        w.port.start().unwrap();
        pairs.push((rx.remove(0), tx.remove(0)));
        wires.push(w);
    }
    let (p01, c01) = MbufRing::create("w2_r01", 1024, -1).unwrap();
    let (p10, c10) = MbufRing::create("w2_r10", 1024, -1).unwrap();
    let snapshot = Arc::new(snapshot(1));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    let mut rings_to = [vec![None, Some(p01)], vec![Some(p10), None]];
    let mut rings_from = [vec![c10], vec![c01]];
    let (nb_tx, _nb_rx) = crossbeam_channel::bounded(64);
    let mut keep = Vec::new();
    for (w, pair) in pairs.into_iter().enumerate() {
        let (_stx, srx) = crossbeam_channel::bounded(4);
        let (rtx, rrx) = crossbeam_channel::bounded(4);
        let (_ctx, crx) = crossbeam_channel::bounded(4);
        keep.push((_stx, rrx, _ctx));
        let links = WorkerLinks {
            snapshots: srx,
            retired: rtx,
            neighbors: nb_tx.clone(),
            commands: crx,
            to_workers: std::mem::take(&mut rings_to[w]),
            from_workers: std::mem::take(&mut rings_from[w]),
            stop: stop.clone(),
        };
        let cfg = WorkerConfig {
            index: w as u16,
            pipeline: PipelineConfig {
                worker: w as u16,
                workers: 2,
                conntrack: sluice_dataplane::conntrack::ConntrackConfig {
                    capacity: 1 << 12,
                    ..Default::default()
                },
                conntrack_v6_capacity: 1 << 10,
                affinity_capacity: 1 << 10,
                nat_port_start: 0,
                reset_unknown_flows: true,
                source_limits: Default::default(),
                syn_cookie_key: Default::default(),
            },
            ..WorkerConfig::default()
        };
        handles.push(
            worker::spawn(
                eal.clone(),
                cfg,
                WorkerQueues { pairs: vec![pair] },
                links,
                pool.clone(),
                snapshot.clone(),
                1024,
            )
            .unwrap(),
        );
    }
    let put = |w: &mut dpdk_sys::RingPort, f: &[u8]| {
        let mut b = MbufBatch::new();
        let mut m = pool.alloc().unwrap();
        m.append(f.len()).unwrap().copy_from_slice(f);
        b.push(m).unwrap();
        while !b.is_empty() {
            w.inject.enqueue(&mut b);
        }
    };
    let get = |w: &mut dpdk_sys::RingPort| -> Vec<u8> {
        let t = Instant::now();
        loop {
            let mut b = MbufBatch::new();
            if w.capture.dequeue(&mut b) > 0 {
                return b.drain().next().unwrap().data().to_vec();
            }
            assert!(t.elapsed() < Duration::from_secs(5), "nothing transmitted");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    // SYN through worker 0: NAT to backend 1 from 10.0.0.3 and the first port of slice 0.
    put(
        &mut wires[0],
        &tcp4(CLIENT4, [192, 0, 2, 1], 45000, 80, true, false, &[]),
    );
    let out = get(&mut wires[0]);
    let nat_port = u16::from_be_bytes([out[34], out[35]]);
    assert_eq!(&out[26..30], &NAT4);
    assert_eq!(Pipeline::nat_owner(&snapshot, 2, nat_port), 0);
    // The backend's reply lands on worker 1.
    let mut reply = Vec::new();
    etherparse::PacketBuilder::ethernet2(bmac(1), LB_MAC)
        .ipv4([10, 0, 1, 1], NAT4, 64)
        .tcp(8080, nat_port, 7, 1000)
        .syn()
        .ack(1001)
        .write(&mut reply, &[])
        .unwrap();
    put(&mut wires[1], &reply);
    let back = get(&mut wires[0]);
    assert_eq!(&back[0..6], &CLIENT_MAC, "to the client");
    assert_eq!(&back[26..30], &[192, 0, 2, 1], "from the VIP");
    assert_eq!(&back[30..34], &CLIENT4);
    assert_eq!(u16::from_be_bytes([back[36], back[37]]), 45000);
    let s1 = handles[1].stats.clone();
    let s0 = handles[0].stats.clone();
    for h in handles {
        h.stop().unwrap();
    }
    assert_eq!(s1.to_other_worker.load(Relaxed), 1);
    assert_eq!(s0.from_other_worker.load(Relaxed), 1);
    assert_eq!(s0.nat_replies.load(Relaxed), 1);
    let mut b = MbufBatch::new();
    assert_eq!(
        wires[1].capture.dequeue(&mut b),
        0,
        "worker 1 sent nothing itself"
    );
    drop(keep);
    drop(wires);
}
