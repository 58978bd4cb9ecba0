use std::sync::Arc;

use sluice_dataplane::snapshot::Method;

use super::*;
use crate::compile::{BackendReport, FrontendReport, ServiceReport};
use crate::config::Target;
use crate::model::{L4Protocol, ObjectKey};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cfg() -> Config {
    Config::parse(
        r#"
[[ports]]
name = "lb0"
device = "net_null0"
ipv4 = ["10.98.0.21/24"]
ipv6 = ["fd00:98::21/64"]
[nat]
addresses = ["10.98.0.31", "fd00:98::31"]
[[pools]]
name = "default"
ranges = ["10.98.0.100-10.98.0.120", "fd00:98::100-fd00:98::120"]
"#,
        "t.toml",
    )
    .unwrap()
}

fn fe(vip: &str, backends: &[(BackendState, bool)]) -> FrontendReport {
    FrontendReport {
        id: 0,
        name: "x".into(),
        vip: ip(vip),
        port: 80,
        protocol: L4Protocol::Tcp,
        method: Method::Nat,
        target: Target::Pod,
        affinity_ms: None,
        maglev_size: 251,
        maglev_auto: false,
        backends: backends
            .iter()
            .enumerate()
            .map(|(i, (state, resolved))| BackendReport {
                id: i as u32,
                addr: ip(&format!("10.98.1.{}", i + 1)),
                port: 8080,
                state: *state,
                reason: None,
                weight: 1,
                node: None,
                next_hop: Some(ip(&format!("10.98.1.{}", i + 1))),
                mac: resolved.then_some([2, 0, 0, 0, 0, 1]),
                health_target: None,
            })
            .collect(),
    }
}

fn report(services: Vec<(&str, Vec<FrontendReport>)>) -> CompileReport {
    CompileReport {
        generation: 1,
        services: services
            .into_iter()
            .map(|(name, frontends)| {
                Arc::new(ServiceReport {
                    service: ObjectKey::new("default", name),
                    vips: frontends.iter().map(|f| f.vip).collect(),
                    frontends,
                    problems: vec![],
                    issues: vec![],
                })
            })
            .collect(),
        ..CompileReport::default()
    }
}

fn addrs(w: &[Announcement]) -> Vec<String> {
    w.iter()
        .map(|a| match &a.pool {
            Some(p) => format!("{}@{p}", a.addr),
            None => a.addr.to_string(),
        })
        .collect()
}

use BackendState::{Active, Down, Draining};

#[test]
fn vips_with_a_ready_backend_and_nat_addresses() {
    let r = report(vec![
        // Ready in both families.
        (
            "web",
            vec![
                fe("10.98.0.100", &[(Down, true), (Active, true)]),
                fe("fd00:98::100", &[(Active, true)]),
            ],
        ),
        // IPv4 ready, IPv6 only down and draining: only the IPv4 VIP.
        (
            "half",
            vec![
                fe("10.98.0.101", &[(Active, true)]),
                fe("fd00:98::101", &[(Down, true), (Draining, true)]),
            ],
        ),
        // No backend at all, and an active backend whose next hop is unresolved.
        ("empty", vec![fe("10.98.0.102", &[])]),
        ("unresolved", vec![fe("10.98.0.103", &[(Active, false)])]),
        // A VIP outside every pool (e.g. requested by the Service) is a plain host route.
        ("outside", vec![fe("192.0.2.7", &[(Active, true)])]),
    ]);
    assert_eq!(
        addrs(&wanted(&cfg(), &r, false)),
        [
            "10.98.0.31",
            "10.98.0.100@default",
            "10.98.0.101@default",
            "192.0.2.7",
            "fd00:98::31",
            "fd00:98::100@default",
        ]
    );
}

#[test]
fn nat_addresses_are_announced_without_any_service() {
    assert_eq!(
        addrs(&wanted(&cfg(), &CompileReport::default(), false)),
        ["10.98.0.31", "fd00:98::31"]
    );
}

#[test]
fn a_drained_host_announces_nothing() {
    let r = report(vec![("web", vec![fe("10.98.0.100", &[(Active, true)])])]);
    assert!(wanted(&cfg(), &r, true).is_empty());
}

#[test]
fn a_vip_on_two_frontends_is_announced_once() {
    let r = report(vec![(
        "web",
        vec![
            fe("10.98.0.100", &[(Active, true)]),
            fe("10.98.0.100", &[(Active, true)]),
        ],
    )]);
    assert_eq!(
        addrs(&wanted(&cfg(), &r, false)),
        ["10.98.0.31", "10.98.0.100@default", "fd00:98::31"]
    );
}
