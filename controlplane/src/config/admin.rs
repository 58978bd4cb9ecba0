//! `[admin]`: the admin socket and the metrics listener.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

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
    /// Directory of the state kept across restarts (the operator's drains and weights, in
    /// `overrides.json`). Default: `/var/lib/sluice`.
    pub state_dir: PathBuf,
    /// Whether a clean stop saves the live flows to `<state_dir>/flows.bin` and the next
    /// start restores them (see `daemon/flowstate.rs`). Default: true.
    pub keep_flows_on_restart: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            socket: PathBuf::from("/run/sluice/admin.sock"),
            metrics_enabled: true,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9470)),
            state_dir: PathBuf::from("/var/lib/sluice"),
            keep_flows_on_restart: true,
        }
    }
}
