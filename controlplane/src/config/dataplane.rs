//! `[eal]`, `[[ports]]`, `[workers]`, `[tables]`, `[nat]`: the dataplane's resources.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;

use super::de::{de_v4_ifaces, de_v6_ifaces};

/// `[eal]`: options for DPDK's Environment Abstraction Layer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EalConfig {
    /// Extra EAL arguments, passed as given (e.g. `["--in-memory"]`). Default: none.
    pub args: Vec<String>,
    /// `--file-prefix` for the hugepage files; needed when two DPDK processes run side by side.
    /// Default: none (DPDK's own default, `rte`).
    pub file_prefix: Option<String>,
}

/// `[[ports]]`: one DPDK port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// A name for logs and metrics (unique).
    pub name: String,
    /// The DPDK device: a virtual device string (`net_af_packet0,iface=sl-lb0`) or a PCI
    /// address (`0000:3b:00.0`).
    pub device: String,
    /// Our IPv4 addresses with their prefix length (`10.99.0.2/24`); the prefix gives the
    /// on-link subnet.
    #[serde(default, deserialize_with = "de_v4_ifaces")]
    pub ipv4: Vec<Ipv4Net>,
    /// Our IPv6 addresses with their prefix length (`fd00:99::2/64`).
    #[serde(default, deserialize_with = "de_v6_ifaces")]
    pub ipv6: Vec<Ipv6Net>,
    /// IPv4 gateway for backends outside every on-link subnet. Default: none.
    #[serde(default)]
    pub gateway_v4: Option<Ipv4Addr>,
    /// IPv6 gateway for backends outside every on-link subnet. Default: none.
    #[serde(default)]
    pub gateway_v6: Option<Ipv6Addr>,
    /// MTU of the port in bytes of IP packet, [`MIN_MTU`]..=[`MAX_MTU`]; set on the device at
    /// start. Default: 1500.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
}

impl PortConfig {
    /// Whether `device` names a DPDK virtual device (`net_...`) rather than a PCI address.
    pub fn is_vdev(&self) -> bool {
        self.device.starts_with("net_") || self.device.starts_with("eth_")
    }

    /// Whether `addr` is inside one of this port's on-link subnets.
    pub fn on_link(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.ipv4.iter().any(|n| n.contains(&a)),
            IpAddr::V6(a) => self.ipv6.iter().any(|n| n.contains(&a)),
        }
    }

    /// The gateway of `addr`'s family, if configured.
    pub fn gateway_for(&self, addr: IpAddr) -> Option<IpAddr> {
        match addr {
            IpAddr::V4(_) => self.gateway_v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.gateway_v6.map(IpAddr::V6),
        }
    }
}

/// The smallest `mtu` accepted (the IPv4 minimum datagram every host must take).
pub const MIN_MTU: u16 = 576;

/// The largest `mtu` accepted: a frame of that MTU, with an Ethernet header and one VLAN tag,
/// fits one packet buffer (multi-segment frames are dropped).
pub const MAX_MTU: u16 = dpdk_sys::Mempool::DEFAULT_MAX_FRAME - 18;

fn default_mtu() -> u16 {
    1500
}

/// `[workers]`: which cores run the poll-mode workers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// One worker (and one RX/TX queue per port) per core. Default: `[1]`.
    pub cores: Vec<usize>,
    /// Cores for the control plane's threads; default: every core not in `cores`.
    pub control_cores: Option<Vec<usize>>,
    /// A partial TX burst waits at most this many microseconds. Default: 100.
    pub tx_flush_us: u64,
    /// How workers wait for packets. Default: busy.
    pub poll: PollMode,
    /// In idle mode, how long a worker sleeps per empty poll after a quiet spell, in
    /// microseconds. Default: 100.
    pub idle_sleep_us: u64,
}

/// `[workers] poll`: how a worker waits for packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PollMode {
    /// Spin on the RX queues: lowest latency, one full core per worker.
    #[default]
    Busy,
    /// Sleep between polls after a quiet spell: for hosts whose cores are shared.
    Idle,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            cores: vec![1],
            control_cores: None,
            tx_flush_us: 100,
            poll: PollMode::Busy,
            idle_sleep_us: 100,
        }
    }
}

/// `[tables]`: preallocated table sizes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TablesConfig {
    /// IPv4 connection-tracking entries per worker. Default: 1048576.
    pub conntrack_capacity: usize,
    /// IPv6 connection-tracking entries per worker. Default: 262144.
    pub conntrack_v6_capacity: usize,
    /// ClientIP session-affinity entries per worker and family. Default: 65536.
    pub affinity_capacity: usize,
    /// Maglev table size per frontend: `"auto"` (from the number of backends) or a prime.
    /// Default: `"auto"`.
    pub maglev_size: MaglevSize,
    /// Upper bound of frontend and backend ids (per-backend counters are preallocated to it).
    /// Default: 65536.
    pub max_backends: usize,
    /// `[tables.timeouts]`: how long an idle flow is kept, by protocol and TCP state.
    pub timeouts: TimeoutsConfig,
}

/// `[tables] maglev_size` and the `sluice.dev/maglev-size` annotation: how large a frontend's
/// Maglev table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaglevSize {
    /// From the number of backends the Service lists for the frontend:
    /// [`sluice_dataplane::maglev::auto_size`], the smallest rung of a fixed ladder of primes
    /// with 300 slots per backend. Every host given the same endpoints chooses the same size.
    #[default]
    Auto,
    /// This prime, whatever the number of backends.
    Fixed(u32),
}

impl MaglevSize {
    /// Parses `"auto"` or a prime (the annotation's text; the config key also takes a bare
    /// integer).
    ///
    /// # Errors
    /// A message saying what to write instead.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(MaglevSize::Auto);
        }
        let n: u32 = s
            .parse()
            .map_err(|_| format!("{s:?} is neither \"auto\" nor a prime table size"))?;
        super::check_maglev_size(n)?;
        Ok(MaglevSize::Fixed(n))
    }

    /// The table size for a frontend whose Service lists `backends` backends.
    #[must_use]
    pub fn for_backends(self, backends: usize) -> u32 {
        match self {
            MaglevSize::Auto => sluice_dataplane::maglev::auto_size(backends),
            MaglevSize::Fixed(n) => n,
        }
    }
}

impl std::fmt::Display for MaglevSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaglevSize::Auto => f.write_str("auto"),
            MaglevSize::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for MaglevSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = MaglevSize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"auto\" or a prime table size such as 65537")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<MaglevSize, E> {
                // Checked (prime, at most the maximum) by `Config::validate`, which names the key.
                u32::try_from(v).map(MaglevSize::Fixed).map_err(|_| {
                    E::custom(format!(
                        "{v} is out of range; use \"auto\" or a prime up to {}",
                        sluice_dataplane::maglev::MAX_TABLE_SIZE
                    ))
                })
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<MaglevSize, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(-1))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MaglevSize, E> {
                MaglevSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// `[tables.timeouts]`: idle timeouts of connection-tracking entries, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// A TCP flow whose handshake has not completed (1..=300). Default: 5.
    pub tcp_syn_seconds: u32,
    /// An established TCP flow (10..=86400). Default: 300.
    pub tcp_established_seconds: u32,
    /// A TCP flow after FIN or RST (1..=600). Default: 10.
    pub tcp_closing_seconds: u32,
    /// A UDP flow (1..=3600). Default: 30.
    pub udp_seconds: u32,
    /// Any other flow (1..=3600). Default: 30.
    pub other_seconds: u32,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        let t = sluice_dataplane::conntrack::Timeouts::default();
        TimeoutsConfig {
            tcp_syn_seconds: t.tcp_syn_ms / 1000,
            tcp_established_seconds: t.tcp_established_ms / 1000,
            tcp_closing_seconds: t.tcp_closing_ms / 1000,
            udp_seconds: t.udp_ms / 1000,
            other_seconds: t.other_ms / 1000,
        }
    }
}

impl TimeoutsConfig {
    /// The dataplane's timeouts (milliseconds).
    pub fn to_dataplane(self) -> sluice_dataplane::conntrack::Timeouts {
        sluice_dataplane::conntrack::Timeouts {
            tcp_syn_ms: self.tcp_syn_seconds * 1000,
            tcp_established_ms: self.tcp_established_seconds * 1000,
            tcp_closing_ms: self.tcp_closing_seconds * 1000,
            udp_ms: self.udp_seconds * 1000,
            other_ms: self.other_seconds * 1000,
        }
    }

    /// Each key with its value and allowed range.
    pub fn ranges(&self) -> [(&'static str, u32, u32, u32); 5] {
        [
            (
                "tables.timeouts.tcp_syn_seconds",
                self.tcp_syn_seconds,
                1,
                300,
            ),
            (
                "tables.timeouts.tcp_established_seconds",
                self.tcp_established_seconds,
                10,
                86_400,
            ),
            (
                "tables.timeouts.tcp_closing_seconds",
                self.tcp_closing_seconds,
                1,
                600,
            ),
            ("tables.timeouts.udp_seconds", self.udp_seconds, 1, 3_600),
            (
                "tables.timeouts.other_seconds",
                self.other_seconds,
                1,
                3_600,
            ),
        ]
    }
}

/// The largest connection-tracking capacity the dataplane accepts.
pub const MAX_CONNTRACK_CAPACITY: usize = sluice_dataplane::conntrack::MAX_CAPACITY;

impl Default for TablesConfig {
    fn default() -> Self {
        TablesConfig {
            conntrack_capacity: 1 << 20,
            conntrack_v6_capacity: 1 << 18,
            affinity_capacity: 1 << 16,
            maglev_size: MaglevSize::Auto,
            max_backends: 65536,
            timeouts: TimeoutsConfig::default(),
        }
    }
}

/// `[nat]`: full-NAT source addresses and ports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatConfig {
    /// Local (source) addresses for `nat` flows, IPv4 and IPv6 mixed. Default: none, in which
    /// case the ports' own addresses are used.
    pub addresses: Vec<IpAddr>,
    /// First local port (inclusive). Default: 20000.
    pub port_min: u16,
    /// Last local port (inclusive). Default: 65535.
    pub port_max: u16,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            addresses: Vec::new(),
            port_min: 20000,
            port_max: 65535,
        }
    }
}
