//! # Flow sync between Sluice hosts: what a worker publishes and installs
//!
//! A worker **publishes** its flows, named by address as [`SavedFlow`]s, on a bounded
//! channel (the sync ring) that the control plane drains, batches, signs and sends to the
//! peer hosts (`controlplane/src/sync`):
//!
//! - a TCP flow when it becomes established and when it starts closing (a SYN alone is never
//!   published: a spoofed SYN flood costs the peers nothing), a UDP or other flow when it is
//!   born;
//! - a synced flow this worker forwards a packet of (it has moved here: the peers learn who
//!   carries it now);
//! - every own flow, a bounded piece per millisecond tick, during a *walk*
//!   ([`Pipeline::start_sync_walk`]): the periodic refresh that keeps the peers' copies alive,
//!   and a restarted peer's bulk transfer, which also sends the synced flows (the peer gets
//!   its own flows back).
//!
//! Publishing never blocks or allocates: a full ring drops the update and counts it
//! (`sync_ring_full`); a walk instead waits for room, a piece at a time.
//!
//! A worker **installs** synced flows resolved against its snapshot
//! ([`Pipeline::install_synced`]) as forward entries flagged [`Fwd::SYNCED`] (and, for `nat`,
//! the reverse entry, on every worker: replies go to the one that owns the NAT port here,
//! and the worker that gets the client's packets keeps both halves alive). A synced entry never
//! replaces an own one. The first packet of a synced flow clears the flag ("adopted"): the
//! flow keeps its backend, NAT address and NAT port, so the backend sees the same
//! connection, and its replies come to whichever host holds that NAT address (the origin
//! while it lives, a survivor after the takeover). A synced entry is not counted as a flow of
//! this host until adopted.
use crossbeam_channel::Sender;

use super::{Family, Fwd, Pipeline, RestoreFlow, SavedFlow, SavedNat};
use crate::conntrack::{FlowKey, FlowState, Key};
use crate::snapshot::Snapshot;
use crate::stats::bump;

/// Slots of the forward tables a walk reads per millisecond tick.
pub const WALK_SLOTS_PER_TICK: usize = 4096;

/// A walk of the forward tables: the next slot, counting the IPv4 table's slots first.
#[derive(Debug, Clone, Copy)]
pub(super) struct Walk {
    next: usize,
    /// Synced flows too (a bulk transfer), not only own ones (a refresh).
    all: bool,
}

impl Pipeline {
    /// Where this worker publishes its flows for the peer hosts (`None`: sync off).
    pub fn set_sync(&mut self, tx: Option<Sender<SavedFlow>>) {
        self.sync = tx;
    }

    /// Puts `f` on the sync ring, or counts it dropped if the ring is full.
    #[inline]
    fn put(&self, tx: &Sender<SavedFlow>, f: SavedFlow) {
        match tx.try_send(f) {
            Ok(()) => bump(&self.stats.sync_published, 1),
            Err(_) => bump(&self.stats.sync_ring_full, 1),
        }
    }

    /// Publishes forward flow `key` -> `v`, just seen in `state` from `client_mac`, if sync
    /// is on. Off the common path: called at a flow's birth or state change only.
    #[cold]
    #[inline(never)]
    pub(super) fn publish<F: Family>(
        &self,
        snap: &Snapshot,
        key: &Key<F>,
        v: &Fwd,
        state: FlowState,
        client_mac: [u8; 6],
    ) {
        let Some(tx) = &self.sync else { return };
        let Some(b) = snap.backend(v.backend) else {
            return;
        };
        let remaining_ms = F::tables(&self.flows).fwd.timeout_ms(state);
        let nat = match v.nat_port {
            0 => None,
            port => match F::nat(&snap.local).get(usize::from(v.nat_addr)) {
                Some(a) => Some(SavedNat {
                    addr: a.ip(),
                    port,
                    client_mac,
                    state,
                    remaining_ms,
                }),
                None => return,
            },
        };
        let f = SavedFlow {
            worker: self.worker,
            client: { key.src }.ip(),
            client_port: key.sport,
            vip: { key.dst }.ip(),
            vip_port: key.dport,
            proto: key.proto,
            backend: b.addr,
            backend_port: b.port,
            state,
            remaining_ms,
            nat,
            proxy: super::SavedProxy::of(v),
        };
        self.put(tx, f);
    }

    /// Starts (or restarts) a walk that publishes every own flow, and with `all` every synced
    /// one too; it goes on a piece per [`Pipeline::sync_walk_step`]. A walk already under way
    /// widens to `all` if asked.
    pub fn start_sync_walk(&mut self, all: bool) {
        let all = all || self.walk.is_some_and(|w| w.all);
        self.walk = Some(Walk { next: 0, all });
    }

    /// Whether a walk is under way.
    pub fn sync_walking(&self) -> bool {
        self.walk.is_some()
    }

    /// The next piece of the walk: publishes the own live flows among the next
    /// [`WALK_SLOTS_PER_TICK`] slots if the ring has room for all of them, else waits for the
    /// next call. Counts `sync_walks` when the walk ends. Allocates nothing.
    pub fn sync_walk_step(&mut self, snap: &Snapshot, now_ms: u32) {
        let (Some(w), Some(tx)) = (self.walk, &self.sync) else {
            self.walk = None;
            return;
        };
        let room = tx.capacity().unwrap_or(usize::MAX) - tx.len();
        if room < WALK_SLOTS_PER_TICK {
            return;
        }
        let n4 = self.flows.v4.fwd.capacity();
        let n6 = self.flows.v6.fwd.capacity();
        if w.next < n4 {
            self.walk_piece::<[u8; 4]>(snap, now_ms, tx, w.next, w.all);
        } else {
            self.walk_piece::<[u8; 16]>(snap, now_ms, tx, w.next - n4, w.all);
        }
        let next = w.next + WALK_SLOTS_PER_TICK;
        if next >= n4 + n6 {
            self.walk = None;
            bump(&self.stats.sync_walks, 1);
        } else {
            self.walk = Some(Walk { next, ..w });
        }
    }

    /// Publishes the live forward flows of family `F` in slots `start..start + piece`: own
    /// ones, and synced ones too with `all`.
    fn walk_piece<F: Family>(
        &self,
        snap: &Snapshot,
        now_ms: u32,
        tx: &Sender<SavedFlow>,
        start: usize,
        all: bool,
    ) {
        let t = F::tables(&self.flows);
        for e in t.fwd.entries_in(start, WALK_SLOTS_PER_TICK) {
            if e.value().synced() && !all {
                continue;
            }
            if let Some(f) = self.saved_of::<F>(snap, e, now_ms) {
                self.put(tx, f);
            }
        }
    }

    /// Installs flows synced from peer hosts as synced entries, each resolved against `snap`
    /// (see the module docs). Returns how many were installed; one that does not resolve
    /// (frontend, backend or NAT address unknown here) or meets an own flow is counted in
    /// `sync_conflicts`. Off the packet path.
    pub fn install_synced(&mut self, snap: &Snapshot, flows: &[SavedFlow], now_ms: u32) -> usize {
        let mut n = 0;
        for f in flows {
            let Ok(r) = f.resolve(snap) else {
                bump(&self.stats.sync_conflicts, 1);
                continue;
            };
            let done = match f.client {
                std::net::IpAddr::V4(_) => self.install::<[u8; 4]>(snap, &r, now_ms),
                std::net::IpAddr::V6(_) => self.install::<[u8; 16]>(snap, &r, now_ms),
            };
            if done {
                n += 1;
            }
        }
        bump(&self.stats.sync_installed, n as u64);
        n
    }

    /// [`Pipeline::install_synced`] of one flow of family `F`: skipped (and counted as a
    /// conflict) when an own entry holds its key.
    fn install<F: Family>(&mut self, snap: &Snapshot, r: &RestoreFlow, now_ms: u32) -> bool {
        let f = &r.flow;
        let (Some(client), Some(vip)) = (F::of_ip(f.client), F::of_ip(f.vip)) else {
            return false;
        };
        let key = Key::new(client, vip, f.client_port, f.vip_port, f.proto);
        let h = key.flow_hash(snap.hash_seed);
        let own = F::tables(&self.flows)
            .fwd
            .get(&key, h)
            .is_some_and(|e| !e.value().synced());
        if own {
            bump(&self.stats.sync_conflicts, 1);
            return false;
        }
        // Every worker holds the reverse entry too: replies reach the one that owns the NAT
        // port here, and whichever worker gets the client's packets keeps both halves alive.
        self.restore::<F>(snap, r, now_ms, true)
    }

    /// The first packet of synced flow `key` -> `v` on this worker: the flow is ours now.
    /// Counts it as a new flow of this host and tells the peers.
    #[cold]
    #[inline(never)]
    pub(super) fn adopt<F: Family>(
        &self,
        snap: &Snapshot,
        key: &Key<F>,
        v: &Fwd,
        state: FlowState,
        client_mac: [u8; 6],
    ) {
        bump(&self.stats.sync_adopted, 1);
        bump(&self.stats.new_flows, 1);
        if let Some(c) = self.stats.targets.get(v.backend as usize) {
            bump(&c.new_flows, 1);
        }
        self.publish::<F>(snap, key, v, state, client_mac);
    }
}
