//! # Edge protocols: what the dataplane answers and originates itself
//!
//! Answers: ARP replies and NDP neighbour advertisements for VIPs and own addresses,
//! neighbours learned from ARP replies and advertisements ([`Verdict::Neighbor`]), ICMP and
//! ICMPv6 echo replies on VIPs, and ICMP errors that quote a tracked flow, forwarded to its
//! backend (by the worker that holds the flow: the others hand the error on). Frames the control plane asks for (ARP requests, gratuitous ARP, neighbour
//! solicitations, unsolicited advertisements): pure functions over byte buffers, which the
//! worker puts in mbufs.
use std::net::IpAddr;

use super::{dsr, mac_at, raw_ip, Family, Fwd, NeighborEvent, PacketBuf, Pipeline, Verdict};
use crate::conntrack::Key;
use crate::snapshot::{Method, Snapshot};
use crate::stats::{bump, DropReason};
use crate::wire::checksum::{self, update16};
use crate::wire::parse::{Fragment, Parsed};
use crate::wire::{arp, be16, be32, ethernet, icmp, ipv6, proto, put16, put32};

impl Pipeline {
    /// An ARP packet: a request for one of our addresses is answered in place; a reply (or a
    /// gratuitous announcement) from a neighbour is learned.
    pub(super) fn arp<P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkt: &mut P,
        p: &Parsed,
    ) -> Verdict {
        let l3 = usize::from(p.l3_off);
        let d = pkt.data_mut();
        let a = match arp::Packet::new_checked(&d[l3..]) {
            Ok(a) => a,
            Err(_) => return Verdict::Drop(DropReason::Malformed),
        };
        let (op, sha, spa, tpa) = (a.op(), a.sha(), a.spa(), a.tpa());
        let mut t = [0u8; 16];
        t[..4].copy_from_slice(&tpa);
        let ours = snap.addr_kind(&t, false).is_some();
        if op == arp::OP_REQUEST && ours && spa != tpa {
            if !snap.answers_neighbors_for(&t, false) {
                return Verdict::Drop(DropReason::VipNotOwned);
            }
            // Rewrite only the MACs: the EtherType stays as received (tagged frames never get
            // here: classification drops them).
            let mac = snap.local.mac;
            d[0..6].copy_from_slice(&sha);
            d[6..12].copy_from_slice(&mac);
            arp::emit(&mut d[l3..], arp::OP_REPLY, mac, tpa, sha, spa);
            bump(&self.stats.neighbor_replies, 1);
            return Verdict::Tx;
        }
        let mut s = [0u8; 16];
        s[..4].copy_from_slice(&spa);
        if (op == arp::OP_REPLY || spa == tpa)
            && snap.addr_kind(&s, false).is_none()
            && spa != [0; 4]
        {
            return Verdict::Neighbor(NeighborEvent {
                ip: IpAddr::from(spa),
                mac: sha,
            });
        }
        Verdict::Drop(DropReason::ArpNotOurs)
    }

    /// An ICMP or ICMPv6 packet to a VIP or one of our addresses: echo requests are answered
    /// in place, errors quoting a tracked flow forwarded, the rest dropped.
    pub(super) fn icmp<F: Family, P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkt: &mut P,
        p: &Parsed,
        now_ms: u32,
    ) -> Verdict {
        if p.fragment != Fragment::No {
            return Verdict::Drop(DropReason::IcmpUnsupported);
        }
        let l3 = usize::from(p.l3_off);
        let l4 = usize::from(p.l4_off);
        if p.icmp_type == F::ECHO_REQUEST {
            let d = pkt.data_mut();
            // From our MAC, not the swapped destination: a request sent to a group address
            // (broadcast, multicast) must not be answered from it.
            let src_mac = mac_at(d, 6);
            d[0..6].copy_from_slice(&src_mac);
            d[6..12].copy_from_slice(&snap.local.mac);
            let old_word = u16::from_be_bytes([d[l4], d[l4 + 1]]);
            d[l4] = F::ECHO_REPLY;
            let new_word = u16::from_be_bytes([d[l4], d[l4 + 1]]);
            let c = update16(be16(d, l4 + 2), old_word, new_word);
            // Words that sum to +0 (all zero) verify only with 0xffff; eqn. 3 gives 0x0000
            // there. 0xffff is valid wherever 0x0000 is, so write that.
            put16(d, l4 + 2, if c == 0 { 0xffff } else { c });
            // Swapping the addresses leaves the IPv4 header checksum as it was.
            let a = l3 + F::ADDRS_OFF;
            let (src, dst) = d[a..a + 2 * F::LEN].split_at_mut(F::LEN);
            src.swap_with_slice(dst);
            F::set_hop_limit(&mut d[l3..], 64);
            bump(&self.stats.echo_replies, 1);
            return Verdict::Tx;
        }
        if !F::is_icmp_error(p.icmp_type) {
            return Verdict::Drop(DropReason::IcmpUnsupported);
        }
        self.icmp_error::<F, P>(snap, pkt, p, now_ms)
    }

    /// An ICMP error quoting a packet we (or a DSR backend) sent as VIP -> client: forward it to
    /// the flow's backend, translated back for `nat`.
    fn icmp_error<F: Family, P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkt: &mut P,
        p: &Parsed,
        now_ms: u32,
    ) -> Verdict {
        let l4 = usize::from(p.l4_off);
        let end = usize::from(p.l3_end);
        let q = l4 + icmp::HEADER_LEN;
        let d = pkt.data();
        // The quoted header: at least the IP header and the first 4 bytes of L4 (ports).
        let Some((isrc, idst, iproto, ihl)) = F::quoted(d, q, end) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        if iproto != proto::TCP && iproto != proto::UDP {
            return Verdict::Drop(DropReason::IcmpErrorNoFlow);
        }
        let isport = be16(d, q + ihl);
        let idport = be16(d, q + ihl + 2);
        // Quoted VIP:vport -> client:cport is the reverse of the client's flow.
        let Some(f) = snap.frontend_for(&isrc.to_raw(), F::V6, iproto, isport) else {
            return Verdict::Drop(DropReason::IcmpErrorNoFlow);
        };
        let h = F::hash_5tuple(snap.hash_seed, idst, isrc, idport, isport, iproto);
        let k = Key::new(idst, isrc, idport, isport, iproto);
        // Read, not refreshed: an error does not keep a flow alive (and a NAT flow's two
        // entries share one lifetime, which only the flow's own packets extend).
        let fwd = &F::tables(&self.flows).fwd;
        let Some(fv) = fwd
            .get(&k, h)
            .filter(|e| fwd.remaining_ms(e, now_ms) > 0)
            .map(|e| *e.value())
        else {
            return self.icmp_error_elsewhere(pkt);
        };
        let Some(b) = snap.backend(fv.backend) else {
            return Verdict::Drop(DropReason::IcmpErrorNoFlow);
        };
        bump(&self.stats.icmp_errors_forwarded, 1);
        if f.method != Method::Nat {
            return dsr::send::<F, P>(snap, pkt, p, f.method, b);
        }
        // nat: the backend sent backend:bport -> local:lport; show it that packet.
        let Some(mac) = b.mac else {
            return Verdict::Drop(DropReason::NextHopUnresolved);
        };
        let l = &snap.local;
        let Some(&la) = F::nat(l).get(usize::from(fv.nat_addr)) else {
            return Verdict::Drop(DropReason::NoNatAddress);
        };
        let ba = F::from_raw(&raw_ip(b.addr));
        let l3 = usize::from(p.l3_off);
        let d = pkt.data_mut();
        let alen = F::LEN;
        // The outer destination, then the quoted source and destination.
        let (aoff, ioff) = (l3 + F::ADDRS_OFF + alen, q + F::ADDRS_OFF);
        // outer destination -> backend
        d[aoff..aoff + alen].copy_from_slice(ba.bytes());
        // quoted source -> backend:bport, destination -> local:lport
        d[ioff..ioff + alen].copy_from_slice(ba.bytes());
        d[ioff + alen..ioff + 2 * alen].copy_from_slice(la.bytes());
        put16(d, q + ihl, b.port);
        put16(d, q + ihl + 2, fv.nat_port);
        // A SYN-proxied flow's segments reached the client with the offset taken off their
        // sequence numbers: the backend sent them with it (none yet during the handshake).
        let tcp_seq = q + ihl + 4;
        if fv.proxied() && fv.flags & Fwd::HANDSHAKE == 0 && tcp_seq + 4 <= end {
            put32(d, tcp_seq, be32(d, tcp_seq).wrapping_add(fv.seq));
        }
        F::fill_header_checksums(d, l3, q);
        put16(d, l4 + 2, 0);
        let c = F::icmp_checksum(d, l3, l4, end);
        put16(d, l4 + 2, c);
        d[0..6].copy_from_slice(&mac);
        d[6..12].copy_from_slice(&l.mac);
        Verdict::Tx
    }

    /// An ICMP error quoting a flow of a served frontend that this worker does not hold. RSS
    /// spreads the flow's packets by the client's addresses and ports but the error's by the
    /// router's address, so the flow may live on another worker: the error goes to the next
    /// worker, which looks in turn, until every worker has looked. The count of workers that
    /// looked travels in the frame's source MAC, which no forwarded frame keeps: the first
    /// five bytes of [`HANDED_MAC`] (a group address, which no sender uses) and the count.
    /// A forged count only ends the frame's own search early.
    #[inline(never)]
    fn icmp_error_elsewhere<P: PacketBuf>(&self, pkt: &mut P) -> Verdict {
        let d = pkt.data_mut();
        let looked = if d[6..11] == HANDED_MAC[..5] {
            d[11]
        } else {
            0
        };
        let looked = looked.saturating_add(1);
        if u16::from(looked) >= self.workers {
            return Verdict::Drop(DropReason::IcmpErrorNoFlow);
        }
        d[6..11].copy_from_slice(&HANDED_MAC[..5]);
        d[11] = looked;
        bump(&self.stats.to_other_worker, 1);
        Verdict::ToWorker((self.worker + 1) % self.workers)
    }

    /// A neighbour solicitation for one of our addresses is answered in place; an
    /// advertisement from a neighbour is learned.
    pub(super) fn ndp<P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkt: &mut P,
        p: &Parsed,
    ) -> Verdict {
        let l3 = usize::from(p.l3_off);
        let l4 = usize::from(p.l4_off);
        let end = usize::from(p.l3_end);
        let d = pkt.data();
        let Ok(m) = icmp::Message::new_checked(&d[l4..end]) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let Some(target) = m.nd_target() else {
            return Verdict::Drop(DropReason::Malformed);
        };
        if p.icmp_type == icmp::v6::NEIGHBOR_ADVERT {
            if snap.addr_kind(&target, true).is_some() {
                return Verdict::Drop(DropReason::NdpNotOurs);
            }
            let mac = m
                .nd_lladdr(icmp::v6::OPT_TARGET_LLADDR)
                .unwrap_or([d[6], d[7], d[8], d[9], d[10], d[11]]);
            return Verdict::Neighbor(NeighborEvent {
                ip: IpAddr::from(target),
                mac,
            });
        }
        // Neighbour solicitation: answer for VIPs and own addresses, not DAD probes.
        if snap.addr_kind(&target, true).is_some() && !snap.answers_neighbors_for(&target, true) {
            return Verdict::Drop(DropReason::VipNotOwned);
        }
        if snap.addr_kind(&target, true).is_none()
            || p.src == [0u8; 16]
            || l4 != l3 + ipv6::HEADER_LEN
            || end - l4 < 32
        {
            return Verdict::Drop(DropReason::NdpNotOurs);
        }
        let asker = p.src;
        let mac = snap.local.mac;
        let frame_len = d.len();
        let d = pkt.data_mut();
        let src_mac = mac_at(d, 6);
        d[0..6].copy_from_slice(&src_mac);
        d[6..12].copy_from_slice(&mac);
        ipv6::emit(&mut d[l3..], target, asker, proto::ICMPV6, 32, 255);
        icmp::emit_neighbor_advert(
            &mut d[l4..l4 + 32],
            icmp::v6::NA_SOLICITED | icmp::v6::NA_OVERRIDE,
            target,
            mac,
        );
        let ps = checksum::pseudo_v6(target, asker, proto::ICMPV6, 32);
        let c = !checksum::fold(checksum::sum(ps, &d[l4..l4 + 32]));
        put16(d, l4 + 2, c);
        let extra = frame_len - (l4 + 32);
        if extra > 0 {
            pkt.trim(extra);
        }
        bump(&self.stats.neighbor_replies, 1);
        Verdict::Tx
    }
}

/// The source MAC an ICMP error carries between workers while they look for its flow
/// (multicast and locally administered: never a sender's); the last byte counts the workers
/// that looked ([`Pipeline::icmp_error_elsewhere`]).
pub const HANDED_MAC: [u8; 6] = [0x03, b's', b'l', b'i', b'c', 0];

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

/// Turns `pkt`, a TCP segment (not a RST) of a flow this host does not know, into the RST that
/// RFC 793 prescribes for a segment of no connection, in place: addresses, ports and MACs
/// swapped (the source MAC ours), no options or payload; with the segment's ACK set, `seq = SEG.ACK`; without it,
/// `seq = 0` and `ack = SEG.SEQ + SEG.LEN` (SYN and FIN counted). Returns false (leave it
/// dropped) for a RST or a truncated segment.
pub(super) fn tcp_reset<F: Family, P: PacketBuf>(pkt: &mut P, p: &Parsed, mac: [u8; 6]) -> bool {
    use crate::wire::{put32, tcp};
    let (l3, l4, end) = (
        usize::from(p.l3_off),
        usize::from(p.l4_off),
        usize::from(p.l3_end),
    );
    let d = pkt.data();
    if end < l4 + tcp::MIN_HEADER_LEN || end > d.len() {
        return false;
    }
    let seg = tcp::Segment::new_unchecked(&d[l4..end]);
    let (sport, dport, seq, ack, flags) = (
        seg.src_port(),
        seg.dst_port(),
        seg.seq(),
        seg.ack(),
        seg.flags(),
    );
    let hl = seg.header_len();
    if flags & tcp::flags::RST != 0 || hl < tcp::MIN_HEADER_LEN || l4 + hl > end {
        return false;
    }
    let len = (end - l4 - hl) as u32
        + u32::from(flags & tcp::flags::SYN != 0)
        + u32::from(flags & tcp::flags::FIN != 0);
    let (rseq, rack, rflags) = if flags & tcp::flags::ACK != 0 {
        (ack, 0, tcp::flags::RST)
    } else {
        (0, seq.wrapping_add(len), tcp::flags::RST | tcp::flags::ACK)
    };
    let (src, dst) = (F::from_raw(&p.src), F::from_raw(&p.dst));
    let t = l3 + F::HEADER_LEN;
    let total = t + tcp::MIN_HEADER_LEN;
    let d = pkt.data_mut();
    // From our MAC `mac`, not the swapped destination (a segment sent to a group address).
    let src_mac = mac_at(d, 6);
    d[0..6].copy_from_slice(&src_mac);
    d[6..12].copy_from_slice(&mac);
    F::emit_ip(
        &mut d[l3..],
        dst,
        src,
        proto::TCP,
        tcp::MIN_HEADER_LEN as u16,
    );
    put16(d, t, dport);
    put16(d, t + 2, sport);
    put32(d, t + 4, rseq);
    put32(d, t + 8, rack);
    d[t + 12] = (tcp::MIN_HEADER_LEN as u8 / 4) << 4;
    d[t + 13] = rflags;
    put16(d, t + 14, 0);
    put16(d, t + 16, 0);
    put16(d, t + 18, 0);
    let ps = F::pseudo(dst, src, proto::TCP, tcp::MIN_HEADER_LEN as u16);
    let c = tcp::l4_checksum(ps, &d[t..total], 16);
    put16(d, t + 16, c);
    let extra = pkt.data().len() - total;
    pkt.trim(extra)
}

/// Writes a gratuitous ARP (a broadcast request with sender = target = `ip`), which updates the
/// neighbours' caches after a VIP moved to us. Returns the frame length.
pub fn gratuitous_arp(buf: &mut [u8], mac: [u8; 6], ip: [u8; 4]) -> usize {
    arp_request(buf, mac, ip, ip)
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
    nd_frame(buf, src_mac, src_ip, dst, |m| {
        icmp::emit_neighbor_solicit(m, target, src_mac)
    })
}

/// Writes an unsolicited neighbour advertisement for `ip` to all-nodes (ff02::1), the IPv6
/// counterpart of gratuitous ARP. Returns the frame length.
pub fn unsolicited_na(buf: &mut [u8], mac: [u8; 6], ip: [u8; 16]) -> usize {
    let mut dst = [0u8; 16];
    dst[0] = 0xff;
    dst[1] = 0x02;
    dst[15] = 1;
    nd_frame(buf, mac, ip, dst, |m| {
        icmp::emit_neighbor_advert(m, icmp::v6::NA_OVERRIDE, ip, mac)
    })
}

/// Writes a 32-byte neighbour discovery message (`body` writes it) from `src_mac`/`src_ip`
/// to the multicast address `dst`, with its checksum. Returns the frame length.
fn nd_frame(
    buf: &mut [u8],
    src_mac: [u8; 6],
    src_ip: [u8; 16],
    dst: [u8; 16],
    body: impl FnOnce(&mut [u8]),
) -> usize {
    ethernet::emit(
        buf,
        icmp::multicast_mac(dst),
        src_mac,
        ethernet::ethertype::IPV6,
    );
    let l3 = ethernet::HEADER_LEN;
    ipv6::emit(&mut buf[l3..], src_ip, dst, proto::ICMPV6, 32, 255);
    let l4 = l3 + ipv6::HEADER_LEN;
    body(&mut buf[l4..]);
    let c = !checksum::fold(checksum::sum(
        checksum::pseudo_v6(src_ip, dst, proto::ICMPV6, 32),
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
