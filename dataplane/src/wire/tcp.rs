//! TCP headers (RFC 9293).
use super::checksum;
use super::{be16, be32, put16, WireError};

/// Length of a TCP header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// TCP flag bits.
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// A view of a TCP segment.
#[derive(Debug, Clone, Copy)]
pub struct Segment<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Segment<T> {
    /// Validates the data offset against the buffer.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let doff = usize::from(b[12] >> 4) * 4;
        if doff < MIN_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if b.len() < doff {
            return Err(WireError::Truncated);
        }
        Ok(Segment { buf })
    }
    /// Wraps without checking.
    pub fn new_unchecked(buf: T) -> Self {
        Segment { buf }
    }
    /// Source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buf.as_ref(), 0)
    }
    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buf.as_ref(), 2)
    }
    /// Sequence number.
    pub fn seq(&self) -> u32 {
        be32(self.buf.as_ref(), 4)
    }
    /// Acknowledgement number.
    pub fn ack(&self) -> u32 {
        be32(self.buf.as_ref(), 8)
    }
    /// Header length in bytes.
    pub fn header_len(&self) -> usize {
        usize::from(self.buf.as_ref()[12] >> 4) * 4
    }
    /// Flags byte (FIN..CWR).
    pub fn flags(&self) -> u8 {
        self.buf.as_ref()[13]
    }
    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), 16)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Segment<T> {
    /// Sets the source port (checksum not touched; see [`super::checksum`]).
    pub fn set_src_port(&mut self, p: u16) {
        put16(self.buf.as_mut(), 0, p);
    }
    /// Sets the destination port.
    pub fn set_dst_port(&mut self, p: u16) {
        put16(self.buf.as_mut(), 2, p);
    }
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, c: u16) {
        put16(self.buf.as_mut(), 16, c);
    }
}

/// Computes a TCP or UDP checksum over `segment` (checksum field treated as zero) given the
/// pseudo-header sum. For UDP, a result of 0 must be sent as 0xffff (the caller's duty).
pub fn l4_checksum(pseudo: u32, segment: &[u8], csum_offset: usize) -> u16 {
    let mut acc = checksum::sum(pseudo, &segment[..csum_offset]);
    acc = checksum::sum(acc, &segment[csum_offset + 2..]);
    !checksum::fold(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let mut b = [0u8; 24];
        put16(&mut b, 0, 1234);
        put16(&mut b, 2, 80);
        b[4..8].copy_from_slice(&7u32.to_be_bytes());
        b[12] = 6 << 4;
        b[13] = flags::SYN;
        let s = Segment::new_checked(&b[..]).unwrap();
        assert_eq!(
            (s.src_port(), s.dst_port(), s.seq(), s.header_len()),
            (1234, 80, 7, 24)
        );
        assert_eq!(s.flags(), flags::SYN);
        assert_eq!(
            Segment::new_checked(&b[..22]).unwrap_err(),
            WireError::Truncated
        );
        b[12] = 4 << 4;
        assert_eq!(
            Segment::new_checked(&b[..]).unwrap_err(),
            WireError::Malformed
        );
    }
}
