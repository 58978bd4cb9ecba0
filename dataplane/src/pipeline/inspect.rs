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
    /// Forgets every flow and the SYN proxy's `auto` state (engagement, counts: a snapshot
    /// installed next starts from nothing), rewinds the NAT port cursors (as if built with
    /// `nat_port_start` 0) and counts from now on in `stats`: the pipeline as
    /// [`Pipeline::new`] left it, without allocating its tables again.
    pub fn reset(&mut self, stats: Arc<WorkerStats>) {
        self.flows.v4.fwd.clear();
        self.flows.v4.rev.clear();
        self.flows.v4.aff.clear();
        self.flows.v6.fwd.clear();
        self.flows.v6.rev.clear();
        self.flows.v6.aff.clear();
        self.ports.rewind();
        self.limits.reset();
        self.burst.clear();
        self.auto.clear();
        crate::stats::set(
            &stats.ct_capacity,
            (self.flows.v4.fwd.capacity() + self.flows.v6.fwd.capacity()) as u64,
        );
        self.stats = stats;
    }

    /// Everything the pipeline holds, written out: its tables' contents ([`Conntrack::dump`]
    /// (crate::conntrack::Conntrack::dump)), counters, NAT port cursors and slice, new-flow
    /// buckets, burst cache, flow sync state and the SYN proxy's `auto` state. A pipeline after [`Pipeline::reset`] has the dump of a new one
    /// (the fuzzer's proof that no state leaks from one input into the next).
    pub fn state_dump(&self) -> String {
        let (a, b) = (&self.flows.v4, &self.flows.v6);
        format!(
            "worker {} of {}\nv4 fwd {}\nv4 rev {}\nv4 aff {}\nv6 fwd {}\nv6 rev {}\nv6 aff {}\nports {:?}\nlimits {}\nstats {:?}\nburst {:?}\nreset_unknown_flows {} sync {} walk {:?}\nsyn proxy auto {:?}",
            self.worker,
            self.workers,
            a.fwd.dump(),
            a.rev.dump(),
            a.aff.dump(),
            b.fwd.dump(),
            b.rev.dump(),
            b.aff.dump(),
            self.ports,
            self.limits.dump(),
            self.stats,
            self.burst,
            self.reset_unknown_flows,
            self.sync.is_some(),
            self.walk,
            self.auto,
        )
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
        self.check_tables_since(snap, now_ms, None)
    }

    /// Each table's [`Conntrack::epoch`](crate::conntrack::Conntrack::epoch): v4 forward,
    /// reverse and affinity, then v6's.
    pub fn table_epochs(&self) -> [u64; 6] {
        let (a, b) = (&self.flows.v4, &self.flows.v6);
        [
            a.fwd.epoch(),
            a.rev.epoch(),
            a.aff.epoch(),
            b.fwd.epoch(),
            b.rev.epoch(),
            b.aff.epoch(),
        ]
    }

    /// [`Pipeline::check_tables`], given that the same checks passed when the tables'
    /// epochs were `seen` ([`Pipeline::table_epochs`]) under the same `snap` and `now_ms`
    /// (`None`: nothing known). What depends only on tables that have not changed since is
    /// not checked again: each table's occupancy, and a family's NAT halves while neither its
    /// forward nor its reverse table changed; the per-backend counts always are (the
    /// counters may move without a table changing).
    pub fn check_tables_since(
        &self,
        snap: &Snapshot,
        now_ms: u32,
        seen: Option<&[u64; 6]>,
    ) -> Result<(), String> {
        let epochs = self.table_epochs();
        let changed = |i: usize| seen.is_none_or(|s| s[i] != epochs[i]);
        let t = (&self.flows.v4, &self.flows.v6);
        let tables = [
            ("v4 forward", &t.0.fwd as &dyn Occupancy),
            ("v4 reverse", &t.0.rev),
            ("v4 affinity", &t.0.aff),
            ("v6 forward", &t.1.fwd),
            ("v6 reverse", &t.1.rev),
            ("v6 affinity", &t.1.aff),
        ];
        for (i, (name, table)) in tables.into_iter().enumerate() {
            if changed(i) {
                table
                    .check_occupancy()
                    .map_err(|e| format!("{name} table: {e}"))?;
            }
        }
        // The entries are found through the tags from here on (the occupancy checks above
        // showed that they agree).
        let mut small = [0u64; 32];
        let mut large = Vec::new();
        let held: &mut [u64] = match self.stats.targets.len() {
            n if n <= small.len() => &mut small[..n],
            n => {
                large.resize(n, 0);
                &mut large
            }
        };
        for v in
            (t.0.fwd.occupied().map(|e| e.value())).chain(t.1.fwd.occupied().map(|e| e.value()))
        {
            if let Some(n) = held.get_mut(v.backend as usize) {
                *n += 1;
            }
        }
        for (id, (c, &n)) in self.stats.targets.iter().zip(held.iter()).enumerate() {
            use std::sync::atomic::Ordering::Relaxed;
            let (new, closed) = (c.new_flows.load(Relaxed), c.closed_flows.load(Relaxed));
            if new.wrapping_sub(closed) != n {
                return Err(format!(
                    "backend {id}: {new} new - {closed} closed flows, but {n} forward entries hold it"
                ));
            }
        }
        if changed(0) || changed(1) {
            self.nat_halves::<[u8; 4]>(snap, now_ms)?;
        }
        if changed(3) || changed(4) {
            self.nat_halves::<[u8; 16]>(snap, now_ms)?;
        }
        Ok(())
    }

    /// The NAT-halves invariant of [`Pipeline::check_tables`] in family `F`.
    fn nat_halves<F: Family>(&self, snap: &Snapshot, now_ms: u32) -> Result<(), String> {
        let t = F::tables(&self.flows);
        let nat = F::nat(&snap.local);
        let seed = snap.hash_seed;
        for e in t.fwd.occupied() {
            let (k, v): (Key<F>, Fwd) = (*e.key(), *e.value());
            if v.nat_port == 0 || t.fwd.remaining_ms(e, now_ms) == 0 {
                continue;
            }
            let nat_flow = snap
                .frontend_for(&{ k.dst }.to_raw(), F::V6, k.proto, k.dport)
                .is_some_and(|f| f.method == Method::Nat);
            if !nat_flow {
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
        for e in t.rev.occupied() {
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

/// A table whose occupancy can be checked, whatever its key and value.
trait Occupancy {
    fn check_occupancy(&self) -> Result<(), String>;
}

impl<K: crate::conntrack::FlowKey, V: Copy> Occupancy for crate::conntrack::Conntrack<K, V> {
    fn check_occupancy(&self) -> Result<(), String> {
        crate::conntrack::Conntrack::check_occupancy(self)
    }
}

#[cfg(test)]
mod tests;
