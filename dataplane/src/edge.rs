//! Frames the dataplane originates for the control plane: ARP requests, gratuitous ARP,
//! neighbour solicitations and unsolicited neighbour advertisements. Pure functions over byte
//! buffers; the worker puts them in mbufs.
use crate::wire::{arp, checksum, ethernet, icmp, ipv6, proto, put16};

/// Length of an ARP frame (without Ethernet padding).
pub const ARP_FRAME_LEN: usize = ethernet::HEADER_LEN + arp::LEN;
/// Length of an NS/NA frame with one link-layer option.
pub const ND_FRAME_LEN: usize = ethernet::HEADER_LEN + ipv6::HEADER_LEN + 32;
/// Frames are padded to the Ethernet minimum (without FCS).
pub const MIN_FRAME_LEN: usize = 60;

/// Writes a broadcast ARP request "who has `target`? tell `src_ip`" into `buf` (≥ 60 bytes);
/// returns the frame length.
pub fn arp_request(buf: &mut [u8], src_mac: [u8; 6], src_ip: [u8; 4], target: [u8; 4]) -> usize {
    ethernet::emit(buf, ethernet::BROADCAST, src_mac, ethernet::ethertype::ARP);
    arp::emit(
        &mut buf[ethernet::HEADER_LEN..],
        arp::OP_REQUEST,
        src_mac,
        src_ip,
        [0; 6],
        target,
    );
    buf[ARP_FRAME_LEN..MIN_FRAME_LEN].fill(0);
    MIN_FRAME_LEN
}

/// Writes a gratuitous ARP (a broadcast request with sender = target = `ip`), which updates the
/// neighbours' caches after a VIP moved to us. Returns the frame length.
pub fn gratuitous_arp(buf: &mut [u8], mac: [u8; 6], ip: [u8; 4]) -> usize {
    ethernet::emit(buf, ethernet::BROADCAST, mac, ethernet::ethertype::ARP);
    arp::emit(
        &mut buf[ethernet::HEADER_LEN..],
        arp::OP_REQUEST,
        mac,
        ip,
        [0; 6],
        ip,
    );
    buf[ARP_FRAME_LEN..MIN_FRAME_LEN].fill(0);
    MIN_FRAME_LEN
}

/// Writes a neighbour solicitation for `target` from `src_ip` to its solicited-node multicast
/// address into `buf` (≥ 86 bytes). Returns the frame length.
pub fn neighbor_solicit(
    buf: &mut [u8],
    src_mac: [u8; 6],
    src_ip: [u8; 16],
    target: [u8; 16],
) -> usize {
    let dst = icmp::solicited_node(target);
    ethernet::emit(
        buf,
        icmp::multicast_mac(dst),
        src_mac,
        ethernet::ethertype::IPV6,
    );
    let l3 = ethernet::HEADER_LEN;
    ipv6::emit(&mut buf[l3..], src_ip, dst, proto::ICMPV6, 32, 255);
    let l4 = l3 + ipv6::HEADER_LEN;
    icmp::emit_neighbor_solicit(&mut buf[l4..], target, src_mac);
    let c = !checksum::fold(checksum::sum(
        checksum::pseudo_v6(src_ip, dst, proto::ICMPV6, 32),
        &buf[l4..l4 + 32],
    ));
    put16(buf, l4 + 2, c);
    ND_FRAME_LEN
}

/// Writes an unsolicited neighbour advertisement for `ip` to all-nodes (ff02::1), the IPv6
/// counterpart of gratuitous ARP. Returns the frame length.
pub fn unsolicited_na(buf: &mut [u8], mac: [u8; 6], ip: [u8; 16]) -> usize {
    let mut dst = [0u8; 16];
    dst[0] = 0xff;
    dst[1] = 0x02;
    dst[15] = 1;
    ethernet::emit(
        buf,
        icmp::multicast_mac(dst),
        mac,
        ethernet::ethertype::IPV6,
    );
    let l3 = ethernet::HEADER_LEN;
    ipv6::emit(&mut buf[l3..], ip, dst, proto::ICMPV6, 32, 255);
    let l4 = l3 + ipv6::HEADER_LEN;
    icmp::emit_neighbor_advert(&mut buf[l4..], icmp::v6::NA_OVERRIDE, ip, mac);
    let c = !checksum::fold(checksum::sum(
        checksum::pseudo_v6(ip, dst, proto::ICMPV6, 32),
        &buf[l4..l4 + 32],
    ));
    put16(buf, l4 + 2, c);
    ND_FRAME_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_with_etherparse() {
        let mut b = [0xa5u8; 128];
        let n = neighbor_solicit(&mut b, [2, 0, 0, 0, 0, 1], [0xfd; 16], [0xfe; 16]);
        let s = etherparse::SlicedPacket::from_ethernet(&b[..n]).unwrap();
        match s.net {
            Some(etherparse::NetSlice::Ipv6(ip)) => {
                assert_eq!(ip.header().hop_limit(), 255);
            }
            other => panic!("{other:?}"),
        }
        match s.transport {
            Some(etherparse::TransportSlice::Icmpv6(i)) => {
                let src = [0xfd; 16];
                let dst = icmp::solicited_node([0xfe; 16]);
                assert_eq!(
                    i.checksum(),
                    i.icmp_type().calc_checksum(src, dst, i.payload()).unwrap()
                );
            }
            other => panic!("{other:?}"),
        }
        let n = arp_request(&mut b, [2, 0, 0, 0, 0, 1], [10, 0, 0, 1], [10, 0, 0, 9]);
        assert_eq!(n, 60);
        let p = crate::wire::parse::parse(&b[..n]).unwrap();
        assert_eq!(p.l3, crate::wire::parse::L3::Arp);
        assert_eq!(p.dst4(), [10, 0, 0, 9]);
        let n = unsolicited_na(&mut b, [2, 0, 0, 0, 0, 1], [0xfd; 16]);
        assert_eq!(n, ND_FRAME_LEN);
        let n = gratuitous_arp(&mut b, [2, 0, 0, 0, 0, 1], [10, 0, 0, 5]);
        let p = crate::wire::parse::parse(&b[..n]).unwrap();
        assert_eq!(p.src4(), p.dst4());
    }
}
