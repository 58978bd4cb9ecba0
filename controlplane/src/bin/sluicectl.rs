//! `sluicectl`: the operator's CLI (not built yet; see issue 7).
#![forbid(unsafe_code)]

fn main() {
    eprintln!("sluicectl: not built yet");
    std::process::exit(2);
}
