//! One key's revisions, in generations, as etcd keeps them: a generation is one incarnation of
//! the key, from the put that created it to the delete (tombstone) that ended it. The last
//! generation is the live one, or empty when the key is deleted.

use super::Revision;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Generation {
    /// Puts since creation (the tombstone does not count).
    pub ver: i64,
    pub created: Revision,
    /// Every revision of this incarnation in order; in an ended generation the last one is the
    /// tombstone.
    pub revs: Vec<Revision>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIndex {
    pub modified: Revision,
    pub generations: Vec<Generation>,
}

/// Where a key stood at some revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub modified: Revision,
    pub created: Revision,
    pub version: i64,
}

impl Default for KeyIndex {
    fn default() -> Self {
        Self { modified: Revision::default(), generations: vec![Generation::default()] }
    }
}

impl KeyIndex {
    /// Whether the key exists now.
    pub fn is_live(&self) -> bool {
        self.generations.last().is_some_and(|g| !g.revs.is_empty())
    }

    /// Records a put at `rev`.
    pub fn put(&mut self, rev: Revision) {
        debug_assert!(rev > self.modified, "revisions only grow");
        if self.generations.is_empty() {
            self.generations.push(Generation::default());
        }
        let last = self.generations.len() - 1;
        let g = &mut self.generations[last];
        if g.revs.is_empty() {
            g.created = rev;
        }
        g.revs.push(rev);
        g.ver += 1;
        self.modified = rev;
    }

    /// Records a delete at `rev`: the tombstone ends the live generation.
    pub fn tombstone(&mut self, rev: Revision) {
        debug_assert!(self.is_live(), "only a live key is deleted");
        self.put(rev);
        self.generations.push(Generation::default());
    }

    /// The key at revision `at` (main revision), or None if it did not exist then.
    pub fn get(&self, at: i64) -> Option<Found> {
        let g = self.find_generation(at)?;
        let idx = g.revs.iter().rposition(|r| r.main <= at)?;
        Some(Found { modified: g.revs[idx], created: g.created, version: g.ver - (g.revs.len() - idx - 1) as i64 })
    }

    fn find_generation(&self, at: i64) -> Option<&Generation> {
        let last = self.generations.len().checked_sub(1)?;
        for (i, g) in self.generations.iter().enumerate().rev() {
            let Some(first) = g.revs.first() else {
                continue;
            };
            if i != last {
                let tomb = g.revs.last().map_or(0, |r| r.main);
                if tomb <= at {
                    return None; // deleted at or before `at`
                }
            }
            if first.main <= at {
                return Some(g);
            }
        }
        None
    }

    /// Drops revisions superseded before `at` (etcd's keyIndex.compact). Returns the revision
    /// kept as this key's state at `at` (it must stay readable), if any; `None` with an emptied
    /// index means the key can be removed.
    pub fn compact(&mut self, at: i64) -> Option<Revision> {
        let mut gen_idx = 0;
        while gen_idx + 1 < self.generations.len() {
            let tomb = self.generations[gen_idx].revs.last().map_or(0, |r| r.main);
            if tomb > at {
                break;
            }
            gen_idx += 1;
        }
        let mut kept = None;
        let ended = gen_idx + 1 < self.generations.len();
        let g = &mut self.generations[gen_idx];
        if let Some(idx) = g.revs.iter().rposition(|r| r.main <= at) {
            g.revs.drain(..idx);
            kept = g.revs.first().copied();
            if g.revs.len() == 1 && ended {
                // Only the tombstone is left: the incarnation is gone entirely.
                kept = None;
                gen_idx += 1;
            }
        }
        self.generations.drain(..gen_idx);
        kept
    }

    /// Nothing left: no generation with any revision.
    pub fn is_empty(&self) -> bool {
        self.generations.iter().all(|g| g.revs.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision { main, sub: 0 }
    }

    /// The history used by etcd's own key index tests: puts at 2, 4, 6(tomb), 8, 10, 12(tomb), 14, 16.
    fn sample() -> KeyIndex {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.put(r(4));
        ki.tombstone(r(6));
        ki.put(r(8));
        ki.put(r(10));
        ki.tombstone(r(12));
        ki.put(r(14));
        ki.put(r(16));
        ki
    }

    #[test]
    fn get_walks_generations() {
        let ki = sample();
        assert_eq!(ki.get(1), None);
        assert_eq!(ki.get(2), Some(Found { modified: r(2), created: r(2), version: 1 }));
        assert_eq!(ki.get(5), Some(Found { modified: r(4), created: r(2), version: 2 }));
        assert_eq!(ki.get(6), None, "deleted at 6");
        assert_eq!(ki.get(7), None);
        assert_eq!(ki.get(9), Some(Found { modified: r(8), created: r(8), version: 1 }));
        assert_eq!(ki.get(11), Some(Found { modified: r(10), created: r(8), version: 2 }));
        assert_eq!(ki.get(12), None);
        assert_eq!(ki.get(15), Some(Found { modified: r(14), created: r(14), version: 1 }));
        assert_eq!(ki.get(100), Some(Found { modified: r(16), created: r(14), version: 2 }));
        assert!(ki.is_live());
    }

    #[test]
    fn compaction_keeps_what_is_readable() {
        let mut ki = sample();
        assert_eq!(ki.compact(1), None);
        assert_eq!(ki.generations[0].revs, [r(2), r(4), r(6)]);
        assert_eq!(ki.compact(5), Some(r(4)));
        assert_eq!(ki.get(5).map(|f| f.modified), Some(r(4)));
        assert_eq!(ki.generations[0].revs, [r(4), r(6)]);
        assert_eq!(ki.compact(6), None, "deleted at 6: nothing of that incarnation is needed");
        assert_eq!(ki.generations[0].revs, [r(8), r(10), r(12)]);
        assert_eq!(ki.compact(11), Some(r(10)));
        assert_eq!(ki.get(11).map(|f| (f.modified, f.version)), Some((r(10), 2)));
        assert_eq!(ki.compact(13), None);
        assert_eq!(ki.generations.len(), 1);
        assert_eq!(ki.compact(16), Some(r(16)));
        assert_eq!(ki.generations[0].revs, [r(16)]);
        assert_eq!(ki.get(16).map(|f| f.version), Some(2), "version survives compaction");
    }

    #[test]
    fn a_deleted_key_compacts_to_nothing() {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.tombstone(r(3));
        assert_eq!(ki.compact(3), None);
        assert!(ki.is_empty());
    }
}
