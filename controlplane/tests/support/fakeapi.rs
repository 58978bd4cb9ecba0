//! # An in-process fake Kubernetes API server
//!
//! Speaks the real HTTP/1.1 protocol with real JSON, so a `kube::Client` pointed at
//! [`FakeApi::url`] cannot tell it from an API server for what Sluice does:
//!
//! - **list** with `resourceVersion`, `limit` and `continue` (paginated lists report the
//!   resourceVersion of their first page);
//! - **watch** (`?watch=1`): a chunked stream of JSON lines (`ADDED`, `MODIFIED`, `DELETED`),
//!   resumed from `resourceVersion`, with `BOOKMARK` events when `allowWatchBookmarks=true`
//!   and `timeoutSeconds`; a resume from a resourceVersion older than the last compaction gets
//!   an `ERROR` event carrying a `Status` with code 410 (`Expired`), as a real API server does;
//! - **create/get/replace/delete/patch** of objects, with `409 Conflict` when a replace names a
//!   stale `metadata.resourceVersion` and `409 AlreadyExists` on a second create;
//! - the **status subresource** (`PATCH .../status`), where server-side apply
//!   (`application/apply-patch+yaml`) needs `fieldManager`, `apiVersion` and `kind`, replaces
//!   `status.loadBalancer` (and removes it when the manager that applied it applies without
//!   it), and merges `status.conditions` by type per field manager;
//! - **Events** (`events.k8s.io/v1`: create, merge-patch for series) and **Leases**
//!   (`coordination.k8s.io/v1`).
//!
//! Resources: Services, Nodes (core/v1), EndpointSlices, Events, Leases. Label and field
//! selectors are not implemented (Sluice does not use them).
//!
//! Tests drive it directly ([`FakeApi::upsert`], [`FakeApi::delete`], [`FakeApi::compact`],
//! [`FakeApi::disconnect_watches`], [`FakeApi::set_down`]) or through any HTTP client, and inspect what clients did
//! ([`FakeApi::requests`], [`FakeApi::status_patches`], [`FakeApi::events`]).
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};

type Body = BoxBody<Bytes, std::io::Error>;

/// A resource the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Res {
    /// core/v1 services.
    Services,
    /// core/v1 nodes.
    Nodes,
    /// discovery.k8s.io/v1 endpointslices.
    EndpointSlices,
    /// events.k8s.io/v1 events.
    Events,
    /// coordination.k8s.io/v1 leases.
    Leases,
}

impl Res {
    fn from_path(group: &str, plural: &str) -> Option<Res> {
        Some(match (group, plural) {
            ("", "services") => Res::Services,
            ("", "nodes") => Res::Nodes,
            ("discovery.k8s.io", "endpointslices") => Res::EndpointSlices,
            ("events.k8s.io", "events") => Res::Events,
            ("coordination.k8s.io", "leases") => Res::Leases,
            _ => return None,
        })
    }

    /// The resource of a k8s-openapi type.
    pub fn of<K: k8s_openapi::Resource>() -> Res {
        Res::from_path(K::GROUP, K::URL_PATH_SEGMENT).expect("a resource the fake serves")
    }

    fn kind(self) -> &'static str {
        match self {
            Res::Services => "Service",
            Res::Nodes => "Node",
            Res::EndpointSlices => "EndpointSlice",
            Res::Events => "Event",
            Res::Leases => "Lease",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Res::Services | Res::Nodes => "v1",
            Res::EndpointSlices => "discovery.k8s.io/v1",
            Res::Events => "events.k8s.io/v1",
            Res::Leases => "coordination.k8s.io/v1",
        }
    }

    fn namespaced(self) -> bool {
        self != Res::Nodes
    }

    fn has_status(self) -> bool {
        matches!(self, Res::Services | Res::Nodes)
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string (without `?`).
    pub query: String,
    /// `Content-Type`, if any.
    pub content_type: Option<String>,
}

impl RequestRecord {
    /// Whether this was a watch request.
    pub fn is_watch(&self) -> bool {
        query_param(&self.query, "watch").is_some_and(|w| w == "1" || w == "true")
    }

    /// A query parameter.
    pub fn param(&self, name: &str) -> Option<String> {
        query_param(&self.query, name)
    }
}

/// A PATCH of a Service's status subresource.
#[derive(Debug, Clone)]
pub struct StatusPatch {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `fieldManager`.
    pub field_manager: Option<String>,
    /// `force=true`.
    pub force: bool,
    /// `Content-Type`.
    pub content_type: String,
    /// The patch body.
    pub body: Value,
}

type Key = (Res, String, String);

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    res: Res,
    namespace: String,
    kind: &'static str,
    object: Arc<Value>,
}

struct Inner {
    rv: u64,
    uid: u64,
    objects: BTreeMap<Key, Value>,
    log: VecDeque<Change>,
    /// Watches may resume from this resourceVersion or newer; older ones get 410.
    floor: u64,
    requests: Vec<RequestRecord>,
    status_patches: Vec<StatusPatch>,
    bookmark_every: Option<Duration>,
    /// Fail the next N status PATCHes with 500 (tests of retries).
    fail_status_patches: u32,
    /// How long a status PATCH takes before the server looks at the object (tests of races).
    status_patch_delay: Duration,
    /// Condition types each (object, field manager) applied to `status.conditions`.
    owned_conditions: BTreeMap<(String, String, String), Vec<String>>,
    /// The field manager that last applied `status.loadBalancer` of each (namespace, name).
    lb_owner: BTreeMap<(String, String), String>,
}

struct Shared {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Change>,
    kill: watch::Sender<u64>,
    /// An outage: connections are closed at once, open ones are cut.
    down: watch::Sender<bool>,
}

/// The fake API server; it stops when the last clone is dropped.
#[derive(Clone)]
pub struct FakeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _stop: Arc<StopOnDrop>,
}

struct StopOnDrop(tokio::task::JoinHandle<()>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn lock(s: &Shared) -> MutexGuard<'_, Inner> {
    s.inner.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeApi {
    /// Starts a server on 127.0.0.1 with an ephemeral port (needs a tokio runtime).
    pub async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (changes, _) = broadcast::channel(1 << 16);
        let (kill, _) = watch::channel(0);
        let (down, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                rv: 1,
                uid: 0,
                objects: BTreeMap::new(),
                log: VecDeque::new(),
                floor: 1,
                requests: Vec::new(),
                status_patches: Vec::new(),
                bookmark_every: Some(Duration::from_millis(500)),
                fail_status_patches: 0,
                status_patch_delay: Duration::ZERO,
                owned_conditions: BTreeMap::new(),
                lb_owner: BTreeMap::new(),
            }),
            changes,
            kill,
            down,
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let mut down = s.down.subscribe();
                if *down.borrow_and_update() {
                    drop(stream); // as good as connection refused
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(handle(&s, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        // An outage cuts every connection.
                        _ = down.wait_for(|d| *d) => {}
                    }
                });
            }
        });
        FakeApi {
            shared,
            addr,
            _stop: Arc::new(StopOnDrop(task)),
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server.
    pub fn client(&self) -> kube::Client {
        let cfg = kube::Config::new(self.url().parse().expect("url"));
        kube::Client::try_from(cfg).expect("client")
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared).rv
    }

    /// Creates or replaces a typed object as an administrator would (status included).
    /// Returns its new resourceVersion.
    pub fn upsert<K: k8s_openapi::Resource + serde::Serialize>(&self, obj: &K) -> u64 {
        let res = Res::of::<K>();
        let mut v = serde_json::to_value(obj).expect("serialize");
        v["apiVersion"] = json!(res.api_version());
        v["kind"] = json!(res.kind());
        let ns = if res.namespaced() {
            v["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned()
        } else {
            String::new()
        };
        let name = v["metadata"]["name"].as_str().expect("name").to_owned();
        let mut g = lock(&self.shared);
        let exists = g.objects.contains_key(&(res, ns.clone(), name.clone()));
        let (_, rv) = store(
            &self.shared,
            &mut g,
            res,
            &ns,
            &name,
            v,
            if exists { "MODIFIED" } else { "ADDED" },
        );
        rv
    }

    /// Many objects at once (one lock), for large fixtures.
    pub fn upsert_all<K: k8s_openapi::Resource + serde::Serialize>(&self, objs: &[K]) {
        for o in objs {
            self.upsert(o);
        }
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete<K: k8s_openapi::Resource>(&self, namespace: &str, name: &str) -> bool {
        let res = Res::of::<K>();
        let ns = if res.namespaced() { namespace } else { "" };
        let mut g = lock(&self.shared);
        remove(&self.shared, &mut g, res, ns, name).is_some()
    }

    /// A typed object.
    pub fn get<K: k8s_openapi::Resource + serde::de::DeserializeOwned>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<K> {
        let res = Res::of::<K>();
        let ns = if res.namespaced() { namespace } else { "" };
        let g = lock(&self.shared);
        g.objects
            .get(&(res, ns.to_owned(), name.to_owned()))
            .map(|v| serde_json::from_value(v.clone()).expect("deserialize"))
    }

    /// Every object of a kind, as JSON.
    pub fn list_json(&self, res: Res) -> Vec<Value> {
        let g = lock(&self.shared);
        g.objects
            .iter()
            .filter(|(k, _)| k.0 == res)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every `events.k8s.io/v1` Event.
    pub fn events(&self) -> Vec<Value> {
        self.list_json(Res::Events)
    }

    /// Events about one object, as `(type, reason, note)`.
    pub fn events_for(&self, namespace: &str, name: &str) -> Vec<(String, String, String)> {
        self.events()
            .into_iter()
            .filter(|e| {
                e["regarding"]["namespace"] == json!(namespace)
                    && e["regarding"]["name"] == json!(name)
            })
            .map(|e| {
                (
                    e["type"].as_str().unwrap_or("").to_owned(),
                    e["reason"].as_str().unwrap_or("").to_owned(),
                    e["note"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    /// Forgets the change history (like etcd compaction): a watch that resumes from any
    /// resourceVersion handed out so far gets `410 Gone` and must relist.
    pub fn compact(&self) {
        let mut g = lock(&self.shared);
        // A new revision that every earlier resourceVersion is older than.
        g.rv += 1;
        g.floor = g.rv;
        g.log.clear();
    }

    /// Breaks every open watch connection mid-stream (the client sees a transport error).
    pub fn disconnect_watches(&self) {
        self.shared.kill.send_modify(|k| *k += 1);
    }

    /// Starts (`true`) or ends an outage: every connection is cut, and new ones are closed
    /// as soon as they are accepted (clients see the connection fail, as when the API server
    /// is down) until it ends. [`FakeApi::upsert`] and friends keep working, as if other API
    /// server replicas took the changes.
    pub fn set_down(&self, down: bool) {
        self.shared.down.send_replace(down);
    }

    /// How often open watches get a BOOKMARK (`None`: never).
    pub fn set_bookmark_interval(&self, every: Option<Duration>) {
        lock(&self.shared).bookmark_every = every;
    }

    /// Fails the next `n` status PATCHes with `500 InternalError`.
    pub fn fail_status_patches(&self, n: u32) {
        lock(&self.shared).fail_status_patches = n;
    }

    /// Makes every status PATCH take `d` before the server looks at the object, as a slow
    /// API server would (an object deleted meanwhile gets `404`).
    pub fn delay_status_patches(&self, d: Duration) {
        lock(&self.shared).status_patch_delay = d;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared).requests.clone()
    }

    /// Every status PATCH so far.
    pub fn status_patches(&self) -> Vec<StatusPatch> {
        lock(&self.shared).status_patches.clone()
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Stores `obj` (setting resourceVersion, uid and namespace) and records the change.
fn store(
    s: &Shared,
    g: &mut Inner,
    res: Res,
    ns: &str,
    name: &str,
    mut obj: Value,
    event: &'static str,
) -> (Value, u64) {
    g.rv += 1;
    let rv = g.rv;
    let key = (res, ns.to_owned(), name.to_owned());
    let uid = g
        .objects
        .get(&key)
        .and_then(|o| o["metadata"]["uid"].as_str().map(str::to_owned));
    let uid = uid.unwrap_or_else(|| {
        g.uid += 1;
        format!("00000000-0000-4000-8000-{:012x}", g.uid)
    });
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let m = &mut obj["metadata"];
    m["resourceVersion"] = json!(rv.to_string());
    m["uid"] = json!(uid);
    m["name"] = json!(name);
    if res.namespaced() {
        m["namespace"] = json!(ns);
    }
    if m.get("creationTimestamp").is_none_or(Value::is_null) {
        m["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    obj["apiVersion"] = json!(res.api_version());
    obj["kind"] = json!(res.kind());
    g.objects.insert(key, obj.clone());
    let change = Change {
        rv,
        res,
        namespace: ns.to_owned(),
        kind: event,
        object: Arc::new(obj.clone()),
    };
    g.log.push_back(change.clone());
    let _ = s.changes.send(change);
    (obj, rv)
}

fn remove(s: &Shared, g: &mut Inner, res: Res, ns: &str, name: &str) -> Option<Value> {
    let mut obj = g.objects.remove(&(res, ns.to_owned(), name.to_owned()))?;
    g.rv += 1;
    let rv = g.rv;
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    let change = Change {
        rv,
        res,
        namespace: ns.to_owned(),
        kind: "DELETED",
        object: Arc::new(obj.clone()),
    };
    g.log.push_back(change.clone());
    let _ = s.changes.send(change);
    Some(obj)
}

fn full(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(serde_json::to_vec(v).unwrap_or_default()))
                .map_err(|e: Infallible| match e {})
                .boxed(),
        )
        .expect("response")
}

fn status_obj(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn error(code: u16, reason: &str, message: &str) -> Response<Body> {
    full(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &status_obj(code, reason, message),
    )
}

/// What a path names.
struct Target {
    res: Res,
    /// Namespace from the path (`None`: all namespaces or cluster-scoped).
    ns: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", g, _v, rest @ ..] => (*g, rest),
        _ => return None,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [p] => (*p, None, false),
        [p, n] => (*p, Some((*n).to_owned()), false),
        [p, n, "status"] => (*p, Some((*n).to_owned()), true),
        _ => return None,
    };
    let res = Res::from_path(group, plural)?;
    if !res.namespaced() && ns.is_some() {
        return None;
    }
    Some(Target {
        res,
        ns,
        name,
        status,
    })
}

async fn handle(s: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    lock(s).requests.push(RequestRecord {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
    });
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(400, "BadRequest", &format!("reading the body: {e}")),
    };
    if *s.down.borrow() {
        // Accepted just before an outage began: answer as a server going away would.
        return error(503, "ServiceUnavailable", "the API server is down");
    }
    let Some(t) = parse_path(&path) else {
        return error(
            404,
            "NotFound",
            &format!("the server could not find {path}"),
        );
    };
    let ns_of = |v: &Value| -> String {
        if !t.res.namespaced() {
            String::new()
        } else {
            t.ns.clone()
                .or_else(|| v["metadata"]["namespace"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "default".to_owned())
        }
    };
    let parse_body = || -> Result<Value, Box<Response<Body>>> {
        serde_json::from_slice::<Value>(&body)
            .or_else(|_| serde_yaml::from_slice::<Value>(&body).map_err(|e| e.to_string()))
            .map_err(|e| Box::new(error(400, "BadRequest", &format!("invalid body: {e}"))))
    };
    match (&method, &t.name) {
        (&Method::GET, None) => {
            let watch = query_param(&query, "watch").is_some_and(|w| w == "1" || w == "true");
            if watch {
                watch_response(s, &t, &query)
            } else {
                list_response(s, &t, &query)
            }
        }
        (&Method::POST, None) => {
            let v = match parse_body() {
                Ok(v) => v,
                Err(r) => return *r,
            };
            let Some(name) = v["metadata"]["name"].as_str().map(str::to_owned) else {
                return error(422, "Invalid", "metadata.name: Required value");
            };
            let ns = ns_of(&v);
            let mut g = lock(s);
            if g.objects.contains_key(&(t.res, ns.clone(), name.clone())) {
                return error(
                    409,
                    "AlreadyExists",
                    &format!("{} {name:?} already exists", t.res.kind()),
                );
            }
            let (obj, _) = store(s, &mut g, t.res, &ns, &name, v, "ADDED");
            full(StatusCode::CREATED, &obj)
        }
        (&Method::GET, Some(name)) => {
            let ns = ns_of(&Value::Null);
            let g = lock(s);
            match g.objects.get(&(t.res, ns, name.clone())) {
                Some(o) => full(StatusCode::OK, o),
                None => error(
                    404,
                    "NotFound",
                    &format!("{} {name:?} not found", t.res.kind()),
                ),
            }
        }
        (&Method::PUT, Some(name)) => {
            let mut v = match parse_body() {
                Ok(v) => v,
                Err(r) => return *r,
            };
            let ns = ns_of(&v);
            let mut g = lock(s);
            let key = (t.res, ns.clone(), name.clone());
            let Some(cur) = g.objects.get(&key).cloned() else {
                return error(
                    404,
                    "NotFound",
                    &format!("{} {name:?} not found", t.res.kind()),
                );
            };
            let want = v["metadata"]["resourceVersion"].as_str().unwrap_or("");
            if !want.is_empty() && want != cur["metadata"]["resourceVersion"].as_str().unwrap_or("")
            {
                return error(
                    409,
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
                        t.res.kind()
                    ),
                );
            }
            if t.status {
                let mut merged = cur;
                merged["status"] = v["status"].take();
                v = merged;
            } else if t.res.has_status() {
                v["status"] = cur["status"].clone();
            }
            let (obj, _) = store(s, &mut g, t.res, &ns, name, v, "MODIFIED");
            full(StatusCode::OK, &obj)
        }
        (&Method::DELETE, Some(name)) => {
            let ns = ns_of(&Value::Null);
            let mut g = lock(s);
            match remove(s, &mut g, t.res, &ns, name) {
                Some(o) => full(StatusCode::OK, &o),
                None => error(
                    404,
                    "NotFound",
                    &format!("{} {name:?} not found", t.res.kind()),
                ),
            }
        }
        (&Method::PATCH, Some(name)) => {
            let delay = lock(s).status_patch_delay;
            if t.status && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let ct = content_type.unwrap_or_default();
            let patch = match parse_body() {
                Ok(v) => v,
                Err(r) => return *r,
            };
            let ns = ns_of(&patch);
            let mut g = lock(s);
            let key = (t.res, ns.clone(), name.clone());
            if t.status {
                g.status_patches.push(StatusPatch {
                    namespace: ns.clone(),
                    name: name.clone(),
                    field_manager: query_param(&query, "fieldManager"),
                    force: query_param(&query, "force").is_some_and(|f| f == "true"),
                    content_type: ct.clone(),
                    body: patch.clone(),
                });
                if g.fail_status_patches > 0 {
                    g.fail_status_patches -= 1;
                    return error(500, "InternalError", "injected failure");
                }
            }
            let Some(mut cur) = g.objects.get(&key).cloned() else {
                return error(
                    404,
                    "NotFound",
                    &format!("{} {name:?} not found", t.res.kind()),
                );
            };
            if ct.starts_with("application/apply-patch+yaml") {
                if query_param(&query, "fieldManager")
                    .unwrap_or_default()
                    .is_empty()
                {
                    return error(
                        400,
                        "BadRequest",
                        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                    );
                }
                if patch["apiVersion"] != json!(t.res.api_version())
                    || patch["kind"] != json!(t.res.kind())
                {
                    return error(
                        400,
                        "BadRequest",
                        "apply patches need apiVersion and kind of the object",
                    );
                }
                if t.status {
                    let manager = query_param(&query, "fieldManager").unwrap_or_default();
                    // The field manager that applies status.loadBalancer owns all of it; an
                    // apply that omits it removes it only if that manager owned it.
                    let lb = patch["status"]["loadBalancer"].clone();
                    if !cur["status"].is_object() {
                        cur["status"] = json!({});
                    }
                    let lkey = (ns.clone(), name.clone());
                    if !lb.is_null() {
                        cur["status"]["loadBalancer"] = lb;
                        g.lb_owner.insert(lkey, manager.clone());
                    } else if g.lb_owner.get(&lkey) == Some(&manager) {
                        cur["status"]["loadBalancer"] = json!({});
                        g.lb_owner.remove(&lkey);
                    }
                    // status.conditions is a list map keyed by `type`: entries the manager
                    // applies replace theirs, entries it applied before and omits now go.
                    let applied: Vec<Value> = patch["status"]["conditions"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let types: Vec<String> = applied
                        .iter()
                        .filter_map(|c| c["type"].as_str().map(str::to_owned))
                        .collect();
                    let okey = (ns.clone(), name.clone(), manager);
                    let before = g.owned_conditions.get(&okey).cloned().unwrap_or_default();
                    let mut conds: Vec<Value> = cur["status"]["conditions"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    conds.retain(|c| {
                        let t = c["type"].as_str().unwrap_or("");
                        !(before.iter().any(|b| b == t) || types.iter().any(|n| n == t))
                    });
                    conds.extend(applied);
                    if conds.is_empty() {
                        if let Some(st) = cur["status"].as_object_mut() {
                            st.remove("conditions");
                        }
                    } else {
                        cur["status"]["conditions"] = Value::Array(conds);
                    }
                    g.owned_conditions.insert(okey, types);
                } else {
                    merge_patch(&mut cur, &patch);
                }
            } else if ct.starts_with("application/merge-patch+json") {
                if t.status {
                    let mut st = cur["status"].clone();
                    merge_patch(&mut st, &patch["status"]);
                    cur["status"] = st;
                } else {
                    merge_patch(&mut cur, &patch);
                }
            } else {
                return error(
                    415,
                    "UnsupportedMediaType",
                    &format!("the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/apply-patch+yaml (got {ct:?})"),
                );
            }
            let (obj, _) = store(s, &mut g, t.res, &ns, name, cur, "MODIFIED");
            full(StatusCode::OK, &obj)
        }
        _ => error(405, "MethodNotAllowed", &format!("{method} {path}")),
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn in_scope(t: &Target, res: Res, ns: &str) -> bool {
    res == t.res && t.ns.as_deref().is_none_or(|n| n == ns)
}

fn list_response(s: &Shared, t: &Target, query: &str) -> Response<Body> {
    let g = lock(s);
    let limit: usize = query_param(query, "limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    // continue token: "<rv>/<namespace>/<name>" of the last item of the previous page
    let cont = query_param(query, "continue").filter(|c| !c.is_empty());
    let (list_rv, after) = match &cont {
        Some(c) => {
            let mut parts = c.splitn(3, '/');
            let rv = parts.next().and_then(|r| r.parse().ok()).unwrap_or(g.rv);
            let ns = parts.next().unwrap_or("").to_owned();
            let name = parts.next().unwrap_or("").to_owned();
            (rv, Some((ns, name)))
        }
        None => (g.rv, None),
    };
    let mut items = Vec::new();
    let mut more = false;
    for ((res, ns, name), v) in g.objects.iter() {
        if !in_scope(t, *res, ns) {
            continue;
        }
        if let Some((ans, aname)) = &after {
            if (ns, name) <= (ans, aname) {
                continue;
            }
        }
        if items.len() == limit {
            more = true;
            break;
        }
        items.push(v.clone());
    }
    // The token names the last item returned.
    let next = more.then(|| {
        let last = items.last().expect("a full page");
        format!(
            "{list_rv}/{}/{}",
            last["metadata"]["namespace"].as_str().unwrap_or(""),
            last["metadata"]["name"].as_str().unwrap_or("")
        )
    });
    let mut meta = json!({ "resourceVersion": list_rv.to_string() });
    if let Some(n) = next {
        meta["continue"] = json!(n);
    }
    full(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", t.res.kind()),
            "apiVersion": t.res.api_version(),
            "metadata": meta,
            "items": items,
        }),
    )
}

fn line(v: &Value) -> Result<Frame<Bytes>, std::io::Error> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Ok(Frame::data(Bytes::from(b)))
}

fn watch_response(s: &Arc<Shared>, t: &Target, query: &str) -> Response<Body> {
    let from: Option<u64> = query_param(query, "resourceVersion")
        .filter(|r| !r.is_empty() && r != "0")
        .map(|r| r.parse().unwrap_or(0));
    let bookmarks = query_param(query, "allowWatchBookmarks").is_some_and(|b| b == "true");
    let timeout = query_param(query, "timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1024);
    let res = t.res;
    let scope_ns = t.ns.clone();
    let scope = Target {
        res,
        ns: scope_ns,
        name: None,
        status: false,
    };
    // Under the lock: what to replay, and a subscription, so nothing falls in between.
    let (initial, mut sub, mut rv, bookmark_every) = {
        let g = lock(s);
        let sub = s.changes.subscribe();
        let initial: Result<Vec<Value>, Value> = match from {
            Some(rv) if rv < g.floor => Err(json!({
                "type": "ERROR",
                "object": status_obj(
                    410,
                    "Expired",
                    &format!("too old resource version: {rv} ({})", g.floor),
                ),
            })),
            Some(rv) => Ok(g
                .log
                .iter()
                .filter(|c| c.rv > rv && in_scope(&scope, c.res, &c.namespace))
                .map(|c| json!({"type": c.kind, "object": *c.object}))
                .collect()),
            None => Ok(g
                .objects
                .iter()
                .filter(|((r, ns, _), _)| in_scope(&scope, *r, ns))
                .map(|(_, v)| json!({"type": "ADDED", "object": v}))
                .collect()),
        };
        (initial, sub, g.rv, g.bookmark_every)
    };
    let mut kill = s.kill.subscribe();
    kill.borrow_and_update();
    // An outage cuts this watch before it sends anything that changed after it began: the
    // connection task is cut too, but maybe only after this task has written more.
    let down = s.down.subscribe();
    tokio::spawn(async move {
        let events = match initial {
            Ok(e) => e,
            Err(gone) => {
                let _ = tx.send(line(&gone)).await;
                return;
            }
        };
        for e in &events {
            if tx.send(line(e)).await.is_err() {
                return;
            }
        }
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut tick = tokio::time::interval(bookmark_every.unwrap_or(Duration::from_secs(3600)));
        tick.tick().await;
        loop {
            let until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = until_deadline => return,
                _ = kill.changed() => {
                    let _ = tx
                        .send(Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "disconnected by the test")))
                        .await;
                    return;
                }
                _ = tick.tick(), if bookmarks && bookmark_every.is_some() => {
                    let bm = json!({
                        "type": "BOOKMARK",
                        "object": {
                            "kind": res.kind(),
                            "apiVersion": res.api_version(),
                            "metadata": {"resourceVersion": rv.to_string()},
                        },
                    });
                    if tx.send(line(&bm)).await.is_err() {
                        return;
                    }
                }
                c = sub.recv() => match c {
                    Ok(_) if *down.borrow() => {
                        let _ = tx
                            .send(Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "the API server is down")))
                            .await;
                        return;
                    }
                    Ok(c) => {
                        rv = rv.max(c.rv);
                        if in_scope(&scope, c.res, &c.namespace) {
                            let e = json!({"type": c.kind, "object": *c.object});
                            if tx.send(line(&e)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let gone = json!({"type": "ERROR", "object": status_obj(410, "Expired", "watch fell behind")});
                        let _ = tx.send(line(&gone)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response")
}
