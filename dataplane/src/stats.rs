//! # Worker statistics: single-writer counters, read without locks
//!
//! ## Design
//! Each worker owns one [`WorkerStats`] (cache-line padded by its owner). Only that worker
//! writes; the control plane reads. Counters are `AtomicU64` updated with a relaxed load and
//! store, not a read-modify-write: with a single writer that is exact, and on x86-64 it compiles
//! to a plain add, so the hot path pays nothing for being observable.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a packet was dropped. Indexes [`WorkerStats::drops`].
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A header is truncated or has an invalid field.
    Malformed = 0,
    /// A chained (multi-segment) mbuf; ports run without scatter.
    Multisegment,
    /// Destination MAC is neither ours, broadcast nor multicast (seen in promiscuous mode).
    NotForUs,
    /// Neither ARP, IPv4 nor IPv6.
    UnsupportedL3,
    /// ARP for an address that is not a VIP nor ours.
    ArpNotOurs,
    /// IPv4 header checksum does not verify.
    BadIpChecksum,
    /// IP destination is not a VIP nor one of our addresses.
    NoVip,
    /// A VIP, but not on a configured protocol/port.
    PortNotServed,
    /// An IP protocol other than TCP, UDP, ICMP to a VIP.
    UnsupportedL4,
    /// Source address outside the Service's `loadBalancerSourceRanges`.
    SourceDenied,
    /// The Service has no live backend.
    NoBackend,
    /// The chosen backend's next-hop MAC is not resolved yet.
    NextHopUnresolved,
    /// A TCP packet other than SYN for a `nat` flow that is not tracked.
    TcpNoFlow,
    /// A packet to a NAT local address that matches no tracked flow.
    NatNoFlow,
    /// An IP fragment to a `nat` Service (fragments are not reassembled).
    NatFragment,
    /// No free NAT local port in this worker's slice.
    NatPortsExhausted,
    /// A `nat` Service but no NAT local address of that family is configured.
    NoNatAddress,
    /// An ICMP message Sluice does not handle.
    IcmpUnsupported,
    /// An ICMP error quoting a flow that is not tracked.
    IcmpErrorNoFlow,
    /// Not enough headroom to encapsulate.
    NoHeadroom,
    /// Encapsulated packet would exceed the MTU.
    TooBig,
    /// The TX queue stayed full.
    TxFull,
    /// The ring to the owning worker was full.
    RingFull,
    /// A control-plane channel was full (neighbour reply not delivered).
    ControlFull,
    /// IPv6 neighbour discovery we do not answer (e.g. DAD probes, other targets).
    NdpNotOurs,
    /// ARP or a neighbour solicitation for a VIP that another Sluice host owns (L2 mode).
    VipNotOwned,
    /// An 802.1Q/802.1ad-tagged frame: no VLAN is configured, and forwarding it with its tag
    /// would carry it into the backend's VLAN (VLAN hopping).
    VlanTagged,
    /// A new connection's buckets in a flow table held only established flows, which a
    /// handshake never evicts: its SYN is dropped (the client retries).
    FlowTableFull,
    /// A new flow over its frontend's new-flow budget (`limits.new_flows_per_vip` or the
    /// `sluice.dev/new-flow-limit` annotation).
    VipFlowLimit,
    /// A new flow over its source prefix's new-flow budget at its frontend
    /// (`limits.new_flows_per_source` or `sluice.dev/new-flow-limit-per-source`).
    SourceFlowLimit,
    /// A TCP segment (not a SYN) to a SYN-proxied frontend that matches no flow and whose
    /// acknowledgement is no valid cookie (spoofed, or older than two cookie epochs).
    SynProxyBadCookie,
    /// A client's segment of a SYN-proxied flow whose backend has not answered the proxy's
    /// SYN yet (the client retransmits it).
    SynProxyHandshake,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 32;

    /// Every reason, in counter order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Malformed,
        DropReason::Multisegment,
        DropReason::NotForUs,
        DropReason::UnsupportedL3,
        DropReason::ArpNotOurs,
        DropReason::BadIpChecksum,
        DropReason::NoVip,
        DropReason::PortNotServed,
        DropReason::UnsupportedL4,
        DropReason::SourceDenied,
        DropReason::NoBackend,
        DropReason::NextHopUnresolved,
        DropReason::TcpNoFlow,
        DropReason::NatNoFlow,
        DropReason::NatFragment,
        DropReason::NatPortsExhausted,
        DropReason::NoNatAddress,
        DropReason::IcmpUnsupported,
        DropReason::IcmpErrorNoFlow,
        DropReason::NoHeadroom,
        DropReason::TooBig,
        DropReason::TxFull,
        DropReason::RingFull,
        DropReason::ControlFull,
        DropReason::NdpNotOurs,
        DropReason::VipNotOwned,
        DropReason::VlanTagged,
        DropReason::FlowTableFull,
        DropReason::VipFlowLimit,
        DropReason::SourceFlowLimit,
        DropReason::SynProxyBadCookie,
        DropReason::SynProxyHandshake,
    ];

    /// Stable snake_case name (metrics label, admin API).
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Multisegment => "multisegment",
            DropReason::NotForUs => "not_for_us",
            DropReason::UnsupportedL3 => "unsupported_l3",
            DropReason::ArpNotOurs => "arp_not_ours",
            DropReason::BadIpChecksum => "bad_ip_checksum",
            DropReason::NoVip => "no_vip",
            DropReason::PortNotServed => "port_not_served",
            DropReason::UnsupportedL4 => "unsupported_l4",
            DropReason::SourceDenied => "source_denied",
            DropReason::NoBackend => "no_backend",
            DropReason::NextHopUnresolved => "next_hop_unresolved",
            DropReason::TcpNoFlow => "tcp_no_flow",
            DropReason::NatNoFlow => "nat_no_flow",
            DropReason::NatFragment => "nat_fragment",
            DropReason::NatPortsExhausted => "nat_ports_exhausted",
            DropReason::NoNatAddress => "no_nat_address",
            DropReason::IcmpUnsupported => "icmp_unsupported",
            DropReason::IcmpErrorNoFlow => "icmp_error_no_flow",
            DropReason::NoHeadroom => "no_headroom",
            DropReason::TooBig => "too_big",
            DropReason::TxFull => "tx_full",
            DropReason::RingFull => "ring_full",
            DropReason::ControlFull => "control_full",
            DropReason::NdpNotOurs => "ndp_not_ours",
            DropReason::VipNotOwned => "vip_not_owned",
            DropReason::VlanTagged => "vlan_tagged",
            DropReason::FlowTableFull => "flow_table_full",
            DropReason::VipFlowLimit => "new_flow_limit_vip",
            DropReason::SourceFlowLimit => "new_flow_limit_source",
            DropReason::SynProxyBadCookie => "syn_proxy_bad_cookie",
            DropReason::SynProxyHandshake => "syn_proxy_handshake",
        }
    }
}

/// Adds `n` to a single-writer counter.
#[inline(always)]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Sets a single-writer gauge.
#[inline(always)]
pub fn set(c: &AtomicU64, v: u64) {
    c.store(v, Relaxed);
}

/// Per-flow-target counters (one per backend id).
#[derive(Debug, Default)]
pub struct TargetCounters {
    /// Packets forwarded to the backend.
    pub packets: AtomicU64,
    /// Bytes forwarded to the backend.
    pub bytes: AtomicU64,
    /// New flows scheduled to the backend.
    pub new_flows: AtomicU64,
    /// Flows of the backend whose conntrack entry was freed (expired, evicted, or replaced
    /// when the flow was scheduled anew). `new_flows - closed_flows` is the number of flows the
    /// worker tracks to the backend: its active flows.
    pub closed_flows: AtomicU64,
}

/// Counters of one frontend (VIP, protocol, port) on one worker, indexed by frontend id.
#[derive(Debug, Default)]
pub struct FrontendCounters {
    /// New flows refused by the frontend's new-flow budget ([`DropReason::VipFlowLimit`]).
    pub limited_vip: AtomicU64,
    /// New flows refused by a source prefix's budget ([`DropReason::SourceFlowLimit`]).
    pub limited_source: AtomicU64,
    /// SYN-ACKs with a cookie the SYN proxy sent for the frontend.
    pub syn_cookies_sent: AtomicU64,
    /// 1 while this worker's SYN proxy answers the `auto` frontend's SYNs with cookies (a
    /// gauge).
    pub syn_proxy_engaged: AtomicU64,
}

impl FrontendCounters {
    /// Counts a new flow a budget refused (`why` is one of the two limit reasons; any other
    /// reason is not counted here).
    #[inline(always)]
    pub fn limited(&self, why: DropReason) {
        match why {
            DropReason::VipFlowLimit => bump(&self.limited_vip, 1),
            DropReason::SourceFlowLimit => bump(&self.limited_source, 1),
            _ => {}
        }
    }
}

impl TargetCounters {
    /// Flows tracked to the backend now (`new_flows - closed_flows`).
    pub fn active_flows(&self) -> u64 {
        self.new_flows
            .load(Relaxed)
            .saturating_sub(self.closed_flows.load(Relaxed))
    }
}

/// One worker's counters. Written by that worker only. Aligned to 128 bytes (two cache lines,
/// the adjacent-line prefetcher's unit) so two workers' counters never share a line.
#[derive(Debug)]
#[repr(align(128))]
pub struct WorkerStats {
    /// Packets received.
    pub rx_packets: AtomicU64,
    /// Bytes received.
    pub rx_bytes: AtomicU64,
    /// Packets transmitted.
    pub tx_packets: AtomicU64,
    /// Bytes transmitted.
    pub tx_bytes: AtomicU64,
    /// Drops by [`DropReason`].
    pub drops: [AtomicU64; DropReason::COUNT],
    /// New flows scheduled (conntrack inserts in the forward direction).
    pub new_flows: AtomicU64,
    /// NAT replies translated back to clients.
    pub nat_replies: AtomicU64,
    /// NAT allocations whose first port was in use and that looked further (port pressure:
    /// the reverse keys of the slice are filling up).
    pub nat_port_retries: AtomicU64,
    /// Packets handed to another worker (NAT replies landing on the wrong queue).
    pub to_other_worker: AtomicU64,
    /// Packets received from other workers.
    pub from_other_worker: AtomicU64,
    /// ARP replies and neighbour advertisements sent for VIPs and own addresses.
    pub neighbor_replies: AtomicU64,
    /// ICMP echo replies sent.
    pub echo_replies: AtomicU64,
    /// ICMP errors forwarded to a flow's backend.
    pub icmp_errors_forwarded: AtomicU64,
    /// TCP resets sent for segments of unknown `nat` flows (instead of a `tcp_no_flow` drop).
    pub tcp_resets: AtomicU64,
    /// SYN-ACKs with a cookie sent by the SYN proxy (one per SYN to a proxied frontend).
    pub syn_cookies_sent: AtomicU64,
    /// Client ACKs whose cookie was valid: connections the SYN proxy opened to a backend.
    pub syn_cookies_valid: AtomicU64,
    /// `auto` SYN-proxy frontends whose SYNs this worker answers with cookies now (gauge).
    pub syn_proxy_engaged: AtomicU64,
    /// Times an `auto` frontend's SYN proxy engaged on this worker.
    pub syn_proxy_engagements: AtomicU64,
    /// Neighbour requests (ARP/NS) emitted for the control plane.
    pub neighbor_requests: AtomicU64,
    /// Flow updates put on the sync ring for the peer hosts.
    pub sync_published: AtomicU64,
    /// Flow updates dropped because the sync ring was full (forwarding went on).
    pub sync_ring_full: AtomicU64,
    /// Flows installed from peers' sync (forward entries).
    pub sync_installed: AtomicU64,
    /// Synced flows not installed: an own flow holds the key, or (for `nat`) the NAT port.
    pub sync_conflicts: AtomicU64,
    /// Synced flows this worker forwarded a packet of, so took over from a peer.
    pub sync_adopted: AtomicU64,
    /// Walks of the flow table that published every own flow (bulk transfer, refresh) done.
    pub sync_walks: AtomicU64,
    /// Conntrack hits.
    pub ct_hits: AtomicU64,
    /// Conntrack misses.
    pub ct_misses: AtomicU64,
    /// Conntrack inserts.
    pub ct_inserts: AtomicU64,
    /// Conntrack evictions (bucket full).
    pub ct_evictions: AtomicU64,
    /// Established TCP, UDP and other flows evicted from the forward or reverse tables
    /// (each ends its flow).
    pub ct_evictions_established: AtomicU64,
    /// Embryonic flows (handshake not complete) evicted from the forward or reverse tables.
    pub ct_evictions_embryonic: AtomicU64,
    /// New connections refused because their buckets held only established flows.
    pub ct_refusals: AtomicU64,
    /// Conntrack expiries.
    pub ct_expiries: AtomicU64,
    /// Live conntrack entries.
    pub ct_entries: AtomicU64,
    /// Conntrack capacity (entries).
    pub ct_capacity: AtomicU64,
    /// Poll iterations.
    pub polls: AtomicU64,
    /// Poll iterations that received at least one packet.
    pub busy_polls: AtomicU64,
    /// TSC cycles spent in iterations that did work.
    pub busy_cycles: AtomicU64,
    /// Sleeps of a worker in idle mode (one per empty poll after a quiet spell).
    pub idle_sleeps: AtomicU64,
    /// TSC cycles in total.
    pub total_cycles: AtomicU64,
    /// Generation of the snapshot in use.
    pub snapshot_generation: AtomicU64,
    /// Per-backend counters, indexed by backend id.
    pub targets: Box<[TargetCounters]>,
    /// Per-frontend counters, indexed by frontend id (ids are below `max_backends` and
    /// [`crate::snapshot::MAX_FRONTENDS`]).
    pub frontends: Box<[FrontendCounters]>,
}

impl WorkerStats {
    /// Zeroed counters with room for `max_backends` backend ids.
    pub fn new(max_backends: usize) -> Self {
        WorkerStats {
            rx_packets: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            new_flows: AtomicU64::new(0),
            nat_replies: AtomicU64::new(0),
            nat_port_retries: AtomicU64::new(0),
            to_other_worker: AtomicU64::new(0),
            from_other_worker: AtomicU64::new(0),
            neighbor_replies: AtomicU64::new(0),
            echo_replies: AtomicU64::new(0),
            icmp_errors_forwarded: AtomicU64::new(0),
            tcp_resets: AtomicU64::new(0),
            syn_cookies_sent: AtomicU64::new(0),
            syn_cookies_valid: AtomicU64::new(0),
            syn_proxy_engaged: AtomicU64::new(0),
            syn_proxy_engagements: AtomicU64::new(0),
            neighbor_requests: AtomicU64::new(0),
            sync_published: AtomicU64::new(0),
            sync_ring_full: AtomicU64::new(0),
            sync_installed: AtomicU64::new(0),
            sync_conflicts: AtomicU64::new(0),
            sync_adopted: AtomicU64::new(0),
            sync_walks: AtomicU64::new(0),
            ct_hits: AtomicU64::new(0),
            ct_misses: AtomicU64::new(0),
            ct_inserts: AtomicU64::new(0),
            ct_evictions: AtomicU64::new(0),
            ct_evictions_established: AtomicU64::new(0),
            ct_evictions_embryonic: AtomicU64::new(0),
            ct_refusals: AtomicU64::new(0),
            ct_expiries: AtomicU64::new(0),
            ct_entries: AtomicU64::new(0),
            ct_capacity: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            busy_polls: AtomicU64::new(0),
            busy_cycles: AtomicU64::new(0),
            idle_sleeps: AtomicU64::new(0),
            total_cycles: AtomicU64::new(0),
            snapshot_generation: AtomicU64::new(0),
            targets: (0..max_backends)
                .map(|_| TargetCounters::default())
                .collect(),
            frontends: (0..max_backends.min(crate::snapshot::MAX_FRONTENDS))
                .map(|_| FrontendCounters::default())
                .collect(),
        }
    }

    /// Counts a drop.
    #[inline(always)]
    pub fn drop_packet(&self, r: DropReason) {
        bump(&self.drops[r as usize], 1);
    }

    /// Reads one drop counter.
    pub fn drops_of(&self, r: DropReason) -> u64 {
        self.drops[r as usize].load(Relaxed)
    }

    /// Total drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(|d| d.load(Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_index_and_name_uniquely() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        let s = WorkerStats::new(4);
        s.drop_packet(DropReason::SourceDenied);
        s.drop_packet(DropReason::SourceDenied);
        assert_eq!(s.drops_of(DropReason::SourceDenied), 2);
        assert_eq!(s.total_drops(), 2);
    }
}
