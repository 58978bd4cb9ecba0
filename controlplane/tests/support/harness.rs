//! # A Sluice instance without DPDK
//!
//! Runs what `sluiced` runs after the Kubernetes source, minus ports and workers: the source's
//! batches go into a [`Model`], [`Compiler::compile`] turns it into a snapshot that is
//! published to N crossbeam receivers (the workers' channels in the daemon), and the report
//! goes to the status writer. It mirrors the `kubernetes` branches of the control loop (`daemon/control.rs`)
//! call for call, so tests and the benchmark exercise the daemon's code path.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use sluice_controlplane::compile::{CompileInput, CompileReport, Compiler};
use sluice_controlplane::config::Config;
use sluice_controlplane::health::{Health, ProbeTarget};
use sluice_controlplane::model::Model;
use sluice_controlplane::sources::kubernetes::{KubeSettings, Kubernetes};
use sluice_dataplane::snapshot::Snapshot;
use tokio::sync::{mpsc, watch};

/// What the instance last published.
#[derive(Clone)]
pub struct Published {
    /// The compile report.
    pub report: Arc<CompileReport>,
    /// The snapshot the workers got.
    pub snapshot: Arc<Snapshot>,
    /// Whether the instance led when it compiled.
    pub leader: bool,
    /// Every generation published so far had this many frontends at least (watch for drops).
    pub min_frontends_since_start: usize,
    /// How long the compile took.
    pub compile_time: Duration,
}

/// A running instance.
pub struct Instance {
    /// The latest publication.
    pub published: watch::Receiver<Option<Published>>,
    /// Leadership.
    pub leader: watch::Receiver<bool>,
    /// Health states the compiler sees (tests set them, then call [`Instance::recompile`]).
    pub health: Arc<Mutex<HashMap<ProbeTarget, Health>>>,
    poke: mpsc::UnboundedSender<Option<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Instance {
    /// Starts an instance; `workers` receivers get every snapshot (pass an empty Vec for none).
    pub async fn start(
        client: kube::Client,
        cfg: Config,
        settings: KubeSettings,
        workers: Vec<Sender<Arc<Snapshot>>>,
    ) -> Instance {
        let (ptx, prx) = watch::channel(None);
        let (poke, mut poked) = mpsc::unbounded_channel::<Option<()>>();
        let health: Arc<Mutex<HashMap<ProbeTarget, Health>>> = Arc::default();
        let mut kube = Kubernetes::start(client, settings);
        let leader = kube.leader();
        let h = health.clone();
        let (ready_tx, mut ready_rx) = mpsc::channel::<()>(1);
        let task = tokio::spawn(async move {
            let model = kube.initial_model().await;
            let mut st = Loop {
                cfg,
                model,
                compiler: Compiler::new(),
                reporter: kube.take_reporter().expect("reporter"),
                workers,
                last: None,
                out: ptx,
                health: h,
                min_frontends: usize::MAX,
                leader: kube.is_leader(),
            };
            st.compiler.set_follow_status(!kube.is_leader());
            st.compile_and_publish();
            let _ = ready_tx.send(()).await;
            let mut leader = kube.leader();
            loop {
                tokio::select! {
                    b = kube.next_batch() => {
                        let Some(b) = b else { break };
                        b.apply(&mut st.model);
                        while let Some(b) = kube.try_next_batch() {
                            b.apply(&mut st.model);
                        }
                        st.compile_and_publish();
                    }
                    r = leader.changed() => {
                        if r.is_err() { break; }
                        let l = *leader.borrow_and_update();
                        st.leader = l;
                        st.compiler.set_follow_status(!l);
                        st.compile_and_publish();
                    }
                    p = poked.recv() => match p {
                        Some(Some(())) => st.compile_and_publish(),
                        _ => break,
                    },
                }
            }
            kube.shutdown().await;
        });
        // Wait for the first publication (the initial list).
        let _ = tokio::time::timeout(Duration::from_secs(20), ready_rx.recv()).await;
        Instance {
            published: prx,
            leader,
            health,
            poke,
            task: Some(task),
        }
    }

    /// The latest publication.
    pub fn now(&self) -> Published {
        self.published.borrow().clone().expect("published")
    }

    /// Compiles again (after changing [`Instance::health`]).
    pub fn recompile(&self) {
        let _ = self.poke.send(Some(()));
    }

    /// Whether it leads.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Stops the instance (releasing the Lease if it holds it).
    pub async fn stop(mut self) {
        let _ = self.poke.send(None);
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }

    /// Stops it abruptly, like a crash: no Lease release.
    pub fn kill(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

struct Loop {
    cfg: Config,
    model: Model,
    compiler: Compiler,
    reporter: sluice_controlplane::sources::kubernetes::StatusReporter,
    workers: Vec<Sender<Arc<Snapshot>>>,
    last: Option<Arc<CompileReport>>,
    out: watch::Sender<Option<Published>>,
    health: Arc<Mutex<HashMap<ProbeTarget, Health>>>,
    min_frontends: usize,
    leader: bool,
}

impl Loop {
    /// As `daemon::ControlState::compile_and_publish`: compile, skip if nothing changed, publish to
    /// every worker, hand the report to the status writer.
    fn compile_and_publish(&mut self) {
        let health = self.health.lock().unwrap().clone();
        let t = Instant::now();
        let compiled = self
            .compiler
            .compile(&CompileInput {
                config: &self.cfg,
                model: &self.model,
                local_mac: [2, 0, 0, 0, 0, 1],
                neighbours: &HashMap::new(),
                health: &health,
                drained: &BTreeSet::new(),
                weights: &BTreeMap::new(),
                now: Instant::now(),
            })
            .expect("compile");
        let compile_time = t.elapsed();
        let report = compiled.report;
        if self.last.as_ref().is_some_and(|l| {
            l.services == report.services
                && l.problems == report.problems
                && l.unresolved == report.unresolved
        }) {
            return;
        }
        let snap = Arc::new(compiled.snapshot);
        for w in &self.workers {
            let _ = w.try_send(snap.clone());
        }
        self.reporter.report(&report);
        self.min_frontends = self.min_frontends.min(snap.frontends().count());
        let report = Arc::new(report);
        let _ = self.out.send(Some(Published {
            report: report.clone(),
            snapshot: snap,
            leader: self.leader,
            min_frontends_since_start: self.min_frontends,
            compile_time,
        }));
        self.last = Some(report);
    }
}

/// Senders and receivers of the workers' snapshot channels.
pub type WorkerChannels = (Vec<Sender<Arc<Snapshot>>>, Vec<Receiver<Arc<Snapshot>>>);

/// `N` worker channels (bounded like the daemon's) and their receivers.
pub fn worker_channels(n: usize) -> WorkerChannels {
    (0..n).map(|_| crossbeam_channel::bounded(8)).unzip()
}

/// Polls `f` every 20 ms until it holds; panics with `what` after `secs` seconds.
pub async fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
