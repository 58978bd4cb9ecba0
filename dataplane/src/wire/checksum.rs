//! Internet checksums (RFC 1071) and incremental updates (RFC 1624).

/// One's-complement sum of `data` (big-endian 16-bit words, odd byte padded) added to `acc`,
/// not folded (but kept below 2^17 + `acc`, so callers may add more before folding).
///
/// Adds big-endian 32-bit words into a 64-bit accumulator (half the additions; the same sum
/// modulo 0xffff, since 2^16 = 1 there), then folds to 17 bits.
#[inline]
pub fn sum(acc: u32, data: &[u8]) -> u32 {
    let mut a = 0u64;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        a += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut pairs = rest.chunks_exact(2);
    for c in &mut pairs {
        a += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = pairs.remainder() {
        a += u64::from(*last) << 8;
    }
    acc + fold64(a)
}

/// Folds a 64-bit accumulator to at most 17 bits, preserving it modulo 0xffff.
#[inline(always)]
fn fold64(a: u64) -> u32 {
    let a = (a & 0xffff_ffff) + (a >> 32); // < 2^33
    let a = (a & 0xffff_ffff) + (a >> 32); // < 2^32 + 1
    let a = (a & 0xffff) + (a >> 16); // < 2^17
    a as u32
}

/// Folds a 32-bit accumulator into 16 bits (one's complement addition).
#[inline(always)]
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum of `data`: the complement of its folded sum.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(0, data))
}

/// Pseudo-header sum for IPv4 TCP/UDP/... (source, destination, protocol, upper-layer length).
#[inline]
pub fn pseudo_v4(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> u32 {
    let mut acc = sum(0, &src);
    acc = sum(acc, &dst);
    acc + u32::from(proto) + u32::from(len)
}

/// Pseudo-header sum for IPv6 (RFC 8200 §8.1).
#[inline]
pub fn pseudo_v6(src: [u8; 16], dst: [u8; 16], proto: u8, len: u32) -> u32 {
    let mut acc = sum(0, &src);
    acc = sum(acc, &dst);
    acc + (len >> 16) + (len & 0xffff) + u32::from(proto)
}

/// RFC 1624 eqn. 3: the new checksum after one 16-bit word changed from `old` to `new`.
#[inline(always)]
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    // HC' = ~(~HC + ~m + m')
    let acc = u32::from(!csum) + u32::from(!old) + u32::from(new);
    !fold(acc)
}

/// Incremental update for a changed 32-bit value (e.g. an IPv4 address).
#[inline(always)]
pub fn update32(csum: u16, old: u32, new: u32) -> u16 {
    let acc = u32::from(!csum)
        + u32::from(!(old >> 16) as u16)
        + u32::from(!(old as u16))
        + (new >> 16)
        + (new & 0xffff);
    !fold(acc)
}

/// Incremental update for a changed byte string of even length (e.g. an IPv6 address):
/// RFC 1624 eqn. 3 over its 32-bit words (the complement of a 32-bit word complements both of
/// its 16-bit halves), 16-bit words for a remainder.
#[inline]
pub fn update_bytes(csum: u16, old: &[u8], new: &[u8]) -> u16 {
    apply(csum, delta(old, new))
}

/// The RFC 1624 change of a checksummed byte string of even length from `old` to `new`: the
/// sum of `~old + new` over its words, unfolded, for [`apply`]. Deltas of several fields add.
#[inline(always)]
pub fn delta(old: &[u8], new: &[u8]) -> u64 {
    debug_assert_eq!(old.len(), new.len());
    // An IPv4 address, the common case, without the chunk iterators.
    if let (Ok(o), Ok(n)) = (<[u8; 4]>::try_from(old), <[u8; 4]>::try_from(new)) {
        return delta4(o, n);
    }
    let mut a = 0u64;
    let (mut o4, mut n4) = (old.chunks_exact(4), new.chunks_exact(4));
    for (o, n) in (&mut o4).zip(&mut n4) {
        a += u64::from(!u32::from_be_bytes([o[0], o[1], o[2], o[3]]));
        a += u64::from(u32::from_be_bytes([n[0], n[1], n[2], n[3]]));
    }
    for (o, n) in o4
        .remainder()
        .chunks_exact(2)
        .zip(n4.remainder().chunks_exact(2))
    {
        a += u64::from(!u16::from_be_bytes([o[0], o[1]]));
        a += u64::from(u16::from_be_bytes([n[0], n[1]]));
    }
    a
}

/// [`delta`] of a 4-byte field (an IPv4 address).
#[inline(always)]
pub fn delta4(old: [u8; 4], new: [u8; 4]) -> u64 {
    u64::from(!u32::from_be_bytes(old)) + u64::from(u32::from_be_bytes(new))
}

/// The checksum `csum` after the changes summed in `delta` (from [`delta`], plus
/// `!old + new` of any 16-bit fields): RFC 1624 eqn. 3, `~(~HC + delta)`.
#[inline(always)]
pub fn apply(csum: u16, delta: u64) -> u16 {
    !fold(fold64(u64::from(!csum) + delta))
}

/// Whether the IPv4 header at the start of `ip` (a header that parsed: its IHL fits `ip`) has
/// a correct checksum. The usual 20-byte header is summed as five 32-bit words, inline.
#[inline(always)]
pub fn ipv4_header_ok(ip: &[u8]) -> bool {
    let hl = usize::from(ip.first().map_or(0, |b| b & 0x0f)) * 4;
    if hl == 20 {
        if let Some(h) = ip.get(..20) {
            let w = |i: usize| u64::from(u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
            return fold(fold64(w(0) + w(4) + w(8) + w(12) + w(16))) == 0xffff;
        }
    }
    ip.get(..hl).is_some_and(|h| checksum(h) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 example: words 0001 f203 f4f5 f6f7 sum to ddf2 (folded).
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(0, &d)), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
    }

    #[test]
    fn incremental_matches_full() {
        let mut d: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37)).collect();
        d[10] = 0;
        d[11] = 0;
        let c = checksum(&d);
        d[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&d), 0);
        // change a 32-bit field
        let old = u32::from_be_bytes(d[12..16].try_into().unwrap());
        let new: u32 = 0xc0a8_0101;
        d[12..16].copy_from_slice(&new.to_be_bytes());
        let c2 = update32(c, old, new);
        d[10..12].copy_from_slice(&c2.to_be_bytes());
        assert_eq!(checksum(&d), 0);
        // a 16-bit field
        let old16 = u16::from_be_bytes([d[20], d[21]]);
        d[20..22].copy_from_slice(&0xbeefu16.to_be_bytes());
        let c3 = update16(c2, old16, 0xbeef);
        d[10..12].copy_from_slice(&c3.to_be_bytes());
        assert_eq!(checksum(&d), 0);
        // bytes
        let old_b = d[24..40].to_vec();
        let new_b: Vec<u8> = (100..116).collect();
        d[24..40].copy_from_slice(&new_b);
        let c4 = update_bytes(c3, &old_b, &new_b);
        d[10..12].copy_from_slice(&c4.to_be_bytes());
        assert_eq!(checksum(&d), 0);
    }

    /// The reference definitions the word-wise versions must agree with.
    fn sum16(mut acc: u32, data: &[u8]) -> u32 {
        let mut chunks = data.chunks_exact(2);
        for c in &mut chunks {
            acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            acc += u32::from(*last) << 8;
        }
        acc
    }

    fn update16_bytes(csum: u16, old: &[u8], new: &[u8]) -> u16 {
        let mut acc = u32::from(!csum);
        for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
            acc += u32::from(!u16::from_be_bytes([o[0], o[1]]));
            acc += u32::from(u16::from_be_bytes([n[0], n[1]]));
        }
        !fold(acc)
    }

    proptest::proptest! {
        #[test]
        fn word_sums_match_the_16_bit_definition(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1600),
            acc in 0u32..0x2_0000,
        ) {
            proptest::prop_assert_eq!(fold(sum(acc, &data)), fold(sum16(acc, &data)));
            proptest::prop_assert!(sum(acc, &data) - acc < 0x2_0000);
        }

        #[test]
        fn word_updates_match_the_16_bit_definition(
            pairs in proptest::collection::vec(proptest::prelude::any::<(u16, u16)>(), 0..20),
            csum in proptest::prelude::any::<u16>(),
        ) {
            let old: Vec<u8> = pairs.iter().flat_map(|p| p.0.to_be_bytes()).collect();
            let new: Vec<u8> = pairs.iter().flat_map(|p| p.1.to_be_bytes()).collect();
            proptest::prop_assert_eq!(
                update_bytes(csum, &old, &new),
                update16_bytes(csum, &old, &new)
            );
        }
    }
}
