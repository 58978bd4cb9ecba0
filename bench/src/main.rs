//! `sluice-pktgen`: a DPDK traffic generator (not built yet; see issue 5).
#![forbid(unsafe_code)]

fn main() {
    eprintln!("sluice-pktgen: not built yet");
    std::process::exit(2);
}
