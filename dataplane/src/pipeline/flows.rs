//! # Flow dumps for the admin API
//!
//! Off the packet path: one keyed lookup of a 5-tuple, or a scan of a family's forward table
//! for a client's flows, which a worker spreads over many millisecond ticks.
use std::net::IpAddr;

use super::{Family, Fwd, Pipeline};
use crate::conntrack::{FlowKey, FlowState, Key};

/// One tracked forward flow, as [`Pipeline::flows_from`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowEntry {
    /// Client address.
    pub src: IpAddr,
    /// VIP.
    pub dst: IpAddr,
    /// Client port.
    pub sport: u16,
    /// VIP port.
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Backend and NAT local port.
    pub fwd: Fwd,
    /// Protocol state.
    pub state: FlowState,
    /// When the flow was last seen, on the worker's millisecond clock.
    pub last_seen_ms: u32,
}

impl Pipeline {
    /// Looks up the forward flow of a client 5-tuple (admin/diagnostics, off the hot path):
    /// a keyed lookup with the snapshot's hash seed, which neither refreshes the entry nor
    /// counts in the hit/miss statistics.
    pub fn find_flow(
        &self,
        seed: u64,
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        dport: u16,
        proto: u8,
    ) -> Option<(Fwd, FlowState, u32)> {
        fn find<F: Family>(
            p: &Pipeline,
            seed: u64,
            k: Option<Key<F>>,
        ) -> Option<(Fwd, FlowState, u32)> {
            let k = k?;
            F::tables(&p.flows)
                .fwd
                .get(&k, k.flow_hash(seed))
                .map(|e| (*e.value(), e.state(), e.last_seen_ms()))
        }
        fn key<F: Family>(
            src: IpAddr,
            dst: IpAddr,
            sport: u16,
            dport: u16,
            proto: u8,
        ) -> Option<Key<F>> {
            Some(Key::new(
                F::of_ip(src)?,
                F::of_ip(dst)?,
                sport,
                dport,
                proto,
            ))
        }
        match src {
            IpAddr::V4(_) => find::<[u8; 4]>(self, seed, key(src, dst, sport, dport, proto)),
            IpAddr::V6(_) => find::<[u8; 16]>(self, seed, key(src, dst, sport, dport, proto)),
        }
    }

    /// Forward flows of client `src` (any port, VIP and protocol), at most `max`, in table
    /// order (admin/diagnostics: a linear scan of one family's table, off the hot path).
    pub fn flows_from(&self, src: IpAddr, max: usize) -> Vec<FlowEntry> {
        let mut out = Vec::new();
        self.flows_from_slots(src, 0, usize::MAX, &mut out);
        out.truncate(max);
        out
    }

    /// Slots in the forward table of `src`'s family (the range of [`Pipeline::flows_from_slots`]).
    pub fn flow_slots(&self, src: IpAddr) -> usize {
        match src {
            IpAddr::V4(_) => self.flows.v4.fwd.capacity(),
            IpAddr::V6(_) => self.flows.v6.fwd.capacity(),
        }
    }

    /// Appends to `out` the forward flows of client `src` held in slots `start..start + count`
    /// of its family's table: an admin scan a worker spreads over many millisecond ticks, so
    /// that no tick holds up its packets for long. Returns the next slot to scan, or `None`
    /// when the table is done.
    pub fn flows_from_slots(
        &self,
        src: IpAddr,
        start: usize,
        count: usize,
        out: &mut Vec<FlowEntry>,
    ) -> Option<usize> {
        match src {
            IpAddr::V4(a) => self.collect::<[u8; 4]>(a.octets(), start, count, out),
            IpAddr::V6(a) => self.collect::<[u8; 16]>(a.octets(), start, count, out),
        }
    }

    /// [`Pipeline::flows_from_slots`] in family `F`'s table.
    fn collect<F: Family>(
        &self,
        src: F,
        start: usize,
        count: usize,
        out: &mut Vec<FlowEntry>,
    ) -> Option<usize> {
        let t = &F::tables(&self.flows).fwd;
        out.extend(t.entries_in(start, count).filter_map(|e| {
            let k = *e.key();
            ({ k.src } == src).then_some(FlowEntry {
                src: src.ip(),
                dst: { k.dst }.ip(),
                sport: k.sport,
                dport: k.dport,
                proto: k.proto,
                fwd: *e.value(),
                state: e.state(),
                last_seen_ms: e.last_seen_ms(),
            })
        }));
        let next = start.saturating_add(count);
        (next < t.capacity()).then_some(next)
    }
}
