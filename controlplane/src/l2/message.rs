//! # The heartbeat on the wire
//!
//! One UDP datagram per host and interval, in the spirit of a VRRP advertisement but
//! authenticated with HMAC-SHA256 over the whole message under the fleet's shared key:
//!
//! ```text
//! 0      4    5     6        8          16         24           32        32+n   32+n+32
//! "SLL2" | v1 | n  | flags=0 | boot u64 | seq u64 | unix_ms u64 | name (n) | HMAC-SHA256
//! ```
//!
//! `boot` is random per process start, `seq` counts up within it, and `unix_ms` is the sender's
//! clock: together they let a receiver drop replays (an old `seq` of a known boot, or a
//! message older than the allowed clock skew, whatever its boot).
use hmac::{Hmac, Mac};
use sha2::Sha256;

const MAGIC: &[u8; 4] = b"SLL2";
const VERSION: u8 = 1;
const HEADER: usize = 32;
const TAG: usize = 32;
/// The longest heartbeat (a 63-byte host name).
pub const MAX_LEN: usize = HEADER + 63 + TAG;

/// A heartbeat's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender's `l2.host`.
    pub host: String,
    /// Random per start of the sender's process.
    pub boot: u64,
    /// Counts up from 1 within one `boot`.
    pub seq: u64,
    /// The sender's clock, milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

impl Heartbeat {
    /// Heartbeat `seq` of `host`'s boot `boot`, stamped with this host's clock now.
    pub fn now(host: &str, boot: u64, seq: u64) -> Heartbeat {
        Heartbeat {
            host: host.to_owned(),
            boot,
            seq,
            unix_ms: unix_ms(),
        }
    }
}

/// Milliseconds since the Unix epoch by this host's clock.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why a datagram is not a valid heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Too short, wrong magic or version, bad name.
    Malformed,
    /// The HMAC does not match: another key, or altered.
    BadKey,
}

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// Writes `hb` signed with `key` into `out`; returns the length.
pub fn encode(hb: &Heartbeat, key: &[u8], out: &mut [u8; MAX_LEN]) -> usize {
    let name = &hb.host.as_bytes()[..hb.host.len().min(63)];
    out[..4].copy_from_slice(MAGIC);
    out[4] = VERSION;
    out[5] = name.len() as u8;
    out[6..8].copy_from_slice(&[0, 0]);
    out[8..16].copy_from_slice(&hb.boot.to_be_bytes());
    out[16..24].copy_from_slice(&hb.seq.to_be_bytes());
    out[24..32].copy_from_slice(&hb.unix_ms.to_be_bytes());
    let end = HEADER + name.len();
    out[HEADER..end].copy_from_slice(name);
    let mut m = mac(key);
    m.update(&out[..end]);
    out[end..end + TAG].copy_from_slice(&m.finalize().into_bytes());
    end + TAG
}

/// Checks and reads a datagram.
pub fn decode(buf: &[u8], key: &[u8]) -> Result<Heartbeat, Invalid> {
    if buf.len() < HEADER + 1 + TAG || &buf[..4] != MAGIC || buf[4] != VERSION {
        return Err(Invalid::Malformed);
    }
    let n = usize::from(buf[5]);
    if n == 0 || buf.len() != HEADER + n + TAG {
        return Err(Invalid::Malformed);
    }
    let end = HEADER + n;
    let mut m = mac(key);
    m.update(&buf[..end]);
    m.verify_slice(&buf[end..]).map_err(|_| Invalid::BadKey)?;
    let host = std::str::from_utf8(&buf[HEADER..end])
        .map_err(|_| Invalid::Malformed)?
        .to_owned();
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[i..i + 8]);
        u64::from_be_bytes(b)
    };
    Ok(Heartbeat {
        host,
        boot: u64_at(8),
        seq: u64_at(16),
        unix_ms: u64_at(24),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb() -> Heartbeat {
        Heartbeat {
            host: "h1".into(),
            boot: 0x0102_0304_0506_0708,
            seq: 42,
            unix_ms: 1_796_000_000_000,
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let mut b = [0xa5u8; MAX_LEN];
        let n = encode(&hb(), b"0123456789abcdef", &mut b);
        assert_eq!(n, 32 + 2 + 32);
        assert_eq!(&b[..6], b"SLL2\x01\x02");
        assert_eq!(&b[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[32..34], b"h1");
        assert_eq!(decode(&b[..n], b"0123456789abcdef"), Ok(hb()));
    }

    #[test]
    fn wrong_key_and_any_altered_byte_are_refused() {
        let mut b = [0u8; MAX_LEN];
        let n = encode(&hb(), b"0123456789abcdef", &mut b);
        assert_eq!(decode(&b[..n], b"0123456789abcdeX"), Err(Invalid::BadKey));
        for i in 8..n {
            let mut c = b;
            c[i] ^= 1;
            assert!(decode(&c[..n], b"0123456789abcdef").is_err(), "byte {i}");
        }
    }

    #[test]
    fn malformed() {
        let mut b = [0u8; MAX_LEN];
        let n = encode(&hb(), b"0123456789abcdef", &mut b);
        let k = b"0123456789abcdef";
        assert_eq!(decode(&b[..n - 1], k), Err(Invalid::Malformed));
        assert_eq!(decode(&b[..10], k), Err(Invalid::Malformed));
        let mut c = b;
        c[0] = b'X';
        assert_eq!(decode(&c[..n], k), Err(Invalid::Malformed));
        let mut c = b;
        c[4] = 2;
        assert_eq!(decode(&c[..n], k), Err(Invalid::Malformed));
    }
}
