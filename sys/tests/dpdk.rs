//! The bindings on real DPDK: EAL with `--no-pci` and virtual devices (net_ring, net_null,
//! net_pcap). EAL starts once per process, so every test here shares one EAL started on first
//! use, with all the virtual devices the tests need. Needs root (hugepages); run by scripts/test.

use std::path::PathBuf;
use std::sync::OnceLock;

use dpdk_sys::{register_thread, Eal, Mbuf, MbufBatch, MbufRing, Mempool, Port, PortConfig, BURST};

struct Env {
    eal: Eal,
    pcap_in: PathBuf,
    pcap_out: PathBuf,
    pcap_frames: Vec<Vec<u8>>,
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-dpdk-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Frames for the pcap replay test: distinct sizes and contents.
fn pcap_frames() -> Vec<Vec<u8>> {
    (0..7u8)
        .map(|i| {
            let len = 60 + 37 * i as usize;
            (0..len)
                .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i))
                .collect()
        })
        .collect()
}

fn write_pcap(path: &PathBuf, frames: &[Vec<u8>]) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    for (i, f) in frames.iter().enumerate() {
        out.extend_from_slice(&(1_700_000_000u32 + i as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f);
    }
    std::fs::write(path, out).unwrap();
}

/// Reads a classic pcap file (either byte order, micro or nano seconds) into frames.
fn read_pcap(path: &PathBuf) -> Vec<Vec<u8>> {
    let b = std::fs::read(path).unwrap();
    assert!(
        b.len() >= 24,
        "pcap file {} too short: {} bytes",
        path.display(),
        b.len()
    );
    let magic = u32::from_le_bytes(b[0..4].try_into().unwrap());
    let le = matches!(magic, 0xa1b2_c3d4 | 0xa1b2_3c4d);
    assert!(
        le || matches!(magic.swap_bytes(), 0xa1b2_c3d4 | 0xa1b2_3c4d),
        "bad pcap magic {magic:#x}"
    );
    let rd = |s: &[u8]| {
        let a: [u8; 4] = s.try_into().unwrap();
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let mut off = 24;
    let mut frames = Vec::new();
    while off + 16 <= b.len() {
        let caplen = rd(&b[off + 8..off + 12]) as usize;
        off += 16;
        frames.push(b[off..off + caplen].to_vec());
        off += caplen;
    }
    frames
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let d = dir();
        let pcap_in = d.join("in.pcap");
        let pcap_out = d.join("out.pcap");
        let frames = pcap_frames();
        write_pcap(&pcap_in, &frames);
        let args = vec![
            "dpdk-test".to_string(),
            "--no-pci".into(),
            "--in-memory".into(),
            "-l".into(),
            "0".into(),
            "--log-level=lib.eal:error".into(),
            "--vdev=net_ring0".into(),
            "--vdev=net_null0".into(),
            format!("--vdev=net_pcap0,rx_pcap={},tx_pcap={}", pcap_in.display(), pcap_out.display()),
        ];
        let eal = Eal::init(&args).unwrap_or_else(|e| {
            panic!("EAL init failed: {e}. These tests need root and hugepages: run `sudo scripts/test`.")
        });
        Env {
            eal,
            pcap_in,
            pcap_out,
            pcap_frames: frames,
        }
    })
}

fn fill(m: &mut Mbuf, len: usize, seed: u32) {
    let d = m.append(len).expect("tailroom");
    for (j, b) in d.iter_mut().enumerate() {
        *b = (seed as usize * 7 + j) as u8;
    }
}

#[test]
fn eal_refuses_second_init() {
    let _ = env();
    let e = Eal::init(&["again", "--no-pci"]).unwrap_err();
    assert!(matches!(e, dpdk_sys::DpdkError::AlreadyInitialised), "{e}");
}

#[test]
fn mempool_alloc_and_return() {
    let env = env();
    assert!(env.eal.port_count() >= 3);
    let pool = Mempool::new("t_pool", 1023, 0, Mempool::DEFAULT_DATA_ROOM, -1).unwrap();
    assert_eq!(pool.available(), 1023);
    let mut held: Vec<Mbuf> = (0..100).map(|_| pool.alloc().unwrap()).collect();
    assert_eq!(pool.available(), 923);
    assert_eq!(pool.in_use(), 100);
    let m = &mut held[0];
    assert_eq!(m.len(), 0);
    assert!(m.headroom() >= 128, "headroom {}", m.headroom());
    fill(m, 100, 1);
    assert_eq!(m.len(), 100);
    assert_eq!(m.segments(), 1);
    // data() and len() read the mbuf fields themselves (offsets from the C compiler); the
    // shim's rte_pktmbuf_prepend moves data_off and data_len, and they follow.
    assert!(m.prepend(20));
    assert_eq!(m.len(), 120);
    assert_eq!(m.data()[20], 7);
    assert_eq!(
        m.headroom() + m.len() + m.tailroom(),
        Mempool::DEFAULT_DATA_ROOM as usize
    );
    assert!(m.adj(20));
    assert!(m.trim(50));
    assert_eq!(m.len(), 50);
    assert!(!m.trim(51), "trim past the data must fail");
    assert!(
        m.append(100_000).is_none(),
        "append past tailroom must fail"
    );
    drop(held);
    assert_eq!(pool.available(), 1023);
    // Exhaustion gives None, not a crash.
    let all: Vec<Mbuf> = std::iter::from_fn(|| pool.alloc()).collect();
    assert_eq!(all.len(), 1023);
    assert!(pool.alloc().is_none());
}

#[test]
fn ring_port_bursts_exact_counts_and_bytes_and_stats() {
    let env = env();
    let pool = Mempool::new("t_ring_pool", 4095, 0, Mempool::DEFAULT_DATA_ROOM, -1).unwrap();
    let mut port = Port::by_name(&env.eal, "net_ring0").unwrap();
    assert_eq!(port.driver_name().unwrap(), "net_ring");
    let (mut rx, mut tx) = port.configure(&PortConfig::default(), &pool).unwrap();
    assert!(
        !port.set_mtu(1500).unwrap(),
        "net_ring has no MTU to set: not an error, reported as not set"
    );
    port.start().unwrap();
    port.reset_stats().unwrap();
    assert!(port.link().unwrap().up);
    let _mac = port.mac().unwrap();

    // 10 bursts of 32 distinct packets, 64..=127 bytes each.
    let mut sent = 0u64;
    let mut sent_bytes = 0u64;
    let mut received = Vec::new();
    for burst in 0..10u32 {
        let mut b = MbufBatch::new();
        for i in 0..BURST as u32 {
            let mut m = pool.alloc().unwrap();
            let len = 64 + ((burst * 32 + i) % 64) as usize;
            fill(&mut m, len, burst * 32 + i);
            sent_bytes += len as u64;
            b.push(m).unwrap();
        }
        assert!(b.is_full());
        let k = tx[0].tx_burst(&mut b);
        assert_eq!(k, BURST, "net_ring accepts a whole burst");
        assert!(b.is_empty());
        sent += k as u64;
        let mut r = MbufBatch::new();
        let n = rx[0].rx_burst(&mut r);
        assert_eq!(n, BURST);
        for m in r.drain() {
            received.push(m.data().to_vec());
        }
    }
    assert_eq!(received.len() as u64, sent);
    for (idx, got) in received.iter().enumerate() {
        let len = 64 + (idx % 64);
        let want: Vec<u8> = (0..len).map(|j| (idx * 7 + j) as u8).collect();
        assert_eq!(got, &want, "payload of packet {idx}");
    }
    let st = port.stats().unwrap();
    assert_eq!(st.tx_packets, sent);
    assert_eq!(st.rx_packets, sent);
    // net_ring counts packets but not bytes (DPDK 22.11); bytes are checked on net_pcap.
    assert!(st.tx_bytes == sent_bytes || st.tx_bytes == 0);
    let xs = port.xstats().unwrap();
    assert!(
        xs.iter().any(|(n, v)| n == "rx_good_packets" && *v == sent),
        "{xs:?}"
    );
    // Nothing left, nothing leaked.
    let mut r = MbufBatch::new();
    assert_eq!(rx[0].rx_burst(&mut r), 0);
    drop(r);
    assert_eq!(pool.in_use(), 0);
    port.stop().unwrap();
}

#[test]
fn null_port_counts_tx_and_generates_rx() {
    let env = env();
    let pool = Mempool::new("t_null_pool", 2047, 0, Mempool::DEFAULT_DATA_ROOM, -1).unwrap();
    let mut port = Port::by_name(&env.eal, "net_null0").unwrap();
    let (mut rx, mut tx) = port.configure(&PortConfig::default(), &pool).unwrap();
    match port.set_mtu(Mempool::DEFAULT_MAX_FRAME - 18) {
        Ok(_) => {}
        Err(e) => panic!("an MTU whose frame fits the buffer is accepted or unsupported: {e}"),
    }
    port.start().unwrap();
    port.reset_stats().unwrap();
    let mut total = 0;
    for _ in 0..5 {
        let mut b = MbufBatch::new();
        for i in 0..BURST {
            let mut m = pool.alloc().unwrap();
            fill(&mut m, 64, i as u32);
            b.push(m).unwrap();
        }
        total += tx[0].tx_burst(&mut b);
        b.free_all();
    }
    assert_eq!(total, 5 * BURST);
    let mut r = MbufBatch::new();
    let n = rx[0].rx_burst(&mut r);
    assert_eq!(n, BURST, "net_null delivers full bursts");
    assert!(r.iter_mut().all(|m| m.len() == 64));
    r.free_all();
    let st = port.stats().unwrap();
    assert_eq!(st.tx_packets, (5 * BURST) as u64);
    assert_eq!(st.rx_packets, BURST as u64);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn pcap_port_replays_and_records() {
    let env = env();
    let pool = Mempool::new("t_pcap_pool", 1023, 0, Mempool::DEFAULT_DATA_ROOM, -1).unwrap();
    let mut port = Port::by_name(&env.eal, "net_pcap0").unwrap();
    let (mut rx, mut tx) = port.configure(&PortConfig::default(), &pool).unwrap();
    port.start().unwrap();
    // Read the replayed file (it may take a few polls).
    let mut got: Vec<Vec<u8>> = Vec::new();
    for _ in 0..1000 {
        let mut b = MbufBatch::new();
        rx[0].rx_burst(&mut b);
        for m in b.drain() {
            got.push(m.data().to_vec());
        }
        if got.len() >= env.pcap_frames.len() {
            break;
        }
    }
    assert_eq!(
        got,
        env.pcap_frames,
        "frames replayed from {}",
        env.pcap_in.display()
    );
    // Send them back out reversed (and with one byte changed) to be recorded.
    let mut b = MbufBatch::new();
    let mut expect = Vec::new();
    for f in got.iter().rev() {
        let mut m = pool.alloc().unwrap();
        let d = m.append(f.len()).unwrap();
        d.copy_from_slice(f);
        d[0] ^= 0xff;
        expect.push(d.to_vec());
        b.push(m).unwrap();
    }
    let sent = tx[0].tx_burst(&mut b);
    assert_eq!(sent, expect.len());
    let st = port.stats().unwrap();
    assert_eq!(st.rx_packets, env.pcap_frames.len() as u64);
    assert_eq!(st.tx_packets, expect.len() as u64);
    let bytes: usize = expect.iter().map(Vec::len).sum();
    assert_eq!(st.rx_bytes, bytes as u64);
    assert_eq!(st.tx_bytes, bytes as u64);
    drop(rx);
    drop(tx);
    drop(port); // stop + close flush the recording
    let recorded = read_pcap(&env.pcap_out);
    assert_eq!(
        recorded,
        expect,
        "frames recorded in {}",
        env.pcap_out.display()
    );
}

#[test]
fn registered_threads_share_a_ring() {
    let env = env();
    let pool = Mempool::new("t_thr_pool", 2047, 64, Mempool::DEFAULT_DATA_ROOM, -1).unwrap();
    let (mut prod, mut cons) = MbufRing::create("t_spsc", 1024, -1).unwrap();
    const N: usize = 10_000;
    std::thread::scope(|s| {
        let pool = &pool;
        let eal = &env.eal;
        s.spawn(move || {
            let reg = register_thread(eal).unwrap();
            assert_ne!(reg.lcore_id(), u32::MAX);
            let mut sent = 0usize;
            while sent < N {
                let mut b = MbufBatch::new();
                while !b.is_full() && sent + b.len() < N {
                    let mut m = pool.alloc().expect("pool");
                    let d = m.append(8).unwrap();
                    d.copy_from_slice(&((sent + b.len()) as u64).to_le_bytes());
                    b.push(m).unwrap();
                }
                while !b.is_empty() {
                    sent += prod.enqueue(&mut b);
                }
            }
        });
        s.spawn(move || {
            let _reg = register_thread(eal).unwrap();
            let mut next = 0u64;
            while next < N as u64 {
                let mut b = MbufBatch::new();
                cons.dequeue(&mut b);
                for m in b.drain() {
                    let v = u64::from_le_bytes(m.data().try_into().unwrap());
                    assert_eq!(v, next, "ring keeps order");
                    next += 1;
                }
            }
            assert!(cons.is_empty());
        });
    });
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn ring_port_is_a_wire_in_memory() {
    let env = env();
    let pool = Mempool::new("t_rp_pool", 1023, 0, Mempool::DEFAULT_DATA_ROOM, -1).unwrap();
    let mut rp = MbufRing::port(&env.eal, "t_wire", 256).unwrap();
    let (mut rx, mut tx) = rp.port.configure(&PortConfig::default(), &pool).unwrap();
    rp.port.start().unwrap();
    // inject -> port rx
    let mut b = MbufBatch::new();
    for i in 0..10 {
        let mut m = pool.alloc().unwrap();
        fill(&mut m, 60, i);
        b.push(m).unwrap();
    }
    assert_eq!(rp.inject.enqueue(&mut b), 10);
    let mut r = MbufBatch::new();
    assert_eq!(rx[0].rx_burst(&mut r), 10);
    // port tx -> capture
    assert_eq!(tx[0].tx_burst(&mut r), 10);
    let mut c = MbufBatch::new();
    assert_eq!(rp.capture.dequeue(&mut c), 10);
    for (i, m) in c.drain().enumerate() {
        assert_eq!(m.data()[0], (i * 7) as u8);
    }
    drop((rx, tx));
    drop(rp);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn tx_burst_shared_lends_templates_and_keeps_them() {
    let env = env();
    let pool = Mempool::new("t_shared_pool", 255, 0, Mempool::DEFAULT_DATA_ROOM, -1).unwrap();
    // A ring of 4 slots holds 3 packets: the fourth is refused.
    let mut rp = MbufRing::port(&env.eal, "t_shared", 4).unwrap();
    let (rx, mut tx) = rp.port.configure(&PortConfig::default(), &pool).unwrap();
    rp.port.start().unwrap();
    let mut templates: Vec<Mbuf> = (0..4)
        .map(|i| {
            let mut m = pool.alloc().unwrap();
            fill(&mut m, 60, i);
            m
        })
        .collect();
    assert!(templates.iter().all(|m| m.refcnt() == 1));
    assert_eq!(tx[0].tx_burst_shared(templates.iter()), 3);
    // The driver holds a reference to the three it took; the refused one is ours alone.
    assert_eq!(
        templates.iter().map(Mbuf::refcnt).collect::<Vec<_>>(),
        [2, 2, 2, 1]
    );
    let mut c = MbufBatch::new();
    assert_eq!(rp.capture.dequeue(&mut c), 3);
    for (i, m) in c.drain().enumerate() {
        assert_eq!(m.data()[0], (i * 7) as u8, "the template's bytes went out");
    }
    // The other side freed its copies: the templates are ours again, still allocated.
    assert!(templates.iter().all(|m| m.refcnt() == 1));
    assert_eq!(pool.in_use(), 4);
    // Rewrite one and send it again.
    templates[0].data_mut()[0] = 0xee;
    assert_eq!(tx[0].tx_burst_shared(templates[..1].iter()), 1);
    assert_eq!(rp.capture.dequeue(&mut c), 1);
    assert_eq!(c.drain().next().unwrap().data()[0], 0xee);
    drop(templates);
    drop((rx, tx));
    drop(rp);
    assert_eq!(pool.in_use(), 0);
}

/// A TCP/IPv4 frame from 10.99.0.11:40000 to 10.99.0.100:`dport`.
fn tcp_frame(dport: u16) -> Vec<u8> {
    let mut f = vec![0u8; 54];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&40u16.to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&[10, 99, 0, 11]);
    f[30..34].copy_from_slice(&[10, 99, 0, 100]);
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[46] = 0x50;
    f[47] = 0x02;
    f
}

#[test]
fn pcap_program_compiles_tcpdump_expressions() {
    let p = dpdk_sys::PcapProgram::compile("host 10.99.0.11 and tcp port 80", 262_144).unwrap();
    assert!(!p.instructions().is_empty());
    assert!(p.matches(&tcp_frame(80)));
    assert!(!p.matches(&tcp_frame(443)));
    assert!(
        !p.matches(&tcp_frame(80)[..30]),
        "truncated before the ports"
    );
    // libpcap's own message for an expression it refuses.
    let err = dpdk_sys::PcapProgram::compile("host and port", 65_535).unwrap_err();
    assert!(err.contains("syntax error"), "{err}");
}
