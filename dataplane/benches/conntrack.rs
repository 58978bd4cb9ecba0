//! Conntrack lookups and inserts on a table holding 1M live IPv4 flows, next to trivial
//! baselines measured in the same run.
//!
//! `cargo bench -p sluice-dataplane --bench conntrack -- --warm-up-time 1 --measurement-time 3`
//!
//! Work is done as a worker does it: bursts of 32 flows, the flow hashes already computed by
//! the parser, the burst prefetched before its lookups with the pipeline's calls (not at all;
//! tag words then entries in two passes; or, as the worker does, entries a few flows ahead of
//! their lookups). Times are reported per flow (burst time / 32). Flows are visited in a random order over the whole table, so nearly every
//! entry access is a cache miss.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_main, Criterion};
use sluice_dataplane::conntrack::{
    Conntrack, ConntrackConfig, FlowKey, FlowState, Insert, Timeouts, V4Key, NO_SLOT,
};
use sluice_dataplane::hash::mix64;

/// Burst size of a worker.
const BURST: usize = 32;
/// Live flows in the table.
const FLOWS: u32 = 1_000_000;
/// Hash seed.
const SEED: u64 = 0x51ce;

/// The pipeline's value: backend index and NAT information.
type Value = [u32; 2];

/// Flow `i` of a family: distinct source address and port per flow.
fn key(family: u32, i: u32) -> V4Key {
    V4Key {
        src: (family << 24 | i).to_be_bytes(),
        dst: [192, 0, 2, 10],
        sport: (i % 60_000) as u16 + 1024,
        dport: 443,
        proto: 6,
    }
}

/// `n` flows of `family` with their hashes, in a random order.
fn flows(family: u32, n: u32) -> Vec<(V4Key, u64)> {
    let mut v: Vec<(V4Key, u64)> = (0..n)
        .map(|i| key(family, i))
        .map(|k| (k, k.flow_hash(SEED)))
        .collect();
    let mut st = 1u64;
    for i in (1..v.len()).rev() {
        st = mix64(st.wrapping_add(i as u64));
        v.swap(i, (st % (i as u64 + 1)) as usize);
    }
    v
}

/// A table of `capacity` slots holding [`FLOWS`] established flows.
fn filled(capacity: usize) -> Conntrack<V4Key, Value> {
    let mut t = Conntrack::new(&ConntrackConfig {
        capacity,
        timeouts: Timeouts::default(),
    });
    for i in 0..FLOWS {
        let k = key(10, i);
        let _ = t.insert(
            k,
            k.flow_hash(SEED),
            [i, 0],
            FlowState::TcpEstablished,
            0,
            Insert::New,
        );
    }
    t
}

/// Runs `burst` over consecutive bursts of `flows` `iters` times; returns the time per flow.
fn per_flow(
    iters: u64,
    flows: &[(V4Key, u64)],
    mut burst: impl FnMut(&[(V4Key, u64)]) -> u64,
) -> Duration {
    let mut at = 0;
    let mut sink = 0u64;
    let start = Instant::now();
    for _ in 0..iters {
        sink = sink.wrapping_add(burst(&flows[at..at + BURST]));
        at += BURST;
        if at + BURST > flows.len() {
            at = 0;
        }
    }
    let elapsed = start.elapsed();
    black_box(sink);
    elapsed / BURST as u32
}

/// How a burst is prefetched before its lookups.
#[derive(Clone, Copy)]
enum Prefetch {
    /// Not at all.
    None,
    /// Two passes of `prefetcht0`: [`Conntrack::prefetch`] (tag words) for the whole burst,
    /// then [`Conntrack::prefetch_entry`] (candidate entries), the lookups taking its slots.
    TwoPasses,
    /// Tag words of the whole burst, then each flow's candidate entry [`AHEAD`] flows before
    /// its lookup, as the worker does.
    Staged,
}

/// How many flows ahead of its lookup the staged variant prefetches a flow's entry (the
/// pipeline's `PF_AHEAD`).
const AHEAD: usize = 16;

/// Looks a burst up after prefetching it as asked; returns a checksum of the values found.
fn lookup_burst(
    t: &mut Conntrack<V4Key, Value>,
    burst: &[(V4Key, u64)],
    prefetch: Prefetch,
    now: u32,
) -> u64 {
    let mut slots = [NO_SLOT; BURST];
    if !matches!(prefetch, Prefetch::None) {
        for (_, h) in burst {
            t.prefetch(*h);
        }
    }
    let ahead = match prefetch {
        Prefetch::None => 0,
        Prefetch::TwoPasses => burst.len(),
        Prefetch::Staged => AHEAD.min(burst.len()),
    };
    for (s, (_, h)) in slots.iter_mut().zip(&burst[..ahead]) {
        *s = t.prefetch_entry(*h);
    }
    let mut found = 0u64;
    for (i, (k, h)) in burst.iter().enumerate() {
        if let (Prefetch::Staged, Some((_, ah))) = (prefetch, burst.get(i + AHEAD)) {
            slots[i + AHEAD] = t.prefetch_entry(*ah);
        }
        if let Some(e) = t.lookup(k, *h, slots[i], now, |_| {}) {
            found += u64::from(e.value()[0]);
        }
    }
    found
}

fn bench(c: &mut Criterion) {
    let present = flows(10, FLOWS);
    let absent = flows(11, FLOWS);
    let mut g = c.benchmark_group("conntrack_per_flow");
    g.bench_function("baseline_sum_32", |b| {
        b.iter_custom(|iters| per_flow(iters, &present, |f| f.iter().fold(0, |a, (_, h)| a ^ h)))
    });
    g.bench_function("baseline_hash_32", |b| {
        b.iter_custom(|iters| {
            per_flow(iters, &present, |f| {
                f.iter().fold(0, |a, (k, _)| a ^ k.flow_hash(SEED))
            })
        })
    });
    for capacity in [1usize << 20, 1 << 21] {
        let mut t = filled(capacity);
        let s = *t.stats();
        eprintln!(
            "capacity {capacity}: {} flows, {} evicted, {} relocated, {} MiB",
            t.len(),
            s.evictions,
            s.relocations,
            t.bytes() >> 20
        );
        let tag = format!("{}_in_{}Mi", FLOWS / 1_000_000, capacity >> 20);
        for (name, prefetch) in [
            ("", Prefetch::None),
            ("_prefetcht0", Prefetch::TwoPasses),
            ("_prefetcht0_staged", Prefetch::Staged),
        ] {
            g.bench_function(format!("hit{name}_{tag}"), |b| {
                b.iter_custom(|iters| {
                    per_flow(iters, &present, |f| lookup_burst(&mut t, f, prefetch, 1))
                })
            });
            g.bench_function(format!("miss{name}_{tag}"), |b| {
                b.iter_custom(|iters| {
                    per_flow(iters, &absent, |f| lookup_burst(&mut t, f, prefetch, 1))
                })
            });
        }
        // New flows: insert a burst, then remove it so the table stays at 1M flows. Reported
        // per insert+remove pair.
        g.bench_function(format!("insert_remove_prefetcht0_{tag}"), |b| {
            b.iter_custom(|iters| {
                per_flow(iters, &absent, |f| {
                    for (_, h) in f {
                        t.prefetch(*h);
                    }
                    for (_, h) in f {
                        t.prefetch_insert(*h);
                    }
                    for (k, h) in f {
                        let _ = t.insert(*k, *h, [1, 2], FlowState::TcpSynSent, 1, Insert::New);
                    }
                    f.iter().map(|(k, h)| u64::from(t.remove(k, *h))).sum()
                })
            })
        });
        let s = t.stats();
        eprintln!(
            "after inserts: {} flows, {} evicted, {} relocated",
            t.len(),
            s.evictions,
            s.relocations
        );
    }
    g.finish();
}

/// The benchmark group (written out: `criterion_group!` leaves its function undocumented).
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
}

criterion_main!(benches);
