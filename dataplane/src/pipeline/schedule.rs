//! # Scheduling: conntrack -> affinity -> Maglev
//!
//! Which backend a packet to a VIP goes to: its tracked flow's, else (a new flow) its
//! client's ClientIP affinity, else Maglev's pick over the live backends; a new flow is
//! recorded in the forward table (and, for `nat`, given a port: [`super::nat`]). Fragments of
//! `dsr-*` Services are balanced by 3-tuple without tracking.
use super::{
    allowed, dsr, flow_hash, flow_state, next_state, pick, raw_ip, Aff, Choice, Family, Fwd, Hint,
    PacketBuf, Pipeline, VipFlow, MAX_AFFINITY_MS,
};
use super::{closed, displaced_flow, nat::NatFlow};
use crate::conntrack::{Entry, FlowState, Insert, Inserted, Key};
use crate::snapshot::{Backend, BackendState, Method, Snapshot, SynProxy};
use crate::stats::{bump, DropReason};
use crate::wire::parse::{Fragment, Parsed};
use crate::wire::{proto, tcp::flags};

use super::Verdict;

impl Pipeline {
    /// A TCP/UDP packet to a VIP that the fast path did not match to a frontend: a port not
    /// served, or a fragment.
    #[inline(always)]
    pub(super) fn vip_packet<F: Family, P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        pkt: &mut P,
        p: &Parsed,
        now_ms: u32,
    ) -> Verdict {
        let f = if p.fragment == Fragment::Later {
            match snap.dsr_frontend_any_port(&p.dst, F::V6, p.proto) {
                Some(f) => f,
                None => {
                    return Verdict::Drop(if snap.frontends().any(|f| raw_ip(f.vip) == p.dst) {
                        DropReason::NatFragment
                    } else {
                        DropReason::PortNotServed
                    })
                }
            }
        } else {
            match snap.frontend_for(&p.dst, F::V6, p.proto, p.dport) {
                Some(f) => f,
                None => return Verdict::Drop(DropReason::PortNotServed),
            }
        };
        if p.fragment == Fragment::No {
            let flow = VipFlow {
                p,
                f,
                h: flow_hash::<F>(snap, p),
                hint: Hint::NONE,
                now_ms,
                proxy: None,
            };
            return self.vip_flow::<F, P>(snap, pkt, &flow);
        }
        if !allowed::<F>(f, p) {
            return Verdict::Drop(DropReason::SourceDenied);
        }
        if f.method == Method::Nat {
            return Verdict::Drop(DropReason::NatFragment);
        }
        // 3-tuple: every fragment of a datagram goes to the same backend, untracked.
        let (src, dst) = (F::from_raw(&p.src), F::from_raw(&p.dst));
        let h = F::hash_5tuple(snap.hash_seed, src, dst, 0, 0, p.proto);
        let Some(b) = pick(snap, f, h) else {
            return Verdict::Drop(DropReason::NoBackend);
        };
        dsr::send::<F, P>(snap, pkt, p, f.method, b)
    }

    /// Conntrack, then affinity, then Maglev. Inserts new flows; `src_mac` is the MAC the
    /// packet came from (a NAT flow's replies go back there).
    #[inline(always)]
    pub(super) fn schedule<'s, F: Family>(
        &mut self,
        snap: &'s Snapshot,
        flow: &VipFlow<'_>,
        src_mac: [u8; 6],
    ) -> Result<Choice<'s>, DropReason> {
        let &VipFlow {
            p,
            f,
            h,
            hint,
            now_ms,
            proxy,
        } = flow;
        let tcp = p.proto == proto::TCP;
        let fl = p.tcp_flags;
        let (src, dst) = (F::from_raw(&p.src), F::from_raw(&p.dst));
        let key = Key::new(src, dst, p.sport, p.dport, p.proto);
        // Established flow?
        let stats = &self.stats;
        let gone = |e: &Entry<Key<F>, Fwd>| closed(stats, e.value());
        let hit = F::tables_mut(&mut self.flows)
            .fwd
            .lookup_epoch(&key, h, hint.slot, now_ms, gone)
            .map(|(e, first)| {
                let old = e.state();
                let v = *e.value();
                // A proxied flow stays embryonic until its backend's SYN-ACK comes back.
                let new = if v.flags & Fwd::HANDSHAKE != 0 {
                    old
                } else {
                    next_state(old, tcp, fl)
                };
                e.set_state(new);
                if v.synced() {
                    e.value_mut().flags &= !Fwd::SYNCED;
                }
                (v, old, new, first)
            });
        // A miss leaves the key absent (an expired entry was freed): insert without a search.
        let mut absent = hit.is_none();
        // A proxied frontend's closing flow whose client port opens a new connection: the
        // ACK with a valid cookie ends the old flow and opens the new one.
        let mut cookie = None;
        let hit = match (hit, proxy) {
            (Some(hv), Some(sa))
                if f.syn_proxy.enabled()
                    && hv.1 == FlowState::TcpClosing
                    && fl & flags::FIN == 0 =>
            {
                cookie = self.valid_cookie::<F>(p, sa, now_ms);
                if cookie.is_some() {
                    self.end_fwd::<F>(&key, h, &hv.0);
                    self.end_rev::<F>(snap, p.proto, &hv.0);
                    absent = true;
                    None
                } else {
                    Some(hv)
                }
            }
            (hit, _) => hit,
        };
        if let Some((v, old, new, first)) = hit {
            // An `auto` frontend counts its embryonic flows: one opened or one completed.
            if matches!(f.syn_proxy, SynProxy::Auto { .. })
                && (old == FlowState::TcpSynSent) != (new == FlowState::TcpSynSent)
                && v.flags & (Fwd::PROXIED | Fwd::SYNCED) == 0
            {
                let d = if new == FlowState::TcpSynSent { 1 } else { -1 };
                self.auto_embryonic(f, d);
            }
            if v.synced() {
                // A peer's flow whose packets now come here: ours from now on.
                let ours = Fwd {
                    flags: v.flags & !Fwd::SYNCED,
                    ..v
                };
                self.adopt::<F>(snap, &key, &ours, new, src_mac);
            } else if new != old && matches!(new, FlowState::TcpEstablished | FlowState::TcpClosing)
            {
                self.publish::<F>(snap, &key, &v, new, src_mac);
            }
            if let Some(b) = snap.backend(v.backend) {
                // A NAT flow's reverse entry lives as long as its forward one: refreshed with
                // it (whatever becomes of this packet), in the same state, whenever this
                // packet is the forward entry's first of an epoch or changes its state (the
                // halves then share an epoch and a state, and so their expiry). If it is gone
                // (evicted), so is the flow.
                let whole = f.method != Method::Nat
                    || v.nat_port == 0
                    || (!first && new == old)
                    || self.touch_rev::<F>(snap, p.proto, b, &v, new, now_ms)
                    || {
                        self.end_fwd::<F>(&key, h, &v);
                        absent = true;
                        false
                    };
                // The flow keeps its backend while its next hop is unresolved (a restored
                // flow before the first ARP/NDP answer): drop, the client retransmits.
                if whole && b.mac.is_none() && !syn_only(tcp, fl) {
                    return Err(DropReason::NextHopUnresolved);
                }
                // A SYN on a closing flow is a new connection on a reused port: it keeps the
                // old backend only while that backend takes new connections.
                let reused = old == FlowState::TcpClosing && syn_only(tcp, fl);
                // A SYN forwarded to a SYN-proxied flow (by an `auto` proxy not engaged) is a
                // connection of its own, with no sequence offset: it does not keep the entry.
                let unproxied = v.proxied() && syn_only(tcp, fl);
                if whole
                    && b.mac.is_some()
                    && (f.method != Method::Nat || v.nat_port != 0)
                    && !(reused && b.state != BackendState::Active)
                    && !unproxied
                {
                    if reused {
                        // The old connection ended and a new one began on the same entry.
                        self.reopened(&v);
                    }
                    return Ok(Choice {
                        backend: b,
                        nat_port: v.nat_port,
                        nat_addr: v.nat_addr,
                        flags: v.flags,
                        seq: v.seq,
                        opened: None,
                    });
                }
            }
            // The backend left the snapshot (or the method changed): schedule anew below.
            // A NAT flow ends here, its entry freed rather than kept (refreshed by this
            // lookup) for a backend that may come back without the flow's reverse entry.
            if f.method == Method::Nat && !absent && snap.backend(v.backend).is_none() {
                self.end_fwd::<F>(&key, h, &v);
                absent = true;
            }
        }
        if tcp && f.method == Method::Nat && !syn_only(tcp, fl) {
            if !f.syn_proxy.enabled() {
                return Err(DropReason::TcpNoFlow);
            }
            // A SYN-proxied frontend: only an ACK returning a valid cookie opens a flow.
            if cookie.is_none() {
                cookie = proxy.and_then(|sa| self.valid_cookie::<F>(p, sa, now_ms));
            }
            if cookie.is_none() {
                return Err(DropReason::SynProxyBadCookie);
            }
        }
        // A new flow: within its frontend's budgets (a check only where a limit is set).
        if f.flow_limit.is_some() || f.source_flow_limit.is_some() {
            if let Err(why) = self.limits.admit(f, p, F::V6, now_ms) {
                if let Some(c) = self.stats.frontends.get(f.id as usize) {
                    c.limited(why);
                }
                return Err(why);
            }
        }
        let chosen = match f.affinity_ms {
            Some(aff_ms) => self.affinity::<F>(snap, flow, aff_ms),
            None => match hint.pick.and_then(|id| snap.backend(id)) {
                Some(b) => Some(b),
                None => pick(snap, f, h),
            },
        };
        let Some(b) = chosen else {
            return Err(DropReason::NoBackend);
        };
        if b.mac.is_none() {
            return Err(DropReason::NextHopUnresolved);
        }
        // A proxied flow is embryonic until the backend's SYN-ACK; its replies are marked.
        let (st, rev_mac, proxy_flags, seq) = match (cookie, proxy) {
            (Some(_), Some((_, ack))) => {
                let mut m = src_mac;
                m[0] |= super::Rev::<F>::PROXIED;
                let flags = Fwd::PROXIED | Fwd::HANDSHAKE;
                (FlowState::TcpSynSent, m, flags, ack.wrapping_sub(1))
            }
            _ => (flow_state(tcp, fl), src_mac, 0, 0),
        };
        let (nat_port, nat_addr) = if f.method == Method::Nat {
            let nf = NatFlow {
                p,
                b,
                h,
                st,
                now_ms,
                src_mac: rev_mac,
                // A snapshot holds only frontend ids below MAX_FRONTENDS (2^16).
                frontend: f.id as u16,
            };
            self.alloc_nat::<F>(snap, &nf, hint.rev)?
        } else {
            (0, 0)
        };
        let val = Fwd {
            backend: b.id,
            nat_port,
            nat_addr,
            flags: proxy_flags,
            seq,
        };
        let mode = if absent { Insert::New } else { Insert::Replace };
        // Into the slot the burst's prefetch found free, if it still is.
        let displaced = F::tables_mut(&mut self.flows)
            .fwd
            .insert_at(key, h, val, st, now_ms, mode, hint.slot);
        displaced_flow(&self.stats, &displaced);
        // The reverse entry of the flow this one displaced goes with it: an evicted flow's,
        // or the previous flow of this 5-tuple (a reused port, a backend gone).
        match displaced {
            Inserted::Evicted { key, value } => self.end_rev::<F>(snap, key.proto, &value),
            Inserted::Replaced { old } => self.end_rev::<F>(snap, p.proto, &old),
            Inserted::Refused => {
                // Nothing stored (a handshake never evicts an established flow): the reverse
                // entry `alloc_nat` recorded goes too.
                self.end_rev::<F>(snap, p.proto, &val);
                return Err(DropReason::FlowTableFull);
            }
            _ => {}
        }
        bump(&self.stats.new_flows, 1);
        if let Some(c) = self.stats.targets.get(b.id as usize) {
            bump(&c.new_flows, 1);
        }
        if let SynProxy::Auto { .. } = f.syn_proxy {
            if proxy_flags != 0 {
                self.auto_returned(f);
            } else if st == FlowState::TcpSynSent {
                self.auto_embryonic(f, 1);
            }
        }
        // A TCP flow is published once established; a UDP or other flow at birth.
        if !tcp && self.sync.is_some() {
            self.publish::<F>(snap, &key, &val, st, src_mac);
        }
        Ok(Choice {
            backend: b,
            nat_port,
            nat_addr,
            flags: proxy_flags,
            seq,
            opened: cookie.map(|(_, isn)| isn),
        })
    }

    /// Counts a connection reopened on a closing flow's entry (a reused client port that
    /// keeps its backend): one flow closed and one new, so that new flows count connections
    /// and active flows still equal the entries held.
    #[cold]
    #[inline(never)]
    fn reopened(&self, v: &Fwd) {
        closed(&self.stats, v);
        bump(&self.stats.new_flows, 1);
        if let Some(c) = self.stats.targets.get(v.backend as usize) {
            bump(&c.new_flows, 1);
        }
    }

    /// ClientIP affinity for a new flow: the client's backend while its affinity lasts and
    /// the backend is active and still the frontend's, else Maglev on the client address
    /// alone; (re)records the affinity for `aff_ms`.
    #[inline(always)]
    fn affinity<'s, F: Family>(
        &mut self,
        snap: &'s Snapshot,
        flow: &VipFlow<'_>,
        aff_ms: u32,
    ) -> Option<&'s Backend> {
        let &VipFlow { p, f, now_ms, .. } = flow;
        let (src, dst) = (F::from_raw(&p.src), F::from_raw(&p.dst));
        let key = Key::new(src, dst, 0, p.dport, p.proto);
        let ak_h = F::hash_5tuple(snap.hash_seed, src, dst, 0, p.dport, p.proto);
        let t = F::tables_mut(&mut self.flows);
        let mut chosen = None;
        if let Some(a) = t
            .aff
            .lookup(&key, ak_h, crate::conntrack::NO_SLOT, now_ms, |_| {})
        {
            let a = *a.value();
            if (a.expires_ms.wrapping_sub(now_ms) as i32) > 0 {
                chosen = snap
                    .backend(a.backend)
                    .filter(|b| b.state == BackendState::Active && f.backends.contains(&b.id));
            }
        }
        if chosen.is_none() {
            // Maglev on the client address alone: the same client lands on the same backend
            // on every worker and every Sluice host.
            let ch = F::hash_5tuple(snap.hash_seed, src, F::default(), 0, 0, 0);
            chosen = pick(snap, f, ch);
        }
        if let Some(b) = chosen {
            let val = Aff {
                backend: b.id,
                expires_ms: now_ms.wrapping_add(aff_ms.min(MAX_AFFINITY_MS)),
            };
            let _ = t
                .aff
                .insert(key, ak_h, val, FlowState::Other, now_ms, Insert::Replace);
        }
        chosen
    }
}

/// Whether a packet opens a TCP connection: SYN without ACK.
#[inline(always)]
fn syn_only(tcp: bool, fl: u8) -> bool {
    tcp && fl & (flags::SYN | flags::ACK) == flags::SYN
}
