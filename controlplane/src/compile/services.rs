//! One Service: which Services are served, their settings after annotations, and compiling
//! a Service into its frontends, backends and report.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_dataplane::snapshot::{
    Backend, Cidr, Frontend, Method, Protocol, SynProxy, MAX_FRONTENDS,
};

use super::ids::{BackendKey, FrontendKey};
use super::ipam::Issue;
use super::probes::ProbeSpec;
use super::report::{CompileReport, FrontendReport, MaglevResize, ServiceReport};
use super::targets::{desired_backends, listed_count};
use super::{
    CompileInput, Compiler, ServiceCache, ANNOTATION_BACKEND_WEIGHTS, ANNOTATION_FLOW_LIMIT,
    ANNOTATION_MAGLEV_SIZE, ANNOTATION_METHOD, ANNOTATION_SOURCE_FLOW_LIMIT, ANNOTATION_SYN_PROXY,
    ANNOTATION_SYN_PROXY_THRESHOLD, ANNOTATION_TARGET, MAX_WEIGHT,
};
use crate::config::{
    Config, MaglevSize, RateBurst, SynProxyMode, Target, MAX_SYN_PROXY_AUTO_THRESHOLD,
};
use crate::health::{Health, ProbeTarget};
use crate::model::{EndpointSlice, IpFamily, L4Protocol, Service};

/// A Service's effective settings after annotations.
pub(super) struct Settings {
    method: Method,
    target: Target,
    maglev_size: MaglevSize,
    /// How its backends are probed.
    probes: ProbeSpec,
    /// Maglev weights by backend address (`sluice.dev/backend-weights`).
    weights: BTreeMap<IpAddr, u32>,
    /// New flows per frontend, whole host (`sluice.dev/new-flow-limit`).
    flow_limit: RateBurst,
    /// New flows per source prefix and frontend (`sluice.dev/new-flow-limit-per-source`).
    source_flow_limit: RateBurst,
    /// SYN proxy mode (`sluice.dev/syn-proxy`, default `[forwarding] syn_proxy`).
    syn_proxy: SynProxyMode,
    /// Embryonic flows that engage `auto` (`sluice.dev/syn-proxy-threshold`, default
    /// `[forwarding] syn_proxy_auto_threshold`).
    syn_proxy_threshold: u32,
}

/// The last valid values of a Service's new-flow limit annotations, which an invalid value
/// leaves in force (`None`: none was valid yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct LimitAnnotations {
    vip: Option<RateBurst>,
    source: Option<RateBurst>,
    /// `sluice.dev/syn-proxy`: an invalid value must not turn the proxy off during a flood.
    syn_proxy: Option<SynProxyMode>,
    /// `sluice.dev/syn-proxy-threshold`, for the same reason.
    syn_proxy_threshold: Option<u32>,
}

impl Compiler {
    /// Compiles one Service: its frontends, backends and report. `claimed` holds the
    /// (VIP, protocol, port) pairs earlier Services took; this Service's are added.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn compile_service(
        &mut self,
        input: &CompileInput<'_>,
        svc: &Service,
        svc_vips: Vec<IpAddr>,
        issues: &[Issue],
        slices: &[&EndpointSlice],
        claimed: &mut HashSet<(IpAddr, Protocol, u16)>,
        maglev_rebuilt: &mut Vec<u32>,
        maglev_resized: &mut Vec<MaglevResize>,
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
        let last = self.last_limits.get(&svc.key).copied().unwrap_or_default();
        let (settings, good) = service_settings(cfg, svc, last, &mut probs);
        if good != last {
            self.last_limits.insert(svc.key.clone(), good);
        }
        let workers = cfg.workers.cores.len();
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
                    &settings.probes,
                    &settings.weights,
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
                    maglev_size: 0,
                    maglev_auto: false,
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
                // The size follows the backends the Service lists, not the ones still draining
                // here (whose removal time is this host's own), so that every host chooses
                // the same; only if the draining ones would not fit does it grow for them.
                let listed = listed_count(&desired);
                fe.maglev_size = match (
                    settings.maglev_size,
                    svc.maglev_sizes.get(vip, sp.protocol, sp.port),
                ) {
                    (MaglevSize::Auto, Some(recorded)) => {
                        sluice_dataplane::maglev::sticky_size(recorded, listed)
                    }
                    (size, _) => size.for_backends(listed),
                };
                fe.maglev_auto = settings.maglev_size == MaglevSize::Auto;
                let weighted = fe.backends.iter().filter(|b| b.weight > 0).count();
                if settings.maglev_size == MaglevSize::Auto && (fe.maglev_size as usize) < weighted
                {
                    fe.maglev_size = sluice_dataplane::maglev::auto_size(weighted);
                }
                let before = self.maglev_size_of(fid);
                let maglev = match self.maglev_table(
                    fid,
                    &fe.backends,
                    fe.maglev_size,
                    cfg.forwarding.hash_seed,
                ) {
                    Ok((t, rebuilt)) => {
                        if rebuilt {
                            scratch.maglev_rebuilt.push(fid);
                        }
                        if let Some((old, had_entries)) = before {
                            if old != fe.maglev_size && had_entries && !t.is_empty() {
                                maglev_resized.push(MaglevResize {
                                    frontend: fid,
                                    name: fe.name.clone(),
                                    old,
                                    new: fe.maglev_size,
                                    backends: listed,
                                });
                            }
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
                    flow_limit: settings.flow_limit.per_worker(workers),
                    source_flow_limit: settings.source_flow_limit.per_worker(workers),
                    syn_proxy: if settings.method == Method::Nat && protocol == Protocol::Tcp {
                        match settings.syn_proxy {
                            SynProxyMode::Off => SynProxy::Off,
                            SynProxyMode::On => SynProxy::On,
                            SynProxyMode::Auto => SynProxy::Auto {
                                threshold: settings.syn_proxy_threshold,
                            },
                        }
                    } else {
                        SynProxy::Off
                    },
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
}

/// The Service's target after the `sluice.dev/target` annotation.
pub(super) fn effective_target(cfg: &Config, svc: &Service) -> Target {
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

/// A Service annotation whose invalid value keeps its last valid one in force (a typo must
/// not turn a flood defence off): its name, the configuration key it overrides, and how to
/// write it.
struct Sticky {
    /// The annotation.
    name: &'static str,
    /// The configuration key whose value applies when the annotation has never been valid.
    key: &'static str,
    /// What a valid value looks like, for the problem report.
    hint: &'static str,
}

impl Sticky {
    /// Applies the annotation of `svc`, parsed by `parse`, to `value` (the configured default
    /// on entry): a valid value is used and recorded in `good`; an invalid one is reported in
    /// `probs` and `kept`, the last valid value, is used if there is one; no annotation
    /// clears `good`.
    fn apply<T: Copy>(
        &self,
        svc: &Service,
        (value, good, kept): (&mut T, &mut Option<T>, Option<T>),
        parse: impl Fn(&str) -> Result<T, String>,
        describe: impl Fn(&T) -> String,
        probs: &mut Vec<String>,
    ) {
        let Some(v) = svc.annotations.get(self.name) else {
            *good = None;
            return;
        };
        match parse(v) {
            Ok(x) => {
                *value = x;
                *good = Some(x);
            }
            Err(e) => {
                let using = match kept {
                    Some(x) => {
                        *value = x;
                        format!("keeping its last valid value, {}", describe(&x))
                    }
                    None => format!("using {}: {}", self.key, describe(value)),
                };
                probs.push(format!(
                    "annotation {}: {v:?}: {e}; {} ({using})",
                    self.name, self.hint
                ));
            }
        }
    }
}

/// The Service's settings after its annotations, and the last valid values of its new-flow
/// limit annotations (`last`, updated): an invalid value keeps the last valid one in force.
pub(super) fn service_settings(
    cfg: &Config,
    svc: &Service,
    last: LimitAnnotations,
    probs: &mut Vec<String>,
) -> (Settings, LimitAnnotations) {
    let mut s = Settings {
        method: cfg.forwarding.default_method,
        target: cfg.forwarding.target,
        maglev_size: cfg.tables.maglev_size,
        probes: ProbeSpec::parse(&cfg.health, svc, probs),
        weights: BTreeMap::new(),
        flow_limit: cfg.limits.vip(),
        source_flow_limit: cfg.limits.source(),
        syn_proxy: cfg.forwarding.syn_proxy,
        syn_proxy_threshold: cfg.forwarding.syn_proxy_auto_threshold,
    };
    let mut good = last;
    let limit_hint = "write new flows per second as RATE or RATE,BURST, e.g. \"1000\" or \
                      \"1000,5000\", or \"0\" for no limit";
    Sticky {
        name: ANNOTATION_FLOW_LIMIT,
        key: "limits.new_flows_per_vip",
        hint: limit_hint,
    }
    .apply(
        svc,
        (&mut s.flow_limit, &mut good.vip, last.vip),
        |v| RateBurst::parse(v).map_err(|e| e.to_string()),
        |l| l.describe(),
        probs,
    );
    Sticky {
        name: ANNOTATION_SOURCE_FLOW_LIMIT,
        key: "limits.new_flows_per_source",
        hint: limit_hint,
    }
    .apply(
        svc,
        (&mut s.source_flow_limit, &mut good.source, last.source),
        |v| RateBurst::parse(v).map_err(|e| e.to_string()),
        |l| l.describe(),
        probs,
    );
    Sticky {
        name: ANNOTATION_SYN_PROXY,
        key: "forwarding.syn_proxy",
        hint: "write \"on\", \"off\" or \"auto\"",
    }
    .apply(
        svc,
        (&mut s.syn_proxy, &mut good.syn_proxy, last.syn_proxy),
        |v| SynProxyMode::parse(v).ok_or_else(|| "unknown value".to_owned()),
        |m| m.name().to_owned(),
        probs,
    );
    Sticky {
        name: ANNOTATION_SYN_PROXY_THRESHOLD,
        key: "forwarding.syn_proxy_auto_threshold",
        hint: "write the embryonic flows per worker that engage the auto SYN proxy, e.g. \"256\"",
    }
    .apply(
        svc,
        (
            &mut s.syn_proxy_threshold,
            &mut good.syn_proxy_threshold,
            last.syn_proxy_threshold,
        ),
        |v| {
            v.trim()
                .parse::<u32>()
                .ok()
                .filter(|t| (2..=MAX_SYN_PROXY_AUTO_THRESHOLD).contains(t))
                .ok_or_else(|| format!("not a number from 2 to {MAX_SYN_PROXY_AUTO_THRESHOLD}"))
        },
        |t| t.to_string(),
        probs,
    );
    if let Some(v) = svc.annotations.get(ANNOTATION_BACKEND_WEIGHTS) {
        match parse_weights(v) {
            Ok(w) => s.weights = w,
            Err(e) => probs.push(format!(
                "annotation {ANNOTATION_BACKEND_WEIGHTS}: {e}; use ADDRESS=WEIGHT pairs \
                 separated by commas, weights 0..={MAX_WEIGHT} (using weight 1 for every backend)"
            )),
        }
    }
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
        match MaglevSize::parse(v) {
            Ok(n) => s.maglev_size = n,
            Err(e) => probs.push(format!(
                "annotation {ANNOTATION_MAGLEV_SIZE}: {e} (using {})",
                s.maglev_size
            )),
        }
    }
    if s.syn_proxy != SynProxyMode::Off && s.method != Method::Nat {
        probs.push(format!(
            "the SYN proxy ({ANNOTATION_SYN_PROXY} or forwarding.syn_proxy) needs the nat \
             method, not {}; it is off for this Service",
            s.method.name()
        ));
    }
    (s, good)
}

/// Parses `sluice.dev/backend-weights`: `ADDRESS=WEIGHT` pairs separated by commas.
fn parse_weights(v: &str) -> Result<BTreeMap<IpAddr, u32>, String> {
    let mut out = BTreeMap::new();
    for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, w) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not ADDRESS=WEIGHT"))?;
        let a: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{:?} is not an address", a.trim()))?;
        let w: u32 = w
            .trim()
            .parse()
            .ok()
            .filter(|w| *w <= MAX_WEIGHT)
            .ok_or_else(|| format!("weight {:?} of {a} is not 0..={MAX_WEIGHT}", w.trim()))?;
        if out.insert(a, w).is_some() {
            return Err(format!("{a} is listed twice"));
        }
    }
    Ok(out)
}
