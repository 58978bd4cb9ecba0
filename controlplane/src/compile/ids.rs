//! Stable frontend and backend ids: an id stays with its key while the key lives, and a freed
//! id is reused only after the grace period.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sluice_dataplane::snapshot::Protocol;

use crate::model::ObjectKey;

/// Key of a frontend id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct FrontendKey {
    pub(super) service: ObjectKey,
    pub(super) vip: IpAddr,
    pub(super) protocol: Protocol,
    pub(super) port: u16,
}

/// Key of a backend id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct BackendKey {
    pub(super) frontend: u32,
    pub(super) addr: IpAddr,
    pub(super) port: u16,
}

/// Stable ids: an id stays with its key while the key lives, and is reused only after it has
/// been free for the reuse delay.
#[derive(Debug)]
pub(super) struct IdSlab<K> {
    ids: HashMap<K, u32>,
    /// Free ids and when they were freed.
    free: BTreeMap<u32, Instant>,
    next: u32,
}

impl<K> Default for IdSlab<K> {
    fn default() -> Self {
        IdSlab {
            ids: HashMap::new(),
            free: BTreeMap::new(),
            next: 0,
        }
    }
}

impl<K: Hash + Eq + Clone> IdSlab<K> {
    pub(super) fn get(&self, k: &K) -> Option<u32> {
        self.ids.get(k).copied()
    }

    /// The key's id, allocating one if needed: the lowest free id that has been free for
    /// `delay`, else a new one below `max`.
    pub(super) fn get_or_alloc(
        &mut self,
        k: &K,
        now: Instant,
        delay: Duration,
        max: usize,
    ) -> Option<u32> {
        if let Some(id) = self.ids.get(k) {
            return Some(*id);
        }
        let reusable = self
            .free
            .iter()
            .find(|(_, at)| now.saturating_duration_since(**at) >= delay)
            .map(|(id, _)| *id);
        let id = match reusable {
            Some(id) => {
                self.free.remove(&id);
                id
            }
            None if (self.next as usize) < max => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        self.ids.insert(k.clone(), id);
        Some(id)
    }

    pub(super) fn release(&mut self, k: &K, now: Instant) {
        if let Some(id) = self.ids.remove(k) {
            self.free.insert(id, now);
        }
    }

    pub(super) fn release_where(&mut self, now: Instant, mut dead: impl FnMut(&K, u32) -> bool) {
        let gone: Vec<K> = self
            .ids
            .iter()
            .filter(|(k, id)| dead(k, **id))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.release(&k, now);
        }
    }
}
