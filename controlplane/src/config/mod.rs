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
mod admin;
pub mod bgp;
mod dataplane;
mod de;
mod forwarding;
mod health;
pub mod key;
pub mod l2;
mod limits;
mod pools;
mod source;
pub mod sync;
#[cfg(test)]
mod tests;
mod validate;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use admin::AdminConfig;
pub use bgp::BgpConfig;
pub use dataplane::{
    EalConfig, MaglevSize, NatConfig, PollMode, PortConfig, TablesConfig, WorkersConfig,
    MAX_CONNTRACK_CAPACITY, MAX_MTU, MIN_MTU,
};
pub use forwarding::{
    check_maglev_size, cookie_key_of, CookieKeySource, ForwardingConfig, SynProxyMode, Target,
    DEFAULT_HASH_SEED, DEFAULT_SYN_PROXY_AUTO_THRESHOLD, MAX_SYN_PROXY_AUTO_THRESHOLD,
};
pub use health::{HealthConfig, HealthKind};
pub use l2::{L2Config, L2Membership, L2Peer};
pub use limits::{LimitsConfig, RateBurst, MAX_FLOW_RATE, MAX_SOURCE_BUCKETS};
pub(crate) use pools::{ip_to_u128, u128_to_ip};
pub use pools::{IpRange, PoolConfig};
pub use source::{SourceConfig, SourceKind};
pub use sync::{SyncConfig, SyncPeer};

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
    /// New-flow rate limits per frontend and per source prefix. Default: none.
    #[serde(default)]
    pub limits: LimitsConfig,
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
    /// Routed mode: announce VIPs and NAT addresses over BGP through BIRD 2. Default: off.
    #[serde(default)]
    pub bgp: Option<BgpConfig>,
    /// `[l2]`: L2 mode among several hosts (docs/l2.md). Default: none (this host answers
    /// ARP/NDP for every VIP).
    #[serde(default)]
    pub l2: Option<L2Config>,
    /// `[sync]`: flow-state sync with peer hosts (docs/operations.md, "Flow sync"). Default:
    /// off.
    #[serde(default)]
    pub sync: Option<SyncConfig>,
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
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
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
        cfg.fill_defaults();
        cfg.validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                file: file.to_owned(),
                key,
                message,
            })?;
        Ok(cfg)
    }

    /// Defaults that depend on other sections: `bgp.next_hop_v4` / `next_hop_v6` are the first
    /// port's first address of that family when unset.
    fn fill_defaults(&mut self) {
        let first = self.ports.first();
        if let Some(b) = &mut self.bgp {
            if b.next_hop_v4.is_none() {
                b.next_hop_v4 = first.and_then(|p| p.ipv4.first()).map(|a| a.addr());
            }
            if b.next_hop_v6.is_none() {
                b.next_hop_v6 = first.and_then(|p| p.ipv6.first()).map(|a| a.addr());
            }
        }
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
