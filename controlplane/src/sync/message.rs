//! # Sync messages on the wire
//!
//! One UDP datagram, signed with HMAC-SHA256 over everything before the tag under the fleet's
//! shared key:
//!
//! ```text
//! 0      4    5      6   7       8          16        24           32         32+n
//! "SLSY" | v1 | kind | n | count | boot u64 | seq u64 | unix_ms u64 | host (n) | records | HMAC
//! ```
//!
//! `kind` is [`Kind`]: flow records, a bulk-transfer request, or the end of a bulk transfer.
//! `boot` is random per process start and `seq` counts up within it; with `unix_ms` they let
//! the receiver drop replays ([`Replay`]). A record (flow update) is, in network order:
//!
//! ```text
//! flags (bit 0 IPv6, bit 1 NAT, bit 2 SYN proxy) | proto | state | nat_state | client_port |
//! vip_port | backend_port | nat_port | remaining_ms u32 | nat_remaining_ms u32 |
//! client_mac (6) | client | vip | backend | nat address (NAT only) |
//! proxy seq u32, backend wscale | handshake << 7 (SYN proxy only)
//! ```
//!
//! Addresses take 4 or 16 bytes by family: 42 bytes for an IPv4 NAT flow, 90 for an IPv6 one,
//! 5 more for a flow the SYN proxy opened; a datagram carries up to [`MAX_PAYLOAD`] bytes of
//! records. The SYN proxy's part came with version 2: a datagram that carries such a record
//! is version 2, any other version 1, and both are read, so a host of the previous version
//! still takes every record it can read (it drops a version-2 datagram whole).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use sluice_dataplane::conntrack::FlowState;
use sluice_dataplane::pipeline::{SavedFlow, SavedNat, SavedProxy};

const MAGIC: &[u8; 4] = b"SLSY";
/// The version of a datagram with a SYN-proxied flow, and the newest read.
const VERSION: u8 = 2;
/// The version of any other datagram.
const VERSION_1: u8 = 1;
const HEADER: usize = 32;
const TAG: usize = 32;
/// Bytes of records per datagram at most (the datagram stays under a 1500-byte MTU).
pub const MAX_PAYLOAD: usize = 1300;
/// The longest datagram.
pub const MAX_LEN: usize = HEADER + 63 + MAX_PAYLOAD + TAG;

/// What a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Flow records.
    Flows = 1,
    /// "Send me all your flows": a starting host's bulk-transfer request.
    BulkRequest = 2,
    /// "That was all of them": the end of a bulk transfer.
    BulkDone = 3,
}

/// A message's header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// What it carries.
    pub kind: Kind,
    /// The sender's `sync.host`.
    pub host: String,
    /// Random per start of the sender.
    pub boot: u64,
    /// Counts up from 1 within one boot.
    pub seq: u64,
    /// The sender's clock, ms since the Unix epoch.
    pub unix_ms: u64,
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Too short, wrong magic or version, bad host name or records.
    #[error("malformed")]
    Malformed,
    /// The HMAC does not match: another key, or altered.
    #[error("bad_key")]
    BadKey,
}

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// The encoded length of `f`.
pub fn record_len(f: &SavedFlow) -> usize {
    let a = if f.client.is_ipv6() { 16 } else { 4 };
    26 + a * if f.nat.is_some() { 4 } else { 3 } + if f.proxy.is_some() { 5 } else { 0 }
}

fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
}

fn state_code(s: FlowState) -> u8 {
    FlowState::ALL.iter().position(|x| *x == s).unwrap_or(0) as u8
}

/// Appends `f`'s record to `out`, a message [`begin`] started (made version 2 if `f` carries
/// the SYN proxy's state).
pub fn put_record(out: &mut Vec<u8>, f: &SavedFlow) {
    let v6 = f.client.is_ipv6();
    let flags =
        u8::from(v6) | (u8::from(f.nat.is_some()) << 1) | (u8::from(f.proxy.is_some()) << 2);
    if f.proxy.is_some() && out.len() > 4 {
        out[4] = VERSION;
    }
    let n = f.nat;
    out.extend_from_slice(&[
        flags,
        f.proto,
        state_code(f.state),
        n.map_or(0, |n| state_code(n.state)),
    ]);
    for p in [
        f.client_port,
        f.vip_port,
        f.backend_port,
        n.map_or(0, |n| n.port),
    ] {
        out.extend_from_slice(&p.to_be_bytes());
    }
    out.extend_from_slice(&f.remaining_ms.to_be_bytes());
    out.extend_from_slice(&n.map_or(0, |n| n.remaining_ms).to_be_bytes());
    out.extend_from_slice(&n.map_or([0; 6], |n| n.client_mac));
    put_ip(out, f.client);
    put_ip(out, f.vip);
    put_ip(out, f.backend);
    if let Some(n) = n {
        put_ip(out, n.addr);
    }
    if let Some(p) = f.proxy {
        out.extend_from_slice(&p.seq.to_be_bytes());
        out.push(p.flags_byte());
    }
}

/// Starts a message: the header of `h` (count 0, patched by [`finish`]).
pub fn begin(out: &mut Vec<u8>, h: &Header) {
    out.clear();
    let name = &h.host.as_bytes()[..h.host.len().min(63)];
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[VERSION_1, h.kind as u8, name.len() as u8, 0]);
    out.extend_from_slice(&h.boot.to_be_bytes());
    out.extend_from_slice(&h.seq.to_be_bytes());
    out.extend_from_slice(&h.unix_ms.to_be_bytes());
    out.extend_from_slice(name);
}

/// Ends a message of `count` records: patches the count and appends the HMAC under `key`.
pub fn finish(out: &mut Vec<u8>, count: u8, key: &[u8]) {
    out[7] = count;
    let mut m = mac(key);
    m.update(out);
    let tag = m.finalize().into_bytes();
    out.extend_from_slice(&tag);
}

/// A byte reader over a record area.
struct Rd<'a>(&'a [u8]);

impl Rd<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Invalid> {
        if self.0.len() < n {
            return Err(Invalid::Malformed);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, Invalid> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Invalid> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Invalid> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn ip(&mut self, v6: bool) -> Result<IpAddr, Invalid> {
        Ok(if v6 {
            let b: [u8; 16] = self.take(16)?.try_into().map_err(|_| Invalid::Malformed)?;
            IpAddr::V6(Ipv6Addr::from(b))
        } else {
            let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| Invalid::Malformed)?;
            IpAddr::V4(Ipv4Addr::from(b))
        })
    }
    fn state(&mut self) -> Result<FlowState, Invalid> {
        FlowState::ALL
            .get(usize::from(self.u8()?))
            .copied()
            .ok_or(Invalid::Malformed)
    }
}

/// One record of a message of `version`.
fn record(r: &mut Rd<'_>, version: u8) -> Result<SavedFlow, Invalid> {
    let flags = r.u8()?;
    let known = if version == VERSION_1 { 3 } else { 7 };
    if flags & !known != 0 {
        return Err(Invalid::Malformed);
    }
    let (v6, nat, proxied) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
    let proto = r.u8()?;
    let state = r.state()?;
    let nat_state = r.state()?;
    let (client_port, vip_port, backend_port, nat_port) = (r.u16()?, r.u16()?, r.u16()?, r.u16()?);
    let remaining_ms = r.u32()?;
    let nat_remaining_ms = r.u32()?;
    let client_mac: [u8; 6] = r.take(6)?.try_into().map_err(|_| Invalid::Malformed)?;
    let (client, vip, backend) = (r.ip(v6)?, r.ip(v6)?, r.ip(v6)?);
    let nat = if nat {
        Some(SavedNat {
            addr: r.ip(v6)?,
            port: nat_port,
            client_mac,
            state: nat_state,
            remaining_ms: nat_remaining_ms,
        })
    } else {
        None
    };
    let proxy = if proxied {
        let seq = r.u32()?;
        Some(SavedProxy::from_parts(seq, r.u8()?))
    } else {
        None
    };
    Ok(SavedFlow {
        worker: 0,
        client,
        client_port,
        vip,
        vip_port,
        proto,
        backend,
        backend_port,
        state,
        remaining_ms,
        nat,
        proxy,
    })
}

/// Checks `d`'s HMAC under `key` and decodes it; the records go to `out`.
pub fn decode(d: &[u8], key: &[u8], out: &mut Vec<SavedFlow>) -> Result<Header, Invalid> {
    if d.len() < HEADER + TAG || &d[..4] != MAGIC || (d[4] != VERSION && d[4] != VERSION_1) {
        return Err(Invalid::Malformed);
    }
    let (body, tag) = d.split_at(d.len() - TAG);
    let mut m = mac(key);
    m.update(body);
    m.verify_slice(tag).map_err(|_| Invalid::BadKey)?;
    let kind = match d[5] {
        1 => Kind::Flows,
        2 => Kind::BulkRequest,
        3 => Kind::BulkDone,
        _ => return Err(Invalid::Malformed),
    };
    let n = usize::from(d[6]);
    let count = usize::from(d[7]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[o..o + 8]);
        u64::from_be_bytes(b)
    };
    if body.len() < HEADER + n {
        return Err(Invalid::Malformed);
    }
    let host = std::str::from_utf8(&body[HEADER..HEADER + n])
        .map_err(|_| Invalid::Malformed)?
        .to_owned();
    let mut r = Rd(&body[HEADER + n..]);
    let start = out.len();
    for _ in 0..count {
        match record(&mut r, d[4]) {
            Ok(f) => out.push(f),
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        }
    }
    if !r.0.is_empty() {
        out.truncate(start);
        return Err(Invalid::Malformed);
    }
    Ok(Header {
        kind,
        host,
        boot: u64_at(8),
        seq: u64_at(16),
        unix_ms: u64_at(24),
    })
}

/// Replay protection for one peer: a message is new if its seq was not seen in a 64-message
/// window of the peer's current boot, or if it starts a new boot and is no older (by the
/// sender's clock) than the last message accepted, so an old boot's messages cannot be played
/// again after a restart. The caller also drops messages outside the allowed clock skew.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    boot: u64,
    top: u64,
    seen: u64,
    last_ms: u64,
}

impl Replay {
    /// Whether `(boot, seq)` sent at `unix_ms` is new; records it if so.
    pub fn accept(&mut self, boot: u64, seq: u64, unix_ms: u64) -> bool {
        if boot != self.boot {
            if unix_ms < self.last_ms {
                return false;
            }
            *self = Replay {
                boot,
                top: seq,
                seen: 1,
                last_ms: unix_ms,
            };
            return true;
        }
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.top = seq;
        } else {
            let back = self.top - seq;
            if back >= 64 || self.seen & (1 << back) != 0 {
                return false;
            }
            self.seen |= 1 << back;
        }
        self.last_ms = self.last_ms.max(unix_ms);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(v6: bool, nat: bool) -> SavedFlow {
        let ip = |n: u8| -> IpAddr {
            if v6 {
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(n)))
            } else {
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
            }
        };
        SavedFlow {
            worker: 0,
            client: ip(1),
            client_port: 40000,
            vip: ip(2),
            vip_port: 80,
            proto: 6,
            backend: ip(3),
            backend_port: 8080,
            state: FlowState::TcpEstablished,
            remaining_ms: 12345,
            nat: nat.then(|| SavedNat {
                addr: ip(4),
                port: 23456,
                client_mac: [2, 0, 0, 0, 0, 9],
                state: FlowState::TcpClosing,
                remaining_ms: 999,
            }),
            proxy: None,
        }
    }

    fn header(kind: Kind, seq: u64) -> Header {
        Header {
            kind,
            host: "h1".into(),
            boot: 7,
            seq,
            unix_ms: 1000,
        }
    }

    #[test]
    fn records_of_both_families_round_trip() {
        let flows = [
            flow(false, true),
            flow(true, true),
            flow(false, false),
            flow(true, false),
        ];
        let mut out = Vec::new();
        begin(&mut out, &header(Kind::Flows, 3));
        for f in &flows {
            let before = out.len();
            put_record(&mut out, f);
            assert_eq!(out.len() - before, record_len(f));
        }
        finish(&mut out, flows.len() as u8, b"0123456789abcdef");
        let mut got = Vec::new();
        let h = decode(&out, b"0123456789abcdef", &mut got).unwrap();
        assert_eq!(h, header(Kind::Flows, 3));
        assert_eq!(got, flows);
    }

    /// A SYN-proxied flow's record carries its offset, window scale and handshake flag and
    /// makes its datagram version 2; a datagram without one stays version 1 (what a host of
    /// the previous version reads), and a version-1 datagram may not use the proxy's bit.
    #[test]
    fn proxied_records_round_trip_in_version_2() {
        let key = b"0123456789abcdef";
        let plain = flow(false, true);
        let proxied = SavedFlow {
            proxy: Some(SavedProxy {
                seq: 0xdead_beef,
                backend_wscale: 9,
                handshake: false,
            }),
            ..plain
        };
        let waiting = SavedFlow {
            proxy: Some(SavedProxy {
                seq: 77,
                backend_wscale: 0,
                handshake: true,
            }),
            ..flow(true, true)
        };
        let mut out = Vec::new();
        begin(&mut out, &header(Kind::Flows, 1));
        put_record(&mut out, &plain);
        assert_eq!(out[4], 1, "no proxied record: version 1");
        for f in [&proxied, &waiting] {
            let before = out.len();
            put_record(&mut out, f);
            assert_eq!(out.len() - before, record_len(f));
        }
        assert_eq!(out[4], 2);
        finish(&mut out, 3, key);
        let mut got = Vec::new();
        decode(&out, key, &mut got).unwrap();
        assert_eq!(got, vec![plain, proxied, waiting]);
        // The same records under version 1: the proxy's bit is unknown there.
        let mut old = out[..out.len() - TAG].to_vec();
        old[4] = 1;
        finish(&mut old, 3, key);
        assert_eq!(decode(&old, key, &mut Vec::new()), Err(Invalid::Malformed));
    }

    #[test]
    fn another_key_or_a_flipped_bit_is_refused() {
        let mut out = Vec::new();
        begin(&mut out, &header(Kind::Flows, 1));
        put_record(&mut out, &flow(false, true));
        finish(&mut out, 1, b"0123456789abcdef");
        let mut got = Vec::new();
        assert_eq!(
            decode(&out, b"fedcba9876543210", &mut got),
            Err(Invalid::BadKey)
        );
        let mut bad = out.clone();
        bad[40] ^= 1;
        assert_eq!(
            decode(&bad, b"0123456789abcdef", &mut got),
            Err(Invalid::BadKey)
        );
        assert_eq!(
            decode(&out[..20], b"0123456789abcdef", &mut got),
            Err(Invalid::Malformed)
        );
        assert!(got.is_empty());
    }

    #[test]
    fn a_signed_message_with_a_wrong_count_is_malformed() {
        let mut out = Vec::new();
        begin(&mut out, &header(Kind::Flows, 1));
        put_record(&mut out, &flow(false, true));
        finish(&mut out, 2, b"0123456789abcdef");
        let mut got = Vec::new();
        assert_eq!(
            decode(&out, b"0123456789abcdef", &mut got),
            Err(Invalid::Malformed)
        );
        assert!(got.is_empty());
    }

    #[test]
    fn replays_are_refused_within_and_below_the_window() {
        let mut r = Replay::default();
        assert!(r.accept(5, 1, 100));
        assert!(r.accept(5, 3, 101));
        assert!(!r.accept(5, 3, 101), "same seq twice");
        assert!(r.accept(5, 2, 100), "late but unseen");
        assert!(!r.accept(5, 2, 100));
        assert!(r.accept(5, 100, 200));
        assert!(!r.accept(5, 30, 150), "below the window");
        assert!(r.accept(6, 1, 300), "a new boot starts over");
        assert!(!r.accept(6, 1, 300));
        assert!(!r.accept(5, 101, 201), "the old boot, played again");
    }
}
