//! Conntrack (being written).
