//! etcd's leases: the table the shard keeps (grants and revocations arrive through raft, so
//! every replica holds the same leases and deletes the same keys at the same revision), the keys
//! attached to each, and their expiry (decided by the leader: kept in memory, reset to a full TTL
//! whenever this member becomes leader or restarts, as etcd does without lease checkpoints).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metastore_storage::engine::Reader;
use metastore_storage::mvcc::{Event, EventKind};

use crate::etcd::kv::Leases;

/// etcd's largest TTL (`MaxLeaseTTL`), seconds.
pub const TTL_MAX: i64 = 9_000_000_000;
/// How often the leader looks for expired leases (etcd: 500 ms).
pub const EXPIRY_CHECK: Duration = Duration::from_millis(500);
/// Revocations proposed per check at most (etcd: 1,000 per second).
pub const REVOKES_PER_CHECK: usize = 500;

#[derive(Debug)]
pub struct Lease {
    /// The TTL granted, seconds.
    pub ttl: i64,
    pub expiry: Instant,
    pub keys: BTreeSet<Arc<[u8]>>,
    /// A revocation for it has been proposed (expiry) and not applied yet.
    pub revoking: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: BTreeMap<i64, Lease>,
}

impl Leases for LeaseTable {
    fn exists(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }
}

impl LeaseTable {
    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.leases.keys().copied()
    }

    /// Adds a lease (applied from raft); false if the ID is taken.
    pub fn grant(&mut self, id: i64, ttl: i64, now: Instant) -> bool {
        if self.leases.contains_key(&id) {
            return false;
        }
        self.leases.insert(id, Lease { ttl, expiry: now + secs(ttl), keys: BTreeSet::new(), revoking: None });
        true
    }

    /// Removes a lease (applied from raft); returns its keys, in order.
    pub fn revoke(&mut self, id: i64) -> Option<Vec<Arc<[u8]>>> {
        self.leases.remove(&id).map(|l| l.keys.into_iter().collect())
    }

    /// A keep-alive: the lease lives a full TTL from now. Returns the TTL, or None when the
    /// lease is unknown or already expired.
    pub fn renew(&mut self, id: i64, now: Instant) -> Option<i64> {
        let l = self.leases.get_mut(&id)?;
        if l.expiry <= now {
            return None;
        }
        l.expiry = now + secs(l.ttl);
        Some(l.ttl)
    }

    /// Every lease lives a full TTL from now (this member became leader, or restarted).
    pub fn reset_expiry(&mut self, now: Instant) {
        for l in self.leases.values_mut() {
            l.expiry = now + secs(l.ttl);
            l.revoking = None;
        }
    }

    /// Keeps the key-to-lease attachments in step with a write's changes.
    pub fn track(&mut self, events: &[Event]) {
        for e in events {
            let prev = e.prev.as_ref().map_or(0, |p| p.lease);
            let now = if e.kind == EventKind::Put { e.kv.lease } else { 0 };
            if prev == now {
                continue;
            }
            if let Some(l) = self.leases.get_mut(&prev) {
                l.keys.remove(&e.kv.key);
            }
            if let Some(l) = self.leases.get_mut(&now) {
                l.keys.insert(e.kv.key.clone());
            }
        }
    }

    /// Attaches a key found with a lease when the store is loaded from a checkpoint.
    pub fn attach(&mut self, id: i64, key: Arc<[u8]>) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.keys.insert(key);
        }
    }

    /// Expired leases no revocation is on its way for (at most `max`); they are marked.
    pub fn expired(&mut self, now: Instant, max: usize) -> Vec<i64> {
        let mut out = Vec::new();
        for (id, l) in self.leases.iter_mut() {
            if out.len() >= max {
                break;
            }
            // A revocation proposed long ago that never applied is proposed again.
            let pending = l.revoking.is_some_and(|at| now.duration_since(at) < Duration::from_secs(5));
            if l.expiry <= now && !pending {
                l.revoking = Some(now);
                out.push(*id);
            }
        }
        out
    }

    /// Whole seconds left (truncated; etcd's clients expect expiry within TTL + 1 s).
    pub fn remaining(&self, id: i64, now: Instant) -> Option<i64> {
        let l = self.leases.get(&id)?;
        Some(l.expiry.saturating_duration_since(now).as_secs() as i64)
    }

    /// The checkpoint section: u32 count, then per lease i64 ID and i64 TTL.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(4 + 16 * self.leases.len());
        b.extend_from_slice(&(self.leases.len() as u32).to_le_bytes());
        for (id, l) in &self.leases {
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&l.ttl.to_le_bytes());
        }
        b
    }

    pub fn decode(p: &[u8], now: Instant) -> Result<Self, String> {
        let mut r = Reader::new(p);
        let n = r.u32()?;
        let mut t = LeaseTable::default();
        for _ in 0..n {
            let id = r.u64()? as i64;
            let ttl = r.u64()? as i64;
            t.grant(id, ttl, now);
        }
        Ok(t)
    }
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(ttl.clamp(0, TTL_MAX) as u64)
}

/// A new lease ID when the client asks the server to pick (etcd: its request-ID generator,
/// member bits, time and a counter, top bit cleared; clients treat it as opaque).
pub fn new_id(member_id: u64, counter: u64, unix_ms: u64) -> i64 {
    let prefix = (member_id & 0xffff) << 48;
    let suffix = ((unix_ms << 8) & 0x0000_ffff_ffff_ffff).wrapping_add(counter) & 0x0000_ffff_ffff_ffff;
    let id = ((prefix | suffix) & (i64::MAX as u64)) as i64;
    if id == 0 {
        1
    } else {
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metastore_storage::mvcc::Record;

    fn rec(key: &str, lease: i64) -> Arc<Record> {
        Arc::new(Record {
            key: Arc::from(key.as_bytes()),
            value: Arc::from(&b"v"[..]),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease,
            tombstone: false,
        })
    }

    #[test]
    fn keys_follow_puts_and_deletes_and_leases_expire_once() {
        let now = Instant::now();
        let mut t = LeaseTable::default();
        assert!(t.grant(1, 10, now));
        assert!(t.grant(2, 10, now));
        assert!(!t.grant(1, 5, now), "taken");
        let put = |k: &str, prev: Option<i64>, lease: i64| Event {
            kind: EventKind::Put,
            kv: rec(k, lease),
            prev: prev.map(|p| rec(k, p)),
        };
        t.track(&[put("a", None, 1), put("b", None, 1)]);
        t.track(&[put("a", Some(1), 2)]);
        assert_eq!(t.get(1).unwrap().keys.len(), 1);
        assert_eq!(t.get(2).unwrap().keys.len(), 1);
        t.track(&[Event { kind: EventKind::Delete, kv: rec("b", 0), prev: Some(rec("b", 1)) }]);
        assert!(t.get(1).unwrap().keys.is_empty());
        assert_eq!(t.remaining(1, now), Some(10));
        assert_eq!(t.renew(1, now + Duration::from_secs(5)), Some(10));
        let later = now + Duration::from_secs(12);
        assert_eq!(t.expired(later, 10), vec![2], "lease 1 was renewed at +5 s");
        assert!(t.expired(later, 10).is_empty(), "a revocation is on its way");
        assert_eq!(t.renew(2, later), None, "expired");
        assert_eq!(t.revoke(2).unwrap().len(), 1);
        let back = LeaseTable::decode(&t.encode(), now).unwrap();
        assert_eq!(back.ids().collect::<Vec<_>>(), vec![1]);
        assert!(new_id(0xabcd, 1, 1_700_000_000_000) > 0);
    }
}
