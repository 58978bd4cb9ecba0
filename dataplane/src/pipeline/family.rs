//! # What differs between IPv4 and IPv6
//!
//! Everything after classification is written once, generic over a [`Family`]: the address
//! type (`[u8; 4]` or `[u8; 16]`, which also makes the flow keys, see
//! [`crate::conntrack::Addr`]) and the few places where the two IP headers differ (the
//! IPv4 header checksum, the ICMP types, the tunnel header). Each family has its own flow
//! tables ([`Tables`]); [`Flows`] holds both and hands out the family's.
use crate::conntrack::{Addr, Conntrack, ConntrackConfig, Key};
use crate::snapshot::Local;
use crate::wire::checksum;
use crate::wire::{be16, icmp, ipv4, ipv6, proto, put16};

/// Forward-flow value: which backend, and the NAT local address/port if any.
///
/// 12 bytes: with the 13-byte IPv4 key, the state and the last-seen time an IPv4 entry is 30
/// bytes and still fits its 32-byte slot (`flow_entry_sizes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fwd {
    /// Backend id.
    pub backend: u32,
    /// NAT local port (0 for DSR).
    pub nat_port: u16,
    /// Index into the NAT local addresses of the family.
    pub nat_addr: u8,
    /// [`Fwd::SYNCED`], [`Fwd::PROXIED`], [`Fwd::HANDSHAKE`]; for a proxied flow, the
    /// backend's window scale in the high four bits ([`Fwd::backend_wscale`]).
    pub flags: u8,
    /// A SYN-proxied flow's sequence offset: the backend's initial sequence number minus the
    /// cookie's (client -> backend acknowledgements gain it, backend -> client sequence
    /// numbers lose it); during the backend handshake ([`Fwd::HANDSHAKE`]) the cookie itself.
    /// 0 for other flows.
    pub seq: u32,
}

impl Fwd {
    /// A flag: the entry was installed from a peer host's flow sync and this worker has not
    /// forwarded a packet of it yet (then it becomes ours).
    pub const SYNCED: u8 = 1;
    /// A flag: the flow was opened by the SYN proxy (`pipeline/synproxy.rs`); its sequence
    /// numbers are translated ([`Fwd::seq`]).
    pub const PROXIED: u8 = 2;
    /// A flag: a proxied flow whose SYN went to the backend and whose SYN-ACK has not come
    /// back; [`Fwd::seq`] holds the cookie.
    pub const HANDSHAKE: u8 = 4;

    /// Whether the entry came from a peer and is not ours yet.
    #[inline(always)]
    pub fn synced(&self) -> bool {
        self.flags & Fwd::SYNCED != 0
    }

    /// Whether the SYN proxy opened the flow.
    #[inline(always)]
    pub fn proxied(&self) -> bool {
        self.flags & Fwd::PROXIED != 0
    }

    /// A proxied flow's backend window scale (after its handshake).
    #[inline(always)]
    pub fn backend_wscale(&self) -> u8 {
        self.flags >> 4
    }
}

/// NAT reverse value: where the reply to a NAT flow goes back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rev<A> {
    /// Client address.
    pub client: A,
    /// Client port.
    pub client_port: u16,
    /// MAC the client's packets came from (client or router), replies go there.
    pub client_mac: [u8; 6],
    /// Frontend id (gives the VIP and port to put back as the source); below
    /// [`MAX_FRONTENDS`](crate::snapshot::MAX_FRONTENDS), so 16 bits: with them an IPv4
    /// entry fits a 32-byte slot.
    pub frontend: u16,
}

impl<A> Rev<A> {
    /// The mark of a SYN-proxied flow: the group bit of `client_mac`, which no sender's
    /// address has (a full IPv4 slot has no other room). Its replies look up the forward
    /// entry for the sequence offset; the bit is cleared before the MAC is written.
    pub const PROXIED: u8 = 1;

    /// Whether the SYN proxy opened the flow.
    #[inline(always)]
    pub fn proxied(&self) -> bool {
        self.client_mac[0] & Self::PROXIED != 0
    }

    /// The MAC replies go to (without the proxy's mark).
    #[inline(always)]
    pub fn reply_mac(&self) -> [u8; 6] {
        let mut m = self.client_mac;
        m[0] &= !Self::PROXIED;
        m
    }
}

/// ClientIP affinity value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Aff {
    /// Backend id.
    pub backend: u32,
    /// When the affinity ends (ms, wrapping clock).
    pub expires_ms: u32,
}

/// One family's flow tables.
#[derive(Debug)]
pub(super) struct Tables<F: Family> {
    /// Forward flows (client -> VIP).
    pub(super) fwd: Conntrack<Key<F>, Fwd>,
    /// NAT reverse flows (backend -> local address and port).
    pub(super) rev: Conntrack<Key<F>, Rev<F>>,
    /// ClientIP affinity (client, VIP, port -> backend).
    pub(super) aff: Conntrack<Key<F>, Aff>,
}

impl<F: Family> Tables<F> {
    /// The family's tables, `flows` slots for forward and reverse flows.
    fn new(flows: &ConntrackConfig, aff: &ConntrackConfig) -> Self {
        Tables {
            fwd: Conntrack::new(flows),
            rev: Conntrack::new(flows),
            aff: Conntrack::new(aff),
        }
    }

    /// Bytes held.
    fn bytes(&self) -> usize {
        self.fwd.bytes() + self.rev.bytes() + self.aff.bytes()
    }
}

/// An address family, as a value (which of [`Flows`]' tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fam {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// The flow tables of both families.
#[derive(Debug)]
pub(super) struct Flows {
    /// IPv4.
    pub(super) v4: Tables<[u8; 4]>,
    /// IPv6.
    pub(super) v6: Tables<[u8; 16]>,
}

impl Flows {
    /// Allocates every table: `v4`/`v6` size the forward and reverse tables of each family,
    /// `aff` both affinity tables.
    pub(super) fn new(v4: &ConntrackConfig, v6: &ConntrackConfig, aff: &ConntrackConfig) -> Self {
        Flows {
            v4: Tables::new(v4, aff),
            v6: Tables::new(v6, aff),
        }
    }

    /// Bytes held by every table.
    pub(super) fn bytes(&self) -> usize {
        self.v4.bytes() + self.v6.bytes()
    }

    /// Forward flows held (both families).
    pub(super) fn len(&self) -> usize {
        self.v4.fwd.len() + self.v6.fwd.len()
    }
}

/// An IP family as the pipeline sees it: the address type and where the two IP headers
/// differ. Implemented by `[u8; 4]` (IPv4) and `[u8; 16]` (IPv6).
pub(super) trait Family: Addr {
    /// The family as a value.
    const FAM: Fam;
    /// Offset of the source address in the IP header (the destination follows it).
    const ADDRS_OFF: usize;
    /// Length of the IP header the pipeline writes (the tunnel header of `dsr-ipip`).
    const HEADER_LEN: usize;
    /// The family's ICMP protocol number.
    const ICMP: u8;
    /// The protocol number of an inner packet of this family in a tunnel (`dsr-ipip`).
    const TUNNEL: u8;
    /// ICMP echo request type.
    const ECHO_REQUEST: u8;
    /// ICMP echo reply type.
    const ECHO_REPLY: u8;
    /// Whether a zero UDP checksum means "no checksum" (IPv4) rather than a checksum of
    /// 0xffff.
    const UDP_CHECKSUM_OPTIONAL: bool;
    /// The MSS values a SYN cookie can encode, ascending (Linux's `msstab` of the family).
    const COOKIE_MSS: [u16; 4];

    /// This family's tables.
    fn tables(flows: &Flows) -> &Tables<Self>;
    /// This family's tables, to update.
    fn tables_mut(flows: &mut Flows) -> &mut Tables<Self>;
    /// Our own addresses of the family (the first is the tunnel source).
    fn own(local: &Local) -> &[Self];
    /// The NAT local addresses of the family.
    fn nat(local: &Local) -> &[Self];
    /// This host's own NAT addresses of the family (the first of [`Family::nat`]; the rest
    /// are peers', for synced flows only).
    #[inline(always)]
    fn nat_own(local: &Local) -> &[Self] {
        let all = Self::nat(local);
        &all[..all.len() - Self::nat_peers(local).min(all.len())]
    }
    /// How many of [`Family::nat`]'s last addresses are peers'.
    fn nat_peers(local: &Local) -> usize;
    /// Whether ICMP type `t` is an error that quotes a packet (forwarded to the flow's
    /// backend).
    fn is_icmp_error(t: u8) -> bool;
    /// Whether ICMP type `t` is neighbour discovery (IPv6 only).
    fn is_neighbor_discovery(t: u8) -> bool;
    /// Applies an address change (`delta`, RFC 1624) to the header checksum, if the family
    /// has one.
    fn update_header_checksum(ip: &mut [u8], delta: u64);
    /// Sets the TTL or hop limit, keeping the header checksum right.
    fn set_hop_limit(ip: &mut [u8], ttl: u8);
    /// Writes a fixed header (no options) from `src` to `dst` carrying `payload_len` bytes of
    /// `proto` (for `dsr-ipip`, [`Family::TUNNEL`] and an inner packet), hop limit 64.
    fn emit_ip(ip: &mut [u8], src: Self, dst: Self, proto: u8, payload_len: u16);
    /// The pseudo-header sum of a transport checksum.
    fn pseudo(src: Self, dst: Self, proto: u8, len: u16) -> u32;
    /// The header an ICMP error at `q` quotes (up to `end`): source, destination, protocol and
    /// header length; `None` if it is too short to hold the header and the ports.
    fn quoted(d: &[u8], q: usize, end: usize) -> Option<(Self, Self, u8, usize)>;
    /// Recomputes the checksums a rewritten ICMP error needs besides the ICMP one (the outer
    /// and the quoted IPv4 header).
    fn fill_header_checksums(d: &mut [u8], l3: usize, q: usize);
    /// The ICMP checksum of the message at `l4..end` of the packet whose IP header is at `l3`
    /// (with the pseudo-header for ICMPv6), its checksum field zero.
    fn icmp_checksum(d: &[u8], l3: usize, l4: usize, end: usize) -> u16;
}

impl Family for [u8; 4] {
    const FAM: Fam = Fam::V4;
    const ADDRS_OFF: usize = 12;
    const HEADER_LEN: usize = ipv4::MIN_HEADER_LEN;
    const ICMP: u8 = proto::ICMP;
    const TUNNEL: u8 = proto::IPIP;
    const ECHO_REQUEST: u8 = icmp::v4::ECHO_REQUEST;
    const ECHO_REPLY: u8 = icmp::v4::ECHO_REPLY;
    const UDP_CHECKSUM_OPTIONAL: bool = true;
    const COOKIE_MSS: [u16; 4] = [536, 1300, 1440, 1460];

    #[inline(always)]
    fn tables(flows: &Flows) -> &Tables<Self> {
        &flows.v4
    }
    #[inline(always)]
    fn tables_mut(flows: &mut Flows) -> &mut Tables<Self> {
        &mut flows.v4
    }
    #[inline(always)]
    fn own(local: &Local) -> &[Self] {
        &local.ipv4
    }
    #[inline(always)]
    fn nat(local: &Local) -> &[Self] {
        &local.nat_ipv4
    }
    #[inline(always)]
    fn nat_peers(local: &Local) -> usize {
        local.nat_ipv4_peers
    }
    fn is_icmp_error(t: u8) -> bool {
        matches!(t, icmp::v4::DEST_UNREACH | icmp::v4::TIME_EXCEEDED)
    }
    #[inline(always)]
    fn is_neighbor_discovery(_: u8) -> bool {
        false
    }
    #[inline(always)]
    fn update_header_checksum(ip: &mut [u8], delta: u64) {
        let c = be16(ip, 10);
        put16(ip, 10, checksum::apply(c, delta));
    }
    fn set_hop_limit(ip: &mut [u8], ttl: u8) {
        ipv4::Packet::new_unchecked(ip).set_ttl(ttl);
    }
    fn emit_ip(ip: &mut [u8], src: Self, dst: Self, proto: u8, payload_len: u16) {
        ipv4::emit(ip, src, dst, proto, payload_len, 64, 0);
    }
    fn pseudo(src: Self, dst: Self, proto: u8, len: u16) -> u32 {
        checksum::pseudo_v4(src, dst, proto, len)
    }
    fn quoted(d: &[u8], q: usize, end: usize) -> Option<(Self, Self, u8, usize)> {
        if end < q + ipv4::MIN_HEADER_LEN + 4 {
            return None;
        }
        let ihl = usize::from(d[q] & 0x0f) * 4;
        if ihl < ipv4::MIN_HEADER_LEN || end < q + ihl + 4 {
            return None;
        }
        let ip = ipv4::Packet::new_unchecked(&d[q..end]);
        Some((ip.src(), ip.dst(), ip.protocol(), ihl))
    }
    fn fill_header_checksums(d: &mut [u8], l3: usize, q: usize) {
        ipv4::Packet::new_unchecked(&mut d[q..]).fill_checksum();
        ipv4::Packet::new_unchecked(&mut d[l3..]).fill_checksum();
    }
    fn icmp_checksum(d: &[u8], _l3: usize, l4: usize, end: usize) -> u16 {
        checksum::checksum(&d[l4..end])
    }
}

impl Family for [u8; 16] {
    const FAM: Fam = Fam::V6;
    const ADDRS_OFF: usize = 8;
    const HEADER_LEN: usize = ipv6::HEADER_LEN;
    const ICMP: u8 = proto::ICMPV6;
    const TUNNEL: u8 = proto::IPV6;
    const ECHO_REQUEST: u8 = icmp::v6::ECHO_REQUEST;
    const ECHO_REPLY: u8 = icmp::v6::ECHO_REPLY;
    const UDP_CHECKSUM_OPTIONAL: bool = false;
    const COOKIE_MSS: [u16; 4] = [1220, 1420, 1440, 8940];

    #[inline(always)]
    fn tables(flows: &Flows) -> &Tables<Self> {
        &flows.v6
    }
    #[inline(always)]
    fn tables_mut(flows: &mut Flows) -> &mut Tables<Self> {
        &mut flows.v6
    }
    #[inline(always)]
    fn own(local: &Local) -> &[Self] {
        &local.ipv6
    }
    #[inline(always)]
    fn nat(local: &Local) -> &[Self] {
        &local.nat_ipv6
    }
    #[inline(always)]
    fn nat_peers(local: &Local) -> usize {
        local.nat_ipv6_peers
    }
    fn is_icmp_error(t: u8) -> bool {
        matches!(
            t,
            icmp::v6::DEST_UNREACH | icmp::v6::PACKET_TOO_BIG | icmp::v6::TIME_EXCEEDED
        )
    }
    #[inline(always)]
    fn is_neighbor_discovery(t: u8) -> bool {
        matches!(t, icmp::v6::NEIGHBOR_SOLICIT | icmp::v6::NEIGHBOR_ADVERT)
    }
    #[inline(always)]
    fn update_header_checksum(_: &mut [u8], _: u64) {}
    fn set_hop_limit(ip: &mut [u8], hop: u8) {
        ipv6::Packet::new_unchecked(ip).set_hop_limit(hop);
    }
    fn emit_ip(ip: &mut [u8], src: Self, dst: Self, proto: u8, payload_len: u16) {
        ipv6::emit(ip, src, dst, proto, payload_len, 64);
    }
    fn pseudo(src: Self, dst: Self, proto: u8, len: u16) -> u32 {
        checksum::pseudo_v6(src, dst, proto, u32::from(len))
    }
    fn quoted(d: &[u8], q: usize, end: usize) -> Option<(Self, Self, u8, usize)> {
        if end < q + ipv6::HEADER_LEN + 4 {
            return None;
        }
        let ip = ipv6::Packet::new_unchecked(&d[q..end]);
        Some((ip.src(), ip.dst(), ip.next_header(), ipv6::HEADER_LEN))
    }
    fn fill_header_checksums(_: &mut [u8], _: usize, _: usize) {}
    fn icmp_checksum(d: &[u8], l3: usize, l4: usize, end: usize) -> u16 {
        let ip = ipv6::Packet::new_unchecked(&d[l3..]);
        let ps = checksum::pseudo_v6(ip.src(), ip.dst(), proto::ICMPV6, (end - l4) as u32);
        !checksum::fold(checksum::sum(ps, &d[l4..end]))
    }
}
