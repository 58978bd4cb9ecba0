//! `[health]`: active health checks of backends.

use serde::Deserialize;

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
