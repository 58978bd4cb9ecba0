//! Sluice's control plane: sources, compile, publish.
#![forbid(unsafe_code)]
