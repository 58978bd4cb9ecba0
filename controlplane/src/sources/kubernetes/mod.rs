//! # The Kubernetes source
//!
//! With `[source] kind = "kubernetes"`, Sluice is a LoadBalancer implementation for a live
//! cluster: it watches Services, EndpointSlices and Nodes ([`source`]), the same compile step
//! as the manifest source turns them into snapshots, and the leader among the Sluice
//! instances ([`lease`]) writes `status.loadBalancer.ingress` and Events back ([`status`],
//! [`events`]).
//!
//! ```text
//!  API server ──watch──► source (3 watchers, debounce) ──Batch──► daemon: Model ─► compile ─► workers
//!       ▲                    │ meta (uid, status as seen)                         │ CompileReport
//!       │                    ▼                                                    ▼
//!       └──── SSA status, Events ◄──── status writer (leader only) ◄──── StatusReporter
//!       └──── Lease ◄──── elector
//! ```
//!
//! ## Design
//! - **One code path after the source.** [`Kubernetes`] produces [`Batch`]es that the daemon
//!   applies to its [`Model`] exactly where the manifest watcher's models land; compile, IPAM,
//!   health, publish and announce are shared.
//! - **Only the leader writes.** Every instance compiles and serves. A follower's IPAM
//!   allocates nothing: it serves the VIPs the leader wrote to status
//!   ([`crate::compile::Compiler::set_follow_status`]), so all hosts announce the same
//!   addresses. The daemon switches the mode when [`Kubernetes::leader`] changes.
//! - **Credentials** are resolved as kube-rs does (`KUBECONFIG`, `~/.kube/config`, then the
//!   in-cluster service account), or read from `source.kubeconfig`.
pub mod access;
pub mod events;
pub mod lease;
pub mod members;
pub mod source;
pub mod status;

use std::time::Duration;

use kube::Client;
use tokio::sync::{mpsc, watch};
use tracing::info;

pub use source::{Batch, Change, Kind, Selection};
pub use status::{HostEvent, HostEvents, StatusReporter};

use crate::config::Config;
use crate::model::Model;
use lease::{Elector, LeaseSettings};
use source::{MetaMap, WatchOptions};
use status::WriterSettings;

/// The field manager of Sluice's server-side applies.
pub const FIELD_MANAGER: &str = "sluice";
/// `reportingController` of Sluice's Events.
pub const REPORTING_CONTROLLER: &str = "sluice.dev/sluiced";

/// Why the Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No usable credentials or cluster address.
    #[error("cannot configure the Kubernetes client: {0}; set source.kubeconfig, KUBECONFIG, or run in a Pod with a service account")]
    Config(String),
    /// The client could not be built.
    #[error("cannot create the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// Everything the source needs besides a client.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// Which Services are Sluice's.
    pub selection: Selection,
    /// Quiet time before a rebuild; a burst waits at most four times this.
    pub debounce: Duration,
    /// Leader election; `None`: this instance always leads (a single instance).
    pub lease: Option<LeaseSettings>,
    /// Pools (named in `IPAllocated` Events).
    pub pools: Vec<crate::config::PoolConfig>,
    /// `timeoutSeconds` of each watch request (`None`: kube-rs's default).
    pub watch_timeout: Option<u32>,
    /// Identity of this instance in Events and the Lease.
    pub identity: String,
}

impl KubeSettings {
    /// Settings from the `[source]` and `[[pools]]` of a configuration.
    pub fn from_config(cfg: &Config) -> KubeSettings {
        let s = &cfg.source;
        let identity = identity(cfg);
        let namespace = lease_namespace(cfg);
        KubeSettings {
            selection: Selection {
                class: s.load_balancer_class.clone(),
                serve_unclassed: s.serve_unclassed,
            },
            debounce: Duration::from_millis(s.debounce_ms),
            lease: s.leader_election.then(|| LeaseSettings {
                duration: Duration::from_secs(u64::from(s.lease_duration_seconds)),
                renew_deadline: Duration::from_millis(s.lease_renew_deadline_ms),
                retry: Duration::from_millis(s.lease_retry_ms),
                ..LeaseSettings::new(&namespace, &s.lease_name, &identity)
            }),
            pools: cfg.pools.clone(),
            watch_timeout: None,
            identity,
        }
    }
}

/// `$POD_NAME`, else the host name, else `sluiced-<pid>`.
pub fn default_identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| format!("sluiced-{}", std::process::id()))
}

/// This instance's identity in Events and Leases: `source.identity`, else
/// [`default_identity`].
pub fn identity(cfg: &Config) -> String {
    if cfg.source.identity.is_empty() {
        default_identity()
    } else {
        cfg.source.identity.clone()
    }
}

/// Where Sluice's Leases live: `source.lease_namespace`, else [`own_namespace`].
pub fn lease_namespace(cfg: &Config) -> String {
    if cfg.source.lease_namespace.is_empty() {
        own_namespace()
    } else {
        cfg.source.lease_namespace.clone()
    }
}

/// The Pod's namespace (from the service account), else `default`.
pub fn own_namespace() -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok()
        })
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

/// A client from `source.kubeconfig`, or as kube-rs infers it.
///
/// # Errors
/// [`KubeError`] when no configuration is found or it is invalid.
pub async fn client(cfg: &Config) -> Result<Client, KubeError> {
    let config = match &cfg.source.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeError::Config(e.to_string()))?,
    };
    Ok(Client::try_from(config)?)
}

/// A running Kubernetes source: watchers, debouncer, elector and status writer.
///
/// Dropping it stops every task (without releasing the Lease; see [`Kubernetes::shutdown`]).
#[derive(Debug)]
pub struct Kubernetes {
    updates: mpsc::Receiver<Batch>,
    leader: watch::Receiver<bool>,
    reporter: Option<StatusReporter>,
    elector: Option<Elector>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Keeps `leader` alive when there is no elector.
    _always: Option<watch::Sender<bool>>,
}

impl Kubernetes {
    /// Starts the watchers, the elector and the status writer (needs a tokio runtime).
    pub fn start(client: Client, settings: KubeSettings) -> Kubernetes {
        let meta = MetaMap::default();
        let opts = WatchOptions {
            selection: settings.selection.clone(),
            watch_timeout: settings.watch_timeout,
            page_size: 500,
        };
        let (raw, mut tasks) = source::spawn_watchers(&client, &opts, &meta);
        let (btx, brx) = mpsc::channel(64);
        let (itx, irx) = mpsc::unbounded_channel();
        tasks.push(tokio::spawn(source::debounce(
            raw,
            btx,
            itx,
            settings.debounce,
            settings.debounce * 4,
        )));
        let (elector, leader, always) = match &settings.lease {
            Some(l) => {
                let e = Elector::spawn(client.clone(), l.clone());
                let rx = e.leader();
                (Some(e), rx, None)
            }
            None => {
                let (tx, rx) = watch::channel(true);
                (None, rx, Some(tx))
            }
        };
        let (wtx, wrx) = mpsc::unbounded_channel();
        tasks.push(tokio::spawn(status::run_writer(
            client,
            WriterSettings {
                field_manager: FIELD_MANAGER.to_owned(),
                reporter: REPORTING_CONTROLLER.to_owned(),
                instance: settings.identity.clone(),
                pools: settings.pools.clone(),
            },
            meta,
            wrx,
            irx,
            leader.clone(),
        )));
        Kubernetes {
            updates: brx,
            leader,
            reporter: Some(StatusReporter::new(wtx)),
            elector,
            tasks,
            _always: always,
        }
    }

    /// Waits until Services, EndpointSlices and Nodes have each been listed once, and returns
    /// the model they make.
    pub async fn initial_model(&mut self) -> Model {
        let mut model = Model::default();
        let mut synced = std::collections::BTreeSet::new();
        while synced.len() < 3 {
            let Some(b) = self.updates.recv().await else {
                break;
            };
            synced.extend(b.synced_kinds());
            b.apply(&mut model);
        }
        info!(
            services = model.services.len(),
            endpoint_slices = model.endpoint_slices.len(),
            nodes = model.nodes.len(),
            "cluster state loaded"
        );
        model
    }

    /// The next debounced batch (`None` when the source stopped).
    pub async fn next_batch(&mut self) -> Option<Batch> {
        self.updates.recv().await
    }

    /// A batch if one is ready.
    pub fn try_next_batch(&mut self) -> Option<Batch> {
        self.updates.try_recv().ok()
    }

    /// Whether this instance leads; `changed()` wakes on transitions.
    pub fn leader(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Whether this instance leads now.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// The handle that passes compile reports to the status writer (once).
    pub fn take_reporter(&mut self) -> Option<StatusReporter> {
        self.reporter.take()
    }

    /// Stops the watchers and the writer, and releases the Lease if this instance holds it.
    pub async fn shutdown(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(e) = self.elector.take() {
            e.release().await;
        }
    }
}

impl Drop for Kubernetes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
