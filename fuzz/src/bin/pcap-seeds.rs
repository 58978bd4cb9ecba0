//! Turns traffic captured through Sluice in the lab (`fuzz/capture-lab`, pcapng from
//! `sluicectl capture -Q inout`) into seeds: `fuzz/seeds/flows/NAME-N` (the frames Sluice
//! received, in order, as the structured target's operations) and `fuzz/seeds/pipeline/
//! NAME-N` (the frames those operations build, raw).
//!
//! The lab's addresses are not the fuzzer's, so each received frame becomes the operation that
//! builds the same kind of frame in the fuzzer's world: a client's TCP/UDP packet or ping to a
//! VIP becomes a typed packet from the same client index to the first VIP with its ports, TCP
//! flags, TCP options (none, MSS, or more) and payload length; a backend's packet to a NAT
//! address becomes a reply to the latest NAT'd packet with its flags and payload length; ARP
//! and neighbour discovery for a VIP or our addresses become the same messages for the
//! fuzzer's. Frames Sluice sent (`-Q out`) and anything else are skipped (counted).
//!
//! Run from `fuzz/`: `cargo run --release --bin pcap-seeds -- captures/lab.pcapng`. The
//! output depends only on the capture, so the seeds are reproduced from the committed file.
use std::path::Path;

use sluice_dataplane::wire::parse::{parse, L3};
use sluice_fuzz::{arp_frame, backend_mac, nd_frame, Damage, Input, Op, Pkt};

/// Operations per seed at most (the target reads 48).
const OPS_PER_SEED: usize = 48;
/// Raw frames written for `pipeline` at most (distinct ones, in capture order).
const MAX_RAW: usize = 24;

/// The lab's addresses (docs/lab.md) and what they are in the fuzzer's world.
const LAB_CLIENTS4: [[u8; 4]; 2] = [[10, 99, 0, 11], [10, 99, 0, 12]];
const LAB_VIP4: [u8; 4] = [10, 99, 0, 100];
const LAB_OWN4: [[u8; 4]; 2] = [[10, 99, 0, 2], [10, 99, 0, 3]];
const LAB_BACKENDS4: [[u8; 4]; 3] = [[10, 99, 0, 21], [10, 99, 0, 22], [10, 99, 0, 23]];

/// An IPv6 address of the lab (`fd00:99::LAST`).
const fn lab6(last: u16) -> [u8; 16] {
    let [hi, lo] = last.to_be_bytes();
    [0xfd, 0, 0, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, hi, lo]
}

/// The fuzzer's (fuzz/src/lib.rs): clients 0 and 1, the first VIP, own and NAT addresses, a
/// backend.
const FUZZ_CLIENTS4: [[u8; 4]; 2] = [[10, 9, 9, 9], [10, 9, 0, 10]];
const FUZZ_VIP4: [u8; 4] = [192, 0, 2, 1];
const FUZZ_OWN4: [[u8; 4]; 2] = [[10, 0, 0, 2], [10, 0, 0, 3]];
const FUZZ_BACKEND4: [u8; 4] = [10, 0, 1, 1];
const FUZZ_CLIENTS6: [[u8; 16]; 2] = [fuzz6(0x09, 9), fuzz6(0x09, 10)];
const FUZZ_VIP6: [u8; 16] = fuzz6(0, 1);
const FUZZ_BACKEND6: [u8; 16] = fuzz6(0xcc, 1);

/// `2001:db8:0:NET::LAST`, as the fuzzer writes them.
const fn fuzz6(net: u8, last: u8) -> [u8; 16] {
    [
        0x20, 0x01, 0x0d, 0xb8, 0, net, 0, 0, 0, 0, 0, 0, 0, 0, 0, last,
    ]
}

/// The received frames of a pcapng (Enhanced Packet Blocks whose `epb_flags` say inbound)
/// and how many were sent.
fn received(data: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        b.get(at..at + 4)
            .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
    };
    let (mut frames, mut sent) = (Vec::new(), 0);
    let mut at = 0;
    while let (Some(ty), Some(len)) = (u32_at(data, at), u32_at(data, at + 4)) {
        let len = len as usize;
        let Some(block) = data.get(at..at + len).filter(|_| len >= 12) else {
            break;
        };
        at += len;
        if ty != 6 {
            continue;
        }
        let body = &block[8..len - 4];
        let Some(cap) = u32_at(body, 12).map(|c| c as usize) else {
            continue;
        };
        let Some(frame) = body.get(20..20 + cap) else {
            continue;
        };
        // Options after the padded frame: epb_flags (code 2), bits 0-1 the direction.
        let mut opts = &body[(20 + cap.div_ceil(4) * 4).min(body.len())..];
        let mut inbound = false;
        while opts.len() >= 4 {
            let code = u16::from_le_bytes([opts[0], opts[1]]);
            let olen = usize::from(u16::from_le_bytes([opts[2], opts[3]]));
            if code == 0 {
                break;
            }
            if code == 2 && olen == 4 && opts.len() >= 8 {
                inbound = u32_at(opts, 4).unwrap_or(0) & 3 == 1;
            }
            opts = opts.get(4 + olen.div_ceil(4) * 4..).unwrap_or(&[]);
        }
        if inbound {
            frames.push(frame.to_vec());
        } else {
            sent += 1;
        }
    }
    (frames, sent)
}

/// A client's index in the fuzzer's sources (the lab's sl-c1 and sl-c2 are 0 and 1).
fn client(addr: &[u8; 16], v6: bool) -> Option<u8> {
    if v6 {
        [lab6(0x11), lab6(0x12)]
            .iter()
            .position(|a| a == addr)
            .map(|i| i as u8)
    } else {
        LAB_CLIENTS4
            .iter()
            .position(|a| a[..] == addr[..4])
            .map(|i| i as u8)
    }
}

fn is_backend(addr: &[u8; 16], v6: bool) -> bool {
    if v6 {
        [lab6(0x21), lab6(0x22), lab6(0x23)].contains(addr)
    } else {
        LAB_BACKENDS4.iter().any(|a| a[..] == addr[..4])
    }
}

fn is_own(addr: &[u8; 16], v6: bool) -> bool {
    if v6 {
        [lab6(2), lab6(3)].contains(addr)
    } else {
        LAB_OWN4.iter().any(|a| a[..] == addr[..4])
    }
}

/// TCP options as the fuzzer's packets have them: 0 none, 1 MSS only, 2 more.
fn tcp_options(frame: &[u8], l4: usize) -> u8 {
    match frame.get(l4 + 12).map(|b| usize::from(b >> 4) * 4) {
        Some(20) | None => 0,
        Some(24) => 1,
        Some(_) => 2,
    }
}

/// The operation that builds, in the fuzzer's world, the frame Sluice received; `None` for
/// frames it has none for.
fn op_of(frame: &[u8]) -> Option<Op> {
    let p = parse(frame).ok()?;
    match p.l3 {
        L3::Arp => {
            let l3 = usize::from(p.l3_off);
            let a = frame.get(l3..l3 + 28)?;
            let op = u16::from_be_bytes([a[6], a[7]]);
            let (spa, tpa): ([u8; 4], [u8; 4]) =
                (a[14..18].try_into().ok()?, a[24..28].try_into().ok()?);
            let target = if tpa == LAB_VIP4 {
                FUZZ_VIP4
            } else {
                FUZZ_OWN4[LAB_OWN4.iter().position(|x| *x == tpa)?]
            };
            if let Some(i) = LAB_CLIENTS4.iter().position(|x| *x == spa) {
                let mac = [2, 0, 0, 0, 0, 0xa0 + i as u8];
                Some(Op::Raw(arp_frame(op, mac, FUZZ_CLIENTS4[i], target)))
            } else if LAB_BACKENDS4.contains(&spa) {
                Some(Op::Raw(arp_frame(
                    op,
                    backend_mac(1),
                    FUZZ_BACKEND4,
                    target,
                )))
            } else {
                None
            }
        }
        L3::Ipv4 | L3::Ipv6 => {
            let v6 = p.l3 == L3::Ipv6;
            let l4 = usize::from(p.l4_off);
            let payload = usize::from(p.l3_end).saturating_sub(l4);
            let vip = if v6 {
                p.dst == lab6(0x100)
            } else {
                p.dst[..4] == LAB_VIP4
            };
            if p.proto == 58 && (p.icmp_type == 135 || p.icmp_type == 136) {
                // Neighbour discovery: a client's solicitation for the VIP, a backend's advert.
                let target: [u8; 16] = frame.get(l4 + 8..l4 + 24)?.try_into().ok()?;
                if let Some(i) = client(&p.src, true) {
                    let t = if target == lab6(0x100) {
                        FUZZ_VIP6
                    } else {
                        return None;
                    };
                    let mac = [2, 0, 0, 0, 0, 0xa8 + i];
                    return Some(Op::Raw(nd_frame(
                        p.icmp_type == 136,
                        FUZZ_CLIENTS6[usize::from(i)],
                        t,
                        mac,
                    )));
                }
                if is_backend(&p.src, true) {
                    return Some(Op::Raw(nd_frame(
                        true,
                        FUZZ_BACKEND6,
                        FUZZ_BACKEND6,
                        backend_mac(10),
                    )));
                }
                return None;
            }
            if let (Some(src), true) = (client(&p.src, v6), vip) {
                let (kind, sport, dport, flags, options, body) = match p.proto {
                    6 => {
                        let hl = usize::from(frame.get(l4 + 12)? >> 4) * 4;
                        (
                            0,
                            p.sport,
                            0,
                            p.tcp_flags,
                            tcp_options(frame, l4),
                            payload.saturating_sub(hl),
                        )
                    }
                    17 => (1, p.sport, 1, 0, 0, payload.saturating_sub(8)),
                    1 | 58 if p.icmp_type == 8 || p.icmp_type == 128 => {
                        let ident = frame.get(l4 + 4..l4 + 6)?;
                        (
                            2,
                            u16::from_be_bytes([ident[0], ident[1]]),
                            0,
                            0,
                            0,
                            payload.saturating_sub(8),
                        )
                    }
                    _ => return None,
                };
                return Some(Op::Packet(Pkt {
                    v6,
                    src,
                    dst: 0,
                    // Below 12 a port is an index into the fuzzer's ports: keep it a value.
                    sport: sport.max(12),
                    dport,
                    kind,
                    flags,
                    options,
                    payload: body.min(254) as u8,
                    fragment: 0,
                    vlan: 0,
                    to_mac: 0,
                    ip_options: false,
                    damage: Damage::None,
                }));
            }
            if is_backend(&p.src, v6) && is_own(&p.dst, v6) && (p.proto == 6 || p.proto == 17) {
                let hl = if p.proto == 6 {
                    usize::from(frame.get(l4 + 12)? >> 4) * 4
                } else {
                    8
                };
                return Some(Op::Reply {
                    n: 0,
                    flags: p.tcp_flags,
                    payload: (payload.saturating_sub(hl) % 64) as u8,
                });
            }
            None
        }
        _ => None,
    }
}

fn main() -> std::io::Result<()> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        eprintln!("usage: pcap-seeds CAPTURE.pcapng...");
        std::process::exit(2);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let (flows, raw) = (dir.join("flows"), dir.join("pipeline"));
    std::fs::create_dir_all(&flows)?;
    std::fs::create_dir_all(&raw)?;
    for path in paths {
        let data = std::fs::read(&path)?;
        let name = Path::new(&path)
            .file_stem()
            .map_or("capture".into(), |s| s.to_string_lossy().into_owned());
        let (frames, sent) = received(&data);
        let ops: Vec<Op> = frames.iter().filter_map(|f| op_of(f)).collect();
        let skipped = frames.len() - ops.len();
        let mut seeds = 0;
        for (i, chunk) in ops.chunks(OPS_PER_SEED).enumerate() {
            let input = Input {
                ops: chunk.to_vec(),
            };
            std::fs::write(flows.join(format!("{name}-{i}")), input.encode())?;
            seeds += 1;
        }
        let mut written: Vec<Vec<u8>> = Vec::new();
        for op in &ops {
            let f = match op {
                Op::Packet(p) => p.frame(),
                Op::Raw(v) => v.clone(),
                _ => continue,
            };
            if written.len() < MAX_RAW && !written.contains(&f) {
                std::fs::write(raw.join(format!("{name}-{}", written.len())), &f)?;
                written.push(f);
            }
        }
        println!(
            "pcap-seeds: {path}: {} frames received ({sent} sent, skipped): {} operations in {seeds} flows seeds, {skipped} frames without one; {} raw frames for pipeline",
            frames.len(),
            ops.len(),
            written.len()
        );
    }
    Ok(())
}
