//! ARP for IPv4 over Ethernet (RFC 826).
use super::{be16, put16, WireError};

/// Where each field of an Ethernet/IPv4 ARP packet is.
pub(crate) mod field {
    use crate::wire::Field;

    /// Hardware type, 16 bits (1: Ethernet).
    pub const HTYPE: usize = 0;
    /// Protocol type, 16 bits (0x0800: IPv4).
    pub const PTYPE: usize = 2;
    /// Hardware address length (6).
    pub const HLEN: usize = 4;
    /// Protocol address length (4).
    pub const PLEN: usize = 5;
    /// Operation, 16 bits.
    pub const OPER: usize = 6;
    /// Sender hardware address.
    pub const SHA: Field = 8..14;
    /// Sender protocol address.
    pub const SPA: Field = 14..18;
    /// Target hardware address.
    pub const THA: Field = 18..24;
    /// Target protocol address.
    pub const TPA: Field = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const LEN: usize = field::TPA.end;
/// ARP request.
pub const OP_REQUEST: u16 = 1;
/// ARP reply.
pub const OP_REPLY: u16 = 2;

/// A view of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer holding an Ethernet/IPv4 ARP packet (htype 1, ptype 0x0800, 6/4).
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < LEN {
            return Err(WireError::Truncated);
        }
        if be16(b, field::HTYPE) != 1
            || be16(b, field::PTYPE) != 0x0800
            || b[field::HLEN] != 6
            || b[field::PLEN] != 4
        {
            return Err(WireError::Malformed);
        }
        Ok(Packet { buf })
    }
    /// Operation.
    pub fn op(&self) -> u16 {
        be16(self.buf.as_ref(), field::OPER)
    }
    /// Sender hardware address.
    pub fn sha(&self) -> [u8; 6] {
        self.buf.as_ref()[field::SHA].try_into().unwrap_or_default()
    }
    /// Sender protocol address.
    pub fn spa(&self) -> [u8; 4] {
        self.buf.as_ref()[field::SPA].try_into().unwrap_or_default()
    }
    /// Target hardware address.
    pub fn tha(&self) -> [u8; 6] {
        self.buf.as_ref()[field::THA].try_into().unwrap_or_default()
    }
    /// Target protocol address.
    pub fn tpa(&self) -> [u8; 4] {
        self.buf.as_ref()[field::TPA].try_into().unwrap_or_default()
    }
}

/// Writes an Ethernet/IPv4 ARP packet into the first [`LEN`] bytes of `buf`.
pub fn emit(buf: &mut [u8], op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) {
    put16(buf, field::HTYPE, 1);
    put16(buf, field::PTYPE, 0x0800);
    buf[field::HLEN] = 6;
    buf[field::PLEN] = 4;
    put16(buf, field::OPER, op);
    buf[field::SHA].copy_from_slice(&sha);
    buf[field::SPA].copy_from_slice(&spa);
    buf[field::THA].copy_from_slice(&tha);
    buf[field::TPA].copy_from_slice(&tpa);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Who has 10.0.0.2? Tell 10.0.0.1 (at 01:01:01:01:01:01).
    const REQUEST: [u8; LEN] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x0a,
        0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x02,
    ];

    #[test]
    fn parse_bytes() {
        let p = Packet::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(p.op(), OP_REQUEST);
        assert_eq!(p.sha(), [1; 6]);
        assert_eq!(p.spa(), [10, 0, 0, 1]);
        assert_eq!(p.tha(), [0; 6]);
        assert_eq!(p.tpa(), [10, 0, 0, 2]);
        let mut b = REQUEST;
        b[5] = 16;
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            WireError::Malformed
        );
        assert_eq!(
            Packet::new_checked(&REQUEST[..20]).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn emit_bytes() {
        let mut b = [0xa5u8; LEN];
        emit(
            &mut b,
            OP_REQUEST,
            [1; 6],
            [10, 0, 0, 1],
            [0; 6],
            [10, 0, 0, 2],
        );
        assert_eq!(b, REQUEST);
    }
}
