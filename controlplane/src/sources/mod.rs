//! # Sources: where the cluster model comes from
//!
//! A source produces the [`Model`](crate::model::Model) (Services, EndpointSlices, Nodes) that
//! the daemon compiles; it knows nothing of compiling, the dataplane or the admin API. The
//! daemon runs exactly one, chosen by `[source] kind`:
//! - [`manifest`]: a directory of Kubernetes manifests, polled and hot-reloaded; an invalid
//!   change is reported and the last good model keeps serving.
//! - [`kubernetes`]: watchers on a live cluster, plus what only a cluster has: the status
//!   writer (`status.loadBalancer`, Events) and the Lease that picks the one instance that
//!   writes.
//!
//! Both end in the same place: a whole [`Model`](crate::model::Model) (manifests) or a
//! [`Batch`](kubernetes::Batch) applied to it (Kubernetes), after which compile, IPAM,
//! health, publish and announce are shared.
pub mod kubernetes;
pub mod manifest;
