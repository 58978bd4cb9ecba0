//! The packet buffer the pipeline works on: [`PacketBuf`] (an mbuf in the worker) and
//! [`VecBuf`], a `Vec` with headroom for tests, benchmarks and fuzzing.
#[cfg(doc)]
use crate::stats::DropReason;

/// A packet buffer the pipeline can rewrite and grow at the front (for encapsulation).
pub trait PacketBuf {
    /// The frame bytes.
    fn data(&self) -> &[u8];
    /// The frame bytes, writable.
    fn data_mut(&mut self) -> &mut [u8];
    /// Grows the frame by `n` bytes at the front; false if there is no headroom.
    fn prepend(&mut self, n: usize) -> bool;
    /// Shrinks the frame by `n` bytes at the end; false if shorter than `n`.
    fn trim(&mut self, n: usize) -> bool;
    /// Whether the whole frame is in [`PacketBuf::data`]: a frame chained over several
    /// buffers (a multi-segment mbuf) is dropped ([`DropReason::Multisegment`]).
    #[inline(always)]
    fn whole(&self) -> bool {
        true
    }
}

/// A `Vec`-backed [`PacketBuf`] with headroom, for tests, benchmarks and fuzzing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VecBuf {
    buf: Vec<u8>,
    start: usize,
}

impl VecBuf {
    /// Headroom given by [`VecBuf::new`], as an mbuf has (`RTE_PKTMBUF_HEADROOM`).
    pub const HEADROOM: usize = 128;

    /// A buffer holding `frame` with [`Self::HEADROOM`] bytes free in front.
    pub fn new(frame: &[u8]) -> Self {
        let mut buf = vec![0u8; Self::HEADROOM + frame.len()];
        buf[Self::HEADROOM..].copy_from_slice(frame);
        VecBuf {
            buf,
            start: Self::HEADROOM,
        }
    }

    /// Replaces the content with `frame`, reusing the allocation when it fits.
    pub fn reset(&mut self, frame: &[u8]) {
        self.buf.resize(Self::HEADROOM + frame.len(), 0);
        self.buf[Self::HEADROOM..].copy_from_slice(frame);
        self.start = Self::HEADROOM;
    }
}

// Inlined always, as the worker's `Mbuf` accessors are, so that the benchmarks measure the
// pipeline and not a call per access.
impl PacketBuf for VecBuf {
    #[inline(always)]
    fn data(&self) -> &[u8] {
        &self.buf[self.start..]
    }
    #[inline(always)]
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..]
    }
    fn prepend(&mut self, n: usize) -> bool {
        if n > self.start {
            return false;
        }
        self.start -= n;
        true
    }
    fn trim(&mut self, n: usize) -> bool {
        if n > self.buf.len() - self.start {
            return false;
        }
        self.buf.truncate(self.buf.len() - n);
        true
    }
}
