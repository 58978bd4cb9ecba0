//! What a flow table stores about a flow besides the caller's value: its key (the 5-tuple,
//! one packed type for both address families), its protocol state, and the idle timeout each
//! state has.
use std::fmt::Debug;
use std::hash::Hash;
use std::net::IpAddr;

use crate::hash::{hash_v4_5tuple, hash_v6_5tuple};

/// A key the table can hold: a small `Copy` value compared with `==`.
///
/// The table itself takes the hash as an argument, so that the pipeline hashes each packet once
/// and can reuse the value (e.g. for Maglev); `flow_hash` is the conventional way to compute it.
pub trait FlowKey: Copy + Eq {
    /// The key's stable hash under `seed` (see [`crate::hash`]).
    fn flow_hash(&self, seed: u64) -> u64;
}

/// An address family's address as flow keys hold it: `[u8; 4]` (IPv4) or `[u8; 16]` (IPv6),
/// the bytes as on the wire. What differs between the families of [`Key`] lives here.
pub trait Addr:
    Copy + Eq + Default + Hash + Debug + Send + Sync + 'static + AsRef<[u8]> + Into<IpAddr>
{
    /// Bytes of an address (4 or 16).
    const LEN: usize;
    /// Whether this is IPv6.
    const V6: bool;
    /// The address held in the first [`Addr::LEN`] bytes of `raw` (how the parser stores
    /// addresses of either family).
    fn from_raw(raw: &[u8; 16]) -> Self;
    /// The address in 16 bytes, zero-padded as the parser stores it.
    fn to_raw(self) -> [u8; 16];
    /// The address bytes.
    #[inline(always)]
    fn bytes(&self) -> &[u8] {
        self.as_ref()
    }
    /// The address as a standard library value.
    fn ip(self) -> IpAddr {
        self.into()
    }
    /// The address of `ip`, if `ip` is of this family.
    fn of_ip(ip: IpAddr) -> Option<Self>;
    /// The stable 5-tuple hash of this family ([`crate::hash`]).
    fn hash_5tuple(seed: u64, src: Self, dst: Self, sport: u16, dport: u16, proto: u8) -> u64;
}

impl Addr for [u8; 4] {
    const LEN: usize = 4;
    const V6: bool = false;
    #[inline(always)]
    fn from_raw(raw: &[u8; 16]) -> Self {
        [raw[0], raw[1], raw[2], raw[3]]
    }
    #[inline(always)]
    fn to_raw(self) -> [u8; 16] {
        let mut r = [0u8; 16];
        r[..4].copy_from_slice(&self);
        r
    }
    fn of_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(a) => Some(a.octets()),
            IpAddr::V6(_) => None,
        }
    }
    #[inline(always)]
    fn hash_5tuple(seed: u64, src: Self, dst: Self, sport: u16, dport: u16, proto: u8) -> u64 {
        hash_v4_5tuple(seed, src, dst, sport, dport, proto)
    }
}

impl Addr for [u8; 16] {
    const LEN: usize = 16;
    const V6: bool = true;
    #[inline(always)]
    fn from_raw(raw: &[u8; 16]) -> Self {
        *raw
    }
    #[inline(always)]
    fn to_raw(self) -> [u8; 16] {
        self
    }
    fn of_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(_) => None,
            IpAddr::V6(a) => Some(a.octets()),
        }
    }
    #[inline(always)]
    fn hash_5tuple(seed: u64, src: Self, dst: Self, sport: u16, dport: u16, proto: u8) -> u64 {
        hash_v6_5tuple(seed, src, dst, sport, dport, proto)
    }
}

/// A flow's 5-tuple, packed (alignment 1): 13 bytes for IPv4, 37 for IPv6, so that an IPv4
/// entry with a 14-byte value still fits a 32-byte slot. Addresses are as on the wire; ports
/// are numbers (host order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C, packed)]
pub struct Key<A> {
    /// Source address.
    pub src: A,
    /// Destination address.
    pub dst: A,
    /// Source port (or ICMP identifier; 0 when the protocol has none).
    pub sport: u16,
    /// Destination port (0 when the protocol has none).
    pub dport: u16,
    /// IP protocol number (6 TCP, 17 UDP, ...).
    pub proto: u8,
}

/// An IPv4 flow key.
pub type V4Key = Key<[u8; 4]>;
/// An IPv6 flow key.
pub type V6Key = Key<[u8; 16]>;

impl<A: Addr> Key<A> {
    /// The key of `src:sport -> dst:dport` over protocol `proto`.
    #[inline(always)]
    pub fn new(src: A, dst: A, sport: u16, dport: u16, proto: u8) -> Self {
        Key {
            src,
            dst,
            sport,
            dport,
            proto,
        }
    }
}

impl<A: Addr> FlowKey for Key<A> {
    #[inline]
    fn flow_hash(&self, seed: u64) -> u64 {
        A::hash_5tuple(seed, self.src, self.dst, self.sport, self.dport, self.proto)
    }
}

/// What the table knows of a flow's protocol state; selects its idle timeout in [`Timeouts`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowState {
    /// TCP, SYN seen, handshake not complete.
    TcpSynSent = 0,
    /// TCP, handshake complete.
    TcpEstablished = 1,
    /// TCP, FIN or RST seen.
    TcpClosing = 2,
    /// UDP.
    Udp = 3,
    /// Any other protocol (ICMP echo, ...).
    Other = 4,
}

impl FlowState {
    /// Every state, in `repr` order.
    pub const ALL: [FlowState; 5] = [
        FlowState::TcpSynSent,
        FlowState::TcpEstablished,
        FlowState::TcpClosing,
        FlowState::Udp,
        FlowState::Other,
    ];

    /// A stable lower-case name for the admin API and metrics labels.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            FlowState::TcpSynSent => "tcp_syn_sent",
            FlowState::TcpEstablished => "tcp_established",
            FlowState::TcpClosing => "tcp_closing",
            FlowState::Udp => "udp",
            FlowState::Other => "other",
        }
    }
}

/// Idle timeouts per [`FlowState`], in milliseconds. An entry expires once it has not been seen
/// for its state's timeout (0: at once). Values above `i32::MAX` are clamped to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// [`FlowState::TcpSynSent`]; default 5 s (a handshake that takes longer is retried by the
    /// client with a new SYN, which re-creates the entry; short keeps SYN floods from filling
    /// the table).
    pub tcp_syn_ms: u32,
    /// [`FlowState::TcpEstablished`]; default 300 s (idle established connections; longer-lived
    /// idle connections should use keepalives, as behind any cloud load balancer).
    pub tcp_established_ms: u32,
    /// [`FlowState::TcpClosing`]; default 60 s: lets the last FIN/ACK exchange and its
    /// retransmissions through, and keeps a closed NAT flow's port from being given to a new
    /// flow towards the same backend while the backend may still hold the old connection in
    /// TIME_WAIT (60 s on Linux).
    pub tcp_closing_ms: u32,
    /// [`FlowState::Udp`]; default 30 s (as common NAT and conntrack defaults).
    pub udp_ms: u32,
    /// [`FlowState::Other`]; default 30 s.
    pub other_ms: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn_ms: 5_000,
            tcp_established_ms: 300_000,
            tcp_closing_ms: 60_000,
            udp_ms: 30_000,
            other_ms: 30_000,
        }
    }
}

impl Timeouts {
    /// The timeout of `state`, in milliseconds.
    #[must_use]
    pub fn get(&self, state: FlowState) -> u32 {
        self.as_array()[state as usize]
    }

    /// The timeouts indexed by `FlowState as usize`, clamped to `i32::MAX`.
    pub(super) fn as_array(&self) -> [u32; 5] {
        [
            self.tcp_syn_ms,
            self.tcp_established_ms,
            self.tcp_closing_ms,
            self.udp_ms,
            self.other_ms,
        ]
        .map(|t| t.min(i32::MAX as u32))
    }
}
