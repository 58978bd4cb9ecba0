//! # The daemon's control state
//!
//! [`ControlState`] is everything the control loop reads and writes: the configuration, the
//! model the source produced, the compiler's memory, the neighbours the dataplane learned, the
//! operator's drains and weights, the health checker, and where results go (the workers'
//! snapshot channels, the announcer, the admin API's view, the Kubernetes status writer).
//! Its two entry points are [`ControlState::compile_and_publish`] (after any input changed)
//! and [`ControlState::admin_request`] (a write from the admin API). It needs no DPDK: with
//! no workers attached it compiles and publishes to the admin view alone, which is how the
//! admin API's tests drive it.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;
use sluice_dataplane::snapshot::Snapshot;
use sluice_dataplane::worker::Command;
use tracing::{error, info};

use super::bgp::Routed;
use super::overrides::{self, Overrides, OverridesError};
use crate::admin::{self, AdminState, ControlRequest};
use crate::announce::Announcer;
use crate::compile::{CompileError, CompileInput, CompileReport, Compiled, Compiler};
use crate::config::Config;
use crate::health::{Health, HealthChecker, ProbeSettings, ProbeTarget};
use crate::l2::L2;
use crate::model::Model;
use crate::sources::kubernetes::{Kubernetes, StatusReporter};
use crate::sources::manifest;

/// Everything the control loop reads and writes.
pub struct ControlState {
    pub(super) cfg: Config,
    pub(super) model: Model,
    pub(super) compiler: Compiler,
    pub(super) neighbours: HashMap<IpAddr, [u8; 6]>,
    pub(super) drained: BTreeSet<IpAddr>,
    /// Maglev weights set by the operator (admin API).
    pub(super) weights: BTreeMap<IpAddr, u32>,
    pub(super) health: HealthChecker,
    pub(super) mac: [u8; 6],
    snap_tx: Vec<Sender<Arc<Snapshot>>>,
    /// VIP announcements and next-hop resolution (through worker 0).
    pub(super) announce: Announcer,
    pub(super) last: Option<CompileReport>,
    pub(super) last_publish: Instant,
    /// The admin API's view (set once the workers run).
    pub(super) admin: Option<Arc<AdminState>>,
    /// The manifest directory (for `POST /v1/reload`).
    manifest_dir: PathBuf,
    /// The Kubernetes source (`source.kind = "kubernetes"`).
    pub(super) kube: Option<Kubernetes>,
    /// Hands compile reports to the Kubernetes status writer.
    status: Option<StatusReporter>,
    /// Routed mode (`[bgp]`): what BIRD announces.
    pub(super) bgp: Option<Routed>,
    /// L2 mode (`[l2]`): which VIPs this host answers ARP/NDP for.
    pub(super) l2: Option<L2>,
    /// Where the operator's drains and weights are kept across restarts (set by
    /// [`ControlState::restore_overrides`]; `None`: not kept).
    overrides_file: Option<PathBuf>,
    /// Which problems of the compile report were logged.
    problems: crate::logs::ProblemLog,
}

impl ControlState {
    /// A state that has compiled nothing yet, serving `model`; `mac` is the first port's.
    pub fn new(cfg: Config, model: Model, mac: [u8; 6], manifest_dir: PathBuf) -> Self {
        ControlState {
            model,
            compiler: Compiler::new(),
            neighbours: HashMap::new(),
            drained: BTreeSet::new(),
            weights: BTreeMap::new(),
            health: HealthChecker::new(ProbeSettings::from(&cfg.health)),
            mac,
            snap_tx: Vec::new(),
            announce: Announcer::new(&cfg, None),
            last: None,
            last_publish: Instant::now(),
            admin: None,
            manifest_dir,
            kube: None,
            status: None,
            bgp: None,
            l2: None,
            overrides_file: None,
            problems: crate::logs::ProblemLog::default(),
            cfg,
        }
    }

    /// Reads the operator's drains and weights kept in `admin.state_dir` and keeps them
    /// there from now on. Returns how many addresses they name.
    ///
    /// # Errors
    /// The file cannot be read or is invalid: the state starts without overrides (and the
    /// next change replaces the file).
    pub fn restore_overrides(&mut self) -> Result<usize, OverridesError> {
        let path = overrides::path_in(&self.cfg.admin.state_dir);
        self.overrides_file = Some(path.clone());
        let o = overrides::load(&path)?;
        let n = o.drained.len() + o.weights.len();
        self.drained = o.drained;
        self.weights = o.weights;
        if let Some(a) = &self.admin {
            a.set_overrides(&self.drained, &self.weights);
        }
        Ok(n)
    }

    /// Writes the operator's drains and weights, if they are kept.
    fn save_overrides(&self) {
        let Some(path) = &self.overrides_file else {
            return;
        };
        let o = Overrides {
            drained: self.drained.clone(),
            weights: self.weights.clone(),
        };
        if let Err(e) = overrides::save(path, &o) {
            error!(error = %e, "operator overrides not saved");
        }
    }

    /// Serves from the Kubernetes source: follows the leader's VIPs unless this instance
    /// leads, and hands reports to the status writer.
    pub fn attach_kubernetes(&mut self, mut k: Kubernetes) {
        self.compiler.set_follow_status(!k.is_leader());
        self.status = k.take_reporter();
        self.kube = Some(k);
    }

    /// Publishes to the workers: `snapshots` (one per worker) and worker 0's `commands` for
    /// announcing VIPs and resolving next hops.
    pub fn attach_workers(
        &mut self,
        snapshots: Vec<Sender<Arc<Snapshot>>>,
        commands: Option<Sender<Command>>,
    ) {
        self.snap_tx = snapshots;
        self.announce = Announcer::new(&self.cfg, commands);
    }

    /// Where routed mode's announcement changes go as Events (Kubernetes source only).
    pub(super) fn host_events(&self) -> Option<crate::sources::kubernetes::HostEvents> {
        self.status.as_ref().map(StatusReporter::host_events)
    }

    /// Announces over BGP too (routed mode), once the workers run what is announced.
    pub(super) fn attach_bgp(&mut self, bgp: Routed) {
        self.bgp = Some(bgp);
        if let (Some(b), Some(r)) = (&mut self.bgp, &self.last) {
            b.report(&self.cfg, r);
        }
    }

    /// L2 mode: owns only the VIPs that rendezvous hashing gives this host among the live
    /// ones, once the workers run.
    pub(super) fn attach_l2(&mut self, mut l2: L2) {
        if !self.snap_tx.is_empty() {
            l2.set_workers_run();
        }
        self.l2 = Some(l2);
    }

    /// With `[l2]` and `[sync]`: each host's NAT addresses (this host's and its sync peers')
    /// and the host they belong to; empty otherwise.
    fn nat_hosts(&self) -> BTreeMap<IpAddr, String> {
        let (Some(l2), Some(y)) = (&self.l2, &self.cfg.sync) else {
            return BTreeMap::new();
        };
        let own = self
            .cfg
            .nat
            .addresses
            .iter()
            .map(|a| (*a, l2.host().to_owned()));
        let peers = y
            .peers
            .iter()
            .flat_map(|p| p.nat_addresses.iter().map(|a| (*a, p.name.clone())));
        own.chain(peers).collect()
    }

    /// Refreshes the admin API's view of L2 mode (peers' heartbeat ages).
    pub(super) fn refresh_l2_view(&self) {
        if let (Some(a), Some(l)) = (&self.admin, &self.l2) {
            a.set_l2(l.view());
        }
    }

    /// SIGTERM/SIGINT: withdraws every BGP announcement and returns how long to keep
    /// forwarding before stopping (`None` without `[bgp]`: stop now).
    pub(super) fn begin_stop(&mut self) -> Option<std::time::Duration> {
        self.bgp.as_mut().map(Routed::begin_stop)
    }

    /// Publishes to the admin API's view too.
    pub fn attach_admin(&mut self, admin: Arc<AdminState>) {
        admin.set_overrides(&self.drained, &self.weights);
        self.admin = Some(admin);
    }

    /// The report of the last published snapshot.
    pub fn last_report(&self) -> Option<&CompileReport> {
        self.last.as_ref()
    }

    /// Compiles the current inputs with the given health states.
    ///
    /// # Errors
    /// [`CompileError`]: the configuration has no port, or (a bug) the snapshot is invalid.
    pub fn compile(
        &mut self,
        health: &HashMap<ProbeTarget, Health>,
    ) -> Result<Compiled, CompileError> {
        self.compiler.compile(&CompileInput {
            config: &self.cfg,
            model: &self.model,
            local_mac: self.mac,
            neighbours: &self.neighbours,
            health,
            drained: &self.drained,
            weights: &self.weights,
            now: Instant::now(),
        })
    }

    /// Recompiles and, when the dataplane would see a change, publishes the snapshot to every
    /// worker, the admin view and the status writer; then probes the new health targets,
    /// announces new VIPs and asks for unresolved next hops. `why` goes to the log.
    pub fn compile_and_publish(&mut self, why: &str) {
        let health = self.health.states();
        let t_compile = Instant::now();
        let compiled = self.compile(&health);
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
        for r in &report.maglev_resized {
            info!(
                frontend = %r.name,
                old = r.old,
                new = r.new,
                backends = r.backends,
                "Maglev table resized: the frontend's new flows are remapped (established flows keep their backend)"
            );
        }
        if let Some(a) = &self.admin {
            a.maglev_resized(report.maglev_resized.len());
        }
        let vips: BTreeSet<IpAddr> = report
            .services
            .iter()
            .flat_map(|s| s.vips.iter().copied())
            .collect();
        // L2 mode with flow sync: every host's NAT addresses are owned like VIPs, by their own
        // host while it lives and by a survivor (which holds its synced flows) when it is gone.
        let nat_hosts = self.nat_hosts();
        let owned = match &mut self.l2 {
            Some(l2) => {
                let can_serve = crate::l2::eligibility(&self.model, &report);
                let live = l2.live();
                let addrs: BTreeSet<IpAddr> =
                    vips.iter().chain(nat_hosts.keys()).copied().collect();
                l2.assign(&addrs, |v, h| match nat_hosts.get(&v) {
                    Some(o) if live.contains(o) => o == h,
                    Some(_) => true,
                    None => can_serve.get(&v).is_none_or(|s| s.contains(h)),
                })
            }
            None => vips.clone(),
        };
        let peer_nat_owned: Vec<IpAddr> = owned
            .iter()
            .filter(|a| {
                nat_hosts
                    .get(a)
                    .is_some_and(|o| Some(o.as_str()) != self.l2.as_ref().map(L2::host))
            })
            .copied()
            .collect();
        let owned_changed = owned != *self.announce.announced();
        if let (Some(l2), Some(events)) = (&self.l2, self.host_events()) {
            let gained: BTreeSet<IpAddr> = owned
                .difference(self.announce.announced())
                .copied()
                .collect();
            for ev in l2.announced_events(&gained, &report) {
                events.send(ev);
            }
        }
        if !owned_changed && self.last.as_ref().is_some_and(|l| same_config(l, &report)) {
            return; // nothing the dataplane would see changed
        }
        let mut snapshot = compiled.snapshot;
        snapshot.set_l2_silent(vips.difference(&owned).copied());
        snapshot.answer_peer_nat(peer_nat_owned);
        let snap = Arc::new(snapshot);
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
        let problems: Vec<(String, String)> = report
            .services
            .iter()
            .flat_map(|s| {
                s.problems
                    .iter()
                    .map(|p| (s.service.to_string(), p.clone()))
            })
            .chain(report.problems.iter().map(|p| (String::new(), p.clone())))
            .collect();
        self.problems.update(Instant::now(), &problems);
        self.health
            .set_targets(report.health_targets.iter().cloned());
        self.announce.vips(owned);
        self.refresh_l2_view();
        self.announce.resolve(&report.unresolved);
        if let Some(b) = &mut self.bgp {
            b.report(&self.cfg, &report);
        }
        self.last = Some(report);
        self.last_publish = Instant::now();
    }

    /// Carries out a write from the admin API and answers it.
    pub fn admin_request(&mut self, req: ControlRequest) {
        match req {
            ControlRequest::Backend { addr, op, reply } => {
                let r = op.apply(
                    addr,
                    self.last.as_ref(),
                    &mut self.drained,
                    &mut self.weights,
                );
                let r = r.map(|backends| {
                    self.save_overrides();
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
                    match manifest::load_dir(&self.manifest_dir) {
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
            ControlRequest::Host { drain, reply } => {
                let Some(b) = &mut self.bgp else {
                    let _ = reply.send(Err(admin::ApiError::conflict(
                        "routed mode is off (no [bgp] section in the configuration): this host \
                         announces nothing over BGP, so there is nothing to drain",
                    )));
                    return;
                };
                let applied = b.set_drained(drain, &self.cfg, self.last.as_ref());
                let view = self.admin.clone();
                tokio::spawn(async move {
                    applied.await;
                    let doc = view.map(|a| a.bgp().doc).unwrap_or_default();
                    let _ = reply.send(Ok(doc));
                });
            }
        }
    }
}

/// Two reports that would give the dataplane the same snapshot.
fn same_config(a: &CompileReport, b: &CompileReport) -> bool {
    a.services == b.services && a.problems == b.problems && a.unresolved == b.unresolved
}
