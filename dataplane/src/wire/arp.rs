//! ARP for IPv4 over Ethernet (RFC 826).
use super::{be16, put16, WireError};

/// Length of an Ethernet/IPv4 ARP packet.
pub const LEN: usize = 28;
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
        if be16(b, 0) != 1 || be16(b, 2) != 0x0800 || b[4] != 6 || b[5] != 4 {
            return Err(WireError::Malformed);
        }
        Ok(Packet { buf })
    }
    /// Operation.
    pub fn op(&self) -> u16 {
        be16(self.buf.as_ref(), 6)
    }
    /// Sender hardware address.
    pub fn sha(&self) -> [u8; 6] {
        self.buf.as_ref()[8..14].try_into().unwrap_or_default()
    }
    /// Sender protocol address.
    pub fn spa(&self) -> [u8; 4] {
        self.buf.as_ref()[14..18].try_into().unwrap_or_default()
    }
    /// Target hardware address.
    pub fn tha(&self) -> [u8; 6] {
        self.buf.as_ref()[18..24].try_into().unwrap_or_default()
    }
    /// Target protocol address.
    pub fn tpa(&self) -> [u8; 4] {
        self.buf.as_ref()[24..28].try_into().unwrap_or_default()
    }
}

/// Writes an Ethernet/IPv4 ARP packet into the first [`LEN`] bytes of `buf`.
pub fn emit(buf: &mut [u8], op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) {
    put16(buf, 0, 1);
    put16(buf, 2, 0x0800);
    buf[4] = 6;
    buf[5] = 4;
    put16(buf, 6, op);
    buf[8..14].copy_from_slice(&sha);
    buf[14..18].copy_from_slice(&spa);
    buf[18..24].copy_from_slice(&tha);
    buf[24..28].copy_from_slice(&tpa);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut b = [0xa5u8; LEN];
        emit(
            &mut b,
            OP_REQUEST,
            [1; 6],
            [10, 0, 0, 1],
            [0; 6],
            [10, 0, 0, 2],
        );
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.op(), OP_REQUEST);
        assert_eq!(p.sha(), [1; 6]);
        assert_eq!(p.spa(), [10, 0, 0, 1]);
        assert_eq!(p.tha(), [0; 6]);
        assert_eq!(p.tpa(), [10, 0, 0, 2]);
        b[5] = 16;
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            WireError::Malformed
        );
        assert_eq!(
            Packet::new_checked(&b[..20]).unwrap_err(),
            WireError::Truncated
        );
    }
}
