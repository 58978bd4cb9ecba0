//! # Inspection for the fuzzer and the invariant tests (feature `check`, and `cargo test`)
//!
//! What [`crate::check`] needs from a pipeline besides its verdicts: a cheap reset, so that
//! the fuzzer reuses one pipeline and its tables across inputs instead of mapping them anew,
//! and the invariants of its tables, which only the pipeline can see. Never on the packet path.
use std::sync::Arc;

use super::{Family, Fwd, Pipeline, Rev};
use crate::conntrack::{FlowKey, Key};
use crate::snapshot::{Method, Snapshot};
use crate::stats::WorkerStats;

impl Pipeline {
    /// Forgets every flow, rewinds the NAT port cursors (as if built with `nat_port_start`
    /// 0) and counts from now on in `stats`: the pipeline as [`Pipeline::new`] left it,
    /// without allocating its tables again.
    pub fn reset(&mut self, stats: Arc<WorkerStats>) {
        self.flows.v4.fwd.clear();
        self.flows.v4.rev.clear();
        self.flows.v4.aff.clear();
        self.flows.v6.fwd.clear();
        self.flows.v6.rev.clear();
        self.flows.v6.aff.clear();
        self.ports.rewind();
        self.limits.reset();
        self.burst = super::burst::Burst::default();
        crate::stats::set(
            &stats.ct_capacity,
            (self.flows.v4.fwd.capacity() + self.flows.v6.fwd.capacity()) as u64,
        );
        self.stats = stats;
    }

    /// Checks the invariants of this worker's tables at `now_ms` under `snap`:
    /// - every table's occupancy counter equals the entries it holds, and its counters add up
    ///   (`len == inserts - evictions - expiries - removals`);
    /// - each backend's active flows (`new_flows - closed_flows`) equal the forward entries
    ///   that hold it;
    /// - both halves of a NAT flow exist together or not at all: a live forward entry of a
    ///   `nat` flow has a live reverse entry that leads back to it, and a live reverse entry a
    ///   live forward entry of its client's 5-tuple. Flows whose backend, frontend or NAT
    ///   address left the snapshot are exempt (their next packet ends them), and so is a
    ///   reverse entry whose 5-tuple a newer flow took over after its backend left.
    pub fn check_tables(&self, snap: &Snapshot, now_ms: u32) -> Result<(), String> {
        let t = (&self.flows.v4, &self.flows.v6);
        let named = |name: &str, r: Result<(), String>| r.map_err(|e| format!("{name} table: {e}"));
        named("v4 forward", t.0.fwd.check_occupancy())?;
        named("v4 reverse", t.0.rev.check_occupancy())?;
        named("v4 affinity", t.0.aff.check_occupancy())?;
        named("v6 forward", t.1.fwd.check_occupancy())?;
        named("v6 reverse", t.1.rev.check_occupancy())?;
        named("v6 affinity", t.1.aff.check_occupancy())?;
        let mut held = vec![0u64; self.stats.targets.len()];
        for v in (self
            .flows
            .v4
            .fwd
            .entries_in(0, usize::MAX)
            .map(|e| e.value()))
        .chain(
            self.flows
                .v6
                .fwd
                .entries_in(0, usize::MAX)
                .map(|e| e.value()),
        ) {
            if let Some(n) = held.get_mut(v.backend as usize) {
                *n += 1;
            }
        }
        for (id, (c, n)) in self.stats.targets.iter().zip(held).enumerate() {
            use std::sync::atomic::Ordering::Relaxed;
            let (new, closed) = (c.new_flows.load(Relaxed), c.closed_flows.load(Relaxed));
            if new.wrapping_sub(closed) != n {
                return Err(format!(
                    "backend {id}: {new} new - {closed} closed flows, but {n} forward entries hold it"
                ));
            }
        }
        self.nat_halves::<[u8; 4]>(snap, now_ms)?;
        self.nat_halves::<[u8; 16]>(snap, now_ms)
    }

    /// The NAT-halves invariant of [`Pipeline::check_tables`] in family `F`.
    fn nat_halves<F: Family>(&self, snap: &Snapshot, now_ms: u32) -> Result<(), String> {
        let t = F::tables(&self.flows);
        let nat = F::nat(&snap.local);
        let seed = snap.hash_seed;
        for e in t.fwd.entries_in(0, usize::MAX) {
            let (k, v): (Key<F>, Fwd) = (*e.key(), *e.value());
            let nat_flow = snap
                .frontend_for(&{ k.dst }.to_raw(), F::V6, k.proto, k.dport)
                .is_some_and(|f| f.method == Method::Nat);
            if t.fwd.remaining_ms(e, now_ms) == 0 || v.nat_port == 0 || !nat_flow {
                continue;
            }
            let (Some(b), Some(&na)) = (snap.backend(v.backend), nat.get(usize::from(v.nat_addr)))
            else {
                continue;
            };
            let Some(ba) = F::of_ip(b.addr) else {
                return Err(format!("NAT flow {k:?} to a backend of the other family"));
            };
            let rk = Key::new(ba, na, b.port, v.nat_port, k.proto);
            let back = t
                .rev
                .get(&rk, rk.flow_hash(seed))
                .filter(|r| t.rev.remaining_ms(r, now_ms) > 0)
                .map(|r| *r.value());
            match back {
                Some(r) if r.client == { k.src } && r.client_port == k.sport => {}
                Some(r) => {
                    return Err(format!(
                        "NAT flow {k:?}: its reverse entry {rk:?} leads to another client {r:?}"
                    ))
                }
                None => {
                    return Err(format!(
                        "NAT flow {k:?} (state {:?}) is live but its reverse entry {rk:?} is {}",
                        e.state(),
                        match t.rev.get(&rk, rk.flow_hash(seed)) {
                            Some(r) => format!("expired (state {:?})", r.state()),
                            None => "missing".to_string(),
                        }
                    ))
                }
            }
        }
        for e in t.rev.entries_in(0, usize::MAX) {
            if t.rev.remaining_ms(e, now_ms) == 0 {
                continue;
            }
            let (rk, r): (Key<F>, Rev<F>) = (*e.key(), *e.value());
            let Some(f) = snap.frontend(u32::from(r.frontend)) else {
                continue;
            };
            let gone = !snap
                .backends()
                .any(|b| F::of_ip(b.addr) == Some(rk.src) && b.port == rk.sport);
            let Some(vip) = F::of_ip(f.vip).filter(|_| !gone) else {
                continue;
            };
            let fk = Key::new(r.client, vip, r.client_port, f.port, rk.proto);
            let fwd = t
                .fwd
                .get(&fk, fk.flow_hash(seed))
                .filter(|x| t.fwd.remaining_ms(x, now_ms) > 0);
            match fwd {
                // The same port, or a newer flow of the client's 5-tuple: the entry was
                // orphaned when its flow was scheduled anew after its backend left the
                // snapshot (its key cannot be found then); it only reserves its port until it
                // expires, and a reply to it is dropped and ends it.
                Some(_) => {}
                None => {
                    return Err(format!(
                        "NAT reverse entry {rk:?} (state {:?}) is live but its forward entry {fk:?} is {}",
                        e.state(),
                        match t.fwd.get(&fk, fk.flow_hash(seed)) {
                            Some(x) => format!("expired (state {:?})", x.state()),
                            None => "missing".to_string(),
                        }
                    ))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
