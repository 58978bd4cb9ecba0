//! Backends of a frontend: the targets the model asks for (pods from EndpointSlices, or
//! nodes), merged with the ones still draining, with ids, states and next hops.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use sluice_dataplane::snapshot::{Backend, BackendState};

use super::ids::BackendKey;
use super::probes::ProbeSpec;
use super::report::{BackendReport, CompileReport, FrontendReport};
use super::{CompileInput, Compiler, NODE_HEALTH_PATH};
use crate::config::{Config, Target};
use crate::health::{Health, ProbeTarget};
use crate::model::{
    AddressType, EndpointSlice, IpFamily, Model, Service, ServicePort, TargetPort, TrafficPolicy,
};

/// A backend the model asks for.
#[derive(Debug, Clone)]
pub(super) struct Desired {
    addr: IpAddr,
    port: u16,
    node: Option<String>,
    probe: Option<ProbeTarget>,
    /// The weight the Service's `sluice.dev/backend-weights` gives the address.
    weight: Option<u32>,
    /// Set when the backend is only used as a fallback (terminating but serving).
    note: Option<&'static str>,
}

/// How many distinct backends (address, port) the model lists for a frontend: the `N` of the
/// automatic Maglev size. Health and this host's draining of removed backends do not count,
/// so every host derives the same number from the same EndpointSlices (or Nodes).
pub(super) fn listed_count(desired: &[Desired]) -> usize {
    desired
        .iter()
        .map(|d| (d.addr, d.port))
        .collect::<BTreeSet<_>>()
        .len()
}

/// Backends of one frontend by (address, port): the desired entry (`None` when draining
/// because removed) and the reason it is draining.
pub(super) type Merged<'a> = BTreeMap<(IpAddr, u16), (Option<&'a Desired>, Option<String>)>;

impl Compiler {
    /// Merges the desired backends of frontend `fid` with the ones still draining, assigns ids,
    /// states and next hops, and fills `fe.backends` (sorted by address and port).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn frontend_backends(
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
            // The operator's weight, else the Service's, else 1.
            let weight = input
                .weights
                .get(&addr)
                .copied()
                .or(d.and_then(|d| d.weight))
                .unwrap_or(1);
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
}

/// EndpointSlices by (namespace, Service name), in slice-name order.
pub(super) fn slice_index(model: &Model) -> HashMap<(&str, &str), Vec<&EndpointSlice>> {
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

/// The next hop toward `addr`: itself when on-link on some port, else the first port's
/// gateway of its family.
pub fn next_hop(cfg: &Config, addr: IpAddr) -> Option<IpAddr> {
    if cfg.ports.iter().any(|p| p.on_link(addr)) {
        return Some(addr);
    }
    cfg.ports.iter().find_map(|p| p.gateway_for(addr))
}

pub(super) fn slice_family(s: &EndpointSlice) -> Option<IpFamily> {
    match s.address_type {
        AddressType::IPv4 => Some(IpFamily::V4),
        AddressType::IPv6 => Some(IpFamily::V6),
        AddressType::Fqdn => None,
    }
}

/// The port of `slice` that serves Service port `sp`.
pub(super) fn slice_port(slice: &EndpointSlice, sp: &ServicePort) -> Option<u16> {
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
pub(super) fn desired_backends(
    input: &CompileInput<'_>,
    svc: &Service,
    slices: &[&EndpointSlice],
    sp: &ServicePort,
    family: IpFamily,
    target: Target,
    probes: &ProbeSpec,
    weights: &BTreeMap<IpAddr, u32>,
    label: &str,
    probs: &mut Vec<String>,
) -> Vec<Desired> {
    let model = input.model;
    let probe_for = |addr: SocketAddr| probes.target(addr.ip(), addr.port(), sp);
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
                            weight: weights.get(&addr).copied(),
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
                    let probe = if !probes.enabled() {
                        None
                    } else if local {
                        svc.health_check_node_port.map(|p| {
                            ProbeTarget::http(SocketAddr::new(addr, p), NODE_HEALTH_PATH)
                                .with_timing(probes.timing())
                        })
                    } else {
                        probe_for(SocketAddr::new(addr, node_port))
                    };
                    out.push(Desired {
                        addr,
                        port: node_port,
                        node: Some(n.name.clone()),
                        probe,
                        weight: weights.get(&addr).copied(),
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
