//! # The control loop
//!
//! One `tokio::select!` over everything that can change what the workers should do: manifest
//! changes and Kubernetes batches (a new model), leadership changes, health changes, writes
//! from the admin API, and a 50 ms tick that drains the neighbours the workers learned, drops
//! retired snapshots, samples the port counters, retries and refreshes next hops, ages out
//! removed backends and logs the worker counters. Each change ends in
//! [`ControlState::compile_and_publish`]. SIGINT and SIGTERM end the loop; in routed mode the
//! first one withdraws every BGP announcement and the loop keeps running (the workers keep
//! forwarding, with updates) for `bgp.linger_seconds`, and a second one ends it at once.
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use dpdk_sys::Port;
use sluice_dataplane::pipeline::NeighborEvent;
use sluice_dataplane::snapshot::Snapshot;
use sluice_dataplane::stats::WorkerStats;
use tracing::{error, info, warn};

use super::{ControlState, DaemonError};
use crate::admin::{mac_str, ControlRequest};
use crate::sources::kubernetes::{Batch, Kubernetes};
use crate::sources::manifest::{ManifestEvent, ManifestWatcher};

/// The next batch of the Kubernetes source; never resolves without one.
async fn next_batch(kube: &mut Option<Kubernetes>) -> Option<Batch> {
    match kube {
        Some(k) => k.next_batch().await,
        None => std::future::pending().await,
    }
}

/// The new leadership state when it changes; never resolves without an elector.
async fn leader_changed(rx: &mut Option<tokio::sync::watch::Receiver<bool>>) -> Option<bool> {
    if let Some(r) = rx {
        if r.changed().await.is_ok() {
            return Some(*r.borrow_and_update());
        }
    }
    std::future::pending().await
}

/// Resolves when L2 membership changes; never without `[l2]`.
async fn l2_changed(l2: &mut Option<crate::l2::L2>) {
    match l2 {
        Some(l) => l.changed().await,
        None => std::future::pending().await,
    }
}

/// Runs until SIGINT or SIGTERM.
pub(super) async fn control_loop(
    state: &mut ControlState,
    watcher: Option<ManifestWatcher>,
    nb_rx: Receiver<NeighborEvent>,
    ret_rx: Receiver<Arc<Snapshot>>,
    stats: &[Arc<WorkerStats>],
    mut admin_rx: tokio::sync::mpsc::Receiver<ControlRequest>,
    ports: &[Port],
) -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (_no_manifests, idle) = tokio::sync::mpsc::channel(1);
    let mut manifests = match watcher {
        Some(w) => w.spawn(Duration::from_millis(state.cfg.source.poll_interval_ms))?,
        None => idle,
    };
    let mut leader = state.kube.as_ref().map(|k| k.leader());
    let mut health = state.health.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut last_stats = Instant::now();
    let mut last_sample = Instant::now();
    let sample = |state: &ControlState| {
        if let Some(a) = &state.admin {
            a.sample(
                ports
                    .iter()
                    .map(|p| p.stats().unwrap_or_default())
                    .collect(),
            );
        }
    };
    sample(state);
    // Set by the first SIGTERM/SIGINT in routed mode: forward until then, announcing nothing.
    let mut linger_until: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            sig = async { tokio::select! { _ = term.recv() => "SIGTERM", _ = int.recv() => "SIGINT" } } => {
                if linger_until.is_some() {
                    info!(signal = sig, "second signal: stopping now");
                    return Ok(());
                }
                match state.begin_stop() {
                    None => { info!(signal = sig, "stopping"); return Ok(()); }
                    Some(linger) => {
                        info!(signal = sig, linger_s = linger.as_secs_f64(), "withdrew every BGP announcement; forwarding while the routers move traffic away, then stopping");
                        linger_until = Some(tokio::time::Instant::now() + linger);
                    }
                }
            }
            _ = async { tokio::time::sleep_until(linger_until.unwrap_or_else(tokio::time::Instant::now)).await }, if linger_until.is_some() => {
                info!("linger over");
                return Ok(());
            }
            ev = manifests.recv() => match ev {
                Some(ManifestEvent::Updated(m)) => {
                    for w in &m.warnings { warn!(warning = %w, "manifest"); }
                    info!(services = m.model.services.len(), "manifests changed");
                    state.model = m.model;
                    state.compile_and_publish("manifests changed");
                    if let Some(a) = &state.admin { a.set_source_error(None); }
                }
                Some(ManifestEvent::Invalid(e)) => {
                    error!(error = %e, "invalid manifests; still serving the last good state");
                    if let Some(a) = &state.admin { a.set_source_error(Some(e.to_string())); }
                }
                None => { warn!("manifest watcher ended"); }
            },
            Some(batch) = next_batch(&mut state.kube) => {
                // One rebuild for everything that queued up meanwhile.
                let mut n = batch.apply(&mut state.model);
                while let Some(b) = state.kube.as_mut().and_then(|k| k.try_next_batch()) {
                    n += b.apply(&mut state.model);
                }
                tracing::debug!(changes = n, services = state.model.services.len(), "kubernetes changed");
                state.compile_and_publish("kubernetes changed");
            }
            Some(leads) = leader_changed(&mut leader) => {
                state.compiler.set_follow_status(!leads);
                state.compile_and_publish(if leads { "became the leader" } else { "following the leader" });
            }
            _ = l2_changed(&mut state.l2) => {
                state.compile_and_publish("L2 membership changed");
            }
            _ = health.changed() => {
                state.compile_and_publish("health changed");
            }
            Some(req) = admin_rx.recv() => {
                state.admin_request(req);
            }
            _ = tick.tick() => {
                let mut changed = false;
                while let Ok(ev) = nb_rx.try_recv() {
                    if state.neighbours.insert(ev.ip, ev.mac) != Some(ev.mac) {
                        info!(ip = %ev.ip, mac = %mac_str(ev.mac), "neighbour learned");
                        changed = true;
                    }
                }
                while ret_rx.try_recv().is_ok() {}
                if changed {
                    state.compile_and_publish("neighbour learned");
                    if let Some(a) = &state.admin { a.set_neighbours(&state.neighbours); }
                }
                if last_sample.elapsed() >= Duration::from_secs(1) {
                    sample(state);
                    state.refresh_l2_view();
                    last_sample = Instant::now();
                }
                if let Some(r) = &state.last {
                    state.announce.tick(&r.unresolved, &r.next_hops);
                }
                if let Some(b) = &mut state.bgp {
                    b.flush();
                }
                if state.last_publish.elapsed() >= Duration::from_secs(1) {
                    // Ages out removed backends after their grace period.
                    state.compile_and_publish("periodic");
                    state.last_publish = Instant::now();
                }
                if last_stats.elapsed() >= Duration::from_secs(10) {
                    for (i, s) in stats.iter().enumerate() {
                        use std::sync::atomic::Ordering::Relaxed;
                        info!(
                            worker = i,
                            rx = s.rx_packets.load(Relaxed),
                            tx = s.tx_packets.load(Relaxed),
                            drops = s.total_drops(),
                            flows = s.ct_entries.load(Relaxed),
                            generation = s.snapshot_generation.load(Relaxed),
                            "worker stats"
                        );
                    }
                    last_stats = Instant::now();
                }
            }
        }
    }
}
