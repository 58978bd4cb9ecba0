//! The admin API's JSON documents: what `sluiced` answers and `sluicectl` reads.
//!
//! Every type serialises and deserialises, so the daemon and the CLI share one definition.
//! Times are Unix seconds with a fraction (`*_unix`); durations are named for their unit.
//! docs/operations.md shows an example of each.
use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The API version prefix of every path (`/v1/...`).
pub const PREFIX: &str = "/v1";

/// An error: the HTTP status and a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong and what to do about it.
    pub error: String,
}

/// `GET /v1/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// `sluiced`'s version.
    pub version: String,
    /// API version (`v1`).
    pub api: String,
}

/// Backends counted by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    /// Taking new flows.
    pub active: usize,
    /// No new flows; established flows kept (operator drain, or removed from the endpoints).
    pub draining: usize,
    /// Failing health checks; no new flows.
    pub down: usize,
}

/// Connection-table fill.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TableFill {
    /// Live forward flows.
    pub entries: u64,
    /// Capacity (both families).
    pub capacity: u64,
    /// `entries / capacity`.
    pub fill: f64,
}

/// `GET /v1/status`: the daemon at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// `sluiced`'s version.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// When the daemon started.
    pub started_unix: f64,
    /// Seconds since start.
    pub uptime_seconds: f64,
    /// The configuration file.
    pub config: String,
    /// Where Services come from (`manifests`, `kubernetes`).
    pub source: String,
    /// The last source error (e.g. an invalid manifest), while the last good state is served.
    pub source_error: Option<String>,
    /// Generation of the snapshot the workers run.
    pub generation: u64,
    /// When it was published.
    pub published_unix: f64,
    /// Served Services.
    pub services: usize,
    /// Frontends (VIP x port x protocol).
    pub frontends: usize,
    /// Backends of every frontend, by state.
    pub backends: StateCounts,
    /// Worker count.
    pub workers: usize,
    /// Packets received per second (all workers, last second).
    pub rx_pps: f64,
    /// Packets sent per second.
    pub tx_pps: f64,
    /// Mean busy ratio of the workers (last second).
    pub busy_ratio: f64,
    /// Packets dropped since start (or the last counter reset).
    pub drops: u64,
    /// Connection tables of all workers.
    pub conntrack: TableFill,
    /// Next hops whose MAC is not known yet.
    pub unresolved_next_hops: Vec<IpAddr>,
    /// Backend addresses drained by the operator.
    pub drained: Vec<IpAddr>,
    /// Maglev weights set by the operator.
    pub weights: BTreeMap<IpAddr, u32>,
    /// Problems: global ones, then per Service (`ns/name: ...`).
    pub problems: Vec<String>,
    /// When counters were last reset (`None`: never).
    pub counters_reset_unix: Option<f64>,
    /// Routed mode at a glance (`None`: no `[bgp]` section).
    #[serde(default)]
    pub bgp: Option<BgpSummary>,
}

/// Routed mode in `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpSummary {
    /// Whether the host is drained (nothing announced, still forwarding).
    pub drained: bool,
    /// Prefixes BIRD announces.
    pub announced: usize,
    /// Peers whose session is Established.
    pub peers_up: usize,
    /// Configured peers.
    pub peers: usize,
}

/// A VIP and the pool it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vip {
    /// The address.
    pub addr: IpAddr,
    /// The `[[pools]]` entry that contains it.
    pub pool: Option<String>,
}

/// A Service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// The port's name (may be empty).
    pub name: String,
    /// The Service port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

/// Traffic counters (since start or the last reset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// New flows scheduled.
    pub new_flows: u64,
    /// Flows tracked now (a gauge: new flows minus flows whose conntrack entry was freed; not
    /// affected by a counter reset).
    #[serde(default)]
    pub active_flows: u64,
}

impl Traffic {
    /// Field-wise sum.
    pub fn add(&mut self, o: Traffic) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_flows += o.new_flows;
        self.active_flows += o.active_flows;
    }
}

/// One Service in `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSummary {
    /// `namespace/name`.
    pub service: String,
    /// Its VIPs, one per family.
    pub vips: Vec<Vip>,
    /// Its served ports.
    pub ports: Vec<PortSpec>,
    /// Forwarding method (`nat`, `dsr-l2`, `dsr-ipip`).
    pub method: String,
    /// Backends are `pod`s or `node`s.
    pub target: String,
    /// `Cluster` or `Local`.
    pub external_traffic_policy: String,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_seconds: Option<u32>,
    /// `loadBalancerSourceRanges` (empty: everyone).
    pub source_ranges: Vec<String>,
    /// Generation of the snapshot this comes from.
    pub generation: u64,
    /// Distinct backends (address and port) by state, over every frontend.
    pub backends: StateCounts,
    /// Traffic over every frontend.
    pub traffic: Traffic,
    /// What is wrong (empty when all is well).
    pub problems: Vec<String>,
}

/// The health of a backend's probe target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthBrief {
    /// `tcp://addr:port` or `http://addr:port/path`.
    pub target: String,
    /// `up`, `down`, or `pending` (not probed yet).
    pub health: String,
    /// When it last changed.
    pub since_unix: f64,
    /// The last failure's message.
    pub last_error: Option<String>,
}

/// A backend of one frontend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendDetail {
    /// Backend id (stable while the backend exists).
    pub id: u32,
    /// Address.
    pub addr: IpAddr,
    /// Port.
    pub port: u16,
    /// Node.
    pub node: Option<String>,
    /// Maglev weight.
    pub weight: u32,
    /// `active`, `draining` or `down`.
    pub state: String,
    /// Why the state is not `active`.
    pub reason: Option<String>,
    /// When the state last changed, as seen by this daemon.
    pub since_unix: f64,
    /// Health check; `None`: the backend is not probed (health checks off, or a UDP port
    /// without a probe port), so it is never taken down.
    pub health: Option<HealthBrief>,
    /// Maglev table entries held.
    pub maglev_entries: u32,
    /// `maglev_entries / table size`: the share of new flows it gets while all are active.
    pub maglev_share: f64,
    /// Traffic sent to it.
    pub traffic: Traffic,
    /// Its share of the frontend's new flows (since start or reset).
    pub flow_share: f64,
    /// Next hop.
    pub next_hop: Option<IpAddr>,
    /// The next hop's MAC (`None`: not resolved yet).
    pub mac: Option<String>,
}

/// One frontend (VIP, port, protocol) of a Service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontendDetail {
    /// Frontend id.
    pub id: u32,
    /// `namespace/name:port-name`.
    pub name: String,
    /// VIP.
    pub vip: IpAddr,
    /// Port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Forwarding method.
    pub method: String,
    /// Maglev table size.
    pub maglev_size: u32,
    /// ClientIP affinity in milliseconds.
    pub affinity_ms: Option<u32>,
    /// Traffic over its backends.
    pub traffic: Traffic,
    /// Its new-flow budget refusals and SYN proxy counters (since the frontend was created
    /// on this host).
    #[serde(default)]
    pub counters: FrontendCounters,
    /// Its backends, by address and port.
    pub backends: Vec<BackendDetail>,
}

/// One frontend's own counters, summed over the workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendCounters {
    /// New flows refused by the frontend's own budget (`sluice.dev/new-flow-limit`; drops
    /// `new_flow_limit_vip`).
    pub refused_vip_budget: u64,
    /// New flows refused by a source prefix's budget (`sluice.dev/new-flow-limit-per-source`;
    /// drops `new_flow_limit_source`).
    pub refused_source_budget: u64,
    /// SYN-ACKs with a cookie the SYN proxy sent for the frontend.
    pub syn_cookies_sent: u64,
    /// Workers whose SYN proxy answers the (`auto`) frontend's SYNs with cookies now (a gauge).
    pub syn_proxy_engaged_workers: u64,
}

/// `GET /v1/services/NS/NAME`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceDetail {
    /// The summary.
    #[serde(flatten)]
    pub summary: ServiceSummary,
    /// Its frontends.
    pub frontends: Vec<FrontendDetail>,
}

/// One row of `GET /v1/backends`: a backend of one frontend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendRow {
    /// `namespace/name`.
    pub service: String,
    /// Frontend name (`namespace/name:port-name`).
    pub frontend: String,
    /// VIP.
    pub vip: IpAddr,
    /// VIP port.
    pub vip_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The backend.
    #[serde(flatten)]
    pub backend: BackendDetail,
}

/// One worker in `GET /v1/workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRow {
    /// Worker index.
    pub worker: u16,
    /// Pinned core.
    pub core: Option<usize>,
    /// Its queues (`port/rxqN`).
    pub queues: Vec<String>,
    /// Packets received per second (last second).
    pub rx_pps: f64,
    /// Packets sent per second (last second).
    pub tx_pps: f64,
    /// Share of poll-loop time spent on iterations that had packets (last second).
    pub busy_ratio: f64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets dropped.
    pub drops: u64,
    /// New flows scheduled.
    pub new_flows: u64,
    /// Poll-loop iterations.
    pub polls: u64,
    /// Iterations that received packets.
    pub busy_polls: u64,
    /// Connection table.
    pub conntrack: TableFill,
    /// Conntrack evictions (bucket full).
    pub evictions: u64,
    /// Established TCP, UDP and other flows evicted (forward or reverse tables).
    #[serde(default)]
    pub evictions_established: u64,
    /// New connections refused because their buckets held only established flows.
    #[serde(default)]
    pub refusals: u64,
    /// SYN-ACKs with a cookie the SYN proxy sent.
    #[serde(default)]
    pub syn_cookies_sent: u64,
    /// Client ACKs with a valid cookie: connections the SYN proxy opened to a backend.
    #[serde(default)]
    pub syn_cookies_valid: u64,
    /// `auto` SYN-proxy frontends whose SYNs the worker answers with cookies now.
    #[serde(default)]
    pub syn_proxy_engaged: u64,
    /// Times an `auto` frontend's SYN proxy engaged on the worker.
    #[serde(default)]
    pub syn_proxy_engagements: u64,
    /// Generation of the snapshot the worker runs.
    pub generation: u64,
}

/// One reason in `GET /v1/drops`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DropRow {
    /// Stable name (the `reason` label of `sluice_drops_total`).
    pub reason: String,
    /// What it means.
    pub description: String,
    /// Total over the workers.
    pub total: u64,
    /// Per worker, by index.
    pub per_worker: Vec<u64>,
    /// Per second (last second).
    pub rate: f64,
}

/// `GET /v1/drops`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drops {
    /// Sum of every reason.
    pub total: u64,
    /// Every reason, in counter order.
    pub reasons: Vec<DropRow>,
}

/// One port in `GET /v1/ports` (DPDK counters, sampled every second).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortRow {
    /// Name from the configuration.
    pub name: String,
    /// DPDK device.
    pub device: String,
    /// MAC.
    pub mac: String,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets the NIC dropped because the RX queues were full.
    pub rx_missed: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
    /// Packets received per second (last second).
    pub rx_pps: f64,
    /// Packets sent per second (last second).
    pub tx_pps: f64,
}

/// One tracked flow in `GET /v1/conntrack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRow {
    /// The worker whose table holds it.
    pub worker: u16,
    /// Client address.
    pub client: IpAddr,
    /// Client port.
    pub client_port: u16,
    /// VIP.
    pub vip: IpAddr,
    /// VIP port.
    pub vip_port: u16,
    /// `tcp`, `udp`, `icmp` or the protocol number.
    pub protocol: String,
    /// Flow state (`tcp_syn_sent`, `tcp_established`, `tcp_closing`, `udp`, `other`).
    pub state: String,
    /// Milliseconds since the flow's last packet.
    pub idle_ms: u64,
    /// Milliseconds until it expires if no packet comes.
    pub expires_in_ms: u64,
    /// Backend id.
    pub backend_id: u32,
    /// Backend `addr:port` (`None`: the id is not in the current snapshot).
    pub backend: Option<String>,
    /// The backend's state.
    pub backend_state: Option<String>,
    /// Frontend name.
    pub frontend: Option<String>,
    /// NAT local `addr:port` (`None` for DSR).
    pub nat: Option<String>,
}

/// `GET /v1/conntrack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conntrack {
    /// Flows found, by worker.
    pub flows: Vec<FlowRow>,
    /// Workers that answered.
    pub workers_answered: usize,
    /// Workers that did not answer in time.
    pub workers_unanswered: Vec<u16>,
}

/// One neighbour in `GET /v1/neighbours`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbour {
    /// Address.
    pub ip: IpAddr,
    /// MAC.
    pub mac: String,
    /// Whether a backend uses it as next hop.
    pub next_hop: bool,
}

/// `GET /v1/neighbours`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbours {
    /// Learned neighbours.
    pub neighbours: Vec<Neighbour>,
    /// Next hops still being resolved.
    pub unresolved: Vec<IpAddr>,
}

/// One probe target in `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthRow {
    /// `tcp://addr:port` or `http://addr:port/path`.
    pub target: String,
    /// `up` or `down`.
    pub health: String,
    /// When `health` last changed.
    pub since_unix: f64,
    /// The last failure's message (kept after recovery).
    pub last_error: Option<String>,
    /// When the last probe finished.
    pub last_probe_unix: Option<f64>,
    /// Consecutive successes.
    pub successes: u32,
    /// Consecutive failures.
    pub failures: u32,
    /// Probes run.
    pub probes: u64,
}

/// `GET /v1/config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigDoc {
    /// The file.
    pub path: String,
    /// Its contents as JSON (keys left out take the defaults of docs/configuration.md).
    pub file: serde_json::Value,
}

/// Body of `POST /v1/backends/ADDR/weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightRequest {
    /// The weight (0..=10000); `null` removes the override (weight 1).
    pub weight: Option<u32>,
}

/// The answer to a write on a backend (drain, undrain, weight).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendChange {
    /// The backend address.
    pub addr: IpAddr,
    /// Whether it is drained now.
    pub drained: bool,
    /// Its weight override now.
    pub weight: Option<u32>,
    /// Backends (of all frontends) with that address.
    pub backends: usize,
    /// Generation of the snapshot that carries the change.
    pub generation: u64,
}

/// The answer to `POST /v1/reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    /// The manifest directory.
    pub dir: String,
    /// Services in it.
    pub services: usize,
    /// Warnings (ignored objects).
    pub warnings: Vec<String>,
    /// Generation of the snapshot in use afterwards.
    pub generation: u64,
}

/// The answer to `POST /v1/counters/reset`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CountersReset {
    /// When.
    pub reset_unix: f64,
}

/// `GET /v1/bgp` (also the answer of `POST /v1/host/drain` and `/v1/host/undrain`): routed
/// mode as sluiced last read it from BIRD (about once a second).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bgp {
    /// Whether `[bgp]` is configured.
    pub enabled: bool,
    /// Whether the operator drained the host (`sluicectl host drain`): nothing is announced,
    /// the workers keep forwarding.
    pub drained: bool,
    /// The prefixes BIRD was last configured to announce (`10.98.0.100/32`).
    pub announced: Vec<String>,
    /// The supervised BIRD (`None` without `[bgp]`; pid `None` in attach mode).
    pub bird: Option<BirdProcess>,
    /// Every configured peer, in config order.
    pub peers: Vec<BgpPeer>,
}

/// The supervised BIRD process in [`Bgp`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BirdProcess {
    /// Its pid while it runs.
    pub pid: Option<u32>,
    /// How many times sluiced started it (restarts are `starts - 1`).
    pub starts: u64,
    /// How its last run ended (`signal: 9 (SIGKILL)`, `exit status: 1`).
    pub last_exit: Option<String>,
}

/// One BGP peer in [`Bgp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpPeer {
    /// `bgp.peers[].name`, or derived from the address.
    pub name: String,
    /// The neighbour's address.
    pub address: IpAddr,
    /// The neighbour's AS.
    pub asn: u32,
    /// BGP state: `Idle`, `Connect`, `Active`, `OpenSent`, `OpenConfirm`, `Established`, or
    /// `Down` (BIRD does not answer, or the protocol is not running).
    pub state: String,
    /// When the session entered its state (Unix seconds).
    pub since_unix: Option<u64>,
    /// Prefixes exported to the peer.
    pub exported: u64,
    /// Prefixes accepted from the peer (sluiced imports none).
    pub imported: u64,
    /// BFD session state (`Up`, `Down`, `Init`); `None` when BFD is off for the peer.
    pub bfd: Option<String>,
    /// BIRD's last error for the session, or why sluiced could not read it.
    pub last_error: Option<String>,
    /// What to check when the session is not up.
    pub hint: Option<String>,
}

/// `GET /v1/sync`: flow sync with the peer hosts (`[sync]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// This host's name (`sync.host`); empty when flow sync is off.
    pub host: String,
    /// The sync socket's address.
    pub address: Option<std::net::SocketAddr>,
    /// The peers.
    pub peers: Vec<SyncPeerRow>,
    /// Flow updates the workers put on their sync rings.
    pub published: u64,
    /// Flow updates dropped because a sync ring was full.
    pub ring_full: u64,
    /// Flow updates waiting in the rings now.
    pub ring_queued: u64,
    /// Records sent (summed over peers).
    pub records_sent: u64,
    /// Records not sent: over a peer's rate limit, or the send failed.
    pub send_dropped: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Bytes sent (UDP payload).
    pub bytes_sent: u64,
    /// Valid records received.
    pub records_received: u64,
    /// Records received that could not be handed to a worker (its command channel full).
    pub install_dropped: u64,
    /// Synced flows the workers installed.
    pub installed: u64,
    /// Synced flows not installed: unknown here, or an own flow holds the key or NAT port.
    pub conflicts: u64,
    /// Synced flows whose packets came to this host, which carries them now.
    pub adopted: u64,
    /// Walks (bulk transfers, refreshes) the workers finished.
    pub walks: u64,
    /// Datagrams dropped, by reason (malformed, bad_key, unknown_host, wrong_address,
    /// stale, replay).
    pub dropped: BTreeMap<String, u64>,
}

/// One peer in [`SyncStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPeerRow {
    /// Its name.
    pub name: String,
    /// Its sync address.
    pub address: IpAddr,
    /// Its NAT addresses (taken over when it is gone).
    pub nat_addresses: Vec<IpAddr>,
    /// Records sent to it.
    pub records_sent: u64,
    /// Valid messages received from it.
    pub messages_received: u64,
    /// Valid records received from it.
    pub records_received: u64,
    /// When its last valid message arrived (ms since the Unix epoch).
    pub last_heard_unix_ms: Option<u64>,
    /// Our clock minus its clock at its last message: transit time plus clock skew.
    pub lag_ms: Option<u64>,
    /// Whether it has sent us its bulk transfer since we started.
    pub bulk_done: bool,
}

impl Default for SyncPeerRow {
    fn default() -> Self {
        SyncPeerRow {
            name: String::new(),
            address: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            nat_addresses: Vec::new(),
            records_sent: 0,
            messages_received: 0,
            records_received: 0,
            last_heard_unix_ms: None,
            lag_ms: None,
            bulk_done: false,
        }
    }
}

/// `GET /v1/l2`: L2 mode (`[l2]`): the live hosts, each VIP's owner, heartbeat counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L2Status {
    /// This host's name (`l2.host`); empty when L2 mode is off.
    pub host: String,
    /// The heartbeat interface.
    pub interface: String,
    /// Whether this host may own VIPs (it has listened for one dead interval and its workers
    /// run).
    pub ready: bool,
    /// This process's boot id in its heartbeats.
    pub boot: u64,
    /// The live hosts, this one included.
    pub live: Vec<String>,
    /// The other hosts.
    pub peers: Vec<L2PeerRow>,
    /// Each VIP's owner.
    pub vips: Vec<L2Vip>,
    /// VIPs this host owns.
    pub owned: u64,
    /// Owner changes seen since start.
    pub ownership_changes: u64,
    /// Valid heartbeats received.
    pub heartbeats_received: u64,
    /// Heartbeats dropped, by reason (malformed, bad_key, unknown_host, wrong_address,
    /// replay, own_name).
    pub dropped: BTreeMap<String, u64>,
}

/// One other host in [`L2Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct L2PeerRow {
    /// Its name.
    pub name: String,
    /// Its listed address.
    pub address: IpAddr,
    /// Live now.
    pub alive: bool,
    /// Milliseconds since its last valid heartbeat (`None`: never heard).
    pub last_heartbeat_ms_ago: Option<u64>,
    /// Times it came up or went down.
    pub transitions: u64,
}

/// One VIP's owner in [`L2Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct L2Vip {
    /// The VIP.
    pub vip: IpAddr,
    /// Its owner (`None`: no live host can serve it).
    pub owner: Option<String>,
}
