//! The per-frontend Maglev table cache: a table is rebuilt only when its inputs change.

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_dataplane::maglev::{MaglevBackend, MaglevTable};

use super::report::BackendReport;
use super::Compiler;

/// What a cached Maglev table was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MaglevKey {
    backends: Vec<(u32, String, u32)>,
    size: u32,
    seed: u64,
}

impl Compiler {
    /// The size of the frontend's cached table, and whether it has entries (`None`: no table
    /// yet).
    pub(super) fn maglev_size_of(&self, fid: u32) -> Option<(u32, bool)> {
        self.maglev.get(&fid).map(|(k, t)| (k.size, !t.is_empty()))
    }

    /// The frontend's Maglev table: the cached one when its inputs are unchanged, else a new
    /// build (second value true).
    pub(super) fn maglev_table(
        &mut self,
        fid: u32,
        backends: &[BackendReport],
        size: u32,
        seed: u64,
    ) -> Result<(Arc<MaglevTable>, bool), sluice_dataplane::maglev::MaglevError> {
        let key = MaglevKey {
            backends: backends
                .iter()
                .map(|b| (b.id, SocketAddr::new(b.addr, b.port).to_string(), b.weight))
                .collect(),
            size,
            seed,
        };
        if let Some((k, t)) = self.maglev.get(&fid) {
            if *k == key {
                return Ok((t.clone(), false));
            }
        }
        let mb: Vec<MaglevBackend<'_>> = key
            .backends
            .iter()
            .map(|(_, id, w)| MaglevBackend { id, weight: *w })
            .collect();
        let table = Arc::new(MaglevTable::build(&mb, size, seed)?);
        self.maglev.insert(fid, (key, table.clone()));
        Ok((table, true))
    }
}
