//! # `[l2]`: L2 mode among several Sluice hosts
//!
//! This host's name, the static list of hosts (this one included) that share the VIPs' segment,
//! and the heartbeats they exchange: the kernel interface and UDP port they use, the shared key
//! that authenticates them, their interval and how many may be missed before a host counts as
//! gone. docs/l2.md documents every key. [`L2Config::validate`] names the key and the fix; the
//! interface is checked where it must exist, in the daemon's network namespace
//! ([`L2Config::check_interface`]).
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `[l2]`: exactly one live host answers ARP/NDP for each VIP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L2Config {
    /// This host's name: one of `peers`, and the name other hosts' rendezvous hashing uses
    /// (with `externalTrafficPolicy: Local`, the Kubernetes node name). Required.
    pub host: String,
    /// The kernel interface on the VIPs' segment that heartbeats are sent and received on.
    /// Required.
    pub interface: String,
    /// The shared key that authenticates heartbeats (HMAC-SHA256), at least 16 bytes. One of
    /// `key` and `key_file` is required.
    #[serde(default)]
    pub key: Option<String>,
    /// A file holding the key (its first line), so that the key stays out of the config.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// UDP port of the heartbeats. Default: 7946.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Milliseconds between heartbeats (10..=10000). Default: 100.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Heartbeats a host may miss before it counts as gone (2..=100). Default: 3.
    #[serde(default = "default_dead_after")]
    pub dead_after: u32,
    /// Gratuitous ARPs / unsolicited NAs a new owner sends for a VIP (1..=10). Default: 3.
    #[serde(default = "default_garp_count")]
    pub garp_count: u32,
    /// Milliseconds between them (10..=5000). Default: 500.
    #[serde(default = "default_garp_interval")]
    pub garp_interval_ms: u64,
    /// Where the other hosts come from: `static` (`peers`) or `leases` (each host's Lease in
    /// the cluster; `peers` lists only this host). Default: static.
    #[serde(default)]
    pub membership: L2Membership,
    /// Every host of the segment, this one included (with `leases`: only this one).
    pub peers: Vec<L2Peer>,
}

/// `l2.membership`: where the list of hosts comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum L2Membership {
    /// `[[l2.peers]]` in the configuration.
    #[default]
    Static,
    /// A Lease per host in the cluster (needs `source.kind = "kubernetes"`).
    Leases,
}

/// `[[l2.peers]]`: one host of the segment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L2Peer {
    /// Its name (its `l2.host`).
    pub name: String,
    /// The address its heartbeats come from and go to (on `l2.interface`'s segment).
    pub address: IpAddr,
}

fn default_port() -> u16 {
    7946
}
fn default_interval() -> u64 {
    100
}
fn default_dead_after() -> u32 {
    3
}
fn default_garp_count() -> u32 {
    3
}
fn default_garp_interval() -> u64 {
    500
}

impl L2Config {
    /// Checks what parsing cannot; errors are (key, what is wrong and how to fix it).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_owned(), m));
        if self.host.is_empty() {
            return err(
                "l2.host",
                "is empty; name this host (one of l2.peers)".into(),
            );
        }
        if self.interface.is_empty() {
            return err(
                "l2.interface",
                "is empty; name the kernel interface on the VIPs' segment".into(),
            );
        }
        super::key::validate("l2", &self.key, &self.key_file)?;
        if self.port == 0 {
            return err(
                "l2.port",
                "0 is not a port; use 1..=65535 (default 7946)".into(),
            );
        }
        if !(10..=10_000).contains(&self.interval_ms) {
            return err(
                "l2.interval_ms",
                format!(
                    "{} is out of range; use 10..=10000 (default 100)",
                    self.interval_ms
                ),
            );
        }
        if !(2..=100).contains(&self.dead_after) {
            return err(
                "l2.dead_after",
                format!(
                    "{} is out of range; use 2..=100 (default 3)",
                    self.dead_after
                ),
            );
        }
        if !(1..=10).contains(&self.garp_count) {
            return err(
                "l2.garp_count",
                format!(
                    "{} is out of range; use 1..=10 (default 3)",
                    self.garp_count
                ),
            );
        }
        if !(10..=5_000).contains(&self.garp_interval_ms) {
            return err(
                "l2.garp_interval_ms",
                format!(
                    "{} is out of range; use 10..=5000 (default 500)",
                    self.garp_interval_ms
                ),
            );
        }
        let mut names = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            let k = |f: &str| format!("l2.peers[{i}].{f}");
            if p.name.is_empty() || p.name.len() > 63 {
                return Err((k("name"), "must be 1 to 63 bytes".into()));
            }
            if !names.insert(p.name.as_str()) {
                let what = if p.name == self.host {
                    "this host (l2.host)"
                } else {
                    "a host"
                };
                return Err((
                    k("name"),
                    format!("{:?} names {what} twice; list each host once", p.name),
                ));
            }
            if p.address.is_unspecified() || p.address.is_multicast() {
                return Err((
                    k("address"),
                    format!("{} is not a host's address", p.address),
                ));
            }
            if !addrs.insert(p.address) {
                return Err((
                    k("address"),
                    format!("{} is listed twice; each host has its own", p.address),
                ));
            }
        }
        if self.membership == L2Membership::Leases && self.peers.len() > 1 {
            return err(
                "l2.peers",
                "lists other hosts, but l2.membership = \"leases\" takes them from their \
                 Leases; list only this host (for its address)"
                    .into(),
            );
        }
        if !names.contains(self.host.as_str()) {
            return err(
                "l2.peers",
                format!(
                    "does not list this host {:?} (l2.host); list every host, this one included",
                    self.host
                ),
            );
        }
        Ok(())
    }

    /// This host's own entry in `peers` (present once [`L2Config::validate`] passed).
    pub fn me(&self) -> Option<&L2Peer> {
        self.peers.iter().find(|p| p.name == self.host)
    }

    /// Checks that `interface` exists in this network namespace (as `/sys/class/net/NAME`
    /// shows it); the error is (key, fix).
    pub fn check_interface(&self, sys_class_net: &Path) -> Result<(), (String, String)> {
        if self.interface.contains('/') || !sys_class_net.join(&self.interface).exists() {
            return Err((
                "l2.interface".into(),
                format!(
                    "no interface {:?} in this network namespace; name the kernel interface on \
                     the VIPs' segment (`ip link` lists them)",
                    self.interface
                ),
            ));
        }
        Ok(())
    }

    /// The key's bytes: `key`, or the first line of `key_file`.
    ///
    /// # Errors
    /// (key, what is wrong) when the file cannot be read or its key is too short.
    pub fn key_bytes(&self) -> Result<Vec<u8>, (String, String)> {
        super::key::bytes("l2", &self.key, &self.key_file)
    }
}
