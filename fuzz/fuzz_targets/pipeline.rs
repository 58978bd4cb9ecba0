//! Coverage-guided fuzzing of the parser and the whole pipeline on one raw frame, with a
//! realistic snapshot: packet by packet and through the worker's burst path. Every frame
//! transmitted must parse, carry no tag and keep its checksums
//! (`sluice_dataplane::check::transmitted`), and the tables must keep their invariants
//! (`Pipeline::check_tables`). The pipeline is built once and reset between inputs; every
//! input starts from the same prelude (`sluice_fuzz::raw`): flows established through the
//! SYN proxy of `on` and `auto` frontends, so that a frame can be one of their segments, a
//! forged cookie ACK or an ICMP error quoting them. The structure-aware target is `flows.rs`.
//!
//! Run: `fuzz/run pipeline 60` (see docs/dataplane.md, "Fuzzing").
#![no_main]

use std::cell::RefCell;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sluice_dataplane::check::transmitted;
use sluice_dataplane::pipeline::{PacketBuf, Pipeline, VecBuf, Verdict};
use sluice_dataplane::stats::WorkerStats;
use sluice_fuzz::raw::{self, MAX_IDS, NOW_MS};

thread_local! {
    /// The pipeline and a scratch buffer for the prelude's frames.
    static PIPE: RefCell<(Pipeline, VecBuf)> = RefCell::new((raw::pipeline(), VecBuf::new(&[])));
}

fn check(input: &[u8], out: &VecBuf, v: Verdict) {
    if v == Verdict::Tx {
        if let Err(e) = transmitted(input, out.data()) {
            panic!("invariant violated: {e}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = sluice_dataplane::wire::parse::parse(data);
    let snap = raw::snapshot();
    PIPE.with(|p| {
        let (p, scratch) = &mut *p.borrow_mut();
        p.reset(Arc::new(WorkerStats::new(MAX_IDS)));
        raw::replay(p, scratch);
        let mut b = VecBuf::new(data);
        let v = p.process(snap, &mut b, NOW_MS);
        check(data, &b, v);
        // A SYN to the IPv6 `auto` frontend, one short of its threshold, engages it here.
        p.syn_proxy_tick(snap, NOW_MS);
        // The worker's burst path on the same input: the frame twice in one burst (the first
        // processing may create the flow the second finds), then split in two frames.
        let halves = data.split_at(data.len() / 2);
        for (x, y) in [(data, data), halves] {
            let mut frames = [VecBuf::new(x), VecBuf::new(y)];
            let mut verdicts = [Verdict::Tx; 2];
            p.process_burst(snap, &mut frames, 2, &mut verdicts);
            check(x, &frames[0], verdicts[0]);
            check(y, &frames[1], verdicts[1]);
        }
        if let Err(e) = p.check_tables(snap, NOW_MS) {
            panic!("invariant violated: {e}");
        }
    });
});
