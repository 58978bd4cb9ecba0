//! Untrusted bytes never panic the parser or the pipeline, and whatever the pipeline transmits
//! still parses. Random frames and random mutations of valid frames (the cargo-fuzz target in
//! fuzz/ runs the same harness coverage-guided; see docs/dataplane.md).
mod common;

use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use sluice_dataplane::pipeline::{PacketBuf, Pipeline, PipelineConfig, VecBuf, Verdict};
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::wire::parse::parse;

fn seeds() -> Vec<Vec<u8>> {
    vec![
        tcp4(CLIENT4, [192, 0, 2, 1], 40000, 80, true, false, &[]),
        udp4(CLIENT4, [192, 0, 2, 1], 5000, 53, b"q"),
        tcp4(CLIENT4, [192, 0, 2, 3], 40000, 80, true, false, b"x"),
        tcp6(CLIENT6, v6("2001:db8::2"), 40000, 80, true, b"y"),
        udp6(CLIENT6, v6("2001:db8::3"), 5000, 53, b"z"),
        tcp4([10, 0, 1, 1], NAT4, 8080, NAT_PORT_MIN, true, true, &[]),
    ]
}

fn small_pipeline() -> Pipeline {
    let cfg = PipelineConfig {
        conntrack: sluice_dataplane::conntrack::ConntrackConfig {
            capacity: 1024,
            ..Default::default()
        },
        conntrack_v6_capacity: 256,
        affinity_capacity: 256,
        ..PipelineConfig::default()
    };
    Pipeline::new(&cfg, Arc::new(WorkerStats::new(1024)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse(&bytes);
        let snap = snapshot(1);
        let mut p = small_pipeline();
        let mut b = VecBuf::new(&bytes);
        let _ = p.process(&snap, &mut b, 1);
    }

    #[test]
    fn mutated_frames_never_panic_and_tx_output_parses(
        which in 0usize..6,
        flips in proptest::collection::vec((0usize..120, any::<u8>()), 1..6),
        cut in 0usize..40,
    ) {
        let snap = snapshot(1);
        let mut p = small_pipeline();
        let mut f = seeds()[which].clone();
        for (i, v) in flips {
            if let Some(b) = f.get_mut(i) {
                *b = v;
            }
        }
        let n = f.len().saturating_sub(cut);
        f.truncate(n);
        let mut b = VecBuf::new(&f);
        if p.process(&snap, &mut b, 1) == Verdict::Tx {
            prop_assert!(parse(b.data()).is_ok(), "transmitted frame does not parse: {:?}", b.data());
        }
    }
}
