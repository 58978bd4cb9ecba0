//! Coverage-guided fuzzing of the parser and the whole pipeline with a realistic snapshot.
//! Run: `cargo install cargo-fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run pipeline -- -max_total_time=60`
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use sluice_dataplane::maglev::{MaglevBackend, MaglevTable};
use sluice_dataplane::pipeline::{Pipeline, PipelineConfig, VecBuf, Verdict};
use sluice_dataplane::snapshot::{Backend, BackendState, Frontend, Local, Method, Protocol, Snapshot};
use sluice_dataplane::stats::WorkerStats;

fn snapshot() -> &'static Snapshot {
    static S: OnceLock<Snapshot> = OnceLock::new();
    S.get_or_init(|| {
        let names = ["a", "b"];
        let mb: Vec<_> = names.iter().map(|n| MaglevBackend { id: n, weight: 1 }).collect();
        let maglev = Arc::new(MaglevTable::build(&mb, 251, 1).unwrap());
        let fe = |id: u32, vip: &str, method| Frontend {
            id,
            service: Arc::from("default/fuzz"),
            vip: vip.parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
            method,
            affinity_ms: None,
            source_ranges: vec![],
            backends: vec![0, 1],
            maglev: maglev.clone(),
        };
        let be = |id: u32, a: &str| Backend {
            id,
            addr: a.parse().unwrap(),
            port: 8080,
            mac: Some([2, 0, 0, 0, 1, id as u8]),
            weight: 1,
            state: BackendState::Active,
        };
        Snapshot::new(
            1,
            1,
            vec![fe(0, "192.0.2.1", Method::Nat), fe(1, "192.0.2.2", Method::DsrIpip), fe(2, "2001:db8::1", Method::DsrL2)],
            vec![be(0, "10.0.1.1"), be(1, "10.0.1.2")],
            Local {
                mac: [2, 0, 0, 0, 0, 1],
                ipv4: vec![[10, 0, 0, 2]],
                ipv6: vec![[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]],
                nat_ipv4: vec![[10, 0, 0, 3]],
                nat_ipv6: vec![],
                nat_port_min: 20000,
                nat_port_max: 30000,
                nat_ipv4_peers: 0,
                nat_ipv6_peers: 0,
                mtu: 1500,
            },
            16,
        )
        .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = sluice_dataplane::wire::parse::parse(data);
    let cfg = PipelineConfig {
        conntrack: sluice_dataplane::conntrack::ConntrackConfig { capacity: 64, ..Default::default() },
        conntrack_v6_capacity: 64,
        affinity_capacity: 64,
        ..PipelineConfig::default()
    };
    let mut p = Pipeline::new(&cfg, Arc::new(WorkerStats::new(16)));
    let mut b = VecBuf::new(data);
    let _ = p.process(snapshot(), &mut b, 1);
    // The worker's burst path on the same input: the frame twice in one burst (the first
    // processing may create the flow the second finds), then split in two frames.
    let mut burst = [VecBuf::new(data), VecBuf::new(data)];
    if data.len() > 1 {
        let (x, y) = data.split_at(data.len() / 2);
        burst = [VecBuf::new(x), VecBuf::new(y)];
    }
    for frames in [[VecBuf::new(data), VecBuf::new(data)], burst] {
        let mut frames = frames;
        let mut verdicts = [Verdict::Tx; 2];
        p.process_burst(snapshot(), &mut frames, 2, &mut verdicts);
    }
});
