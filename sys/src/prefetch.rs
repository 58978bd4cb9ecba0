//! Cache prefetch hints: the one CPU helper of the per-packet path that is not DPDK's.

/// Hints the CPU to bring the cache line holding `r` into all cache levels (`prefetcht0`).
/// Never faults and changes nothing observable: a burst of lookups can overlap its cache
/// misses by prefetching every packet's bucket first.
#[inline(always)]
pub fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetcht0 is an SSE instruction (baseline on x86-64) and a pure hint: it never
    // faults, even on an invalid address, and `r` is a valid reference anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (r as *const T).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}
