//! # Boot: EAL, ports, rings and workers
//!
//! Everything DPDK the daemon starts, in order: EAL (with the arguments [`eal_args`] derives
//! from the configuration), the mbuf pool, every port with one RX/TX queue pair per worker,
//! the worker-to-worker rings, then the pinned workers with a first snapshot. [`Dataplane`]
//! holds what must be torn down, and [`Dataplane::stop`] does it in order: workers, ports,
//! pool, EAL.
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crossbeam_channel::Sender;
use dpdk_sys::{Eal, MbufRing, Mempool, Port, PortConfig as DpdkPortConfig};
use sluice_dataplane::pipeline::{NeighborEvent, PipelineConfig, RestoreFlow, SavedFlow};
use sluice_dataplane::snapshot::Snapshot;
use sluice_dataplane::worker::{
    self, Command, WorkerConfig, WorkerHandle, WorkerLinks, WorkerQueues,
};
use tracing::{error, info, warn};

use super::DaemonError;
use crate::admin::{self, mac_str};
use crate::config::{Config, PollMode};

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

/// Pins the calling (control-plane) thread to the first control core.
pub(super) fn pin_control_threads(cfg: &Config) {
    let control: Vec<usize> = cfg.workers.control_cores.clone().unwrap_or_else(|| {
        (0..num_cores())
            .filter(|c| !cfg.workers.cores.contains(c))
            .collect()
    });
    if let Some(c) = control.first() {
        let _ = core_affinity::set_for_current(core_affinity::CoreId { id: *c });
    }
}

/// EAL, the pool and the started ports, before any worker runs.
pub(super) struct Ports {
    eal: Arc<Eal>,
    pool: Arc<Mempool>,
    ports: Vec<Port>,
    /// Per worker: its RX/TX queue pair on every port.
    queues: Vec<WorkerQueues>,
    /// Per worker: its rings to every other worker, and from them.
    producers: Vec<Vec<Option<dpdk_sys::RingProducer>>>,
    consumers: Vec<Vec<dpdk_sys::RingConsumer>>,
    /// The first port's MAC.
    pub(super) mac: [u8; 6],
    /// What the admin API shows of each port.
    pub(super) links: Vec<admin::PortLink>,
}

/// Starts EAL, the mbuf pool and every port (one RX/TX queue pair per worker), and creates
/// the worker-to-worker rings.
pub(super) fn start_ports(cfg: &Config) -> Result<Ports, DaemonError> {
    let args = eal_args(cfg);
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
    let mut links = Vec::new();
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
        if !dpdk("port MTU", port.set_mtu(pc.mtu))? {
            warn!(port = %pc.name, mtu = pc.mtu, "the device cannot set its MTU; it keeps its own");
        }
        dpdk("port start", port.start())?;
        let m = dpdk("port MAC", port.mac())?;
        if i == 0 {
            mac = m;
        }
        links.push(admin::PortLink {
            name: pc.name.clone(),
            device: pc.device.clone(),
            mac: m,
        });
        info!(port = %pc.name, device = %pc.device, id = %port.id(), mac = %mac_str(m), driver = port.driver_name().unwrap_or_default(), "port up");
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
    Ok(Ports {
        eal,
        pool,
        ports,
        queues,
        producers,
        consumers,
        mac,
        links,
    })
}

/// What every worker reports to or is stopped by.
pub(super) struct Shared {
    /// Neighbours the workers learn.
    pub(super) neighbors: Sender<NeighborEvent>,
    /// Snapshots the workers let go of (dropped on the control thread).
    pub(super) retired: Sender<Arc<Snapshot>>,
    /// Set to stop every worker.
    pub(super) stop: Arc<AtomicBool>,
}

/// The running workers and the channels the control loop feeds them through.
pub(super) struct Workers {
    /// What must be torn down, in order.
    pub(super) dataplane: Dataplane,
    /// Per worker: its snapshot channel.
    pub(super) snapshots: Vec<Sender<Arc<Snapshot>>>,
    /// Per worker: its command channel.
    pub(super) commands: Vec<Sender<Command>>,
}

/// Spawns one pinned worker per configured core (at least one) on `ports`, each starting
/// with snapshot `first` and inserting its flows of `restore` (indexed by worker) first;
/// each publishes its flows on its ring of `sync` (indexed by worker; empty: sync off).
pub(super) fn spawn_workers(
    cfg: &Config,
    ports: Ports,
    shared: &Shared,
    first: Arc<Snapshot>,
    mut restore: Vec<Vec<RestoreFlow>>,
    sync: &[Sender<SavedFlow>],
) -> Result<Workers, DaemonError> {
    let nworkers = ports.queues.len();
    // Which source prefixes share a new-flow bucket differs between runs and hosts (a seed
    // from the OS's randomness, as std's hash maps take), so it cannot be aimed at.
    let source_seed = {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(0x736c_7569_6365_u64)
    };
    // The SYN proxy's cookie key, the same for every worker: from the configured secret
    // (the same on every host, and across restarts), else new at every start (cookies issued
    // before a restart are refused after it; the client retries its SYN).
    let (configured, source) = cfg
        .syn_cookie_key()
        .map_err(|(k, m)| DaemonError::Io(std::io::Error::other(format!("{k}: {m}"))))?;
    let syn_cookie_key = configured.unwrap_or_else(|| {
        use std::hash::BuildHasher;
        let r = std::collections::hash_map::RandomState::new();
        sluice_dataplane::pipeline::CookieKey([
            r.hash_one(0x636f_6f6b_6965_u64),
            r.hash_one(0x6b65_7931_u64),
        ])
    });
    info!(source = source.describe(), "SYN cookie key");
    let mut workers = Vec::new();
    let mut snapshots = Vec::new();
    let mut commands = Vec::new();
    let mut consumers_iter = ports.consumers.into_iter();
    let mut producers_iter = ports.producers.into_iter();
    for (w, q) in ports.queues.into_iter().enumerate() {
        let (stx, srx) = crossbeam_channel::bounded(8);
        let (ctx, crx) = crossbeam_channel::bounded(1024);
        snapshots.push(stx);
        commands.push(ctx);
        let links = WorkerLinks {
            snapshots: srx,
            retired: shared.retired.clone(),
            neighbors: shared.neighbors.clone(),
            commands: crx,
            to_workers: producers_iter.next().unwrap_or_default(),
            from_workers: consumers_iter.next().unwrap_or_default(),
            stop: shared.stop.clone(),
        };
        let wc = WorkerConfig {
            index: w as u16,
            core: cfg.workers.cores.get(w).copied(),
            pipeline: PipelineConfig {
                worker: w as u16,
                workers: nworkers as u16,
                conntrack: sluice_dataplane::conntrack::ConntrackConfig {
                    capacity: cfg.tables.conntrack_capacity,
                    timeouts: cfg.tables.timeouts.to_dataplane(),
                },
                conntrack_v6_capacity: cfg.tables.conntrack_v6_capacity,
                affinity_capacity: cfg.tables.affinity_capacity,
                // Differs between runs: a restart does not reuse the NAT ports whose old
                // connections backends may still hold in TIME_WAIT.
                nat_port_start: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).wrapping_mul(2_654_435_761))
                    .unwrap_or(0),
                reset_unknown_flows: cfg.forwarding.reset_unknown_flows,
                source_limits: cfg.limits.source_buckets(source_seed),
                syn_cookie_key,
            },
            tx_flush_us: cfg.workers.tx_flush_us,
            expire_buckets: 64,
            idle_sleep_us: (cfg.workers.poll == PollMode::Idle)
                .then_some(cfg.workers.idle_sleep_us),
            restore: restore.get_mut(w).map(std::mem::take).unwrap_or_default(),
            save_flows: cfg.admin.keep_flows_on_restart,
            sync: sync.get(w).cloned(),
        };
        let h = worker::spawn(
            ports.eal.clone(),
            wc,
            q,
            links,
            ports.pool.clone(),
            first.clone(),
            cfg.tables.max_backends,
        )?;
        info!(worker = w, core = ?cfg.workers.cores.get(w), "worker started");
        workers.push(h);
    }
    Ok(Workers {
        dataplane: Dataplane {
            workers,
            ports: ports.ports,
            pool: ports.pool,
            eal: ports.eal,
        },
        snapshots,
        commands,
    })
}

/// A running daemon's handle to its DPDK resources, torn down in order by [`Dataplane::stop`].
pub(super) struct Dataplane {
    pub(super) workers: Vec<WorkerHandle>,
    pub(super) ports: Vec<Port>,
    pool: Arc<Mempool>,
    eal: Arc<Eal>,
}

impl Dataplane {
    /// Stops the workers, then the ports, then frees the pool and cleans EAL up. Returns the
    /// flows the workers exported (with `admin.keep_flows_on_restart`).
    pub(super) fn stop(mut self) -> Vec<SavedFlow> {
        let mut saved = Vec::new();
        for w in self.workers.drain(..) {
            match w.stop_saving() {
                Ok(f) => saved.extend(f),
                Err(e) => error!(error = %e, "worker stopped with an error"),
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
        saved
    }
}
