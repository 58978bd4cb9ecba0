//! ICMPv4 (RFC 792) and ICMPv6 (RFC 4443) messages, and NDP (RFC 4861) solicitations and
//! advertisements. Both versions share the 4-byte type/code/checksum header.
use super::{be16, put16, WireError};

/// Length of the common ICMP header plus the 4-byte "rest of header".
pub const HEADER_LEN: usize = 8;

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
        self.buf.as_ref()[0]
    }
    /// Code.
    pub fn code(&self) -> u8 {
        self.buf.as_ref()[1]
    }
    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), 2)
    }
    /// Echo identifier.
    pub fn echo_ident(&self) -> u16 {
        be16(self.buf.as_ref(), 4)
    }
    /// Echo sequence number.
    pub fn echo_seq(&self) -> u16 {
        be16(self.buf.as_ref(), 6)
    }
    /// MTU of "fragmentation needed" (v4, bytes 6..8) — v6 "packet too big" uses [`Self::mtu_v6`].
    pub fn mtu_v4(&self) -> u16 {
        be16(self.buf.as_ref(), 6)
    }
    /// MTU of "packet too big" (v6, bytes 4..8).
    pub fn mtu_v6(&self) -> u32 {
        super::be32(self.buf.as_ref(), 4)
    }
    /// For error messages: the quoted (invoking) packet after the 8-byte header.
    pub fn quoted(&self) -> &[u8] {
        &self.buf.as_ref()[HEADER_LEN..]
    }
    /// For NS/NA: the target address (bytes 8..24), if present.
    pub fn nd_target(&self) -> Option<[u8; 16]> {
        self.buf.as_ref().get(8..24).and_then(|s| s.try_into().ok())
    }
    /// For NS/NA: the link-layer address in the option of `kind` (source or target), if any.
    pub fn nd_lladdr(&self, kind: u8) -> Option<[u8; 6]> {
        let b = self.buf.as_ref();
        let mut off = 24;
        while off + 2 <= b.len() {
            let len = usize::from(b[off + 1]) * 8;
            if len == 0 || off + len > b.len() {
                return None;
            }
            if b[off] == kind && len >= 8 {
                return b[off + 2..off + 8].try_into().ok();
            }
            off += len;
        }
        None
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Message<T> {
    /// Sets the type.
    pub fn set_msg_type(&mut self, t: u8) {
        self.buf.as_mut()[0] = t;
    }
    /// Sets the code.
    pub fn set_code(&mut self, c: u8) {
        self.buf.as_mut()[1] = c;
    }
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, c: u16) {
        put16(self.buf.as_mut(), 2, c);
    }
}

/// Writes a neighbour advertisement for `target` with a target link-layer address option
/// (32 bytes) into `buf`, checksum zero (fill it with the IPv6 pseudo-header).
pub fn emit_neighbor_advert(buf: &mut [u8], flags: u8, target: [u8; 16], mac: [u8; 6]) {
    buf[0] = v6::NEIGHBOR_ADVERT;
    buf[1] = 0;
    put16(buf, 2, 0);
    buf[4] = flags;
    buf[5..8].fill(0);
    buf[8..24].copy_from_slice(&target);
    buf[24] = v6::OPT_TARGET_LLADDR;
    buf[25] = 1;
    buf[26..32].copy_from_slice(&mac);
}

/// Writes a neighbour solicitation for `target` with a source link-layer address option
/// (32 bytes), checksum zero.
pub fn emit_neighbor_solicit(buf: &mut [u8], target: [u8; 16], mac: [u8; 6]) {
    buf[0] = v6::NEIGHBOR_SOLICIT;
    buf[1] = 0;
    put16(buf, 2, 0);
    buf[4..8].fill(0);
    buf[8..24].copy_from_slice(&target);
    buf[24] = v6::OPT_SOURCE_LLADDR;
    buf[25] = 1;
    buf[26..32].copy_from_slice(&mac);
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
