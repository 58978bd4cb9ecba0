//! The Environment Abstraction Layer: init once per process, cleanup on drop.
use std::ffi::{c_char, c_int, CString};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{DpdkError, Result};
use crate::ffi;

static STARTED: AtomicBool = AtomicBool::new(false);

/// A running EAL. Created once per process by [`Eal::init`]; `rte_eal_cleanup` runs on drop.
///
/// Drop it only after every port is stopped and every worker thread has joined.
#[derive(Debug)]
pub struct Eal {
    _private: (),
}

impl Eal {
    /// Initialises EAL with `args` as on a DPDK command line (the program name first, e.g.
    /// `["sluiced", "--no-pci", "--vdev=net_ring0", "-l", "0"]`).
    pub fn init<S: AsRef<str>>(args: &[S]) -> Result<Eal> {
        if STARTED.swap(true, Ordering::SeqCst) {
            return Err(DpdkError::AlreadyInitialised);
        }
        let mut owned = Vec::with_capacity(args.len());
        for a in args {
            owned.push(
                CString::new(a.as_ref()).map_err(|_| DpdkError::InvalidArgument {
                    op: "rte_eal_init",
                    why: format!("argument {:?} contains a NUL byte", a.as_ref()),
                })?,
            );
        }
        // EAL may keep pointers into argv for the life of the process: leak them on purpose
        // (once per process, a few hundred bytes).
        let mut argv: Vec<*mut c_char> = owned.into_iter().map(CString::into_raw).collect();
        argv.push(std::ptr::null_mut());
        let argc = (argv.len() - 1) as c_int;
        let argv = Box::leak(argv.into_boxed_slice());
        // SAFETY: argv is a leaked, NULL-terminated array of argc valid C strings that lives for
        // the rest of the process; STARTED guarantees this is the process's only call.
        let rc = unsafe { ffi::rte_eal_init(argc, argv.as_mut_ptr()) };
        if rc < 0 {
            STARTED.store(false, Ordering::SeqCst);
            return Err(DpdkError::last("rte_eal_init"));
        }
        Ok(Eal { _private: () })
    }

    /// Number of ports EAL probed (`rte_eth_dev_count_avail`).
    pub fn port_count(&self) -> u16 {
        // SAFETY: EAL is initialised (we hold the handle); the call only reads device tables.
        unsafe { ffi::rte_eth_dev_count_avail() }
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        // SAFETY: EAL was initialised by this handle, which is unique in the process; the
        // owner drops it after ports are stopped and workers joined.
        unsafe {
            ffi::rte_eal_cleanup();
        }
    }
}

/// A non-EAL thread registered with DPDK (`rte_thread_register`), so it has an lcore id and can
/// use per-lcore mempool caches. Unregisters on drop; stays on the thread that registered.
#[derive(Debug)]
pub struct ThreadRegistration {
    lcore: u32,
    _not_send: PhantomData<*const ()>,
}

impl ThreadRegistration {
    /// The lcore id DPDK gave this thread.
    pub fn lcore_id(&self) -> u32 {
        self.lcore
    }
}

/// Registers the calling thread with DPDK. Call after [`Eal::init`], on the thread itself.
pub fn register_thread(_eal: &Eal) -> Result<ThreadRegistration> {
    // SAFETY: EAL is initialised (the caller holds the handle); registers the calling thread.
    let rc = unsafe { ffi::rte_thread_register() };
    if rc < 0 {
        return Err(DpdkError::last("rte_thread_register"));
    }
    Ok(ThreadRegistration {
        lcore: lcore_id(),
        _not_send: PhantomData,
    })
}

impl Drop for ThreadRegistration {
    fn drop(&mut self) {
        // SAFETY: this thread registered itself (the value is !Send so we are on it).
        unsafe { ffi::rte_thread_unregister() }
    }
}

/// The calling thread's lcore id (`rte_lcore_id`); `u32::MAX` for unregistered threads.
pub fn lcore_id() -> u32 {
    // SAFETY: reads a thread-local; no preconditions.
    unsafe { ffi::sluice_lcore_id() }
}
