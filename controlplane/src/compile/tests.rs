//! Tests of the compiler: the rules of the module docs, stable ids, caching and IPAM.
use std::time::Duration;

use sluice_dataplane::snapshot::{BackendState, Cidr, Method, SynProxy};

use super::*;
use crate::model::L4Protocol;
use crate::sources::manifest;

const CFG: &str = r#"
[[ports]]
name = "lb0"
device = "net_af_packet0,iface=sl-lb0"
ipv4 = ["10.99.0.2/24"]
ipv6 = ["fd00:99::2/64"]
gateway_v4 = "10.99.0.1"

[nat]
addresses = ["10.99.0.3", "fd00:99::3"]

[tables]
maglev_size = 251

[forwarding]
removed_backend_grace_seconds = 60

[[pools]]
name = "lab"
ranges = ["10.99.0.100-10.99.0.120", "fd00:99::100-fd00:99::120"]

[[pools]]
name = "reserved"
ranges = ["10.99.0.200-10.99.0.210"]
auto_assign = false
namespaces = ["prod"]
"#;

const MAC: [u8; 6] = [2, 0x99, 0, 0, 0, 2];

fn cfg() -> Config {
    Config::parse(CFG, "test.toml").unwrap()
}

fn lab_cfg() -> Config {
    Config::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/examples/sluice.toml"
    ))
    .unwrap()
}

fn lab_model() -> Model {
    manifest::load_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/examples/manifests"
    ))
    .unwrap()
    .model
}

fn model(yaml: &str) -> Model {
    manifest::parse_str(yaml, "test.yaml").unwrap().model
}

/// A Service with one TCP port 80 -> 8080 and one IPv4 slice of `eps` (addr, ready, node).
fn svc_yaml(name: &str, extra_spec: &str, annotations: &str, eps: &[(&str, bool, &str)]) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  annotations: {{{annotations}}}\nspec:\n  type: LoadBalancer\n  loadBalancerClass: sluice.dev/dpdk\n  ports:\n    - name: http\n      port: 80\n      targetPort: 8080\n      nodePort: 30080\n{extra_spec}"
    );
    s.push_str(&format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-v4\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
    ));
    for (a, ready, node) in eps {
        s.push_str(&format!(
            "  - addresses: [\"{a}\"]\n    conditions: {{ready: {ready}}}\n    nodeName: {node}\n"
        ));
    }
    s.push_str("---\n");
    s
}

struct Env {
    neighbours: HashMap<IpAddr, [u8; 6]>,
    health: HashMap<ProbeTarget, Health>,
    drained: BTreeSet<IpAddr>,
    weights: BTreeMap<IpAddr, u32>,
    now: Instant,
}

impl Env {
    fn new() -> Self {
        Env {
            neighbours: HashMap::new(),
            health: HashMap::new(),
            drained: BTreeSet::new(),
            weights: BTreeMap::new(),
            now: Instant::now(),
        }
    }

    fn run(&self, c: &mut Compiler, cfg: &Config, m: &Model) -> Compiled {
        c.compile(&CompileInput {
            config: cfg,
            model: m,
            local_mac: MAC,
            neighbours: &self.neighbours,
            health: &self.health,
            drained: &self.drained,
            weights: &self.weights,
            now: self.now,
        })
        .unwrap()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn web() -> ObjectKey {
    ObjectKey::new("default", "web")
}

#[test]
fn lab_example_compiles() {
    let mut cfg = lab_cfg();
    cfg.health.enabled = true;
    cfg.health.kind = crate::config::HealthKind::Http;
    cfg.health.http_path = "/".into();
    let m = lab_model();
    let mut env = Env::new();
    let mut c = Compiler::new();
    let out = env.run(&mut c, &cfg, &m);
    let r = out.report.service(&web()).unwrap();
    assert_eq!(r.vips, vec![ip("10.99.0.100"), ip("fd00:99::100")]);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.frontends.len(), 6);
    let http4 = &r.frontends[0];
    assert_eq!(
        (http4.vip, http4.port, http4.protocol),
        (ip("10.99.0.100"), 80, L4Protocol::Tcp)
    );
    assert_eq!(http4.name, "default/web:http");
    assert_eq!(http4.method, Method::Nat);
    let b: Vec<(IpAddr, u16)> = http4.backends.iter().map(|b| (b.addr, b.port)).collect();
    assert_eq!(
        b,
        vec![
            (ip("10.99.0.21"), 8080),
            (ip("10.99.0.22"), 8080),
            (ip("10.99.0.23"), 8080)
        ]
    );
    assert!(http4
        .backends
        .iter()
        .all(|b| b.mac.is_none() && b.state == BackendState::Active));
    let udp6 = &r.frontends[5];
    assert_eq!(
        (udp6.vip, udp6.port, udp6.protocol),
        (ip("fd00:99::100"), 9001, L4Protocol::Udp)
    );
    assert_eq!(udp6.backends[2].addr, ip("fd00:99::23"));
    assert_eq!(out.report.unresolved.len(), 6);
    assert_eq!(out.report.next_hops, out.report.unresolved);
    // HTTP probes on the http port, TCP connects on the echo port; UDP is
    // not probed: 2 TCP ports x 3 backends x 2 families.
    assert_eq!(out.report.health_targets.len(), 12);
    assert!(out
        .report
        .health_targets
        .contains(&ProbeTarget::http("10.99.0.21:8080".parse().unwrap(), "/")));
    assert!(out
        .report
        .health_targets
        .contains(&ProbeTarget::tcp("[fd00:99::23]:9000".parse().unwrap())));
    assert_eq!(
        http4.backends[0].health_target,
        Some(ProbeTarget::http("10.99.0.21:8080".parse().unwrap(), "/"))
    );

    let s = &out.snapshot;
    assert_eq!(s.generation, 1);
    assert_eq!(s.frontends().count(), 6);
    assert_eq!(s.backends().count(), 18);
    assert_eq!(s.local.mac, MAC);
    assert_eq!(s.local.ipv4, vec![[10, 99, 0, 2]]);
    assert_eq!(s.local.nat_ipv4, vec![[10, 99, 0, 3]]);
    assert_eq!(s.local.nat_ipv6.len(), 1);
    assert_eq!(
        (s.local.nat_port_min, s.local.nat_port_max, s.local.mtu),
        (20000, 65535, 1500)
    );
    let mut vip = [0u8; 16];
    vip[..4].copy_from_slice(&[10, 99, 0, 100]);
    let f = s.frontend_for(&vip, false, 6, 80).unwrap();
    assert_eq!(f.backends.len(), 3);
    // The default size is "auto": the smallest rung of the ladder for 3 backends.
    assert_eq!(f.maglev.size(), 1031);

    // Resolve the neighbours: MACs appear, nothing left to resolve, no Maglev rebuilt.
    for i in 1..=3u8 {
        env.neighbours
            .insert(ip(&format!("10.99.0.2{i}")), [2, 0x99, 0, 0, 0, 0x20 + i]);
        env.neighbours
            .insert(ip(&format!("fd00:99::2{i}")), [2, 0x99, 0, 0, 0, 0x20 + i]);
    }
    let out2 = env.run(&mut c, &cfg, &m);
    assert!(out2.report.unresolved.is_empty());
    assert!(out2.report.maglev_rebuilt.is_empty());
    assert_eq!(out2.snapshot.generation, 2);
    let f2 = out2.snapshot.frontend_for(&vip, false, 6, 80).unwrap();
    assert!(Arc::ptr_eq(&f.maglev, &f2.maglev));
    assert_eq!(
        out2.snapshot.backend(f2.backends[0]).unwrap().mac,
        Some([2, 0x99, 0, 0, 0, 0x21])
    );
}

#[test]
fn class_and_type_filter() {
    let mut yaml = svc_yaml("web", "", "", &[("10.99.0.21", true, "n1")]);
    yaml.push_str(&svc_yaml("other", "", "", &[]).replace("sluice.dev/dpdk", "metallb.io/x"));
    yaml.push_str(
        &svc_yaml("plain", "", "", &[]).replace("  loadBalancerClass: sluice.dev/dpdk\n", ""),
    );
    yaml.push_str(&svc_yaml("cip", "", "", &[]).replace("type: LoadBalancer", "type: ClusterIP"));
    let m = model(&yaml);
    let env = Env::new();
    let mut c = Compiler::new();
    let out = env.run(&mut c, &cfg(), &m);
    let names: Vec<&str> = out
        .report
        .services
        .iter()
        .map(|s| s.service.name.as_str())
        .collect();
    assert_eq!(names, vec!["web"]);
    let mut cfg2 = cfg();
    cfg2.source.serve_unclassed = true;
    let out = env.run(&mut Compiler::new(), &cfg2, &m);
    let names: Vec<&str> = out
        .report
        .services
        .iter()
        .map(|s| s.service.name.as_str())
        .collect();
    assert_eq!(names, vec!["plain", "web"]);
}

#[test]
fn ipam_is_stable_and_honours_requests() {
    let env = Env::new();
    let cfg = cfg();
    let mut c = Compiler::new();
    let m1 = model(&svc_yaml("web", "", "", &[]));
    let out = env.run(&mut c, &cfg, &m1);
    assert_eq!(
        out.report.service(&web()).unwrap().vips,
        vec![ip("10.99.0.100")]
    );

    // A Service that sorts first arrives: web keeps its address.
    let mut y = svc_yaml("aaa", "", "", &[]);
    y.push_str(&svc_yaml("web", "", "", &[]));
    let out = env.run(&mut c, &cfg, &model(&y));
    assert_eq!(
        out.report.service(&web()).unwrap().vips,
        vec![ip("10.99.0.100")]
    );
    assert_eq!(
        out.report
            .service(&ObjectKey::new("default", "aaa"))
            .unwrap()
            .vips,
        vec![ip("10.99.0.101")]
    );

    // A fresh compiler (restart) honours status.loadBalancer.ingress.
    let mut m = model(&svc_yaml("web", "", "", &[]));
    m.services.get_mut(&web()).unwrap().ingress_ips = vec![ip("10.99.0.110")];
    let out = env.run(&mut Compiler::new(), &cfg, &m);
    assert_eq!(
        out.report.service(&web()).unwrap().vips,
        vec![ip("10.99.0.110")]
    );

    // Requests: outside every pool, wrong namespace, taken, and good.
    let mut y = svc_yaml("a", "  loadBalancerIP: 192.0.2.1\n", "", &[]);
    y.push_str(&svc_yaml("b", "  loadBalancerIP: 10.99.0.200\n", "", &[]));
    y.push_str(&svc_yaml(
        "c",
        "",
        "sluice.dev/load-balancer-ips: \"10.99.0.115\"",
        &[],
    ));
    y.push_str(&svc_yaml("d", "  loadBalancerIP: 10.99.0.115\n", "", &[]));
    let out = env.run(&mut Compiler::new(), &cfg, &model(&y));
    let r = |n: &str| {
        out.report
            .service(&ObjectKey::new("default", n))
            .unwrap()
            .clone()
    };
    assert!(r("a").vips.is_empty());
    assert!(
        r("a").problems[0].contains("outside every pool"),
        "{:?}",
        r("a").problems
    );
    assert!(r("b").vips.is_empty());
    assert!(
        r("b").problems[0].contains("not open to namespace"),
        "{:?}",
        r("b").problems
    );
    assert_eq!(r("c").vips, vec![ip("10.99.0.115")]);
    assert!(r("d").vips.is_empty());
    assert!(
        r("d").problems[0].contains("already used by Service default/c"),
        "{:?}",
        r("d").problems
    );
    assert!(out.snapshot.frontends().all(|f| f.vip == ip("10.99.0.115")));
}

#[test]
fn pod_targets_by_port_name_and_target_port() {
    // Slice port named differently from the Service port: matched by targetPort number.
    let y = svc_yaml(
        "web",
        "",
        "",
        &[("10.99.0.21", true, "n1"), ("10.99.0.22", false, "n2")],
    )
    .replace(
        "ports: [{name: http, port: 8080",
        "ports: [{name: other, port: 8080",
    );
    let out = Env::new().run(&mut Compiler::new(), &cfg(), &model(&y));
    let fe = &out.report.service(&web()).unwrap().frontends[0];
    assert_eq!(fe.backends.len(), 1, "the not-ready endpoint is left out");
    assert_eq!(
        (fe.backends[0].addr, fe.backends[0].port),
        (ip("10.99.0.21"), 8080)
    );
    assert_eq!(fe.backends[0].node.as_deref(), Some("n1"));

    // Named targetPort, slice port by that name with another number.
    let y = svc_yaml("web", "", "", &[("10.99.0.21", true, "n1")])
        .replace("targetPort: 8080", "targetPort: web-http")
        .replace(
            "ports: [{name: http, port: 8080",
            "ports: [{name: web-http, port: 8081",
        );
    let out = Env::new().run(&mut Compiler::new(), &cfg(), &model(&y));
    assert_eq!(
        out.report.service(&web()).unwrap().frontends[0].backends[0].port,
        8081
    );

    // No matching port: a problem, no backends.
    let y = svc_yaml("web", "", "", &[("10.99.0.21", true, "n1")]).replace(
        "ports: [{name: http, port: 8080",
        "ports: [{name: x, port: 9999",
    );
    let out = Env::new().run(&mut Compiler::new(), &cfg(), &model(&y));
    let r = out.report.service(&web()).unwrap();
    assert!(r.frontends[0].backends.is_empty());
    assert!(
        r.problems.iter().any(|p| p.contains("has no TCP port")),
        "{:?}",
        r.problems
    );
    assert!(
        r.problems.iter().any(|p| p.contains("no ready endpoints")),
        "{:?}",
        r.problems
    );
}

#[test]
fn terminating_endpoints_are_a_fallback() {
    let y = svc_yaml("web", "", "", &[("10.99.0.21", false, "n1")]).replace(
        "conditions: {ready: false}",
        "conditions: {ready: false, serving: true, terminating: true}",
    );
    let out = Env::new().run(&mut Compiler::new(), &cfg(), &model(&y));
    let r = out.report.service(&web()).unwrap();
    assert_eq!(r.frontends[0].backends.len(), 1);
    assert!(r.problems[0].contains("terminating"), "{:?}", r.problems);
}

const NODES: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
status:
  addresses: [{type: InternalIP, address: 10.99.0.21}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Node
metadata: {name: n2}
status:
  addresses: [{type: InternalIP, address: 10.99.0.22}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Node
metadata: {name: n3}
status:
  addresses: [{type: InternalIP, address: 10.99.0.23}]
  conditions: [{type: Ready, status: "False"}]
---
apiVersion: v1
kind: Node
metadata:
  name: n4
  labels: {node.kubernetes.io/exclude-from-external-load-balancers: ""}
status:
  addresses: [{type: InternalIP, address: 10.99.0.24}]
---
"#;

#[test]
fn node_targets_and_local_policy() {
    let mut cfg = cfg();
    cfg.forwarding.target = Target::Node;
    let eps = &[("10.244.1.5", true, "n2")];
    let y = format!("{NODES}{}", svc_yaml("web", "", "", eps));
    let out = Env::new().run(&mut Compiler::new(), &cfg, &model(&y));
    let fe = &out.report.service(&web()).unwrap().frontends[0];
    let b: Vec<(IpAddr, u16)> = fe.backends.iter().map(|b| (b.addr, b.port)).collect();
    assert_eq!(
        b,
        vec![(ip("10.99.0.21"), 30080), (ip("10.99.0.22"), 30080)],
        "not-ready and excluded nodes are skipped"
    );
    assert!(out
        .report
        .health_targets
        .contains(&ProbeTarget::tcp("10.99.0.21:30080".parse().unwrap())));

    let y = format!(
        "{NODES}{}",
        svc_yaml(
            "web",
            "  externalTrafficPolicy: Local\n  healthCheckNodePort: 10256\n",
            "",
            eps
        )
    );
    let out = Env::new().run(&mut Compiler::new(), &cfg, &model(&y));
    let fe = &out.report.service(&web()).unwrap().frontends[0];
    assert_eq!(fe.backends.len(), 1);
    assert_eq!(fe.backends[0].addr, ip("10.99.0.22"));
    let hc = ProbeTarget::http("10.99.0.22:10256".parse().unwrap(), "/healthz");
    assert_eq!(fe.backends[0].health_target.as_ref(), Some(&hc));
    assert_eq!(
        out.report.health_targets.iter().collect::<Vec<_>>(),
        vec![&hc]
    );

    // Per-Service target annotation back to pods; Local has no extra effect there.
    let y = format!(
        "{NODES}{}",
        svc_yaml(
            "web",
            "  externalTrafficPolicy: Local\n",
            "sluice.dev/target: pod",
            eps
        )
    );
    let out = Env::new().run(&mut Compiler::new(), &cfg, &model(&y));
    let fe = &out.report.service(&web()).unwrap().frontends[0];
    assert_eq!(
        (fe.target, fe.backends.len(), fe.backends[0].port),
        (Target::Pod, 1, 8080)
    );
    assert_eq!(fe.backends[0].addr, ip("10.244.1.5"));
    assert!(
        out.report.unresolved.contains(&ip("10.99.0.1")),
        "off-link pod IP goes via the gateway"
    );
}

#[test]
fn affinity_ranges_and_annotations() {
    let spec = "  sessionAffinity: ClientIP\n  loadBalancerSourceRanges: [\"192.0.2.0/24\", \"2001:db8::/32\"]\n";
    let ann = "sluice.dev/forwarding-method: dsr-ipip, sluice.dev/maglev-size: \"257\"";
    let y = svc_yaml("web", spec, ann, &[("10.99.0.21", true, "n1")]);
    let out = Env::new().run(&mut Compiler::new(), &cfg(), &model(&y));
    let f = out.snapshot.frontends().next().unwrap();
    assert_eq!(f.affinity_ms, Some(10_800_000));
    assert_eq!(f.method, Method::DsrIpip);
    assert_eq!(f.maglev.size(), 257);
    assert_eq!(
        f.source_ranges,
        vec![
            Cidr {
                addr: ip("192.0.2.0"),
                prefix: 24
            },
            Cidr {
                addr: ip("2001:db8::"),
                prefix: 32
            }
        ]
    );
    let spec =
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n";
    let ann = "sluice.dev/forwarding-method: dsr, sluice.dev/maglev-size: \"256\"";
    let y = svc_yaml("web", spec, ann, &[("10.99.0.21", true, "n1")]);
    let out = Env::new().run(&mut Compiler::new(), &cfg(), &model(&y));
    let f = out.snapshot.frontends().next().unwrap();
    assert_eq!(f.affinity_ms, Some(60_000));
    assert_eq!((f.method, f.maglev.size()), (Method::Nat, 251));
    let p = &out.report.service(&web()).unwrap().problems;
    assert!(p.iter().any(|p| p.contains("forwarding-method")), "{p:?}");
    assert!(
        p.iter()
            .any(|p| p.contains("maglev-size") && p.contains("not prime")),
        "{p:?}"
    );
}

#[test]
fn dual_stack_frontends_use_their_own_family() {
    let out = Env::new().run(&mut Compiler::new(), &cfg(), &lab_model());
    for f in out.snapshot.frontends() {
        for b in &f.backends {
            assert_eq!(
                out.snapshot.backend(*b).unwrap().addr.is_ipv4(),
                f.vip.is_ipv4()
            );
        }
    }
}

#[test]
fn removed_backends_drain_then_leave_and_ids_are_stable() {
    let cfg = cfg(); // grace 60 s
    let mut env = Env::new();
    let mut c = Compiler::new();
    let three = &[
        ("10.99.0.21", true, "n1"),
        ("10.99.0.22", true, "n2"),
        ("10.99.0.23", true, "n3"),
    ];
    let out = env.run(&mut c, &cfg, &model(&svc_yaml("web", "", "", three)));
    let ids = |o: &Compiled| -> Vec<(IpAddr, u32, BackendState)> {
        o.report.services[0].frontends[0]
            .backends
            .iter()
            .map(|b| (b.addr, b.id, b.state))
            .collect()
    };
    let first = ids(&out);
    let fid = out.report.services[0].frontends[0].id;

    // .22 leaves the slice: it stays, draining, with the same id.
    let two = &[("10.99.0.21", true, "n1"), ("10.99.0.23", true, "n3")];
    env.now += Duration::from_secs(10);
    let out = env.run(&mut c, &cfg, &model(&svc_yaml("web", "", "", two)));
    let second = ids(&out);
    assert_eq!(second[0], first[0]);
    assert_eq!(
        second[1],
        (ip("10.99.0.22"), first[1].1, BackendState::Draining)
    );
    assert_eq!(second[2], first[2]);
    assert!(
        out.report.maglev_rebuilt.is_empty(),
        "draining does not rebuild Maglev"
    );
    assert!(out.report.services[0].frontends[0].backends[1]
        .reason
        .as_deref()
        .unwrap()
        .contains("leaves in 60 s"));

    // Still draining before the grace ends; gone after it.
    env.now += Duration::from_secs(49);
    let out = env.run(&mut c, &cfg, &model(&svc_yaml("web", "", "", two)));
    assert_eq!(ids(&out)[1].2, BackendState::Draining);
    env.now += Duration::from_secs(12);
    let out = env.run(&mut c, &cfg, &model(&svc_yaml("web", "", "", two)));
    assert_eq!(ids(&out).len(), 2);
    assert_eq!(out.report.maglev_rebuilt, vec![fid]);
    assert!(out.snapshot.backend(first[1].1).is_none());

    // A new backend does not get the freed id at once...
    let new = &[
        ("10.99.0.21", true, "n1"),
        ("10.99.0.23", true, "n3"),
        ("10.99.0.24", true, "n4"),
    ];
    let out = env.run(&mut c, &cfg, &model(&svc_yaml("web", "", "", new)));
    let third = ids(&out);
    assert_ne!(third[2].1, first[1].1);
    assert_eq!(out.report.services[0].frontends[0].id, fid);

    // ...and a backend that comes back within the grace keeps its id.
    env.now += Duration::from_secs(1);
    let out = env.run(&mut c, &cfg, &model(&svc_yaml("web", "", "", two)));
    assert_eq!(ids(&out)[2].2, BackendState::Draining);
    let out = env.run(&mut c, &cfg, &model(&svc_yaml("web", "", "", new)));
    assert_eq!(ids(&out), third);

    // After the reuse delay a freed id is handed out again.
    env.now += Duration::from_secs(120);
    let four = &[("10.99.0.25", true, "n5")];
    let out = env.run(&mut c, &cfg, &model(&svc_yaml("web", "", "", four)));
    assert!(
        ids(&out).iter().any(|(_, id, _)| *id == first[1].1),
        "{:?}",
        ids(&out)
    );
}

#[test]
fn health_and_drain_states() {
    let mut cfg = cfg();
    cfg.health.enabled = true;
    let mut env = Env::new();
    let two = &[("10.99.0.21", true, "n1"), ("10.99.0.22", true, "n2")];
    let m = model(&svc_yaml("web", "", "", two));
    let mut c = Compiler::new();
    let out = env.run(&mut c, &cfg, &m);
    let t21 = ProbeTarget::tcp("10.99.0.21:8080".parse().unwrap());
    assert!(out.report.health_targets.contains(&t21));
    assert_eq!(out.report.health_targets.len(), 2);
    env.health.insert(t21, Health::Down);
    env.drained.insert(ip("10.99.0.22"));
    let out = env.run(&mut c, &cfg, &m);
    let fe = &out.report.services[0].frontends[0];
    assert_eq!(fe.backends[0].state, BackendState::Down);
    assert_eq!(fe.backends[1].state, BackendState::Draining);
    assert_eq!(
        fe.backends[1].reason.as_deref(),
        Some("drained by the operator")
    );
    assert!(out.report.maglev_rebuilt.is_empty());
    assert_eq!(
        out.snapshot.backend(fe.backends[0].id).unwrap().state,
        BackendState::Down
    );
}

/// A UDP Service is probed only through `sluice.dev/health-check-port`, and its probe
/// decides its backends' state like a TCP one's.
#[test]
fn udp_backends_probed_through_the_annotated_port() {
    let mut cfg = cfg();
    cfg.health.enabled = true;
    let udp = |annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: dns\n  annotations: {{{annotations}}}\nspec:\n  type: LoadBalancer\n  loadBalancerClass: sluice.dev/dpdk\n  ports:\n    - name: dns\n      protocol: UDP\n      port: 53\n      targetPort: 5353\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: dns-v4\n  labels: {{kubernetes.io/service-name: dns}}\naddressType: IPv4\nports: [{{name: dns, port: 5353, protocol: UDP}}]\nendpoints:\n  - addresses: [\"10.99.0.21\"]\n    conditions: {{ready: true}}\n"
        )
    };
    let mut env = Env::new();
    let out = env.run(&mut Compiler::new(), &cfg, &model(&udp("")));
    assert!(out.report.health_targets.is_empty(), "UDP is not probed");
    assert_eq!(
        out.report.services[0].frontends[0].backends[0].health_target,
        None
    );
    let m = model(&udp(
        "sluice.dev/health-check-port: \"8080\", sluice.dev/health-check-fall: \"1\"",
    ));
    let mut c = Compiler::new();
    let out = env.run(&mut c, &cfg, &m);
    let t = out.report.services[0].frontends[0].backends[0]
        .health_target
        .clone()
        .expect("probed");
    assert_eq!(t.addr, "10.99.0.21:8080".parse().unwrap());
    assert_eq!(t.timing.map(|t| t.fall), Some(1));
    assert!(out.report.health_targets.contains(&t));
    env.health.insert(t, Health::Down);
    let out = env.run(&mut c, &cfg, &m);
    let b = &out.report.services[0].frontends[0].backends[0];
    assert_eq!(b.state, BackendState::Down);
    assert!(
        out.report.services[0].problems.is_empty(),
        "{:?}",
        out.report.services[0].problems
    );
}

#[test]
fn operator_weights_rebuild_only_that_table() {
    let cfg = cfg();
    let mut env = Env::new();
    let two = &[("10.99.0.21", true, "n1"), ("10.99.0.22", true, "n2")];
    let m = model(&svc_yaml("web", "", "", two));
    let mut c = Compiler::new();
    let out = env.run(&mut c, &cfg, &m);
    let fe = &out.report.services[0].frontends[0];
    assert!(fe.backends.iter().all(|b| b.weight == 1));
    let even = out.snapshot.frontend(fe.id).unwrap().maglev.shares();
    env.weights.insert(ip("10.99.0.21"), 3);
    let out = env.run(&mut c, &cfg, &m);
    let fe = &out.report.services[0].frontends[0];
    assert_eq!(out.report.maglev_rebuilt, vec![fe.id]);
    assert_eq!((fe.backends[0].weight, fe.backends[1].weight), (3, 1));
    assert_eq!(out.snapshot.backend(fe.backends[0].id).unwrap().weight, 3);
    let shares = out.snapshot.frontend(fe.id).unwrap().maglev.shares();
    assert!(shares[0] > 2 * shares[1], "{shares:?} (even: {even:?})");
    // Weight 0: no entries at all, the backend gets no new flows.
    env.weights.insert(ip("10.99.0.21"), 0);
    let out = env.run(&mut c, &cfg, &m);
    let fe = &out.report.services[0].frontends[0];
    let shares = out.snapshot.frontend(fe.id).unwrap().maglev.shares();
    assert_eq!(shares[0], 0);
    assert_eq!(shares[1], 251);
}

/// `sluice.dev/backend-weights` weights a Service's backends; the operator's weight wins;
/// a bad value is reported and every backend keeps weight 1.
#[test]
fn backend_weights_annotation() {
    let cfg = cfg();
    let two = &[("10.99.0.21", true, "n1"), ("10.99.0.22", true, "n2")];
    let weights_with = |env: &Env, annotation: &str| {
        let m = model(&svc_yaml(
            "web",
            "",
            &format!("sluice.dev/backend-weights: \"{annotation}\""),
            two,
        ));
        let out = env.run(&mut Compiler::new(), &cfg, &m);
        let s = &out.report.services[0];
        let fe = &s.frontends[0];
        let w: Vec<u32> = fe.backends.iter().map(|b| b.weight).collect();
        (w, s.problems.clone(), out)
    };
    let mut env = Env::new();
    let weights = |annotation: &str| weights_with(&Env::new(), annotation);
    let (w, probs, out) = weights("10.99.0.21=4, 10.99.0.99=2");
    assert_eq!(w, vec![4, 1]);
    assert!(probs.is_empty(), "{probs:?}");
    let fe = &out.report.services[0].frontends[0];
    let shares = out.snapshot.frontend(fe.id).unwrap().maglev.shares();
    assert!(shares[0] > 3 * shares[1], "{shares:?}");
    for bad in [
        "10.99.0.21=x",
        "10.99.0.21",
        "10.99.0.21=20000",
        "a=1",
        "10.99.0.21=1,10.99.0.21=2",
    ] {
        let (w, probs, _) = weights(bad);
        assert_eq!(w, vec![1, 1], "{bad}");
        assert!(
            probs
                .iter()
                .any(|p| p.contains("sluice.dev/backend-weights")),
            "{bad}: {probs:?}"
        );
    }
    env.weights.insert(ip("10.99.0.21"), 2);
    let (w, _, _) = weights_with(&env, "10.99.0.21=4,10.99.0.22=0");
    assert_eq!(
        w,
        vec![2, 0],
        "the operator's weight wins over the annotation"
    );
}

/// New-flow limits: the config's defaults, divided among the workers; the annotations
/// override them per Service; an invalid value is reported naming the annotation, the value
/// and the fix, and the last valid one stays in force.
#[test]
fn new_flow_limit_annotations() {
    use sluice_dataplane::snapshot::FlowLimit;
    let mut cfg = cfg();
    cfg.workers.cores = vec![1, 2];
    cfg.limits.new_flows_per_vip = 1001;
    let two = &[("10.99.0.21", true, "n1")];
    let env = Env::new();
    let mut c = Compiler::new();
    let mut limits_with = |annotations: &str| {
        let m = model(&svc_yaml("web", "", annotations, two));
        let out = env.run(&mut c, &cfg, &m);
        let s = &out.report.services[0];
        let f = out.snapshot.frontend(s.frontends[0].id).unwrap();
        (f.flow_limit, f.source_flow_limit, s.problems.clone())
    };
    // The config's default: 1001 a second for the host, 501 per worker; bursts of a second.
    let (vip, src, probs) = limits_with("");
    assert_eq!(
        vip,
        Some(FlowLimit {
            rate: 501,
            burst: 501
        })
    );
    assert_eq!(src, None);
    assert!(probs.is_empty(), "{probs:?}");
    let (vip, src, probs) = limits_with(
        "sluice.dev/new-flow-limit: \"0\", sluice.dev/new-flow-limit-per-source: \"10,40\"",
    );
    assert_eq!(vip, None, "0 turns the default off");
    assert_eq!(src, Some(FlowLimit { rate: 5, burst: 20 }));
    assert!(probs.is_empty(), "{probs:?}");
    // An invalid value: reported; the last valid one (10,40) stays.
    let (vip, src, probs) = limits_with(
        "sluice.dev/new-flow-limit: \"lots\", sluice.dev/new-flow-limit-per-source: \"10,0\"",
    );
    assert_eq!(src, Some(FlowLimit { rate: 5, burst: 20 }));
    let p = probs
        .iter()
        .find(|p| p.contains("sluice.dev/new-flow-limit-per-source"))
        .unwrap_or_else(|| panic!("{probs:?}"));
    assert!(p.contains("\"10,0\"") && p.contains("RATE,BURST"), "{p}");
    assert!(
        p.contains("keeping its last valid value, 10 per second, bursts of 40"),
        "{p}"
    );
    // The other one was never valid before the bad value: the config's default.
    assert_eq!(vip, None, "its last valid value was 0, no limit");
    let p = probs
        .iter()
        .find(|p| p.contains("annotation sluice.dev/new-flow-limit:"))
        .unwrap_or_else(|| panic!("{probs:?}"));
    assert!(
        p.contains("\"lots\"") && p.contains("keeping its last valid value, no limit"),
        "{p}"
    );
    // Removed annotations: the defaults again; a bad value after that has no last good one.
    assert_eq!(
        limits_with("").0,
        Some(FlowLimit {
            rate: 501,
            burst: 501
        })
    );
    let (vip, _, probs) = limits_with("sluice.dev/new-flow-limit: \"5,\"");
    assert_eq!(
        vip,
        Some(FlowLimit {
            rate: 501,
            burst: 501
        })
    );
    assert!(
        probs
            .iter()
            .any(|p| p.contains("using limits.new_flows_per_vip: 1001 per second")),
        "{probs:?}"
    );
}

#[test]
fn syn_proxy_annotation() {
    use crate::config::SynProxyMode;
    let mut cfg = cfg();
    let two = &[("10.99.0.21", true, "n1")];
    let env = Env::new();
    let mut c = Compiler::new();
    let mut proxy_with = |cfg: &Config, annotations: &str| {
        let m = model(&svc_yaml("web", "", annotations, two));
        let out = env.run(&mut c, cfg, &m);
        let s = &out.report.services[0];
        let f = out.snapshot.frontend(s.frontends[0].id).unwrap();
        (f.syn_proxy, s.problems.clone())
    };
    let auto = SynProxy::Auto { threshold: 1024 };
    // Off by default; on or auto by annotation; the config's default applies without one.
    assert_eq!(proxy_with(&cfg, ""), (SynProxy::Off, vec![]));
    assert_eq!(
        proxy_with(&cfg, "sluice.dev/syn-proxy: \"on\""),
        (SynProxy::On, vec![])
    );
    assert_eq!(
        proxy_with(&cfg, "sluice.dev/syn-proxy: \"auto\""),
        (auto, vec![])
    );
    // An invalid value keeps the last valid one (auto) and says so.
    let (m, probs) = proxy_with(&cfg, "sluice.dev/syn-proxy: \"sometimes\"");
    assert_eq!(m, auto);
    assert!(
        probs
            .iter()
            .any(|p| p.contains("sluice.dev/syn-proxy: \"sometimes\"")
                && p.contains("\"on\", \"off\" or \"auto\"")
                && p.contains("keeping its last valid value, auto")),
        "{probs:?}"
    );
    assert_eq!(
        proxy_with(&cfg, "sluice.dev/syn-proxy: \"off\""),
        (SynProxy::Off, vec![])
    );
    cfg.forwarding.syn_proxy = SynProxyMode::On;
    assert_eq!(proxy_with(&cfg, ""), (SynProxy::On, vec![]));
    let (m, probs) = proxy_with(&cfg, "sluice.dev/syn-proxy: \"yes\"");
    assert_eq!(m, SynProxy::On, "no last valid value: the config's default");
    assert!(
        probs
            .iter()
            .any(|p| p.contains("unknown value") && p.contains("using forwarding.syn_proxy: on")),
        "{probs:?}"
    );
    // The threshold comes from the config.
    cfg.forwarding.syn_proxy = SynProxyMode::Auto;
    cfg.forwarding.syn_proxy_auto_threshold = 50;
    assert_eq!(
        proxy_with(&cfg, ""),
        (SynProxy::Auto { threshold: 50 }, vec![])
    );
    // ... unless the Service sets its own; an invalid one keeps the last valid one.
    assert_eq!(
        proxy_with(&cfg, "sluice.dev/syn-proxy-threshold: \"300\""),
        (SynProxy::Auto { threshold: 300 }, vec![])
    );
    for bad in ["1", "x", "16777217"] {
        let (m, probs) = proxy_with(&cfg, &format!("sluice.dev/syn-proxy-threshold: \"{bad}\""));
        assert_eq!(m, SynProxy::Auto { threshold: 300 }, "{bad}");
        assert!(
            probs
                .iter()
                .any(|p| p.contains("sluice.dev/syn-proxy-threshold")
                    && p.contains("not a number from 2 to 16777216")
                    && p.contains("keeping its last valid value, 300")),
            "{probs:?}"
        );
    }
    assert_eq!(
        proxy_with(&cfg, ""),
        (SynProxy::Auto { threshold: 50 }, vec![]),
        "without the annotation: the config's again"
    );
    let (m, probs) = proxy_with(&cfg, "sluice.dev/syn-proxy-threshold: \"0\"");
    assert_eq!(m, SynProxy::Auto { threshold: 50 });
    assert!(
        probs
            .iter()
            .any(|p| p.contains("using forwarding.syn_proxy_auto_threshold: 50")),
        "{probs:?}"
    );
    // DSR cannot proxy: off, and reported.
    let (m, probs) = proxy_with(&cfg, "sluice.dev/forwarding-method: \"dsr-l2\"");
    assert_eq!(m, SynProxy::Off);
    assert!(
        probs.iter().any(|p| p.contains("needs the nat method")),
        "{probs:?}"
    );
}

#[test]
fn next_hops() {
    let mut cfg = cfg();
    let mut env = Env::new();
    let eps = &[("10.99.0.21", true, "n1"), ("10.1.2.3", true, "n2")];
    let m = model(&svc_yaml("web", "", "", eps));
    env.neighbours.insert(ip("10.99.0.1"), [2, 0, 0, 0, 0, 1]);
    let out = env.run(&mut Compiler::new(), &cfg, &m);
    let fe = &out.report.services[0].frontends[0];
    assert_eq!(fe.backends[0].addr, ip("10.1.2.3"));
    assert_eq!(fe.backends[0].next_hop, Some(ip("10.99.0.1")));
    assert_eq!(fe.backends[0].mac, Some([2, 0, 0, 0, 0, 1]));
    assert_eq!(fe.backends[1].next_hop, Some(ip("10.99.0.21")));
    assert_eq!(fe.backends[1].mac, None);
    assert_eq!(
        out.report.unresolved.iter().collect::<Vec<_>>(),
        vec![&ip("10.99.0.21")]
    );

    cfg.ports[0].gateway_v4 = None;
    let out = env.run(&mut Compiler::new(), &cfg, &m);
    let r = &out.report.services[0];
    assert_eq!(r.frontends[0].backends[0].next_hop, None);
    assert!(
        r.problems
            .iter()
            .any(|p| p.contains("10.1.2.3 is outside every on-link subnet")),
        "{:?}",
        r.problems
    );
}

#[test]
fn only_changed_services_are_re_examined() {
    let mut cfg = cfg();
    cfg.health.enabled = true;
    let mut env = Env::new();
    let mut c = Compiler::new();
    let a = svc_yaml("a", "", "", &[("10.99.0.21", true, "n1")]);
    let b = svc_yaml("b", "", "", &[("10.99.0.22", true, "n1")]);
    let m = model(&format!("{a}{b}"));
    let out1 = env.run(&mut c, &cfg, &m);
    assert_eq!(out1.report.recompiled.len(), 2);
    // Nothing changed: nothing re-examined, the very same reports.
    let out2 = env.run(&mut c, &cfg, &m);
    assert!(out2.report.recompiled.is_empty());
    assert!(Arc::ptr_eq(
        &out1.report.services[0],
        &out2.report.services[0]
    ));
    assert_eq!(
        out1.report,
        CompileReport {
            generation: 1,
            maglev_rebuilt: out1.report.maglev_rebuilt.clone(),
            recompiled: out1.report.recompiled.clone(),
            ..out2.report.clone()
        }
    );
    // b's slice changes: only b.
    let b2 = svc_yaml(
        "b",
        "",
        "",
        &[("10.99.0.22", true, "n1"), ("10.99.0.23", true, "n1")],
    );
    let m2 = model(&format!("{a}{b2}"));
    let out3 = env.run(&mut c, &cfg, &m2);
    assert_eq!(out3.report.recompiled, vec![ObjectKey::new("default", "b")]);
    // A health check takes a's backend down: only a, and its state shows.
    env.health.insert(
        ProbeTarget::tcp("10.99.0.21:8080".parse().unwrap()),
        Health::Down,
    );
    let out4 = env.run(&mut c, &cfg, &m2);
    assert_eq!(out4.report.recompiled, vec![ObjectKey::new("default", "a")]);
    let fa = &out4.report.services[0].frontends[0];
    assert_eq!(fa.backends[0].state, BackendState::Down);
    // A neighbour is learned: only the Service whose next hop it is.
    env.neighbours
        .insert(ip("10.99.0.23"), [2, 0, 0, 0, 0, 0x23]);
    let out5 = env.run(&mut c, &cfg, &m2);
    assert_eq!(out5.report.recompiled, vec![ObjectKey::new("default", "b")]);
    // The operator drains an address: everything.
    env.drained.insert(ip("10.99.0.23"));
    let out6 = env.run(&mut c, &cfg, &m2);
    assert_eq!(out6.report.recompiled.len(), 2);
    // The result equals a compile from scratch (ids aside, which a fresh compiler
    // hands out in the same order here).
    let fresh = env.run(&mut Compiler::new(), &cfg, &m2);
    assert_eq!(
        out6.report
            .services
            .iter()
            .map(|s| (**s).clone())
            .collect::<Vec<_>>(),
        fresh
            .report
            .services
            .iter()
            .map(|s| (**s).clone())
            .collect::<Vec<_>>()
    );
}

mod maglev;
