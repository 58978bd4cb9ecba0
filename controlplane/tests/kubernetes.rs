//! The Kubernetes source against an in-process fake API server that speaks the real HTTP
//! protocol (see `support/fakeapi.rs`): watches into snapshots, IPAM through status, Events,
//! watch failures, leader election.
//!
//! Run with `cargo test -p sluice-controlplane --test kubernetes`.

#[path = "support/fakeapi.rs"]
mod fakeapi;
#[path = "support/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use fakeapi::{FakeApi, Res};
use harness::{eventually, Instance};
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_controlplane::config::Config;
use sluice_controlplane::health::{Health, ProbeTarget};
use sluice_controlplane::model::ObjectKey;
use sluice_controlplane::sources::kubernetes::lease::LeaseSettings;
use sluice_controlplane::sources::kubernetes::KubeSettings;

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

[[pools]]
name = "internal"
ranges = ["10.99.0.200-10.99.0.201"]
auto_assign = false
"#;

fn config(extra: &str) -> Config {
    Config::parse(&format!("{CFG}{extra}"), "test.toml").unwrap()
}

/// The test configuration with `keys` added to `[source]`.
fn source_config(keys: &str) -> Config {
    let text = CFG.replace("debounce_ms = 20\n", &format!("debounce_ms = 20\n{keys}"));
    Config::parse(&text, "test.toml").unwrap()
}

/// Settings for one instance: no leader election unless `lease` is given.
fn settings(cfg: &Config, identity: &str, lease: Option<LeaseSettings>) -> KubeSettings {
    let mut s = KubeSettings::from_config(cfg);
    s.identity = identity.to_owned();
    s.lease = lease;
    s
}

fn short_lease(identity: &str) -> LeaseSettings {
    LeaseSettings {
        namespace: "sluice-system".into(),
        name: "sluice".into(),
        identity: identity.into(),
        duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry: Duration::from_millis(200),
    }
}

fn meta(ns: &str, name: &str, annotations: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.into()),
        annotations: (!annotations.is_empty()).then(|| {
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        }),
        ..ObjectMeta::default()
    }
}

/// A LoadBalancer Service of Sluice's class with TCP `ports` (port -> 8080).
fn service(name: &str, ports: &[u16]) -> corev1::Service {
    corev1::Service {
        metadata: meta("default", name, &[]),
        spec: Some(corev1::ServiceSpec {
            type_: Some("LoadBalancer".into()),
            load_balancer_class: Some("sluice.dev/dpdk".into()),
            ports: Some(
                ports
                    .iter()
                    .map(|p| corev1::ServicePort {
                        name: Some(format!("p{p}")),
                        port: i32::from(*p),
                        target_port: Some(IntOrString::Int(8080)),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

fn with_annotations(mut s: corev1::Service, a: &[(&str, &str)]) -> corev1::Service {
    s.metadata.annotations = Some(
        a.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    s
}

fn with_lb_ip(mut s: corev1::Service, ip: &str) -> corev1::Service {
    s.spec.as_mut().unwrap().load_balancer_ip = Some(ip.into());
    s
}

/// An EndpointSlice of `svc` with `(address, ready)` endpoints on port 8080 (named like the
/// Service's first port).
fn slice(
    svc: &str,
    suffix: &str,
    port_name: &str,
    eps: &[(&str, bool)],
) -> discoveryv1::EndpointSlice {
    let mut m = meta("default", &format!("{svc}-{suffix}"), &[]);
    m.labels = Some(
        [("kubernetes.io/service-name".to_owned(), svc.to_owned())]
            .into_iter()
            .collect(),
    );
    discoveryv1::EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints: Some(
            eps.iter()
                .map(|(a, ready)| discoveryv1::Endpoint {
                    addresses: vec![(*a).into()],
                    conditions: Some(discoveryv1::EndpointConditions {
                        ready: Some(*ready),
                        serving: Some(*ready),
                        terminating: Some(false),
                    }),
                    node_name: Some("n1".into()),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(vec![discoveryv1::EndpointPort {
            name: Some(port_name.into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

fn node(name: &str, ip: &str) -> corev1::Node {
    corev1::Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: None,
        status: Some(corev1::NodeStatus {
            addresses: Some(vec![corev1::NodeAddress {
                type_: "InternalIP".into(),
                address: ip.into(),
            }]),
            conditions: Some(vec![corev1::NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn key(n: &str) -> ObjectKey {
    ObjectKey::new("default", n)
}

/// `status.loadBalancer.ingress` IPs of a Service in the fake server.
fn status_ips(api: &FakeApi, name: &str) -> Vec<String> {
    api.get::<corev1::Service>("default", name)
        .and_then(|s| s.status)
        .and_then(|s| s.load_balancer)
        .and_then(|l| l.ingress)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.ip)
        .collect()
}

/// A condition of a Service in the fake server.
fn condition(
    api: &FakeApi,
    name: &str,
    type_: &str,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    api.get::<corev1::Service>("default", name)?
        .status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == type_)
}

fn vips(inst: &Instance, name: &str) -> Vec<IpAddr> {
    inst.now()
        .report
        .service(&key(name))
        .map(|s| s.vips.clone())
        .unwrap_or_default()
}

/// Backend addresses of `name`'s first frontend in the published snapshot.
fn backends(inst: &Instance, name: &str) -> Vec<IpAddr> {
    let p = inst.now();
    let Some(s) = p.report.service(&key(name)) else {
        return Vec::new();
    };
    let Some(f) = s.frontends.first() else {
        return Vec::new();
    };
    let fe = p.snapshot.frontend(f.id).expect("frontend in the snapshot");
    let mut v: Vec<IpAddr> = fe
        .backends
        .iter()
        .map(|b| p.snapshot.backend(*b).unwrap().addr)
        .collect();
    v.sort();
    v
}

fn has_event(api: &FakeApi, name: &str, reason: &str) -> bool {
    api.events_for("default", name)
        .iter()
        .any(|(_, r, _)| r == reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_slices_flow_into_snapshots_and_status() {
    let api = FakeApi::start().await;
    api.upsert(&node("n1", "10.99.0.21"));
    api.upsert(&service("web", &[80]));
    api.upsert(&slice("web", "a", "p80", &[("10.99.0.21", true)]));
    let cfg = config("");
    let inst = Instance::start(api.client(), cfg.clone(), settings(&cfg, "a", None), vec![]).await;

    eventually("web is served with one backend", 10, || {
        backends(&inst, "web") == vec![ip("10.99.0.21")]
    })
    .await;
    assert_eq!(vips(&inst, "web"), vec![ip("10.99.0.100")]);
    eventually("status is written", 10, || {
        status_ips(&api, "web") == vec!["10.99.0.100"]
    })
    .await;
    let svc = api.get::<corev1::Service>("default", "web").unwrap();
    let ing = &svc.status.unwrap().load_balancer.unwrap().ingress.unwrap()[0];
    assert_eq!(ing.ip_mode.as_deref(), Some("VIP"));
    assert!(ing.ports.is_none(), "every port is served: no ports list");
    let allocated = condition(&api, "web", "sluice.dev/IPAllocated").unwrap();
    assert_eq!(
        (allocated.status.as_str(), allocated.reason.as_str()),
        ("True", "Allocated")
    );
    assert_eq!(allocated.message, "10.99.0.100 (pool lab)");
    let ready = condition(&api, "web", "sluice.dev/BackendsReady").unwrap();
    assert_eq!(ready.status, "True");
    let p = &api.status_patches()[0];
    assert!(
        p.content_type.starts_with("application/apply-patch+yaml"),
        "{p:?}"
    );
    assert_eq!(p.field_manager.as_deref(), Some("sluice"));
    assert!(p.force);
    eventually("IPAllocated Event", 10, || {
        has_event(&api, "web", "IPAllocated")
    })
    .await;
    let ev = api.events();
    let e = ev.iter().find(|e| e["reason"] == "IPAllocated").unwrap();
    assert_eq!(e["type"], "Normal");
    assert_eq!(e["regarding"]["kind"], "Service");
    assert!(e["regarding"]["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty()));
    assert!(e["note"]
        .as_str()
        .unwrap()
        .contains("10.99.0.100 (pool lab)"));
    assert_eq!(e["reportingController"], "sluice.dev/sluiced");

    // The slice grows: the new endpoint is in the next snapshot.
    api.upsert(&slice(
        "web",
        "a",
        "p80",
        &[("10.99.0.21", true), ("10.99.0.22", true)],
    ));
    eventually("two backends", 10, || {
        backends(&inst, "web") == vec![ip("10.99.0.21"), ip("10.99.0.22")]
    })
    .await;
    // A second slice of the same Service adds to it.
    api.upsert(&slice("web", "b", "p80", &[("10.99.0.23", true)]));
    eventually("three backends", 10, || backends(&inst, "web").len() == 3).await;
    // An endpoint that is not ready leaves; every endpoint gone: NoReadyBackends.
    api.delete::<discoveryv1::EndpointSlice>("default", "web-b");
    api.upsert(&slice("web", "a", "p80", &[("10.99.0.21", false)]));
    eventually("no backends", 10, || backends(&inst, "web").is_empty()).await;
    eventually("NoReadyBackends Event", 10, || {
        has_event(&api, "web", "NoReadyBackends")
    })
    .await;
    eventually("BackendsReady condition False", 10, || {
        condition(&api, "web", "sluice.dev/BackendsReady")
            .is_some_and(|c| c.status == "False" && c.reason == "NoReadyBackends")
    })
    .await;
    api.upsert(&slice("web", "a", "p80", &[("10.99.0.21", true)]));
    eventually("BackendsReady Event", 10, || {
        has_event(&api, "web", "BackendsReady")
    })
    .await;

    // The Service goes: its frontends go, and its VIP is free for the next one.
    api.delete::<corev1::Service>("default", "web");
    eventually("web gone", 10, || inst.now().report.services.is_empty()).await;
    assert_eq!(inst.now().snapshot.frontends().count(), 0);
    api.upsert(&service("next", &[80]));
    eventually("next gets the released VIP", 10, || {
        vips(&inst, "next") == vec![ip("10.99.0.100")]
    })
    .await;
    inst.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_exhaustion_is_an_event_and_resolves_when_an_ip_is_released() {
    let api = FakeApi::start().await;
    for n in ["s1", "s2", "s3", "s4"] {
        api.upsert(&service(n, &[80]));
    }
    let cfg = config("");
    let inst = Instance::start(api.client(), cfg.clone(), settings(&cfg, "a", None), vec![]).await;
    eventually("three get a VIP", 10, || {
        ["s1", "s2", "s3"]
            .iter()
            .all(|n| status_ips(&api, n).len() == 1)
    })
    .await;
    assert!(vips(&inst, "s4").is_empty());
    eventually("PoolExhausted Event on s4", 10, || {
        has_event(&api, "s4", "PoolExhausted")
    })
    .await;
    let (t, _, note) = api
        .events_for("default", "s4")
        .into_iter()
        .find(|e| e.1 == "PoolExhausted")
        .unwrap();
    assert_eq!(t, "Warning");
    assert!(note.contains("is full"), "{note}");
    assert!(status_ips(&api, "s4").is_empty());
    // Its status says why, for `kubectl get svc s4 -o yaml`.
    eventually("s4's condition", 10, || {
        condition(&api, "s4", "sluice.dev/IPAllocated")
            .is_some_and(|c| c.status == "False" && c.reason == "PoolExhausted")
    })
    .await;

    // s2 goes: s4 gets its address.
    let freed = status_ips(&api, "s2");
    api.delete::<corev1::Service>("default", "s2");
    eventually("s4 gets the freed address", 10, || {
        status_ips(&api, "s4") == freed
    })
    .await;
    eventually("IPAllocated on s4", 10, || {
        has_event(&api, "s4", "IPAllocated")
    })
    .await;
    inst.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_ips_are_honoured_or_refused_with_a_reason() {
    let api = FakeApi::start().await;
    api.upsert(&with_lb_ip(service("asks", &[80]), "10.99.0.102"));
    api.upsert(&with_annotations(
        service("annotated", &[80]),
        &[("sluice.dev/load-balancer-ips", "10.99.0.101")],
    ));
    api.upsert(&with_lb_ip(service("outside", &[80]), "192.0.2.7"));
    api.upsert(&with_lb_ip(service("taken", &[81]), "10.99.0.102"));
    api.upsert(&with_annotations(
        service("internal", &[80]),
        &[("sluice.dev/address-pool", "internal")],
    ));
    let cfg = config("");
    let inst = Instance::start(api.client(), cfg.clone(), settings(&cfg, "a", None), vec![]).await;
    eventually("requests honoured", 10, || {
        status_ips(&api, "asks") == vec!["10.99.0.102"]
            && status_ips(&api, "annotated") == vec!["10.99.0.101"]
            && status_ips(&api, "internal") == vec!["10.99.0.200"]
    })
    .await;
    eventually("refusals recorded", 10, || {
        has_event(&api, "outside", "RequestedIPOutsidePools")
            && has_event(&api, "taken", "RequestedIPUnavailable")
    })
    .await;
    assert!(vips(&inst, "outside").is_empty());
    assert!(vips(&inst, "taken").is_empty());
    let note = api
        .events_for("default", "taken")
        .into_iter()
        .find(|e| e.1 == "RequestedIPUnavailable")
        .unwrap()
        .2;
    assert!(note.contains("default/asks"), "{note}");
    inst.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_with_one_sharing_key_share_an_ip_when_ports_differ() {
    let api = FakeApi::start().await;
    let share = [("sluice.dev/allow-shared-ip", "front")];
    api.upsert(&with_annotations(service("http", &[80]), &share));
    api.upsert(&with_annotations(service("https", &[443]), &share));
    api.upsert(&with_annotations(service("zclash", &[80]), &share));
    let cfg = config("");
    let inst = Instance::start(api.client(), cfg.clone(), settings(&cfg, "a", None), vec![]).await;
    eventually("statuses written", 10, || {
        ["http", "https", "zclash"]
            .iter()
            .all(|n| status_ips(&api, n).len() == 1)
    })
    .await;
    assert_eq!(status_ips(&api, "http"), status_ips(&api, "https"));
    assert_ne!(status_ips(&api, "http"), status_ips(&api, "zclash"));
    // Both Services' frontends live on the shared VIP in one snapshot.
    let p = inst.now();
    let shared = ip(&status_ips(&api, "http")[0]);
    let mut ports: Vec<u16> = p
        .snapshot
        .frontends()
        .filter(|f| f.vip == shared)
        .map(|f| f.port)
        .collect();
    ports.sort();
    assert_eq!(ports, vec![80, 443]);
    inst.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_every_ip() {
    let api = FakeApi::start().await;
    let cfg = config("");
    // "b" first, then "a": in name order "a" would get the first address on a fresh start.
    api.upsert(&service("b", &[80]));
    let one = Instance::start(api.client(), cfg.clone(), settings(&cfg, "a", None), vec![]).await;
    eventually("b", 10, || status_ips(&api, "b") == vec!["10.99.0.100"]).await;
    api.upsert(&service("a", &[80]));
    eventually("a", 10, || status_ips(&api, "a") == vec!["10.99.0.101"]).await;
    one.stop().await;
    let patches = api.status_patches().len();

    let two = Instance::start(api.client(), cfg.clone(), settings(&cfg, "a", None), vec![]).await;
    eventually("restarted instance serves", 10, || {
        vips(&two, "a").len() == 1
    })
    .await;
    assert_eq!(vips(&two, "a"), vec![ip("10.99.0.101")]);
    assert_eq!(vips(&two, "b"), vec![ip("10.99.0.100")]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        api.status_patches().len(),
        patches,
        "status was already right: nothing rewritten"
    );
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_disconnects_and_410_gone_recover_without_dropping_state() {
    let api = FakeApi::start().await;
    api.set_bookmark_interval(Some(Duration::from_millis(100)));
    for n in ["s1", "s2", "s3"] {
        api.upsert(&service(n, &[80]));
        api.upsert(&slice(n, "a", "p80", &[("10.99.0.21", true)]));
    }
    let cfg = config("");
    let inst = Instance::start(api.client(), cfg.clone(), settings(&cfg, "a", None), vec![]).await;
    eventually("three served", 10, || {
        inst.now().snapshot.frontends().count() == 3
    })
    .await;
    let lists = |api: &FakeApi| {
        api.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/endpointslices") && !r.is_watch())
            .count()
    };
    let lists_before = lists(&api);
    // Let a bookmark arrive, so the watch can resume past it.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. The watch connections break; a change happens meanwhile.
    api.disconnect_watches();
    api.upsert(&slice(
        "s1",
        "a",
        "p80",
        &[("10.99.0.21", true), ("10.99.0.22", true)],
    ));
    eventually("the change made during the disconnect arrives", 15, || {
        backends(&inst, "s1").len() == 2
    })
    .await;
    assert_eq!(
        lists(&api),
        lists_before,
        "a plain disconnect resumes the watch, no relist"
    );
    let resumed = api
        .requests()
        .into_iter()
        .rfind(|r| r.is_watch() && r.path.ends_with("/endpointslices"))
        .unwrap();
    assert!(
        resumed
            .param("resourceVersion")
            .is_some_and(|v| v != "0" && !v.is_empty()),
        "{resumed:?}"
    );

    // 2. History is compacted while disconnected: the resume gets 410 Gone, the watcher
    //    relists, and the change made in between arrives.
    api.compact();
    api.disconnect_watches();
    api.upsert(&slice("s2", "a", "p80", &[("10.99.0.23", true)]));
    api.delete::<corev1::Service>("default", "s3");
    eventually("after 410: the relisted state is served", 15, || {
        backends(&inst, "s2") == vec![ip("10.99.0.23")] && inst.now().report.services.len() == 2
    })
    .await;
    assert!(
        lists(&api) > lists_before,
        "410 Gone made the watcher relist"
    );
    // The dataplane never saw the state go away: every published snapshot kept the Services
    // (only s3, deleted on purpose, left).
    assert!(inst.now().min_frontends_since_start >= 2);
    assert_eq!(backends(&inst, "s1").len(), 2);
    inst.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_one_leader_and_both_serve_what_status_says() {
    let api = FakeApi::start().await;
    api.upsert(&service("web", &[80]));
    let cfg = config("");
    let a = Instance::start(
        api.client(),
        cfg.clone(),
        settings(&cfg, "a", Some(short_lease("a"))),
        vec![],
    )
    .await;
    let b = Instance::start(
        api.client(),
        cfg.clone(),
        settings(&cfg, "b", Some(short_lease("b"))),
        vec![],
    )
    .await;
    eventually("one leader", 10, || a.is_leader() != b.is_leader()).await;
    let (leader, follower) = if a.is_leader() { (a, b) } else { (b, a) };
    eventually("status written by the leader", 10, || {
        status_ips(&api, "web") == vec!["10.99.0.100"]
    })
    .await;
    eventually("the follower serves what status says", 10, || {
        vips(&follower, "web") == vec![ip("10.99.0.100")]
    })
    .await;
    assert_eq!(vips(&leader, "web"), vips(&follower, "web"));
    // Only one instance writes: one status patch for one Service.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(api.status_patches().len(), 1, "{:?}", api.status_patches());
    let lease = api
        .get::<k8s_openapi::api::coordination::v1::Lease>("sluice-system", "sluice")
        .unwrap();
    let holder = lease.spec.unwrap().holder_identity.unwrap();
    assert!(holder == "a" || holder == "b");

    // The leader dies without releasing the Lease: the follower takes over after it expires
    // and writes the status of a new Service.
    leader.kill();
    eventually("the follower leads", 15, || follower.is_leader()).await;
    api.upsert(&service("new", &[80]));
    eventually("the new leader writes status", 10, || {
        status_ips(&api, "new") == vec!["10.99.0.101"]
    })
    .await;
    let lease = api
        .get::<k8s_openapi::api::coordination::v1::Lease>("sluice-system", "sluice")
        .unwrap()
        .spec
        .unwrap();
    assert!(lease.lease_transitions.unwrap_or(0) >= 1, "{lease:?}");
    follower.stop().await;
    // A clean stop releases the Lease.
    let lease = api
        .get::<k8s_openapi::api::coordination::v1::Lease>("sluice-system", "sluice")
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(lease.holder_identity, None);
}

/// The Maglev size of `name`'s first frontend on an instance (0 before it has one).
fn maglev_size(inst: &Instance, name: &str) -> u32 {
    inst.now()
        .report
        .service(&key(name))
        .and_then(|s| s.frontends.first().map(|f| f.maglev_size))
        .unwrap_or(0)
}

/// Endpoints 10.0.1.1.. for `slice`.
fn addrs(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("10.0.1.{i}")).collect()
}

fn web_slice(n: usize) -> discoveryv1::EndpointSlice {
    let a = addrs(n);
    let eps: Vec<(&str, bool)> = a.iter().map(|a| (a.as_str(), true)).collect();
    slice("web", "a", "p80", &eps)
}

/// The leader records each automatically sized Maglev table in status; every instance
/// (the follower, and one started later with no history) reads the record back and keeps the
/// size while the backend count goes back and forth across a rung.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maglev_size_is_recorded_and_every_instance_keeps_it() {
    use sluice_dataplane::maglev::{rung_capacity, SIZE_LADDER};
    let (small, large) = (SIZE_LADDER[0], SIZE_LADDER[1]);
    let cap = rung_capacity(small);
    let api = FakeApi::start().await;
    api.upsert(&service("web", &[80]));
    api.upsert(&web_slice(cap + 1));
    let cfg = Config::parse(
        &CFG.replace("maglev_size = 251", "maglev_size = \"auto\""),
        "test.toml",
    )
    .unwrap();
    let start = |id: &'static str| {
        Instance::start(
            api.client(),
            cfg.clone(),
            settings(&cfg, id, Some(short_lease(id))),
            vec![],
        )
    };
    let a = start("a").await;
    let b = start("b").await;
    let api = &api;
    let recorded = |m: u32| {
        let want = format!("10.99.0.100:80/TCP={m}");
        move || condition(api, "web", "sluice.dev/MaglevSize").is_some_and(|c| c.message == want)
    };
    eventually("the grown size is recorded", 10, recorded(large)).await;
    eventually("both use it", 10, || {
        maglev_size(&a, "web") == large && maglev_size(&b, "web") == large
    })
    .await;

    // Back to the smaller rung's capacity: the record holds, on both, with no new write.
    api.upsert(&web_slice(cap));
    eventually("both see the backends", 10, || {
        backends(&a, "web").len() == cap && backends(&b, "web").len() == cap
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(maglev_size(&a, "web"), large);
    assert_eq!(maglev_size(&b, "web"), large);
    assert!(recorded(large)());
    // A host that starts now has no history of its own: it reads the record.
    let c = Instance::start(api.client(), cfg.clone(), settings(&cfg, "c", None), vec![]).await;
    eventually("the new host serves the Service", 10, || {
        backends(&c, "web").len() == cap
    })
    .await;
    assert_eq!(maglev_size(&c, "web"), large);

    // Halved below the smaller rung's capacity: everyone shrinks, and the record follows.
    api.upsert(&web_slice(1));
    eventually("the shrunk size is recorded", 10, recorded(small)).await;
    eventually("every host uses it", 10, || {
        [&a, &b, &c].iter().all(|i| maglev_size(i, "web") == small)
    })
    .await;
    c.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_of_another_class_are_left_alone() {
    let api = FakeApi::start().await;
    let mut other = service("other", &[80]);
    other.spec.as_mut().unwrap().load_balancer_class = Some("metallb.io/metallb".into());
    api.upsert(&other);
    let mut unclassed = service("unclassed", &[80]);
    unclassed.spec.as_mut().unwrap().load_balancer_class = None;
    api.upsert(&unclassed);
    let mut cluster_ip = service("cip", &[80]);
    cluster_ip.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    api.upsert(&cluster_ip);
    api.upsert(&service("mine", &[80]));
    let cfg = config("");
    let inst = Instance::start(api.client(), cfg.clone(), settings(&cfg, "a", None), vec![]).await;
    eventually("mine is written", 10, || {
        status_ips(&api, "mine").len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let names: Vec<String> = inst
        .now()
        .report
        .services
        .iter()
        .map(|s| s.service.name.clone())
        .collect();
    assert_eq!(names, vec!["mine"]);
    for n in ["other", "unclassed", "cip"] {
        assert!(
            !api.status_patches().iter().any(|p| p.name == n),
            "{n} was written"
        );
        assert!(api.events_for("default", n).is_empty(), "{n} got Events");
    }
    // Ours becomes ClusterIP: it leaves the snapshot, and its VIP is released.
    let mut mine = api.get::<corev1::Service>("default", "mine").unwrap();
    mine.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    api.upsert(&mine);
    eventually("mine is no longer served", 10, || {
        inst.now().report.services.is_empty()
    })
    .await;
    api.upsert(&service("later", &[80]));
    eventually("later reuses the released VIP", 10, || {
        vips(&inst, "later") == vec![ip("10.99.0.100")]
    })
    .await;
    inst.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_failures_and_invalid_objects_are_events() {
    let api = FakeApi::start().await;
    api.upsert(&service("web", &[80]));
    api.upsert(&slice(
        "web",
        "a",
        "p80",
        &[("10.99.0.21", true), ("10.99.0.22", true)],
    ));
    let mut cfg = config("");
    cfg.health.enabled = true; // probe targets exist; the test decides their health
    let inst = Instance::start(api.client(), cfg.clone(), settings(&cfg, "a", None), vec![]).await;
    eventually("served", 10, || backends(&inst, "web").len() == 2).await;
    eventually("status", 10, || status_ips(&api, "web").len() == 1).await;

    // A health check takes one backend down.
    inst.health.lock().unwrap().insert(
        ProbeTarget::tcp("10.99.0.22:8080".parse().unwrap()),
        Health::Down,
    );
    inst.recompile();
    eventually("BackendDown Event", 10, || {
        has_event(&api, "web", "BackendDown")
    })
    .await;
    let note = api
        .events_for("default", "web")
        .into_iter()
        .find(|e| e.1 == "BackendDown")
        .unwrap()
        .2;
    assert!(note.contains("10.99.0.22:8080"), "{note}");

    // An invalid update (an unknown protocol) keeps the last good version serving.
    let mut bad = api.get::<corev1::Service>("default", "web").unwrap();
    bad.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].protocol = Some("QUIC".into());
    api.upsert(&bad);
    eventually("InvalidService Event", 10, || {
        has_event(&api, "web", "InvalidService")
    })
    .await;
    assert_eq!(backends(&inst, "web").len(), 2);
    assert_eq!(inst.now().report.services.len(), 1);
    inst.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_api_server_speaks_the_protocol() {
    // A paginated list, a 410 on a stale watch, SSA without a field manager refused, a stale
    // Lease replace refused: the fake is strict where Sluice depends on it.
    let api = FakeApi::start().await;
    for i in 0..5 {
        api.upsert(&service(&format!("s{i}"), &[80]));
    }
    let c = api.client();
    let svcs: kube::Api<corev1::Service> = kube::Api::all(c.clone());
    let page = svcs
        .list(&kube::api::ListParams::default().limit(2))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);
    let token = page.metadata.continue_.clone().unwrap();
    let rest = svcs
        .list(
            &kube::api::ListParams::default()
                .limit(10)
                .continue_token(&token),
        )
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 3);

    api.compact();
    let stale = reqwest_like_get(&api, "/api/v1/services?watch=1&resourceVersion=1").await;
    assert!(stale.contains("\"code\":410"), "{stale}");

    let ns: kube::Api<corev1::Service> = kube::Api::namespaced(c.clone(), "default");
    let err = ns
        .patch_status(
            "s0",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Apply(serde_json::json!({"apiVersion": "v1", "kind": "Service"})),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fieldManager"), "{err}");

    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(c, "default");
    let l = leases
        .create(
            &Default::default(),
            &k8s_openapi::api::coordination::v1::Lease {
                metadata: meta("default", "l", &[]),
                spec: None,
            },
        )
        .await
        .unwrap();
    let mut stale = l.clone();
    leases.replace("l", &Default::default(), &l).await.unwrap();
    stale.metadata.resource_version = l.metadata.resource_version.clone();
    let e = leases
        .replace("l", &Default::default(), &stale)
        .await
        .unwrap_err();
    assert!(matches!(e, kube::Error::Api(ref s) if s.code == 409), "{e}");
    assert_eq!(api.list_json(Res::Leases).len(), 1);
}

/// A raw GET (the body up to the end of the stream).
async fn reqwest_like_get(api: &FakeApi, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = api.url().trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await;
    out
}

/// Lease requests that renewed it (PUTs), as the fake server saw them.
fn lease_renewals(api: &FakeApi) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/leases/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_renewals_do_not_wake_the_leadership_watch() {
    let api = FakeApi::start().await;
    api.upsert(&service("web", &[80]));
    let cfg = config("");
    let inst = Instance::start(
        api.client(),
        cfg.clone(),
        settings(&cfg, "a", Some(short_lease("a"))),
        vec![],
    )
    .await;
    eventually("leads", 10, || inst.is_leader()).await;
    let mut rx = inst.leader.clone();
    rx.borrow_and_update();
    let wakes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w = wakes.clone();
    let counter = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            w.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let from = lease_renewals(&api);
    eventually("five renewals", 10, || lease_renewals(&api) >= from + 5).await;
    assert!(inst.is_leader());
    assert_eq!(
        wakes.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a renewal is not a leadership change"
    );
    counter.abort();
    inst.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_timings_come_from_the_configuration() {
    let api = FakeApi::start().await;
    api.upsert(&service("web", &[80]));
    let cfg = source_config(
        "lease_namespace = \"sluice-system\"\nlease_duration_seconds = 2\n\
         lease_renew_deadline_ms = 1500\nlease_retry_ms = 200\n",
    );
    let start = |id: &str| {
        let mut s = KubeSettings::from_config(&cfg);
        s.identity = id.to_owned();
        if let Some(l) = s.lease.as_mut() {
            l.identity = id.to_owned();
        }
        Instance::start(api.client(), cfg.clone(), s, vec![])
    };
    let a = start("a").await;
    eventually("a leads", 10, || a.is_leader()).await;
    let b = start("b").await;
    let lease = || {
        api.get::<k8s_openapi::api::coordination::v1::Lease>("sluice-system", "sluice")
            .and_then(|l| l.spec)
            .unwrap()
    };
    assert_eq!(lease().lease_duration_seconds, Some(2));
    // The holder stops renewing: the standby takes over within the duration plus two rounds
    // (one to see the last renewal, one to see it expire), with a second of slack.
    a.kill();
    let t = std::time::Instant::now();
    eventually("b takes over", 4, || b.is_leader()).await;
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(lease().holder_identity.as_deref(), Some("b"));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_ip_request_leaves_the_service_pending() {
    let api = FakeApi::start().await;
    api.upsert(&with_annotations(
        service("typo", &[80]),
        &[("sluice.dev/load-balancer-ips", "10.99.0.300")],
    ));
    api.upsert(&with_annotations(
        service("wrongfamily", &[80]),
        &[("sluice.dev/load-balancer-ips", "fd00:99::100")],
    ));
    api.upsert(&service("fine", &[80]));
    let cfg = config("");
    let inst = Instance::start(api.client(), cfg.clone(), settings(&cfg, "a", None), vec![]).await;
    eventually("fine is written", 10, || {
        status_ips(&api, "fine").len() == 1
    })
    .await;
    for n in ["typo", "wrongfamily"] {
        eventually("InvalidIPRequest condition", 10, || {
            condition(&api, n, "sluice.dev/IPAllocated")
                .is_some_and(|c| c.status == "False" && c.reason == "InvalidIPRequest")
        })
        .await;
        assert!(
            status_ips(&api, n).is_empty(),
            "{n}: {:?}",
            status_ips(&api, n)
        );
        assert!(
            vips(&inst, n).is_empty(),
            "{n} is served on {:?}",
            vips(&inst, n)
        );
        eventually("InvalidIPRequest Event", 10, || {
            has_event(&api, n, "InvalidIPRequest")
        })
        .await;
    }
    // Fixing the request gives the Service its address.
    api.upsert(&with_annotations(
        service("typo", &[80]),
        &[("sluice.dev/load-balancer-ips", "10.99.0.102")],
    ));
    eventually("typo gets what it asked for", 10, || {
        status_ips(&api, "typo") == vec!["10.99.0.102"]
    })
    .await;
    inst.stop().await;
}

/// A Lease held by an instance that no longer renews it (expires `secs` after it is seen).
fn ghost_lease(api: &FakeApi, secs: i32) {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    api.upsert(&Lease {
        metadata: meta("sluice-system", "sluice", &[]),
        spec: Some(LeaseSpec {
            holder_identity: Some("ghost".into()),
            lease_duration_seconds: Some(secs),
            renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            ..Default::default()
        }),
    });
}

/// `IPAllocated` reasons in every status patch Sluice sent for `name`.
fn patched_reasons(api: &FakeApi, name: &str) -> Vec<String> {
    api.status_patches()
        .iter()
        .filter(|p| p.name == name)
        .flat_map(|p| {
            p.body["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|c| c["type"] == "sluice.dev/IPAllocated")
        .map(|c| c["reason"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaining_leadership_does_not_overwrite_the_reason_a_service_is_pending() {
    let api = FakeApi::start().await;
    // A previous leader recorded why `outside` is pending; many others keep the compile busy.
    api.upsert(&with_lb_ip(service("outside", &[80]), "192.0.2.7"));
    for i in 0..300 {
        let n = format!("s{i:03}");
        api.upsert(&with_lb_ip(service(&n, &[80]), "192.0.2.8"));
        api.upsert(&slice(&n, "a", "p80", &[("10.99.0.21", true)]));
    }
    ghost_lease(&api, 1);
    let cfg = config("");
    let inst = Instance::start(
        api.client(),
        cfg.clone(),
        settings(&cfg, "a", Some(short_lease("a"))),
        vec![],
    )
    .await;
    assert!(!inst.is_leader(), "the ghost holds the Lease at first");
    eventually("takes over", 10, || inst.is_leader()).await;
    eventually("the real reason is in status", 10, || {
        condition(&api, "outside", "sluice.dev/IPAllocated")
            .is_some_and(|c| c.reason == "RequestedIPOutsidePools")
    })
    .await;
    eventually("every Service has its reason", 10, || {
        api.list_json(Res::Services).iter().all(|s| {
            s["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["reason"] == "RequestedIPOutsidePools"))
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in ["outside", "s000", "s150", "s299"] {
        let reasons = patched_reasons(&api, n);
        assert!(
            !reasons.iter().any(|r| r == "Pending"),
            "{n}: a follower's view was written: {reasons:?}"
        );
    }
    inst.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_deleted_while_its_status_is_written_gets_no_warning() {
    let api = FakeApi::start().await;
    api.upsert(&service("web", &[80]));
    api.upsert(&slice("web", "a", "p80", &[("10.99.0.21", true)]));
    let cfg = config("");
    let inst = Instance::start(api.client(), cfg.clone(), settings(&cfg, "a", None), vec![]).await;
    eventually("status written", 10, || {
        condition(&api, "web", "sluice.dev/BackendsReady").is_some_and(|c| c.status == "True")
    })
    .await;
    // The slice goes, then the Service, while Sluice writes what the first change means.
    api.delay_status_patches(Duration::from_millis(500));
    let patches = || {
        api.requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.path.ends_with("/services/web/status"))
            .count()
    };
    let before = patches();
    api.delete::<discoveryv1::EndpointSlice>("default", "web-a");
    eventually("the status write is under way", 10, || patches() > before).await;
    api.delete::<corev1::Service>("default", "web");
    eventually("web is gone", 10, || inst.now().report.services.is_empty()).await;
    // The write has failed with 404 by now; the Event would have gone out with it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !has_event(&api, "web", "NoReadyBackends"),
        "{:?}",
        api.events_for("default", "web")
    );
    assert_eq!(
        patches(),
        before + 1,
        "a deleted Service's status is not retried"
    );
    inst.stop().await;
}

/// Sluice's condition types in a Service's status.
fn sluice_conditions(api: &FakeApi, name: &str) -> Vec<String> {
    api.get::<corev1::Service>("default", name)
        .and_then(|s| s.status)
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.type_)
        .filter(|t| t.starts_with("sluice.dev/"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_sluice_stops_serving_loses_what_sluice_wrote() {
    let api = FakeApi::start().await;
    api.upsert(&service("mine", &[80]));
    // Another installation's Service (another class) with Sluice's conditions: not ours.
    let mut other = service("other", &[80]);
    other.spec.as_mut().unwrap().load_balancer_class = Some("example.com/other".into());
    other.status = Some(corev1::ServiceStatus {
        conditions: Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "sluice.dev/IPAllocated".into(),
                status: "True".into(),
                reason: "Allocated".into(),
                message: "10.98.0.5".into(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ),
                observed_generation: None,
            },
        ]),
        ..Default::default()
    });
    api.upsert(&other);
    let cfg = config("");
    let inst = Instance::start(api.client(), cfg.clone(), settings(&cfg, "a", None), vec![]).await;
    eventually("mine is written", 10, || {
        status_ips(&api, "mine").len() == 1
            && sluice_conditions(&api, "mine")
                == ["sluice.dev/BackendsReady", "sluice.dev/IPAllocated"]
    })
    .await;
    // mine becomes ClusterIP (the status stays as it was).
    let mut mine = api.get::<corev1::Service>("default", "mine").unwrap();
    mine.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    api.upsert(&mine);
    eventually("Sluice's conditions and address are gone", 10, || {
        sluice_conditions(&api, "mine").is_empty() && status_ips(&api, "mine").is_empty()
    })
    .await;
    // Its VIP went to a new Service; nothing says mine still holds it.
    api.upsert(&service("later", &[80]));
    eventually("later gets the VIP", 10, || {
        status_ips(&api, "later") == vec!["10.99.0.100"]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sluice_conditions(&api, "other").len(),
        1,
        "another class: untouched"
    );
    assert!(!api.status_patches().iter().any(|p| p.name == "other"));
    inst.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_event_carries_the_latest_message() {
    let api = FakeApi::start().await;
    api.upsert(&service("web", &[80]));
    api.upsert(&slice("web", "a", "p80", &[("10.99.0.21", true)]));
    let cfg = config("");
    let inst = Instance::start(api.client(), cfg.clone(), settings(&cfg, "a", None), vec![]).await;
    eventually("served", 10, || backends(&inst, "web").len() == 1).await;
    let no_ready = |api: &FakeApi| -> Vec<serde_json::Value> {
        api.events()
            .into_iter()
            .filter(|e| e["reason"] == "NoReadyBackends" && e["regarding"]["name"] == "web")
            .collect()
    };
    // No backends, for one reason, then for another.
    api.delete::<discoveryv1::EndpointSlice>("default", "web-a");
    eventually("first NoReadyBackends", 10, || no_ready(&api).len() == 1).await;
    api.upsert(&slice("web", "a", "p80", &[("10.99.0.21", true)]));
    eventually("BackendsReady", 10, || {
        has_event(&api, "web", "BackendsReady")
    })
    .await;
    api.upsert(&slice("web", "a", "p80", &[("10.99.0.21", false)]));
    eventually("the repeat is folded into the first", 10, || {
        no_ready(&api)
            .first()
            .is_some_and(|e| e["series"]["count"] == 2)
    })
    .await;
    let evs = no_ready(&api);
    assert_eq!(evs.len(), 1, "{evs:?}");
    let note = evs[0]["note"].as_str().unwrap();
    assert!(note.contains("no ready endpoints"), "{note}");
    assert!(evs[0]["series"]["lastObservedTime"].is_string(), "{evs:?}");
    inst.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resync_soon_after_an_outage_and_at_once_after_410() {
    let api = FakeApi::start().await;
    api.set_bookmark_interval(Some(Duration::from_millis(100)));
    api.upsert(&service("web", &[80]));
    api.upsert(&slice("web", "a", "p80", &[("10.99.0.21", true)]));
    let cfg = config("");
    let inst = Instance::start(api.client(), cfg.clone(), settings(&cfg, "a", None), vec![]).await;
    eventually("served", 10, || backends(&inst, "web").len() == 1).await;

    // 1. History compacted under a broken watch: the resume gets 410 and the relist follows
    //    at once (no backoff: the API server is fine; kube-rs's waited at least 0.8 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.compact();
    api.disconnect_watches();
    api.upsert(&slice(
        "web",
        "a",
        "p80",
        &[("10.99.0.21", true), ("10.99.0.22", true)],
    ));
    let t410 = std::time::Instant::now();
    eventually("relisted", 2, || backends(&inst, "web").len() == 2).await;
    assert!(
        t410.elapsed() < Duration::from_millis(700),
        "the relist waited {:?}",
        t410.elapsed()
    );

    // 2. An 8 s outage (connections cut and refused), during which the cluster changes:
    //    Sluice sees the change within 3.5 s of the API server's return (retries never wait
    //    more than 3 s).
    api.set_down(true);
    api.upsert(&slice(
        "web",
        "a",
        "p80",
        &[
            ("10.99.0.21", true),
            ("10.99.0.22", true),
            ("10.99.0.23", true),
        ],
    ));
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(backends(&inst, "web").len(), 2, "blind during the outage");
    api.set_down(false);
    let t = std::time::Instant::now();
    eventually("the change made during the outage", 10, || {
        backends(&inst, "web").len() == 3
    })
    .await;
    assert!(
        t.elapsed() < Duration::from_millis(3500),
        "{:?}",
        t.elapsed()
    );
    inst.stop().await;
}
