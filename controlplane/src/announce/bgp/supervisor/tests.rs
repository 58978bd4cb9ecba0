use std::net::IpAddr;
use std::process::Command;

use super::*;

fn cfg(dir: &Path) -> BgpConfig {
    let mut c: BgpConfig = toml::from_str(
        r#"
asn = 64512
router_id = "192.0.2.11"
[[peers]]
name = "nowhere"
address = "192.0.2.1"
asn = 65000
password = "pw"
"#,
    )
    .unwrap();
    c.runtime_dir = dir.to_owned();
    c
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn missing_bird_is_a_clear_error_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.bird = dir.path().join("no-such-bird");
    let e = Announcer::start(c, StartOptions::default()).err().unwrap();
    assert!(matches!(e, BgpError::BirdMissing { .. }), "{e}");
    assert!(e.to_string().contains("apt-get install bird2"), "{e}");
    assert!(!dir.path().join("bird.conf").exists());
}

#[test]
fn a_bird_that_cannot_start_reports_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    // `false` starts and exits 1 at once: reported as such, with no hang.
    c.bird = PathBuf::from("/bin/false");
    let t = Instant::now();
    let e = Announcer::start(c, StartOptions::default()).err().unwrap();
    assert!(matches!(e, BgpError::Exited { .. }), "{e}");
    assert!(e.to_string().contains("exit status: 1"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// A real BIRD (needs root for port 179; the suite runs as root): start, announce, idempotent
/// updates, status of a peer that cannot connect, restart after SIGKILL, stop.
#[test]
fn supervised_bird_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let a = Announcer::start(c, StartOptions::default()).unwrap();
    let p = a.process();
    assert_eq!(p.starts, 1);
    let pid = p.pid.unwrap();

    let wanted = [
        Announcement::vip(ip("198.51.100.10"), "default"),
        Announcement::host(ip("2001:db8::21")),
    ];
    assert!(a.set_prefixes(&wanted).unwrap());
    assert!(
        !a.set_prefixes(&wanted).unwrap(),
        "same set reconfigured again"
    );
    assert_eq!(a.announced().unwrap().len(), 2);
    let inc = std::fs::read_to_string(dir.path().join("prefixes.conf")).unwrap();
    assert!(inc.contains("route 198.51.100.10/32 blackhole;"), "{inc}");
    assert!(inc.contains("route 2001:db8::21/128 blackhole;"), "{inc}");
    // BIRD runs what the file says.
    let mut ctl = Control::connect(&a.cfg.socket_path(), Duration::from_secs(2)).unwrap();
    let st = ctl
        .protocols()
        .unwrap()
        .into_iter()
        .find(|p| p.name == "sluice_v4")
        .unwrap();
    assert_eq!(st.routes_imported, 1);

    let s = a.status().unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].name, "nowhere");
    assert_eq!(s[0].protocol, "sluice_nowhere");
    assert_ne!(s[0].state, BgpState::Established);
    assert!(s[0].since_unix.is_some(), "{:?}", s[0].since);
    assert_eq!(s[0].bfd, None);

    // SIGKILL: the supervisor starts it again, with the same prefixes.
    let k = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(k.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = a.process();
        if p.starts == 2 && p.pid.is_some() && a.status().is_ok() {
            let exit = p.last_exit.unwrap();
            assert!(exit.contains("SIGKILL"), "{exit}");
            break;
        }
        assert!(Instant::now() < deadline, "BIRD not restarted: {p:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut ctl = Control::connect(&a.cfg.socket_path(), Duration::from_secs(2)).unwrap();
    let st = ctl
        .protocols()
        .unwrap()
        .into_iter()
        .find(|p| p.name == "sluice_v6")
        .unwrap();
    assert_eq!(st.routes_imported, 1, "restarted BIRD lost the prefixes");

    assert!(a.withdraw_all().unwrap());
    assert!(a.announced().unwrap().is_empty());
    let pid2 = a.process().pid.unwrap();
    a.stop();
    assert!(
        !Path::new(&format!("/proc/{pid2}")).exists() || {
            // A zombie is reaped by stop(); give the kernel a moment.
            std::thread::sleep(Duration::from_millis(200));
            !Path::new(&format!("/proc/{pid2}")).exists()
        }
    );
}
