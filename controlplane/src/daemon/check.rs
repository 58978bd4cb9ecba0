//! `sluiced --check`: the daemon's own load and compile steps (configuration, manifest
//! directory, IPAM, the first snapshot), without DPDK, the admin socket or any network.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::{load, ControlState, DaemonError, Loaded};
use crate::compile::CompileReport;

/// The MAC the checked snapshot is compiled with: no port is opened, and the MAC changes
/// nothing the check reports.
const NO_PORT_MAC: [u8; 6] = [0; 6];

/// What `sluiced --check` found.
#[derive(Debug)]
pub struct CheckReport {
    /// The configuration file.
    pub config: PathBuf,
    /// What was checked beyond the configuration.
    pub source: Checked,
}

/// What was checked beyond the configuration.
#[derive(Debug)]
pub enum Checked {
    /// `source.kind = "kubernetes"`: the model comes from the cluster at start, so only the
    /// configuration was checked.
    Kubernetes,
    /// The manifest directory, loaded and compiled as the daemon does at start.
    Manifests {
        /// The directory, resolved as the daemon resolves it.
        dir: PathBuf,
        /// Files read.
        files: usize,
        /// Objects in the model: Services, EndpointSlices, Nodes.
        objects: (usize, usize, usize),
        /// Manifest warnings (objects skipped, fields ignored).
        warnings: Vec<String>,
        /// The operator's drains and weights kept in `admin.state_dir`: how many addresses,
        /// or why the file is ignored.
        overrides: Result<usize, String>,
        /// The compile report of the first snapshot (VIPs from IPAM, frontends, problems).
        report: Box<CompileReport>,
    },
}

/// Loads the configuration at `path` and, with the manifest source, loads and compiles the
/// manifests exactly as `sluiced` does before it starts DPDK.
///
/// # Errors
/// The error the daemon would stop with: configuration, manifests or compile.
pub fn check(path: &Path) -> Result<CheckReport, DaemonError> {
    let Loaded {
        cfg,
        manifest_dir,
        kubernetes,
        first,
        watcher: _,
    } = load(path)?;
    if kubernetes {
        return Ok(CheckReport {
            config: path.to_path_buf(),
            source: Checked::Kubernetes,
        });
    }
    let m = &first.model;
    let objects = (m.services.len(), m.endpoint_slices.len(), m.nodes.len());
    let files = first.files.len();
    let warnings = first.warnings.clone();
    let mut state = ControlState::new(cfg, first.model, NO_PORT_MAC, manifest_dir.clone());
    let overrides = state.restore_overrides().map_err(|e| e.to_string());
    let report = state.compile(&HashMap::new())?.report;
    Ok(CheckReport {
        config: path.to_path_buf(),
        source: Checked::Manifests {
            dir: manifest_dir,
            files,
            objects,
            warnings,
            overrides,
            report: Box::new(report),
        },
    })
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: ok", self.config.display())?;
        match &self.source {
            Checked::Kubernetes => writeln!(
                f,
                "source.kind = \"kubernetes\": only the configuration was checked; Services, \
                 EndpointSlices and Nodes come from the cluster at start"
            ),
            Checked::Manifests {
                dir,
                files,
                objects: (svc, eps, nodes),
                warnings,
                overrides,
                report,
            } => {
                writeln!(
                    f,
                    "{}: ok; {files} file(s): {svc} services, {eps} endpoint slices, {nodes} nodes",
                    dir.display()
                )?;
                for w in warnings {
                    writeln!(f, "  warning: {w}")?;
                }
                match overrides {
                    Ok(0) => {}
                    Ok(n) => writeln!(f, "operator drains and weights: {n} address(es)")?,
                    Err(e) => writeln!(f, "warning: {e}")?,
                }
                let frontends: usize = report.services.iter().map(|s| s.frontends.len()).sum();
                writeln!(
                    f,
                    "compiled: {} served service(s), {frontends} frontend(s)",
                    report.services.len()
                )?;
                for s in &report.services {
                    let vips: Vec<String> = s.vips.iter().map(ToString::to_string).collect();
                    let vips = if vips.is_empty() {
                        "no VIP".to_owned()
                    } else {
                        vips.join(", ")
                    };
                    writeln!(f, "  {}: {vips}", s.service)?;
                    for p in &s.problems {
                        writeln!(f, "    problem: {p}")?;
                    }
                }
                for p in &report.problems {
                    writeln!(f, "  problem: {p}")?;
                }
                Ok(())
            }
        }
    }
}
