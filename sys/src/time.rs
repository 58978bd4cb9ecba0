//! The time-stamp counter, the clock of poll loops.
use crate::ffi;

/// Reads the TSC (`rte_rdtsc`).
#[inline(always)]
pub fn tsc() -> u64 {
    // SAFETY: rdtsc has no preconditions.
    unsafe { ffi::sluice_rdtsc() }
}

/// TSC ticks per second as measured by EAL (`rte_get_tsc_hz`). Valid after [`crate::Eal::init`].
pub fn tsc_hz() -> u64 {
    // SAFETY: returns a value EAL computed at init (0 before init); no memory is touched.
    unsafe { ffi::sluice_tsc_hz() }
}

/// A spin-loop hint (`rte_pause`).
#[inline(always)]
pub fn pause() {
    // SAFETY: the pause instruction has no preconditions.
    unsafe { ffi::sluice_pause() }
}

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
