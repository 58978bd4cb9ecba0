//! The compiler's Maglev tables: rebuilt only for changed Services, slab reuse, the
//! automatic size and the size the status leader recorded.
use super::*;

#[test]
fn only_changed_services_rebuild_maglev() {
    let cfg = cfg();
    let env = Env::new();
    let mut c = Compiler::new();
    let a = svc_yaml("a", "", "", &[("10.99.0.21", true, "n1")]);
    let b = svc_yaml("b", "", "", &[("10.99.0.22", true, "n1")]);
    let out1 = env.run(&mut c, &cfg, &model(&format!("{a}{b}")));
    assert_eq!(out1.report.maglev_rebuilt.len(), 2);
    let b2 = svc_yaml(
        "b",
        "",
        "",
        &[("10.99.0.22", true, "n1"), ("10.99.0.23", true, "n1")],
    );
    let out2 = env.run(&mut c, &cfg, &model(&format!("{a}{b2}")));
    let fb = out2
        .report
        .service(&ObjectKey::new("default", "b"))
        .unwrap()
        .frontends[0]
        .id;
    let fa = out2
        .report
        .service(&ObjectKey::new("default", "a"))
        .unwrap()
        .frontends[0]
        .id;
    assert_eq!(out2.report.maglev_rebuilt, vec![fb]);
    assert!(Arc::ptr_eq(
        &out1.snapshot.frontend(fa).unwrap().maglev,
        &out2.snapshot.frontend(fa).unwrap().maglev
    ));
    assert!(!Arc::ptr_eq(
        &out1.snapshot.frontend(fb).unwrap().maglev,
        &out2.snapshot.frontend(fb).unwrap().maglev
    ));

    // A deleted Service frees its frontend; the other keeps its id.
    let out3 = env.run(&mut c, &cfg, &model(&a));
    assert_eq!(out3.snapshot.frontends().count(), 1);
    assert_eq!(out3.snapshot.frontends().next().unwrap().id, fa);
    assert!(out3.report.maglev_rebuilt.is_empty());
}

#[test]
fn slab_reuse_delay() {
    let mut s: IdSlab<u8> = IdSlab::default();
    let t0 = Instant::now();
    let d = Duration::from_secs(5);
    assert_eq!(s.get_or_alloc(&1, t0, d, 2), Some(0));
    assert_eq!(s.get_or_alloc(&2, t0, d, 2), Some(1));
    assert_eq!(s.get_or_alloc(&1, t0, d, 2), Some(0));
    s.release(&1, t0);
    assert_eq!(
        s.get_or_alloc(&3, t0, d, 2),
        None,
        "max reached and the free id is too fresh"
    );
    assert_eq!(s.get_or_alloc(&3, t0 + d, d, 2), Some(0));
}

/// `n` ready endpoints 10.98.x.y for [`svc_yaml`].
fn endpoints(n: usize) -> Vec<(String, bool, &'static str)> {
    (0..n)
        .map(|i| (format!("10.98.{}.{}", i / 250, i % 250 + 1), true, "n1"))
        .collect()
}

fn web_with(annotations: &str, n: usize) -> Model {
    let eps = endpoints(n);
    let eps: Vec<(&str, bool, &str)> = eps.iter().map(|(a, r, n)| (a.as_str(), *r, *n)).collect();
    model(&svc_yaml("web", "", annotations, &eps))
}

fn auto_cfg() -> Config {
    Config::parse(
        &CFG.replace("maglev_size = 251", "maglev_size = \"auto\""),
        "test.toml",
    )
    .unwrap()
}

/// `maglev_size = "auto"`: the size follows the number of backends the Service lists, a
/// change of rung is reported once, and two compilers given the same inputs choose the same
/// size (every host of an ECMP group must).
#[test]
fn auto_maglev_size_follows_the_listed_backends() {
    use sluice_dataplane::maglev::{auto_size, rung_capacity, SIZE_LADDER};
    let cfg = auto_cfg();
    let env = Env::new();
    let mut c = Compiler::new();
    let size = |out: &Compiled| out.snapshot.frontends().next().unwrap().maglev.size();

    let small = rung_capacity(SIZE_LADDER[0]);
    let out = env.run(&mut c, &cfg, &web_with("", small));
    assert_eq!(size(&out), SIZE_LADDER[0]);
    assert_eq!(
        out.report.services[0].frontends[0].maglev_size,
        SIZE_LADDER[0]
    );
    assert!(
        out.report.maglev_resized.is_empty(),
        "the first table is no resize"
    );

    // One more backend crosses the rung: a resize, reported once.
    let out = env.run(&mut c, &cfg, &web_with("", small + 1));
    assert_eq!(size(&out), SIZE_LADDER[1]);
    let fid = out.snapshot.frontends().next().unwrap().id;
    assert_eq!(
        out.report.maglev_resized,
        vec![MaglevResize {
            frontend: fid,
            name: "default/web:http".into(),
            old: SIZE_LADDER[0],
            new: SIZE_LADDER[1],
            backends: small + 1,
        }]
    );
    let out = env.run(&mut c, &cfg, &web_with("", small + 2));
    assert_eq!(size(&out), SIZE_LADDER[1]);
    assert!(out.report.maglev_resized.is_empty(), "same rung");

    // Removed backends drain (this host's own timing) but do not count: back at `small`
    // listed backends, the size goes back to the first rung although 5 are in the table.
    let out = env.run(&mut c, &cfg, &web_with("", small));
    assert_eq!(
        out.report.services[0].frontends[0].backends.len(),
        small + 2
    );
    assert_eq!(size(&out), SIZE_LADDER[0]);
    assert_eq!(out.report.maglev_resized.len(), 1);

    // Health does not count either: a down backend keeps its entries and the size.
    let mut hcfg = auto_cfg();
    hcfg.health.enabled = true;
    let mut env2 = Env::new();
    let m = web_with("", small + 1);
    let mut c2 = Compiler::new();
    let out = env2.run(&mut c2, &hcfg, &m);
    assert_eq!(out.report.health_targets.len(), small + 1);
    for t in out.report.health_targets.iter().skip(1) {
        env2.health.insert(t.clone(), Health::Down);
    }
    let out = env2.run(&mut c2, &hcfg, &m);
    let fe = &out.report.services[0].frontends[0];
    let down = fe.backends.iter().filter(|b| b.state == BackendState::Down);
    assert_eq!(down.count(), small);
    assert_eq!(size(&out), SIZE_LADDER[1]);
    assert!(out.report.maglev_resized.is_empty());

    // Two compilers (two hosts) from the same inputs: the same size and table, also when
    // one of them got there through other backend counts first.
    for n in [1, 3, 4, 13, 14, 54, 55, 300] {
        let m = web_with("", n);
        let fresh = env.run(&mut Compiler::new(), &cfg, &m);
        let seasoned = env.run(&mut c, &cfg, &m);
        assert_eq!(size(&fresh), auto_size(n), "{n}");
        assert_eq!(size(&seasoned), size(&fresh), "{n}");
    }

    // The annotation still wins, with a number or "auto" (over a fixed config size).
    let out = env.run(
        &mut Compiler::new(),
        &cfg,
        &web_with("sluice.dev/maglev-size: \"257\"", 20),
    );
    assert_eq!(size(&out), 257);
    let out = env.run(
        &mut Compiler::new(),
        &self::cfg(),
        &web_with("sluice.dev/maglev-size: auto", 20),
    );
    assert_eq!(size(&out), auto_size(20));
    let out = env.run(&mut Compiler::new(), &self::cfg(), &web_with("", 20));
    assert_eq!(size(&out), 251, "a fixed tables.maglev_size");
}

/// The status leader's record of an automatic size (condition `sluice.dev/MaglevSize`, read
/// back into the model) holds the size while the backend count oscillates around a rung, and
/// every host that reads the same record chooses the same size, whatever its own history.
#[test]
fn recorded_maglev_size_holds_across_a_rung() {
    use crate::model::MaglevSizes;
    use sluice_dataplane::maglev::{rung_capacity, SIZE_LADDER};
    let cfg = auto_cfg();
    let env = Env::new();
    let size = |out: &Compiled| out.snapshot.frontends().next().unwrap().maglev.size();
    // What the leader writes for a compile, as every host reads it back from the status.
    let record = |out: &Compiled| {
        let f = &out.report.services[0].frontends[0];
        assert!(f.maglev_auto);
        MaglevSizes::parse(&format!("{}:{}/TCP={}", f.vip, f.port, f.maglev_size))
    };
    let with_record = |n: usize, rec: &MaglevSizes| {
        let mut m = web_with("", n);
        for s in m.services.values_mut() {
            s.maglev_sizes = rec.clone();
        }
        m
    };
    let cap = rung_capacity(SIZE_LADDER[0]);
    let mut leader = Compiler::new();
    let out = env.run(&mut leader, &cfg, &web_with("", cap + 1));
    assert_eq!(size(&out), SIZE_LADDER[1]);
    let rec = record(&out);

    // Back and forth across the rung: no resize while the record stands.
    for n in [cap, cap + 1, cap, cap - 1, cap + 1] {
        let out = env.run(&mut leader, &cfg, &with_record(n, &rec));
        assert_eq!(size(&out), SIZE_LADDER[1], "{n} backends");
        assert!(out.report.maglev_resized.is_empty(), "{n} backends");
        assert_eq!(record(&out), rec);
        // A host that starts now (no history) reads the record and agrees.
        let fresh = env.run(&mut Compiler::new(), &cfg, &with_record(n, &rec));
        assert_eq!(size(&fresh), SIZE_LADDER[1], "{n} backends, fresh host");
    }
    // Halved below the smaller rung's capacity: shrinks, once.
    let out = env.run(&mut leader, &cfg, &with_record(1, &rec));
    assert_eq!(size(&out), SIZE_LADDER[0]);
    assert_eq!(out.report.maglev_resized.len(), 1);
    // A record for another port, or a size that is no rung, is not used.
    let other = MaglevSizes::parse("10.99.0.1:81/TCP=4099");
    let vip = out.report.services[0].frontends[0].vip;
    let bogus = MaglevSizes::parse(&format!("{vip}:80/TCP=4093"));
    for rec in [other, bogus] {
        let out = env.run(&mut Compiler::new(), &cfg, &with_record(cap, &rec));
        assert_eq!(size(&out), SIZE_LADDER[0]);
    }
    // A fixed size (annotation) is not recorded and ignores a record.
    let mut m = web_with("sluice.dev/maglev-size: \"257\"", cap);
    for s in m.services.values_mut() {
        s.maglev_sizes = rec.clone();
    }
    let out = env.run(&mut Compiler::new(), &cfg, &m);
    assert_eq!(size(&out), 257);
    assert!(!out.report.services[0].frontends[0].maglev_auto);
}
