//! One pass over a frame: every header validated once, summarised in a `Copy` struct.
use super::ethernet::{self, ethertype, vlan_field};
use super::{be16, icmp, ipv4, ipv6, proto, tcp, udp, WireError};

/// What the layer-3 protocol of a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum L3 {
    /// ARP.
    Arp,
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
    /// Anything else (the EtherType).
    #[default]
    Other,
}

/// Fragment position of an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fragment {
    /// Not a fragment.
    #[default]
    No,
    /// First fragment (offset 0, more fragments): carries the L4 header.
    First,
    /// A later fragment: no L4 header.
    Later,
}

/// The summary of a parsed frame. Addresses are 16 bytes; IPv4 uses the first 4.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Layer 3 protocol.
    pub l3: L3,
    /// The EtherType after any VLAN tags.
    pub ethertype: u16,
    /// 802.1Q VLAN id of the (outer) tag, if tagged.
    pub vlan: Option<u16>,
    /// Offset of the L3 header.
    pub l3_off: u16,
    /// Offset of the L4 header (0 for ARP and non-first fragments).
    pub l4_off: u16,
    /// End of the IP packet (start + total length); bytes after are padding.
    pub l3_end: u16,
    /// Upper-layer protocol number.
    pub proto: u8,
    /// Source address (IPv4 in bytes 0..4).
    pub src: [u8; 16],
    /// Destination address (IPv4 in bytes 0..4).
    pub dst: [u8; 16],
    /// TCP/UDP source port, or ICMP echo identifier.
    pub sport: u16,
    /// TCP/UDP destination port.
    pub dport: u16,
    /// TCP flags.
    pub tcp_flags: u8,
    /// ICMP type (for ICMP/ICMPv6).
    pub icmp_type: u8,
    /// ICMP code.
    pub icmp_code: u8,
    /// Fragment position.
    pub fragment: Fragment,
    /// Hop limit / TTL.
    pub ttl: u8,
}

impl Parsed {
    /// True for IPv4 or IPv6.
    #[inline(always)]
    pub fn is_ip(&self) -> bool {
        matches!(self.l3, L3::Ipv4 | L3::Ipv6)
    }
    /// Source IPv4 address.
    #[inline(always)]
    pub fn src4(&self) -> [u8; 4] {
        [self.src[0], self.src[1], self.src[2], self.src[3]]
    }
    /// Destination IPv4 address.
    #[inline(always)]
    pub fn dst4(&self) -> [u8; 4] {
        [self.dst[0], self.dst[1], self.dst[2], self.dst[3]]
    }
}

/// Parses an Ethernet frame: up to two VLAN tags, then ARP, IPv4 (options) or IPv6 (extension
/// headers skipped), then TCP, UDP, ICMP or ICMPv6. Never panics on any input.
#[inline]
pub fn parse(frame: &[u8]) -> Result<Parsed, WireError> {
    let mut p = Parsed::default();
    parse_into(frame, &mut p)?;
    Ok(p)
}

/// [`parse`] into `p`, in place (what is not in the frame is reset to its default). The burst
/// path parses straight into its per-packet cache this way: building the summary on the stack
/// and copying it out re-reads with wide loads what was just written field by field, which
/// stalls on store forwarding (about a third of a parse on the development VM). On an error,
/// `p` holds whatever was parsed before it.
#[inline]
pub fn parse_into(frame: &[u8], p: &mut Parsed) -> Result<(), WireError> {
    *p = Parsed::default();
    if fast_v4(frame, p) {
        return Ok(());
    }
    parse_general(frame, p)
}

/// Every frame [`fast_v4`] does not take; `p` starts at its default.
#[inline]
fn parse_general(frame: &[u8], p: &mut Parsed) -> Result<(), WireError> {
    let eth = ethernet::Frame::new_checked(frame)?;
    let mut et = eth.ethertype();
    let mut off = ethernet::HEADER_LEN;
    let mut tags = 0;
    while et == ethertype::VLAN || et == ethertype::QINQ {
        if tags == 2 {
            return Err(WireError::Malformed);
        }
        if frame.len() < off + ethernet::VLAN_TAG_LEN {
            return Err(WireError::Truncated);
        }
        if p.vlan.is_none() {
            p.vlan = Some(be16(frame, off + vlan_field::TCI) & 0x0fff);
        }
        et = be16(frame, off + vlan_field::ETHERTYPE);
        off += ethernet::VLAN_TAG_LEN;
        tags += 1;
    }
    p.ethertype = et;
    p.l3_off = off as u16;
    let l3 = &frame[off..];
    match et {
        ethertype::ARP => {
            let a = super::arp::Packet::new_checked(l3)?;
            p.l3 = L3::Arp;
            p.src[..4].copy_from_slice(&a.spa());
            p.dst[..4].copy_from_slice(&a.tpa());
            p.l3_end = (off + super::arp::LEN) as u16;
            Ok(())
        }
        ethertype::IPV4 => {
            let ip = ipv4::Packet::new_checked(l3)?;
            p.l3 = L3::Ipv4;
            p.proto = ip.protocol();
            p.src[..4].copy_from_slice(&ip.src());
            p.dst[..4].copy_from_slice(&ip.dst());
            p.ttl = ip.ttl();
            p.l3_end = (off + usize::from(ip.total_len())) as u16;
            if ip.is_fragment() {
                p.fragment = if ip.frag_offset() == 0 {
                    Fragment::First
                } else {
                    Fragment::Later
                };
            }
            let l4 = off + ip.header_len();
            if p.fragment == Fragment::Later {
                return Ok(());
            }
            parse_l4(frame, l4, usize::from(p.l3_end), p)
        }
        ethertype::IPV6 => {
            let ip = ipv6::Packet::new_checked(l3)?;
            p.l3 = L3::Ipv6;
            p.src = ip.src();
            p.dst = ip.dst();
            p.ttl = ip.hop_limit();
            p.l3_end = (off + ipv6::HEADER_LEN + usize::from(ip.payload_len())) as u16;
            let ul = ip.upper_layer()?;
            p.proto = ul.protocol;
            if let Some((fo, more)) = ul.fragment {
                if fo != 0 {
                    p.fragment = Fragment::Later;
                    return Ok(());
                }
                if more {
                    p.fragment = Fragment::First;
                }
            }
            parse_l4(frame, off + ul.offset, usize::from(p.l3_end), p)
        }
        _ => Ok(()),
    }
}

/// The common case in one pass: an untagged IPv4 packet without options or fragmentation
/// carrying a TCP segment or UDP datagram whose header fits. Fills `p` exactly as the general
/// path would and returns true, or returns false having changed nothing, and the general path
/// (which also produces every error) takes the frame.
#[inline(always)]
fn fast_v4(frame: &[u8], p: &mut Parsed) -> bool {
    use ethernet::field as eth;
    use ipv4::field as ip;
    use tcp::field as t;
    use udp::field as u;
    const L3: usize = ethernet::HEADER_LEN;
    const L4: usize = L3 + ipv4::MIN_HEADER_LEN;
    // Everything read below: the IPv4 header and a TCP header up to its flags (the UDP header
    // is shorter).
    let Some(h) = frame.get(..L4 + t::FLAGS + 1) else {
        return false;
    };
    let total = usize::from(be16(h, L3 + ip::LENGTH));
    let l4p = h[L3 + ip::PROTOCOL];
    // EtherType IPv4, version 4 with IHL 5, no MF flag and offset 0, TCP or UDP.
    if h[eth::ETHERTYPE] != 0x08
        || h[eth::ETHERTYPE + 1] != 0x00
        || h[L3 + ip::VER_IHL] != 0x45
        || h[L3 + ip::FLG_OFF] & 0x3f != 0
        || h[L3 + ip::FLG_OFF + 1] != 0
        || total < ipv4::MIN_HEADER_LEN
        || L3 + total > frame.len()
    {
        return false;
    }
    let seg = L3 + total - L4;
    let ok = match l4p {
        // Data offset 5..=15 and the whole header inside the packet.
        proto::TCP => {
            seg >= tcp::MIN_HEADER_LEN
                && h[L4 + t::DATA_OFF] >> 4 >= 5
                && usize::from(h[L4 + t::DATA_OFF] >> 4) * 4 <= seg
        }
        proto::UDP => {
            let ulen = usize::from(be16(h, L4 + u::LENGTH));
            seg >= udp::HEADER_LEN && ulen >= udp::HEADER_LEN && ulen <= seg
        }
        _ => false,
    };
    if !ok {
        return false;
    }
    p.l3 = L3::Ipv4;
    p.ethertype = ethertype::IPV4;
    p.l3_off = L3 as u16;
    p.l4_off = L4 as u16;
    p.l3_end = (L3 + total) as u16;
    p.proto = l4p;
    p.ttl = h[L3 + ip::TTL];
    let (src, dst) = (ip::SRC_ADDR, ip::DST_ADDR);
    p.src[..4].copy_from_slice(&h[L3 + src.start..L3 + src.end]);
    p.dst[..4].copy_from_slice(&h[L3 + dst.start..L3 + dst.end]);
    // TCP and UDP keep their ports at the same offsets.
    const _: () = assert!(t::SRC_PORT == u::SRC_PORT && t::DST_PORT == u::DST_PORT);
    p.sport = be16(h, L4 + t::SRC_PORT);
    p.dport = be16(h, L4 + t::DST_PORT);
    if l4p == proto::TCP {
        p.tcp_flags = h[L4 + t::FLAGS];
    }
    true
}

#[inline(always)]
fn parse_l4(frame: &[u8], l4: usize, end: usize, p: &mut Parsed) -> Result<(), WireError> {
    if l4 > end || end > frame.len() {
        return Err(WireError::Truncated);
    }
    let seg = &frame[l4..end];
    p.l4_off = l4 as u16;
    match p.proto {
        proto::TCP => {
            let t = tcp::Segment::new_checked(seg)?;
            p.sport = t.src_port();
            p.dport = t.dst_port();
            p.tcp_flags = t.flags();
        }
        proto::UDP => {
            let u = udp::Datagram::new_checked(seg)?;
            p.sport = u.src_port();
            p.dport = u.dst_port();
        }
        proto::ICMP | proto::ICMPV6 => {
            let m = icmp::Message::new_checked(seg)?;
            p.icmp_type = m.msg_type();
            p.icmp_code = m.code();
            p.sport = m.echo_ident();
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    #[test]
    fn agrees_with_etherparse_v4_tcp_vlan() {
        let b = PacketBuilder::ethernet2([1; 6], [2; 6])
            .single_vlan(100.try_into().unwrap())
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 80, 1, 1024)
            .syn();
        let mut buf = Vec::new();
        b.write(&mut buf, &[1, 2, 3]).unwrap();
        let p = parse(&buf).unwrap();
        assert_eq!(p.l3, L3::Ipv4);
        assert_eq!(p.vlan, Some(100));
        assert_eq!(p.l3_off, 18);
        assert_eq!(p.l4_off, 38);
        assert_eq!((p.sport, p.dport, p.proto), (40000, 80, 6));
        assert_eq!(p.tcp_flags & tcp::flags::SYN, tcp::flags::SYN);
        assert_eq!(p.src4(), [10, 0, 0, 1]);
        assert_eq!(usize::from(p.l3_end), buf.len());
    }

    #[test]
    fn agrees_with_etherparse_v6_udp() {
        let b = PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(5353, 53);
        let mut buf = Vec::new();
        b.write(&mut buf, &[9; 10]).unwrap();
        buf.extend_from_slice(&[0; 4]); // padding after the packet is fine
        let p = parse(&buf).unwrap();
        assert_eq!(p.l3, L3::Ipv6);
        assert_eq!((p.sport, p.dport, p.proto), (5353, 53, 17));
        assert_eq!(p.l4_off, 54);
        assert_eq!(usize::from(p.l3_end), buf.len() - 4);
    }

    #[test]
    fn fast_path_takes_plain_v4_tcp_and_udp_only() {
        let b = || PacketBuilder::ethernet2([1; 6], [2; 6]).ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64);
        let mut tcp = Vec::new();
        b().tcp(1, 2, 3, 4).write(&mut tcp, &[0; 6]).unwrap();
        let mut udp = Vec::new();
        b().udp(1, 2).write(&mut udp, &[0; 6]).unwrap();
        let mut vlan = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .single_vlan(7.try_into().unwrap())
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1, 2, 3, 4)
            .write(&mut vlan, &[0; 6])
            .unwrap();
        let mut p = Parsed::default();
        assert!(fast_v4(&tcp, &mut p) && p.dport == 2 && p.proto == proto::TCP);
        assert!(fast_v4(&udp, &mut p) && p.sport == 1 && p.proto == proto::UDP);
        assert!(!fast_v4(&vlan, &mut Parsed::default()));
        tcp[14 + 6] |= 0x20; // MF: a first fragment goes the general way
        assert!(!fast_v4(&tcp, &mut Parsed::default()));
    }

    proptest::proptest! {
        /// The fast path agrees with the general one on every frame it takes: a valid IPv4
        /// TCP/UDP frame with bytes overwritten at random (flags, lengths, version, IHL,
        /// EtherType, ports...).
        #[test]
        fn fast_path_agrees_with_general(
            udp: bool,
            len in 0usize..90,
            edits in proptest::collection::vec((0usize..90, proptest::prelude::any::<u8>()), 0..4),
        ) {
            let b = PacketBuilder::ethernet2([1; 6], [2; 6]).ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64);
            let mut buf = Vec::new();
            if udp {
                b.udp(5353, 53).write(&mut buf, &[7; 12]).unwrap();
            } else {
                b.tcp(40000, 80, 1, 1024).syn().write(&mut buf, &[7; 12]).unwrap();
            }
            buf.resize(len.max(buf.len()), 0);
            for (at, v) in edits {
                if let Some(x) = buf.get_mut(at) {
                    *x = v;
                }
            }
            let mut fast = Parsed::default();
            if fast_v4(&buf, &mut fast) {
                let mut slow = Parsed::default();
                proptest::prop_assert_eq!(parse_general(&buf, &mut slow), Ok(()));
                proptest::prop_assert_eq!(fast, slow);
            }
            proptest::prop_assert_eq!(parse(&buf).ok(), {
                let mut g = Parsed::default();
                parse_general(&buf, &mut g).ok().map(|()| g)
            });
        }
    }

    #[test]
    fn every_prefix_of_a_frame_is_handled() {
        let b = PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1, 2, 3, 4);
        let mut buf = Vec::new();
        b.write(&mut buf, &[0; 20]).unwrap();
        for n in 0..buf.len() {
            assert!(parse(&buf[..n]).is_err(), "prefix {n} must not parse");
        }
        assert!(parse(&buf).is_ok());
    }
}
