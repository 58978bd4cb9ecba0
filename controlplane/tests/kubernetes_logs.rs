//! What the Kubernetes source logs while the API server is down: one line when a failure
//! starts, reminders at most every 30 s, one when it ends; not one line per failed request.
//! A test binary of its own, because it installs the process-wide log subscriber.
//!
//! Run with `cargo test -p sluice-controlplane --test kubernetes_logs`.

#[path = "support/fakeapi.rs"]
mod fakeapi;
#[path = "support/harness.rs"]
mod harness;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fakeapi::FakeApi;
use harness::{eventually, Instance};
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sluice_controlplane::config::Config;
use sluice_controlplane::sources::kubernetes::lease::LeaseSettings;
use sluice_controlplane::sources::kubernetes::KubeSettings;

const CFG: &str = r#"
[[ports]]
name = "lb0"
device = "net_null0"
ipv4 = ["10.99.0.2/24"]

[health]
enabled = false

[source]
kind = "kubernetes"
debounce_ms = 20

[[pools]]
name = "lab"
ranges = ["10.99.0.100-10.99.0.102"]
"#;

/// Every formatted log line, kept in memory.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn matching(&self, level: &str, text: &str) -> usize {
        let all = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        all.lines()
            .filter(|l| l.contains(level) && l.contains(text))
            .count()
    }
}

fn service(name: &str) -> corev1::Service {
    corev1::Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(corev1::ServiceSpec {
            type_: Some("LoadBalancer".into()),
            load_balancer_class: Some("sluice.dev/dpdk".into()),
            ports: Some(vec![corev1::ServicePort {
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_a_few_log_lines_not_one_per_request() {
    let lines = Lines::default();
    let sink = lines.clone();
    tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            sluice_controlplane::logs::DEFAULT_FILTER,
        ))
        .init();

    let api = FakeApi::start().await;
    api.upsert(&service("web"));
    let cfg = Config::parse(CFG, "test.toml").unwrap();
    let mut s = KubeSettings::from_config(&cfg);
    s.identity = "a".into();
    s.lease = Some(LeaseSettings {
        namespace: "sluice-system".into(),
        name: "sluice".into(),
        identity: "a".into(),
        duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry: Duration::from_millis(100),
    });
    let inst = Instance::start(api.client(), cfg, s, vec![]).await;
    eventually("leads", 10, || inst.is_leader()).await;

    // Four seconds down: dozens of failed requests (three watches retrying from 100 ms, the
    // Lease every 100 ms).
    api.set_down(true);
    tokio::time::sleep(Duration::from_secs(4)).await;
    api.set_down(false);
    // Recovery is logged with the first event each watch gets.
    api.upsert(&service("web2"));
    api.upsert(&corev1::Node {
        metadata: ObjectMeta {
            name: Some("n1".into()),
            ..Default::default()
        },
        ..Default::default()
    });
    api.upsert(&k8s_openapi::api::discovery::v1::EndpointSlice {
        metadata: ObjectMeta {
            name: Some("web-a".into()),
            namespace: Some("default".into()),
            labels: Some(
                [("kubernetes.io/service-name".to_owned(), "web".to_owned())]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(vec![]),
        ports: None,
    });
    eventually("every watch recovered", 10, || {
        lines.matching("INFO", "watch recovered") == 3
    })
    .await;
    eventually("the Lease works again", 10, || {
        lines.matching("INFO", "Lease requests work again") == 1
    })
    .await;
    // The status writer and the Event recorder: one line each at most.
    assert!(lines.matching("WARN", "could not write status") <= 1);
    assert!(lines.matching("WARN", "could not record an Event") <= 1);
    let watch_errors = lines.matching("WARN", "watch error");
    assert!(
        (1..=3).contains(&watch_errors),
        "one line per watch, not per retry: {watch_errors}"
    );
    assert_eq!(lines.matching("WARN", "Lease request failed"), 1);
    assert_eq!(
        lines.matching("WARN", "still failing"),
        0,
        "no reminder within 30 s"
    );
    inst.stop().await;
}
