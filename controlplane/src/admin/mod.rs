//! # Admin API and metrics
//!
//! `sluiced` answers HTTP/1.1 + JSON on a Unix socket ([`server`], read by `sluicectl` or
//! `curl --unix-socket`) and serves Prometheus metrics on a TCP listener ([`metrics`]). Both
//! read one [`AdminState`]; [`handle`] routes a request to its handler.
//!
//! ## Design
//! - **Who owns what.** The control loop (`daemon::control`, over the daemon's `ControlState`) owns the model, the compiler, the
//!   operator's drains and weights. After each publish it hands the admin side a copy of what
//!   it published ([`AdminState::publish_snapshot`]); readers take a short read lock on that
//!   copy, never on anything the control loop or the workers use.
//! - **Writes go through the control loop.** Drain, undrain, weight and reload are
//!   [`ControlRequest`]s on a channel; the loop applies them to its own state, compiles and
//!   publishes, and answers with the generation that carries the change.
//! - **Counters are read, never written.** Worker counters are single-writer atomics
//!   ([`WorkerStats`]); the admin side only loads them. "Reset counters" records baselines that
//!   are subtracted at read time. `/metrics` ignores the baselines, so Prometheus counters stay
//!   monotonic. A backend id the compiler reuses for another backend starts from the counters'
//!   value at that moment (its "origin"), in the API and in `/metrics`.
//! - **Conntrack lookups ask the workers.** The tables live on the worker cores; a lookup is a
//!   [`Command::FindFlows`] that each worker answers off its packet path: an exact 5-tuple at
//!   its next millisecond tick, a client address by scanning its table a piece per tick (at
//!   most about a second). One lookup runs at a time.
//! - **Rates** (packets/s, busy ratio, drops/s) come from a sample taken every second by the
//!   control loop ([`AdminState::sample`]), which also reads the DPDK port counters.
pub mod api;
mod capture;
pub mod client;
mod handlers;
pub mod metrics;
pub mod server;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use sluice_dataplane::conntrack::Timeouts;
use sluice_dataplane::maglev::MaglevTable;
use sluice_dataplane::snapshot::{BackendState, Snapshot};
use sluice_dataplane::stats::{DropReason, WorkerStats};
use sluice_dataplane::worker::Command;
use tokio::sync::{mpsc, oneshot};
use tracing::info;

use crate::compile::CompileReport;
use crate::config::Config;
use crate::health::HealthView;
use crate::model::{L4Protocol, Model, ObjectKey};
use crate::sources::kubernetes::{HostEvent, HostEvents};

pub use capture::{CaptureRequest, TraceRequest};
pub use handlers::{handle, Reply};

/// An API error: an HTTP status and a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// The message.
    pub message: String,
}

impl ApiError {
    /// 400.
    pub fn bad_request(m: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: m.into(),
        }
    }
    /// 404.
    pub fn not_found(m: impl Into<String>) -> Self {
        ApiError {
            status: 404,
            message: m.into(),
        }
    }
    /// 409.
    pub fn conflict(m: impl Into<String>) -> Self {
        ApiError {
            status: 409,
            message: m.into(),
        }
    }
    /// 503.
    pub fn unavailable(m: impl Into<String>) -> Self {
        ApiError {
            status: 503,
            message: m.into(),
        }
    }
}

/// Where the control loop sends its answer.
pub type ReplyTo<T> = oneshot::Sender<Result<T, ApiError>>;

/// What an operator does to a backend address (in every Service that has it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendOp {
    /// No new flows; established flows stay.
    Drain,
    /// Back to normal.
    Undrain,
    /// Set (`Some`) or remove (`None`) the Maglev weight override.
    Weight(Option<u32>),
}

pub use crate::compile::MAX_WEIGHT;

impl BackendOp {
    /// Applies the operation to the control loop's overrides. Returns how many backends (of
    /// all frontends in `report`) have the address.
    ///
    /// # Errors
    /// 404 when draining or weighting an address no backend has (a typo), or undoing an
    /// override that does not exist; 400 for a weight above [`MAX_WEIGHT`].
    pub fn apply(
        self,
        addr: IpAddr,
        report: Option<&CompileReport>,
        drained: &mut BTreeSet<IpAddr>,
        weights: &mut BTreeMap<IpAddr, u32>,
    ) -> Result<usize, ApiError> {
        let count = report
            .iter()
            .flat_map(|r| &r.services)
            .flat_map(|s| &s.frontends)
            .flat_map(|f| &f.backends)
            .filter(|b| b.addr == addr)
            .count();
        let unknown = || {
            ApiError::not_found(format!(
                "no backend has address {addr}; `sluicectl backends` lists them"
            ))
        };
        match self {
            BackendOp::Drain => {
                if count == 0 {
                    return Err(unknown());
                }
                drained.insert(addr);
            }
            BackendOp::Undrain => {
                if !drained.remove(&addr) {
                    return Err(ApiError::not_found(format!(
                        "{addr} is not drained by the operator; `sluicectl status` lists drained addresses"
                    )));
                }
            }
            BackendOp::Weight(Some(w)) => {
                if w > MAX_WEIGHT {
                    return Err(ApiError::bad_request(format!(
                        "weight {w} is above the maximum {MAX_WEIGHT}; weights are relative, use smaller numbers"
                    )));
                }
                if count == 0 {
                    return Err(unknown());
                }
                weights.insert(addr, w);
            }
            BackendOp::Weight(None) => {
                if weights.remove(&addr).is_none() && count == 0 {
                    return Err(unknown());
                }
            }
        }
        Ok(count)
    }

    /// Log line for the publish that carries it.
    pub fn describe(self, addr: IpAddr) -> String {
        match self {
            BackendOp::Drain => format!("operator drained {addr}"),
            BackendOp::Undrain => format!("operator undrained {addr}"),
            BackendOp::Weight(Some(w)) => format!("operator set weight {w} on {addr}"),
            BackendOp::Weight(None) => format!("operator cleared the weight of {addr}"),
        }
    }
}

/// A write the control loop carries out.
#[derive(Debug)]
pub enum ControlRequest {
    /// Drain, undrain or weight a backend address.
    Backend {
        /// The backend address.
        addr: IpAddr,
        /// What to do.
        op: BackendOp,
        /// The answer.
        reply: ReplyTo<api::BackendChange>,
    },
    /// Re-read the manifest directory now.
    Reload {
        /// The answer.
        reply: ReplyTo<api::Reloaded>,
    },
    /// Drain the host (withdraw every BGP announcement, keep forwarding) or undrain it.
    Host {
        /// `true`: drain; `false`: undrain.
        drain: bool,
        /// The answer, once BIRD was told (or failed to be).
        reply: ReplyTo<api::Bgp>,
    },
}

/// What the daemon's BGP driver last read from BIRD (routed mode), for `GET /v1/bgp`,
/// `GET /v1/status` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BgpView {
    /// The `GET /v1/bgp` document.
    pub doc: api::Bgp,
    /// Failed `configure` calls (announcement changes BIRD did not take).
    pub configure_failures: u64,
    /// Failed status reads (BIRD's socket did not answer).
    pub status_failures: u64,
}

/// What the daemon tells the admin side once, at start-up.
#[derive(Debug)]
pub struct Setup {
    /// The configuration file.
    pub config_path: PathBuf,
    /// The configuration.
    pub config: Config,
    /// The workers.
    pub workers: Vec<WorkerLink>,
    /// The ports.
    pub ports: Vec<PortLink>,
    /// Health-check statuses.
    pub health: HealthView,
    /// Conntrack timeouts the workers use.
    pub timeouts: Timeouts,
}

/// One worker as the admin side sees it.
#[derive(Debug, Clone)]
pub struct WorkerLink {
    /// Index.
    pub index: u16,
    /// Pinned core.
    pub core: Option<usize>,
    /// Queue names (`lb0/rxq0`).
    pub queues: Vec<String>,
    /// Its counters.
    pub stats: Arc<WorkerStats>,
    /// Its command channel.
    pub commands: Sender<Command>,
}

/// One port as the admin side sees it.
#[derive(Debug, Clone)]
pub struct PortLink {
    /// Name from the configuration.
    pub name: String,
    /// DPDK device string.
    pub device: String,
    /// MAC.
    pub mac: [u8; 6],
}

/// DPDK port counters, as [`AdminState::sample`] takes them (`dpdk_sys::PortStats`).
pub type PortCounters = dpdk_sys::PortStats;

/// A Service's settings from the model that the compile report does not carry.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ServiceMeta {
    policy: String,
    source_ranges: Vec<String>,
    affinity_seconds: Option<u32>,
    ports: Vec<api::PortSpec>,
}

/// Who holds a backend id: (frontend, address, port).
type Owner = (u32, IpAddr, u16);

/// What the control loop last published, and what the operator changed.
#[derive(Debug)]
pub(crate) struct Live {
    report: CompileReport,
    services: BTreeMap<ObjectKey, ServiceMeta>,
    /// Maglev entries per backend index, per frontend id.
    shares: HashMap<u32, (Arc<MaglevTable>, Vec<u32>)>,
    published: SystemTime,
    drained: BTreeSet<IpAddr>,
    weights: BTreeMap<IpAddr, u32>,
    neighbours: BTreeMap<IpAddr, [u8; 6]>,
    source_error: Option<String>,
    /// Backend state and since when, per owner.
    since: HashMap<Owner, (BackendState, SystemTime)>,
    /// Current owner of each backend id and the raw counters when it took the id.
    pub(crate) owners: HashMap<u32, (Owner, api::Traffic)>,
    /// Current owner of each frontend id (its name, VIP, protocol, port) and the raw
    /// counters when it took the id.
    pub(crate) fe_owners: HashMap<u32, (FrontendOwner, api::FrontendCounters)>,
}

/// What owns a frontend id: its name, VIP, protocol and port.
type FrontendOwner = (String, IpAddr, L4Protocol, u16);

/// Raw counters of one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WorkerCounters {
    rx_packets: u64,
    rx_bytes: u64,
    tx_packets: u64,
    tx_bytes: u64,
    new_flows: u64,
    polls: u64,
    busy_polls: u64,
    busy_cycles: u64,
    idle_sleeps: u64,
    tcp_resets: u64,
    syn_cookies_sent: u64,
    syn_cookies_valid: u64,
    syn_proxy_engagements: u64,
    total_cycles: u64,
    evictions: u64,
    evictions_established: u64,
    refusals: u64,
    nat_port_retries: u64,
    drops: [u64; DropReason::COUNT],
}

impl Default for WorkerCounters {
    fn default() -> Self {
        WorkerCounters {
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
            new_flows: 0,
            polls: 0,
            busy_polls: 0,
            busy_cycles: 0,
            idle_sleeps: 0,
            tcp_resets: 0,
            syn_cookies_sent: 0,
            syn_cookies_valid: 0,
            syn_proxy_engagements: 0,
            total_cycles: 0,
            evictions: 0,
            evictions_established: 0,
            refusals: 0,
            nat_port_retries: 0,
            drops: [0; DropReason::COUNT],
        }
    }
}

impl WorkerCounters {
    fn read(s: &WorkerStats) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        WorkerCounters {
            rx_packets: s.rx_packets.load(Relaxed),
            rx_bytes: s.rx_bytes.load(Relaxed),
            tx_packets: s.tx_packets.load(Relaxed),
            tx_bytes: s.tx_bytes.load(Relaxed),
            new_flows: s.new_flows.load(Relaxed),
            polls: s.polls.load(Relaxed),
            busy_polls: s.busy_polls.load(Relaxed),
            busy_cycles: s.busy_cycles.load(Relaxed),
            idle_sleeps: s.idle_sleeps.load(Relaxed),
            tcp_resets: s.tcp_resets.load(Relaxed),
            syn_cookies_sent: s.syn_cookies_sent.load(Relaxed),
            syn_cookies_valid: s.syn_cookies_valid.load(Relaxed),
            syn_proxy_engagements: s.syn_proxy_engagements.load(Relaxed),
            total_cycles: s.total_cycles.load(Relaxed),
            evictions: s.ct_evictions.load(Relaxed),
            evictions_established: s.ct_evictions_established.load(Relaxed),
            refusals: s.ct_refusals.load(Relaxed),
            nat_port_retries: s.nat_port_retries.load(Relaxed),
            drops: std::array::from_fn(|i| s.drops[i].load(Relaxed)),
        }
    }

    fn minus(&self, b: &Self) -> Self {
        WorkerCounters {
            rx_packets: self.rx_packets.saturating_sub(b.rx_packets),
            rx_bytes: self.rx_bytes.saturating_sub(b.rx_bytes),
            tx_packets: self.tx_packets.saturating_sub(b.tx_packets),
            tx_bytes: self.tx_bytes.saturating_sub(b.tx_bytes),
            new_flows: self.new_flows.saturating_sub(b.new_flows),
            polls: self.polls.saturating_sub(b.polls),
            busy_polls: self.busy_polls.saturating_sub(b.busy_polls),
            busy_cycles: self.busy_cycles.saturating_sub(b.busy_cycles),
            idle_sleeps: self.idle_sleeps.saturating_sub(b.idle_sleeps),
            tcp_resets: self.tcp_resets.saturating_sub(b.tcp_resets),
            syn_cookies_sent: self.syn_cookies_sent.saturating_sub(b.syn_cookies_sent),
            syn_cookies_valid: self.syn_cookies_valid.saturating_sub(b.syn_cookies_valid),
            syn_proxy_engagements: self
                .syn_proxy_engagements
                .saturating_sub(b.syn_proxy_engagements),
            total_cycles: self.total_cycles.saturating_sub(b.total_cycles),
            evictions: self.evictions.saturating_sub(b.evictions),
            evictions_established: self
                .evictions_established
                .saturating_sub(b.evictions_established),
            refusals: self.refusals.saturating_sub(b.refusals),
            nat_port_retries: self.nat_port_retries.saturating_sub(b.nat_port_retries),
            drops: std::array::from_fn(|i| self.drops[i].saturating_sub(b.drops[i])),
        }
    }

    fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}

fn port_minus(a: &PortCounters, b: &PortCounters) -> PortCounters {
    PortCounters {
        rx_packets: a.rx_packets.saturating_sub(b.rx_packets),
        tx_packets: a.tx_packets.saturating_sub(b.tx_packets),
        rx_bytes: a.rx_bytes.saturating_sub(b.rx_bytes),
        tx_bytes: a.tx_bytes.saturating_sub(b.tx_bytes),
        rx_missed: a.rx_missed.saturating_sub(b.rx_missed),
        rx_errors: a.rx_errors.saturating_sub(b.rx_errors),
        tx_errors: a.tx_errors.saturating_sub(b.tx_errors),
        rx_nombuf: a.rx_nombuf.saturating_sub(b.rx_nombuf),
    }
}

/// Rates over the last sampling interval.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    at: Option<Instant>,
    workers: Vec<WorkerCounters>,
    ports: Vec<PortCounters>,
    /// Per worker: rx pps, tx pps, busy ratio.
    worker_rates: Vec<(f64, f64, f64)>,
    /// Per port: rx pps, tx pps.
    port_rates: Vec<(f64, f64)>,
    /// Per drop reason, all workers.
    drop_rates: Vec<f64>,
    /// Per worker: `auto` frontends whose SYN proxy was engaged at the last sample.
    engaged: Vec<u64>,
    /// Per engaged frontend id: its Service, VIP, port and the workers engaged at the last
    /// sample.
    fe_engaged: HashMap<u32, (ObjectKey, IpAddr, u16, u64)>,
}

/// Counter values at the last reset.
#[derive(Debug, Default)]
pub(crate) struct Baselines {
    at: Option<SystemTime>,
    workers: Vec<WorkerCounters>,
    ports: Vec<PortCounters>,
    targets: HashMap<u32, api::Traffic>,
}

/// Prometheus metrics the control plane observes directly (the rest is read at scrape time).
#[derive(Debug, Clone)]
pub(crate) struct Telemetry {
    compile: prometheus_client::metrics::histogram::Histogram,
    publish: prometheus_client::metrics::histogram::Histogram,
    published: prometheus_client::metrics::counter::Counter,
    maglev_resizes: prometheus_client::metrics::counter::Counter,
}

impl Default for Telemetry {
    fn default() -> Self {
        use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
        Telemetry {
            compile: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
            publish: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
            published: Default::default(),
            maglev_resizes: Default::default(),
        }
    }
}

/// What flow sync's state is read from (the sync service implements it; set by the daemon
/// when `[sync]` runs).
pub trait SyncReport: Send + Sync + std::fmt::Debug {
    /// The current state.
    fn status(&self) -> api::SyncStatus;
}

/// Everything the admin API and the metrics read.
#[derive(Debug)]
pub struct AdminState {
    version: &'static str,
    pid: u32,
    started: SystemTime,
    config_path: PathBuf,
    config_file: serde_json::Value,
    config: Config,
    workers: Vec<WorkerLink>,
    ports: Vec<PortLink>,
    health: HealthView,
    timeouts: Timeouts,
    live: RwLock<Live>,
    samples: Mutex<Samples>,
    baselines: Mutex<Baselines>,
    control: mpsc::Sender<ControlRequest>,
    lookups: tokio::sync::Mutex<()>,
    telemetry: Telemetry,
    bgp: Mutex<BgpView>,
    l2: Mutex<api::L2Status>,
    /// One packet capture or trace at a time.
    captures: crate::capture::Gate,
    sync: Mutex<Option<Arc<dyn SyncReport>>>,
    /// Where this host's Events go (the Kubernetes source's status writer), if anywhere.
    events: Mutex<Option<HostEvents>>,
    /// This host's name in Events.
    host: String,
}

/// Seconds since the Unix epoch.
pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A MAC as `aa:bb:cc:dd:ee:ff` (the admin API's documents and the daemon's logs).
pub fn mac_str(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is a plain assignment, so a poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AdminState {
    /// The admin state, and the receiving end of the control channel (for the control loop).
    pub fn new(setup: Setup) -> (Arc<AdminState>, mpsc::Receiver<ControlRequest>) {
        let host = crate::sources::kubernetes::identity(&setup.config);
        let (tx, rx) = mpsc::channel(64);
        let config_file = std::fs::read_to_string(&setup.config_path)
            .ok()
            .and_then(|t| toml::from_str::<toml::Value>(&t).ok())
            .and_then(|v| serde_json::to_value(v).ok())
            .unwrap_or(serde_json::Value::Null);
        let state = AdminState {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            started: SystemTime::now(),
            config_path: setup.config_path,
            config_file,
            config: setup.config,
            workers: setup.workers,
            ports: setup.ports,
            health: setup.health,
            timeouts: setup.timeouts,
            live: RwLock::new(Live {
                report: CompileReport::default(),
                services: BTreeMap::new(),
                shares: HashMap::new(),
                published: SystemTime::now(),
                drained: BTreeSet::new(),
                weights: BTreeMap::new(),
                neighbours: BTreeMap::new(),
                source_error: None,
                since: HashMap::new(),
                owners: HashMap::new(),
                fe_owners: HashMap::new(),
            }),
            samples: Mutex::new(Samples::default()),
            baselines: Mutex::new(Baselines::default()),
            captures: crate::capture::Gate::default(),
            control: tx,
            lookups: tokio::sync::Mutex::new(()),
            telemetry: Telemetry::default(),
            bgp: Mutex::new(BgpView::default()),
            l2: Mutex::new(api::L2Status::default()),
            sync: Mutex::new(None),
            events: Mutex::new(None),
            host,
        };
        (Arc::new(state), rx)
    }

    pub(crate) fn live(&self) -> RwLockReadGuard<'_, Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn live_mut(&self) -> std::sync::RwLockWriteGuard<'_, Live> {
        self.live.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a published snapshot: the report, the Service settings from `model`, the
    /// Maglev shares from `snap`, and the operator's overrides.
    pub fn publish_snapshot(
        &self,
        report: &CompileReport,
        snap: &Snapshot,
        model: &Model,
        drained: &BTreeSet<IpAddr>,
        weights: &BTreeMap<IpAddr, u32>,
    ) {
        let now = SystemTime::now();
        let services = report
            .services
            .iter()
            .map(|s| {
                let meta = model
                    .services
                    .get(&s.service)
                    .map(|svc| ServiceMeta {
                        policy: format!("{:?}", svc.external_traffic_policy),
                        source_ranges: svc.source_ranges.iter().map(|n| n.to_string()).collect(),
                        affinity_seconds: svc.session_affinity_seconds,
                        ports: svc
                            .ports
                            .iter()
                            .map(|p| api::PortSpec {
                                name: p.name.clone().unwrap_or_default(),
                                port: p.port,
                                protocol: p.protocol.name().to_ascii_lowercase(),
                            })
                            .collect(),
                    })
                    .unwrap_or_default();
                (s.service.clone(), meta)
            })
            .collect();
        let raw = self.raw_targets();
        let mut live = self.live_mut();
        // Maglev shares: recount only tables that changed.
        let mut shares = HashMap::new();
        for f in snap.frontends() {
            let entry = match live.shares.remove(&f.id) {
                Some((t, s)) if Arc::ptr_eq(&t, &f.maglev) => (t, s),
                _ => (f.maglev.clone(), f.maglev.shares()),
            };
            shares.insert(f.id, entry);
        }
        let mut since = HashMap::new();
        let mut owners = HashMap::new();
        for f in report.services.iter().flat_map(|s| &s.frontends) {
            for b in &f.backends {
                let owner = (f.id, b.addr, b.port);
                let at = match live.since.get(&owner) {
                    Some((st, at)) if *st == b.state => *at,
                    _ => now,
                };
                since.insert(owner, (b.state, at));
                let origin = match live.owners.get(&b.id) {
                    Some((o, origin)) if *o == owner => *origin,
                    // A new owner of the id: its counting starts now (from 0 for a fresh id;
                    // from what the previous owner left for a reused one).
                    _ => raw.get(&b.id).copied().unwrap_or_default(),
                };
                owners.insert(b.id, (owner, origin));
            }
        }
        let mut fe_owners = HashMap::new();
        for f in report.services.iter().flat_map(|s| &s.frontends) {
            let owner = (f.name.clone(), f.vip, f.protocol, f.port);
            let origin = match live.fe_owners.get(&f.id) {
                Some((o, origin)) if *o == owner => *origin,
                // A new owner starts from what the id's previous owner left.
                _ => self.raw_frontend(f.id),
            };
            fe_owners.insert(f.id, (owner, origin));
        }
        live.fe_owners = fe_owners;
        live.report = report.clone();
        live.services = services;
        live.shares = shares;
        live.published = now;
        live.drained = drained.clone();
        live.weights = weights.clone();
        live.since = since;
        live.owners = owners;
    }

    /// Records the operator's overrides (when a write changed nothing the dataplane sees).
    pub fn set_overrides(&self, drained: &BTreeSet<IpAddr>, weights: &BTreeMap<IpAddr, u32>) {
        let mut live = self.live_mut();
        live.drained = drained.clone();
        live.weights = weights.clone();
    }

    /// Records the neighbour table.
    pub fn set_neighbours(&self, n: &HashMap<IpAddr, [u8; 6]>) {
        self.live_mut().neighbours = n.iter().map(|(k, v)| (*k, *v)).collect();
    }

    /// Records the source's last error (`None`: the last read was good).
    pub fn set_source_error(&self, e: Option<String>) {
        self.live_mut().source_error = e;
    }

    /// The channel for writes (drain, weight, reload).
    /// Routed mode as the BGP driver last saw it.
    pub fn set_bgp(&self, v: BgpView) {
        *lock(&self.bgp) = v;
    }

    /// Routed mode as last set ([`BgpView::default`], `enabled: false`, without `[bgp]`).
    pub fn bgp(&self) -> BgpView {
        lock(&self.bgp).clone()
    }

    /// L2 mode as the control loop last saw it.
    pub fn set_l2(&self, v: api::L2Status) {
        *lock(&self.l2) = v;
    }

    /// Where the SYN proxy's engagement changes go as Events on their Services (the
    /// Kubernetes source's status writer).
    pub fn attach_events(&self, sink: HostEvents) {
        *lock(&self.events) = Some(sink);
    }

    /// Where [`AdminState::sync`] reads flow sync's state from (the sync service's view).
    pub fn attach_sync(&self, source: Arc<dyn SyncReport>) {
        *lock(&self.sync) = Some(source);
    }

    /// Flow sync's state (an empty `host` without `[sync]`).
    pub fn sync(&self) -> api::SyncStatus {
        lock(&self.sync)
            .as_ref()
            .map(|r| r.status())
            .unwrap_or_default()
    }

    /// L2 mode as last set (an empty `host` without `[l2]`).
    pub fn l2(&self) -> api::L2Status {
        lock(&self.l2).clone()
    }

    pub(crate) fn control(&self) -> &mpsc::Sender<ControlRequest> {
        &self.control
    }

    /// Takes the per-second sample: worker counters and the ports' DPDK counters (`ports`
    /// in configuration order). Call it about once a second.
    pub fn sample(&self, ports: Vec<PortCounters>) {
        let now = Instant::now();
        let workers: Vec<WorkerCounters> = self
            .workers
            .iter()
            .map(|w| WorkerCounters::read(&w.stats))
            .collect();
        // Which frontends' SYN proxies are engaged, and on how many workers (read before the
        // samples lock, never inside it).
        let fe_engaged: HashMap<u32, (ObjectKey, IpAddr, u16, u64)> = {
            let live = self.live();
            live.report
                .services
                .iter()
                .flat_map(|s| s.frontends.iter().map(move |f| (s, f)))
                .filter_map(|(s, f)| {
                    let n: u64 = self
                        .workers
                        .iter()
                        .filter_map(|w| w.stats.frontends.get(f.id as usize))
                        .map(|c| c.syn_proxy_engaged.load(Relaxed))
                        .sum();
                    (n > 0).then(|| (f.id, (s.service.clone(), f.vip, f.port, n)))
                })
                .collect()
        };
        let mut s = lock(&self.samples);
        let events = lock(&self.events).clone();
        let event = |svc: &ObjectKey, warning: bool, reason, action, note: String| {
            if let Some(e) = &events {
                e.send(HostEvent {
                    service: svc.clone(),
                    reason,
                    warning,
                    action,
                    note,
                });
            }
        };
        for (id, (svc, vip, port, n)) in &fe_engaged {
            if !s.fe_engaged.contains_key(id) {
                info!(
                    service = %svc, %vip, port, workers = n,
                    "SYN proxy engaged for a frontend: its SYNs get cookies"
                );
                let addr = std::net::SocketAddr::new(*vip, *port);
                event(
                    svc,
                    true,
                    "SYNProxyEngaged",
                    "Engage",
                    format!(
                        "host {}: the SYN proxy answers {addr}'s SYNs with cookies on {n} \
                         worker(s): embryonic flows reached the auto threshold (a SYN flood?)",
                        self.host
                    ),
                );
            }
        }
        for (id, (svc, vip, port, _)) in &s.fe_engaged {
            if !fe_engaged.contains_key(id) {
                info!(service = %svc, %vip, port, "SYN proxy disengaged for a frontend");
                let addr = std::net::SocketAddr::new(*vip, *port);
                event(
                    svc,
                    false,
                    "SYNProxyDisengaged",
                    "Disengage",
                    format!(
                        "host {}: {addr}'s SYNs are forwarded again (embryonic flows below half \
                         the auto threshold)",
                        self.host
                    ),
                );
            }
        }
        s.fe_engaged = fe_engaged;
        if let Some(at) = s.at {
            let dt = now.duration_since(at).as_secs_f64().max(1e-3);
            s.worker_rates = workers
                .iter()
                .zip(&s.workers)
                .map(|(n, o)| {
                    let d = n.minus(o);
                    let busy = if d.total_cycles > 0 {
                        d.busy_cycles as f64 / d.total_cycles as f64
                    } else {
                        0.0
                    };
                    (d.rx_packets as f64 / dt, d.tx_packets as f64 / dt, busy)
                })
                .collect();
            s.port_rates = ports
                .iter()
                .zip(&s.ports)
                .map(|(n, o)| {
                    let d = port_minus(n, o);
                    (d.rx_packets as f64 / dt, d.tx_packets as f64 / dt)
                })
                .collect();
            s.drop_rates = (0..DropReason::COUNT)
                .map(|r| {
                    workers
                        .iter()
                        .zip(&s.workers)
                        .map(|(n, o)| n.drops[r].saturating_sub(o.drops[r]))
                        .sum::<u64>() as f64
                        / dt
                })
                .collect();
        }
        // The SYN proxy's engagements, seen from the counters (the workers never log).
        for (i, (n, o)) in workers.iter().zip(&s.workers).enumerate() {
            let engaged = self.workers[i].stats.syn_proxy_engaged.load(Relaxed);
            if n.syn_proxy_engagements > o.syn_proxy_engagements {
                info!(
                    worker = i,
                    engaged,
                    engagements = n.syn_proxy_engagements - o.syn_proxy_engagements,
                    "SYN proxy engaged: auto frontends' embryonic flows reached their \
                     threshold, SYNs get cookies"
                );
            } else if engaged < s.engaged.get(i).copied().unwrap_or(0) {
                info!(
                    worker = i,
                    engaged, "SYN proxy disengaged on some auto frontends"
                );
            }
        }
        s.engaged = self
            .workers
            .iter()
            .map(|w| w.stats.syn_proxy_engaged.load(Relaxed))
            .collect();
        s.at = Some(now);
        s.workers = workers;
        s.ports = ports;
    }

    /// Records counter baselines: the API reports counters from now on (metrics do not).
    pub fn reset_counters(&self) -> SystemTime {
        let now = SystemTime::now();
        let workers = self
            .workers
            .iter()
            .map(|w| WorkerCounters::read(&w.stats))
            .collect();
        let ports = lock(&self.samples).ports.clone();
        let targets = self.raw_targets();
        *lock(&self.baselines) = Baselines {
            at: Some(now),
            workers,
            ports,
            targets,
        };
        now
    }

    /// Maglev tables that changed size in a compile (for `sluice_maglev_resizes_total`).
    pub fn maglev_resized(&self, tables: usize) {
        self.telemetry.maglev_resizes.inc_by(tables as u64);
    }

    /// Time a compile took (for `sluice_snapshot_compile_seconds`).
    pub fn observe_compile(&self, d: Duration) {
        self.telemetry.compile.observe(d.as_secs_f64());
    }

    /// A snapshot of `generation` was sent to the workers at `sent`: counts it and, in a task,
    /// measures how long until every worker runs it (`sluice_snapshot_publish_seconds`).
    /// Needs a tokio runtime.
    pub fn snapshot_sent(self: &Arc<Self>, generation: u64, sent: Instant) {
        self.telemetry.published.inc();
        let me = self.clone();
        tokio::spawn(async move {
            use std::sync::atomic::Ordering::Relaxed;
            while sent.elapsed() < Duration::from_secs(5) {
                if me
                    .workers
                    .iter()
                    .all(|w| w.stats.snapshot_generation.load(Relaxed) >= generation)
                {
                    me.telemetry.publish.observe(sent.elapsed().as_secs_f64());
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    }

    /// Per backend id: counters summed over the workers.
    fn raw_targets(&self) -> HashMap<u32, api::Traffic> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut out: HashMap<u32, api::Traffic> = HashMap::new();
        for w in &self.workers {
            for (id, c) in w.stats.targets.iter().enumerate() {
                let t = api::Traffic {
                    packets: c.packets.load(Relaxed),
                    bytes: c.bytes.load(Relaxed),
                    new_flows: c.new_flows.load(Relaxed),
                    active_flows: c.active_flows(),
                };
                if t != api::Traffic::default() {
                    out.entry(id as u32).or_default().add(t);
                }
            }
        }
        out
    }

    /// One frontend id's counters, summed over the workers.
    fn raw_frontend(&self, id: u32) -> api::FrontendCounters {
        use std::sync::atomic::Ordering::Relaxed;
        let mut r = api::FrontendCounters::default();
        for w in &self.workers {
            if let Some(c) = w.stats.frontends.get(id as usize) {
                r.refused_vip_budget += c.limited_vip.load(Relaxed);
                r.refused_source_budget += c.limited_source.load(Relaxed);
                r.syn_cookies_sent += c.syn_cookies_sent.load(Relaxed);
                r.syn_proxy_engaged_workers += c.syn_proxy_engaged.load(Relaxed);
            }
        }
        r
    }

    /// One frontend id's counters since its owner took the id (the engagement gauge as is).
    pub(crate) fn frontend_counters(&self, live: &Live, id: u32) -> api::FrontendCounters {
        let raw = self.raw_frontend(id);
        let origin = live.fe_owners.get(&id).map(|o| o.1).unwrap_or_default();
        api::FrontendCounters {
            refused_vip_budget: raw
                .refused_vip_budget
                .saturating_sub(origin.refused_vip_budget),
            refused_source_budget: raw
                .refused_source_budget
                .saturating_sub(origin.refused_source_budget),
            syn_cookies_sent: raw.syn_cookies_sent.saturating_sub(origin.syn_cookies_sent),
            syn_proxy_engaged_workers: raw.syn_proxy_engaged_workers,
        }
    }

    /// One backend id's counters, summed over the workers.
    fn raw_target(&self, id: u32) -> api::Traffic {
        use std::sync::atomic::Ordering::Relaxed;
        let mut t = api::Traffic::default();
        for w in &self.workers {
            if let Some(c) = w.stats.targets.get(id as usize) {
                t.add(api::Traffic {
                    packets: c.packets.load(Relaxed),
                    bytes: c.bytes.load(Relaxed),
                    new_flows: c.new_flows.load(Relaxed),
                    active_flows: c.active_flows(),
                });
            }
        }
        t
    }
}

/// Counters of `a` since baseline `b`. `active_flows` is a gauge: `a`'s, whatever the baseline.
fn traffic_minus(a: api::Traffic, b: api::Traffic) -> api::Traffic {
    api::Traffic {
        packets: a.packets.saturating_sub(b.packets),
        bytes: a.bytes.saturating_sub(b.bytes),
        new_flows: a.new_flows.saturating_sub(b.new_flows),
        active_flows: a.active_flows,
    }
}

/// The later of two baselines, counter by counter.
fn traffic_max(a: api::Traffic, b: api::Traffic) -> api::Traffic {
    api::Traffic {
        packets: a.packets.max(b.packets),
        bytes: a.bytes.max(b.bytes),
        new_flows: a.new_flows.max(b.new_flows),
        active_flows: a.active_flows.max(b.active_flows),
    }
}

/// What a drop reason means, for operators.
pub fn drop_description(r: DropReason) -> &'static str {
    match r {
        DropReason::Malformed => "a header is truncated or has an invalid field",
        DropReason::Multisegment => "a chained (multi-segment) mbuf; ports run without scatter",
        DropReason::NotForUs => "destination MAC is not ours (promiscuous port)",
        DropReason::UnsupportedL3 => "neither ARP, IPv4 nor IPv6",
        DropReason::ArpNotOurs => "ARP for an address that is not a VIP nor ours",
        DropReason::BadIpChecksum => "IPv4 header checksum does not verify",
        DropReason::NoVip => "destination is not a VIP nor one of our addresses",
        DropReason::PortNotServed => "a VIP, but not on a served protocol/port",
        DropReason::UnsupportedL4 => "a protocol other than TCP, UDP, ICMP to a VIP",
        DropReason::SourceDenied => "source outside the Service's loadBalancerSourceRanges",
        DropReason::NoBackend => "the Service has no active backend",
        DropReason::NextHopUnresolved => "the backend's next-hop MAC is not resolved yet",
        DropReason::TcpNoFlow => "a non-SYN TCP packet of an untracked nat flow",
        DropReason::NatNoFlow => "a packet to a NAT address matching no tracked flow",
        DropReason::NatFragment => "an IP fragment to a nat Service (not reassembled)",
        DropReason::NatPortsExhausted => "no free NAT port in this worker's slice",
        DropReason::NoNatAddress => "nat Service but no NAT address of that family",
        DropReason::IcmpUnsupported => "an ICMP message Sluice does not handle",
        DropReason::IcmpErrorNoFlow => "an ICMP error quoting an untracked flow",
        DropReason::NoHeadroom => "not enough headroom to encapsulate",
        DropReason::TooBig => "the encapsulated packet would exceed the MTU",
        DropReason::TxFull => "the TX queue stayed full",
        DropReason::RingFull => "the ring to the owning worker was full",
        DropReason::ControlFull => "a control-plane channel was full",
        DropReason::NdpNotOurs => "neighbour discovery we do not answer (DAD, other targets)",
        DropReason::VipNotOwned => "ARP/NDP for a VIP another Sluice host owns (L2 mode)",
        DropReason::VlanTagged => "an 802.1Q-tagged frame (no VLAN is configured)",
        DropReason::FlowTableFull => {
            "a new connection's buckets held only established flows (never evicted for a SYN)"
        }
        DropReason::VipFlowLimit => "a new flow over its VIP port's new-flow rate limit",
        DropReason::SourceFlowLimit => {
            "a new flow over its source prefix's new-flow rate limit at the VIP port"
        }
        DropReason::SynProxyBadCookie => {
            "a TCP segment to a SYN-proxied port with no flow and no valid cookie (spoofed or stale)"
        }
        DropReason::SynProxyHandshake => {
            "client data of a SYN-proxied connection before its backend answered (retransmitted)"
        }
    }
}
