//! # The manifest-directory source
//!
//! Reads Kubernetes manifests (`v1` Service, `discovery.k8s.io/v1` EndpointSlice, `v1` Node)
//! from the `*.yaml`/`*.yml` files of one directory into a [`Model`], so Sluice serves
//! traffic with no cluster at all, and watches the directory for changes.
//!
//! ## Design
//! - Files are read in name order; hidden files (`.name`) and other extensions are skipped;
//!   subdirectories are not entered. A file may hold several documents separated by `---`
//!   (empty documents are skipped) and a document may be a `kind: List` with `items`.
//! - Each document is parsed to a YAML value first (to know its kind and name for messages),
//!   then deserialized into the `k8s-openapi` type through `serde_path_to_error`, then
//!   converted by [`crate::model`]. Every error names the file, the document (1-based), the
//!   object and the field, e.g.
//!   `web.yaml: document 2 (Service default/web): spec.ports[0].port: invalid type: string
//!   "eighty", expected i32`.
//! - Kinds Sluice does not read are skipped with a warning in [`Manifests::warnings`], not an
//!   error, so a directory can hold a whole application's manifests.
//! - [`ManifestWatcher`] polls instead of using inotify: it rereads the (small) files every
//!   `poll_interval_ms` and compares a hash of names and contents, so it works on every file
//!   system and with editors that replace files. It reports a change only when the content
//!   changed; an invalid change is reported as an error and never replaces the last good model.
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use serde::Deserialize;
use serde_yaml::Value;

use crate::model::{EndpointSlice, Model, ModelError, Node, ObjectKey, Service};

/// Why a manifest directory could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The directory could not be listed.
    #[error("{}: cannot read the manifest directory: {message}; check source.manifest_dir in the configuration", .dir.display())]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        message: String,
    },
    /// A file could not be read.
    #[error("{}: cannot read: {message}; check its permissions", .file.display())]
    ReadFile {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        message: String,
    },
    /// A document is not valid YAML or not a Kubernetes object.
    #[error("{}: document {doc}: {message}", .file.display())]
    Document {
        /// The file.
        file: PathBuf,
        /// Document index, 1-based, with `items[i]` for list items.
        doc: Box<str>,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// An object has an invalid field.
    #[error("{}: document {doc} ({object}): {field}: {message}", .file.display())]
    Object {
        /// The file.
        file: PathBuf,
        /// Document index, 1-based, with `items[i]` for list items.
        doc: Box<str>,
        /// `Kind namespace/name`.
        object: Box<str>,
        /// Dotted field path.
        field: Box<str>,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The same object is defined twice.
    #[error("{}: document {doc} ({object}): defined again; the first definition is in {} document {first_doc}; remove one of them", .file.display(), .first_file.display())]
    Duplicate {
        /// The file of the second definition.
        file: PathBuf,
        /// Its document.
        doc: Box<str>,
        /// `Kind namespace/name`.
        object: Box<str>,
        /// The file of the first definition.
        first_file: PathBuf,
        /// Its document.
        first_doc: Box<str>,
    },
}

/// The result of loading a manifest directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifests {
    /// The cluster model.
    pub model: Model,
    /// Things skipped (other kinds, slices that name no Service); log them at warning level.
    pub warnings: Vec<String>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
}

/// Reads every `*.yaml`/`*.yml` file of `dir` into a [`Model`].
///
/// # Errors
/// The first [`ManifestError`] found; nothing is returned from a directory with an error.
pub fn load_dir(dir: impl AsRef<Path>) -> Result<Manifests, ManifestError> {
    parse_files(&read_files(dir.as_ref())?)
}

/// Parses one manifest `text` (as if it were the only file, named `file`).
///
/// # Errors
/// The first [`ManifestError`] found.
pub fn parse_str(text: &str, file: impl AsRef<Path>) -> Result<Manifests, ManifestError> {
    parse_files(&[(file.as_ref().to_owned(), text.to_owned())])
}

fn is_manifest(p: &Path) -> bool {
    let hidden = p
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = p.extension().and_then(|e| e.to_str());
    !hidden && matches!(ext, Some("yaml" | "yml")) && p.is_file()
}

/// The manifest files of `dir` with their contents, in name order.
fn read_files(dir: &Path) -> Result<Vec<(PathBuf, String)>, ManifestError> {
    let rd = std::fs::read_dir(dir).map_err(|e| ManifestError::ReadDir {
        dir: dir.to_owned(),
        message: e.to_string(),
    })?;
    let mut paths = Vec::new();
    for e in rd {
        let e = e.map_err(|e| ManifestError::ReadDir {
            dir: dir.to_owned(),
            message: e.to_string(),
        })?;
        let p = e.path();
        if is_manifest(&p) {
            paths.push(p);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).map_err(|e| ManifestError::ReadFile {
                file: p.clone(),
                message: e.to_string(),
            })?;
            Ok((p, text))
        })
        .collect()
}

/// Where an object was defined, for duplicate messages.
type Origin = (PathBuf, String);

struct Builder {
    out: Manifests,
    seen: HashMap<(String, ObjectKey), Origin>,
}

fn parse_files(files: &[(PathBuf, String)]) -> Result<Manifests, ManifestError> {
    let mut b = Builder {
        out: Manifests::default(),
        seen: HashMap::new(),
    };
    for (file, text) in files {
        b.out.files.push(file.clone());
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let idx = (i + 1).to_string();
            let value = Value::deserialize(doc).map_err(|e| ManifestError::Document {
                file: file.clone(),
                doc: idx.as_str().into(),
                message: format!("invalid YAML: {e}"),
            })?;
            b.document(file, &idx, value)?;
        }
    }
    for s in b.out.model.endpoint_slices.values() {
        match &s.service {
            None => b.out.warnings.push(format!(
                "EndpointSlice {}: no label {}; it serves no Service",
                s.key,
                crate::model::SERVICE_NAME_LABEL
            )),
            Some(name) => {
                let key = ObjectKey::new(s.key.namespace.clone(), name.clone());
                if !b.out.model.services.contains_key(&key) {
                    b.out.warnings.push(format!(
                        "EndpointSlice {}: Service {key} is not defined",
                        s.key
                    ));
                }
            }
        }
    }
    Ok(b.out)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for k in path {
        cur = cur.get(*k)?;
    }
    cur.as_str()
}

impl Builder {
    fn document(&mut self, file: &Path, doc: &str, value: Value) -> Result<(), ManifestError> {
        let derr = |message: String| ManifestError::Document {
            file: file.to_owned(),
            doc: doc.into(),
            message,
        };
        if value.is_null() {
            return Ok(());
        }
        if !value.is_mapping() {
            return Err(derr(
                "is not a Kubernetes object (a mapping with apiVersion, kind and metadata)"
                    .to_owned(),
            ));
        }
        let api = str_at(&value, &["apiVersion"])
            .ok_or_else(|| derr("has no apiVersion; add e.g. `apiVersion: v1`".to_owned()))?
            .to_owned();
        let kind = str_at(&value, &["kind"])
            .ok_or_else(|| derr("has no kind; add e.g. `kind: Service`".to_owned()))?
            .to_owned();
        let name = str_at(&value, &["metadata", "name"])
            .unwrap_or("<no name>")
            .to_owned();
        let ns = str_at(&value, &["metadata", "namespace"])
            .unwrap_or("default")
            .to_owned();
        match (api.as_str(), kind.as_str()) {
            ("v1", "List") => {
                let items = match value.get("items") {
                    None | Some(Value::Null) => return Ok(()),
                    Some(Value::Sequence(items)) => items.clone(),
                    Some(_) => return Err(derr("items: must be a list of objects".to_owned())),
                };
                for (i, item) in items.into_iter().enumerate() {
                    self.document(file, &format!("{doc}, items[{i}]"), item)?;
                }
                Ok(())
            }
            ("v1", "Service") => {
                let object = format!("Service {ns}/{name}");
                let k: corev1::Service = typed(file, doc, &object, value)?;
                let s = Service::from_k8s(&k).map_err(|e| obj_err(file, doc, &object, e))?;
                self.origin(file, doc, &object, "Service", &s.key)?;
                self.out.model.services.insert(s.key.clone(), s);
                Ok(())
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                let object = format!("EndpointSlice {ns}/{name}");
                let k: discoveryv1::EndpointSlice = typed(file, doc, &object, value)?;
                let s = EndpointSlice::from_k8s(&k).map_err(|e| obj_err(file, doc, &object, e))?;
                self.origin(file, doc, &object, "EndpointSlice", &s.key)?;
                self.out.model.endpoint_slices.insert(s.key.clone(), s);
                Ok(())
            }
            ("v1", "Node") => {
                let object = format!("Node {name}");
                let k: corev1::Node = typed(file, doc, &object, value)?;
                let n = Node::from_k8s(&k).map_err(|e| obj_err(file, doc, &object, e))?;
                self.origin(
                    file,
                    doc,
                    &object,
                    "Node",
                    &ObjectKey::new("", n.name.clone()),
                )?;
                self.out.model.nodes.insert(n.name.clone(), n);
                Ok(())
            }
            (_, "Service" | "Node" | "EndpointSlice" | "List") => Err(derr(format!(
                "{kind} with apiVersion {api:?} is not supported; use {}",
                if kind == "EndpointSlice" {
                    "discovery.k8s.io/v1"
                } else {
                    "v1"
                }
            ))),
            _ => {
                self.out.warnings.push(format!(
                    "{}: document {doc}: skipping {kind} {name} (apiVersion {api}); Sluice reads only v1 Service, \
                     discovery.k8s.io/v1 EndpointSlice and v1 Node",
                    file.display()
                ));
                Ok(())
            }
        }
    }

    fn origin(
        &mut self,
        file: &Path,
        doc: &str,
        object: &str,
        kind: &str,
        key: &ObjectKey,
    ) -> Result<(), ManifestError> {
        let here = (file.to_owned(), doc.to_owned());
        if let Some((first_file, first_doc)) = self
            .seen
            .insert((kind.to_owned(), key.clone()), here.clone())
        {
            return Err(ManifestError::Duplicate {
                file: here.0,
                doc: here.1.into(),
                object: object.into(),
                first_file,
                first_doc: first_doc.into(),
            });
        }
        Ok(())
    }
}

fn obj_err(file: &Path, doc: &str, object: &str, e: ModelError) -> ManifestError {
    ManifestError::Object {
        file: file.to_owned(),
        doc: doc.into(),
        object: object.into(),
        field: e.field.into(),
        message: e.message,
    }
}

/// Deserializes `value` into a `k8s-openapi` type, naming the failing field.
fn typed<T: serde::de::DeserializeOwned>(
    file: &Path,
    doc: &str,
    object: &str,
    value: Value,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        ManifestError::Object {
            file: file.to_owned(),
            doc: doc.into(),
            object: object.into(),
            field: if field == "." {
                "(object)".into()
            } else {
                field.into()
            },
            message: e.into_inner().to_string(),
        }
    })
}

/// A hash of the directory's file names and contents (or of the error reading them).
fn fingerprint(files: &Result<Vec<(PathBuf, String)>, ManifestError>) -> u64 {
    let mut h = DefaultHasher::new();
    match files {
        Ok(files) => {
            0u8.hash(&mut h);
            files.hash(&mut h);
        }
        Err(e) => {
            1u8.hash(&mut h);
            e.to_string().hash(&mut h);
        }
    }
    h.finish()
}

/// What a [`ManifestWatcher`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestEvent {
    /// The directory changed and is valid: the new model.
    Updated(Manifests),
    /// The directory changed and is invalid: log it; keep running with the last good model.
    Invalid(ManifestError),
}

/// Polls a manifest directory and reports content changes.
#[derive(Debug)]
pub struct ManifestWatcher {
    dir: PathBuf,
    last: Option<u64>,
}

impl ManifestWatcher {
    /// A watcher of `dir` that has seen nothing yet (its first [`poll`](Self::poll) reports).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ManifestWatcher {
            dir: dir.into(),
            last: None,
        }
    }

    /// Loads `dir` once (as [`load_dir`] does) and returns the result with a watcher that has
    /// seen exactly that content, so its polls report only later changes and nothing that
    /// happens in between is missed. Use it at start-up, where an invalid directory is fatal.
    ///
    /// # Errors
    /// The first [`ManifestError`] found.
    pub fn load(dir: impl Into<PathBuf>) -> Result<(Manifests, ManifestWatcher), ManifestError> {
        let dir = dir.into();
        let files = read_files(&dir)?;
        let m = parse_files(&files)?;
        let w = ManifestWatcher {
            last: Some(fingerprint(&Ok(files))),
            dir,
        };
        Ok((m, w))
    }

    /// The directory watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Rereads the directory; `None` when nothing changed since the last poll.
    pub fn poll(&mut self) -> Option<ManifestEvent> {
        let files = read_files(&self.dir);
        let hash = fingerprint(&files);
        if self.last == Some(hash) {
            return None;
        }
        self.last = Some(hash);
        Some(match files.and_then(|f| parse_files(&f)) {
            Ok(m) => ManifestEvent::Updated(m),
            Err(e) => ManifestEvent::Invalid(e),
        })
    }

    /// Runs the watcher on its own thread, polling every `interval`, and returns the channel
    /// its events arrive on (the first event describes the directory as it is now, unless the
    /// watcher was made by [`load`](Self::load)). The thread ends soon after the receiver
    /// is dropped.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn spawn(
        mut self,
        interval: Duration,
    ) -> std::io::Result<tokio::sync::mpsc::Receiver<ManifestEvent>> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        std::thread::Builder::new()
            .name("sluice-manifests".into())
            .spawn(move || loop {
                if let Some(ev) = self.poll() {
                    if tx.blocking_send(ev).is_err() {
                        return;
                    }
                }
                if tx.is_closed() {
                    return;
                }
                std::thread::sleep(interval);
            })?;
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IpFamily, L4Protocol, TargetPort, TrafficPolicy};

    const SVC: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: LoadBalancer
  ports:
    - name: http
      port: 80
      targetPort: 8080
"#;

    #[test]
    fn errors_stay_small() {
        // Small enough to sit in a caller's error enum without clippy::result_large_err.
        assert!(
            std::mem::size_of::<ManifestError>() <= 104,
            "{}",
            std::mem::size_of::<ManifestError>()
        );
        assert!(std::mem::size_of::<crate::config::ConfigError>() <= 104);
    }

    #[test]
    fn examples_load() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples/manifests");
        let m = load_dir(dir).unwrap();
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
        let web = &m.model.services[&ObjectKey::new("default", "web")];
        assert_eq!(web.load_balancer_class.as_deref(), Some("sluice.dev/dpdk"));
        assert_eq!(web.families(), vec![IpFamily::V4, IpFamily::V6]);
        assert_eq!(web.ports.len(), 3);
        assert_eq!(web.ports[0].target_port, TargetPort::Number(8080));
        assert_eq!(web.ports[0].node_port, Some(30080));
        assert_eq!(web.ports[2].protocol, L4Protocol::Udp);
        assert_eq!(web.external_traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(m.model.endpoint_slices.len(), 2);
        assert_eq!(m.model.slices_of(&web.key).count(), 2);
        assert_eq!(m.model.nodes.len(), 3);
        assert!(m
            .model
            .nodes
            .values()
            .all(|n| n.ready && n.internal_ips.len() == 2));
    }

    #[test]
    fn type_error_names_file_document_object_field() {
        let text = format!(
            "kind: ConfigMap\napiVersion: v1\nmetadata: {{name: x}}\n---\n{}",
            SVC.replace("port: 80", "port: eighty")
        );
        let e = parse_str(&text, "web.yaml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "web.yaml: document 2 (Service default/web): spec.ports[0].port: invalid type: string \"eighty\", expected i32"
        );
    }

    #[test]
    fn multi_doc_lists_and_warnings() {
        let text = format!(
            "---\n---\n{SVC}\n---\napiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: Node\n    metadata: {{name: n1}}\n  - apiVersion: apps/v1\n    kind: Deployment\n    metadata: {{name: d}}\n"
        );
        let m = parse_str(&text, "all.yaml").unwrap();
        assert_eq!(m.model.services.len(), 1);
        assert_eq!(m.model.nodes.len(), 1);
        assert_eq!(m.warnings.len(), 1);
        assert!(
            m.warnings[0].contains("document 3, items[1]: skipping Deployment d"),
            "{:?}",
            m.warnings
        );
    }

    #[test]
    fn semantic_and_structural_errors() {
        let e = parse_str(
            &SVC.replace(
                "  ports:\n    - name: http\n      port: 80\n      targetPort: 8080\n",
                "",
            ),
            "a.yaml",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("a.yaml: document 1 (Service default/web): spec.ports: "),
            "{e}"
        );

        let e = parse_str(
            &format!("{SVC}  loadBalancerSourceRanges: [\"1.2.3.0/99\"]\n"),
            "a.yaml",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("spec.loadBalancerSourceRanges[0]"),
            "{e}"
        );

        let e = parse_str(&format!("{SVC}---{SVC}"), "a.yaml").unwrap_err();
        assert!(matches!(e, ManifestError::Duplicate { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("document 2 (Service default/web): defined again"),
            "{e}"
        );

        let e = parse_str("apiVersion: v1\nkind: Service\nmetadata: [\n", "a.yaml").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("a.yaml: document 1: invalid YAML"),
            "{e}"
        );

        let e = parse_str("kind: Service\n", "a.yaml").unwrap_err();
        assert!(e.to_string().contains("apiVersion"), "{e}");

        let e = parse_str("apiVersion: v2\nkind: Service\n", "a.yaml").unwrap_err();
        assert!(e.to_string().contains("use v1"), "{e}");

        let e = parse_str(
            &SVC.replace("port: 80", "port: 80\n      bogus: 1\n      protocol: SCP"),
            "a.yaml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("spec.ports[0].protocol"), "{e}");
    }

    #[test]
    fn watcher_reports_changes_and_keeps_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("svc.yaml");
        std::fs::write(&f, SVC).unwrap();
        let mut w = ManifestWatcher::new(dir.path());
        match w.poll() {
            Some(ManifestEvent::Updated(m)) => assert_eq!(m.model.services.len(), 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(w.poll(), None);
        // Same content rewritten: no event.
        std::fs::write(&f, SVC).unwrap();
        assert_eq!(w.poll(), None);
        // Other files are ignored.
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        std::fs::write(dir.path().join(".svc.yaml.swp"), "x").unwrap();
        assert_eq!(w.poll(), None);
        // An invalid change: reported once.
        std::fs::write(&f, SVC.replace("port: 80", "port: eighty")).unwrap();
        assert!(matches!(
            w.poll(),
            Some(ManifestEvent::Invalid(ManifestError::Object { .. }))
        ));
        assert_eq!(w.poll(), None);
        // Fixed: a new model.
        std::fs::write(&f, SVC.replace("port: 80", "port: 81")).unwrap();
        match w.poll() {
            Some(ManifestEvent::Updated(m)) => {
                assert_eq!(
                    m.model.services[&ObjectKey::new("default", "web")].ports[0].port,
                    81
                )
            }
            other => panic!("{other:?}"),
        }
        let (m, mut w2) = ManifestWatcher::load(dir.path()).unwrap();
        assert_eq!(m.model.services.len(), 1);
        assert_eq!(w2.poll(), None);
        std::fs::remove_file(&f).unwrap();
        match w2.poll() {
            Some(ManifestEvent::Updated(m)) => assert!(m.model.services.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn watcher_thread_delivers_events() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("svc.yml"), SVC).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut rx = ManifestWatcher::new(dir.path())
                .spawn(Duration::from_millis(20))
                .unwrap();
            let first = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap();
            assert!(matches!(first, Some(ManifestEvent::Updated(_))));
            std::fs::write(
                dir.path().join("svc.yml"),
                SVC.replace("port: 80", "port: 82"),
            )
            .unwrap();
            let second = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap();
            match second {
                Some(ManifestEvent::Updated(m)) => {
                    assert_eq!(
                        m.model.services[&ObjectKey::new("default", "web")].ports[0].port,
                        82
                    )
                }
                other => panic!("{other:?}"),
            }
        });
    }
}
