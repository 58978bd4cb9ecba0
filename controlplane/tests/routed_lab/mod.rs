//! The routed lab for the routed tests: `scripts/lab routed` (client sl-rc1 → FRR router sl-r →
//! Sluice hosts sl-h1, sl-h2 → backends sl-rb1, sl-rb2) with two real `sluiced` processes, one in
//! each host namespace, each on a DPDK `net_af_packet` port on its `dp0`. The config is the
//! template in docs/examples/routed/ (host.toml, with bgp.toml appended for routed mode); both
//! hosts read one shared manifest directory, so they build identical Maglev tables.
//!
//! Every wait is bounded; the daemons are killed and the lab taken down on drop.

// Shared by routed.rs and l2.rs; each uses a part.
#![allow(dead_code, unused_imports)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[path = "../support/lab.rs"]
mod lab_support;
pub use lab_support::{lab, lab_client, next_hops, repo, wait};

/// The full-NAT Service's VIPs (default/web, ports 80 and 9000).
pub const VIP4: &str = "10.98.100.1";
/// The same over IPv6.
pub const VIP6: &str = "fd00:98:100::1";
/// The `dsr-l2` Service's VIPs (default/web-dsr, ports 8080 and 9000).
pub const DSR4: &str = "10.98.100.2";
/// The same over IPv6.
pub const DSR6: &str = "fd00:98:100::2";
/// The client namespace.
pub const CLIENT: &str = "sl-rc1";

/// Runs `scripts/lab-client.py ARGS` in the client namespace and parses its JSON.
pub fn client(args: &[&str]) -> serde_json::Value {
    lab_client(CLIENT, args)
}

/// `n` HTTP GETs, each on a new connection (so from a new source port): the counts per backend
/// and per `X-Client-Addr` (with `nat`, the NAT address of the host that carried the flow),
/// and the number of failures.
pub struct Spread {
    /// Answers per backend name.
    pub backends: BTreeMap<String, u64>,
    /// Answers per address the backend saw.
    pub peers: BTreeMap<String, u64>,
    /// Failed requests.
    pub errors: u64,
}

/// See [`Spread`].
pub fn spread(n: usize, url: &str) -> Spread {
    let v = client(&["http", &n.to_string(), url, "--timeout", "2"]);
    let map = |k: &str| {
        v[k].as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
            .collect()
    };
    Spread {
        backends: map("backends"),
        peers: map("peers"),
        errors: v["errors"].as_u64().unwrap(),
    }
}

/// Host `n`'s DPDK port address of the family of `like`.
pub fn dp_addr(n: u8, like: &str) -> String {
    if like.contains(':') {
        format!("fd00:98::2{n}")
    } else {
        format!("10.98.0.2{n}")
    }
}

/// Host `n`'s NAT address of the family of `like`.
pub fn nat_addr(n: u8, like: &str) -> String {
    if like.contains(':') {
        format!("fd00:98:200::{n}")
    } else {
        format!("10.98.200.{n}")
    }
}

/// The set of `hosts`' DPDK port addresses for `vip`'s family.
pub fn hops(vip: &str, hosts: &[u8]) -> BTreeSet<String> {
    hosts.iter().map(|&n| dp_addr(n, vip)).collect()
}

/// One test at a time uses the routed lab; holds it up until dropped, then takes it down.
pub struct Lab {
    _g: MutexGuard<'static, ()>,
    /// The manifest directory both hosts read.
    pub manifests: PathBuf,
    dir: PathBuf,
}

impl Lab {
    /// Brings the routed lab up (idempotent) with a fresh scratch directory and manifests.
    pub fn up(name: &str) -> Lab {
        static LOCK: Mutex<()> = Mutex::new(());
        let g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        lab(&["routed", "up"]);
        let dir = std::env::temp_dir().join(format!("sluice-routed-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        let ex = repo().join("docs/examples/routed/manifests");
        for f in ["web.yaml", "web-endpoints.yaml"] {
            std::fs::copy(ex.join(f), manifests.join(f)).unwrap();
        }
        Lab {
            _g: g,
            manifests,
            dir,
        }
    }

    /// Starts host `n`'s sluiced (with `[bgp]` when `bgp`) and waits until it has compiled
    /// every Service with all next hops resolved.
    pub fn host(&self, n: u8, bgp: bool) -> Host {
        self.host_with(n, bgp, |c| c)
    }

    /// [`Lab::host`] with the config text passed through `edit` first.
    pub fn host_with(&self, n: u8, bgp: bool, edit: impl Fn(String) -> String) -> Host {
        let dir = self.dir.join(format!("h{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let ex = repo().join("docs/examples/routed");
        let mut cfg = std::fs::read_to_string(ex.join("host.toml")).unwrap();
        if bgp {
            cfg.push_str(&std::fs::read_to_string(ex.join("bgp.toml")).unwrap());
        }
        let cfg = cfg
            .replace("@N@", &n.to_string())
            .replace("@DIR@", dir.to_str().unwrap())
            .replace("@MANIFESTS@", self.manifests.to_str().unwrap());
        std::fs::write(dir.join("sluice.toml"), edit(cfg)).unwrap();
        let log = dir.join("sluiced.log");
        let mut h = Host {
            n,
            dir,
            log,
            child: None,
        };
        h.start();
        h
    }

    /// Rewrites both Services' EndpointSlices to hold only `addrs` of web (all for web-dsr).
    pub fn set_web_endpoints(&self, addrs: &[&str]) {
        let path = self.manifests.join("web-endpoints.yaml");
        let text = std::fs::read_to_string(
            repo().join("docs/examples/routed/manifests/web-endpoints.yaml"),
        )
        .unwrap();
        let docs: Vec<String> = text
            .split("---\n")
            .map(|d| {
                if !d.contains("name: web-ipv") {
                    return d.to_owned();
                }
                let mut out = String::new();
                let mut skip = false;
                for line in d.lines() {
                    if line.starts_with("  - addresses:") {
                        skip = !addrs.iter().any(|a| line.contains(&format!("\"{a}\"")));
                    } else if !line.starts_with("    ") {
                        skip = false;
                    }
                    if !skip {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
                out.replace(
                    "endpoints:\n",
                    if addrs.is_empty() {
                        "endpoints: []\n"
                    } else {
                        "endpoints:\n"
                    },
                )
            })
            .collect();
        std::fs::write(path, docs.join("---\n")).unwrap();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/lab"))
            .args(["routed", "down"])
            .output();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One Sluice host: a sluiced in `sl-hN`, killed on drop.
pub struct Host {
    /// The host number (1 or 2).
    pub n: u8,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Host {
    /// (Re)starts the daemon and waits (bounded) until it has compiled with every next hop
    /// resolved.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "host {} already runs", self.n);
        // A fresh log, so the waits below see this run only.
        let f = std::fs::File::create(&self.log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &format!("sl-h{}", self.n)])
            .arg(env!("CARGO_BIN_EXE_sluiced"))
            .args(["--config", self.dir.join("sluice.toml").to_str().unwrap()])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("start sluiced");
        self.child = Some(child);
        self.wait_log("unresolved=0", Duration::from_secs(30));
    }

    /// The daemon's PID (ip netns exec execs it, so it is the child's).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("host runs").id()
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `what`; panics if the daemon exits first.
    pub fn wait_log(&mut self, what: &str, max: Duration) {
        let t = Instant::now();
        loop {
            if self.log_text().contains(what) {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "sluiced on sl-h{} exited ({st}) while waiting for {what:?}:\n{}",
                    self.n,
                    self.log_text()
                );
            }
            assert!(
                t.elapsed() < max,
                "no {what:?} in sl-h{}'s log within {max:?}:\n{}",
                self.n,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// This host's Prometheus scrape (`[admin] metrics_listen`, inside its namespace).
    pub fn metrics(&self) -> String {
        let log = self.log_text();
        let addr = log
            .lines()
            .find(|l| l.contains("metrics listening"))
            .and_then(|l| l.split("listen=").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .expect("metrics address in the log")
            .to_owned();
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("sl-h{}", self.n)])
            .args(["curl", "-s", "-m", "5", &format!("http://{addr}/metrics")])
            .output()
            .expect("curl");
        assert!(out.status.success(), "scrape of sl-h{}", self.n);
        String::from_utf8(out.stdout).unwrap()
    }

    /// `sluicectl -o json ARGS` against this host's admin socket.
    pub fn ctl(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_sluicectl"))
            .args(["--socket", self.dir.join("admin.sock").to_str().unwrap()])
            .args(["-o", "json"])
            .args(args)
            .output()
            .expect("sluicectl");
        assert!(
            out.status.success(),
            "sluicectl {args:?} on sl-h{}: {}",
            self.n,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// New flows this host has scheduled to `vip`:`port` (`sluicectl service`).
    pub fn new_flows(&self, service: &str, vip: &str, port: u64) -> u64 {
        let d = self.ctl(&["service", service]);
        d["frontends"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["vip"] == vip && f["port"] == port)
            .map(|f| f["traffic"]["new_flows"].as_u64().unwrap())
            .sum()
    }

    /// Sends `sig` (`-KILL`, `-TERM`) to the daemon.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} sl-h{}", self.n);
    }

    /// Waits (bounded) for the daemon to exit after a signal; returns its exit status text.
    pub fn reap(&mut self, max: Duration) -> String {
        let mut c = self.child.take().expect("host runs");
        let t = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.to_string();
            }
            if t.elapsed() > max {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "sluiced on sl-h{} did not exit within {max:?}:\n{}",
                    self.n,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The BGP state of each of the router's neighbours (FRR's `show bgp neighbors json`).
pub fn router_sessions() -> BTreeMap<String, String> {
    let out = Command::new(repo().join("scripts/lab"))
        .args(["routed", "vtysh", "-c", "show bgp neighbors json"])
        .output()
        .expect("vtysh");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| (k.clone(), n["bgpState"].as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

impl Host {
    /// The state of each of this host's BGP sessions as `sluicectl -o json bgp` reports it.
    /// Assumed shape (phase 2a): `{"peers": [PeerStatus, ...]}` or a bare list of
    /// `announce::bgp::PeerStatus` (`name`, `address`, `state` in lowercase, `bfd`, ...).
    pub fn bgp_states(&self) -> BTreeMap<String, String> {
        let v = self.ctl(&["bgp"]);
        let peers = v.get("peers").unwrap_or(&v);
        peers
            .as_array()
            .unwrap_or_else(|| panic!("sluicectl bgp: no list of peers in {v}"))
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or("?").to_owned(),
                    p["state"].as_str().unwrap_or("?").to_lowercase(),
                )
            })
            .collect()
    }
}

/// `n` long-lived echo connections held by one client process (lab-client.py hold).
pub struct Held {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Held {
    /// Opens `n` connections from namespace `client` to `vip`:`port`; returns how many
    /// connected.
    pub fn open(client: &str, n: usize, vip: &str, port: u16) -> (Held, u64) {
        let py = repo().join("scripts/lab-client.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", client, "/usr/bin/python3", "-u"])
            .arg(py)
            .args(["hold", &n.to_string(), vip, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut h = Held {
            child,
            stdin,
            stdout,
        };
        let v = h.line();
        (h, v["connected"].as_u64().unwrap())
    }

    fn line(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("hold said {line:?}: {e}"))
    }

    /// Sends a line on every connection: (answered, failed, answers per backend).
    pub fn check(&mut self) -> (u64, u64, BTreeMap<String, u64>) {
        writeln!(self.stdin, "check").unwrap();
        let v = self.line();
        let b = v["backends"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
            .collect();
        (v["ok"].as_u64().unwrap(), v["failed"].as_u64().unwrap(), b)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
