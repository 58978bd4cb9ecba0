//! # Announcing VIPs and finding next hops
//!
//! What the network must learn from Sluice, and what Sluice must learn from it, beyond the
//! packets it forwards. Today that is layer 2, carried out by worker 0 on the daemon's
//! behalf ([`Command`]s on its control channel):
//! - [`Announcer::vips`]: every VIP that appears is announced once with a gratuitous ARP
//!   (IPv4) or an unsolicited Neighbour Advertisement (IPv6).
//! - [`Announcer::resolve`] and [`Announcer::tick`] (`nexthops.rs`): next hops without a MAC
//!   are asked for (ARP request / Neighbour Solicitation) from the first port's address of
//!   their family, again every 500 ms while unresolved, and every known next hop is asked
//!   for again every 30 s so a moved backend is relearned.
//!
//! Routed announcements ([`bgp`]: VIPs and NAT addresses to routers through BIRD 2) live here
//! too, and layer-2 ownership among several Sluice hosts will; the control loop only says which
//! VIPs exist.
pub mod bgp;
mod nexthops;

use std::collections::BTreeSet;
use std::net::IpAddr;

use crossbeam_channel::Sender;
use sluice_dataplane::worker::Command;

use crate::config::Config;
use nexthops::NextHops;

/// Announces VIPs and resolves next hops through worker 0's command channel.
#[derive(Debug)]
pub struct Announcer {
    /// Worker 0's command channel; `None` before the workers run (nothing is sent).
    to: Option<Sender<Command>>,
    /// The VIPs announced so far.
    announced: BTreeSet<IpAddr>,
    /// Resolving and refreshing next hops.
    next_hops: NextHops,
}

impl Announcer {
    /// An announcer that sends through `to` (worker 0's commands) from `cfg`'s first port.
    pub fn new(cfg: &Config, to: Option<Sender<Command>>) -> Self {
        Announcer {
            to,
            announced: BTreeSet::new(),
            next_hops: NextHops::new(cfg),
        }
    }

    /// `vips` is the set served now: announces the ones not announced before.
    pub fn vips(&mut self, vips: BTreeSet<IpAddr>) {
        if let Some(c) = &self.to {
            for v in vips.difference(&self.announced) {
                let _ = c.try_send(Command::Announce(*v));
            }
        }
        self.announced = vips;
    }

    /// Asks for the MAC of each of `targets` now.
    pub fn resolve(&self, targets: &BTreeSet<IpAddr>) {
        if let Some(c) = &self.to {
            self.next_hops.resolve(c, targets);
        }
    }

    /// Called on the control loop's tick with the last report's `unresolved` next hops and
    /// all its `next_hops`: asks again for the unresolved ones every 500 ms and refreshes
    /// every next hop every 30 s.
    pub fn tick(&mut self, unresolved: &BTreeSet<IpAddr>, all: &BTreeSet<IpAddr>) {
        if let Some(c) = &self.to {
            self.next_hops.tick(c, unresolved, all);
        }
    }
}
