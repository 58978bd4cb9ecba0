//! Routed mode end to end (issue 14): two real `sluiced` hosts behind the routed lab's FRR
//! router (controlplane/tests/routed_lab). `static_ecmp_*` checks the data path with static
//! ECMP routes on the router and no BGP; `bgp_*` runs the hosts with `[bgp]` (docs/bgp.md)
//! and checks what the router learns and how new and existing flows fare when a host goes.
//! Needs root and scripts/setup (bird2, frr); every wait is bounded.

mod routed_lab;

use std::process::{Command, Stdio};
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
    let (mut held, connected) = Held::open(CLIENT, 300, DSR4, 9000);
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

/// Waits until the router has all four sessions Established and both hosts say so too (each
/// sluiced reads BIRD's sessions once a second, so its view may trail the router's).
fn wait_established(h: [&Host; 2]) {
    let t = wait(
        Duration::from_secs(40),
        "four BGP sessions Established",
        || {
            let r = router_sessions();
            r.len() == 4 && r.values().all(|s| s == "Established")
        },
    );
    eprintln!("router: four sessions Established after {t:?}");
    for host in h {
        let t = wait(
            Duration::from_secs(5),
            "the host's view of its sessions",
            || {
                let s = host.bgp_states();
                s.len() == 2 && s.values().all(|v| v == "established")
            },
        );
        eprintln!(
            "sl-h{}: both sessions established in its view {t:?} later",
            host.n
        );
    }
}

/// Waits until every VIP has exactly the next hops of `hosts` on the router.
fn wait_vips(hosts: &[u8], limit: Duration, what: &str) -> Duration {
    wait(limit, what, || {
        [VIP4, VIP6, DSR4, DSR6]
            .iter()
            .all(|v| next_hops(v) == hops(v, hosts))
    })
}

/// Routed mode proper: each sluiced announces through its BIRD to the lab's FRR. Sessions,
/// ECMP, SIGKILL (BFD), SIGTERM (withdraw, linger, stop) with a client connecting throughout,
/// a Service whose backends all go, and dsr-l2 flow survival. One lab, one pair of hosts.
#[test]
fn bgp_announces_withdraws_and_fails_over() {
    let lab_ = Lab::up("bgp");
    lab(&["routed", "dsr-vip", DSR4]);
    lab(&["routed", "dsr-vip", DSR6]);
    let mut h1 = lab_.host(1, true);
    let mut h2 = lab_.host(2, true);

    // Sessions up on both sides; every VIP over both hosts, each NAT address over its own.
    wait_established([&h1, &h2]);
    wait_vips(
        &[1, 2],
        Duration::from_secs(10),
        "every VIP over both hosts",
    );
    for n in [1, 2] {
        for like in [VIP4, VIP6] {
            assert_eq!(
                next_hops(&nat_addr(n, like)),
                hops(like, &[n]),
                "host {n}'s NAT address"
            );
        }
    }

    // New connections from many client ports spread over both hosts.
    let s = spread(400, &format!("http://{VIP4}/"));
    let by_nat = [
        s.peers.get("10.98.200.1").copied().unwrap_or(0),
        s.peers.get("10.98.200.2").copied().unwrap_or(0),
    ];
    eprintln!(
        "BGP ECMP: by NAT address {by_nat:?}, backends {:?}",
        s.backends
    );
    assert_spread(&s, 400, by_nat, "BGP ECMP");

    // SIGKILL host 1: BFD drops its next hops; new connections succeed through host 2.
    h1.signal("-KILL");
    let t = wait(Duration::from_secs(3), "host 1's next hops gone", || {
        [VIP4, VIP6, DSR4, DSR6]
            .iter()
            .all(|v| next_hops(v) == hops(v, &[2]))
    });
    eprintln!("SIGKILL: host 1's next hops gone after {t:?}");
    assert!(t < Duration::from_millis(1500), "took {t:?}");
    h1.reap(Duration::from_secs(5));
    let s = spread(100, &format!("http://{VIP4}/"));
    assert_eq!(s.errors, 0, "new connections after the kill");
    assert_eq!(s.peers.keys().collect::<Vec<_>>(), ["10.98.200.2"]);
    h1.start();
    wait_vips(&[1, 2], Duration::from_secs(40), "host 1 back in ECMP");

    // SIGTERM host 2 while the client opens connections back to back, to the dsr-l2 VIP and to
    // the NAT VIP at once: withdraw, linger (bgp.linger_seconds = 2), stop. Through dsr-l2 not
    // one connection fails: host 1 picks the same backend for a connection whose packets move
    // to it mid-handshake. Through NAT such a connection (the few in flight when the router
    // changes its next hops) may be lost: these hosts run without [sync], and even with it a
    // handshake is never synced; the rest must all succeed.
    let py = repo().join("scripts/lab-client.py");
    let looping = |vip: &str, port: &str| {
        Command::new("ip")
            .args(["netns", "exec", CLIENT, "/usr/bin/python3"])
            .arg(&py)
            .args(["loop", vip, port, "7"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (dsr_loop, nat_loop) = (looping(DSR4, "8080"), looping(VIP4, "80"));
    std::thread::sleep(Duration::from_secs(1));
    h2.signal("-TERM");
    let st = h2.reap(Duration::from_secs(10));
    assert!(st.contains("exit status: 0"), "{st}:\n{}", h2.log_text());
    let result = |c: std::process::Child| -> serde_json::Value {
        serde_json::from_slice(&c.wait_with_output().unwrap().stdout).unwrap()
    };
    let (dsr, nat) = (result(dsr_loop), result(nat_loop));
    eprintln!("SIGTERM during connect loops: dsr-l2 {dsr}, nat {nat}");
    assert_eq!(dsr["errors"], 0, "dsr-l2: {dsr}");
    assert!(dsr["ok"].as_u64().unwrap() > 100, "{dsr}");
    assert!(
        nat["peers"]["10.98.200.2"].as_u64().unwrap_or(0) > 0,
        "host 2 carried some: {nat}"
    );
    let (ok, errors) = (nat["ok"].as_u64().unwrap(), nat["errors"].as_u64().unwrap());
    assert!(ok > 100, "{nat}");
    assert!(
        errors * 1000 <= ok,
        "nat: more than 0.1% failed ({errors} of {}): {nat}",
        ok + errors
    );
    assert_eq!(next_hops(VIP4), hops(VIP4, &[1]));
    h2.start();
    wait_vips(&[1, 2], Duration::from_secs(40), "host 2 back in ECMP");

    // All of web's backends gone: its VIPs are withdrawn (web-dsr's stay); one back: announced.
    lab_.set_web_endpoints(&[]);
    wait(Duration::from_secs(10), "web's VIPs withdrawn", || {
        next_hops(VIP4).is_empty() && next_hops(VIP6).is_empty()
    });
    assert_eq!(next_hops(DSR4), hops(DSR4, &[1, 2]));
    lab_.set_web_endpoints(&["10.98.0.32", "fd00:98::32"]);
    wait_vips(
        &[1, 2],
        Duration::from_secs(10),
        "web's VIPs announced again",
    );
    let s = spread(50, &format!("http://{VIP4}/"));
    assert_eq!(s.errors, 0);
    assert_eq!(s.backends.keys().collect::<Vec<_>>(), ["sl-rb2"]);

    // dsr-l2: 1,000 long-lived connections; kill a host carrying a share of them; >= 99% keep
    // working through the other, which picks the same backends.
    let (mut held, connected) = Held::open(CLIENT, 1000, DSR4, 9000);
    assert_eq!(connected, 1000);
    assert_eq!(held.check().1, 0);
    let on_h1 = h1.new_flows("default/web-dsr", DSR4, 9000);
    assert!(on_h1 >= 300, "host 1 carries {on_h1} of 1000");
    h1.signal("-KILL");
    wait(Duration::from_secs(3), "host 1's next hops gone", || {
        next_hops(DSR4) == hops(DSR4, &[2])
    });
    let (ok, failed, b) = held.check();
    eprintln!("dsr-l2, host 1 (carrying {on_h1}) killed: {ok} of 1000 kept working, {failed} failed, {b:?}");
    assert!(ok >= 990, "{ok} of 1000 survived (< 99%)");
}

/// `[sync]` appended to host `n`'s configuration (docs/examples/routed/sync.toml).
fn with_sync(n: u8) -> impl Fn(String) -> String {
    let t = std::fs::read_to_string(repo().join("docs/examples/routed/sync.toml")).unwrap();
    let t = t
        .replace("@N@", &n.to_string())
        .replace("@P@", &(3 - n).to_string());
    move |c: String| c + &t
}

/// A host's sync counter `key` (`sluicectl sync`).
fn sync_count(h: &Host, key: &str) -> u64 {
    h.ctl(&["sync"])[key].as_u64().unwrap_or(0)
}

/// Flow sync (issue 16): long-lived full-NAT connections spread over both hosts survive a
/// SIGKILL of one of them (the survivor holds its synced flows and, through its backup route,
/// its NAT address), and the killed host gets them back by bulk transfer when it returns.
#[test]
fn sync_keeps_nat_connections_across_a_lost_host() {
    let lab_ = Lab::up("sync");
    let mut h1 = lab_.host_with(1, true, with_sync(1));
    let h2 = lab_.host_with(2, true, with_sync(2));
    wait_established([&h1, &h2]);
    wait_vips(
        &[1, 2],
        Duration::from_secs(10),
        "every VIP over both hosts",
    );
    // Each NAT address's best route is its own host (the peer's backup has a longer path).
    for n in [1, 2] {
        assert_eq!(next_hops(&nat_addr(n, VIP4)), hops(VIP4, &[n]), "host {n}");
    }

    let (mut held, connected) = Held::open(CLIENT, 400, VIP4, 9000);
    assert_eq!(connected, 400);
    assert_eq!(held.check().1, 0);
    let on_h1 = h1.new_flows("default/web", VIP4, 9000);
    assert!(on_h1 >= 100, "host 1 carries {on_h1} of 400");
    let t = wait(
        Duration::from_secs(5),
        "host 2 holds host 1's flows",
        || sync_count(&h2, "installed") >= on_h1,
    );
    eprintln!("host 2 installed host 1's {on_h1} flows {t:?} after the check");

    h1.signal("-KILL");
    h1.reap(Duration::from_secs(5));
    let t = wait(
        Duration::from_secs(3),
        "host 1's NAT address via host 2",
        || next_hops(&nat_addr(1, VIP4)) == hops(VIP4, &[2]) && next_hops(VIP4) == hops(VIP4, &[2]),
    );
    eprintln!("SIGKILL: host 1's VIP and NAT address through host 2 after {t:?}");
    let (ok, failed, b) = held.check();
    eprintln!("after the kill: {ok} ok, {failed} failed, backends {b:?}");
    assert!(failed * 100 <= 400, "more than 1% lost: {failed} of 400");
    assert!(
        sync_count(&h2, "adopted") >= on_h1 - failed,
        "host 2 adopted host 1's flows: {}",
        h2.ctl(&["sync"])
    );

    // Host 1 returns: it asks host 2 for a bulk transfer before it announces anything, and the
    // connections go on whichever host ECMP picks for them.
    h1.start();
    h1.wait_log(
        "bulk transfer from peers answered=1",
        Duration::from_secs(20),
    );
    wait_vips(&[1, 2], Duration::from_secs(40), "host 1 back in ECMP");
    let (ok, failed, _) = held.check();
    eprintln!("after host 1 returned: {ok} ok, {failed} failed");
    assert!(failed * 100 <= 400, "more than 1% lost: {failed} of 400");
    let s = h2.ctl(&["sync"]);
    assert_eq!(s["ring_full"], 0, "{s}");
    assert!(s["dropped"].as_object().unwrap().is_empty(), "{s}");
}

/// `text` with the first `from` after peer `peer`'s name replaced by `to` (one peer's key).
fn peer_key(text: String, peer: &str, from: &str, to: &str) -> String {
    let at = text
        .find(&format!("name = \"{peer}\""))
        .unwrap_or_else(|| panic!("no peer {peer}"));
    let (head, tail) = text.split_at(at);
    assert!(tail.contains(from), "peer {peer} has no {from:?}");
    format!("{head}{}", tail.replacen(from, to, 1))
}

/// The value of the sample `name{peer="PEER"}` in a scrape.
fn peer_sample(scrape: &str, name: &str, peer: &str) -> Option<f64> {
    let prefix = format!("{name}{{peer=\"{peer}\"}} ");
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse().ok()))
}

/// Misconfigured peers through the whole daemon: host 1's IPv6 peer has the wrong ASN, host 2's
/// the wrong password. `sluicectl bgp`, the log and the metrics say which session is down and
/// why, while the IPv4 sessions stay up and both hosts keep forwarding the IPv4 VIP.
#[test]
fn bgp_misconfigured_peers_are_reported_and_forwarding_goes_on() {
    let lab_ = Lab::up("badpeer");
    let h1 = lab_.host_with(1, true, |c| {
        peer_key(c, "tor_v6", "asn = 65000", "asn = 65099")
    });
    let h2 = lab_.host_with(2, true, |c| {
        peer_key(
            c,
            "tor_v6",
            "password = \"sluice-lab\"",
            "password = \"not-the-key\"",
        )
    });
    let peer = |h: &Host, name: &str| -> serde_json::Value {
        let v = h.ctl(&["bgp"]);
        v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no peer {name} in {v}"))
    };
    let t = wait(
        Duration::from_secs(30),
        "host 1 reports the wrong ASN",
        || {
            let p = peer(&h1, "tor_v6");
            p["state"] != "Established"
                && p["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("Bad peer AS"))
        },
    );
    eprintln!("wrong ASN reported after {t:?}: {}", peer(&h1, "tor_v6"));
    let p = peer(&h1, "tor_v6");
    assert!(
        p["hint"].as_str().unwrap_or("").contains("AS is not 65099"),
        "{p}"
    );
    let p = peer(&h2, "tor_v6");
    eprintln!("wrong password: {p}");
    assert!(
        matches!(p["state"].as_str(), Some("Connect" | "Active")),
        "{p}"
    );
    assert!(p["hint"].as_str().unwrap_or("").contains("TCP-MD5"), "{p}");
    for h in [&h1, &h2] {
        wait(
            Duration::from_secs(30),
            "the IPv4 session Established",
            || peer(h, "tor_v4")["state"] == "Established",
        );
    }

    // The router learns the IPv4 VIP from both hosts, the IPv6 one from neither; both hosts
    // forward.
    wait(Duration::from_secs(10), "VIP4 over both hosts", || {
        next_hops(VIP4) == hops(VIP4, &[1, 2])
    });
    assert!(next_hops(VIP6).is_empty(), "{:?}", next_hops(VIP6));
    let s = spread(200, &format!("http://{VIP4}/"));
    assert_eq!(s.errors, 0, "requests through the VIP failed");
    assert_spread(
        &s,
        200,
        [
            s.peers.get("10.98.200.1").copied().unwrap_or(0),
            s.peers.get("10.98.200.2").copied().unwrap_or(0),
        ],
        "ECMP with one bad session per host",
    );

    // Metrics and the log name the session and the reason.
    for h in [&h1, &h2] {
        let m = h.metrics();
        assert_eq!(
            peer_sample(&m, "sluice_bgp_session_up", "tor_v6"),
            Some(0.0),
            "sl-h{}",
            h.n
        );
        assert_eq!(
            peer_sample(&m, "sluice_bgp_session_up", "tor_v4"),
            Some(1.0),
            "sl-h{}",
            h.n
        );
    }
    let log = h1.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("peer=tor_v6") && l.contains("Bad peer AS")),
        "no log line names tor_v6 and its error:\n{log}"
    );
    let log = h2.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("peer=tor_v6") && l.contains("TCP-MD5")),
        "no log line names tor_v6 and the password hint:\n{log}"
    );
}

/// The routed lab's `[bgp]` section (docs/examples/routed/bgp.toml) is valid for the module
/// sluiced will call, for both hosts: the BGP test above fails for the wiring, not the config.
#[test]
fn routed_bgp_section_is_valid() {
    for n in ["1", "2"] {
        let text = std::fs::read_to_string(repo().join("docs/examples/routed/bgp.toml"))
            .unwrap()
            .replace("@N@", n)
            .replace("@DIR@", "/run/sluice-test");
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let cfg: sluice_controlplane::announce::bgp::BgpConfig =
            doc["bgp"].clone().try_into().unwrap();
        cfg.validate(&["default"]).unwrap();
        assert_eq!(
            cfg.next_hop_v4,
            Some(format!("10.98.0.2{n}").parse().unwrap())
        );
    }
}
