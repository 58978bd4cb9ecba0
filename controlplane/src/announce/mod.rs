//! Announcing Sluice's addresses to the network: VIPs and NAT addresses, over BGP for now
//! ([`bgp`]).
pub mod bgp;
