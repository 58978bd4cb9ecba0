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
pub mod ipam;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_dataplane::maglev::{MaglevBackend, MaglevTable};
use sluice_dataplane::snapshot::{
    Backend, BackendState, Cidr, Frontend, Local, Method, Protocol, Snapshot, SnapshotError,
    MAX_FRONTENDS,
};

use crate::config::{check_maglev_size, Config, Target};
use crate::health::{Health, ProbeTarget};
use ipam::{Ipam, Issue};
use crate::model::{
    AddressType, EndpointSlice, IpFamily, L4Protocol, Model, ObjectKey, Service, ServicePort,
    TargetPort, TrafficPolicy,
};

/// Annotation: forwarding method of a Service (`nat`, `dsr-l2`, `dsr-ipip`).
pub const ANNOTATION_METHOD: &str = "sluice.dev/forwarding-method";
/// Annotation: Maglev table size of a Service's frontends (a prime).
pub const ANNOTATION_MAGLEV_SIZE: &str = "sluice.dev/maglev-size";
/// Annotation: backends of a Service (`pod` or `node`).
pub const ANNOTATION_TARGET: &str = "sluice.dev/target";
/// Annotation: requested VIPs, comma-separated, at most one per family.
pub const ANNOTATION_IPS: &str = crate::compile::ipam::ANNOTATION_IPS;
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

/// What a compile did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CompileReport {
    /// The snapshot's generation.
    pub generation: u64,
    /// Every served Service, sorted by namespace/name. Shared with the compiler's cache: a
    /// Service whose inputs did not change is the same `Arc` as in the last report, so
    /// comparing two reports (or cloning one) costs little for the unchanged ones.
    #[serde(serialize_with = "ser_arcs")]
    pub services: Vec<Arc<ServiceReport>>,
    /// Problems not tied to one Service.
    pub problems: Vec<String>,
    /// Every next hop the snapshot's backends use (resolve and keep refreshing these).
    pub next_hops: BTreeSet<IpAddr>,
    /// Next hops whose MAC is unknown: resolve them, then compile again.
    pub unresolved: BTreeSet<IpAddr>,
    /// What the health checker should probe ([`crate::health::HealthChecker::set_targets`]).
    pub health_targets: BTreeSet<ProbeTarget>,
    /// Frontends whose Maglev table was built by this compile (the others reused theirs).
    pub maglev_rebuilt: Vec<u32>,
    /// Services this compile re-examined, sorted; the others' inputs were unchanged and their
    /// last result was reused.
    pub recompiled: Vec<ObjectKey>,
}

impl CompileReport {
    /// The report of one Service.
    pub fn service(&self, key: &ObjectKey) -> Option<&ServiceReport> {
        self.services
            .binary_search_by(|s| s.service.cmp(key))
            .ok()
            .map(|i| &*self.services[i])
    }
}

fn ser_arcs<S: serde::Serializer, T: serde::Serialize>(
    v: &[Arc<T>],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|a| &**a))
}

/// One served Service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServiceReport {
    /// Namespace/name.
    pub service: ObjectKey,
    /// Assigned VIPs, in the order of the Service's families (write these to
    /// `status.loadBalancer.ingress`).
    pub vips: Vec<IpAddr>,
    /// Its frontends.
    pub frontends: Vec<FrontendReport>,
    /// What is wrong, for operators and Kubernetes Events (empty when all is well).
    pub problems: Vec<String>,
    /// The IPAM findings among `problems`, with their reasons.
    pub issues: Vec<Issue>,
}

/// One frontend.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FrontendReport {
    /// Frontend id.
    pub id: u32,
    /// `namespace/name:port-name`.
    pub name: String,
    /// VIP.
    pub vip: IpAddr,
    /// VIP port.
    pub port: u16,
    /// Protocol.
    pub protocol: L4Protocol,
    /// Forwarding method.
    #[serde(serialize_with = "ser_method")]
    pub method: Method,
    /// Pod or node backends.
    pub target: Target,
    /// ClientIP affinity in milliseconds.
    pub affinity_ms: Option<u32>,
    /// Maglev table size.
    pub maglev_size: u32,
    /// Backends, in Maglev index order.
    pub backends: Vec<BackendReport>,
}

/// One backend of a frontend.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackendReport {
    /// Backend id.
    pub id: u32,
    /// Address.
    pub addr: IpAddr,
    /// Port.
    pub port: u16,
    /// State in the snapshot.
    #[serde(serialize_with = "ser_state")]
    pub state: BackendState,
    /// Why the state is not `Active`.
    pub reason: Option<String>,
    /// Maglev weight (1 unless the operator set one).
    pub weight: u32,
    /// The node (pod `nodeName`, or the node itself for node targets).
    pub node: Option<String>,
    /// Next hop toward the backend (`None`: unreachable, see the Service's problems).
    pub next_hop: Option<IpAddr>,
    /// The next hop's MAC, if known.
    pub mac: Option<[u8; 6]>,
    /// The health probe that decides `Down`.
    pub health_target: Option<ProbeTarget>,
}

fn ser_method<S: serde::Serializer>(m: &Method, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.name())
}

fn ser_state<S: serde::Serializer>(st: &BackendState, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(state_name(*st))
}

/// Lower-case name of a backend state (`active`, `draining`, `down`).
pub fn state_name(s: BackendState) -> &'static str {
    match s {
        BackendState::Active => "active",
        BackendState::Draining => "draining",
        BackendState::Down => "down",
    }
}

/// Key of a frontend id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FrontendKey {
    service: ObjectKey,
    vip: IpAddr,
    protocol: Protocol,
    port: u16,
}

/// Key of a backend id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct BackendKey {
    frontend: u32,
    addr: IpAddr,
    port: u16,
}

/// Stable ids: an id stays with its key while the key lives, and is reused only after it has
/// been free for the reuse delay.
#[derive(Debug)]
struct IdSlab<K> {
    ids: HashMap<K, u32>,
    /// Free ids and when they were freed.
    free: BTreeMap<u32, Instant>,
    next: u32,
}

impl<K> Default for IdSlab<K> {
    fn default() -> Self {
        IdSlab {
            ids: HashMap::new(),
            free: BTreeMap::new(),
            next: 0,
        }
    }
}

impl<K: Hash + Eq + Clone> IdSlab<K> {
    fn get(&self, k: &K) -> Option<u32> {
        self.ids.get(k).copied()
    }

    /// The key's id, allocating one if needed: the lowest free id that has been free for
    /// `delay`, else a new one below `max`.
    fn get_or_alloc(&mut self, k: &K, now: Instant, delay: Duration, max: usize) -> Option<u32> {
        if let Some(id) = self.ids.get(k) {
            return Some(*id);
        }
        let reusable = self
            .free
            .iter()
            .find(|(_, at)| now.saturating_duration_since(**at) >= delay)
            .map(|(id, _)| *id);
        let id = match reusable {
            Some(id) => {
                self.free.remove(&id);
                id
            }
            None if (self.next as usize) < max => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        self.ids.insert(k.clone(), id);
        Some(id)
    }

    fn release(&mut self, k: &K, now: Instant) {
        if let Some(id) = self.ids.remove(k) {
            self.free.insert(id, now);
        }
    }

    fn release_where(&mut self, now: Instant, mut dead: impl FnMut(&K, u32) -> bool) {
        let gone: Vec<K> = self
            .ids
            .iter()
            .filter(|(k, id)| dead(k, **id))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.release(&k, now);
        }
    }
}

/// What a cached Maglev table was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MaglevKey {
    backends: Vec<(u32, String, u32)>,
    size: u32,
    seed: u64,
}

/// A backend the model asks for.
#[derive(Debug, Clone)]
struct Desired {
    addr: IpAddr,
    port: u16,
    node: Option<String>,
    probe: Option<ProbeTarget>,
    /// Set when the backend is only used as a fallback (terminating but serving).
    note: Option<&'static str>,
}

/// Backends of one frontend by (address, port): the desired entry (`None` when draining
/// because removed) and the reason it is draining.
type Merged<'a> = BTreeMap<(IpAddr, u16), (Option<&'a Desired>, Option<String>)>;

/// A Service's effective settings after annotations.
struct Settings {
    method: Method,
    target: Target,
    maglev_size: u32,
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

    /// Compiles one Service: its frontends, backends and report. `claimed` holds the
    /// (VIP, protocol, port) pairs earlier Services took; this Service's are added.
    #[allow(clippy::too_many_arguments)]
    fn compile_service(
        &mut self,
        input: &CompileInput<'_>,
        svc: &Service,
        svc_vips: Vec<IpAddr>,
        issues: &[Issue],
        slices: &[&EndpointSlice],
        claimed: &mut HashSet<(IpAddr, Protocol, u16)>,
        maglev_rebuilt: &mut Vec<u32>,
    ) -> ServiceCache {
        let cfg = input.config;
        let now = input.now;
        let grace = Duration::from_secs(cfg.forwarding.removed_backend_grace_seconds);
        let max_ids = cfg.tables.max_backends;
        let mut frontends: Vec<Frontend> = Vec::new();
        let mut backends: Vec<Backend> = Vec::new();
        let mut scratch = CompileReport::default();
        let mut live = Vec::new();
        let mut probs: Vec<String> = issues.iter().map(|i| i.message.clone()).collect();
        let settings = service_settings(cfg, svc, &mut probs);
        let mut fe_reports = Vec::new();
        for &vip in &svc_vips {
            let family = IpFamily::of(vip);
            for sp in &svc.ports {
                let port_label = sp.name.clone().unwrap_or_else(|| sp.port.to_string());
                let protocol = match sp.protocol {
                    L4Protocol::Tcp => Protocol::Tcp,
                    L4Protocol::Udp => Protocol::Udp,
                    L4Protocol::Sctp => {
                        if family == svc.families()[0] {
                            probs.push(format!(
                                "port {port_label}: SCTP is not supported; the port is not served"
                            ));
                        }
                        continue;
                    }
                };
                if !claimed.insert((vip, protocol, sp.port)) {
                    probs.push(format!(
                        "{vip} {} {} is already served; port skipped",
                        sp.protocol.name(),
                        sp.port
                    ));
                    continue;
                }
                let fkey = FrontendKey {
                    service: svc.key.clone(),
                    vip,
                    protocol,
                    port: sp.port,
                };
                let fmax = max_ids.min(MAX_FRONTENDS);
                let Some(fid) = self.frontend_ids.get_or_alloc(&fkey, now, grace, fmax) else {
                    probs.push(if fmax < max_ids {
                        format!(
                            "port {port_label} ({vip}): this host already serves {MAX_FRONTENDS} frontends (VIP, protocol, port), the most it can; spread the Services over more Sluice hosts or pools"
                        )
                    } else {
                        format!(
                            "port {port_label} ({vip}): no free frontend id below tables.max_backends = {max_ids}; raise it"
                        )
                    });
                    continue;
                };
                live.push(fid);
                let label = format!("port {port_label} ({})", family.name());
                let desired = desired_backends(
                    input,
                    svc,
                    slices,
                    sp,
                    family,
                    settings.target,
                    &label,
                    &mut probs,
                );
                let mut fe = FrontendReport {
                    id: fid,
                    name: format!("{}:{port_label}", svc.key),
                    vip,
                    port: sp.port,
                    protocol: sp.protocol,
                    method: settings.method,
                    target: settings.target,
                    affinity_ms: svc.session_affinity_seconds.map(|s| s.saturating_mul(1000)),
                    maglev_size: settings.maglev_size,
                    backends: Vec::new(),
                };
                let fe_backends = self.frontend_backends(
                    input,
                    fid,
                    &desired,
                    grace,
                    &mut fe,
                    &mut probs,
                    &mut scratch,
                );
                if settings.method == Method::DsrL2 {
                    for b in &fe.backends {
                        if b.next_hop.is_some() && b.next_hop != Some(b.addr) {
                            probs.push(format!(
                                "{label}: backend {} is not on-link, but dsr-l2 only reaches backends on the port's own subnets",
                                b.addr
                            ));
                        }
                    }
                }
                let maglev = match self.maglev_table(
                    fid,
                    &fe.backends,
                    settings.maglev_size,
                    cfg.forwarding.hash_seed,
                ) {
                    Ok((t, rebuilt)) => {
                        if rebuilt {
                            scratch.maglev_rebuilt.push(fid);
                        }
                        t
                    }
                    Err(e) => {
                        probs.push(format!("{label}: {e}; the port is not served"));
                        continue;
                    }
                };
                frontends.push(Frontend {
                    id: fid,
                    service: Arc::from(fe.name.as_str()),
                    vip,
                    port: sp.port,
                    protocol,
                    method: settings.method,
                    affinity_ms: fe.affinity_ms,
                    source_ranges: svc
                        .source_ranges
                        .iter()
                        .map(|n| Cidr {
                            addr: n.network(),
                            prefix: n.prefix_len(),
                        })
                        .collect(),
                    backends: fe.backends.iter().map(|b| b.id).collect(),
                    maglev,
                });
                backends.extend(fe_backends);
                fe_reports.push(fe);
            }
        }
        probs.dedup();
        maglev_rebuilt.append(&mut scratch.maglev_rebuilt);
        let volatile = fe_reports.iter().any(|f| {
            f.backends.iter().any(|b| {
                self.removed_since.contains_key(&BackendKey {
                    frontend: f.id,
                    addr: b.addr,
                    port: b.port,
                })
            })
        });
        let health_targets: Vec<ProbeTarget> = scratch.health_targets.into_iter().collect();
        let next_hops: Vec<IpAddr> = scratch.next_hops.into_iter().collect();
        ServiceCache {
            svc: svc.clone(),
            slices: slices.iter().map(|s| (*s).clone()).collect(),
            vips: svc_vips.clone(),
            issues: issues.to_vec(),
            down: health_targets
                .iter()
                .map(|t| input.health.get(t) == Some(&Health::Down))
                .collect(),
            macs: next_hops
                .iter()
                .map(|n| input.neighbours.get(n).copied())
                .collect(),
            volatile,
            live,
            frontends,
            backends,
            report: Arc::new(ServiceReport {
                service: svc.key.clone(),
                vips: svc_vips,
                frontends: fe_reports,
                problems: probs,
                issues: issues.to_vec(),
            }),
            health_targets,
            next_hops,
        }
    }

    /// Merges the desired backends of frontend `fid` with the ones still draining, assigns ids,
    /// states and next hops, and fills `fe.backends` (sorted by address and port).
    #[allow(clippy::too_many_arguments)]
    fn frontend_backends(
        &mut self,
        input: &CompileInput<'_>,
        fid: u32,
        desired: &[Desired],
        grace: Duration,
        fe: &mut FrontendReport,
        probs: &mut Vec<String>,
        report: &mut CompileReport,
    ) -> Vec<Backend> {
        let now = input.now;
        let cfg = input.config;
        // (addr, port) -> (desired, reason when draining because removed)
        let mut entries: Merged<'_> = BTreeMap::new();
        for d in desired {
            entries.entry((d.addr, d.port)).or_insert((Some(d), None));
        }
        let previous = self.present.remove(&fid).unwrap_or_default();
        for &(addr, port) in &previous {
            let key = BackendKey {
                frontend: fid,
                addr,
                port,
            };
            if entries.contains_key(&(addr, port)) {
                self.removed_since.remove(&key);
                continue;
            }
            let since = *self.removed_since.entry(key).or_insert(now);
            let gone_for = now.saturating_duration_since(since);
            if gone_for < grace {
                let left = (grace - gone_for).as_secs();
                entries.insert(
                    (addr, port),
                    (
                        None,
                        Some(format!("removed from the endpoints; leaves in {left} s")),
                    ),
                );
            } else {
                self.removed_since.remove(&key);
                self.backend_ids.release(&key, now);
            }
        }
        for d in desired {
            self.removed_since.remove(&BackendKey {
                frontend: fid,
                addr: d.addr,
                port: d.port,
            });
        }

        let mut present = BTreeSet::new();
        let mut out = Vec::new();
        for ((addr, port), (d, removed)) in entries {
            let key = BackendKey {
                frontend: fid,
                addr,
                port,
            };
            let id = match self.backend_ids.get(&key) {
                Some(id) => id,
                None => {
                    match self
                        .backend_ids
                        .get_or_alloc(&key, now, grace, cfg.tables.max_backends)
                    {
                        Some(id) => id,
                        None => {
                            probs.push(format!(
                            "backend {}: no free backend id below tables.max_backends = {}; raise it",
                            SocketAddr::new(addr, port),
                            cfg.tables.max_backends
                        ));
                            continue;
                        }
                    }
                }
            };
            present.insert((addr, port));
            let probe = d.and_then(|d| d.probe.clone());
            if let Some(p) = &probe {
                report.health_targets.insert(p.clone());
            }
            let (state, reason) = if let Some(r) = removed {
                (BackendState::Draining, Some(r))
            } else if input.drained.contains(&addr) {
                (
                    BackendState::Draining,
                    Some("drained by the operator".to_owned()),
                )
            } else if let Some(p) = probe
                .as_ref()
                .filter(|p| input.health.get(p) == Some(&Health::Down))
            {
                (
                    BackendState::Down,
                    Some(format!("health check {p} failing")),
                )
            } else {
                (
                    BackendState::Active,
                    d.and_then(|d| d.note).map(str::to_owned),
                )
            };
            let weight = input.weights.get(&addr).copied().unwrap_or(1);
            let next_hop = next_hop(cfg, addr);
            let mac = next_hop.and_then(|n| input.neighbours.get(&n).copied());
            match next_hop {
                Some(n) => {
                    report.next_hops.insert(n);
                    if mac.is_none() {
                        report.unresolved.insert(n);
                    }
                }
                None => probs.push(format!(
                    "backend {addr} is outside every on-link subnet of the ports and no gateway_{} is configured; it gets no traffic",
                    if addr.is_ipv4() { "v4" } else { "v6" }
                )),
            }
            out.push(Backend {
                id,
                addr,
                port,
                mac,
                weight,
                state,
            });
            fe.backends.push(BackendReport {
                id,
                addr,
                port,
                state,
                reason,
                weight,
                node: d.and_then(|d| d.node.clone()),
                next_hop,
                mac,
                health_target: probe,
            });
        }
        self.present.insert(fid, present);
        out
    }

    /// The frontend's Maglev table: the cached one when its inputs are unchanged, else a new
    /// build (second value true).
    fn maglev_table(
        &mut self,
        fid: u32,
        backends: &[BackendReport],
        size: u32,
        seed: u64,
    ) -> Result<(Arc<MaglevTable>, bool), sluice_dataplane::maglev::MaglevError> {
        let key = MaglevKey {
            backends: backends
                .iter()
                .map(|b| (b.id, SocketAddr::new(b.addr, b.port).to_string(), b.weight))
                .collect(),
            size,
            seed,
        };
        if let Some((k, t)) = self.maglev.get(&fid) {
            if *k == key {
                return Ok((t.clone(), false));
            }
        }
        let mb: Vec<MaglevBackend<'_>> = key
            .backends
            .iter()
            .map(|(_, id, w)| MaglevBackend { id, weight: *w })
            .collect();
        let table = Arc::new(MaglevTable::build(&mb, size, seed)?);
        self.maglev.insert(fid, (key, table.clone()));
        Ok((table, true))
    }
}

/// EndpointSlices by (namespace, Service name), in slice-name order.
fn slice_index(model: &Model) -> HashMap<(&str, &str), Vec<&EndpointSlice>> {
    let mut out: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in model.endpoint_slices.values() {
        if let Some(svc) = s.service.as_deref() {
            out.entry((s.key.namespace.as_str(), svc))
                .or_default()
                .push(s);
        }
    }
    out
}

/// The Service's target after the `sluice.dev/target` annotation.
fn effective_target(cfg: &Config, svc: &Service) -> Target {
    svc.annotations
        .get(ANNOTATION_TARGET)
        .and_then(|v| Target::parse(v.trim()))
        .unwrap_or(cfg.forwarding.target)
}

/// Whether Sluice serves the Service.
pub fn serves(cfg: &Config, svc: &Service) -> bool {
    svc.is_load_balancer()
        && match &svc.load_balancer_class {
            Some(c) => *c == cfg.source.load_balancer_class,
            None => cfg.source.serve_unclassed,
        }
}

/// The next hop toward `addr`: itself when on-link on some port, else the first port's
/// gateway of its family.
pub fn next_hop(cfg: &Config, addr: IpAddr) -> Option<IpAddr> {
    if cfg.ports.iter().any(|p| p.on_link(addr)) {
        return Some(addr);
    }
    cfg.ports.iter().find_map(|p| p.gateway_for(addr))
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
    Local {
        mac,
        ipv4,
        ipv6,
        nat_ipv4,
        nat_ipv6,
        nat_port_min: cfg.nat.port_min,
        nat_port_max: cfg.nat.port_max,
        mtu: cfg.ports[0].mtu,
    }
}

fn service_settings(cfg: &Config, svc: &Service, probs: &mut Vec<String>) -> Settings {
    let mut s = Settings {
        method: cfg.forwarding.default_method,
        target: cfg.forwarding.target,
        maglev_size: cfg.tables.maglev_size,
    };
    if let Some(v) = svc.annotations.get(ANNOTATION_METHOD) {
        match Method::parse(v.trim()) {
            Some(m) => s.method = m,
            None => probs.push(format!(
                "annotation {ANNOTATION_METHOD}: unknown method {v:?}; use nat, dsr-l2 or dsr-ipip (using {})",
                s.method.name()
            )),
        }
    }
    if let Some(v) = svc.annotations.get(ANNOTATION_TARGET) {
        match Target::parse(v.trim()) {
            Some(t) => s.target = t,
            None => probs.push(format!(
                "annotation {ANNOTATION_TARGET}: unknown target {v:?}; use pod or node (using {})",
                s.target.name()
            )),
        }
    }
    if let Some(v) = svc.annotations.get(ANNOTATION_MAGLEV_SIZE) {
        match v
            .trim()
            .parse::<u32>()
            .map_err(|_| format!("{v:?} is not a number"))
            .and_then(|n| {
                check_maglev_size(n)?;
                Ok(n)
            }) {
            Ok(n) => s.maglev_size = n,
            Err(e) => probs.push(format!(
                "annotation {ANNOTATION_MAGLEV_SIZE}: {e} (using {})",
                s.maglev_size
            )),
        }
    }
    s
}

fn slice_family(s: &EndpointSlice) -> Option<IpFamily> {
    match s.address_type {
        AddressType::IPv4 => Some(IpFamily::V4),
        AddressType::IPv6 => Some(IpFamily::V6),
        AddressType::Fqdn => None,
    }
}

/// The port of `slice` that serves Service port `sp`.
fn slice_port(slice: &EndpointSlice, sp: &ServicePort) -> Option<u16> {
    let same_proto =
        |p: &&crate::model::EndpointPort| p.protocol == sp.protocol && p.port.is_some();
    if slice.ports.is_empty() {
        return match sp.target_port {
            TargetPort::Number(n) => Some(n),
            TargetPort::Name(_) => None,
        };
    }
    if let Some(p) = slice
        .ports
        .iter()
        .filter(same_proto)
        .find(|p| p.name == sp.name)
    {
        return p.port;
    }
    let by_target = match &sp.target_port {
        TargetPort::Number(n) => slice
            .ports
            .iter()
            .filter(same_proto)
            .find(|p| p.port == Some(*n)),
        TargetPort::Name(n) => slice
            .ports
            .iter()
            .filter(same_proto)
            .find(|p| p.name.as_deref() == Some(n)),
    };
    by_target.and_then(|p| p.port)
}

/// The backends the model asks for on one frontend (before draining and ids).
#[allow(clippy::too_many_arguments)]
fn desired_backends(
    input: &CompileInput<'_>,
    svc: &Service,
    slices: &[&EndpointSlice],
    sp: &ServicePort,
    family: IpFamily,
    target: Target,
    label: &str,
    probs: &mut Vec<String>,
) -> Vec<Desired> {
    let cfg = input.config;
    let model = input.model;
    let probe_for = |addr: SocketAddr| -> Option<ProbeTarget> {
        (cfg.health.enabled && sp.protocol == L4Protocol::Tcp)
            .then(|| ProbeTarget::from_config(addr, &cfg.health, sp.is_http()))
    };
    let mut out = Vec::new();
    match target {
        Target::Pod => {
            let mut ready = Vec::new();
            let mut fallback = Vec::new();
            let mut any_slice = false;
            for slice in slices
                .iter()
                .copied()
                .filter(|s| slice_family(s) == Some(family))
            {
                any_slice = true;
                let Some(port) = slice_port(slice, sp) else {
                    probs.push(format!(
                        "{label}: EndpointSlice {} has no {} port named {:?} or matching targetPort {}",
                        slice.key,
                        sp.protocol.name(),
                        sp.name.as_deref().unwrap_or(""),
                        sp.target_port
                    ));
                    continue;
                };
                for e in &slice.endpoints {
                    for &addr in &e.addresses {
                        let d = Desired {
                            addr,
                            port,
                            node: e.node_name.clone(),
                            probe: probe_for(SocketAddr::new(addr, port)),
                            note: None,
                        };
                        if e.ready {
                            ready.push(d);
                        } else if e.serving && e.terminating {
                            fallback.push(Desired {
                                note: Some(
                                    "terminating but serving: used because no endpoint is ready",
                                ),
                                ..d
                            });
                        }
                    }
                }
            }
            if ready.is_empty() && !fallback.is_empty() {
                probs.push(format!(
                    "{label}: no ready endpoints; using {} terminating ones",
                    fallback.len()
                ));
                ready = fallback;
            }
            if ready.is_empty() {
                probs.push(if any_slice {
                    format!("{label}: no ready endpoints")
                } else {
                    format!(
                        "{label}: no {} EndpointSlice for the Service",
                        family.name()
                    )
                });
            }
            out = ready;
        }
        Target::Node => {
            let Some(node_port) = sp.node_port else {
                probs.push(format!(
                    "{label}: no nodePort, but the target is node; allocate one or use target pod"
                ));
                return out;
            };
            let local = svc.external_traffic_policy == TrafficPolicy::Local;
            let with_endpoints: BTreeSet<&str> = slices
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .filter(|e| e.ready)
                .filter_map(|e| e.node_name.as_deref())
                .collect();
            for n in model.nodes.values() {
                if !n.ready || n.excluded || (local && !with_endpoints.contains(n.name.as_str())) {
                    continue;
                }
                for &addr in n
                    .internal_ips
                    .iter()
                    .filter(|a| IpFamily::of(**a) == family)
                {
                    let probe = if !cfg.health.enabled {
                        None
                    } else if local {
                        svc.health_check_node_port
                            .map(|p| ProbeTarget::http(SocketAddr::new(addr, p), NODE_HEALTH_PATH))
                    } else {
                        probe_for(SocketAddr::new(addr, node_port))
                    };
                    out.push(Desired {
                        addr,
                        port: node_port,
                        node: Some(n.name.clone()),
                        probe,
                        note: None,
                    });
                }
            }
            if out.is_empty() {
                probs.push(format!(
                    "{label}: no Ready node with an {} InternalIP{}",
                    family.name(),
                    if local {
                        " and a ready local endpoint (externalTrafficPolicy: Local)"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::manifest;

    const CFG: &str = r#"
[[ports]]
name = "lb0"
device = "net_af_packet0,iface=sl-lb0"
ipv4 = ["10.99.0.2/24"]
ipv6 = ["fd00:99::2/64"]
gateway_v4 = "10.99.0.1"

[nat]
addresses = ["10.99.0.3", "fd00:99::3"]

[tables]
maglev_size = 251

[forwarding]
removed_backend_grace_seconds = 60

[[pools]]
name = "lab"
ranges = ["10.99.0.100-10.99.0.120", "fd00:99::100-fd00:99::120"]

[[pools]]
name = "reserved"
ranges = ["10.99.0.200-10.99.0.210"]
auto_assign = false
namespaces = ["prod"]
"#;

    const MAC: [u8; 6] = [2, 0x99, 0, 0, 0, 2];

    fn cfg() -> Config {
        Config::parse(CFG, "test.toml").unwrap()
    }

    fn lab_cfg() -> Config {
        Config::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/examples/sluice.toml"
        ))
        .unwrap()
    }

    fn lab_model() -> Model {
        manifest::load_dir(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/examples/manifests"
        ))
        .unwrap()
        .model
    }

    fn model(yaml: &str) -> Model {
        manifest::parse_str(yaml, "test.yaml").unwrap().model
    }

    /// A Service with one TCP port 80 -> 8080 and one IPv4 slice of `eps` (addr, ready, node).
    fn svc_yaml(
        name: &str,
        extra_spec: &str,
        annotations: &str,
        eps: &[(&str, bool, &str)],
    ) -> String {
        let mut s = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  annotations: {{{annotations}}}\nspec:\n  type: LoadBalancer\n  loadBalancerClass: sluice.dev/dpdk\n  ports:\n    - name: http\n      port: 80\n      targetPort: 8080\n      nodePort: 30080\n{extra_spec}"
        );
        s.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-v4\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
        ));
        for (a, ready, node) in eps {
            s.push_str(&format!(
                "  - addresses: [\"{a}\"]\n    conditions: {{ready: {ready}}}\n    nodeName: {node}\n"
            ));
        }
        s.push_str("---\n");
        s
    }

    struct Env {
        neighbours: HashMap<IpAddr, [u8; 6]>,
        health: HashMap<ProbeTarget, Health>,
        drained: BTreeSet<IpAddr>,
        weights: BTreeMap<IpAddr, u32>,
        now: Instant,
    }

    impl Env {
        fn new() -> Self {
            Env {
                neighbours: HashMap::new(),
                health: HashMap::new(),
                drained: BTreeSet::new(),
                weights: BTreeMap::new(),
                now: Instant::now(),
            }
        }

        fn run(&self, c: &mut Compiler, cfg: &Config, m: &Model) -> Compiled {
            c.compile(&CompileInput {
                config: cfg,
                model: m,
                local_mac: MAC,
                neighbours: &self.neighbours,
                health: &self.health,
                drained: &self.drained,
                weights: &self.weights,
                now: self.now,
            })
            .unwrap()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn web() -> ObjectKey {
        ObjectKey::new("default", "web")
    }

    #[test]
    fn lab_example_compiles() {
        let mut cfg = lab_cfg();
        cfg.health.enabled = true;
        cfg.health.kind = crate::config::HealthKind::Http;
        cfg.health.http_path = "/".into();
        let m = lab_model();
        let mut env = Env::new();
        let mut c = Compiler::new();
        let out = env.run(&mut c, &cfg, &m);
        let r = out.report.service(&web()).unwrap();
        assert_eq!(r.vips, vec![ip("10.99.0.100"), ip("fd00:99::100")]);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.frontends.len(), 6);
        let http4 = &r.frontends[0];
        assert_eq!(
            (http4.vip, http4.port, http4.protocol),
            (ip("10.99.0.100"), 80, L4Protocol::Tcp)
        );
        assert_eq!(http4.name, "default/web:http");
        assert_eq!(http4.method, Method::Nat);
        let b: Vec<(IpAddr, u16)> = http4.backends.iter().map(|b| (b.addr, b.port)).collect();
        assert_eq!(
            b,
            vec![
                (ip("10.99.0.21"), 8080),
                (ip("10.99.0.22"), 8080),
                (ip("10.99.0.23"), 8080)
            ]
        );
        assert!(http4
            .backends
            .iter()
            .all(|b| b.mac.is_none() && b.state == BackendState::Active));
        let udp6 = &r.frontends[5];
        assert_eq!(
            (udp6.vip, udp6.port, udp6.protocol),
            (ip("fd00:99::100"), 9001, L4Protocol::Udp)
        );
        assert_eq!(udp6.backends[2].addr, ip("fd00:99::23"));
        assert_eq!(out.report.unresolved.len(), 6);
        assert_eq!(out.report.next_hops, out.report.unresolved);
        // HTTP probes on the http port, TCP connects on the echo port; UDP is
        // not probed: 2 TCP ports x 3 backends x 2 families.
        assert_eq!(out.report.health_targets.len(), 12);
        assert!(out
            .report
            .health_targets
            .contains(&ProbeTarget::http("10.99.0.21:8080".parse().unwrap(), "/")));
        assert!(out
            .report
            .health_targets
            .contains(&ProbeTarget::tcp("[fd00:99::23]:9000".parse().unwrap())));
        assert_eq!(
            http4.backends[0].health_target,
            Some(ProbeTarget::http("10.99.0.21:8080".parse().unwrap(), "/"))
        );

        let s = &out.snapshot;
        assert_eq!(s.generation, 1);
        assert_eq!(s.frontends().count(), 6);
        assert_eq!(s.backends().count(), 18);
        assert_eq!(s.local.mac, MAC);
        assert_eq!(s.local.ipv4, vec![[10, 99, 0, 2]]);
        assert_eq!(s.local.nat_ipv4, vec![[10, 99, 0, 3]]);
        assert_eq!(s.local.nat_ipv6.len(), 1);
        assert_eq!(
            (s.local.nat_port_min, s.local.nat_port_max, s.local.mtu),
            (20000, 65535, 1500)
        );
        let mut vip = [0u8; 16];
        vip[..4].copy_from_slice(&[10, 99, 0, 100]);
        let f = s.frontend_for(&vip, false, 6, 80).unwrap();
        assert_eq!(f.backends.len(), 3);
        assert_eq!(f.maglev.size(), 65537);

        // Resolve the neighbours: MACs appear, nothing left to resolve, no Maglev rebuilt.
        for i in 1..=3u8 {
            env.neighbours
                .insert(ip(&format!("10.99.0.2{i}")), [2, 0x99, 0, 0, 0, 0x20 + i]);
            env.neighbours
                .insert(ip(&format!("fd00:99::2{i}")), [2, 0x99, 0, 0, 0, 0x20 + i]);
        }
        let out2 = env.run(&mut c, &cfg, &m);
        assert!(out2.report.unresolved.is_empty());
        assert!(out2.report.maglev_rebuilt.is_empty());
        assert_eq!(out2.snapshot.generation, 2);
        let f2 = out2.snapshot.frontend_for(&vip, false, 6, 80).unwrap();
        assert!(Arc::ptr_eq(&f.maglev, &f2.maglev));
        assert_eq!(
            out2.snapshot.backend(f2.backends[0]).unwrap().mac,
            Some([2, 0x99, 0, 0, 0, 0x21])
        );
    }

    #[test]
    fn class_and_type_filter() {
        let mut yaml = svc_yaml("web", "", "", &[("10.99.0.21", true, "n1")]);
        yaml.push_str(&svc_yaml("other", "", "", &[]).replace("sluice.dev/dpdk", "metallb.io/x"));
        yaml.push_str(
            &svc_yaml("plain", "", "", &[]).replace("  loadBalancerClass: sluice.dev/dpdk\n", ""),
        );
        yaml.push_str(
            &svc_yaml("cip", "", "", &[]).replace("type: LoadBalancer", "type: ClusterIP"),
        );
        let m = model(&yaml);
        let env = Env::new();
        let mut c = Compiler::new();
        let out = env.run(&mut c, &cfg(), &m);
        let names: Vec<&str> = out
            .report
            .services
            .iter()
            .map(|s| s.service.name.as_str())
            .collect();
        assert_eq!(names, vec!["web"]);
        let mut cfg2 = cfg();
        cfg2.source.serve_unclassed = true;
        let out = env.run(&mut Compiler::new(), &cfg2, &m);
        let names: Vec<&str> = out
            .report
            .services
            .iter()
            .map(|s| s.service.name.as_str())
            .collect();
        assert_eq!(names, vec!["plain", "web"]);
    }

    #[test]
    fn ipam_is_stable_and_honours_requests() {
        let env = Env::new();
        let cfg = cfg();
        let mut c = Compiler::new();
        let m1 = model(&svc_yaml("web", "", "", &[]));
        let out = env.run(&mut c, &cfg, &m1);
        assert_eq!(
            out.report.service(&web()).unwrap().vips,
            vec![ip("10.99.0.100")]
        );

        // A Service that sorts first arrives: web keeps its address.
        let mut y = svc_yaml("aaa", "", "", &[]);
        y.push_str(&svc_yaml("web", "", "", &[]));
        let out = env.run(&mut c, &cfg, &model(&y));
        assert_eq!(
            out.report.service(&web()).unwrap().vips,
            vec![ip("10.99.0.100")]
        );
        assert_eq!(
            out.report
                .service(&ObjectKey::new("default", "aaa"))
                .unwrap()
                .vips,
            vec![ip("10.99.0.101")]
        );

        // A fresh compiler (restart) honours status.loadBalancer.ingress.
        let mut m = model(&svc_yaml("web", "", "", &[]));
        m.services.get_mut(&web()).unwrap().ingress_ips = vec![ip("10.99.0.110")];
        let out = env.run(&mut Compiler::new(), &cfg, &m);
        assert_eq!(
            out.report.service(&web()).unwrap().vips,
            vec![ip("10.99.0.110")]
        );

        // Requests: outside every pool, wrong namespace, taken, and good.
        let mut y = svc_yaml("a", "  loadBalancerIP: 192.0.2.1\n", "", &[]);
        y.push_str(&svc_yaml("b", "  loadBalancerIP: 10.99.0.200\n", "", &[]));
        y.push_str(&svc_yaml(
            "c",
            "",
            "sluice.dev/load-balancer-ips: \"10.99.0.115\"",
            &[],
        ));
        y.push_str(&svc_yaml("d", "  loadBalancerIP: 10.99.0.115\n", "", &[]));
        let out = env.run(&mut Compiler::new(), &cfg, &model(&y));
        let r = |n: &str| {
            out.report
                .service(&ObjectKey::new("default", n))
                .unwrap()
                .clone()
        };
        assert!(r("a").vips.is_empty());
        assert!(
            r("a").problems[0].contains("outside every pool"),
            "{:?}",
            r("a").problems
        );
        assert!(r("b").vips.is_empty());
        assert!(
            r("b").problems[0].contains("not open to namespace"),
            "{:?}",
            r("b").problems
        );
        assert_eq!(r("c").vips, vec![ip("10.99.0.115")]);
        assert!(r("d").vips.is_empty());
        assert!(
            r("d").problems[0].contains("already used by Service default/c"),
            "{:?}",
            r("d").problems
        );
        assert!(out.snapshot.frontends().all(|f| f.vip == ip("10.99.0.115")));
    }

    #[test]
    fn pod_targets_by_port_name_and_target_port() {
        // Slice port named differently from the Service port: matched by targetPort number.
        let y = svc_yaml(
            "web",
            "",
            "",
            &[("10.99.0.21", true, "n1"), ("10.99.0.22", false, "n2")],
        )
        .replace(
            "ports: [{name: http, port: 8080",
            "ports: [{name: other, port: 8080",
        );
        let out = Env::new().run(&mut Compiler::new(), &cfg(), &model(&y));
        let fe = &out.report.service(&web()).unwrap().frontends[0];
        assert_eq!(fe.backends.len(), 1, "the not-ready endpoint is left out");
        assert_eq!(
            (fe.backends[0].addr, fe.backends[0].port),
            (ip("10.99.0.21"), 8080)
        );
        assert_eq!(fe.backends[0].node.as_deref(), Some("n1"));

        // Named targetPort, slice port by that name with another number.
        let y = svc_yaml("web", "", "", &[("10.99.0.21", true, "n1")])
            .replace("targetPort: 8080", "targetPort: web-http")
            .replace(
                "ports: [{name: http, port: 8080",
                "ports: [{name: web-http, port: 8081",
            );
        let out = Env::new().run(&mut Compiler::new(), &cfg(), &model(&y));
        assert_eq!(
            out.report.service(&web()).unwrap().frontends[0].backends[0].port,
            8081
        );

        // No matching port: a problem, no backends.
        let y = svc_yaml("web", "", "", &[("10.99.0.21", true, "n1")]).replace(
            "ports: [{name: http, port: 8080",
            "ports: [{name: x, port: 9999",
        );
        let out = Env::new().run(&mut Compiler::new(), &cfg(), &model(&y));
        let r = out.report.service(&web()).unwrap();
        assert!(r.frontends[0].backends.is_empty());
        assert!(
            r.problems.iter().any(|p| p.contains("has no TCP port")),
            "{:?}",
            r.problems
        );
        assert!(
            r.problems.iter().any(|p| p.contains("no ready endpoints")),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn terminating_endpoints_are_a_fallback() {
        let y = svc_yaml("web", "", "", &[("10.99.0.21", false, "n1")]).replace(
            "conditions: {ready: false}",
            "conditions: {ready: false, serving: true, terminating: true}",
        );
        let out = Env::new().run(&mut Compiler::new(), &cfg(), &model(&y));
        let r = out.report.service(&web()).unwrap();
        assert_eq!(r.frontends[0].backends.len(), 1);
        assert!(r.problems[0].contains("terminating"), "{:?}", r.problems);
    }

    const NODES: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
status:
  addresses: [{type: InternalIP, address: 10.99.0.21}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Node
metadata: {name: n2}
status:
  addresses: [{type: InternalIP, address: 10.99.0.22}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Node
metadata: {name: n3}
status:
  addresses: [{type: InternalIP, address: 10.99.0.23}]
  conditions: [{type: Ready, status: "False"}]
---
apiVersion: v1
kind: Node
metadata:
  name: n4
  labels: {node.kubernetes.io/exclude-from-external-load-balancers: ""}
status:
  addresses: [{type: InternalIP, address: 10.99.0.24}]
---
"#;

    #[test]
    fn node_targets_and_local_policy() {
        let mut cfg = cfg();
        cfg.forwarding.target = Target::Node;
        let eps = &[("10.244.1.5", true, "n2")];
        let y = format!("{NODES}{}", svc_yaml("web", "", "", eps));
        let out = Env::new().run(&mut Compiler::new(), &cfg, &model(&y));
        let fe = &out.report.service(&web()).unwrap().frontends[0];
        let b: Vec<(IpAddr, u16)> = fe.backends.iter().map(|b| (b.addr, b.port)).collect();
        assert_eq!(
            b,
            vec![(ip("10.99.0.21"), 30080), (ip("10.99.0.22"), 30080)],
            "not-ready and excluded nodes are skipped"
        );
        assert!(out
            .report
            .health_targets
            .contains(&ProbeTarget::tcp("10.99.0.21:30080".parse().unwrap())));

        let y = format!(
            "{NODES}{}",
            svc_yaml(
                "web",
                "  externalTrafficPolicy: Local\n  healthCheckNodePort: 10256\n",
                "",
                eps
            )
        );
        let out = Env::new().run(&mut Compiler::new(), &cfg, &model(&y));
        let fe = &out.report.service(&web()).unwrap().frontends[0];
        assert_eq!(fe.backends.len(), 1);
        assert_eq!(fe.backends[0].addr, ip("10.99.0.22"));
        let hc = ProbeTarget::http("10.99.0.22:10256".parse().unwrap(), "/healthz");
        assert_eq!(fe.backends[0].health_target.as_ref(), Some(&hc));
        assert_eq!(
            out.report.health_targets.iter().collect::<Vec<_>>(),
            vec![&hc]
        );

        // Per-Service target annotation back to pods; Local has no extra effect there.
        let y = format!(
            "{NODES}{}",
            svc_yaml(
                "web",
                "  externalTrafficPolicy: Local\n",
                "sluice.dev/target: pod",
                eps
            )
        );
        let out = Env::new().run(&mut Compiler::new(), &cfg, &model(&y));
        let fe = &out.report.service(&web()).unwrap().frontends[0];
        assert_eq!(
            (fe.target, fe.backends.len(), fe.backends[0].port),
            (Target::Pod, 1, 8080)
        );
        assert_eq!(fe.backends[0].addr, ip("10.244.1.5"));
        assert!(
            out.report.unresolved.contains(&ip("10.99.0.1")),
            "off-link pod IP goes via the gateway"
        );
    }

    #[test]
    fn affinity_ranges_and_annotations() {
        let spec = "  sessionAffinity: ClientIP\n  loadBalancerSourceRanges: [\"192.0.2.0/24\", \"2001:db8::/32\"]\n";
        let ann = "sluice.dev/forwarding-method: dsr-ipip, sluice.dev/maglev-size: \"257\"";
        let y = svc_yaml("web", spec, ann, &[("10.99.0.21", true, "n1")]);
        let out = Env::new().run(&mut Compiler::new(), &cfg(), &model(&y));
        let f = out.snapshot.frontends().next().unwrap();
        assert_eq!(f.affinity_ms, Some(10_800_000));
        assert_eq!(f.method, Method::DsrIpip);
        assert_eq!(f.maglev.size(), 257);
        assert_eq!(
            f.source_ranges,
            vec![
                Cidr {
                    addr: ip("192.0.2.0"),
                    prefix: 24
                },
                Cidr {
                    addr: ip("2001:db8::"),
                    prefix: 32
                }
            ]
        );
        let spec = "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n";
        let ann = "sluice.dev/forwarding-method: dsr, sluice.dev/maglev-size: \"256\"";
        let y = svc_yaml("web", spec, ann, &[("10.99.0.21", true, "n1")]);
        let out = Env::new().run(&mut Compiler::new(), &cfg(), &model(&y));
        let f = out.snapshot.frontends().next().unwrap();
        assert_eq!(f.affinity_ms, Some(60_000));
        assert_eq!((f.method, f.maglev.size()), (Method::Nat, 251));
        let p = &out.report.service(&web()).unwrap().problems;
        assert!(p.iter().any(|p| p.contains("forwarding-method")), "{p:?}");
        assert!(
            p.iter()
                .any(|p| p.contains("maglev-size") && p.contains("not prime")),
            "{p:?}"
        );
    }

    #[test]
    fn dual_stack_frontends_use_their_own_family() {
        let out = Env::new().run(&mut Compiler::new(), &cfg(), &lab_model());
        for f in out.snapshot.frontends() {
            for b in &f.backends {
                assert_eq!(
                    out.snapshot.backend(*b).unwrap().addr.is_ipv4(),
                    f.vip.is_ipv4()
                );
            }
        }
    }

    #[test]
    fn removed_backends_drain_then_leave_and_ids_are_stable() {
        let cfg = cfg(); // grace 60 s
        let mut env = Env::new();
        let mut c = Compiler::new();
        let three = &[
            ("10.99.0.21", true, "n1"),
            ("10.99.0.22", true, "n2"),
            ("10.99.0.23", true, "n3"),
        ];
        let out = env.run(&mut c, &cfg, &model(&svc_yaml("web", "", "", three)));
        let ids = |o: &Compiled| -> Vec<(IpAddr, u32, BackendState)> {
            o.report.services[0].frontends[0]
                .backends
                .iter()
                .map(|b| (b.addr, b.id, b.state))
                .collect()
        };
        let first = ids(&out);
        let fid = out.report.services[0].frontends[0].id;

        // .22 leaves the slice: it stays, draining, with the same id.
        let two = &[("10.99.0.21", true, "n1"), ("10.99.0.23", true, "n3")];
        env.now += Duration::from_secs(10);
        let out = env.run(&mut c, &cfg, &model(&svc_yaml("web", "", "", two)));
        let second = ids(&out);
        assert_eq!(second[0], first[0]);
        assert_eq!(
            second[1],
            (ip("10.99.0.22"), first[1].1, BackendState::Draining)
        );
        assert_eq!(second[2], first[2]);
        assert!(
            out.report.maglev_rebuilt.is_empty(),
            "draining does not rebuild Maglev"
        );
        assert!(out.report.services[0].frontends[0].backends[1]
            .reason
            .as_deref()
            .unwrap()
            .contains("leaves in 60 s"));

        // Still draining before the grace ends; gone after it.
        env.now += Duration::from_secs(49);
        let out = env.run(&mut c, &cfg, &model(&svc_yaml("web", "", "", two)));
        assert_eq!(ids(&out)[1].2, BackendState::Draining);
        env.now += Duration::from_secs(12);
        let out = env.run(&mut c, &cfg, &model(&svc_yaml("web", "", "", two)));
        assert_eq!(ids(&out).len(), 2);
        assert_eq!(out.report.maglev_rebuilt, vec![fid]);
        assert!(out.snapshot.backend(first[1].1).is_none());

        // A new backend does not get the freed id at once...
        let new = &[
            ("10.99.0.21", true, "n1"),
            ("10.99.0.23", true, "n3"),
            ("10.99.0.24", true, "n4"),
        ];
        let out = env.run(&mut c, &cfg, &model(&svc_yaml("web", "", "", new)));
        let third = ids(&out);
        assert_ne!(third[2].1, first[1].1);
        assert_eq!(out.report.services[0].frontends[0].id, fid);

        // ...and a backend that comes back within the grace keeps its id.
        env.now += Duration::from_secs(1);
        let out = env.run(&mut c, &cfg, &model(&svc_yaml("web", "", "", two)));
        assert_eq!(ids(&out)[2].2, BackendState::Draining);
        let out = env.run(&mut c, &cfg, &model(&svc_yaml("web", "", "", new)));
        assert_eq!(ids(&out), third);

        // After the reuse delay a freed id is handed out again.
        env.now += Duration::from_secs(120);
        let four = &[("10.99.0.25", true, "n5")];
        let out = env.run(&mut c, &cfg, &model(&svc_yaml("web", "", "", four)));
        assert!(
            ids(&out).iter().any(|(_, id, _)| *id == first[1].1),
            "{:?}",
            ids(&out)
        );
    }

    #[test]
    fn health_and_drain_states() {
        let mut cfg = cfg();
        cfg.health.enabled = true;
        let mut env = Env::new();
        let two = &[("10.99.0.21", true, "n1"), ("10.99.0.22", true, "n2")];
        let m = model(&svc_yaml("web", "", "", two));
        let mut c = Compiler::new();
        let out = env.run(&mut c, &cfg, &m);
        let t21 = ProbeTarget::tcp("10.99.0.21:8080".parse().unwrap());
        assert!(out.report.health_targets.contains(&t21));
        assert_eq!(out.report.health_targets.len(), 2);
        env.health.insert(t21, Health::Down);
        env.drained.insert(ip("10.99.0.22"));
        let out = env.run(&mut c, &cfg, &m);
        let fe = &out.report.services[0].frontends[0];
        assert_eq!(fe.backends[0].state, BackendState::Down);
        assert_eq!(fe.backends[1].state, BackendState::Draining);
        assert_eq!(
            fe.backends[1].reason.as_deref(),
            Some("drained by the operator")
        );
        assert!(out.report.maglev_rebuilt.is_empty());
        assert_eq!(
            out.snapshot.backend(fe.backends[0].id).unwrap().state,
            BackendState::Down
        );
    }

    #[test]
    fn operator_weights_rebuild_only_that_table() {
        let cfg = cfg();
        let mut env = Env::new();
        let two = &[("10.99.0.21", true, "n1"), ("10.99.0.22", true, "n2")];
        let m = model(&svc_yaml("web", "", "", two));
        let mut c = Compiler::new();
        let out = env.run(&mut c, &cfg, &m);
        let fe = &out.report.services[0].frontends[0];
        assert!(fe.backends.iter().all(|b| b.weight == 1));
        let even = out.snapshot.frontend(fe.id).unwrap().maglev.shares();
        env.weights.insert(ip("10.99.0.21"), 3);
        let out = env.run(&mut c, &cfg, &m);
        let fe = &out.report.services[0].frontends[0];
        assert_eq!(out.report.maglev_rebuilt, vec![fe.id]);
        assert_eq!((fe.backends[0].weight, fe.backends[1].weight), (3, 1));
        assert_eq!(out.snapshot.backend(fe.backends[0].id).unwrap().weight, 3);
        let shares = out.snapshot.frontend(fe.id).unwrap().maglev.shares();
        assert!(shares[0] > 2 * shares[1], "{shares:?} (even: {even:?})");
        // Weight 0: no entries at all, the backend gets no new flows.
        env.weights.insert(ip("10.99.0.21"), 0);
        let out = env.run(&mut c, &cfg, &m);
        let fe = &out.report.services[0].frontends[0];
        let shares = out.snapshot.frontend(fe.id).unwrap().maglev.shares();
        assert_eq!(shares[0], 0);
        assert_eq!(shares[1], cfg.tables.maglev_size);
    }

    #[test]
    fn next_hops() {
        let mut cfg = cfg();
        let mut env = Env::new();
        let eps = &[("10.99.0.21", true, "n1"), ("10.1.2.3", true, "n2")];
        let m = model(&svc_yaml("web", "", "", eps));
        env.neighbours.insert(ip("10.99.0.1"), [2, 0, 0, 0, 0, 1]);
        let out = env.run(&mut Compiler::new(), &cfg, &m);
        let fe = &out.report.services[0].frontends[0];
        assert_eq!(fe.backends[0].addr, ip("10.1.2.3"));
        assert_eq!(fe.backends[0].next_hop, Some(ip("10.99.0.1")));
        assert_eq!(fe.backends[0].mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(fe.backends[1].next_hop, Some(ip("10.99.0.21")));
        assert_eq!(fe.backends[1].mac, None);
        assert_eq!(
            out.report.unresolved.iter().collect::<Vec<_>>(),
            vec![&ip("10.99.0.21")]
        );

        cfg.ports[0].gateway_v4 = None;
        let out = env.run(&mut Compiler::new(), &cfg, &m);
        let r = &out.report.services[0];
        assert_eq!(r.frontends[0].backends[0].next_hop, None);
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("10.1.2.3 is outside every on-link subnet")),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn only_changed_services_are_re_examined() {
        let mut cfg = cfg();
        cfg.health.enabled = true;
        let mut env = Env::new();
        let mut c = Compiler::new();
        let a = svc_yaml("a", "", "", &[("10.99.0.21", true, "n1")]);
        let b = svc_yaml("b", "", "", &[("10.99.0.22", true, "n1")]);
        let m = model(&format!("{a}{b}"));
        let out1 = env.run(&mut c, &cfg, &m);
        assert_eq!(out1.report.recompiled.len(), 2);
        // Nothing changed: nothing re-examined, the very same reports.
        let out2 = env.run(&mut c, &cfg, &m);
        assert!(out2.report.recompiled.is_empty());
        assert!(Arc::ptr_eq(
            &out1.report.services[0],
            &out2.report.services[0]
        ));
        assert_eq!(
            out1.report,
            CompileReport {
                generation: 1,
                maglev_rebuilt: out1.report.maglev_rebuilt.clone(),
                recompiled: out1.report.recompiled.clone(),
                ..out2.report.clone()
            }
        );
        // b's slice changes: only b.
        let b2 = svc_yaml(
            "b",
            "",
            "",
            &[("10.99.0.22", true, "n1"), ("10.99.0.23", true, "n1")],
        );
        let m2 = model(&format!("{a}{b2}"));
        let out3 = env.run(&mut c, &cfg, &m2);
        assert_eq!(out3.report.recompiled, vec![ObjectKey::new("default", "b")]);
        // A health check takes a's backend down: only a, and its state shows.
        env.health.insert(
            ProbeTarget::tcp("10.99.0.21:8080".parse().unwrap()),
            Health::Down,
        );
        let out4 = env.run(&mut c, &cfg, &m2);
        assert_eq!(out4.report.recompiled, vec![ObjectKey::new("default", "a")]);
        let fa = &out4.report.services[0].frontends[0];
        assert_eq!(fa.backends[0].state, BackendState::Down);
        // A neighbour is learned: only the Service whose next hop it is.
        env.neighbours
            .insert(ip("10.99.0.23"), [2, 0, 0, 0, 0, 0x23]);
        let out5 = env.run(&mut c, &cfg, &m2);
        assert_eq!(out5.report.recompiled, vec![ObjectKey::new("default", "b")]);
        // The operator drains an address: everything.
        env.drained.insert(ip("10.99.0.23"));
        let out6 = env.run(&mut c, &cfg, &m2);
        assert_eq!(out6.report.recompiled.len(), 2);
        // The result equals a compile from scratch (ids aside, which a fresh compiler
        // hands out in the same order here).
        let fresh = env.run(&mut Compiler::new(), &cfg, &m2);
        assert_eq!(
            out6.report
                .services
                .iter()
                .map(|s| (**s).clone())
                .collect::<Vec<_>>(),
            fresh
                .report
                .services
                .iter()
                .map(|s| (**s).clone())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn only_changed_services_rebuild_maglev() {
        let cfg = cfg();
        let env = Env::new();
        let mut c = Compiler::new();
        let a = svc_yaml("a", "", "", &[("10.99.0.21", true, "n1")]);
        let b = svc_yaml("b", "", "", &[("10.99.0.22", true, "n1")]);
        let out1 = env.run(&mut c, &cfg, &model(&format!("{a}{b}")));
        assert_eq!(out1.report.maglev_rebuilt.len(), 2);
        let b2 = svc_yaml(
            "b",
            "",
            "",
            &[("10.99.0.22", true, "n1"), ("10.99.0.23", true, "n1")],
        );
        let out2 = env.run(&mut c, &cfg, &model(&format!("{a}{b2}")));
        let fb = out2
            .report
            .service(&ObjectKey::new("default", "b"))
            .unwrap()
            .frontends[0]
            .id;
        let fa = out2
            .report
            .service(&ObjectKey::new("default", "a"))
            .unwrap()
            .frontends[0]
            .id;
        assert_eq!(out2.report.maglev_rebuilt, vec![fb]);
        assert!(Arc::ptr_eq(
            &out1.snapshot.frontend(fa).unwrap().maglev,
            &out2.snapshot.frontend(fa).unwrap().maglev
        ));
        assert!(!Arc::ptr_eq(
            &out1.snapshot.frontend(fb).unwrap().maglev,
            &out2.snapshot.frontend(fb).unwrap().maglev
        ));

        // A deleted Service frees its frontend; the other keeps its id.
        let out3 = env.run(&mut c, &cfg, &model(&a));
        assert_eq!(out3.snapshot.frontends().count(), 1);
        assert_eq!(out3.snapshot.frontends().next().unwrap().id, fa);
        assert!(out3.report.maglev_rebuilt.is_empty());
    }

    #[test]
    fn slab_reuse_delay() {
        let mut s: IdSlab<u8> = IdSlab::default();
        let t0 = Instant::now();
        let d = Duration::from_secs(5);
        assert_eq!(s.get_or_alloc(&1, t0, d, 2), Some(0));
        assert_eq!(s.get_or_alloc(&2, t0, d, 2), Some(1));
        assert_eq!(s.get_or_alloc(&1, t0, d, 2), Some(0));
        s.release(&1, t0);
        assert_eq!(
            s.get_or_alloc(&3, t0, d, 2),
            None,
            "max reached and the free id is too fresh"
        );
        assert_eq!(s.get_or_alloc(&3, t0 + d, d, 2), Some(0));
    }
}
