//! The Kubernetes source against an in-process fake API server that speaks the real HTTP
//! protocol (see `support/fakeapi.rs`): watches into snapshots, IPAM through status, Events,
//! watch failures, leader election.
//!
//! Run with `cargo test -p sluice-controlplane --test kubernetes`.

#[path = "support/fakeapi.rs"]
mod fakeapi;
#[path = "support/harness.rs"]
mod harness;
#[path = "support/k8s.rs"]
mod k8s;

use std::time::Duration;

use fakeapi::{FakeApi, Res};
use harness::{eventually, Instance};
use k8s::*;
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use sluice_controlplane::config::Config;
use sluice_controlplane::health::{Health, ProbeTarget};

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
