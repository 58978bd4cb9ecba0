//! IPv6 headers (RFC 8200), with extension headers skipped to the upper layer.
use super::{be16, put16, put32, WireError};

/// Where each field of the fixed IPv6 header is.
pub(crate) mod field {
    use crate::wire::Field;

    /// Version (4 bits), traffic class (8) and flow label (20), 32 bits.
    pub const VER_TC_FLOW: usize = 0;
    /// Payload length (extension headers included), 16 bits.
    pub const LENGTH: usize = 4;
    /// Next header.
    pub const NXT_HDR: usize = 6;
    /// Hop limit.
    pub const HOP_LIMIT: usize = 7;
    /// Source address.
    pub const SRC_ADDR: Field = 8..24;
    /// Destination address.
    pub const DST_ADDR: Field = 24..40;
}

/// Where each field of an extension header is, from its start.
pub(crate) mod ext_field {
    /// Next header (every extension header).
    pub const NXT_HDR: usize = 0;
    /// Length in 8-byte units not counting the first 8 (hop-by-hop, routing, destination
    /// options) or in 4-byte units less 2 (authentication header).
    pub const LENGTH: usize = 1;
    /// Fragment header: fragment offset (13 bits, in 8-byte units) and M flag (bit 0), 16 bits.
    pub const FRAG_OFF: usize = 2;
    /// Fragment header: identification, 32 bits (its last field).
    pub const FRAG_IDENT: usize = 4;
}

/// The length of a fragment header, which is also the shortest extension header there is.
const EXT_MIN_LEN: usize = ext_field::FRAG_IDENT + 4;

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

/// Extension header numbers.
pub mod ext {
    /// Hop-by-hop options.
    pub const HOP_BY_HOP: u8 = 0;
    /// Routing.
    pub const ROUTING: u8 = 43;
    /// Fragment.
    pub const FRAGMENT: u8 = 44;
    /// Encapsulating security payload (opaque: parsing stops).
    pub const ESP: u8 = 50;
    /// Authentication header.
    pub const AUTH: u8 = 51;
    /// No next header.
    pub const NO_NEXT: u8 = 59;
    /// Destination options.
    pub const DEST_OPTS: u8 = 60;
}

/// Where the upper layer starts, after extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    /// The upper-layer protocol.
    pub protocol: u8,
    /// Offset of the upper-layer header from the start of the IPv6 header.
    pub offset: usize,
    /// A fragment header was present: (fragment offset in bytes, more fragments).
    pub fragment: Option<(u16, bool)>,
}

/// A view of an IPv6 packet.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Validates version and payload length against the buffer (padding after is allowed).
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[field::VER_TC_FLOW] >> 4 != 6 {
            return Err(WireError::Malformed);
        }
        if b.len() < HEADER_LEN + usize::from(be16(b, field::LENGTH)) {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buf })
    }
    /// Wraps without checking.
    pub fn new_unchecked(buf: T) -> Self {
        Packet { buf }
    }
    /// Traffic class.
    pub fn traffic_class(&self) -> u8 {
        let b = self.buf.as_ref();
        (b[field::VER_TC_FLOW] << 4) | (b[field::VER_TC_FLOW + 1] >> 4)
    }
    /// Flow label (20 bits).
    pub fn flow_label(&self) -> u32 {
        let b = self.buf.as_ref();
        (u32::from(b[field::VER_TC_FLOW + 1] & 0x0f) << 16)
            | u32::from(be16(b, field::VER_TC_FLOW + 2))
    }
    /// Payload length (extension headers included).
    pub fn payload_len(&self) -> u16 {
        be16(self.buf.as_ref(), field::LENGTH)
    }
    /// Next header of the fixed header.
    pub fn next_header(&self) -> u8 {
        self.buf.as_ref()[field::NXT_HDR]
    }
    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buf.as_ref()[field::HOP_LIMIT]
    }
    /// Source address.
    pub fn src(&self) -> [u8; 16] {
        self.buf.as_ref()[field::SRC_ADDR]
            .try_into()
            .unwrap_or_default()
    }
    /// Destination address.
    pub fn dst(&self) -> [u8; 16] {
        self.buf.as_ref()[field::DST_ADDR]
            .try_into()
            .unwrap_or_default()
    }
    /// Skips extension headers (hop-by-hop, routing, fragment, destination options, AH) to the
    /// upper layer. At most 8 extension headers are followed; ESP and "no next header" end the
    /// chain and are returned as the protocol.
    pub fn upper_layer(&self) -> Result<UpperLayer, WireError> {
        let b = self.buf.as_ref();
        let end = HEADER_LEN + usize::from(self.payload_len());
        let mut nh = self.next_header();
        let mut off = HEADER_LEN;
        let mut fragment = None;
        for _ in 0..8 {
            match nh {
                ext::HOP_BY_HOP | ext::ROUTING | ext::DEST_OPTS => {
                    if off + EXT_MIN_LEN > end {
                        return Err(WireError::Truncated);
                    }
                    let len = (usize::from(b[off + ext_field::LENGTH]) + 1) * 8;
                    nh = b[off + ext_field::NXT_HDR];
                    off += len;
                }
                ext::AUTH => {
                    if off + EXT_MIN_LEN > end {
                        return Err(WireError::Truncated);
                    }
                    let len = (usize::from(b[off + ext_field::LENGTH]) + 2) * 4;
                    nh = b[off + ext_field::NXT_HDR];
                    off += len;
                }
                ext::FRAGMENT => {
                    if off + EXT_MIN_LEN > end {
                        return Err(WireError::Truncated);
                    }
                    let fo = be16(b, off + ext_field::FRAG_OFF);
                    fragment = Some((fo & 0xfff8, fo & 1 != 0));
                    nh = b[off + ext_field::NXT_HDR];
                    off += EXT_MIN_LEN;
                }
                _ => {
                    if off > end {
                        return Err(WireError::Truncated);
                    }
                    return Ok(UpperLayer {
                        protocol: nh,
                        offset: off,
                        fragment,
                    });
                }
            }
        }
        Err(WireError::Malformed)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the source address (IPv6 has no header checksum; upper layers must be fixed).
    pub fn set_src(&mut self, a: [u8; 16]) {
        self.buf.as_mut()[field::SRC_ADDR].copy_from_slice(&a);
    }
    /// Sets the destination address.
    pub fn set_dst(&mut self, a: [u8; 16]) {
        self.buf.as_mut()[field::DST_ADDR].copy_from_slice(&a);
    }
    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, h: u8) {
        self.buf.as_mut()[field::HOP_LIMIT] = h;
    }
}

/// Writes a fixed IPv6 header.
pub fn emit(
    buf: &mut [u8],
    src: [u8; 16],
    dst: [u8; 16],
    next_header: u8,
    payload_len: u16,
    hop_limit: u8,
) {
    put32(buf, field::VER_TC_FLOW, 6 << 28);
    put16(buf, field::LENGTH, payload_len);
    buf[field::NXT_HDR] = next_header;
    buf[field::HOP_LIMIT] = hop_limit;
    buf[field::SRC_ADDR].copy_from_slice(&src);
    buf[field::DST_ADDR].copy_from_slice(&dst);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fd00::1 -> fd00::2, UDP, 8 bytes of payload, hop limit 64, traffic class and flow label 0.
    const HEADER: [u8; HEADER_LEN] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x08, 0x11, 0x40, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02,
    ];
    const SRC: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const DST: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    #[test]
    fn parse_bytes() {
        let mut b = [0u8; HEADER_LEN + 8];
        b[..HEADER_LEN].copy_from_slice(&HEADER);
        b[1] = 0xa1; // traffic class 0x0a, flow label 0x1beef
        b[2..4].copy_from_slice(&[0xbe, 0xef]);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.traffic_class(), p.flow_label()), (0x0a, 0x1beef));
        assert_eq!(
            (p.payload_len(), p.next_header(), p.hop_limit()),
            (8, 17, 64)
        );
        assert_eq!((p.src(), p.dst()), (SRC, DST));
        let ul = p.upper_layer().unwrap();
        assert_eq!(
            (ul.protocol, ul.offset, ul.fragment),
            (17, HEADER_LEN, None)
        );
        assert_eq!(
            Packet::new_checked(&b[..HEADER_LEN + 7]).unwrap_err(),
            WireError::Truncated
        );
        b[0] = 0x40;
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            WireError::Malformed
        );
    }

    #[test]
    fn emit_bytes() {
        let mut b = [0xa5u8; HEADER_LEN];
        emit(&mut b, SRC, DST, 17, 8, 64);
        assert_eq!(b, HEADER);
        let mut b = [0xa5u8; HEADER_LEN];
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_src(SRC);
        p.set_dst(DST);
        p.set_hop_limit(64);
        let mut want = [0xa5u8; HEADER_LEN];
        want[7] = 64;
        want[8..40].copy_from_slice(&HEADER[8..40]);
        assert_eq!(b, want);
    }

    #[test]
    fn extension_headers_are_skipped() {
        let mut b = vec![0xa5u8; 40 + 8 + 8 + 8];
        emit(&mut b, [1; 16], [2; 16], ext::HOP_BY_HOP, 24, 64);
        b[40] = ext::FRAGMENT; // hop-by-hop -> fragment
        b[41] = 0;
        b[48] = 17; // fragment -> UDP
        b[49] = 0;
        b[50..52].copy_from_slice(&0x0001u16.to_be_bytes()); // offset 0, M=1
        let p = Packet::new_checked(&b[..]).unwrap();
        let ul = p.upper_layer().unwrap();
        assert_eq!(ul.protocol, 17);
        assert_eq!(ul.offset, 56);
        assert_eq!(ul.fragment, Some((0, true)));
        assert_eq!(p.src(), [1; 16]);
        assert_eq!(p.hop_limit(), 64);
        // truncated extension chain
        let mut t = b.clone();
        t[4..6].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(
            Packet::new_checked(&t[..])
                .unwrap()
                .upper_layer()
                .unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(
            Packet::new_checked(&b[..39]).unwrap_err(),
            WireError::Truncated
        );
    }
}
