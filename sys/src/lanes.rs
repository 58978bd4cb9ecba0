//! Compares of the eight 16-bit lanes of a 128-bit word, the tag words of the conntrack buckets.
//!
//! On x86-64 one SSE2 compare (baseline there) does all eight lanes: about six instructions
//! against some twenty for the portable bit trick on two 64-bit halves, which a lookup, an
//! insert's free-slot search and the second-pass prefetch each pay per bucket. Elsewhere the
//! portable loop below gives the same answers.

/// Bit `i` (0..8) set for each 16-bit lane `i` of `word` (lane `i` holds bits `16 i ..
/// 16 i + 15`) that equals `value`; no other bit set.
#[inline(always)]
#[must_use]
pub fn lanes_eq(word: &u128, value: u16) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi16, _mm_loadu_si128, _mm_movemask_epi8, _mm_packs_epi16,
            _mm_set1_epi16, _mm_setzero_si128,
        };
        // SAFETY: SSE2 is part of the x86-64 baseline; `word` is a valid reference to 16 bytes
        // and `_mm_loadu_si128` needs no alignment.
        unsafe {
            let w = _mm_loadu_si128((word as *const u128).cast::<__m128i>());
            // 0xffff in each equal lane; packs turns each into one byte (0xff or 0), so that
            // the byte mask has one bit per lane.
            let eq = _mm_cmpeq_epi16(w, _mm_set1_epi16(value as i16));
            (_mm_movemask_epi8(_mm_packs_epi16(eq, _mm_setzero_si128())) as u32) & 0xff
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        lanes_eq_portable(*word, value)
    }
}

/// Bit `i` (0..8) set for each 16-bit lane `i` of `word` whose bits under `mask` equal
/// `value` (`lane & mask == value`); no other bit set. One AND more than [`lanes_eq`]: the
/// conntrack compares tags with their flag bit masked off, and finds the flagged lanes.
#[inline(always)]
#[must_use]
pub fn lanes_eq_masked(word: &u128, mask: u16, value: u16) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_and_si128, _mm_cmpeq_epi16, _mm_loadu_si128, _mm_movemask_epi8,
            _mm_packs_epi16, _mm_set1_epi16, _mm_setzero_si128,
        };
        // SAFETY: SSE2 is part of the x86-64 baseline; `word` is a valid reference to 16 bytes
        // and `_mm_loadu_si128` needs no alignment.
        unsafe {
            let w = _mm_loadu_si128((word as *const u128).cast::<__m128i>());
            let m = _mm_and_si128(w, _mm_set1_epi16(mask as i16));
            let eq = _mm_cmpeq_epi16(m, _mm_set1_epi16(value as i16));
            (_mm_movemask_epi8(_mm_packs_epi16(eq, _mm_setzero_si128())) as u32) & 0xff
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        lanes_eq_masked_portable(*word, mask, value)
    }
}

/// [`lanes_eq_masked`] without SIMD: the reference the tests hold the SSE2 version to.
#[inline]
#[must_use]
pub fn lanes_eq_masked_portable(word: u128, mask: u16, value: u16) -> u32 {
    (0..8).fold(0, |m, lane| {
        m | (u32::from((word >> (lane * 16)) as u16 & mask == value) << lane)
    })
}

/// Sets 16-bit lane `lane` (0..8, bits `16 lane .. 16 lane + 15`) of `word` to `value`: one
/// 2-byte store on a little-endian machine, where a shift and mask of a `u128` at a variable
/// position is a dozen instructions.
///
/// # Panics
/// If `lane` is 8 or more.
#[inline(always)]
pub fn set_lane(word: &mut u128, lane: usize, value: u16) {
    assert!(lane < 8, "lane {lane} of a 128-bit word");
    #[cfg(target_endian = "little")]
    // SAFETY: `word` is a valid, exclusive reference to 16 bytes aligned to at least 2, and
    // `lane < 8` (asserted), so the u16 at byte offset `2 * lane` lies inside it and is aligned;
    // on a little-endian machine that u16 is exactly bits `16 lane ..` of the u128.
    unsafe {
        (word as *mut u128).cast::<u16>().add(lane).write(value);
    }
    #[cfg(not(target_endian = "little"))]
    {
        let shift = lane * 16;
        *word = (*word & !(0xffff_u128 << shift)) | (u128::from(value) << shift);
    }
}

/// 16-bit lane `lane` (0..8) of `word`: one 2-byte load on a little-endian machine, where a
/// shift of a `u128` by a variable amount is a dozen instructions.
///
/// # Panics
/// If `lane` is 8 or more.
#[inline(always)]
#[must_use]
pub fn get_lane(word: &u128, lane: usize) -> u16 {
    assert!(lane < 8, "lane {lane} of a 128-bit word");
    #[cfg(target_endian = "little")]
    // SAFETY: `word` is a valid reference to 16 bytes aligned to at least 2, and `lane < 8`
    // (asserted), so the u16 at byte offset `2 * lane` lies inside it and is aligned; on a
    // little-endian machine that u16 is exactly bits `16 lane ..` of the u128.
    unsafe {
        (word as *const u128).cast::<u16>().add(lane).read()
    }
    #[cfg(not(target_endian = "little"))]
    {
        (*word >> (lane * 16)) as u16
    }
}

/// [`lanes_eq`] in portable code, one lane at a time: the reference the SIMD version is tested
/// against, and the fallback on other architectures.
#[inline]
#[must_use]
pub fn lanes_eq_portable(word: u128, value: u16) -> u32 {
    (0..8).fold(0, |m, lane| {
        m | (u32::from((word >> (lane * 16)) as u16 == value) << lane)
    })
}

/// The number of bits set in an 8-bit lane mask, by table (baseline x86-64 has no `popcnt`,
/// and its bit-twiddling fallback is a dozen instructions).
#[inline(always)]
#[must_use]
pub fn lane_count(mask: u32) -> u32 {
    const POP: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = (i as u8).count_ones() as u8;
            i += 1;
        }
        t
    };
    u32::from(POP[(mask & 0xff) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_the_portable_version() {
        let mut x = 0x9e37_79b9_7f4a_7c15_u128;
        for n in 0..20_000u32 {
            x = x
                .wrapping_mul(0x2545_f491_4f6c_dd1d_1234_5678_9abc_def1)
                .rotate_left(17);
            // Force some lanes to the compared value (and to 0) so that every mask occurs.
            let value = (n % 7) as u16 * 0x2491;
            let mut w = x;
            for lane in 0..8 {
                match (x >> (lane * 3 + 64)) & 3 {
                    0 => {
                        w = (w & !(0xffff_u128 << (lane * 16))) | (u128::from(value) << (lane * 16))
                    }
                    1 => w &= !(0xffff_u128 << (lane * 16)),
                    _ => {}
                }
            }
            assert_eq!(
                lanes_eq(&w, value),
                lanes_eq_portable(w, value),
                "{w:#x} {value:#x}"
            );
            assert_eq!(lanes_eq(&w, 0), lanes_eq_portable(w, 0), "{w:#x}");
            for mask in [0x7fff, 0x8000, 0xffff, 0x00f0] {
                assert_eq!(
                    lanes_eq_masked(&w, mask, value & mask),
                    lanes_eq_masked_portable(w, mask, value & mask),
                    "{w:#x} {mask:#x} {value:#x}"
                );
            }
        }
    }

    #[test]
    fn lane_order_and_extremes() {
        let w: u128 = 0x0000_0001_8000_0000_ffff_0100_0000_7fff;
        assert_eq!(lanes_eq(&w, 0), 0b1001_0010);
        assert_eq!(lanes_eq(&w, 0xffff), 0b0000_1000);
        assert_eq!(lanes_eq(&w, 0x8000), 0b0010_0000);
        assert_eq!(lanes_eq(&w, 0x7fff), 0b0000_0001);
        assert_eq!(lanes_eq(&0, 0), 0xff);
        assert_eq!(lanes_eq(&u128::MAX, 0xffff), 0xff);
        assert_eq!(lanes_eq(&u128::MAX, 0), 0);
        // Lanes 0x8000 and 0xffff have the top bit; 0x7fff and 0xffff match 0x7fff below it.
        assert_eq!(lanes_eq_masked(&w, 0x8000, 0x8000), 0b0010_1000);
        assert_eq!(lanes_eq_masked(&w, 0x7fff, 0x7fff), 0b0000_1001);
        assert_eq!(lanes_eq_masked(&w, 0x7fff, 0), 0b1011_0010);
    }

    #[test]
    fn set_lane_writes_one_lane() {
        let mut w = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128;
        for lane in 0..8 {
            let before = w;
            set_lane(&mut w, lane, 0xa5a5);
            let mask = 0xffff_u128 << (lane * 16);
            assert_eq!(w & !mask, before & !mask, "lane {lane}");
            assert_eq!((w >> (lane * 16)) as u16, 0xa5a5, "lane {lane}");
            assert_eq!(get_lane(&w, lane), 0xa5a5, "lane {lane}");
            assert_eq!(get_lane(&before, lane), (before >> (lane * 16)) as u16);
            assert_eq!(lanes_eq(&w, 0xa5a5) >> lane & 1, 1);
        }
        assert_eq!(w, u128::MAX / 0xffff * 0xa5a5);
    }

    #[test]
    #[should_panic(expected = "lane 8")]
    fn set_lane_refuses_lane_8() {
        set_lane(&mut 0, 8, 1);
    }

    #[test]
    fn lane_count_is_count_ones() {
        for m in 0..256u32 {
            assert_eq!(lane_count(m), m.count_ones());
        }
    }
}
