//! The namespace labs' shared helpers for the tests that run real daemons in them (`e2e.rs`,
//! `bgp.rs`, `routed.rs`): where the repository is, `scripts/lab`, commands inside a namespace
//! and `scripts/lab-client.py`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `scripts/lab ARGS`, panicking with its output on failure.
pub fn lab(args: &[&str]) {
    let out = Command::new(repo().join("scripts/lab"))
        .args(args)
        .output()
        .expect("scripts/lab");
    assert!(
        out.status.success(),
        "scripts/lab {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command in a namespace; returns (success, stdout).
pub fn ns(nsname: &str, cmd: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", nsname])
        .args(cmd)
        .output()
        .expect("ip netns exec");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Runs `scripts/lab-client.py ARGS` in namespace `nsname` and parses its JSON.
pub fn lab_client(nsname: &str, args: &[&str]) -> serde_json::Value {
    let py = repo().join("scripts/lab-client.py");
    let mut cmd = vec!["/usr/bin/python3", py.to_str().unwrap()];
    cmd.extend_from_slice(args);
    let (ok, out) = ns(nsname, &cmd);
    assert!(ok, "lab-client {args:?} failed: {out}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("lab-client output {out:?}: {e}"))
}
