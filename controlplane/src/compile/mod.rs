//! # Compiling the model into a snapshot
//!
//! [`Compiler::compile`] turns the configuration, the cluster [`Model`], the health states,
//! the neighbour table and the operator's drains into one immutable dataplane [`Snapshot`],
//! and a [`CompileReport`] that says what was done and what is wrong (per Service), which next
//! hops need resolving and which targets the health checker should probe.
//!
//! ## Rules
//! - **Which Services.** `type: LoadBalancer` whose `spec.loadBalancerClass` equals
//!   `source.load_balancer_class`, or has none when `source.serve_unclassed` is set.
//! - **VIPs (IPAM).** One per family of [`Service::families`], by [`crate::compile::ipam`]: held
//!   addresses first (the last compile's, else `status.loadBalancer.ingress`), then explicit
//!   requests, then the first free address of an eligible pool; sharing keys, pool selection
//!   by annotation, and a follower mode that only serves what status says. Every finding is
//!   both a problem string and a structured [`Issue`] (the Kubernetes Event reasons).
//! - **Frontends.** One per VIP and Service port (TCP, UDP; SCTP is reported and skipped).
//!   Method, target and Maglev size come from `[forwarding]`/`[tables]`, overridden by the
//!   annotations `sluice.dev/forwarding-method`, `sluice.dev/target` and
//!   `sluice.dev/maglev-size`. `sessionAffinity: ClientIP` sets `affinity_ms` from
//!   `timeoutSeconds`; `loadBalancerSourceRanges` (both families) become the frontend's ACL.
//! - **Backends, target `pod`.** Endpoints of the Service's EndpointSlices of the VIP's family
//!   that are ready (if none is, those that are serving and terminating), on the slice port
//!   whose name equals the Service port's name (as the EndpointSlice controller names them),
//!   else the one matching `targetPort` by number or name. A slice with no ports at all uses a
//!   numeric `targetPort`.
//! - **Backends, target `node`.** InternalIPs of the VIP's family of Ready Nodes without the
//!   exclude label, on the port's `nodePort`. With `externalTrafficPolicy: Local` only nodes
//!   that have a ready endpoint of the Service (EndpointSlice `nodeName`), probed at
//!   `http://<node>:<healthCheckNodePort>/healthz`.
//! - **State.** Operator drain → `Draining`; health check down → `Down`; else `Active`. A
//!   backend that leaves the desired set stays as `Draining` for
//!   `forwarding.removed_backend_grace_seconds` (so established flows finish), then leaves.
//! - **Next hop.** The backend itself when inside an on-link subnet of a port, else the port's
//!   gateway of its family. Its MAC comes from the neighbour table; unknown → `mac: None` (the
//!   dataplane sends nothing there) and the next hop is listed in
//!   [`CompileReport::unresolved`].
//!
//! ## Design
//! - **Stable ids.** Frontends are keyed by (Service, VIP, protocol, port) and backends by
//!   (frontend id, address, port). An id keeps its number while its key exists, and a freed id
//!   is reused only after it has been absent for the grace period, so a conntrack entry that
//!   holds an id never silently lands on a different backend.
//! - **Only changed frontends rebuild Maglev.** Every frontend's table is cached with the
//!   inputs it was built from (backend ids, identities, weights, size, seed); an unchanged
//!   frontend reuses the same `Arc`. Draining and down backends stay in the table (the dataplane
//!   skips them), so health flaps never rebuild anything.
//! - **Only changed Services are re-examined.** Each Service's result (frontends, backends,
//!   report) is cached with the inputs it was compiled from: the Service, its EndpointSlices,
//!   its VIPs and IPAM findings, and the health states and neighbour MACs its backends used
//!   (plus the Nodes, for node targets). A Service whose inputs compare equal reuses its
//!   result (the report is the same `Arc`), so one EndpointSlice change among 10,000 Services
//!   costs one Service's work plus assembling the snapshot. A change of the configuration, the drained set or the weights
//!   re-examines everything; Services with draining backends (time-dependent) and Services
//!   that share a VIP are always re-examined. [`CompileReport::recompiled`] lists the
//!   re-examined ones.
//! - The compiler holds only that memory (ids, IPAM, draining backends, Maglev cache, the
//!   per-Service results).
mod ids;
pub mod ipam;
mod maglev;
mod probes;
mod report;
mod services;
mod targets;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use sluice_dataplane::maglev::MaglevTable;
use sluice_dataplane::snapshot::{Backend, Frontend, Local, Protocol, Snapshot, SnapshotError};

use crate::config::{Config, Target};
use crate::health::{Health, ProbeTarget};
use crate::model::{EndpointSlice, Model, ObjectKey, Service};
use ipam::{Ipam, Issue};

use ids::{BackendKey, FrontendKey, IdSlab};
use maglev::MaglevKey;
pub use report::{
    state_name, BackendReport, CompileReport, FrontendReport, MaglevResize, ServiceReport,
};
use services::effective_target;
pub use services::serves;
pub use targets::next_hop;
use targets::slice_index;

/// Annotation: forwarding method of a Service (`nat`, `dsr-l2`, `dsr-ipip`).
pub const ANNOTATION_METHOD: &str = "sluice.dev/forwarding-method";
/// Annotation: Maglev table size of a Service's frontends (a prime).
pub const ANNOTATION_MAGLEV_SIZE: &str = "sluice.dev/maglev-size";
/// The largest Maglev weight of a backend (set by the operator or an annotation).
pub const MAX_WEIGHT: u32 = 10_000;
/// Annotation: Maglev weights of a Service's backends, `ADDRESS=WEIGHT` pairs separated by
/// commas (a weight set with `sluicectl weight` takes precedence).
pub const ANNOTATION_BACKEND_WEIGHTS: &str = "sluice.dev/backend-weights";
/// Annotation: backends of a Service (`pod` or `node`).
pub const ANNOTATION_TARGET: &str = "sluice.dev/target";
/// Annotation: new flows per second each of a Service's frontends admits, `RATE` or
/// `RATE,BURST` for the whole host (`0`: no limit); overrides `limits.new_flows_per_vip`.
pub const ANNOTATION_FLOW_LIMIT: &str = "sluice.dev/new-flow-limit";
/// Annotation: new flows per second one source prefix may open to each of a Service's
/// frontends, `RATE` or `RATE,BURST` (`0`: no limit); overrides `limits.new_flows_per_source`.
pub const ANNOTATION_SOURCE_FLOW_LIMIT: &str = "sluice.dev/new-flow-limit-per-source";
/// Annotation: SYN proxy for a `nat` Service's TCP ports, `on`, `off` or `auto`; overrides
/// `forwarding.syn_proxy`.
pub const ANNOTATION_SYN_PROXY: &str = "sluice.dev/syn-proxy";
/// Annotation: the embryonic flows per worker of one of a Service's frontends that engage its
/// `auto` SYN proxy (2 to 2^24); overrides `forwarding.syn_proxy_auto_threshold`.
pub const ANNOTATION_SYN_PROXY_THRESHOLD: &str = "sluice.dev/syn-proxy-threshold";
/// Annotation: requested VIPs, comma-separated, at most one per family.
pub const ANNOTATION_IPS: &str = crate::compile::ipam::ANNOTATION_IPS;
pub use probes::{
    ANNOTATION_HEALTH_FALL, ANNOTATION_HEALTH_INTERVAL, ANNOTATION_HEALTH_KIND,
    ANNOTATION_HEALTH_PATH, ANNOTATION_HEALTH_PORT, ANNOTATION_HEALTH_RISE,
    ANNOTATION_HEALTH_TIMEOUT,
};
/// Path probed on a node's `healthCheckNodePort` (as kube-proxy serves it).
pub const NODE_HEALTH_PATH: &str = "/healthz";

/// Why a compile failed (a bug, or a configuration with no port).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// The configuration has no port.
    #[error("the configuration has no [[ports]]; add one (Config::load rejects this)")]
    NoPort,
    /// The assembled snapshot is inconsistent.
    #[error("the compiled snapshot is invalid: {0}; this is a bug in sluice, please report it with the compile report")]
    Snapshot(#[from] SnapshotError),
}

/// Everything one compile reads.
#[derive(Debug, Clone, Copy)]
pub struct CompileInput<'a> {
    /// The configuration.
    pub config: &'a Config,
    /// The cluster.
    pub model: &'a Model,
    /// The MAC of the (first) DPDK port.
    pub local_mac: [u8; 6],
    /// Known neighbours: next-hop address to MAC.
    pub neighbours: &'a HashMap<IpAddr, [u8; 6]>,
    /// Health of probe targets ([`crate::health::HealthChecker::states`]); a target not in
    /// the map counts as up.
    pub health: &'a HashMap<ProbeTarget, Health>,
    /// Backend addresses the operator drained (no new flows, in every Service).
    pub drained: &'a BTreeSet<IpAddr>,
    /// Maglev weights the operator set per backend address (in every Service); others get 1.
    pub weights: &'a BTreeMap<IpAddr, u32>,
    /// The time, for grace periods and id reuse.
    pub now: Instant,
}

/// A snapshot and what went into it.
#[derive(Debug)]
pub struct Compiled {
    /// The snapshot to publish.
    pub snapshot: Snapshot,
    /// What was compiled and what is wrong.
    pub report: CompileReport,
}

/// Turns models into snapshots, keeping ids, VIPs and Maglev tables stable between compiles.
#[derive(Debug, Default)]
pub struct Compiler {
    generation: u64,
    frontend_ids: IdSlab<FrontendKey>,
    backend_ids: IdSlab<BackendKey>,
    /// VIP allocation (remembers the last assignment).
    ipam: Ipam,
    /// Backends in the last snapshot, per frontend id.
    present: HashMap<u32, BTreeSet<(IpAddr, u16)>>,
    /// Since when a backend has been missing from the model (draining until the grace ends).
    removed_since: HashMap<BackendKey, Instant>,
    maglev: HashMap<u32, (MaglevKey, Arc<MaglevTable>)>,
    /// Each served Service's last result, sorted by Service.
    cache: Vec<ServiceCache>,
    /// The whole-compile inputs the cache was built with.
    cached_with: Option<GlobalInputs>,
    /// Frontend ids of the last snapshot.
    live: HashSet<u32>,
    /// The Nodes of the last compile (node-target Services depend on all of them).
    nodes: BTreeMap<String, crate::model::Node>,
    /// Each served Service's last valid new-flow limit annotations, kept while a later value
    /// is invalid.
    last_limits: HashMap<ObjectKey, services::LimitAnnotations>,
}

/// Inputs that every Service depends on; a change invalidates the whole cache.
#[derive(Debug, PartialEq)]
struct GlobalInputs {
    config: Config,
    drained: BTreeSet<IpAddr>,
    weights: BTreeMap<IpAddr, u32>,
}

/// What one Service compiled to, reused while the inputs it was compiled from are unchanged.
/// The inputs are kept and compared exactly (a hash could miss a change).
#[derive(Debug)]
struct ServiceCache {
    svc: Service,
    slices: Vec<EndpointSlice>,
    vips: Vec<IpAddr>,
    issues: Vec<Issue>,
    /// Whether each of `health_targets` was down.
    down: Vec<bool>,
    /// The MAC of each of `next_hops`.
    macs: Vec<Option<[u8; 6]>>,
    /// Depends on time (draining backends): never reused.
    volatile: bool,
    /// Its frontend ids (including ones left out of the snapshot for a Maglev error).
    live: Vec<u32>,
    frontends: Vec<Frontend>,
    backends: Vec<Backend>,
    report: Arc<ServiceReport>,
    health_targets: Vec<ProbeTarget>,
    next_hops: Vec<IpAddr>,
}

impl Compiler {
    /// A compiler with no memory; its first snapshot has generation 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// VIPs assigned by the last compile, per Service.
    pub fn assigned_vips(&self) -> &BTreeMap<ObjectKey, Vec<IpAddr>> {
        self.ipam.assigned()
    }

    /// Follower mode of IPAM: serve only the VIPs in `status.loadBalancer.ingress` and
    /// allocate nothing (a Kubernetes instance that does not hold the Lease).
    pub fn set_follow_status(&mut self, follow: bool) {
        self.ipam.set_follow_status(follow);
    }

    /// Compiles a snapshot (generation one above the last).
    ///
    /// # Errors
    /// [`CompileError`]: the configuration has no port, or (a bug) the snapshot is invalid.
    pub fn compile(&mut self, input: &CompileInput<'_>) -> Result<Compiled, CompileError> {
        let cfg = input.config;
        if cfg.ports.is_empty() {
            return Err(CompileError::NoPort);
        }
        self.generation += 1;
        let now = input.now;
        let max_ids = cfg.tables.max_backends;
        let mut report = CompileReport {
            generation: self.generation,
            ..CompileReport::default()
        };

        let served: Vec<&Service> = input
            .model
            .services
            .values()
            .filter(|s| serves(cfg, s))
            .collect();
        let assignment = self.ipam.assign(&cfg.pools, &served);

        // A change of a whole-compile input re-examines every Service.
        let same = self.cached_with.as_ref().is_some_and(|g| {
            g.config == *cfg && g.drained == *input.drained && g.weights == *input.weights
        });
        if !same {
            self.cache.clear();
            self.cached_with = Some(GlobalInputs {
                config: cfg.clone(),
                drained: input.drained.clone(),
                weights: input.weights.clone(),
            });
        }
        let slices = slice_index(input.model);
        let nodes_changed = self.nodes != input.model.nodes;
        if nodes_changed {
            self.nodes = input.model.nodes.clone();
        }
        // Services that share a VIP claim ports against each other: always re-examined.
        let mut holders: HashMap<IpAddr, u32> = HashMap::new();
        for ip in assignment.vips.values().flatten() {
            *holders.entry(*ip).or_default() += 1;
        }

        let mut frontends: Vec<Frontend> = Vec::new();
        let mut backends: Vec<Backend> = Vec::new();
        let mut live_frontends: HashSet<u32> = HashSet::new();
        let mut claimed: HashSet<(IpAddr, Protocol, u16)> = HashSet::new();
        // The cache, the assignment and `served` are all sorted by key: walk them together.
        let mut cache = std::mem::take(&mut self.cache).into_iter().peekable();
        let mut next_cache = Vec::with_capacity(served.len());
        let mut all_vips = assignment.vips.iter();
        let mut all_issues = assignment.issues.iter().peekable();

        for svc in &served {
            let svc_vips: &[IpAddr] = match all_vips.next() {
                Some((k, v)) if *k == svc.key => v,
                _ => assignment.vips.get(&svc.key).map_or(&[], Vec::as_slice),
            };
            while all_issues.next_if(|(k, _)| **k < svc.key).is_some() {}
            let issues: &[Issue] = all_issues
                .next_if(|(k, _)| **k == svc.key)
                .map_or(&[], |(_, v)| v.as_slice());
            while cache.next_if(|c| c.svc.key < svc.key).is_some() {}
            let cached = cache.next_if(|c| c.svc.key == svc.key);
            let my_slices: &[&EndpointSlice] = slices
                .get(&(svc.key.namespace.as_str(), svc.key.name.as_str()))
                .map_or(&[], Vec::as_slice);
            let shared = svc_vips
                .iter()
                .any(|v| holders.get(v).is_some_and(|n| *n > 1));
            let nodes_matter = effective_target(cfg, svc) == Target::Node;
            let stale = shared || (nodes_matter && nodes_changed);
            let reuse = cached.filter(|c| {
                !stale
                    && !c.volatile
                    && c.vips == svc_vips
                    && c.issues == issues
                    && c.svc == **svc
                    && c.slices.len() == my_slices.len()
                    && c.slices.iter().zip(my_slices).all(|(a, b)| a == *b)
                    && c.health_targets
                        .iter()
                        .zip(&c.down)
                        .all(|(t, d)| (input.health.get(t) == Some(&Health::Down)) == *d)
                    && c.next_hops
                        .iter()
                        .zip(&c.macs)
                        .all(|(n, m)| input.neighbours.get(n) == m.as_ref())
            });
            let entry = match reuse {
                Some(c) => c,
                None => {
                    report.recompiled.push(svc.key.clone());
                    self.compile_service(
                        input,
                        svc,
                        svc_vips.to_vec(),
                        issues,
                        my_slices,
                        &mut claimed,
                        &mut report.maglev_rebuilt,
                        &mut report.maglev_resized,
                    )
                }
            };
            live_frontends.extend(entry.live.iter().copied());
            for f in &entry.frontends {
                claimed.insert((f.vip, f.protocol, f.port));
            }
            frontends.extend(entry.frontends.iter().cloned());
            backends.extend(entry.backends.iter().cloned());
            report.services.push(entry.report.clone());
            report
                .health_targets
                .extend(entry.health_targets.iter().cloned());
            for n in &entry.next_hops {
                report.next_hops.insert(*n);
                if !input.neighbours.contains_key(n) {
                    report.unresolved.insert(*n);
                }
            }
            next_cache.push(entry);
        }
        self.cache = next_cache;
        if !self.last_limits.is_empty() {
            self.last_limits
                .retain(|k, _| served.binary_search_by(|s| s.key.cmp(k)).is_ok());
        }

        // Forget frontends that are gone, with their backends (a full pass only when one is).
        let gone = self.live.len() != live_frontends.len()
            || self.live.iter().any(|f| !live_frontends.contains(f));
        if gone {
            self.frontend_ids
                .release_where(now, |_, id| !live_frontends.contains(&id));
            self.backend_ids
                .release_where(now, |k, _| !live_frontends.contains(&k.frontend));
            self.present.retain(|f, _| live_frontends.contains(f));
            self.removed_since
                .retain(|k, _| live_frontends.contains(&k.frontend));
            self.maglev.retain(|f, _| live_frontends.contains(f));
        }
        self.live = live_frontends;

        let local = local_of(cfg, input.local_mac);
        let snapshot = Snapshot::new(
            self.generation,
            cfg.forwarding.hash_seed,
            frontends,
            backends,
            local,
            max_ids,
        )?;
        Ok(Compiled { snapshot, report })
    }
}

/// The snapshot's `Local` from the configuration and the port's MAC. NAT addresses default to
/// the ports' own addresses of each family.
pub fn local_of(cfg: &Config, mac: [u8; 6]) -> Local {
    let ipv4: Vec<[u8; 4]> = cfg
        .ports
        .iter()
        .flat_map(|p| p.ipv4.iter().map(|a| a.addr().octets()))
        .collect();
    let ipv6: Vec<[u8; 16]> = cfg
        .ports
        .iter()
        .flat_map(|p| p.ipv6.iter().map(|a| a.addr().octets()))
        .collect();
    let mut nat_ipv4: Vec<[u8; 4]> = Vec::new();
    let mut nat_ipv6: Vec<[u8; 16]> = Vec::new();
    for a in &cfg.nat.addresses {
        match a {
            IpAddr::V4(a) => nat_ipv4.push(a.octets()),
            IpAddr::V6(a) => nat_ipv6.push(a.octets()),
        }
    }
    if nat_ipv4.is_empty() {
        nat_ipv4 = ipv4.clone();
    }
    if nat_ipv6.is_empty() {
        nat_ipv6 = ipv6.clone();
    }
    // The peers' NAT addresses follow ours: accepted for the flows synced from them, never
    // given to a new flow.
    let (own4, own6) = (nat_ipv4.len(), nat_ipv6.len());
    for a in cfg.sync.iter().flat_map(|y| y.peer_nat_addresses()) {
        match a {
            IpAddr::V4(a) if !nat_ipv4.contains(&a.octets()) => nat_ipv4.push(a.octets()),
            IpAddr::V6(a) if !nat_ipv6.contains(&a.octets()) => nat_ipv6.push(a.octets()),
            _ => {}
        }
    }
    Local {
        mac,
        ipv4,
        ipv6,
        nat_ipv4_peers: nat_ipv4.len() - own4,
        nat_ipv6_peers: nat_ipv6.len() - own6,
        nat_ipv4,
        nat_ipv6,
        nat_port_min: cfg.nat.port_min,
        nat_port_max: cfg.nat.port_max,
        mtu: cfg.ports[0].mtu,
    }
}
