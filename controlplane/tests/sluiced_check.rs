//! `sluiced --check` runs the daemon's load and compile steps without DPDK.

use std::path::Path;
use std::process::{Command, Output};

const PORT: &str = r#"
[[ports]]
name = "lb0"
device = "net_null0"
ipv4 = ["10.99.0.2/24"]

[[pools]]
name = "lab"
ranges = ["10.99.0.100-10.99.0.120"]
"#;

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: LoadBalancer
  loadBalancerClass: sluice.dev/dpdk
  ports:
    - name: http
      protocol: TCP
      port: 80
      targetPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: pinned
  namespace: default
  annotations:
    sluice.dev/load-balancer-ips: 10.50.0.1
spec:
  type: LoadBalancer
  loadBalancerClass: sluice.dev/dpdk
  ports:
    - name: http
      protocol: TCP
      port: 80
      targetPort: 8080
"#;

/// Runs `sluiced --check --config <config>` in `cwd`.
fn check(config: &Path, cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluiced"))
        .arg("--check")
        .arg("--config")
        .arg(config)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A relative `manifest_dir` is found next to the configuration file from any working
/// directory, as the daemon finds it, and the manifests go through IPAM and compile.
#[test]
fn manifests_are_loaded_like_the_daemon_and_compiled() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("etc");
    std::fs::create_dir_all(conf.join("manifests")).unwrap();
    std::fs::write(conf.join("manifests/web.yaml"), SERVICE).unwrap();
    let config = conf.join("sluice.toml");
    std::fs::write(
        &config,
        format!("{PORT}\n[source]\nkind = \"manifests\"\nmanifest_dir = \"manifests\"\n"),
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = check(&config, elsewhere.path());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("1 file(s): 2 services"), "{stdout}");
    // IPAM ran: the first free address of the pool, and the reason the other has none.
    assert!(stdout.contains("default/web: 10.99.0.100"), "{stdout}");
    assert!(stdout.contains("default/pinned: no VIP"), "{stdout}");
    assert!(stdout.contains("10.50.0.1"), "{stdout}");
}

/// With the Kubernetes source there is no manifest directory to read: the configuration is
/// checked and the output says that is all.
#[test]
fn kubernetes_source_checks_the_configuration_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!("{PORT}\n[source]\nkind = \"kubernetes\"\n"),
    )
    .unwrap();
    let out = check(&config, dir.path());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("only the configuration was checked"),
        "{stdout}"
    );
}

/// An invalid configuration fails the check with the key, and exit code 1.
#[test]
fn invalid_configuration_fails() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, format!("{PORT}\n[workers]\ncores = []\n")).unwrap();
    let out = check(&config, dir.path());
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stderr.contains("workers.cores"), "{stderr}");
}
