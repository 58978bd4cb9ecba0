//! Coverage-guided fuzzing of the parser and the whole pipeline on one raw frame, with a
//! realistic snapshot: packet by packet and through the worker's burst path. Every frame
//! transmitted must parse, carry no tag and keep its checksums
//! (`sluice_dataplane::check::transmitted`). The pipeline is built once and reset between
//! inputs. The structure-aware target is `flows.rs`.
//!
//! Run: `fuzz/run pipeline 60` (see docs/dataplane.md, "Fuzzing").
#![no_main]

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use sluice_dataplane::check::transmitted;
use sluice_dataplane::maglev::{MaglevBackend, MaglevTable};
use sluice_dataplane::pipeline::{PacketBuf, Pipeline, PipelineConfig, VecBuf, Verdict};
use sluice_dataplane::snapshot::{
    Backend, BackendState, Frontend, Local, Method, Protocol, Snapshot, SynProxy,
};
use sluice_dataplane::stats::WorkerStats;

fn snapshot() -> &'static Snapshot {
    static S: OnceLock<Snapshot> = OnceLock::new();
    S.get_or_init(|| {
        let names = ["a", "b"];
        let mb: Vec<_> = names
            .iter()
            .map(|n| MaglevBackend { id: n, weight: 1 })
            .collect();
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
            flow_limit: None,
            source_flow_limit: None,
            syn_proxy: SynProxy::Off,
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
            vec![
                fe(0, "192.0.2.1", Method::Nat),
                fe(1, "192.0.2.2", Method::DsrIpip),
                fe(2, "2001:db8::1", Method::DsrL2),
            ],
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

thread_local! {
    static PIPE: RefCell<Pipeline> = RefCell::new({
        let cfg = PipelineConfig {
            conntrack: sluice_dataplane::conntrack::ConntrackConfig { capacity: 64, ..Default::default() },
            conntrack_v6_capacity: 64,
            affinity_capacity: 64,
            ..PipelineConfig::default()
        };
        Pipeline::new(&cfg, Arc::new(WorkerStats::new(16)))
    });
}

fn check(input: &[u8], out: &VecBuf, v: Verdict) {
    if v == Verdict::Tx {
        if let Err(e) = transmitted(input, out.data()) {
            panic!("invariant violated: {e}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = sluice_dataplane::wire::parse::parse(data);
    PIPE.with(|p| {
        let mut p = p.borrow_mut();
        p.reset(Arc::new(WorkerStats::new(16)));
        let mut b = VecBuf::new(data);
        let v = p.process(snapshot(), &mut b, 1);
        check(data, &b, v);
        // The worker's burst path on the same input: the frame twice in one burst (the first
        // processing may create the flow the second finds), then split in two frames.
        let halves = data.split_at(data.len() / 2);
        for (x, y) in [(data, data), halves] {
            let mut frames = [VecBuf::new(x), VecBuf::new(y)];
            let mut verdicts = [Verdict::Tx; 2];
            p.process_burst(snapshot(), &mut frames, 2, &mut verdicts);
            check(x, &frames[0], verdicts[0]);
            check(y, &frames[1], verdicts[1]);
        }
    });
});
