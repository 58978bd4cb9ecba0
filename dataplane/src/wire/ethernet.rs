//! Ethernet II frames and 802.1Q VLAN tags.
use super::{be16, put16, WireError};

/// Where each field of the Ethernet II header is.
pub(crate) mod field {
    use crate::wire::{Field, Rest};

    /// Destination MAC.
    pub const DESTINATION: Field = 0..6;
    /// Source MAC.
    pub const SOURCE: Field = 6..12;
    /// EtherType (or the TPID of a VLAN tag), 16 bits.
    pub const ETHERTYPE: usize = 12;
    /// What follows the header.
    pub const PAYLOAD: Rest = 14..;
}

/// Where each field of an 802.1Q tag is, from the start of the TCI (the tag's TPID is the
/// Ethernet header's EtherType).
pub(crate) mod vlan_field {
    /// Tag control information, 16 bits: PCP (3), DEI (1), VID (12).
    pub const TCI: usize = 0;
    /// The encapsulated EtherType, 16 bits.
    pub const ETHERTYPE: usize = 2;
}

/// EtherType values used by Sluice.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// 802.1Q VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service tag (QinQ outer).
    pub const QINQ: u16 = 0x88a8;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
}

/// Length of an Ethernet II header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;
/// Length of one 802.1Q tag.
pub const VLAN_TAG_LEN: usize = vlan_field::ETHERTYPE + 2;
/// The broadcast MAC address.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// A view of an Ethernet II frame.
#[derive(Debug, Clone, Copy)]
pub struct Frame<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer of at least [`HEADER_LEN`] bytes.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        if buf.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Frame { buf })
    }
    /// Wraps without checking (the caller guarantees the length).
    pub fn new_unchecked(buf: T) -> Self {
        Frame { buf }
    }
    /// Destination MAC.
    pub fn dst(&self) -> [u8; 6] {
        self.buf.as_ref()[field::DESTINATION]
            .try_into()
            .unwrap_or_default()
    }
    /// Source MAC.
    pub fn src(&self) -> [u8; 6] {
        self.buf.as_ref()[field::SOURCE]
            .try_into()
            .unwrap_or_default()
    }
    /// EtherType (or TPID of a VLAN tag).
    pub fn ethertype(&self) -> u16 {
        be16(self.buf.as_ref(), field::ETHERTYPE)
    }
    /// The bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Sets the destination MAC.
    pub fn set_dst(&mut self, m: [u8; 6]) {
        self.buf.as_mut()[field::DESTINATION].copy_from_slice(&m);
    }
    /// Sets the source MAC.
    pub fn set_src(&mut self, m: [u8; 6]) {
        self.buf.as_mut()[field::SOURCE].copy_from_slice(&m);
    }
    /// Sets the EtherType.
    pub fn set_ethertype(&mut self, t: u16) {
        put16(self.buf.as_mut(), field::ETHERTYPE, t);
    }
    /// Swaps source and destination MACs.
    pub fn swap_macs(&mut self) {
        let b = self.buf.as_mut();
        for i in 0..field::DESTINATION.len() {
            b.swap(field::DESTINATION.start + i, field::SOURCE.start + i);
        }
    }
}

/// A view of an 802.1Q tag (TCI and inner EtherType), starting at the TCI.
#[derive(Debug, Clone, Copy)]
pub struct VlanTag<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> VlanTag<T> {
    /// Wraps a buffer of at least [`VLAN_TAG_LEN`] bytes.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        if buf.as_ref().len() < VLAN_TAG_LEN {
            return Err(WireError::Truncated);
        }
        Ok(VlanTag { buf })
    }
    /// VLAN id (12 bits).
    pub fn vid(&self) -> u16 {
        be16(self.buf.as_ref(), vlan_field::TCI) & 0x0fff
    }
    /// Priority code point.
    pub fn pcp(&self) -> u8 {
        self.buf.as_ref()[vlan_field::TCI] >> 5
    }
    /// The encapsulated EtherType.
    pub fn ethertype(&self) -> u16 {
        be16(self.buf.as_ref(), vlan_field::ETHERTYPE)
    }
}

/// Writes an Ethernet header into the first 14 bytes of `buf`.
pub fn emit(buf: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    buf[field::DESTINATION].copy_from_slice(&dst);
    buf[field::SOURCE].copy_from_slice(&src);
    put16(buf, field::ETHERTYPE, ethertype);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tagged frame header: dst 01:02:03:04:05:06, src 07:08:09:0a:0b:0c, 802.1Q with PCP 1
    /// and VID 100, then IPv4.
    const FRAME: [u8; 18] = [
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x81, 0x00, 0x20,
        0x64, 0x08, 0x00,
    ];

    #[test]
    fn parse_bytes() {
        let f = Frame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(f.dst(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(f.src(), [7, 8, 9, 10, 11, 12]);
        assert_eq!(f.ethertype(), ethertype::VLAN);
        assert_eq!(f.payload(), &FRAME[HEADER_LEN..]);
        let v = VlanTag::new_checked(f.payload()).unwrap();
        assert_eq!(v.vid(), 100);
        assert_eq!(v.pcp(), 1);
        assert_eq!(v.ethertype(), ethertype::IPV4);
        assert!(Frame::new_checked(&FRAME[..13]).is_err());
        assert!(VlanTag::new_checked(&FRAME[15..]).is_err());
    }

    #[test]
    fn emit_bytes() {
        let mut b = [0xa5u8; 18];
        emit(
            &mut b,
            [1, 2, 3, 4, 5, 6],
            [7, 8, 9, 10, 11, 12],
            ethertype::VLAN,
        );
        b[14..18].copy_from_slice(&FRAME[14..18]);
        assert_eq!(b, FRAME);
        let mut b = [0xa5u8; 18];
        let mut f = Frame::new_unchecked(&mut b[..]);
        f.set_dst([1, 2, 3, 4, 5, 6]);
        f.set_src([7, 8, 9, 10, 11, 12]);
        f.set_ethertype(ethertype::VLAN);
        assert_eq!(b[..HEADER_LEN], FRAME[..HEADER_LEN]);
        assert_eq!(b[HEADER_LEN..], [0xa5; 4]);
    }

    #[test]
    fn swap_macs() {
        let mut b = FRAME;
        let mut f = Frame::new_unchecked(&mut b[..]);
        f.swap_macs();
        assert_eq!(f.dst(), [7, 8, 9, 10, 11, 12]);
        assert_eq!(f.src(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(b[12..], FRAME[12..]);
    }
}
