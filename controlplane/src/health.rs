//! # Active health checks
//!
//! Probes backends over the host's kernel network stack with tokio: a TCP connect, or an
//! HTTP/1.0 `GET` that must answer 2xx (for `externalTrafficPolicy: Local`, the node's
//! `http://<node>:<healthCheckNodePort>/healthz`). [`crate::compile`] says which targets exist
//! ([`crate::compile::CompileReport::health_targets`]); [`HealthChecker::set_targets`] starts
//! and stops one probe task per target; [`HealthChecker::states`] feeds the next compile, and
//! [`HealthChecker::subscribe`] wakes the daemon when a state changes.
//!
//! ## Design
//! - **Start up.** A new target is [`Health::Up`] from the moment it is added, so a new
//!   backend takes traffic at once; it goes down only after `fall` consecutive failures
//!   (also when those are its first probes), and comes back after `rise` consecutive
//!   successes. The alternative, starting down until `rise` probes pass, would delay every
//!   new Service by `rise * interval` and black-hole it when probes cannot reach the backends.
//! - The first probe runs as soon as the target is added, then one every `interval`; a probe
//!   that takes longer than `timeout` fails. Probes of one target never overlap.
//! - The HTTP client is a few lines on a `TcpStream`: it sends `GET <path> HTTP/1.0` with
//!   `Host` and `Connection: close` and reads only the status line.
//! - Probes leave from the host, not from the DPDK port: backends must be reachable from the
//!   host's own network stack (a management network), or health checks must be disabled.
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::HealthConfig;

/// How a target is probed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum ProbeKind {
    /// A TCP connect.
    Tcp,
    /// An HTTP/1.0 GET of `path` that must answer 2xx.
    Http {
        /// Request path, starting with `/`.
        path: String,
    },
}

/// Timing and thresholds of one target's probes, when a Service's annotations set them (the
/// others run with `[health]`'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ProbeTiming {
    /// Milliseconds between the starts of two probes.
    pub interval_ms: u64,
    /// Milliseconds a probe may take.
    pub timeout_ms: u64,
    /// Consecutive successes that bring a down target up.
    pub rise: u32,
    /// Consecutive failures that take an up target down.
    pub fall: u32,
}

impl From<&HealthConfig> for ProbeTiming {
    fn from(c: &HealthConfig) -> Self {
        ProbeTiming {
            interval_ms: c.interval_ms,
            timeout_ms: c.timeout_ms,
            rise: c.rise,
            fall: c.fall,
        }
    }
}

impl From<ProbeTiming> for ProbeSettings {
    fn from(t: ProbeTiming) -> Self {
        ProbeSettings {
            interval: Duration::from_millis(t.interval_ms.max(1)),
            timeout: Duration::from_millis(t.timeout_ms.max(1)),
            rise: t.rise.max(1),
            fall: t.fall.max(1),
        }
    }
}

/// One thing to probe: an address, how, and (if a Service says) how often.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ProbeTarget {
    /// Address and port.
    pub addr: SocketAddr,
    /// TCP connect or HTTP GET.
    pub kind: ProbeKind,
    /// The Service's own timing (`None`: the checker's, from `[health]`). Part of the
    /// target's identity: two Services probing one address differently probe it twice.
    pub timing: Option<ProbeTiming>,
}

impl ProbeTarget {
    /// A TCP-connect target.
    pub fn tcp(addr: SocketAddr) -> Self {
        ProbeTarget {
            addr,
            kind: ProbeKind::Tcp,
            timing: None,
        }
    }

    /// An HTTP GET target.
    pub fn http(addr: SocketAddr, path: impl Into<String>) -> Self {
        ProbeTarget {
            addr,
            kind: ProbeKind::Http { path: path.into() },
            timing: None,
        }
    }

    /// The same target probed with `timing` (`None`: the checker's).
    pub fn with_timing(self, timing: Option<ProbeTiming>) -> Self {
        ProbeTarget { timing, ..self }
    }
}

impl fmt::Display for ProbeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ProbeKind::Tcp => write!(f, "tcp://{}", self.addr)?,
            ProbeKind::Http { path } => write!(f, "http://{}{path}", self.addr)?,
        }
        if let Some(t) = &self.timing {
            write!(
                f,
                " (every {} ms, timeout {} ms, rise {}, fall {})",
                t.interval_ms, t.timeout_ms, t.rise, t.fall
            )?;
        }
        Ok(())
    }
}

/// A target's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Health {
    /// Passing (or not yet failed `fall` times).
    Up,
    /// Failed `fall` consecutive probes and has not passed `rise` since.
    Down,
}

/// Probe timing and thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSettings {
    /// Time between the starts of two probes of one target.
    pub interval: Duration,
    /// Longest a probe may take.
    pub timeout: Duration,
    /// Consecutive successes that bring a down target up.
    pub rise: u32,
    /// Consecutive failures that take an up target down.
    pub fall: u32,
}

impl From<&HealthConfig> for ProbeSettings {
    fn from(c: &HealthConfig) -> Self {
        ProbeTiming::from(c).into()
    }
}

/// What is known about one target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TargetStatus {
    /// Current health.
    pub health: Health,
    /// When `health` last changed (or the target was added).
    pub since: SystemTime,
    /// The last failure's message (kept after the target recovers).
    pub last_error: Option<String>,
    /// When the last probe finished.
    pub last_probe: Option<SystemTime>,
    /// Consecutive successful probes.
    pub successes: u32,
    /// Consecutive failed probes.
    pub failures: u32,
    /// Probes run since the target was added.
    pub probes: u64,
}

impl TargetStatus {
    fn new() -> Self {
        TargetStatus {
            health: Health::Up,
            since: SystemTime::now(),
            last_error: None,
            last_probe: None,
            successes: 0,
            failures: 0,
            probes: 0,
        }
    }

    /// Records a probe result; returns whether `health` changed.
    fn record(&mut self, result: Result<(), String>, s: &ProbeSettings) -> bool {
        let now = SystemTime::now();
        self.last_probe = Some(now);
        self.probes += 1;
        let before = self.health;
        match result {
            Ok(()) => {
                self.successes = self.successes.saturating_add(1);
                self.failures = 0;
                if self.health == Health::Down && self.successes >= s.rise {
                    self.health = Health::Up;
                }
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                self.successes = 0;
                self.last_error = Some(e);
                if self.health == Health::Up && self.failures >= s.fall {
                    self.health = Health::Down;
                }
            }
        }
        if self.health != before {
            self.since = now;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Shared {
    states: Mutex<HashMap<ProbeTarget, TargetStatus>>,
    changes: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<ProbeTarget, TargetStatus>> {
        // A panic while holding the lock cannot leave the map inconsistent (every update is
        // one assignment), so a poisoned lock is still usable.
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs one probe task per target and keeps their states.
///
/// Dropping the checker stops every probe.
#[derive(Debug)]
pub struct HealthChecker {
    settings: ProbeSettings,
    shared: Arc<Shared>,
    tasks: HashMap<ProbeTarget, JoinHandle<()>>,
}

impl HealthChecker {
    /// A checker with no targets.
    pub fn new(settings: ProbeSettings) -> Self {
        HealthChecker {
            settings,
            shared: Arc::new(Shared {
                states: Mutex::new(HashMap::new()),
                changes: watch::channel(0).0,
            }),
            tasks: HashMap::new(),
        }
    }

    /// The settings probes run with.
    pub fn settings(&self) -> ProbeSettings {
        self.settings
    }

    /// Makes `targets` the probed set: starts probing new targets (as up) and stops and
    /// forgets the others. Must be called inside a tokio runtime.
    pub fn set_targets(&mut self, targets: impl IntoIterator<Item = ProbeTarget>) {
        let wanted: std::collections::HashSet<ProbeTarget> = targets.into_iter().collect();
        self.tasks.retain(|t, h| {
            let keep = wanted.contains(t);
            if !keep {
                h.abort();
            }
            keep
        });
        {
            let mut states = self.shared.lock();
            states.retain(|t, _| wanted.contains(t));
            for t in &wanted {
                states.entry(t.clone()).or_insert_with(TargetStatus::new);
            }
        }
        for t in wanted {
            if self.tasks.contains_key(&t) {
                continue;
            }
            let shared = self.shared.clone();
            let settings = t.timing.map_or(self.settings, ProbeSettings::from);
            let target = t.clone();
            let handle = tokio::spawn(async move { run(target, settings, shared).await });
            self.tasks.insert(t, handle);
        }
    }

    /// The targets being probed.
    pub fn targets(&self) -> Vec<ProbeTarget> {
        let mut v: Vec<ProbeTarget> = self.tasks.keys().cloned().collect();
        v.sort();
        v
    }

    /// Health of every target (the input of [`crate::compile::Compiler::compile`]).
    pub fn states(&self) -> HashMap<ProbeTarget, Health> {
        self.shared
            .lock()
            .iter()
            .map(|(t, s)| (t.clone(), s.health))
            .collect()
    }

    /// Full status of every target, sorted by target.
    pub fn statuses(&self) -> Vec<(ProbeTarget, TargetStatus)> {
        let mut v: Vec<(ProbeTarget, TargetStatus)> = self
            .shared
            .lock()
            .iter()
            .map(|(t, s)| (t.clone(), s.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Status of one target.
    pub fn status(&self, t: &ProbeTarget) -> Option<TargetStatus> {
        self.shared.lock().get(t).cloned()
    }

    /// A read-only handle on the statuses that other tasks can keep (the admin API).
    pub fn view(&self) -> HealthView {
        HealthView {
            shared: self.shared.clone(),
        }
    }

    /// A receiver whose value (a count of health transitions) changes whenever a target goes
    /// up or down: `rx.changed().await`, then recompile with [`states`](Self::states).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }
}

/// A cloneable, read-only view of a [`HealthChecker`]'s statuses.
#[derive(Debug, Clone)]
pub struct HealthView {
    shared: Arc<Shared>,
}

impl HealthView {
    /// Full status of every target, sorted by target (as [`HealthChecker::statuses`]).
    pub fn statuses(&self) -> Vec<(ProbeTarget, TargetStatus)> {
        let mut v: Vec<(ProbeTarget, TargetStatus)> = self
            .shared
            .lock()
            .iter()
            .map(|(t, s)| (t.clone(), s.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        for h in self.tasks.values() {
            h.abort();
        }
    }
}

async fn run(target: ProbeTarget, s: ProbeSettings, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(s.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = probe(&target, s.timeout).await;
        let changed = {
            let mut states = shared.lock();
            let Some(st) = states.get_mut(&target) else {
                return; // removed while probing
            };
            let changed = st.record(result, &s);
            if changed {
                // The error belongs to the failures that took the target down; on the way
                // back up it is stale (it stays in the status as `last_error`).
                match st.health {
                    Health::Down => tracing::info!(
                        target = %target,
                        health = ?st.health,
                        error = st.last_error.as_deref().unwrap_or(""),
                        "health changed"
                    ),
                    Health::Up => tracing::info!(
                        target = %target,
                        health = ?st.health,
                        successes = st.successes,
                        "health changed"
                    ),
                }
            }
            changed
        };
        if changed {
            shared.changes.send_modify(|n| *n += 1);
        }
    }
}

/// Runs one probe of `target`, bounded by `timeout`.
///
/// # Errors
/// A message saying why the probe failed (refused, timed out, HTTP status).
pub async fn probe(target: &ProbeTarget, timeout: Duration) -> Result<(), String> {
    let fut = async {
        match &target.kind {
            ProbeKind::Tcp => tcp_probe(target.addr).await,
            ProbeKind::Http { path } => http_probe(target.addr, path).await,
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {} ms", timeout.as_millis())),
    }
}

async fn tcp_probe(addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s.shutdown().await;
    Ok(())
}

/// The longest status line read.
const MAX_STATUS_LINE: usize = 1024;

async fn http_probe(addr: SocketAddr, path: &str) -> Result<(), String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: sluice-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < MAX_STATUS_LINE {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = String::from_utf8_lossy(&buf[..line_end]);
    let line = line.trim_end();
    if line.is_empty() {
        return Err("HTTP: connection closed without a response".to_owned());
    }
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(c) if version.starts_with("HTTP/") && (200..300).contains(&c) => Ok(()),
        Some(c) if version.starts_with("HTTP/") => Err(format!("HTTP {c}")),
        _ => Err(format!(
            "HTTP: not a status line: {:?}",
            line.chars().take(80).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::net::TcpListener;

    fn fast() -> ProbeSettings {
        ProbeSettings {
            interval: Duration::from_millis(25),
            timeout: Duration::from_millis(300),
            rise: 2,
            fall: 2,
        }
    }

    /// A TCP server that accepts and closes.
    async fn tcp_server(l: TcpListener) {
        loop {
            if let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        }
    }

    /// An HTTP server answering 200 or 503.
    async fn http_server(l: TcpListener, ok: Arc<AtomicBool>, seen: Arc<Mutex<Vec<String>>>) {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let ok = ok.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1024];
                let mut n = 0;
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < buf.len() {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => n += k,
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let resp: &[u8] = if ok.load(Ordering::SeqCst) {
                    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
                } else {
                    b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nsick"
                };
                let _ = s.write_all(resp).await;
            });
        }
    }

    async fn wait_for(c: &HealthChecker, t: &ProbeTarget, want: Health) -> TargetStatus {
        let mut rx = c.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let st = c.status(t).expect("target");
            if st.health == want {
                return st;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "{t} never became {want:?}: {st:?}");
            let _ = tokio::time::timeout(left, rx.changed()).await;
        }
    }

    async fn wait_probes(c: &HealthChecker, t: &ProbeTarget, n: u64) -> TargetStatus {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let st = c.status(t).expect("target");
            if st.probes >= n {
                return st;
            }
            assert!(tokio::time::Instant::now() < deadline, "{t}: only {st:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn tcp_down_and_up_again() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(tcp_server(l));
        let t = ProbeTarget::tcp(addr);
        let mut c = HealthChecker::new(fast());
        c.set_targets([t.clone()]);
        assert_eq!(c.states()[&t], Health::Up, "a new target starts up");
        let st = wait_probes(&c, &t, 3).await;
        assert_eq!(st.health, Health::Up);
        assert_eq!(st.failures, 0);

        server.abort();
        let _ = server.await;
        let changes = *c.subscribe().borrow();
        let st = wait_for(&c, &t, Health::Down).await;
        assert!(st.failures >= 2, "{st:?}");
        assert!(
            st.last_error.as_deref().unwrap_or("").contains("connect"),
            "{st:?}"
        );
        assert!(*c.subscribe().borrow() > changes, "a transition notifies");

        let l = TcpListener::bind(addr).await.unwrap();
        let server = tokio::spawn(tcp_server(l));
        let st = wait_for(&c, &t, Health::Up).await;
        assert!(st.successes >= 2, "{st:?}");
        server.abort();
    }

    /// A writer into a shared buffer, for the log lines of one test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The "health changed" line of a target coming back up does not repeat the error of the
    /// failures before it.
    #[tokio::test]
    async fn up_log_line_has_no_stale_error() {
        let logs = Captured::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        // The test runtime is current-thread: the probe tasks log on this thread.
        let _guard = tracing::subscriber::set_default(subscriber);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let ok = Arc::new(AtomicBool::new(false));
        let server = tokio::spawn(http_server(l, ok.clone(), Arc::default()));
        let t = ProbeTarget::http(addr, "/");
        let mut c = HealthChecker::new(fast());
        c.set_targets([t.clone()]);
        wait_for(&c, &t, Health::Down).await;
        ok.store(true, Ordering::SeqCst);
        wait_for(&c, &t, Health::Up).await;
        server.abort();
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("health changed"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains("Down") && lines[0].contains("HTTP 503"),
            "{text}"
        );
        assert!(lines[1].contains("Up"), "{text}");
        assert!(
            !lines[1].contains("503"),
            "stale error on the Up line: {text}"
        );
    }

    /// A target with a Service's own timing runs with it, not the checker's: fall 1 takes it
    /// down at the first failure where the checker's fall is 50.
    #[tokio::test]
    async fn a_target_runs_with_its_own_timing() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l); // nothing listens: every probe fails
        let slow = ProbeSettings { fall: 50, ..fast() };
        let own = ProbeTiming {
            interval_ms: 25,
            timeout_ms: 300,
            rise: 1,
            fall: 1,
        };
        let t = ProbeTarget::tcp(addr).with_timing(Some(own));
        let plain = ProbeTarget::tcp(addr);
        assert_ne!(t, plain, "timing is part of the target");
        assert!(
            t.to_string()
                .ends_with("(every 25 ms, timeout 300 ms, rise 1, fall 1)"),
            "{t}"
        );
        let mut c = HealthChecker::new(slow);
        c.set_targets([t.clone(), plain.clone()]);
        wait_for(&c, &t, Health::Down).await;
        let st = wait_probes(&c, &plain, 3).await;
        assert!(st.failures >= 3, "{st:?}");
        assert_eq!(
            st.health,
            Health::Up,
            "the checker's fall 50 keeps it up: {st:?}"
        );
    }

    #[tokio::test]
    async fn http_status_codes() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let ok = Arc::new(AtomicBool::new(true));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let server = tokio::spawn(http_server(l, ok.clone(), seen.clone()));
        let t = ProbeTarget::http(addr, "/healthz");
        assert_eq!(t.to_string(), format!("http://{addr}/healthz"));
        assert_eq!(probe(&t, Duration::from_secs(2)).await, Ok(()));
        let req = seen.lock().unwrap()[0].clone();
        assert!(req.starts_with("GET /healthz HTTP/1.0\r\n"), "{req}");
        assert!(req.contains(&format!("Host: {addr}\r\n")), "{req}");

        let mut c = HealthChecker::new(fast());
        c.set_targets([t.clone()]);
        wait_probes(&c, &t, 2).await;
        ok.store(false, Ordering::SeqCst);
        let st = wait_for(&c, &t, Health::Down).await;
        assert_eq!(st.last_error.as_deref(), Some("HTTP 503"));
        ok.store(true, Ordering::SeqCst);
        wait_for(&c, &t, Health::Up).await;

        c.set_targets([]);
        assert!(c.states().is_empty());
        assert!(c.targets().is_empty());
        server.abort();
    }

    #[tokio::test]
    async fn timeouts_and_garbage() {
        // Accepts, reads, never answers.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                if let Ok((s, _)) = l.accept().await {
                    held.push(s);
                }
            }
        });
        let t = ProbeTarget::http(addr, "/");
        let e = probe(&t, Duration::from_millis(100)).await.unwrap_err();
        assert_eq!(e, "timed out after 100 ms");
        // TCP connect still passes: the kernel completes the handshake.
        assert_eq!(
            probe(&ProbeTarget::tcp(addr), Duration::from_millis(500)).await,
            Ok(())
        );
        server.abort();

        // Answers something that is not HTTP.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            loop {
                if let Ok((mut s, _)) = l.accept().await {
                    let _ = s.write_all(b"SSH-2.0-nope\r\n").await;
                }
            }
        });
        let e = probe(&ProbeTarget::http(addr, "/"), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(e.contains("not a status line"), "{e}");
        server.abort();
    }

    #[tokio::test]
    async fn unreachable_target_starts_up_and_falls_after_fall_failures() {
        // Bind then drop to get a port nobody listens on.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let t = ProbeTarget::tcp(addr);
        let mut s = fast();
        s.fall = 3;
        let mut c = HealthChecker::new(s);
        c.set_targets([t.clone()]);
        let st = wait_for(&c, &t, Health::Down).await;
        // Up through the first two failures (the exact count is in `record_thresholds`).
        assert!(st.failures >= 3 && st.probes >= 3, "{st:?}");
    }

    #[test]
    fn record_thresholds() {
        let s = ProbeSettings {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        };
        let mut st = TargetStatus::new();
        assert!(!st.record(Err("x".into()), &s));
        assert!(!st.record(Err("x".into()), &s));
        assert!(!st.record(Ok(()), &s), "a success resets the failure count");
        assert!(!st.record(Err("x".into()), &s));
        assert!(!st.record(Err("x".into()), &s));
        assert!(st.record(Err("x".into()), &s));
        assert_eq!(st.health, Health::Down);
        assert!(!st.record(Ok(()), &s));
        assert!(st.record(Ok(()), &s));
        assert_eq!(st.health, Health::Up);
        assert_eq!(st.last_error.as_deref(), Some("x"));
    }
}
