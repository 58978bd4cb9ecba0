//! ICMPv4 (RFC 792) and ICMPv6 (RFC 4443) messages, and NDP (RFC 4861) solicitations and
//! advertisements. Both versions share the 4-byte type/code/checksum header.
use super::{be16, put16, WireError};

/// Where each field of an ICMP or ICMPv6 message is.
pub(crate) mod field {
    use crate::wire::{Field, Rest};

    /// Message type.
    pub const TYPE: usize = 0;
    /// Code.
    pub const CODE: usize = 1;
    /// Checksum, 16 bits.
    pub const CHECKSUM: usize = 2;
    /// The type-specific "rest of header" (reserved in a neighbour solicitation).
    pub const REST_OF_HEADER: Field = 4..8;
    /// Echo request/reply: identifier, 16 bits.
    pub const ECHO_IDENT: usize = 4;
    /// Echo request/reply: sequence number, 16 bits.
    pub const ECHO_SEQ: usize = 6;
    /// ICMPv4 "fragmentation needed": next-hop MTU, 16 bits.
    pub const MTU_V4: usize = 6;
    /// ICMPv6 "packet too big": MTU, 32 bits.
    pub const MTU_V6: usize = 4;
    /// Error messages: the quoted (invoking) packet.
    pub const QUOTED: Rest = 8..;
    /// Neighbour advertisement: flags (router, solicited, override).
    pub const NA_FLAGS: usize = 4;
    /// Neighbour advertisement: reserved after the flags.
    pub const NA_RESERVED: Field = 5..8;
    /// Neighbour solicitation/advertisement: target address.
    pub const ND_TARGET: Field = 8..24;
    /// Neighbour solicitation/advertisement: options.
    pub const ND_OPTIONS: Rest = 24..;
}

/// Where each field of an NDP option is, from its start.
pub(crate) mod nd_opt_field {
    use crate::wire::Field;

    /// Option type.
    pub const TYPE: usize = 0;
    /// Length in 8-byte units, the type and length bytes included.
    pub const LENGTH: usize = 1;
    /// Source/target link-layer address: the Ethernet MAC.
    pub const LLADDR: Field = 2..8;
}

/// Length of the common ICMP header plus the 4-byte "rest of header".
pub const HEADER_LEN: usize = field::REST_OF_HEADER.end;

/// ICMPv4 types.
pub mod v4 {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable (code 4: fragmentation needed).
    pub const DEST_UNREACH: u8 = 3;
    /// Code of "fragmentation needed and DF set".
    pub const FRAG_NEEDED: u8 = 4;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
}

/// ICMPv6 types.
pub mod v6 {
    /// Destination unreachable.
    pub const DEST_UNREACH: u8 = 1;
    /// Packet too big.
    pub const PACKET_TOO_BIG: u8 = 2;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 3;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 128;
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 129;
    /// Neighbour solicitation.
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    /// Neighbour advertisement.
    pub const NEIGHBOR_ADVERT: u8 = 136;
    /// NDP option: source link-layer address.
    pub const OPT_SOURCE_LLADDR: u8 = 1;
    /// NDP option: target link-layer address.
    pub const OPT_TARGET_LLADDR: u8 = 2;
    /// NA flag: router.
    pub const NA_ROUTER: u8 = 0x80;
    /// NA flag: solicited.
    pub const NA_SOLICITED: u8 = 0x40;
    /// NA flag: override.
    pub const NA_OVERRIDE: u8 = 0x20;
}

/// A view of an ICMP or ICMPv6 message.
#[derive(Debug, Clone, Copy)]
pub struct Message<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Message<T> {
    /// Wraps a buffer of at least [`HEADER_LEN`] bytes.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        if buf.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Message { buf })
    }
    /// Message type.
    pub fn msg_type(&self) -> u8 {
        self.buf.as_ref()[field::TYPE]
    }
    /// Code.
    pub fn code(&self) -> u8 {
        self.buf.as_ref()[field::CODE]
    }
    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), field::CHECKSUM)
    }
    /// Echo identifier.
    pub fn echo_ident(&self) -> u16 {
        be16(self.buf.as_ref(), field::ECHO_IDENT)
    }
    /// Echo sequence number.
    pub fn echo_seq(&self) -> u16 {
        be16(self.buf.as_ref(), field::ECHO_SEQ)
    }
    /// MTU of "fragmentation needed" (v4, bytes 6..8) — v6 "packet too big" uses [`Self::mtu_v6`].
    pub fn mtu_v4(&self) -> u16 {
        be16(self.buf.as_ref(), field::MTU_V4)
    }
    /// MTU of "packet too big" (v6, bytes 4..8).
    pub fn mtu_v6(&self) -> u32 {
        super::be32(self.buf.as_ref(), field::MTU_V6)
    }
    /// For error messages: the quoted (invoking) packet after the 8-byte header.
    pub fn quoted(&self) -> &[u8] {
        &self.buf.as_ref()[field::QUOTED]
    }
    /// For NS/NA: the target address (bytes 8..24), if present.
    pub fn nd_target(&self) -> Option<[u8; 16]> {
        self.buf
            .as_ref()
            .get(field::ND_TARGET)
            .and_then(|s| s.try_into().ok())
    }
    /// For NS/NA: the link-layer address in the option of `kind` (source or target), if any.
    pub fn nd_lladdr(&self, kind: u8) -> Option<[u8; 6]> {
        let b = self.buf.as_ref();
        let mut off = field::ND_OPTIONS.start;
        while off + nd_opt_field::LENGTH < b.len() {
            let len = usize::from(b[off + nd_opt_field::LENGTH]) * 8;
            if len == 0 || off + len > b.len() {
                return None;
            }
            if b[off + nd_opt_field::TYPE] == kind && len >= nd_opt_field::LLADDR.end {
                let mac = nd_opt_field::LLADDR;
                return b[off + mac.start..off + mac.end].try_into().ok();
            }
            off += len;
        }
        None
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Message<T> {
    /// Sets the type.
    pub fn set_msg_type(&mut self, t: u8) {
        self.buf.as_mut()[field::TYPE] = t;
    }
    /// Sets the code.
    pub fn set_code(&mut self, c: u8) {
        self.buf.as_mut()[field::CODE] = c;
    }
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, c: u16) {
        put16(self.buf.as_mut(), field::CHECKSUM, c);
    }
}

/// Writes a neighbour advertisement for `target` with a target link-layer address option
/// (32 bytes) into `buf`, checksum zero (fill it with the IPv6 pseudo-header).
pub fn emit_neighbor_advert(buf: &mut [u8], flags: u8, target: [u8; 16], mac: [u8; 6]) {
    buf[field::TYPE] = v6::NEIGHBOR_ADVERT;
    buf[field::CODE] = 0;
    put16(buf, field::CHECKSUM, 0);
    buf[field::NA_FLAGS] = flags;
    buf[field::NA_RESERVED].fill(0);
    buf[field::ND_TARGET].copy_from_slice(&target);
    emit_lladdr_option(&mut buf[field::ND_OPTIONS], v6::OPT_TARGET_LLADDR, mac);
}

/// Writes a neighbour solicitation for `target` with a source link-layer address option
/// (32 bytes), checksum zero.
pub fn emit_neighbor_solicit(buf: &mut [u8], target: [u8; 16], mac: [u8; 6]) {
    buf[field::TYPE] = v6::NEIGHBOR_SOLICIT;
    buf[field::CODE] = 0;
    put16(buf, field::CHECKSUM, 0);
    buf[field::REST_OF_HEADER].fill(0);
    buf[field::ND_TARGET].copy_from_slice(&target);
    emit_lladdr_option(&mut buf[field::ND_OPTIONS], v6::OPT_SOURCE_LLADDR, mac);
}

/// Writes an 8-byte link-layer address option of `kind` at the start of `opt`.
fn emit_lladdr_option(opt: &mut [u8], kind: u8, mac: [u8; 6]) {
    opt[nd_opt_field::TYPE] = kind;
    opt[nd_opt_field::LENGTH] = (nd_opt_field::LLADDR.end / 8) as u8;
    opt[nd_opt_field::LLADDR].copy_from_slice(&mac);
}

/// The solicited-node multicast address of `addr` (ff02::1:ffXX:XXXX).
pub fn solicited_node(addr: [u8; 16]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xff;
    a[1] = 0x02;
    a[11] = 0x01;
    a[12] = 0xff;
    a[13..16].copy_from_slice(&addr[13..16]);
    a
}

/// The Ethernet multicast MAC of an IPv6 multicast address (33:33:xx:xx:xx:xx).
pub fn multicast_mac(addr: [u8; 16]) -> [u8; 6] {
    [0x33, 0x33, addr[12], addr[13], addr[14], addr[15]]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A solicited neighbour advertisement for 0707::0707 at 01:02:03:04:05:06.
    const ADVERT: [u8; 32] = [
        136, 0, 0, 0, 0x40, 0, 0, 0, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 2, 1, 1, 2, 3,
        4, 5, 6,
    ];
    /// A neighbour solicitation for 0707::0707 from 01:02:03:04:05:06.
    const SOLICIT: [u8; 32] = [
        135, 0, 0, 0, 0, 0, 0, 0, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 1, 1, 1, 2, 3, 4,
        5, 6,
    ];
    /// An ICMPv4 echo request, identifier 0x1234, sequence 5, checksum 0xbeef, payload "hi".
    const ECHO: [u8; 10] = [8, 0, 0xbe, 0xef, 0x12, 0x34, 0x00, 0x05, b'h', b'i'];

    #[test]
    fn parse_bytes() {
        let m = Message::new_checked(&ECHO[..]).unwrap();
        assert_eq!(
            (m.msg_type(), m.code(), m.checksum()),
            (v4::ECHO_REQUEST, 0, 0xbeef)
        );
        assert_eq!((m.echo_ident(), m.echo_seq()), (0x1234, 5));
        assert_eq!((m.mtu_v4(), m.mtu_v6()), (5, 0x1234_0005));
        assert_eq!(m.quoted(), b"hi");
        assert_eq!(
            Message::new_checked(&ECHO[..7]).unwrap_err(),
            WireError::Truncated
        );
        let m = Message::new_checked(&SOLICIT[..]).unwrap();
        assert_eq!(m.msg_type(), v6::NEIGHBOR_SOLICIT);
        assert_eq!(m.nd_target(), Some([7; 16]));
        assert_eq!(m.nd_lladdr(v6::OPT_SOURCE_LLADDR), Some([1, 2, 3, 4, 5, 6]));
        assert_eq!(
            Message::new_checked(&SOLICIT[..20]).unwrap().nd_target(),
            None
        );
    }

    #[test]
    fn emit_bytes() {
        let mut b = [0xa5u8; 32];
        emit_neighbor_advert(&mut b, v6::NA_SOLICITED, [7; 16], [1, 2, 3, 4, 5, 6]);
        assert_eq!(b, ADVERT);
        let mut b = [0xa5u8; 32];
        emit_neighbor_solicit(&mut b, [7; 16], [1, 2, 3, 4, 5, 6]);
        assert_eq!(b, SOLICIT);
        let mut b = [0xa5u8; 10];
        let mut m = Message::new_checked(&mut b[..]).unwrap();
        m.set_msg_type(v4::ECHO_REQUEST);
        m.set_code(0);
        m.set_checksum(0xbeef);
        let mut want = [0xa5u8; 10];
        want[..4].copy_from_slice(&ECHO[..4]);
        assert_eq!(b, want);
    }

    #[test]
    fn ndp_roundtrip() {
        let mut b = [0xa5u8; 32];
        emit_neighbor_advert(&mut b, v6::NA_SOLICITED, [7; 16], [1, 2, 3, 4, 5, 6]);
        let m = Message::new_checked(&b[..]).unwrap();
        assert_eq!(m.msg_type(), v6::NEIGHBOR_ADVERT);
        assert_eq!(m.nd_target(), Some([7; 16]));
        assert_eq!(m.nd_lladdr(v6::OPT_TARGET_LLADDR), Some([1, 2, 3, 4, 5, 6]));
        assert_eq!(m.nd_lladdr(v6::OPT_SOURCE_LLADDR), None);
        let mut bad = b;
        bad[25] = 0; // zero-length option must not loop
        assert_eq!(Message::new_checked(&bad[..]).unwrap().nd_lladdr(1), None);
        let s = solicited_node([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xab, 0xcd, 0xef]);
        assert_eq!(&s[..2], &[0xff, 0x02]);
        assert_eq!(multicast_mac(s), [0x33, 0x33, 0xff, 0xab, 0xcd, 0xef]);
    }
}
