//! IPv4 headers (RFC 791), options included.
use super::checksum;
use super::{be16, put16, WireError};

/// Where each field of the IPv4 header is.
pub(crate) mod field {
    use crate::wire::Field;

    /// Version (high nibble) and IHL (low nibble, in 32-bit words).
    pub const VER_IHL: usize = 0;
    /// DSCP and ECN.
    pub const DSCP_ECN: usize = 1;
    /// Total length, 16 bits.
    pub const LENGTH: usize = 2;
    /// Identification, 16 bits.
    pub const IDENT: usize = 4;
    /// Flags (top 3 bits) and fragment offset (13 bits, in 8-byte units), 16 bits.
    pub const FLG_OFF: usize = 6;
    /// Time to live (the high byte of the TTL/protocol checksum word).
    pub const TTL: usize = 8;
    /// Upper-layer protocol.
    pub const PROTOCOL: usize = 9;
    /// Header checksum, 16 bits.
    pub const CHECKSUM: usize = 10;
    /// Source address.
    pub const SRC_ADDR: Field = 12..16;
    /// Destination address.
    pub const DST_ADDR: Field = 16..20;
}

/// Length of an IPv4 header without options.
pub const MIN_HEADER_LEN: usize = field::DST_ADDR.end;

/// A view of an IPv4 packet.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Validates version, header length (options included) and total length against the buffer.
    /// Bytes after `total_len` (Ethernet padding) are allowed.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[field::VER_IHL] >> 4 != 4 {
            return Err(WireError::Malformed);
        }
        let ihl = usize::from(b[field::VER_IHL] & 0x0f) * 4;
        if ihl < MIN_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        let total = usize::from(be16(b, field::LENGTH));
        if total < ihl {
            return Err(WireError::Malformed);
        }
        if b.len() < ihl || b.len() < total {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buf })
    }
    /// Wraps without checking.
    pub fn new_unchecked(buf: T) -> Self {
        Packet { buf }
    }
    /// Header length in bytes (20..=60).
    pub fn header_len(&self) -> usize {
        usize::from(self.buf.as_ref()[field::VER_IHL] & 0x0f) * 4
    }
    /// DSCP/ECN byte.
    pub fn tos(&self) -> u8 {
        self.buf.as_ref()[field::DSCP_ECN]
    }
    /// Total length (header + payload).
    pub fn total_len(&self) -> u16 {
        be16(self.buf.as_ref(), field::LENGTH)
    }
    /// Identification.
    pub fn ident(&self) -> u16 {
        be16(self.buf.as_ref(), field::IDENT)
    }
    /// Don't Fragment flag.
    pub fn dont_frag(&self) -> bool {
        self.buf.as_ref()[field::FLG_OFF] & 0x40 != 0
    }
    /// More Fragments flag.
    pub fn more_frags(&self) -> bool {
        self.buf.as_ref()[field::FLG_OFF] & 0x20 != 0
    }
    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (be16(self.buf.as_ref(), field::FLG_OFF) & 0x1fff) * 8
    }
    /// True for any fragment (first, middle or last).
    pub fn is_fragment(&self) -> bool {
        be16(self.buf.as_ref(), field::FLG_OFF) & 0x3fff != 0
    }
    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buf.as_ref()[field::TTL]
    }
    /// Upper-layer protocol.
    pub fn protocol(&self) -> u8 {
        self.buf.as_ref()[field::PROTOCOL]
    }
    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), field::CHECKSUM)
    }
    /// Source address.
    pub fn src(&self) -> [u8; 4] {
        self.buf.as_ref()[field::SRC_ADDR]
            .try_into()
            .unwrap_or_default()
    }
    /// Destination address.
    pub fn dst(&self) -> [u8; 4] {
        self.buf.as_ref()[field::DST_ADDR]
            .try_into()
            .unwrap_or_default()
    }
    /// True when the header checksum (options included) verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(&self.buf.as_ref()[..self.header_len()]) == 0
    }
    /// The payload (up to `total_len`, padding excluded).
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the source address, updating the header checksum incrementally.
    pub fn set_src(&mut self, a: [u8; 4]) {
        let old = u32::from_be_bytes(self.src());
        let c = checksum::update32(self.checksum(), old, u32::from_be_bytes(a));
        let b = self.buf.as_mut();
        b[field::SRC_ADDR].copy_from_slice(&a);
        put16(b, field::CHECKSUM, c);
    }
    /// Sets the destination address, updating the header checksum incrementally.
    pub fn set_dst(&mut self, a: [u8; 4]) {
        let old = u32::from_be_bytes(self.dst());
        let c = checksum::update32(self.checksum(), old, u32::from_be_bytes(a));
        let b = self.buf.as_mut();
        b[field::DST_ADDR].copy_from_slice(&a);
        put16(b, field::CHECKSUM, c);
    }
    /// Sets the TTL, updating the checksum incrementally.
    pub fn set_ttl(&mut self, ttl: u8) {
        let b = self.buf.as_mut();
        // The checksum sums TTL and protocol as one 16-bit word.
        let old = be16(b, field::TTL);
        b[field::TTL] = ttl;
        let new = be16(b, field::TTL);
        let c = checksum::update16(be16(b, field::CHECKSUM), old, new);
        put16(b, field::CHECKSUM, c);
    }
    /// Recomputes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len();
        let b = self.buf.as_mut();
        put16(b, field::CHECKSUM, 0);
        let c = checksum::checksum(&b[..hl]);
        put16(b, field::CHECKSUM, c);
    }
}

/// Writes a 20-byte IPv4 header (no options, DF clear) with a correct checksum.
pub fn emit(
    buf: &mut [u8],
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    payload_len: u16,
    ttl: u8,
    ident: u16,
) {
    buf[field::VER_IHL] = 0x45;
    buf[field::DSCP_ECN] = 0;
    put16(buf, field::LENGTH, payload_len + MIN_HEADER_LEN as u16);
    put16(buf, field::IDENT, ident);
    put16(buf, field::FLG_OFF, 0);
    buf[field::TTL] = ttl;
    buf[field::PROTOCOL] = proto;
    put16(buf, field::CHECKSUM, 0);
    buf[field::SRC_ADDR].copy_from_slice(&src);
    buf[field::DST_ADDR].copy_from_slice(&dst);
    let c = checksum::checksum(&buf[..MIN_HEADER_LEN]);
    put16(buf, field::CHECKSUM, c);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10.0.0.1 -> 10.0.0.2, TCP, 20 bytes of payload, TTL 64, ident 7, DF clear.
    const HEADER: [u8; MIN_HEADER_LEN] = [
        0x45, 0x00, 0x00, 0x28, 0x00, 0x07, 0x00, 0x00, 0x40, 0x06, 0x66, 0xc7, 0x0a, 0x00, 0x00,
        0x01, 0x0a, 0x00, 0x00, 0x02,
    ];

    #[test]
    fn parse_bytes() {
        let mut b = [0u8; 40];
        b[..MIN_HEADER_LEN].copy_from_slice(&HEADER);
        b[6] = 0x40; // DF
        Packet::new_unchecked(&mut b[..]).fill_checksum();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.header_len(), MIN_HEADER_LEN);
        assert_eq!((p.tos(), p.total_len(), p.ident()), (0, 40, 7));
        assert!(p.dont_frag() && !p.more_frags() && !p.is_fragment());
        assert_eq!((p.frag_offset(), p.ttl(), p.protocol()), (0, 64, 6));
        assert_eq!(p.src(), [10, 0, 0, 1]);
        assert_eq!(p.dst(), [10, 0, 0, 2]);
        assert!(p.verify_checksum());
        assert_eq!(p.payload().len(), 20);
        b[6..8].copy_from_slice(&0x2003u16.to_be_bytes()); // MF, offset 3 * 8
        let p = Packet::new_unchecked(&b[..]);
        assert!(p.more_frags() && p.is_fragment() && !p.dont_frag());
        assert_eq!(p.frag_offset(), 24);
    }

    #[test]
    fn emit_bytes() {
        let mut b = [0xa5u8; MIN_HEADER_LEN];
        emit(&mut b, [10, 0, 0, 1], [10, 0, 0, 2], 6, 20, 64, 7);
        assert_eq!(b, HEADER);
    }

    #[test]
    fn emit_parse_and_rewrite() {
        let mut b = [0xa5u8; 40];
        emit(&mut b, [10, 0, 0, 1], [10, 0, 0, 2], 6, 20, 64, 7);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(p.total_len(), 40);
        assert_eq!(p.protocol(), 6);
        assert!(!p.is_fragment());
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_dst([192, 168, 1, 1]);
        p.set_src([172, 16, 0, 9]);
        p.set_ttl(3);
        assert!(p.verify_checksum());
        let e = etherparse::Ipv4HeaderSlice::from_slice(&b).unwrap();
        assert_eq!(e.destination(), [192, 168, 1, 1]);
        assert_eq!(e.header_checksum(), e.to_header().calc_header_checksum());
    }

    #[test]
    fn options_and_bad_lengths() {
        let mut b = [0u8; 60];
        emit(&mut b, [1, 1, 1, 1], [2, 2, 2, 2], 17, 36, 64, 1);
        b[0] = 0x46; // IHL 6: 4 bytes of options
        b[20..24].copy_from_slice(&[1, 1, 1, 0]); // NOPs + EOL
        Packet::new_unchecked(&mut b[..]).fill_checksum();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.header_len(), 24);
        assert!(p.verify_checksum());
        assert_eq!(p.payload().len(), 32);
        assert_eq!(
            Packet::new_checked(&b[..50]).unwrap_err(),
            WireError::Truncated
        );
        b[0] = 0x44;
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            WireError::Malformed
        );
        b[0] = 0x65;
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            WireError::Malformed
        );
    }
}
