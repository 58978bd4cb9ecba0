//! What the lab's end-to-end tests (`e2e.rs`, `e2e_synproxy.rs`) share: one test at a time
//! on the lab, a sluiced per test with its own manifests and admin socket, HTTP through the
//! lab's clients, and sluicectl and the admin API.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::lab_support::{lab, lab_client as client, ns, repo, stop_sluiced};

pub const VIP4: &str = "10.99.0.100";
pub const VIP6: &str = "fd00:99::100";

pub fn lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    static LAB: OnceLock<()> = OnceLock::new();
    LAB.get_or_init(|| lab(&["up"]));
    g
}

pub fn http(nsname: &str, n: usize, url: &str) -> (std::collections::BTreeMap<String, u64>, u64) {
    let v = client(nsname, &["http", &n.to_string(), url, "--timeout", "2"]);
    let b = v["backends"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    (b, v["errors"].as_u64().unwrap())
}

/// A scratch config + manifests directory with the lab's Service, edited by the test.
pub struct Setup {
    pub dir: PathBuf,
}

impl Setup {
    pub fn new(name: &str, service_patch: impl Fn(String) -> String, health: bool) -> Setup {
        let dir = std::env::temp_dir().join(format!("sluice-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let m = dir.join("manifests");
        std::fs::create_dir_all(&m).unwrap();
        let ex = repo().join("docs/examples");
        for f in ["nodes.yaml", "web-endpoints.yaml"] {
            std::fs::copy(ex.join("manifests").join(f), m.join(f)).unwrap();
        }
        let svc = std::fs::read_to_string(ex.join("manifests/web.yaml")).unwrap();
        std::fs::write(m.join("web.yaml"), service_patch(svc)).unwrap();
        let mut cfg = std::fs::read_to_string(ex.join("sluice.toml")).unwrap();
        cfg = cfg.replace(
            "manifest_dir = \"docs/examples/manifests\"",
            &format!("manifest_dir = \"{}\"", m.display()),
        );
        cfg = cfg.replace("poll_interval_ms = 500", "poll_interval_ms = 200");
        if !health {
            cfg = cfg.replace("enabled = true", "enabled = false");
        }
        // A private admin socket and state directory, and metrics on a port the kernel picks
        // (read from the log).
        cfg.push_str(&format!(
            "\n[admin]\nsocket = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n",
            dir.join("admin.sock").display(),
            dir.display()
        ));
        std::fs::write(dir.join("sluice.toml"), cfg).unwrap();
        Setup { dir }
    }

    pub fn manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running sluiced; stopped with SIGTERM (and checked to stop cleanly) by [`Sluiced::stop`].
pub struct Sluiced {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Sluiced {
    pub fn start(s: &Setup) -> Sluiced {
        Sluiced::start_at(s, &format!("http://{VIP4}/"))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `what` (after the position it had when called is not
    /// tracked: use distinctive strings).
    pub fn wait_log(&mut self, what: &str, max: Duration) -> Instant {
        let t = Instant::now();
        loop {
            if self.log_text().contains(what) {
                return Instant::now();
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "sluiced exited ({st}) while waiting for {what:?}:\n{}",
                    self.log_text()
                );
            }
            assert!(
                t.elapsed() < max,
                "no {what:?} in the log within {max:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn count(&self, what: &str) -> usize {
        self.log_text().matches(what).count()
    }

    /// SIGTERM; the daemon must exit 0 within 5 s, saying it stopped workers, ports and EAL.
    pub fn stop(mut self) {
        let child = self.child.take().unwrap();
        stop_sluiced(child, || self.log_text());
    }
}

impl Drop for Sluiced {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn annotate(svc: String, ann: &str) -> String {
    svc.replace(
        "  namespace: default\n",
        &format!("  namespace: default\n  annotations:\n    {ann}\n"),
    )
}

/// Runs sluicectl against the test's socket: (exit code, stdout, stderr).
pub fn ctl(s: &Setup, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .arg("--socket")
        .arg(s.socket())
        .args(args)
        .output()
        .expect("run sluicectl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sluicectl -o json ARGS`, which must succeed; its output parsed.
pub fn ctl_json(s: &Setup, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["-o", "json"];
    a.extend_from_slice(args);
    let (code, out, err) = ctl(s, &a);
    assert_eq!(code, 0, "sluicectl {args:?}: {err}{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("sluicectl {args:?} -o json: {e}: {out}"))
}

/// `curl --unix-socket`: (HTTP status, body parsed as JSON).
pub fn curl_api(s: &Setup, method: &str, path: &str) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-m",
            "5",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
            "--unix-socket",
        ])
        .arg(s.socket())
        .arg(format!("http://localhost{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let v = serde_json::from_str(body).unwrap_or_else(|e| panic!("curl {path}: {e}: {text}"));
    (code.trim().parse().unwrap_or(0), v)
}

impl Sluiced {
    /// Starts and waits until `url` answers from sl-c1 (or only for neighbours if empty).
    pub fn start_at(s: &Setup, url: &str) -> Sluiced {
        let log = s.dir.join("sluiced.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sluiced"))
            .args(["--config", s.dir.join("sluice.toml").to_str().unwrap()])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("start sluiced");
        let mut d = Sluiced {
            child: Some(child),
            log,
        };
        d.wait_log("unresolved=0", Duration::from_secs(20));
        if !url.is_empty() {
            let t = Instant::now();
            while !ns("sl-c1", &["curl", "-s", "-m", "1", url]).0 {
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "{url} never answered:\n{}",
                    d.log_text()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        d
    }
}

/// The daemon's Prometheus scrape (its address from the log).
pub fn metrics_text(d: &Sluiced) -> String {
    let log = d.log_text();
    let addr = log
        .lines()
        .find(|l| l.contains("metrics listening"))
        .and_then(|l| l.split("listen=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .expect("metrics address in the log")
        .to_owned();
    let out = Command::new("curl")
        .args(["-s", "-m", "5", &format!("http://{addr}/metrics")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Worker counter `k` summed over the workers (`GET /v1/workers`).
pub fn worker_total(s: &Setup, k: &str) -> u64 {
    let (_, w) = curl_api(s, "GET", "/v1/workers");
    w.as_array()
        .unwrap()
        .iter()
        .map(|w| w[k].as_u64().unwrap())
        .sum()
}
