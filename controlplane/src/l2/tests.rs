//! L2 membership from Leases against the in-process fake API server: this host writes its own
//! Lease with its address; another host's Lease puts it on the roster (not alive until its
//! heartbeat arrives); when that Lease stops being renewed the host leaves.
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;

use super::message::{encode, Heartbeat, MAX_LEN};
use super::L2;
use crate::config::{L2Config, L2Membership, L2Peer};
use crate::sources::kubernetes::members::{self, MemberSettings, ADDRESS_ANNOTATION, MEMBER_LABEL};

use crate::fakeapi;

const KEY: &str = "0123456789abcdef";

fn other_lease(renew: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some("sluice-l2-h2".into()),
            namespace: Some("sluice".into()),
            labels: Some([(MEMBER_LABEL.to_owned(), "true".to_owned())].into()),
            annotations: Some([(ADDRESS_ANNOTATION.to_owned(), "127.0.0.2".to_owned())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("h2".into()),
            lease_duration_seconds: Some(1),
            renew_time: Some(MicroTime(renew)),
            ..LeaseSpec::default()
        }),
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_from_leases() {
    let api = fakeapi::FakeApi::start().await;
    let port = 20_000 + (std::process::id() % 20_000) as u16 + 1;
    let me: IpAddr = "127.0.0.1".parse().unwrap();
    let cfg = L2Config {
        host: "h1".into(),
        interface: "lo".into(),
        key: Some(KEY.into()),
        key_file: None,
        port,
        interval_ms: 50,
        dead_after: 3,
        garp_count: 1,
        garp_interval_ms: 100,
        membership: L2Membership::Leases,
        peers: vec![L2Peer {
            name: "h1".into(),
            address: me,
        }],
    };
    cfg.validate().unwrap();
    let roster = members::spawn(
        api.client(),
        MemberSettings {
            namespace: "sluice".into(),
            host: "h1".into(),
            address: me,
            duration: Duration::from_secs(1),
            every: Duration::from_millis(100),
        },
    );
    let l2 = L2::start(&cfg, Vec::new(), Some(roster)).unwrap();

    // This host's own Lease, labelled and with its address.
    until("this host's Lease", || {
        api.get::<Lease>("sluice", "sluice-l2-h1").is_some_and(|l| {
            l.metadata
                .annotations
                .unwrap_or_default()
                .get(ADDRESS_ANNOTATION)
                == Some(&"127.0.0.1".to_owned())
                && l.spec.unwrap_or_default().holder_identity.as_deref() == Some("h1")
        })
    })
    .await;

    // Another host's Lease puts it on the roster, not alive yet.
    api.upsert(&other_lease(Timestamp::now()));
    until("h2 on the roster", || {
        l2.view().peers.iter().any(|p| p.name == "h2")
    })
    .await;
    assert_eq!(l2.view().live, ["h1"]);

    // Its heartbeat, from its address, makes it live.
    let sock = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    let mut b = [0u8; MAX_LEN];
    let n = encode(&Heartbeat::now("h2", 7, 1), KEY.as_bytes(), &mut b);
    sock.send_to(&b[..n], SocketAddr::new(me, port)).unwrap();
    until("h2 live", || l2.view().live == ["h1", "h2"]).await;

    // Its Lease is no longer renewed: after its duration it leaves the roster and the live set.
    until("h2 gone with its Lease", || {
        !l2.view().peers.iter().any(|p| p.name == "h2")
    })
    .await;
    assert_eq!(l2.view().live, ["h1"]);
}

/// With `externalTrafficPolicy: Local` only the hosts (node names) with a ready endpoint of the
/// Service can own its VIP; a `Cluster` Service's VIP can go to any host.
#[test]
fn local_policy_limits_the_owners_to_hosts_with_a_ready_endpoint() {
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use crate::compile::{CompileInput, Compiler};
    use crate::config::Config;

    let cfg = Config::parse(
        r#"
[[ports]]
name = "lb0"
device = "net_null0"
ipv4 = ["10.99.0.2/24"]
[tables]
maglev_size = 251
[health]
enabled = false
[[pools]]
name = "lab"
ranges = ["10.99.0.100-10.99.0.120"]
"#,
        "test.toml",
    )
    .unwrap();
    let svc = |name: &str, policy: &str, eps: &[(&str, bool, &str)]| {
        let mut s = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: LoadBalancer\n  loadBalancerClass: sluice.dev/dpdk\n  externalTrafficPolicy: {policy}\n  ports:\n    - name: http\n      port: 80\n      targetPort: 8080\n      nodePort: 30080\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-v4\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
        );
        for (a, ready, node) in eps {
            s.push_str(&format!(
                "  - addresses: [\"{a}\"]\n    conditions: {{ready: {ready}}}\n    nodeName: {node}\n"
            ));
        }
        s + "---\n"
    };
    let yaml = svc(
        "local",
        "Local",
        &[("10.99.0.21", true, "h2"), ("10.99.0.22", false, "h3")],
    ) + &svc("cluster", "Cluster", &[("10.99.0.23", true, "h3")]);
    let model = crate::sources::manifest::parse_str(&yaml, "test.yaml")
        .unwrap()
        .model;
    let compiled = Compiler::new()
        .compile(&CompileInput {
            config: &cfg,
            model: &model,
            local_mac: [2, 0, 0, 0, 0, 1],
            neighbours: &HashMap::new(),
            health: &HashMap::new(),
            drained: &BTreeSet::new(),
            weights: &BTreeMap::new(),
            now: std::time::Instant::now(),
        })
        .unwrap();
    let vip = |name: &str| {
        compiled
            .report
            .services
            .iter()
            .find(|s| s.service.name == name)
            .unwrap()
            .vips[0]
    };
    let e = super::eligibility(&model, &compiled.report);
    assert_eq!(
        e.get(&vip("local"))
            .map(|s| s.iter().cloned().collect::<Vec<_>>()),
        Some(vec!["h2".to_owned()]),
        "only the host with a ready endpoint"
    );
    assert!(
        !e.contains_key(&vip("cluster")),
        "a Cluster VIP can go anywhere"
    );
}
