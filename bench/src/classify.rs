//! Receive-side classification: which stream a returning packet belongs to, and its stamp.
//!
//! ## Design
//! A device under test may rewrite addresses and ports (full NAT), MACs (`macswap`), swap the
//! whole 5-tuple (`5tswap`) or wrap the packet in an outer IP header (IP-in-IP DSR), so a
//! returning packet is matched on what all of them keep: IP version, protocol, frame length
//! (of the inner packet), and a tag — the SYN flag for TCP, the tag byte after the stamp for
//! UDP. The stamp is read from the start of the payload.
use crate::spec::{Family, Proto, StreamDef, STAMP_LEN};

/// What identifies a stream's packets on the way back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxKey {
    /// 4 or 6.
    pub ver: u8,
    /// IP protocol number.
    pub proto: u8,
    /// TCP: 1 for SYN; UDP: the tag byte.
    pub tag: u8,
    /// Frame length without FCS (of the inner frame when encapsulated).
    pub len: u16,
}

impl RxKey {
    /// The key of a stream.
    pub fn of(s: &StreamDef) -> RxKey {
        RxKey {
            ver: match s.family {
                Family::V4 => 4,
                Family::V6 => 6,
            },
            proto: match s.proto {
                Proto::Tcp => 6,
                Proto::Udp => 17,
            },
            tag: match s.proto {
                Proto::Tcp => u8::from(s.kind.syn()),
                Proto::Udp => s.kind.tag(),
            },
            len: s.data_len() as u16,
        }
    }
}

/// The verdict on one received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rx {
    /// A packet of stream `group` (an index into the classifier's keys) with its stamp.
    Data {
        /// Stream index.
        group: u8,
        /// The 48-bit TSC stamp.
        stamp: u64,
    },
    /// ARP: maybe a request for an address we answer, or a reply we asked for.
    Arp,
    /// ICMPv6 neighbour solicitation or advertisement.
    Nd,
    /// Anything else.
    Other,
}

/// Matches frames against the keys of the streams of the current phase.
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    keys: Vec<(RxKey, u8)>,
}

#[inline(always)]
fn be16(d: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([d[at], d[at + 1]])
}

impl Classifier {
    /// A classifier for `keys[i]` -> group `groups[i]`.
    pub fn new(keys: impl IntoIterator<Item = (RxKey, u8)>) -> Classifier {
        Classifier {
            keys: keys.into_iter().collect(),
        }
    }

    /// Classifies one frame. Never panics, whatever the bytes.
    #[inline]
    pub fn classify(&self, d: &[u8]) -> Rx {
        if d.len() < 14 {
            return Rx::Other;
        }
        let (mut ver, mut l3) = match be16(d, 12) {
            0x0800 => (4u8, 14usize),
            0x86dd => (6, 14),
            0x0806 => return Rx::Arp,
            _ => return Rx::Other,
        };
        let mut strip = 0usize;
        // At most one level of IP-in-IP (DSR-IPIP output).
        for depth in 0..2 {
            let (proto, l4) = if ver == 4 {
                if d.len() < l3 + 20 || d[l3] >> 4 != 4 {
                    return Rx::Other;
                }
                let ihl = usize::from(d[l3] & 0x0f) * 4;
                if ihl < 20 || be16(d, l3 + 6) & 0x3fff != 0 {
                    return Rx::Other; // options-less or not; fragments are not ours
                }
                (d[l3 + 9], l3 + ihl)
            } else {
                if d.len() < l3 + 40 || d[l3] >> 4 != 6 {
                    return Rx::Other;
                }
                (d[l3 + 6], l3 + 40)
            };
            match proto {
                4 | 41 if depth == 0 => {
                    strip = l4 - l3;
                    ver = if proto == 4 { 4 } else { 6 };
                    l3 = l4;
                    continue;
                }
                58 if ver == 6 => {
                    return match d.get(l4) {
                        Some(135) | Some(136) => Rx::Nd,
                        _ => Rx::Other,
                    };
                }
                6 => {
                    if d.len() < l4 + 20 {
                        return Rx::Other;
                    }
                    let payload = l4 + usize::from(d[l4 + 12] >> 4) * 4;
                    let tag = u8::from(d[l4 + 13] & 0x02 != 0);
                    return self.data(d, ver, 6, tag, payload, strip);
                }
                17 => {
                    let payload = l4 + 8;
                    if d.len() < payload + STAMP_LEN + 1 {
                        return Rx::Other;
                    }
                    let tag = d[payload + STAMP_LEN];
                    return self.data(d, ver, 17, tag, payload, strip);
                }
                _ => return Rx::Other,
            }
        }
        Rx::Other
    }

    #[inline(always)]
    fn data(&self, d: &[u8], ver: u8, proto: u8, tag: u8, payload: usize, strip: usize) -> Rx {
        if d.len() < payload + STAMP_LEN {
            return Rx::Other;
        }
        let key = RxKey {
            ver,
            proto,
            tag,
            len: (d.len() - strip) as u16,
        };
        for (k, g) in &self.keys {
            if *k == key {
                let s = &d[payload..payload + STAMP_LEN];
                let stamp = u64::from_be_bytes([0, 0, s[0], s[1], s[2], s[3], s[4], s[5]]);
                return Rx::Data { group: *g, stamp };
            }
        }
        Rx::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{FlowSpace, Kind};
    use crate::template::{Endpoints, Template};

    fn stream(family: Family, proto: Proto, kind: Kind, frame: usize) -> StreamDef {
        StreamDef {
            family,
            proto,
            kind,
            frame,
            weight: 1,
            flows: FlowSpace {
                base: 0,
                port_min: 1,
                ports: 1,
                count: 1,
                start: 0,
            },
            limit: None,
        }
    }

    fn frame(s: &StreamDef, stamp: u64) -> Vec<u8> {
        let ep = Endpoints {
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            src: match s.family {
                Family::V4 => "10.0.0.0".parse().unwrap(),
                Family::V6 => "fd00::".parse().unwrap(),
            },
            dst: match s.family {
                Family::V4 => "10.0.0.9".parse().unwrap(),
                Family::V6 => "fd00::9".parse().unwrap(),
            },
            dport: 80,
        };
        let t = Template::build(s, &ep);
        let mut d = t.frame.clone();
        t.patch(&mut d, 0x0a00_0001, 5000, stamp);
        d
    }

    #[test]
    fn streams_are_told_apart() {
        let streams = [
            stream(Family::V4, Proto::Tcp, Kind::Est, 64),
            stream(Family::V4, Proto::Tcp, Kind::New, 64),
            stream(Family::V4, Proto::Tcp, Kind::Est, 570),
            stream(Family::V6, Proto::Tcp, Kind::Est, 84),
            stream(Family::V4, Proto::Udp, Kind::Est, 64),
            stream(Family::V4, Proto::Udp, Kind::New, 64),
            stream(Family::V6, Proto::Udp, Kind::New, 1518),
        ];
        let c = Classifier::new(
            streams
                .iter()
                .enumerate()
                .map(|(i, s)| (RxKey::of(s), i as u8)),
        );
        for (i, s) in streams.iter().enumerate() {
            let d = frame(s, 0xabc_def0_1234 + i as u64);
            assert_eq!(
                c.classify(&d),
                Rx::Data {
                    group: i as u8,
                    stamp: 0xabc_def0_1234 + i as u64
                },
                "{}",
                s.name()
            );
        }
        // An unknown size is not ours.
        let d = frame(&stream(Family::V4, Proto::Tcp, Kind::Est, 100), 1);
        assert_eq!(c.classify(&d), Rx::Other);
    }

    #[test]
    fn ip_in_ip_is_looked_through() {
        let s = stream(Family::V4, Proto::Tcp, Kind::Est, 64);
        let c = Classifier::new([(RxKey::of(&s), 0)]);
        let inner = frame(&s, 77);
        let mut d = inner[..14].to_vec();
        let mut outer = [0u8; 20];
        outer[0] = 0x45;
        outer[9] = 4;
        d.extend_from_slice(&outer);
        d.extend_from_slice(&inner[14..]);
        assert_eq!(
            c.classify(&d),
            Rx::Data {
                group: 0,
                stamp: 77
            }
        );
    }

    #[test]
    fn neighbour_traffic_and_garbage() {
        let c = Classifier::default();
        let mut arp = vec![0u8; 60];
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert_eq!(c.classify(&arp), Rx::Arp);
        let mut ns = vec![0u8; 86];
        ns[12..14].copy_from_slice(&[0x86, 0xdd]);
        ns[14] = 0x60;
        ns[20] = 58;
        ns[54] = 135;
        assert_eq!(c.classify(&ns), Rx::Nd);
        for len in 0..100 {
            let mut d = vec![0xffu8; len];
            if len > 14 {
                d[12] = 0x08;
                d[13] = 0x00;
            }
            let _ = c.classify(&d);
        }
    }
}
