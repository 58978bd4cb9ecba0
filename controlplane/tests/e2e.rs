//! End-to-end tests in the namespace lab (scripts/lab): a real `sluiced` on a DPDK
//! `net_af_packet` port on the lab's veth, real clients (curl, Python sockets) in client
//! namespaces, real HTTP/TCP/UDP servers in backend namespaces. Needs root and the lab's tools
//! (scripts/setup); scripts/test runs it and takes the lab down afterwards.
//!
//! The tests share one lab and one DPDK port, so they run one at a time (a global lock).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/e2e.rs"]
mod e2e_support;
#[path = "support/lab.rs"]
mod lab_support;
use e2e_support::*;
use lab_support::{lab, lab_client as client, ns, repo, Session};

#[test]
fn nat_tcp_and_udp_over_ipv4_and_ipv6() {
    let _g = lock();
    let s = Setup::new("nat", |s| s, false);
    let d = Sluiced::start(&s);
    let (b4, e4) = http("sl-c1", 60, &format!("http://{VIP4}/"));
    assert_eq!(e4, 0);
    assert_eq!(b4.len(), 3, "all three backends answer over IPv4: {b4:?}");
    let (b6, e6) = http("sl-c2", 60, &format!("http://[{VIP6}]/"));
    assert_eq!(e6, 0);
    assert_eq!(b6.len(), 3, "all three backends answer over IPv6: {b6:?}");
    for (c, vip) in [("sl-c1", VIP4), ("sl-c2", VIP6)] {
        let u = client(c, &["udp", vip, "9001", "5"]);
        assert_eq!(u["lost"], 0, "{u}");
        let r = u["replies"][0].as_str().unwrap();
        assert!(r.starts_with("sl-b") && r.ends_with("datagram 0"), "{r}");
    }
    // nat: the backend sees Sluice's NAT address, not the client.
    let (_, out) = ns(
        "sl-c1",
        &["curl", "-si", "-m", "2", &format!("http://{VIP4}/")],
    );
    assert!(out.contains("X-Client-Addr: 10.99.0.3"), "{out}");
    d.stop();
}

#[test]
fn dsr_l2_preserves_the_client_address() {
    let _g = lock();
    // DSR cannot translate ports: the Service port is the port the backends listen on.
    let s = Setup::new(
        "dsr",
        |svc| {
            annotate(svc, "sluice.dev/forwarding-method: dsr-l2")
                .replace("port: 80\n", "port: 8080\n")
        },
        false,
    );
    lab(&["dsr-vip", VIP4]);
    lab(&["dsr-vip", VIP6]);
    let d = Sluiced::start_at(&s, &format!("http://{VIP4}:8080/"));
    let (b, e) = http("sl-c1", 60, &format!("http://{VIP4}:8080/"));
    let (b6, e6) = http("sl-c2", 30, &format!("http://[{VIP6}]:8080/"));
    let (_, out) = ns(
        "sl-c2",
        &["curl", "-si", "-m", "2", &format!("http://{VIP4}:8080/")],
    );
    d.stop();
    lab(&["dsr-vip-del", VIP4]);
    lab(&["dsr-vip-del", VIP6]);
    assert_eq!((e, e6), (0, 0));
    assert_eq!(b.len(), 3, "{b:?}");
    assert!(!b6.is_empty());
    assert!(
        out.contains("X-Client-Addr: 10.99.0.12"),
        "client address preserved: {out}"
    );
    assert!(
        out.contains(&format!("X-Server-Addr: {VIP4}")),
        "backend answered as the VIP: {out}"
    );
}

#[test]
fn dsr_ipip_encapsulates_to_the_backend() {
    let _g = lock();
    let s = Setup::new(
        "ipip",
        |svc| {
            annotate(svc, "sluice.dev/forwarding-method: dsr-ipip")
                .replace("port: 80\n", "port: 8080\n")
        },
        false,
    );
    let d = Sluiced::start_at(&s, "");
    // Capture on every backend; the kernel here cannot decapsulate, so the client's SYN is
    // seen only as an IPIP packet on the backend's link.
    let caps: Vec<Child> = ["sl-b1", "sl-b2", "sl-b3"]
        .iter()
        .map(|b| {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    b,
                    "timeout",
                    "6",
                    "tcpdump",
                    "-nn",
                    "-l",
                    "-c",
                    "1",
                    "-i",
                    "eth0",
                    "ip proto 4",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    for port in 40000..40012 {
        let _ = ns(
            "sl-c1",
            &[
                "curl",
                "-s",
                "-m",
                "0.3",
                "--local-port",
                &port.to_string(),
                &format!("http://{VIP4}:8080/"),
            ],
        );
    }
    let mut seen = Vec::new();
    for c in caps {
        let out = c.wait_with_output().unwrap();
        seen.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    d.stop();
    let all = seen.concat();
    assert!(
        all.contains("IP 10.99.0.2 > 10.99.0.2"),
        "outer header from Sluice to a backend: {seen:?}"
    );
    assert!(
        all.contains("10.99.0.11.400") && all.contains(&format!("> {VIP4}.8080")),
        "inner client->VIP SYN: {seen:?}"
    );
    assert!(
        seen.iter().filter(|s| !s.is_empty()).count() >= 2,
        "flows spread over backends: {seen:?}"
    );
}

#[test]
fn source_ranges_drop_clients_outside_them() {
    let _g = lock();
    let s = Setup::new(
        "acl",
        |svc| {
            svc.replace("  externalTrafficPolicy: Cluster\n", "  externalTrafficPolicy: Cluster\n  loadBalancerSourceRanges: [\"10.99.0.11/32\", \"fd00:99::11/128\"]\n")
        },
        false,
    );
    let d = Sluiced::start(&s);
    let (b, e) = http("sl-c1", 10, &format!("http://{VIP4}/"));
    assert_eq!((b.values().sum::<u64>(), e), (10, 0), "inside the ranges");
    let (ok, _) = ns(
        "sl-c2",
        &["curl", "-s", "-m", "1", &format!("http://{VIP4}/")],
    );
    assert!(
        !ok,
        "sl-c2 (10.99.0.12) is outside loadBalancerSourceRanges"
    );
    let (ok6, _) = ns(
        "sl-c2",
        &["curl", "-s", "-m", "1", &format!("http://[{VIP6}]/")],
    );
    assert!(!ok6);
    let (ok6, _) = ns(
        "sl-c1",
        &["curl", "-s", "-m", "1", &format!("http://[{VIP6}]/")],
    );
    assert!(ok6);
    d.stop();
}

#[test]
fn client_ip_affinity_pins_a_client() {
    let _g = lock();
    let s = Setup::new(
        "affinity",
        |svc| {
            svc.replace("  externalTrafficPolicy: Cluster\n", "  externalTrafficPolicy: Cluster\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n")
        },
        false,
    );
    let d = Sluiced::start(&s);
    let (b1, e1) = http("sl-c1", 30, &format!("http://{VIP4}/"));
    let (b2, e2) = http("sl-c2", 30, &format!("http://{VIP4}/"));
    d.stop();
    assert_eq!((e1, e2), (0, 0));
    assert_eq!(b1.len(), 1, "sl-c1 pinned to one backend: {b1:?}");
    assert_eq!(b2.len(), 1, "sl-c2 pinned to one backend: {b2:?}");
}

/// A NAT connection whose flow is truly lost (sluiced restarted: the flow table and the NAT
/// port went with the old process) gets a RST at its next segment, so the client fails at
/// once instead of retransmitting until its own timeout.
#[test]
fn lost_nat_flow_is_reset_at_its_next_segment() {
    let _g = lock();
    let s = Setup::new("reset", |s| s, false);
    // The flow is lost: the restart does not keep it ([admin] is the config's last section).
    let cfg = s.dir.join("sluice.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("keep_flows_on_restart = false\n");
    std::fs::write(&cfg, text).unwrap();
    let d = Sluiced::start(&s);
    let mut sess = Session::open("sl-c1", VIP4, 9000);
    assert!(sess.say("hello").ends_with(": hello"));
    d.stop();
    let d = Sluiced::start(&s);
    let r = sess.say("after the restart");
    let ms: f64 = r
        .strip_prefix("<reset after ")
        .and_then(|x| x.strip_suffix(" ms>"))
        .unwrap_or_else(|| panic!("not reset: {r:?}"))
        .parse()
        .unwrap();
    eprintln!("lost NAT flow reset {ms} ms after its next segment");
    assert!(ms < 100.0, "reset after {ms} ms");
    d.stop();
}

#[test]
fn nat_flow_survives_a_planned_restart() {
    let _g = lock();
    let s = Setup::new("keep", |s| s, false);
    let d = Sluiced::start(&s);
    let mut sess = Session::open("sl-c1", VIP4, 9000);
    let first = sess.say("hello");
    let backend = first.split(':').next().unwrap().to_string();
    assert!(backend.starts_with("sl-b"), "{first}");
    d.stop();
    let flows = s.dir.join("flows.bin");
    assert!(flows.exists(), "the stop saved the flows");
    let mut d = Sluiced::start(&s);
    assert!(!flows.exists(), "the start took the file");
    d.wait_log(
        "flows of the previous process restored",
        Duration::from_secs(1),
    );
    let log = d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("flows of the previous process restored"))
        .unwrap();
    assert!(!line.contains("restored=0"), "{line}");
    assert_eq!(
        sess.say("after the restart"),
        format!("{backend}: after the restart"),
        "the connection goes on, to the same backend"
    );
    d.stop();
}

#[test]
fn established_connection_survives_endpointslice_change_and_invalid_manifest() {
    let _g = lock();
    let s = Setup::new("change", |s| s, false);
    let mut d = Sluiced::start(&s);
    let mut sess = Session::open("sl-c1", VIP4, 9000);
    let first = sess.say("hello");
    let victim = first.split(':').next().unwrap().to_string();
    assert!(victim.starts_with("sl-b"), "{first}");
    let addr = format!("10.99.0.2{}", &victim[victim.len() - 1..]);
    let py = repo().join("scripts/lab-client.py");
    let st = Command::new("/usr/bin/python3")
        .args([
            py.to_str().unwrap(),
            "remove-endpoint",
            s.manifests().join("web-endpoints.yaml").to_str().unwrap(),
            &addr,
        ])
        .status()
        .unwrap();
    assert!(st.success());
    d.wait_log("manifests changed", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let (b, e) = http("sl-c2", 60, &format!("http://{VIP4}/"));
    assert_eq!(e, 0);
    assert!(
        !b.contains_key(&victim),
        "new connections avoid the removed backend: {b:?}"
    );
    assert_eq!(
        sess.say("still there?"),
        format!("{victim}: still there?"),
        "the open connection still works"
    );

    // An invalid manifest: reported, and the last good state keeps forwarding.
    std::fs::write(
        s.manifests().join("web.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: eighty}]\n",
    )
    .unwrap();
    d.wait_log("invalid manifests", Duration::from_secs(5));
    let log = d.log_text();
    assert!(log.contains("web.yaml"), "the error names the file: {log}");
    let (b, e) = http("sl-c2", 30, &format!("http://{VIP4}/"));
    assert_eq!(
        (e, b.values().sum::<u64>()),
        (0, 30),
        "still forwarding after an invalid manifest"
    );
    assert_eq!(sess.say("and now?"), format!("{victim}: and now?"));
    drop(sess);
    d.stop();
}

#[test]
fn health_checks_mark_a_dead_backend_down() {
    let _g = lock();
    let s = Setup::new("health", |s| s, true);
    let d = Sluiced::start(&s);
    let (b, _) = http("sl-c1", 30, &format!("http://{VIP4}/"));
    assert!(b.contains_key("sl-b2"), "{b:?}");
    // Kill sl-b2's servers (the lab restarts them on `scripts/lab up`).
    let pid = std::fs::read_to_string("/run/sluice-lab/sl-b2.pid").unwrap();
    let killed = Instant::now();
    assert!(Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap()
        .success());
    let before = d.count("health=Down");
    let t = Instant::now();
    while d.count("health=Down") == before {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no backend marked down:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = killed.elapsed();
    // interval 500 ms x fall 2, plus one timeout of 400 ms and scheduling slack.
    assert!(
        took < Duration::from_millis(2500),
        "marked down after {took:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let (b, e) = http("sl-c1", 60, &format!("http://{VIP4}/"));
    d.stop();
    lab(&["up"]);
    assert_eq!(e, 0, "no failed request once the backend is down");
    assert!(!b.contains_key("sl-b2"), "{b:?}");
    assert_eq!(b.len(), 2);
}

// ---- Admin API, sluicectl and metrics (issue 7) ----

/// The HTTP frontend (VIP4:80) of default/web in a `service` document.
fn http_frontend(d: &serde_json::Value) -> &serde_json::Value {
    d["frontends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["vip"] == VIP4 && f["port"] == 80)
        .expect("frontend 10.99.0.100:80")
}

/// Per backend address of a frontend: new flows.
fn flows_by_addr(f: &serde_json::Value) -> std::collections::BTreeMap<String, u64> {
    f["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["addr"].as_str().unwrap().to_owned(),
                b["traffic"]["new_flows"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn admin_api_and_sluicectl_show_the_service() {
    let _g = lock();
    let s = Setup::new("admin", |s| s, false);
    let d = Sluiced::start(&s);
    // curl on the socket answers JSON.
    let (code, list) = curl_api(&s, "GET", "/v1/services");
    assert_eq!(code, 200, "{list}");
    let web = &list[0];
    assert_eq!(web["service"], "default/web");
    assert_eq!(web["vips"][0]["addr"], VIP4);
    assert_eq!(web["vips"][1]["addr"], VIP6);
    assert_eq!(web["vips"][0]["pool"], "lab");
    assert_eq!(web["method"], "nat");
    assert_eq!(web["backends"]["active"], 18);
    let (code, e) = curl_api(&s, "GET", "/v1/services/default/nope");
    assert_eq!(code, 404);
    assert!(e["error"].as_str().unwrap().contains("default/nope"), "{e}");

    // Counters move with traffic.
    let before = ctl_json(&s, &["service", "default/web"]);
    let (b, e) = http("sl-c1", 30, &format!("http://{VIP4}/"));
    assert_eq!((e, b.len()), (0, 3), "{b:?}");
    let after = ctl_json(&s, &["service", "default/web"]);
    let (f0, f1) = (http_frontend(&before), http_frontend(&after));
    let new_flows =
        f1["traffic"]["new_flows"].as_u64().unwrap() - f0["traffic"]["new_flows"].as_u64().unwrap();
    assert!(
        (30..=32).contains(&new_flows),
        "30 connections made {new_flows} new flows"
    );
    let packets =
        f1["traffic"]["packets"].as_u64().unwrap() - f0["traffic"]["packets"].as_u64().unwrap();
    assert!(
        packets >= 30 * 5,
        "at least 5 client packets per HTTP connection: {packets}"
    );
    for (addr, n) in flows_by_addr(f1) {
        assert!(n > 0, "{addr} got no flow");
    }
    let share: f64 = f1["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["maglev_share"].as_f64().unwrap())
        .sum();
    assert!(
        (share - 1.0).abs() < 1e-6,
        "Maglev shares add up to the table: {share}"
    );

    // Human tables.
    let (code, out, err) = ctl(&s, &["services"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("SERVICE"), "{out}");
    assert!(
        out.contains("default/web")
            && out.contains(VIP4)
            && out.contains("80/tcp,9000/tcp,9001/udp"),
        "{out}"
    );
    let (code, out, err) = ctl(&s, &["service", "default/web"]);
    assert_eq!(code, 0, "{err}");
    for a in [
        "10.99.0.21:8080",
        "10.99.0.22:8080",
        "10.99.0.23:8080",
        "[fd00:99::21]:9000",
        "BACKEND",
        "MAGLEV",
        "SHARE",
    ] {
        assert!(out.contains(a), "{a} missing from:\n{out}");
    }
    for cmd in [
        &["status"][..],
        &["backends"],
        &["workers"],
        &["drops", "--all"],
        &["ports"],
        &["health"],
        &["neighbours"],
        &["version"],
    ] {
        let (code, out, err) = ctl(&s, cmd);
        assert_eq!(code, 0, "sluicectl {cmd:?}: {err}");
        assert!(!out.trim().is_empty(), "sluicectl {cmd:?} printed nothing");
    }
    // JSON everywhere.
    let st = ctl_json(&s, &["status"]);
    assert_eq!(st["services"], 1);
    assert!(st["generation"].as_u64().unwrap() >= 1);
    assert_eq!(ctl_json(&s, &["workers"])[0]["worker"], 0);
    assert!(
        ctl_json(&s, &["workers"])[0]["rx_packets"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(
        ctl_json(&s, &["drops"])["reasons"]
            .as_array()
            .unwrap()
            .len(),
        sluice_dataplane::stats::DropReason::COUNT
    );
    assert_eq!(
        ctl_json(&s, &["backends", "--service", "default/web"])
            .as_array()
            .unwrap()
            .len(),
        18
    );
    assert!(
        ctl_json(&s, &["neighbours"])["neighbours"]
            .as_array()
            .unwrap()
            .len()
            >= 6
    );
    assert_eq!(ctl_json(&s, &["ports"])[0]["name"], "lb0");
    assert_eq!(ctl_json(&s, &["config"])["file"]["ports"][0]["name"], "lb0");
    let (code, out, err) = ctl(
        &s,
        &["-o", "json", "watch", "--count", "2", "--interval", "0.2"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    for l in out.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["services"][0]["service"], "default/web");
    }
    // Exit codes.
    let (code, _, err) = ctl(&s, &["service", "default/nope"]);
    assert_eq!(code, 4, "{err}");
    let (code, out, _) = ctl(&s, &["-o", "json", "drain", "10.99.0.99"]);
    assert_eq!(code, 4);
    let e: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(e["status"], 404);
    let (code, _, err) = ctl(&s, &["weight", "10.99.0.21", "lots"]);
    assert_eq!(code, 2, "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .args(["--socket", "/nonexistent/admin.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is sluiced running"));
    d.stop();
    assert!(!s.socket().exists(), "the socket is removed on exit");
}

#[test]
fn drain_moves_new_flows_and_keeps_established_ones() {
    let _g = lock();
    let s = Setup::new("drain", |s| s, false);
    let d = Sluiced::start(&s);
    let mut sess = Session::open("sl-c1", VIP4, 9000);
    let first = sess.say("hello");
    let victim = first.split(':').next().unwrap().to_string();
    let addr = format!("10.99.0.2{}", &victim[victim.len() - 1..]);
    // conntrack lookup finds the session's flow and its backend.
    let c = ctl_json(
        &s,
        &[
            "conntrack",
            "lookup",
            "10.99.0.11",
            "--vip",
            &format!("{VIP4}:9000"),
            "--protocol",
            "tcp",
        ],
    );
    let flows = c["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 1, "{c}");
    assert_eq!(flows[0]["backend"], format!("{addr}:9000"));
    // Not always tcp_established: when a NAT port collides with a connection the backend
    // still remembers (from an earlier test), the client's RST marks the entry tcp_closing
    // even though the client's retried SYN then opens the connection on it.
    let state = flows[0]["state"].as_str().unwrap();
    assert!(["tcp_established", "tcp_closing"].contains(&state), "{c}");
    assert_eq!(flows[0]["frontend"], "default/web:echo");
    assert!(
        flows[0]["nat"].as_str().unwrap().starts_with("10.99.0.3:"),
        "{c}"
    );
    let port = flows[0]["client_port"].as_u64().unwrap().to_string();
    let (code, out, err) = ctl(&s, &["conntrack", "lookup", &format!("10.99.0.11:{port}")]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{addr}:9000")) && out.contains(state),
        "{out}"
    );
    let (code, _, _) = ctl(&s, &["conntrack", "lookup", "10.99.0.99"]);
    assert_eq!(code, 4, "no flow: exit 4");
    // The session is the echo port's one active flow, counted on its backend.
    let svc = ctl_json(&s, &["service", "default/web"]);
    let echo_fe = svc["frontends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["vip"] == VIP4 && f["port"] == 9000)
        .unwrap();
    assert_eq!(echo_fe["traffic"]["active_flows"], 1, "{echo_fe}");
    for b in echo_fe["backends"].as_array().unwrap() {
        let want = u64::from(b["addr"] == addr.as_str());
        assert_eq!(b["traffic"]["active_flows"], want, "{b}");
    }
    let (_, out, _) = ctl(&s, &["service", "default/web"]);
    assert!(out.contains("ACTIVE"), "{out}");

    // Drain the session's backend.
    let (code, out, err) = ctl(&s, &["drain", &addr]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("drained yes"), "{out}");
    let svc = ctl_json(&s, &["service", "default/web"]);
    let b = http_frontend(&svc)["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == addr.as_str())
        .unwrap()
        .clone();
    assert_eq!(b["state"], "draining");
    assert_eq!(b["reason"], "drained by the operator");
    let before = flows_by_addr(http_frontend(&svc));
    let (got, e) = http("sl-c2", 60, &format!("http://{VIP4}/"));
    assert_eq!(e, 0);
    assert!(
        !got.contains_key(&victim),
        "new connections avoid the drained backend: {got:?}"
    );
    assert_eq!(got.values().sum::<u64>(), 60);
    let after = flows_by_addr(http_frontend(&ctl_json(&s, &["service", "default/web"])));
    assert_eq!(
        after[&addr], before[&addr],
        "no new flow counted on the drained backend"
    );
    // The established connection keeps working, and its packets are still counted.
    let echo = |v: &serde_json::Value| -> u64 {
        v["frontends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["vip"] == VIP4 && f["port"] == 9000)
            .unwrap()["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["addr"] == addr.as_str())
            .unwrap()["traffic"]["packets"]
            .as_u64()
            .unwrap()
    };
    let p0 = echo(&ctl_json(&s, &["service", "default/web"]));
    assert_eq!(sess.say("still there?"), format!("{victim}: still there?"));
    let p1 = echo(&ctl_json(&s, &["service", "default/web"]));
    assert!(
        p1 > p0,
        "packets of the established flow are counted: {p0} -> {p1}"
    );
    assert_eq!(ctl_json(&s, &["status"])["drained"][0], addr.as_str());

    // Undrain: it takes new flows again.
    let (code, _, err) = ctl(&s, &["undrain", &addr]);
    assert_eq!(code, 0, "{err}");
    let (got, e) = http("sl-c2", 60, &format!("http://{VIP4}/"));
    assert_eq!(e, 0);
    assert!(
        got.contains_key(&victim),
        "undrained backend gets new flows: {got:?}"
    );
    // A weight of 0 also keeps new flows away (through the Maglev table), and `default` undoes it.
    let (code, _, err) = ctl(&s, &["weight", &addr, "0"]);
    assert_eq!(code, 0, "{err}");
    let (got, _) = http("sl-c2", 30, &format!("http://{VIP4}/"));
    assert!(!got.contains_key(&victim), "weight 0: {got:?}");
    let (code, _, err) = ctl(&s, &["weight", &addr, "default"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(sess.say("and now?"), format!("{victim}: and now?"));
    drop(sess);
    d.stop();
}

#[test]
fn admin_socket_refuses_other_users() {
    let _g = lock();
    let s = Setup::new("perm", |s| s, false);
    let d = Sluiced::start_at(&s, "");
    let mode = std::fs::metadata(s.socket()).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600,
        "socket mode 0600"
    );
    // sluicectl where user nobody can run it.
    let bin = s.dir.join("sluicectl");
    std::fs::copy(env!("CARGO_BIN_EXE_sluicectl"), &bin).unwrap();
    let as_nobody = |socket: &Path| {
        let out = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(&bin)
            .arg("--socket")
            .arg(socket)
            .arg("status")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The file mode alone keeps nobody out...
    let (code, err) = as_nobody(&s.socket());
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("Permission denied") || err.contains("permission denied"),
        "{err}"
    );
    // ...and with the file opened up, the peer-credential check still does.
    std::fs::set_permissions(&s.dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        s.socket(),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let (code, err) = as_nobody(&s.socket());
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("refused") && err.contains("uid 65534"),
        "{err}"
    );
    // Root still gets in.
    let (code, _, err) = ctl(&s, &["status"]);
    assert_eq!(code, 0, "{err}");
    d.stop();
}

#[test]
fn metrics_scrape_parses_with_the_expected_series() {
    let _g = lock();
    let s = Setup::new("metrics", |s| s, false);
    let mut d = Sluiced::start(&s);
    d.wait_log("metrics listening", Duration::from_secs(5));
    let log = d.log_text();
    let addr = log
        .lines()
        .find(|l| l.contains("metrics listening"))
        .and_then(|l| l.split("listen=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .expect("metrics address in the log")
        .to_owned();
    let (_, e) = http("sl-c1", 20, &format!("http://{VIP4}/"));
    assert_eq!(e, 0);
    // Port counters are sampled once a second.
    std::thread::sleep(Duration::from_millis(1200));
    let out = Command::new("curl")
        .args([
            "-s",
            "-m",
            "5",
            "-D",
            "-",
            &format!("http://{addr}/metrics"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("headers");
    assert!(
        head.contains("200 OK")
            && head
                .to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"));
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {name} {labels:?} in the scrape:\n{body}"));
        match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name}: unexpected type"),
        }
    };
    let fe = [
        ("service", "default/web"),
        ("vip", VIP4),
        ("port", "80"),
        ("protocol", "tcp"),
    ];
    assert!(value("sluice_frontend_new_flows_total", &fe) >= 20.0);
    // The closed HTTP connections are still tracked for the closing timeout, never more than
    // were opened.
    let act = value("sluice_frontend_active_flows", &fe);
    assert!(
        act <= value("sluice_frontend_new_flows_total", &fe),
        "{act}"
    );
    assert!(value("sluice_frontend_packets_total", &fe) >= 100.0);
    let mut total = 0.0;
    for b in ["10.99.0.21:8080", "10.99.0.22:8080", "10.99.0.23:8080"] {
        let mut l = fe.to_vec();
        l.push(("backend", b));
        total += value("sluice_backend_new_flows_total", &l);
        l.push(("state", "active"));
        assert_eq!(value("sluice_backend_state", &l), 1.0);
    }
    assert!(total >= 20.0);
    let mut active = fe.to_vec();
    active.push(("state", "active"));
    assert_eq!(value("sluice_frontend_backends", &active), 3.0);
    assert!(value("sluice_worker_rx_packets_total", &[("worker", "0")]) > 0.0);
    assert!(value("sluice_port_rx_packets_total", &[("port", "lb0")]) > 0.0);
    value("sluice_port_rx_missed_total", &[("port", "lb0")]);
    value(
        "sluice_drops_total",
        &[("worker", "0"), ("reason", "no_backend")],
    );
    assert!(value("sluice_conntrack_capacity", &[("worker", "0")]) > 0.0);
    value("sluice_conntrack_entries", &[("worker", "0")]);
    value("sluice_worker_busy_ratio", &[("worker", "0")]);
    assert_eq!(value("sluice_services", &[]), 1.0);
    assert!(value("sluice_snapshot_generation", &[]) >= 1.0);
    assert!(value("sluice_snapshots_published_total", &[]) >= 1.0);
    assert_eq!(value("sluice_next_hops_unresolved", &[]), 0.0);
    assert!(
        body.contains("sluice_snapshot_publish_seconds_count"),
        "publish latency histogram"
    );
    d.stop();
}
