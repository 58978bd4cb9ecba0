//! # Wire views: zero-copy packet headers
//!
//! One view per protocol, `View<T: AsRef<[u8]>>` over any byte buffer: getters need `AsRef`,
//! setters `AsMut`. Fields are read at fixed offsets with `from_be_bytes`, never by casting to a
//! `#[repr(C)]` struct (unaligned references would be undefined behaviour).
//!
//! ## Contract
//! `View::new_checked(buf)` validates that `buf` is long enough for the fixed header *and* for
//! any length the header itself declares (IPv4 IHL, TCP data offset, ...). After it succeeds no
//! accessor of that view panics. `new_unchecked` exists for buffers the caller built itself.
//! Parsing untrusted bytes never panics (fuzzed: see `fuzz/`).
//!
//! ## Field offsets
//! Every protocol file names its header layout in a `field` module (smoltcp's habit): one
//! constant per field, a `usize` offset for the integers read with `be16`/`be32` (and single
//! bytes), a [`Field`] byte range for addresses, or a [`Rest`] for what follows the header.
//! Views, emitters, [`parse`] and the pipeline's by-offset rewrites use the names, so the layout
//! is written down once per protocol and header lengths follow from it.
//!
//! [`parse`] runs every view once over a frame and returns a small `Copy` summary
//! ([`parse::Parsed`]) that the pipeline classifies and rewrites by offset.

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod parse;
pub mod tcp;
pub mod udp;

/// A multi-byte field (an address, a MAC): its byte range within its header.
pub(crate) type Field = core::ops::Range<usize>;
/// Everything from an offset to the end of the buffer (a header's payload).
pub(crate) type Rest = core::ops::RangeFrom<usize>;

/// Why a buffer is not a valid header of the expected kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The buffer is shorter than the header (or than a length the header declares).
    Truncated,
    /// A field has a value the protocol forbids (version, header length, ...).
    Malformed,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Truncated => f.write_str("truncated header"),
            WireError::Malformed => f.write_str("malformed header"),
        }
    }
}

impl std::error::Error for WireError {}

/// IP protocol numbers used by Sluice.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// IPv4-in-IP encapsulation.
    pub const IPIP: u8 = 4;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6-in-IP encapsulation.
    pub const IPV6: u8 = 41;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
}

#[inline(always)]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline(always)]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline(always)]
pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline(always)]
pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
