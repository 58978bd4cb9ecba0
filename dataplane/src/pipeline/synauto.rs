//! # The SYN proxy's automatic mode
//!
//! A frontend whose [`SynProxy`] is `Auto { threshold }` forwards SYNs as any `nat` frontend
//! until this worker holds `threshold` of its **embryonic flows** (a SYN admitted, the
//! handshake not complete: forward entries in [`FlowState::TcpSynSent`], not proxied, not
//! synced); then its SYNs get cookie SYN-ACKs ([`super::synproxy`]) until the count falls
//! below half the threshold. An ACK with a valid cookie opens a flow whenever the frontend
//! is `auto`, engaged or not, so handshakes begun while engaged complete after it.
//!
//! ## The count, and why it cannot drift
//!
//! Keeping an exact count would mean catching every way a flow leaves the embryonic state:
//! its handshake, a RST, the expiry sweep, a lookup that finds it expired, an eviction by
//! another flow's insert, a replacement, a restore, a sync install. Miss one and the count
//! drifts for ever. Instead the count is rebuilt: a **census** walks this worker's forward
//! tables [`CENSUS_SLOTS_PER_TICK`] slots per millisecond tick and counts the embryonic
//! entries of each `auto` frontend; when it has seen every slot, its counts replace the
//! previous ones. Between two censuses the packet path adds what it sees (a SYN that opens
//! an embryonic flow: +1; an embryonic flow that completes or closes: -1), so a flood is
//! noticed within a tick, not a census. Whatever that running difference misses (an
//! embryonic flow that expired or was evicted) lasts until the next census: the error is
//! bounded by one census's traffic and is reset by every census.
//!
//! While engaged, SYNs leave no entry to count, so the proxy also counts what it answers:
//! the cookie SYN-ACKs it sent and the cookie ACKs that came back, over the last two
//! windows of the SYN timeout ([`crate::conntrack::Timeouts`]' `tcp_syn_sent_ms`). Their
//! difference is the embryonic flows the SYNs would have left; windows are dropped whole,
//! so this part cannot drift either.
//!
//! **pressure** = census + running difference + (cookies sent − cookies returned, last two
//! windows), each part at least 0. The proxy engages when the pressure reaches the
//! threshold and disengages when it is below half of it, both decided at the tick.
//!
//! ## Cost
//!
//! Per packet, for `auto` frontends only: a bounds-checked load of the engaged flag for a
//! SYN, an add to this worker's per-frontend array for a SYN that opens a flow or a flow
//! that leaves the embryonic state. The arrays are sized when a snapshot is installed
//! ([`Pipeline::install_snapshot`]), never on the packet path. Per tick, with at least one
//! `auto` frontend: the census piece (one frontend lookup per embryonic entry whose
//! frontend differs from the previous entry's).
use super::{Family, Pipeline};
use crate::conntrack::FlowState;
use crate::snapshot::{Frontend, Snapshot, SynProxy};
use crate::stats::{bump, set};

/// Forward-table slots the census reads per millisecond tick (a 2M-slot table: a census
/// every 1 s).
pub const CENSUS_SLOTS_PER_TICK: usize = 2048;

/// One `auto` frontend's state on this worker.
#[derive(Debug, Clone, Copy, Default)]
struct AutoFront {
    /// The frontend's threshold (0: not `auto`).
    threshold: u32,
    /// Cookies answer its SYNs.
    engaged: bool,
    /// Embryonic flows the last census counted.
    base: u32,
    /// Embryonic flows opened less those completed since the last census.
    delta: i32,
    /// Cookie SYN-ACKs sent: this window, the last.
    cookies: [u32; 2],
    /// Valid cookie ACKs: this window, the last.
    returned: [u32; 2],
}

impl AutoFront {
    /// What the threshold is compared with.
    fn pressure(&self) -> u32 {
        let running = (i64::from(self.base) + i64::from(self.delta)).max(0) as u32;
        let sent = self.cookies[0].saturating_add(self.cookies[1]);
        let back = self.returned[0].saturating_add(self.returned[1]);
        running.saturating_add(sent.saturating_sub(back))
    }
}

/// The automatic mode's state on one worker.
#[derive(Debug, Default)]
pub(super) struct Auto {
    /// Per frontend id (sized at snapshot install).
    fronts: Vec<AutoFront>,
    /// The ids of the `auto` frontends.
    ids: Vec<u32>,
    /// The census in progress: per frontend id.
    counts: Vec<u32>,
    /// The census's next slot (IPv4 table first, then IPv6).
    next: usize,
    /// Start of the cookie window, on the millisecond clock.
    window_start: u32,
}

impl Auto {
    /// Forgets every frontend's state, as a new pipeline's (allocations kept; the fuzzer's
    /// reset).
    #[cfg(any(test, feature = "check"))]
    pub(super) fn clear(&mut self) {
        self.fronts.clear();
        self.ids.clear();
        self.counts.clear();
        self.next = 0;
        self.window_start = 0;
    }
}

impl Pipeline {
    /// Sizes the SYN proxy's per-frontend state for `snap` (the worker calls it when it
    /// installs a snapshot; it allocates). Frontends that stay `auto` keep their state; the
    /// census starts over.
    pub fn install_snapshot(&mut self, snap: &Snapshot) {
        // The per-frontend engagement flags of the old snapshot's frontends go down first;
        // `publish_auto` raises the new ones'.
        for (i, s) in self.auto.fronts.iter().enumerate() {
            if let (true, Some(c)) = (s.engaged, self.stats.frontends.get(i)) {
                set(&c.syn_proxy_engaged, 0);
            }
        }
        let a = &mut self.auto;
        let len = snap
            .frontends()
            .map(|f| f.id as usize + 1)
            .max()
            .unwrap_or(0);
        a.fronts.resize(len, AutoFront::default());
        a.counts.clear();
        a.counts.resize(len, 0);
        a.next = 0;
        a.ids.clear();
        for s in a.fronts.iter_mut() {
            s.threshold = 0;
        }
        for f in snap.frontends() {
            if let SynProxy::Auto { threshold } = f.syn_proxy {
                a.fronts[f.id as usize].threshold = threshold.max(2);
                a.ids.push(f.id);
            }
        }
        // A frontend no longer `auto` starts from nothing if it becomes `auto` again.
        for s in a.fronts.iter_mut().filter(|s| s.threshold == 0) {
            *s = AutoFront::default();
        }
        self.publish_auto();
    }

    /// Whether frontend `f`'s SYNs are answered with cookies now (and counts the cookie of
    /// an `auto` frontend's).
    #[inline(always)]
    pub(super) fn cookie_for_syn(&mut self, f: &Frontend) -> bool {
        match f.syn_proxy {
            SynProxy::On => true,
            SynProxy::Off => false,
            SynProxy::Auto { .. } => match self.auto.fronts.get_mut(f.id as usize) {
                Some(a) if a.engaged => {
                    a.cookies[0] = a.cookies[0].wrapping_add(1);
                    true
                }
                _ => false,
            },
        }
    }

    /// An `auto` frontend `f`'s embryonic flows changed by `d` (+1 opened, -1 completed or
    /// closed).
    #[inline(always)]
    pub(super) fn auto_embryonic(&mut self, f: &Frontend, d: i32) {
        if let Some(a) = self.auto.fronts.get_mut(f.id as usize) {
            a.delta = a.delta.wrapping_add(d);
        }
    }

    /// An ACK with a valid cookie opened a flow of `auto` frontend `f`.
    #[inline(always)]
    pub(super) fn auto_returned(&mut self, f: &Frontend) {
        if let Some(a) = self.auto.fronts.get_mut(f.id as usize) {
            a.returned[0] = a.returned[0].wrapping_add(1);
        }
    }

    /// The SYN proxy's millisecond tick: a piece of the census, the cookie windows, and the
    /// engagement decisions. Nothing to do without an `auto` frontend.
    pub fn syn_proxy_tick(&mut self, snap: &Snapshot, now_ms: u32) {
        if self.auto.ids.is_empty() {
            return;
        }
        let n4 = self.flows.v4.fwd.capacity();
        let n6 = self.flows.v6.fwd.capacity();
        // Slots `next..end` of the two tables end to end: a piece that crosses from the
        // IPv4 table into the IPv6 one reads both (an IPv4 table whose size is not a
        // multiple of the piece, one smaller than it, would otherwise leave IPv6 slots out
        // of every census).
        let next = self.auto.next;
        let end = next + CENSUS_SLOTS_PER_TICK;
        if next < n4 {
            self.census_piece::<[u8; 4]>(snap, next, end.min(n4) - next, now_ms);
        }
        if end > n4 {
            let from = next.max(n4);
            self.census_piece::<[u8; 16]>(snap, from - n4, end - from, now_ms);
        }
        let a = &mut self.auto;
        a.next = end;
        if a.next >= n4 + n6 {
            a.next = 0;
            for &id in &a.ids {
                let i = id as usize;
                a.fronts[i].base = std::mem::take(&mut a.counts[i]);
                a.fronts[i].delta = 0;
            }
        }
        let window = self.flows.v4.fwd.timeout_ms(FlowState::TcpSynSent).max(1);
        if now_ms.wrapping_sub(a.window_start) >= window {
            a.window_start = now_ms;
            for &id in &a.ids {
                let s = &mut a.fronts[id as usize];
                s.cookies = [0, s.cookies[0]];
                s.returned = [0, s.returned[0]];
            }
        }
        let mut changed = false;
        for &id in &a.ids {
            let s = &mut a.fronts[id as usize];
            let p = s.pressure();
            let engaged = if s.engaged {
                p >= s.threshold / 2
            } else {
                p >= s.threshold
            };
            if engaged != s.engaged {
                s.engaged = engaged;
                changed = true;
                if engaged {
                    bump(&self.stats.syn_proxy_engagements, 1);
                }
            }
        }
        if changed {
            self.publish_auto();
        }
    }

    /// Counts the embryonic entries of `auto` frontends among forward slots
    /// `start..start + count` of family `F`.
    fn census_piece<F: Family>(
        &mut self,
        snap: &Snapshot,
        start: usize,
        count: usize,
        now_ms: u32,
    ) {
        let t = F::tables(&self.flows);
        let a = &mut self.auto;
        // Entries of one frontend tend to come in runs: its last lookup is reused.
        let mut last: Option<([u8; 16], u16, u8, Option<u32>)> = None;
        for e in t.fwd.entries_in(start, count) {
            let v = e.value();
            if e.state() != FlowState::TcpSynSent
                || v.proxied()
                || v.synced()
                || t.fwd.remaining_ms(e, now_ms) == 0
            {
                continue;
            }
            let k = e.key();
            let mut dst = [0u8; 16];
            dst[..F::LEN].copy_from_slice({ k.dst }.bytes());
            let (dport, proto) = (k.dport, k.proto);
            let id = match last {
                Some((d, p, pr, id)) if d == dst && p == dport && pr == proto => id,
                _ => {
                    let id = snap
                        .frontend_for(&dst, F::V6, proto, dport)
                        .filter(|f| matches!(f.syn_proxy, SynProxy::Auto { .. }))
                        .map(|f| f.id);
                    last = Some((dst, dport, proto, id));
                    id
                }
            };
            if let Some(c) = id.and_then(|id| a.counts.get_mut(id as usize)) {
                *c += 1;
            }
        }
    }

    /// Copies the number of engaged frontends, and each `auto` frontend's engagement, into
    /// the shared stats.
    fn publish_auto(&self) {
        for &id in &self.auto.ids {
            if let Some(c) = self.stats.frontends.get(id as usize) {
                let engaged = self.auto.fronts[id as usize].engaged;
                set(&c.syn_proxy_engaged, u64::from(engaged));
            }
        }
        let n = self
            .auto
            .ids
            .iter()
            .filter(|&&id| self.auto.fronts[id as usize].engaged)
            .count();
        set(&self.stats.syn_proxy_engaged, n as u64);
    }

    /// Whether this worker's SYN proxy answers frontend `id`'s SYNs now (`auto` frontends;
    /// tests and the admin API).
    pub fn syn_proxy_engaged(&self, id: u32) -> bool {
        self.auto.fronts.get(id as usize).is_some_and(|a| a.engaged)
    }

    /// The embryonic-flow pressure of `auto` frontend `id` the tick compares with its
    /// threshold (tests).
    pub fn syn_proxy_pressure(&self, id: u32) -> u32 {
        self.auto
            .fronts
            .get(id as usize)
            .map_or(0, AutoFront::pressure)
    }

    /// The embryonic flows of frontend `id` in this worker's tables now, counted exactly
    /// (a full walk: tests and checks, not the packet path).
    pub fn embryonic_flows(&self, snap: &Snapshot, id: u32, now_ms: u32) -> u32 {
        self.embryonic_of::<[u8; 4]>(snap, id, now_ms)
            + self.embryonic_of::<[u8; 16]>(snap, id, now_ms)
    }

    /// [`Pipeline::embryonic_flows`] of family `F`.
    fn embryonic_of<F: Family>(&self, snap: &Snapshot, id: u32, now_ms: u32) -> u32 {
        let t = F::tables(&self.flows);
        t.fwd
            .entries_in(0, t.fwd.capacity())
            .filter(|e| {
                let v = e.value();
                let k = e.key();
                let mut dst = [0u8; 16];
                dst[..F::LEN].copy_from_slice({ k.dst }.bytes());
                e.state() == FlowState::TcpSynSent
                    && !v.proxied()
                    && !v.synced()
                    && t.fwd.remaining_ms(e, now_ms) > 0
                    && snap
                        .frontend_for(&dst, F::V6, k.proto, k.dport)
                        .is_some_and(|f| f.id == id)
            })
            .count() as u32
    }
}
