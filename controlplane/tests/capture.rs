//! `sluicectl capture` and `sluicectl trace` in the namespace lab (scripts/lab): a real
//! `sluiced` on a DPDK `net_af_packet` port, real clients and backends. Needs root and the
//! lab's tools (scripts/setup); scripts/test runs it and takes the lab down afterwards.
//!
//! The tests share one lab and one DPDK port, so they run one at a time (a global lock).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use sluice_controlplane::capture::pcapng;
use sluice_dataplane::wire::parse::parse;

#[path = "support/lab.rs"]
mod lab_support;
use lab_support::{lab, ns, repo, stop_sluiced, wait, Session};

const VIP4: &str = "10.99.0.100";

fn lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    static LAB: OnceLock<()> = OnceLock::new();
    LAB.get_or_init(|| lab(&["up"]));
    g
}

/// A scratch config + manifests directory with the lab's Service, edited by the test.
struct Setup {
    dir: PathBuf,
}

impl Setup {
    fn new(name: &str, service_patch: impl Fn(String) -> String) -> Setup {
        let dir = std::env::temp_dir().join(format!("sluice-cap-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let m = dir.join("manifests");
        std::fs::create_dir_all(&m).unwrap();
        let ex = repo().join("docs/examples");
        for f in ["nodes.yaml", "web-endpoints.yaml"] {
            std::fs::copy(ex.join("manifests").join(f), m.join(f)).unwrap();
        }
        let svc = std::fs::read_to_string(ex.join("manifests/web.yaml")).unwrap();
        std::fs::write(m.join("web.yaml"), service_patch(svc)).unwrap();
        let mut cfg = std::fs::read_to_string(ex.join("sluice.toml")).unwrap();
        cfg = cfg.replace(
            "manifest_dir = \"docs/examples/manifests\"",
            &format!("manifest_dir = \"{}\"", m.display()),
        );
        // Health checks off: the drained backend must stay drained, not go down.
        cfg = cfg.replace("enabled = true", "enabled = false");
        cfg.push_str(&format!(
            "\n[admin]\nsocket = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n",
            dir.join("admin.sock").display(),
            dir.display()
        ));
        std::fs::write(dir.join("sluice.toml"), cfg).unwrap();
        Setup { dir }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    fn ctl(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sluicectl"));
        c.arg("--socket").arg(self.socket());
        c
    }

    /// Runs sluicectl: (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.ctl().args(args).output().expect("run sluicectl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running sluiced; stopped with SIGTERM (and checked to stop cleanly) by [`Sluiced::stop`].
struct Sluiced {
    child: Option<Child>,
    log: PathBuf,
}

impl Sluiced {
    fn start(s: &Setup) -> Sluiced {
        let log = s.dir.join("sluiced.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sluiced"))
            .args(["--config", s.dir.join("sluice.toml").to_str().unwrap()])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("start sluiced");
        let d = Sluiced {
            child: Some(child),
            log,
        };
        d.wait_count("unresolved=0", 1);
        let url = format!("http://{VIP4}/");
        wait(Duration::from_secs(20), "the VIP to answer", || {
            ns("sl-c1", &["curl", "-s", "-m", "1", &url]).0
        });
        d
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `what` at least `n` times.
    fn wait_count(&self, what: &str, n: usize) {
        let t = Instant::now();
        while self.log_text().matches(what).count() < n {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "no {n} x {what:?} in the log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM; the daemon must exit 0 within 5 s, saying it stopped cleanly.
    fn stop(mut self) {
        let child = self.child.take().unwrap();
        stop_sluiced(child, || self.log_text());
    }
}

impl Drop for Sluiced {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One packet of a capture file.
#[derive(Debug)]
struct Pkt {
    frame: Vec<u8>,
    comment: String,
    inbound: bool,
}

/// Reads a pcapng file written by sluicectl capture: every block whole, one section and one
/// interface, then the packets and the statistics (their dropped-copies count).
fn read_capture(path: &std::path::Path) -> (Vec<Pkt>, u64) {
    let data = std::fs::read(path).unwrap();
    let blocks = pcapng::blocks(&data).unwrap_or_else(|at| panic!("malformed at byte {at}"));
    assert_eq!(blocks[0].ty, pcapng::SECTION_HEADER);
    assert_eq!(blocks[1].ty, pcapng::INTERFACE_DESCRIPTION);
    let last = blocks.last().unwrap();
    assert_eq!(last.ty, pcapng::INTERFACE_STATISTICS);
    let dropped = pcapng::read_dropped(&last.body).unwrap();
    let pkts = blocks[2..blocks.len() - 1]
        .iter()
        .map(|b| {
            assert_eq!(b.ty, pcapng::ENHANCED_PACKET);
            let (iface, _, frame, orig, comment, flags) = pcapng::read_packet(&b.body).unwrap();
            assert_eq!(iface, 0);
            assert_eq!(orig as usize, frame.len(), "snap length not reached");
            Pkt {
                frame,
                comment: comment.expect("every packet carries its verdict"),
                inbound: flags.expect("every packet carries its direction") == 1,
            }
        })
        .collect();
    (pkts, dropped)
}

/// `tcpdump -r` reads the file: its packet lines.
fn tcpdump_lines(path: &std::path::Path) -> Vec<String> {
    let out = Command::new("tcpdump")
        .args(["-nr"])
        .arg(path)
        .output()
        .expect("tcpdump (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "tcpdump -r: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `tshark -r` reads the file: per packet its source address, TCP source port and comment
/// (the verdict), tab-separated; `None` when tshark is not installed (scripts/setup installs
/// it; a machine set up before it did may lack it).
fn tshark_lines(path: &std::path::Path) -> Option<Vec<String>> {
    let out = match Command::new("tshark")
        .args([
            "-n",
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "tcp.srcport",
            "-e",
            "frame.comment",
            "-r",
        ])
        .arg(path)
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("tshark not installed: the capture is read with tcpdump only");
            return None;
        }
        Err(e) => panic!("tshark: {e}"),
    };
    assert!(
        out.status.success(),
        "tshark -r: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect(),
    )
}

#[test]
fn capture_holds_one_clients_http_flow_in_both_directions() {
    let _g = lock();
    let s = Setup::new("flow", |s| s);
    let d = Sluiced::start(&s);
    let file = s.dir.join("flow.pcapng");
    let mut cap = s
        .ctl()
        .args(["capture", "-w"])
        .arg(&file)
        .args(["--duration", "3", "host 10.99.0.11 and tcp port 80"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    d.wait_count("capture started", 1);
    // sl-c1's request is the flow; sl-c2's and sl-c1's echo traffic must not be captured.
    let (ok, body) = ns(
        "sl-c1",
        &["curl", "-s", "-m", "2", &format!("http://{VIP4}/")],
    );
    assert!(ok);
    assert!(
        ns(
            "sl-c2",
            &["curl", "-s", "-m", "2", &format!("http://{VIP4}/")]
        )
        .0
    );
    let mut echo = Session::open("sl-c1", VIP4, 9000);
    echo.say("hello");
    drop(echo);
    let st = cap.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut cap.stderr.take().unwrap(), &mut err).unwrap();
    assert!(st.success(), "sluicectl capture: {err}");

    let (pkts, dropped) = read_capture(&file);
    assert_eq!(dropped, 0);
    assert!(
        err.contains(&format!("{} packets captured", pkts.len())),
        "{err}"
    );
    // Exactly one connection: sl-c1's client port, both directions, SYN to FIN.
    let mut client_port = None;
    let (mut inbound, mut outbound) = (0, 0);
    for p in &pkts {
        let f = parse(&p.frame).unwrap();
        let (client, vip) = if p.inbound {
            inbound += 1;
            ((f.src4(), f.sport), (f.dst4(), f.dport))
        } else {
            outbound += 1;
            ((f.dst4(), f.dport), (f.src4(), f.sport))
        };
        assert_eq!(client.0, [10, 99, 0, 11], "{p:?}");
        assert_eq!(vip, ([10, 99, 0, 100], 80), "{p:?}");
        assert_eq!(*client_port.get_or_insert(client.1), client.1, "one flow");
        assert!(
            p.comment
                .contains("frontend default/web:http (10.99.0.100:80 tcp, nat)"),
            "{}",
            p.comment
        );
    }
    assert!(
        inbound >= 5 && outbound >= 4,
        "{inbound} in, {outbound} out"
    );
    let syn = &pkts[0];
    assert!(syn.inbound);
    assert_eq!(
        parse(&syn.frame).unwrap().tcp_flags & 0x12,
        0x02,
        "SYN first"
    );
    assert!(
        syn.comment.contains("new flow SYN_SENT -> 10.99.0.2")
            && syn.comment.contains(":8080 via Maglev (slot ")
            && syn.comment.contains("NAT 10.99.0.3:"),
        "{}",
        syn.comment
    );
    // The backend that answered is the one the verdicts name.
    let backend = body.trim().split(':').next().unwrap().to_owned(); // sl-bN
    let addr = format!("10.99.0.2{}:8080", &backend[backend.len() - 1..]);
    assert!(
        pkts.iter().all(|p| p.comment.contains(&addr)),
        "{addr}: {pkts:?}"
    );
    assert!(pkts[1..]
        .iter()
        .filter(|p| p.inbound)
        .all(|p| p.comment.contains("via existing flow")));
    assert!(pkts
        .iter()
        .filter(|p| !p.inbound)
        .all(|p| p.comment.contains("reply of flow")));
    // tcpdump reads the file, packet for packet.
    let lines = tcpdump_lines(&file);
    assert_eq!(lines.len(), pkts.len(), "{lines:?}");
    assert!(lines[0].contains("10.99.0.11.") && lines[0].contains("> 10.99.0.100.80: Flags [S]"));
    // So does tshark, with the verdict of every packet as its comment.
    if let Some(lines) = tshark_lines(&file) {
        assert_eq!(lines.len(), pkts.len(), "{lines:?}");
        for (l, p) in lines.iter().zip(&pkts) {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 3, "{l:?}");
            assert_eq!(f[2], p.comment, "{l:?}");
        }
        assert!(lines[0].starts_with("10.99.0.11\t"), "{lines:?}");
    }
    d.stop();
}

/// `sluicectl -o json trace ...` lines until it ends.
fn trace_lines(s: &Setup, args: &[&str]) -> Child {
    s.ctl()
        .args(["-o", "json", "trace"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(c: Child) -> Vec<serde_json::Value> {
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "trace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn trace_explains_closed_port_denied_source_and_drained_backend() {
    let _g = lock();
    // sl-c1 (10.99.0.11) may connect; sl-c2 (10.99.0.12) is outside the source ranges.
    let s = Setup::new("trace", |svc| {
        svc.replace(
            "  externalTrafficPolicy: Cluster\n",
            "  externalTrafficPolicy: Cluster\n  loadBalancerSourceRanges: [\"10.99.0.11/32\", \"fd00:99::11/128\"]\n",
        )
    });
    let d = Sluiced::start(&s);

    // A denied source.
    let t = trace_lines(&s, &["--client", "10.99.0.12", "-c", "1"]);
    d.wait_count("capture started", 1);
    assert!(
        !ns(
            "sl-c2",
            &["curl", "-s", "-m", "1", &format!("http://{VIP4}/")]
        )
        .0
    );
    let lines = finish(t);
    assert_eq!(lines[0]["dir"], "rx");
    assert!(
        lines[0]["packet"]
            .as_str()
            .unwrap()
            .starts_with("10.99.0.12:")
            && lines[0]["packet"]
                .as_str()
                .unwrap()
                .ends_with("-> 10.99.0.100:80 TCP SYN"),
        "{lines:?}"
    );
    assert_eq!(
        lines[0]["verdict"],
        "frontend default/web:http (10.99.0.100:80 tcp, nat); drop source_denied"
    );
    assert_eq!(lines.last().unwrap()["dir"], "end");

    // A closed port, then a connection to a backend drained meanwhile.
    let mut echo = Session::open("sl-c1", VIP4, 9000);
    let victim = echo.say("hello");
    let victim = victim.split(':').next().unwrap();
    let addr = format!("10.99.0.2{}", &victim[victim.len() - 1..]);
    let (code, _, err) = s.run(&["drain", &addr]);
    assert_eq!(code, 0, "{err}");
    let t = trace_lines(&s, &["--client", "10.99.0.11", "--duration", "3"]);
    d.wait_count("capture started", 2);
    assert!(
        !ns(
            "sl-c1",
            &["curl", "-s", "-m", "1", &format!("http://{VIP4}:81/")]
        )
        .0
    );
    assert_eq!(echo.say("still there"), format!("{victim}: still there"));
    let lines = finish(t);
    let closed: Vec<_> = lines
        .iter()
        .filter(|l| {
            l["packet"]
                .as_str()
                .unwrap()
                .contains("-> 10.99.0.100:81 TCP SYN")
        })
        .collect();
    assert!(!closed.is_empty(), "{lines:?}");
    assert!(closed
        .iter()
        .all(|l| l["verdict"] == "drop port_not_served"));
    let drained: Vec<_> = lines
        .iter()
        .filter(|l| {
            l["dir"] == "rx"
                && l["packet"]
                    .as_str()
                    .unwrap()
                    .contains("-> 10.99.0.100:9000 TCP PSH,ACK")
        })
        .collect();
    assert!(!drained.is_empty(), "{lines:?}");
    for l in drained {
        let v = l["verdict"].as_str().unwrap();
        assert!(
            v.contains(&format!("-> {addr}:9000 (draining) via existing flow")),
            "{v}"
        );
    }
    // The echo's answer is traced as sent to the client.
    assert!(lines.iter().any(|l| l["dir"] == "tx"
        && l["packet"]
            .as_str()
            .unwrap()
            .starts_with("10.99.0.100:9000 -> 10.99.0.11:")));
    drop(echo);
    d.stop();
}

#[test]
fn bad_captures_end_cleanly() {
    let _g = lock();
    let s = Setup::new("bad", |s| s);
    let d = Sluiced::start(&s);
    let file = s.dir.join("x.pcapng");
    let f = file.to_str().unwrap();
    // An invalid filter: libpcap's own message.
    let (code, _, err) = s.run(&["capture", "-w", f, "-c", "1", "host and port 80"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "invalid filter \"host and port 80\": can't parse filter expression: syntax error"
        ),
        "{err}"
    );
    let (code, _, err) = s.run(&["capture", "-w", f, "-c", "1", "host no-such-host.invalid"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unknown host"), "{err}");
    // An unknown port.
    let (code, _, err) = s.run(&["capture", "-i", "lb9", "-w", f, "-c", "1"]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("no port named \"lb9\"; the ports are: lb0"),
        "{err}"
    );
    // Two at once: the second is refused, the first goes on.
    let mut first = s
        .ctl()
        .args(["capture", "-w", f, "tcp port 80"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    d.wait_count("capture started", 1);
    let (code, _, err) = s.run(&["capture", "-w", "/dev/null", "-c", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already running"), "{err}");
    let (code, _, err) = s.run(&["trace", "--client", "10.99.0.11", "-c", "1"]);
    assert_eq!(code, 1, "{err}");
    // A client that goes away while packets flow ends the capture.
    for _ in 0..3 {
        assert!(
            ns(
                "sl-c1",
                &["curl", "-s", "-m", "2", &format!("http://{VIP4}/")]
            )
            .0
        );
    }
    first.kill().unwrap();
    first.wait().unwrap();
    d.wait_count("capture ended", 1);
    // ... and one that goes away while nothing matches.
    let mut idle = s
        .ctl()
        .args(["capture", "-w", "/dev/null", "udp port 1"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    d.wait_count("capture started", 2);
    std::thread::sleep(Duration::from_millis(200));
    idle.kill().unwrap();
    idle.wait().unwrap();
    d.wait_count("capture ended", 2);
    assert_eq!(d.log_text().matches("reason=ClientGone").count(), 2);
    // Nothing was left behind: a new capture runs, and forwarding never ran short of mbufs.
    // (Its filter is one DPDK 22.11's BPF JIT crashes on: a byte load at an offset in X.)
    let mut next = s
        .ctl()
        .args([
            "capture",
            "-w",
            f,
            "-c",
            "2",
            "tcp port 80 and tcp[13] & 2 != 0",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    d.wait_count("capture started", 3);
    assert!(
        ns(
            "sl-c1",
            &["curl", "-s", "-m", "2", &format!("http://{VIP4}/")]
        )
        .0
    );
    assert!(next.wait().unwrap().success());
    // The client's SYN received and the SYN-ACK sent to it.
    assert_eq!(read_capture(&file).0.len(), 2);
    let (code, out, _) = s.run(&["-o", "json", "ports"]);
    assert_eq!(code, 0);
    let ports: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ports[0]["rx_nombuf"], 0, "{ports}");
    d.stop();
}
