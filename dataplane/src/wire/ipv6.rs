//! IPv6 headers (RFC 8200), with extension headers skipped to the upper layer.
use super::{be16, put16, put32, WireError};

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = 40;

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
        if b[0] >> 4 != 6 {
            return Err(WireError::Malformed);
        }
        if b.len() < HEADER_LEN + usize::from(be16(b, 4)) {
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
        (b[0] << 4) | (b[1] >> 4)
    }
    /// Flow label (20 bits).
    pub fn flow_label(&self) -> u32 {
        let b = self.buf.as_ref();
        (u32::from(b[1] & 0x0f) << 16) | u32::from(be16(b, 2))
    }
    /// Payload length (extension headers included).
    pub fn payload_len(&self) -> u16 {
        be16(self.buf.as_ref(), 4)
    }
    /// Next header of the fixed header.
    pub fn next_header(&self) -> u8 {
        self.buf.as_ref()[6]
    }
    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buf.as_ref()[7]
    }
    /// Source address.
    pub fn src(&self) -> [u8; 16] {
        self.buf.as_ref()[8..24].try_into().unwrap_or_default()
    }
    /// Destination address.
    pub fn dst(&self) -> [u8; 16] {
        self.buf.as_ref()[24..40].try_into().unwrap_or_default()
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
                    if off + 8 > end {
                        return Err(WireError::Truncated);
                    }
                    let len = (usize::from(b[off + 1]) + 1) * 8;
                    nh = b[off];
                    off += len;
                }
                ext::AUTH => {
                    if off + 8 > end {
                        return Err(WireError::Truncated);
                    }
                    let len = (usize::from(b[off + 1]) + 2) * 4;
                    nh = b[off];
                    off += len;
                }
                ext::FRAGMENT => {
                    if off + 8 > end {
                        return Err(WireError::Truncated);
                    }
                    let fo = be16(b, off + 2);
                    fragment = Some((fo & 0xfff8, fo & 1 != 0));
                    nh = b[off];
                    off += 8;
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
        self.buf.as_mut()[8..24].copy_from_slice(&a);
    }
    /// Sets the destination address.
    pub fn set_dst(&mut self, a: [u8; 16]) {
        self.buf.as_mut()[24..40].copy_from_slice(&a);
    }
    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, h: u8) {
        self.buf.as_mut()[7] = h;
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
    put32(buf, 0, 6 << 28);
    put16(buf, 4, payload_len);
    buf[6] = next_header;
    buf[7] = hop_limit;
    buf[8..24].copy_from_slice(&src);
    buf[24..40].copy_from_slice(&dst);
}

#[cfg(test)]
mod tests {
    use super::*;

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
