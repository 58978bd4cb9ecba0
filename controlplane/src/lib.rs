//! Sluice's control plane: sources, compile, publish.
//!
//! - [`config`]: the `sluiced` TOML configuration.
//! - [`model`]: the cluster model (Services, EndpointSlices, Nodes) every source produces.
//! - [`manifest`]: the manifest-directory source and its watcher.
//! - [`compile`]: model + config + health + neighbours → dataplane `Snapshot`, with IPAM.
//! - [`health`]: active TCP/HTTP health checks.
//! - [`daemon`]: the `sluiced` runtime (EAL, ports, workers, the compile/publish loop).
#![forbid(unsafe_code)]

pub mod compile;
pub mod config;
pub mod daemon;
pub mod health;
pub mod manifest;
pub mod model;
