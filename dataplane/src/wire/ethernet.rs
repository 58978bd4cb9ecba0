//! Ethernet II frames and 802.1Q VLAN tags.
use super::{be16, put16, WireError};

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
pub const HEADER_LEN: usize = 14;
/// Length of one 802.1Q tag.
pub const VLAN_TAG_LEN: usize = 4;
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
        self.buf.as_ref()[0..6].try_into().unwrap_or_default()
    }
    /// Source MAC.
    pub fn src(&self) -> [u8; 6] {
        self.buf.as_ref()[6..12].try_into().unwrap_or_default()
    }
    /// EtherType (or TPID of a VLAN tag).
    pub fn ethertype(&self) -> u16 {
        be16(self.buf.as_ref(), 12)
    }
    /// The bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Sets the destination MAC.
    pub fn set_dst(&mut self, m: [u8; 6]) {
        self.buf.as_mut()[0..6].copy_from_slice(&m);
    }
    /// Sets the source MAC.
    pub fn set_src(&mut self, m: [u8; 6]) {
        self.buf.as_mut()[6..12].copy_from_slice(&m);
    }
    /// Sets the EtherType.
    pub fn set_ethertype(&mut self, t: u16) {
        put16(self.buf.as_mut(), 12, t);
    }
    /// Swaps source and destination MACs.
    pub fn swap_macs(&mut self) {
        let b = self.buf.as_mut();
        for i in 0..6 {
            b.swap(i, 6 + i);
        }
    }
}

/// A view of an 802.1Q tag (TCI and inner EtherType), starting at the TCI.
#[derive(Debug, Clone, Copy)]
pub struct VlanTag<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> VlanTag<T> {
    /// Wraps a buffer of at least 4 bytes.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        if buf.as_ref().len() < VLAN_TAG_LEN {
            return Err(WireError::Truncated);
        }
        Ok(VlanTag { buf })
    }
    /// VLAN id (12 bits).
    pub fn vid(&self) -> u16 {
        be16(self.buf.as_ref(), 0) & 0x0fff
    }
    /// Priority code point.
    pub fn pcp(&self) -> u8 {
        self.buf.as_ref()[0] >> 5
    }
    /// The encapsulated EtherType.
    pub fn ethertype(&self) -> u16 {
        be16(self.buf.as_ref(), 2)
    }
}

/// Writes an Ethernet header into the first 14 bytes of `buf`.
pub fn emit(buf: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    buf[0..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    put16(buf, 12, ethertype);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_emit() {
        let mut b = [0xa5u8; 18];
        emit(
            &mut b,
            [1, 2, 3, 4, 5, 6],
            [7, 8, 9, 10, 11, 12],
            ethertype::VLAN,
        );
        b[14..18].copy_from_slice(&[0x20, 0x64, 0x08, 0x00]);
        let f = Frame::new_checked(&b[..]).unwrap();
        assert_eq!(f.dst(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(f.src(), [7, 8, 9, 10, 11, 12]);
        assert_eq!(f.ethertype(), ethertype::VLAN);
        let v = VlanTag::new_checked(f.payload()).unwrap();
        assert_eq!(v.vid(), 100);
        assert_eq!(v.pcp(), 1);
        assert_eq!(v.ethertype(), ethertype::IPV4);
        assert!(Frame::new_checked(&b[..13]).is_err());
        let mut f = Frame::new_unchecked(&mut b[..]);
        f.swap_macs();
        assert_eq!(f.dst(), [7, 8, 9, 10, 11, 12]);
    }
}
