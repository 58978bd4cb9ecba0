//! The operator's drains and weights, kept across restarts in
//! `<admin.state_dir>/overrides.json`: written after every change (a temporary file, flushed
//! to disk, then renamed over the old one, so a crash leaves the old file or the new one) and
//! read at start. An invalid file is reported and ignored, never fatal.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::admin::MAX_WEIGHT;

/// The file's name in `admin.state_dir`.
pub const FILE_NAME: &str = "overrides.json";

/// What the operator set with `sluicectl drain` and `sluicectl weight`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Drained backend addresses.
    #[serde(default)]
    pub drained: BTreeSet<IpAddr>,
    /// Maglev weights by backend address.
    #[serde(default)]
    pub weights: BTreeMap<IpAddr, u32>,
}

/// Why the overrides could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum OverridesError {
    /// The file exists but cannot be read.
    #[error(
        "cannot read {}: {source}; starting without the operator's drains and weights \
         (check admin.state_dir and its permissions)",
        path.display()
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid overrides document.
    #[error(
        "{} is invalid ({message}); starting without the operator's drains and weights: fix \
         or delete it (the next `sluicectl drain` or `weight` replaces it)",
        path.display()
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file cannot be written.
    #[error(
        "cannot write {}: {source}; the change applies now but is lost on restart \
         (check admin.state_dir and its permissions)",
        path.display()
    )]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The overrides file in `state_dir`.
pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Reads the overrides at `path`; a missing file is no overrides.
///
/// # Errors
/// [`OverridesError::Read`] or [`OverridesError::Invalid`].
pub fn load(path: &Path) -> Result<Overrides, OverridesError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Overrides::default()),
        Err(source) => {
            return Err(OverridesError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let invalid = |message: String| OverridesError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let o: Overrides = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    if let Some((a, w)) = o.weights.iter().find(|(_, w)| **w > MAX_WEIGHT) {
        return Err(invalid(format!(
            "weight {w} of {a} is above the maximum {MAX_WEIGHT}"
        )));
    }
    Ok(o)
}

/// Writes `o` to `path` atomically, creating the directory if needed.
///
/// # Errors
/// [`OverridesError::Write`].
pub fn save(path: &Path, o: &Overrides) -> Result<(), OverridesError> {
    let err = |source| OverridesError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut text = serde_json::to_string_pretty(o).map_err(|e| err(e.into()))?;
    text.push('\n');
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(&dir.path().join("new-dir"));
        assert_eq!(load(&path).unwrap(), Overrides::default(), "no file yet");
        let o = Overrides {
            drained: [ip("10.99.0.22"), ip("fd00:99::21")].into(),
            weights: [(ip("10.99.0.21"), 3), (ip("fd00:99::22"), 0)].into(),
        };
        save(&path, &o).unwrap();
        assert_eq!(load(&path).unwrap(), o);
        assert!(
            !path.with_extension("json.tmp").exists(),
            "no temporary left"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"10.99.0.21\": 3"), "{text}");
    }

    #[test]
    fn invalid_files_are_reported_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        for (text, what) in [
            ("{not json", "key must be a string"),
            ("{\"drained\": [\"10.0.0.300\"]}", "invalid IP address"),
            ("{\"weights\": {\"10.0.0.1\": 10001}}", "above the maximum"),
            ("{\"drains\": []}", "unknown field"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = load(&path).unwrap_err();
            assert!(matches!(e, OverridesError::Invalid { .. }), "{e}");
            let s = e.to_string();
            assert!(s.contains(what), "{text}: {s}");
            assert!(s.contains("fix or delete it"), "{s}");
        }
    }
}
