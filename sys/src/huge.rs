//! [`HugeSlice`]: a fixed-length slice in anonymous memory backed by transparent huge pages.
//!
//! The per-worker flow tables are tens to hundreds of MiB read at random, one cache line per
//! packet. With 4 KiB pages nearly every such access also misses the TLB, and under a
//! hypervisor a TLB miss walks two levels of page tables; with 2 MiB pages the whole table is
//! covered by a few dozen TLB entries. This type maps the memory with `mmap`, aligned to 2 MiB,
//! asks for huge pages with `madvise(MADV_HUGEPAGE)` (honoured when
//! `/sys/kernel/mm/transparent_hugepage/enabled` is `always` or `madvise`, Debian's default)
//! and writes every element before returning, so no page fault happens later. Where the kernel
//! gives no huge page the memory is ordinary 4 KiB pages: correct, only slower.
//!
//! Slices under 1 MiB are not advised (a 2 MiB page for a small test table would waste most of
//! it). It is plain process memory (not DPDK's hugetlbfs pool), so the tables do not compete with
//! the mbuf pools for the pages `scripts/setup` reserves.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// The huge page size the mapping is aligned to.
const HUGE: usize = 2 << 20;

/// A boxed slice of `T` in 2 MiB-aligned anonymous memory advised for transparent huge pages.
/// Derefs to `[T]`; unmapped on drop.
pub struct HugeSlice<T> {
    /// The first element (dangling when nothing is mapped).
    ptr: NonNull<T>,
    /// Elements.
    len: usize,
    /// Start and length of the whole mapping (null and 0 when nothing is mapped).
    map: *mut libc::c_void,
    /// Length of the mapping in bytes.
    map_len: usize,
}

// SAFETY: a HugeSlice owns its elements exactly as a Box<[T]> does; the raw pointers are never
// shared with anything else.
unsafe impl<T: Send> Send for HugeSlice<T> {}
// SAFETY: shared access only hands out &[T], as Box<[T]> does.
unsafe impl<T: Sync> Sync for HugeSlice<T> {}

impl<T: Copy> HugeSlice<T> {
    /// `len` copies of `value`, every page written.
    ///
    /// # Panics
    /// If the size overflows, `T` needs an alignment above 4096, or the kernel refuses the
    /// mapping (out of memory: a `Vec` would abort in the same case).
    #[must_use]
    pub fn new(len: usize, value: T) -> Self {
        assert!(
            std::mem::align_of::<T>() <= 4096,
            "HugeSlice: alignment above a page"
        );
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .expect("HugeSlice: size overflows");
        if bytes == 0 {
            return Self {
                ptr: NonNull::dangling(),
                len,
                map: std::ptr::null_mut(),
                map_len: 0,
            };
        }
        let rounded = bytes.div_ceil(HUGE) * HUGE;
        // Map one huge page more than needed, so a 2 MiB-aligned start can be chosen inside.
        let map_len = rounded + HUGE;
        // SAFETY: an anonymous private mapping with no address hint touches no existing memory;
        // the result is checked against MAP_FAILED below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert!(
            map != libc::MAP_FAILED,
            "HugeSlice: mmap of {map_len} bytes failed: {}",
            std::io::Error::last_os_error()
        );
        let offset = (HUGE - (map as usize) % HUGE) % HUGE;
        // SAFETY: offset < HUGE and rounded + HUGE bytes are mapped, so start..start+rounded is
        // inside the mapping.
        let start = unsafe { map.cast::<u8>().add(offset) };
        // Small slices (a test's table) stay on 4 KiB pages: a huge page would cost 2 MiB.
        if bytes >= HUGE / 2 {
            // SAFETY: a range inside our own mapping; MADV_HUGEPAGE is advice and cannot
            // corrupt memory. Its failure (THP disabled) leaves ordinary pages, which is fine.
            unsafe {
                libc::madvise(start.cast(), rounded, libc::MADV_HUGEPAGE);
            }
        }
        let first = start.cast::<T>();
        for i in 0..len {
            // SAFETY: start is 2 MiB-aligned (so aligned for T, whose alignment is at most a
            // page) and i < len elements fit in the `bytes <= rounded` mapped bytes; writing
            // initialises the element (and faults its page in now rather than on the hot path).
            unsafe { first.add(i).write(value) };
        }
        Self {
            // SAFETY: start is inside a successful mapping, so not null.
            ptr: unsafe { NonNull::new_unchecked(first) },
            len,
            map,
            map_len,
        }
    }
}

impl<T: Copy> Clone for HugeSlice<T> {
    fn clone(&self) -> Self {
        match self.first() {
            None => Self {
                ptr: NonNull::dangling(),
                len: self.len,
                map: std::ptr::null_mut(),
                map_len: 0,
            },
            Some(v) => {
                let mut c = Self::new(self.len, *v);
                c.copy_from_slice(self);
                c
            }
        }
    }
}

impl<T> Deref for HugeSlice<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: ptr points at len initialised elements (or is dangling with a zero-byte
        // size), owned by self for the lifetime of the borrow.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> DerefMut for HugeSlice<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in deref, and &mut self makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> Drop for HugeSlice<T> {
    fn drop(&mut self) {
        if self.map.is_null() {
            return;
        }
        // T: Copy for every constructor, so there is nothing to drop element by element.
        // SAFETY: map/map_len are exactly what mmap returned, unmapped once, and no reference
        // into the mapping outlives self.
        unsafe {
            libc::munmap(self.map, self.map_len);
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for HugeSlice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HugeSlice")
            .field("len", &self.len)
            .field("bytes", &std::mem::size_of_val::<[T]>(self))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_values_and_clones() {
        let mut s = HugeSlice::new(1000, 7u32);
        assert_eq!(s.len(), 1000);
        assert!(s.iter().all(|&v| v == 7));
        s[999] = 9;
        let c = s.clone();
        assert_eq!(c[999], 9);
        assert_eq!(c[0], 7);
        let e = HugeSlice::new(0, 1u64);
        assert!(e.is_empty());
        assert_eq!(e.clone().len(), 0);
    }

    #[test]
    fn aligned_for_large_alignments() {
        #[derive(Clone, Copy)]
        #[repr(align(64))]
        struct Line([u8; 64]);
        let s = HugeSlice::new(100, Line([1; 64]));
        assert_eq!(s.as_ptr() as usize % (2 << 20), 0);
        assert_eq!(s[99].0[63], 1);
    }

    /// The `smaps` entry of the mapping that holds `addr`: its `VmFlags` line and its
    /// `AnonHugePages` in bytes.
    fn smaps_entry(addr: usize) -> Option<(String, u64)> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        let mut huge = 0;
        for line in smaps.lines() {
            let head = line.split_whitespace().next().unwrap_or("");
            if let Some((lo, hi)) = head.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = lo <= addr && addr < hi;
                    continue;
                }
            }
            if !inside {
                continue;
            }
            if let Some(kb) = line.strip_prefix("AnonHugePages:") {
                huge = kb
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()?
                    * 1024;
            } else if let Some(flags) = line.strip_prefix("VmFlags:") {
                return Some((flags.trim().to_owned(), huge));
            }
        }
        None
    }

    #[test]
    fn large_tables_are_advised_for_huge_pages() {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        let s = HugeSlice::new(16 << 20, 0u64); // 128 MiB
        assert_eq!(s[(16 << 20) - 1], 0);
        assert_eq!(s.as_ptr() as usize % HUGE, 0);
        let (flags, huge) = smaps_entry(s.as_ptr() as usize).expect("the mapping is in smaps");
        // How many huge pages the kernel finds depends on how fragmented its free memory is
        // (a CI machine gave 46 of 128 MiB), so that figure is reported, not asserted; the
        // advice that asks for them is ours and is asserted.
        eprintln!(
            "{} MiB of 128 MiB on huge pages (THP mode: {})",
            huge >> 20,
            mode.trim()
        );
        if mode.contains("[always]") || mode.contains("[madvise]") {
            assert!(
                flags.split_whitespace().any(|f| f == "hg"),
                "the table is not advised for huge pages: VmFlags {flags}"
            );
        }
        let small = HugeSlice::new(1000, 0u64);
        let (flags, _) = smaps_entry(small.as_ptr() as usize).expect("the mapping is in smaps");
        assert!(
            !flags.split_whitespace().any(|f| f == "hg"),
            "a small slice is advised for huge pages: VmFlags {flags}"
        );
    }
}
