//! Frame templates and the per-packet patch.
//!
//! ## Design
//! A template is a complete frame whose varying fields (the low 32 bits of the source address,
//! the source port and the 48-bit TSC stamp) are zero, plus the unfolded one's-complement sums
//! of everything else that the IPv4 header checksum and the TCP/UDP checksum cover. Patching a
//! packet writes 12 bytes and adds six 16-bit words to each sum: no byte of the frame is read,
//! and nothing depends on the frame size.
//!
//! Payload layout: `[stamp: 6 bytes, big-endian low 48 bits of the TSC][tag: 1 byte, UDP only]
//! [filler]`. Full NAT and testpmd's `macswap`/`5tswap` leave payloads alone, so the stamp and
//! tag come back as they left.
use std::net::IpAddr;

use sluice_dataplane::wire::checksum;

use crate::spec::{Family, Proto, StreamDef, STAMP_LEN};
/// Mask of the stamp's 48 bits.
pub const STAMP_MASK: u64 = (1 << 48) - 1;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// A frame template with the offsets and partial checksums of its varying fields.
#[derive(Debug, Clone)]
pub struct Template {
    /// The frame (without FCS), varying fields zero.
    pub frame: Vec<u8>,
    /// Offset of the varying low 32 bits of the source address.
    pub src_off: usize,
    /// Offset of the source port.
    pub sport_off: usize,
    /// Offset of the IPv4 header checksum (`None` for IPv6).
    pub ip_csum_off: Option<usize>,
    /// Offset of the TCP/UDP checksum.
    pub l4_csum_off: usize,
    /// Offset of the stamp.
    pub stamp_off: usize,
    /// Unfolded sum of the IPv4 header with the varying fields and the checksum zero.
    pub ip_base: u32,
    /// Unfolded sum of pseudo-header, L4 header and payload with the varying fields and the
    /// checksum zero.
    pub l4_base: u32,
    /// UDP (a computed zero checksum is sent as 0xffff).
    pub udp: bool,
}

/// Addresses of one family's frames.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    /// Destination MAC (the device under test).
    pub dst_mac: [u8; 6],
    /// Source MAC (the generator's port).
    pub src_mac: [u8; 6],
    /// Source address; for IPv6 its low 32 bits are replaced per packet.
    pub src: IpAddr,
    /// Destination (the VIP).
    pub dst: IpAddr,
    /// Destination port.
    pub dport: u16,
}

#[inline(always)]
fn add48(acc: u32, v: u64) -> u32 {
    acc + ((v >> 32) & 0xffff) as u32 + ((v >> 16) & 0xffff) as u32 + (v & 0xffff) as u32
}

impl Template {
    /// Builds the template of `stream` between `ep`.
    pub fn build(stream: &StreamDef, ep: &Endpoints) -> Template {
        let len = stream.data_len();
        let mut f = vec![0u8; len];
        f[0..6].copy_from_slice(&ep.dst_mac);
        f[6..12].copy_from_slice(&ep.src_mac);
        let proto = match stream.proto {
            Proto::Tcp => 6u8,
            Proto::Udp => 17u8,
        };
        let (l4, src_off, ip_csum_off) = match stream.family {
            Family::V4 => {
                f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
                let ip = &mut f[14..34];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&((len - 14) as u16).to_be_bytes());
                ip[6] = 0x40; // DF
                ip[8] = 64;
                ip[9] = proto;
                if let IpAddr::V4(d) = ep.dst {
                    ip[16..20].copy_from_slice(&d.octets());
                }
                (34, 26, Some(24))
            }
            Family::V6 => {
                f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
                let ip = &mut f[14..54];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&((len - 54) as u16).to_be_bytes());
                ip[6] = proto;
                ip[7] = 64;
                if let IpAddr::V6(s) = ep.src {
                    ip[8..20].copy_from_slice(&s.octets()[..12]);
                }
                if let IpAddr::V6(d) = ep.dst {
                    ip[24..40].copy_from_slice(&d.octets());
                }
                (54, 34, None)
            }
        };
        let (payload, l4_csum_off) = match stream.proto {
            Proto::Tcp => {
                let t = &mut f[l4..l4 + 20];
                t[2..4].copy_from_slice(&ep.dport.to_be_bytes());
                t[4..8].copy_from_slice(&0x5c00_0001u32.to_be_bytes()); // seq
                if stream.kind.syn() {
                    t[13] = TCP_SYN;
                } else {
                    t[8..12].copy_from_slice(&0x5c00_0001u32.to_be_bytes()); // ack
                    t[13] = TCP_ACK;
                }
                t[12] = 5 << 4;
                t[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
                (l4 + 20, l4 + 16)
            }
            Proto::Udp => {
                let t = &mut f[l4..l4 + 8];
                t[2..4].copy_from_slice(&ep.dport.to_be_bytes());
                t[4..6].copy_from_slice(&((len - l4) as u16).to_be_bytes());
                (l4 + 8, l4 + 6)
            }
        };
        let stamp_off = payload;
        let mut p = payload + STAMP_LEN;
        if stream.proto == Proto::Udp {
            f[p] = stream.kind.tag();
            p += 1;
        }
        for (i, b) in f[p..].iter_mut().enumerate() {
            *b = b"sluice-pktgen "[i % 14];
        }
        let ip_base = match ip_csum_off {
            Some(_) => checksum::sum(0, &f[14..34]),
            None => 0,
        };
        let l4_len = len - l4;
        let pseudo = match stream.family {
            Family::V4 => {
                let mut d = [0u8; 4];
                d.copy_from_slice(&f[30..34]);
                checksum::pseudo_v4([0; 4], d, proto, l4_len as u16)
            }
            Family::V6 => {
                let mut s = [0u8; 16];
                s.copy_from_slice(&f[22..38]);
                let mut d = [0u8; 16];
                d.copy_from_slice(&f[38..54]);
                checksum::pseudo_v6(s, d, proto, l4_len as u32)
            }
        };
        let l4_base = checksum::sum(pseudo, &f[l4..]);
        Template {
            frame: f,
            src_off,
            sport_off: l4,
            ip_csum_off,
            l4_csum_off,
            stamp_off,
            ip_base,
            l4_base,
            udp: stream.proto == Proto::Udp,
        }
    }

    /// Writes the varying fields and both checksums into `d`, a copy of [`Template::frame`].
    #[inline(always)]
    pub fn patch(&self, d: &mut [u8], src32: u32, sport: u16, stamp: u64) {
        let stamp = stamp & STAMP_MASK;
        d[self.src_off..self.src_off + 4].copy_from_slice(&src32.to_be_bytes());
        d[self.sport_off..self.sport_off + 2].copy_from_slice(&sport.to_be_bytes());
        d[self.stamp_off..self.stamp_off + STAMP_LEN].copy_from_slice(&stamp.to_be_bytes()[2..]);
        let a = (src32 >> 16) + (src32 & 0xffff);
        if let Some(o) = self.ip_csum_off {
            let c = !checksum::fold(self.ip_base + a);
            d[o..o + 2].copy_from_slice(&c.to_be_bytes());
        }
        let mut c = !checksum::fold(add48(self.l4_base + a + u32::from(sport), stamp));
        if self.udp && c == 0 {
            c = 0xffff;
        }
        d[self.l4_csum_off..self.l4_csum_off + 2].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{FlowSpace, Kind};
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn stream(family: Family, proto: Proto, kind: Kind, frame: usize) -> StreamDef {
        StreamDef {
            family,
            proto,
            kind,
            frame,
            weight: 1,
            flows: FlowSpace {
                base: 0,
                port_min: 1024,
                ports: 10,
                count: 10,
                start: 0,
            },
            limit: None,
        }
    }

    fn ep(family: Family) -> Endpoints {
        match family {
            Family::V4 => Endpoints {
                dst_mac: [2, 0, 0, 0, 0, 1],
                src_mac: [2, 0, 0, 0, 0, 2],
                src: "10.201.0.0".parse().unwrap(),
                dst: "10.200.100.1".parse().unwrap(),
                dport: 80,
            },
            Family::V6 => Endpoints {
                dst_mac: [2, 0, 0, 0, 0, 1],
                src_mac: [2, 0, 0, 0, 0, 2],
                src: "fd00:201::".parse().unwrap(),
                dst: "fd00:200::100".parse().unwrap(),
                dport: 80,
            },
        }
    }

    /// Every family, protocol and size: checksums verified by etherparse after patching with
    /// values that make the sums carry.
    #[test]
    fn patched_frames_have_valid_checksums() {
        for family in [Family::V4, Family::V6] {
            for proto in [Proto::Tcp, Proto::Udp] {
                for kind in [Kind::Est, Kind::New] {
                    for frame in [crate::spec::min_frame(family, proto), 570, 1518] {
                        let s = stream(family, proto, kind, frame);
                        let t = Template::build(&s, &ep(family));
                        let mut d = t.frame.clone();
                        assert_eq!(d.len(), frame - 4);
                        for (src, sport, stamp) in [
                            (0x0ac9_0001u32, 1024u16, 0u64),
                            (0xffff_ffff, 65535, STAMP_MASK),
                            (0x0ac9_8000, 40000, 0x1234_5678_9abc),
                        ] {
                            t.patch(&mut d, src, sport, stamp);
                            check(&d, family, proto, kind, src, sport, stamp);
                        }
                    }
                }
            }
        }
    }

    fn check(d: &[u8], family: Family, proto: Proto, kind: Kind, src: u32, sport: u16, stamp: u64) {
        let p = SlicedPacket::from_ethernet(d).expect("parses");
        let (srcb, dstb): (Vec<u8>, Vec<u8>) = match p.net.as_ref().expect("ip") {
            NetSlice::Ipv4(ip) => {
                assert_eq!(family, Family::V4);
                let h = ip.header().to_header();
                assert_eq!(
                    h.header_checksum,
                    h.calc_header_checksum(),
                    "IPv4 header checksum"
                );
                assert_eq!(h.source, src.to_be_bytes());
                (h.source.to_vec(), h.destination.to_vec())
            }
            NetSlice::Ipv6(ip) => {
                assert_eq!(family, Family::V6);
                let h = ip.header().to_header();
                assert_eq!(&h.source[12..], &src.to_be_bytes());
                (h.source.to_vec(), h.destination.to_vec())
            }
        };
        let _ = (srcb, dstb);
        match (p.transport.as_ref().expect("l4"), &p.net) {
            (TransportSlice::Tcp(t), Some(NetSlice::Ipv4(ip))) => {
                assert_eq!(proto, Proto::Tcp);
                assert_eq!(t.source_port(), sport);
                assert_eq!(t.syn(), kind.syn());
                let h = ip.header().to_header();
                let c = t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap();
                assert_eq!(t.checksum(), c, "TCP/IPv4 checksum");
                assert_eq!(&t.payload()[..6], &stamp.to_be_bytes()[2..]);
            }
            (TransportSlice::Tcp(t), Some(NetSlice::Ipv6(ip))) => {
                let h = ip.header().to_header();
                let c = t.to_header().calc_checksum_ipv6(&h, t.payload()).unwrap();
                assert_eq!(t.checksum(), c, "TCP/IPv6 checksum");
            }
            (TransportSlice::Udp(u), Some(NetSlice::Ipv4(ip))) => {
                assert_eq!(proto, Proto::Udp);
                let h = ip.header().to_header();
                let c = u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap();
                assert_eq!(u.checksum(), c, "UDP/IPv4 checksum");
                assert_eq!(u.payload()[6], kind.tag());
            }
            (TransportSlice::Udp(u), Some(NetSlice::Ipv6(ip))) => {
                let h = ip.header().to_header();
                let c = u.to_header().calc_checksum_ipv6(&h, u.payload()).unwrap();
                assert_eq!(u.checksum(), c, "UDP/IPv6 checksum");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
