//! # `[bgp]`: routed mode's configuration
//!
//! The local AS and router id, how sluiced reaches BIRD (it runs its own, `supervised`, or
//! drives the operator's, `attach`), the peers (the top-of-rack routers), per-pool
//! advertisement settings in the spirit of MetalLB's `BGPAdvertisement` (communities, large
//! communities, local preference, aggregation length), and the linger between withdrawing and
//! stopping. docs/bgp.md documents every key with its default.
//!
//! Parsing checks types and unknown keys (`deny_unknown_fields`, communities parsed into typed
//! values); [`BgpConfig::validate`] checks the rest and names the key and the fix, the same way
//! the top-level `Config::validate` does, which calls it with the configured pools and also
//! checks that the next hops are the ports' addresses.
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

/// `[bgp]`: announce VIPs and NAT addresses over BGP through BIRD 2.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    /// Local AS number (1..=4294967295, not 23456). Required.
    pub asn: u32,
    /// BGP router id (an IPv4 address, unique per host). Default: BIRD picks the lowest IPv4
    /// address of the host's interfaces.
    #[serde(default)]
    pub router_id: Option<Ipv4Addr>,
    /// `supervised` (sluiced runs its own BIRD) or `attach` (sluiced drives the operator's
    /// BIRD through its control socket). Default: `supervised`.
    #[serde(default)]
    pub mode: BirdMode,
    /// Supervised: the BIRD binary. Default: `/usr/sbin/bird`.
    #[serde(default = "default_bird")]
    pub bird: PathBuf,
    /// Supervised: directory for the generated config, the prefixes include and the control
    /// socket. Default: `/run/sluice/bird`.
    #[serde(default = "default_runtime_dir")]
    pub runtime_dir: PathBuf,
    /// BIRD's control socket. Attach: required (the operator's BIRD, e.g.
    /// `/run/bird/bird.ctl`). Supervised: default `<runtime_dir>/bird.ctl`.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Attach: the file sluiced writes its protocols into; the operator's `bird.conf` includes
    /// it. Required in attach mode, not allowed in supervised mode.
    #[serde(default)]
    pub include_file: Option<PathBuf>,
    /// IPv4 next hop announced for every IPv4 prefix: the address of the DPDK port that
    /// receives the traffic. In sluiced's config: default the first port's first IPv4 address
    /// (`Config` fills it in); parsed alone, unset means the BGP session's local address.
    #[serde(default)]
    pub next_hop_v4: Option<Ipv4Addr>,
    /// IPv6 next hop announced for every IPv6 prefix. Default as `next_hop_v4`, of IPv6.
    #[serde(default)]
    pub next_hop_v6: Option<Ipv6Addr>,
    /// Seconds between withdrawing everything (drain, SIGTERM) and stopping the workers, so
    /// the routers move traffic away first. Default: 5.
    #[serde(default = "default_linger")]
    pub linger_seconds: u64,
    /// The BGP peers (`[[bgp.peers]]`). At least one in supervised mode.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Per-pool advertisement settings (`[[bgp.advertisements]]`). A pool named in none is
    /// announced as /32 and /128 host routes without attributes.
    #[serde(default)]
    pub advertisements: Vec<AdvertisementConfig>,
}

/// How sluiced reaches BIRD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BirdMode {
    /// sluiced starts `bird -f` itself, restarts it when it dies, and BIRD dies with sluiced.
    #[default]
    Supervised,
    /// The operator runs BIRD; sluiced writes `include_file` and reconfigures through `socket`.
    Attach,
}

/// An address family a session carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4 unicast.
    Ipv4,
    /// IPv6 unicast.
    Ipv6,
}

impl Family {
    /// The family of an address.
    pub fn of(a: IpAddr) -> Family {
        if a.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        }
    }
}

/// `[[bgp.peers]]`: one BGP neighbour.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The neighbour's address. Required; unique.
    pub address: IpAddr,
    /// The neighbour's AS number. Required.
    pub asn: u32,
    /// A name for status and logs: letters, digits and `_`, starting with a letter, at most 32.
    /// Default: derived from the address (`10_98_0_1`).
    #[serde(default)]
    pub name: Option<String>,
    /// TCP port of the neighbour. Default: 179.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Local address of the session. Default: chosen by the kernel's routing. Required for a
    /// multihop session with BFD.
    #[serde(default)]
    pub source_address: Option<IpAddr>,
    /// TCP-MD5 (RFC 2385) password, at most 80 characters. Default: none.
    #[serde(default)]
    pub password: Option<String>,
    /// Hold time in seconds: 0 (no keepalives) or 3..=65535. Default: 90.
    #[serde(default = "default_hold_time")]
    pub hold_time: u16,
    /// Whether to run BFD with this neighbour. Default: false.
    #[serde(default)]
    pub bfd: bool,
    /// BFD: the slowest rate we want to receive at, in milliseconds. Default: 300.
    #[serde(default = "default_bfd_interval")]
    pub bfd_min_rx_ms: u32,
    /// BFD: the fastest rate we send at, in milliseconds. Default: 300.
    #[serde(default = "default_bfd_interval")]
    pub bfd_min_tx_ms: u32,
    /// BFD: missed packets before the session is declared down. Default: 3.
    #[serde(default = "default_bfd_multiplier")]
    pub bfd_multiplier: u8,
    /// eBGP multihop: the TTL of the session's packets (1..=255). Default: none (the neighbour
    /// is directly connected).
    #[serde(default)]
    pub ebgp_multihop: Option<u8>,
    /// Address families carried (`["ipv4"]`, `["ipv6"]` or both). Default: the family of
    /// `address`.
    #[serde(default)]
    pub families: Option<Vec<Family>>,
}

impl PeerConfig {
    /// The families this session carries (explicit, or the family of the address).
    pub fn families(&self) -> Vec<Family> {
        match &self.families {
            Some(f) => {
                let set: BTreeSet<Family> = f.iter().copied().collect();
                set.into_iter().collect()
            }
            None => vec![Family::of(self.address)],
        }
    }

    /// The name used in status and as the suffix of BIRD's protocol name.
    pub fn display_name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => self
                .address
                .to_string()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect(),
        }
    }
}

/// `[[bgp.advertisements]]`: how a set of pools' VIPs are announced (MetalLB's
/// `BGPAdvertisement`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdvertisementConfig {
    /// Names of `[[pools]]` these settings apply to. Required; a pool is in at most one
    /// advertisement.
    pub pools: Vec<String>,
    /// BGP communities: `"65000:100"` or `"no-export"`, `"no-advertise"`,
    /// `"no-export-subconfed"`. Default: none.
    #[serde(default)]
    pub communities: Vec<Community>,
    /// Large communities (RFC 8092): `"64512:1:2"`. Default: none.
    #[serde(default)]
    pub large_communities: Vec<LargeCommunity>,
    /// LOCAL_PREF; sent to iBGP peers only (eBGP strips it). Default: none.
    #[serde(default)]
    pub local_preference: Option<u32>,
    /// Announce each IPv4 VIP as the covering prefix of this length instead of a /32.
    /// Default: 32.
    #[serde(default = "default_aggregation_v4")]
    pub aggregation_length: u8,
    /// Announce each IPv6 VIP as the covering prefix of this length instead of a /128.
    /// Default: 128.
    #[serde(default = "default_aggregation_v6")]
    pub aggregation_length_v6: u8,
}

/// A standard BGP community (RFC 1997), `high:low`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Community(pub u16, pub u16);

impl FromStr for Community {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "no-export" => return Ok(Community(0xffff, 0xff01)),
            "no-advertise" => return Ok(Community(0xffff, 0xff02)),
            "no-export-subconfed" => return Ok(Community(0xffff, 0xff03)),
            _ => {}
        }
        let bad = || {
            format!(
                "{s:?} is not a BGP community; write it as \"65000:100\" (two numbers 0..=65535) \
                 or use \"no-export\", \"no-advertise\" or \"no-export-subconfed\""
            )
        };
        let (a, b) = s.trim().split_once(':').ok_or_else(bad)?;
        Ok(Community(
            a.parse().map_err(|_| bad())?,
            b.parse().map_err(|_| bad())?,
        ))
    }
}

impl TryFrom<String> for Community {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.0, self.1)
    }
}

/// A large BGP community (RFC 8092), `global:local1:local2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct LargeCommunity(pub u32, pub u32, pub u32);

impl FromStr for LargeCommunity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} is not a large community; write it as \"64512:1:2\" (three numbers \
                 0..=4294967295)"
            )
        };
        let parts: Vec<&str> = s.trim().split(':').collect();
        let [a, b, c] = parts[..] else {
            return Err(bad());
        };
        Ok(LargeCommunity(
            a.parse().map_err(|_| bad())?,
            b.parse().map_err(|_| bad())?,
            c.parse().map_err(|_| bad())?,
        ))
    }
}

impl TryFrom<String> for LargeCommunity {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for LargeCommunity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.0, self.1, self.2)
    }
}

fn default_bird() -> PathBuf {
    PathBuf::from("/usr/sbin/bird")
}
fn default_runtime_dir() -> PathBuf {
    PathBuf::from("/run/sluice/bird")
}
fn default_linger() -> u64 {
    5
}
fn default_port() -> u16 {
    179
}
fn default_hold_time() -> u16 {
    90
}
fn default_bfd_interval() -> u32 {
    300
}
fn default_bfd_multiplier() -> u8 {
    3
}
fn default_aggregation_v4() -> u8 {
    32
}
fn default_aggregation_v6() -> u8 {
    128
}

/// The largest linger accepted, in seconds.
pub const MAX_LINGER_SECONDS: u64 = 3600;

fn check_asn(key: String, asn: u32) -> Result<(), (String, String)> {
    match asn {
        0 => Err((
            key,
            "0 is not a valid ASN; use 1..=4294967295 (64512..=65534 and \
             4200000000..=4294967294 are private)"
                .to_owned(),
        )),
        23456 => Err((
            key,
            "23456 is AS_TRANS (RFC 6793), not a real ASN; use your AS number".to_owned(),
        )),
        _ => Ok(()),
    }
}

fn check_next_hop(key: &str, a: IpAddr) -> Result<(), (String, String)> {
    if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
        return Err((
            key.to_owned(),
            format!("{a} cannot be a next hop; use the address of the DPDK port"),
        ));
    }
    Ok(())
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && n.len() <= 32
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl BgpConfig {
    /// The control socket sluiced talks to (see [`BgpConfig::socket`]).
    pub fn socket_path(&self) -> PathBuf {
        match &self.socket {
            Some(s) => s.clone(),
            None => self.runtime_dir.join("bird.ctl"),
        }
    }

    /// Semantic checks. `pools` are the names of the configured `[[pools]]`; advertisements
    /// must name only those. Keys in errors start with `bgp.`.
    ///
    /// # Errors
    /// `(key, message)` of the first problem found; the message says what to do.
    pub fn validate(&self, pools: &[&str]) -> Result<(), (String, String)> {
        let err = |k: String, m: String| Err((k, m));
        check_asn("bgp.asn".to_owned(), self.asn)?;
        if self.router_id == Some(Ipv4Addr::UNSPECIFIED) {
            return err(
                "bgp.router_id".into(),
                "0.0.0.0 is not a valid router id; use a unique IPv4 address of this host, \
                 or leave it out to let BIRD pick one"
                    .into(),
            );
        }
        match self.mode {
            BirdMode::Supervised => {
                if self.include_file.is_some() {
                    return err(
                        "bgp.include_file".into(),
                        "is only used with mode = \"attach\"; remove it (in supervised mode \
                         the files live in bgp.runtime_dir)"
                            .into(),
                    );
                }
                if !self.runtime_dir.is_absolute() {
                    return err(
                        "bgp.runtime_dir".into(),
                        format!(
                            "{:?} is relative; use an absolute directory such as \
                             \"/run/sluice/bird\"",
                            self.runtime_dir
                        ),
                    );
                }
                if !self.bird.is_absolute() {
                    return err(
                        "bgp.bird".into(),
                        format!(
                            "{:?} is relative; use the absolute path of the BIRD 2 binary \
                             (\"/usr/sbin/bird\")",
                            self.bird
                        ),
                    );
                }
                if self.peers.is_empty() {
                    return err(
                        "bgp.peers".into(),
                        "no peer configured; add a [[bgp.peers]] table with address and asn \
                         (or remove [bgp] to announce nothing)"
                            .into(),
                    );
                }
            }
            BirdMode::Attach => {
                if self.socket.is_none() {
                    return err(
                        "bgp.socket".into(),
                        "is required with mode = \"attach\"; set it to the operator's BIRD \
                         control socket (e.g. \"/run/bird/bird.ctl\")"
                            .into(),
                    );
                }
                match &self.include_file {
                    None => {
                        return err(
                            "bgp.include_file".into(),
                            "is required with mode = \"attach\"; name a file that the \
                             operator's bird.conf includes (e.g. \
                             \"/etc/bird/sluice.conf\")"
                                .into(),
                        )
                    }
                    Some(p) if !p.is_absolute() => {
                        return err(
                            "bgp.include_file".into(),
                            format!("{p:?} is relative; use an absolute path"),
                        )
                    }
                    Some(_) => {}
                }
            }
        }
        if let Some(s) = &self.socket {
            if !s.is_absolute() {
                return err(
                    "bgp.socket".into(),
                    format!("{s:?} is relative; use an absolute path"),
                );
            }
        }
        if let Some(a) = self.next_hop_v4 {
            check_next_hop("bgp.next_hop_v4", a.into())?;
        }
        if let Some(a) = self.next_hop_v6 {
            check_next_hop("bgp.next_hop_v6", a.into())?;
        }
        if self.linger_seconds > MAX_LINGER_SECONDS {
            return err(
                "bgp.linger_seconds".into(),
                format!(
                    "{} is too long; use 0..={MAX_LINGER_SECONDS} (a few seconds is enough for \
                     routers to move traffic)",
                    self.linger_seconds
                ),
            );
        }
        self.validate_peers()?;
        self.validate_advertisements(pools)
    }

    fn validate_peers(&self) -> Result<(), (String, String)> {
        let err = |k: String, m: String| Err((k, m));
        let mut addrs = BTreeSet::new();
        let mut names = BTreeSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            let k = |f: &str| format!("bgp.peers[{i}].{f}");
            check_asn(k("asn"), p.asn)?;
            let a = p.address;
            if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
                return err(
                    k("address"),
                    format!("{a} cannot be a BGP neighbour; use the router's address"),
                );
            }
            if !addrs.insert(a) {
                return err(
                    k("address"),
                    format!("{a} is listed twice; one [[bgp.peers]] table per neighbour"),
                );
            }
            if let Some(n) = &p.name {
                if !valid_name(n) {
                    return err(
                        k("name"),
                        format!(
                            "{n:?} is not a valid name; use letters, digits and '_', starting \
                             with a letter, at most 32 characters"
                        ),
                    );
                }
            }
            if !names.insert(p.display_name()) {
                return err(
                    k("name"),
                    format!(
                        "{:?} is used by two peers; give each peer a unique name",
                        p.display_name()
                    ),
                );
            }
            if p.port == 0 {
                return err(
                    k("port"),
                    "0 is not a TCP port; use 179 (the default) or the neighbour's port".into(),
                );
            }
            if let Some(s) = p.source_address {
                if s.is_ipv4() != a.is_ipv4() || s.is_unspecified() || s.is_multicast() {
                    return err(
                        k("source_address"),
                        format!("{s} cannot be the local address of a session to {a}; use an address of this host in the same family"),
                    );
                }
            }
            if let Some(pw) = &p.password {
                if pw.is_empty() || pw.len() > 80 {
                    return err(
                        k("password"),
                        "must be 1..=80 characters (the TCP-MD5 key limit); remove the key \
                         for no password"
                            .into(),
                    );
                }
                if pw.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
                    return err(
                        k("password"),
                        "contains a quote, a backslash or a control character; use printable \
                         characters without '\"' and '\\'"
                            .into(),
                    );
                }
            }
            if p.hold_time != 0 && p.hold_time < 3 {
                return err(
                    k("hold_time"),
                    format!(
                        "{} seconds is not allowed (RFC 4271); use 0 (no keepalives) or \
                         3..=65535",
                        p.hold_time
                    ),
                );
            }
            for (f, v) in [
                ("bfd_min_rx_ms", p.bfd_min_rx_ms),
                ("bfd_min_tx_ms", p.bfd_min_tx_ms),
            ] {
                if !(10..=60_000).contains(&v) {
                    return err(
                        k(f),
                        format!("{v} ms is out of range; use 10..=60000 (300 is the default)"),
                    );
                }
            }
            if p.bfd_multiplier == 0 {
                return err(
                    k("bfd_multiplier"),
                    "0 is not allowed; use 1..=255 (3 is the default)".into(),
                );
            }
            if let Some(ttl) = p.ebgp_multihop {
                if ttl == 0 {
                    return err(
                        k("ebgp_multihop"),
                        "0 is not a TTL; use 1..=255, or remove it for a directly connected \
                         neighbour"
                            .into(),
                    );
                }
                if p.bfd && p.source_address.is_none() {
                    return err(
                        k("source_address"),
                        "is required when ebgp_multihop and bfd are both set (a multihop BFD \
                         session needs its local address); set this host's address"
                            .into(),
                    );
                }
            }
            if let Some(f) = &p.families {
                if f.is_empty() {
                    return err(
                        k("families"),
                        "is empty; list \"ipv4\", \"ipv6\" or both, or remove it for the \
                         family of the address"
                            .into(),
                    );
                }
            }
            for fam in p.families() {
                if fam != Family::of(a) {
                    let (nh, have) = match fam {
                        Family::Ipv4 => ("bgp.next_hop_v4", self.next_hop_v4.is_some()),
                        Family::Ipv6 => ("bgp.next_hop_v6", self.next_hop_v6.is_some()),
                    };
                    if !have {
                        return err(
                            nh.into(),
                            format!(
                                "is required because bgp.peers[{i}] ({a}) carries the other \
                                 family; set it to the DPDK port's address of that family"
                            ),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn validate_advertisements(&self, pools: &[&str]) -> Result<(), (String, String)> {
        let err = |k: String, m: String| Err((k, m));
        let mut seen = BTreeSet::new();
        for (i, a) in self.advertisements.iter().enumerate() {
            let k = |f: &str| format!("bgp.advertisements[{i}].{f}");
            if a.pools.is_empty() {
                return err(
                    k("pools"),
                    "is empty; name the [[pools]] these settings apply to".into(),
                );
            }
            for (j, p) in a.pools.iter().enumerate() {
                if !pools.contains(&p.as_str()) {
                    return err(
                        format!("bgp.advertisements[{i}].pools[{j}]"),
                        format!(
                            "{p:?} is not a configured pool; use one of {:?}",
                            pools.to_vec()
                        ),
                    );
                }
                if !seen.insert(p.as_str()) {
                    return err(
                        format!("bgp.advertisements[{i}].pools[{j}]"),
                        format!(
                            "pool {p:?} is already in another advertisement; a pool is in at \
                             most one"
                        ),
                    );
                }
            }
            if a.aggregation_length > 32 {
                return err(
                    k("aggregation_length"),
                    format!(
                        "/{} is not an IPv4 prefix length; use 0..=32",
                        a.aggregation_length
                    ),
                );
            }
            if a.aggregation_length_v6 > 128 {
                return err(
                    k("aggregation_length_v6"),
                    format!(
                        "/{} is not an IPv6 prefix length; use 0..=128",
                        a.aggregation_length_v6
                    ),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
