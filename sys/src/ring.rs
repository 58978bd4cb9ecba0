//! Single-producer/single-consumer rings of mbufs between worker threads.
use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::error::{DpdkError, Result};
use crate::ffi;
use crate::mbuf::MbufBatch;

#[derive(Debug)]
struct RingInner {
    ptr: NonNull<ffi::rte_ring>,
}

// SAFETY: an rte_ring lives in shared memory; the SP/SC discipline is enforced by the split
// into one producer and one consumer handle, each needing &mut self.
unsafe impl Send for RingInner {}
// SAFETY: as above; &RingInner only allows `count`, which is a read of two indices.
unsafe impl Sync for RingInner {}

impl Drop for RingInner {
    fn drop(&mut self) {
        // SAFETY: both handles are gone (Arc count reached zero); mbufs left in the ring are
        // drained by the consumer's drop before this runs.
        unsafe { ffi::rte_ring_free(self.ptr.as_ptr()) }
    }
}

/// An `rte_ring` created single-producer/single-consumer, carrying owned mbufs.
#[derive(Debug)]
pub struct MbufRing;

impl MbufRing {
    /// Creates a ring of `count` slots (a power of two; usable capacity count-1) and returns its
    /// two ends.
    pub fn create(name: &str, count: u32, socket: i32) -> Result<(RingProducer, RingConsumer)> {
        let cname = CString::new(name).map_err(|_| DpdkError::InvalidArgument {
            op: "rte_ring_create",
            why: "name contains a NUL byte".into(),
        })?;
        let flags = ffi::RING_F_SP_ENQ | ffi::RING_F_SC_DEQ;
        // SAFETY: EAL running (else NULL + rte_errno); the name is copied by DPDK.
        let p = unsafe { ffi::rte_ring_create(cname.as_ptr(), count, socket, flags) };
        let ptr = NonNull::new(p).ok_or_else(|| DpdkError::last("rte_ring_create"))?;
        let inner = Arc::new(RingInner { ptr });
        Ok((
            RingProducer {
                inner: inner.clone(),
            },
            RingConsumer { inner },
        ))
    }
}

/// A port made of two SP/SC rings (`rte_eth_from_rings`): what the test or program enqueues on
/// the returned producer, the port receives; what the port transmits, the consumer dequeues.
/// A wire in memory, for tests and loopback benchmarks.
#[derive(Debug)]
pub struct RingPort {
    /// The port (one RX and one TX queue).
    pub port: crate::port::Port,
    /// Feeds the port's RX queue.
    pub inject: RingProducer,
    /// Drains the port's TX queue.
    pub capture: RingConsumer,
}

impl MbufRing {
    /// Creates a ring-backed port named `name` with rings of `count` slots.
    pub fn port(eal: &crate::eal::Eal, name: &str, count: u32) -> Result<RingPort> {
        let (inject, rx_cons) = Self::create(&format!("{name}_rx"), count, -1)?;
        let (tx_prod, capture) = Self::create(&format!("{name}_tx"), count, -1)?;
        let cname = CString::new(name).map_err(|_| DpdkError::InvalidArgument {
            op: "rte_eth_from_rings",
            why: "name contains a NUL byte".into(),
        })?;
        let rxr = [rx_cons.inner.ptr.as_ptr()];
        let txr = [tx_prod.inner.ptr.as_ptr()];
        // SAFETY: EAL is running (&Eal); the ring arrays hold one valid ring each, kept alive by
        // the port's keep-alive below for as long as the port exists.
        let id =
            unsafe { ffi::rte_eth_from_rings(cname.as_ptr(), rxr.as_ptr(), 1, txr.as_ptr(), 1, 0) };
        if id < 0 {
            return Err(DpdkError::last("rte_eth_from_rings"));
        }
        let mut port = crate::port::Port::by_id(eal, id as u16)?;
        port.keep_alive(Box::new((rx_cons, tx_prod)));
        Ok(RingPort {
            port,
            inject,
            capture,
        })
    }
}

/// The producing end of an [`MbufRing`]; one thread at a time.
#[derive(Debug)]
pub struct RingProducer {
    inner: Arc<RingInner>,
}

impl RingProducer {
    /// Moves as many mbufs from the front of `batch` into the ring as fit; returns how many.
    #[inline]
    pub fn enqueue(&mut self, batch: &mut MbufBatch) -> usize {
        let (p, n) = batch.head_raw();
        if n == 0 {
            return 0;
        }
        // SAFETY: p holds n valid owned mbuf pointers; &mut self makes us the only producer.
        let k =
            unsafe { ffi::sluice_ring_enqueue_burst(self.inner.ptr.as_ptr(), p.cast(), n as u32) }
                as usize;
        batch.consume_front(k);
        k
    }
}

/// The consuming end of an [`MbufRing`]; one thread at a time.
#[derive(Debug)]
pub struct RingConsumer {
    inner: Arc<RingInner>,
}

impl RingConsumer {
    /// Moves up to `batch.room()` mbufs out of the ring into `batch`; returns how many.
    #[inline]
    pub fn dequeue(&mut self, batch: &mut MbufBatch) -> usize {
        let (p, room) = batch.tail_raw();
        if room == 0 {
            return 0;
        }
        // SAFETY: p points at `room` free slots; &mut self makes us the only consumer; the ring
        // only ever holds owned mbufs put there by the producer.
        let k = unsafe {
            ffi::sluice_ring_dequeue_burst(self.inner.ptr.as_ptr(), p.cast(), room as u32)
        } as usize;
        // SAFETY: DPDK wrote k valid mbuf pointers into the tail.
        unsafe { batch.commit_tail(k) };
        k
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        // SAFETY: valid ring; reads indices.
        unsafe { ffi::sluice_ring_count(self.inner.ptr.as_ptr()) as usize }
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for RingConsumer {
    fn drop(&mut self) {
        let mut b = MbufBatch::new();
        while self.dequeue(&mut b) > 0 {
            b.free_all();
        }
    }
}
