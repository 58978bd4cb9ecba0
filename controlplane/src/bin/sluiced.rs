//! `sluiced`: the Sluice daemon.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("sluiced: not built yet");
    std::process::exit(2);
}
