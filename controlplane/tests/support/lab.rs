//! The namespace labs' shared helpers for the tests that run real daemons in them (`e2e.rs`,
//! `bgp.rs`, `routed.rs`, `capture.rs`): where the repository is, `scripts/lab`, commands inside
//! a namespace, `scripts/lab-client.py` and its long-lived sessions, stopping a daemon by
//! SIGTERM, bounded waits and the routed lab's router FIB.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

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

/// Polls `f` every 50 ms until it is true or `limit` passes; returns the time it took.
pub fn wait(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    loop {
        if f() {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The next hops of `prefix` in the router's kernel FIB.
pub fn next_hops(prefix: &str) -> BTreeSet<String> {
    let fam = if prefix.contains(':') { "-6" } else { "-4" };
    let out = Command::new("ip")
        .args(["-n", "sl-r", fam, "route", "show", prefix])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let toks: Vec<&str> = text.split_whitespace().collect();
    toks.windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_owned())
        .collect()
}

/// A long-lived TCP connection to the echo service from a client namespace
/// (`scripts/lab-client.py session`): each line said is echoed back.
pub struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Session {
    /// Connects from namespace `nsname` to `host:port`.
    pub fn open(nsname: &str, host: &str, port: u16) -> Session {
        let py = repo().join("scripts/lab-client.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", nsname, "/usr/bin/python3", "-u"])
            .arg(py)
            .args(["session", host, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "connected");
        Session {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one line; the line that came back.
    pub fn say(&mut self, s: &str) -> String {
        writeln!(self.stdin, "{s}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops a `sluiced` by SIGTERM: it must exit 0 within 5 s, and its log (read by `log` once
/// it has exited) must say it stopped cleanly.
pub fn stop_sluiced(mut child: Child, log: impl Fn() -> String) {
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "sluiced did not stop within 5 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = log();
    assert!(status.success(), "sluiced exit status {status}:\n{log}");
    assert!(log.contains("stopped cleanly"), "{log}");
}
