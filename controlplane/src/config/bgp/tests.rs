use super::*;

const POOLS: &[&str] = &["default", "internet"];

fn parse(s: &str) -> Result<BgpConfig, String> {
    toml::from_str::<BgpConfig>(s).map_err(|e| e.to_string())
}

fn base() -> String {
    "asn = 64512\nrouter_id = \"10.98.0.11\"\n\
     [[peers]]\naddress = \"10.98.0.1\"\nasn = 65000\n"
        .to_owned()
}

/// The error `(key, message)` of `extra` appended to a valid config.
fn invalid(extra: &str) -> (String, String) {
    let cfg = parse(&(base() + extra)).unwrap();
    cfg.validate(POOLS).unwrap_err()
}

/// The error of top-level `[bgp]` keys `extra` added to a valid config.
fn invalid_top(extra: &str) -> (String, String) {
    let cfg = parse(&(extra.to_owned() + &base())).unwrap();
    cfg.validate(POOLS).unwrap_err()
}

#[test]
fn defaults() {
    let c = parse(&base()).unwrap();
    c.validate(POOLS).unwrap();
    assert_eq!(c.mode, BirdMode::Supervised);
    assert_eq!(c.bird, PathBuf::from("/usr/sbin/bird"));
    assert_eq!(c.socket_path(), PathBuf::from("/run/sluice/bird/bird.ctl"));
    assert_eq!(c.linger_seconds, 5);
    let p = &c.peers[0];
    assert_eq!((p.port, p.hold_time, p.bfd), (179, 90, false));
    assert_eq!(
        (p.bfd_min_rx_ms, p.bfd_min_tx_ms, p.bfd_multiplier),
        (300, 300, 3)
    );
    assert_eq!(p.families(), vec![Family::Ipv4]);
    assert_eq!(p.display_name(), "10_98_0_1");
}

#[test]
fn full_example_parses() {
    let c = parse(
        r#"
asn = 64512
router_id = "10.98.0.11"
next_hop_v4 = "10.98.0.21"
next_hop_v6 = "fd00:98::21"
linger_seconds = 3
[[peers]]
name = "tor1"
address = "10.98.0.1"
asn = 65000
password = "s3cret"
hold_time = 9
bfd = true
bfd_min_rx_ms = 100
bfd_min_tx_ms = 100
families = ["ipv4", "ipv6"]
[[peers]]
address = "fd00:98::1"
asn = 65000
port = 1179
[[advertisements]]
pools = ["internet"]
communities = ["65000:100", "no-export"]
large_communities = ["64512:1:2"]
local_preference = 200
aggregation_length = 24
aggregation_length_v6 = 64
"#,
    )
    .unwrap();
    c.validate(POOLS).unwrap();
    assert_eq!(c.peers[0].families(), vec![Family::Ipv4, Family::Ipv6]);
    assert_eq!(c.peers[1].display_name(), "fd00_98__1");
    let a = &c.advertisements[0];
    assert_eq!(
        a.communities,
        vec![Community(65000, 100), Community(65535, 65281)]
    );
    assert_eq!(a.large_communities, vec![LargeCommunity(64512, 1, 2)]);
}

#[test]
fn unknown_keys_are_errors() {
    let e = parse(&(base() + "bfd_interval = 3\n")).unwrap_err();
    assert!(e.contains("unknown field `bfd_interval`"), "{e}");
    let e = parse("asn = 1\nmode = \"embedded\"\n").unwrap_err();
    assert!(e.contains("supervised") && e.contains("attach"), "{e}");
}

#[test]
fn bad_communities_are_parse_errors() {
    let e = parse(
        &(base() + "[[advertisements]]\npools = [\"default\"]\ncommunities = [\"65536:1\"]\n"),
    )
    .unwrap_err();
    assert!(e.contains("\"65536:1\" is not a BGP community"), "{e}");
    let e = parse(
        &(base() + "[[advertisements]]\npools = [\"default\"]\nlarge_communities = [\"1:2\"]\n"),
    )
    .unwrap_err();
    assert!(e.contains("is not a large community"), "{e}");
}

#[test]
fn asn_errors_name_the_key_and_the_fix() {
    let cfg = parse("asn = 0\n[[peers]]\naddress = \"10.98.0.1\"\nasn = 65000\n").unwrap();
    let (k, m) = cfg.validate(POOLS).unwrap_err();
    assert_eq!(k, "bgp.asn");
    assert!(m.contains("use 1..=4294967295"), "{m}");
    let (k, m) = invalid("[[peers]]\naddress = \"10.98.0.2\"\nasn = 0\n");
    assert_eq!(k, "bgp.peers[1].asn");
    assert!(
        m.starts_with("0 is not a valid ASN; use 1..=4294967295"),
        "{m}"
    );
    let (k, _) = invalid("[[peers]]\naddress = \"10.98.0.2\"\nasn = 23456\n");
    assert_eq!(k, "bgp.peers[1].asn");
}

#[test]
fn peer_errors() {
    let cases: &[(&str, &str, &str)] = &[
        ("[[peers]]\naddress = \"10.98.0.1\"\nasn = 1\n", "bgp.peers[1].address", "listed twice"),
        ("[[peers]]\naddress = \"0.0.0.0\"\nasn = 1\n", "bgp.peers[1].address", "cannot be a BGP neighbour"),
        ("[[peers]]\naddress = \"10.98.0.2\"\nasn = 1\nport = 0\n", "bgp.peers[1].port", "use 179"),
        ("[[peers]]\naddress = \"10.98.0.2\"\nasn = 1\nhold_time = 2\n", "bgp.peers[1].hold_time", "3..=65535"),
        ("[[peers]]\naddress = \"10.98.0.2\"\nasn = 1\nbfd_multiplier = 0\n", "bgp.peers[1].bfd_multiplier", "1..=255"),
        ("[[peers]]\naddress = \"10.98.0.2\"\nasn = 1\nbfd_min_rx_ms = 5\n", "bgp.peers[1].bfd_min_rx_ms", "10..=60000"),
        ("[[peers]]\naddress = \"10.98.0.2\"\nasn = 1\npassword = \"a\\\"b\"\n", "bgp.peers[1].password", "quote"),
        ("[[peers]]\naddress = \"10.98.0.2\"\nasn = 1\npassword = \"\"\n", "bgp.peers[1].password", "1..=80"),
        ("[[peers]]\naddress = \"10.98.0.2\"\nasn = 1\nname = \"9x\"\n", "bgp.peers[1].name", "starting"),
        ("[[peers]]\naddress = \"10.98.0.2\"\nasn = 1\nname = \"tor\"\n[[peers]]\naddress = \"10.98.0.3\"\nasn = 1\nname = \"tor\"\n", "bgp.peers[2].name", "unique"),
        ("[[peers]]\naddress = \"10.98.0.2\"\nasn = 1\nebgp_multihop = 0\n", "bgp.peers[1].ebgp_multihop", "1..=255"),
        ("[[peers]]\naddress = \"10.98.0.2\"\nasn = 1\nebgp_multihop = 2\nbfd = true\n", "bgp.peers[1].source_address", "multihop BFD"),
        ("[[peers]]\naddress = \"10.98.0.2\"\nasn = 1\nsource_address = \"fd00::1\"\n", "bgp.peers[1].source_address", "same family"),
        ("[[peers]]\naddress = \"10.98.0.2\"\nasn = 1\nfamilies = []\n", "bgp.peers[1].families", "is empty"),
        ("[[peers]]\naddress = \"10.98.0.2\"\nasn = 1\nfamilies = [\"ipv6\"]\n", "bgp.next_hop_v6", "carries the other family"),
    ];
    for (extra, key, msg) in cases {
        let (k, m) = invalid(extra);
        assert_eq!(&k, key, "{extra}: {m}");
        assert!(m.contains(msg), "{extra}: {k}: {m}");
    }
}

#[test]
fn mode_errors() {
    let (k, m) = invalid_top("mode = \"attach\"\n");
    assert_eq!(k, "bgp.socket");
    assert!(m.contains("/run/bird/bird.ctl"), "{m}");
    let (k, _) = invalid_top("mode = \"attach\"\nsocket = \"/run/bird/bird.ctl\"\n");
    assert_eq!(k, "bgp.include_file");
    let c = parse(&("mode = \"attach\"\nsocket = \"/run/bird/bird.ctl\"\ninclude_file = \"/etc/bird/sluice.conf\"\n".to_owned() + &base())).unwrap();
    c.validate(POOLS).unwrap();
    let (k, _) = invalid_top("include_file = \"/etc/bird/sluice.conf\"\n");
    assert_eq!(k, "bgp.include_file");
    let (k, _) = invalid_top("runtime_dir = \"run\"\n");
    assert_eq!(k, "bgp.runtime_dir");
    let (k, _) = invalid_top("linger_seconds = 100000\n");
    assert_eq!(k, "bgp.linger_seconds");
    let (k, _) = invalid_top("next_hop_v4 = \"0.0.0.0\"\n");
    assert_eq!(k, "bgp.next_hop_v4");
    let mut c = parse(&base()).unwrap();
    c.router_id = Some(Ipv4Addr::UNSPECIFIED);
    let (k, _) = c.validate(POOLS).unwrap_err();
    assert_eq!(k, "bgp.router_id");
    let c = parse("asn = 64512\n").unwrap();
    assert_eq!(c.validate(POOLS).unwrap_err().0, "bgp.peers");
}

#[test]
fn advertisement_errors() {
    let (k, m) = invalid("[[advertisements]]\npools = [\"nope\"]\n");
    assert_eq!(k, "bgp.advertisements[0].pools[0]");
    assert!(
        m.contains("not a configured pool") && m.contains("internet"),
        "{m}"
    );
    let (k, _) = invalid(
        "[[advertisements]]\npools = [\"default\"]\n[[advertisements]]\npools = [\"default\"]\n",
    );
    assert_eq!(k, "bgp.advertisements[1].pools[0]");
    let (k, _) = invalid("[[advertisements]]\npools = []\n");
    assert_eq!(k, "bgp.advertisements[0].pools");
    let (k, _) = invalid("[[advertisements]]\npools = [\"default\"]\naggregation_length = 33\n");
    assert_eq!(k, "bgp.advertisements[0].aggregation_length");
    let (k, _) =
        invalid("[[advertisements]]\npools = [\"default\"]\naggregation_length_v6 = 129\n");
    assert_eq!(k, "bgp.advertisements[0].aggregation_length_v6");
}
