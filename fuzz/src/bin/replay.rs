//! Replays fuzzer inputs of `flows` outside libFuzzer: each file of the given files and
//! directories through one reused `World`, then reports the time per input.
//!
//! Run from `fuzz/`: `cargo run --release --bin replay -- DIR_OR_FILE... [--repeat N]
//! [--check-reset]`. `--check-reset` first shows that the reset between inputs is complete:
//! each input, run on the world the previous input left, must feed the workers the same
//! frames, get the same verdicts and outputs ([`World::traced`]) and leave the same state
//! ([`World::state_dump`]) as on a new world.
use std::path::PathBuf;
use std::time::Instant;

use arbitrary::{Arbitrary, Unstructured};
use sluice_fuzz::{Input, World};

fn main() {
    let mut repeat = 1;
    let mut check_reset = false;
    let mut files: Vec<PathBuf> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--check-reset" {
            check_reset = true;
            continue;
        }
        if a == "--repeat" {
            repeat = args.next().and_then(|n| n.parse().ok()).unwrap_or(1);
            continue;
        }
        let p = PathBuf::from(a);
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(&p)
                .expect("read dir")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            v.sort();
            files.extend(v);
        } else {
            files.push(p);
        }
    }
    let inputs: Vec<Input> = files
        .iter()
        .map(|f| {
            let data = std::fs::read(f).expect("read input");
            Input::arbitrary_take_rest(Unstructured::new(&data)).expect("decode")
        })
        .collect();
    let ops: usize = inputs.iter().map(|i| i.ops.len()).sum();
    let mut w = World::new();
    if check_reset {
        for (i, input) in inputs.iter().enumerate() {
            let (r, h) = w.traced(input);
            let mut fresh = World::new();
            let (rf, hf) = fresh.traced(input);
            if r != rf || h != hf || w.state_dump() != fresh.state_dump() {
                eprintln!("result {:?} {:?} digest {h:x} {hf:x}", r, rf);
                let (a, b) = (w.state_dump(), fresh.state_dump());
                for (x, y) in a.lines().zip(b.lines()) {
                    if x != y {
                        eprintln!(
                            "reused: {}\nfresh:  {}",
                            &x[..x.len().min(600)],
                            &y[..y.len().min(600)]
                        );
                    }
                }
                eprintln!(
                    "replay: {} behaves differently after {}: the reset is incomplete",
                    files[i].display(),
                    if i == 0 {
                        "nothing"
                    } else {
                        "the previous input"
                    }
                );
                std::process::exit(1);
            }
        }
        println!(
            "replay: --check-reset: {} inputs, each alike after the previous one and on a new world",
            inputs.len()
        );
    }
    if std::env::var_os("REPLAY_DIGEST").is_some() {
        let mut all = 0u64;
        for input in &inputs {
            let (_, h) = w.traced(input);
            all = all.rotate_left(7) ^ h;
        }
        println!("replay: digest {all:016x}");
    }
    let t = Instant::now();
    for _ in 0..repeat {
        for (i, input) in inputs.iter().enumerate() {
            if let Err(e) = w.run(input) {
                panic!("{}: invariant violated: {e}", files[i].display());
            }
        }
    }
    let n = inputs.len() * repeat;
    let el = t.elapsed();
    println!(
        "replay: {n} inputs ({ops} operations per pass) in {el:?}: {:.1} us per input, {:.0} inputs/s",
        el.as_secs_f64() * 1e6 / n as f64,
        n as f64 / el.as_secs_f64()
    );
}
