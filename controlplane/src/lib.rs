//! Sluice's control plane: sources, compile, publish.
//!
//! - [`config`]: the `sluiced` TOML configuration.
//! - [`model`]: the cluster model (Services, EndpointSlices, Nodes) every source produces.
//! - [`sources`]: where the model comes from: the manifest directory or Kubernetes (watchers,
//!   status and Events, leader election).
//! - [`compile`]: model + config + health + neighbours → dataplane `Snapshot`, with IPAM
//!   ([`compile::ipam`]: VIPs for Services from the configured pools).
//! - [`health`]: active TCP/HTTP health checks.
//! - [`daemon`]: the `sluiced` runtime: boot (EAL, ports, workers), the control state and the
//!   compile/publish loop.
//! - [`announce`]: telling the network about VIPs (gratuitous ARP/NA; BGP through BIRD 2 in
//!   [`announce::bgp`]) and resolving next hops.
//! - [`logs`]: rate limits for the log lines of lasting conditions (failing API requests,
//!   pending Services).
//! - [`sync`]: flow-state sync between hosts (`[sync]`): the sync socket, its messages, bulk
//!   transfers.
//! - [`admin`]: the admin API (Unix socket, HTTP/JSON), its client with `sluicectl`'s tables,
//!   and Prometheus metrics.
//! - [`capture`]: packet capture and trace: taps on the workers, pcapng and trace lines.
#![forbid(unsafe_code)]

pub mod admin;
pub mod announce;
pub mod capture;
pub mod compile;
pub mod config;
pub mod daemon;
pub mod health;
pub mod l2;
pub mod logs;
pub mod model;
pub mod sources;
pub mod sync;

/// The in-process fake API server, shared by the unit tests that talk to it.
#[cfg(test)]
#[path = "../tests/support/fakeapi.rs"]
pub(crate) mod fakeapi;
