//! Routed mode: sluiced drives BIRD 2 to announce VIPs and NAT addresses over BGP, with BFD.
//!
//! - The `[bgp]` section's types live in [`crate::config::bgp`] (config owns its sections).
//! - [`prefixes`]: which prefixes to announce, with which attributes, from what the daemon wants.
//! - [`bird`]: renders BIRD 2 configuration from both.
//! - [`control`]: a client of BIRD's control socket (`configure`, protocol and BFD state).
//! - [`supervisor`]: starts and restarts BIRD, and the [`Announcer`] the daemon calls.
//! - [`wanted`]: which addresses to announce, from a compile report.
//!
//! docs/bgp.md says why BIRD, what is announced when, and what the daemon does not do yet.
pub mod bird;
pub mod control;
pub mod prefixes;
pub mod supervisor;
pub mod wanted;

pub use crate::config::BgpConfig;
pub use prefixes::{Announcement, PrefixSet};
pub use supervisor::{Announcer, BgpError, StartOptions};
