//! Pipeline per-packet cost, `nat`, 64-byte frames, bursts of 32, 1M flows tracked:
//! established TCP (conntrack hit + rewrite) and new flows (SYN: Maglev + NAT port + inserts),
//! each next to a trivial baseline over the same burst (restore the frames + MAC swap) so the
//! ratio survives machine noise; and the worker's expiry tick, a fixed cost per millisecond.
//! Run: `cargo bench -p sluice-dataplane --bench pipeline`; with `SLUICE_BENCH_FLOWS=2000` the
//! established flows all fit in cache, which separates the work from the memory stalls. With
//! `SLUICE_BENCH_SYN_PROXY=auto` the frontend's SYN proxy is `auto` with the largest
//! threshold (never engaged: the established path with the auto mode's counts), and one more
//! benchmark times the auto mode's census tick over the 1M flows.
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use etherparse::PacketBuilder;
use sluice_dataplane::conntrack::ConntrackConfig;
use sluice_dataplane::maglev::{MaglevBackend, MaglevTable};
use sluice_dataplane::pipeline::{PacketBuf, Pipeline, PipelineConfig, VecBuf, Verdict};
use sluice_dataplane::snapshot::{
    Backend, BackendState, Frontend, Local, Method, Protocol, Snapshot, SynProxy,
};
use sluice_dataplane::stats::WorkerStats;

/// Established flows tracked: 1M, or `SLUICE_BENCH_FLOWS` (e.g. 2000, to see the cost of the
/// work alone once every flow is in cache).
fn tracked_flows() -> u32 {
    std::env::var("SLUICE_BENCH_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}
const LB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

/// The frontend's SYN proxy: off, or with `SLUICE_BENCH_SYN_PROXY=auto` `auto` at the largest
/// threshold, which the benchmarks' SYNs never reach.
fn syn_proxy() -> SynProxy {
    match std::env::var("SLUICE_BENCH_SYN_PROXY").as_deref() {
        Ok("auto") => SynProxy::Auto { threshold: 1 << 24 },
        Ok("off") | Err(_) => SynProxy::Off,
        Ok(other) => panic!("SLUICE_BENCH_SYN_PROXY={other}: use off or auto"),
    }
}

fn snapshot() -> Snapshot {
    let n = 100u32;
    let names: Vec<String> = (0..n)
        .map(|i| format!("10.1.{}.{}:8080", i / 250, i % 250 + 1))
        .collect();
    let mb: Vec<MaglevBackend<'_>> = names
        .iter()
        .map(|s| MaglevBackend { id: s, weight: 1 })
        .collect();
    let maglev = Arc::new(MaglevTable::build(&mb, 65537, 7).unwrap());
    let backends: Vec<Backend> = (0..n)
        .map(|i| Backend {
            id: i,
            addr: IpAddr::from([10, 1, (i / 250) as u8, (i % 250 + 1) as u8]),
            port: 8080,
            mac: Some([2, 0, 0, 1, 0, i as u8]),
            weight: 1,
            state: BackendState::Active,
        })
        .collect();
    let f = Frontend {
        id: 0,
        service: Arc::from("default/bench"),
        vip: "192.0.2.1".parse().unwrap(),
        port: 80,
        protocol: Protocol::Tcp,
        method: Method::Nat,
        affinity_ms: None,
        source_ranges: vec![],
        flow_limit: None,
        source_flow_limit: None,
        syn_proxy: syn_proxy(),
        backends: (0..n).collect(),
        maglev,
    };
    let local = Local {
        mac: LB_MAC,
        ipv4: vec![[10, 0, 0, 2]],
        ipv6: vec![],
        nat_ipv4: (3..11).map(|i| [10, 0, 0, i]).collect(),
        nat_ipv6: vec![],
        nat_port_min: 1024,
        nat_port_max: 65535,
        nat_ipv4_peers: 0,
        nat_ipv6_peers: 0,
        mtu: 1500,
    };
    Snapshot::new(1, 7, vec![f], backends, local, 1024).unwrap()
}

/// A 64-byte frame (60 + FCS) from client `i` to the VIP.
fn frame(i: u32, syn: bool) -> Vec<u8> {
    let src = [10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
    let sport = 1024 + (i % 50000) as u16;
    let mut b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xaa], LB_MAC)
        .ipv4(src, [192, 0, 2, 1], 64)
        .tcp(sport, 80, 1, 1000);
    b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write(&mut v, &[0; 6]).unwrap();
    v.truncate(60);
    v
}

/// Processes `bufs` (32 frames) as one burst, the worker's way. Never inlined, so that
/// `scripts/instructions` can count the instructions inside it (32 packets per call).
#[inline(never)]
fn burst(pipe: &mut Pipeline, snap: &Snapshot, bufs: &mut [VecBuf], now_ms: u32) {
    let mut verdicts = [Verdict::Tx; 32];
    pipe.process_burst(snap, bufs, now_ms, &mut verdicts[..bufs.len()]);
    black_box(&verdicts);
}

/// Turns every buffer into the SYN `tmpl` from a never-used source address (`*next`,
/// `*next + 1`, ...), the IPv4 header checksum fixed incrementally.
fn fresh_syns(bufs: &mut [VecBuf], tmpl: &[u8], next: &mut u32) {
    for buf in bufs.iter_mut() {
        buf.reset(tmpl);
        let i = *next;
        *next = next.wrapping_add(1);
        let d = buf.data_mut();
        let old = [d[26], d[27], d[28], d[29]];
        let new = [10, 100 + ((i >> 16) & 0x7f) as u8, (i >> 8) as u8, i as u8];
        d[26..30].copy_from_slice(&new);
        let ipc = u16::from_be_bytes([d[24], d[25]]);
        let ipc = sluice_dataplane::wire::checksum::update_bytes(ipc, &old, &new);
        d[24..26].copy_from_slice(&ipc.to_be_bytes());
    }
}

/// A pipeline whose IPv4 forward and reverse tables have `capacity` slots each (the IPv6 and
/// affinity tables, unused here, small).
fn pipeline(capacity: usize) -> Pipeline {
    let cfg = PipelineConfig {
        conntrack: ConntrackConfig {
            capacity,
            ..Default::default()
        },
        conntrack_v6_capacity: 1 << 10,
        affinity_capacity: 1 << 10,
        ..PipelineConfig::default()
    };
    Pipeline::new(&cfg, Arc::new(WorkerStats::new(1024)))
}

fn bench(c: &mut Criterion) {
    let flows = tracked_flows();
    let snap = snapshot();
    let mut pipe = pipeline(1 << 21);
    pipe.install_snapshot(&snap);
    // Track 1M flows.
    // SYN then ACK: the flows are established (300 s timeout), as in steady state.
    let mut buf = VecBuf::new(&frame(0, true));
    for i in 0..flows {
        buf.reset(&frame(i, true));
        let v = pipe.process(&snap, &mut buf, 1);
        assert_eq!(v, Verdict::Tx, "flow {i}");
        buf.reset(&frame(i, false));
        pipe.process(&snap, &mut buf, 1);
    }
    assert!(
        pipe.flows() >= (flows as usize) * 99 / 100,
        "{} flows tracked",
        pipe.flows()
    );

    // Established: 32 random tracked flows per burst.
    let mut rng = 0x9e37_79b9u32;
    let est: Vec<Vec<u8>> = (0..4096)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            frame(rng % flows, false)
        })
        .collect();
    let mut bufs: Vec<VecBuf> = (0..32).map(|_| VecBuf::new(&est[0])).collect();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(32));
    let mut k = 0usize;
    g.bench_function("baseline_restore_macswap_burst32", |b| {
        b.iter(|| {
            for buf in bufs.iter_mut() {
                buf.reset(&est[k & 4095]);
                k += 1;
                let d = buf.data_mut();
                for j in 0..6 {
                    d.swap(j, j + 6);
                }
                black_box(&d[0]);
            }
        })
    });
    g.bench_function("nat_established_tcp_1M_flows_burst32", |b| {
        b.iter(|| {
            for buf in bufs.iter_mut() {
                buf.reset(&est[k & 4095]);
                k += 1;
            }
            burst(&mut pipe, &snap, &mut bufs, 2);
        })
    });
    // New flows: never-seen 5-tuples (Maglev + NAT port + forward and reverse inserts). The
    // clock advances 1 ms per burst (32k SYN/s) and the worker's amortised expiry runs every
    // millisecond, so unanswered SYNs (5 s timeout) leave as new ones come and the table holds
    // the 1M established flows plus about 160k half-open ones, as in steady state. Only the
    // burst is timed: the frames are prepared, and the expiry tick (a fixed cost per
    // millisecond whatever the packet rate, measured on its own below) runs, outside the
    // measurement.
    let mut next = flows;
    let mut bursts = 0u32;
    let syn_tmpl = frame(0, true);
    g.bench_function("nat_new_flow_syn_1M_flows_burst32", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                fresh_syns(&mut bufs, &syn_tmpl, &mut next);
                let t0 = std::time::Instant::now();
                burst(&mut pipe, &snap, &mut bufs, 3 + bursts);
                total += t0.elapsed();
                bursts += 1;
                pipe.expire(3 + bursts, 64);
            }
            total
        })
    });
    // A SYN flood into full tables: 1M-slot forward and reverse tables filled with half-open
    // flows that have not expired, so every new flow evicts the least recently seen flow of
    // its first bucket (in the forward and in the NAT reverse table). Built inside the
    // benchmark, so that a run filtered to other benchmarks does not pay for it.
    let mut flood_next = 2_000_000u32;
    let mut flood_bursts = 0u32;
    g.throughput(Throughput::Elements(32));
    g.bench_function("nat_syn_flood_full_tables_burst32", |b| {
        let mut flood = pipeline(1 << 20);
        flood.install_snapshot(&snap);
        let mut buf = VecBuf::new(&syn_tmpl);
        for i in 0..1_100_000u32 {
            buf.reset(&frame(i, true));
            flood.process(&snap, &mut buf, 1);
        }
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                fresh_syns(&mut bufs, &syn_tmpl, &mut flood_next);
                // 1 ms per 32 bursts (1M SYN/s): nothing expires within the 5 s SYN timeout.
                let now = 2 + flood_bursts / 32;
                let t0 = std::time::Instant::now();
                burst(&mut flood, &snap, &mut bufs, now);
                total += t0.elapsed();
                flood_bursts += 1;
            }
            total
        })
    });
    // The worker's expiry tick on these tables (64 buckets of each of the six), once per
    // millisecond: its cost per second of a core is 1000 times this.
    g.throughput(Throughput::Elements(1));
    g.bench_function("expire_tick_64_buckets", |b| {
        b.iter(|| {
            bursts += 1;
            black_box(pipe.expire(3 + bursts, 64))
        })
    });
    // The auto mode's census, once per millisecond: 2048 forward slots of the 2M-slot table
    // holding the 1M flows (and whatever the SYN benchmark left), its cost per second of a
    // core 1000 times this.
    if matches!(
        snap.frontends().next().map(|f| f.syn_proxy),
        Some(SynProxy::Auto { .. })
    ) {
        g.bench_function("syn_proxy_census_tick_2048_slots", |b| {
            b.iter(|| {
                bursts += 1;
                pipe.syn_proxy_tick(&snap, 3 + bursts);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
