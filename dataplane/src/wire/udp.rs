//! UDP headers (RFC 768).
use super::{be16, put16, WireError};

/// Length of a UDP header.
pub const HEADER_LEN: usize = 8;

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
        let len = usize::from(be16(b, 4));
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
        be16(self.buf.as_ref(), 0)
    }
    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buf.as_ref(), 2)
    }
    /// Length (header + payload).
    pub fn len(&self) -> u16 {
        be16(self.buf.as_ref(), 4)
    }
    /// True when the length field says there is no payload.
    pub fn is_empty(&self) -> bool {
        self.len() as usize == HEADER_LEN
    }
    /// Checksum field (0 = none, IPv4 only).
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), 6)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Datagram<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, p: u16) {
        put16(self.buf.as_mut(), 0, p);
    }
    /// Sets the destination port.
    pub fn set_dst_port(&mut self, p: u16) {
        put16(self.buf.as_mut(), 2, p);
    }
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, c: u16) {
        put16(self.buf.as_mut(), 6, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let b = [0x30, 0x39, 0x00, 0x35, 0x00, 0x0a, 0x00, 0x00, 1, 2];
        let d = Datagram::new_checked(&b[..]).unwrap();
        assert_eq!((d.src_port(), d.dst_port(), d.len()), (12345, 53, 10));
        assert_eq!(
            Datagram::new_checked(&b[..9]).unwrap_err(),
            WireError::Truncated
        );
        let mut c = b;
        c[5] = 4;
        assert_eq!(
            Datagram::new_checked(&c[..]).unwrap_err(),
            WireError::Malformed
        );
    }
}
