//! # The `sluiced` runtime
//!
//! [`run`] is the daemon from start to stop, and reads as its table of contents:
//! - load the configuration and the first model from the source (`sources`);
//! - [`boot`]: EAL, the ports with one RX/TX queue pair per worker, the worker rings;
//! - [`ControlState`] ([`state`]): compile the first snapshot (next hops unresolved yet:
//!   backends wait for ARP/NDP), then [`boot`] spawns the pinned workers with it;
//! - start the admin socket and the metrics listener;
//! - with `[bgp]`, start BIRD with nothing announced ([`bgp`]); VIPs and NAT addresses are
//!   announced once the workers run the snapshot that serves them, and each change is logged
//!   and, from the Kubernetes source, recorded as an Event on the Service ([`bgp_events`]);
//! - [`control`]: the control loop on tokio (on the cores the workers do not use), which
//!   recompiles on any change and publishes to every worker, announcing VIPs and resolving
//!   next hops through [`crate::announce`];
//! - before the workers start, the flows the previous process saved ([`flowstate`]);
//! - with `[sync]`, start flow sync ([`crate::sync`]) and wait (bounded) for the peers' bulk
//!   transfers before anything is announced;
//! - on SIGINT/SIGTERM: with `[bgp]`, withdraw everything and keep forwarding for
//!   `bgp.linger_seconds` while the routers move traffic away; then stop the workers, the
//!   ports, EAL, save the workers' flows for the next start, and last BIRD.
mod bgp;
mod bgp_events;
pub mod boot;
mod check;
mod control;
mod flowstate;
pub mod overrides;
pub mod state;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_events;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sluice_dataplane::snapshot::Snapshot;
use sluice_dataplane::stats::WorkerStats;
use tracing::{info, warn};

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::sources::kubernetes::{self as k8s, KubeSettings, Kubernetes};
use crate::sources::manifest::{self, ManifestWatcher};
pub use boot::{eal_args, port_name};
pub use check::{check, CheckReport};
pub use state::ControlState;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration file is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The manifest directory is invalid at start-up.
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// A DPDK call failed.
    #[error("DPDK: {0}")]
    Dpdk(String),
    /// Compiling the first snapshot failed.
    #[error(transparent)]
    Compile(#[from] crate::compile::CompileError),
    /// An I/O error (threads, signals, runtime).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The Kubernetes source could not start.
    #[error(transparent)]
    Kube(#[from] k8s::KubeError),
    /// Routed mode could not start (BIRD missing, not starting or not answering).
    #[error("bgp: {0}")]
    Bgp(#[from] crate::announce::bgp::BgpError),
    /// L2 mode could not start (key file, interface, heartbeat socket).
    #[error(transparent)]
    L2(#[from] crate::l2::L2Error),
    /// Flow sync could not start (key file, socket).
    #[error(transparent)]
    Sync(#[from] crate::sync::SyncError),
}

/// What start-up reads before it touches DPDK: the configuration and, from the manifest
/// source, the first model. `sluiced --check` stops here and compiles.
struct Loaded {
    cfg: Config,
    /// `source.manifest_dir`, relative paths resolved as the daemon resolves them.
    manifest_dir: PathBuf,
    /// Whether the model comes from the Kubernetes API (listed later, on the runtime).
    kubernetes: bool,
    /// The first manifests (empty with the Kubernetes source).
    first: manifest::Manifests,
    watcher: Option<ManifestWatcher>,
}

/// Loads the configuration at `path` and, with the manifest source, its directory.
fn load(path: &Path) -> Result<Loaded, DaemonError> {
    let cfg = Config::load(path)?;
    let manifest_dir = resolve_dir(path, &cfg.source.manifest_dir);
    let kubernetes = cfg.source.kind == crate::config::SourceKind::Kubernetes;
    let (first, watcher) = if kubernetes {
        (manifest::Manifests::default(), None)
    } else {
        let (first, watcher) = ManifestWatcher::load(&manifest_dir)?;
        (first, Some(watcher))
    };
    Ok(Loaded {
        cfg,
        manifest_dir,
        kubernetes,
        first,
        watcher,
    })
}

/// Runs `sluiced` with the configuration at `path` until SIGINT/SIGTERM.
pub fn run(path: &Path) -> Result<(), DaemonError> {
    let Loaded {
        cfg,
        manifest_dir,
        kubernetes,
        first,
        watcher,
    } = load(path)?;
    if !kubernetes {
        for w in &first.warnings {
            warn!(warning = %w, "manifest");
        }
        info!(dir = %manifest_dir.display(), files = first.files.len(), services = first.model.services.len(), "manifests loaded");
    }

    let ports = boot::start_ports(&cfg)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (nb_tx, nb_rx) = crossbeam_channel::bounded(4096);
    let (ret_tx, ret_rx) = crossbeam_channel::bounded::<Arc<Snapshot>>(64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let _guard = rt.enter();
    // The Kubernetes source runs on the control-plane runtime: list the cluster before the
    // first compile.
    let mut kube = None;
    let mut first_model = first.model;
    if kubernetes {
        let mut k = rt.block_on(async {
            let client = k8s::client(&cfg).await?;
            Ok::<_, DaemonError>(Kubernetes::start(client, KubeSettings::from_config(&cfg)))
        })?;
        info!(class = %cfg.source.load_balancer_class, "listing Services, EndpointSlices and Nodes");
        first_model = rt.block_on(k.initial_model());
        kube = Some(k);
    }
    let mut state = ControlState::new(cfg.clone(), first_model, ports.mac, manifest_dir);
    match state.restore_overrides() {
        Ok(0) => {}
        Ok(n) => {
            info!(addresses = n, dir = %cfg.admin.state_dir.display(), "operator drains and weights restored")
        }
        Err(e) => warn!(error = %e, "operator drains and weights"),
    }
    if let Some(k) = kube {
        state.attach_kubernetes(k);
    }
    // First snapshot (next hops unresolved yet: backends wait for ARP/NDP).
    let first_snap = Arc::new(state.compile(&HashMap::new())?.snapshot);
    // The previous process's flows, for each worker to insert before it polls.
    let nworkers = cfg.workers.cores.len().max(1) as u16;
    let keep_flows = cfg.admin.keep_flows_on_restart;
    let restore = if keep_flows {
        flowstate::restore_at_start(
            &cfg.admin.state_dir,
            nworkers,
            cfg.forwarding.hash_seed,
            &first_snap,
        )
    } else {
        Vec::new()
    };
    let local = first_snap.local.clone();
    let port_links = ports.links.clone();
    let shared = boot::Shared {
        neighbors: nb_tx,
        retired: ret_tx,
        stop: stop.clone(),
    };
    let (sync_tx, sync_rx) = match &cfg.sync {
        Some(y) => crate::sync::rings(usize::from(nworkers), y.ring_size),
        None => (Vec::new(), Vec::new()),
    };
    let workers = boot::spawn_workers(&cfg, ports, &shared, first_snap, restore, &sync_tx)?;
    drop(sync_tx);
    let stats: Vec<Arc<WorkerStats>> = workers
        .dataplane
        .workers
        .iter()
        .map(|w| w.stats.clone())
        .collect();
    let (admin_state, admin_rx) = AdminState::new(admin::Setup {
        config_path: path.to_path_buf(),
        config: cfg.clone(),
        workers: stats
            .iter()
            .zip(&workers.commands)
            .enumerate()
            .map(|(w, (s, c))| admin::WorkerLink {
                index: w as u16,
                core: cfg.workers.cores.get(w).copied(),
                queues: cfg
                    .ports
                    .iter()
                    .map(|p| format!("{}/q{w}", p.name))
                    .collect(),
                stats: s.clone(),
                commands: c.clone(),
            })
            .collect(),
        ports: port_links,
        health: state.health.view(),
        timeouts: Default::default(),
    });
    let workers_commands = workers.commands.clone();
    state.attach_workers(workers.snapshots, workers.commands.first().cloned());
    state.attach_admin(admin_state.clone());
    if let Some(events) = state.host_events() {
        admin_state.attach_events(events);
    }
    let dp = workers.dataplane;
    // Bound before the first publish, so a bad socket or metrics address fails the start-up.
    let servers = match start_admin(&cfg, &admin_state) {
        Ok(s) => s,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            drop(state);
            dp.stop();
            return Err(e);
        }
    };
    // Flow sync, if configured: the peers' flows (bulk transfer) before anything is
    // announced.
    let sync = match &cfg.sync {
        Some(y) => {
            let links = crate::sync::SyncLinks {
                rings: sync_rx,
                commands: workers_commands.clone(),
                stats: stats.clone(),
            };
            match crate::sync::Sync::start(y, links) {
                Ok(s) => {
                    admin_state.attach_sync(Arc::new(s.view()));
                    s.wait_bulk();
                    Some(s)
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    drop(servers);
                    drop(state);
                    dp.stop();
                    return Err(e.into());
                }
            }
        }
        None => None,
    };
    // Routed or L2 mode, if configured; a failure stops what already runs.
    if let Err(e) = start_fleet(&cfg, &mut state, &rt, &admin_state, &stats) {
        stop.store(true, Ordering::Relaxed);
        drop(servers);
        drop(state);
        dp.stop();
        return Err(e);
    }
    boot::pin_control_threads(&cfg);
    state.compile_and_publish("start");

    let result = rt.block_on(control::control_loop(
        &mut state, watcher, nb_rx, ret_rx, &stats, admin_rx, &dp.ports,
    ));
    if let Some(k) = state.kube.take() {
        rt.block_on(k.shutdown());
    }
    info!("stopping: workers, then ports, then EAL");
    let routed = state.bgp.take();
    drop(servers);
    stop.store(true, Ordering::Relaxed);
    drop(state);
    let saved = dp.stop();
    if let Some(s) = sync {
        s.stop();
    }
    if keep_flows {
        flowstate::save_at_stop(
            &cfg.admin.state_dir,
            nworkers,
            cfg.forwarding.hash_seed,
            &local,
            &saved,
        );
    }
    if let Some(r) = routed {
        r.stop();
    }
    info!("stopped cleanly");
    result
}

/// Starts routed mode (`[bgp]`) or L2 mode (`[l2]`), whichever is configured, and attaches it.
fn start_fleet(
    cfg: &Config,
    state: &mut ControlState,
    rt: &tokio::runtime::Runtime,
    admin_state: &Arc<AdminState>,
    stats: &[Arc<WorkerStats>],
) -> Result<(), DaemonError> {
    if let Some(b) = &cfg.bgp {
        let notifier = bgp_events::Notifier::new(k8s::identity(cfg), state.host_events(), b);
        let routed = bgp::Routed::start(b, Some(admin_state.clone()), stats.to_vec(), notifier)?;
        state.attach_bgp(routed);
    }
    if let Some(l) = &cfg.l2 {
        let _rt = rt.enter();
        let roster = match l.membership {
            crate::config::L2Membership::Static => None,
            crate::config::L2Membership::Leases => {
                let client = rt.block_on(k8s::client(cfg))?;
                // Present: validation requires l2.peers to list this host.
                let address = l.me().map(|p| p.address).ok_or_else(|| {
                    crate::l2::L2Error::Config("l2.peers".into(), "does not list this host".into())
                })?;
                Some(k8s::members::spawn(
                    client,
                    k8s::members::MemberSettings {
                        namespace: k8s::lease_namespace(cfg),
                        host: l.host.clone(),
                        address,
                        duration: std::time::Duration::from_secs(5),
                        every: std::time::Duration::from_secs(1),
                    },
                ))
            }
        };
        state.attach_l2(crate::l2::L2::start(l, stats.to_vec(), roster)?);
    }
    Ok(())
}

/// The admin socket and (if enabled) the metrics listener.
type AdminServers = (
    admin::server::AdminServer,
    Option<admin::metrics::MetricsServer>,
);

fn start_admin(cfg: &Config, state: &Arc<AdminState>) -> Result<AdminServers, DaemonError> {
    let sock = admin::server::AdminServer::start(state.clone(), &cfg.admin.socket)?;
    let metrics = if cfg.admin.metrics_enabled {
        Some(admin::metrics::MetricsServer::start(
            state.clone(),
            cfg.admin.metrics_listen,
        )?)
    } else {
        None
    };
    Ok((sock, metrics))
}

fn resolve_dir(config: &Path, dir: &Path) -> PathBuf {
    if dir.is_absolute() || dir.exists() {
        dir.to_path_buf()
    } else {
        config
            .parent()
            .map(|p| p.join(dir))
            .unwrap_or_else(|| dir.to_path_buf())
    }
}
