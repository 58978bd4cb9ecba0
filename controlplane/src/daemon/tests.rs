//! The admin API over the daemon's real control state: the handlers and metrics on the lab's
//! example configuration and manifests, with fake workers (counters and command channels);
//! writes go through [`ControlState::admin_request`] exactly as the control loop carries them
//! out.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use crossbeam_channel::Receiver;
use sluice_dataplane::conntrack::FlowState;
use sluice_dataplane::pipeline::{FlowEntry, Fwd};
use sluice_dataplane::stats::{bump, DropReason, WorkerStats};
use sluice_dataplane::worker::{Command, FlowAnswer};

use super::ControlState;
use crate::admin::{
    api, handle, metrics, AdminState, BackendOp, ControlRequest, PortLink, Reply, Setup, WorkerLink,
};
use crate::config::Config;
use crate::sources::manifest;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Fixture {
    st: Arc<AdminState>,
    stats: Vec<Arc<WorkerStats>>,
    commands: Vec<Receiver<Command>>,
    /// The daemon's control state, published to `st`.
    state: Arc<Mutex<ControlState>>,
}

const WORKERS: usize = 2;

/// The example configuration (health checks off: nothing here answers probes) and manifests,
/// compiled and published once, with every backend's MAC known.
fn fixture() -> (Fixture, tokio::sync::mpsc::Receiver<ControlRequest>) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let cfg_path = PathBuf::from(format!("{root}/docs/examples/sluice.toml"));
    let mut cfg = Config::load(&cfg_path).unwrap();
    cfg.health.enabled = false;
    let manifest_dir = PathBuf::from(format!("{root}/docs/examples/manifests"));
    let model = manifest::load_dir(&manifest_dir).unwrap().model;
    let mut state = ControlState::new(cfg.clone(), model, [2, 0x99, 0, 0, 0, 2], manifest_dir);
    let mut stats = Vec::new();
    let mut commands = Vec::new();
    let mut links = Vec::new();
    for w in 0..WORKERS {
        let s = Arc::new(WorkerStats::new(cfg.tables.max_backends));
        let (tx, rx) = crossbeam_channel::bounded(16);
        links.push(WorkerLink {
            index: w as u16,
            core: Some(w + 1),
            queues: vec![format!("lb0/q{w}")],
            stats: s.clone(),
            commands: tx,
        });
        stats.push(s);
        commands.push(rx);
    }
    let (st, rx) = AdminState::new(Setup {
        config_path: cfg_path,
        config: cfg,
        workers: links,
        ports: vec![PortLink {
            name: "lb0".into(),
            device: "net_af_packet0,iface=sl-lb0".into(),
            mac: [2, 0x99, 0, 0, 0, 2],
        }],
        health: state.health.view(),
        timeouts: Default::default(),
    });
    for i in 1..=3u8 {
        let mac = [2, 0x99, 0, 0, 0, 0x20 + i];
        state.neighbours.insert(ip(&format!("10.99.0.2{i}")), mac);
        state.neighbours.insert(ip(&format!("fd00:99::2{i}")), mac);
    }
    state.attach_admin(st.clone());
    state.compile_and_publish("test");
    st.set_neighbours(&state.neighbours);
    (
        Fixture {
            st,
            stats,
            commands,
            state: Arc::new(Mutex::new(state)),
        },
        rx,
    )
}

/// Runs the control loop's admin branch: every request goes to the real state.
fn control_loop(f: &Fixture, mut rx: tokio::sync::mpsc::Receiver<ControlRequest>) {
    let state = f.state.clone();
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            state.lock().unwrap().admin_request(req);
        }
    });
}

/// The generation of the last published snapshot.
fn generation(f: &Fixture) -> u64 {
    let st = f.state.lock().unwrap();
    st.last_report().map_or(0, |r| r.generation)
}

async fn get(st: &Arc<AdminState>, target: &str) -> Reply {
    handle(st, "GET", target, b"").await
}

fn ok<T: serde::de::DeserializeOwned>(r: Reply) -> T {
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

fn err(r: Reply, status: u16) -> String {
    assert_eq!(r.status, status, "{}", r.body);
    let e: api::ErrorBody = serde_json::from_str(&r.body).unwrap();
    assert_eq!(e.status, status);
    e.error
}

/// The id of backend `addr:port` on the frontend `vip:vport`.
fn backend_id(f: &Fixture, vip: &str, vport: u16, addr: &str, port: u16) -> u32 {
    let st = f.state.lock().unwrap();
    st.last_report()
        .unwrap()
        .services
        .iter()
        .flat_map(|s| &s.frontends)
        .find(|fe| fe.vip == ip(vip) && fe.port == vport)
        .and_then(|fe| {
            fe.backends
                .iter()
                .find(|x| x.addr == ip(addr) && x.port == port)
        })
        .map(|x| x.id)
        .unwrap()
}

#[tokio::test]
async fn services_list_and_detail() {
    let (f, _rx) = fixture();
    let list: Vec<api::ServiceSummary> = ok(get(&f.st, "/v1/services").await);
    assert_eq!(list.len(), 1);
    let s = &list[0];
    assert_eq!(s.service, "default/web");
    assert_eq!(
        s.vips,
        vec![
            api::Vip {
                addr: ip("10.99.0.100"),
                pool: Some("lab".into())
            },
            api::Vip {
                addr: ip("fd00:99::100"),
                pool: Some("lab".into())
            }
        ]
    );
    let ports: Vec<(u16, &str)> = s
        .ports
        .iter()
        .map(|p| (p.port, p.protocol.as_str()))
        .collect();
    assert_eq!(ports, vec![(80, "tcp"), (9000, "tcp"), (9001, "udp")]);
    assert_eq!((s.method.as_str(), s.target.as_str()), ("nat", "pod"));
    assert_eq!(s.external_traffic_policy, "Cluster");
    assert_eq!(s.backends.active, 18, "3 ports x 3 pods x 2 families");
    assert!(s.problems.is_empty(), "{:?}", s.problems);

    // Traffic on sl-b1's HTTP backend, from two workers.
    let id = backend_id(&f, "10.99.0.100", 80, "10.99.0.21", 8080);
    let other = backend_id(&f, "10.99.0.100", 80, "10.99.0.22", 8080);
    for s in &f.stats {
        bump(&s.targets[id as usize].packets, 10);
        bump(&s.targets[id as usize].bytes, 1000);
        bump(&s.targets[id as usize].new_flows, 3);
        bump(&s.targets[other as usize].new_flows, 1);
    }
    // One of sl-b1's flows ended on the first worker: 5 of its 6 flows are active.
    bump(&f.stats[0].targets[id as usize].closed_flows, 1);
    let d: api::ServiceDetail = ok(get(&f.st, "/v1/services/default/web").await);
    assert_eq!(d.frontends.len(), 6);
    let http = &d.frontends[0];
    assert_eq!(
        (http.vip, http.port, http.protocol.as_str()),
        (ip("10.99.0.100"), 80, "tcp")
    );
    assert_eq!(http.backends.len(), 3);
    let total: u32 = http.backends.iter().map(|b| b.maglev_entries).sum();
    assert_eq!(total, http.maglev_size);
    for b in &http.backends {
        assert!((b.maglev_share - 1.0 / 3.0).abs() < 0.02, "{b:?}");
        assert_eq!(b.state, "active");
        assert_eq!(b.weight, 1);
        assert!(b.mac.is_some());
    }
    let b1 = &http.backends[0];
    assert_eq!((b1.addr, b1.port), (ip("10.99.0.21"), 8080));
    assert_eq!(
        b1.traffic,
        api::Traffic {
            packets: 20,
            bytes: 2000,
            new_flows: 6,
            active_flows: 5,
        }
    );
    assert_eq!(http.traffic.active_flows, 7, "5 on sl-b1, 2 on sl-b2");
    assert_eq!(d.summary.traffic.active_flows, 7);
    assert!((b1.flow_share - 0.75).abs() < 1e-9);
    assert_eq!(http.traffic.new_flows, 8);
    assert_eq!(d.summary.traffic.new_flows, 8);

    // The flat backend list, filtered by Service.
    let rows: Vec<api::BackendRow> = ok(get(&f.st, "/v1/backends?service=default%2Fweb").await);
    assert_eq!(rows.len(), 18);
    assert!(rows.iter().all(|r| r.service == "default/web"));
}

#[tokio::test]
async fn errors_say_what_to_do() {
    let (f, _rx) = fixture();
    let e = err(get(&f.st, "/v1/services/default/nope").await, 404);
    assert!(
        e.contains("default/nope") && e.contains("sluicectl services"),
        "{e}"
    );
    let e = err(get(&f.st, "/v1/nothing").await, 404);
    assert!(e.contains("GET /"), "{e}");
    let e = err(handle(&f.st, "DELETE", "/v1/status", b"").await, 405);
    assert!(e.contains("use GET"), "{e}");
    let e = err(
        handle(&f.st, "GET", "/v1/backends/10.99.0.21/drain", b"").await,
        405,
    );
    assert!(e.contains("use POST"), "{e}");
    let e = err(get(&f.st, "/v1/backends?service=web").await, 400);
    assert!(e.contains("NAMESPACE/NAME"), "{e}");
    let e = err(get(&f.st, "/v1/conntrack").await, 400);
    assert!(e.contains("client=IP"), "{e}");
    let e = err(
        get(&f.st, "/v1/conntrack?client=10.99.0.11&vip=fd00:99::100").await,
        400,
    );
    assert!(e.contains("families"), "{e}");
    let e = err(
        get(&f.st, "/v1/conntrack?client=10.99.0.11&bogus=1").await,
        400,
    );
    assert!(e.contains("bogus"), "{e}");
    let index: serde_json::Value = ok(get(&f.st, "/").await);
    assert!(index["endpoints"].as_array().unwrap().len() > 10);
    let v: api::Version = ok(get(&f.st, "/v1/version").await);
    assert_eq!(v.api, "v1");
    let c: api::ConfigDoc = ok(get(&f.st, "/v1/config").await);
    assert_eq!(c.file["ports"][0]["name"], "lb0");
}

#[tokio::test]
async fn status_workers_drops_and_reset() {
    let (f, _rx) = fixture();
    bump(&f.stats[0].rx_packets, 100);
    bump(&f.stats[1].rx_packets, 50);
    f.stats[1].drop_packet(DropReason::NoVip);
    f.stats[0].ct_entries.store(10, Relaxed);
    f.stats[0].ct_capacity.store(100, Relaxed);
    f.stats[1].ct_capacity.store(100, Relaxed);
    f.st.sample(vec![Default::default()]);
    bump(&f.stats[0].rx_packets, 1000);
    bump(&f.stats[0].busy_cycles, 250);
    bump(&f.stats[0].total_cycles, 1000);
    std::thread::sleep(std::time::Duration::from_millis(20));
    f.st.sample(vec![Default::default()]);

    let s: api::Status = ok(get(&f.st, "/v1/status").await);
    assert_eq!((s.services, s.frontends, s.workers), (1, 6, 2));
    assert_eq!(s.backends.active, 18);
    assert_eq!(s.drops, 1);
    assert_eq!(s.conntrack.entries, 10);
    assert_eq!(s.conntrack.capacity, 200);
    assert!(s.rx_pps > 0.0);
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    assert_eq!(s.source, "manifests");

    let w: Vec<api::WorkerRow> = ok(get(&f.st, "/v1/workers").await);
    assert_eq!(w.len(), 2);
    assert_eq!((w[0].rx_packets, w[1].rx_packets), (1100, 50));
    assert!((w[0].busy_ratio - 0.25).abs() < 1e-9, "{}", w[0].busy_ratio);
    assert_eq!(w[0].queues, vec!["lb0/q0"]);
    assert!((w[0].conntrack.fill - 0.1).abs() < 1e-9);

    let d: api::Drops = ok(get(&f.st, "/v1/drops").await);
    assert_eq!(d.total, 1);
    assert_eq!(d.reasons.len(), DropReason::COUNT);
    let novip = d.reasons.iter().find(|r| r.reason == "no_vip").unwrap();
    assert_eq!(novip.per_worker, vec![0, 1]);
    assert!(!novip.description.is_empty());

    // Reset: the API counts from now, gauges are untouched.
    let r = handle(&f.st, "POST", "/v1/counters/reset", b"").await;
    assert_eq!(r.status, 200, "{}", r.body);
    bump(&f.stats[1].rx_packets, 7);
    f.stats[0].drop_packet(DropReason::NoBackend);
    let w: Vec<api::WorkerRow> = ok(get(&f.st, "/v1/workers").await);
    assert_eq!((w[0].rx_packets, w[1].rx_packets), (0, 7));
    assert_eq!(w[0].conntrack.entries, 10);
    let d: api::Drops = ok(get(&f.st, "/v1/drops").await);
    assert_eq!(d.total, 1);
    assert_eq!(
        d.reasons
            .iter()
            .find(|r| r.reason == "no_backend")
            .unwrap()
            .total,
        1
    );
    let s: api::Status = ok(get(&f.st, "/v1/status").await);
    assert!(s.counters_reset_unix.is_some());

    let p: Vec<api::PortRow> = ok(get(&f.st, "/v1/ports").await);
    assert_eq!(p[0].name, "lb0");
    let n: api::Neighbours = ok(get(&f.st, "/v1/neighbours").await);
    assert_eq!(n.neighbours.len(), 6);
    assert!(n.neighbours.iter().all(|x| x.next_hop));
    assert!(n.unresolved.is_empty());
    let h: Vec<api::HealthRow> = ok(get(&f.st, "/v1/health").await);
    assert!(h.is_empty(), "no targets are probed in this test");
}

/// Drains and weights set over the admin API are written to `admin.state_dir` and restored
/// by the next daemon; an invalid file is reported and ignored.
#[tokio::test]
async fn drains_and_weights_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (f, rx) = fixture();
    let cfg = {
        let mut st = f.state.lock().unwrap();
        st.cfg.admin.state_dir = dir.path().join("state");
        assert_eq!(st.restore_overrides().unwrap(), 0, "nothing kept yet");
        st.cfg.clone()
    };
    control_loop(&f, rx);
    let _: api::BackendChange =
        ok(handle(&f.st, "POST", "/v1/backends/10.99.0.22/drain", b"").await);
    let _: api::BackendChange = ok(handle(
        &f.st,
        "POST",
        "/v1/backends/10.99.0.21/weight",
        b"{\"weight\": 3}",
    )
    .await);
    let file = dir.path().join("state/overrides.json");
    assert!(file.exists());

    // The next daemon: same configuration, fresh state.
    let restart = || {
        let model = f.state.lock().unwrap().model.clone();
        ControlState::new(cfg.clone(), model, [2, 0x99, 0, 0, 0, 2], PathBuf::new())
    };
    let mut next = restart();
    assert_eq!(next.restore_overrides().unwrap(), 2);
    let report = next.compile(&HashMap::new()).unwrap().report;
    let backends: Vec<_> = report
        .services
        .iter()
        .flat_map(|s| &s.frontends)
        .flat_map(|fe| &fe.backends)
        .collect();
    let b22 = backends
        .iter()
        .find(|b| b.addr == ip("10.99.0.22"))
        .unwrap();
    assert_eq!(b22.reason.as_deref(), Some("drained by the operator"));
    let b21 = backends
        .iter()
        .find(|b| b.addr == ip("10.99.0.21"))
        .unwrap();
    assert_eq!(b21.weight, 3);

    // An invalid file: reported, not fatal, no overrides.
    std::fs::write(&file, "{\"drained\": [\"10.99.0.300\"]}").unwrap();
    let mut next = restart();
    let e = next.restore_overrides().unwrap_err().to_string();
    assert!(
        e.contains("overrides.json") && e.contains("fix or delete it"),
        "{e}"
    );
    assert!(next.drained.is_empty() && next.weights.is_empty());
}

#[tokio::test]
async fn drain_weight_and_undrain_go_through_the_control_loop() {
    let (f, rx) = fixture();
    control_loop(&f, rx);
    let gen0 = generation(&f);
    let r = handle(&f.st, "POST", "/v1/backends/10.99.0.22/drain", b"").await;
    let c: api::BackendChange = ok(r);
    assert!(c.drained);
    assert_eq!(c.backends, 3, "three ports of one IPv4 backend");
    assert!(c.generation > gen0);
    let d: api::ServiceDetail = ok(get(&f.st, "/v1/services/default/web").await);
    let b22 = d.frontends[0]
        .backends
        .iter()
        .find(|b| b.addr == ip("10.99.0.22"))
        .unwrap();
    assert_eq!(b22.state, "draining");
    assert_eq!(b22.reason.as_deref(), Some("drained by the operator"));
    assert_eq!(d.summary.backends.draining, 3);
    let s: api::Status = ok(get(&f.st, "/v1/status").await);
    assert_eq!(s.drained, vec![ip("10.99.0.22")]);

    // Weights: validated, then carried into the Maglev table.
    let e = err(
        handle(
            &f.st,
            "POST",
            "/v1/backends/10.99.0.21/weight",
            b"{\"weight\": 20000}",
        )
        .await,
        400,
    );
    assert!(e.contains("maximum"), "{e}");
    let e = err(
        handle(&f.st, "POST", "/v1/backends/10.99.0.21/weight", b"three").await,
        400,
    );
    assert!(e.contains("{\"weight\": N}"), "{e}");
    let c: api::BackendChange = ok(handle(
        &f.st,
        "POST",
        "/v1/backends/10.99.0.21/weight",
        b"{\"weight\": 3}",
    )
    .await);
    assert_eq!(c.weight, Some(3));
    let d: api::ServiceDetail = ok(get(&f.st, "/v1/services/default/web").await);
    let http = &d.frontends[0];
    assert_eq!(http.backends[0].weight, 3);
    assert!(http.backends[0].maglev_entries > 2 * http.backends[2].maglev_entries);

    // Unknown and not-drained addresses.
    let e = err(
        handle(&f.st, "POST", "/v1/backends/10.99.0.99/drain", b"").await,
        404,
    );
    assert!(e.contains("sluicectl backends"), "{e}");
    let e = err(
        handle(&f.st, "POST", "/v1/backends/10.99.0.23/undrain", b"").await,
        404,
    );
    assert!(e.contains("not drained"), "{e}");
    let e = err(
        handle(&f.st, "POST", "/v1/backends/not-an-ip/drain", b"").await,
        400,
    );
    assert!(e.contains("not an IP"), "{e}");

    let c: api::BackendChange =
        ok(handle(&f.st, "POST", "/v1/backends/10.99.0.22/undrain", b"").await);
    assert!(!c.drained);
    let d: api::ServiceDetail = ok(get(&f.st, "/v1/services/default/web").await);
    assert_eq!(d.summary.backends.draining, 0);

    // Reload reads the manifest directory again and publishes a new generation.
    let before = generation(&f);
    let r: api::Reloaded = ok(handle(&f.st, "POST", "/v1/reload", b"").await);
    assert_eq!(r.services, 1);
    assert!(r.dir.ends_with("docs/examples/manifests"), "{}", r.dir);
    assert_eq!(r.generation, generation(&f));
    assert!(r.generation >= before);
}

#[tokio::test]
async fn conntrack_lookup_asks_every_worker() {
    let (f, _rx) = fixture();
    let id = backend_id(&f, "10.99.0.100", 80, "10.99.0.21", 8080);
    // Worker 0 has the flow; worker 1 has none.
    let workers: Vec<_> = f
        .commands
        .iter()
        .cloned()
        .enumerate()
        .map(|(w, rx)| {
            std::thread::spawn(move || {
                let Ok(Command::FindFlows { query, reply }) = rx.recv() else {
                    panic!("expected FindFlows");
                };
                assert_eq!(query.client, ip("10.99.0.11"));
                assert_eq!(query.client_port, Some(40000));
                assert_eq!(query.proto, Some(6));
                let flows = if w == 0 {
                    vec![FlowEntry {
                        src: query.client,
                        dst: ip("10.99.0.100"),
                        sport: 40000,
                        dport: 80,
                        proto: 6,
                        fwd: Fwd {
                            backend: id,
                            nat_port: 20001,
                            nat_addr: 0,
                            flags: 0,
                            seq: 0,
                        },
                        state: FlowState::TcpEstablished,
                        last_seen_ms: 1000,
                    }]
                } else {
                    Vec::new()
                };
                reply
                    .send(FlowAnswer {
                        worker: w as u16,
                        now_ms: 3500,
                        flows,
                    })
                    .unwrap();
            })
        })
        .collect();
    let c: api::Conntrack = ok(get(
        &f.st,
        "/v1/conntrack?client=10.99.0.11&client_port=40000&protocol=tcp",
    )
    .await);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(c.workers_answered, 2);
    assert!(c.workers_unanswered.is_empty());
    assert_eq!(c.flows.len(), 1);
    let fl = &c.flows[0];
    assert_eq!(fl.worker, 0);
    assert_eq!(fl.backend.as_deref(), Some("10.99.0.21:8080"));
    assert_eq!(fl.backend_state.as_deref(), Some("active"));
    assert_eq!(fl.frontend.as_deref(), Some("default/web:http"));
    assert_eq!(fl.nat.as_deref(), Some("10.99.0.3:20001"));
    assert_eq!(fl.state, "tcp_established");
    assert_eq!(fl.idle_ms, 2500);
    assert_eq!(fl.expires_in_ms, 300_000 - 2500);
    assert_eq!(fl.protocol, "tcp");
}

#[tokio::test]
async fn backend_op_rules() {
    let (f, _rx) = fixture();
    let st = f.state.lock().unwrap();
    let mut drained = BTreeSet::new();
    let mut weights = BTreeMap::new();
    let r = st.last_report();
    assert_eq!(
        BackendOp::Drain.apply(ip("fd00:99::21"), r, &mut drained, &mut weights),
        Ok(3)
    );
    assert!(drained.contains(&ip("fd00:99::21")));
    assert_eq!(
        BackendOp::Drain
            .apply(ip("10.1.1.1"), r, &mut drained, &mut weights)
            .unwrap_err()
            .status,
        404
    );
    assert_eq!(
        BackendOp::Weight(Some(0)).apply(ip("10.99.0.21"), r, &mut drained, &mut weights),
        Ok(3)
    );
    assert_eq!(weights.get(&ip("10.99.0.21")), Some(&0));
    assert_eq!(
        BackendOp::Weight(None).apply(ip("10.99.0.21"), r, &mut drained, &mut weights),
        Ok(3)
    );
    assert!(weights.is_empty());
    assert_eq!(
        BackendOp::Undrain.apply(ip("fd00:99::21"), r, &mut drained, &mut weights),
        Ok(3)
    );
    assert!(drained.is_empty());
}

#[tokio::test]
async fn reused_backend_ids_count_from_their_new_owner() {
    let (f, _rx) = fixture();
    let id = backend_id(&f, "10.99.0.100", 80, "10.99.0.21", 8080);
    bump(&f.stats[0].targets[id as usize].packets, 5);
    let live = f.st.live();
    assert_eq!(live.owners[&id].1, api::Traffic::default());
    drop(live);
    // Pretend another backend took the id: its counting starts from the current value.
    {
        let mut live = f.st.live_mut();
        live.owners
            .insert(id, ((999, ip("10.0.0.1"), 1), api::Traffic::default()));
    }
    let (model, report, snap) = {
        let mut st = f.state.lock().unwrap();
        let report = st.last_report().unwrap().clone();
        let snap = st.compile(&HashMap::new()).unwrap().snapshot;
        (st.model.clone(), report, snap)
    };
    f.st.publish_snapshot(&report, &snap, &model, &BTreeSet::new(), &BTreeMap::new());
    assert_eq!(f.st.live().owners[&id].1.packets, 5);
}

/// Parses the metrics text with a Prometheus text-format parser and checks the series.
#[tokio::test]
async fn metrics_scrape_parses_with_expected_series() {
    let (f, _rx) = fixture();
    let id = backend_id(&f, "10.99.0.100", 80, "10.99.0.21", 8080);
    bump(&f.stats[1].targets[id as usize].packets, 42);
    bump(&f.stats[1].targets[id as usize].new_flows, 4);
    bump(&f.stats[1].targets[id as usize].closed_flows, 1);
    f.stats[0].drop_packet(DropReason::SourceDenied);
    bump(&f.stats[1].nat_port_retries, 7);
    // Budget refusals of the HTTP frontend: two by its own budget (both workers), one by a
    // source prefix's; the limit counters of other reasons are not per frontend.
    let d: api::ServiceDetail = ok(get(&f.st, "/v1/services/default/web").await);
    let fid = |port: u16| {
        d.frontends
            .iter()
            .find(|x| x.vip == ip("10.99.0.100") && x.port == port && x.protocol == "tcp")
            .unwrap()
            .id as usize
    };
    f.stats[0].frontends[fid(80)].limited(DropReason::VipFlowLimit);
    f.stats[1].frontends[fid(80)].limited(DropReason::VipFlowLimit);
    f.stats[1].frontends[fid(80)].limited(DropReason::SourceFlowLimit);
    f.stats[1].frontends[fid(80)].limited(DropReason::NoBackend);
    bump(&f.stats[0].frontends[fid(80)].syn_cookies_sent, 3);
    bump(&f.stats[1].frontends[fid(80)].syn_cookies_sent, 2);
    bump(&f.stats[1].frontends[fid(80)].syn_proxy_engaged, 1);
    f.st.observe_compile(std::time::Duration::from_millis(2));
    f.st.sample(vec![dpdk_sys::PortStats {
        rx_packets: 9,
        rx_missed: 1,
        ..Default::default()
    }]);
    let text = metrics::encode(&metrics::registry(f.st.clone()));
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let find = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"));
        match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name}: unexpected type"),
        }
    };
    let fe = [
        ("service", "default/web"),
        ("vip", "10.99.0.100"),
        ("port", "80"),
        ("protocol", "tcp"),
    ];
    let mut be = fe.to_vec();
    be.push(("backend", "10.99.0.21:8080"));
    assert_eq!(find("sluice_backend_packets_total", &be), 42.0);
    assert_eq!(find("sluice_backend_new_flows_total", &be), 4.0);
    assert_eq!(find("sluice_frontend_new_flows_total", &fe), 4.0);
    let refused = |port: &str, budget: &str| {
        let mut l = fe.to_vec();
        l.retain(|(k, _)| *k != "port");
        l.push(("port", port));
        l.push(("budget", budget));
        find("sluice_frontend_new_flows_refused_total", &l)
    };
    assert_eq!(refused("80", "vip"), 2.0);
    assert_eq!(refused("80", "source"), 1.0);
    assert_eq!(refused("9000", "vip"), 0.0);
    let d: api::ServiceDetail = ok(get(&f.st, "/v1/services/default/web").await);
    let http = d
        .frontends
        .iter()
        .find(|x| x.id as usize == fid(80))
        .unwrap();
    assert_eq!(
        http.counters,
        api::FrontendCounters {
            refused_vip_budget: 2,
            refused_source_budget: 1,
            syn_cookies_sent: 5,
            syn_proxy_engaged_workers: 1,
        }
    );
    assert_eq!(find("sluice_frontend_syn_cookies_sent_total", &fe), 5.0);
    assert_eq!(find("sluice_frontend_syn_proxy_engaged_workers", &fe), 1.0);
    assert_eq!(find("sluice_backend_active_flows", &be), 3.0);
    assert_eq!(find("sluice_frontend_active_flows", &fe), 3.0);
    let mut active = fe.to_vec();
    active.push(("state", "active"));
    assert_eq!(find("sluice_frontend_backends", &active), 3.0);
    let mut st = be.clone();
    st.push(("state", "active"));
    assert_eq!(find("sluice_backend_state", &st), 1.0);
    assert!((find("sluice_backend_maglev_share", &be) - 1.0 / 3.0).abs() < 0.02);
    assert_eq!(find("sluice_backend_weight", &be), 1.0);
    assert_eq!(
        find(
            "sluice_drops_total",
            &[("worker", "0"), ("reason", "source_denied")]
        ),
        1.0
    );
    assert_eq!(
        find(
            "sluice_drops_total",
            &[("worker", "1"), ("reason", "no_vip")]
        ),
        0.0
    );
    assert_eq!(find("sluice_port_rx_missed_total", &[("port", "lb0")]), 1.0);
    assert_eq!(
        find("sluice_worker_nat_port_retries_total", &[("worker", "1")]),
        7.0
    );
    assert_eq!(find("sluice_conntrack_capacity", &[("worker", "1")]), 0.0);
    assert_eq!(find("sluice_services", &[]), 1.0);
    assert_eq!(find("sluice_snapshot_generation", &[]), 1.0);
    assert_eq!(find("sluice_next_hops_unresolved", &[]), 0.0);
    assert_eq!(find("sluice_build_info", &[]), 1.0);
    assert!(text.contains("sluice_snapshot_compile_seconds_bucket"));
    assert!(text.contains("# TYPE sluice_worker_busy_ratio gauge"));
    // Every drop reason of every worker is exported, even at zero.
    let drops = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "sluice_drops_total")
        .count();
    assert_eq!(drops, WORKERS * DropReason::COUNT);
}

/// A `[bgp]` section whose one peer does not exist, for a supervised BIRD in `runtime_dir`: the
/// real announce path with no router behind it.
pub(super) fn unreachable_peer_bgp(runtime_dir: &std::path::Path) -> crate::config::BgpConfig {
    let mut bgp: crate::config::BgpConfig = toml::from_str(
        r#"
asn = 64512
router_id = "192.0.2.11"
next_hop_v4 = "10.99.0.2"
linger_seconds = 0
[[peers]]
name = "nowhere"
address = "192.0.2.1"
asn = 65000
"#,
    )
    .unwrap();
    bgp.runtime_dir = runtime_dir.to_owned();
    bgp
}

async fn bgp_doc(f: &Fixture) -> api::Bgp {
    ok(get(&f.st, "/v1/bgp").await)
}

/// Routed mode over the real control state and a real (supervised) BIRD whose only peer does
/// not exist: nothing is announced before the workers run the snapshot, then the VIPs with a
/// ready backend and the NAT addresses; drain withdraws everything and undrain announces again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgp_announces_after_the_workers_forward_and_drain_withdraws() {
    let (f, rx) = fixture();
    let dir = tempfile::tempdir().unwrap();
    let bgp = unreachable_peer_bgp(dir.path());
    let gen = generation(&f);
    {
        let mut st = f.state.lock().unwrap();
        let cfg = st.cfg.clone();
        let notifier = super::bgp_events::Notifier::new("h1".into(), None, &bgp);
        let routed =
            super::bgp::Routed::start(&bgp, Some(f.st.clone()), f.stats.clone(), notifier).unwrap();
        st.attach_bgp(routed);
        let nat = cfg.nat.addresses.clone();
        assert!(!nat.is_empty(), "the example config has NAT addresses");
    }
    control_loop(&f, rx);
    // The fake workers have not taken the snapshot: nothing is announced.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(bgp_doc(&f).await.announced.is_empty());
    for s in &f.stats {
        s.snapshot_generation.store(gen, Relaxed);
    }
    f.state.lock().unwrap().bgp.as_mut().unwrap().flush();
    let mut b = bgp_doc(&f).await;
    for _ in 0..100 {
        if !b.announced.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        b = bgp_doc(&f).await;
    }
    assert!(b.enabled && !b.drained);
    let expected: BTreeSet<String> = {
        let st = f.state.lock().unwrap();
        let r = st.last_report().unwrap();
        let mut v: BTreeSet<String> = r
            .services
            .iter()
            .flat_map(|s| &s.frontends)
            .filter(|fe| fe.backends.iter().any(|b| b.mac.is_some()))
            .map(|fe| ipnet::IpNet::from(fe.vip).to_string())
            .collect();
        v.extend(
            st.cfg
                .nat
                .addresses
                .iter()
                .map(|a| ipnet::IpNet::from(*a).to_string()),
        );
        v
    };
    assert_eq!(
        b.announced.iter().cloned().collect::<BTreeSet<_>>(),
        expected
    );
    // The prefixes file BIRD reads holds them too.
    let prefixes = std::fs::read_to_string(dir.path().join("prefixes.conf")).unwrap();
    for p in &expected {
        assert!(prefixes.contains(p.as_str()), "{p} not in {prefixes}");
    }

    // Drain: nothing announced, reported in the answer, the status and the metrics.
    let d: api::Bgp = ok(handle(&f.st, "POST", "/v1/host/drain", b"").await);
    assert!(d.drained, "{d:?}");
    assert!(d.announced.is_empty(), "{d:?}");
    let s: api::Status = ok(get(&f.st, "/v1/status").await);
    let sum = s.bgp.unwrap();
    assert!(sum.drained && sum.announced == 0 && sum.peers == 1);
    // BIRD was read at least once: the peer is there, and not up.
    let mut b = bgp_doc(&f).await;
    for _ in 0..60 {
        if !b.peers.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        b = bgp_doc(&f).await;
    }
    assert_eq!(b.peers.len(), 1);
    assert_eq!(b.peers[0].name, "nowhere");
    assert_ne!(b.peers[0].state, "Established");
    assert!(b.bird.as_ref().unwrap().pid.is_some());
    let text = metrics::encode(&metrics::registry(f.st.clone()));
    assert!(text.contains("sluice_bgp_drained 1"), "{text}");
    assert!(
        text.contains("sluice_bgp_session_up{peer=\"nowhere\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("sluice_bgp_announced_prefixes{family=\"ipv4\"} 0"),
        "{text}"
    );
    assert!(text.contains("sluice_bgp_bird_restarts_total 0"), "{text}");

    // Undrain: announced again.
    let u: api::Bgp = ok(handle(&f.st, "POST", "/v1/host/undrain", b"").await);
    assert!(!u.drained);
    assert_eq!(
        u.announced.iter().cloned().collect::<BTreeSet<_>>(),
        expected
    );

    let routed = f.state.lock().unwrap().bgp.take().unwrap();
    tokio::task::spawn_blocking(move || routed.stop())
        .await
        .unwrap();
}

/// Without `[bgp]`, drain is refused with the reason.
#[tokio::test]
async fn host_drain_without_bgp_is_a_conflict() {
    let (f, rx) = fixture();
    control_loop(&f, rx);
    let e = err(handle(&f.st, "POST", "/v1/host/drain", b"").await, 409);
    assert!(e.contains("no [bgp] section"), "{e}");
    let b: api::Bgp = ok(get(&f.st, "/v1/bgp").await);
    assert!(!b.enabled);
}

/// A Maglev table that changes size (the backend count crosses a rung of the automatic size)
/// is counted in `sluice_maglev_resizes_total`, once.
#[tokio::test]
async fn maglev_resizes_are_counted() {
    use crate::model::AddressType;
    let (f, _rx) = fixture();
    let resizes = |f: &Fixture| -> f64 {
        let text = metrics::encode(&metrics::registry(f.st.clone()));
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        match scrape
            .samples
            .iter()
            .find(|s| s.metric == "sluice_maglev_resizes_total")
            .map(|s| &s.value)
        {
            Some(
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v),
            ) => *v,
            other => panic!("sluice_maglev_resizes_total: {other:?}"),
        }
    };
    assert_eq!(resizes(&f), 0.0);
    let resized = {
        let mut st = f.state.lock().unwrap();
        // The example's IPv4 slice of default/web lists 3 endpoints (1031 slots); a fourth
        // takes its IPv4 frontends to the 4099 rung.
        let slice = st
            .model
            .endpoint_slices
            .values_mut()
            .find(|s| s.service.as_deref() == Some("web") && s.address_type == AddressType::IPv4)
            .unwrap();
        assert_eq!(slice.endpoints.len(), 3);
        let mut e = slice.endpoints[0].clone();
        e.addresses = vec![ip("10.99.0.24")];
        slice.endpoints.push(e);
        st.compile_and_publish("test");
        let r = st.last_report().unwrap();
        let sizes: Vec<u32> = r
            .services
            .iter()
            .flat_map(|s| &s.frontends)
            .filter(|f| f.vip.is_ipv4() && f.backends.len() == 4)
            .map(|f| f.maglev_size)
            .collect();
        assert!(
            !sizes.is_empty() && sizes.iter().all(|&m| m == 4099),
            "{sizes:?}"
        );
        sizes.len()
    };
    assert_eq!(resizes(&f), resized as f64);
    // Compiling the same inputs again resizes nothing.
    f.state.lock().unwrap().compile_and_publish("test");
    assert_eq!(resizes(&f), resized as f64);
}

/// A frontend whose auto SYN proxy engages on a worker gets a Warning Event on its Service,
/// and a Normal one when it disengages; the log says which frontend either way.
#[tokio::test]
async fn syn_proxy_engagement_is_an_event_on_its_service() {
    use crate::sources::kubernetes::status::WriterMsg;
    use crate::sources::kubernetes::StatusReporter;
    let (f, _rx) = fixture();
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    f.st.attach_events(StatusReporter::new(tx).host_events());
    let d: api::ServiceDetail = ok(get(&f.st, "/v1/services/default/web").await);
    let http = d
        .frontends
        .iter()
        .find(|x| x.vip == ip("10.99.0.100") && x.port == 80 && x.protocol == "tcp")
        .unwrap()
        .id as usize;
    f.st.sample(Vec::new());
    assert!(events.try_recv().is_err(), "nothing engaged: no Event");
    bump(&f.stats[1].frontends[http].syn_proxy_engaged, 1);
    f.st.sample(Vec::new());
    match events.try_recv() {
        Ok(WriterMsg::Host(ev)) => {
            assert_eq!(ev.service.to_string(), "default/web");
            assert_eq!(
                (ev.reason, ev.action, ev.warning),
                ("SYNProxyEngaged", "Engage", true)
            );
            assert!(
                ev.note.contains("10.99.0.100:80") && ev.note.contains("1 worker"),
                "{}",
                ev.note
            );
        }
        other => panic!("expected an engagement Event, got {other:?}"),
    }
    // Still engaged (now on both workers): no second Event.
    bump(&f.stats[0].frontends[http].syn_proxy_engaged, 1);
    f.st.sample(Vec::new());
    assert!(events.try_recv().is_err());
    f.stats[0].frontends[http]
        .syn_proxy_engaged
        .store(0, Relaxed);
    f.stats[1].frontends[http]
        .syn_proxy_engaged
        .store(0, Relaxed);
    f.st.sample(Vec::new());
    match events.try_recv() {
        Ok(WriterMsg::Host(ev)) => {
            assert_eq!((ev.reason, ev.warning), ("SYNProxyDisengaged", false));
        }
        other => panic!("expected a disengagement Event, got {other:?}"),
    }
}
