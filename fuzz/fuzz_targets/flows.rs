//! Structure-aware fuzzing of two workers' pipelines: sequences of operations (packets built
//! from typed fields, bursts of up to 32, backends' replies to NAT'd packets, ICMP errors
//! quoting earlier packets, retransmissions, clock advances, snapshot swaps, expiry sweeps,
//! raw frames), every output checked against `sluice_dataplane::check`'s reference model and
//! both workers' tables checked after every operation. An invariant violation panics (a
//! crash for libFuzzer). The input format is `fuzz/src/lib.rs`'s `Input`.
//!
//! Run: see docs/dataplane.md ("Fuzzing"); `fuzz/run flows 60` builds and runs it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_fuzz::{Input, World};

thread_local! {
    static WORLD: std::cell::RefCell<World> = std::cell::RefCell::new(World::new());
}

fuzz_target!(|input: Input| {
    WORLD.with(|w| {
        let mut w = w.borrow_mut();
        if let Err(e) = w.run(&input) {
            panic!("invariant violated: {e}");
        }
    });
});
