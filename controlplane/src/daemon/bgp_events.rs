//! # Telling the operator when a Service's VIP is announced or withdrawn over BGP
//!
//! The BGP task ([`super::bgp`]) calls [`Notifier::update`] after every prefix set BIRD
//! accepted. The notifier compares, per Service, the VIPs now announced with those announced
//! before, and for each Service whose set changed logs one line at info and, in Kubernetes
//! mode, hands one Event to the status writer ([`HostEvents`]): `BGPAnnounced` naming the new
//! VIPs, or `BGPWithdrawn` with the cause (no ready backend, host drained, sluiced stopping).
//! Both name this host and the peers with their session state right now. Nothing is reported
//! while nothing changes.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use tracing::info;

use crate::admin::api;
use crate::announce::bgp::{Announcement, PrefixSet};
use crate::compile::CompileReport;
use crate::config::BgpConfig;
use crate::model::ObjectKey;
use crate::sources::kubernetes::{HostEvent, HostEvents};

/// Each Service's VIPs, from a compile report.
pub(super) type Owners = Arc<BTreeMap<ObjectKey, Vec<IpAddr>>>;

/// The Services' VIPs in `report`.
pub(super) fn owners(report: &CompileReport) -> Owners {
    Arc::new(
        report
            .services
            .iter()
            .filter(|s| !s.vips.is_empty())
            .map(|s| (s.service.clone(), s.vips.clone()))
            .collect(),
    )
}

/// Why a VIP is not announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Cause {
    /// Its Service has no ready backend on it (or the host is not forwarding it yet).
    #[default]
    NoReadyBackend,
    /// `sluicectl host drain`.
    Drained,
    /// SIGTERM/SIGINT.
    Stopping,
}

impl Cause {
    fn text(self) -> &'static str {
        match self {
            Cause::NoReadyBackend => "no ready backend",
            Cause::Drained => "host drained",
            Cause::Stopping => "sluiced stopping",
        }
    }

    fn action(self) -> &'static str {
        match self {
            Cause::NoReadyBackend => "WithdrawNoReadyBackend",
            Cause::Drained => "WithdrawDrained",
            Cause::Stopping => "WithdrawStopping",
        }
    }
}

/// Where announcement changes go: the log always, the cluster in Kubernetes mode.
pub(super) struct Notifier {
    host: String,
    sink: Option<HostEvents>,
    /// The configured peers `(name, address)`, for messages before BIRD was first read.
    configured: Vec<(String, IpAddr)>,
    /// Per Service, the VIPs announced after the last update.
    announced: BTreeMap<ObjectKey, BTreeSet<IpAddr>>,
}

impl Notifier {
    /// Reports as `host` (the instance's identity), to `sink` when given.
    pub(super) fn new(host: String, sink: Option<HostEvents>, cfg: &BgpConfig) -> Notifier {
        Notifier {
            host,
            sink,
            configured: cfg
                .peers
                .iter()
                .map(|p| {
                    let name = p.name.clone().unwrap_or_else(|| p.address.to_string());
                    (name, p.address)
                })
                .collect(),
            announced: BTreeMap::new(),
        }
    }

    /// After BIRD accepted `accepted` for `wanted`: reports every Service of `owners` whose
    /// announced VIPs changed; a VIP no longer announced is reported with `cause`. `peers` is
    /// the last read of the sessions (empty before the first).
    pub(super) fn update(
        &mut self,
        owners: &Owners,
        wanted: &[Announcement],
        accepted: &PrefixSet,
        cause: Cause,
        peers: &[api::BgpPeer],
    ) {
        let prefixes = accepted.prefixes();
        let on: BTreeSet<IpAddr> = wanted
            .iter()
            .map(|a| a.addr)
            .filter(|a| prefixes.iter().any(|p| p.contains(a)))
            .collect();
        let mut now: BTreeMap<ObjectKey, BTreeSet<IpAddr>> = BTreeMap::new();
        for (svc, vips) in owners.iter() {
            let set: BTreeSet<IpAddr> = vips.iter().copied().filter(|v| on.contains(v)).collect();
            let before = self.announced.get(svc);
            let up: Vec<IpAddr> = set
                .iter()
                .filter(|v| !before.is_some_and(|b| b.contains(*v)))
                .copied()
                .collect();
            let down: Vec<IpAddr> = before
                .map(|b| b.difference(&set).copied().collect())
                .unwrap_or_default();
            if !up.is_empty() {
                self.report(svc, &up, None, peers);
            }
            if !down.is_empty() {
                self.report(svc, &down, Some(cause), peers);
            }
            if !set.is_empty() {
                now.insert(svc.clone(), set);
            }
        }
        for (svc, vips) in &self.announced {
            if !owners.contains_key(svc) {
                info!(service = %svc, vips = %list(vips.iter()), host = %self.host, "BGP: VIP withdrawn: the Service is no longer served");
            }
        }
        self.announced = now;
    }

    fn report(
        &self,
        svc: &ObjectKey,
        vips: &[IpAddr],
        withdrawn: Option<Cause>,
        peers: &[api::BgpPeer],
    ) {
        let peers = self.peers(peers);
        let what = if vips.len() == 1 { "VIP" } else { "VIPs" };
        let vips = list(vips.iter());
        let (reason, action, note) = match withdrawn {
            None => (
                "BGPAnnounced",
                "Announce",
                format!("{what} {vips} announced by host {} to {peers}", self.host),
            ),
            Some(c) => (
                "BGPWithdrawn",
                c.action(),
                format!(
                    "{what} {vips} withdrawn by host {} ({}) from {peers}",
                    self.host,
                    c.text()
                ),
            ),
        };
        info!(service = %svc, "BGP: {note}");
        if let Some(s) = &self.sink {
            s.send(HostEvent {
                service: svc.clone(),
                reason,
                warning: false,
                action,
                note,
            });
        }
    }

    /// `tor_v4 (10.98.0.1, Established), tor_v6 (fd00:98::1, Active)`.
    fn peers(&self, read: &[api::BgpPeer]) -> String {
        if read.is_empty() {
            return self
                .configured
                .iter()
                .map(|(n, a)| format!("{n} ({a}, state not read yet)"))
                .collect::<Vec<_>>()
                .join(", ");
        }
        read.iter()
            .map(|p| format!("{} ({}, {})", p.name, p.address, p.state))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn list<'a>(vips: impl Iterator<Item = &'a IpAddr>) -> String {
    vips.map(ToString::to_string).collect::<Vec<_>>().join(", ")
}
