//! Packet buffers and fixed-size bursts of them.
use std::ptr::NonNull;

use crate::ffi;

/// Packets per burst: the size of [`MbufBatch`] and of every rx/tx burst.
pub const BURST: usize = 32;

/// One owned packet buffer (`struct rte_mbuf`), returned to its pool on drop.
///
/// Only the first segment is visible through [`Mbuf::data`]; Sluice's ports are configured
/// without scatter, so received packets are single-segment ([`Mbuf::segments`] tells).
#[repr(transparent)]
#[derive(Debug)]
pub struct Mbuf {
    ptr: NonNull<ffi::rte_mbuf>,
}

// SAFETY: an Mbuf is uniquely owned; DPDK mbufs may be freed on any thread (mempool ops are
// thread-safe), and nothing else aliases the buffer while we own it.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Wraps a raw mbuf.
    ///
    /// # Safety
    /// `ptr` must be a valid mbuf that the caller owns and gives up.
    pub(crate) unsafe fn from_raw(ptr: NonNull<ffi::rte_mbuf>) -> Self {
        Mbuf { ptr }
    }

    /// Reads the `T` at byte offset `off` of the mbuf header (an offset from
    /// `sluice_mbuf_layout`, i.e. of a field of type `T`).
    #[inline(always)]
    fn field<T: Copy>(&self, off: u16) -> T {
        // SAFETY: the mbuf is valid while we own it, and `off` is the C compiler's offset of a
        // field of type T inside struct rte_mbuf (shim.c), so the read is in bounds and typed.
        unsafe {
            self.ptr
                .as_ptr()
                .cast::<u8>()
                .add(usize::from(off))
                .cast::<T>()
                .read_unaligned()
        }
    }

    /// The field offsets (a copy of the C constant).
    #[inline(always)]
    fn layout() -> ffi::sluice_mbuf_layout {
        // SAFETY: an immutable C constant initialised before main.
        unsafe { ffi::sluice_mbuf_layout }
    }

    /// The first byte of packet data: `buf_addr + data_off` (`rte_pktmbuf_mtod`).
    #[inline(always)]
    fn data_ptr(&self) -> *mut u8 {
        let l = Self::layout();
        let base: *mut u8 = self.field(l.buf_addr);
        let off: u16 = self.field(l.data_off);
        base.wrapping_add(usize::from(off))
    }

    /// Length of the packet data in this (first) segment.
    #[inline(always)]
    pub fn len(&self) -> usize {
        usize::from(self.field::<u16>(Self::layout().data_len))
    }

    /// True when the buffer holds no data.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The packet bytes.
    #[inline(always)]
    pub fn data(&self) -> &[u8] {
        let len = self.len();
        // SAFETY: mtod points at data_len initialised bytes inside the mbuf's buffer, which we
        // own exclusively; the borrow is tied to &self.
        unsafe { std::slice::from_raw_parts(self.data_ptr(), len) }
    }

    /// The packet bytes, writable.
    #[inline(always)]
    pub fn data_mut(&mut self) -> &mut [u8] {
        let len = self.len();
        // SAFETY: as in `data`, and &mut self guarantees no other borrow exists.
        unsafe { std::slice::from_raw_parts_mut(self.data_ptr(), len) }
    }

    /// Free bytes before the data (room for encapsulation headers).
    #[inline(always)]
    pub fn headroom(&self) -> usize {
        // SAFETY: valid mbuf; reads fields.
        unsafe { ffi::sluice_pktmbuf_headroom(self.ptr.as_ptr()) as usize }
    }

    /// Free bytes after the data.
    #[inline(always)]
    pub fn tailroom(&self) -> usize {
        // SAFETY: valid mbuf; reads fields.
        unsafe { ffi::sluice_pktmbuf_tailroom(self.ptr.as_ptr()) as usize }
    }

    /// Grows the data at the front by `n` bytes (taken from the headroom). Returns false, and
    /// changes nothing, when the headroom is too small.
    #[inline(always)]
    pub fn prepend(&mut self, n: usize) -> bool {
        if n > u16::MAX as usize {
            return false;
        }
        // SAFETY: valid owned mbuf; rte_pktmbuf_prepend checks the headroom and returns NULL
        // without modifying the mbuf when it is too small.
        !unsafe { ffi::sluice_pktmbuf_prepend(self.ptr.as_ptr(), n as u16) }.is_null()
    }

    /// Removes `n` bytes from the front. Returns false, changing nothing, if `n > len`.
    #[inline(always)]
    pub fn adj(&mut self, n: usize) -> bool {
        if n > u16::MAX as usize {
            return false;
        }
        // SAFETY: valid owned mbuf; rte_pktmbuf_adj bounds-checks and returns NULL on failure.
        !unsafe { ffi::sluice_pktmbuf_adj(self.ptr.as_ptr(), n as u16) }.is_null()
    }

    /// Grows the data at the end by `n` bytes and returns them (uninitialised content is
    /// whatever the buffer held, never undefined memory). `None` if the tailroom is too small.
    #[inline(always)]
    pub fn append(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > u16::MAX as usize {
            return None;
        }
        // SAFETY: valid owned mbuf; rte_pktmbuf_append bounds-checks the tailroom.
        let p = unsafe { ffi::sluice_pktmbuf_append(self.ptr.as_ptr(), n as u16) };
        if p.is_null() {
            None
        } else {
            // SAFETY: p points at n bytes inside our buffer (hugepage memory is always
            // initialised, being zeroed by the kernel or holding earlier packet bytes).
            Some(unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), n) })
        }
    }

    /// Removes `n` bytes from the end. Returns false, changing nothing, if `n > len`.
    #[inline(always)]
    pub fn trim(&mut self, n: usize) -> bool {
        if n > u16::MAX as usize {
            return false;
        }
        // SAFETY: valid owned mbuf; rte_pktmbuf_trim bounds-checks.
        unsafe { ffi::sluice_pktmbuf_trim(self.ptr.as_ptr(), n as u16) == 0 }
    }

    /// Resets length and headroom to a freshly allocated state.
    pub fn reset(&mut self) {
        // SAFETY: valid owned mbuf.
        unsafe { ffi::sluice_pktmbuf_reset(self.ptr.as_ptr()) }
    }

    /// The port the packet was received on.
    #[inline(always)]
    pub fn port(&self) -> u16 {
        // SAFETY: valid mbuf; reads a field.
        unsafe { ffi::sluice_pktmbuf_port(self.ptr.as_ptr()) }
    }

    /// The RSS hash the NIC computed (0 when the device has none).
    #[inline(always)]
    pub fn rss_hash(&self) -> u32 {
        // SAFETY: valid mbuf; reads a field.
        unsafe { ffi::sluice_pktmbuf_rss_hash(self.ptr.as_ptr()) }
    }

    /// Number of chained segments.
    #[inline(always)]
    pub fn segments(&self) -> u16 {
        self.field(Self::layout().nb_segs)
    }

    /// References held on this mbuf: 1 while only this handle owns it, more while a driver
    /// still holds one from [`crate::TxQueue::tx_burst_shared`] (transmission not completed).
    /// Rewrite the data of a shared template only when this is 1.
    #[inline(always)]
    pub fn refcnt(&self) -> u16 {
        // SAFETY: valid mbuf; an atomic read of one field.
        unsafe { ffi::sluice_mbuf_refcnt_read(self.ptr.as_ptr()) }
    }

    /// The raw pointer, for wrappers in this crate that lend the mbuf to DPDK.
    #[inline(always)]
    pub(crate) fn as_ptr(&self) -> *mut ffi::rte_mbuf {
        self.ptr.as_ptr()
    }
}

impl Drop for Mbuf {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: we own the mbuf and give it back exactly once.
        unsafe { ffi::sluice_pktmbuf_free(self.ptr.as_ptr()) }
    }
}

/// A fixed array of up to [`BURST`] owned mbufs: the unit of rx and tx. Never allocates.
///
/// Invariant: `slots[..len]` are `Some`, `slots[len..]` are `None`.
#[derive(Debug)]
pub struct MbufBatch {
    slots: [Option<Mbuf>; BURST],
    len: usize,
}

impl Default for MbufBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl MbufBatch {
    /// An empty batch.
    pub fn new() -> Self {
        MbufBatch {
            slots: [const { None }; BURST],
            len: 0,
        }
    }

    /// Number of mbufs held.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when no more mbufs fit.
    #[inline(always)]
    pub fn is_full(&self) -> bool {
        self.len == BURST
    }

    /// Free slots.
    #[inline(always)]
    pub fn room(&self) -> usize {
        BURST - self.len
    }

    /// Adds an mbuf at the end, or gives it back when full.
    #[inline(always)]
    pub fn push(&mut self, m: Mbuf) -> Result<(), Mbuf> {
        if self.len == BURST {
            return Err(m);
        }
        self.slots[self.len] = Some(m);
        self.len += 1;
        Ok(())
    }

    /// The mbufs held, in order.
    #[inline(always)]
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Mbuf> {
        self.slots[..self.len].iter_mut().flatten()
    }

    /// The mbufs held, in order, as a slice (what the pipeline's burst takes).
    #[inline(always)]
    pub fn as_mut_slice(&mut self) -> &mut [Mbuf] {
        let n = self.len;
        // SAFETY: Option<Mbuf> has the layout of Mbuf (repr(transparent) over NonNull, None
        // being null) and slots[..len] are all Some, so they are n valid Mbufs; the slice
        // borrows the batch mutably, so nothing can take or free them meanwhile.
        unsafe { std::slice::from_raw_parts_mut(self.slots.as_mut_ptr().cast::<Mbuf>(), n) }
    }

    /// Takes every mbuf out, in order, leaving the batch empty (even if the iterator is
    /// dropped early: the rest are freed).
    #[inline(always)]
    pub fn drain(&mut self) -> Drain<'_> {
        let n = self.len;
        self.len = 0;
        Drain {
            inner: self.slots[..n].iter_mut(),
        }
    }

    /// Returns every mbuf to its pool with one bulk call.
    pub fn free_all(&mut self) {
        if self.len == 0 {
            return;
        }
        let n = self.len;
        // SAFETY: Option<Mbuf> is a nullable pointer with the layout of *mut rte_mbuf
        // (repr(transparent) over NonNull); slots[..n] are Some, so the array holds n valid
        // owned mbufs, which DPDK frees.
        unsafe {
            ffi::sluice_pktmbuf_free_bulk(
                self.slots.as_mut_ptr().cast::<*mut ffi::rte_mbuf>(),
                n as u32,
            )
        };
        for s in &mut self.slots[..n] {
            std::mem::forget(s.take());
        }
        self.len = 0;
    }

    /// Raw view of the free tail for rx: pointer to `slots[len]` and the room there.
    #[inline(always)]
    pub(crate) fn tail_raw(&mut self) -> (*mut *mut ffi::rte_mbuf, usize) {
        let room = BURST - self.len;
        // SAFETY: len <= BURST so the offset is in bounds (one-past-the-end at most).
        let p = unsafe { self.slots.as_mut_ptr().add(self.len) };
        (p.cast::<*mut ffi::rte_mbuf>(), room)
    }

    /// Records that `n` mbufs were written into the tail by DPDK.
    ///
    /// # Safety
    /// `slots[len..len+n]` must now hold valid owned mbufs.
    #[inline(always)]
    pub(crate) unsafe fn commit_tail(&mut self, n: usize) {
        debug_assert!(self.len + n <= BURST);
        self.len += n;
    }

    /// Raw pointer to the held mbufs, for tx.
    #[inline(always)]
    pub(crate) fn head_raw(&mut self) -> (*mut *mut ffi::rte_mbuf, usize) {
        (
            self.slots.as_mut_ptr().cast::<*mut ffi::rte_mbuf>(),
            self.len,
        )
    }

    /// Forgets the first `k` mbufs (ownership passed to DPDK) and moves the rest to the front.
    #[inline(always)]
    pub(crate) fn consume_front(&mut self, k: usize) {
        let k = k.min(self.len);
        if k == 0 {
            return;
        }
        let n = self.len;
        for s in &mut self.slots[..k] {
            std::mem::forget(s.take());
        }
        self.slots[..n].rotate_left(k);
        self.len = n - k;
    }
}

/// Iterator returned by [`MbufBatch::drain`].
#[derive(Debug)]
pub struct Drain<'a> {
    inner: std::slice::IterMut<'a, Option<Mbuf>>,
}

impl Iterator for Drain<'_> {
    type Item = Mbuf;
    #[inline(always)]
    fn next(&mut self) -> Option<Mbuf> {
        self.inner.next().and_then(Option::take)
    }
}

impl Drop for Drain<'_> {
    fn drop(&mut self) {
        for s in self.inner.by_ref() {
            drop(s.take());
        }
    }
}
