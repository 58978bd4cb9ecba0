//! Capture filters: a tcpdump expression compiled by libpcap to classic BPF, converted to eBPF
//! by `rte_bpf_convert`, checked and loaded by `rte_bpf_load`, and run on mbufs by the code
//! DPDK's JIT produced (the interpreter, `rte_bpf_exec`, where the JIT gives none). This is
//! what `dpdk-dumpcap` does in a secondary process, here inside the one process.
use std::ffi::{c_void, CStr, CString};
use std::ptr::NonNull;

use crate::ffi;
use crate::mbuf::Mbuf;

/// A compiled capture filter. Immutable once loaded: any number of threads may run it.
#[derive(Debug)]
pub struct BpfFilter {
    bpf: NonNull<ffi::rte_bpf>,
    /// The JIT-compiled program, if DPDK's JIT produced one.
    jit: Option<unsafe extern "C" fn(*mut c_void) -> u64>,
    /// Instructions of the classic program libpcap produced.
    classic_len: u32,
}

// SAFETY: a loaded rte_bpf is never written after rte_bpf_load; running it (JIT code or
// rte_bpf_exec) only reads the program and its argument, so it can move between threads.
unsafe impl Send for BpfFilter {}
// SAFETY: as above; concurrent runs share nothing mutable.
unsafe impl Sync for BpfFilter {}

impl BpfFilter {
    /// Compiles tcpdump expression `expr` for Ethernet frames captured up to `snaplen` bytes.
    /// EAL must be running (the converted program lives in DPDK's heap until it is loaded).
    ///
    /// # Errors
    /// libpcap's own message for an expression it refuses (`syntax error`, `unknown host
    /// ...`), or DPDK's for a program it cannot convert or load.
    pub fn compile(expr: &str, snaplen: u32) -> Result<BpfFilter, String> {
        let cexpr = CString::new(expr).map_err(|_| "the filter contains a NUL byte".to_owned())?;
        let snaplen = i32::try_from(snaplen.max(1)).unwrap_or(i32::MAX);
        // SAFETY: pcap_open_dead allocates a handle for compiling only; NULL on failure.
        let pcap = unsafe { ffi::pcap_open_dead(ffi::DLT_EN10MB as i32, snaplen) };
        if pcap.is_null() {
            return Err("libpcap could not open a handle to compile the filter".to_owned());
        }
        let mut prog = ffi::bpf_program::default();
        // SAFETY: pcap is a live handle, prog a zeroed bpf_program libpcap fills, cexpr a
        // NUL-terminated string that outlives the call.
        let rc = unsafe {
            ffi::pcap_compile(
                pcap,
                &mut prog,
                cexpr.as_ptr(),
                1,
                ffi::PCAP_NETMASK_UNKNOWN,
            )
        };
        if rc != 0 {
            // SAFETY: pcap_geterr returns the handle's NUL-terminated message buffer, valid
            // until the handle is closed (after the copy below).
            let msg = unsafe { CStr::from_ptr(ffi::pcap_geterr(pcap)) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: pcap is a live handle, closed once.
            unsafe { ffi::pcap_close(pcap) };
            return Err(msg);
        }
        let classic_len = prog.bf_len;
        // SAFETY: prog holds the program pcap_compile produced; rte_bpf_convert reads it and
        // returns a new rte_malloc'ed parameter block (or NULL with rte_errno set).
        let prm = unsafe { ffi::rte_bpf_convert(&prog) };
        // SAFETY: prog was filled by pcap_compile and is freed once; pcap is closed once.
        unsafe {
            ffi::pcap_freecode(&mut prog);
            ffi::pcap_close(pcap);
        }
        if prm.is_null() {
            return Err(format!(
                "DPDK cannot convert the filter: {}",
                crate::DpdkError::last("rte_bpf_convert")
            ));
        }
        // SAFETY: prm is the valid block from rte_bpf_convert; rte_bpf_load copies the
        // instructions into its own mapping, so prm can be freed right after.
        let bpf = unsafe { ffi::rte_bpf_load(prm) };
        // SAFETY: prm came from rte_malloc (rte_bpf_convert) and is freed once.
        unsafe { ffi::rte_free(prm.cast()) };
        let Some(bpf) = NonNull::new(bpf) else {
            return Err(format!(
                "DPDK refuses the converted filter: {}",
                crate::DpdkError::last("rte_bpf_load")
            ));
        };
        let mut jit = ffi::rte_bpf_jit::default();
        // SAFETY: bpf is a loaded program; jit is written by the call.
        let rc = unsafe { ffi::rte_bpf_get_jit(bpf.as_ptr(), &mut jit) };
        Ok(BpfFilter {
            bpf,
            jit: if rc == 0 { jit.func } else { None },
            classic_len,
        })
    }

    /// Whether DPDK's JIT compiled the filter (else [`BpfFilter::matches`] interprets it).
    pub fn jitted(&self) -> bool {
        self.jit.is_some()
    }

    /// Instructions of the classic BPF program libpcap compiled.
    pub fn classic_len(&self) -> u32 {
        self.classic_len
    }

    /// Runs the filter on `m`'s frame: whether it matches.
    #[inline(always)]
    pub fn matches(&self, m: &Mbuf) -> bool {
        let arg = m.as_ptr().cast::<c_void>();
        let r = match self.jit {
            // SAFETY: the JIT code of a program rte_bpf_load verified, whose argument is an
            // mbuf (rte_bpf_convert says so): it only reads the mbuf, which `m` keeps alive.
            Some(f) => unsafe { f(arg) },
            // SAFETY: as above, through DPDK's interpreter.
            None => unsafe { ffi::rte_bpf_exec(self.bpf.as_ptr(), arg) },
        };
        r != 0
    }
}

impl Drop for BpfFilter {
    fn drop(&mut self) {
        // SAFETY: bpf came from rte_bpf_load and is destroyed once; no run is in progress
        // (runs borrow self).
        unsafe { ffi::rte_bpf_destroy(self.bpf.as_ptr()) };
    }
}
