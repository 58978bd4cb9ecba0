//! DPDK errors: errno plus DPDK's own message.
use std::ffi::CStr;

use crate::ffi;

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, DpdkError>;

/// An error from a DPDK call, carrying the errno and DPDK's message for it.
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    /// A DPDK function failed; `errno` is the (positive) error number.
    #[error("{op} failed: {message} (errno {errno})")]
    Call {
        /// The DPDK operation that failed.
        op: &'static str,
        /// Positive errno value.
        errno: i32,
        /// `rte_strerror(errno)`.
        message: String,
    },
    /// EAL was already initialised in this process (it can start only once).
    #[error("EAL is already initialised in this process; start it once and share the handle")]
    AlreadyInitialised,
    /// An argument could not be passed to DPDK (e.g. contains a NUL byte or is too long).
    #[error("invalid argument for {op}: {why}")]
    InvalidArgument {
        /// The DPDK operation.
        op: &'static str,
        /// What is wrong with the argument.
        why: String,
    },
    /// A device name did not match any probed port.
    #[error(
        "no DPDK port named {0:?}; is it listed with --vdev / allowed by -a in the EAL options?"
    )]
    NoSuchPort(String),
}

impl DpdkError {
    /// Builds an error from a positive errno value.
    pub fn from_errno(op: &'static str, errno: i32) -> Self {
        let errno = errno.abs();
        // SAFETY: rte_strerror accepts any int and returns a pointer to a static or
        // thread-local NUL-terminated string that stays valid until the next call on this thread.
        let msg = unsafe { CStr::from_ptr(ffi::rte_strerror(errno)) }
            .to_string_lossy()
            .into_owned();
        DpdkError::Call {
            op,
            errno,
            message: msg,
        }
    }

    /// Builds an error from the current thread's `rte_errno`.
    pub fn last(op: &'static str) -> Self {
        // SAFETY: reads the calling thread's per-lcore rte_errno; no preconditions.
        let errno = unsafe { ffi::sluice_errno() };
        Self::from_errno(op, errno)
    }

    /// The errno, when the error came from DPDK.
    pub fn errno(&self) -> Option<i32> {
        match self {
            DpdkError::Call { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Turns DPDK return codes into `Result`.
pub(crate) trait ToResult {
    /// Negative values are `-errno`.
    fn check(self, op: &'static str) -> Result<Self>
    where
        Self: Sized;
}

impl ToResult for i32 {
    fn check(self, op: &'static str) -> Result<i32> {
        if self < 0 {
            Err(DpdkError::from_errno(op, -self))
        } else {
            Ok(self)
        }
    }
}
