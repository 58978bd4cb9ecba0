//! # The [`Announcer`]: BIRD's lifecycle and the API the daemon calls
//!
//! - [`Announcer::start`] writes the generated config with nothing announced, then either
//!   starts BIRD (supervised) and waits until its control socket answers, or attaches to the
//!   operator's BIRD and reconfigures it to load sluiced's include.
//! - [`Announcer::set_prefixes`] turns the wanted addresses into a [`PrefixSet`]; when it differs
//!   from the one BIRD runs, it rewrites the prefixes include and sends `configure`. Equal sets
//!   cost a comparison, so the daemon may call it after every snapshot.
//! - [`Announcer::withdraw_all`] announces nothing (drain, SIGTERM: then wait
//!   [`Announcer::linger`] before stopping the workers).
//! - [`Announcer::status`] reads every peer's session and BFD state from BIRD.
//!
//! ## Supervision
//! One thread per supervised BIRD spawns `setpriv --pdeathsig KILL -- bird -f -c <conf> -s
//! <socket>`: the kernel kills BIRD when that thread's process dies, even by SIGKILL, so a dead
//! sluiced never leaves a BIRD announcing VIPs nobody forwards (the death signal is tied to the
//! spawning thread, which lives as long as the `Announcer`). When BIRD exits, the thread logs
//! the exit status and BIRD's last lines and starts it again after a backoff (200 ms doubling
//! to 10 s, reset after 30 s of uptime). The files on disk always hold the latest prefixes, so a
//! restarted BIRD announces exactly what it should. BIRD's log (stderr) goes to `tracing`.
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::bird::{protocol_name, render_body, render_main, render_prefixes};
use super::control::{BgpState, Control, ControlError};
use super::prefixes::{Announcement, PrefixSet};
use crate::config::bgp::{BgpConfig, BirdMode};

/// Errors of the [`Announcer`].
#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    /// The BIRD binary is missing.
    #[error("BIRD binary {} not found or not executable; install BIRD 2 (`apt-get install bird2`; scripts/setup does) or set bgp.bird to its path", .path.display())]
    BirdMissing {
        /// The configured path.
        path: PathBuf,
    },
    /// `setpriv` is missing.
    #[error("setpriv not found in PATH; install util-linux (sluiced starts BIRD through `setpriv --pdeathsig KILL` so that BIRD dies with sluiced)")]
    SetprivMissing,
    /// A generated file could not be written.
    #[error("cannot write {}: {source}; check that the directory exists and sluiced may write it", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// BIRD exited while starting.
    #[error("BIRD exited while starting ({status}); its last output: {output}")]
    Exited {
        /// Exit status.
        status: String,
        /// BIRD's last lines of output.
        output: String,
    },
    /// BIRD did not open its control socket in time.
    #[error("BIRD did not answer on {} within {secs} s; its last output: {output}", .path.display())]
    StartTimeout {
        /// The control socket.
        path: PathBuf,
        /// The bound that passed.
        secs: u64,
        /// BIRD's last lines of output.
        output: String,
    },
    /// Talking to BIRD failed.
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// How the [`Announcer`] starts and talks to BIRD.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Words put before the BIRD command line, e.g. `ip netns exec sl-h1` in tests that run
    /// several hosts on one machine. Default: none.
    pub exec_prefix: Vec<OsString>,
    /// Bound on BIRD's start (socket answering). Default: 10 s.
    pub start_timeout: Duration,
    /// Bound on each control-socket read or write. Default: 5 s.
    pub control_timeout: Duration,
    /// First restart delay. Default: 200 ms.
    pub backoff_min: Duration,
    /// Largest restart delay. Default: 10 s.
    pub backoff_max: Duration,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            exec_prefix: Vec::new(),
            start_timeout: Duration::from_secs(10),
            control_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// The supervised BIRD process, as last seen.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BirdProcess {
    /// PID while running.
    pub pid: Option<u32>,
    /// How many times it was started.
    pub starts: u64,
    /// How the last run ended (`signal: 9 (SIGKILL)`, `exit status: 1`, a spawn error).
    pub last_exit: Option<String>,
    /// BIRD's last lines of output (at most [`OUTPUT_TAIL`]).
    pub last_output: Vec<String>,
}

/// Lines of BIRD's output kept for errors and status.
pub const OUTPUT_TAIL: usize = 20;

/// One peer's session as BIRD reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    /// The peer's name (`bgp.peers[].name` or derived from the address).
    pub name: String,
    /// BIRD's protocol name.
    pub protocol: String,
    /// The neighbour's address.
    pub address: IpAddr,
    /// The neighbour's configured AS.
    pub asn: u32,
    /// BGP session state.
    pub state: BgpState,
    /// When the protocol entered its state, as Unix seconds (when BIRD prints epoch seconds,
    /// as sluiced's generated config asks it to).
    pub since_unix: Option<u64>,
    /// The same, as BIRD printed it.
    pub since: String,
    /// BIRD's last error for the session (`BGP Error: Bad peer AS`, `Received: ...`,
    /// `Socket: Connection refused`).
    pub last_error: Option<String>,
    /// Prefixes exported to the peer.
    pub prefixes_exported: u64,
    /// Prefixes accepted from the peer (sluiced imports none).
    pub prefixes_imported: u64,
    /// BFD session state (`Up`, `Down`, `Init`) when BFD is on; `None` when off.
    pub bfd: Option<String>,
    /// sluiced's reading of a session that is not up: what to check.
    pub hint: Option<String>,
}

struct Shared {
    stop: AtomicBool,
    process: Mutex<BirdProcess>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Announces prefixes through BIRD; see the module documentation.
pub struct Announcer {
    cfg: BgpConfig,
    opts: StartOptions,
    socket: PathBuf,
    prefixes_path: PathBuf,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The set BIRD runs (`None` after a failed `configure`, so the next call retries).
    applied: Mutex<Option<PrefixSet>>,
}

fn write_atomic(path: &Path, text: &str) -> Result<(), BgpError> {
    let err = |source| BgpError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Announcer {
    /// Writes the config with nothing announced and starts (or attaches to) BIRD. `cfg` must
    /// have passed [`BgpConfig::validate`].
    ///
    /// # Errors
    /// [`BgpError::BirdMissing`] / [`BgpError::SetprivMissing`] before anything starts,
    /// [`BgpError::Write`] for the files, [`BgpError::Exited`] / [`BgpError::StartTimeout`]
    /// when BIRD does not come up, [`BgpError::Control`] when attaching fails.
    pub fn start(cfg: BgpConfig, opts: StartOptions) -> Result<Announcer, BgpError> {
        let socket = cfg.socket_path();
        let (config_path, prefixes_path) = match (&cfg.mode, &cfg.include_file) {
            (BirdMode::Attach, Some(inc)) => {
                let mut p = inc.clone();
                p.set_extension("prefixes.conf");
                (inc.clone(), p)
            }
            _ => (
                cfg.runtime_dir.join("bird.conf"),
                cfg.runtime_dir.join("prefixes.conf"),
            ),
        };
        let supervised = cfg.mode == BirdMode::Supervised;
        let setpriv = if supervised {
            if !is_executable(&cfg.bird) {
                return Err(BgpError::BirdMissing {
                    path: cfg.bird.clone(),
                });
            }
            std::fs::create_dir_all(&cfg.runtime_dir).map_err(|source| BgpError::Write {
                path: cfg.runtime_dir.clone(),
                source,
            })?;
            Some(find_in_path("setpriv").ok_or(BgpError::SetprivMissing)?)
        } else {
            None
        };
        write_atomic(&prefixes_path, &render_prefixes(&PrefixSet::default()))?;
        let text = if supervised {
            render_main(&cfg, &prefixes_path)
        } else {
            render_body(&cfg, &prefixes_path)
        };
        write_atomic(&config_path, &text)?;

        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            process: Mutex::new(BirdProcess::default()),
        });
        let mut a = Announcer {
            cfg,
            opts,
            socket,
            prefixes_path,
            shared,
            thread: None,
            applied: Mutex::new(None),
        };
        if let Some(setpriv) = setpriv {
            let mut argv: Vec<OsString> = a.opts.exec_prefix.clone();
            argv.push(setpriv.into());
            for w in ["--pdeathsig", "KILL", "--"] {
                argv.push(w.into());
            }
            argv.push(a.cfg.bird.clone().into());
            argv.push("-f".into());
            argv.push("-c".into());
            argv.push(config_path.into());
            argv.push("-s".into());
            argv.push(a.socket.clone().into());
            let spec = Spawn {
                argv,
                socket: a.socket.clone(),
                backoff_min: a.opts.backoff_min,
                backoff_max: a.opts.backoff_max,
            };
            let shared = a.shared.clone();
            a.thread = Some(
                std::thread::Builder::new()
                    .name("bird-supervisor".into())
                    .spawn(move || supervise(&spec, &shared))
                    .map_err(|source| BgpError::Write {
                        path: PathBuf::from("(thread)"),
                        source,
                    })?,
            );
            a.wait_ready()?;
        } else {
            a.control()?.configure()?;
        }
        *lock(&a.applied) = Some(PrefixSet::default());
        Ok(a)
    }

    fn wait_ready(&self) -> Result<(), BgpError> {
        let deadline = Instant::now() + self.opts.start_timeout;
        loop {
            if Control::connect(&self.socket, self.opts.control_timeout).is_ok() {
                return Ok(());
            }
            let p = self.process();
            if p.pid.is_none() {
                if let Some(status) = p.last_exit {
                    return Err(BgpError::Exited {
                        status,
                        output: p.last_output.join(" | "),
                    });
                }
            }
            if Instant::now() >= deadline {
                return Err(BgpError::StartTimeout {
                    path: self.socket.clone(),
                    secs: self.opts.start_timeout.as_secs(),
                    output: p.last_output.join(" | "),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn control(&self) -> Result<Control, BgpError> {
        Ok(Control::connect(&self.socket, self.opts.control_timeout)?)
    }

    /// Announces exactly `wanted` (VIPs with their pools, NAT addresses); reconfigures BIRD
    /// only when the resulting prefixes differ from what it runs. Returns whether it did.
    ///
    /// # Errors
    /// Writing the include or BIRD's `configure` failed; the next call tries again.
    pub fn set_prefixes(&self, wanted: &[Announcement]) -> Result<bool, BgpError> {
        self.apply(PrefixSet::build(&self.cfg, wanted))
    }

    /// Withdraws everything (the sessions stay up). Returns whether anything changed.
    ///
    /// # Errors
    /// As [`Announcer::set_prefixes`].
    pub fn withdraw_all(&self) -> Result<bool, BgpError> {
        self.apply(PrefixSet::default())
    }

    fn apply(&self, set: PrefixSet) -> Result<bool, BgpError> {
        let mut applied = lock(&self.applied);
        if applied.as_ref() == Some(&set) {
            return Ok(false);
        }
        *applied = None;
        write_atomic(&self.prefixes_path, &render_prefixes(&set))?;
        let msg = self.control()?.configure()?;
        tracing::info!(prefixes = set.len(), bird = %msg, "BGP announcements updated");
        *applied = Some(set);
        Ok(true)
    }

    /// What BIRD was last configured to announce (`None` if the last change failed).
    pub fn announced(&self) -> Option<PrefixSet> {
        lock(&self.applied).clone()
    }

    /// How long to wait after [`Announcer::withdraw_all`] before stopping the workers.
    pub fn linger(&self) -> Duration {
        Duration::from_secs(self.cfg.linger_seconds)
    }

    /// The supervised BIRD process (default values in attach mode).
    pub fn process(&self) -> BirdProcess {
        lock(&self.shared.process).clone()
    }

    /// Every configured peer's session, in config order.
    ///
    /// # Errors
    /// [`BgpError::Control`] when BIRD does not answer.
    pub fn status(&self) -> Result<Vec<PeerStatus>, BgpError> {
        let mut c = self.control()?;
        let protocols = c.protocols()?;
        let bfd = if self.cfg.peers.iter().any(|p| p.bfd) {
            c.bfd_sessions()?
        } else {
            Vec::new()
        };
        let mut out = Vec::with_capacity(self.cfg.peers.len());
        for p in &self.cfg.peers {
            let pname = protocol_name(p);
            let found = protocols.iter().find(|x| x.name == pname);
            let (state, since, last_error, exp, imp) = match found {
                Some(x) => (
                    x.bgp_state
                        .as_deref()
                        .map_or(BgpState::Down, BgpState::parse),
                    x.since.clone(),
                    x.last_error.clone(),
                    x.routes_exported,
                    x.routes_imported,
                ),
                None => (
                    BgpState::Down,
                    String::new(),
                    Some("not in BIRD's running configuration".to_owned()),
                    0,
                    0,
                ),
            };
            let bfd_state = p.bfd.then(|| {
                bfd.iter()
                    .find(|s| s.address == p.address)
                    .map_or_else(|| "Down".to_owned(), |s| s.state.clone())
            });
            let mut st = PeerStatus {
                name: p.display_name(),
                protocol: pname,
                address: p.address,
                asn: p.asn,
                since_unix: since.parse().ok(),
                since,
                state,
                last_error,
                prefixes_exported: exp,
                prefixes_imported: imp,
                bfd: bfd_state,
                hint: None,
            };
            st.hint = hint(&st, p.password.is_some(), p.port);
            out.push(st);
        }
        Ok(out)
    }

    /// Stops a supervised BIRD (SIGKILL; the routers drop its routes when the TCP sessions
    /// close). Call [`Announcer::withdraw_all`] and wait [`Announcer::linger`] first for a
    /// clean stop. Attach mode leaves the operator's BIRD alone.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What to check for a session that is not Established.
fn hint(st: &PeerStatus, password: bool, port: u16) -> Option<String> {
    if st.state == BgpState::Established {
        return None;
    }
    let err = st.last_error.as_deref().unwrap_or("");
    if err.contains("Bad peer AS") {
        return Some(format!(
            "the neighbour's AS is not {}: fix bgp.peers[].asn or the router's remote-as for \
             this host",
            st.asn
        ));
    }
    if err.contains("Connection refused") {
        return Some(format!(
            "nothing accepts BGP on {}:{port}: is this host configured as a neighbour on the \
             router?",
            st.address
        ));
    }
    if matches!(st.state, BgpState::Connect | BgpState::Active) {
        return Some(if password {
            format!(
                "no TCP session with {}:{port}; a TCP-MD5 password mismatch is silent (the \
                 kernels drop the segments and count them in TcpExtTCPMD5Failure, see `nstat`): \
                 check the password on both sides, then reachability",
                st.address
            )
        } else {
            format!(
                "no TCP session with {}:{port}: check reachability and that the router has \
                 this host as a neighbour",
                st.address
            )
        });
    }
    None
}

struct Spawn {
    argv: Vec<OsString>,
    socket: PathBuf,
    backoff_min: Duration,
    backoff_max: Duration,
}

/// Sleeps `d` in small steps; returns false when asked to stop.
fn sleep_unless_stopped(shared: &Shared, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if shared.stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
    }
    !shared.stop.load(Ordering::SeqCst)
}

fn spawn(spec: &Spawn, shared: &Arc<Shared>) -> std::io::Result<Child> {
    // A socket left by a killed BIRD would make `connect` fail in confusing ways.
    let _ = std::fs::remove_file(&spec.socket);
    let mut child = Command::new(&spec.argv[0])
        .args(&spec.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(err) = child.stderr.take() {
        let shared = shared.clone();
        let _ = std::thread::Builder::new()
            .name("bird-log".into())
            .spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    tracing::info!(target: "sluice::bird", "{line}");
                    let mut p = lock(&shared.process);
                    let mut tail: VecDeque<String> = std::mem::take(&mut p.last_output).into();
                    if tail.len() == OUTPUT_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                    p.last_output = tail.into();
                }
            });
    }
    Ok(child)
}

fn supervise(spec: &Spawn, shared: &Arc<Shared>) {
    let mut backoff = spec.backoff_min;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let started = Instant::now();
        match spawn(spec, shared) {
            Ok(mut child) => {
                {
                    let mut p = lock(&shared.process);
                    p.pid = Some(child.id());
                    p.starts += 1;
                }
                tracing::info!(pid = child.id(), "BIRD started");
                let status = loop {
                    if shared.stop.load(Ordering::SeqCst) {
                        let _ = child.kill();
                        let _ = child.wait();
                        lock(&shared.process).pid = None;
                        return;
                    }
                    match child.try_wait() {
                        Ok(Some(st)) => break st.to_string(),
                        Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                        Err(e) => break format!("wait failed: {e}"),
                    }
                };
                let tail = {
                    let mut p = lock(&shared.process);
                    p.pid = None;
                    p.last_exit = Some(status.clone());
                    p.last_output.join(" | ")
                };
                tracing::warn!(
                    %status,
                    last_output = %tail,
                    restart_in_ms = backoff.as_millis() as u64,
                    "BIRD exited; restarting it"
                );
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = spec.backoff_min;
                }
            }
            Err(e) => {
                let msg = format!("cannot start {:?}: {e}", spec.argv);
                tracing::error!("{msg}");
                lock(&shared.process).last_exit = Some(msg);
            }
        }
        if !sleep_unless_stopped(shared, backoff) {
            return;
        }
        backoff = (backoff * 2).min(spec.backoff_max);
    }
}

#[cfg(test)]
mod tests;
