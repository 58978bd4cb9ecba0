//! The Kubernetes source against the fake API server (see `kubernetes.rs`): leases and
//! leadership, the status and Events the leader writes (and takes back), and watches that
//! resync after an outage.
//!
//! Run with `cargo test -p sluice-controlplane --test kubernetes_status`.

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
use sluice_controlplane::sources::kubernetes::KubeSettings;

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
