//! End-to-end tests of the SYN proxy in the namespace lab (see `e2e.rs`): real clients
//! complete HTTP through it while each backend sees one handshake per connection and a
//! spoofed flood opens none, and the `auto` mode engages under a flood and disengages after,
//! over IPv4 and IPv6. They share the lab with the other end-to-end tests, one at a time.

#[path = "support/e2e.rs"]
mod e2e_support;
#[path = "support/lab.rs"]
mod lab_support;

use std::time::{Duration, Instant};

use e2e_support::*;
use lab_support::ns;

/// The SYN proxy end to end: real clients complete HTTP through it over IPv4 and IPv6, each
/// backend sees exactly one handshake per client connection, and a spoofed-SYN flood (with
/// forged cookie ACKs) opens no backend connection.
#[test]
fn syn_proxy_opens_backend_connections_only_for_real_clients() {
    let _g = lock();
    let s = Setup::new(
        "synproxy",
        |svc| annotate(svc, "sluice.dev/syn-proxy: \"on\""),
        false,
    );
    let counters = SynCounters::install();
    let d = Sluiced::start(&s);
    let before: u64 = counters.read().values().sum();
    let cookies = |k: &str| worker_total(&s, k);
    let valid0 = cookies("syn_cookies_valid");
    let t = Instant::now();
    let (b4, e4) = http("sl-c1", 20, &format!("http://{VIP4}/"));
    let (b6, e6) = http("sl-c2", 20, &format!("http://[{VIP6}]/"));
    eprintln!("40 proxied HTTP requests in {:?}", t.elapsed());
    assert_eq!((e4, e6), (0, 0), "{b4:?} {b6:?}");
    let syns = counters.read();
    // One SYN per connection (the start-up probe's came before `before` was read).
    let mut answered = std::collections::BTreeMap::<String, u64>::new();
    for (k, v) in b4.iter().chain(&b6) {
        *answered.entry(k.clone()).or_default() += v;
    }
    let total: u64 = syns.values().sum::<u64>() - before;
    assert_eq!(
        total, 40,
        "backends saw {syns:?} SYNs (had {before}), answered {answered:?}"
    );
    // The flood: 2000 spoofed SYNs and 2000 ACKs with made-up cookies per family.
    let sent0 = cookies("syn_cookies_sent");
    let py = "/usr/bin/python3";
    for vip in [VIP4, VIP6] {
        let (ok, out) = ns("sl-c1", &[py, "-c", SPOOF, vip, "4000"]);
        assert!(ok, "spoofing to {vip}: {out}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = counters.read();
    assert_eq!(after, syns, "the flood reached a backend");
    let (sent, valid) = (cookies("syn_cookies_sent"), cookies("syn_cookies_valid"));
    assert_eq!(valid - valid0, 40, "one valid cookie per real connection");
    assert!(
        sent - sent0 >= 3900,
        "cookie SYN-ACKs for the flood: {}",
        sent - sent0
    );
    let (_, drops) = curl_api(&s, "GET", "/v1/drops");
    let bad = drops["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "syn_proxy_bad_cookie")
        .unwrap()["total"]
        .as_u64()
        .unwrap();
    assert!(bad >= 3900, "forged ACKs dropped: {bad}");
    // Real clients still get through after the flood.
    let (b, e) = http("sl-c1", 5, &format!("http://{VIP4}/"));
    assert_eq!(e, 0, "{b:?}");
    eprintln!(
        "flood: {} cookie SYN-ACKs, {bad} forged ACKs dropped, 0 backend SYNs",
        sent - sent0
    );
    d.stop();
    drop(counters);
}

/// The SYN proxy's automatic mode end to end over IPv4: see [`syn_proxy_auto_flood`].
#[test]
fn syn_proxy_auto_engages_under_a_flood_and_disengages_after() {
    syn_proxy_auto_flood("synauto", VIP4);
}

/// The same over IPv6 (the Service's IPv6 frontend, IPv6 clients, a spoofed IPv6 flood).
#[test]
fn syn_proxy_auto_engages_under_a_flood_and_disengages_after_ipv6() {
    syn_proxy_auto_flood("synauto6", VIP6);
}

/// The SYN proxy's automatic mode end to end on the lab Service's frontend at `vip` (either
/// family): below the threshold SYNs reach the backends as usual (no cookie); a
/// spoofed-SYN flood engages it (the worker counts the engagement and answers SYNs with
/// cookies), real clients still complete HTTP while it is engaged, and once the flood
/// stopped and its embryonic flows expired it disengages and SYNs reach the backends again.
/// Bounded: HTTP requests time out after 2 s, the log waits after 3 s, the wait for the
/// proxy to disengage after 60 s.
fn syn_proxy_auto_flood(name: &str, vip: &str) {
    let _g = lock();
    let url = if vip.contains(':') {
        format!("http://[{vip}]/")
    } else {
        format!("http://{vip}/")
    };
    let s = Setup::new(
        name,
        |svc| annotate(svc, "sluice.dev/syn-proxy: \"auto\""),
        false,
    );
    let cfg = s.dir.join("sluice.toml");
    let t = std::fs::read_to_string(&cfg).unwrap();
    let t = t.replacen(
        "[forwarding]\n",
        "[forwarding]\nsyn_proxy_auto_threshold = 64\n",
        1,
    );
    std::fs::write(&cfg, t).unwrap();
    let mut d = Sluiced::start(&s);
    let workers = |k: &str| worker_total(&s, k);
    let sent0 = workers("syn_cookies_sent");
    let (b, e) = http("sl-c1", 10, &url);
    assert_eq!(e, 0, "{b:?}");
    assert_eq!(
        workers("syn_cookies_sent"),
        sent0,
        "below the threshold: no cookie"
    );
    assert_eq!(workers("syn_proxy_engagements"), 0);
    // The flood: 2000 spoofed SYNs (and 2000 forged ACKs).
    let t = Instant::now();
    let (ok, out) = ns("sl-c1", &["/usr/bin/python3", "-c", SPOOF, vip, "4000"]);
    assert!(ok, "spoofing: {out}");
    let flood = t.elapsed();
    let engaged = workers("syn_proxy_engaged");
    let sent = workers("syn_cookies_sent") - sent0;
    assert!(
        workers("syn_proxy_engagements") >= 1,
        "the flood engaged the proxy"
    );
    assert_eq!(engaged, 1, "still engaged right after the flood");
    assert!(
        sent >= 1500,
        "most of the flood's 2000 SYNs got cookies: {sent}"
    );
    // The control plane logs it from the counters it samples every second.
    d.wait_log("SYN proxy engaged", Duration::from_secs(3));
    // ... and which frontend.
    d.wait_log("SYN proxy engaged for a frontend", Duration::from_secs(3));
    let text = metrics_text(&d);
    assert!(
        text.lines().any(
            |l| l.starts_with("sluice_frontend_syn_proxy_engaged_workers{")
                && l.contains("port=\"80\"")
                && l.contains(&format!("vip=\"{vip}\""))
                && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) == Some(1.0)
        ),
        "{text}"
    );
    // Real clients complete HTTP through the engaged proxy.
    let valid0 = workers("syn_cookies_valid");
    let (b, e) = http("sl-c2", 20, &url);
    assert_eq!(e, 0, "{b:?}");
    assert_eq!(
        workers("syn_cookies_valid") - valid0,
        20,
        "proxied while engaged"
    );
    // The flood's embryonic flows expire and its cookies age out: disengaged.
    let t = Instant::now();
    while workers("syn_proxy_engaged") != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "still engaged 60 s after the flood"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let off_after = t.elapsed();
    d.wait_log("SYN proxy disengaged", Duration::from_secs(3));
    d.wait_log(
        "SYN proxy disengaged for a frontend",
        Duration::from_secs(3),
    );
    let sent1 = workers("syn_cookies_sent");
    let (b, e) = http("sl-c1", 10, &url);
    assert_eq!(e, 0, "{b:?}");
    assert_eq!(workers("syn_cookies_sent"), sent1, "disengaged: no cookie");
    let text = metrics_text(&d);
    assert!(
        text.contains("sluice_worker_syn_proxy_engagements_total{worker=\"0\"} 1"),
        "{text}"
    );
    eprintln!(
        "auto SYN proxy, {vip}: flood of 2000 SYNs in {flood:?}, {sent} cookie SYN-ACKs, disengaged \
         {off_after:?} after it"
    );
    d.stop();
}

/// SYN counters on the backends: an nftables rule in each backend namespace counts the SYNs
/// (without ACK) that reach its HTTP port; removed on drop.
struct SynCounters;

const BACKENDS: [&str; 3] = ["sl-b1", "sl-b2", "sl-b3"];

impl SynCounters {
    fn install() -> SynCounters {
        for b in BACKENDS {
            let _ = ns(b, &["nft", "delete", "table", "inet", "sluice_e2e_syn"]);
            for cmd in [
                "add table inet sluice_e2e_syn",
                "add chain inet sluice_e2e_syn in { type filter hook input priority 0 ; }",
                "add rule inet sluice_e2e_syn in tcp dport 8080 tcp flags & (syn | ack) == syn counter",
            ] {
                let mut args = vec!["nft"];
                args.extend(cmd.split(' '));
                let (ok, out) = ns(b, &args);
                assert!(ok, "nft {cmd} in {b}: {out}");
            }
        }
        SynCounters
    }

    /// SYNs each backend has seen.
    fn read(&self) -> std::collections::BTreeMap<String, u64> {
        BACKENDS
            .iter()
            .map(|b| {
                let (ok, out) = ns(b, &["nft", "list", "chain", "inet", "sluice_e2e_syn", "in"]);
                assert!(ok, "nft list in {b}: {out}");
                let n = out
                    .split_whitespace()
                    .skip_while(|w| *w != "packets")
                    .nth(1)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("no counter in {out}"));
                (b.to_string(), n)
            })
            .collect()
    }
}

impl Drop for SynCounters {
    fn drop(&mut self) {
        for b in BACKENDS {
            let _ = ns(b, &["nft", "delete", "table", "inet", "sluice_e2e_syn"]);
        }
    }
}

/// Spoofed SYNs (and ACKs with made-up cookies) from random sources outside the lab, sent raw
/// from a client namespace to `vip`:80.
const SPOOF: &str = r#"
import random, socket, struct, sys
vip, n = sys.argv[1], int(sys.argv[2])
six = ":" in vip
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
rnd = random.Random(7)
if six:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    dst = socket.inet_pton(socket.AF_INET6, vip)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    dst = socket.inet_aton(vip)
for i in range(n):
    flags, ack = (0x02, 0) if i % 2 == 0 else (0x10, rnd.getrandbits(32))
    sport = rnd.randrange(1024, 65536)
    if six:
        src = bytes([0x20, 0x01, 0x0d, 0xb8, 0xff]) + bytes(rnd.getrandbits(8) for _ in range(11))
    else:
        src = bytes([198, 18 + rnd.getrandbits(1), rnd.getrandbits(8), rnd.randrange(1, 255)])
    tcp = struct.pack("!HHIIBBHHH", sport, 80, rnd.getrandbits(32), ack, 5 << 4, flags, 64240, 0, 0)
    if six:
        ph = src + dst + struct.pack("!I3xB", len(tcp), 6)
        tcp = tcp[:16] + struct.pack("!H", csum(ph + tcp)) + tcp[18:]
        ip = struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64) + src + dst
    else:
        ph = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
        tcp = tcp[:16] + struct.pack("!H", csum(ph + tcp)) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), i & 0xffff, 0, 64, 6, 0, src, dst)
    s.sendto(ip + tcp, (vip, 0))
print(n)
"#;
