//! What the Kubernetes source's tests (`kubernetes.rs`, `kubernetes_status.rs`) share: the
//! configuration, object builders (Services, EndpointSlices, Nodes) and readers of what an
//! instance serves and what the fake API server holds.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use super::fakeapi::FakeApi;
use super::harness::Instance;
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_controlplane::config::Config;
use sluice_controlplane::model::ObjectKey;
use sluice_controlplane::sources::kubernetes::lease::LeaseSettings;
use sluice_controlplane::sources::kubernetes::KubeSettings;

pub const CFG: &str = r#"
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

pub fn config(extra: &str) -> Config {
    Config::parse(&format!("{CFG}{extra}"), "test.toml").unwrap()
}

/// The test configuration with `keys` added to `[source]`.
pub fn source_config(keys: &str) -> Config {
    let text = CFG.replace("debounce_ms = 20\n", &format!("debounce_ms = 20\n{keys}"));
    Config::parse(&text, "test.toml").unwrap()
}

/// Settings for one instance: no leader election unless `lease` is given.
pub fn settings(cfg: &Config, identity: &str, lease: Option<LeaseSettings>) -> KubeSettings {
    let mut s = KubeSettings::from_config(cfg);
    s.identity = identity.to_owned();
    s.lease = lease;
    s
}

pub fn short_lease(identity: &str) -> LeaseSettings {
    LeaseSettings {
        namespace: "sluice-system".into(),
        name: "sluice".into(),
        identity: identity.into(),
        duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry: Duration::from_millis(200),
    }
}

pub fn meta(ns: &str, name: &str, annotations: &[(&str, &str)]) -> ObjectMeta {
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
pub fn service(name: &str, ports: &[u16]) -> corev1::Service {
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

pub fn with_annotations(mut s: corev1::Service, a: &[(&str, &str)]) -> corev1::Service {
    s.metadata.annotations = Some(
        a.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    s
}

pub fn with_lb_ip(mut s: corev1::Service, ip: &str) -> corev1::Service {
    s.spec.as_mut().unwrap().load_balancer_ip = Some(ip.into());
    s
}

/// An EndpointSlice of `svc` with `(address, ready)` endpoints on port 8080 (named like the
/// Service's first port).
pub fn slice(
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

pub fn node(name: &str, ip: &str) -> corev1::Node {
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

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn key(n: &str) -> ObjectKey {
    ObjectKey::new("default", n)
}

/// `status.loadBalancer.ingress` IPs of a Service in the fake server.
pub fn status_ips(api: &FakeApi, name: &str) -> Vec<String> {
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
pub fn condition(
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

pub fn vips(inst: &Instance, name: &str) -> Vec<IpAddr> {
    inst.now()
        .report
        .service(&key(name))
        .map(|s| s.vips.clone())
        .unwrap_or_default()
}

/// Backend addresses of `name`'s first frontend in the published snapshot.
pub fn backends(inst: &Instance, name: &str) -> Vec<IpAddr> {
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

pub fn has_event(api: &FakeApi, name: &str, reason: &str) -> bool {
    api.events_for("default", name)
        .iter()
        .any(|(_, r, _)| r == reason)
}
