//! The capture filter's classic BPF interpreter (`capture::bpf`), in its fast form
//! (`Program::run`) and its exact form (`Program::run_exact`), against libpcap's own
//! (`bpf_filter`, through `dpdk_sys::PcapProgram`): the same answer for every expression on
//! every frame, built and mutated at random, and cut anywhere (so that the fast form hands
//! over to the exact one at every kind of instruction).
mod common;

use common::*;
use proptest::prelude::*;
use sluice_dataplane::capture::bpf::Program;

const EXPRESSIONS: &[&str] = &[
    "",
    "ip",
    "ip6",
    "arp",
    "tcp",
    "udp",
    "icmp or icmp6",
    "host 10.9.9.9 and tcp port 80",
    "src host 10.9.9.9 and dst port 53",
    "tcp src portrange 1024-1668",
    "net 192.0.2.0/24",
    "ip6 and net 2001:db8::/32 and tcp",
    "tcp[13] & 2 != 0",
    "tcp[tcpflags] & (tcp-syn|tcp-fin) != 0",
    "ip[6:2] & 0x1fff != 0",
    "len > 100",
    "ether host 02:00:00:00:00:aa",
    "vlan and tcp",
    "ip proto 4 or ip6 proto 41",
    "udp and (udp[8] = 0x45 or port 9001)",
    "greater 64 and less 1500",
    "tcp[(tcp[12] >> 4) * 4 : 4] = 0x47455420",
    "tcp src portrange 1024-1668",
    "host 10.99.0.11 and tcp port 80",
    "ether[0] & 1 = 0 and ip[2:2] > 40",
    "ip[8] >= 64 and ip[8] < 128",
    "tcp[13] = 0x12 or udp[4:2] >= 0xffff",
    "ip and ip[16] > 255",
    "ether[12:2] > 0xffff or ip",
    "host 192.0.2.1 or udp",
    "ip6 host 2001:db8::1 and tcp port 80",
    "not host 10.9.9.9",
    "src net 10.9.0.0/16 and dst host 192.0.2.1 and tcp dst port 80",
];

fn programs() -> Vec<(String, dpdk_sys::PcapProgram, Program)> {
    EXPRESSIONS
        .iter()
        .map(|e| {
            let reference = dpdk_sys::PcapProgram::compile(e, 262_144).unwrap();
            let ours = Program::new(&reference.instructions()).unwrap();
            (e.to_string(), reference, ours)
        })
        .collect()
}

fn frames() -> Vec<Vec<u8>> {
    let mut v = vec![
        tcp4(CLIENT4, [192, 0, 2, 1], 40000, 80, true, false, b""),
        tcp4(
            CLIENT4,
            [192, 0, 2, 1],
            1500,
            80,
            false,
            true,
            b"GET / HTTP/1.1\r\n",
        ),
        udp4(CLIENT4, [192, 0, 2, 1], 5353, 53, b"\x45abc"),
        udp4([10, 0, 0, 1], [10, 0, 0, 2], 9001, 9001, b"hello"),
        tcp6(CLIENT6, v6("2001:db8::1"), 40000, 80, true, b""),
        udp6(CLIENT6, v6("2001:db8::3"), 1234, 53, b"x"),
    ];
    // A fragment, an ARP frame and a tagged one.
    let mut frag = tcp4(CLIENT4, [192, 0, 2, 1], 1, 2, false, true, b"abc");
    frag[20] = 0x20;
    v.push(frag);
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    v.push(arp);
    let mut tagged = tcp4(CLIENT4, [192, 0, 2, 1], 40000, 80, true, false, b"");
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
    v.push(tagged);
    v
}

#[test]
fn address_filters_have_a_precheck() {
    // (A disjunction too wide for the pre-check, "or udp", or a negation, has none; short
    // protocol filters may have one.)
    let with: Vec<&str> = EXPRESSIONS
        .iter()
        .copied()
        .filter(|e| (e.contains("host") || e.contains("net ")) && !e.contains(" or "))
        .filter(|e| !e.starts_with("not "))
        .collect();
    assert!(with.len() >= 6);
    let mut seen = 0;
    for (e, _, ours) in programs() {
        if with.contains(&e.as_str()) {
            assert!(ours.precheck_terms() > 0, "{e:?}");
            seen += 1;
        }
        if e.is_empty() || e.starts_with("not ") {
            assert_eq!(ours.precheck_terms(), 0, "{e:?}");
        }
    }
    assert_eq!(seen, with.len());
}

#[test]
fn agrees_with_libpcap_on_built_frames() {
    let ps = programs();
    for f in frames() {
        for cut in [f.len(), 60, 54, 34, 20, 13, 0] {
            let f = &f[..cut.min(f.len())];
            for (e, reference, ours) in &ps {
                let want = reference.matches(f);
                assert_eq!(ours.matches(f), want, "pre-check: {e:?} on {f:02x?}");
                assert_eq!(ours.run_fast(f) != 0, want, "fast form: {e:?} on {f:02x?}");
                assert_eq!(
                    ours.run_exact(f) != 0,
                    want,
                    "exact form: {e:?} on {f:02x?}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn agrees_with_libpcap_on_mutated_frames(
        which in 0usize..9,
        flips in proptest::collection::vec((0usize..128, any::<u8>()), 0..6),
        cut in 0usize..300,
    ) {
        let ps = programs();
        let mut f = frames()[which].clone();
        for (at, b) in flips {
            if let Some(x) = f.get_mut(at) {
                *x = b;
            }
        }
        f.truncate(cut.max(1));
        for (e, reference, ours) in &ps {
            let want = reference.matches(&f);
            prop_assert_eq!(ours.matches(&f), want, "pre-check: {:?}", e);
            prop_assert_eq!(ours.run_fast(&f) != 0, want, "fast form: {:?}", e);
            prop_assert_eq!(ours.run_exact(&f) != 0, want, "exact form: {:?}", e);
        }
    }
}

/// Cost of one filter run on a 64-byte TCP frame it rejects (not a pass/fail test):
/// `cargo test --release -p sluice-dataplane --test capture_bpf filter_cost -- --ignored --nocapture`.
#[test]
#[ignore]
fn filter_cost() {
    let mut f = tcp4([172, 9, 9, 9], [192, 0, 2, 1], 40000, 80, false, true, b"");
    f.resize(64, 0);
    for e in [
        "host 10.99.0.11 and tcp port 80",
        "tcp src portrange 1024-1668",
        "udp",
    ] {
        let reference = dpdk_sys::PcapProgram::compile(e, 262_144).unwrap();
        let p = Program::new(&reference.instructions()).unwrap();
        let n = 20_000_000u32;
        let t = std::time::Instant::now();
        let mut hits = 0u32;
        for _ in 0..n {
            hits += u32::from(p.matches(std::hint::black_box(&f)));
        }
        let ours = t.elapsed().as_nanos() as f64 / f64::from(n);
        let t = std::time::Instant::now();
        for _ in 0..n {
            hits += u32::from(p.run_exact(std::hint::black_box(&f)) != 0);
        }
        let exact = t.elapsed().as_nanos() as f64 / f64::from(n);
        let t = std::time::Instant::now();
        for _ in 0..n {
            hits += u32::from(reference.matches(std::hint::black_box(&f)));
        }
        let theirs = t.elapsed().as_nanos() as f64 / f64::from(n);
        println!(
            "{e:?}: {ours:.2} ns per run (as the worker runs it), {exact:.2} ns (exact form \
             alone), {theirs:.2} ns in libpcap"
        );
        assert_eq!(hits, 0, "{e:?} rejects the frame, here and in libpcap");
    }
}
