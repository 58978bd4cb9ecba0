//! # Routed mode in the daemon
//!
//! [`Routed`] connects the control loop to the BGP [`Announcer`] (supervised BIRD):
//! - **When.** After each publish the control loop hands it the report; the addresses to
//!   announce ([`wanted`]) go to BIRD only once every worker runs that report's snapshot, so
//!   nothing is announced before the dataplane forwards it. A drain or a stop withdraws at
//!   once.
//! - **Off the control loop.** One task owns the BIRD calls: it applies the latest wanted set
//!   (older ones queued meanwhile are skipped) and reads the sessions every second, each call
//!   on a blocking thread (BIRD's socket calls are bounded by their timeouts). A failed
//!   `configure` is retried every second.
//! - **Seen.** The task publishes a [`BgpView`] to the admin API (`GET /v1/bgp`, status,
//!   metrics) and logs a session state change, or a new BIRD error, once. After each prefix
//!   set BIRD accepted, the [`Notifier`] reports the Services whose VIPs were announced or
//!   withdrawn (log, and Kubernetes Events).
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use sluice_dataplane::stats::WorkerStats;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::bgp_events::{owners, Cause, Notifier, Owners};
use crate::admin::{api, AdminState, BgpView};
use crate::announce::bgp::control::BgpState;
use crate::announce::bgp::supervisor::PeerStatus;
use crate::announce::bgp::wanted::wanted;
use crate::announce::bgp::{Announcement, Announcer, BgpError, StartOptions};
use crate::compile::CompileReport;
use crate::config::{BgpConfig, Config};

/// What the task should make BIRD announce.
#[derive(Debug, Clone, Default)]
struct Desired {
    /// Increases with every change.
    seq: u64,
    wanted: Vec<Announcement>,
    drained: bool,
    /// Why what is not wanted is not (for the Events).
    cause: Cause,
    /// Each Service's VIPs in the report `wanted` came from.
    owners: Owners,
}

/// The daemon's side of routed mode; see the module documentation.
pub(super) struct Routed {
    announcer: Arc<Announcer>,
    tx: watch::Sender<Desired>,
    /// The `seq` of the last [`Desired`] the task handled (applied or failed).
    done: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
    linger: Duration,
    /// Withdrawn by the operator (`sluicectl host drain`).
    drained: bool,
    /// Withdrawn for SIGTERM/SIGINT.
    stopping: bool,
    /// The wanted set of the last report (and its Services' VIPs), until every worker runs
    /// its generation.
    pending: Option<(u64, Vec<Announcement>, Owners)>,
    /// The Services' VIPs of the last report.
    owners: Owners,
    /// Counters of the workers, whose snapshot generation says what they forward.
    workers: Vec<Arc<WorkerStats>>,
}

impl Routed {
    /// Starts BIRD (or attaches to it) with nothing announced, and the task that drives it,
    /// which reports announcement changes to `notifier`. Blocks until BIRD answers (bounded by [`StartOptions::start_timeout`]). Needs a tokio
    /// runtime.
    ///
    /// # Errors
    /// [`BgpError`] from [`Announcer::start`]: BIRD missing, not starting, not answering.
    pub(super) fn start(
        cfg: &BgpConfig,
        admin: Option<Arc<AdminState>>,
        workers: Vec<Arc<WorkerStats>>,
        notifier: Notifier,
    ) -> Result<Routed, BgpError> {
        let announcer = Arc::new(Announcer::start(cfg.clone(), StartOptions::default())?);
        info!(
            asn = cfg.asn,
            peers = cfg.peers.len(),
            pid = ?announcer.process().pid,
            "BGP: BIRD answers; nothing announced until the workers forward"
        );
        let (tx, rx) = watch::channel(Desired::default());
        let (done_tx, done) = watch::channel(0);
        let supervised = cfg.mode == crate::config::bgp::BirdMode::Supervised;
        let task = tokio::spawn(drive(
            announcer.clone(),
            rx,
            done_tx,
            admin,
            supervised,
            notifier,
        ));
        Ok(Routed {
            linger: announcer.linger(),
            announcer,
            tx,
            done,
            task,
            drained: false,
            stopping: false,
            pending: None,
            owners: Owners::default(),
            workers,
        })
    }

    /// After a publish: what `report` wants announced goes to BIRD once the workers run it
    /// (see [`Routed::flush`]); a withdrawal goes at once.
    pub(super) fn report(&mut self, cfg: &Config, report: &CompileReport) {
        let withdrawn = self.drained || self.stopping;
        let w = wanted(cfg, report, withdrawn);
        let o = owners(report);
        if withdrawn {
            self.pending = None;
            self.owners = o;
            self.send(w);
        } else {
            self.pending = Some((report.generation, w, o));
            self.flush();
        }
    }

    /// Sends the pending wanted set once every worker runs its snapshot (call on the tick).
    pub(super) fn flush(&mut self) {
        let Some((generation, _, _)) = &self.pending else {
            return;
        };
        let generation = *generation;
        if self
            .workers
            .iter()
            .all(|w| w.snapshot_generation.load(Relaxed) >= generation)
        {
            if let Some((_, w, o)) = self.pending.take() {
                self.owners = o;
                self.send(w);
            }
        }
    }

    fn send(&self, wanted: Vec<Announcement>) -> u64 {
        let drained = self.drained;
        let cause = if self.stopping {
            Cause::Stopping
        } else if drained {
            Cause::Drained
        } else {
            Cause::NoReadyBackend
        };
        let owners = self.owners.clone();
        let mut seq = 0;
        self.tx.send_if_modified(|d| {
            seq = d.seq;
            if d.wanted == wanted && d.drained == drained {
                return false;
            }
            seq += 1;
            *d = Desired {
                seq,
                wanted,
                drained,
                cause,
                owners,
            };
            true
        });
        seq
    }

    /// Drains (withdraws everything, the workers keep forwarding) or undrains the host.
    /// Returns a future that resolves once BIRD was told (or failed to be).
    pub(super) fn set_drained(
        &mut self,
        drained: bool,
        cfg: &Config,
        last: Option<&CompileReport>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        if drained != self.drained {
            if drained {
                info!("host drained by the operator: withdrawing every BGP announcement; the workers keep forwarding");
            } else {
                info!("host undrained by the operator: announcing again");
            }
        }
        self.drained = drained;
        match last {
            Some(r) => self.report(cfg, r),
            None => {
                self.send(Vec::new());
            }
        }
        // Undrain announces once the workers run the report's snapshot; they already do.
        self.flush();
        self.applied(self.tx.borrow().seq)
    }

    /// SIGTERM/SIGINT: withdraws everything; returns how long to keep forwarding.
    pub(super) fn begin_stop(&mut self) -> Duration {
        self.stopping = true;
        self.pending = None;
        self.send(Vec::new());
        self.linger
    }

    /// Resolves once the task handled `seq` (bounded to 10 s).
    fn applied(&self, seq: u64) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut done = self.done.clone();
        async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(10), done.wait_for(|s| *s >= seq)).await;
        }
    }

    /// Stops the task, then BIRD (supervised; attach mode leaves the operator's alone). Call
    /// after the workers stopped.
    pub(super) fn stop(self) {
        self.task.abort();
        drop(self.tx);
        let mut a = self.announcer;
        // A BIRD call still running on a blocking thread holds a reference for at most its
        // socket timeout.
        for _ in 0..300 {
            match Arc::try_unwrap(a) {
                Ok(a) => {
                    a.stop();
                    info!("BGP: BIRD stopped");
                    return;
                }
                Err(back) => a = back,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        warn!("BGP: a BIRD call did not return; BIRD stops when sluiced exits");
    }
}

/// The task: applies the latest [`Desired`] and reads the sessions every second.
async fn drive(
    announcer: Arc<Announcer>,
    mut rx: watch::Receiver<Desired>,
    done: watch::Sender<u64>,
    admin: Option<Arc<AdminState>>,
    supervised: bool,
    mut notifier: Notifier,
) {
    let mut view = BgpView {
        doc: api::Bgp {
            enabled: true,
            ..api::Bgp::default()
        },
        ..BgpView::default()
    };
    let mut configure_error: Option<String> = None;
    let mut status_error: Option<String> = None;
    let mut retry = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let apply = tokio::select! {
            r = rx.changed() => {
                if r.is_err() {
                    return;
                }
                true
            }
            _ = tick.tick() => {
                let a = announcer.clone();
                if let Ok((status, process)) =
                    tokio::task::spawn_blocking(move || (a.status(), a.process())).await
                {
                    update_status(&mut view, status, &mut status_error);
                    view.doc.bird = supervised.then_some(api::BirdProcess {
                        pid: process.pid,
                        starts: process.starts,
                        last_exit: process.last_exit,
                    });
                }
                retry
            }
        };
        if apply {
            let d = rx.borrow_and_update().clone();
            let a = announcer.clone();
            let wanted = d.wanted.clone();
            let r = tokio::task::spawn_blocking(move || a.set_prefixes(&wanted)).await;
            let r = match r {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(format!("the BIRD call failed: {e}")),
            };
            match r {
                Ok(_) => {
                    if configure_error.take().is_some() {
                        info!("BGP: BIRD took the announcements again");
                    }
                    retry = false;
                    if let Some(accepted) = announcer.announced() {
                        notifier.update(&d.owners, &d.wanted, &accepted, d.cause, &view.doc.peers);
                    }
                }
                Err(msg) => {
                    view.configure_failures += 1;
                    if configure_error.as_deref() != Some(&msg) {
                        error!(error = %msg, "BGP: BIRD did not take the announcements; retrying every second");
                    }
                    configure_error = Some(msg);
                    retry = true;
                }
            }
            view.doc.drained = d.drained;
            view.doc.announced = announcer
                .announced()
                .map(|s| s.prefixes().iter().map(ToString::to_string).collect())
                .unwrap_or_default();
            if let Some(a) = &admin {
                a.set_bgp(view.clone());
            }
            let _ = done.send(d.seq);
            continue;
        }
        if let Some(a) = &admin {
            a.set_bgp(view.clone());
        }
    }
}

/// Takes a status read into `view`, logging state changes and a new read error once.
fn update_status(
    view: &mut BgpView,
    status: Result<Vec<PeerStatus>, BgpError>,
    last_error: &mut Option<String>,
) {
    match status {
        Ok(peers) => {
            if last_error.take().is_some() {
                info!("BGP: BIRD answers again");
            }
            let new: Vec<api::BgpPeer> = peers.into_iter().map(peer_doc).collect();
            for p in &new {
                let old = view.doc.peers.iter().find(|o| o.name == p.name);
                if old.map(|o| &o.state) != Some(&p.state) {
                    let from = old.map_or("(start)", |o| o.state.as_str());
                    if p.state == "Established" {
                        info!(peer = %p.name, address = %p.address, "BGP session {from} -> {}", p.state);
                    } else {
                        warn!(
                            peer = %p.name,
                            address = %p.address,
                            error = p.last_error.as_deref().unwrap_or(""),
                            hint = p.hint.as_deref().unwrap_or(""),
                            "BGP session {from} -> {}",
                            p.state
                        );
                    }
                }
            }
            view.doc.peers = new;
        }
        Err(e) => {
            view.status_failures += 1;
            let msg = e.to_string();
            if last_error.as_deref() != Some(&msg) {
                error!(error = %msg, "BGP: cannot read the sessions from BIRD (the supervisor restarts a BIRD that exited)");
            }
            for p in &mut view.doc.peers {
                p.state = "Down".to_owned();
                p.last_error = Some(format!("BIRD does not answer: {msg}"));
                p.hint = Some(
                    "BIRD is down or restarting; see sluiced's log (target sluice::bird)"
                        .to_owned(),
                );
            }
            *last_error = Some(msg);
        }
    }
}

fn peer_doc(p: PeerStatus) -> api::BgpPeer {
    let state = match &p.state {
        BgpState::Other(s) => s.clone(),
        s => format!("{s:?}"),
    };
    api::BgpPeer {
        name: p.name,
        address: p.address,
        asn: p.asn,
        state,
        since_unix: p.since_unix,
        exported: p.prefixes_exported,
        imported: p.prefixes_imported,
        bfd: p.bfd,
        last_error: p.last_error,
        hint: p.hint,
    }
}
