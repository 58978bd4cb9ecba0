//! A counting global allocator for tests that prove a code path does not allocate. It lives
//! here because implementing `GlobalAlloc` needs `unsafe`, which no other crate may contain.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Forwards to the system allocator and counts allocations and reallocations.
#[derive(Debug)]
pub struct CountingAlloc {
    count: AtomicUsize,
}

impl CountingAlloc {
    /// A new counter at zero (usable in a `static`).
    pub const fn new() -> Self {
        CountingAlloc {
            count: AtomicUsize::new(0),
        }
    }

    /// Allocations (and reallocations) so far, on every thread.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

impl Default for CountingAlloc {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// GlobalAlloc contract holds exactly as it does for `System`.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        self.count.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract; forwarded unchanged.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` was allocated by `System` through us with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        self.count.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `p` was allocated by `System` through us with layout `l`; forwarded unchanged.
        unsafe { System.realloc(p, l, n) }
    }
}
