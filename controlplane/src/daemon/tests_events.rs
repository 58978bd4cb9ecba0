//! Routed mode's Events over the daemon's real code path: the Kubernetes source against the
//! in-process fake API server (`tests/support/fakeapi.rs`), the real [`ControlState`], and the
//! real BGP task driving a supervised BIRD whose only peer does not exist. An announce records
//! one `BGPAnnounced` Event naming the host and the peer, losing the endpoints one
//! `BGPWithdrawn`, and nothing more while nothing changes.
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use sluice_dataplane::stats::WorkerStats;

use super::bgp::Routed;
use super::bgp_events::Notifier;
use super::ControlState;
use crate::config::Config;
use crate::sources::kubernetes::{KubeSettings, Kubernetes};

use crate::fakeapi;

const CFG: &str = r#"
[[ports]]
name = "lb0"
device = "net_null0"
ipv4 = ["10.99.0.2/24"]

[tables]
maglev_size = 251

[forwarding]
removed_backend_grace_seconds = 0

[health]
enabled = false

[source]
kind = "kubernetes"
debounce_ms = 20

[[pools]]
name = "lab"
ranges = ["10.99.0.100-10.99.0.102"]
"#;

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some("default".into()),
        ..ObjectMeta::default()
    }
}

fn service() -> corev1::Service {
    corev1::Service {
        metadata: meta("web"),
        spec: Some(corev1::ServiceSpec {
            type_: Some("LoadBalancer".into()),
            load_balancer_class: Some("sluice.dev/dpdk".into()),
            ports: Some(vec![corev1::ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::Int(8080)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn slice(ready: bool) -> discoveryv1::EndpointSlice {
    let mut m = meta("web-a");
    m.labels = Some(
        [("kubernetes.io/service-name".to_owned(), "web".to_owned())]
            .into_iter()
            .collect(),
    );
    discoveryv1::EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints: Some(vec![discoveryv1::Endpoint {
            addresses: vec!["10.99.0.21".into()],
            conditions: Some(discoveryv1::EndpointConditions {
                ready: Some(ready),
                serving: Some(ready),
                terminating: Some(false),
            }),
            ..Default::default()
        }]),
        ports: Some(vec![discoveryv1::EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

/// The BGP Events on `default/web`.
fn bgp_events(api: &fakeapi::FakeApi) -> Vec<Value> {
    api.events()
        .into_iter()
        .filter(|e| {
            e["regarding"]["name"] == "web"
                && e["reason"].as_str().is_some_and(|r| r.starts_with("BGP"))
        })
        .collect()
}

/// Applies whatever the source has batched, publishes, and lets the workers "run" it.
fn pump(state: &mut ControlState, stats: &[Arc<WorkerStats>]) {
    let k = state.kube.as_mut().unwrap();
    let mut n = 0;
    let mut batches = Vec::new();
    while let Some(b) = k.try_next_batch() {
        batches.push(b);
    }
    for b in batches {
        n += b.apply(&mut state.model);
    }
    state.compile_and_publish(if n > 0 {
        "kubernetes changed"
    } else {
        "periodic"
    });
    let gen = state.last_report().map_or(0, |r| r.generation);
    for s in stats {
        s.snapshot_generation.store(gen, Relaxed);
    }
    state.bgp.as_mut().unwrap().flush();
}

/// Pumps until `cond` holds on the BGP Events (at most 10 s).
async fn until(
    api: &fakeapi::FakeApi,
    state: &mut ControlState,
    stats: &[Arc<WorkerStats>],
    cond: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    for _ in 0..200 {
        pump(state, stats);
        let ev = bgp_events(api);
        if cond(&ev) {
            return ev;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out; BGP Events: {:#?}", bgp_events(api));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announce_and_withdraw_are_each_one_event_naming_host_and_peers() {
    let api = fakeapi::FakeApi::start().await;
    api.upsert(&service());
    api.upsert(&slice(true));
    let cfg = Config::parse(CFG, "test.toml").unwrap();
    let mut settings = KubeSettings::from_config(&cfg);
    settings.identity = "h1".into();
    settings.lease = None;
    let mut k = Kubernetes::start(api.client(), settings);
    let model = k.initial_model().await;
    let mut state = ControlState::new(cfg, model, [2, 0x99, 0, 0, 0, 2], "/nonexistent".into());
    state.attach_kubernetes(k);
    state
        .neighbours
        .insert("10.99.0.21".parse().unwrap(), [2, 0x99, 0, 0, 0, 0x21]);
    let stats: Vec<Arc<WorkerStats>> = (0..2)
        .map(|_| Arc::new(WorkerStats::new(state.cfg.tables.max_backends)))
        .collect();
    state.compile_and_publish("start");

    let dir = tempfile::tempdir().unwrap();
    let bgp = super::tests::unreachable_peer_bgp(dir.path());
    let notifier = Notifier::new("h1".into(), state.host_events(), &bgp);
    let routed = Routed::start(&bgp, None, stats.clone(), notifier).unwrap();
    state.attach_bgp(routed);

    // Announced once the workers run the snapshot: one Event, naming VIP, host and peer.
    let ev = until(&api, &mut state, &stats, |e| !e.is_empty()).await;
    assert_eq!(ev.len(), 1, "{ev:#?}");
    assert_eq!(ev[0]["reason"], "BGPAnnounced");
    assert_eq!(ev[0]["type"], "Normal");
    assert_eq!(ev[0]["reportingInstance"], "h1");
    let note = ev[0]["note"].as_str().unwrap();
    assert!(note.starts_with("VIP 10.99.0.100 announced by host h1 to nowhere (192.0.2.1, "));
    assert!(
        !note.contains("Established"),
        "the peer does not exist: {note}"
    );
    let prefixes = std::fs::read_to_string(dir.path().join("prefixes.conf")).unwrap();
    assert!(prefixes.contains("10.99.0.100/32"), "{prefixes}");

    // The Service loses its endpoints: withdrawn, one more Event with the cause.
    api.upsert(&slice(false));
    let ev = until(&api, &mut state, &stats, |e| e.len() >= 2).await;
    assert_eq!(ev.len(), 2, "{ev:#?}");
    let w = ev.iter().find(|e| e["reason"] == "BGPWithdrawn").unwrap();
    assert_eq!(w["action"], "WithdrawNoReadyBackend");
    let note = w["note"].as_str().unwrap();
    assert!(
        note.starts_with(
            "VIP 10.99.0.100 withdrawn by host h1 (no ready backend) from nowhere (192.0.2.1, "
        ),
        "{note}"
    );
    let prefixes = std::fs::read_to_string(dir.path().join("prefixes.conf")).unwrap();
    assert!(!prefixes.contains("10.99.0.100"), "{prefixes}");

    // Nothing changes for two seconds of publishes and session reads: no new Event, and no
    // repeat folded into a series.
    for _ in 0..40 {
        pump(&mut state, &stats);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ev = bgp_events(&api);
    assert_eq!(ev.len(), 2, "{ev:#?}");
    assert!(ev.iter().all(|e| e["series"].is_null()), "{ev:#?}");

    let routed = state.bgp.take().unwrap();
    tokio::task::spawn_blocking(move || routed.stop())
        .await
        .unwrap();
}

/// L2 mode: the host that comes to own a Service's VIP records one `L2Announced` Event naming
/// the VIP, the host and the interface; nothing more while nothing changes. The only peer
/// listed never answers, so this host owns every VIP once it has listened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_owner_records_one_event_naming_the_host() {
    let api = fakeapi::FakeApi::start().await;
    api.upsert(&service());
    api.upsert(&slice(true));
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let text = format!(
        "{CFG}\n[l2]\nhost = \"h1\"\ninterface = \"lo\"\nkey = \"0123456789abcdef\"\nport = {port}\n\
         [[l2.peers]]\nname = \"h1\"\naddress = \"127.0.0.1\"\n\
         [[l2.peers]]\nname = \"h2\"\naddress = \"127.0.0.2\"\n"
    );
    let cfg = Config::parse(&text, "test.toml").unwrap();
    let mut settings = KubeSettings::from_config(&cfg);
    settings.identity = "h1".into();
    settings.lease = None;
    let mut k = Kubernetes::start(api.client(), settings);
    let model = k.initial_model().await;
    let l2cfg = cfg.l2.clone().unwrap();
    let mut state = ControlState::new(cfg, model, [2, 0x99, 0, 0, 0, 2], "/nonexistent".into());
    state.attach_kubernetes(k);
    state
        .neighbours
        .insert("10.99.0.21".parse().unwrap(), [2, 0x99, 0, 0, 0, 0x21]);
    let mut l2 = crate::l2::L2::start(&l2cfg, Vec::new(), None).unwrap();
    l2.set_workers_run();
    state.attach_l2(l2);

    let l2_events = |api: &fakeapi::FakeApi| -> Vec<Value> {
        api.events()
            .into_iter()
            .filter(|e| e["reason"] == "L2Announced")
            .collect()
    };
    let mut ev = Vec::new();
    for _ in 0..100 {
        state.compile_and_publish("periodic");
        ev = l2_events(&api);
        if !ev.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ev.len(), 1, "{ev:#?}");
    assert_eq!(ev[0]["regarding"]["name"], "web");
    assert_eq!(ev[0]["reportingInstance"], "h1");
    assert_eq!(
        ev[0]["note"],
        "VIP 10.99.0.100 announced by host h1 on lo (L2 mode: this host answers ARP/NDP for it)"
    );
    for _ in 0..20 {
        state.compile_and_publish("periodic");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(l2_events(&api).len(), 1);
}
