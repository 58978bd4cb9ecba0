//! Sluice's dataplane: packets in, packets out.
#![forbid(unsafe_code)]
