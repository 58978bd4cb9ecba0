//! Writes the seed corpus: `fuzz/seeds/flows/` (structured inputs) and
//! `fuzz/seeds/pipeline/` (their frames, raw). The scenarios follow the golden packet table
//! (`dataplane/tests/golden.rs`: every method and family, ARP, NDP, ICMP, tags, drops) and
//! extend it into sequences: replies, retransmissions, clock advances past the timeouts,
//! drains and removals mid-flow, a burst that exhausts a worker's NAT ports. The raw target
//! also gets frames of the SYN-proxied flows its prelude establishes (`sluice_fuzz::raw`).
//!
//! Run from `fuzz/`: `cargo run --release --bin seeds` (scripts/test does not; the corpus is
//! kept in the repository).
use std::path::Path;

use sluice_fuzz::{arp_frame, nd_frame, Damage, Input, Op, Pkt, LB_MAC};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SYNACK: u8 = 0x12;
const PSHACK: u8 = 0x18;
const FINACK: u8 = 0x11;

/// A packet: family, source, destination, source and destination port selectors, kind
/// (0 TCP, 1 UDP, 2 echo), flags.
fn pk(v6: bool, src: u8, dst: u8, sport: u16, dport: u16, kind: u8, flags: u8) -> Pkt {
    Pkt {
        v6,
        src,
        dst,
        sport,
        dport,
        kind,
        flags,
        options: 0,
        payload: 0,
        fragment: 0,
        vlan: 0,
        to_mac: 0,
        ip_options: false,
        damage: Damage::None,
    }
}

fn with(p: Pkt, f: impl FnOnce(&mut Pkt)) -> Pkt {
    let mut p = p;
    f(&mut p);
    p
}

fn main() -> std::io::Result<()> {
    use Op::*;
    let v4 = |dst, dport, kind, flags| Packet(pk(false, 0, dst, 10, dport, kind, flags));
    let v6 = |dst, dport, kind, flags| Packet(pk(true, 0, dst, 10, dport, kind, flags));
    let reply = |flags| Reply {
        n: 0,
        flags,
        payload: 8,
    };
    let b6 = [0x20, 1, 0xd, 0xb8, 0, 0xcc, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let vip6 = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let scenarios: Vec<(&str, Vec<Op>)> = vec![
        (
            "nat-v4-tcp-connection",
            vec![
                v4(0, 0, 0, SYN),
                reply(SYNACK),
                Again { n: 0, flags: ACK },
                Packet(with(pk(false, 0, 0, 10, 0, 0, PSHACK), |p| {
                    p.payload = 40;
                    p.options = 2
                })),
                reply(PSHACK),
                Advance(5_001),
                reply(ACK),
                Again {
                    n: 0,
                    flags: FINACK,
                },
                reply(FINACK),
                Advance(10_000),
                Expire(8),
            ],
        ),
        (
            "nat-v4-slow-first-byte",
            vec![
                v4(0, 0, 0, SYN),
                reply(SYNACK),
                Again { n: 0, flags: ACK },
                Advance(4_999),
                Again {
                    n: 0,
                    flags: PSHACK,
                },
                Advance(4_999),
                reply(PSHACK),
            ],
        ),
        (
            "nat-v4-udp",
            vec![
                v4(0, 1, 1, 0),
                reply(0),
                Advance(30_000),
                v4(0, 1, 1, 0),
                reply(0),
            ],
        ),
        (
            "nat-v4-unknown-flow-rst",
            vec![v4(0, 0, 0, ACK), v4(0, 0, 0, 0x04), v4(0, 0, 0, FINACK)],
        ),
        (
            "dsr-l2-and-icmp-error",
            vec![
                v4(1, 0, 0, SYN),
                IcmpError {
                    n: 0,
                    kind: 1,
                    cut: 0,
                },
                IcmpError {
                    n: 0,
                    kind: 2,
                    cut: 30,
                },
            ],
        ),
        (
            "dsr-ipip-v4-and-too-big",
            vec![
                v4(2, 0, 0, SYN),
                Packet(with(pk(false, 0, 2, 10, 0, 0, ACK), |p| p.payload = 255)),
            ],
        ),
        (
            "nat-v6-tcp",
            vec![
                v6(0, 0, 0, SYN),
                reply(SYNACK),
                Again { n: 0, flags: ACK },
                reply(ACK),
            ],
        ),
        ("nat-v6-udp", vec![v6(0, 1, 1, 0), reply(0), reply(0)]),
        (
            "dsr-ipip-v6",
            vec![
                v6(1, 0, 0, SYN),
                IcmpError {
                    n: 0,
                    kind: 1,
                    cut: 0,
                },
            ],
        ),
        (
            "dsr-l2-v6-udp-affinity-acl",
            vec![
                v6(2, 1, 1, 0),
                Packet(pk(true, 1, 2, 11, 1, 1, 0)),
                Packet(pk(true, 2, 2, 10, 1, 1, 0)),
            ],
        ),
        (
            "nat-affinity-acl",
            vec![
                v4(3, 2, 0, SYN),
                Packet(pk(false, 0, 3, 11, 2, 0, SYN)),
                Packet(pk(false, 2, 3, 10, 2, 0, SYN)),
            ],
        ),
        (
            "edge-arp-ndp-echo",
            vec![
                Raw(arp_frame(
                    1,
                    [2, 0, 0, 0, 0, 0xa0],
                    [10, 9, 9, 9],
                    [192, 0, 2, 1],
                )),
                Raw(arp_frame(
                    1,
                    [2, 0, 0, 0, 0, 0xa0],
                    [10, 9, 9, 9],
                    [10, 0, 0, 2],
                )),
                Raw(arp_frame(
                    2,
                    [2, 0, 0, 0, 1, 1],
                    [10, 0, 1, 1],
                    [10, 0, 0, 2],
                )),
                Raw(nd_frame(
                    false,
                    [0x20, 1, 0xd, 0xb8, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
                    vip6,
                    [2, 0, 0, 0, 0, 0xa8],
                )),
                Raw(nd_frame(true, b6, b6, [2, 0, 0, 0, 1, 10])),
                v4(0, 0, 2, 0),
                v6(0, 0, 2, 0),
                v4(4, 0, 2, 0),
                Packet(pk(false, 0, 0, 10, 0, 3, 13)),
            ],
        ),
        (
            "drops",
            vec![
                v4(0, 3, 0, SYN),
                v4(8, 0, 0, SYN),
                v4(0, 0, 4, 0),
                Packet(with(pk(false, 0, 1, 10, 0, 0, SYN), |p| p.vlan = 1)),
                Packet(with(pk(false, 0, 0, 10, 0, 0, SYN), |p| p.vlan = 2)),
                Packet(with(pk(false, 0, 0, 10, 0, 0, SYN), |p| {
                    p.damage = Damage::Truncate(40)
                })),
                Packet(with(pk(false, 0, 0, 10, 0, 0, SYN), |p| {
                    p.damage = Damage::IpChecksum
                })),
                Packet(with(pk(false, 0, 0, 10, 0, 0, SYN), |p| p.to_mac = 2)),
                Packet(pk(false, 4, 5, 4, 7, 0, ACK)),
            ],
        ),
        (
            "fragments",
            vec![
                Packet(with(pk(false, 0, 0, 10, 0, 0, ACK), |p| p.fragment = 1)),
                Packet(with(pk(false, 0, 1, 10, 0, 0, ACK), |p| p.fragment = 2)),
                Packet(with(pk(true, 0, 1, 10, 0, 0, ACK), |p| p.fragment = 1)),
                Packet(with(pk(true, 0, 2, 10, 1, 1, 0), |p| {
                    p.fragment = 2;
                    p.ip_options = true
                })),
            ],
        ),
        (
            "drain-remove-mid-flow",
            vec![
                v4(1, 0, 0, SYN),
                v4(0, 0, 0, SYN),
                reply(SYNACK),
                Swap {
                    backend: 5,
                    what: 2,
                },
                Swap {
                    backend: 0,
                    what: 2,
                },
                Again { n: 0, flags: ACK },
                Again { n: 1, flags: ACK },
                Packet(pk(false, 1, 1, 11, 0, 0, SYN)),
                Swap {
                    backend: 0,
                    what: 1,
                },
                Again { n: 1, flags: ACK },
                Swap {
                    backend: 0,
                    what: 0,
                },
                Swap {
                    backend: 1,
                    what: 6,
                },
                Packet(pk(false, 1, 0, 11, 0, 0, SYN)),
            ],
        ),
        (
            "burst-exhausts-nat-ports",
            vec![
                Burst(
                    (0..32)
                        .map(|i| pk(false, i % 2, 0, 300 + u16::from(i), 0, 0, SYN))
                        .collect(),
                ),
                Burst(
                    (0..32)
                        .map(|i| pk(false, i % 2, 0, 400 + u16::from(i), 0, 0, SYN))
                        .collect(),
                ),
                Reply {
                    n: 3,
                    flags: SYNACK,
                    payload: 0,
                },
                Advance(5_001),
                Expire(15),
            ],
        ),
        (
            // The `on` frontend (192.0.2.4:443): SYN-ACK, a bad cookie, the valid ACK and the
            // backend's SYN, its SYN-ACK (the client's window update), data both ways with
            // the sequence offset, a repeated SYN-ACK, the close.
            "synproxy-on-v4",
            vec![
                Packet(pk(false, 0, 3, 10, 2, 0, SYN)),
                CookieAck {
                    n: 0,
                    how: 2 + 4 * 9,
                },
                CookieAck { n: 0, how: 0 },
                reply(SYNACK),
                Again { n: 0, flags: ACK },
                Packet(with(pk(false, 0, 3, 10, 2, 0, PSHACK), |p| {
                    p.payload = 40;
                    p.options = 2
                })),
                reply(PSHACK),
                reply(SYNACK),
                Again {
                    n: 0,
                    flags: FINACK,
                },
                reply(FINACK),
            ],
        ),
        (
            // The `auto` frontend (2001:db8::1:80): eight SYNs forwarded, a tick engages it,
            // then a SYN gets a cookie and a zero-window probe opens the flow.
            "synproxy-auto-v6",
            vec![
                Burst(
                    (0..8u8)
                        .map(|i| pk(true, 0, 0, 500 + u16::from(i), 0, 0, SYN))
                        .collect(),
                ),
                Advance(1),
                Burst(
                    (0..4u8)
                        .map(|i| pk(true, 1, 0, 600 + u16::from(i), 0, 0, SYN))
                        .collect(),
                ),
                CookieAck { n: 0, how: 3 },
                CookieAck { n: 1, how: 1 },
                reply(SYNACK),
                Again { n: 0, flags: ACK },
                reply(PSHACK),
                Advance(5_001),
                Advance(1),
            ],
        ),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let (flows, raw) = (dir.join("flows"), dir.join("pipeline"));
    std::fs::create_dir_all(&flows)?;
    std::fs::create_dir_all(&raw)?;
    let mut frames = 0;
    for (name, ops) in scenarios {
        for op in &ops {
            let fs: Vec<Vec<u8>> = match op {
                Packet(p) => vec![p.frame()],
                Burst(ps) => ps.iter().take(1).map(Pkt::frame).collect(),
                Raw(v) => vec![v.clone()],
                _ => vec![],
            };
            for f in fs {
                std::fs::write(raw.join(format!("{name}-{frames}")), f)?;
                frames += 1;
            }
        }
        let input = Input { ops };
        std::fs::write(flows.join(name), input.encode())?;
    }
    // The raw target's SYN proxy frames, for the flows its prelude establishes.
    for (name, f) in sluice_fuzz::raw::seeds() {
        std::fs::write(raw.join(name), f)?;
        frames += 1;
    }
    let _ = LB_MAC;
    println!("seeds: wrote {} and {frames} raw frames", flows.display());
    Ok(())
}
