//! # Announcing VIPs and finding next hops
//!
//! What the network must learn from Sluice, and what Sluice must learn from it, beyond the
//! packets it forwards. Today that is layer 2, carried out by worker 0 on the daemon's
//! behalf ([`Command`]s on its control channel):
//! - [`Announcer::vips`]: every VIP this host comes to answer for (each VIP that appears; in
//!   L2 mode each VIP it comes to own) is announced with a burst of gratuitous ARPs (IPv4) or
//!   unsolicited Neighbour Advertisements (IPv6): `l2.garp_count` of them, `l2.garp_interval_ms`
//!   apart (3, 500 ms apart, without `[l2]`), so a neighbour that missed one still learns.
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
use std::time::{Duration, Instant};

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
    /// Announcements still to send: (VIP, how many more, when the next).
    burst: Vec<(IpAddr, u32, Instant)>,
    /// Announcements per new VIP, and their spacing.
    garp: (u32, Duration),
    /// Resolving and refreshing next hops.
    next_hops: NextHops,
}

impl Announcer {
    /// An announcer that sends through `to` (worker 0's commands) from `cfg`'s first port.
    pub fn new(cfg: &Config, to: Option<Sender<Command>>) -> Self {
        let garp = cfg
            .l2
            .as_ref()
            .map_or((3, Duration::from_millis(500)), |l| {
                (l.garp_count, Duration::from_millis(l.garp_interval_ms))
            });
        Announcer {
            to,
            announced: BTreeSet::new(),
            burst: Vec::new(),
            garp,
            next_hops: NextHops::new(cfg),
        }
    }

    /// The VIPs this host answers ARP/NDP for, as last given to [`Announcer::vips`].
    pub fn announced(&self) -> &BTreeSet<IpAddr> {
        &self.announced
    }

    /// `vips` is the set this host answers for now: starts a burst of announcements for each
    /// one not announced before, and stops the bursts of those it no longer answers for.
    pub fn vips(&mut self, vips: BTreeSet<IpAddr>) {
        if let Some(c) = &self.to {
            let now = Instant::now();
            for v in vips.difference(&self.announced) {
                let _ = c.try_send(Command::Announce(*v));
                if self.garp.0 > 1 {
                    self.burst.push((*v, self.garp.0 - 1, now + self.garp.1));
                }
            }
        }
        self.burst.retain(|(v, _, _)| vips.contains(v));
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
        let Some(c) = &self.to else { return };
        self.next_hops.tick(c, unresolved, all);
        // The bursts' announcements that are due.
        let now = Instant::now();
        for (v, left, next) in &mut self.burst {
            if *next <= now {
                let _ = c.try_send(Command::Announce(*v));
                *left -= 1;
                *next = now + self.garp.1;
            }
        }
        self.burst.retain(|(_, left, _)| *left > 0);
    }
}
