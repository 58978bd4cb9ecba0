//! # Watching Services, EndpointSlices and Nodes
//!
//! One kube-rs watcher per kind, each a small reflector whose store is the daemon's
//! [`Model`]: objects are converted once with the same `from_k8s` functions as the manifest
//! source and sent as [`Change`]s, so the model holds one reduced copy of each object and
//! nothing else holds the full Kubernetes objects.
//!
//! - **Lists and watches** follow kube-rs's watcher: a paginated list, then a watch from its
//!   resourceVersion with bookmarks; transport errors reconnect from the last resourceVersion
//!   (or bookmark) after a [`Backoff`]: 100 ms doubling to at most 3 s, less up to a quarter
//!   at random, and back to 100 ms once an event arrives. A Sluice that lost the API server
//!   is blind, so it asks again soon: after an outage of any length it sees the cluster again
//!   within about 3 s of the API server's return (kube-rs's default, 0.8 s doubling to 30 s,
//!   could wait up to 30 s more; 18 to 34 s were seen after a 10 s outage).
//! - **410 Gone** (history compacted) makes the watcher relist at once, without waiting for
//!   the backoff: nothing is wrong with the API server. The relisted objects are
//!   buffered and sent as one [`Change::Synced`], which replaces that kind in the model in a
//!   single step, so the dataplane keeps serving the old state until the new one is complete.
//! - **Managed fields** are stripped as objects arrive (they can be most of an object's size).
//! - **Services of other classes** (and non-LoadBalancer Services) are never converted: the
//!   model does not hold them, and nothing writes to them. A Service that stops being ours
//!   (type changed) leaves the model, which releases its VIP; its [`ServiceMeta`] stays, marked
//!   not served, while its status still shows Sluice's conditions, so that the status writer
//!   removes them. The same holds for any non-LoadBalancer Service with Sluice's conditions
//!   (changed while Sluice was down), but not for a LoadBalancer of another class that Sluice
//!   never served: another Sluice installation may serve it.
//! - **Invalid objects** keep their last good version in the model; the problem is logged and
//!   recorded as an Event on the Service.
//! - **Debouncing.** Changes are batched until the stream has been quiet for `debounce`, or at
//!   most `4 × debounce` after the first change, so a burst is one rebuild.
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::logs::{Repeats, Verdict, FAILURE_REMINDER};
use crate::model::{EndpointSlice, L4Protocol, Model, ModelError, Node, ObjectKey, Service};

/// The three kinds Sluice watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1` Service.
    Service,
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
    /// `v1` Node.
    Node,
}

impl Kind {
    /// The kind's name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }
}

/// One change to the model.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A Service was added or changed (`Some`), or deleted or is no longer served (`None`).
    Service(ObjectKey, Option<Box<Service>>),
    /// An EndpointSlice was added or changed, or deleted.
    EndpointSlice(ObjectKey, Option<Box<EndpointSlice>>),
    /// A Node was added or changed, or deleted.
    Node(String, Option<Box<Node>>),
    /// A full relist of one kind: replaces every object of the kind, except that objects in
    /// `keep` (invalid in the relist) keep the version the model has.
    Synced(Box<Synced>),
}

/// A complete list of one kind.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Synced {
    /// Which kind.
    pub kind: Option<Kind>,
    /// Services (when `kind` is Service).
    pub services: BTreeMap<ObjectKey, Service>,
    /// EndpointSlices.
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    /// Nodes.
    pub nodes: BTreeMap<String, Node>,
    /// Keys (`namespace/name`, or the name for Nodes) whose listed version was invalid.
    pub keep: Vec<String>,
}

/// A debounced batch of changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// The changes, in arrival order.
    pub changes: Vec<Change>,
}

impl Batch {
    /// Applies the batch to `model`; returns the number of changes.
    pub fn apply(self, model: &mut Model) -> usize {
        let n = self.changes.len();
        for c in self.changes {
            match c {
                Change::Service(k, Some(s)) => {
                    model.services.insert(k, *s);
                }
                Change::Service(k, None) => {
                    model.services.remove(&k);
                }
                Change::EndpointSlice(k, Some(s)) => {
                    model.endpoint_slices.insert(k, *s);
                }
                Change::EndpointSlice(k, None) => {
                    model.endpoint_slices.remove(&k);
                }
                Change::Node(k, Some(n)) => {
                    model.nodes.insert(k, *n);
                }
                Change::Node(k, None) => {
                    model.nodes.remove(&k);
                }
                Change::Synced(s) => {
                    let s = *s;
                    match s.kind {
                        Some(Kind::Service) => {
                            let mut new = s.services;
                            for k in &s.keep {
                                if let Some((key, v)) =
                                    model.services.iter().find(|(key, _)| key.to_string() == *k)
                                {
                                    new.insert(key.clone(), v.clone());
                                }
                            }
                            model.services = new;
                        }
                        Some(Kind::EndpointSlice) => {
                            let mut new = s.endpoint_slices;
                            for k in &s.keep {
                                if let Some((key, v)) = model
                                    .endpoint_slices
                                    .iter()
                                    .find(|(key, _)| key.to_string() == *k)
                                {
                                    new.insert(key.clone(), v.clone());
                                }
                            }
                            model.endpoint_slices = new;
                        }
                        Some(Kind::Node) => {
                            let mut new = s.nodes;
                            for k in &s.keep {
                                if let Some(v) = model.nodes.get(k) {
                                    new.insert(k.clone(), v.clone());
                                }
                            }
                            model.nodes = new;
                        }
                        None => {}
                    }
                }
            }
        }
        n
    }

    /// The kinds this batch relists completely.
    pub fn synced_kinds(&self) -> Vec<Kind> {
        self.changes
            .iter()
            .filter_map(|c| match c {
                Change::Synced(s) => s.kind,
                _ => None,
            })
            .collect()
    }
}

/// Which Services Sluice serves (and therefore watches into the model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// `spec.loadBalancerClass` Sluice serves.
    pub class: String,
    /// Also serve LoadBalancer Services without a class.
    pub serve_unclassed: bool,
}

impl Selection {
    /// Whether a Kubernetes Service is Sluice's: `type: LoadBalancer` and the class matches.
    pub fn serves(&self, svc: &corev1::Service) -> bool {
        let Some(spec) = &svc.spec else {
            return false;
        };
        spec.type_.as_deref() == Some("LoadBalancer")
            && match spec
                .load_balancer_class
                .as_deref()
                .filter(|c| !c.is_empty())
            {
                Some(c) => c == self.class,
                None => self.serve_unclassed,
            }
    }
}

/// What the status writer needs to know about a served Service as the API server has it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceMeta {
    /// `metadata.uid` (Events refer to it).
    pub uid: Option<String>,
    /// `metadata.resourceVersion`.
    pub resource_version: Option<String>,
    /// `status.loadBalancer.ingress` as (ip, ipMode, ports).
    pub ingress: Vec<IngressEntry>,
    /// `spec.ports` as (protocol, port).
    pub ports: Vec<(L4Protocol, u16)>,
    /// `status.conditions` of Sluice's types (`sluice.dev/...`), sorted by type.
    pub conditions: Vec<ConditionEntry>,
    /// Whether Sluice serves it. `false`: it stopped being Sluice's (type or class changed)
    /// but still carries conditions Sluice wrote, which the status writer removes.
    pub served: bool,
}

impl ServiceMeta {
    /// Whether Sluice no longer serves the Service but its status still shows Sluice's writes.
    pub fn is_leftover(&self) -> bool {
        !self.served && !self.conditions.is_empty()
    }
}

/// One `status.conditions` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConditionEntry {
    /// `type`, e.g. `sluice.dev/IPAllocated`.
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// `lastTransitionTime` as written (RFC 3339); not part of comparisons.
    pub last_transition: Option<String>,
}

impl ConditionEntry {
    /// Equal apart from `lastTransitionTime`.
    pub fn same(&self, other: &ConditionEntry) -> bool {
        self.type_ == other.type_
            && self.status == other.status
            && self.reason == other.reason
            && self.message == other.message
    }
}

/// The prefix of the condition types Sluice owns.
pub const CONDITION_PREFIX: &str = "sluice.dev/";

/// One `status.loadBalancer.ingress` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct IngressEntry {
    /// `ip`.
    pub ip: String,
    /// `ipMode`.
    pub ip_mode: Option<String>,
    /// `ports` as (port, protocol, error).
    pub ports: Vec<(i32, String, Option<String>)>,
}

/// Served Services as last seen from the API server, shared with the status writer.
pub type MetaMap = Arc<Mutex<HashMap<ObjectKey, ServiceMeta>>>;

/// An object that failed conversion, for logs and Events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Its kind.
    pub kind: Kind,
    /// `namespace/name` (or the Node name).
    pub key: String,
    /// The Service it concerns (for Events), if any.
    pub service: Option<ObjectKey>,
    /// What is wrong.
    pub error: ModelError,
}

/// Converts one watched kind into model changes.
trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    const KIND: Kind;
    /// `Ok(None)`: not Sluice's (removed from the model if it was there).
    fn convert(&self, sel: &Selection) -> Result<Option<Change>, ModelError>;
    /// The change that deletes this object.
    fn deleted(&self) -> Change;
    /// The Service an invalid object concerns.
    fn service(&self) -> Option<ObjectKey>;
    /// What the status writer needs (Services only).
    fn status_meta(&self) -> Option<(ObjectKey, ServiceMeta)> {
        None
    }
    /// Whether this object, which Sluice does not serve, carries conditions Sluice wrote that
    /// Sluice should remove: it served it before (`known`), or it is no LoadBalancer at all.
    /// A LoadBalancer of another class that Sluice never served is left alone, since another
    /// Sluice installation may serve it.
    fn leftover(&self, _known: bool, _meta: &ServiceMeta) -> bool {
        false
    }
}

fn ns_key<K: Resource>(o: &K) -> ObjectKey {
    ObjectKey::new(
        o.meta()
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_owned()),
        o.meta().name.clone().unwrap_or_default(),
    )
}

impl Watched for corev1::Service {
    const KIND: Kind = Kind::Service;
    fn convert(&self, sel: &Selection) -> Result<Option<Change>, ModelError> {
        if !sel.serves(self) {
            return Ok(None);
        }
        let s = Service::from_k8s(self)?;
        Ok(Some(Change::Service(s.key.clone(), Some(Box::new(s)))))
    }
    fn deleted(&self) -> Change {
        Change::Service(ns_key(self), None)
    }
    fn service(&self) -> Option<ObjectKey> {
        Some(ns_key(self))
    }
    fn leftover(&self, known: bool, meta: &ServiceMeta) -> bool {
        let lb = self
            .spec
            .as_ref()
            .is_some_and(|s| s.type_.as_deref() == Some("LoadBalancer"));
        !meta.conditions.is_empty() && (known || !lb)
    }
    fn status_meta(&self) -> Option<(ObjectKey, ServiceMeta)> {
        let ingress = self
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .map(|v| {
                v.iter()
                    .map(|i| IngressEntry {
                        ip: i.ip.clone().unwrap_or_default(),
                        ip_mode: i.ip_mode.clone(),
                        ports: i
                            .ports
                            .iter()
                            .flatten()
                            .map(|p| (p.port, p.protocol.clone(), p.error.clone()))
                            .collect(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ports = self
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| {
                        let proto = match p.protocol.as_deref().unwrap_or("TCP") {
                            "UDP" => L4Protocol::Udp,
                            "SCTP" => L4Protocol::Sctp,
                            _ => L4Protocol::Tcp,
                        };
                        u16::try_from(p.port).ok().map(|n| (proto, n))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut conditions: Vec<ConditionEntry> = self
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| c.type_.starts_with(CONDITION_PREFIX))
            .map(|c| ConditionEntry {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                last_transition: Some(c.last_transition_time.0.to_string()),
            })
            .collect();
        conditions.sort();
        Some((
            ns_key(self),
            ServiceMeta {
                uid: self.metadata.uid.clone(),
                resource_version: self.metadata.resource_version.clone(),
                ingress,
                ports,
                conditions,
                served: true,
            },
        ))
    }
}

impl Watched for discoveryv1::EndpointSlice {
    const KIND: Kind = Kind::EndpointSlice;
    fn convert(&self, _sel: &Selection) -> Result<Option<Change>, ModelError> {
        let s = EndpointSlice::from_k8s(self)?;
        Ok(Some(Change::EndpointSlice(
            s.key.clone(),
            Some(Box::new(s)),
        )))
    }
    fn deleted(&self) -> Change {
        Change::EndpointSlice(ns_key(self), None)
    }
    fn service(&self) -> Option<ObjectKey> {
        let k = ns_key(self);
        self.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(crate::model::SERVICE_NAME_LABEL))
            .map(|s| ObjectKey::new(k.namespace, s.clone()))
    }
}

impl Watched for corev1::Node {
    const KIND: Kind = Kind::Node;
    fn convert(&self, _sel: &Selection) -> Result<Option<Change>, ModelError> {
        let n = Node::from_k8s(self)?;
        Ok(Some(Change::Node(n.name.clone(), Some(Box::new(n)))))
    }
    fn deleted(&self) -> Change {
        Change::Node(self.name_any(), None)
    }
    fn service(&self) -> Option<ObjectKey> {
        None
    }
}

/// What the per-kind watch tasks send to the debouncer.
#[derive(Debug)]
pub(crate) enum Msg {
    Change(Change),
    Invalid(Invalid),
}

/// Watcher settings shared by the three kinds.
#[derive(Debug, Clone)]
pub(crate) struct WatchOptions {
    pub selection: Selection,
    /// `timeoutSeconds` of each watch request (kube-rs default 290).
    pub watch_timeout: Option<u32>,
    /// List page size.
    pub page_size: u32,
}

fn key_string<K: Watched>(o: &K) -> String {
    if K::KIND == Kind::Node {
        o.meta().name.clone().unwrap_or_default()
    } else {
        ns_key(o).to_string()
    }
}

/// Watches one kind until the receiver is gone.
async fn watch_kind<K: Watched>(
    api: Api<K>,
    opts: WatchOptions,
    tx: mpsc::UnboundedSender<Msg>,
    meta: MetaMap,
) {
    let mut wc = watcher::Config::default().page_size(opts.page_size);
    if let Some(t) = opts.watch_timeout {
        wc = wc.timeout(t);
    }
    let mut stream = watcher::watcher(api, wc)
        .modify(|o: &mut K| {
            o.meta_mut().managed_fields = None;
        })
        .boxed();
    let mut backoff = Backoff::new(K::KIND as u64);
    let sel = &opts.selection;
    let mut relist: Option<Synced> = None;
    let mut relist_meta: Option<HashMap<ObjectKey, ServiceMeta>> = None;
    let mut failing: Repeats<()> = Repeats::new(FAILURE_REMINDER);
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => {
                if let Some(e) = failing.end(&(), std::time::Instant::now()) {
                    info!(
                        kind = K::KIND.name(),
                        errors = e.occurrences,
                        failed_for_ms = e.lasted.as_millis() as u64,
                        "watch recovered"
                    );
                }
                backoff.reset();
                ev
            }
            Err(watcher::Error::WatchError(s)) if s.code == 410 => {
                // History compacted: the watcher relists on the next poll, at once.
                info!(
                    kind = K::KIND.name(),
                    "watch expired (410 Gone); listing again"
                );
                continue;
            }
            Err(e) => {
                // Transport errors, 5xx, 403s: the watcher resumes or relists after a backoff.
                let wait = backoff.next_delay();
                match failing.hit(&(), std::time::Instant::now()) {
                    Verdict::First => {
                        warn!(kind = K::KIND.name(), error = %e, "watch error; retrying (the last good state keeps serving)");
                    }
                    Verdict::Reminder { unlogged, lasting } => {
                        warn!(kind = K::KIND.name(), error = %e, errors_since_last_line = unlogged + 1, failing_for_s = lasting.as_secs(), "watch still failing; retrying (the last good state keeps serving)");
                    }
                    Verdict::Quiet => {
                        debug!(kind = K::KIND.name(), error = %e, retry_ms = wait.as_millis() as u64, "watch error");
                    }
                }
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let invalid = |o: &K, error: ModelError| Invalid {
            kind: K::KIND,
            key: key_string(o),
            service: o.service(),
            error,
        };
        let set_meta = |o: &K, served: bool| {
            if K::KIND != Kind::Service {
                return;
            }
            let mut m = meta.lock().unwrap_or_else(|e| e.into_inner());
            let known = m.contains_key(&ns_key(o));
            match o.status_meta() {
                Some((k, sm)) if served => {
                    m.insert(k, sm);
                }
                Some((k, sm)) if o.leftover(known, &sm) => {
                    m.insert(
                        k,
                        ServiceMeta {
                            served: false,
                            ..sm
                        },
                    );
                }
                _ => {
                    m.remove(&ns_key(o));
                }
            }
        };
        let mut out: Vec<Msg> = Vec::new();
        match ev {
            Event::Init => {
                debug!(kind = K::KIND.name(), "listing");
                relist = Some(Synced {
                    kind: Some(K::KIND),
                    ..Synced::default()
                });
                relist_meta = Some(HashMap::new());
            }
            Event::InitApply(o) => {
                let (Some(r), Some(rm)) = (relist.as_mut(), relist_meta.as_mut()) else {
                    continue;
                };
                let converted = o.convert(sel);
                if let Some((k, sm)) = o.status_meta() {
                    if !matches!(converted, Ok(None)) {
                        rm.insert(k, sm);
                    } else {
                        let known = meta
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .contains_key(&k);
                        if o.leftover(known, &sm) {
                            rm.insert(
                                k,
                                ServiceMeta {
                                    served: false,
                                    ..sm
                                },
                            );
                        }
                    }
                }
                match converted {
                    Ok(Some(Change::Service(k, Some(s)))) => {
                        r.services.insert(k, *s);
                    }
                    Ok(Some(Change::EndpointSlice(k, Some(s)))) => {
                        r.endpoint_slices.insert(k, *s);
                    }
                    Ok(Some(Change::Node(k, Some(n)))) => {
                        r.nodes.insert(k, *n);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        r.keep.push(key_string(&o));
                        out.push(Msg::Invalid(invalid(&o, e)));
                    }
                }
            }
            Event::InitDone => {
                let Some(r) = relist.take() else { continue };
                if let Some(rm) = relist_meta.take() {
                    if K::KIND == Kind::Service {
                        *meta.lock().unwrap_or_else(|e| e.into_inner()) = rm;
                    }
                }
                info!(
                    kind = K::KIND.name(),
                    objects = r.services.len() + r.endpoint_slices.len() + r.nodes.len(),
                    "listed"
                );
                out.push(Msg::Change(Change::Synced(Box::new(r))));
            }
            Event::Apply(o) => match o.convert(sel) {
                Ok(Some(c)) => {
                    set_meta(&o, true);
                    out.push(Msg::Change(c));
                }
                Ok(None) => {
                    set_meta(&o, false);
                    out.push(Msg::Change(o.deleted()));
                }
                Err(e) => {
                    set_meta(&o, true);
                    out.push(Msg::Invalid(invalid(&o, e)));
                }
            },
            Event::Delete(o) => {
                if K::KIND == Kind::Service {
                    meta.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&ns_key(&o));
                }
                out.push(Msg::Change(o.deleted()));
            }
        }
        for m in out {
            if tx.send(m).is_err() {
                return;
            }
        }
    }
}

/// Delays between the attempts of a watch that keeps failing: 100 ms doubling to at most 3 s,
/// each shortened by up to a quarter (so that instances that lost the API server together do
/// not all return at the same instant).
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    /// xorshift state for the jitter.
    rng: u64,
}

impl Backoff {
    /// The first delay.
    pub(crate) const FIRST: Duration = Duration::from_millis(100);
    /// The longest delay.
    pub(crate) const MAX: Duration = Duration::from_secs(3);

    /// A backoff whose jitter is seeded from the clock and `salt`.
    pub(crate) fn new(salt: u64) -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Backoff {
            next: Self::FIRST,
            rng: (t ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1,
        }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(Self::MAX);
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        // Up to a quarter off, in 1/1024 steps.
        d - d * (self.rng % 257) as u32 / 1024
    }

    /// Back to the first delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Spawns the three watchers; their messages arrive on the returned receiver.
pub(crate) fn spawn_watchers(
    client: &Client,
    opts: &WatchOptions,
    meta: &MetaMap,
) -> (
    mpsc::UnboundedReceiver<Msg>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let tasks = vec![
        tokio::spawn(watch_kind(
            Api::<corev1::Service>::all(client.clone()),
            opts.clone(),
            tx.clone(),
            meta.clone(),
        )),
        tokio::spawn(watch_kind(
            Api::<discoveryv1::EndpointSlice>::all(client.clone()),
            opts.clone(),
            tx.clone(),
            meta.clone(),
        )),
        tokio::spawn(watch_kind(
            Api::<corev1::Node>::all(client.clone()),
            opts.clone(),
            tx,
            meta.clone(),
        )),
    ];
    (rx, tasks)
}

/// Batches changes: a batch is sent once no change arrived for `quiet`, or `max` after its
/// first change. Invalid objects go to `invalid` at once.
pub(crate) async fn debounce(
    mut rx: mpsc::UnboundedReceiver<Msg>,
    tx: mpsc::Sender<Batch>,
    invalid: mpsc::UnboundedSender<Invalid>,
    quiet: Duration,
    max: Duration,
) {
    let mut pending: Vec<Change> = Vec::new();
    let mut first = Instant::now();
    let mut last = Instant::now();
    loop {
        let msg = if pending.is_empty() {
            rx.recv().await
        } else {
            let deadline = (last + quiet).min(first + max);
            tokio::select! {
                m = rx.recv() => m,
                _ = tokio::time::sleep_until(deadline) => {
                    let batch = Batch { changes: std::mem::take(&mut pending) };
                    if tx.send(batch).await.is_err() {
                        return;
                    }
                    continue;
                }
            }
        };
        match msg {
            None => {
                if !pending.is_empty() {
                    let _ = tx
                        .send(Batch {
                            changes: std::mem::take(&mut pending),
                        })
                        .await;
                }
                return;
            }
            Some(Msg::Invalid(i)) => {
                warn!(kind = i.kind.name(), object = %i.key, error = %i.error, "invalid object; keeping its last good version");
                let _ = invalid.send(i);
            }
            Some(Msg::Change(c)) => {
                let now = Instant::now();
                if pending.is_empty() {
                    first = now;
                }
                last = now;
                pending.push(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn k8s_service(class: Option<&str>, type_: &str) -> corev1::Service {
        corev1::Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(corev1::ServiceSpec {
                type_: Some(type_.into()),
                load_balancer_class: class.map(str::to_owned),
                ports: Some(vec![corev1::ServicePort {
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn selection_by_type_and_class() {
        let sel = Selection {
            class: "sluice.dev/dpdk".into(),
            serve_unclassed: false,
        };
        assert!(sel.serves(&k8s_service(Some("sluice.dev/dpdk"), "LoadBalancer")));
        assert!(!sel.serves(&k8s_service(Some("other"), "LoadBalancer")));
        assert!(!sel.serves(&k8s_service(None, "LoadBalancer")));
        assert!(!sel.serves(&k8s_service(Some("sluice.dev/dpdk"), "ClusterIP")));
        let default_lb = Selection {
            serve_unclassed: true,
            ..sel
        };
        assert!(default_lb.serves(&k8s_service(None, "LoadBalancer")));
        assert!(default_lb.serves(&k8s_service(Some(""), "LoadBalancer")));
        assert!(!default_lb.serves(&k8s_service(Some("other"), "LoadBalancer")));
        // Not ours: converting gives nothing, so the model drops it.
        assert_eq!(
            k8s_service(Some("other"), "LoadBalancer").convert(&default_lb),
            Ok(None)
        );
    }

    #[test]
    fn batches_apply_and_resyncs_replace_a_kind_keeping_invalid_objects() {
        let svc = Service::from_k8s(&k8s_service(Some("x"), "LoadBalancer")).unwrap();
        let mut other = svc.clone();
        other.key = ObjectKey::new("default", "other");
        let mut model = Model::default();
        let n = Batch {
            changes: vec![
                Change::Service(svc.key.clone(), Some(Box::new(svc.clone()))),
                Change::Service(other.key.clone(), Some(Box::new(other.clone()))),
                Change::Node(
                    "n1".into(),
                    Some(Box::new(Node {
                        name: "n1".into(),
                        internal_ips: vec![],
                        ready: true,
                        excluded: false,
                    })),
                ),
            ],
        }
        .apply(&mut model);
        assert_eq!(n, 3);
        assert_eq!(model.services.len(), 2);

        // A relist without `other`, and with `web` invalid: `other` goes, `web` stays.
        let b = Batch {
            changes: vec![Change::Synced(Box::new(Synced {
                kind: Some(Kind::Service),
                keep: vec!["default/web".into()],
                ..Synced::default()
            }))],
        };
        assert_eq!(b.synced_kinds(), vec![Kind::Service]);
        b.apply(&mut model);
        assert_eq!(
            model.services.keys().cloned().collect::<Vec<_>>(),
            vec![svc.key.clone()]
        );
        assert_eq!(model.nodes.len(), 1, "a Service relist leaves Nodes alone");
        Batch {
            changes: vec![Change::Service(svc.key.clone(), None)],
        }
        .apply(&mut model);
        assert!(model.services.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn debounce_batches_bursts_and_caps_the_wait() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (btx, mut brx) = mpsc::channel(8);
        let (itx, _irx) = mpsc::unbounded_channel();
        let quiet = Duration::from_millis(50);
        tokio::spawn(debounce(rx, btx, itx, quiet, quiet * 4));
        let change = |n: &str| Msg::Change(Change::Node(n.into(), None));
        // A burst of three inside the quiet time: one batch.
        for n in ["a", "b", "c"] {
            tx.send(change(n)).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t = Instant::now();
        let b = brx.recv().await.unwrap();
        assert_eq!(b.changes.len(), 3);
        assert!(t.elapsed() <= quiet);
        // A steady trickle (every 30 ms) is cut at 4 x quiet.
        let t = Instant::now();
        let feeder = tokio::spawn(async move {
            for i in 0..20 {
                tx.send(change(&i.to_string())).unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        });
        let b = brx.recv().await.unwrap();
        assert!(t.elapsed() <= quiet * 4 + Duration::from_millis(1));
        assert!(
            b.changes.len() >= 6 && b.changes.len() < 20,
            "{}",
            b.changes.len()
        );
        feeder.await.unwrap();
    }
}
