//! Routed mode against a real router: the routed lab (`scripts/lab routed`), FRR in `sl-r`,
//! and two BIRD instances started by sluiced's [`Announcer`] in the Sluice hosts `sl-h1` and
//! `sl-h2`. Checks sessions and BFD, ECMP next hops in the router's kernel FIB, withdraw, a
//! frozen and a killed BIRD, and how a wrong ASN and a wrong password show in `status()`.
//! Needs root and scripts/setup (bird2, frr); every wait is bounded.
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[path = "support/lab.rs"]
mod lab_support;
use lab_support::{lab, next_hops, repo, wait};

use sluice_controlplane::announce::bgp::control::BgpState;
use sluice_controlplane::announce::bgp::{Announcement, Announcer, BgpConfig, StartOptions};

const VIP4: &str = "10.98.100.1";
const VIP6: &str = "fd00:98:100::1";

/// Takes the routed lab down when the test ends, passed or not.
struct RoutedLab;

impl Drop for RoutedLab {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/lab"))
            .args(["routed", "down"])
            .output();
    }
}

fn host_cfg(n: u8, dir: &Path, peer_asn: u32, password: &str) -> BgpConfig {
    let text = format!(
        r#"
asn = 64512
router_id = "10.98.0.1{n}"
next_hop_v4 = "10.98.0.2{n}"
next_hop_v6 = "fd00:98::2{n}"
runtime_dir = "{dir}"
[[peers]]
name = "tor_v4"
address = "10.98.0.1"
asn = {peer_asn}
password = "{password}"
hold_time = 9
bfd = true
bfd_min_rx_ms = 100
bfd_min_tx_ms = 100
[[peers]]
name = "tor_v6"
address = "fd00:98::1"
asn = {peer_asn}
password = "{password}"
hold_time = 9
bfd = true
bfd_min_rx_ms = 100
bfd_min_tx_ms = 100
[[advertisements]]
pools = ["default"]
communities = ["65000:100"]
"#,
        dir = dir.display()
    );
    let cfg: BgpConfig = toml::from_str(&text).unwrap();
    cfg.validate(&["default"]).unwrap();
    cfg
}

fn start(n: u8, dir: &Path, peer_asn: u32, password: &str) -> Announcer {
    let opts = StartOptions {
        exec_prefix: ["ip", "netns", "exec", &format!("sl-h{n}")]
            .iter()
            .map(Into::into)
            .collect(),
        ..StartOptions::default()
    };
    Announcer::start(host_cfg(n, dir, peer_asn, password), opts).expect("start BIRD")
}

fn wanted(n: u8, vip: bool) -> Vec<Announcement> {
    let mut w = vec![Announcement::host(
        format!("10.98.200.{n}").parse().unwrap(),
    )];
    if vip {
        w.push(Announcement::vip(VIP4.parse().unwrap(), "default"));
        w.push(Announcement::vip(VIP6.parse().unwrap(), "default"));
    }
    w
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn both() -> (BTreeSet<String>, BTreeSet<String>) {
    (
        set(&["10.98.0.21", "10.98.0.22"]),
        set(&["fd00:98::21", "fd00:98::22"]),
    )
}

fn established_with_bfd(a: &Announcer) -> bool {
    a.status().is_ok_and(|s| {
        s.len() == 2
            && s.iter()
                .all(|p| p.state == BgpState::Established && p.bfd.as_deref() == Some("Up"))
    })
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn routed_mode_with_frr() {
    lab(&["routed", "up"]);
    let _lab = RoutedLab;
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let h1 = start(1, d1.path(), 65000, "sluice-lab");
    let mut h2 = start(2, d2.path(), 65000, "sluice-lab");

    // Sessions (IPv4 and IPv6) reach Established with BFD up. FRR re-creates its BFD session
    // once TCP is up, costing one flap and BIRD's 5 s error wait; hence the bound.
    let t = wait(
        Duration::from_secs(30),
        "sessions Established with BFD",
        || established_with_bfd(&h1) && established_with_bfd(&h2),
    );
    eprintln!("sessions established with BFD up after {t:?}");

    // Both announce the VIPs: two next hops (the DPDK ports' addresses) for each family; each
    // host's NAT address has one next hop, its own.
    assert!(h1.set_prefixes(&wanted(1, true)).unwrap());
    assert!(h2.set_prefixes(&wanted(2, true)).unwrap());
    assert!(
        !h1.set_prefixes(&wanted(1, true)).unwrap(),
        "no change, no configure"
    );
    let (n4, n6) = both();
    wait(
        Duration::from_secs(10),
        "ECMP next hops for both VIPs",
        || next_hops(VIP4) == n4 && next_hops(VIP6) == n6,
    );
    assert_eq!(next_hops("10.98.200.1"), set(&["10.98.0.21"]));
    assert_eq!(next_hops("10.98.200.2"), set(&["10.98.0.22"]));
    let s = h1.status().unwrap();
    assert_eq!(s[0].prefixes_exported, 2, "{s:?}"); // VIP4 and the NAT address
    assert_eq!(s[1].prefixes_exported, 1, "{s:?}"); // VIP6

    // Withdrawing the VIPs from one host leaves one next hop; announcing again restores two.
    assert!(h2.set_prefixes(&wanted(2, false)).unwrap());
    wait(
        Duration::from_secs(5),
        "one next hop after withdraw",
        || next_hops(VIP4) == set(&["10.98.0.21"]) && next_hops(VIP6) == set(&["fd00:98::21"]),
    );
    assert_eq!(next_hops("10.98.200.2"), set(&["10.98.0.22"]));
    assert!(h2.set_prefixes(&wanted(2, true)).unwrap());
    wait(Duration::from_secs(5), "two next hops again", || {
        next_hops(VIP4) == n4 && next_hops(VIP6) == n6
    });

    // A frozen BIRD (SIGSTOP) keeps its TCP sessions open: only BFD can notice.
    let pid2 = h2.process().pid.unwrap();
    signal(pid2, "-STOP");
    let t = wait(
        Duration::from_secs(3),
        "BFD to drop the frozen host",
        || next_hops(VIP4) == set(&["10.98.0.21"]) && next_hops(VIP6) == set(&["fd00:98::21"]),
    );
    eprintln!("frozen host's next hops gone after {t:?}");
    assert!(t < Duration::from_millis(1500), "BFD took {t:?}");
    signal(pid2, "-CONT");
    wait(
        Duration::from_secs(30),
        "the thawed host back in ECMP",
        || next_hops(VIP4) == n4 && next_hops(VIP6) == n6,
    );

    // SIGKILL: the router drops the next hop at once (TCP closes; BFD would too), and the
    // supervisor restarts BIRD with the prefixes it had, so the host comes back.
    let pid2 = h2.process().pid.unwrap();
    signal(pid2, "-KILL");
    let t = wait(
        Duration::from_secs(3),
        "the killed host's next hops gone",
        || next_hops(VIP4) == set(&["10.98.0.21"]) && next_hops(VIP6) == set(&["fd00:98::21"]),
    );
    eprintln!("killed host's next hops gone after {t:?}");
    assert!(t < Duration::from_millis(1500), "took {t:?}");
    wait(
        Duration::from_secs(30),
        "restarted BIRD back in ECMP",
        || next_hops(VIP4) == n4 && next_hops(VIP6) == n6,
    );
    let p = h2.process();
    assert_eq!(p.starts, 2, "{p:?}");
    assert!(p.last_exit.unwrap().contains("SIGKILL"));

    // withdraw_all on one host (drain): its next hops go, the sessions stay up.
    assert!(h2.withdraw_all().unwrap());
    wait(Duration::from_secs(5), "drained host withdrawn", || {
        next_hops(VIP4) == set(&["10.98.0.21"]) && next_hops("10.98.200.2").is_empty()
    });
    assert!(established_with_bfd(&h2));

    // A wrong peer ASN: BIRD refuses the router's OPEN and says why.
    h2.stop();
    h2 = start(2, d2.path(), 65099, "sluice-lab");
    wait(Duration::from_secs(15), "Bad peer AS in status", || {
        h2.status().is_ok_and(|s| {
            s.iter().all(|p| {
                p.state != BgpState::Established
                    && p.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("Bad peer AS"))
            })
        })
    });
    let s = h2.status().unwrap();
    eprintln!(
        "wrong ASN: {:?} {:?} {:?}",
        s[0].state, s[0].last_error, s[0].hint
    );
    assert!(s[0].hint.as_deref().unwrap().contains("AS is not 65099"));

    // A wrong password: TCP-MD5 mismatches are dropped by the kernels without a word, so
    // BIRD stays in Connect/Active with no error of its own; status says what to check.
    h2.stop();
    h2 = start(2, d2.path(), 65000, "wrong-password");
    std::thread::sleep(Duration::from_secs(4));
    let s = h2.status().unwrap();
    eprintln!(
        "wrong password: {:?} {:?} {:?}",
        s[0].state, s[0].last_error, s[0].hint
    );
    for p in &s {
        assert!(
            matches!(p.state, BgpState::Connect | BgpState::Active),
            "{p:?}"
        );
        assert!(p.hint.as_deref().unwrap().contains("TCP-MD5"), "{p:?}");
    }
    // The other host is unaffected throughout.
    assert!(established_with_bfd(&h1));
    assert_eq!(next_hops(VIP4), set(&["10.98.0.21"]));

    h2.stop();
    h1.stop();
}
