//! # L2 mode: one owner per VIP among the hosts of a segment
//!
//! Hosts learn who is alive from authenticated heartbeats ([`message`]) sent over the kernel
//! interface `l2.interface` to every listed peer, every `l2.interval_ms`; a peer silent for
//! `l2.dead_after` intervals is gone ([`members`]). Each VIP's owner is the rendezvous winner
//! among the live hosts that can serve it ([`owner`]); only the owner answers ARP/NDP for it
//! (the snapshot's silent set) and a new owner announces it with a burst of gratuitous ARPs /
//! unsolicited NAs (the [`crate::announce::Announcer`]).
//!
//! A host claims nothing until it has listened for one dead interval (so it knows the live
//! peers before it takes their VIPs) and its workers run. Heartbeats stop while the workers do
//! not poll, so a host whose dataplane is stuck loses its VIPs to the others.
pub mod members;
pub mod message;
pub mod owner;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice_dataplane::stats::WorkerStats;
use tokio::net::UdpSocket;
use tracing::{info, warn};

use crate::config::L2Config;
use members::{Dropped, Members};
use message::unix_ms;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why L2 mode cannot start.
#[derive(Debug, thiserror::Error)]
pub enum L2Error {
    /// A configuration problem (key, fix).
    #[error("{0}: {1}")]
    Config(String, String),
    /// The heartbeat socket.
    #[error("l2: cannot open the heartbeat socket on {interface} port {port}: {error}; check that the interface exists and the port is free")]
    Socket {
        /// `l2.interface`.
        interface: String,
        /// `l2.port`.
        port: u16,
        /// The OS error.
        error: std::io::Error,
    },
}

/// Which hosts can serve each VIP, for VIPs that not every host can serve: those whose
/// Services all have `externalTrafficPolicy: Local` can be served by the hosts (Kubernetes
/// node names, `l2.host`) with a ready endpoint of one of them. VIPs absent from the map can
/// be served by any host.
pub fn eligibility(
    model: &crate::model::Model,
    report: &crate::compile::CompileReport,
) -> HashMap<IpAddr, BTreeSet<String>> {
    use crate::model::TrafficPolicy;
    let mut any: BTreeSet<IpAddr> = BTreeSet::new();
    let mut local: HashMap<IpAddr, BTreeSet<String>> = HashMap::new();
    for s in &report.services {
        let Some(svc) = model.services.get(&s.service) else {
            continue;
        };
        if svc.external_traffic_policy != TrafficPolicy::Local {
            any.extend(s.vips.iter().copied());
            continue;
        }
        let nodes: BTreeSet<String> = model
            .slices_of(&s.service)
            .flat_map(|sl| sl.endpoints.iter())
            .filter(|e| e.ready)
            .filter_map(|e| e.node_name.clone())
            .collect();
        for v in &s.vips {
            local.entry(*v).or_default().extend(nodes.iter().cloned());
        }
    }
    local.retain(|v, _| !any.contains(v));
    local
}

/// L2 mode's state: membership (shared with the heartbeat tasks) and the ownership last
/// computed.
pub struct L2 {
    cfg: L2Config,
    members: Arc<Mutex<Members>>,
    changed: tokio::sync::watch::Receiver<u64>,
    listen_until: Instant,
    workers_run: bool,
    owners: BTreeMap<IpAddr, Option<String>>,
    ownership_changes: u64,
    boot: u64,
}

impl std::fmt::Debug for L2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L2").field("host", &self.cfg.host).finish()
    }
}

fn socket(cfg: &L2Config, v6: bool) -> Result<UdpSocket, L2Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    let e = |error| L2Error::Socket {
        interface: cfg.interface.clone(),
        port: cfg.port,
        error,
    };
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(e)?;
    if v6 {
        s.set_only_v6(true).map_err(e)?;
    }
    s.set_reuse_address(true).map_err(e)?;
    s.bind_device(Some(cfg.interface.as_bytes())).map_err(e)?;
    let any: IpAddr = if v6 {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    s.bind(&SocketAddr::new(any, cfg.port).into()).map_err(e)?;
    s.set_nonblocking(true).map_err(e)?;
    UdpSocket::from_std(s.into()).map_err(e)
}

impl L2 {
    /// Opens the heartbeat sockets and starts sending and receiving (on the current tokio
    /// runtime). `workers`: the workers' counters; heartbeats stop while they do not poll.
    ///
    /// # Errors
    /// [`L2Error`]: the key file, the interface or the socket.
    pub fn start(
        cfg: &L2Config,
        workers: Vec<Arc<WorkerStats>>,
        roster: Option<tokio::sync::watch::Receiver<crate::sources::kubernetes::members::Roster>>,
    ) -> Result<L2, L2Error> {
        cfg.check_interface(std::path::Path::new("/sys/class/net"))
            .map_err(|(k, m)| L2Error::Config(k, m))?;
        let key: Arc<[u8]> = cfg
            .key_bytes()
            .map_err(|(k, m)| L2Error::Config(k, m))?
            .into();
        let members = Arc::new(Mutex::new(Members::new(cfg)));
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let tx = Arc::new(tx);
        let boot = {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)
        };
        let mut sockets = Vec::new();
        let me = cfg.me().map(|p| p.address);
        for v6 in [false, true] {
            let used = cfg.peers.iter().any(|p| p.address.is_ipv6() == v6)
                || me.is_some_and(|a| a.is_ipv6() == v6);
            if !used {
                continue;
            }
            let s = Arc::new(socket(cfg, v6)?);
            sockets.push((v6, s.clone()));
            tokio::spawn(receive(s, key.clone(), members.clone(), tx.clone()));
        }
        if let Some(mut r) = roster {
            let (members, tx) = (members.clone(), tx.clone());
            tokio::spawn(async move {
                loop {
                    let roster = r.borrow_and_update().clone();
                    if lock(&members).set_roster(&roster) {
                        tx.send_modify(|g| *g += 1);
                    }
                    if r.changed().await.is_err() {
                        return;
                    }
                }
            });
        }
        tokio::spawn(send(
            cfg.clone(),
            sockets,
            key,
            boot,
            members.clone(),
            tx,
            workers,
        ));
        let listen = Duration::from_millis(cfg.interval_ms * u64::from(cfg.dead_after));
        info!(host = %cfg.host, interface = %cfg.interface, port = cfg.port, peers = cfg.peers.len() - 1, listen_ms = listen.as_millis() as u64, "L2 mode: heartbeats started; listening before claiming VIPs");
        Ok(L2 {
            cfg: cfg.clone(),
            members,
            changed: rx,
            listen_until: Instant::now() + listen,
            workers_run: false,
            owners: BTreeMap::new(),
            ownership_changes: 0,
            boot,
        })
    }

    /// The workers run what is published: this host may claim VIPs (after listening).
    pub fn set_workers_run(&mut self) {
        self.workers_run = true;
    }

    /// Resolves when membership changes (or the listening period ends); for the control loop.
    pub async fn changed(&mut self) {
        let wait_listen = self.listen_until.saturating_duration_since(Instant::now());
        if !wait_listen.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait_listen) => {}
                _ = self.changed.changed() => {}
            }
            return;
        }
        if self.changed.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether this host may own VIPs now.
    pub fn ready(&self) -> bool {
        self.workers_run && Instant::now() >= self.listen_until
    }

    /// This host's name.
    pub fn host(&self) -> &str {
        &self.cfg.host
    }

    /// The hosts alive now (this one included).
    pub fn live(&self) -> BTreeSet<String> {
        lock(&self.members).live().into_iter().collect()
    }

    /// The Events for VIPs this host has just come to own: one per Service, naming the VIPs,
    /// this host and its interface (the cluster learns which host announces a Service).
    pub fn announced_events(
        &self,
        gained: &BTreeSet<IpAddr>,
        report: &crate::compile::CompileReport,
    ) -> Vec<crate::sources::kubernetes::HostEvent> {
        report
            .services
            .iter()
            .filter_map(|s| {
                let v: Vec<String> = s
                    .vips
                    .iter()
                    .filter(|v| gained.contains(v))
                    .map(ToString::to_string)
                    .collect();
                (!v.is_empty()).then(|| crate::sources::kubernetes::HostEvent {
                    service: s.service.clone(),
                    reason: "L2Announced",
                    warning: false,
                    action: "Announce",
                    note: format!(
                        "VIP {} announced by host {} on {} (L2 mode: this host answers ARP/NDP for it)",
                        v.join(", "),
                        self.cfg.host,
                        self.cfg.interface
                    ),
                })
            })
            .collect()
    }

    /// The gratuitous ARP burst: (count, interval).
    pub fn garp(&self) -> (u32, Duration) {
        (
            self.cfg.garp_count,
            Duration::from_millis(self.cfg.garp_interval_ms),
        )
    }

    /// Computes each VIP's owner among the live hosts, `eligible(vip, host)` saying whether a
    /// host can serve a VIP. Returns the VIPs this host owns. Logs and counts every change.
    pub fn assign(
        &mut self,
        vips: &BTreeSet<IpAddr>,
        eligible: impl Fn(IpAddr, &str) -> bool,
    ) -> BTreeSet<IpAddr> {
        let live = lock(&self.members).live();
        let me = self.cfg.host.clone();
        let ready = self.ready();
        let mut new = BTreeMap::new();
        for &v in vips {
            let o = owner::owner(
                v,
                live.iter()
                    .map(String::as_str)
                    .filter(|h| (*h != me || ready) && eligible(v, h)),
            )
            .map(str::to_owned);
            new.insert(v, o);
        }
        for (v, o) in &new {
            let old = self.owners.get(v);
            if old.is_some_and(|x| x == o) {
                continue;
            }
            if old.is_some() || o.as_deref() == Some(me.as_str()) {
                self.ownership_changes += 1;
                info!(vip = %v, owner = o.as_deref().unwrap_or("(none)"), previous = old.and_then(|x| x.as_deref()).unwrap_or("(none)"), "L2: VIP owner changed");
            }
        }
        self.owners = new;
        self.owners
            .iter()
            .filter(|(_, o)| o.as_deref() == Some(me.as_str()))
            .map(|(v, _)| *v)
            .collect()
    }

    /// The API's view.
    pub fn view(&self) -> crate::admin::api::L2Status {
        use crate::admin::api::{L2PeerRow, L2Status};
        let m = lock(&self.members);
        let now = Instant::now();
        L2Status {
            host: self.cfg.host.clone(),
            interface: self.cfg.interface.clone(),
            ready: self.ready(),
            boot: self.boot,
            live: m.live(),
            peers: m
                .peers()
                .iter()
                .map(|(n, p)| L2PeerRow {
                    name: n.clone(),
                    address: p.address,
                    alive: p.alive,
                    last_heartbeat_ms_ago: p.last.map(|t| now.duration_since(t).as_millis() as u64),
                    transitions: p.transitions,
                })
                .collect(),
            vips: self
                .owners
                .iter()
                .map(|(v, o)| crate::admin::api::L2Vip {
                    vip: *v,
                    owner: o.clone(),
                })
                .collect(),
            owned: self
                .owners
                .values()
                .filter(|o| o.as_deref() == Some(self.cfg.host.as_str()))
                .count() as u64,
            ownership_changes: self.ownership_changes,
            heartbeats_received: m.received(),
            dropped: Dropped::ALL
                .iter()
                .map(|d| (d.name().to_owned(), m.drops().get(d).copied().unwrap_or(0)))
                .collect(),
        }
    }
}

/// Receives heartbeats on `s` until the runtime stops.
async fn receive(
    s: Arc<UdpSocket>,
    key: Arc<[u8]>,
    members: Arc<Mutex<Members>>,
    tx: Arc<tokio::sync::watch::Sender<u64>>,
) {
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = match s.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "L2: heartbeat receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut m = lock(&members);
        let hb = match message::decode(&buf[..n], &key) {
            Ok(hb) => hb,
            Err(message::Invalid::Malformed) => {
                m.count_drop(Dropped::Malformed);
                continue;
            }
            Err(message::Invalid::BadKey) => {
                m.count_drop(Dropped::BadKey);
                continue;
            }
        };
        let from = match from.ip() {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4),
            a => a,
        };
        if m.receive(&hb, from, Instant::now(), unix_ms()) {
            info!(peer = %hb.host, address = %from, "L2: peer up");
            drop(m);
            tx.send_modify(|g| *g += 1);
        }
    }
}

/// Sends a heartbeat to every peer each interval while the workers poll, and expires silent
/// peers.
async fn send(
    cfg: L2Config,
    sockets: Vec<(bool, Arc<UdpSocket>)>,
    key: Arc<[u8]>,
    boot: u64,
    members: Arc<Mutex<Members>>,
    tx: Arc<tokio::sync::watch::Sender<u64>>,
    workers: Vec<Arc<WorkerStats>>,
) {
    let period = Duration::from_millis(cfg.interval_ms);
    // The first tick one period from now, so the workers have had a period to poll.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let mut polls: Vec<u64> = workers.iter().map(|w| w.polls.load(Relaxed)).collect();
    let mut stalled = false;
    let mut buf = [0u8; message::MAX_LEN];
    loop {
        tick.tick().await;
        // The dataplane must be alive for this host to keep its VIPs.
        let now_polls: Vec<u64> = workers.iter().map(|w| w.polls.load(Relaxed)).collect();
        let stuck = now_polls.iter().zip(&polls).any(|(a, b)| a == b);
        polls = now_polls;
        if stuck != stalled {
            stalled = stuck;
            if stuck {
                warn!("L2: a worker stopped polling; no heartbeats until it polls again");
            } else {
                info!("L2: workers poll again; heartbeats resume");
            }
        }
        if !stalled {
            seq += 1;
            let n = message::encode(
                &message::Heartbeat::now(&cfg.host, boot, seq),
                &key,
                &mut buf,
            );
            let targets: Vec<IpAddr> = lock(&members).peers().values().map(|p| p.address).collect();
            for t in targets {
                if let Some((_, s)) = sockets.iter().find(|(v6, _)| *v6 == t.is_ipv6()) {
                    // A peer that is down answers with ICMP errors; they change nothing.
                    let _ = s.send_to(&buf[..n], SocketAddr::new(t, cfg.port)).await;
                }
            }
        }
        let gone: Vec<String> = {
            let mut m = lock(&members);
            let before: BTreeSet<String> = m.live().into_iter().collect();
            if m.expire(Instant::now()) {
                let after: BTreeSet<String> = m.live().into_iter().collect();
                before.difference(&after).cloned().collect()
            } else {
                Vec::new()
            }
        };
        if !gone.is_empty() {
            for g in &gone {
                warn!(peer = %g, "L2: peer gone (no heartbeat for l2.dead_after intervals)");
            }
            tx.send_modify(|g| *g += 1);
        }
    }
}

#[cfg(test)]
mod tests;
