//! # Who is alive
//!
//! [`Members`] takes the heartbeats that passed the HMAC check and the clock, and says which
//! hosts are live: this one always, a peer from its first valid heartbeat until `dead_after`
//! intervals pass without one. A heartbeat is accepted only from a listed host, from that
//! host's listed address, with a `seq` above the last one of the same `boot`, and within the
//! allowed clock skew; everything else is counted by reason and changes nothing.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::message::Heartbeat;
use crate::config::L2Config;

/// How far a heartbeat's clock may differ from ours before it counts as a replay.
pub const MAX_SKEW_MS: u64 = 5_000;

/// Why a heartbeat was dropped (the counters `sluicectl l2` and the metrics show).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dropped {
    /// Not a heartbeat (magic, version, length, name).
    Malformed,
    /// The HMAC does not match the shared key.
    BadKey,
    /// From a host name not in `l2.peers`.
    UnknownHost,
    /// A listed name from an address that is not that host's.
    WrongAddress,
    /// An old `seq` of the sender's current boot, or a clock outside the skew: a replay.
    Replay,
    /// Our own name from another address: a host configured with our name.
    OwnName,
}

impl Dropped {
    /// Every reason, in the order the counters are shown.
    pub const ALL: [Dropped; 6] = [
        Dropped::Malformed,
        Dropped::BadKey,
        Dropped::UnknownHost,
        Dropped::WrongAddress,
        Dropped::Replay,
        Dropped::OwnName,
    ];

    /// The reason's name in the API and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Dropped::Malformed => "malformed",
            Dropped::BadKey => "bad_key",
            Dropped::UnknownHost => "unknown_host",
            Dropped::WrongAddress => "wrong_address",
            Dropped::Replay => "replay",
            Dropped::OwnName => "own_name",
        }
    }
}

/// One peer's state.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its listed address.
    pub address: IpAddr,
    /// When its last valid heartbeat arrived.
    pub last: Option<Instant>,
    /// Its current boot and the last seq of it.
    pub boot: u64,
    /// The last accepted seq of `boot`.
    pub seq: u64,
    /// Live now.
    pub alive: bool,
    /// Times it came up and went down.
    pub transitions: u64,
}

impl Peer {
    /// A listed peer not heard from yet.
    fn new(address: IpAddr) -> Peer {
        Peer {
            address,
            last: None,
            boot: 0,
            seq: 0,
            alive: false,
            transitions: 0,
        }
    }
}

/// The membership table of one host.
#[derive(Debug)]
pub struct Members {
    me: String,
    my_address: Option<IpAddr>,
    dead: Duration,
    peers: BTreeMap<String, Peer>,
    drops: BTreeMap<Dropped, u64>,
    received: u64,
}

impl Members {
    /// The table for `cfg` (validated): every listed peer but this host, none alive yet.
    pub fn new(cfg: &L2Config) -> Self {
        Members {
            me: cfg.host.clone(),
            my_address: cfg.me().map(|p| p.address),
            dead: Duration::from_millis(cfg.interval_ms * u64::from(cfg.dead_after)),
            peers: cfg
                .peers
                .iter()
                .filter(|p| p.name != cfg.host)
                .map(|p| (p.name.clone(), Peer::new(p.address)))
                .collect(),
            drops: BTreeMap::new(),
            received: 0,
        }
    }

    /// L2 membership from Leases: the hosts of `roster` (this one left out) become the peers;
    /// a new one starts not alive, one that left is forgotten. Returns whether a live peer left.
    pub fn set_roster(&mut self, roster: &[(String, IpAddr)]) -> bool {
        let mut changed = false;
        let keep: BTreeMap<&str, IpAddr> = roster
            .iter()
            .filter(|(n, _)| *n != self.me)
            .map(|(n, a)| (n.as_str(), *a))
            .collect();
        self.peers.retain(|n, p| {
            let stay = keep.get(n.as_str()) == Some(&p.address);
            changed |= !stay && p.alive;
            stay
        });
        for (n, a) in keep {
            self.peers
                .entry(n.to_owned())
                .or_insert_with(|| Peer::new(a));
        }
        changed
    }

    /// Counts a drop.
    pub fn count_drop(&mut self, why: Dropped) {
        *self.drops.entry(why).or_default() += 1;
    }

    /// Takes a heartbeat (its HMAC already checked) from `from` at `now` (`unix_ms`: our
    /// clock). Returns whether a peer came up; a refused one is counted.
    pub fn receive(&mut self, hb: &Heartbeat, from: IpAddr, now: Instant, unix_ms: u64) -> bool {
        if hb.host == self.me {
            // Our own heartbeat looped back (multicast, or our address listed): ignore; from
            // anywhere else it is a host that thinks it is us.
            if Some(from) != self.my_address {
                self.count_drop(Dropped::OwnName);
            }
            return false;
        }
        let Some(p) = self.peers.get_mut(&hb.host) else {
            self.count_drop(Dropped::UnknownHost);
            return false;
        };
        if p.address != from {
            self.count_drop(Dropped::WrongAddress);
            return false;
        }
        if hb.unix_ms.abs_diff(unix_ms) > MAX_SKEW_MS || (hb.boot == p.boot && hb.seq <= p.seq) {
            self.count_drop(Dropped::Replay);
            return false;
        }
        p.boot = hb.boot;
        p.seq = hb.seq;
        p.last = Some(now);
        self.received += 1;
        if !p.alive {
            p.alive = true;
            p.transitions += 1;
            return true;
        }
        false
    }

    /// Marks peers silent for longer than `dead_after` intervals as gone; returns whether one
    /// went.
    pub fn expire(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for p in self.peers.values_mut() {
            if p.alive && p.last.is_none_or(|t| now.duration_since(t) > self.dead) {
                p.alive = false;
                p.transitions += 1;
                changed = true;
            }
        }
        changed
    }

    /// The live hosts, this one included.
    pub fn live(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.alive)
            .map(|(n, _)| n.clone())
            .collect();
        v.push(self.me.clone());
        v.sort();
        v
    }

    /// Every peer (not this host).
    pub fn peers(&self) -> &BTreeMap<String, Peer> {
        &self.peers
    }

    /// Drops by reason.
    pub fn drops(&self) -> &BTreeMap<Dropped, u64> {
        &self.drops
    }

    /// Heartbeats accepted.
    pub fn received(&self) -> u64 {
        self.received
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::L2Peer;

    fn cfg() -> L2Config {
        L2Config {
            host: "h1".into(),
            interface: "eth0".into(),
            key: Some("0123456789abcdef".into()),
            key_file: None,
            port: 7946,
            interval_ms: 100,
            dead_after: 3,
            garp_count: 3,
            garp_interval_ms: 500,
            membership: crate::config::L2Membership::Static,
            peers: vec![
                L2Peer {
                    name: "h1".into(),
                    address: "10.0.0.1".parse().unwrap(),
                },
                L2Peer {
                    name: "h2".into(),
                    address: "10.0.0.2".parse().unwrap(),
                },
            ],
        }
    }

    fn hb(host: &str, boot: u64, seq: u64, unix_ms: u64) -> Heartbeat {
        Heartbeat {
            host: host.into(),
            boot,
            seq,
            unix_ms,
        }
    }

    #[test]
    fn up_on_first_heartbeat_down_after_dead_interval() {
        let mut m = Members::new(&cfg());
        let t0 = Instant::now();
        let h2: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(m.live(), ["h1"]);
        assert!(m.receive(&hb("h2", 7, 1, 1000), h2, t0, 1000));
        assert_eq!(m.live(), ["h1", "h2"]);
        assert!(!m.receive(
            &hb("h2", 7, 2, 1100),
            h2,
            t0 + Duration::from_millis(100),
            1100
        ));
        assert!(!m.expire(t0 + Duration::from_millis(400)));
        assert!(m.expire(t0 + Duration::from_millis(401)));
        assert_eq!(m.live(), ["h1"]);
        // A restart: a new boot starts again at seq 1 and is accepted.
        assert!(m.receive(&hb("h2", 8, 1, 2000), h2, t0 + Duration::from_secs(1), 2000));
        assert_eq!(m.peers()["h2"].transitions, 3);
    }

    #[test]
    fn roster_adds_and_removes_peers() {
        let mut c = cfg();
        c.peers.truncate(1);
        let mut m = Members::new(&c);
        assert!(m.peers().is_empty());
        let h3: IpAddr = "10.0.0.3".parse().unwrap();
        let me: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(!m.set_roster(&[("h1".into(), me), ("h3".into(), h3)]));
        assert_eq!(m.peers().keys().collect::<Vec<_>>(), ["h3"]);
        let t0 = Instant::now();
        assert!(m.receive(&hb("h3", 1, 1, 1000), h3, t0, 1000));
        assert_eq!(m.live(), ["h1", "h3"]);
        // h3's Lease expires: it leaves, alive or not.
        assert!(m.set_roster(&[("h1".into(), me)]));
        assert_eq!(m.live(), ["h1"]);
        assert!(!m.receive(&hb("h3", 1, 2, 1000), h3, t0, 1000));
        assert_eq!(m.drops()[&Dropped::UnknownHost], 1);
    }

    #[test]
    fn forged_and_replayed_heartbeats_are_dropped_and_counted() {
        let mut m = Members::new(&cfg());
        let t0 = Instant::now();
        let h2: IpAddr = "10.0.0.2".parse().unwrap();
        let stranger: IpAddr = "10.0.0.66".parse().unwrap();
        assert!(!m.receive(&hb("h9", 1, 1, 1000), h2, t0, 1000));
        assert!(!m.receive(&hb("h2", 1, 1, 1000), stranger, t0, 1000));
        assert!(!m.receive(&hb("h1", 1, 1, 1000), stranger, t0, 1000));
        assert!(m.receive(&hb("h2", 1, 5, 1000), h2, t0, 1000));
        assert!(!m.receive(&hb("h2", 1, 5, 1000), h2, t0, 1000)); // same seq
        assert!(!m.receive(&hb("h2", 1, 4, 1000), h2, t0, 1000)); // older seq
        assert!(!m.receive(&hb("h2", 2, 1, 4000), h2, t0, 10_000)); // stale clock
        let d = m.drops();
        assert_eq!(d[&Dropped::UnknownHost], 1);
        assert_eq!(d[&Dropped::WrongAddress], 1);
        assert_eq!(d[&Dropped::OwnName], 1);
        assert_eq!(d[&Dropped::Replay], 3);
        assert_eq!(m.received(), 1);
    }
}
