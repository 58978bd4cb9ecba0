//! # Writing Service status and Events
//!
//! The leader (see [`super::lease`]) writes what the compiler decided back to the cluster:
//!
//! - **Status.** `status.loadBalancer.ingress` of every served Service: one entry per VIP with
//!   `ipMode: VIP` (traffic reaches the nodes with the VIP as destination, so kube-proxy keeps
//!   its own rules for it), and `ports` only when some Service port is not served on that VIP
//!   (each then has an entry, the unserved ones with an `error`); and up to three conditions,
//!   [`CONDITION_IP_ALLOCATED`] (false with the IPAM reason while an address is missing),
//!   [`CONDITION_BACKENDS_READY`] (false while no backend takes traffic) and
//!   [`CONDITION_MAGLEV_SIZE`] (the size of each automatically sized Maglev table, which every
//!   host reads back so that all keep the same size: the hysteresis of
//!   [`sluice_dataplane::maglev::sticky_size`] needs one shared record), whose
//!   `lastTransitionTime` only moves when their status does. It is written with server-side
//!   apply on the `status` subresource, with the fixed field manager [`super::FIELD_MANAGER`]
//!   and `force`, so Sluice owns exactly those fields and nothing else. A pending Service gets
//!   an empty ingress list. Nothing is written when the cluster already shows the decision.
//!   When Sluice stops serving a Service that still exists (type or class changed), it applies
//!   an empty status with the same field manager, which removes every field Sluice owned
//!   (its conditions, and the ingress unless another controller has written it since).
//!   Writes go out with bounded concurrency; failures are retried every second, and every 10 s
//!   the whole set is compared again with what the watch shows. A write that finds the Service
//!   deleted (`404`) is not an error and is not retried.
//! - **Events** (`events.k8s.io/v1`, through [`super::events`], which folds repeats into a
//!   series whose message is the latest one) answer the lecture's troubleshooting list: `IPAllocated` when status gets new
//!   addresses; the IPAM reasons of [`crate::compile::ipam::IssueReason`] (`PoolExhausted`,
//!   `RequestedIPUnavailable`, `RequestedIPOutsidePools`, ...) when an address cannot be given;
//!   `NoReadyBackends` / `BackendsReady` when a Service's last backend goes and comes back;
//!   `BackendDown` when a health check takes a backend down; `InvalidService` and
//!   `InvalidEndpointSlice` when an object cannot be used. Events are emitted on transitions
//!   only, at most 50 per second (more are dropped and counted in the log). The Events of a
//!   change go out after that change's status write, and not at all when the write finds the
//!   Service deleted: a Service deleted right after its EndpointSlices gets no
//!   `NoReadyBackends`.
//!
//! - **BGP Events** (`BGPAnnounced` / `BGPWithdrawn`) come from the daemon's routed mode
//!   through [`HostEvents`]. Unlike the rest they are facts about one host, so every instance
//!   records its own, leader or not (see docs/kubernetes.md, "Several Sluice hosts").
//!
//! A follower keeps the latest decisions but writes nothing else; when it becomes the leader it
//! compares everything with the cluster at once and records the problems currently in effect.
//! A Service the follower's compile left waiting for the leader (no VIP in status yet) is not
//! written until the leader's own compile has decided about it, so the reason status shows
//! (say `RequestedIPOutsidePools`) is never replaced by a placeholder in between. A decision
//! that the watch seems to show already is still written when a different one went out less
//! than 5 s before, because the watch may not show that write yet.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event as KEvent, EventType};
use kube::Client;
use serde_json::json;
use sluice_dataplane::snapshot::BackendState;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::events::EventRecorder;
use super::source::{ConditionEntry, IngressEntry, Invalid, Kind, MetaMap};
use crate::compile::ipam::{Issue, IssueReason};
use crate::compile::{CompileReport, ServiceReport};
use crate::config::PoolConfig;
use crate::logs::{Repeats, Verdict, FAILURE_REMINDER};
use crate::model::{L4Protocol, MaglevSizes, ObjectKey, CONDITION_MAGLEV_SIZE};

/// Condition: whether the Service has its VIPs (`False` with the IPAM reason when not).
pub const CONDITION_IP_ALLOCATED: &str = "sluice.dev/IPAllocated";
/// Condition: whether a backend takes the Service's traffic (set once it has a VIP).
pub const CONDITION_BACKENDS_READY: &str = "sluice.dev/BackendsReady";

/// How many status writes are in flight at once.
const CONCURRENCY: usize = 16;
/// Events per second at most.
const EVENTS_PER_SECOND: u64 = 50;

/// What the writer knows about one served Service from the compile report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct View {
    vips: Vec<IpAddr>,
    /// Per VIP, the (protocol, port) pairs that have a frontend.
    served: BTreeMap<IpAddr, BTreeSet<(L4Protocol, u16)>>,
    issues: Vec<Issue>,
    /// Set when the Service has VIPs but no active backend: the problems that say why.
    no_ready: Option<String>,
    /// Backends a health check took down, with the reason.
    down: BTreeMap<SocketAddr, String>,
    /// The sizes of the automatically sized Maglev tables, recorded in
    /// [`CONDITION_MAGLEV_SIZE`].
    maglev: MaglevSizes,
}

impl View {
    fn of(s: &ServiceReport) -> View {
        let mut served: BTreeMap<IpAddr, BTreeSet<(L4Protocol, u16)>> = BTreeMap::new();
        let mut down = BTreeMap::new();
        let mut any_active = false;
        let mut maglev = MaglevSizes::default();
        for f in &s.frontends {
            served
                .entry(f.vip)
                .or_default()
                .insert((f.protocol, f.port));
            if f.maglev_auto {
                maglev.0.insert((f.vip, f.protocol, f.port), f.maglev_size);
            }
            for b in &f.backends {
                match b.state {
                    BackendState::Active => any_active = true,
                    BackendState::Down => {
                        down.insert(
                            SocketAddr::new(b.addr, b.port),
                            b.reason
                                .clone()
                                .unwrap_or_else(|| "health check failing".into()),
                        );
                    }
                    BackendState::Draining => {}
                }
            }
        }
        let no_ready = (!s.vips.is_empty() && !s.frontends.is_empty() && !any_active).then(|| {
            let why: Vec<&str> = s
                .problems
                .iter()
                .filter(|p| !s.issues.iter().any(|i| &i.message == *p))
                .map(String::as_str)
                .collect();
            if why.is_empty() {
                "no backend is active".to_owned()
            } else {
                why.join("; ")
            }
        });
        View {
            vips: s.vips.clone(),
            served,
            issues: s.issues.clone(),
            no_ready,
            down,
            maglev,
        }
    }

    /// Whether this view was compiled by a follower for a Service status gives no VIP yet:
    /// it says nothing about what the leader decides, so it is never written.
    fn awaits_leader(&self) -> bool {
        self.issues
            .iter()
            .any(|i| i.reason == IssueReason::AwaitingLeader)
    }

    /// The `status.loadBalancer.ingress` this view asks for, given the Service's ports.
    fn ingress(&self, ports: &[(L4Protocol, u16)]) -> Vec<IngressEntry> {
        self.vips
            .iter()
            .map(|vip| {
                let served = self.served.get(vip);
                let all = ports.iter().all(|p| served.is_some_and(|s| s.contains(p)));
                let ports = if all {
                    Vec::new()
                } else {
                    ports
                        .iter()
                        .map(|p @ (proto, port)| {
                            let error = if served.is_some_and(|s| s.contains(p)) {
                                None
                            } else if *proto == L4Protocol::Sctp {
                                Some("ProtocolNotSupported".to_owned())
                            } else {
                                Some("NotServed".to_owned())
                            };
                            (i32::from(*port), proto.name().to_owned(), error)
                        })
                        .collect()
                };
                IngressEntry {
                    ip: vip.to_string(),
                    ip_mode: Some("VIP".to_owned()),
                    ports,
                }
            })
            .collect()
    }
}

/// What `status` should say about one Service: ingress and Sluice's conditions (without
/// `lastTransitionTime`, which is filled in when writing).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Desired {
    ingress: Vec<IngressEntry>,
    conditions: Vec<ConditionEntry>,
    /// Sluice no longer serves the Service: give up every field it wrote (an apply of nothing).
    release: bool,
}

/// `lastTransitionTime` now, in whole seconds.
fn now_rfc3339() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

fn cap(mut s: String) -> String {
    if s.len() > 1000 {
        let mut cut = 1000;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// The IP-address label used in messages: `10.99.0.100 (pool lab)`.
fn with_pool(ip: &str, pools: &[PoolConfig]) -> String {
    let pool = ip
        .parse::<IpAddr>()
        .ok()
        .and_then(|ip| pools.iter().find(|p| p.contains(ip)))
        .map(|p| format!(" (pool {})", p.name))
        .unwrap_or_default();
    format!("{ip}{pool}")
}

impl View {
    /// Sluice's conditions for this view, sorted by type.
    fn conditions(&self, pools: &[PoolConfig]) -> Vec<ConditionEntry> {
        let cond = |t: &str, ok: bool, reason: &str, message: String| ConditionEntry {
            type_: t.to_owned(),
            status: if ok { "True" } else { "False" }.to_owned(),
            reason: reason.to_owned(),
            message: cap(message),
            last_transition: None,
        };
        let mut out = Vec::new();
        if !self.vips.is_empty() {
            out.push(match &self.no_ready {
                Some(why) => cond(
                    CONDITION_BACKENDS_READY,
                    false,
                    "NoReadyBackends",
                    why.clone(),
                ),
                None => cond(
                    CONDITION_BACKENDS_READY,
                    true,
                    "BackendsActive",
                    "at least one backend takes traffic".to_owned(),
                ),
            });
        }
        let problems: Vec<&Issue> = self
            .issues
            .iter()
            .filter(|i| !suppressed(i.reason))
            .collect();
        out.push(if let Some(first) = problems.first() {
            let msg: Vec<&str> = problems.iter().map(|i| i.message.as_str()).collect();
            cond(
                CONDITION_IP_ALLOCATED,
                false,
                first.reason.as_str(),
                msg.join("; "),
            )
        } else if self.vips.is_empty() {
            cond(
                CONDITION_IP_ALLOCATED,
                false,
                "Pending",
                "no address assigned yet".to_owned(),
            )
        } else {
            let what: Vec<String> = self
                .vips
                .iter()
                .map(|v| with_pool(&v.to_string(), pools))
                .collect();
            cond(CONDITION_IP_ALLOCATED, true, "Allocated", what.join(", "))
        });
        if !self.maglev.0.is_empty() {
            out.push(cond(
                CONDITION_MAGLEV_SIZE,
                true,
                "AutoSized",
                self.maglev.to_string(),
            ));
        }
        out.sort();
        out
    }
}

fn same_conditions(a: &[ConditionEntry], b: &[ConditionEntry]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same(y))
}

/// Messages to the writer task.
#[derive(Debug)]
pub(crate) enum WriterMsg {
    /// New views for some Services, and Services that are no longer served.
    Views {
        upsert: Vec<(ObjectKey, View)>,
        removed: Vec<ObjectKey>,
    },
    /// An object that could not be converted.
    Invalid(Invalid),
    /// A fact about this host (recorded whether or not it leads).
    Host(HostEvent),
}

/// A fact about this host and one Service, as an Event to record: a change of what the host
/// announces for it (over BGP in routed mode, or as the owner of a VIP in L2 mode), or of its
/// SYN proxy's automatic mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEvent {
    /// The Service.
    pub service: ObjectKey,
    /// `BGPAnnounced`, `BGPWithdrawn`, `L2Announced`, `SYNProxyEngaged` or
    /// `SYNProxyDisengaged`.
    pub reason: &'static str,
    /// A `Warning` Event (else `Normal`).
    pub warning: bool,
    /// The Event's action: `Announce`, or `Withdraw` with the cause (`WithdrawNoReadyBackend`,
    /// `WithdrawDrained`, `WithdrawStopping`), so that causes fold into separate series.
    pub action: &'static str,
    /// The message: VIPs, host and peers.
    pub note: String,
}

/// An Event of type `t` with `reason`, `action` and `note`, about no second object.
fn kevent(t: EventType, reason: &str, action: &str, note: String) -> KEvent {
    KEvent {
        type_: t,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    }
}

/// Hands [`HostEvent`]s to the status writer; cheap to clone.
#[derive(Debug, Clone)]
pub struct HostEvents {
    tx: mpsc::UnboundedSender<WriterMsg>,
}

impl HostEvents {
    /// Queues `ev` for the writer (dropped if the writer stopped).
    pub fn send(&self, ev: HostEvent) {
        let _ = self.tx.send(WriterMsg::Host(ev));
    }
}

/// The daemon side of the writer: turns compile reports into [`WriterMsg`]s.
#[derive(Debug)]
pub struct StatusReporter {
    tx: mpsc::UnboundedSender<WriterMsg>,
    /// The last report's Services, sorted by key.
    last: Vec<Arc<ServiceReport>>,
}

impl StatusReporter {
    pub(crate) fn new(tx: mpsc::UnboundedSender<WriterMsg>) -> Self {
        StatusReporter {
            tx,
            last: Vec::new(),
        }
    }

    /// A handle for the routed mode's [`HostEvent`]s, to the same writer.
    pub fn host_events(&self) -> HostEvents {
        HostEvents {
            tx: self.tx.clone(),
        }
    }

    /// Hands a compile report to the writer. Cheap: a Service whose report is the same `Arc`
    /// as last time (the compiler reused it) is skipped without looking inside; a re-examined
    /// one is sent even if equal, so the writer compares it with the cluster again.
    pub fn report(&mut self, report: &CompileReport) {
        let mut upsert = Vec::new();
        let mut removed = Vec::new();
        let (old, new) = (&self.last, &report.services);
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            let ord = match (old.get(i), new.get(j)) {
                (Some(o), Some(n)) => o.service.cmp(&n.service),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match ord {
                std::cmp::Ordering::Less => {
                    removed.push(old[i].service.clone());
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    upsert.push((new[j].service.clone(), View::of(&new[j])));
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    if !Arc::ptr_eq(&old[i], &new[j]) {
                        upsert.push((new[j].service.clone(), View::of(&new[j])));
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        self.last = report.services.clone();
        if !upsert.is_empty() || !removed.is_empty() {
            let _ = self.tx.send(WriterMsg::Views { upsert, removed });
        }
    }
}

/// Settings of the writer.
#[derive(Debug, Clone)]
pub(crate) struct WriterSettings {
    pub field_manager: String,
    pub reporter: String,
    pub instance: String,
    pub pools: Vec<PoolConfig>,
}

struct Writer {
    client: Client,
    s: WriterSettings,
    meta: MetaMap,
    views: HashMap<ObjectKey, View>,
    /// What was last written and when.
    applied: HashMap<ObjectKey, (Desired, Instant)>,
    dirty: BTreeSet<ObjectKey>,
    failed: BTreeSet<ObjectKey>,
    leader: bool,
    events: mpsc::Sender<(ObjectReference, KEvent)>,
    dropped_events: u64,
    /// Invalid objects seen while following, per Service.
    invalid: HashMap<ObjectKey, Invalid>,
    /// Events of the latest changes, recorded once their Service's status is written.
    held: Vec<(ObjectKey, KEvent)>,
    /// Services whose status write found them deleted (`404`).
    gone: BTreeSet<ObjectKey>,
    /// Whether status writes are failing (for the log).
    failing: Repeats<()>,
}

/// Runs the writer until `rx` closes.
pub(crate) async fn run_writer(
    client: Client,
    s: WriterSettings,
    meta: MetaMap,
    mut rx: mpsc::UnboundedReceiver<WriterMsg>,
    mut invalid: mpsc::UnboundedReceiver<Invalid>,
    mut leader: watch::Receiver<bool>,
) {
    let (etx, erx) = mpsc::channel(1024);
    let recorder = EventRecorder::new(client.clone(), s.reporter.clone(), s.instance.clone());
    let publisher = tokio::spawn(publish_events(recorder, erx));
    let mut w = Writer {
        client,
        s,
        meta,
        views: HashMap::new(),
        applied: HashMap::new(),
        dirty: BTreeSet::new(),
        failed: BTreeSet::new(),
        leader: *leader.borrow_and_update(),
        events: etx,
        dropped_events: 0,
        invalid: HashMap::new(),
        held: Vec::new(),
        gone: BTreeSet::new(),
        failing: Repeats::new(FAILURE_REMINDER),
    };
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    let mut resync = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(m) => w.handle(m),
                None => break,
            },
            Some(i) = invalid.recv() => w.handle(WriterMsg::Invalid(i)),
            r = leader.changed() => {
                if r.is_err() {
                    break;
                }
                let l = *leader.borrow_and_update();
                if l && !w.leader {
                    w.leader = true;
                    w.on_lead();
                } else if !l && w.leader {
                    w.leader = false;
                    w.applied.clear();
                    w.failed.clear();
                }
            }
            _ = retry.tick() => {
                let failed = std::mem::take(&mut w.failed);
                w.dirty.extend(failed);
                if w.dropped_events > 0 {
                    warn!(dropped = w.dropped_events, "Events dropped (more than {EVENTS_PER_SECOND}/s)");
                    w.dropped_events = 0;
                }
            }
            _ = resync.tick() => {
                let keys: Vec<ObjectKey> = w.views.keys().cloned().collect();
                w.dirty.extend(keys);
                w.dirty.extend(w.leftovers());
            }
        }
        // Take everything that queued up before writing.
        while let Ok(m) = rx.try_recv() {
            w.handle(m);
        }
        if w.leader && !w.dirty.is_empty() {
            w.reconcile().await;
        } else if !w.leader {
            w.dirty.clear();
        }
        w.release_events();
    }
    drop(w);
    let _ = publisher.await;
}

async fn publish_events(
    mut recorder: EventRecorder,
    mut rx: mpsc::Receiver<(ObjectReference, KEvent)>,
) {
    let pace = Duration::from_millis(1000 / EVENTS_PER_SECOND);
    let mut failing: Repeats<()> = Repeats::new(FAILURE_REMINDER);
    while let Some((r, ev)) = rx.recv().await {
        let now = std::time::Instant::now();
        match recorder.publish(&ev, &r).await {
            Ok(()) => {
                if let Some(e) = failing.end(&(), now) {
                    info!(failed = e.occurrences, "recording Events works again");
                }
            }
            Err(e) => match failing.hit(&(), now) {
                Verdict::First => {
                    warn!(error = %e, reason = %ev.reason, service = ?r.name, "could not record an Event")
                }
                Verdict::Reminder { unlogged, lasting } => {
                    warn!(error = %e, reason = %ev.reason, service = ?r.name, failed_since_last_line = unlogged + 1, failing_for_s = lasting.as_secs(), "still cannot record Events")
                }
                Verdict::Quiet => {
                    debug!(error = %e, reason = %ev.reason, service = ?r.name, "could not record an Event")
                }
            },
        }
        tokio::time::sleep(pace).await;
    }
}

fn suppressed(r: IssueReason) -> bool {
    matches!(r, IssueReason::AwaitingLeader | IssueReason::StatusMismatch)
}

impl Writer {
    fn handle(&mut self, m: WriterMsg) {
        match m {
            WriterMsg::Views { upsert, removed } => {
                for k in removed {
                    self.views.remove(&k);
                    self.applied.remove(&k);
                    // Still there but no longer Sluice's: what Sluice wrote goes.
                    self.dirty.insert(k);
                }
                for (k, v) in upsert {
                    let old = self.views.insert(k.clone(), v.clone()).unwrap_or_default();
                    if self.leader && old != v {
                        self.transition_events(&k, &old, &v);
                    }
                    self.dirty.insert(k);
                }
            }
            WriterMsg::Invalid(i) => {
                let Some(svc) = i.service.clone() else { return };
                if !self.leader {
                    // Recorded when this instance becomes the leader (latest per Service).
                    self.invalid.insert(svc, i);
                    return;
                }
                let reason = match i.kind {
                    Kind::Service => "InvalidService",
                    Kind::EndpointSlice => "InvalidEndpointSlice",
                    Kind::Node => return,
                };
                let note = format!(
                    "{} {}: {}; Sluice keeps using the last valid version",
                    i.kind.name(),
                    i.key,
                    i.error
                );
                self.event(&svc, EventType::Warning, reason, "Watch", note);
            }
            // Every host records its own: what it announces is not the leader's to say.
            WriterMsg::Host(ev) => {
                self.event(
                    &ev.service,
                    if ev.warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    ev.reason,
                    ev.action,
                    ev.note,
                );
            }
        }
    }

    /// Events for the change from `old` to `new` of one Service.
    fn transition_events(&mut self, k: &ObjectKey, old: &View, new: &View) {
        for i in &new.issues {
            if !suppressed(i.reason) && !old.issues.contains(i) {
                self.hold(
                    k,
                    EventType::Warning,
                    i.reason.as_str(),
                    "AllocateIP",
                    i.message.clone(),
                );
            }
        }
        match (&old.no_ready, &new.no_ready) {
            (None, Some(why)) => self.hold(
                k,
                EventType::Warning,
                "NoReadyBackends",
                "Forward",
                format!("no backend can take traffic: {why}"),
            ),
            (Some(_), None) if !new.vips.is_empty() => self.hold(
                k,
                EventType::Normal,
                "BackendsReady",
                "Forward",
                "backends are active again".to_owned(),
            ),
            _ => {}
        }
        let newly_down: Vec<(SocketAddr, String)> = new
            .down
            .iter()
            .filter(|(a, _)| !old.down.contains_key(a))
            .map(|(a, r)| (*a, r.clone()))
            .collect();
        for (a, r) in newly_down {
            self.hold(
                k,
                EventType::Warning,
                "BackendDown",
                "HealthCheck",
                format!("backend {a} marked down: {r}; it gets no new connections"),
            );
        }
    }

    /// Services Sluice no longer serves whose status still shows what it wrote.
    fn leftovers(&self) -> Vec<ObjectKey> {
        let meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
        meta.iter()
            .filter(|(k, m)| m.is_leftover() && !self.views.contains_key(*k))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// On becoming the leader: compare everything, and record the problems in effect.
    fn on_lead(&mut self) {
        self.dirty.extend(self.views.keys().cloned());
        self.dirty.extend(self.leftovers());
        let invalid: Vec<Invalid> = self.invalid.drain().map(|(_, i)| i).collect();
        for i in invalid {
            self.handle(WriterMsg::Invalid(i));
        }
        let pending: Vec<(ObjectKey, Issue)> = self
            .views
            .iter()
            .flat_map(|(k, v)| {
                v.issues
                    .iter()
                    .filter(|i| !suppressed(i.reason))
                    .map(move |i| (k.clone(), i.clone()))
            })
            .collect();
        for (k, i) in pending {
            self.hold(
                &k,
                EventType::Warning,
                i.reason.as_str(),
                "AllocateIP",
                i.message,
            );
        }
    }

    /// Holds an Event about a change until the change's status write is done (see
    /// [`Writer::release_events`]).
    fn hold(&mut self, k: &ObjectKey, t: EventType, reason: &str, action: &str, note: String) {
        self.held.push((k.clone(), kevent(t, reason, action, note)));
    }

    /// Records the held Events, except those of Services that turned out to be deleted: a
    /// Service deleted right after its backends went gets no `NoReadyBackends`.
    fn release_events(&mut self) {
        let gone = std::mem::take(&mut self.gone);
        for (k, ev) in std::mem::take(&mut self.held) {
            if self.leader && !gone.contains(&k) {
                self.record(&k, ev);
            }
        }
    }

    fn event(&mut self, k: &ObjectKey, t: EventType, reason: &str, action: &str, note: String) {
        self.record(k, kevent(t, reason, action, note));
    }

    /// Sends Event `ev` about Service `k` to the recorder (its note cut to 1,000 bytes).
    fn record(&mut self, k: &ObjectKey, mut ev: KEvent) {
        let uid = {
            let m = self.meta.lock().unwrap_or_else(|e| e.into_inner());
            match m.get(k) {
                Some(sm) => sm.uid.clone(),
                None => return,
            }
        };
        let r = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            name: Some(k.name.clone()),
            namespace: Some(k.namespace.clone()),
            uid,
            ..ObjectReference::default()
        };
        if let Some(note) = ev.note.as_mut().filter(|n| n.len() > 1000) {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        if self.events.try_send((r, ev)).is_err() {
            self.dropped_events += 1;
        }
    }

    async fn reconcile(&mut self) {
        let keys = std::mem::take(&mut self.dirty);
        let mut todo: Vec<(ObjectKey, Desired, Vec<IngressEntry>)> = Vec::new();
        {
            let meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
            for k in keys {
                let Some(m) = meta.get(&k) else { continue };
                let Some(v) = self.views.get(&k) else {
                    let release = Desired {
                        ingress: Vec::new(),
                        conditions: Vec::new(),
                        release: true,
                    };
                    let sent = self.applied.get(&k).is_some_and(|(d, at)| {
                        *d == release && at.elapsed() < Duration::from_secs(5)
                    });
                    if m.is_leftover() && !sent {
                        todo.push((k, release, m.ingress.clone()));
                    }
                    continue;
                };
                if v.awaits_leader() {
                    // Compiled while following: not a decision. The leader's compile follows.
                    continue;
                }
                let want = Desired {
                    ingress: v.ingress(&m.ports),
                    conditions: v.conditions(&self.s.pools),
                    release: false,
                };
                let recent = self
                    .applied
                    .get(&k)
                    .filter(|(_, at)| at.elapsed() < Duration::from_secs(5));
                let shown =
                    m.ingress == want.ingress && same_conditions(&m.conditions, &want.conditions);
                match recent {
                    // Written; the watch has not shown it yet.
                    Some((sent, _)) if *sent == want => continue,
                    // Something else was written a moment ago and the watch may not show it
                    // yet: what it shows proves nothing, so write.
                    Some(_) => {}
                    None if shown => {
                        self.applied.insert(k, (want, Instant::now()));
                        continue;
                    }
                    None => {}
                }
                // A condition keeps its lastTransitionTime while its status stays.
                let mut write = want.clone();
                for c in &mut write.conditions {
                    c.last_transition = m
                        .conditions
                        .iter()
                        .find(|o| o.type_ == c.type_ && o.status == c.status)
                        .and_then(|o| o.last_transition.clone())
                        .or_else(|| Some(now_rfc3339()));
                }
                todo.push((k, write, m.ingress.clone()));
            }
        }
        if todo.is_empty() {
            return;
        }
        let fm = self.s.field_manager.clone();
        let client = self.client.clone();
        let results: Vec<_> = futures::stream::iter(todo)
            .map(|(k, want, had)| {
                let client = client.clone();
                let fm = fm.clone();
                async move {
                    let r = write_status(&client, &fm, &k, &want).await;
                    (k, want, had, r)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut failures: Vec<(ObjectKey, kube::Error)> = Vec::new();
        for (k, mut want, had, r) in results {
            match r {
                Ok(()) if want.release => {
                    info!(service = %k, "no longer served: removed the status Sluice wrote");
                    self.applied.insert(k, (want, Instant::now()));
                }
                Ok(()) => {
                    debug!(service = %k, ingress = ?want.ingress, "status written");
                    let had_ips: BTreeSet<&str> = had.iter().map(|e| e.ip.as_str()).collect();
                    let what: Vec<String> = want
                        .ingress
                        .iter()
                        .filter(|e| !had_ips.contains(e.ip.as_str()))
                        .map(|e| with_pool(&e.ip, &self.s.pools))
                        .collect();
                    if !what.is_empty() {
                        info!(service = %k, vips = %what.join(", "), "VIP assigned");
                        self.event(
                            &k,
                            EventType::Normal,
                            "IPAllocated",
                            "AllocateIP",
                            format!("Assigned load balancer IP {}", what.join(", ")),
                        );
                    }
                    for c in &mut want.conditions {
                        c.last_transition = None;
                    }
                    self.applied.insert(k, (want, Instant::now()));
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    debug!(service = %k, "the Service was deleted before its status was written");
                    self.applied.remove(&k);
                    self.gone.insert(k);
                }
                Err(e) => {
                    self.failed.insert(k.clone());
                    failures.push((k, e));
                }
            }
        }
        let now = std::time::Instant::now();
        match failures.first() {
            None => {
                if let Some(e) = self.failing.end(&(), now) {
                    info!(
                        rounds = e.occurrences,
                        failed_for_ms = e.lasted.as_millis() as u64,
                        "status writes work again"
                    );
                }
            }
            Some((k, e)) => match self.failing.hit(&(), now) {
                Verdict::First => {
                    warn!(services = failures.len(), first = %k, error = %e, "could not write status.loadBalancer; retrying every second");
                }
                Verdict::Reminder { unlogged, lasting } => {
                    warn!(services = failures.len(), first = %k, error = %e, rounds_since_last_line = unlogged + 1, failing_for_s = lasting.as_secs(), "status writes still failing; retrying every second");
                }
                Verdict::Quiet => {
                    debug!(services = failures.len(), first = %k, error = %e, "status writes failed");
                }
            },
        }
    }
}

/// Server-side apply of `status.loadBalancer` and Sluice's `status.conditions` on the status
/// subresource; for a released Service, an apply of no field, which removes every field the
/// field manager owned and nobody else does.
async fn write_status(
    client: &Client,
    field_manager: &str,
    k: &ObjectKey,
    want: &Desired,
) -> Result<(), kube::Error> {
    let api: Api<corev1::Service> = Api::namespaced(client.clone(), &k.namespace);
    let pp = PatchParams::apply(field_manager).force();
    if want.release {
        let patch = json!({"apiVersion": "v1", "kind": "Service", "status": {}});
        return api
            .patch_status(&k.name, &pp, &Patch::Apply(&patch))
            .await
            .map(|_| ());
    }
    let ingress: Vec<serde_json::Value> = want
        .ingress
        .iter()
        .map(|e| {
            let mut v = json!({"ip": e.ip});
            if let Some(m) = &e.ip_mode {
                v["ipMode"] = json!(m);
            }
            if !e.ports.is_empty() {
                v["ports"] = e
                    .ports
                    .iter()
                    .map(|(port, protocol, error)| {
                        let mut p = json!({"port": port, "protocol": protocol});
                        if let Some(err) = error {
                            p["error"] = json!(err);
                        }
                        p
                    })
                    .collect();
            }
            v
        })
        .collect();
    let conditions: Vec<serde_json::Value> = want
        .conditions
        .iter()
        .map(|c| {
            json!({
                "type": c.type_,
                "status": c.status,
                "reason": c.reason,
                "message": c.message,
                "lastTransitionTime": c.last_transition,
            })
        })
        .collect();
    let patch = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "status": {"loadBalancer": {"ingress": ingress}, "conditions": conditions},
    });
    api.patch_status(&k.name, &pp, &Patch::Apply(&patch))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{BackendReport, FrontendReport};
    use crate::config::Target;
    use sluice_dataplane::snapshot::Method;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn fe(vip: &str, port: u16, states: &[BackendState]) -> FrontendReport {
        FrontendReport {
            id: 0,
            name: "x".into(),
            vip: ip(vip),
            port,
            protocol: L4Protocol::Tcp,
            method: Method::Nat,
            target: Target::Pod,
            affinity_ms: None,
            maglev_size: 251,
            maglev_auto: false,
            backends: states
                .iter()
                .enumerate()
                .map(|(i, st)| BackendReport {
                    id: i as u32,
                    addr: ip(&format!("10.0.0.{}", i + 1)),
                    port: 8080,
                    state: *st,
                    reason: (*st == BackendState::Down).then(|| "health check failing".into()),
                    weight: 1,
                    node: None,
                    next_hop: None,
                    mac: None,
                    health_target: None,
                })
                .collect(),
        }
    }

    fn report(name: &str, vips: &[&str], frontends: Vec<FrontendReport>) -> ServiceReport {
        ServiceReport {
            service: ObjectKey::new("default", name),
            vips: vips.iter().map(|v| ip(v)).collect(),
            frontends,
            problems: vec!["port p80 (IPv4): no ready endpoints".into()],
            issues: vec![],
        }
    }

    #[test]
    fn ingress_lists_ports_only_when_one_is_not_served() {
        let ports = [(L4Protocol::Tcp, 80), (L4Protocol::Sctp, 9)];
        let v = View::of(&report(
            "a",
            &["192.0.2.1"],
            vec![fe("192.0.2.1", 80, &[BackendState::Active])],
        ));
        let ing = v.ingress(&ports);
        assert_eq!(ing.len(), 1);
        assert_eq!(ing[0].ip, "192.0.2.1");
        assert_eq!(ing[0].ip_mode.as_deref(), Some("VIP"));
        assert_eq!(
            ing[0].ports,
            vec![
                (80, "TCP".to_owned(), None),
                (
                    9,
                    "SCTP".to_owned(),
                    Some("ProtocolNotSupported".to_owned())
                )
            ]
        );
        assert!(v.ingress(&ports[..1])[0].ports.is_empty());
        assert!(v.no_ready.is_none());
    }

    #[test]
    fn views_see_no_ready_and_down_backends() {
        let v = View::of(&report(
            "a",
            &["192.0.2.1"],
            vec![fe(
                "192.0.2.1",
                80,
                &[BackendState::Down, BackendState::Draining],
            )],
        ));
        assert!(v
            .no_ready
            .as_deref()
            .unwrap()
            .contains("no ready endpoints"));
        assert_eq!(
            v.down.keys().collect::<Vec<_>>(),
            vec![&"10.0.0.1:8080".parse::<SocketAddr>().unwrap()]
        );
        // Pending (no VIP): not "no ready backends", the IPAM issue says why.
        let v = View::of(&report("b", &[], vec![]));
        assert!(v.no_ready.is_none());
    }

    #[test]
    fn conditions_say_why_an_address_or_a_backend_is_missing() {
        let pools = crate::config::Config::parse(
            "[[ports]]\nname = \"p\"\ndevice = \"net_null0\"\nipv4 = [\"10.0.0.2/24\"]\n\
             [[pools]]\nname = \"lab\"\nranges = [\"192.0.2.1-192.0.2.9\"]\n",
            "t.toml",
        )
        .unwrap()
        .pools;
        let ok = View::of(&report(
            "a",
            &["192.0.2.1"],
            vec![fe("192.0.2.1", 80, &[BackendState::Active])],
        ));
        let c = ok.conditions(&pools);
        let by = |t: &str| c.iter().find(|c| c.type_ == t).unwrap().clone();
        assert_eq!(by(CONDITION_IP_ALLOCATED).status, "True");
        assert_eq!(by(CONDITION_IP_ALLOCATED).message, "192.0.2.1 (pool lab)");
        assert_eq!(by(CONDITION_BACKENDS_READY).reason, "BackendsActive");

        let mut pending = report("b", &[], vec![]);
        pending.issues = vec![Issue {
            reason: IssueReason::PoolExhausted,
            message: "no IPv4 VIP: every pool open to namespace \"default\" is full".into(),
        }];
        let c = View::of(&pending).conditions(&pools);
        assert_eq!(c.len(), 1, "no BackendsReady without an address");
        assert_eq!(
            (c[0].status.as_str(), c[0].reason.as_str()),
            ("False", "PoolExhausted")
        );
        // A follower's "waiting for the leader" is not a reason to write anything.
        pending.issues[0].reason = IssueReason::AwaitingLeader;
        assert_eq!(View::of(&pending).conditions(&pools)[0].reason, "Pending");
    }

    #[test]
    fn the_reporter_sends_only_what_the_compiler_rebuilt() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut r = StatusReporter::new(tx);
        let a = Arc::new(report("a", &["192.0.2.1"], vec![]));
        let b = Arc::new(report("b", &["192.0.2.2"], vec![]));
        let mut rep = CompileReport {
            services: vec![a.clone(), b.clone()],
            ..CompileReport::default()
        };
        r.report(&rep);
        let WriterMsg::Views { upsert, removed } = rx.try_recv().unwrap() else {
            panic!()
        };
        assert_eq!((upsert.len(), removed.len()), (2, 0));
        // Same Arcs: nothing to send.
        r.report(&rep);
        assert!(rx.try_recv().is_err());
        // b rebuilt, a gone, c new.
        let c = Arc::new(report("c", &[], vec![]));
        rep.services = vec![Arc::new((*b).clone()), c];
        r.report(&rep);
        let WriterMsg::Views { upsert, removed } = rx.try_recv().unwrap() else {
            panic!()
        };
        let names: Vec<&str> = upsert.iter().map(|(k, _)| k.name.as_str()).collect();
        assert_eq!(names, vec!["b", "c"]);
        assert_eq!(removed, vec![ObjectKey::new("default", "a")]);
    }
}
