//! Maglev table build and lookup, next to trivial baselines measured in the same run.
//!
//! `cargo bench -p sluice-dataplane --bench maglev -- --warm-up-time 1 --measurement-time 3`
//!
//! Lookups are timed as bursts of 32 (as a worker does them) and reported per lookup.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_main, BenchmarkId, Criterion};
use sluice_dataplane::hash::{hash_v4_5tuple, mix64};
use sluice_dataplane::maglev::{auto_size, MaglevBackend, MaglevTable, DEFAULT_TABLE_SIZE};

/// Burst size of a worker.
const BURST: usize = 32;

/// `n` backend ids like `10.0.1.2:8080`.
fn ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.{}.{}.{}:8080", i / 65536, i / 256 % 256, i % 256))
        .collect()
}

/// Flow hashes: 64 Ki well-mixed values, walked in bursts.
fn hashes() -> Vec<u64> {
    (0..65536u64).map(|i| mix64(i ^ 0x5eed)).collect()
}

/// Runs `burst` over consecutive bursts of `hashes` `iters` times; returns the time per element.
fn per_element(iters: u64, hashes: &[u64], mut burst: impl FnMut(&[u64]) -> u64) -> Duration {
    let mut at = 0;
    let mut sink = 0u64;
    let start = Instant::now();
    for _ in 0..iters {
        sink = sink.wrapping_add(burst(&hashes[at..at + BURST]));
        at = (at + BURST) % hashes.len();
    }
    let elapsed = start.elapsed();
    black_box(sink);
    elapsed / BURST as u32
}

fn build(c: &mut Criterion) {
    let names = ids(1000);
    let backends: Vec<MaglevBackend<'_>> = names
        .iter()
        .map(|id| MaglevBackend { id, weight: 1 })
        .collect();
    let mut g = c.benchmark_group("maglev_build");
    g.sample_size(10);
    for size in [DEFAULT_TABLE_SIZE, 262_139, 655_373] {
        g.bench_with_input(
            BenchmarkId::new("build", format!("M={size},N=1000")),
            &size,
            |b, &size| b.iter(|| MaglevTable::build(black_box(&backends), size, 42).unwrap()),
        );
        // Baseline: one pass writing and summing an array of the table's size.
        g.bench_with_input(
            BenchmarkId::new("baseline_fill_sum", format!("M={size}")),
            &size,
            |b, &size| {
                b.iter(|| {
                    let v: Vec<u32> = (0..size).map(|i| i ^ 0x55).collect();
                    black_box(v.iter().fold(0u32, |a, &x| a.wrapping_add(x)))
                })
            },
        );
    }
    // The automatic size: what a compile of one Service of N backends costs.
    let many = ids(5000);
    for n in [10, 1000, 5000] {
        let backends: Vec<MaglevBackend<'_>> = many[..n]
            .iter()
            .map(|id| MaglevBackend { id, weight: 1 })
            .collect();
        let size = auto_size(n);
        g.bench_with_input(
            BenchmarkId::new("build_auto", format!("M={size},N={n}")),
            &size,
            |b, &size| b.iter(|| MaglevTable::build(black_box(&backends), size, 42).unwrap()),
        );
    }
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let names = ids(1000);
    let backends: Vec<MaglevBackend<'_>> = names
        .iter()
        .map(|id| MaglevBackend { id, weight: 1 })
        .collect();
    let table = MaglevTable::build(&backends, DEFAULT_TABLE_SIZE, 42).unwrap();
    // 10% of the backends down, as a bitmap.
    let mut down = [0u64; 1000_usize.div_ceil(64)];
    for i in (0..1000).step_by(10) {
        down[i / 64] |= 1 << (i % 64);
    }
    let hashes = hashes();
    let mut g = c.benchmark_group("maglev_lookup_per_flow");
    g.bench_function("baseline_sum_32", |b| {
        b.iter_custom(|iters| per_element(iters, &hashes, |h| h.iter().fold(0, |a, &x| a ^ x)))
    });
    g.bench_function("baseline_hash_32_v4_5tuples", |b| {
        b.iter_custom(|iters| {
            per_element(iters, &hashes, |h| {
                h.iter().fold(0, |a, &x| {
                    a ^ hash_v4_5tuple(7, (x as u32).to_be_bytes(), [192, 0, 2, 1], x as u16, 80, 6)
                })
            })
        })
    });
    g.bench_function("lookup_M=65537,N=1000", |b| {
        b.iter_custom(|iters| {
            per_element(iters, &hashes, |h| {
                h.iter()
                    .fold(0, |a, &x| a ^ u64::from(table.lookup(x).unwrap_or(0)))
            })
        })
    });
    g.bench_function("lookup_live_10pct_down", |b| {
        b.iter_custom(|iters| {
            per_element(iters, &hashes, |h| {
                h.iter().fold(0, |a, &x| {
                    let live = |i: u32| down[i as usize / 64] & (1 << (i % 64)) == 0;
                    a ^ u64::from(table.lookup_live(x, live).unwrap_or(0))
                })
            })
        })
    });
    g.finish();
}

/// The benchmark group (written out: `criterion_group!` leaves its function undocumented).
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    build(&mut c);
    lookup(&mut c);
}

criterion_main!(benches);
