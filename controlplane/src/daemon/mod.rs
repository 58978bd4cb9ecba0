//! # The `sluiced` runtime
//!
//! Starts EAL, configures the ports with one RX/TX queue pair per worker, starts the pinned
//! workers with a first snapshot, then runs the control loop on tokio (on the cores the workers
//! do not use): manifest changes, health changes and learned neighbours trigger a recompile;
//! the new snapshot is published to every worker; unresolved next hops are asked for through
//! the dataplane (ARP/NS from worker 0) and refreshed periodically; new VIPs are announced
//! (gratuitous ARP / unsolicited NA). SIGINT/SIGTERM stop the workers, then the ports, then EAL.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use dpdk_sys::{Eal, MbufRing, Mempool, Port, PortConfig as DpdkPortConfig};
use sluice_dataplane::pipeline::{NeighborEvent, PipelineConfig};
use sluice_dataplane::snapshot::Snapshot;
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::worker::{
    self, Command, WorkerConfig, WorkerHandle, WorkerLinks, WorkerQueues,
};
use tracing::{error, info, warn};

use crate::admin::{self, AdminState, ControlRequest};
use crate::compile::{CompileInput, CompileReport, Compiler};
use crate::config::Config;
use crate::health::{HealthChecker, ProbeSettings};
use crate::sources::manifest::{ManifestEvent, ManifestWatcher};
use crate::model::Model;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration file is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The manifest directory is invalid at start-up.
    #[error(transparent)]
    Manifest(#[from] crate::sources::manifest::ManifestError),
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
    Kube(#[from] crate::sources::kubernetes::KubeError),
}

fn dpdk<T>(what: &str, r: dpdk_sys::Result<T>) -> Result<T, DaemonError> {
    r.map_err(|e| DaemonError::Dpdk(format!("{what}: {e}")))
}

/// The EAL argument list for a configuration.
pub fn eal_args(cfg: &Config) -> Vec<String> {
    let mut a = vec!["sluiced".to_string()];
    let control = cfg
        .workers
        .control_cores
        .clone()
        .and_then(|c| c.first().copied())
        .unwrap_or_else(|| {
            (0..num_cores())
                .find(|c| !cfg.workers.cores.contains(c))
                .unwrap_or(0)
        });
    a.push("-l".into());
    a.push(control.to_string());
    if cfg.ports.iter().all(|p| p.is_vdev()) {
        a.push("--no-pci".into());
    }
    for p in &cfg.ports {
        if p.is_vdev() {
            a.push(format!("--vdev={}", p.device));
        } else {
            a.push("-a".into());
            a.push(p.device.clone());
        }
    }
    if let Some(fp) = &cfg.eal.file_prefix {
        a.push(format!("--file-prefix={fp}"));
    }
    a.extend(cfg.eal.args.iter().cloned());
    a
}

fn num_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The DPDK port name of a device string (`net_af_packet0,iface=x` -> `net_af_packet0`).
pub fn port_name(device: &str) -> &str {
    device.split(',').next().unwrap_or(device)
}

/// Everything the control loop reads and writes.
struct State {
    cfg: Config,
    model: Model,
    compiler: Compiler,
    neighbours: HashMap<IpAddr, [u8; 6]>,
    drained: BTreeSet<IpAddr>,
    /// Maglev weights set by the operator (admin API).
    weights: BTreeMap<IpAddr, u32>,
    health: HealthChecker,
    mac: [u8; 6],
    snap_tx: Vec<Sender<Arc<Snapshot>>>,
    commands: Vec<Sender<Command>>,
    last: Option<CompileReport>,
    announced: BTreeSet<IpAddr>,
    last_publish: Instant,
    /// The admin API's view (set once the workers run).
    admin: Option<Arc<AdminState>>,
    /// The manifest directory (for `POST /v1/reload`).
    manifest_dir: PathBuf,
    /// The Kubernetes source (`source.kind = "kubernetes"`).
    kube: Option<crate::sources::kubernetes::Kubernetes>,
    /// Hands compile reports to the Kubernetes status writer.
    status: Option<crate::sources::kubernetes::StatusReporter>,
}

impl State {
    fn compile_and_publish(&mut self, why: &str) {
        let health = self.health.states();
        let input = CompileInput {
            config: &self.cfg,
            model: &self.model,
            local_mac: self.mac,
            neighbours: &self.neighbours,
            health: &health,
            drained: &self.drained,
            weights: &self.weights,
            now: Instant::now(),
        };
        let t_compile = Instant::now();
        let compiled = self.compiler.compile(&input);
        if let Some(a) = &self.admin {
            a.observe_compile(t_compile.elapsed());
        }
        let compiled = match compiled {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "compile failed; the workers keep the last good snapshot");
                return;
            }
        };
        let report = compiled.report;
        if self.last.as_ref().is_some_and(|l| same_config(l, &report)) {
            return; // nothing the dataplane would see changed
        }
        let snap = Arc::new(compiled.snapshot);
        let t = Instant::now();
        for tx in &self.snap_tx {
            // A worker keeps only the newest; if its channel is full it will catch up.
            let _ = tx.try_send(snap.clone());
        }
        if let Some(s) = &mut self.status {
            s.report(&report);
        }
        if let Some(a) = &self.admin {
            a.snapshot_sent(report.generation, t);
            a.publish_snapshot(&report, &snap, &self.model, &self.drained, &self.weights);
        }
        let backends: usize = report
            .services
            .iter()
            .flat_map(|s| &s.frontends)
            .map(|f| f.backends.len())
            .sum();
        info!(
            generation = report.generation,
            services = report.services.len(),
            frontends = report
                .services
                .iter()
                .map(|s| s.frontends.len())
                .sum::<usize>(),
            backends,
            unresolved = report.unresolved.len(),
            maglev_rebuilt = report.maglev_rebuilt.len(),
            publish_us = t.elapsed().as_micros() as u64,
            why,
            "published snapshot"
        );
        for s in &report.services {
            for p in &s.problems {
                warn!(service = %s.service, problem = %p, "service problem");
            }
        }
        for p in &report.problems {
            warn!(problem = %p, "problem");
        }
        self.health
            .set_targets(report.health_targets.iter().cloned());
        // Announce VIPs we did not announce before.
        let vips: BTreeSet<IpAddr> = report
            .services
            .iter()
            .flat_map(|s| s.vips.iter().copied())
            .collect();
        for v in vips.difference(&self.announced) {
            if let Some(c) = self.commands.first() {
                let _ = c.try_send(Command::Announce(*v));
            }
        }
        self.announced = vips;
        self.resolve(&report.unresolved);
        self.last = Some(report);
        self.last_publish = Instant::now();
    }

    fn resolve(&self, targets: &BTreeSet<IpAddr>) {
        let Some(c) = self.commands.first() else {
            return;
        };
        let port = &self.cfg.ports[0];
        for t in targets {
            let from = match t {
                IpAddr::V4(_) => port.ipv4.first().map(|n| IpAddr::V4(n.addr())),
                IpAddr::V6(_) => port.ipv6.first().map(|n| IpAddr::V6(n.addr())),
            };
            if let Some(from) = from {
                let _ = c.try_send(Command::Resolve { target: *t, from });
            }
        }
    }
}

impl State {
    /// Carries out a write from the admin API and answers it.
    fn admin_request(&mut self, req: ControlRequest) {
        match req {
            ControlRequest::Backend { addr, op, reply } => {
                let r = op.apply(
                    addr,
                    self.last.as_ref(),
                    &mut self.drained,
                    &mut self.weights,
                );
                let r = r.map(|backends| {
                    self.compile_and_publish(&op.describe(addr));
                    if let Some(a) = &self.admin {
                        a.set_overrides(&self.drained, &self.weights);
                    }
                    admin::api::BackendChange {
                        addr,
                        drained: self.drained.contains(&addr),
                        weight: self.weights.get(&addr).copied(),
                        backends,
                        generation: self.last.as_ref().map_or(0, |l| l.generation),
                    }
                });
                let _ = reply.send(r);
            }
            ControlRequest::Reload { reply } => {
                let r = if self.cfg.source.kind != crate::config::SourceKind::Manifests {
                    Err(admin::ApiError::conflict(
                        "source.kind is not manifests: there is no manifest directory to reload",
                    ))
                } else {
                    match crate::sources::manifest::load_dir(&self.manifest_dir) {
                        Ok(m) => {
                            info!(dir = %self.manifest_dir.display(), services = m.model.services.len(), "manifests reloaded by the operator");
                            let services = m.model.services.len();
                            self.model = m.model;
                            self.compile_and_publish("operator reload");
                            if let Some(a) = &self.admin {
                                a.set_source_error(None);
                            }
                            Ok(admin::api::Reloaded {
                                dir: self.manifest_dir.display().to_string(),
                                services,
                                warnings: m.warnings.iter().map(|w| w.to_string()).collect(),
                                generation: self.last.as_ref().map_or(0, |l| l.generation),
                            })
                        }
                        Err(e) => Err(admin::ApiError::conflict(format!(
                            "{e}; still serving the last good state"
                        ))),
                    }
                };
                let _ = reply.send(r);
            }
        }
    }
}

/// Two reports that would give the dataplane the same snapshot.
fn same_config(a: &CompileReport, b: &CompileReport) -> bool {
    a.services == b.services && a.problems == b.problems && a.unresolved == b.unresolved
}

/// A running daemon's handle to its DPDK resources, torn down in order on drop.
struct Dataplane {
    workers: Vec<WorkerHandle>,
    ports: Vec<Port>,
    pool: Arc<Mempool>,
    eal: Arc<Eal>,
}

impl Dataplane {
    fn stop(mut self) {
        for w in self.workers.drain(..) {
            if let Err(e) = w.stop() {
                error!(error = %e, "worker stopped with an error");
            }
        }
        for p in self.ports.iter_mut() {
            if let Err(e) = p.stop() {
                warn!(port = p.name(), error = %e, "port stop failed");
            }
        }
        self.ports.clear();
        drop(self.pool);
        match Arc::try_unwrap(self.eal) {
            Ok(eal) => drop(eal),
            Err(_) => warn!("EAL still referenced at shutdown; skipping rte_eal_cleanup"),
        }
    }
}

/// Runs `sluiced` with the configuration at `path` until SIGINT/SIGTERM.
pub fn run(path: &Path) -> Result<(), DaemonError> {
    let cfg = Config::load(path)?;
    let manifest_dir = resolve_dir(path, &cfg.source.manifest_dir);
    let kubernetes = cfg.source.kind == crate::config::SourceKind::Kubernetes;
    let (first, watcher) = if kubernetes {
        (crate::sources::manifest::Manifests::default(), None)
    } else {
        let (first, watcher) = ManifestWatcher::load(&manifest_dir)?;
        for w in &first.warnings {
            warn!(warning = %w, "manifest");
        }
        info!(dir = %manifest_dir.display(), files = first.files.len(), services = first.model.services.len(), "manifests loaded");
        (first, Some(watcher))
    };

    let args = eal_args(&cfg);
    info!(args = ?args, "starting EAL");
    let eal = Arc::new(dpdk("EAL init", Eal::init(&args))?);
    let nworkers = cfg.workers.cores.len().max(1);
    let pool_size = (8192 * cfg.ports.len() * nworkers).max(8192) as u32 - 1;
    let pool = Arc::new(dpdk(
        "mempool",
        Mempool::new(
            "sluice_pool",
            pool_size,
            256,
            Mempool::DEFAULT_DATA_ROOM,
            -1,
        ),
    )?);

    let mut ports = Vec::new();
    let mut queues: Vec<WorkerQueues> = (0..nworkers)
        .map(|_| WorkerQueues { pairs: Vec::new() })
        .collect();
    let mut mac = [0u8; 6];
    let mut port_links = Vec::new();
    for (i, pc) in cfg.ports.iter().enumerate() {
        let name = port_name(&pc.device);
        let mut port = dpdk(&format!("port {}", pc.name), Port::by_name(&eal, name))?;
        let (maxrx, maxtx) = dpdk("port info", port.max_queues())?;
        if usize::from(maxrx) < nworkers || usize::from(maxtx) < nworkers {
            return Err(DaemonError::Dpdk(format!(
                "port {} ({}) has {maxrx} RX / {maxtx} TX queues but {nworkers} workers are configured; \
                 use fewer [workers].cores or a device with more queues (net_af_packet: qpairs=N)",
                pc.name, pc.device
            )));
        }
        let (rx, tx) = dpdk(
            "port configure",
            port.configure(
                &DpdkPortConfig {
                    rx_queues: nworkers as u16,
                    tx_queues: nworkers as u16,
                    ..DpdkPortConfig::default()
                },
                &pool,
            ),
        )?;
        dpdk("port start", port.start())?;
        let m = dpdk("port MAC", port.mac())?;
        if i == 0 {
            mac = m;
        }
        port_links.push(admin::PortLink {
            name: pc.name.clone(),
            device: pc.device.clone(),
            mac: m,
        });
        info!(port = %pc.name, device = %pc.device, id = %port.id(), mac = %fmt_mac(m), driver = port.driver_name().unwrap_or_default(), "port up");
        for (w, (r, t)) in rx.into_iter().zip(tx).enumerate() {
            queues[w].pairs.push((r, t));
        }
        ports.push(port);
    }

    // Worker-to-worker rings for NAT replies that land on the wrong queue.
    let mut producers: Vec<Vec<Option<dpdk_sys::RingProducer>>> = (0..nworkers)
        .map(|_| (0..nworkers).map(|_| None).collect())
        .collect();
    let mut consumers: Vec<Vec<dpdk_sys::RingConsumer>> =
        (0..nworkers).map(|_| Vec::new()).collect();
    for (from, row) in producers.iter_mut().enumerate() {
        for (to, slot) in row.iter_mut().enumerate() {
            if from != to {
                let (p, c) = dpdk(
                    "ring",
                    MbufRing::create(&format!("sl_w{from}_w{to}"), 1024, -1),
                )?;
                *slot = Some(p);
                consumers[to].push(c);
            }
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (nb_tx, nb_rx): (Sender<NeighborEvent>, Receiver<NeighborEvent>) =
        crossbeam_channel::bounded(4096);
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
            let client = crate::sources::kubernetes::client(&cfg).await?;
            Ok::<_, DaemonError>(crate::sources::kubernetes::Kubernetes::start(
                client,
                crate::sources::kubernetes::KubeSettings::from_config(&cfg),
            ))
        })?;
        info!(class = %cfg.source.load_balancer_class, "listing Services, EndpointSlices and Nodes");
        first_model = rt.block_on(k.initial_model());
        kube = Some(k);
    }
    let settings = ProbeSettings::from(&cfg.health);
    let mut state = State {
        model: first_model,
        compiler: Compiler::new(),
        neighbours: HashMap::new(),
        drained: BTreeSet::new(),
        weights: BTreeMap::new(),
        health: HealthChecker::new(settings),
        mac,
        snap_tx: Vec::new(),
        commands: Vec::new(),
        last: None,
        announced: BTreeSet::new(),
        last_publish: Instant::now(),
        admin: None,
        manifest_dir: manifest_dir.clone(),
        kube: None,
        status: None,
        cfg: cfg.clone(),
    };
    if let Some(mut k) = kube {
        state.compiler.set_follow_status(!k.is_leader());
        state.status = k.take_reporter();
        state.kube = Some(k);
    }
    // First snapshot (next hops unresolved yet: backends wait for ARP/NDP).
    let input_health = HashMap::new();
    let first_snap = state.compiler.compile(&CompileInput {
        config: &state.cfg,
        model: &state.model,
        local_mac: mac,
        neighbours: &state.neighbours,
        health: &input_health,
        drained: &state.drained,
        weights: &state.weights,
        now: Instant::now(),
    })?;
    let first_snap_arc = Arc::new(first_snap.snapshot);
    let mut workers = Vec::new();
    let mut consumers_iter = consumers.into_iter();
    let mut producers_iter = producers.into_iter();
    for (w, q) in queues.into_iter().enumerate() {
        let (stx, srx) = crossbeam_channel::bounded(8);
        let (ctx, crx) = crossbeam_channel::bounded(1024);
        state.snap_tx.push(stx);
        state.commands.push(ctx);
        let links = WorkerLinks {
            snapshots: srx,
            retired: ret_tx.clone(),
            neighbors: nb_tx.clone(),
            commands: crx,
            to_workers: producers_iter.next().unwrap_or_default(),
            from_workers: consumers_iter.next().unwrap_or_default(),
            stop: stop.clone(),
        };
        let wc = WorkerConfig {
            index: w as u16,
            core: cfg.workers.cores.get(w).copied(),
            pipeline: PipelineConfig {
                worker: w as u16,
                workers: nworkers as u16,
                conntrack: sluice_dataplane::conntrack::ConntrackConfig {
                    capacity: cfg.tables.conntrack_capacity,
                    timeouts: Default::default(),
                },
                conntrack_v6_capacity: cfg.tables.conntrack_v6_capacity,
                affinity_capacity: cfg.tables.affinity_capacity,
                // Differs between runs: a restart does not reuse the NAT ports whose old
                // connections backends may still hold in TIME_WAIT.
                nat_port_start: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).wrapping_mul(2_654_435_761))
                    .unwrap_or(0),
            },
            tx_flush_us: cfg.workers.tx_flush_us,
            expire_buckets: 64,
        };
        let h = worker::spawn(
            eal.clone(),
            wc,
            q,
            links,
            pool.clone(),
            first_snap_arc.clone(),
            cfg.tables.max_backends,
        )?;
        info!(worker = w, core = ?cfg.workers.cores.get(w), "worker started");
        workers.push(h);
    }
    drop(first_snap_arc);
    let stats: Vec<Arc<WorkerStats>> = workers.iter().map(|w| w.stats.clone()).collect();
    let (admin_state, admin_rx) = AdminState::new(admin::Setup {
        config_path: path.to_path_buf(),
        config: cfg.clone(),
        workers: stats
            .iter()
            .zip(&state.commands)
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
    state.admin = Some(admin_state.clone());
    // Bound before the first publish, so a bad socket or metrics address fails the start-up.
    let servers = start_admin(&cfg, &admin_state);
    let dp = Dataplane {
        workers,
        ports,
        pool,
        eal,
    };
    let servers = match servers {
        Ok(s) => s,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            drop(state);
            dp.stop();
            return Err(e);
        }
    };
    pin_control_threads(&cfg);
    state.compile_and_publish("start");

    let result = rt.block_on(control_loop(
        &mut state, watcher, nb_rx, ret_rx, &stats, admin_rx, &dp.ports,
    ));
    if let Some(k) = state.kube.take() {
        rt.block_on(k.shutdown());
    }
    info!("stopping: workers, then ports, then EAL");
    drop(servers);
    stop.store(true, Ordering::Relaxed);
    drop(state);
    dp.stop();
    info!("stopped cleanly");
    result
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

fn pin_control_threads(cfg: &Config) {
    let control: Vec<usize> = cfg.workers.control_cores.clone().unwrap_or_else(|| {
        (0..num_cores())
            .filter(|c| !cfg.workers.cores.contains(c))
            .collect()
    });
    if let Some(c) = control.first() {
        let _ = core_affinity::set_for_current(core_affinity::CoreId { id: *c });
    }
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

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// The next batch of the Kubernetes source; never resolves without one.
async fn next_batch(kube: &mut Option<crate::sources::kubernetes::Kubernetes>) -> Option<crate::sources::kubernetes::Batch> {
    match kube {
        Some(k) => k.next_batch().await,
        None => std::future::pending().await,
    }
}

/// The new leadership state when it changes; never resolves without an elector.
async fn leader_changed(rx: &mut Option<tokio::sync::watch::Receiver<bool>>) -> Option<bool> {
    if let Some(r) = rx {
        if r.changed().await.is_ok() {
            return Some(*r.borrow_and_update());
        }
    }
    std::future::pending().await
}

async fn control_loop(
    state: &mut State,
    watcher: Option<ManifestWatcher>,
    nb_rx: Receiver<NeighborEvent>,
    ret_rx: Receiver<Arc<Snapshot>>,
    stats: &[Arc<WorkerStats>],
    mut admin_rx: tokio::sync::mpsc::Receiver<ControlRequest>,
    ports: &[Port],
) -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (_no_manifests, idle) = tokio::sync::mpsc::channel(1);
    let mut manifests = match watcher {
        Some(w) => w.spawn(Duration::from_millis(state.cfg.source.poll_interval_ms))?,
        None => idle,
    };
    let mut leader = state.kube.as_ref().map(|k| k.leader());
    let mut health = state.health.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut last_resolve = Instant::now();
    let mut last_refresh = Instant::now();
    let mut last_stats = Instant::now();
    let mut last_sample = Instant::now();
    let sample = |state: &State| {
        if let Some(a) = &state.admin {
            a.sample(
                ports
                    .iter()
                    .map(|p| p.stats().unwrap_or_default())
                    .collect(),
            );
        }
    };
    sample(state);
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM"); return Ok(()); }
            _ = int.recv() => { info!("SIGINT"); return Ok(()); }
            ev = manifests.recv() => match ev {
                Some(ManifestEvent::Updated(m)) => {
                    for w in &m.warnings { warn!(warning = %w, "manifest"); }
                    info!(services = m.model.services.len(), "manifests changed");
                    state.model = m.model;
                    state.compile_and_publish("manifests changed");
                    if let Some(a) = &state.admin { a.set_source_error(None); }
                }
                Some(ManifestEvent::Invalid(e)) => {
                    error!(error = %e, "invalid manifests; still serving the last good state");
                    if let Some(a) = &state.admin { a.set_source_error(Some(e.to_string())); }
                }
                None => { warn!("manifest watcher ended"); }
            },
            Some(batch) = next_batch(&mut state.kube) => {
                // One rebuild for everything that queued up meanwhile.
                let mut n = batch.apply(&mut state.model);
                while let Some(b) = state.kube.as_mut().and_then(|k| k.try_next_batch()) {
                    n += b.apply(&mut state.model);
                }
                tracing::debug!(changes = n, services = state.model.services.len(), "kubernetes changed");
                state.compile_and_publish("kubernetes changed");
            }
            Some(leads) = leader_changed(&mut leader) => {
                state.compiler.set_follow_status(!leads);
                state.compile_and_publish(if leads { "became the leader" } else { "following the leader" });
            }
            _ = health.changed() => {
                state.compile_and_publish("health changed");
            }
            Some(req) = admin_rx.recv() => {
                state.admin_request(req);
            }
            _ = tick.tick() => {
                let mut changed = false;
                while let Ok(ev) = nb_rx.try_recv() {
                    if state.neighbours.insert(ev.ip, ev.mac) != Some(ev.mac) {
                        info!(ip = %ev.ip, mac = %fmt_mac(ev.mac), "neighbour learned");
                        changed = true;
                    }
                }
                while ret_rx.try_recv().is_ok() {}
                if changed {
                    state.compile_and_publish("neighbour learned");
                    if let Some(a) = &state.admin { a.set_neighbours(&state.neighbours); }
                }
                if last_sample.elapsed() >= Duration::from_secs(1) {
                    sample(state);
                    last_sample = Instant::now();
                }
                let unresolved = state.last.as_ref().map(|r| r.unresolved.clone()).unwrap_or_default();
                if !unresolved.is_empty() && last_resolve.elapsed() >= Duration::from_millis(500) {
                    state.resolve(&unresolved);
                    last_resolve = Instant::now();
                }
                if last_refresh.elapsed() >= Duration::from_secs(30) {
                    let hops = state.last.as_ref().map(|r| r.next_hops.clone()).unwrap_or_default();
                    state.resolve(&hops);
                    last_refresh = Instant::now();
                }
                if state.last_publish.elapsed() >= Duration::from_secs(1) {
                    // Ages out removed backends after their grace period.
                    state.compile_and_publish("periodic");
                    state.last_publish = Instant::now();
                }
                if last_stats.elapsed() >= Duration::from_secs(10) {
                    for (i, s) in stats.iter().enumerate() {
                        use std::sync::atomic::Ordering::Relaxed;
                        info!(
                            worker = i,
                            rx = s.rx_packets.load(Relaxed),
                            tx = s.tx_packets.load(Relaxed),
                            drops = s.total_drops(),
                            flows = s.ct_entries.load(Relaxed),
                            generation = s.snapshot_generation.load(Relaxed),
                            "worker stats"
                        );
                    }
                    last_stats = Instant::now();
                }
            }
        }
    }
}
