//! The deployment files in `deploy/`: every Kubernetes manifest parses as its API type with no
//! field left over, the ConfigMap's `sluice.toml` loads, the objects refer to each other, and
//! the RBAC rules grant exactly what the Kubernetes source calls (the list in
//! `sources/kubernetes/access.rs`, itself checked against the source's API calls).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::Resource;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_yaml::Value;
use sluice_controlplane::config::{Config, SourceKind};
use sluice_controlplane::sources::kubernetes::access::{Scope, API_ACCESS};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every YAML document under `deploy/kubernetes`, with its file name.
fn documents() -> Vec<(String, Value)> {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "manifests in {}", dir.display());
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        for d in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(d).unwrap_or_else(|e| panic!("{name}: {e}"));
            if !v.is_null() {
                out.push((name.clone(), v));
            }
        }
    }
    out
}

/// Whether everything in `want` is in `got` (maps: every key of `want`, recursively).
fn contains(got: &Value, want: &Value, path: &str) -> Result<(), String> {
    match (got, want) {
        (Value::Mapping(g), Value::Mapping(w)) => {
            for (k, wv) in w {
                let key = k.as_str().unwrap_or("?");
                let p = format!("{path}.{key}");
                let gv = g
                    .get(k)
                    .ok_or_else(|| format!("{p}: not a field of the API type (misspelled?)"))?;
                contains(gv, wv, &p)?;
            }
            Ok(())
        }
        (Value::Sequence(g), Value::Sequence(w)) if g.len() == w.len() => {
            for (i, (gv, wv)) in g.iter().zip(w).enumerate() {
                contains(gv, wv, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (g, w) if g == w => Ok(()),
        (g, w) => Err(format!("{path}: {w:?} reads back as {g:?}")),
    }
}

/// Parses `v` as `T` and checks nothing was dropped on the way (an unknown field).
fn typed<T: DeserializeOwned + Serialize>(file: &str, v: &Value) -> T {
    let t: T = serde_yaml::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{file}: not a valid {}: {e}", std::any::type_name::<T>()));
    let back = serde_yaml::to_value(&t).unwrap();
    if let Err(e) = contains(&back, v, "") {
        panic!("{file}: {e}");
    }
    t
}

#[derive(Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    bindings: Vec<RoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
}

fn objects() -> Objects {
    let mut o = Objects::default();
    for (file, v) in documents() {
        let kind = v["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "Namespace" => o.namespaces.push(typed(&file, &v)),
            "ServiceAccount" => o.accounts.push(typed(&file, &v)),
            "ClusterRole" => o.cluster_roles.push(typed(&file, &v)),
            "ClusterRoleBinding" => o.cluster_bindings.push(typed(&file, &v)),
            "Role" => o.roles.push(typed(&file, &v)),
            "RoleBinding" => o.bindings.push(typed(&file, &v)),
            "ConfigMap" => o.config_maps.push(typed(&file, &v)),
            "DaemonSet" => o.daemon_sets.push(typed(&file, &v)),
            k => panic!("{file}: unexpected kind {k:?}; teach this test about it"),
        }
    }
    o
}

/// The configuration in the ConfigMap.
fn config(o: &Objects) -> Config {
    assert_eq!(o.config_maps.len(), 1);
    let text = &o.config_maps[0].data.as_ref().unwrap()["sluice.toml"];
    Config::parse(text, "configmap.yaml:sluice.toml").unwrap_or_else(|e| panic!("{e}"))
}

type Grant = (Scope, String, String, String);

/// What the rules grant, one (scope, group, resource, verb) each; and the resourceNames of
/// each, if limited.
fn grants(
    rules: &[PolicyRule],
    scope: Scope,
    names: &mut BTreeMap<Grant, Vec<String>>,
) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for r in rules {
        let groups = r.api_groups.clone().unwrap_or_default();
        let resources = r.resources.clone().unwrap_or_default();
        assert!(r.non_resource_urls.is_none(), "no non-resource URLs: {r:?}");
        for x in groups.iter().chain(&resources).chain(&r.verbs) {
            assert_ne!(x, "*", "no wildcards: {r:?}");
        }
        for g in &groups {
            for res in &resources {
                for v in &r.verbs {
                    let k = (scope, g.clone(), res.clone(), v.clone());
                    if let Some(n) = &r.resource_names {
                        names.insert(k.clone(), n.clone());
                    }
                    assert!(out.insert(k), "granted twice: {g}/{res} {v}");
                }
            }
        }
    }
    out
}

fn expected() -> BTreeSet<Grant> {
    API_ACCESS
        .iter()
        .flat_map(|a| {
            a.verbs.iter().map(move |v| {
                (
                    a.scope,
                    a.group.to_owned(),
                    a.resource.to_owned(),
                    (*v).to_owned(),
                )
            })
        })
        .collect()
}

#[test]
fn manifests_parse_and_refer_to_each_other() {
    let o = objects();
    let cfg = config(&o);
    assert_eq!(cfg.source.kind, SourceKind::Kubernetes);
    assert_eq!(o.namespaces.len(), 1);
    let ns = o.namespaces[0].metadata.name.clone().unwrap();
    assert_eq!(
        cfg.source.lease_namespace, ns,
        "the Lease lives in Sluice's namespace"
    );
    assert_eq!(o.accounts.len(), 1);
    let sa = &o.accounts[0].metadata;
    assert_eq!(sa.namespace.as_deref(), Some(ns.as_str()));
    let sa_name = sa.name.clone().unwrap();

    // Bindings: each role bound to the ServiceAccount, and nothing else bound.
    let subject_ok = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        let s = subjects.as_ref().unwrap();
        s.len() == 1
            && s[0].kind == "ServiceAccount"
            && s[0].name == sa_name
            && s[0].namespace.as_deref() == Some(ns.as_str())
    };
    assert_eq!(o.cluster_roles.len(), o.cluster_bindings.len());
    for b in &o.cluster_bindings {
        assert!(subject_ok(&b.subjects), "{:?}", b.metadata.name);
        assert_eq!(b.role_ref.kind, "ClusterRole");
        assert!(o
            .cluster_roles
            .iter()
            .any(|r| r.metadata.name.as_deref() == Some(b.role_ref.name.as_str())));
    }
    assert_eq!(o.roles.len(), o.bindings.len());
    for b in &o.bindings {
        assert!(subject_ok(&b.subjects), "{:?}", b.metadata.name);
        assert_eq!(b.metadata.namespace.as_deref(), Some(ns.as_str()));
        assert_eq!(b.role_ref.kind, "Role");
        assert!(o.roles.iter().any(|r| {
            r.metadata.name.as_deref() == Some(b.role_ref.name.as_str())
                && r.metadata.namespace == b.metadata.namespace
        }));
    }

    // The DaemonSet: host network, the ServiceAccount, load-balancer nodes, hugepages, the
    // capabilities DPDK needs and no more, the ConfigMap mounted where args point.
    assert_eq!(o.daemon_sets.len(), 1);
    let ds = &o.daemon_sets[0];
    assert_eq!(ds.metadata.namespace.as_deref(), Some(ns.as_str()));
    let pod = ds.spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some(sa_name.as_str()));
    assert!(pod
        .node_selector
        .as_ref()
        .is_some_and(|s| s.get("sluice.dev/load-balancer").map(String::as_str) == Some("true")));
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert!(added.contains("IPC_LOCK"), "{added:?}");
    assert!(!added.contains("SYS_ADMIN"), "{added:?}");
    let res = c.resources.as_ref().unwrap();
    for q in [res.requests.as_ref().unwrap(), res.limits.as_ref().unwrap()] {
        assert!(q.contains_key("hugepages-2Mi"), "{q:?}");
    }
    assert_eq!(res.requests, res.limits, "Guaranteed QoS");
    let args = c.args.clone().unwrap_or_default();
    let at = args.iter().position(|a| a == "--config").unwrap();
    let cfg_path = Path::new(&args[at + 1]);
    let mounts = c.volume_mounts.as_ref().unwrap();
    let m = mounts
        .iter()
        .find(|m| Path::new(&m.mount_path) == cfg_path.parent().unwrap())
        .expect("the config is mounted where --config points");
    let vol = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == m.name)
        .unwrap();
    assert_eq!(
        vol.config_map.as_ref().unwrap().name,
        o.config_maps[0].metadata.name.clone().unwrap()
    );
    for dir in [
        cfg.admin.socket.parent().unwrap(),
        cfg.admin.state_dir.as_path(),
    ] {
        assert!(
            mounts.iter().any(|m| Path::new(&m.mount_path) == dir),
            "{} is mounted from the host",
            dir.display()
        );
    }
    let env: BTreeSet<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert!(env.contains("POD_NAME"), "the instance's identity");
}

/// The ClusterRole and Role grant exactly `API_ACCESS`, each at its scope, with the Lease
/// limited to `source.lease_name` where RBAC allows it.
#[test]
fn rbac_grants_exactly_what_the_source_uses() {
    let o = objects();
    let cfg = config(&o);
    let mut names = BTreeMap::new();
    let mut granted = BTreeSet::new();
    for r in &o.cluster_roles {
        granted.extend(grants(
            r.rules.as_deref().unwrap_or_default(),
            Scope::Cluster,
            &mut names,
        ));
    }
    for r in &o.roles {
        assert_eq!(
            r.metadata.namespace.as_deref(),
            Some(cfg.source.lease_namespace.as_str())
        );
        granted.extend(grants(
            r.rules.as_deref().unwrap_or_default(),
            Scope::OwnNamespace,
            &mut names,
        ));
    }
    let want = expected();
    let missing: Vec<_> = want.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "deploy/kubernetes/rbac.yaml against access.rs: missing {missing:?}, extra {extra:?}"
    );
    for ((_, g, res, verb), n) in &names {
        assert_eq!(
            n,
            &vec![cfg.source.lease_name.clone()],
            "{g}/{res} {verb} is limited to the Lease Sluice uses"
        );
    }
    // Leases are not limited by resourceNames: with l2.membership = "leases" every host
    // renews its own (sluice-l2-<host>) and lists the others'.
}

/// (API group, resource) of a k8s-openapi kind named in the source.
fn kind(name: &str) -> Option<(String, String)> {
    fn of<K: Resource>() -> (String, String) {
        (K::GROUP.to_owned(), K::URL_PATH_SEGMENT.to_owned())
    }
    Some(match name {
        "Service" => of::<Service>(),
        "EndpointSlice" => of::<EndpointSlice>(),
        "Node" => of::<Node>(),
        "Lease" => of::<Lease>(),
        "Event" | "K8sEvent" => of::<k8s_openapi::api::events::v1::Event>(),
        _ => return None,
    })
}

/// `Api` method -> (RBAC verb, subresource).
fn verb(method: &str) -> Option<(&'static str, &'static str)> {
    Some(match method {
        "get" | "get_opt" => ("get", ""),
        "get_status" => ("get", "/status"),
        "list" => ("list", ""),
        "watch" => ("watch", ""),
        "create" => ("create", ""),
        "replace" => ("update", ""),
        "replace_status" => ("update", "/status"),
        "patch" => ("patch", ""),
        "patch_status" => ("patch", "/status"),
        "delete" => ("delete", ""),
        "delete_collection" => ("deletecollection", ""),
        _ => return None,
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The kinds named as `Api<Kind>` / `Api::<Kind>` in `code`.
fn api_kinds(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for pat in ["Api<", "Api::<"] {
        for (i, _) in code.match_indices(pat) {
            let rest = &code[i + pat.len()..];
            let end = rest.find('>').unwrap_or(0);
            let ty = rest[..end]
                .trim()
                .rsplit("::")
                .next()
                .unwrap_or("")
                .to_owned();
            // A generic parameter (`Api<K>`) names no kind of its own.
            let generic = ty.len() == 1 && ty.chars().all(|c| c.is_ascii_uppercase());
            if !ty.is_empty() && !generic {
                out.insert(ty);
            }
        }
    }
    out
}

/// The methods called on receivers whose name contains `api`: `api.get_opt(`.
fn api_calls(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = code.as_bytes();
    for (i, _) in code.match_indices('.') {
        // receiver: the identifier before the dot
        let mut s = i;
        while s > 0 && (b[s - 1].is_ascii_alphanumeric() || b[s - 1] == b'_') {
            s -= 1;
        }
        let recv = &code[s..i];
        if !recv.to_ascii_lowercase().contains("api") {
            continue;
        }
        let rest = &code[i + 1..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(0);
        if rest[end..].trim_start().starts_with('(') {
            out.insert(rest[..end].to_owned());
        }
    }
    out
}

/// What the source's code asks of the API, derived from the code itself: per file, its `Api`
/// kinds times the verbs of its calls; watchers list and watch; kube-runtime's Event recorder
/// creates Events and patches repeats into a series.
fn used_by_source() -> BTreeSet<(String, String, String)> {
    let mut files = Vec::new();
    rust_files(&repo().join("controlplane/src"), &mut files);
    let mut used = BTreeSet::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy();
        if name.starts_with("tests") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        // Only the code that ships: cut a trailing `#[cfg(test)] mod tests`.
        let code = match text.find("#[cfg(test)]\nmod tests") {
            Some(i) => &text[..i],
            None => &text[..],
        };
        let kinds = api_kinds(code);
        let mut verbs: BTreeSet<(&str, &str)> = BTreeSet::new();
        for m in api_calls(code) {
            if let Some(v) = verb(&m) {
                verbs.insert(v);
            }
        }
        if code.contains("watcher(") {
            verbs.insert(("list", ""));
            verbs.insert(("watch", ""));
        }
        for k in &kinds {
            let (g, res) = kind(k).unwrap_or_else(|| {
                panic!(
                    "{}: Api<{k}>: add the kind to this test's `kind` and its access to \
                     sources/kubernetes/access.rs and deploy/kubernetes/rbac.yaml",
                    f.display()
                )
            });
            for (v, sub) in &verbs {
                used.insert((g.clone(), format!("{res}{sub}"), (*v).to_owned()));
            }
        }
        if code.contains("Recorder::new(") {
            used.insert(("events.k8s.io".into(), "events".into(), "create".into()));
            used.insert(("events.k8s.io".into(), "events".into(), "patch".into()));
        }
    }
    used
}

#[test]
fn access_list_matches_the_source() {
    let used = used_by_source();
    let listed: BTreeSet<(String, String, String)> = expected()
        .into_iter()
        .map(|(_, g, r, v)| (g, r, v))
        .collect();
    let missing: Vec<_> = used.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&used).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "sources/kubernetes/access.rs against the code: missing {missing:?}, unused {extra:?}"
    );
    // What the Recorder does was read from kube-runtime 5.0.0 (events.rs: create, and a
    // merge patch for a repeat); read it again when kube-runtime changes.
    let lock = std::fs::read_to_string(repo().join("Cargo.lock")).unwrap();
    assert!(
        lock.contains("name = \"kube-runtime\"\nversion = \"5.0.0\""),
        "kube-runtime changed: check what its events::Recorder calls, then update this test"
    );
}

#[test]
fn the_scan_sees_calls() {
    let code = "let api: Api<Lease> = Api::namespaced(c, ns);\n api.get_opt(&n).await; \
                lease_api.replace(&n, &pp, &l); map.get(&k); let x: Api<K> = y;";
    assert_eq!(
        api_kinds(code),
        BTreeSet::from(["Lease".to_owned()]),
        "a generic Api<K> is no kind"
    );
    let calls = api_calls(code);
    assert!(
        calls.contains("get_opt") && calls.contains("replace"),
        "{calls:?}"
    );
    assert!(
        !calls.contains("get"),
        "map.get is not an API call: {calls:?}"
    );
}
