//! Routing and the handlers of the admin API (transport-free: [`handle`] takes a method, a
//! request target and a body, so the unit tests call it directly).
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use sluice_dataplane::snapshot::BackendState;
use sluice_dataplane::stats::DropReason;
use sluice_dataplane::worker::{Command, FlowAnswer, FlowQuery};
use tokio::sync::oneshot;

use super::api::{self, StateCounts, TableFill, Traffic};
use super::{
    drop_description, lock, mac_str, traffic_max, traffic_minus, unix, AdminState, ApiError,
    BackendOp, Baselines, ControlRequest, Live, ReplyTo, WorkerCounters,
};
use crate::compile::{state_name, BackendReport, FrontendReport, ServiceReport};
use crate::health::{Health, ProbeTarget, TargetStatus};
use crate::model::ObjectKey;

/// An HTTP answer: a status and a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON text.
    pub body: String,
}

impl Reply {
    fn json<T: Serialize>(v: &T) -> Reply {
        match serde_json::to_string_pretty(v) {
            Ok(body) => Reply { status: 200, body },
            Err(e) => Reply::error(ApiError {
                status: 500,
                message: format!("cannot encode the answer: {e}; this is a bug in sluiced"),
            }),
        }
    }

    fn error(e: ApiError) -> Reply {
        let body = serde_json::to_string_pretty(&api::ErrorBody {
            status: e.status,
            error: e.message,
        })
        .unwrap_or_default();
        Reply {
            status: e.status,
            body,
        }
    }

    fn from<T: Serialize>(r: Result<T, ApiError>) -> Reply {
        match r {
            Ok(v) => Reply::json(&v),
            Err(e) => Reply::error(e),
        }
    }
}

/// Every endpoint, for `GET /` and for 405 answers.
const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/v1/status"),
    ("GET", "/v1/version"),
    ("GET", "/v1/config"),
    ("GET", "/v1/services"),
    ("GET", "/v1/services/NAMESPACE/NAME"),
    ("GET", "/v1/backends[?service=NAMESPACE/NAME]"),
    ("GET", "/v1/workers"),
    ("GET", "/v1/drops"),
    ("GET", "/v1/ports"),
    ("GET", "/v1/neighbours"),
    ("GET", "/v1/health"),
    ("GET", "/v1/bgp"),
    ("GET", "/v1/l2"),
    ("GET", "/v1/sync"),
    (
        "GET",
        "/v1/conntrack?client=IP[&client_port=N][&vip=IP][&vip_port=N][&protocol=tcp|udp][&max=N]",
    ),
    ("POST", "/v1/backends/ADDR/drain"),
    ("POST", "/v1/backends/ADDR/undrain"),
    ("POST", "/v1/backends/ADDR/weight  {\"weight\": N|null}"),
    ("POST", "/v1/reload"),
    ("POST", "/v1/host/drain"),
    ("POST", "/v1/host/undrain"),
    ("POST", "/v1/counters/reset"),
    (
        "POST",
        "/v1/capture  {\"port\", \"direction\", \"filter\", \"count\", \"duration_seconds\", \"snaplen\"} (streams pcapng)",
    ),
    (
        "POST",
        "/v1/trace  {\"client\", \"client_port\", \"vip\", \"vip_port\", \"count\", \"duration_seconds\"} (streams JSON lines)",
    ),
];

/// Decodes `%XX` escapes (and `+` as a space in queries).
fn pct_decode(s: &str, plus: bool) -> Result<String, ApiError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| ApiError::bad_request(format!("bad %-escape in {s:?}")))?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request(format!("{s:?} is not UTF-8")))
}

fn parse_query(q: &str) -> Result<BTreeMap<String, String>, ApiError> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((pct_decode(k, true)?, pct_decode(v, true)?))
        })
        .collect()
}

/// Answers one request. `target` is the path with its query (`/v1/conntrack?client=...`).
pub async fn handle(st: &Arc<AdminState>, method: &str, target: &str, body: &[u8]) -> Reply {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segs: Result<Vec<String>, ApiError> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| pct_decode(s, false))
        .collect();
    let segs = match segs {
        Ok(s) => s,
        Err(e) => return Reply::error(e),
    };
    let query = match parse_query(query) {
        Ok(q) => q,
        Err(e) => return Reply::error(e),
    };
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    match (method, segs.as_slice()) {
        ("GET", []) | ("GET", ["v1"]) => Reply::json(&serde_json::json!({
            "endpoints": ENDPOINTS.iter().map(|(m, p)| format!("{m} {p}")).collect::<Vec<_>>()
        })),
        ("GET", ["v1", "version"]) => Reply::json(&api::Version {
            version: st.version.to_owned(),
            api: "v1".to_owned(),
        }),
        ("GET", ["v1", "status"]) => Reply::json(&status(st)),
        ("GET", ["v1", "config"]) => Reply::json(&api::ConfigDoc {
            path: st.config_path.display().to_string(),
            file: st.config_file.clone(),
        }),
        ("GET", ["v1", "services"]) => Reply::json(&services(st)),
        ("GET", ["v1", "services", ns, name]) => Reply::from(service(st, ns, name)),
        ("GET", ["v1", "backends"]) => Reply::from(backends(st, query.get("service"))),
        ("GET", ["v1", "workers"]) => Reply::json(&workers(st)),
        ("GET", ["v1", "drops"]) => Reply::json(&drops(st)),
        ("GET", ["v1", "ports"]) => Reply::json(&ports(st)),
        ("GET", ["v1", "neighbours"]) => Reply::json(&neighbours(st)),
        ("GET", ["v1", "health"]) => Reply::json(&health(st)),
        ("GET", ["v1", "bgp"]) => Reply::json(&st.bgp().doc),
        ("GET", ["v1", "l2"]) => Reply::json(&st.l2()),
        ("GET", ["v1", "sync"]) => Reply::json(&st.sync()),
        ("GET", ["v1", "conntrack"]) => Reply::from(conntrack(st, &query).await),
        ("POST", ["v1", "backends", addr, op @ ("drain" | "undrain" | "weight")]) => {
            Reply::from(backend_write(st, addr, op, body).await)
        }
        ("POST", ["v1", "reload"]) => {
            Reply::from(control(st, |reply| ControlRequest::Reload { reply }).await)
        }
        ("POST", ["v1", "host", op @ ("drain" | "undrain")]) => {
            let drain = *op == "drain";
            Reply::from(control(st, |reply| ControlRequest::Host { drain, reply }).await)
        }
        ("POST", ["v1", "counters", "reset"]) => Reply::json(&api::CountersReset {
            reset_unix: unix(st.reset_counters()),
        }),
        (_, s) if known_path(s) => {
            let allowed: Vec<&str> = ENDPOINTS
                .iter()
                .filter(|(_, p)| same_route(p, s))
                .map(|(m, _)| *m)
                .collect();
            Reply::error(ApiError {
                status: 405,
                message: format!(
                    "{method} is not allowed on {path}; use {}",
                    allowed.join(" or ")
                ),
            })
        }
        _ => Reply::error(ApiError::not_found(format!(
            "no endpoint {path}; GET / lists the endpoints"
        ))),
    }
}

/// Whether an endpoint pattern (`/v1/services/NAMESPACE/NAME`) matches the segments.
fn same_route(pattern: &str, segs: &[&str]) -> bool {
    let path = pattern.split(['?', '[', ' ']).next().unwrap_or("");
    let pat: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    pat.len() == segs.len()
        && pat
            .iter()
            .zip(segs)
            .all(|(p, s)| p == s || p.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
}

fn known_path(segs: &[&str]) -> bool {
    ENDPOINTS.iter().any(|(_, p)| same_route(p, segs))
}

/// Everything one read handler needs, taken once.
struct View<'a> {
    st: &'a AdminState,
    live: std::sync::RwLockReadGuard<'a, Live>,
    health: HashMap<ProbeTarget, TargetStatus>,
    base: HashMap<u32, Traffic>,
}

impl<'a> View<'a> {
    fn new(st: &'a AdminState) -> View<'a> {
        let base = lock(&st.baselines).targets.clone();
        View {
            st,
            live: st.live(),
            health: st.health.statuses().into_iter().collect(),
            base,
        }
    }

    /// A backend id's traffic since its owner took it or the last reset, whichever is later.
    fn traffic(&self, id: u32) -> Traffic {
        let raw = self.st.raw_target(id);
        let origin = self
            .live
            .owners
            .get(&id)
            .map(|(_, o)| *o)
            .unwrap_or_default();
        let base = self.base.get(&id).copied().unwrap_or_default();
        traffic_minus(raw, traffic_max(origin, base))
    }

    fn frontend(&self, f: &FrontendReport) -> api::FrontendDetail {
        let traffic: Vec<Traffic> = f.backends.iter().map(|b| self.traffic(b.id)).collect();
        let mut total = Traffic::default();
        for t in &traffic {
            total.add(*t);
        }
        let shares = self.live.shares.get(&f.id).map(|(_, s)| s.as_slice());
        let backends = f
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let entries = shares.and_then(|s| s.get(i)).copied().unwrap_or(0);
                self.backend(f, b, entries, traffic[i], total.new_flows)
            })
            .collect();
        api::FrontendDetail {
            id: f.id,
            name: f.name.clone(),
            vip: f.vip,
            port: f.port,
            protocol: f.protocol.name().to_ascii_lowercase(),
            method: f.method.name().to_owned(),
            maglev_size: f.maglev_size,
            affinity_ms: f.affinity_ms,
            traffic: total,
            counters: self.st.frontend_counters(&self.live, f.id),
            backends,
        }
    }

    fn backend(
        &self,
        f: &FrontendReport,
        b: &BackendReport,
        entries: u32,
        traffic: Traffic,
        fe_flows: u64,
    ) -> api::BackendDetail {
        // A target the checker has not taken up yet (the next publish starts it) is shown
        // as such, not as "not probed" (which `health: null` means).
        let health = b.health_target.as_ref().map(|t| match self.health.get(t) {
            Some(s) => api::HealthBrief {
                target: t.to_string(),
                health: health_name(s.health).to_owned(),
                since_unix: unix(s.since),
                last_error: s.last_error.clone(),
            },
            None => api::HealthBrief {
                target: t.to_string(),
                health: "pending".to_owned(),
                since_unix: unix(self.live.published),
                last_error: None,
            },
        });
        let tracked = self
            .live
            .since
            .get(&(f.id, b.addr, b.port))
            .map(|(_, at)| *at)
            .unwrap_or(self.live.published);
        // A backend that is down went down when its health check did.
        let since = match (&health, b.state) {
            (Some(h), BackendState::Down) => h.since_unix,
            _ => unix(tracked),
        };
        api::BackendDetail {
            id: b.id,
            addr: b.addr,
            port: b.port,
            node: b.node.clone(),
            weight: b.weight,
            state: state_name(b.state).to_owned(),
            reason: b.reason.clone(),
            since_unix: since,
            health,
            maglev_entries: entries,
            maglev_share: if f.maglev_size > 0 {
                f64::from(entries) / f64::from(f.maglev_size)
            } else {
                0.0
            },
            traffic,
            flow_share: if fe_flows > 0 {
                traffic.new_flows as f64 / fe_flows as f64
            } else {
                0.0
            },
            next_hop: b.next_hop,
            mac: b.mac.map(mac_str),
        }
    }

    fn summary(&self, s: &ServiceReport) -> api::ServiceSummary {
        let meta = self
            .live
            .services
            .get(&s.service)
            .cloned()
            .unwrap_or_default();
        let mut distinct: BTreeMap<(IpAddr, u16), BackendState> = BTreeMap::new();
        let mut traffic = Traffic::default();
        for f in &s.frontends {
            for b in &f.backends {
                distinct.entry((b.addr, b.port)).or_insert(b.state);
                traffic.add(self.traffic(b.id));
            }
        }
        let first = s.frontends.first();
        api::ServiceSummary {
            service: s.service.to_string(),
            vips: s
                .vips
                .iter()
                .map(|v| api::Vip {
                    addr: *v,
                    pool: self.st.config.pool_of(*v).map(|p| p.name.clone()),
                })
                .collect(),
            ports: meta.ports,
            method: first.map_or("-", |f| f.method.name()).to_owned(),
            target: first.map_or("-", |f| f.target.name()).to_owned(),
            external_traffic_policy: meta.policy,
            affinity_seconds: meta.affinity_seconds,
            source_ranges: meta.source_ranges,
            generation: self.live.report.generation,
            backends: count_states(distinct.values().copied()),
            traffic,
            problems: s.problems.clone(),
        }
    }
}

fn health_name(h: Health) -> &'static str {
    match h {
        Health::Up => "up",
        Health::Down => "down",
    }
}

fn count_states(states: impl Iterator<Item = BackendState>) -> StateCounts {
    let mut c = StateCounts::default();
    for s in states {
        match s {
            BackendState::Active => c.active += 1,
            BackendState::Draining => c.draining += 1,
            BackendState::Down => c.down += 1,
        }
    }
    c
}

fn fill(entries: u64, capacity: u64) -> TableFill {
    TableFill {
        entries,
        capacity,
        fill: if capacity > 0 {
            entries as f64 / capacity as f64
        } else {
            0.0
        },
    }
}

/// Worker counters since the last reset.
fn worker_counters(st: &AdminState, base: &Baselines) -> Vec<WorkerCounters> {
    st.workers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let c = WorkerCounters::read(&w.stats);
            match base.workers.get(i) {
                Some(b) => c.minus(b),
                None => c,
            }
        })
        .collect()
}

fn status(st: &AdminState) -> api::Status {
    use std::sync::atomic::Ordering::Relaxed;
    let (counters, reset_at) = {
        let base = lock(&st.baselines);
        (worker_counters(st, &base), base.at)
    };
    let (rx_pps, tx_pps, busy) = {
        let s = lock(&st.samples);
        let n = s.worker_rates.len().max(1) as f64;
        s.worker_rates
            .iter()
            .fold((0.0, 0.0, 0.0), |(a, b, c), (rx, tx, busy)| {
                (a + rx, b + tx, c + busy / n)
            })
    };
    let entries: u64 = st
        .workers
        .iter()
        .map(|w| w.stats.ct_entries.load(Relaxed))
        .sum();
    let capacity: u64 = st
        .workers
        .iter()
        .map(|w| w.stats.ct_capacity.load(Relaxed))
        .sum();
    let live = st.live();
    let r = &live.report;
    let mut problems = r.problems.clone();
    for s in &r.services {
        problems.extend(s.problems.iter().map(|p| format!("{}: {p}", s.service)));
    }
    let now = SystemTime::now();
    api::Status {
        version: st.version.to_owned(),
        pid: st.pid,
        started_unix: unix(st.started),
        uptime_seconds: now
            .duration_since(st.started)
            .unwrap_or_default()
            .as_secs_f64(),
        config: st.config_path.display().to_string(),
        source: format!("{:?}", st.config.source.kind).to_ascii_lowercase(),
        source_error: live.source_error.clone(),
        generation: r.generation,
        published_unix: unix(live.published),
        services: r.services.len(),
        frontends: r.services.iter().map(|s| s.frontends.len()).sum(),
        backends: count_states(
            r.services
                .iter()
                .flat_map(|s| &s.frontends)
                .flat_map(|f| &f.backends)
                .map(|b| b.state),
        ),
        workers: st.workers.len(),
        rx_pps,
        tx_pps,
        busy_ratio: busy,
        drops: counters.iter().map(WorkerCounters::total_drops).sum(),
        conntrack: fill(entries, capacity),
        unresolved_next_hops: r.unresolved.iter().copied().collect(),
        drained: live.drained.iter().copied().collect(),
        weights: live.weights.clone(),
        problems,
        counters_reset_unix: reset_at.map(unix),
        bgp: bgp_summary(&st.bgp().doc),
    }
}

fn services(st: &AdminState) -> Vec<api::ServiceSummary> {
    let v = View::new(st);
    v.live
        .report
        .services
        .iter()
        .map(|s| v.summary(s))
        .collect()
}

fn service(st: &AdminState, ns: &str, name: &str) -> Result<api::ServiceDetail, ApiError> {
    let v = View::new(st);
    let key = ObjectKey::new(ns, name);
    let s = v.live.report.service(&key).ok_or_else(|| {
        ApiError::not_found(format!(
            "Sluice does not serve Service {key}; `sluicectl services` lists the served ones \
             (a Service must be type LoadBalancer with Sluice's loadBalancerClass)"
        ))
    })?;
    Ok(api::ServiceDetail {
        summary: v.summary(s),
        frontends: s.frontends.iter().map(|f| v.frontend(f)).collect(),
    })
}

fn backends(st: &AdminState, service: Option<&String>) -> Result<Vec<api::BackendRow>, ApiError> {
    let v = View::new(st);
    let key = match service {
        Some(s) => {
            let (ns, name) = s.split_once('/').ok_or_else(|| {
                ApiError::bad_request(format!("service={s:?}: write it as NAMESPACE/NAME"))
            })?;
            let key = ObjectKey::new(ns, name);
            if v.live.report.service(&key).is_none() {
                return Err(ApiError::not_found(format!(
                    "Sluice does not serve Service {key}; `sluicectl services` lists the served ones"
                )));
            }
            Some(key)
        }
        None => None,
    };
    let mut rows = Vec::new();
    for s in &v.live.report.services {
        if key.as_ref().is_some_and(|k| *k != s.service) {
            continue;
        }
        for f in &s.frontends {
            let d = v.frontend(f);
            for b in d.backends {
                rows.push(api::BackendRow {
                    service: s.service.to_string(),
                    frontend: f.name.clone(),
                    vip: f.vip,
                    vip_port: f.port,
                    protocol: d.protocol.clone(),
                    backend: b,
                });
            }
        }
    }
    Ok(rows)
}

fn workers(st: &AdminState) -> Vec<api::WorkerRow> {
    use std::sync::atomic::Ordering::Relaxed;
    let counters = worker_counters(st, &lock(&st.baselines));
    let rates = lock(&st.samples).worker_rates.clone();
    st.workers
        .iter()
        .zip(counters)
        .enumerate()
        .map(|(i, (w, c))| {
            let (rx_pps, tx_pps, busy) = rates.get(i).copied().unwrap_or_default();
            api::WorkerRow {
                worker: w.index,
                core: w.core,
                queues: w.queues.clone(),
                rx_pps,
                tx_pps,
                busy_ratio: busy,
                rx_packets: c.rx_packets,
                tx_packets: c.tx_packets,
                rx_bytes: c.rx_bytes,
                tx_bytes: c.tx_bytes,
                drops: c.total_drops(),
                new_flows: c.new_flows,
                polls: c.polls,
                busy_polls: c.busy_polls,
                conntrack: fill(
                    w.stats.ct_entries.load(Relaxed),
                    w.stats.ct_capacity.load(Relaxed),
                ),
                evictions: c.evictions,
                evictions_established: c.evictions_established,
                refusals: c.refusals,
                syn_cookies_sent: c.syn_cookies_sent,
                syn_cookies_valid: c.syn_cookies_valid,
                syn_proxy_engaged: w.stats.syn_proxy_engaged.load(Relaxed),
                syn_proxy_engagements: c.syn_proxy_engagements,
                generation: w.stats.snapshot_generation.load(Relaxed),
            }
        })
        .collect()
}

fn drops(st: &AdminState) -> api::Drops {
    let counters = worker_counters(st, &lock(&st.baselines));
    let rates = lock(&st.samples).drop_rates.clone();
    let reasons: Vec<api::DropRow> = DropReason::ALL
        .iter()
        .map(|&r| {
            let per_worker: Vec<u64> = counters.iter().map(|c| c.drops[r as usize]).collect();
            api::DropRow {
                reason: r.name().to_owned(),
                description: drop_description(r).to_owned(),
                total: per_worker.iter().sum(),
                per_worker,
                rate: rates.get(r as usize).copied().unwrap_or(0.0),
            }
        })
        .collect();
    api::Drops {
        total: reasons.iter().map(|r| r.total).sum(),
        reasons,
    }
}

fn ports(st: &AdminState) -> Vec<api::PortRow> {
    let base = lock(&st.baselines).ports.clone();
    let s = lock(&st.samples);
    st.ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let raw = s.ports.get(i).copied().unwrap_or_default();
            let c = match base.get(i) {
                Some(b) => super::port_minus(&raw, b),
                None => raw,
            };
            let (rx_pps, tx_pps) = s.port_rates.get(i).copied().unwrap_or_default();
            api::PortRow {
                name: p.name.clone(),
                device: p.device.clone(),
                mac: mac_str(p.mac),
                rx_packets: c.rx_packets,
                tx_packets: c.tx_packets,
                rx_bytes: c.rx_bytes,
                tx_bytes: c.tx_bytes,
                rx_missed: c.rx_missed,
                rx_errors: c.rx_errors,
                tx_errors: c.tx_errors,
                rx_nombuf: c.rx_nombuf,
                rx_pps,
                tx_pps,
            }
        })
        .collect()
}

fn neighbours(st: &AdminState) -> api::Neighbours {
    let live = st.live();
    api::Neighbours {
        neighbours: live
            .neighbours
            .iter()
            .map(|(ip, mac)| api::Neighbour {
                ip: *ip,
                mac: mac_str(*mac),
                next_hop: live.report.next_hops.contains(ip),
            })
            .collect(),
        unresolved: live.report.unresolved.iter().copied().collect(),
    }
}

fn health(st: &AdminState) -> Vec<api::HealthRow> {
    st.health
        .statuses()
        .into_iter()
        .map(|(t, s)| api::HealthRow {
            target: t.to_string(),
            health: health_name(s.health).to_owned(),
            since_unix: unix(s.since),
            last_error: s.last_error,
            last_probe_unix: s.last_probe.map(unix),
            successes: s.successes,
            failures: s.failures,
            probes: s.probes,
        })
        .collect()
}

fn parse_ip(k: &str, v: &str) -> Result<IpAddr, ApiError> {
    v.parse()
        .map_err(|_| ApiError::bad_request(format!("{k}={v:?} is not an IP address")))
}

fn parse_port(k: &str, v: &str) -> Result<u16, ApiError> {
    v.parse()
        .map_err(|_| ApiError::bad_request(format!("{k}={v:?} is not a port number")))
}

/// `tcp`, `udp`, `icmp`, `icmpv6` or a number.
pub(crate) fn parse_protocol(v: &str) -> Option<u8> {
    match v.to_ascii_lowercase().as_str() {
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmp" => Some(1),
        "icmpv6" => Some(58),
        n => n.parse().ok(),
    }
}

fn protocol_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// The query of `GET /v1/conntrack`.
fn flow_query(q: &BTreeMap<String, String>) -> Result<FlowQuery, ApiError> {
    for k in q.keys() {
        if ![
            "client",
            "client_port",
            "vip",
            "vip_port",
            "protocol",
            "max",
        ]
        .contains(&k.as_str())
        {
            return Err(ApiError::bad_request(format!(
                "unknown parameter {k:?}; use client, client_port, vip, vip_port, protocol, max"
            )));
        }
    }
    let client = q.get("client").ok_or_else(|| {
        ApiError::bad_request("client=IP is required (the client address of the flow)")
    })?;
    let client = parse_ip("client", client)?;
    let vip = q.get("vip").map(|v| parse_ip("vip", v)).transpose()?;
    if vip.is_some_and(|v| v.is_ipv4() != client.is_ipv4()) {
        return Err(ApiError::bad_request(
            "client and vip are of different address families",
        ));
    }
    let max = match q.get("max") {
        Some(m) => m
            .parse::<usize>()
            .ok()
            .filter(|m| (1..=10_000).contains(m))
            .ok_or_else(|| ApiError::bad_request(format!("max={m:?}: use 1..=10000")))?,
        None => 100,
    };
    Ok(FlowQuery {
        client,
        client_port: q
            .get("client_port")
            .map(|v| parse_port("client_port", v))
            .transpose()?,
        vip,
        vip_port: q
            .get("vip_port")
            .map(|v| parse_port("vip_port", v))
            .transpose()?,
        proto: q
            .get("protocol")
            .map(|v| {
                parse_protocol(v).ok_or_else(|| {
                    ApiError::bad_request(format!("protocol={v:?}: use tcp, udp or a number"))
                })
            })
            .transpose()?,
        max,
    })
}

/// How long a conntrack lookup waits for the workers (a client scan takes a worker at most
/// 1024 millisecond ticks).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

async fn conntrack(
    st: &Arc<AdminState>,
    q: &BTreeMap<String, String>,
) -> Result<api::Conntrack, ApiError> {
    let query = flow_query(q)?;
    let _one_at_a_time = st.lookups.lock().await;
    let mut waiting = Vec::new();
    for w in &st.workers {
        let (tx, rx) = crossbeam_channel::bounded(1);
        w.commands
            .try_send(Command::FindFlows { query, reply: tx })
            .map_err(|_| {
                ApiError::unavailable(format!(
                    "worker {}'s command queue is full or closed; try again",
                    w.index
                ))
            })?;
        waiting.push((w.index, rx));
    }
    let answers: Vec<(u16, Option<FlowAnswer>)> = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + LOOKUP_TIMEOUT;
        waiting
            .into_iter()
            .map(|(i, rx)| (i, rx.recv_deadline(deadline).ok()))
            .collect()
    })
    .await
    .map_err(|e| ApiError::unavailable(format!("lookup task failed: {e}")))?;
    let live = st.live();
    let by_id: HashMap<u32, (&FrontendReport, &BackendReport)> = live
        .report
        .services
        .iter()
        .flat_map(|s| &s.frontends)
        .flat_map(|f| f.backends.iter().map(move |b| (b.id, (f, b))))
        .collect();
    let local = crate::compile::local_of(&st.config, [0; 6]);
    let mut out = api::Conntrack {
        flows: Vec::new(),
        workers_answered: 0,
        workers_unanswered: Vec::new(),
    };
    for (worker, a) in answers {
        let Some(a) = a else {
            out.workers_unanswered.push(worker);
            continue;
        };
        out.workers_answered += 1;
        for f in a.flows {
            let idle = a.now_ms.wrapping_sub(f.last_seen_ms);
            let idle = if idle > i32::MAX as u32 { 0 } else { idle };
            let timeout = st.timeouts.get(f.state);
            let found = by_id.get(&f.fwd.backend);
            let nat = (f.fwd.nat_port != 0)
                .then(|| {
                    let addr: Option<IpAddr> = match f.src {
                        IpAddr::V4(_) => local
                            .nat_ipv4
                            .get(usize::from(f.fwd.nat_addr))
                            .map(|a| IpAddr::from(*a)),
                        IpAddr::V6(_) => local
                            .nat_ipv6
                            .get(usize::from(f.fwd.nat_addr))
                            .map(|a| IpAddr::from(*a)),
                    };
                    addr.map(|a| SocketAddr::new(a, f.fwd.nat_port).to_string())
                })
                .flatten();
            out.flows.push(api::FlowRow {
                worker,
                client: f.src,
                client_port: f.sport,
                vip: f.dst,
                vip_port: f.dport,
                protocol: protocol_name(f.proto),
                state: f.state.as_str().to_owned(),
                idle_ms: u64::from(idle),
                expires_in_ms: u64::from(timeout.saturating_sub(idle)),
                backend_id: f.fwd.backend,
                backend: found.map(|(_, b)| SocketAddr::new(b.addr, b.port).to_string()),
                backend_state: found.map(|(_, b)| state_name(b.state).to_owned()),
                frontend: found.map(|(fe, _)| fe.name.clone()),
                nat,
            });
        }
    }
    out.flows
        .sort_by_key(|f| (f.client_port, f.vip, f.vip_port));
    Ok(out)
}

/// Routed mode's line in `GET /v1/status`.
fn bgp_summary(b: &api::Bgp) -> Option<api::BgpSummary> {
    b.enabled.then(|| api::BgpSummary {
        drained: b.drained,
        announced: b.announced.len(),
        peers_up: b.peers.iter().filter(|p| p.state == "Established").count(),
        peers: b.peers.len(),
    })
}

/// Sends a request to the control loop and waits for its answer.
async fn control<T>(
    st: &AdminState,
    make: impl FnOnce(ReplyTo<T>) -> ControlRequest,
) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    let gone = || ApiError::unavailable("the control loop is not running (sluiced is stopping)");
    st.control().send(make(tx)).await.map_err(|_| gone())?;
    match tokio::time::timeout(Duration::from_secs(10), rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(gone()),
        Err(_) => Err(ApiError::unavailable(
            "the control loop did not answer within 10 s; see the sluiced log",
        )),
    }
}

async fn backend_write(
    st: &AdminState,
    addr: &str,
    op: &str,
    body: &[u8],
) -> Result<api::BackendChange, ApiError> {
    let addr: IpAddr = addr.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "{addr:?} is not an IP address; name the backend by its address (10.0.0.5 or fd00::5)"
        ))
    })?;
    let op = match op {
        "drain" => BackendOp::Drain,
        "undrain" => BackendOp::Undrain,
        _ => {
            let req: api::WeightRequest = serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!(
                    "the body must be {{\"weight\": N}} (0..={}) or {{\"weight\": null}}: {e}",
                    super::MAX_WEIGHT
                ))
            })?;
            BackendOp::Weight(req.weight)
        }
    };
    control(st, |reply| ControlRequest::Backend { addr, op, reply }).await
}
