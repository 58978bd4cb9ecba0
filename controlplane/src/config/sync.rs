//! # `[sync]`: flow-state sync between Sluice hosts
//!
//! This host's name and sync address, the peers it sends its flows to and takes theirs from
//! (each with the NAT addresses it owns, which this host takes over when the peer is gone),
//! the shared key that authenticates every message, and the bounds: ring size per worker,
//! send rate, batching, refresh period and how long a start waits for a peer's bulk
//! transfer. docs/operations.md ("Flow sync") documents every key. [`SyncConfig::validate`]
//! names the key and the fix.
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// `[sync]`: workers publish their flows to the peers, which install them as synced flows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// This host's name, as the peers list it. Required.
    pub host: String,
    /// The kernel address sync messages are sent from and received on. Required.
    pub address: IpAddr,
    /// UDP port of the sync messages. Default: 7947.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The shared key (HMAC-SHA256), at least 16 bytes; one of `key` and `key_file`.
    #[serde(default)]
    pub key: Option<String>,
    /// A file holding the key (its first line).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Flow updates each worker's sync ring holds (1024..=1048576). A full ring drops
    /// updates (counted) and never blocks forwarding. Default: 65536.
    #[serde(default = "default_ring")]
    pub ring_size: usize,
    /// Flow updates per second sent to each peer at most (1000..=10000000); the excess is
    /// dropped and counted. Default: 500000.
    #[serde(default = "default_rate")]
    pub max_rate: u64,
    /// Milliseconds a flow update waits at most before it is sent (1..=1000). Default: 5.
    #[serde(default = "default_batch")]
    pub batch_ms: u64,
    /// Seconds between walks that send every own flow again, so that the peers' copies of
    /// long-lived flows do not expire (5..=3600). A synced flow lives at least twice this
    /// long on a peer. Default: 30.
    #[serde(default = "default_refresh")]
    pub refresh_seconds: u64,
    /// Milliseconds a starting host waits for its peers' bulk transfers before it announces
    /// anything (0..=60000; 0: do not ask). Default: 3000.
    #[serde(default = "default_bulk_timeout")]
    pub bulk_timeout_ms: u64,
    /// The other hosts.
    pub peers: Vec<SyncPeer>,
}

/// `[[sync.peers]]`: another Sluice host.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncPeer {
    /// Its `sync.host`.
    pub name: String,
    /// Its `sync.address`.
    pub address: IpAddr,
    /// Its `[nat] addresses`: replies to them reach this host once the peer is gone (routed
    /// mode announces them with a longer AS path), for the flows synced from it.
    #[serde(default)]
    pub nat_addresses: Vec<IpAddr>,
}

fn default_port() -> u16 {
    7947
}
fn default_ring() -> usize {
    65536
}
fn default_rate() -> u64 {
    500_000
}
fn default_batch() -> u64 {
    5
}
fn default_refresh() -> u64 {
    30
}
fn default_bulk_timeout() -> u64 {
    3000
}

impl SyncConfig {
    /// Checks what parsing cannot; errors are (key, what is wrong and how to fix it).
    pub fn validate(&self, own_nat: &[IpAddr]) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_owned(), m));
        if self.host.is_empty() {
            return err("sync.host", "is empty; name this host".into());
        }
        super::key::validate("sync", &self.key, &self.key_file)?;
        if self.port == 0 {
            return err(
                "sync.port",
                "0 is not a port; use 1..=65535 (default 7947)".into(),
            );
        }
        let ranges: [(&str, u64, u64, u64, &str); 5] = [
            (
                "sync.ring_size",
                self.ring_size as u64,
                1024,
                1 << 20,
                "65536",
            ),
            ("sync.max_rate", self.max_rate, 1000, 10_000_000, "500000"),
            ("sync.batch_ms", self.batch_ms, 1, 1000, "5"),
            ("sync.refresh_seconds", self.refresh_seconds, 5, 3600, "30"),
            (
                "sync.bulk_timeout_ms",
                self.bulk_timeout_ms,
                0,
                60_000,
                "3000",
            ),
        ];
        for (k, v, lo, hi, def) in ranges {
            if !(lo..=hi).contains(&v) {
                return err(
                    k,
                    format!("{v} is out of range; use {lo}..={hi} (default {def})"),
                );
            }
        }
        if self.peers.is_empty() {
            return err(
                "sync.peers",
                "is empty; list the other hosts ([[sync.peers]] name, address)".into(),
            );
        }
        for (i, p) in self.peers.iter().enumerate() {
            let k = format!("sync.peers[{i}]");
            if p.name.is_empty() || p.name == self.host {
                return err(
                    &format!("{k}.name"),
                    format!(
                        "{:?} must name another host (not empty, not sync.host)",
                        p.name
                    ),
                );
            }
            if self.peers[..i].iter().any(|q| q.name == p.name) {
                return err(
                    &format!("{k}.name"),
                    format!("{:?} is listed twice", p.name),
                );
            }
            if p.address.is_ipv6() != self.address.is_ipv6() || p.address == self.address {
                return err(
                    &format!("{k}.address"),
                    format!(
                        "{} must be another host's address of sync.address's family ({})",
                        p.address, self.address
                    ),
                );
            }
            if let Some(a) = p.nat_addresses.iter().find(|a| own_nat.contains(a)) {
                return err(
                    &format!("{k}.nat_addresses"),
                    format!("{a} is one of this host's [nat] addresses; list the peer's own"),
                );
            }
        }
        Ok(())
    }

    /// The key's bytes (from `key`, or the first line of `key_file`).
    pub fn key_bytes(&self) -> Result<Vec<u8>, (String, String)> {
        super::key::bytes("sync", &self.key, &self.key_file)
    }

    /// The peers' NAT addresses, in configuration order.
    pub fn peer_nat_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.peers
            .iter()
            .flat_map(|p| p.nat_addresses.iter().copied())
    }
}
