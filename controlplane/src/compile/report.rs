//! What a compile reports: per Service, frontend and backend, what was built and what is
//! wrong (the admin API and the Kubernetes status writer read it).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use sluice_dataplane::snapshot::{BackendState, Method};

use super::ipam::Issue;
use crate::config::Target;
use crate::health::ProbeTarget;
use crate::model::{L4Protocol, ObjectKey};

/// A frontend's Maglev table that changed size ([`CompileReport::maglev_resized`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MaglevResize {
    /// Frontend id.
    pub frontend: u32,
    /// `namespace/service:port`.
    pub name: String,
    /// The size before.
    pub old: u32,
    /// The size now.
    pub new: u32,
    /// Backends the Service lists for the frontend.
    pub backends: usize,
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
    /// Frontends whose Maglev table changed size in this compile (which remaps almost all of
    /// their new flows): the number of backends crossed a rung of the automatic size, or the
    /// configured size changed. Not counted when the old or the new table is empty.
    pub maglev_resized: Vec<MaglevResize>,
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
    /// Whether the size follows the backend count (`auto`); the status leader records such
    /// sizes in the Service's status so that every host keeps the same one.
    pub maglev_auto: bool,
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
