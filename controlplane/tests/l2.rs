//! L2 mode end to end (issue 15): two real `sluiced` hosts on the routed lab's fabric segment
//! with `[l2]` (docs/l2.md, docs/examples/routed/l2.toml), no BGP. The L2 client `sl-lc1` sits
//! on the segment with the VIPs on-link; the router `sl-r` does the same for the client
//! `sl-rc1` behind it. Checks that exactly one MAC answers ARP and NDP for each VIP, that the
//! survivor takes a killed owner's VIPs and established dsr-l2 connections, that a returning
//! host takes back only its own share without any moment of two answers, and that forged
//! heartbeats are dropped and counted. Needs root and scripts/setup; every wait is bounded.

mod routed_lab;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use routed_lab::*;
use sluice_controlplane::l2::message::{encode, Heartbeat, MAX_LEN};

/// The L2 client on the fabric.
const L2_CLIENT: &str = "sl-lc1";
const VIPS: [&str; 4] = [VIP4, DSR4, VIP6, DSR6];
/// The lab's heartbeat key (docs/examples/routed/l2.toml).
const KEY: &[u8] = b"sluice-lab-l2-heartbeat-key";

/// host.toml with l2.toml appended and the NAT address on the segment (the host's dp0 address),
/// so that backends reach it on-link without a router.
fn l2_config(n: u8) -> impl Fn(String) -> String {
    move |c: String| {
        let l2 = std::fs::read_to_string(repo().join("docs/examples/routed/l2.toml"))
            .unwrap()
            .replace("@N@", &n.to_string());
        let from = format!("addresses = [\"10.98.200.{n}\", \"fd00:98:200::{n}\"]");
        assert!(c.contains(&from), "host.toml's NAT line changed");
        let to = format!("addresses = [\"10.98.0.2{n}\", \"fd00:98::2{n}\"]");
        c.replace(&from, &to) + &l2
    }
}

/// The MAC of host `n`'s DPDK port.
fn mac(n: u8) -> String {
    format!("02:98:00:00:00:2{n}")
}

/// Each VIP's answering MACs, from the L2 client.
fn answers() -> BTreeMap<String, Vec<String>> {
    let mut args = vec!["neigh", "eth0"];
    args.extend(VIPS);
    let v = lab_client(L2_CLIENT, &args);
    VIPS.iter()
        .map(|a| {
            let macs = v[*a]
                .as_array()
                .unwrap_or_else(|| panic!("neigh: no {a} in {v}"))
                .iter()
                .map(|m| m.as_str().unwrap().to_owned())
                .collect();
            ((*a).to_owned(), macs)
        })
        .collect()
}

/// `sluicectl l2`'s owners of the lab's VIPs on host `h`.
fn owners(h: &Host) -> BTreeMap<String, String> {
    let mut o = owners_all(h);
    o.retain(|a, _| VIPS.contains(&a.as_str()));
    o
}

/// `sluicectl l2`'s owners on host `h`: the VIPs and, with `[sync]`, the NAT addresses.
fn owners_all(h: &Host) -> BTreeMap<String, String> {
    let v = h.ctl(&["l2"]);
    v["vips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["vip"].as_str().unwrap().to_owned(),
                x["owner"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect()
}

/// Waits until both hosts are ready, agree on every VIP's owner, and each VIP is answered by
/// exactly its owner's MAC; returns the owners.
fn wait_settled(h: [&Host; 2]) -> BTreeMap<String, String> {
    let mut last = BTreeMap::new();
    wait(
        Duration::from_secs(20),
        "both hosts ready and agreeing",
        || {
            let ready = h.iter().all(|x| x.ctl(&["l2"])["ready"] == true);
            let (a, b) = (owners(h[0]), owners(h[1]));
            last = a.clone();
            ready && a == b && a.len() == 4 && a.values().all(|o| o != "-")
        },
    );
    wait(
        Duration::from_secs(10),
        "one MAC per VIP, the owner's",
        || {
            let ans = answers();
            VIPS.iter().all(|v| {
                let n = if last[*v] == "h1" { 1 } else { 2 };
                ans[*v] == [mac(n)]
            })
        },
    );
    last
}

/// Sends one UDP datagram from namespace `ns` to `to`:7946.
fn send_datagram(ns: &str, to: &str, payload: &[u8]) {
    let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
    let code = format!(
        "import socket; s=socket.socket(); s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
         s.sendto(bytes.fromhex('{hex}'), ('{to}', 7946))"
    );
    let ok = Command::new("ip")
        .args(["netns", "exec", ns, "/usr/bin/python3", "-c", &code])
        .status()
        .unwrap()
        .success();
    assert!(ok, "send from {ns}");
}

fn heartbeat(host: &str, key: &[u8]) -> Vec<u8> {
    let mut b = [0u8; MAX_LEN];
    let n = encode(&Heartbeat::now(host, 99, 1), key, &mut b);
    b[..n].to_vec()
}

#[test]
fn l2_one_owner_per_vip_failover_and_return() {
    let lab_ = Lab::up("l2");
    lab(&["routed", "dsr-vip", DSR4]);
    lab(&["routed", "dsr-vip", DSR6]);
    // The router reaches the VIPs on the segment too, for the client behind it.
    for (fam, range) in [("-4", "10.98.100.0/24"), ("-6", "fd00:98:100::/64")] {
        let ok = Command::new("ip")
            .args([
                "-n", "sl-r", fam, "route", "replace", range, "dev", "fabric",
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    let mut h1 = lab_.host_with(1, false, l2_config(1));
    let h2 = lab_.host_with(2, false, l2_config(2));

    // Exactly one MAC per VIP, the owner both hosts agree on; both hosts own some.
    let before = wait_settled([&h1, &h2]);
    eprintln!("owners: {before:?}");
    let ans = answers();
    for v in VIPS {
        assert_eq!(ans[v].len(), 1, "{v}: {ans:?}");
    }
    let s = spread(50, &format!("http://{VIP4}/"));
    assert_eq!(s.errors, 0);

    // Forged heartbeats: a wrong key and an unknown host (right key) are dropped and counted,
    // and change nothing.
    send_datagram(
        L2_CLIENT,
        "10.98.0.11",
        &heartbeat("h2", b"not-the-lab-key-at-all"),
    );
    send_datagram(L2_CLIENT, "10.98.0.11", &heartbeat("intruder", KEY));
    send_datagram(L2_CLIENT, "10.98.0.11", &heartbeat("h2", KEY));
    wait(
        Duration::from_secs(5),
        "the forged heartbeats counted",
        || {
            let d = &h1.ctl(&["l2"])["dropped"];
            d["bad_key"] == 1 && d["unknown_host"] == 1 && d["wrong_address"] == 1
        },
    );
    assert_eq!(owners(&h1), before, "forged heartbeats changed owners");

    // dsr-l2: long-lived connections from the client behind the router survive the takeover.
    let dsr_owner = if before[DSR4] == "h1" { 1 } else { 2 };
    let (mut held, connected) = Held::open(CLIENT, 1000, DSR4, 9000);
    assert_eq!(connected, 1000);
    assert_eq!(held.check().1, 0);

    // Watch the segment from the L2 client while host 1 is killed and comes back.
    let py = repo().join("scripts/lab-client.py");
    let watch = Command::new("ip")
        .args(["netns", "exec", L2_CLIENT, "/usr/bin/python3"])
        .arg(&py)
        .args(["neighwatch", "eth0"])
        .args(VIPS)
        .args(["--interval-ms", "50"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    h1.signal("-KILL");
    h1.reap(Duration::from_secs(5));
    let t = wait(Duration::from_secs(3), "host 2 owns every VIP", || {
        owners(&h2).values().all(|o| o == "h2")
    });
    eprintln!("host 2 owns every VIP {t:?} after the kill");
    wait(
        Duration::from_secs(3),
        "every VIP answered by host 2",
        || answers().values().all(|m| *m == [mac(2)]),
    );
    let s = spread(50, &format!("http://{VIP4}/"));
    assert_eq!(s.errors, 0, "new connections after the kill");
    if dsr_owner == 1 {
        // Host 2 answers for DSR4 now; the router learns it from the gratuitous ARP.
        std::thread::sleep(Duration::from_millis(300));
    }
    let (ok, failed, _) = held.check();
    eprintln!("dsr-l2 after the owner's kill: {ok} of 1000 kept working, {failed} failed");
    assert!(ok >= 990, "{ok} of 1000 survived (< 99%)");

    // Host 1 returns and takes back exactly its own VIPs, each moving once.
    let changes_before = h2.ctl(&["l2"])["ownership_changes"].as_u64().unwrap();
    h1.start();
    let after = wait_settled([&h1, &h2]);
    assert_eq!(
        after, before,
        "the returning host took back other VIPs than its own"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let changes = h2.ctl(&["l2"])["ownership_changes"].as_u64().unwrap() - changes_before;
    let back = before.values().filter(|o| *o == "h1").count() as u64;
    assert_eq!(
        changes, back,
        "host 2 saw {changes} owner changes for {back} VIPs going back"
    );

    let _ = Command::new("kill")
        .args(["-INT", &watch.id().to_string()])
        .status();
    let out = watch.wait_with_output().unwrap();
    let w: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for v in VIPS {
        let a = &w["addrs"][v];
        eprintln!(
            "{v}: rounds {} zero {} double {} moves {} owners {}",
            a["rounds"], a["zero"], a["double"], a["moves"], a["owners"]
        );
        assert_eq!(
            a["double"], 0,
            "{v} answered by two hosts in some round: {a}"
        );
        assert!(a["rounds"].as_u64().unwrap() > 20, "{a}");
    }
    let (ok, failed, _) = held.check();
    eprintln!("dsr-l2 after the return: {ok} of 1000 working, {failed} failed");
    assert!(ok >= 990, "{ok} of 1000 after the return");
}

/// l2_config with `[sync]` appended (docs/examples/routed/sync.toml), its peer's NAT addresses
/// those of L2 mode (the peer's dp0 addresses).
fn l2_sync_config(n: u8) -> impl Fn(String) -> String {
    let l2 = l2_config(n);
    let p = 3 - n;
    let sync = std::fs::read_to_string(repo().join("docs/examples/routed/sync.toml"))
        .unwrap()
        .replace("@N@", &n.to_string())
        .replace("@P@", &p.to_string())
        .replace(&format!("10.98.200.{p}"), &format!("10.98.0.2{p}"))
        .replace(&format!("fd00:98:200::{p}"), &format!("fd00:98::2{p}"));
    move |c: String| l2(c) + &sync
}

/// Flow sync in L2 mode (issue 16): the owner of the NAT VIP carries every connection; it is
/// killed, and the survivor takes over the VIP and the dead host's NAT address (it answers ARP
/// for it and announces it), so the backends' replies reach it, and it carries the synced
/// flows on. While both live, each host alone answers for its own NAT address.
#[test]
fn l2_sync_keeps_nat_connections_when_the_owner_dies() {
    let lab_ = Lab::up("l2sync");
    let h1 = lab_.host_with(1, false, l2_sync_config(1));
    let h2 = lab_.host_with(2, false, l2_sync_config(2));
    let before = wait_settled([&h1, &h2]);
    let owner: u8 = if before[VIP4] == "h1" { 1 } else { 2 };
    let other = 3 - owner;
    let (mut dead, survivor) = if owner == 1 { (h1, h2) } else { (h2, h1) };
    let nat = |n: u8| format!("10.98.0.2{n}");
    // Each host answers for its own NAT address only.
    let v = lab_client(L2_CLIENT, &["neigh", "eth0", &nat(1), &nat(2)]);
    assert_eq!(v[nat(1)], serde_json::json!([mac(1)]), "{v}");
    assert_eq!(v[nat(2)], serde_json::json!([mac(2)]), "{v}");

    let (mut held, connected) = Held::open(L2_CLIENT, 300, VIP4, 9000);
    assert_eq!(connected, 300);
    assert_eq!(held.check().1, 0);
    wait(
        Duration::from_secs(5),
        "the other host holds the flows",
        || survivor.ctl(&["sync"])["installed"].as_u64().unwrap_or(0) >= 300,
    );

    dead.signal("-KILL");
    dead.reap(Duration::from_secs(5));
    let t = wait(
        Duration::from_secs(3),
        "the survivor owns the VIP and the NAT address",
        || {
            let o = owners_all(&survivor);
            o.get(VIP4).map(String::as_str) == Some(&*format!("h{other}"))
                && o.get(&nat(owner)).map(String::as_str) == Some(&*format!("h{other}"))
        },
    );
    eprintln!(
        "host {other} owns VIP {VIP4} and NAT address {} {t:?} after the kill",
        nat(owner)
    );
    wait(
        Duration::from_secs(3),
        "the dead host's NAT address answered by the survivor",
        || {
            let v = lab_client(L2_CLIENT, &["neigh", "eth0", &nat(owner)]);
            v[nat(owner)] == serde_json::json!([mac(other)])
        },
    );
    let (ok, failed, b) = held.check();
    eprintln!("after the kill: {ok} ok, {failed} failed, {b:?}");
    assert!(failed * 100 <= 300, "more than 1% lost: {failed} of 300");
    let s = survivor.ctl(&["sync"]);
    assert!(s["adopted"].as_u64().unwrap() >= ok, "{s}");
}
