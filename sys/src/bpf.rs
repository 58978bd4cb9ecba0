//! Capture filters: a tcpdump expression compiled by libpcap to classic BPF. The worker runs
//! the instructions with its own interpreter (`sluice_dataplane::capture::bpf`); libpcap's
//! interpreter (`bpf_filter`) is the reference it is tested against.
//!
//! DPDK's route (`rte_bpf_convert`, `rte_bpf_load`, the x86 JIT, as `dpdk-dumpcap` uses) was
//! tried and dropped: in Debian's DPDK 22.11 the JIT of `tcp[13] & 2 != 0` (a byte load at an
//! offset in X) crashes the process on a plain TCP frame (docs/benchmarks.md).
use std::ffi::{CStr, CString};

use crate::ffi;

/// A tcpdump expression compiled by libpcap to classic BPF (for Ethernet frames).
#[derive(Debug)]
pub struct PcapProgram {
    prog: ffi::bpf_program,
}

// SAFETY: the program is libpcap's heap array, owned by this value alone and never written
// after pcap_compile; reading it from another thread is fine.
unsafe impl Send for PcapProgram {}
// SAFETY: as above; every method reads only.
unsafe impl Sync for PcapProgram {}

impl PcapProgram {
    /// Compiles `expr` for Ethernet frames captured up to `snaplen` bytes (no EAL needed).
    ///
    /// # Errors
    /// libpcap's own message for an expression it refuses (`syntax error`, `unknown host`).
    pub fn compile(expr: &str, snaplen: u32) -> Result<PcapProgram, String> {
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
        let err = (rc != 0).then(|| {
            // SAFETY: pcap_geterr returns the handle's NUL-terminated message buffer, valid
            // until the handle is closed (after this copy).
            unsafe { CStr::from_ptr(ffi::pcap_geterr(pcap)) }
                .to_string_lossy()
                .into_owned()
        });
        // SAFETY: pcap is a live handle, closed once; the program does not refer to it.
        unsafe { ffi::pcap_close(pcap) };
        match err {
            Some(e) => Err(e),
            None => Ok(PcapProgram { prog }),
        }
    }

    /// The classic BPF instructions: (code, jt, jf, k) each.
    pub fn instructions(&self) -> Vec<(u16, u8, u8, u32)> {
        if self.prog.bf_insns.is_null() {
            return Vec::new();
        }
        // SAFETY: bf_insns points at bf_len instructions libpcap allocated, alive until drop.
        let insns =
            unsafe { std::slice::from_raw_parts(self.prog.bf_insns, self.prog.bf_len as usize) };
        insns.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect()
    }

    /// Whether `frame` matches, by libpcap's own interpreter (`bpf_filter`): the reference
    /// other evaluators are tested against.
    pub fn matches(&self, frame: &[u8]) -> bool {
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        // SAFETY: the program is valid (pcap_compile); bpf_filter reads at most `len` bytes
        // of `frame`, which it is given with its length.
        unsafe { ffi::bpf_filter(self.prog.bf_insns, frame.as_ptr(), len, len) != 0 }
    }
}

impl Drop for PcapProgram {
    fn drop(&mut self) {
        // SAFETY: prog was filled by pcap_compile and is freed once.
        unsafe { ffi::pcap_freecode(&mut self.prog) };
    }
}
