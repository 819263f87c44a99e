//! Where the store keeps superseded records (history): in memory, or in the log with only their
//! locations in memory (`engine::DurableHistory`). The store itself does not care which.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::{MvccError, Record, Revision};

pub trait History {
    /// Records the state of a key at `rev` (every put and delete goes through here).
    fn insert(&mut self, rev: Revision, rec: &Arc<Record>);
    /// The record at `rev`, if history still has it.
    fn get(&self, rev: Revision) -> Result<Option<Arc<Record>>, MvccError>;
    /// Drops every record at or below main revision `at`, except those in `keep`.
    fn compact(&mut self, at: i64, keep: &HashSet<Revision>);
    /// Records held.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes of the records held, roughly.
    fn bytes(&self) -> usize;
    /// Revisions held from `from` on, in order.
    fn revisions_from(&self, from: Revision) -> Vec<Revision>;
    /// Revisions held from `from` up to (not including) main revision `until`, in order.
    fn revisions_until(&self, from: Revision, until: i64) -> Vec<Revision>;
}

/// History in memory: every record kept as is.
#[derive(Default)]
pub struct MemHistory {
    map: BTreeMap<Revision, Arc<Record>>,
    bytes: usize,
}

impl History for MemHistory {
    fn insert(&mut self, rev: Revision, rec: &Arc<Record>) {
        self.bytes += rec.cost_bytes();
        self.map.insert(rev, rec.clone());
    }

    fn get(&self, rev: Revision) -> Result<Option<Arc<Record>>, MvccError> {
        Ok(self.map.get(&rev).cloned())
    }

    fn compact(&mut self, at: i64, keep: &HashSet<Revision>) {
        let doomed: Vec<Revision> = self
            .map
            .range(..=Revision { main: at, sub: i64::MAX })
            .map(|(r, _)| *r)
            .filter(|r| !keep.contains(r))
            .collect();
        for r in doomed {
            if let Some(rec) = self.map.remove(&r) {
                self.bytes -= rec.cost_bytes();
            }
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn bytes(&self) -> usize {
        self.bytes
    }

    fn revisions_from(&self, from: Revision) -> Vec<Revision> {
        self.map.range(from..).map(|(r, _)| *r).collect()
    }

    fn revisions_until(&self, from: Revision, until: i64) -> Vec<Revision> {
        self.map.range(from..Revision { main: until, sub: 0 }).map(|(r, _)| *r).collect()
    }
}
