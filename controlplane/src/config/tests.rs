//! Tests of loading the configuration: defaults, strict keys, errors that name the key, and
//! every key documented in docs/configuration.md.
use std::net::Ipv4Addr;

use sluice_dataplane::snapshot::Method;

use super::de::parse_net;
use super::*;

const LAB: &str = r#"
[eal]
args = ["--in-memory"]

[[ports]]
name = "lb0"
device = "net_af_packet0,iface=sl-lb0"
ipv4 = ["10.99.0.2/24"]
ipv6 = ["fd00:99::2/64"]

[workers]
cores = [1]

[nat]
addresses = ["10.99.0.3", "fd00:99::3"]

[[pools]]
name = "lab"
ranges = ["10.99.0.100-10.99.0.120", "fd00:99::100-fd00:99::120"]
"#;

fn parse(s: &str) -> Result<Config, ConfigError> {
    Config::parse(s, "sluice.toml")
}

#[test]
fn lab_config_and_defaults() {
    let c = parse(LAB).unwrap();
    assert_eq!(c.eal.args, vec!["--in-memory"]);
    assert_eq!(c.ports[0].mtu, 1500);
    assert_eq!(c.ports[0].ipv4[0].addr(), Ipv4Addr::new(10, 99, 0, 2));
    assert_eq!(c.ports[0].ipv4[0].prefix_len(), 24);
    assert!(c.ports[0].on_link("10.99.0.21".parse().unwrap()));
    assert!(!c.ports[0].on_link("10.98.0.21".parse().unwrap()));
    assert!(c.ports[0].is_vdev());
    assert_eq!(c.tables.maglev_size, MaglevSize::Auto);
    assert_eq!(c.tables.conntrack_capacity, 1 << 20);
    assert_eq!(c.nat.port_min, 20000);
    assert_eq!(c.nat.port_max, 65535);
    assert_eq!(c.forwarding.default_method, Method::Nat);
    assert_eq!(c.forwarding.target, Target::Pod);
    assert_eq!(c.forwarding.removed_backend_grace_seconds, 300);
    assert_eq!(c.health, HealthConfig::default());
    assert_eq!(c.source.load_balancer_class, "sluice.dev/dpdk");
    assert_eq!(c.workers.tx_flush_us, 100);
    let p = &c.pools[0];
    assert!(p.contains("10.99.0.100".parse().unwrap()));
    assert!(p.contains("10.99.0.120".parse().unwrap()));
    assert!(!p.contains("10.99.0.121".parse().unwrap()));
    assert!(p.contains("fd00:99::11f".parse().unwrap()));
}

#[test]
fn example_file_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples/sluice.toml");
    let c = Config::load(path).unwrap();
    assert_eq!(
        c.source.manifest_dir,
        PathBuf::from("docs/examples/manifests")
    );
    assert_eq!(c.nat.addresses.len(), 2);
}

#[test]
fn unknown_key_top_level() {
    let e = parse(&format!("{LAB}\n[workres]\ncores = [2]\n")).unwrap_err();
    let s = e.to_string();
    assert!(s.starts_with("sluice.toml:"), "{s}");
    assert!(
        s.contains("unknown key \"workres\" at top level; expected one of"),
        "{s}"
    );
    assert!(s.contains("workers"), "{s}");
    match e {
        ConfigError::Parse { line, ref key, .. } => {
            assert_eq!(line, 21, "{s}");
            assert_eq!(key, "workres");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn unknown_key_nested() {
    let e = parse(&LAB.replace("cores = [1]", "cores = [1]\ntx_flush = 3")).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("unknown key \"tx_flush\" in workers"), "{s}");
    assert!(s.contains("tx_flush_us"), "{s}");
}

#[test]
fn type_errors_name_the_key() {
    let e = parse(&LAB.replace("cores = [1]", "cores = [\"one\"]")).unwrap_err();
    assert_eq!(e.key(), "workers.cores[0]", "{e}");
    assert!(
        e.to_string().contains("workers.cores[0]: invalid type"),
        "{e}"
    );

    let e = parse(&LAB.replace("10.99.0.2/24", "10.99.0.2")).unwrap_err();
    assert_eq!(e.key(), "ports[0].ipv4", "{e}");
    assert!(e.to_string().contains("10.99.0.2/24"), "{e}");

    let e = parse(&LAB.replace("10.99.0.100-10.99.0.120", "10.99.0.120-10.99.0.100")).unwrap_err();
    assert!(e.to_string().contains("ends before it starts"), "{e}");

    let e = parse(&format!("{LAB}\n[forwarding]\ndefault_method = \"dsr\"\n")).unwrap_err();
    assert_eq!(e.key(), "forwarding.default_method", "{e}");
    assert!(e.to_string().contains("\"dsr-l2\""), "{e}");

    let e = parse(&format!("{LAB}\n[forwarding]\ntarget = \"nodes\"\n")).unwrap_err();
    assert_eq!(e.key(), "forwarding.target", "{e}");

    let e = parse("[[ports]]\nname = \"x\"\n").unwrap_err();
    assert!(e.to_string().contains("device"), "{e}");
}

#[test]
fn semantic_errors_name_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[nat]\naddresses",
            "[nat]\nport_min = 30000\nport_max = 20000\naddresses",
            "nat.port_min",
        ),
        (
            "[workers]\ncores = [1]",
            "[workers]\ncores = [1]\n[tables]\nmaglev_size = 65536",
            "tables.maglev_size",
        ),
        (
            "[workers]\ncores = [1]",
            "[workers]\ncores = [1, 1]",
            "workers.cores",
        ),
        (
            "[workers]\ncores = [1]",
            "[workers]\ncores = [1]\ncontrol_cores = [1]",
            "workers.control_cores",
        ),
        (
            "\"10.99.0.100-10.99.0.120\"",
            "\"10.99.0.100-10.99.0.120\", \"10.99.0.110-10.99.0.130\"",
            "pools[0].cidrs",
        ),
        (
            "\"10.99.0.100-10.99.0.120\"",
            "\"10.99.0.1-10.99.0.120\"",
            "pools[0].cidrs",
        ),
        (
            "ipv6 = [\"fd00:99::2/64\"]",
            "ipv6 = [\"fd00:99::2/64\"]\ngateway_v4 = \"10.1.0.1\"",
            "ports[0].gateway_v4",
        ),
        ("[eal]", "[health]\nrise = 0\n[eal]", "health.rise"),
        (
            "[eal]",
            "[health]\nhttp_path = \"healthz\"\n[eal]",
            "health.http_path",
        ),
    ];
    for (from, to, key) in cases {
        let text = LAB.replace(from, to);
        assert_ne!(text, LAB, "{from}");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key(), *key, "{e}");
        assert!(matches!(e, ConfigError::Invalid { .. }), "{e}");
        assert!(e.to_string().starts_with("sluice.toml: "), "{e}");
    }
    let e = parse(&LAB.replace(
        "[workers]\ncores = [1]",
        "[workers]\ncores = [1]\n[tables]\nmaglev_size = 65536",
    ))
    .unwrap_err();
    assert!(e.to_string().contains("65537"), "{e}");
    let e = parse("").unwrap_err();
    assert_eq!(e.key(), "ports");
}

#[test]
fn maglev_size_is_auto_or_a_prime() {
    let with = |v: &str| {
        parse(&LAB.replace(
            "[workers]\ncores = [1]",
            &format!("[workers]\ncores = [1]\n[tables]\nmaglev_size = {v}"),
        ))
    };
    assert_eq!(
        with("\"auto\"").unwrap().tables.maglev_size,
        MaglevSize::Auto
    );
    // Configurations from before "auto" keep their number.
    assert_eq!(
        with("65537").unwrap().tables.maglev_size,
        MaglevSize::Fixed(65537)
    );
    assert_eq!(
        with("\"262147\"").unwrap().tables.maglev_size,
        MaglevSize::Fixed(262_147)
    );
    for bad in ["\"big\"", "-1", "4294967296", "\"65536\""] {
        let e = with(bad).unwrap_err();
        assert_eq!(e.key(), "tables.maglev_size", "{bad}: {e}");
        assert!(
            e.to_string().contains("auto") || e.to_string().contains("prime"),
            "{e}"
        );
    }
    assert_eq!(MaglevSize::Auto.for_backends(10), 4099);
    assert_eq!(MaglevSize::Fixed(251).for_backends(10), 251);
    assert_eq!(MaglevSize::parse(" AUTO ").unwrap(), MaglevSize::Auto);
    assert_eq!(MaglevSize::Fixed(251).to_string(), "251");
}

#[test]
fn more_than_one_port_is_refused() {
    let second = "[[ports]]\nname = \"lb1\"\ndevice = \"net_null0\"\nipv4 = [\"10.98.0.2/24\"]\n";
    let e = parse(&format!("{LAB}\n{second}")).unwrap_err();
    assert_eq!(e.key(), "ports", "{e}");
    assert!(matches!(e, ConfigError::Invalid { .. }), "{e}");
    let s = e.to_string();
    assert!(s.contains("2 [[ports]] are configured"), "{s}");
    assert!(s.contains("keep one [[ports]] table"), "{s}");
}

#[test]
fn mtu_must_fit_a_packet_buffer() {
    let with_mtu = |m: u32| parse(&LAB.replace("[workers]", &format!("mtu = {m}\n[workers]")));
    assert_eq!(
        MAX_MTU, 2030,
        "2048-byte frames less Ethernet and one VLAN tag"
    );
    assert_eq!(with_mtu(1500).unwrap().ports[0].mtu, 1500);
    assert_eq!(with_mtu(u32::from(MAX_MTU)).unwrap().ports[0].mtu, MAX_MTU);
    assert_eq!(with_mtu(576).unwrap().ports[0].mtu, 576);
    for bad in [575, u32::from(MAX_MTU) + 1, 9000] {
        let e = with_mtu(bad).unwrap_err();
        assert_eq!(e.key(), "ports[0].mtu", "{e}");
        let s = e.to_string();
        assert!(s.contains("use 576..=2030"), "{s}");
        assert!(s.contains("jumbo frames are not supported"), "{s}");
    }
}

#[test]
fn pools_cidr_rules() {
    let p = PoolConfig {
        name: "p".into(),
        cidrs: vec![
            "10.0.0.0/30".parse().unwrap(),
            "fd00::/126".parse().unwrap(),
        ],
        ranges: vec![],
        namespaces: Some(vec!["a".into()]),
        auto_assign: true,
    };
    // /30: the network and broadcast addresses are not the pool's; /126: the all-zero one.
    assert!(!p.contains("10.0.0.0".parse().unwrap()));
    assert!(p.contains("10.0.0.1".parse().unwrap()));
    assert!(p.contains("10.0.0.2".parse().unwrap()));
    assert!(!p.contains("10.0.0.3".parse().unwrap()));
    assert!(!p.contains("fd00::".parse().unwrap()));
    assert!(p.contains("fd00::1".parse().unwrap()));
    assert!(p.allows_namespace("a") && !p.allows_namespace("b"));
    assert!(parse_net("10.0.0.5/24")
        .unwrap_err()
        .contains("10.0.0.0/24"));
    assert_eq!(parse_net("10.0.0.5").unwrap().prefix_len(), 32);
}

#[test]
fn lease_timings_are_configurable_and_checked_together() {
    let c = parse(LAB).unwrap();
    assert_eq!(
        (
            c.source.lease_duration_seconds,
            c.source.lease_renew_deadline_ms,
            c.source.lease_retry_ms
        ),
        (15, 10_000, 2_000)
    );
    let c = parse(&format!(
        "{LAB}[source]\nlease_duration_seconds = 4\nlease_renew_deadline_ms = 3000\nlease_retry_ms = 500\n"
    ))
    .unwrap();
    assert_eq!(c.source.lease_duration_seconds, 4);
    let cases: &[(&str, &str, &str)] = &[
        (
            "lease_duration_seconds = 0",
            "source.lease_duration_seconds",
            "1 to 3600",
        ),
        (
            "lease_retry_ms = 50",
            "source.lease_retry_ms",
            "at least 100",
        ),
        (
            "lease_renew_deadline_ms = 15000",
            "source.lease_renew_deadline_ms",
            "for example 10000",
        ),
        (
            "lease_renew_deadline_ms = 1500\nlease_retry_ms = 2000",
            "source.lease_renew_deadline_ms",
            "longer than lease_retry_ms (2000)",
        ),
    ];
    for (line, key, fix) in cases {
        let e = parse(&format!("{LAB}[source]\n{line}\n")).unwrap_err();
        assert_eq!(e.key(), *key, "{e}");
        assert!(e.to_string().contains(fix), "{e}");
    }
    // Without leader election the timings are not used, and not checked.
    parse(&format!(
        "{LAB}[source]\nleader_election = false\nlease_retry_ms = 50\n"
    ))
    .unwrap();
}

#[test]
fn line_and_column() {
    assert_eq!(line_col("ab\ncd", 4), (2, 2));
    assert_eq!(line_col("ab", 0), (1, 1));
}

/// Every key of every table is documented in docs/configuration.md (the key lists come from
/// the parser's own "expected one of" messages, so a new key without docs fails here).
#[test]
fn every_key_is_documented() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/configuration.md"
    ))
    .unwrap();
    let base = "[[ports]]\nname = \"p\"\ndevice = \"net_null0\"\nipv4 = [\"10.0.0.2/24\"]\n";
    let probes = [
        ("", format!("bogus_key = 1\n{base}")),
        ("eal", format!("[eal]\nbogus_key = 1\n{base}")),
        ("ports", format!("{base}bogus_key = 1\n")),
        ("workers", format!("{base}[workers]\nbogus_key = 1\n")),
        ("tables", format!("{base}[tables]\nbogus_key = 1\n")),
        ("nat", format!("{base}[nat]\nbogus_key = 1\n")),
        ("forwarding", format!("{base}[forwarding]\nbogus_key = 1\n")),
        ("limits", format!("{base}[limits]\nbogus_key = 1\n")),
        (
            "pools",
            format!("{base}[[pools]]\nname = \"x\"\nbogus_key = 1\n"),
        ),
        ("health", format!("{base}[health]\nbogus_key = 1\n")),
        ("source", format!("{base}[source]\nbogus_key = 1\n")),
        ("admin", format!("{base}[admin]\nbogus_key = 1\n")),
        ("bgp", format!("{base}[bgp]\nasn = 64512\nbogus_key = 1\n")),
        (
            "bgp.peers",
            format!("{base}[[bgp.peers]]\naddress = \"10.0.0.1\"\nasn = 1\nbogus_key = 1\n"),
        ),
        (
            "bgp.advertisements",
            format!("{base}[[bgp.advertisements]]\npools = []\nbogus_key = 1\n"),
        ),
        (
            "tables.timeouts",
            format!("{base}[tables.timeouts]\nbogus_key = 1\n"),
        ),
        ("l2", format!("{base}[l2]\nbogus_key = 1\n")),
        (
            "l2.peers",
            format!("{base}[[l2.peers]]\nname = \"h1\"\nbogus_key = 1\n"),
        ),
    ];
    let mut n = 0;
    for (table, text) in probes {
        let msg = Config::parse(&text, "t.toml").unwrap_err().to_string();
        let list = msg
            .split("expected one of: ")
            .nth(1)
            .unwrap_or_else(|| panic!("{table}: {msg}"));
        let list = list.split(" (see").next().unwrap();
        for key in list.split(',').map(str::trim) {
            if table.is_empty() {
                let heading = if matches!(key, "ports" | "pools") {
                    format!("## `[[{key}]]`")
                } else {
                    format!("## `[{key}]`")
                };
                assert!(
                    doc.contains(&heading),
                    "docs/configuration.md has no section {heading}"
                );
            } else {
                assert!(
                    doc.contains(&format!("| `{key}` |")),
                    "docs/configuration.md does not document {table}.{key}"
                );
            }
            n += 1;
        }
    }
    assert!(n > 40, "only {n} keys found");
}

const BGP: &str = r#"
[bgp]
asn = 64512
router_id = "10.99.0.2"

[[bgp.peers]]
name = "tor"
address = "10.99.0.1"
asn = 65000

[[bgp.advertisements]]
pools = ["lab"]
communities = ["65000:100"]
"#;

#[test]
fn bgp_is_optional_and_next_hops_default_to_the_first_port() {
    assert_eq!(parse(LAB).unwrap().bgp, None);
    let c = parse(&format!("{LAB}{BGP}")).unwrap();
    let b = c.bgp.unwrap();
    assert_eq!(b.next_hop_v4, Some(Ipv4Addr::new(10, 99, 0, 2)));
    assert_eq!(b.next_hop_v6, Some("fd00:99::2".parse().unwrap()));
    assert_eq!(b.peers[0].display_name(), "tor");
    // Set explicitly, they are kept.
    let c = parse(&format!(
        "{LAB}{}",
        BGP.replace("asn = 64512", "asn = 64512\nnext_hop_v4 = \"10.99.0.2\"")
    ))
    .unwrap();
    assert_eq!(
        c.bgp.unwrap().next_hop_v4,
        Some(Ipv4Addr::new(10, 99, 0, 2))
    );
}

#[test]
fn bgp_errors_name_the_key_and_the_fix() {
    let cases = [
        (
            BGP.replace("pools = [\"lab\"]", "pools = [\"web\"]"),
            "bgp.advertisements[0].pools[0]",
            "not a configured pool",
        ),
        (
            BGP.replace("asn = 64512", "asn = 0"),
            "bgp.asn",
            "use 1..=4294967295",
        ),
        (
            BGP.replace("asn = 65000", "asn = 23456"),
            "bgp.peers[0].asn",
            "AS_TRANS",
        ),
        (
            BGP.replace("asn = 64512", "asn = 64512\nnext_hop_v4 = \"10.99.0.77\""),
            "bgp.next_hop_v4",
            "not an address of any [[ports]]",
        ),
        (
            BGP.replace("asn = 64512", "asn = 64512\nlinger_seconds = 99999"),
            "bgp.linger_seconds",
            "use 0..=3600",
        ),
    ];
    for (bgp, key, fix) in cases {
        let e = parse(&format!("{LAB}{bgp}")).unwrap_err();
        assert_eq!(e.key(), key, "{e}");
        assert!(e.to_string().contains(fix), "{e}");
    }
    // A port without IPv6: an IPv4 peer that carries ipv6 has no next hop to default to.
    let v4_only = LAB.replace("ipv6 = [\"fd00:99::2/64\"]\n", "");
    let v4_only = v4_only.replace(", \"fd00:99::100-fd00:99::120\"", "");
    let v4_only = v4_only.replace(", \"fd00:99::3\"", "");
    let e = parse(&format!(
        "{v4_only}{}",
        BGP.replace(
            "asn = 65000",
            "asn = 65000\nfamilies = [\"ipv4\", \"ipv6\"]"
        )
    ))
    .unwrap_err();
    assert_eq!(e.key(), "bgp.next_hop_v6", "{e}");
}

#[test]
fn poll_mode_and_idle_sleep() {
    let c = parse(LAB).unwrap();
    assert_eq!(c.workers.poll, PollMode::Busy);
    let c = parse(&LAB.replace(
        "cores = [1]",
        "cores = [1]\npoll = \"idle\"\nidle_sleep_us = 200",
    ))
    .unwrap();
    assert_eq!(c.workers.poll, PollMode::Idle);
    assert_eq!(c.workers.idle_sleep_us, 200);

    let e = parse(&LAB.replace("cores = [1]", "cores = [1]\npoll = \"lazy\"")).unwrap_err();
    assert_eq!(e.key(), "workers.poll", "{e}");
    let e = parse(&LAB.replace("cores = [1]", "cores = [1]\nidle_sleep_us = 0")).unwrap_err();
    assert_eq!(e.key(), "workers.idle_sleep_us", "{e}");
    assert!(e.to_string().contains("1..=10000"), "{e}");
}

/// Asserts that LAB with `section` appended is refused naming `key`, saying `says`.
fn refused(section: &str, key: &str, says: &str) {
    let e = parse(&format!("{LAB}{section}")).unwrap_err();
    assert_eq!(e.key(), key, "{e}");
    assert!(e.to_string().contains(says), "{e}");
}

const L2: &str = r#"
[l2]
host = "h1"
interface = "eth0"
key = "0123456789abcdef"

[[l2.peers]]
name = "h1"
address = "10.99.0.2"

[[l2.peers]]
name = "h2"
address = "10.99.0.3"
"#;

#[test]
fn l2_section_parses_with_defaults() {
    let c = parse(&format!("{LAB}{L2}")).unwrap();
    let l = c.l2.unwrap();
    assert_eq!((l.port, l.interval_ms, l.dead_after), (7946, 100, 3));
    assert_eq!((l.garp_count, l.garp_interval_ms), (3, 500));
    assert_eq!(
        l.me().unwrap().address,
        "10.99.0.2".parse::<std::net::IpAddr>().unwrap()
    );
}

#[test]
fn l2_errors_name_the_key() {
    let bad = |edit: &dyn Fn(&str) -> String, key: &str, says: &str| refused(&edit(L2), key, says);
    bad(
        &|s| s.replace("name = \"h2\"", "name = \"h1\""),
        "l2.peers[1].name",
        "names this host (l2.host) twice",
    );
    bad(
        &|s| s.replace("host = \"h1\"", "host = \"h7\""),
        "l2.peers",
        "does not list this host",
    );
    bad(
        &|s| s.replace("0123456789abcdef", "short"),
        "l2.key",
        "at least 16",
    );
    bad(
        &|s| s.replace("10.99.0.3", "10.99.0.2"),
        "l2.peers[1].address",
        "listed twice",
    );
    bad(
        &|s| {
            s.replace(
                "interface = \"eth0\"",
                "interface = \"eth0\"\ndead_after = 1",
            )
        },
        "l2.dead_after",
        "2..=100",
    );
    bad(
        &|s| s.replace("key = \"0123456789abcdef\"", ""),
        "l2.key",
        "is missing",
    );
}

#[test]
fn l2_interface_must_exist() {
    let c = parse(&format!("{LAB}{L2}")).unwrap();
    let l = c.l2.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (k, m) = l.check_interface(dir.path()).unwrap_err();
    assert_eq!(k, "l2.interface");
    assert!(m.contains("no interface \"eth0\""), "{m}");
    std::fs::create_dir(dir.path().join("eth0")).unwrap();
    l.check_interface(dir.path()).unwrap();
}

#[test]
fn conntrack_timeouts_from_the_config() {
    let c = parse(LAB).unwrap();
    assert_eq!(
        c.tables.timeouts.to_dataplane(),
        sluice_dataplane::conntrack::Timeouts::default()
    );
    let c = parse(&format!(
        "{LAB}\n[tables.timeouts]\ntcp_established_seconds = 3600\nudp_seconds = 5\n"
    ))
    .unwrap();
    let t = c.tables.timeouts.to_dataplane();
    assert_eq!((t.tcp_established_ms, t.udp_ms), (3_600_000, 5_000));
    let e = parse(&format!("{LAB}\n[tables.timeouts]\ntcp_syn_seconds = 0\n")).unwrap_err();
    assert_eq!(e.key(), "tables.timeouts.tcp_syn_seconds", "{e}");
    assert!(e.to_string().contains("1..=300"), "{e}");
    let e = parse(&format!("{LAB}\n[tables.timeouts]\nsyn = 3\n")).unwrap_err();
    assert!(e.to_string().contains("tcp_syn_seconds"), "{e}");
}

const SYNC: &str = r#"
[sync]
host = "h1"
address = "10.99.0.2"
key = "0123456789abcdef"

[[sync.peers]]
name = "h2"
address = "10.99.0.3"
nat_addresses = ["10.99.0.13"]
"#;

#[test]
fn sync_section_parses_with_defaults() {
    let c = parse(&format!("{LAB}{SYNC}")).unwrap();
    let y = c.sync.unwrap();
    assert_eq!((y.port, y.ring_size, y.max_rate), (7947, 65536, 500_000));
    assert_eq!(
        (y.batch_ms, y.refresh_seconds, y.bulk_timeout_ms),
        (5, 30, 3000)
    );
    assert_eq!(
        y.peer_nat_addresses().collect::<Vec<_>>(),
        vec!["10.99.0.13".parse::<std::net::IpAddr>().unwrap()]
    );
}

#[test]
fn sync_errors_name_the_key() {
    let bad =
        |edit: &dyn Fn(&str) -> String, key: &str, says: &str| refused(&edit(SYNC), key, says);
    bad(
        &|s| s.replace("0123456789abcdef", "short"),
        "sync.key",
        "at least 16",
    );
    bad(
        &|s| s.replace("name = \"h2\"", "name = \"h1\""),
        "sync.peers[0].name",
        "must name another host",
    );
    bad(
        &|s| s.replace("10.99.0.3\"", "fd00::3\""),
        "sync.peers[0].address",
        "of sync.address's family",
    );
    bad(
        &|s| s.replace("key = ", "ring_size = 10\nkey = "),
        "sync.ring_size",
        "1024..=1048576",
    );
    bad(
        &|s| s.replace("key = \"0123456789abcdef\"", ""),
        "sync.key",
        "is missing",
    );
    bad(
        &|s| s.replace("[\"10.99.0.13\"]", "[\"10.99.0.3\"]"),
        "sync.peers[0].nat_addresses",
        "one of this host's [nat] addresses",
    );
}

#[test]
fn limits_are_off_by_default_and_checked() {
    let c = parse(LAB).unwrap();
    assert_eq!(c.limits, LimitsConfig::default());
    assert_eq!(c.limits.vip().per_worker(4), None);
    assert_eq!(c.limits.source().per_worker(4), None);
    let c = parse(&format!(
        "{LAB}\n[limits]\nnew_flows_per_vip = 10000\nnew_flows_per_source = 100\nnew_flows_per_source_burst = 500\nsource_prefix_v4 = 20\nsource_prefix_v6 = 48\nsource_buckets = 1024\n"
    ))
    .unwrap();
    let l = &c.limits;
    let per = |rate, burst| Some(sluice_dataplane::snapshot::FlowLimit { rate, burst });
    assert_eq!(l.vip().per_worker(3), per(3334, 3334));
    assert_eq!(l.source().per_worker(2), per(50, 250));
    let s = l.source_buckets(7);
    assert_eq!(
        (s.prefix_v4, s.prefix_v6, s.buckets, s.seed),
        (20, 48, 1024, 7)
    );
    refused(
        "\n[limits]\nnew_flows_per_vip_burst = 10\n",
        "limits.new_flows_per_vip_burst",
        "set limits.new_flows_per_vip too",
    );
    refused(
        "\n[limits]\nnew_flows_per_source = 200000000\n",
        "limits.new_flows_per_source",
        "0 (no limit) to 100000000",
    );
    refused(
        "\n[limits]\nnew_flows_per_vip = 10\nnew_flows_per_vip_burst = 5000000\n",
        "limits.new_flows_per_vip_burst",
        "to 4000000",
    );
    refused(
        "\n[limits]\nsource_prefix_v4 = 33\n",
        "limits.source_prefix_v4",
        "1..=32",
    );
    refused(
        "\n[limits]\nsource_prefix_v6 = 0\n",
        "limits.source_prefix_v6",
        "1..=128",
    );
    refused(
        "\n[limits]\nsource_buckets = 1000\n",
        "limits.source_buckets",
        "use e.g. 1024",
    );
    let e = parse(&format!("{LAB}\n[limits]\nper_vip = 3\n")).unwrap_err();
    assert!(e.to_string().contains("new_flows_per_vip"), "{e}");
}

#[test]
fn flow_limit_annotation_values() {
    let ok = |v: &str| RateBurst::parse(v).unwrap();
    assert_eq!(
        ok("100"),
        RateBurst {
            rate: 100,
            burst: 0
        }
    );
    assert_eq!(
        ok(" 100 , 400 "),
        RateBurst {
            rate: 100,
            burst: 400
        }
    );
    assert_eq!(ok("0"), RateBurst::default());
    for bad in [
        "",
        "x",
        "-1",
        "100,",
        "100,0",
        "0,5",
        "100,4000001",
        "200000000",
    ] {
        assert!(RateBurst::parse(bad).is_err(), "{bad:?}");
    }
}

/// `[forwarding] syn_proxy` takes `"on"`, `"off"`, `"auto"` and, as before, `true`/`false`;
/// the auto threshold is checked with a message naming the file, the key and the fix.
#[test]
fn syn_proxy_modes_and_threshold() {
    for (v, want) in [
        ("true", SynProxyMode::On),
        ("false", SynProxyMode::Off),
        ("\"on\"", SynProxyMode::On),
        ("\"off\"", SynProxyMode::Off),
        ("\"auto\"", SynProxyMode::Auto),
    ] {
        let c = parse(&format!("{LAB}\n[forwarding]\nsyn_proxy = {v}\n")).unwrap();
        assert_eq!(c.forwarding.syn_proxy, want, "{v}");
    }
    let c = parse(LAB).unwrap();
    assert_eq!(c.forwarding.syn_proxy, SynProxyMode::Off);
    assert_eq!(
        c.forwarding.syn_proxy_auto_threshold,
        DEFAULT_SYN_PROXY_AUTO_THRESHOLD
    );
    let e = parse(&format!("{LAB}\n[forwarding]\nsyn_proxy = \"sometimes\"\n")).unwrap_err();
    assert_eq!(e.key(), "forwarding.syn_proxy", "{e}");
    assert!(e.to_string().contains("\"auto\""), "{e}");
    let e = parse(&format!("{LAB}\n[forwarding]\nsyn_proxy = 1\n")).unwrap_err();
    assert_eq!(e.key(), "forwarding.syn_proxy", "{e}");
    for bad in ["0", "1", "16777217"] {
        let toml = format!(
            "{LAB}\n[forwarding]\nsyn_proxy = \"auto\"\nsyn_proxy_auto_threshold = {bad}\n"
        );
        let e = parse(&toml).unwrap_err();
        assert_eq!(e.key(), "forwarding.syn_proxy_auto_threshold", "{e}");
        let m = e.to_string();
        assert!(
            m.contains("is not 2 to 16777216") && m.contains("1024"),
            "{m}"
        );
    }
    let c = parse(&format!(
        "{LAB}\n[forwarding]\nsyn_proxy = \"auto\"\nsyn_proxy_auto_threshold = 2\n"
    ))
    .unwrap();
    assert_eq!(c.forwarding.syn_proxy_auto_threshold, 2);
}

/// The SYN cookie key: from `forwarding.syn_cookie_key_file` (the same file gives the same
/// key; a short one is refused naming the key), else derived from the `[sync]` key (not the
/// key itself), else none (random per start).
#[test]
fn syn_cookie_key_sources() {
    let dir = std::env::temp_dir().join(format!("sluice-cookie-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good");
    std::fs::write(&good, "0123456789abcdef-fleet-secret\nignored\n").unwrap();
    let short = dir.join("short");
    std::fs::write(&short, "tooshort\n").unwrap();
    let with_file = |f: &std::path::Path| {
        format!(
            "{LAB}\n[forwarding]\nsyn_cookie_key_file = \"{}\"\n",
            f.display()
        )
    };
    let (a, src) = parse(&with_file(&good)).unwrap().syn_cookie_key().unwrap();
    let (b, _) = parse(&with_file(&good)).unwrap().syn_cookie_key().unwrap();
    assert_eq!(src, CookieKeySource::KeyFile);
    assert!(a.is_some());
    assert_eq!(a, b, "two hosts with the same file share the key");
    assert_eq!(a, Some(cookie_key_of(b"0123456789abcdef-fleet-secret")));
    assert_ne!(a, Some(cookie_key_of(b"0123456789abcdef-other-secret")));
    let e = parse(&with_file(&short)).unwrap_err();
    assert_eq!(e.key(), "forwarding.syn_cookie_key_file", "{e}");
    assert!(e.to_string().contains("at least 16"), "{e}");
    let e = parse(&with_file(&dir.join("missing"))).unwrap_err();
    assert_eq!(e.key(), "forwarding.syn_cookie_key_file", "{e}");
    assert_eq!(
        parse(LAB).unwrap().syn_cookie_key().unwrap(),
        (None, CookieKeySource::Random)
    );
    let (k, src) = parse(&format!("{LAB}{SYNC}"))
        .unwrap()
        .syn_cookie_key()
        .unwrap();
    assert_eq!(src, CookieKeySource::SyncKey);
    assert_eq!(k, Some(cookie_key_of(b"0123456789abcdef")));
    let raw = u64::from_le_bytes(*b"01234567");
    assert!(
        k.is_some_and(|k| k.0[0] != raw),
        "derived, not the secret's bytes"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
