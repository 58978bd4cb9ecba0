//! What the Kubernetes source asks of the API server, as RBAC sees it. `deploy/kubernetes/rbac.yaml`
//! grants exactly this, and `controlplane/tests/deploy.rs` checks both directions: the
//! manifests against this list, and this list against the source's API calls (the `Api<K>`
//! kinds of each file, the methods called on a receiver whose name contains `api`, the
//! watchers and the Event recorder). A new API call without its line here fails that test.

/// Where a permission is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// In every namespace (or for a cluster-scoped kind): a ClusterRole.
    Cluster,
    /// In Sluice's own namespace only (`source.lease_namespace`): a Role.
    OwnNamespace,
}

/// One resource and the verbs Sluice uses on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Resource, with `/subresource` if any.
    pub resource: &'static str,
    /// RBAC verbs.
    pub verbs: &'static [&'static str],
    /// Where.
    pub scope: Scope,
}

/// Everything the Kubernetes source does with the API.
pub const API_ACCESS: &[Access] = &[
    // source.rs: one watcher per kind (list, then watch).
    Access {
        group: "",
        resource: "services",
        verbs: &["list", "watch"],
        scope: Scope::Cluster,
    },
    Access {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: &["list", "watch"],
        scope: Scope::Cluster,
    },
    Access {
        group: "",
        resource: "nodes",
        verbs: &["list", "watch"],
        scope: Scope::Cluster,
    },
    // status.rs: server-side apply of status.loadBalancer.
    Access {
        group: "",
        resource: "services/status",
        verbs: &["patch"],
        scope: Scope::Cluster,
    },
    // events.rs: create an Event, and merge-patch it (count, series, latest message) when it
    // repeats.
    Access {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        scope: Scope::Cluster,
    },
    // lease.rs: get the Lease, create it if missing, renew or take it over by replacing it.
    // members.rs (L2 mode): the same for this host's own Lease, and list the members' Leases.
    Access {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["create", "get", "list", "update"],
        scope: Scope::OwnNamespace,
    },
];
