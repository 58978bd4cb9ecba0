//! Prometheus metrics: a `prometheus-client` registry whose collector reads the workers'
//! single-writer counters and the last published snapshot at scrape time, served as
//! OpenMetrics text on `GET /metrics` of a TCP listener.
//!
//! ## Label cardinality
//! Every label takes values from a bounded set, so the series count is known in advance:
//! `worker` (one per worker core), `reason` (the 25 drop reasons), `port` (configured ports),
//! `service`/`vip`/`port`/`protocol` (one set per frontend: Services x VIPs x ports),
//! `backend` (`addr:port`, one per backend of a frontend, bounded by `tables.max_backends`),
//! `state` (3 values), `target` (one per health-check target, at most one per backend).
//! Per frontend: 3 counters and 3 state gauges; per backend: 3 counters, 3 state gauges,
//! weight and Maglev share. Client addresses and flows are never labels.
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use sluice_dataplane::snapshot::BackendState;
use sluice_dataplane::stats::DropReason;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{api::Traffic, lock, traffic_minus, unix, AdminState, WorkerCounters};
use crate::compile::state_name;
use crate::health::Health;

/// Content type of the exposition (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry: the control plane's own histograms and counter, and a collector for the rest.
pub fn registry(state: Arc<AdminState>) -> Registry {
    let mut r = Registry::default();
    let t = state.telemetry.clone();
    r.register(
        "sluice_snapshot_compile_seconds",
        "Time to compile a snapshot from the model",
        t.compile,
    );
    r.register(
        "sluice_snapshot_publish_seconds",
        "Time from sending a snapshot until every worker runs it",
        t.publish,
    );
    r.register(
        "sluice_snapshots_published",
        "Snapshots published to the workers",
        t.published,
    );
    r.register(
        "sluice_maglev_resizes",
        "Maglev tables that changed size (each remaps almost all new flows of its frontend)",
        t.maglev_resizes,
    );
    r.register_collector(Box::new(SluiceCollector(state)));
    r
}

/// Encodes the registry as OpenMetrics text.
pub fn encode(r: &Registry) -> String {
    let mut s = String::new();
    if prometheus_client::encoding::text::encode(&mut s, r).is_err() {
        s.clear();
        let _ = writeln!(s, "# encoding failed\n# EOF");
    }
    s
}

type Labels = Vec<(&'static str, String)>;

enum Value {
    Counter(u64),
    Gauge(f64),
}

/// Writes one metric family.
fn family(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, Value)>,
) -> std::fmt::Result {
    let mut rows = rows.into_iter().peekable();
    let ty = match rows.peek() {
        Some((_, Value::Counter(_))) => MetricType::Counter,
        Some((_, Value::Gauge(_))) => MetricType::Gauge,
        None => return Ok(()),
    };
    let mut m = enc.encode_descriptor(name, help, None, ty)?;
    let rows: Vec<(Labels, Value)> = rows.collect();
    if let [(labels, v)] = rows.as_slice() {
        if labels.is_empty() {
            // No labels: `name value`, not `name{} value`.
            return match v {
                Value::Counter(c) => ConstCounter::new(*c).encode(m),
                Value::Gauge(g) => ConstGauge::new(*g).encode(m),
            };
        }
    }
    for (labels, v) in rows {
        let f = m.encode_family(&labels)?;
        match v {
            Value::Counter(c) => ConstCounter::new(c).encode(f)?,
            Value::Gauge(g) => ConstGauge::new(g).encode(f)?,
        }
    }
    Ok(())
}

fn worker_label(i: usize) -> Labels {
    vec![("worker", i.to_string())]
}

/// Reads everything at scrape time.
#[derive(Debug)]
struct SluiceCollector(Arc<AdminState>);

impl Collector for SluiceCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let st = &*self.0;
        let g = |v: f64| Value::Gauge(v);
        let c = |v: u64| Value::Counter(v);
        family(
            &mut enc,
            "sluice_build_info",
            "Always 1; the version label is sluiced's version",
            [(vec![("version", st.version.to_owned())], g(1.0))],
        )?;
        family(
            &mut enc,
            "sluice_start_time_seconds",
            "When sluiced started (Unix time)",
            [(vec![], g(unix(st.started)))],
        )?;

        // Workers.
        let raw: Vec<WorkerCounters> = st
            .workers
            .iter()
            .map(|w| WorkerCounters::read(&w.stats))
            .collect();
        let per_worker = |f: &dyn Fn(&WorkerCounters) -> u64| -> Vec<(Labels, Value)> {
            raw.iter()
                .enumerate()
                .map(|(i, w)| (worker_label(i), c(f(w))))
                .collect()
        };
        family(
            &mut enc,
            "sluice_worker_rx_packets",
            "Packets received by the worker",
            per_worker(&|w| w.rx_packets),
        )?;
        family(
            &mut enc,
            "sluice_worker_rx_bytes",
            "Bytes received by the worker",
            per_worker(&|w| w.rx_bytes),
        )?;
        family(
            &mut enc,
            "sluice_worker_tx_packets",
            "Packets sent by the worker",
            per_worker(&|w| w.tx_packets),
        )?;
        family(
            &mut enc,
            "sluice_worker_tx_bytes",
            "Bytes sent by the worker",
            per_worker(&|w| w.tx_bytes),
        )?;
        family(
            &mut enc,
            "sluice_worker_new_flows",
            "New flows scheduled by the worker",
            per_worker(&|w| w.new_flows),
        )?;
        family(
            &mut enc,
            "sluice_worker_nat_port_retries",
            "NAT allocations whose first port was in use and that looked further (port pressure)",
            per_worker(&|w| w.nat_port_retries),
        )?;
        family(
            &mut enc,
            "sluice_worker_polls",
            "Poll-loop iterations",
            per_worker(&|w| w.polls),
        )?;
        family(
            &mut enc,
            "sluice_worker_busy_polls",
            "Poll-loop iterations that received packets",
            per_worker(&|w| w.busy_polls),
        )?;
        family(
            &mut enc,
            "sluice_worker_busy_cycles",
            "TSC cycles spent in iterations that had packets",
            per_worker(&|w| w.busy_cycles),
        )?;
        family(
            &mut enc,
            "sluice_worker_idle_sleeps",
            "Sleeps of a worker in idle mode ([workers] poll = \"idle\")",
            per_worker(&|w| w.idle_sleeps),
        )?;
        family(
            &mut enc,
            "sluice_worker_tcp_resets",
            "TCP resets sent for segments of unknown nat flows ([forwarding] reset_unknown_flows)",
            per_worker(&|w| w.tcp_resets),
        )?;
        family(
            &mut enc,
            "sluice_worker_syn_cookies_sent",
            "SYN-ACKs with a cookie sent by the SYN proxy",
            per_worker(&|w| w.syn_cookies_sent),
        )?;
        family(
            &mut enc,
            "sluice_worker_syn_cookies_valid",
            "Client ACKs with a valid cookie: connections the SYN proxy opened to a backend",
            per_worker(&|w| w.syn_cookies_valid),
        )?;
        family(
            &mut enc,
            "sluice_worker_syn_proxy_engagements",
            "Times an auto SYN-proxy frontend's proxy engaged on the worker (embryonic flows \
             reached [forwarding] syn_proxy_auto_threshold)",
            per_worker(&|w| w.syn_proxy_engagements),
        )?;
        family(
            &mut enc,
            "sluice_worker_cycles",
            "TSC cycles of the poll loop in total",
            per_worker(&|w| w.total_cycles),
        )?;
        let rates = lock(&st.samples).worker_rates.clone();
        family(
            &mut enc,
            "sluice_worker_busy_ratio",
            "Share of the last second's poll-loop cycles spent on iterations that had packets",
            (0..st.workers.len()).map(|i| (worker_label(i), g(rates.get(i).map_or(0.0, |r| r.2)))),
        )?;
        family(
            &mut enc,
            "sluice_worker_snapshot_generation",
            "Generation of the snapshot the worker runs",
            st.workers.iter().enumerate().map(|(i, w)| {
                (
                    worker_label(i),
                    g(w.stats.snapshot_generation.load(Relaxed) as f64),
                )
            }),
        )?;
        family(
            &mut enc,
            "sluice_drops",
            "Packets dropped, by worker and reason (see GET /v1/drops for the meanings)",
            raw.iter().enumerate().flat_map(|(i, w)| {
                DropReason::ALL.iter().map(move |r| {
                    (
                        vec![("worker", i.to_string()), ("reason", r.name().to_owned())],
                        Value::Counter(w.drops[*r as usize]),
                    )
                })
            }),
        )?;

        // Connection tables.
        let ct = |f: &dyn Fn(&sluice_dataplane::stats::WorkerStats) -> u64| -> Vec<u64> {
            st.workers.iter().map(|w| f(&w.stats)).collect()
        };
        let gauges = |v: Vec<u64>| -> Vec<(Labels, Value)> {
            v.into_iter()
                .enumerate()
                .map(|(i, x)| (worker_label(i), Value::Gauge(x as f64)))
                .collect()
        };
        let counters = |v: Vec<u64>| -> Vec<(Labels, Value)> {
            v.into_iter()
                .enumerate()
                .map(|(i, x)| (worker_label(i), Value::Counter(x)))
                .collect()
        };
        family(
            &mut enc,
            "sluice_worker_syn_proxy_engaged",
            "Auto SYN-proxy frontends whose SYNs the worker answers with cookies now",
            gauges(ct(&|s| s.syn_proxy_engaged.load(Relaxed))),
        )?;
        family(
            &mut enc,
            "sluice_conntrack_entries",
            "Live forward flows in the worker's tables",
            gauges(ct(&|s| s.ct_entries.load(Relaxed))),
        )?;
        family(
            &mut enc,
            "sluice_conntrack_capacity",
            "Forward-flow capacity of the worker's tables",
            gauges(ct(&|s| s.ct_capacity.load(Relaxed))),
        )?;
        family(
            &mut enc,
            "sluice_conntrack_inserts",
            "Flows inserted",
            counters(ct(&|s| s.ct_inserts.load(Relaxed))),
        )?;
        family(
            &mut enc,
            "sluice_conntrack_evictions",
            "Live flows evicted because their buckets were full",
            counters(ct(&|s| s.ct_evictions.load(Relaxed))),
        )?;
        family(
            &mut enc,
            "sluice_conntrack_evictions_established",
            "Established TCP, UDP and other flows evicted (forward or reverse table): each ended a live connection",
            counters(ct(&|s| s.ct_evictions_established.load(Relaxed))),
        )?;
        family(
            &mut enc,
            "sluice_conntrack_evictions_embryonic",
            "Flows still in their handshake evicted (forward or reverse table) to make room",
            counters(ct(&|s| s.ct_evictions_embryonic.load(Relaxed))),
        )?;
        family(
            &mut enc,
            "sluice_conntrack_refusals",
            "New connections refused because their buckets held only established flows",
            counters(ct(&|s| s.ct_refusals.load(Relaxed))),
        )?;
        family(
            &mut enc,
            "sluice_conntrack_expiries",
            "Flows expired after their idle timeout",
            counters(ct(&|s| s.ct_expiries.load(Relaxed))),
        )?;
        family(
            &mut enc,
            "sluice_conntrack_hits",
            "Lookups that found a flow",
            counters(ct(&|s| s.ct_hits.load(Relaxed))),
        )?;
        family(
            &mut enc,
            "sluice_conntrack_misses",
            "Lookups that found no flow",
            counters(ct(&|s| s.ct_misses.load(Relaxed))),
        )?;

        // Ports (sampled every second by the control loop).
        {
            let s = lock(&st.samples);
            let pf = |f: &dyn Fn(&super::PortCounters) -> u64| -> Vec<(Labels, Value)> {
                st.ports
                    .iter()
                    .zip(&s.ports)
                    .map(|(p, c)| (vec![("port", p.name.clone())], Value::Counter(f(c))))
                    .collect()
            };
            family(
                &mut enc,
                "sluice_port_rx_packets",
                "Packets received by the DPDK port",
                pf(&|c| c.rx_packets),
            )?;
            family(
                &mut enc,
                "sluice_port_tx_packets",
                "Packets sent by the DPDK port",
                pf(&|c| c.tx_packets),
            )?;
            family(
                &mut enc,
                "sluice_port_rx_bytes",
                "Bytes received by the DPDK port",
                pf(&|c| c.rx_bytes),
            )?;
            family(
                &mut enc,
                "sluice_port_tx_bytes",
                "Bytes sent by the DPDK port",
                pf(&|c| c.tx_bytes),
            )?;
            family(
                &mut enc,
                "sluice_port_rx_missed",
                "Packets the NIC dropped because the RX queues were full",
                pf(&|c| c.rx_missed),
            )?;
            family(
                &mut enc,
                "sluice_port_rx_errors",
                "Erroneous packets received",
                pf(&|c| c.rx_errors),
            )?;
            family(
                &mut enc,
                "sluice_port_tx_errors",
                "Failed transmissions",
                pf(&|c| c.tx_errors),
            )?;
            family(
                &mut enc,
                "sluice_port_rx_nombuf",
                "RX mbuf allocation failures",
                pf(&|c| c.rx_nombuf),
            )?;
        }

        // Health checks.
        let statuses = st.health.statuses();
        family(
            &mut enc,
            "sluice_health_check_up",
            "1 while the health-check target passes, 0 while it is down",
            statuses.iter().map(|(t, s)| {
                (
                    vec![("target", t.to_string())],
                    g(if s.health == Health::Up { 1.0 } else { 0.0 }),
                )
            }),
        )?;
        family(
            &mut enc,
            "sluice_health_check_last_change_timestamp_seconds",
            "When the target's health last changed (or it was added), Unix time",
            statuses
                .iter()
                .map(|(t, s)| (vec![("target", t.to_string())], g(unix(s.since)))),
        )?;

        // The published snapshot: services, frontends, backends.
        let live = st.live();
        let r = &live.report;
        family(
            &mut enc,
            "sluice_snapshot_generation",
            "Generation of the last published snapshot",
            [(vec![], g(r.generation as f64))],
        )?;
        family(
            &mut enc,
            "sluice_snapshot_published_timestamp_seconds",
            "When the last snapshot was published, Unix time",
            [(vec![], g(unix(live.published)))],
        )?;
        family(
            &mut enc,
            "sluice_services",
            "Services served",
            [(vec![], g(r.services.len() as f64))],
        )?;
        family(
            &mut enc,
            "sluice_service_problems",
            "Problems the compile reports for the Service (0 when all is well)",
            r.services.iter().map(|s| {
                (
                    vec![("service", s.service.to_string())],
                    g(s.problems.len() as f64),
                )
            }),
        )?;
        family(
            &mut enc,
            "sluice_next_hops_unresolved",
            "Backend next hops whose MAC is not known yet",
            [(vec![], g(r.unresolved.len() as f64))],
        )?;
        family(
            &mut enc,
            "sluice_source_error",
            "1 while the source's last read failed (the last good state is served)",
            [(
                vec![],
                g(if live.source_error.is_some() {
                    1.0
                } else {
                    0.0
                }),
            )],
        )?;

        struct Fe {
            labels: Labels,
            traffic: Traffic,
            counters: super::api::FrontendCounters,
            states: [usize; 3],
            backends: Vec<(Labels, Traffic, BackendState, u32, f64)>,
        }
        let fes: Vec<Fe> = r
            .services
            .iter()
            .flat_map(|s| s.frontends.iter().map(move |f| (s, f)))
            .map(|(s, f)| {
                let labels: Labels = vec![
                    ("service", s.service.to_string()),
                    ("vip", f.vip.to_string()),
                    ("port", f.port.to_string()),
                    ("protocol", f.protocol.name().to_ascii_lowercase()),
                ];
                let shares = live.shares.get(&f.id).map(|(_, s)| s.as_slice());
                let mut total = Traffic::default();
                let mut states = [0usize; 3];
                let backends = f
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let origin = live.owners.get(&b.id).map(|o| o.1).unwrap_or_default();
                        let t = traffic_minus(st.raw_target(b.id), origin);
                        total.add(t);
                        states[state_index(b.state)] += 1;
                        let share = match shares.and_then(|s| s.get(i)) {
                            Some(e) if f.maglev_size > 0 => {
                                f64::from(*e) / f64::from(f.maglev_size)
                            }
                            _ => 0.0,
                        };
                        let mut l = labels.clone();
                        l.push((
                            "backend",
                            std::net::SocketAddr::new(b.addr, b.port).to_string(),
                        ));
                        (l, t, b.state, b.weight, share)
                    })
                    .collect();
                Fe {
                    counters: st.frontend_counters(&live, f.id),
                    labels,
                    traffic: total,
                    states,
                    backends,
                }
            })
            .collect();
        drop(live);
        family(
            &mut enc,
            "sluice_frontend_packets",
            "Packets forwarded for the VIP:port",
            fes.iter().map(|f| (f.labels.clone(), c(f.traffic.packets))),
        )?;
        family(
            &mut enc,
            "sluice_frontend_bytes",
            "Bytes forwarded for the VIP:port",
            fes.iter().map(|f| (f.labels.clone(), c(f.traffic.bytes))),
        )?;
        family(
            &mut enc,
            "sluice_frontend_new_flows",
            "New flows to the VIP:port",
            fes.iter()
                .map(|f| (f.labels.clone(), c(f.traffic.new_flows))),
        )?;
        family(
            &mut enc,
            "sluice_frontend_active_flows",
            "Flows to the VIP:port tracked now (all workers)",
            fes.iter()
                .map(|f| (f.labels.clone(), g(f.traffic.active_flows as f64))),
        )?;
        family(
            &mut enc,
            "sluice_frontend_new_flows_refused",
            "New flows of the VIP:port its new-flow budgets refused, by budget (vip, source)",
            fes.iter().flat_map(|f| {
                [
                    ("vip", f.counters.refused_vip_budget),
                    ("source", f.counters.refused_source_budget),
                ]
                .into_iter()
                .map(move |(b, n)| {
                    let mut l = f.labels.clone();
                    l.push(("budget", b.to_owned()));
                    (l, c(n))
                })
            }),
        )?;
        family(
            &mut enc,
            "sluice_frontend_syn_cookies_sent",
            "SYN-ACKs with a cookie the SYN proxy sent for the VIP:port",
            fes.iter()
                .map(|f| (f.labels.clone(), c(f.counters.syn_cookies_sent))),
        )?;
        family(
            &mut enc,
            "sluice_frontend_syn_proxy_engaged_workers",
            "Workers whose SYN proxy answers the VIP:port's SYNs with cookies now (auto mode)",
            fes.iter().map(|f| {
                (
                    f.labels.clone(),
                    g(f.counters.syn_proxy_engaged_workers as f64),
                )
            }),
        )?;
        family(
            &mut enc,
            "sluice_frontend_backends",
            "Backends of the VIP:port by state (active, draining, down)",
            fes.iter().flat_map(|f| {
                STATES.iter().enumerate().map(move |(i, s)| {
                    let mut l = f.labels.clone();
                    l.push(("state", state_name(*s).to_owned()));
                    (l, Value::Gauge(f.states[i] as f64))
                })
            }),
        )?;
        let bs = || fes.iter().flat_map(|f| f.backends.iter());
        family(
            &mut enc,
            "sluice_backend_packets",
            "Packets forwarded to the backend",
            bs().map(|b| (b.0.clone(), c(b.1.packets))),
        )?;
        family(
            &mut enc,
            "sluice_backend_bytes",
            "Bytes forwarded to the backend",
            bs().map(|b| (b.0.clone(), c(b.1.bytes))),
        )?;
        family(
            &mut enc,
            "sluice_backend_new_flows",
            "New flows scheduled to the backend",
            bs().map(|b| (b.0.clone(), c(b.1.new_flows))),
        )?;
        family(
            &mut enc,
            "sluice_backend_active_flows",
            "Flows to the backend tracked now (all workers)",
            bs().map(|b| (b.0.clone(), g(b.1.active_flows as f64))),
        )?;
        family(
            &mut enc,
            "sluice_backend_state",
            "1 for the backend's current state (active, draining, down), 0 for the others",
            bs().flat_map(|b| {
                STATES.iter().map(move |s| {
                    let mut l = b.0.clone();
                    l.push(("state", state_name(*s).to_owned()));
                    (l, Value::Gauge(if *s == b.2 { 1.0 } else { 0.0 }))
                })
            }),
        )?;
        family(
            &mut enc,
            "sluice_backend_weight",
            "Maglev weight of the backend",
            bs().map(|b| (b.0.clone(), g(f64::from(b.3)))),
        )?;
        family(
            &mut enc,
            "sluice_backend_maglev_share",
            "Share of the frontend's Maglev table the backend holds",
            bs().map(|b| (b.0.clone(), g(b.4))),
        )?;
        bgp(&mut enc, &st.bgp())?;
        l2(&mut enc, &st.l2())?;
        sync(&mut enc, &st.sync())
    }
}

/// Flow sync's series (none without `[sync]`).
fn sync(enc: &mut DescriptorEncoder<'_>, v: &super::api::SyncStatus) -> std::fmt::Result {
    if v.host.is_empty() {
        return Ok(());
    }
    let c = |n: u64| [(Vec::new(), Value::Counter(n))];
    family(
        enc,
        "sluice_sync_published",
        "Flow updates the workers put on their sync rings",
        c(v.published),
    )?;
    family(
        enc,
        "sluice_sync_ring_full",
        "Flow updates dropped: a worker's sync ring was full",
        c(v.ring_full),
    )?;
    family(
        enc,
        "sluice_sync_records_sent",
        "Flow records sent, summed over peers",
        c(v.records_sent),
    )?;
    family(
        enc,
        "sluice_sync_send_dropped",
        "Flow records not sent: over a peer's rate limit or the send failed",
        c(v.send_dropped),
    )?;
    family(
        enc,
        "sluice_sync_bytes_sent",
        "Bytes of sync datagrams sent",
        c(v.bytes_sent),
    )?;
    family(
        enc,
        "sluice_sync_records_received",
        "Valid flow records received",
        c(v.records_received),
    )?;
    family(
        enc,
        "sluice_sync_installed",
        "Synced flows installed by the workers",
        c(v.installed),
    )?;
    family(
        enc,
        "sluice_sync_conflicts",
        "Synced flows not installed (unknown here, or an own flow holds the key or port)",
        c(v.conflicts),
    )?;
    family(
        enc,
        "sluice_sync_adopted",
        "Synced flows whose packets came here, carried by this host now",
        c(v.adopted),
    )?;
    family(
        enc,
        "sluice_sync_ring_queued",
        "Flow updates waiting in the sync rings",
        [(Vec::new(), Value::Gauge(v.ring_queued as f64))],
    )?;
    family(
        enc,
        "sluice_sync_dropped",
        "Sync datagrams dropped, by reason",
        v.dropped
            .iter()
            .map(|(r, n)| (vec![("reason", r.clone())], Value::Counter(*n))),
    )?;
    family(
        enc,
        "sluice_sync_peer_records_received",
        "Valid flow records received from each peer",
        v.peers.iter().map(|p| {
            (
                vec![("peer", p.name.clone())],
                Value::Counter(p.records_received),
            )
        }),
    )?;
    family(
        enc,
        "sluice_sync_peer_lag_ms",
        "Our clock minus the peer's at its last message (transit plus skew)",
        v.peers.iter().filter_map(|p| {
            p.lag_ms
                .map(|l| (vec![("peer", p.name.clone())], Value::Gauge(l as f64)))
        }),
    )
}

/// L2 mode's series (none without `[l2]`).
fn l2(enc: &mut DescriptorEncoder<'_>, v: &super::api::L2Status) -> std::fmt::Result {
    if v.host.is_empty() {
        return Ok(());
    }
    family(
        enc,
        "sluice_l2_peer_up",
        "1 while the other host's heartbeats arrive",
        v.peers.iter().map(|p| {
            (
                vec![("peer", p.name.clone())],
                Value::Gauge(if p.alive { 1.0 } else { 0.0 }),
            )
        }),
    )?;
    family(
        enc,
        "sluice_l2_owned_vips",
        "VIPs this host owns (answers ARP/NDP for)",
        [(Vec::new(), Value::Gauge(v.owned as f64))],
    )?;
    family(
        enc,
        "sluice_l2_ownership_changes",
        "VIP owner changes this host has seen",
        [(Vec::new(), Value::Counter(v.ownership_changes))],
    )?;
    family(
        enc,
        "sluice_l2_heartbeats_received",
        "Valid heartbeats received",
        [(Vec::new(), Value::Counter(v.heartbeats_received))],
    )?;
    family(
        enc,
        "sluice_l2_heartbeats_dropped",
        "Heartbeats dropped, by reason",
        v.dropped
            .iter()
            .map(|(r, n)| (vec![("reason", r.clone())], Value::Counter(*n))),
    )
}

/// BGP session states `sluice_bgp_session_state` exports (BIRD's names, and `Down`).
const BGP_STATES: [&str; 7] = [
    "Idle",
    "Connect",
    "Active",
    "OpenSent",
    "OpenConfirm",
    "Established",
    "Down",
];

/// Routed mode's series (none without `[bgp]`).
fn bgp(enc: &mut DescriptorEncoder<'_>, v: &super::BgpView) -> std::fmt::Result {
    let b = &v.doc;
    if !b.enabled {
        return Ok(());
    }
    let peer = |p: &super::api::BgpPeer| -> Labels { vec![("peer", p.name.clone())] };
    family(
        enc,
        "sluice_bgp_session_up",
        "1 while the BGP session with the peer is Established",
        b.peers.iter().map(|p| {
            let up = p.state == "Established";
            (peer(p), Value::Gauge(if up { 1.0 } else { 0.0 }))
        }),
    )?;
    family(
        enc,
        "sluice_bgp_session_state",
        "1 for the BGP session's current state, 0 for the others",
        b.peers.iter().flat_map(|p| {
            BGP_STATES.iter().map(move |s| {
                let mut l = peer(p);
                l.push(("state", (*s).to_owned()));
                (l, Value::Gauge(if p.state == *s { 1.0 } else { 0.0 }))
            })
        }),
    )?;
    family(
        enc,
        "sluice_bgp_bfd_up",
        "1 while the BFD session with the peer is Up (peers with BFD on)",
        b.peers.iter().filter_map(|p| {
            let up = p.bfd.as_deref()? == "Up";
            Some((peer(p), Value::Gauge(if up { 1.0 } else { 0.0 })))
        }),
    )?;
    let v6 = b.announced.iter().filter(|p| p.contains(':')).count();
    let v4 = b.announced.len() - v6;
    family(
        enc,
        "sluice_bgp_announced_prefixes",
        "Prefixes BIRD was last configured to announce",
        [("ipv4", v4), ("ipv6", v6)]
            .map(|(f, n)| (vec![("family", f.to_owned())], Value::Gauge(n as f64))),
    )?;
    family(
        enc,
        "sluice_bgp_drained",
        "1 while the operator has drained the host (nothing announced)",
        [(vec![], Value::Gauge(if b.drained { 1.0 } else { 0.0 }))],
    )?;
    family(
        enc,
        "sluice_bgp_configure_failures",
        "Announcement changes BIRD did not take (retried every second)",
        [(vec![], Value::Counter(v.configure_failures))],
    )?;
    family(
        enc,
        "sluice_bgp_status_failures",
        "Reads of BIRD's session state that failed (its control socket did not answer)",
        [(vec![], Value::Counter(v.status_failures))],
    )?;
    let Some(bird) = &b.bird else {
        return Ok(()); // attach mode: the operator's BIRD
    };
    family(
        enc,
        "sluice_bgp_bird_up",
        "1 while the supervised BIRD process runs",
        [(
            vec![],
            Value::Gauge(if bird.pid.is_some() { 1.0 } else { 0.0 }),
        )],
    )?;
    family(
        enc,
        "sluice_bgp_bird_restarts",
        "Times sluiced restarted the supervised BIRD after it exited",
        [(vec![], Value::Counter(bird.starts.saturating_sub(1)))],
    )
}

const STATES: [BackendState; 3] = [
    BackendState::Active,
    BackendState::Draining,
    BackendState::Down,
];

fn state_index(s: BackendState) -> usize {
    match s {
        BackendState::Active => 0,
        BackendState::Draining => 1,
        BackendState::Down => 2,
    }
}

/// A running metrics listener; dropping it stops serving.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` and serves `GET /metrics` from the current tokio runtime.
    ///
    /// # Errors
    /// Binding fails (address in use, not local).
    pub fn start(state: Arc<AdminState>, addr: SocketAddr) -> io::Result<MetricsServer> {
        let std = std::net::TcpListener::bind(addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "metrics listener {addr}: {e}; set [admin] metrics_listen to a free address \
                     or metrics_enabled = false"
                ),
            )
        })?;
        std.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std)?;
        let addr = listener.local_addr()?;
        info!(listen = %addr, "metrics listening on /metrics");
        let registry = Arc::new(registry(state));
        let task = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        warn!(error = %e, "metrics accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let reg = registry.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let reg = reg.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&reg, &req)) }
                    });
                    if let Err(e) = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await
                    {
                        debug!(error = %e, "metrics connection ended with an error");
                    }
                });
            }
        });
        Ok(MetricsServer { addr, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(reg: &Registry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/metrics") => (200, CONTENT_TYPE, encode(reg)),
        ("GET", "/") => (
            200,
            "text/plain; charset=utf-8",
            "sluiced metrics: GET /metrics\n".to_owned(),
        ),
        _ => (
            404,
            "text/plain; charset=utf-8",
            "not found: GET /metrics\n".to_owned(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
