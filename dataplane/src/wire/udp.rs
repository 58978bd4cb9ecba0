//! UDP headers (RFC 768).
use super::{be16, put16, WireError};

/// Where each field of the UDP header is.
pub(crate) mod field {
    /// Source port, 16 bits.
    pub const SRC_PORT: usize = 0;
    /// Destination port, 16 bits.
    pub const DST_PORT: usize = 2;
    /// Length (header + payload), 16 bits.
    pub const LENGTH: usize = 4;
    /// Checksum, 16 bits.
    pub const CHECKSUM: usize = 6;
}

/// Length of a UDP header.
pub const HEADER_LEN: usize = field::CHECKSUM + 2;

/// A view of a UDP datagram.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Datagram<T> {
    /// Validates the length field against the buffer.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let len = usize::from(be16(b, field::LENGTH));
        if len < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if b.len() < len {
            return Err(WireError::Truncated);
        }
        Ok(Datagram { buf })
    }
    /// Wraps without checking.
    pub fn new_unchecked(buf: T) -> Self {
        Datagram { buf }
    }
    /// Source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buf.as_ref(), field::SRC_PORT)
    }
    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buf.as_ref(), field::DST_PORT)
    }
    /// Length (header + payload).
    pub fn len(&self) -> u16 {
        be16(self.buf.as_ref(), field::LENGTH)
    }
    /// True when the length field says there is no payload.
    pub fn is_empty(&self) -> bool {
        self.len() as usize == HEADER_LEN
    }
    /// Checksum field (0 = none, IPv4 only).
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), field::CHECKSUM)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Datagram<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, p: u16) {
        put16(self.buf.as_mut(), field::SRC_PORT, p);
    }
    /// Sets the destination port.
    pub fn set_dst_port(&mut self, p: u16) {
        put16(self.buf.as_mut(), field::DST_PORT, p);
    }
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, c: u16) {
        put16(self.buf.as_mut(), field::CHECKSUM, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 12345 -> 53, length 10, checksum 0xbeef, two bytes of payload.
    const DATAGRAM: [u8; 10] = [0x30, 0x39, 0x00, 0x35, 0x00, 0x0a, 0xbe, 0xef, 1, 2];

    #[test]
    fn parse_bytes() {
        let d = Datagram::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!((d.src_port(), d.dst_port(), d.len()), (12345, 53, 10));
        assert_eq!(d.checksum(), 0xbeef);
        assert!(!d.is_empty());
        assert_eq!(
            Datagram::new_checked(&DATAGRAM[..9]).unwrap_err(),
            WireError::Truncated
        );
        let mut c = DATAGRAM;
        c[5] = 4;
        assert_eq!(
            Datagram::new_checked(&c[..]).unwrap_err(),
            WireError::Malformed
        );
        c[5] = 8;
        assert!(Datagram::new_checked(&c[..]).unwrap().is_empty());
    }

    /// There is no UDP emitter: the setters write their fields and nothing else.
    #[test]
    fn emit_bytes() {
        let mut b = [0xa5u8; 10];
        let mut d = Datagram::new_unchecked(&mut b[..]);
        d.set_src_port(12345);
        d.set_dst_port(53);
        d.set_checksum(0xbeef);
        let mut want = [0xa5u8; 10];
        want[0..4].copy_from_slice(&DATAGRAM[0..4]);
        want[6..8].copy_from_slice(&DATAGRAM[6..8]);
        assert_eq!(b, want);
    }
}
