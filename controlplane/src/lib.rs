//! Sluice's control plane: sources, compile, publish.
//!
//! - [`config`]: the `sluiced` TOML configuration.
//! - [`model`]: the cluster model (Services, EndpointSlices, Nodes) every source produces.
//! - [`manifest`]: the manifest-directory source and its watcher.
//! - [`compile`]: model + config + health + neighbours → dataplane `Snapshot`, with IPAM.
//! - [`health`]: active TCP/HTTP health checks.
//! - [`ipam`]: VIPs for Services from the configured pools (requests, sharing, stability).
//! - [`k8s`]: the Kubernetes source (watchers, status and Events, leader election).
//! - [`daemon`]: the `sluiced` runtime (EAL, ports, workers, the compile/publish loop).
//! - [`ctl`]: `sluicectl`'s tables.
//! - [`admin`]: the admin API (Unix socket, HTTP/JSON), its client, and Prometheus metrics.
//! - [`announce`]: announcing VIPs and NAT addresses to routers (BGP through BIRD 2).
#![forbid(unsafe_code)]

pub mod admin;
pub mod announce;
pub mod compile;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod health;
pub mod ipam;
pub mod k8s;
pub mod manifest;
pub mod model;
