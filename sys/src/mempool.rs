//! Packet buffer pools.
use std::ffi::CString;
use std::ptr::NonNull;

use crate::error::{DpdkError, Result};
use crate::ffi;
use crate::mbuf::Mbuf;

/// A pool of packet buffers (`rte_pktmbuf_pool_create`). Freed on drop; every mbuf taken from
/// it must have been returned first (an [`Mbuf`] borrows nothing, so keep the pool alive longer
/// than the packets, e.g. drop workers before the pool).
#[derive(Debug)]
pub struct Mempool {
    ptr: NonNull<ffi::rte_mempool>,
}

// SAFETY: DPDK mempools are multi-producer/multi-consumer safe; the handle is a pointer to a
// structure in shared hugepage memory that lives until drop.
unsafe impl Send for Mempool {}
// SAFETY: as above; all operations through &self are thread-safe in DPDK.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pool of `count` mbufs with a per-lcore cache of `cache` and `data_room` bytes
    /// of buffer each (including `RTE_PKTMBUF_HEADROOM`), on `socket` (-1 for any).
    pub fn new(name: &str, count: u32, cache: u32, data_room: u16, socket: i32) -> Result<Self> {
        let cname = CString::new(name).map_err(|_| DpdkError::InvalidArgument {
            op: "rte_pktmbuf_pool_create",
            why: "name contains a NUL byte".into(),
        })?;
        // SAFETY: EAL must be running (otherwise DPDK returns NULL with rte_errno set); cname
        // outlives the call, DPDK copies the name.
        let p = unsafe {
            ffi::rte_pktmbuf_pool_create(cname.as_ptr(), count, cache, 0, data_room, socket)
        };
        NonNull::new(p)
            .map(|ptr| Mempool { ptr })
            .ok_or_else(|| DpdkError::last("rte_pktmbuf_pool_create"))
    }

    /// Default buffer size: 2048 bytes of data plus headroom.
    pub const DEFAULT_DATA_ROOM: u16 = ffi::RTE_MBUF_DEFAULT_BUF_SIZE as u16;

    /// The largest frame (Ethernet header included, FCS not) one mbuf of
    /// [`Self::DEFAULT_DATA_ROOM`] receives whole: the data room less the headroom.
    pub const DEFAULT_MAX_FRAME: u16 =
        (ffi::RTE_MBUF_DEFAULT_BUF_SIZE - ffi::RTE_PKTMBUF_HEADROOM) as u16;

    /// Takes one mbuf, or `None` when the pool is empty.
    #[inline]
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool pointer is valid while self lives; returns NULL or an mbuf we own.
        let m = unsafe { ffi::sluice_pktmbuf_alloc(self.ptr.as_ptr()) };
        // SAFETY: non-null m is a freshly allocated mbuf owned by nobody else.
        NonNull::new(m).map(|p| unsafe { Mbuf::from_raw(p) })
    }

    /// Mbufs currently free in the pool (including per-lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: pool pointer valid while self lives; read-only.
        unsafe { ffi::rte_mempool_avail_count(self.ptr.as_ptr()) }
    }

    /// Mbufs currently handed out.
    pub fn in_use(&self) -> u32 {
        // SAFETY: pool pointer valid while self lives; read-only.
        unsafe { ffi::rte_mempool_in_use_count(self.ptr.as_ptr()) }
    }

    /// Raw pointer for port RX queue setup.
    pub(crate) fn as_ptr(&self) -> *mut ffi::rte_mempool {
        self.ptr.as_ptr()
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        // SAFETY: we own the pool; the contract above says every mbuf has been returned.
        unsafe { ffi::rte_mempool_free(self.ptr.as_ptr()) }
    }
}
