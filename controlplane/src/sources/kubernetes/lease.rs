//! # Leader election with a `coordination.k8s.io/v1` Lease
//!
//! Several Sluice hosts watch one cluster and all serve what `status.loadBalancer` says; only
//! the holder of one Lease writes status and Events. The protocol is client-go's:
//!
//! - Every `retry` the elector reads the Lease. Nobody holds it (no Lease, an empty
//!   `holderIdentity`) or the holder has not renewed it for `leaseDurationSeconds` → it takes it
//!   over with a replace that names the `resourceVersion` it read, so of two instances racing,
//!   one gets `409 Conflict` and stays a follower.
//! - The holder renews (`renewTime`) every `retry`. If it cannot renew for `renew_deadline`
//!   (less than the lease duration) it steps down on its own, before anyone else may take over.
//! - "Has not renewed" is judged by this instance's own clock from when it *observed* the
//!   record change, never by comparing `renewTime` with local time, so clock skew between hosts
//!   does not matter.
//! - On shutdown the holder releases the Lease (empty holder, 1 s duration) so a standby takes
//!   over at once.
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::logs::{Repeats, Verdict, FAILURE_REMINDER};

/// Where the Lease lives and how it is timed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This instance's identity (`holderIdentity`); unique per instance.
    pub identity: String,
    /// `leaseDurationSeconds`: how long a holder that stopped renewing keeps the Lease.
    pub duration: Duration,
    /// A holder that could not renew for this long steps down (less than `duration`).
    pub renew_deadline: Duration,
    /// How often the Lease is read, acquired or renewed.
    pub retry: Duration,
}

impl LeaseSettings {
    /// Client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        LeaseSettings {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// A running elector; dropping it stops the elector without releasing the Lease.
#[derive(Debug)]
pub struct Elector {
    leader: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Elector {
    /// Starts electing (needs a tokio runtime).
    pub fn spawn(client: Client, settings: LeaseSettings) -> Elector {
        let (tx, rx) = watch::channel(false);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(client, settings, tx, stop_rx));
        Elector {
            leader: rx,
            stop: Some(stop_tx),
            task,
        }
    }

    /// Whether this instance leads; `changed()` on it wakes on every transition.
    pub fn leader(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Stops electing and, if this instance leads, releases the Lease (waits at most 2 s).
    pub async fn release(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.task).await;
        self.task.abort();
    }
}

impl Drop for Elector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What this instance last saw of the Lease and when.
struct Observed {
    holder: String,
    renew: Option<Timestamp>,
    at: Instant,
}

async fn run(
    client: Client,
    s: LeaseSettings,
    tx: watch::Sender<bool>,
    mut stop: oneshot::Receiver<()>,
) {
    let api: Api<Lease> = Api::namespaced(client, &s.namespace);
    let mut observed: Option<Observed> = None;
    let mut last_renew: Option<Instant> = None;
    let mut failing: Repeats<()> = Repeats::new(FAILURE_REMINDER);
    loop {
        let leading = *tx.borrow();
        let result = try_acquire_or_renew(&api, &s, &mut observed).await;
        if result.is_ok() {
            if let Some(e) = failing.end(&(), std::time::Instant::now()) {
                info!(lease = %s.name, errors = e.occurrences, failed_for_ms = e.lasted.as_millis() as u64, "Lease requests work again");
            }
        }
        match result {
            Ok(true) => {
                last_renew = Some(Instant::now());
                if !leading {
                    info!(lease = %format!("{}/{}", s.namespace, s.name), identity = %s.identity, "became the leader: writing Service status and Events");
                }
                set(&tx, true);
            }
            Ok(false) => {
                if leading {
                    info!(identity = %s.identity, "lost the Lease; following");
                }
                set(&tx, false);
            }
            Err(e) => {
                match failing.hit(&(), std::time::Instant::now()) {
                    Verdict::First => {
                        warn!(error = %e, lease = %s.name, "Lease request failed; retrying")
                    }
                    Verdict::Reminder { unlogged, lasting } => {
                        warn!(error = %e, lease = %s.name, errors_since_last_line = unlogged + 1, failing_for_s = lasting.as_secs(), "Lease requests still failing; retrying")
                    }
                    Verdict::Quiet => debug!(error = %e, lease = %s.name, "Lease request failed"),
                }
                if leading && last_renew.is_none_or(|t| t.elapsed() >= s.renew_deadline) {
                    warn!(identity = %s.identity, "could not renew the Lease within the renew deadline; stepping down");
                    set(&tx, false);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(s.retry) => {}
            _ = &mut stop => {
                if *tx.borrow() {
                    release(&api, &s).await;
                }
                set(&tx, false);
                return;
            }
        }
    }
}

/// Publishes `leading` only when it differs, so that receivers wake on transitions and not
/// on every renewal.
fn set(tx: &watch::Sender<bool>, leading: bool) {
    tx.send_if_modified(|l| std::mem::replace(l, leading) != leading);
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// One round: `Ok(true)` when this instance holds the Lease afterwards.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    s: &LeaseSettings,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(&s.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(s.name.clone()),
                namespace: Some(s.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(s.identity.clone()),
                lease_duration_seconds: Some(secs(s.duration)),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let renew = spec.renew_time.as_ref().map(|t| t.0);
    let changed = observed
        .as_ref()
        .is_none_or(|o| o.holder != holder || o.renew != renew);
    if changed {
        *observed = Some(Observed {
            holder: holder.clone(),
            renew,
            at: Instant::now(),
        });
    }
    let duration = spec
        .lease_duration_seconds
        .filter(|d| *d > 0)
        .map_or(s.duration, |d| Duration::from_secs(d as u64));
    let expired = observed
        .as_ref()
        .is_some_and(|o| o.at.elapsed() >= duration);
    let mine = holder == s.identity;
    if !mine && !holder.is_empty() && !expired {
        return Ok(false);
    }
    let mut new_spec = spec.clone();
    new_spec.holder_identity = Some(s.identity.clone());
    new_spec.lease_duration_seconds = Some(secs(s.duration));
    new_spec.renew_time = Some(now());
    if !mine {
        new_spec.acquire_time = Some(now());
        new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    lease.spec = Some(new_spec);
    match api.replace(&s.name, &PostParams::default(), &lease).await {
        Ok(l) => {
            let spec = l.spec.unwrap_or_default();
            *observed = Some(Observed {
                holder: spec.holder_identity.unwrap_or_default(),
                renew: spec.renew_time.map(|t| t.0),
                at: Instant::now(),
            });
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

async fn release(api: &Api<Lease>, s: &LeaseSettings) {
    let Ok(Some(mut lease)) = api.get_opt(&s.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(s.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    match api.replace(&s.name, &PostParams::default(), &lease).await {
        Ok(_) => info!(identity = %s.identity, "released the Lease"),
        Err(e) => {
            warn!(error = %e, "could not release the Lease; a standby takes over when it expires")
        }
    }
}
