//! # Kubernetes convergence benchmark
//!
//! How long from an EndpointSlice change at the API server until every worker holds a
//! snapshot with it, at 10,000 LoadBalancer Services and 100,000 endpoints.
//!
//! ```text
//! cargo bench -p sluice-controlplane --bench k8s_convergence
//! ```
//!
//! - The fake API server (`tests/support/fakeapi.rs`, real HTTP and JSON) runs in a child
//!   process, so the resident memory reported is the control plane's alone. It starts with
//!   the Services (one TCP port each, status already holding their VIP, as in a running
//!   cluster), one EndpointSlice per Service with the endpoints spread evenly, and 50 Nodes.
//! - This process runs the Kubernetes source, the model, the compiler and publishing to
//!   `SLUICE_BENCH_WORKERS` simulated workers (threads blocked on the same bounded crossbeam
//!   channels `sluiced`'s workers read), as `tests/support/harness.rs` does, which mirrors
//!   the daemon's Kubernetes path.
//! - Each change replaces one endpoint of a random Service's slice with a new address (a
//!   rolling update) through a `PUT` to the API server. The clock starts before the `PUT` and
//!   stops when the last worker has received a snapshot in which that frontend has the new
//!   backend. Changes are spaced 100-200 ms apart.
//!
//! Environment: `SLUICE_BENCH_SERVICES` (10000), `SLUICE_BENCH_ENDPOINTS` (100000),
//! `SLUICE_BENCH_CHANGES` (300), `SLUICE_BENCH_WORKERS` (4), `SLUICE_BENCH_MAGLEV` (Maglev
//! table size, `auto` as by default, or a prime).

#[path = "../tests/support/fakeapi.rs"]
mod fakeapi;
#[path = "../tests/support/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_controlplane::config::Config;
use sluice_controlplane::sources::kubernetes::KubeSettings;
use sluice_dataplane::snapshot::Snapshot;

const CHILD_ENV: &str = "SLUICE_BENCH_FAKEAPI";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The VIP of Service `i`: 172.16.0.1 + i (the pool is 172.16.0.0/16).
fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 1)) + i as u32)
}

/// Endpoint `j` of Service `i`: 10.x.y.z, unique.
fn endpoint(i: usize, j: usize, per: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 1)) + (i * per + j) as u32)
}

fn service(i: usize) -> corev1::Service {
    corev1::Service {
        metadata: ObjectMeta {
            name: Some(format!("svc-{i:05}")),
            namespace: Some(format!("ns-{}", i % 20)),
            ..Default::default()
        },
        spec: Some(corev1::ServiceSpec {
            type_: Some("LoadBalancer".into()),
            load_balancer_class: Some("sluice.dev/dpdk".into()),
            ports: Some(vec![corev1::ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::Int(8080)),
                protocol: Some("TCP".into()),
                node_port: Some(30000 + (i % 2000) as i32),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        // What Sluice writes, as a previous leader left it: no status write is due.
        status: Some(corev1::ServiceStatus {
            load_balancer: Some(corev1::LoadBalancerStatus {
                ingress: Some(vec![corev1::LoadBalancerIngress {
                    ip: Some(vip(i).to_string()),
                    ip_mode: Some("VIP".into()),
                    ..Default::default()
                }]),
            }),
            conditions: Some(vec![
                condition(
                    "sluice.dev/BackendsReady",
                    "BackendsActive",
                    "at least one backend takes traffic".into(),
                ),
                condition(
                    "sluice.dev/IPAllocated",
                    "Allocated",
                    format!("{} (pool bench)", vip(i)),
                ),
            ]),
        }),
    }
}

fn condition(type_: &str, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.into(),
        status: "True".into(),
        reason: reason.into(),
        message,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        observed_generation: None,
    }
}

fn slice(i: usize, addrs: &[Ipv4Addr]) -> discoveryv1::EndpointSlice {
    discoveryv1::EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("svc-{i:05}-abcde")),
            namespace: Some(format!("ns-{}", i % 20)),
            labels: Some(
                [(
                    "kubernetes.io/service-name".to_owned(),
                    format!("svc-{i:05}"),
                )]
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(
            addrs
                .iter()
                .enumerate()
                .map(|(j, a)| discoveryv1::Endpoint {
                    addresses: vec![a.to_string()],
                    conditions: Some(discoveryv1::EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    node_name: Some(format!("node-{}", (i + j) % 50)),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(vec![discoveryv1::EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

fn node(n: usize) -> corev1::Node {
    corev1::Node {
        metadata: ObjectMeta {
            name: Some(format!("node-{n}")),
            ..Default::default()
        },
        spec: None,
        status: Some(corev1::NodeStatus {
            addresses: Some(vec![corev1::NodeAddress {
                type_: "InternalIP".into(),
                address: format!("192.168.0.{}", n + 1),
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

fn per_service(services: usize, endpoints: usize) -> usize {
    endpoints.div_ceil(services.max(1)).max(1)
}

/// Child: serve the fixture until stdin closes.
fn child() {
    let services = env("SLUICE_BENCH_SERVICES", 10_000);
    let per = per_service(services, env("SLUICE_BENCH_ENDPOINTS", 100_000));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let api = fakeapi::FakeApi::start().await;
        // Watches stay quiet apart from changes; bookmarks once a second.
        api.set_bookmark_interval(Some(Duration::from_secs(1)));
        for n in 0..50 {
            api.upsert(&node(n));
        }
        for i in 0..services {
            api.upsert(&service(i));
            let addrs: Vec<Ipv4Addr> = (0..per).map(|j| endpoint(i, j, per)).collect();
            api.upsert(&slice(i, &addrs));
        }
        println!("{}", api.url());
        let _ = std::io::stdout().flush();
        // Until the parent closes stdin.
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await
        .ok();
        let requests = api.requests();
        eprintln!(
            "fake API server: {} requests ({} watches), {} status writes, {} Events",
            requests.len(),
            requests.iter().filter(|r| r.is_watch()).count(),
            api.status_patches().len(),
            api.events().len()
        );
    });
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What the workers wait for: (Service index, new endpoint, when the change was sent).
type Pending = Arc<Mutex<Option<(usize, Ipv4Addr, Instant)>>>;

fn holds(snap: &Snapshot, i: usize, addr: Ipv4Addr) -> bool {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&vip(i).octets());
    let Some(f) = snap.frontend_for(&key, false, 6, 80) else {
        return false;
    };
    f.backends
        .iter()
        .any(|b| snap.backend(*b).is_some_and(|b| b.addr == IpAddr::V4(addr)))
}

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child();
        return;
    }
    let services = env("SLUICE_BENCH_SERVICES", 10_000);
    let endpoints = env("SLUICE_BENCH_ENDPOINTS", 100_000);
    let changes = env("SLUICE_BENCH_CHANGES", 300);
    let nworkers = env("SLUICE_BENCH_WORKERS", 4);
    let per = per_service(services, endpoints);
    let maglev = std::env::var("SLUICE_BENCH_MAGLEV").unwrap_or_else(|_| "auto".into());
    println!(
        "k8s_convergence: {services} Services, {} endpoints ({per} per Service), {nworkers} workers, {changes} changes, Maglev size {maglev}",
        services * per,
    );

    let t = Instant::now();
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the fake API server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("url");
    let url = line.trim().to_owned();
    println!(
        "fake API server (child process) ready in {:.1} s at {url}",
        t.elapsed().as_secs_f64()
    );

    let cfg = Config::parse(
        &r#"
[[ports]]
name = "lb0"
device = "net_null0"
ipv4 = ["192.168.0.250/16"]
gateway_v4 = "192.168.0.254"

[tables]
maglev_size = MAGLEV
max_backends = 262144

[health]
# No backend exists to probe.
enabled = false

[source]
kind = "kubernetes"
leader_election = false

[[pools]]
name = "bench"
cidrs = ["172.16.0.0/16"]
"#
        .replace(
            "MAGLEV",
            &if maglev == "auto" {
                "\"auto\"".to_owned()
            } else {
                maglev.clone()
            },
        ),
        "bench.toml",
    )
    .expect("config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let client = {
        let _g = rt.enter();
        kube::Client::try_from(kube::Config::new(url.parse().expect("url"))).expect("client")
    };
    let (senders, receivers) = harness::worker_channels(nworkers);

    // Simulated workers: keep the newest snapshot, report when the awaited change is in it.
    let pending: Pending = Arc::new(Mutex::new(None));
    let (seen_tx, seen_rx) = crossbeam_channel::unbounded::<(usize, Instant)>();
    let mut threads = Vec::new();
    for (w, rx) in receivers.into_iter().enumerate() {
        let pending = pending.clone();
        let seen_tx = seen_tx.clone();
        threads.push(std::thread::spawn(move || {
            let mut last_marker: Option<Ipv4Addr> = None;
            let mut current: Option<Arc<Snapshot>> = None;
            loop {
                match rx.recv_timeout(Duration::from_millis(5)) {
                    Ok(s) => current = Some(s),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                }
                while let Ok(s) = rx.try_recv() {
                    current = Some(s);
                }
                let want = *pending.lock().unwrap();
                if let (Some((i, addr, _)), Some(s)) = (want, &current) {
                    if last_marker != Some(addr) && holds(s, i, addr) {
                        last_marker = Some(addr);
                        let _ = seen_tx.send((w, Instant::now()));
                    }
                }
            }
        }));
    }

    let t = Instant::now();
    let cfg2 = cfg.clone();
    let mut settings = KubeSettings::from_config(&cfg2);
    settings.identity = "bench".into();
    settings.lease = None;
    let inst = rt.block_on(harness::Instance::start(
        client.clone(),
        cfg2,
        settings,
        senders,
    ));
    let p = inst.now();
    println!(
        "initial list + first compile: {:.2} s ({} frontends, {} backends; first compile {:.0} ms)",
        t.elapsed().as_secs_f64(),
        p.snapshot.frontends().count(),
        p.report
            .services
            .iter()
            .flat_map(|s| &s.frontends)
            .map(|f| f.backends.len())
            .sum::<usize>(),
        ms(p.compile_time),
    );
    assert_eq!(
        p.snapshot.frontends().count(),
        services,
        "every Service served"
    );
    // The Maglev tables: shared by every worker through the snapshot's `Arc`s.
    let mut sizes: BTreeMap<u32, usize> = BTreeMap::new();
    for f in p.snapshot.frontends() {
        *sizes.entry(f.maglev.size()).or_default() += 1;
    }
    let table_bytes: usize = sizes.iter().map(|(m, k)| *m as usize * 4 * k).sum();
    println!(
        "Maglev tables: {} ({:.0} MiB)",
        sizes
            .iter()
            .map(|(m, k)| format!("{k} of {m} slots"))
            .collect::<Vec<_>>()
            .join(", "),
        table_bytes as f64 / (1024.0 * 1024.0)
    );
    drop(p);
    let rss_loaded = rss_kib("VmRSS:");

    let slices: kube::Api<discoveryv1::EndpointSlice> = kube::Api::all(client.clone());
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut samples = Vec::with_capacity(changes);
    let mut compile_times = Vec::with_capacity(changes);
    let mut timeouts = 0;
    let first_fresh = u32::from(Ipv4Addr::new(10, 250, 0, 1));
    for fresh in (first_fresh..).take(changes) {
        let i = (next() % services as u64) as usize;
        let ns = format!("ns-{}", i % 20);
        let name = format!("svc-{i:05}-abcde");
        let api: kube::Api<discoveryv1::EndpointSlice> = kube::Api::namespaced(client.clone(), &ns);
        let mut s = rt.block_on(api.get(&name)).expect("get slice");
        let new = Ipv4Addr::from(fresh);
        if let Some(eps) = s.endpoints.as_mut() {
            let k = (next() % eps.len() as u64) as usize;
            eps[k].addresses = vec![new.to_string()];
        }
        while seen_rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        *pending.lock().unwrap() = Some((i, new, t0));
        rt.block_on(api.replace(&name, &Default::default(), &s))
            .expect("replace slice");
        let mut got = 0;
        let mut last = t0;
        let deadline = t0 + Duration::from_secs(10);
        while got < nworkers {
            match seen_rx.recv_deadline(deadline) {
                Ok((_, at)) => {
                    got += 1;
                    last = last.max(at);
                }
                Err(_) => break,
            }
        }
        if got < nworkers {
            timeouts += 1;
        } else {
            samples.push(last - t0);
            compile_times.push(inst.now().compile_time);
        }
        std::thread::sleep(Duration::from_millis(100 + next() % 100));
    }
    let _ = slices;
    samples.sort();
    compile_times.sort();
    let rss_end = rss_kib("VmRSS:");
    let hwm = rss_kib("VmHWM:");
    let p = inst.now();
    println!();
    println!(
        "convergence (EndpointSlice PUT -> all {nworkers} workers hold it), {} samples:",
        samples.len()
    );
    println!(
        "  p50 {:.1} ms   p90 {:.1} ms   p99 {:.1} ms   max {:.1} ms   timeouts {timeouts}",
        ms(pct(&samples, 0.50)),
        ms(pct(&samples, 0.90)),
        ms(pct(&samples, 0.99)),
        ms(pct(&samples, 1.0)),
    );
    println!(
        "compile (incremental) p50 {:.1} ms   p99 {:.1} ms   (last: {} Services re-examined)",
        ms(pct(&compile_times, 0.50)),
        ms(pct(&compile_times, 0.99)),
        p.report.recompiled.len()
    );
    println!(
        "resident memory of this process (control plane + {nworkers} simulated workers): {:.0} MiB after load, {:.0} MiB at the end, peak {:.0} MiB",
        rss_loaded as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "targets: p99 <= 1000 ms: {}; p50 <= 200 ms: {}; peak memory <= 500 MiB: {}",
        if ms(pct(&samples, 0.99)) <= 1000.0 && timeouts == 0 {
            "met"
        } else {
            "NOT met"
        },
        if ms(pct(&samples, 0.50)) <= 200.0 {
            "met"
        } else {
            "NOT met"
        },
        if hwm <= 500 * 1024 { "met" } else { "NOT met" },
    );
    drop(p);
    rt.block_on(inst.stop());
    drop(child.stdin.take());
    let _ = child.wait();
    for t in threads {
        let _ = t.join();
    }
}
