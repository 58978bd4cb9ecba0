//! # L2 mode's membership from Leases
//!
//! With `l2.membership = "leases"` each Sluice host holds a `coordination.k8s.io/v1` Lease of
//! its own, `sluice-l2-<host>` in the Lease namespace, labelled `sluice.dev/l2-member=true`
//! and annotated with its heartbeat address (`sluice.dev/l2-address`), renewed every second.
//! Every host lists those Leases each second; the roster is every Lease renewed within its
//! `leaseDurationSeconds`, judged by this host's clock from when it *observed* the renewal
//! (as the leader election does), so clock skew between hosts does not matter. The roster
//! says who may send heartbeats; the heartbeats (docs/l2.md) still say who is alive.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams};
use kube::Client;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

/// The label that marks a host's L2 Lease.
pub const MEMBER_LABEL: &str = "sluice.dev/l2-member";
/// The annotation with the host's heartbeat address.
pub const ADDRESS_ANNOTATION: &str = "sluice.dev/l2-address";

/// This host's L2 Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSettings {
    /// Namespace of the Leases.
    pub namespace: String,
    /// This host's name (`l2.host`).
    pub host: String,
    /// Its heartbeat address.
    pub address: IpAddr,
    /// `leaseDurationSeconds`: a host whose Lease is not renewed for this long leaves.
    pub duration: Duration,
    /// How often the Lease is renewed and the others are read.
    pub every: Duration,
}

/// The hosts with a live L2 Lease, and their addresses (this host included once its own
/// Lease is written).
pub type Roster = Vec<(String, IpAddr)>;

/// Starts renewing this host's Lease and reading the others'; the receiver sees each new
/// roster.
pub fn spawn(client: Client, s: MemberSettings) -> watch::Receiver<Roster> {
    let (tx, rx) = watch::channel(Vec::new());
    tokio::spawn(run(client, s, tx));
    rx
}

fn lease_name(host: &str) -> String {
    format!("sluice-l2-{host}")
}

async fn run(client: Client, s: MemberSettings, tx: watch::Sender<Roster>) {
    let api: Api<Lease> = Api::namespaced(client, &s.namespace);
    // Per Lease: the renewTime last seen and when this host saw it change.
    let mut seen: BTreeMap<String, (Option<Timestamp>, Instant)> = BTreeMap::new();
    let mut failing = false;
    loop {
        let r = async {
            renew(&api, &s).await?;
            api.list(&ListParams::default().labels(&format!("{MEMBER_LABEL}=true")))
                .await
        }
        .await;
        match r {
            Ok(list) => {
                failing = false;
                let now = Instant::now();
                let mut roster = Roster::new();
                for l in list.items {
                    let name = l.metadata.name.clone().unwrap_or_default();
                    let spec = l.spec.unwrap_or_default();
                    let renewed = spec.renew_time.map(|t| t.0);
                    let entry = seen.entry(name).or_insert((renewed, now));
                    if entry.0 != renewed {
                        *entry = (renewed, now);
                    }
                    let duration = spec
                        .lease_duration_seconds
                        .filter(|d| *d > 0)
                        .map_or(s.duration, |d| Duration::from_secs(d as u64));
                    if now.duration_since(entry.1) > duration {
                        continue;
                    }
                    let host = spec.holder_identity.unwrap_or_default();
                    let addr = l
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(ADDRESS_ANNOTATION))
                        .and_then(|a| a.parse::<IpAddr>().ok());
                    if let (false, Some(a)) = (host.is_empty(), addr) {
                        roster.push((host, a));
                    }
                }
                roster.sort();
                roster.dedup_by(|a, b| a.0 == b.0);
                tx.send_if_modified(|r| {
                    let changed = *r != roster;
                    *r = roster;
                    changed
                });
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "L2: cannot renew or read the members' Leases; keeping the last roster");
                }
                failing = true;
            }
        }
        tokio::time::sleep(s.every).await;
    }
}

/// Creates or renews this host's Lease.
async fn renew(api: &Api<Lease>, s: &MemberSettings) -> Result<(), kube::Error> {
    let name = lease_name(&s.host);
    let now = MicroTime(Timestamp::now());
    let mut lease = api.get_opt(&name).await?.unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(s.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let create = lease.metadata.resource_version.is_none();
    lease
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(MEMBER_LABEL.to_owned(), "true".to_owned());
    lease
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(ADDRESS_ANNOTATION.to_owned(), s.address.to_string());
    let mut spec = lease.spec.take().unwrap_or_else(|| LeaseSpec {
        acquire_time: Some(now.clone()),
        ..LeaseSpec::default()
    });
    spec.holder_identity = Some(s.host.clone());
    spec.lease_duration_seconds = Some(s.duration.as_secs().max(1) as i32);
    spec.renew_time = Some(now);
    lease.spec = Some(spec);
    if create {
        api.create(&PostParams::default(), &lease).await?;
    } else {
        api.replace(&name, &PostParams::default(), &lease).await?;
    }
    Ok(())
}
