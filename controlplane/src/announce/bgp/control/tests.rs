use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use super::*;

/// `show protocols all` from BIRD 2.0.12 (lab capture, shortened): an established session,
/// a session refused for a bad peer AS, a static protocol.
const PROTOCOLS: &str = "2002-Name       Proto      Table      State  Since         Info
1002-sluice_device Device     ---        up     1796406470    
1006-
1002-sluice_v4  Static     sluice4    up     1796406470    
1006-  Channel ipv4
     State:          UP
     Table:          sluice4
     Routes:         1 imported, 0 exported, 1 preferred
 
1002-sluice_tor1 BGP        ---        up     1796406470    Established   
1006-  BGP state:          Established
     Neighbor address: 10.98.0.1
     Neighbor AS:      65000
     Local AS:         64512
     Neighbor ID:      10.98.0.1
     Session:          external AS4
     Hold timer:       5.835/9
   Channel ipv4
     State:          UP
     Routes:         0 imported, 2 exported, 0 preferred
     Route change stats:     received   rejected   filtered    ignored   accepted
       Import updates:              0          0          0          0          0
     BGP Next hop:   10.98.0.21
 
1002-sluice_bad BGP        ---        start  2024-05-01 12:34:56  Idle          BGP Error: Bad peer AS
1006-  BGP state:          Idle
     Neighbor address: fd00:98::1
     Neighbor AS:      65099
     Local AS:         64512
     Error wait:       44.587/60
     Last error:       BGP Error: Bad peer AS
   Channel ipv6
     State:          DOWN
 
0000 
";

const BFD: &str = "1020-sluice_bfd:
 IP address                Interface  State      Since         Interval  Timeout
 10.98.0.1                 h0         Up         1796406470      0.100    0.300
 fd00:98::1                h0         Init       1796406470      1.000    3.000
0000 
";

/// Serves one connection: greeting, then for each command line the canned reply.
fn fake_bird(replies: Vec<(&'static str, &'static str)>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bird.ctl");
    let l = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut w = s.try_clone().unwrap();
        w.write_all(b"0001 BIRD 2.0.12 ready.\n").unwrap();
        let mut r = BufReader::new(s);
        for (cmd, reply) in replies {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert_eq!(line.trim_end(), cmd);
            w.write_all(reply.as_bytes()).unwrap();
        }
    });
    (dir, path)
}

#[test]
fn reply_lines() {
    assert!(matches!(
        parse_reply_line("0001 BIRD ready."),
        Some(Parsed::Coded {
            code: 1,
            last: true,
            text: "BIRD ready."
        })
    ));
    assert!(matches!(
        parse_reply_line("1002-x"),
        Some(Parsed::Coded {
            code: 1002,
            last: false,
            text: "x"
        })
    ));
    assert!(matches!(
        parse_reply_line(" cont"),
        Some(Parsed::Continuation("cont"))
    ));
    assert!(matches!(
        parse_reply_line("+spont"),
        Some(Parsed::Spontaneous)
    ));
    assert!(matches!(
        parse_reply_line("0000"),
        Some(Parsed::Coded {
            code: 0,
            last: true,
            ..
        })
    ));
    assert!(parse_reply_line("hello").is_none());
    assert!(parse_reply_line("12a4 x").is_none());
}

#[test]
fn protocols_over_a_socket() {
    let (_d, path) = fake_bird(vec![
        ("show protocols all", PROTOCOLS),
        ("show bfd sessions", BFD),
    ]);
    let mut c = Control::connect(&path, Duration::from_secs(2)).unwrap();
    let ps = c.protocols().unwrap();
    let names: Vec<&str> = ps.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["sluice_device", "sluice_v4", "sluice_tor1", "sluice_bad"]
    );
    let st = &ps[1];
    assert_eq!((st.proto.as_str(), st.routes_imported), ("Static", 1));
    let up = &ps[2];
    assert_eq!(up.proto, "BGP");
    assert_eq!(up.state, "up");
    assert_eq!(up.since, "1796406470");
    assert_eq!(up.info, "Established");
    assert_eq!(up.bgp_state.as_deref(), Some("Established"));
    assert_eq!(up.neighbor_address, Some("10.98.0.1".parse().unwrap()));
    assert_eq!(up.neighbor_as, Some(65000));
    assert_eq!((up.routes_imported, up.routes_exported), (0, 2));
    assert_eq!(up.last_error, None);
    let bad = &ps[3];
    assert_eq!(bad.since, "2024-05-01 12:34:56");
    assert_eq!(bad.info, "Idle          BGP Error: Bad peer AS");
    assert_eq!(
        BgpState::parse(bad.bgp_state.as_deref().unwrap()),
        BgpState::Idle
    );
    assert_eq!(bad.neighbor_address, Some("fd00:98::1".parse().unwrap()));
    assert_eq!(bad.last_error.as_deref(), Some("BGP Error: Bad peer AS"));
    let bfd = c.bfd_sessions().unwrap();
    assert_eq!(bfd.len(), 2);
    assert_eq!(bfd[0].address, "10.98.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(bfd[0].state, "Up");
    assert_eq!(bfd[0].interface.as_deref(), Some("h0"));
    assert_eq!(bfd[1].state, "Init");
}

#[test]
fn errors_carry_birds_code_and_text() {
    let (_d, path) = fake_bird(vec![
        ("configure", "0002-Reading configuration from /x/bird.conf\n8002 /x/prefixes.conf, line 3: syntax error\n"),
        ("show bfd sessions", "8003 No protocols match\n"),
        ("configure", "0002-Reading configuration from /x/bird.conf\n0003 Reconfigured\n"),
    ]);
    let mut c = Control::connect(&path, Duration::from_secs(2)).unwrap();
    match c.configure() {
        Err(ControlError::Refused {
            code: 8002, text, ..
        }) => assert!(text.contains("syntax error")),
        other => panic!("{other:?}"),
    }
    assert!(c.bfd_sessions().unwrap().is_empty());
    assert_eq!(c.configure().unwrap(), "Reconfigured");
}

#[test]
fn no_socket_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = Control::connect(&dir.path().join("none.ctl"), Duration::from_secs(1))
        .err()
        .unwrap();
    assert!(e.to_string().contains("check that BIRD runs"), "{e}");
}

#[test]
fn state_names() {
    for (s, st) in [
        ("Established", BgpState::Established),
        ("OpenSent", BgpState::OpenSent),
        ("Connect", BgpState::Connect),
        ("Active", BgpState::Active),
    ] {
        assert_eq!(BgpState::parse(s), st);
    }
    assert_eq!(BgpState::parse("Weird"), BgpState::Other("Weird".into()));
}
