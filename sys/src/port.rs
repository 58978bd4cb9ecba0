//! Ethernet ports: configure, start/stop, queues, MAC, link and statistics.
use std::ffi::{CStr, CString};
use std::fmt;

use crate::eal::Eal;
use crate::error::{DpdkError, Result, ToResult};
use crate::ffi;
use crate::mbuf::{Mbuf, MbufBatch, BURST};
use crate::mempool::Mempool;

/// A DPDK port number; prints as `port0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port{}", self.0)
    }
}

/// A queue number on a port; prints as `q1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u16);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "q{}", self.0)
    }
}

/// How to configure a port.
#[derive(Debug, Clone)]
pub struct PortConfig {
    /// RX queues (one per worker).
    pub rx_queues: u16,
    /// TX queues (one per worker).
    pub tx_queues: u16,
    /// Descriptors per RX queue.
    pub rx_descriptors: u16,
    /// Descriptors per TX queue.
    pub tx_descriptors: u16,
    /// Spread flows over RX queues by RSS (IP + TCP/UDP ports) where the device supports it.
    pub rss: bool,
    /// Receive every frame regardless of destination MAC.
    pub promiscuous: bool,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            rx_queues: 1,
            tx_queues: 1,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            rss: true,
            promiscuous: true,
        }
    }
}

/// Link state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStatus {
    /// Link up.
    pub up: bool,
    /// Speed in Mbit/s (0 if unknown).
    pub speed_mbps: u32,
    /// Full duplex.
    pub full_duplex: bool,
}

/// Basic port counters (`rte_eth_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets the NIC dropped because RX queues were full.
    pub rx_missed: u64,
    /// Erroneous received packets.
    pub rx_errors: u64,
    /// Failed transmissions.
    pub tx_errors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
}

/// An Ethernet port. Stopped and closed on drop.
#[derive(Debug)]
pub struct Port {
    id: PortId,
    name: String,
    started: bool,
    configured: bool,
    keep: Option<Box<dyn std::fmt::Debug + Send>>,
}

const RSS_IP_TCP_UDP: u64 =
    (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11);

impl Port {
    /// Looks a port up by its device name (e.g. `net_ring0`, `0000:3b:00.0`).
    pub fn by_name(_eal: &Eal, name: &str) -> Result<Port> {
        let cname = CString::new(name).map_err(|_| DpdkError::NoSuchPort(name.to_string()))?;
        let mut id: u16 = 0;
        // SAFETY: EAL running (we hold &Eal); cname valid for the call; id is a valid out-ptr.
        let rc = unsafe { ffi::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut id) };
        if rc != 0 {
            return Err(DpdkError::NoSuchPort(name.to_string()));
        }
        Ok(Port {
            id: PortId(id),
            name: name.to_string(),
            started: false,
            configured: false,
            keep: None,
        })
    }

    /// Opens a port by number.
    pub fn by_id(eal: &Eal, id: u16) -> Result<Port> {
        if id >= eal.port_count() {
            return Err(DpdkError::NoSuchPort(format!("port{id}")));
        }
        let mut buf = [0 as std::ffi::c_char; 64];
        // SAFETY: EAL running; buf is a valid 64-byte buffer (RTE_ETH_NAME_MAX_LEN).
        unsafe { ffi::rte_eth_dev_get_name_by_port(id, buf.as_mut_ptr()) }
            .check("rte_eth_dev_get_name_by_port")?;
        // SAFETY: DPDK wrote a NUL-terminated name into buf.
        let name = unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        Ok(Port {
            id: PortId(id),
            name,
            started: false,
            configured: false,
            keep: None,
        })
    }

    /// Keeps `v` alive as long as the port (e.g. the rings behind a ring port).
    pub(crate) fn keep_alive(&mut self, v: Box<dyn std::fmt::Debug + Send>) {
        self.keep = Some(v);
    }

    /// The port number.
    pub fn id(&self) -> PortId {
        self.id
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn info(&self) -> Result<ffi::rte_eth_dev_info> {
        let mut info = ffi::rte_eth_dev_info::default();
        // SAFETY: valid port id; info is a valid out-struct.
        unsafe { ffi::rte_eth_dev_info_get(self.id.0, &mut info) }.check("rte_eth_dev_info_get")?;
        Ok(info)
    }

    /// The driver's name (e.g. `net_ring`).
    pub fn driver_name(&self) -> Result<String> {
        let info = self.info()?;
        if info.driver_name.is_null() {
            return Ok(String::new());
        }
        // SAFETY: driver_name is a static NUL-terminated string owned by the driver.
        Ok(unsafe { CStr::from_ptr(info.driver_name) }
            .to_string_lossy()
            .into_owned())
    }

    /// Maximum RX and TX queues the device supports.
    pub fn max_queues(&self) -> Result<(u16, u16)> {
        let info = self.info()?;
        Ok((info.max_rx_queues, info.max_tx_queues))
    }

    /// Configures queues and returns their handles (index = queue number). RX buffers come from
    /// `pool`, which must outlive the port.
    pub fn configure(
        &mut self,
        cfg: &PortConfig,
        pool: &Mempool,
    ) -> Result<(Vec<RxQueue>, Vec<TxQueue>)> {
        let info = self.info()?;
        let mut conf = ffi::rte_eth_conf::default();
        let rss_hf = info.flow_type_rss_offloads & RSS_IP_TCP_UDP;
        if cfg.rss && cfg.rx_queues > 1 && rss_hf != 0 {
            conf.rxmode.mq_mode = ffi::RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_hf = rss_hf;
        }
        // SAFETY: valid port id, stopped (not started by us); conf is a valid struct.
        unsafe { ffi::rte_eth_dev_configure(self.id.0, cfg.rx_queues, cfg.tx_queues, &conf) }
            .check("rte_eth_dev_configure")?;
        // SAFETY: valid port id.
        let socket = unsafe { ffi::rte_eth_dev_socket_id(self.id.0) };
        let socket = if socket < 0 { 0 } else { socket as u32 };
        let mut rx = Vec::with_capacity(cfg.rx_queues as usize);
        for q in 0..cfg.rx_queues {
            // SAFETY: port configured with rx_queues queues; pool pointer valid (caller keeps
            // it alive); NULL rxconf means driver defaults.
            unsafe {
                ffi::rte_eth_rx_queue_setup(
                    self.id.0,
                    q,
                    cfg.rx_descriptors,
                    socket,
                    std::ptr::null(),
                    pool.as_ptr(),
                )
            }
            .check("rte_eth_rx_queue_setup")?;
            rx.push(RxQueue {
                port: self.id.0,
                queue: q,
            });
        }
        let mut tx = Vec::with_capacity(cfg.tx_queues as usize);
        for q in 0..cfg.tx_queues {
            // SAFETY: port configured with tx_queues queues; NULL txconf means driver defaults.
            unsafe {
                ffi::rte_eth_tx_queue_setup(
                    self.id.0,
                    q,
                    cfg.tx_descriptors,
                    socket,
                    std::ptr::null(),
                )
            }
            .check("rte_eth_tx_queue_setup")?;
            tx.push(TxQueue {
                port: self.id.0,
                queue: q,
            });
        }
        if cfg.promiscuous {
            // Not every virtual device supports it (e.g. net_ring); that is not an error.
            // SAFETY: valid port id.
            let _ = unsafe { ffi::rte_eth_promiscuous_enable(self.id.0) };
        }
        self.configured = true;
        Ok((rx, tx))
    }

    /// Sets the device's MTU (bytes of IP packet). `Ok(false)` when the driver cannot change
    /// its MTU (`ENOTSUP`, e.g. `net_ring`): it keeps its own. Call after [`Self::configure`]
    /// and before [`Self::start`].
    pub fn set_mtu(&mut self, mtu: u16) -> Result<bool> {
        // SAFETY: valid port id; DPDK checks the value against the device's limits.
        match unsafe { ffi::rte_eth_dev_set_mtu(self.id.0, mtu) }.check("rte_eth_dev_set_mtu") {
            Ok(_) => Ok(true),
            Err(DpdkError::Call { errno, .. }) if errno == libc::ENOTSUP => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Starts the port.
    pub fn start(&mut self) -> Result<()> {
        // SAFETY: valid, configured port id.
        unsafe { ffi::rte_eth_dev_start(self.id.0) }.check("rte_eth_dev_start")?;
        self.started = true;
        Ok(())
    }

    /// Stops the port (queues stop delivering packets).
    pub fn stop(&mut self) -> Result<()> {
        if self.started {
            // SAFETY: valid port id.
            unsafe { ffi::rte_eth_dev_stop(self.id.0) }.check("rte_eth_dev_stop")?;
            self.started = false;
        }
        Ok(())
    }

    /// The port's MAC address.
    pub fn mac(&self) -> Result<[u8; 6]> {
        let mut a = ffi::rte_ether_addr::default();
        // SAFETY: valid port id; a is a valid out-struct.
        unsafe { ffi::rte_eth_macaddr_get(self.id.0, &mut a) }.check("rte_eth_macaddr_get")?;
        Ok(a.addr_bytes)
    }

    /// Link status, without waiting.
    pub fn link(&self) -> Result<LinkStatus> {
        let mut l = ffi::rte_eth_link::default();
        // SAFETY: valid port id; l is a valid out-struct.
        unsafe { ffi::rte_eth_link_get_nowait(self.id.0, &mut l) }
            .check("rte_eth_link_get_nowait")?;
        Ok(LinkStatus {
            up: l.link_status() != 0,
            speed_mbps: l.link_speed,
            full_duplex: l.link_duplex() != 0,
        })
    }

    /// Basic counters.
    pub fn stats(&self) -> Result<PortStats> {
        let mut s = ffi::rte_eth_stats::default();
        // SAFETY: valid port id; s is a valid out-struct.
        unsafe { ffi::rte_eth_stats_get(self.id.0, &mut s) }.check("rte_eth_stats_get")?;
        Ok(PortStats {
            rx_packets: s.ipackets,
            tx_packets: s.opackets,
            rx_bytes: s.ibytes,
            tx_bytes: s.obytes,
            rx_missed: s.imissed,
            rx_errors: s.ierrors,
            tx_errors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        })
    }

    /// Resets basic and extended counters.
    pub fn reset_stats(&self) -> Result<()> {
        // SAFETY: valid port id.
        unsafe { ffi::rte_eth_stats_reset(self.id.0) }.check("rte_eth_stats_reset")?;
        // SAFETY: valid port id. Some drivers do not support xstats reset; ignore that.
        let _ = unsafe { ffi::rte_eth_xstats_reset(self.id.0) };
        Ok(())
    }

    /// Extended counters by name (driver-specific).
    pub fn xstats(&self) -> Result<Vec<(String, u64)>> {
        // SAFETY: valid port id; NULL/0 asks for the count.
        let n = unsafe { ffi::rte_eth_xstats_get_names(self.id.0, std::ptr::null_mut(), 0) }
            .check("rte_eth_xstats_get_names")? as usize;
        let mut names = vec![ffi::rte_eth_xstat_name::default(); n];
        let mut vals = vec![ffi::rte_eth_xstat::default(); n];
        // SAFETY: names has n elements.
        let got = unsafe { ffi::rte_eth_xstats_get_names(self.id.0, names.as_mut_ptr(), n as u32) }
            .check("rte_eth_xstats_get_names")? as usize;
        // SAFETY: vals has n elements.
        let gotv = unsafe { ffi::rte_eth_xstats_get(self.id.0, vals.as_mut_ptr(), n as u32) }
            .check("rte_eth_xstats_get")? as usize;
        let m = got.min(gotv).min(n);
        let mut out = Vec::with_capacity(m);
        for v in &vals[..m] {
            let idx = v.id as usize;
            if idx >= m {
                continue;
            }
            // SAFETY: the driver wrote a NUL-terminated name into a fixed 64-byte array.
            let name = unsafe { CStr::from_ptr(names[idx].name.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            out.push((name, v.value));
        }
        Ok(out)
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        let _ = self.stop();
        if self.configured {
            // SAFETY: valid, stopped port; queues are not used after the port is dropped
            // (owners drop workers first).
            unsafe { ffi::rte_eth_dev_close(self.id.0) };
        }
    }
}

/// One RX queue of a started port. Owned by exactly one thread.
#[derive(Debug)]
pub struct RxQueue {
    port: u16,
    queue: u16,
}

/// One TX queue of a started port. Owned by exactly one thread.
#[derive(Debug)]
pub struct TxQueue {
    port: u16,
    queue: u16,
}

impl RxQueue {
    /// The port.
    pub fn port(&self) -> PortId {
        PortId(self.port)
    }
    /// The queue.
    pub fn queue(&self) -> QueueId {
        QueueId(self.queue)
    }
    /// Receives into the free tail of `batch`; returns how many packets arrived.
    #[inline(always)]
    pub fn rx_burst(&mut self, batch: &mut MbufBatch) -> usize {
        let (p, room) = batch.tail_raw();
        if room == 0 {
            return 0;
        }
        // SAFETY: the queue is set up and owned by this thread (&mut self, created once per
        // queue); p points at `room` writable slots.
        let n = unsafe { ffi::sluice_rx_burst(self.port, self.queue, p, room as u16) } as usize;
        // SAFETY: the driver wrote n valid owned mbufs into the tail.
        unsafe { batch.commit_tail(n) };
        n
    }
}

impl TxQueue {
    /// The port.
    pub fn port(&self) -> PortId {
        PortId(self.port)
    }
    /// The queue.
    pub fn queue(&self) -> QueueId {
        QueueId(self.queue)
    }
    /// Sends mbufs from the front of `batch`; those sent leave it, the rest move to the front.
    /// Returns how many were sent.
    #[inline(always)]
    pub fn tx_burst(&mut self, batch: &mut MbufBatch) -> usize {
        let (p, n) = batch.head_raw();
        if n == 0 {
            return 0;
        }
        // SAFETY: queue set up and owned by this thread; p holds n valid owned mbufs; the
        // driver takes ownership of the first k it returns.
        let k = unsafe { ffi::sluice_tx_burst(self.port, self.queue, p, n as u16) } as usize;
        batch.consume_front(k);
        k
    }

    /// Sends the packets `pkts` yields (the first [`BURST`]) without giving them up: each sent
    /// mbuf gets one more reference, which the driver drops when it is done with the packet
    /// (at once for copying drivers such as `net_memif`, after the DMA for a NIC). The caller
    /// keeps its handles and may send the same buffers again: this is how a traffic generator
    /// reuses precomputed template packets without allocating or copying. Check
    /// [`Mbuf::refcnt`] is 1 before rewriting one, or the driver may send the new bytes.
    /// Returns how many were sent (a prefix of what `pkts` yielded).
    #[inline(always)]
    pub fn tx_burst_shared<'a, I: IntoIterator<Item = &'a Mbuf>>(&mut self, pkts: I) -> usize {
        let mut raw = [std::ptr::null_mut::<ffi::rte_mbuf>(); BURST];
        let mut n = 0;
        for m in pkts.into_iter().take(BURST) {
            raw[n] = m.as_ptr();
            // SAFETY: valid mbuf that the caller owns; the extra reference is the driver's.
            unsafe { ffi::sluice_mbuf_refcnt_update(raw[n], 1) };
            n += 1;
        }
        if n == 0 {
            return 0;
        }
        // SAFETY: queue set up and owned by this thread; raw holds n valid mbufs, each with a
        // reference the driver takes over for the ones it accepts.
        let k = unsafe { ffi::sluice_tx_burst(self.port, self.queue, raw.as_mut_ptr(), n as u16) }
            as usize;
        for r in &raw[k..n] {
            // SAFETY: the driver refused these; take back the reference we added (the caller's
            // own reference keeps the mbuf alive).
            unsafe { ffi::sluice_mbuf_refcnt_update(*r, -1) };
        }
        k
    }
}
