//! Routed mode end to end (issue 14): two real `sluiced` hosts behind the routed lab's FRR
//! router (controlplane/tests/routed_lab). `static_ecmp_*` checks the data path with static
//! ECMP routes on the router and no BGP; `bgp_*` runs the hosts with `[bgp]` (docs/bgp.md)
//! and checks what the router learns and how new and existing flows fare when a host goes.
//! Needs root and scripts/setup (bird2, frr); every wait is bounded.

mod routed_lab;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use routed_lab::*;

/// Asserts that `n` answers spread over both hosts (each at least 30%) and both backends.
fn assert_spread(s: &Spread, n: u64, by_host: [u64; 2], what: &str) {
    assert_eq!(s.errors, 0, "{what}: failed requests");
    assert_eq!(
        s.backends.len(),
        2,
        "{what}: both backends answer: {:?}",
        s.backends
    );
    for (i, c) in by_host.iter().enumerate() {
        assert!(
            *c * 10 >= n * 3,
            "{what}: host {} carried {c} of {n} new connections (< 30%): {by_host:?}",
            i + 1
        );
    }
}

/// New flows to `vip`:`port` on each host since `before`.
fn flows(h: [&Host; 2], svc: &str, vip: &str, port: u64, before: [u64; 2]) -> [u64; 2] {
    [
        h[0].new_flows(svc, vip, port) - before[0],
        h[1].new_flows(svc, vip, port) - before[1],
    ]
}

/// `n` long-lived echo connections held by one client process (lab-client.py hold).
struct Held {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Held {
    fn open(n: usize, vip: &str, port: u16) -> (Held, u64) {
        let py = repo().join("scripts/lab-client.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", CLIENT, "/usr/bin/python3", "-u"])
            .arg(py)
            .args(["hold", &n.to_string(), vip, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut h = Held {
            child,
            stdin,
            stdout,
        };
        let v = h.line();
        (h, v["connected"].as_u64().unwrap())
    }

    fn line(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("hold said {line:?}: {e}"))
    }

    /// Sends a line on every connection: (answered, failed, answers per backend).
    fn check(&mut self) -> (u64, u64, BTreeMap<String, u64>) {
        writeln!(self.stdin, "check").unwrap();
        let v = self.line();
        let b = v["backends"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
            .collect();
        (v["ok"].as_u64().unwrap(), v["failed"].as_u64().unwrap(), b)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Without BGP: static ECMP routes on the router spread new connections over both hosts, each
/// host's NAT address brings replies back to it, and with `dsr-l2` the surviving host carries
/// on the connections of a killed one (identical Maglev tables) once the router stops sending
/// to the dead host.
#[test]
fn static_ecmp_spreads_over_both_hosts() {
    let lab_ = Lab::up("static");
    lab(&["routed", "static", VIP4, VIP6, DSR4, DSR6]);
    lab(&["routed", "dsr-vip", DSR4]);
    lab(&["routed", "dsr-vip", DSR6]);
    let mut h1 = lab_.host(1, false);
    let h2 = lab_.host(2, false);
    assert_eq!(next_hops(VIP4), hops(VIP4, &[1, 2]));
    assert_eq!(next_hops(VIP6), hops(VIP6, &[1, 2]));

    // Full NAT, IPv4 and IPv6: the backend sees the NAT address of the host that carried the
    // flow, so its reply was routed back to that host; the hosts' counters agree.
    for (vip, url, n) in [
        (VIP4, format!("http://{VIP4}/"), 400u64),
        (VIP6, format!("http://[{VIP6}]/"), 200),
    ] {
        let before = [
            h1.new_flows("default/web", vip, 80),
            h2.new_flows("default/web", vip, 80),
        ];
        let s = spread(n as usize, &url);
        let by_nat = [
            s.peers.get(&nat_addr(1, vip)).copied().unwrap_or(0),
            s.peers.get(&nat_addr(2, vip)).copied().unwrap_or(0),
        ];
        eprintln!(
            "{vip}: backends {:?}, by NAT address {:?}",
            s.backends, s.peers
        );
        assert_eq!(
            by_nat[0] + by_nat[1],
            n,
            "only the hosts' NAT addresses: {:?}",
            s.peers
        );
        assert_spread(&s, n, by_nat, vip);
        let by_ctl = flows([&h1, &h2], "default/web", vip, 80, before);
        assert_eq!(
            by_ctl, by_nat,
            "sluicectl's new flows per host match the NAT addresses"
        );
    }

    // dsr-l2: the backend sees the client itself and answers from the VIP directly.
    for (vip, url, client_addr) in [
        (DSR4, format!("http://{DSR4}:8080/"), "10.98.1.11"),
        (DSR6, format!("http://[{DSR6}]:8080/"), "fd00:98:1::11"),
    ] {
        let before = [
            h1.new_flows("default/web-dsr", vip, 8080),
            h2.new_flows("default/web-dsr", vip, 8080),
        ];
        let s = spread(200, &url);
        assert_eq!(
            s.peers.keys().collect::<Vec<_>>(),
            [client_addr],
            "{:?}",
            s.peers
        );
        let by_ctl = flows([&h1, &h2], "default/web-dsr", vip, 8080, before);
        eprintln!(
            "{vip} (dsr-l2): backends {:?}, by host {by_ctl:?}",
            s.backends
        );
        assert_spread(&s, 200, by_ctl, vip);
    }

    // dsr-l2 flow survival: 300 long-lived connections, host 1 killed, the router told (by
    // hand here, by BFD with BGP) to send everything to host 2.
    let (mut held, connected) = Held::open(300, DSR4, 9000);
    assert_eq!(connected, 300);
    let (ok, failed, _) = held.check();
    assert_eq!((ok, failed), (300, 0));
    let on_h1 = h1.new_flows("default/web-dsr", DSR4, 9000);
    assert!(on_h1 >= 60, "host 1 carries {on_h1} of the 300 connections");
    h1.signal("-KILL");
    h1.reap(Duration::from_secs(5));
    Command::new("ip")
        .args(["-n", "sl-r", "route", "replace", &format!("{DSR4}/32")])
        .args(["via", "10.98.0.22", "dev", "fabric"])
        .status()
        .unwrap();
    let (ok, failed, b) = held.check();
    eprintln!(
        "dsr-l2 after host 1 (which carried {on_h1}) died: {ok} answered, {failed} failed, {b:?}"
    );
    assert!(ok * 100 >= 300 * 99, "{ok} of 300 survived (< 99%)");
    drop(held);
    drop(h2);
    lab(&["routed", "static-del", VIP4, VIP6, DSR4, DSR6]);
}
