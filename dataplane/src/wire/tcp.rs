//! TCP headers (RFC 9293).
use super::checksum;
use super::{be16, be32, put16, WireError};

/// Where each field of the TCP header is.
pub(crate) mod field {
    /// Source port, 16 bits.
    pub const SRC_PORT: usize = 0;
    /// Destination port, 16 bits.
    pub const DST_PORT: usize = 2;
    /// Sequence number, 32 bits.
    pub const SEQ_NUM: usize = 4;
    /// Acknowledgement number, 32 bits.
    pub const ACK_NUM: usize = 8;
    /// Data offset (high nibble, in 32-bit words) and reserved bits.
    pub const DATA_OFF: usize = 12;
    /// Flags (CWR..FIN).
    pub const FLAGS: usize = 13;
    /// Window size, 16 bits.
    pub const WIN_SIZE: usize = 14;
    /// Checksum, 16 bits.
    pub const CHECKSUM: usize = 16;
    /// Urgent pointer, 16 bits (the last field before options).
    pub const URGENT: usize = 18;
}

/// Length of a TCP header without options.
pub const MIN_HEADER_LEN: usize = field::URGENT + 2;

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

/// TCP option kinds (RFC 9293, RFC 7323, RFC 2018).
pub mod option {
    /// End of the option list.
    pub const END: u8 = 0;
    /// No operation (padding).
    pub const NOP: u8 = 1;
    /// Maximum segment size (length 4), SYN only.
    pub const MSS: u8 = 2;
    /// Window scale shift (length 3), SYN only.
    pub const WSCALE: u8 = 3;
    /// SACK permitted (length 2), SYN only.
    pub const SACK_PERM: u8 = 4;
    /// SACK blocks (length 2 + 8 per block).
    pub const SACK: u8 = 5;
    /// Timestamps (length 10).
    pub const TIMESTAMP: u8 = 8;
}

/// The largest window scale shift (RFC 7323: a larger one is used as 14).
pub const MAX_WSCALE: u8 = 14;

/// What a SYN's options offer: the options a SYN cookie has to remember.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SynOptions {
    /// Maximum segment size, if given.
    pub mss: Option<u16>,
    /// Window scale shift (at most [`MAX_WSCALE`]), if offered.
    pub wscale: Option<u8>,
    /// SACK permitted.
    pub sack_perm: bool,
    /// Timestamps offered.
    pub timestamps: bool,
}

impl SynOptions {
    /// The options in `opts` (the bytes after the fixed header); an option cut short ends the
    /// list, as an END would.
    pub fn parse(opts: &[u8]) -> SynOptions {
        let mut o = SynOptions::default();
        let mut i = 0;
        while i < opts.len() {
            let kind = opts[i];
            if kind == option::END {
                break;
            }
            if kind == option::NOP {
                i += 1;
                continue;
            }
            let Some(&len) = opts.get(i + 1) else { break };
            let len = usize::from(len);
            if len < 2 || i + len > opts.len() {
                break;
            }
            match (kind, len) {
                (option::MSS, 4) => o.mss = Some(be16(opts, i + 2)),
                (option::WSCALE, 3) => o.wscale = Some(opts[i + 2].min(MAX_WSCALE)),
                (option::SACK_PERM, 2) => o.sack_perm = true,
                (option::TIMESTAMP, 10) => o.timestamps = true,
                _ => {}
            }
            i += len;
        }
        o
    }

    /// Writes the options into `buf` as Linux lays them out without timestamps (MSS; NOP,
    /// NOP, SACK permitted; NOP, window scale), each word-aligned, timestamps never: the
    /// length written, a multiple of 4 and at most [`SynOptions::MAX_LEN`]. `mss` is written
    /// only if given.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        if let Some(mss) = self.mss {
            buf[n] = option::MSS;
            buf[n + 1] = 4;
            put16(buf, n + 2, mss);
            n += 4;
        }
        if self.sack_perm {
            buf[n..n + 4].copy_from_slice(&[option::NOP, option::NOP, option::SACK_PERM, 2]);
            n += 4;
        }
        if let Some(ws) = self.wscale {
            buf[n..n + 4].copy_from_slice(&[option::NOP, option::WSCALE, 3, ws]);
            n += 4;
        }
        n
    }

    /// The most bytes [`SynOptions::emit`] writes.
    pub const MAX_LEN: usize = 12;
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
        let doff = usize::from(b[field::DATA_OFF] >> 4) * 4;
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
        be16(self.buf.as_ref(), field::SRC_PORT)
    }
    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buf.as_ref(), field::DST_PORT)
    }
    /// Sequence number.
    pub fn seq(&self) -> u32 {
        be32(self.buf.as_ref(), field::SEQ_NUM)
    }
    /// Acknowledgement number.
    pub fn ack(&self) -> u32 {
        be32(self.buf.as_ref(), field::ACK_NUM)
    }
    /// Header length in bytes.
    pub fn header_len(&self) -> usize {
        usize::from(self.buf.as_ref()[field::DATA_OFF] >> 4) * 4
    }
    /// Flags byte (FIN..CWR).
    pub fn flags(&self) -> u8 {
        self.buf.as_ref()[field::FLAGS]
    }
    /// Window field (unscaled).
    pub fn window(&self) -> u16 {
        be16(self.buf.as_ref(), field::WIN_SIZE)
    }
    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), field::CHECKSUM)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Segment<T> {
    /// Sets the source port (checksum not touched; see [`super::checksum`]).
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

    /// 1234 -> 80, seq 7, ack 9, data offset 6 (one option word), SYN|ACK, window 0x1000,
    /// checksum 0xbeef, urgent 0, then MSS 1460.
    const SEGMENT: [u8; 24] = [
        0x04, 0xd2, 0x00, 0x50, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x09, 0x60, 0x12, 0x10,
        0x00, 0xbe, 0xef, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4,
    ];

    #[test]
    fn parse_bytes() {
        let s = Segment::new_checked(&SEGMENT[..]).unwrap();
        assert_eq!(
            (s.src_port(), s.dst_port(), s.seq(), s.ack(), s.header_len()),
            (1234, 80, 7, 9, 24)
        );
        assert_eq!(s.flags(), flags::SYN | flags::ACK);
        assert_eq!(s.checksum(), 0xbeef);
        assert_eq!(
            Segment::new_checked(&SEGMENT[..22]).unwrap_err(),
            WireError::Truncated
        );
        let mut b = SEGMENT;
        b[12] = 4 << 4;
        assert_eq!(
            Segment::new_checked(&b[..]).unwrap_err(),
            WireError::Malformed
        );
    }

    /// There is no TCP emitter: the setters write their fields and nothing else.
    #[test]
    fn emit_bytes() {
        let mut b = [0xa5u8; 24];
        let mut s = Segment::new_unchecked(&mut b[..]);
        s.set_src_port(1234);
        s.set_dst_port(80);
        s.set_checksum(0xbeef);
        let mut want = [0xa5u8; 24];
        want[0..4].copy_from_slice(&SEGMENT[0..4]);
        want[16..18].copy_from_slice(&SEGMENT[16..18]);
        assert_eq!(b, want);
    }

    /// Linux's SYN options (MSS 1460, SACK permitted, timestamps, NOP, window scale 7) parse;
    /// a cut option ends the list; what `emit` writes parses back.
    #[test]
    fn syn_options_parse_and_emit() {
        let linux = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        let o = SynOptions::parse(&linux);
        assert_eq!(
            o,
            SynOptions {
                mss: Some(1460),
                wscale: Some(7),
                sack_perm: true,
                timestamps: true
            }
        );
        assert_eq!(SynOptions::parse(&linux[..18]).wscale, None);
        assert_eq!(SynOptions::parse(&[1, 3, 3, 15]).wscale, Some(MAX_WSCALE));
        let mut b = [0xa5u8; SynOptions::MAX_LEN];
        let out = SynOptions {
            timestamps: false,
            ..o
        };
        assert_eq!(out.emit(&mut b), 12);
        assert_eq!(b, [2, 4, 0x05, 0xb4, 1, 1, 4, 2, 1, 3, 3, 7]);
        assert_eq!(SynOptions::parse(&b), out);
        let bare = SynOptions {
            mss: Some(536),
            ..SynOptions::default()
        };
        assert_eq!(bare.emit(&mut b), 4);
    }

    #[test]
    fn l4_checksum_skips_the_checksum_field() {
        let mut b = SEGMENT;
        let pseudo = checksum::pseudo_v4([10, 0, 0, 1], [10, 0, 0, 2], 6, 24);
        let c = l4_checksum(pseudo, &b, 16);
        b[16..18].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum::fold(checksum::sum(pseudo, &b)), 0xffff);
    }
}
