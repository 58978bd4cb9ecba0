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
