//! End-to-end tests in the namespace lab (scripts/lab): a real `sluiced` on a DPDK
//! `net_af_packet` port on the lab's veth, real clients (curl, Python sockets) in client
//! namespaces, real HTTP/TCP/UDP servers in backend namespaces. Needs root and the lab's tools
//! (scripts/setup); scripts/test runs it and takes the lab down afterwards.
//!
//! The tests share one lab and one DPDK port, so they run one at a time (a global lock).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

const VIP4: &str = "10.99.0.100";
const VIP6: &str = "fd00:99::100";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    static LAB: OnceLock<()> = OnceLock::new();
    LAB.get_or_init(|| lab(&["up"]));
    g
}

fn lab(args: &[&str]) {
    let out = Command::new(repo().join("scripts/lab")).args(args).output().expect("scripts/lab");
    assert!(
        out.status.success(),
        "scripts/lab {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command in a namespace and returns its stdout (panics on failure if `must`).
fn ns(ns: &str, cmd: &[&str]) -> (bool, String) {
    let out = Command::new("ip").args(["netns", "exec", ns]).args(cmd).output().expect("ip netns exec");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn client(nsname: &str, args: &[&str]) -> serde_json::Value {
    let py = repo().join("scripts/lab-client.py");
    let mut cmd = vec!["/usr/bin/python3", py.to_str().unwrap()];
    cmd.extend_from_slice(args);
    let (ok, out) = ns(nsname, &cmd);
    assert!(ok, "lab-client {args:?} failed: {out}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("lab-client output {out:?}: {e}"))
}

fn http(nsname: &str, n: usize, url: &str) -> (std::collections::BTreeMap<String, u64>, u64) {
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
struct Setup {
    dir: PathBuf,
}

impl Setup {
    fn new(name: &str, service_patch: impl Fn(String) -> String, health: bool) -> Setup {
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
        cfg = cfg.replace("manifest_dir = \"docs/examples/manifests\"", &format!("manifest_dir = \"{}\"", m.display()));
        cfg = cfg.replace("poll_interval_ms = 500", "poll_interval_ms = 200");
        if !health {
            cfg = cfg.replace("enabled = true", "enabled = false");
        }
        std::fs::write(dir.join("sluice.toml"), cfg).unwrap();
        Setup { dir }
    }

    fn manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running sluiced; stopped with SIGTERM (and checked to stop cleanly) by [`Sluiced::stop`].
struct Sluiced {
    child: Option<Child>,
    log: PathBuf,
}

impl Sluiced {
    fn start(s: &Setup) -> Sluiced {
        Sluiced::start_at(s, &format!("http://{VIP4}/"))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `what` (after the position it had when called is not
    /// tracked: use distinctive strings).
    fn wait_log(&mut self, what: &str, max: Duration) -> Instant {
        let t = Instant::now();
        loop {
            if self.log_text().contains(what) {
                return Instant::now();
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sluiced exited ({st}) while waiting for {what:?}:\n{}", self.log_text());
            }
            assert!(t.elapsed() < max, "no {what:?} in the log within {max:?}:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn count(&self, what: &str) -> usize {
        self.log_text().matches(what).count()
    }

    /// SIGTERM; the daemon must exit 0 within 5 s, saying it stopped workers, ports and EAL.
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        let st = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(st.success());
        let t = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(t.elapsed() < Duration::from_secs(5), "sluiced did not stop within 5 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = self.log_text();
        assert!(status.success(), "sluiced exit status {status}:\n{log}");
        assert!(log.contains("stopped cleanly"), "{log}");
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

/// A long-lived TCP connection to the echo service from a client namespace.
struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Session {
    fn open(nsname: &str, host: &str, port: u16) -> Session {
        let py = repo().join("scripts/lab-client.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", nsname, "/usr/bin/python3", "-u", py.to_str().unwrap(), "session", host, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "connected");
        Session { child, stdin, stdout }
    }

    fn say(&mut self, s: &str) -> String {
        writeln!(self.stdin, "{s}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn annotate(svc: String, ann: &str) -> String {
    svc.replace("  namespace: default\n", &format!("  namespace: default\n  annotations:\n    {ann}\n"))
}

#[test]
fn nat_tcp_and_udp_over_ipv4_and_ipv6() {
    let _g = lock();
    let s = Setup::new("nat", |s| s, false);
    let d = Sluiced::start(&s);
    let (b4, e4) = http("sl-c1", 60, &format!("http://{VIP4}/"));
    assert_eq!(e4, 0);
    assert_eq!(b4.len(), 3, "all three backends answer over IPv4: {b4:?}");
    let (b6, e6) = http("sl-c2", 60, &format!("http://[{VIP6}]/"));
    assert_eq!(e6, 0);
    assert_eq!(b6.len(), 3, "all three backends answer over IPv6: {b6:?}");
    for (c, vip) in [("sl-c1", VIP4), ("sl-c2", VIP6)] {
        let u = client(c, &["udp", vip, "9001", "5"]);
        assert_eq!(u["lost"], 0, "{u}");
        let r = u["replies"][0].as_str().unwrap();
        assert!(r.starts_with("sl-b") && r.ends_with("datagram 0"), "{r}");
    }
    // nat: the backend sees Sluice's NAT address, not the client.
    let (_, out) = ns("sl-c1", &["curl", "-si", "-m", "2", &format!("http://{VIP4}/")]);
    assert!(out.contains("X-Client-Addr: 10.99.0.3"), "{out}");
    d.stop();
}

#[test]
fn dsr_l2_preserves_the_client_address() {
    let _g = lock();
    // DSR cannot translate ports: the Service port is the port the backends listen on.
    let s = Setup::new(
        "dsr",
        |svc| annotate(svc, "sluice.dev/forwarding-method: dsr-l2").replace("port: 80\n", "port: 8080\n"),
        false,
    );
    lab(&["dsr-vip", VIP4]);
    lab(&["dsr-vip", VIP6]);
    let d = Sluiced::start_at(&s, &format!("http://{VIP4}:8080/"));
    let (b, e) = http("sl-c1", 60, &format!("http://{VIP4}:8080/"));
    let (b6, e6) = http("sl-c2", 30, &format!("http://[{VIP6}]:8080/"));
    let (_, out) = ns("sl-c2", &["curl", "-si", "-m", "2", &format!("http://{VIP4}:8080/")]);
    d.stop();
    lab(&["dsr-vip-del", VIP4]);
    lab(&["dsr-vip-del", VIP6]);
    assert_eq!((e, e6), (0, 0));
    assert_eq!(b.len(), 3, "{b:?}");
    assert!(!b6.is_empty());
    assert!(out.contains("X-Client-Addr: 10.99.0.12"), "client address preserved: {out}");
    assert!(out.contains(&format!("X-Server-Addr: {VIP4}")), "backend answered as the VIP: {out}");
}

#[test]
fn dsr_ipip_encapsulates_to_the_backend() {
    let _g = lock();
    let s = Setup::new(
        "ipip",
        |svc| annotate(svc, "sluice.dev/forwarding-method: dsr-ipip").replace("port: 80\n", "port: 8080\n"),
        false,
    );
    let d = Sluiced::start_at(&s, "");
    // Capture on every backend; the kernel here cannot decapsulate, so the client's SYN is
    // seen only as an IPIP packet on the backend's link.
    let caps: Vec<Child> = ["sl-b1", "sl-b2", "sl-b3"]
        .iter()
        .map(|b| {
            Command::new("ip")
                .args(["netns", "exec", b, "timeout", "6", "tcpdump", "-nn", "-l", "-c", "1", "-i", "eth0", "ip proto 4"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    for port in 40000..40012 {
        let _ = ns("sl-c1", &["curl", "-s", "-m", "0.3", "--local-port", &port.to_string(), &format!("http://{VIP4}:8080/")]);
    }
    let mut seen = Vec::new();
    for c in caps {
        let out = c.wait_with_output().unwrap();
        seen.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    d.stop();
    let all = seen.concat();
    assert!(all.contains("IP 10.99.0.2 > 10.99.0.2"), "outer header from Sluice to a backend: {seen:?}");
    assert!(all.contains(&format!("10.99.0.11.400")) && all.contains(&format!("> {VIP4}.8080")), "inner client->VIP SYN: {seen:?}");
    assert!(seen.iter().filter(|s| !s.is_empty()).count() >= 2, "flows spread over backends: {seen:?}");
}

impl Sluiced {
    /// Starts and waits until `url` answers from sl-c1 (or only for neighbours if empty).
    fn start_at(s: &Setup, url: &str) -> Sluiced {
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
        let mut d = Sluiced { child: Some(child), log };
        d.wait_log("unresolved=0", Duration::from_secs(20));
        if !url.is_empty() {
            let t = Instant::now();
            while !ns("sl-c1", &["curl", "-s", "-m", "1", url]).0 {
                assert!(t.elapsed() < Duration::from_secs(20), "{url} never answered:\n{}", d.log_text());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        d
    }
}

#[test]
fn source_ranges_drop_clients_outside_them() {
    let _g = lock();
    let s = Setup::new(
        "acl",
        |svc| svc.replace("  externalTrafficPolicy: Cluster\n", "  externalTrafficPolicy: Cluster\n  loadBalancerSourceRanges: [\"10.99.0.11/32\", \"fd00:99::11/128\"]\n"),
        false,
    );
    let d = Sluiced::start(&s);
    let (b, e) = http("sl-c1", 10, &format!("http://{VIP4}/"));
    assert_eq!((b.values().sum::<u64>(), e), (10, 0), "inside the ranges");
    let (ok, _) = ns("sl-c2", &["curl", "-s", "-m", "1", &format!("http://{VIP4}/")]);
    assert!(!ok, "sl-c2 (10.99.0.12) is outside loadBalancerSourceRanges");
    let (ok6, _) = ns("sl-c2", &["curl", "-s", "-m", "1", &format!("http://[{VIP6}]/")]);
    assert!(!ok6);
    let (ok6, _) = ns("sl-c1", &["curl", "-s", "-m", "1", &format!("http://[{VIP6}]/")]);
    assert!(ok6);
    d.stop();
}

#[test]
fn client_ip_affinity_pins_a_client() {
    let _g = lock();
    let s = Setup::new(
        "affinity",
        |svc| svc.replace("  externalTrafficPolicy: Cluster\n", "  externalTrafficPolicy: Cluster\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n"),
        false,
    );
    let d = Sluiced::start(&s);
    let (b1, e1) = http("sl-c1", 30, &format!("http://{VIP4}/"));
    let (b2, e2) = http("sl-c2", 30, &format!("http://{VIP4}/"));
    d.stop();
    assert_eq!((e1, e2), (0, 0));
    assert_eq!(b1.len(), 1, "sl-c1 pinned to one backend: {b1:?}");
    assert_eq!(b2.len(), 1, "sl-c2 pinned to one backend: {b2:?}");
}

#[test]
fn established_connection_survives_endpointslice_change_and_invalid_manifest() {
    let _g = lock();
    let s = Setup::new("change", |s| s, false);
    let mut d = Sluiced::start(&s);
    let mut sess = Session::open("sl-c1", VIP4, 9000);
    let first = sess.say("hello");
    let victim = first.split(':').next().unwrap().to_string();
    assert!(victim.starts_with("sl-b"), "{first}");
    let addr = format!("10.99.0.2{}", &victim[victim.len() - 1..]);
    let py = repo().join("scripts/lab-client.py");
    let st = Command::new("/usr/bin/python3")
        .args([py.to_str().unwrap(), "remove-endpoint", s.manifests().join("web-endpoints.yaml").to_str().unwrap(), &addr])
        .status()
        .unwrap();
    assert!(st.success());
    d.wait_log("manifests changed", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let (b, e) = http("sl-c2", 60, &format!("http://{VIP4}/"));
    assert_eq!(e, 0);
    assert!(!b.contains_key(&victim), "new connections avoid the removed backend: {b:?}");
    assert_eq!(sess.say("still there?"), format!("{victim}: still there?"), "the open connection still works");

    // An invalid manifest: reported, and the last good state keeps forwarding.
    std::fs::write(s.manifests().join("web.yaml"), "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: eighty}]\n").unwrap();
    d.wait_log("invalid manifests", Duration::from_secs(5));
    let log = d.log_text();
    assert!(log.contains("web.yaml"), "the error names the file: {log}");
    let (b, e) = http("sl-c2", 30, &format!("http://{VIP4}/"));
    assert_eq!((e, b.values().sum::<u64>()), (0, 30), "still forwarding after an invalid manifest");
    assert_eq!(sess.say("and now?"), format!("{victim}: and now?"));
    drop(sess);
    d.stop();
}

#[test]
fn health_checks_mark_a_dead_backend_down() {
    let _g = lock();
    let s = Setup::new("health", |s| s, true);
    let d = Sluiced::start(&s);
    let (b, _) = http("sl-c1", 30, &format!("http://{VIP4}/"));
    assert!(b.contains_key("sl-b2"), "{b:?}");
    // Kill sl-b2's servers (the lab restarts them on `scripts/lab up`).
    let pid = std::fs::read_to_string("/run/sluice-lab/sl-b2.pid").unwrap();
    let killed = Instant::now();
    assert!(Command::new("kill").args(["-KILL", pid.trim()]).status().unwrap().success());
    let before = d.count("health=Down");
    let t = Instant::now();
    while d.count("health=Down") == before {
        assert!(t.elapsed() < Duration::from_secs(10), "no backend marked down:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = killed.elapsed();
    // interval 500 ms x fall 2, plus one timeout of 400 ms and scheduling slack.
    assert!(took < Duration::from_millis(2500), "marked down after {took:?}");
    std::thread::sleep(Duration::from_millis(200));
    let (b, e) = http("sl-c1", 60, &format!("http://{VIP4}/"));
    d.stop();
    lab(&["up"]);
    assert_eq!(e, 0, "no failed request once the backend is down");
    assert!(!b.contains_key("sl-b2"), "{b:?}");
    assert_eq!(b.len(), 2);
}
