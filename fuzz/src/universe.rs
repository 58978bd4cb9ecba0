//! The fuzz world's fixed universe: workers, MACs, the addresses and ports an input chooses
//! from, the backends that can be in a snapshot, and the snapshots built from them (cached by
//! content).
use super::*;

/// Workers (each with its NAT port slice).
pub const WORKERS: u16 = 2;
/// Operations read from one input at most.
pub(crate) const MAX_OPS: usize = 48;
/// Frames of a burst at most (the worker's rx burst).
pub const BURST: usize = 32;
/// Our MAC.
pub const LB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
/// A router's MAC (strangers' frames come from it).
pub const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];
/// Ids (frontends and backends) at most: the per-backend counters the table check compares.
pub(crate) const MAX_IDS: usize = 16;
pub(crate) const NAT_PORT_MIN: u16 = 20000;
pub(crate) const NAT_PORT_MAX: u16 = 20063;
pub(crate) const SEED: u64 = 0x5eed;
/// The workers' SYN cookie key (the model is given it).
pub(crate) const COOKIE_KEY: CookieKey = CookieKey([0x5eed_c00c_1e00_0001, 0x5eed_c00c_1e00_0002]);

/// A v4 address in the parser's 16-byte form.
pub(crate) const fn a4(a: [u8; 4]) -> [u8; 16] {
    [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

pub(crate) const fn a6(last: u8, net: u8) -> [u8; 16] {
    [
        0x20, 0x01, 0x0d, 0xb8, 0, net, 0, 0, 0, 0, 0, 0, 0, 0, 0, last,
    ]
}

/// Destinations by family: the VIPs first, then own and NAT addresses, backends, strangers.
pub(crate) const DST4: [[u8; 16]; 10] = [
    a4([192, 0, 2, 1]),
    a4([192, 0, 2, 2]),
    a4([192, 0, 2, 3]),
    a4([192, 0, 2, 4]),
    a4([10, 0, 0, 2]),
    a4([10, 0, 0, 3]),
    a4([10, 0, 0, 4]),
    a4([10, 0, 1, 1]),
    a4([192, 0, 2, 99]),
    a4([224, 0, 0, 1]),
];
pub(crate) const DST6: [[u8; 16]; 8] = [
    a6(1, 0),
    a6(2, 0),
    a6(3, 0),
    a6(2, 0xaa),
    a6(3, 0xaa),
    a6(1, 0xbb),
    a6(99, 0),
    [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
];
/// Sources by family: clients (the first two inside the ACL frontend's range), a client
/// outside it, backends, a VIP (spoofed), the unspecified address.
pub(crate) const SRC4: [[u8; 16]; 8] = [
    a4([10, 9, 9, 9]),
    a4([10, 9, 0, 10]),
    a4([10, 8, 0, 1]),
    a4([203, 0, 113, 7]),
    a4([10, 0, 1, 1]),
    a4([10, 0, 1, 2]),
    a4([192, 0, 2, 1]),
    a4([0, 0, 0, 0]),
];
pub(crate) const SRC6: [[u8; 16]; 6] = [
    a6(9, 9),
    a6(10, 9),
    a6(7, 0x77),
    a6(1, 0xcc),
    a6(1, 0),
    [0; 16],
];
/// Ports: served and not, backends', NAT ports of both workers' slices, ephemeral.
pub(crate) const PORTS: [u16; 12] = [
    80, 53, 443, 81, 8080, 5353, 20000, 20001, 20032, 20063, 40000, 40001,
];

/// Each frontend's SYN proxy: `on` for the v4 ACL frontend (192.0.2.4:443), `auto` with the
/// smallest threshold for the v6 TCP `nat` one (2001:db8::1:80: plain NAT until two of its
/// handshakes are pending on a worker at a tick, then cookies), off for the rest.
pub(crate) const SYN_PROXY: [SynProxy; 9] = [
    SynProxy::Off,
    SynProxy::Off,
    SynProxy::Off,
    SynProxy::Off,
    SynProxy::On,
    SynProxy::Auto { threshold: 2 },
    SynProxy::Off,
    SynProxy::Off,
    SynProxy::Off,
];

/// The backends that can be in a snapshot, by id: (frontend, address, port). Each belongs to
/// one frontend (a backend id names a backend of one frontend); addresses are shared.
pub(crate) const BACKENDS: [(u32, &str, u16); 14] = [
    (0, "10.0.1.1", 8080),
    (0, "10.0.1.2", 8080),
    (0, "10.0.1.3", 8080),
    (1, "10.0.1.1", 5353),
    (1, "10.0.1.2", 5353),
    (2, "10.0.1.1", 80),
    (2, "10.0.1.2", 80),
    (3, "10.0.1.3", 80),
    (4, "10.0.1.2", 8443),
    (5, "2001:db8:cc::1", 8080),
    (5, "2001:db8:cc::2", 8080),
    (6, "2001:db8:cc::1", 5353),
    (7, "2001:db8:cc::2", 80),
    (8, "2001:db8:cc::1", 53),
];
pub(crate) const NAMES: [&str; 14] = [
    "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "b9", "b10", "b11", "b12", "b13", "b14",
];

/// A backend id's MAC (its next hop; one each, so an output names its backend).
pub fn backend_mac(id: u32) -> [u8; 6] {
    [2, 0, 0, 0, 1, id as u8]
}

/// A client's MAC by source index.
pub(crate) fn client_mac(i: usize) -> [u8; 6] {
    [2, 0, 0, 0, 0, 0xa0 + i as u8]
}

/// One backend's mutable part of the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BackendSlot {
    pub(crate) present: bool,
    /// It was in a snapshot of this input and left it.
    pub(crate) left: bool,
    pub(crate) state: BackendState,
    pub(crate) weight: u32,
    pub(crate) resolved: bool,
}

pub(crate) const INITIAL: BackendSlot = BackendSlot {
    present: true,
    left: false,
    state: BackendState::Active,
    weight: 1,
    resolved: true,
};

/// The backends of the first snapshot: all but two, which swaps can add.
pub(crate) fn initial_slots() -> [BackendSlot; 14] {
    let mut s = [INITIAL; 14];
    for i in [2, 10] {
        s[i].present = false;
    }
    s
}

/// A frontend: VIP, port, protocol, method, affinity, source range.
type FrontendSpec = (
    &'static str,
    u16,
    Protocol,
    Method,
    Option<u32>,
    Option<&'static str>,
);

/// The snapshot of a backend table.
pub(crate) fn build_snapshot(
    generation: u64,
    slots: &[BackendSlot; 14],
) -> Result<Snapshot, String> {
    build_snapshot_with(generation, slots, &mut MaglevCache::default())
}

/// A frontend's Maglev table by what it is built from: the frontend and its backends' ids
/// and weights (a table is a pure function of them).
type MaglevCache = FxMap<(usize, Vec<(u32, u32)>), Arc<MaglevTable>>;

/// [`build_snapshot`], taking the frontends' Maglev tables from `maglevs` when built before.
pub(crate) fn build_snapshot_with(
    generation: u64,
    slots: &[BackendSlot; 14],
    maglevs: &mut MaglevCache,
) -> Result<Snapshot, String> {
    let fronts: [FrontendSpec; 9] = [
        ("192.0.2.1", 80, Protocol::Tcp, Method::Nat, None, None),
        ("192.0.2.1", 53, Protocol::Udp, Method::Nat, None, None),
        ("192.0.2.2", 80, Protocol::Tcp, Method::DsrL2, None, None),
        ("192.0.2.3", 80, Protocol::Tcp, Method::DsrIpip, None, None),
        (
            "192.0.2.4",
            443,
            Protocol::Tcp,
            Method::Nat,
            Some(60_000),
            Some("10.9.0.0/16"),
        ),
        ("2001:db8::1", 80, Protocol::Tcp, Method::Nat, None, None),
        ("2001:db8::1", 53, Protocol::Udp, Method::Nat, None, None),
        (
            "2001:db8::2",
            80,
            Protocol::Tcp,
            Method::DsrIpip,
            None,
            None,
        ),
        (
            "2001:db8::3",
            53,
            Protocol::Udp,
            Method::DsrL2,
            Some(10_000),
            Some("2001:db8:9::/48"),
        ),
    ];
    let mut frontends = Vec::new();
    for (fid, (vip, port, protocol, method, affinity_ms, range)) in fronts.into_iter().enumerate() {
        let ids: Vec<u32> = (0..BACKENDS.len())
            .filter(|&i| BACKENDS[i].0 == fid as u32 && slots[i].present)
            .map(|i| i as u32 + 1)
            .collect();
        let key = (
            fid,
            ids.iter()
                .map(|&id| (id, slots[id as usize - 1].weight))
                .collect::<Vec<_>>(),
        );
        let maglev = match maglevs.get(&key) {
            Some(m) => m.clone(),
            None => {
                let mb: Vec<MaglevBackend<'_>> = ids
                    .iter()
                    .map(|&id| MaglevBackend {
                        id: NAMES[id as usize - 1],
                        weight: slots[id as usize - 1].weight,
                    })
                    .collect();
                let m = Arc::new(MaglevTable::build(&mb, 31, 1).map_err(|e| e.to_string())?);
                maglevs.insert(key, m.clone());
                m
            }
        };
        frontends.push(Frontend {
            id: fid as u32,
            service: Arc::from("default/fuzz"),
            vip: vip.parse().expect("vip"),
            port,
            protocol,
            method,
            affinity_ms,
            source_ranges: range.iter().filter_map(|r| Cidr::parse(r)).collect(),
            flow_limit: None,
            source_flow_limit: None,
            syn_proxy: SYN_PROXY[fid],
            backends: ids,
            maglev,
        });
    }
    let backends = (0..BACKENDS.len())
        .filter(|&i| slots[i].present)
        .map(|i| Backend {
            id: i as u32 + 1,
            addr: BACKENDS[i].1.parse().expect("backend"),
            port: BACKENDS[i].2,
            mac: slots[i].resolved.then(|| backend_mac(i as u32 + 1)),
            weight: slots[i].weight,
            state: slots[i].state,
        })
        .collect();
    let local = Local {
        mac: LB_MAC,
        ipv4: vec![[10, 0, 0, 2]],
        ipv6: vec![[0x20, 1, 0xd, 0xb8, 0, 0xaa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]],
        nat_ipv4: vec![[10, 0, 0, 3], [10, 0, 0, 4]],
        nat_ipv6: vec![[0x20, 1, 0xd, 0xb8, 0, 0xaa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]],
        nat_port_min: NAT_PORT_MIN,
        nat_port_max: NAT_PORT_MAX,
        nat_ipv4_peers: 0,
        nat_ipv6_peers: 0,
        mtu: 1500,
    };
    Snapshot::new(generation, SEED, frontends, backends, local, MAX_IDS).map_err(|e| e.to_string())
}

/// The first snapshot of every input (built once).
pub(crate) fn initial_snapshot() -> Arc<Snapshot> {
    static S: OnceLock<Arc<Snapshot>> = OnceLock::new();
    S.get_or_init(|| Arc::new(build_snapshot(1, &initial_slots()).expect("the first snapshot")))
        .clone()
}

/// What a snapshot is built from: its generation and each backend's part of it (`left` is
/// the fuzzer's bookkeeping, not the snapshot's).
type SnapKey = (u64, [(bool, BackendState, u32, bool); 14]);

/// Snapshots at most in [`SnapCache`] (it starts again when full).
pub(crate) const SNAP_CACHE: usize = 4096;

/// Snapshots already built, by what they are built from: a snapshot is immutable and a pure
/// function of its key, so inputs that swap the same way (the fuzzer's mutations keep most of
/// an input) share it instead of building Maglev tables again. `None`: the build failed.
#[derive(Default)]
pub(crate) struct SnapCache {
    pub(crate) snaps: FxMap<SnapKey, Option<Arc<Snapshot>>>,
    pub(crate) maglevs: MaglevCache,
}

impl SnapCache {
    pub(crate) fn get(
        &mut self,
        generation: u64,
        slots: &[BackendSlot; 14],
    ) -> Result<Arc<Snapshot>, String> {
        let key: SnapKey = (
            generation,
            slots.map(|s| (s.present, s.state, s.weight, s.resolved)),
        );
        if let Some(s) = self.snaps.get(&key) {
            return s.clone().ok_or_else(|| "not built (cached)".to_string());
        }
        if self.snaps.len() >= SNAP_CACHE {
            self.snaps.clear();
        }
        if self.maglevs.len() >= SNAP_CACHE {
            self.maglevs.clear();
        }
        let built = build_snapshot_with(generation, slots, &mut self.maglevs).map(Arc::new);
        self.snaps.insert(key, built.as_ref().ok().cloned());
        built
    }
}
