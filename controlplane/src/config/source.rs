//! `[source]`: where Services, EndpointSlices and Nodes come from.

use std::path::PathBuf;

use serde::Deserialize;

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
    /// `leaseDurationSeconds`: how long after its last renewal a silent leader keeps the Lease
    /// before a standby may take it over. Default: 15.
    pub lease_duration_seconds: u32,
    /// Milliseconds a leader keeps leading without a successful renewal before it stops
    /// writing on its own (less than the lease duration). Default: 10000.
    pub lease_renew_deadline_ms: u64,
    /// Milliseconds between two Lease rounds (renew, or check whether it can be taken).
    /// Default: 2000.
    pub lease_retry_ms: u64,
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
            lease_duration_seconds: 15,
            lease_renew_deadline_ms: 10_000,
            lease_retry_ms: 2_000,
            identity: String::new(),
        }
    }
}
