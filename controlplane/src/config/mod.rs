//! # The `sluiced` configuration file
//!
//! One TOML file, read once at start-up by [`Config::load`]. Every section and key has a
//! default except `[[ports]]`, which must name at least one port; `docs/configuration.md`
//! documents every key.
//!
//! ## Design
//! - **Strict.** Every table denies unknown keys, so a typo (`workres`) is an error that names
//!   the file, the line and the key, and lists the keys that are allowed, rather than a setting
//!   silently left at its default.
//! - **Two stages.** Parsing (types, unknown keys, address syntax) goes through
//!   `serde_path_to_error` so an error knows the key path (`ports[0].ipv4[1]`) and `toml`'s span
//!   gives the line. Semantic checks that involve several keys (port ranges, overlapping pools,
//!   a prime Maglev size) run afterwards in [`Config::validate`] and name the key they reject.
//! - Addresses are parsed into typed values here, so nothing downstream parses strings again.
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::de::{Deserializer, Error as _};
use serde::Deserialize;
use sluice_dataplane::maglev::{is_prime, next_prime, MAX_TABLE_SIZE};
use sluice_dataplane::snapshot::Method;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the configuration file: {source}; check the path (e.g. `sluiced --config /etc/sluice/sluice.toml`)", .file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, a key is unknown, or a value has the wrong type or syntax.
    #[error("{}:{line}:{column}: {message}", .file.display())]
    Parse {
        /// The file.
        file: PathBuf,
        /// 1-based line of the offending value (0 when unknown).
        line: usize,
        /// 1-based column.
        column: usize,
        /// Dotted key path, e.g. `ports[0].ipv4[1]` (empty at top level).
        key: String,
        /// What is wrong and how to fix it (includes the key path).
        message: String,
    },
    /// The values parse but do not make sense together.
    #[error("{}: {key}: {message}", .file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Dotted key path, e.g. `nat.port_min`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl ConfigError {
    /// The dotted key path the error is about (empty for I/O errors and top-level errors).
    pub fn key(&self) -> &str {
        match self {
            ConfigError::Read { .. } => "",
            ConfigError::Parse { key, .. } | ConfigError::Invalid { key, .. } => key,
        }
    }
}

/// The whole configuration of `sluiced`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// DPDK EAL options.
    #[serde(default)]
    pub eal: EalConfig,
    /// The DPDK ports (at least one; the first one carries the VIPs for now).
    #[serde(default)]
    pub ports: Vec<PortConfig>,
    /// Worker cores.
    #[serde(default)]
    pub workers: WorkersConfig,
    /// Table sizes.
    #[serde(default)]
    pub tables: TablesConfig,
    /// Full-NAT local addresses and ports.
    #[serde(default)]
    pub nat: NatConfig,
    /// Forwarding defaults.
    #[serde(default)]
    pub forwarding: ForwardingConfig,
    /// VIP pools for IPAM.
    #[serde(default)]
    pub pools: Vec<PoolConfig>,
    /// Active health checks.
    #[serde(default)]
    pub health: HealthConfig,
    /// Where Services, EndpointSlices and Nodes come from.
    #[serde(default)]
    pub source: SourceConfig,
    /// Admin socket and metrics (parsed, not used yet).
    #[serde(default)]
    pub admin: AdminConfig,
}

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
    /// MTU of the port in bytes of IP packet. Default: 1500.
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
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            cores: vec![1],
            control_cores: None,
            tx_flush_us: 100,
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
    /// Default Maglev table size per frontend (a prime). Default: 65537.
    pub maglev_size: u32,
    /// Upper bound of frontend and backend ids (per-backend counters are preallocated to it).
    /// Default: 65536.
    pub max_backends: usize,
}

/// The largest connection-tracking capacity the dataplane accepts.
pub const MAX_CONNTRACK_CAPACITY: usize = sluice_dataplane::conntrack::MAX_CAPACITY;

impl Default for TablesConfig {
    fn default() -> Self {
        TablesConfig {
            conntrack_capacity: 1 << 20,
            conntrack_v6_capacity: 1 << 18,
            affinity_capacity: 1 << 16,
            maglev_size: sluice_dataplane::maglev::DEFAULT_TABLE_SIZE,
            max_backends: 65536,
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

/// What a frontend's backends are.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Pod addresses from EndpointSlices, on the Service port's targetPort.
    Pod,
    /// Node InternalIPs, on the Service port's nodePort.
    Node,
}

impl Target {
    /// Name as used in config and annotations.
    pub fn name(self) -> &'static str {
        match self {
            Target::Pod => "pod",
            Target::Node => "node",
        }
    }

    /// Parses a config/annotation value.
    pub fn parse(s: &str) -> Option<Target> {
        match s {
            "pod" => Some(Target::Pod),
            "node" => Some(Target::Node),
            _ => None,
        }
    }
}

/// The default Maglev/flow hash seed: `"sluice\0\x01"`; equal on every host of an ECMP group.
pub const DEFAULT_HASH_SEED: u64 = 0x736c_7569_6365_0001;

/// `[forwarding]`: defaults for how Services are forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardingConfig {
    /// `nat`, `dsr-l2` or `dsr-ipip`; a Service's `sluice.dev/forwarding-method` annotation
    /// overrides it. Default: `nat`.
    #[serde(deserialize_with = "de_method")]
    pub default_method: Method,
    /// `pod` or `node`; the `sluice.dev/target` annotation overrides it. Default: `pod`.
    pub target: Target,
    /// Seed of the flow and Maglev hashes (0 to 2^63-1); must be equal on every Sluice host
    /// of an ECMP group. Default: [`DEFAULT_HASH_SEED`].
    pub hash_seed: u64,
    /// Seconds a backend that left its EndpointSlice stays in the snapshot as draining.
    /// Default: 300.
    pub removed_backend_grace_seconds: u64,
}

impl Default for ForwardingConfig {
    fn default() -> Self {
        ForwardingConfig {
            default_method: Method::Nat,
            target: Target::Pod,
            hash_seed: DEFAULT_HASH_SEED,
            removed_backend_grace_seconds: 300,
        }
    }
}

/// An inclusive address range `a-b` of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpRange {
    /// First address.
    pub start: IpAddr,
    /// Last address (same family, not below `start`).
    pub end: IpAddr,
}

impl IpRange {
    /// Parses `a-b` (spaces around `-` allowed).
    pub fn parse(s: &str) -> Result<IpRange, String> {
        let Some((a, b)) = s.split_once('-') else {
            return Err(format!(
                "{s:?} is not a range; write it as \"10.99.0.100-10.99.0.120\" (or list a CIDR under `cidrs`)"
            ));
        };
        let start: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{:?} in range {s:?} is not an IP address", a.trim()))?;
        let end: IpAddr = b
            .trim()
            .parse()
            .map_err(|_| format!("{:?} in range {s:?} is not an IP address", b.trim()))?;
        if start.is_ipv4() != end.is_ipv4() {
            return Err(format!(
                "range {s:?} mixes IPv4 and IPv6; use one range per family"
            ));
        }
        if ip_to_u128(end) < ip_to_u128(start) {
            return Err(format!(
                "range {s:?} ends before it starts; write it as \"{end}-{start}\""
            ));
        }
        Ok(IpRange { start, end })
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.start.is_ipv4()
            && (ip_to_u128(self.start)..=ip_to_u128(self.end)).contains(&ip_to_u128(ip))
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// `[[pools]]`: addresses IPAM hands out as VIPs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// A unique name.
    pub name: String,
    /// Networks (`10.99.0.96/27`, `fd00:99::100/120`). In IPv4 networks of /30 and larger
    /// the network and broadcast addresses are not handed out; in IPv6 networks of /126 and
    /// larger the all-zero (subnet-router anycast) address is not.
    #[serde(default, deserialize_with = "de_nets")]
    pub cidrs: Vec<IpNet>,
    /// Inclusive ranges (`10.99.0.100-10.99.0.120`); every address is handed out.
    #[serde(default, deserialize_with = "de_ranges")]
    pub ranges: Vec<IpRange>,
    /// Namespaces whose Services may use the pool. Default: all.
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    /// Whether IPAM picks addresses from this pool for Services that request none; when false
    /// the pool serves only explicitly requested addresses. Default: true.
    #[serde(default = "default_true")]
    pub auto_assign: bool,
}

fn default_true() -> bool {
    true
}

impl PoolConfig {
    /// Whether `ip` is one of the pool's addresses.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.blocks()
            .iter()
            .any(|&(lo, hi, v6)| v6 == ip.is_ipv6() && (lo..=hi).contains(&ip_to_u128(ip)))
    }

    /// Whether Services of `namespace` may use the pool.
    pub fn allows_namespace(&self, namespace: &str) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|ns| ns.iter().any(|n| n == namespace))
    }

    /// The first address of the family (`v6`) that `is_used` rejects nowhere, in the order the
    /// pool lists its CIDRs, then its ranges; `None` when the family is exhausted. Takes at most
    /// one step per used address, so huge IPv6 pools cost nothing.
    pub fn first_free(&self, v6: bool, is_used: impl Fn(IpAddr) -> bool) -> Option<IpAddr> {
        for (lo, hi, fam) in self.blocks() {
            if fam != v6 {
                continue;
            }
            let mut a = lo;
            loop {
                let ip = u128_to_ip(a, v6);
                if !is_used(ip) {
                    return Some(ip);
                }
                if a == hi {
                    break;
                }
                a += 1;
            }
        }
        None
    }

    /// Whether the pool has addresses of the family (`v6`).
    pub fn has_family(&self, v6: bool) -> bool {
        self.blocks().iter().any(|b| b.2 == v6)
    }

    /// The pool's usable addresses as inclusive `(first, last, is_v6)` integer blocks.
    pub(crate) fn blocks(&self) -> Vec<(u128, u128, bool)> {
        let mut out = Vec::with_capacity(self.cidrs.len() + self.ranges.len());
        for n in &self.cidrs {
            let (lo, hi) = (ip_to_u128(n.network()), ip_to_u128(n.broadcast()));
            let b = match n {
                IpNet::V4(n) if n.prefix_len() <= 30 => (lo + 1, hi - 1, false),
                IpNet::V4(_) => (lo, hi, false),
                IpNet::V6(n) if n.prefix_len() <= 126 => (lo + 1, hi, true),
                IpNet::V6(_) => (lo, hi, true),
            };
            out.push(b);
        }
        for r in &self.ranges {
            out.push((ip_to_u128(r.start), ip_to_u128(r.end), r.start.is_ipv6()));
        }
        out
    }
}

/// The kind of active health probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    /// A TCP connect.
    Tcp,
    /// An HTTP/1.0 GET of `http_path` that must answer 2xx.
    Http,
}

/// `[health]`: active health checks of backends.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Whether backends are probed at all. Default: true.
    pub enabled: bool,
    /// `tcp` or `http`. Default: `tcp`.
    pub kind: HealthKind,
    /// Path for `http` probes. Default: `/`.
    pub http_path: String,
    /// Milliseconds between two probes of one target. Default: 1000.
    pub interval_ms: u64,
    /// Milliseconds one probe may take. Default: 500.
    pub timeout_ms: u64,
    /// Consecutive successes that bring a down target up. Default: 2.
    pub rise: u32,
    /// Consecutive failures that take an up target down. Default: 3.
    pub fall: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: true,
            kind: HealthKind::Tcp,
            http_path: "/".to_owned(),
            interval_ms: 1000,
            timeout_ms: 500,
            rise: 2,
            fall: 3,
        }
    }
}

/// Where the cluster model comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A directory of Kubernetes manifests (Service, EndpointSlice, Node YAML), hot-reloaded.
    Manifests,
    /// The Kubernetes API (watch, write status and Events; see docs/kubernetes.md).
    Kubernetes,
}

/// `[source]`: where Services, EndpointSlices and Nodes come from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// `manifests` or `kubernetes`. Default: `manifests`.
    pub kind: SourceKind,
    /// Directory of `*.yaml`/`*.yml` manifests; relative paths are relative to the working
    /// directory of `sluiced`. Default: `/etc/sluice/manifests`.
    pub manifest_dir: PathBuf,
    /// Milliseconds between two scans of `manifest_dir`. Default: 500.
    pub poll_interval_ms: u64,
    /// The `spec.loadBalancerClass` Sluice serves. Default: `sluice.dev/dpdk`.
    pub load_balancer_class: String,
    /// Also serve LoadBalancer Services with no `loadBalancerClass`. Default: false.
    pub serve_unclassed: bool,
    /// Kubeconfig file for `kind = "kubernetes"`. Default: none (as kube-rs infers:
    /// `KUBECONFIG`, `~/.kube/config`, then the in-cluster service account).
    pub kubeconfig: Option<PathBuf>,
    /// Milliseconds without Kubernetes changes before a rebuild (a burst waits at most four
    /// times this). Default: 50.
    pub debounce_ms: u64,
    /// Elect one writer of status and Events among several instances with a Lease.
    /// Default: true.
    pub leader_election: bool,
    /// Name of the Lease. Default: `sluice`.
    pub lease_name: String,
    /// Namespace of the Lease. Default: empty, meaning the Pod's own namespace (else `default`).
    pub lease_namespace: String,
    /// This instance's identity in the Lease and Events. Default: empty, meaning `$POD_NAME`
    /// or the host name.
    pub identity: String,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            kind: SourceKind::Manifests,
            manifest_dir: PathBuf::from("/etc/sluice/manifests"),
            poll_interval_ms: 500,
            load_balancer_class: "sluice.dev/dpdk".to_owned(),
            serve_unclassed: false,
            kubeconfig: None,
            debounce_ms: 50,
            leader_election: true,
            lease_name: "sluice".to_owned(),
            lease_namespace: String::new(),
            identity: String::new(),
        }
    }
}

/// `[admin]`: the admin socket and metrics listener (parsed; served by later work).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Unix socket of the admin API (mode 0600). Default: `/run/sluice/admin.sock`.
    pub socket: PathBuf,
    /// Whether the Prometheus listener runs. Default: true.
    pub metrics_enabled: bool,
    /// Address of the Prometheus listener. Default: `127.0.0.1:9470`.
    pub metrics_listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            socket: PathBuf::from("/run/sluice/admin.sock"),
            metrics_enabled: true,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9470)),
        }
    }
}

// ------------------------------------------------------------------------------ deserializers

fn de_method<'de, D: Deserializer<'de>>(d: D) -> Result<Method, D::Error> {
    let s = String::deserialize(d)?;
    Method::parse(&s).ok_or_else(|| {
        D::Error::custom(format!(
            "unknown forwarding method {s:?}; use one of \"nat\", \"dsr-l2\", \"dsr-ipip\""
        ))
    })
}

fn de_list<'de, D, T>(d: D, parse: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
{
    let v = Vec::<String>::deserialize(d)?;
    v.iter()
        .enumerate()
        .map(|(i, s)| parse(s).map_err(|e| D::Error::custom(format!("element {i}: {e}"))))
        .collect()
}

fn parse_v4_iface(s: &str) -> Result<Ipv4Net, String> {
    s.trim().parse::<Ipv4Net>().map_err(|_| {
        format!("{s:?} is not an IPv4 address with a prefix length; write it as \"10.99.0.2/24\"")
    })
}

fn parse_v6_iface(s: &str) -> Result<Ipv6Net, String> {
    s.trim().parse::<Ipv6Net>().map_err(|_| {
        format!("{s:?} is not an IPv6 address with a prefix length; write it as \"fd00:99::2/64\"")
    })
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    let n = if s.contains('/') {
        s.trim().parse::<IpNet>().map_err(|_| {
            format!("{s:?} is not a CIDR; write it as \"10.99.0.96/27\" or \"fd00:99::100/120\"")
        })?
    } else {
        let a: IpAddr = s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a CIDR; write it as \"10.99.0.96/27\""))?;
        IpNet::from(a)
    };
    if n.trunc() != n {
        return Err(format!(
            "{s:?} has host bits set; write the network address, \"{}\"",
            n.trunc()
        ));
    }
    Ok(n)
}

fn de_v4_ifaces<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ipv4Net>, D::Error> {
    de_list(d, parse_v4_iface)
}

fn de_v6_ifaces<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ipv6Net>, D::Error> {
    de_list(d, parse_v6_iface)
}

fn de_nets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    de_list(d, parse_net)
}

fn de_ranges<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpRange>, D::Error> {
    de_list(d, IpRange::parse)
}

/// An address as a 128-bit integer (IPv4 in the low 32 bits).
pub(crate) fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The inverse of [`ip_to_u128`].
pub(crate) fn u128_to_ip(a: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        IpAddr::V4(Ipv4Addr::from(a as u32))
    }
}

// --------------------------------------------------------------------------------- load

/// Keys allowed at each level, for "did you mean" messages.
fn describe_path(path: &str) -> String {
    if path.is_empty() || path == "." {
        "at top level".to_owned()
    } else {
        format!("in {path}")
    }
}

/// Rewrites serde's "unknown field `x`, expected one of `a`, `b`" into the house style.
fn rewrite_message(msg: &str, path: &str) -> String {
    let msg = msg.trim_end();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some((field, tail)) = rest.split_once('`') {
            // serde_path_to_error's path ends with the unknown key itself: name its table.
            let parent = path
                .strip_suffix(field)
                .map(|p| p.trim_end_matches('.'))
                .unwrap_or(path);
            let expected = tail
                .trim_start_matches(',')
                .trim()
                .trim_start_matches("expected ")
                .trim_start_matches("one of ")
                .replace('`', "")
                .replace(" or ", ", ");
            return format!(
                "unknown key {field:?} {}; expected one of: {expected} (see docs/configuration.md)",
                describe_path(parent)
            );
        }
    }
    if path.is_empty() || path == "." {
        msg.to_owned()
    } else {
        format!("{path}: {msg}")
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |i| offset - i - 1) + 1;
    (line, column)
}

impl Config {
    /// Reads, parses and validates the configuration file at `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, the line and key, and the fix.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration `text`; `file` is only used in error messages.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] or [`ConfigError::Invalid`].
    pub fn parse(text: &str, file: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let file = file.as_ref();
        let de = toml::Deserializer::new(text);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            let inner = e.into_inner();
            let (line, column) = inner.span().map_or((0, 0), |s| line_col(text, s.start));
            ConfigError::Parse {
                file: file.to_owned(),
                line,
                column,
                message: rewrite_message(inner.message(), &key),
                key,
            }
        })?;
        cfg.validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                file: file.to_owned(),
                key,
                message,
            })?;
        Ok(cfg)
    }

    /// Semantic checks; returns the offending key and a message that says what to do.
    ///
    /// # Errors
    /// `(key, message)` of the first problem found.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_owned(), m));

        // [[ports]]
        if self.ports.is_empty() {
            return err(
                "ports",
                "no port configured; add a [[ports]] table with name, device and ipv4/ipv6 \
                 (see docs/configuration.md)"
                    .to_owned(),
            );
        }
        let mut names = BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            let k = |f: &str| format!("ports[{i}].{f}");
            if p.name.trim().is_empty() {
                return err(
                    &k("name"),
                    "is empty; give the port a name such as \"lb0\"".to_owned(),
                );
            }
            if !names.insert(p.name.as_str()) {
                return err(
                    &k("name"),
                    format!("port name {:?} is used twice; names must be unique", p.name),
                );
            }
            if p.device.trim().is_empty() {
                return err(
                    &k("device"),
                    "is empty; use a PCI address (\"0000:3b:00.0\") or a virtual device \
                     (\"net_af_packet0,iface=sl-lb0\")"
                        .to_owned(),
                );
            }
            if p.ipv4.is_empty() && p.ipv6.is_empty() {
                return err(
                    &k("ipv4"),
                    "the port has no address; list at least one in ipv4 (\"10.99.0.2/24\") or ipv6"
                        .to_owned(),
                );
            }
            for (j, a) in p.ipv4.iter().enumerate() {
                if a.addr().is_unspecified() || a.addr().is_multicast() || a.addr().is_broadcast() {
                    return err(
                        &format!("ports[{i}].ipv4[{j}]"),
                        format!("{a} is not a unicast address"),
                    );
                }
            }
            for (j, a) in p.ipv6.iter().enumerate() {
                if a.addr().is_unspecified() || a.addr().is_multicast() {
                    return err(
                        &format!("ports[{i}].ipv6[{j}]"),
                        format!("{a} is not a unicast address"),
                    );
                }
            }
            if let Some(g) = p.gateway_v4 {
                if !p.on_link(IpAddr::V4(g)) {
                    return err(
                        &k("gateway_v4"),
                        format!("{g} is not inside any of the port's ipv4 subnets; a gateway must be on-link"),
                    );
                }
            }
            if let Some(g) = p.gateway_v6 {
                if !p.on_link(IpAddr::V6(g)) && !is_link_local_v6(g) {
                    return err(
                        &k("gateway_v6"),
                        format!("{g} is not inside any of the port's ipv6 subnets nor link-local; a gateway must be on-link"),
                    );
                }
            }
            if !(576..=9702).contains(&p.mtu) {
                return err(
                    &k("mtu"),
                    format!(
                        "{} is out of range; use 576..=9702 (usually 1500 or 9000)",
                        p.mtu
                    ),
                );
            }
        }

        // [workers]
        let w = &self.workers;
        if w.cores.is_empty() {
            return err(
                "workers.cores",
                "is empty; list at least one core, e.g. [1]".to_owned(),
            );
        }
        let mut seen = BTreeSet::new();
        for c in &w.cores {
            if !seen.insert(*c) {
                return err("workers.cores", format!("core {c} is listed twice"));
            }
        }
        if w.cores.len() > usize::from(u16::MAX) {
            return err("workers.cores", "too many cores".to_owned());
        }
        if let Some(cc) = &w.control_cores {
            if let Some(c) = cc.iter().find(|c| seen.contains(c)) {
                return err(
                    "workers.control_cores",
                    format!("core {c} is also a worker core; a worker core busy-polls and must not run the control plane"),
                );
            }
        }
        if w.tx_flush_us == 0 || w.tx_flush_us > 1_000_000 {
            return err(
                "workers.tx_flush_us",
                format!(
                    "{} is out of range; use 1..=1000000 (default 100)",
                    w.tx_flush_us
                ),
            );
        }

        // [tables]
        let t = &self.tables;
        for (k, v) in [
            ("tables.conntrack_capacity", t.conntrack_capacity),
            ("tables.conntrack_v6_capacity", t.conntrack_v6_capacity),
            ("tables.affinity_capacity", t.affinity_capacity),
        ] {
            if v == 0 || v > MAX_CONNTRACK_CAPACITY {
                return err(
                    k,
                    format!("{v} is out of range; use 1..={MAX_CONNTRACK_CAPACITY}"),
                );
            }
        }
        check_maglev_size(t.maglev_size).map_err(|m| ("tables.maglev_size".to_owned(), m))?;
        if t.max_backends == 0 || t.max_backends > 1 << 24 {
            return err(
                "tables.max_backends",
                format!("{} is out of range; use 1..=16777216", t.max_backends),
            );
        }

        // [nat]
        let n = &self.nat;
        if n.port_min == 0 {
            return err(
                "nat.port_min",
                "0 is not a port; use 1024 or above (default 20000)".to_owned(),
            );
        }
        if n.port_min > n.port_max {
            return err(
                "nat.port_min",
                format!(
                    "{} is above nat.port_max {}; swap them or lower port_min",
                    n.port_min, n.port_max
                ),
            );
        }
        let per_worker = (u32::from(n.port_max) - u32::from(n.port_min) + 1) / w.cores.len() as u32;
        if per_worker == 0 {
            return err(
                "nat.port_min",
                format!(
                    "the range {}..={} has fewer ports than the {} workers; widen it",
                    n.port_min,
                    n.port_max,
                    w.cores.len()
                ),
            );
        }
        for (i, a) in n.addresses.iter().enumerate() {
            if a.is_unspecified() || a.is_multicast() {
                return err(
                    &format!("nat.addresses[{i}]"),
                    format!("{a} is not a unicast address"),
                );
            }
        }

        // [forwarding]
        if self.forwarding.hash_seed > i64::MAX as u64 {
            return err("forwarding.hash_seed", "must be at most 2^63-1".to_owned());
        }

        // [[pools]]
        let mut pool_names = BTreeSet::new();
        let mut blocks: Vec<(u128, u128, bool, String)> = Vec::new();
        let own: Vec<(IpAddr, String)> = self
            .ports
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                p.ipv4
                    .iter()
                    .map(move |a| (IpAddr::V4(a.addr()), format!("ports[{i}].ipv4")))
                    .chain(
                        p.ipv6
                            .iter()
                            .map(move |a| (IpAddr::V6(a.addr()), format!("ports[{i}].ipv6"))),
                    )
            })
            .chain(n.addresses.iter().map(|a| (*a, "nat.addresses".to_owned())))
            .collect();
        for (i, p) in self.pools.iter().enumerate() {
            let k = |f: &str| format!("pools[{i}].{f}");
            if p.name.trim().is_empty() {
                return err(&k("name"), "is empty; give the pool a name".to_owned());
            }
            if !pool_names.insert(p.name.as_str()) {
                return err(
                    &k("name"),
                    format!("pool name {:?} is used twice; names must be unique", p.name),
                );
            }
            if p.cidrs.is_empty() && p.ranges.is_empty() {
                return err(
                    &k("cidrs"),
                    "the pool has no addresses; list cidrs (\"10.99.0.96/27\") or ranges \
                     (\"10.99.0.100-10.99.0.120\")"
                        .to_owned(),
                );
            }
            if let Some(ns) = &p.namespaces {
                if ns.is_empty() {
                    return err(
                        &k("namespaces"),
                        "is empty, so no Service could use the pool; remove the key to allow every namespace"
                            .to_owned(),
                    );
                }
            }
            for (lo, hi, v6) in p.blocks() {
                if let Some((_, _, _, other)) = blocks
                    .iter()
                    .find(|(l, h, f, _)| *f == v6 && lo <= *h && *l <= hi)
                {
                    return err(
                        &k("cidrs"),
                        format!(
                            "{}-{} overlaps pool {other:?}; pools must not share addresses",
                            u128_to_ip(lo, v6),
                            u128_to_ip(hi, v6)
                        ),
                    );
                }
                blocks.push((lo, hi, v6, p.name.clone()));
            }
            if let Some((a, key)) = own.iter().find(|(a, _)| p.contains(*a)) {
                return err(
                    &k("cidrs"),
                    format!("the pool contains {a}, Sluice's own address in {key}; take it out of the pool"),
                );
            }
        }

        // [health]
        let h = &self.health;
        if h.interval_ms == 0 {
            return err(
                "health.interval_ms",
                "must be at least 1 (default 1000)".to_owned(),
            );
        }
        if h.timeout_ms == 0 {
            return err(
                "health.timeout_ms",
                "must be at least 1 (default 500)".to_owned(),
            );
        }
        if h.rise == 0 {
            return err("health.rise", "must be at least 1 (default 2)".to_owned());
        }
        if h.fall == 0 {
            return err("health.fall", "must be at least 1 (default 3)".to_owned());
        }
        if !h.http_path.starts_with('/')
            || h.http_path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return err(
                "health.http_path",
                format!(
                    "{:?} is not a request path; it must start with '/' and have no spaces",
                    h.http_path
                ),
            );
        }

        // [source]
        let s = &self.source;
        if s.poll_interval_ms == 0 {
            return err(
                "source.poll_interval_ms",
                "must be at least 1 (default 500)".to_owned(),
            );
        }
        if s.load_balancer_class.trim().is_empty() {
            return err(
                "source.load_balancer_class",
                "is empty; use \"sluice.dev/dpdk\" (and serve_unclassed = true to also serve Services without a class)"
                    .to_owned(),
            );
        }
        if !(1..=10_000).contains(&s.debounce_ms) {
            return err(
                "source.debounce_ms",
                format!(
                    "{} is out of range; use 1 to 10000 (default 50)",
                    s.debounce_ms
                ),
            );
        }
        if s.leader_election && s.lease_name.trim().is_empty() {
            return err(
                "source.lease_name",
                "is empty; name the Lease (default \"sluice\") or set leader_election = false"
                    .to_owned(),
            );
        }
        if s.kind == SourceKind::Manifests && s.manifest_dir.as_os_str().is_empty() {
            return err(
                "source.manifest_dir",
                "is empty; name the directory of Service/EndpointSlice/Node YAML files".to_owned(),
            );
        }
        Ok(())
    }

    /// The ports' own addresses, IPv4 then IPv6, in config order.
    pub fn own_addresses(&self) -> Vec<IpAddr> {
        let v4 = self
            .ports
            .iter()
            .flat_map(|p| p.ipv4.iter().map(|a| IpAddr::V4(a.addr())));
        let v6 = self
            .ports
            .iter()
            .flat_map(|p| p.ipv6.iter().map(|a| IpAddr::V6(a.addr())));
        v4.chain(v6).collect()
    }

    /// The pool that contains `ip`, if any.
    pub fn pool_of(&self, ip: IpAddr) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.contains(ip))
    }
}

fn is_link_local_v6(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// Checks a Maglev table size (config key or annotation).
///
/// # Errors
/// A message saying which prime to use instead.
pub fn check_maglev_size(size: u32) -> Result<(), String> {
    if size > MAX_TABLE_SIZE {
        return Err(format!(
            "{size} is above the maximum {MAX_TABLE_SIZE}; use a smaller prime such as 65537"
        ));
    }
    if size < 2 || !is_prime(size) {
        return Err(format!(
            "{size} is not prime; Maglev needs a prime table size, e.g. {} (the next prime) or 65537",
            next_prime(size.max(2))
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAB: &str = r#"
[eal]
args = ["--in-memory"]

[[ports]]
name = "lb0"
device = "net_af_packet0,iface=sl-lb0"
ipv4 = ["10.99.0.2/24"]
ipv6 = ["fd00:99::2/64"]

[workers]
cores = [1]

[nat]
addresses = ["10.99.0.3", "fd00:99::3"]

[[pools]]
name = "lab"
ranges = ["10.99.0.100-10.99.0.120", "fd00:99::100-fd00:99::120"]
"#;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, "sluice.toml")
    }

    #[test]
    fn lab_config_and_defaults() {
        let c = parse(LAB).unwrap();
        assert_eq!(c.eal.args, vec!["--in-memory"]);
        assert_eq!(c.ports[0].mtu, 1500);
        assert_eq!(c.ports[0].ipv4[0].addr(), Ipv4Addr::new(10, 99, 0, 2));
        assert_eq!(c.ports[0].ipv4[0].prefix_len(), 24);
        assert!(c.ports[0].on_link("10.99.0.21".parse().unwrap()));
        assert!(!c.ports[0].on_link("10.98.0.21".parse().unwrap()));
        assert!(c.ports[0].is_vdev());
        assert_eq!(c.tables.maglev_size, 65537);
        assert_eq!(c.tables.conntrack_capacity, 1 << 20);
        assert_eq!(c.nat.port_min, 20000);
        assert_eq!(c.nat.port_max, 65535);
        assert_eq!(c.forwarding.default_method, Method::Nat);
        assert_eq!(c.forwarding.target, Target::Pod);
        assert_eq!(c.forwarding.removed_backend_grace_seconds, 300);
        assert_eq!(c.health, HealthConfig::default());
        assert_eq!(c.source.load_balancer_class, "sluice.dev/dpdk");
        assert_eq!(c.workers.tx_flush_us, 100);
        let p = &c.pools[0];
        assert!(p.contains("10.99.0.100".parse().unwrap()));
        assert!(p.contains("10.99.0.120".parse().unwrap()));
        assert!(!p.contains("10.99.0.121".parse().unwrap()));
        assert!(p.contains("fd00:99::11f".parse().unwrap()));
        assert_eq!(
            p.first_free(false, |_| false),
            Some("10.99.0.100".parse().unwrap())
        );
        assert_eq!(
            p.first_free(true, |_| false),
            Some("fd00:99::100".parse().unwrap())
        );
        let used: IpAddr = "10.99.0.100".parse().unwrap();
        assert_eq!(
            p.first_free(false, |a| a == used),
            Some("10.99.0.101".parse().unwrap())
        );
        assert_eq!(p.first_free(false, |_| true), None);
    }

    #[test]
    fn example_file_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples/sluice.toml");
        let c = Config::load(path).unwrap();
        assert_eq!(
            c.source.manifest_dir,
            PathBuf::from("docs/examples/manifests")
        );
        assert_eq!(c.nat.addresses.len(), 2);
    }

    #[test]
    fn unknown_key_top_level() {
        let e = parse(&format!("{LAB}\n[workres]\ncores = [2]\n")).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("sluice.toml:"), "{s}");
        assert!(
            s.contains("unknown key \"workres\" at top level; expected one of"),
            "{s}"
        );
        assert!(s.contains("workers"), "{s}");
        match e {
            ConfigError::Parse { line, ref key, .. } => {
                assert_eq!(line, 21, "{s}");
                assert_eq!(key, "workres");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn unknown_key_nested() {
        let e = parse(&LAB.replace("cores = [1]", "cores = [1]\ntx_flush = 3")).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("unknown key \"tx_flush\" in workers"), "{s}");
        assert!(s.contains("tx_flush_us"), "{s}");
    }

    #[test]
    fn type_errors_name_the_key() {
        let e = parse(&LAB.replace("cores = [1]", "cores = [\"one\"]")).unwrap_err();
        assert_eq!(e.key(), "workers.cores[0]", "{e}");
        assert!(
            e.to_string().contains("workers.cores[0]: invalid type"),
            "{e}"
        );

        let e = parse(&LAB.replace("10.99.0.2/24", "10.99.0.2")).unwrap_err();
        assert_eq!(e.key(), "ports[0].ipv4", "{e}");
        assert!(e.to_string().contains("10.99.0.2/24"), "{e}");

        let e =
            parse(&LAB.replace("10.99.0.100-10.99.0.120", "10.99.0.120-10.99.0.100")).unwrap_err();
        assert!(e.to_string().contains("ends before it starts"), "{e}");

        let e = parse(&format!("{LAB}\n[forwarding]\ndefault_method = \"dsr\"\n")).unwrap_err();
        assert_eq!(e.key(), "forwarding.default_method", "{e}");
        assert!(e.to_string().contains("\"dsr-l2\""), "{e}");

        let e = parse(&format!("{LAB}\n[forwarding]\ntarget = \"nodes\"\n")).unwrap_err();
        assert_eq!(e.key(), "forwarding.target", "{e}");

        let e = parse("[[ports]]\nname = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("device"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "[nat]\naddresses",
                "[nat]\nport_min = 30000\nport_max = 20000\naddresses",
                "nat.port_min",
            ),
            (
                "[workers]\ncores = [1]",
                "[workers]\ncores = [1]\n[tables]\nmaglev_size = 65536",
                "tables.maglev_size",
            ),
            (
                "[workers]\ncores = [1]",
                "[workers]\ncores = [1, 1]",
                "workers.cores",
            ),
            (
                "[workers]\ncores = [1]",
                "[workers]\ncores = [1]\ncontrol_cores = [1]",
                "workers.control_cores",
            ),
            (
                "\"10.99.0.100-10.99.0.120\"",
                "\"10.99.0.100-10.99.0.120\", \"10.99.0.110-10.99.0.130\"",
                "pools[0].cidrs",
            ),
            (
                "\"10.99.0.100-10.99.0.120\"",
                "\"10.99.0.1-10.99.0.120\"",
                "pools[0].cidrs",
            ),
            (
                "ipv6 = [\"fd00:99::2/64\"]",
                "ipv6 = [\"fd00:99::2/64\"]\ngateway_v4 = \"10.1.0.1\"",
                "ports[0].gateway_v4",
            ),
            ("[eal]", "[health]\nrise = 0\n[eal]", "health.rise"),
            (
                "[eal]",
                "[health]\nhttp_path = \"healthz\"\n[eal]",
                "health.http_path",
            ),
        ];
        for (from, to, key) in cases {
            let text = LAB.replace(from, to);
            assert_ne!(text, LAB, "{from}");
            let e = parse(&text).unwrap_err();
            assert_eq!(e.key(), *key, "{e}");
            assert!(matches!(e, ConfigError::Invalid { .. }), "{e}");
            assert!(e.to_string().starts_with("sluice.toml: "), "{e}");
        }
        let e = parse(&LAB.replace(
            "[workers]\ncores = [1]",
            "[workers]\ncores = [1]\n[tables]\nmaglev_size = 65536",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("65537"), "{e}");
        let e = parse("").unwrap_err();
        assert_eq!(e.key(), "ports");
    }

    #[test]
    fn pools_cidr_rules() {
        let p = PoolConfig {
            name: "p".into(),
            cidrs: vec![
                "10.0.0.0/30".parse().unwrap(),
                "fd00::/126".parse().unwrap(),
            ],
            ranges: vec![],
            namespaces: Some(vec!["a".into()]),
            auto_assign: true,
        };
        assert_eq!(
            p.first_free(false, |_| false),
            Some("10.0.0.1".parse().unwrap())
        );
        let two: IpAddr = "10.0.0.2".parse().unwrap();
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(p.first_free(false, |a| a == one || a == two), None);
        assert!(!p.contains("10.0.0.3".parse().unwrap()));
        assert_eq!(
            p.first_free(true, |_| false),
            Some("fd00::1".parse().unwrap())
        );
        assert!(p.allows_namespace("a") && !p.allows_namespace("b"));
        assert!(parse_net("10.0.0.5/24")
            .unwrap_err()
            .contains("10.0.0.0/24"));
        assert_eq!(parse_net("10.0.0.5").unwrap().prefix_len(), 32);
    }

    #[test]
    fn line_and_column() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab", 0), (1, 1));
    }
}

#[cfg(test)]
mod doc_tests {
    use super::*;

    /// Every key of every table is documented in docs/configuration.md (the key lists come from
    /// the parser's own "expected one of" messages, so a new key without docs fails here).
    #[test]
    fn every_key_is_documented() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/configuration.md"
        ))
        .unwrap();
        let base = "[[ports]]\nname = \"p\"\ndevice = \"net_null0\"\nipv4 = [\"10.0.0.2/24\"]\n";
        let probes = [
            ("", format!("bogus_key = 1\n{base}")),
            ("eal", format!("[eal]\nbogus_key = 1\n{base}")),
            ("ports", format!("{base}bogus_key = 1\n")),
            ("workers", format!("{base}[workers]\nbogus_key = 1\n")),
            ("tables", format!("{base}[tables]\nbogus_key = 1\n")),
            ("nat", format!("{base}[nat]\nbogus_key = 1\n")),
            ("forwarding", format!("{base}[forwarding]\nbogus_key = 1\n")),
            (
                "pools",
                format!("{base}[[pools]]\nname = \"x\"\nbogus_key = 1\n"),
            ),
            ("health", format!("{base}[health]\nbogus_key = 1\n")),
            ("source", format!("{base}[source]\nbogus_key = 1\n")),
            ("admin", format!("{base}[admin]\nbogus_key = 1\n")),
        ];
        let mut n = 0;
        for (table, text) in probes {
            let msg = Config::parse(&text, "t.toml").unwrap_err().to_string();
            let list = msg
                .split("expected one of: ")
                .nth(1)
                .unwrap_or_else(|| panic!("{table}: {msg}"));
            let list = list.split(" (see").next().unwrap();
            for key in list.split(',').map(str::trim) {
                if table.is_empty() {
                    let heading = if matches!(key, "ports" | "pools") {
                        format!("## `[[{key}]]`")
                    } else {
                        format!("## `[{key}]`")
                    };
                    assert!(
                        doc.contains(&heading),
                        "docs/configuration.md has no section {heading}"
                    );
                } else {
                    assert!(
                        doc.contains(&format!("| `{key}` |")),
                        "docs/configuration.md does not document {table}.{key}"
                    );
                }
                n += 1;
            }
        }
        assert!(n > 40, "only {n} keys found");
    }
}
