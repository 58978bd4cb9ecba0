//! # Flows kept across a planned restart
//!
//! Off the packet path. When a worker stops, [`Pipeline::export_flows`] copies its live
//! forward flows (both families) into [`SavedFlow`]s that name everything by address, never by
//! id: frontend and backend ids are not stable across processes. The next process resolves
//! each against its first snapshot ([`SavedFlow::resolve`]) and the worker that held it inserts
//! it before it polls ([`Pipeline::restore_flows`]): the forward entry and, for `nat`, the
//! reverse entry, which also keeps the NAT port from being handed out again.
use std::net::IpAddr;

use super::{displaced_flow, Family, Fwd, Pipeline, Rev};
use crate::conntrack::{Conntrack, Entry, FlowKey, FlowState, Insert, Inserted, Key};
use crate::snapshot::{Protocol, Snapshot};
use crate::stats::bump;

/// A forward flow as a worker saved it at stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedFlow {
    /// The worker that held it (and, for `nat`, owns its NAT port).
    pub worker: u16,
    /// Client address.
    pub client: IpAddr,
    /// Client port.
    pub client_port: u16,
    /// VIP (with `vip_port` and `proto`, the frontend).
    pub vip: IpAddr,
    /// VIP port.
    pub vip_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Backend address.
    pub backend: IpAddr,
    /// Backend port.
    pub backend_port: u16,
    /// Protocol state of the forward entry.
    pub state: FlowState,
    /// Milliseconds the forward entry had left before it expired.
    pub remaining_ms: u32,
    /// The NAT side, for a `nat` flow.
    pub nat: Option<SavedNat>,
    /// The SYN proxy's state, for a flow it opened.
    pub proxy: Option<SavedProxy>,
}

/// The SYN proxy's state of a [`SavedFlow`] it opened (`pipeline/synproxy.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedProxy {
    /// [`Fwd::seq`]: the sequence offset, or the cookie during the backend handshake.
    pub seq: u32,
    /// The backend's window scale (0 to 14; 0 during the handshake).
    pub backend_wscale: u8,
    /// The backend's SYN-ACK has not come back yet ([`Fwd::HANDSHAKE`]).
    pub handshake: bool,
}

impl SavedProxy {
    /// The one byte the flows file and sync messages keep besides [`SavedProxy::seq`]: the
    /// backend's window scale in the low four bits, the handshake flag in the top bit.
    pub fn flags_byte(&self) -> u8 {
        (self.backend_wscale & 0xf) | (u8::from(self.handshake) << 7)
    }

    /// The state from its sequence offset and [`SavedProxy::flags_byte`].
    pub fn from_parts(seq: u32, flags: u8) -> SavedProxy {
        SavedProxy {
            seq,
            backend_wscale: flags & 0xf,
            handshake: flags & 0x80 != 0,
        }
    }

    /// The proxy's part of a forward value, if the SYN proxy opened it.
    pub(super) fn of(v: &Fwd) -> Option<SavedProxy> {
        v.proxied().then(|| SavedProxy {
            seq: v.seq,
            backend_wscale: v.backend_wscale(),
            handshake: v.flags & Fwd::HANDSHAKE != 0,
        })
    }

    /// The forward value's flags and `seq` it stands for.
    pub(super) fn fwd_bits(p: Option<SavedProxy>) -> (u8, u32) {
        match p {
            None => (0, 0),
            Some(p) => {
                let hs = if p.handshake { Fwd::HANDSHAKE } else { 0 };
                (Fwd::PROXIED | hs | ((p.backend_wscale & 0xf) << 4), p.seq)
            }
        }
    }
}

/// The NAT side of a [`SavedFlow`]: its reverse entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedNat {
    /// NAT local address.
    pub addr: IpAddr,
    /// NAT local port.
    pub port: u16,
    /// MAC the client's packets came from (replies go there).
    pub client_mac: [u8; 6],
    /// Protocol state of the reverse entry.
    pub state: FlowState,
    /// Milliseconds the reverse entry had left before it expired.
    pub remaining_ms: u32,
}

/// A [`SavedFlow`] resolved against the new process's snapshot: what its worker inserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreFlow {
    /// The saved flow.
    pub flow: SavedFlow,
    /// Its frontend's id in the snapshot.
    pub frontend: u32,
    /// Its backend's id in the snapshot.
    pub backend: u32,
    /// Index of its NAT address among the snapshot's NAT addresses of its family (0 if none).
    pub nat_addr: u8,
}

/// Why a [`SavedFlow`] cannot be restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unrestorable {
    /// No frontend serves its VIP, port and protocol any more.
    #[error("frontend gone")]
    FrontendGone,
    /// Its backend is no longer one of the frontend's.
    #[error("backend gone")]
    BackendGone,
    /// Its NAT address is no longer one of ours.
    #[error("NAT address gone")]
    NatAddressGone,
    /// It expired before the new process started.
    #[error("expired")]
    Expired,
}

impl Unrestorable {
    /// Every reason, for counting.
    pub const ALL: [Unrestorable; 4] = [
        Unrestorable::FrontendGone,
        Unrestorable::BackendGone,
        Unrestorable::NatAddressGone,
        Unrestorable::Expired,
    ];
}

impl SavedFlow {
    /// The flow in `snap`'s ids: its frontend (same VIP, port and protocol), its backend (the
    /// frontend's backend with the same address and port) and its NAT address index.
    ///
    /// # Errors
    /// The [`Unrestorable`] reason when one of them is gone or the flow has expired.
    pub fn resolve(&self, snap: &Snapshot) -> Result<RestoreFlow, Unrestorable> {
        if self.remaining_ms == 0 || self.nat.is_some_and(|n| n.remaining_ms == 0) {
            return Err(Unrestorable::Expired);
        }
        let f = snap
            .frontend_for(
                &super::raw_ip(self.vip),
                self.vip.is_ipv6(),
                self.proto,
                self.vip_port,
            )
            .filter(|f| f.vip == self.vip && Protocol::number(f.protocol) == self.proto)
            .ok_or(Unrestorable::FrontendGone)?;
        let backend = f
            .backends
            .iter()
            .filter_map(|id| snap.backend(*id))
            .find(|b| b.addr == self.backend && b.port == self.backend_port)
            .ok_or(Unrestorable::BackendGone)?
            .id;
        let nat_addr = match &self.nat {
            None => 0,
            Some(n) => nat_index(snap, n.addr).ok_or(Unrestorable::NatAddressGone)?,
        };
        Ok(RestoreFlow {
            flow: *self,
            frontend: f.id,
            backend,
            nat_addr,
        })
    }
}

/// The index of `addr` among `snap`'s NAT addresses of its family.
fn nat_index(snap: &Snapshot, addr: IpAddr) -> Option<u8> {
    let l = &snap.local;
    let i = match addr {
        IpAddr::V4(a) => l.nat_ipv4.iter().position(|x| *x == a.octets()),
        IpAddr::V6(a) => l.nat_ipv6.iter().position(|x| *x == a.octets()),
    }?;
    u8::try_from(i).ok()
}

/// The last-seen time that leaves an entry in `state` of table `t` `remaining` ms at `now_ms`.
fn seen_at<K: FlowKey, V: Copy>(
    t: &Conntrack<K, V>,
    state: FlowState,
    remaining: u32,
    now_ms: u32,
) -> u32 {
    let timeout = t.timeout_ms(state);
    now_ms.wrapping_sub(timeout.saturating_sub(remaining.min(timeout)))
}

impl Pipeline {
    /// Appends this worker's live forward flows (both families) to `out`, resolved by address
    /// through `snap` (the snapshot the worker last ran): a flow whose backend has left the
    /// snapshot, or a `nat` flow without its reverse entry, is left out. Allocates; for a
    /// stopped worker only.
    pub fn export_flows(&self, snap: &Snapshot, now_ms: u32, out: &mut Vec<SavedFlow>) {
        out.reserve(self.flows.len());
        self.export::<[u8; 4]>(snap, now_ms, out);
        self.export::<[u8; 16]>(snap, now_ms, out);
    }

    /// [`Pipeline::export_flows`] of family `F`.
    fn export<F: Family>(&self, snap: &Snapshot, now_ms: u32, out: &mut Vec<SavedFlow>) {
        let t = F::tables(&self.flows);
        out.extend(
            t.fwd
                .entries_in(0, usize::MAX)
                .filter_map(|e| self.saved_of::<F>(snap, e, now_ms)),
        );
    }

    /// Forward entry `e` as a [`SavedFlow`] at `now_ms`: `None` if it has expired, its
    /// backend has left `snap`, or it is a `nat` flow without its reverse entry here.
    pub(super) fn saved_of<F: Family>(
        &self,
        snap: &Snapshot,
        e: &Entry<Key<F>, Fwd>,
        now_ms: u32,
    ) -> Option<SavedFlow> {
        let t = F::tables(&self.flows);
        let remaining_ms = t.fwd.remaining_ms(e, now_ms);
        let k = *e.key();
        let v = *e.value();
        let b = snap.backend(v.backend)?;
        if remaining_ms == 0 {
            return None;
        }
        let nat = if v.nat_port == 0 {
            None
        } else {
            Some(self.saved_nat::<F>(snap, &k, &v, now_ms)?)
        };
        Some(SavedFlow {
            worker: self.worker,
            client: { k.src }.ip(),
            client_port: k.sport,
            vip: { k.dst }.ip(),
            vip_port: k.dport,
            proto: k.proto,
            backend: b.addr,
            backend_port: b.port,
            state: e.state(),
            remaining_ms,
            nat,
            proxy: SavedProxy::of(&v),
        })
    }

    /// The live reverse entry of `nat` flow `k` -> `v`, if there is one.
    fn saved_nat<F: Family>(
        &self,
        snap: &Snapshot,
        k: &Key<F>,
        v: &Fwd,
        now_ms: u32,
    ) -> Option<SavedNat> {
        let b = snap.backend(v.backend)?;
        let addr = *F::nat(&snap.local).get(usize::from(v.nat_addr))?;
        let rk = Key::new(F::of_ip(b.addr)?, addr, b.port, v.nat_port, k.proto);
        let rev = &F::tables(&self.flows).rev;
        let r: &Entry<Key<F>, Rev<F>> = rev.get(&rk, rk.flow_hash(snap.hash_seed))?;
        let remaining_ms = rev.remaining_ms(r, now_ms);
        (remaining_ms > 0).then_some(SavedNat {
            addr: addr.ip(),
            port: v.nat_port,
            client_mac: r.value().client_mac,
            state: r.state(),
            remaining_ms,
        })
    }

    /// Inserts flows saved by the previous process and resolved against `snap` (the snapshot
    /// this worker starts with), each with the lifetime it had left, and counts them as new
    /// flows (active flows stay new minus closed). Returns how many were inserted (a flow of
    /// a family whose addresses do not match is skipped). Call before the worker polls.
    pub fn restore_flows(&mut self, snap: &Snapshot, flows: &[RestoreFlow], now_ms: u32) -> usize {
        flows
            .iter()
            .filter(|r| match r.flow.client {
                IpAddr::V4(_) => self.restore::<[u8; 4]>(snap, r, now_ms, false),
                IpAddr::V6(_) => self.restore::<[u8; 16]>(snap, r, now_ms, false),
            })
            .count()
    }

    /// [`Pipeline::restore_flows`] of one flow of family `F`; with `synced`, a flow synced
    /// from a peer ([`Pipeline::install_synced`]): its forward entry is flagged
    /// [`Fwd::SYNCED`] and not counted as a flow of ours, and its reverse entry, for a NAT
    /// address of our own, never replaces a flow that holds the port (the flow is then
    /// skipped and counted as a conflict).
    pub(super) fn restore<F: Family>(
        &mut self,
        snap: &Snapshot,
        r: &RestoreFlow,
        now_ms: u32,
        synced: bool,
    ) -> bool {
        let f = &r.flow;
        let (Some(client), Some(vip), Some(backend)) =
            (F::of_ip(f.client), F::of_ip(f.vip), F::of_ip(f.backend))
        else {
            return false;
        };
        let seed = snap.hash_seed;
        let t = F::tables_mut(&mut self.flows);
        // Both halves of a NAT flow get the forward entry's state and lifetime: they live and
        // die together (see `conntrack::EPOCH_MS`).
        let seen = seen_at(&t.fwd, f.state, f.remaining_ms, now_ms);
        let (nat_port, rev) = match &f.nat {
            None => (0, None),
            Some(n) => {
                let Some(addr) = F::of_ip(n.addr) else {
                    return false;
                };
                let rk = Key::new(backend, addr, f.backend_port, n.port, f.proto);
                let mut client_mac = n.client_mac;
                if f.proxy.is_some() {
                    // The mark that sends its replies through the proxy's translation.
                    client_mac[0] |= Rev::<F>::PROXIED;
                }
                let val = Rev {
                    client,
                    client_port: f.client_port,
                    client_mac,
                    // A snapshot holds only frontend ids below MAX_FRONTENDS (2^16).
                    frontend: r.frontend as u16,
                };
                let h = rk.flow_hash(seed);
                let own = usize::from(r.nat_addr) < F::nat_own(&snap.local).len();
                let mode = if synced && own {
                    Insert::IfAbsent
                } else {
                    Insert::Replace
                };
                match t.rev.insert(rk, h, val, f.state, seen, mode) {
                    Inserted::Kept => {
                        let same = t.rev.get(&rk, h).is_some_and(|e| *e.value() == val);
                        if !same {
                            bump(&self.stats.sync_conflicts, 1);
                            return false;
                        }
                    }
                    Inserted::Refused => return false,
                    _ => {}
                }
                (n.port, Some((rk, h)))
            }
        };
        let key = Key::new(client, vip, f.client_port, f.vip_port, f.proto);
        let (proxy_flags, seq) = SavedProxy::fwd_bits(f.proxy);
        let val = Fwd {
            backend: r.backend,
            nat_port,
            nat_addr: r.nat_addr,
            flags: if synced { Fwd::SYNCED } else { 0 } | proxy_flags,
            seq,
        };
        let h = key.flow_hash(seed);
        let displaced = t.fwd.insert(key, h, val, f.state, seen, Insert::Replace);
        displaced_flow(&self.stats, &displaced);
        if matches!(displaced, Inserted::Refused) {
            if let Some((rk, h)) = rev {
                t.rev.remove(&rk, h);
            }
            return false;
        }
        if synced {
            return true;
        }
        bump(&self.stats.new_flows, 1);
        if let Some(c) = self.stats.targets.get(r.backend as usize) {
            bump(&c.new_flows, 1);
        }
        true
    }
}
