//! Stable 64-bit hashing for flow keys, backend ids and table indices.
//!
//! # Design
//!
//! Several Sluice hosts behind router ECMP must pick the same backend for the same flow, so the
//! hash that feeds Maglev must give the same value on every host, every build and every Rust
//! release. `std`'s `RandomState` is randomised per process and `DefaultHasher`'s algorithm is
//! explicitly unspecified, so neither may be used. This module defines its own algorithm, written
//! out here so that it can be re-implemented elsewhere (e.g. in a test harness) bit for bit:
//!
//! - **Words.** Input is a sequence of `u64` words. [`hash_bytes`] reads bytes as little-endian
//!   words (the last one zero-padded); [`hash_v4_5tuple`] and [`hash_v6_5tuple`] build words from
//!   the *numeric* values of addresses (big-endian, as on the wire) and ports, so the result does
//!   not depend on the host's byte order.
//! - **Absorb.** Words are taken two at a time: with state `s` (initially `seed ^ P0`),
//!   `s = fold_mul(a ^ s ^ P1, b ^ s ^ P2)` where `fold_mul` multiplies two `u64`s into a
//!   `u128` and XORs its halves (the "mum" step of wyhash). An odd last word is paired with 0.
//!   The state enters both operands, so an input word cannot zero the product without knowing
//!   the seed.
//! - **Finish.** `mix64(s ^ len * P3)`, where `len` is the input length (words for
//!   [`hash_u64s`], bytes for [`hash_bytes`]) and [`mix64`] is MurmurHash3's 64-bit finaliser
//!   (`fmix64`), a bijection with full avalanche.
//!
//! A 5-tuple of IPv4 fits in two words, so hashing it costs one 64x64->128 multiply and the
//! finaliser (two more multiplies): a few nanoseconds, no loop, no branch.
//!
//! This is not a cryptographic hash. Keep the seed out of public view: with it, an attacker can
//! craft flows that collide in a conntrack bucket or land on one backend.
//!
//! **Changing anything here changes which backend every flow maps to.** The unit tests pin
//! known values so that such a change cannot go unnoticed; hosts behind the same ECMP group must
//! run the same algorithm.

/// First constant (the wyhash secrets: odd, balanced bit counts).
const P0: u64 = 0xa076_1d64_78bd_642f;
/// Second constant, XORed into the left operand of each absorb step.
const P1: u64 = 0xe703_7ed1_a0b4_28db;
/// Third constant, XORed into the right operand of each absorb step.
const P2: u64 = 0x8ebc_6af0_9c88_c6e3;
/// Fourth constant, multiplies the input length in the finish step.
const P3: u64 = 0x5899_65cc_7537_4cc3;

/// Multiplies `a` and `b` into 128 bits and XORs the high half into the low half.
///
/// The building block of the hash: every output bit depends on every input bit of both
/// operands (through the high half). Not a bijection; use [`mix64`] when one is needed.
#[inline(always)]
#[must_use]
pub fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// MurmurHash3's 64-bit finaliser (`fmix64`): a bijection on `u64` in which every input bit
/// flips each output bit with probability close to 1/2.
///
/// Useful on its own to derive further well-spread values from a hash, e.g. the rehash probes
/// of [`crate::maglev::MaglevTable::lookup_live`]. Note `mix64(0) == 0`.
#[inline(always)]
#[must_use]
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// One absorb step: folds the words `a` and `b` into the state `s`.
#[inline(always)]
fn absorb(s: u64, a: u64, b: u64) -> u64 {
    fold_mul(a ^ s ^ P1, b ^ s ^ P2)
}

/// The finish step: folds in the input length and applies the finaliser.
#[inline(always)]
fn finish(s: u64, len: u64) -> u64 {
    mix64(s ^ len.wrapping_mul(P3))
}

/// Hashes two words; equal to `hash_u64s(seed, &[a, b])`, without the loop.
///
/// The fast path for keys that fit in 16 bytes (an IPv4 5-tuple).
#[inline]
#[must_use]
pub fn hash_2x64(seed: u64, a: u64, b: u64) -> u64 {
    finish(absorb(seed ^ P0, a, b), 2)
}

/// Hashes a sequence of words. The length is part of the input: `[x]` and `[x, 0]` differ.
#[inline]
#[must_use]
pub fn hash_u64s(seed: u64, words: &[u64]) -> u64 {
    let mut s = seed ^ P0;
    let mut pairs = words.chunks_exact(2);
    for pair in &mut pairs {
        s = absorb(s, pair[0], pair[1]);
    }
    if let [last] = pairs.remainder() {
        s = absorb(s, *last, 0);
    }
    finish(s, words.len() as u64)
}

/// Hashes a byte string, read as little-endian words, 16 bytes per absorb step, the last step
/// zero-padded. The length in bytes is part of the input.
///
/// Used for backend ids when building Maglev tables; fast enough for the hot path too, but
/// prefer the fixed-width helpers there.
#[must_use]
pub fn hash_bytes(seed: u64, data: &[u8]) -> u64 {
    let mut s = seed ^ P0;
    let mut chunks = data.chunks_exact(16);
    for chunk in &mut chunks {
        let (a, b) = chunk.split_at(8);
        s = absorb(s, le_u64(a), le_u64(b));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut buf = [0u8; 16];
        buf[..rest.len()].copy_from_slice(rest);
        let (a, b) = buf.split_at(8);
        s = absorb(s, le_u64(a), le_u64(b));
    }
    finish(s, data.len() as u64)
}

/// Reads 8 bytes as a little-endian `u64`. `bytes` is always exactly 8 long here.
#[inline(always)]
fn le_u64(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(bytes);
    u64::from_le_bytes(w)
}

/// Hashes an IPv4 5-tuple (addresses as on the wire, ports as numbers).
///
/// Words: `a = src << 32 | dst` (addresses read big-endian, i.e. `10.0.0.1` is `0x0a000001`),
/// `b = sport << 32 | dport << 16 | proto`; then [`hash_2x64`]. Not symmetric: the reply
/// direction of a flow hashes differently.
#[inline]
#[must_use]
pub fn hash_v4_5tuple(
    seed: u64,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    proto: u8,
) -> u64 {
    let a = (u64::from(u32::from_be_bytes(src)) << 32) | u64::from(u32::from_be_bytes(dst));
    let b = (u64::from(sport) << 32) | (u64::from(dport) << 16) | u64::from(proto);
    hash_2x64(seed, a, b)
}

/// Hashes an IPv6 5-tuple (addresses as on the wire, ports as numbers).
///
/// Words: the high and low halves of `src`, then of `dst` (each read big-endian), then
/// `sport << 32 | dport << 16 | proto`; then [`hash_u64s`] over those five words.
#[inline]
#[must_use]
pub fn hash_v6_5tuple(
    seed: u64,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    proto: u8,
) -> u64 {
    let s = u128::from_be_bytes(src);
    let d = u128::from_be_bytes(dst);
    let words = [
        (s >> 64) as u64,
        s as u64,
        (d >> 64) as u64,
        d as u64,
        (u64::from(sport) << 32) | (u64::from(dport) << 16) | u64::from(proto),
    ];
    hash_u64s(seed, &words)
}

/// SipHash-2-4 (Aumasson and Bernstein, 2012) of `data` under the 128-bit key `(k0, k1)`: a
/// keyed MAC, for values an attacker must not forge without the key (the SYN proxy's
/// cookies), where the seeded hash above, which is not cryptographic, would not do. The
/// per-packet path calls it only for a SYN or an unknown ACK to a SYN-proxied frontend.
#[must_use]
pub fn siphash24(k0: u64, k1: u64, data: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let m = le_u64(c);
        v[3] ^= m;
        sip_round(&mut v);
        sip_round(&mut v);
        v[0] ^= m;
    }
    let rest = chunks.remainder();
    let mut last = [0u8; 8];
    last[..rest.len()].copy_from_slice(rest);
    let m = u64::from_le_bytes(last) | ((data.len() as u64 & 0xff) << 56);
    v[3] ^= m;
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^= m;
    v[2] ^= 0xff;
    for _ in 0..4 {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// One SipRound.
#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SipHash-2-4 against the reference vector (key 00..0f, message 00..0e) and std's own
    /// SipHash-2-4 on inputs of every length up to 64 bytes.
    #[test]
    #[allow(deprecated)] // std's SipHasher is the reference here, not used in the code.
    fn siphash_matches_reference() {
        use std::hash::Hasher;
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(k0, k1, &msg), 0xa129_ca61_49be_45e5);
        let mut st = 7u64;
        for len in 0..=64 {
            let data: Vec<u8> = (0..len).map(|_| rng(&mut st) as u8).collect();
            let (a, b) = (rng(&mut st), rng(&mut st));
            let mut h = std::hash::SipHasher::new_with_keys(a, b);
            h.write(&data);
            assert_eq!(siphash24(a, b, &data), h.finish(), "length {len}");
        }
    }

    /// splitmix64: a deterministic source of test inputs.
    fn rng(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(*state)
    }

    #[test]
    fn pinned_values() {
        // If one of these changes, every flow on an upgraded host moves to another backend,
        // and hosts of one ECMP group disagree until all run the same version. Bump on purpose
        // only, and say so in the release notes.
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), PINNED[0]);
        assert_eq!(hash_bytes(0, b""), PINNED[1]);
        assert_eq!(hash_bytes(0, b"10.0.0.1:8080"), PINNED[2]);
        assert_eq!(hash_bytes(42, b"0123456789abcdef0123"), PINNED[3]);
        assert_eq!(hash_u64s(7, &[1, 2, 3]), PINNED[4]);
        assert_eq!(
            hash_v4_5tuple(0, [10, 0, 0, 1], [192, 0, 2, 10], 40000, 80, 6),
            PINNED[5]
        );
        let a: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let b: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        assert_eq!(hash_v6_5tuple(0, a, b, 40000, 443, 17), PINNED[6]);
    }

    const PINNED: [u64; 7] = [
        0xb456_bcfc_34c2_cb2c, // fmix64(1), MurmurHash3's published finaliser
        0x05f8_0708_adb6_c5a9,
        0x0ad2_635d_78f1_b0c2,
        0x9b8a_188b_01c4_dd06,
        0xaaa1_7500_a960_b98b,
        0x0ec8_9c91_c46c_9d69,
        0x5cd6_b9fa_0f1d_a669,
    ];

    #[test]
    fn fold_mul_is_the_folded_product() {
        assert_eq!(fold_mul(u64::MAX, u64::MAX), 1 ^ (u64::MAX - 1));
        assert_eq!(fold_mul(1 << 63, 4), 2);
        assert_eq!(fold_mul(3, 5), 15);
    }

    #[test]
    fn fixed_width_helpers_match_the_general_ones() {
        let mut st = 1;
        for _ in 0..1000 {
            let (seed, a, b) = (rng(&mut st), rng(&mut st), rng(&mut st));
            assert_eq!(hash_2x64(seed, a, b), hash_u64s(seed, &[a, b]));
        }
        let v4 = hash_v4_5tuple(9, [1, 2, 3, 4], [5, 6, 7, 8], 0x1122, 0x3344, 6);
        assert_eq!(v4, hash_u64s(9, &[0x0102_0304_0506_0708, 0x1122_3344_0006]));
    }

    #[test]
    fn length_and_seed_matter() {
        assert_ne!(hash_u64s(0, &[5]), hash_u64s(0, &[5, 0]));
        assert_ne!(hash_bytes(0, b"a"), hash_bytes(0, b"a\0"));
        assert_ne!(hash_bytes(0, &[0; 16]), hash_bytes(0, &[0; 17]));
        assert_ne!(hash_bytes(0, b"x"), hash_bytes(1, b"x"));
        assert_ne!(hash_u64s(0, &[]), hash_u64s(1, &[]));
    }

    /// Flipping one input bit must flip each output bit with probability close to 1/2.
    fn avalanche(bits: usize, f: impl Fn(&[u64; 3]) -> u64) {
        const SAMPLES: u32 = 1000;
        let mut st = 0x5eed;
        let mut flips = vec![[0u32; 64]; bits];
        for _ in 0..SAMPLES {
            let input = [rng(&mut st), rng(&mut st), rng(&mut st)];
            let base = f(&input);
            for (bit, counts) in flips.iter_mut().enumerate() {
                let mut x = input;
                x[bit / 64] ^= 1 << (bit % 64);
                let diff = base ^ f(&x);
                for (o, c) in counts.iter_mut().enumerate() {
                    *c += (diff >> o) as u32 & 1;
                }
            }
        }
        let mut total = 0u64;
        for (bit, counts) in flips.iter().enumerate() {
            for (o, &c) in counts.iter().enumerate() {
                let p = f64::from(c) / f64::from(SAMPLES);
                // 1000 samples: sd 0.016; 0.1 is six of them.
                assert!(
                    (0.4..=0.6).contains(&p),
                    "input bit {bit} -> output bit {o}: p = {p}"
                );
                total += u64::from(c);
            }
        }
        let mean = total as f64 / (bits as f64 * f64::from(SAMPLES));
        assert!((31.5..=32.5).contains(&mean), "mean flipped bits {mean}");
    }

    #[test]
    fn avalanche_mix64() {
        avalanche(64, |x| mix64(x[0]));
    }

    #[test]
    fn avalanche_two_words() {
        avalanche(128, |x| hash_2x64(7, x[0], x[1]));
    }

    #[test]
    fn avalanche_seed() {
        avalanche(64, |x| {
            hash_2x64(x[0], 0x0a00_0001_c000_020a, 0x0000_009c_4000_5006)
        });
    }

    #[test]
    fn avalanche_bytes() {
        avalanche(104, |x| {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&x[0].to_le_bytes());
            b[8..].copy_from_slice(&x[1].to_le_bytes());
            hash_bytes(3, &b[..13])
        });
    }
}
