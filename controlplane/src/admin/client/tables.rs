//! `sluicectl`'s human output: plain tables (two spaces between columns, no borders, one row
//! per line, so `grep`/`awk` work) made from the admin API's documents ([`crate::admin::api`]).
use std::fmt::Write as _;
use std::time::SystemTime;

use crate::admin::api;

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: the daemon answered with an error (bad request, conflict, internal error).
pub const EXIT_FAILED: i32 = 1;
/// Exit code: bad command line (clap's usage errors).
pub const EXIT_USAGE: i32 = 2;
/// Exit code: the daemon could not be reached, or refused this user (HTTP 403).
pub const EXIT_UNREACHABLE: i32 = 3;
/// Exit code: the Service, backend or flow does not exist (HTTP 404, or no flow found).
pub const EXIT_NOT_FOUND: i32 = 4;

/// The exit code for an HTTP status.
pub fn exit_code(status: u16) -> i32 {
    match status {
        200..=299 => EXIT_OK,
        403 => EXIT_UNREACHABLE,
        404 => EXIT_NOT_FOUND,
        _ => EXIT_FAILED,
    }
}

/// Lays out rows under headers; columns are left-aligned, separated by two spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let pad = w.get(i).copied().unwrap_or(0);
            let _ = write!(l, "{c:<pad$}");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

/// `3.2k`, `1.5M`: a count or rate with an SI suffix.
pub fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Bytes with binary prefixes: `512B`, `1.5KiB`, `3.0MiB`.
pub fn bytes(v: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = v as f64;
    let mut i = 0;
    while x >= 1024.0 && i + 1 < U.len() {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v}B")
    } else {
        format!("{x:.1}{}", U[i])
    }
}

/// A duration in seconds as `45s`, `3m12s`, `2h05m`, `3d04h`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// How long ago a Unix time was (`3m12s`).
pub fn ago(unix: f64) -> String {
    let now = crate::admin::unix(SystemTime::now());
    duration(now - unix)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

fn counts(c: &api::StateCounts) -> String {
    format!("{}/{}/{}", c.active, c.draining, c.down)
}

/// `sluicectl status`.
pub fn status(s: &api::Status) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "sluiced {}  pid {}  up {}",
        s.version,
        s.pid,
        duration(s.uptime_seconds)
    );
    let _ = writeln!(o, "config      {}", s.config);
    let _ = writeln!(
        o,
        "source      {}{}",
        s.source,
        s.source_error.as_ref().map_or(String::new(), |e| format!(
            "  ERROR (serving the last good state): {e}"
        ))
    );
    let _ = writeln!(
        o,
        "snapshot    generation {}, published {} ago",
        s.generation,
        ago(s.published_unix)
    );
    let _ = writeln!(
        o,
        "services    {}  frontends {}  backends active/draining/down {}",
        s.services,
        s.frontends,
        counts(&s.backends)
    );
    let _ = writeln!(
        o,
        "workers     {}  rx {}/s  tx {}/s  busy {}",
        s.workers,
        si(s.rx_pps),
        si(s.tx_pps),
        pct(s.busy_ratio)
    );
    let _ = writeln!(
        o,
        "conntrack   {} / {} flows ({})",
        s.conntrack.entries,
        s.conntrack.capacity,
        pct(s.conntrack.fill)
    );
    let _ = writeln!(
        o,
        "drops       {}{}",
        s.drops,
        s.counters_reset_unix.map_or(String::new(), |t| format!(
            "  (counters reset {} ago)",
            ago(t)
        ))
    );
    if !s.drained.is_empty() {
        let d: Vec<String> = s.drained.iter().map(ToString::to_string).collect();
        let _ = writeln!(o, "drained     {}", d.join(", "));
    }
    if !s.weights.is_empty() {
        let w: Vec<String> = s.weights.iter().map(|(a, w)| format!("{a}={w}")).collect();
        let _ = writeln!(o, "weights     {}", w.join(", "));
    }
    if !s.unresolved_next_hops.is_empty() {
        let u: Vec<String> = s
            .unresolved_next_hops
            .iter()
            .map(ToString::to_string)
            .collect();
        let _ = writeln!(o, "unresolved  {}", u.join(", "));
    }
    if let Some(b) = &s.bgp {
        let _ = writeln!(
            o,
            "bgp         {}/{} peers established  {} prefixes announced{}",
            b.peers_up,
            b.peers,
            b.announced,
            if b.drained {
                "  DRAINED (sluicectl host undrain)"
            } else {
                ""
            }
        );
    }
    if s.problems.is_empty() {
        let _ = writeln!(o, "problems    none");
    } else {
        let _ = writeln!(o, "problems:");
        for p in &s.problems {
            let _ = writeln!(o, "  - {p}");
        }
    }
    o
}

/// `sluicectl services`.
pub fn services(v: &[api::ServiceSummary]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|s| {
            vec![
                s.service.clone(),
                s.vips
                    .iter()
                    .map(|v| v.addr.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                s.ports
                    .iter()
                    .map(|p| format!("{}/{}", p.port, p.protocol))
                    .collect::<Vec<_>>()
                    .join(","),
                s.method.clone(),
                s.external_traffic_policy.clone(),
                counts(&s.backends),
                si(s.traffic.active_flows as f64),
                si(s.traffic.new_flows as f64),
                si(s.traffic.packets as f64),
                bytes(s.traffic.bytes),
                s.problems.len().to_string(),
            ]
        })
        .collect();
    table(
        &[
            "SERVICE",
            "VIPS",
            "PORTS",
            "METHOD",
            "POLICY",
            "BACKENDS(A/D/DOWN)",
            "ACTIVE",
            "FLOWS",
            "PACKETS",
            "BYTES",
            "PROBLEMS",
        ],
        &rows,
    )
}

/// The HEALTH cell: the probe's result, or plainly `not probed` (health checks off, a UDP
/// port without `sluice.dev/health-check-port`): such a backend is never taken down.
fn health_cell(b: &api::BackendDetail) -> String {
    match &b.health {
        Some(h) => h.health.clone(),
        None => "not probed".to_owned(),
    }
}

fn backend_row(b: &api::BackendDetail) -> Vec<String> {
    vec![
        format!("{}:{}", fmt_ip(b.addr), b.port),
        opt(&b.node),
        b.state.clone(),
        ago(b.since_unix),
        health_cell(b),
        b.weight.to_string(),
        pct(b.maglev_share),
        si(b.traffic.active_flows as f64),
        si(b.traffic.new_flows as f64),
        pct(b.flow_share),
        si(b.traffic.packets as f64),
        bytes(b.traffic.bytes),
        b.reason.clone().unwrap_or_default(),
    ]
}

const BACKEND_HEADERS: [&str; 13] = [
    "BACKEND", "NODE", "STATE", "SINCE", "HEALTH", "WEIGHT", "MAGLEV", "ACTIVE", "FLOWS", "SHARE",
    "PACKETS", "BYTES", "REASON",
];

fn fmt_ip(a: std::net::IpAddr) -> String {
    match a {
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// `sluicectl service NS/NAME`.
pub fn service(d: &api::ServiceDetail) -> String {
    let s = &d.summary;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Service     {}  (generation {})",
        s.service, s.generation
    );
    let vips: Vec<String> = s
        .vips
        .iter()
        .map(|v| format!("{} (pool {})", v.addr, v.pool.as_deref().unwrap_or("-")))
        .collect();
    let _ = writeln!(o, "VIPs        {}", vips.join(", "));
    let _ = writeln!(
        o,
        "Method      {}  target {}  externalTrafficPolicy {}",
        s.method, s.target, s.external_traffic_policy
    );
    let _ = writeln!(
        o,
        "Affinity    {}",
        s.affinity_seconds
            .map_or("none".to_owned(), |t| format!("ClientIP, {t} s"))
    );
    let _ = writeln!(o, "Sources     {}", joined_or(&s.source_ranges, "any"));
    for p in &s.problems {
        let _ = writeln!(o, "Problem     {p}");
    }
    for f in &d.frontends {
        let _ = writeln!(
            o,
            "\n{}:{}/{}  {}  {}  maglev {}  active {}  flows {}  packets {}  bytes {}",
            fmt_ip(f.vip),
            f.port,
            f.protocol,
            f.name,
            f.method,
            f.maglev_size,
            si(f.traffic.active_flows as f64),
            si(f.traffic.new_flows as f64),
            si(f.traffic.packets as f64),
            bytes(f.traffic.bytes)
        );
        let c = &f.counters;
        if c.refused_vip_budget + c.refused_source_budget > 0 {
            let _ = writeln!(
                o,
                "  refused new flows: {} by the frontend's budget, {} by source budgets",
                si(c.refused_vip_budget as f64),
                si(c.refused_source_budget as f64)
            );
        }
        if c.syn_cookies_sent > 0 || c.syn_proxy_engaged_workers > 0 {
            let _ = writeln!(
                o,
                "  SYN proxy: {} cookies sent; engaged on {} worker(s) now",
                si(c.syn_cookies_sent as f64),
                c.syn_proxy_engaged_workers
            );
        }
        let rows: Vec<Vec<String>> = f.backends.iter().map(backend_row).collect();
        for l in table(&BACKEND_HEADERS, &rows).lines() {
            let _ = writeln!(o, "  {l}");
        }
    }
    o
}

/// `sluicectl backends`.
pub fn backends(v: &[api::BackendRow]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|r| {
            let mut row = vec![
                r.service.clone(),
                format!("{}:{}/{}", fmt_ip(r.vip), r.vip_port, r.protocol),
            ];
            row.extend(backend_row(&r.backend));
            row
        })
        .collect();
    let mut h = vec!["SERVICE", "FRONTEND"];
    h.extend(BACKEND_HEADERS);
    table(&h, &rows)
}

/// `sluicectl workers`.
pub fn workers(v: &[api::WorkerRow]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|w| {
            vec![
                w.worker.to_string(),
                opt(&w.core),
                w.queues.join(","),
                si(w.rx_pps),
                si(w.tx_pps),
                pct(w.busy_ratio),
                si(w.rx_packets as f64),
                si(w.tx_packets as f64),
                si(w.drops as f64),
                si(w.new_flows as f64),
                format!("{}/{}", w.conntrack.entries, w.conntrack.capacity),
                pct(w.conntrack.fill),
                w.generation.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "WORKER",
            "CORE",
            "QUEUES",
            "RX/S",
            "TX/S",
            "BUSY",
            "RX",
            "TX",
            "DROPS",
            "FLOWS",
            "CONNTRACK",
            "FILL",
            "GEN",
        ],
        &rows,
    )
}

/// `sluicectl drops` (only reasons with drops unless `all`).
pub fn drops(d: &api::Drops, all: bool) -> String {
    let rows: Vec<Vec<String>> = d
        .reasons
        .iter()
        .filter(|r| all || r.total > 0)
        .map(|r| {
            vec![
                r.reason.clone(),
                r.total.to_string(),
                si(r.rate),
                r.per_worker
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                r.description.clone(),
            ]
        })
        .collect();
    let mut o = table(
        &["REASON", "TOTAL", "PER-S", "PER-WORKER", "MEANING"],
        &rows,
    );
    let _ = writeln!(o, "total {}", d.total);
    o
}

/// `sluicectl ports`.
pub fn ports(v: &[api::PortRow]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.device.clone(),
                p.mac.clone(),
                si(p.rx_pps),
                si(p.tx_pps),
                p.rx_packets.to_string(),
                p.tx_packets.to_string(),
                p.rx_missed.to_string(),
                p.rx_errors.to_string(),
                p.tx_errors.to_string(),
                p.rx_nombuf.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "PORT", "DEVICE", "MAC", "RX/S", "TX/S", "RX", "TX", "MISSED", "RX-ERR", "TX-ERR",
            "NOMBUF",
        ],
        &rows,
    )
}

/// `sluicectl health`.
pub fn health(v: &[api::HealthRow]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|h| {
            vec![
                h.target.clone(),
                h.health.clone(),
                ago(h.since_unix),
                h.last_probe_unix.map_or("-".to_owned(), ago),
                h.probes.to_string(),
                h.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "TARGET",
            "HEALTH",
            "SINCE",
            "LAST-PROBE",
            "PROBES",
            "LAST-ERROR",
        ],
        &rows,
    )
}

/// `"reason n"` for each counter of `counts` above zero.
fn nonzero_counts(counts: &std::collections::BTreeMap<String, u64>) -> Vec<String> {
    counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect()
}

/// `items` separated by commas, or `empty` when there are none.
fn joined_or(items: &[String], empty: &str) -> String {
    if items.is_empty() {
        empty.to_owned()
    } else {
        items.join(", ")
    }
}

/// `sluicectl l2`: the other hosts, then each VIP's owner.
pub fn l2(v: &api::L2Status) -> String {
    if v.host.is_empty() {
        return "L2 mode is off (no [l2] section in sluiced's configuration)\n".to_owned();
    }
    let mut o = format!(
        "host {} on {}  {}  live: {}\n",
        v.host,
        v.interface,
        if v.ready {
            "ready"
        } else {
            "listening (owns nothing yet)"
        },
        v.live.join(", ")
    );
    let rows: Vec<Vec<String>> = v
        .peers
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.address.to_string(),
                if p.alive { "up" } else { "down" }.to_owned(),
                p.last_heartbeat_ms_ago
                    .map_or("never".to_owned(), |ms| format!("{ms} ms ago")),
                p.transitions.to_string(),
            ]
        })
        .collect();
    o.push_str(&table(
        &["PEER", "ADDRESS", "STATE", "LAST-HEARTBEAT", "CHANGES"],
        &rows,
    ));
    let rows: Vec<Vec<String>> = v
        .vips
        .iter()
        .map(|x| {
            let owner = x.owner.clone().unwrap_or_else(|| "(none)".to_owned());
            let here = if x.owner.as_deref() == Some(v.host.as_str()) {
                "yes"
            } else {
                ""
            };
            vec![x.vip.to_string(), owner, here.to_owned()]
        })
        .collect();
    o.push('\n');
    o.push_str(&table(&["VIP", "OWNER", "HERE"], &rows));
    let dropped = nonzero_counts(&v.dropped);
    let _ = writeln!(
        o,
        "\nowned {}  owner changes {}  heartbeats received {}  dropped: {}",
        v.owned,
        v.ownership_changes,
        v.heartbeats_received,
        joined_or(&dropped, "none")
    );
    o
}

/// `sluicectl sync`: one row per peer, then the totals and drops.
pub fn sync(v: &api::SyncStatus) -> String {
    if v.host.is_empty() {
        return "flow sync is off (no [sync] section in sluiced's configuration)\n".to_owned();
    }
    let mut o = format!(
        "host {} on {}\n",
        v.host,
        v.address.map_or("-".to_owned(), |a| a.to_string())
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let rows: Vec<Vec<String>> = v
        .peers
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.address.to_string(),
                p.records_sent.to_string(),
                p.records_received.to_string(),
                p.last_heard_unix_ms.map_or("never".to_owned(), |t| {
                    format!("{} ms ago", now.saturating_sub(t))
                }),
                p.lag_ms.map_or("-".to_owned(), |l| format!("{l} ms")),
                if p.bulk_done { "yes" } else { "no" }.to_owned(),
                p.nat_addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    o.push_str(&table(
        &[
            "PEER",
            "ADDRESS",
            "SENT",
            "RECEIVED",
            "LAST-HEARD",
            "LAG",
            "BULK",
            "NAT-ADDRESSES",
        ],
        &rows,
    ));
    let dropped = nonzero_counts(&v.dropped);
    let _ = writeln!(
        o,
        "\npublished {}  ring full {}  queued {}  sent {} ({} datagrams, {} bytes)  not sent {}",
        v.published,
        v.ring_full,
        v.ring_queued,
        v.records_sent,
        v.datagrams_sent,
        v.bytes_sent,
        v.send_dropped
    );
    let _ = writeln!(
        o,
        "received {}  installed {}  conflicts {}  adopted {}  walks {}  install dropped {}",
        v.records_received, v.installed, v.conflicts, v.adopted, v.walks, v.install_dropped
    );
    let _ = writeln!(o, "datagrams dropped: {}", joined_or(&dropped, "none"));
    o
}

/// `sluicectl bgp`: one row per peer, then BIRD and what is announced.
pub fn bgp(b: &api::Bgp) -> String {
    if !b.enabled {
        return "routed mode is off (no [bgp] section in sluiced's configuration)\n".to_owned();
    }
    let rows: Vec<Vec<String>> = b
        .peers
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.address.to_string(),
                p.asn.to_string(),
                p.state.clone(),
                p.since_unix.map_or("-".to_owned(), |t| ago(t as f64)),
                format!("{}/{}", p.exported, p.imported),
                p.bfd.clone().unwrap_or_else(|| "off".to_owned()),
                p.last_error.clone().unwrap_or_default(),
                p.hint.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut o = table(
        &[
            "PEER",
            "ADDRESS",
            "ASN",
            "STATE",
            "SINCE",
            "EXP/IMP",
            "BFD",
            "LAST-ERROR",
            "HINT",
        ],
        &rows,
    );
    if let Some(p) = &b.bird {
        let _ = writeln!(
            o,
            "bird        {}  starts {}{}",
            p.pid
                .map_or("not running".to_owned(), |p| format!("pid {p}")),
            p.starts,
            p.last_exit
                .as_ref()
                .map_or(String::new(), |e| format!("  last exit: {e}"))
        );
    }
    let _ = writeln!(
        o,
        "announced   {}{}",
        joined_or(&b.announced, "nothing"),
        if b.drained {
            "  (host drained: sluicectl host undrain)"
        } else {
            ""
        }
    );
    o
}

/// `sluicectl neighbours`.
pub fn neighbours(n: &api::Neighbours) -> String {
    let mut rows: Vec<Vec<String>> = n
        .neighbours
        .iter()
        .map(|x| {
            vec![
                x.ip.to_string(),
                x.mac.clone(),
                if x.next_hop { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    rows.extend(
        n.unresolved
            .iter()
            .map(|u| vec![u.to_string(), "(resolving)".to_owned(), "yes".to_owned()]),
    );
    table(&["ADDRESS", "MAC", "NEXT-HOP"], &rows)
}

/// `sluicectl conntrack lookup`.
pub fn conntrack(c: &api::Conntrack) -> String {
    let rows: Vec<Vec<String>> = c
        .flows
        .iter()
        .map(|f| {
            vec![
                f.worker.to_string(),
                format!("{}:{}", fmt_ip(f.client), f.client_port),
                format!("{}:{}", fmt_ip(f.vip), f.vip_port),
                f.protocol.clone(),
                f.state.clone(),
                opt(&f.backend),
                opt(&f.backend_state),
                f.nat.clone().unwrap_or_else(|| "-".to_owned()),
                duration(f.idle_ms as f64 / 1000.0),
                duration(f.expires_in_ms as f64 / 1000.0),
            ]
        })
        .collect();
    let mut o = table(
        &[
            "WORKER",
            "CLIENT",
            "VIP",
            "PROTO",
            "STATE",
            "BACKEND",
            "BACKEND-STATE",
            "NAT",
            "IDLE",
            "EXPIRES",
        ],
        &rows,
    );
    let _ = write!(
        o,
        "{} flow(s); {} worker(s) answered",
        c.flows.len(),
        c.workers_answered
    );
    if !c.workers_unanswered.is_empty() {
        let _ = write!(o, "; no answer from worker(s) {:?}", c.workers_unanswered);
    }
    o.push('\n');
    o
}

/// The answer to drain, undrain and weight.
pub fn change(verb: &str, c: &api::BackendChange) -> String {
    format!(
        "{verb} {}: {} backend(s), drained {}, weight {}, now in snapshot generation {}\n",
        c.addr,
        c.backends,
        if c.drained { "yes" } else { "no" },
        c.weight.map_or("default (1)".to_owned(), |w| w.to_string()),
        c.generation
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unprobed_backend_says_so() {
        let mut b = api::BackendDetail {
            id: 1,
            addr: "10.0.0.1".parse().unwrap(),
            port: 9001,
            node: None,
            weight: 1,
            state: "active".to_owned(),
            reason: None,
            since_unix: 0.0,
            health: None,
            maglev_entries: 1,
            maglev_share: 1.0,
            traffic: api::Traffic::default(),
            flow_share: 0.0,
            next_hop: None,
            mac: None,
        };
        assert_eq!(backend_row(&b)[4], "not probed");
        b.health = Some(api::HealthBrief {
            target: "tcp://10.0.0.1:8080".to_owned(),
            health: "down".to_owned(),
            since_unix: 0.0,
            last_error: Some("refused".to_owned()),
        });
        assert_eq!(backend_row(&b)[4], "down");
    }

    #[test]
    fn table_aligns_and_trims() {
        let t = table(
            &["A", "LONGER"],
            &[vec!["xx".into(), "1".into()], vec!["y".into(), "".into()]],
        );
        assert_eq!(t, "A   LONGER\nxx  1\ny\n");
    }

    #[test]
    fn numbers() {
        assert_eq!(si(12.0), "12");
        assert_eq!(si(12345.0), "12.3k");
        assert_eq!(si(2_500_000.0), "2.5M");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1536), "1.5KiB");
        assert_eq!(duration(59.9), "59s");
        assert_eq!(duration(192.0), "3m12s");
        assert_eq!(duration(7500.0), "2h05m");
        assert_eq!(duration(90000.0), "1d01h");
        assert_eq!(exit_code(200), EXIT_OK);
        assert_eq!(exit_code(404), EXIT_NOT_FOUND);
        assert_eq!(exit_code(403), EXIT_UNREACHABLE);
        assert_eq!(exit_code(409), EXIT_FAILED);
    }
}
