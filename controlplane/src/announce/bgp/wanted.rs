//! Which addresses to announce, from what the daemon last published.
//!
//! A VIP is announced while its Service has at least one ready backend on a frontend of that
//! VIP: state `Active` in the compile report (not draining, not failing its health check) and
//! a known next-hop MAC (the workers drop traffic to a backend whose next hop is unresolved);
//! the pool whose range holds the VIP picks its advertisement settings. The host's
//! `[nat] addresses` are always announced, so backend replies come back to the host that owns
//! the flow; with `[sync]`, the peers' NAT addresses too, as backups with a longer AS path. A
//! drained or stopping host announces nothing.
use std::collections::BTreeSet;
use std::net::IpAddr;

use sluice_dataplane::snapshot::BackendState;

use super::prefixes::Announcement;
use crate::compile::CompileReport;
use crate::config::Config;

/// The addresses to announce for `report` under `cfg`; nothing when `withdrawn` (drained or
/// stopping). Sorted, without duplicates.
pub fn wanted(cfg: &Config, report: &CompileReport, withdrawn: bool) -> Vec<Announcement> {
    if withdrawn {
        return Vec::new();
    }
    let ready: BTreeSet<IpAddr> = report
        .services
        .iter()
        .flat_map(|s| &s.frontends)
        .filter(|f| {
            f.backends
                .iter()
                .any(|b| b.state == BackendState::Active && b.mac.is_some())
        })
        .map(|f| f.vip)
        .collect();
    let vips = ready.into_iter().map(|vip| match cfg.pool_of(vip) {
        Some(p) => Announcement::vip(vip, &p.name),
        None => Announcement::host(vip),
    });
    let nat = cfg.nat.addresses.iter().copied().map(Announcement::host);
    // Flow sync: the peers' NAT addresses as backups, so that replies to them reach this
    // host, which holds their synced flows, once a peer's own announcement is gone.
    let peers = cfg
        .sync
        .iter()
        .flat_map(|y| y.peer_nat_addresses())
        .map(Announcement::backup);
    let all: BTreeSet<Announcement> = vips.chain(nat).chain(peers).collect();
    all.into_iter().collect()
}

#[cfg(test)]
mod tests;
