//! Next-hop resolution: ARP requests and Neighbour Solicitations for backends and gateways
//! whose MAC the compiler does not know, repeated while unresolved and refreshed periodically.
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use sluice_dataplane::worker::Command;

use crate::config::Config;

/// How often unresolved next hops are asked for again.
const RETRY: Duration = Duration::from_millis(500);
/// How often every next hop is asked for again, so a moved backend is relearned.
const REFRESH: Duration = Duration::from_secs(30);

/// Where requests come from and when they were last sent.
#[derive(Debug)]
pub struct NextHops {
    /// The first port's first IPv4 and IPv6 addresses: the sender of requests.
    from_v4: Option<IpAddr>,
    from_v6: Option<IpAddr>,
    last_retry: Instant,
    last_refresh: Instant,
}

impl NextHops {
    /// Requests go out from `cfg`'s first port.
    pub fn new(cfg: &Config) -> Self {
        let port = cfg.ports.first();
        NextHops {
            from_v4: port.and_then(|p| p.ipv4.first().map(|n| IpAddr::V4(n.addr()))),
            from_v6: port.and_then(|p| p.ipv6.first().map(|n| IpAddr::V6(n.addr()))),
            last_retry: Instant::now(),
            last_refresh: Instant::now(),
        }
    }

    /// Sends one request per target that has a source address of its family.
    pub fn resolve(&self, to: &Sender<Command>, targets: &BTreeSet<IpAddr>) {
        for t in targets {
            let from = match t {
                IpAddr::V4(_) => self.from_v4,
                IpAddr::V6(_) => self.from_v6,
            };
            if let Some(from) = from {
                let _ = to.try_send(Command::Resolve { target: *t, from });
            }
        }
    }

    /// Retries `unresolved` and refreshes `all` when their periods are up.
    pub fn tick(
        &mut self,
        to: &Sender<Command>,
        unresolved: &BTreeSet<IpAddr>,
        all: &BTreeSet<IpAddr>,
    ) {
        if !unresolved.is_empty() && self.last_retry.elapsed() >= RETRY {
            self.resolve(to, unresolved);
            self.last_retry = Instant::now();
        }
        if self.last_refresh.elapsed() >= REFRESH {
            self.resolve(to, all);
            self.last_refresh = Instant::now();
        }
    }
}
