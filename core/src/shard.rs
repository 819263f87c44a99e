//! The data shard: the one owner of the keyspace's state (Stage 1: one shard, on core 0).
//! Requests reach it as a plain call from its own core and over a ring from the others; it
//! answers every request exactly once. It owns the MVCC store, the serving status reported by
//! the health service, and what Status and MemberList report.

use std::collections::HashMap;
use std::time::Instant;

use metastore_net::grpc::Status;
use metastore_proto::etcdserverpb as pb;
use metastore_proto::health::health_check_response::ServingStatus;
use metastore_storage::mvcc::Store;
use prost::Message;

use crate::etcd::kv::{self, Header, Ids, NoLeases};

/// Which call a reply belongs to: a connection on some core (slab slot and generation, so a
/// reused slot never receives a stale reply) and the HTTP/2 stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallRef {
    pub conn_slot: u32,
    pub conn_gen: u32,
    pub stream: u32,
}

#[derive(Debug)]
pub enum ShardRequest {
    /// The serving status of a gRPC service name ("" = the whole server).
    Health {
        service: String,
    },
    Range(pb::RangeRequest),
    Put(pb::PutRequest),
    DeleteRange(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Compact(pb::CompactionRequest),
    Status,
    MemberList,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ShardReply {
    /// None: the name is not known.
    Health(Option<ServingStatus>),
    /// The response message, encoded.
    Encoded(Vec<u8>),
    /// The request failed with an etcd error.
    Error(Status),
    /// The request's deadline passed before the shard started it; it was dropped unexecuted.
    DeadlineExceeded,
}

/// How a request ended, when its response was encoded into a caller's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The response message is in the buffer.
    Encoded,
    Health(Option<ServingStatus>),
    Error(Status),
    DeadlineExceeded,
}

/// Who this member is, as Status and MemberList report it.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub ids: Ids,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// Capacity of a reply buffer sent across cores: fits a small response without regrowing.
const REPLY_BYTES_INITIAL: usize = 1024;

/// etcd's API level, reported by Status (clients check it is at least 3.4).
pub const VERSION: &str = "3.5.0";
/// What an empty store costs, so that dbSize is never 0 (etcd's empty bbolt file is 20 KiB).
const DB_BASE_BYTES: i64 = 20 << 10;

/// A request on its way to the shard.
#[derive(Debug)]
pub struct Envelope {
    pub call: CallRef,
    pub deadline: Option<Instant>,
    pub req: ShardRequest,
}

/// A reply on its way back to the connection's core.
#[derive(Debug)]
pub struct ReplyEnvelope {
    pub call: CallRef,
    pub reply: ShardReply,
}

pub struct Shard {
    serving: HashMap<String, ServingStatus>,
    store: Store,
    member: MemberInfo,
    /// Write requests applied (what raft's applied index will count).
    applied_index: u64,
}

impl Shard {
    pub fn new(member: MemberInfo) -> Self {
        // As etcd: the server as a whole ("") is registered, and SERVING once started.
        let mut serving = HashMap::new();
        serving.insert(String::new(), ServingStatus::Serving);
        // A fresh single-member etcd has applied its bootstrap entries (membership, leader
        // election) before serving: the index starts past them.
        Self { serving, store: Store::new(), member, applied_index: 4 }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Marks every registered service NOT_SERVING (shutdown), as grpc-go's health server does.
    pub fn shutdown(&mut self) {
        for s in self.serving.values_mut() {
            *s = ServingStatus::NotServing;
        }
    }

    /// Executes one request, for a caller on another core: the response travels as its own
    /// buffer. Work whose deadline has passed is dropped before it starts.
    pub fn handle(&mut self, req: ShardRequest, deadline: Option<Instant>, now: Instant) -> ShardReply {
        // One allocation that fits a typical response, rather than a series of doublings.
        let mut buf = Vec::with_capacity(REPLY_BYTES_INITIAL);
        match self.execute(req, deadline, now, &mut buf) {
            Outcome::Encoded => ShardReply::Encoded(buf),
            Outcome::Health(s) => ShardReply::Health(s),
            Outcome::Error(s) => ShardReply::Error(s),
            Outcome::DeadlineExceeded => ShardReply::DeadlineExceeded,
        }
    }

    /// Executes one request, encoding its response into `out` (which must be empty).
    pub fn execute(
        &mut self,
        req: ShardRequest,
        deadline: Option<Instant>,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Outcome {
        debug_assert!(out.is_empty());
        if deadline.is_some_and(|d| d <= now) {
            return Outcome::DeadlineExceeded;
        }
        let ids = self.member.ids;
        let before = self.store.current_revision();
        let r = match req {
            ShardRequest::Health { service } => return Outcome::Health(self.serving.get(&service).copied()),
            ShardRequest::Range(r) => kv::range(&self.store, &ids, &r, out),
            ShardRequest::Put(r) => kv::put(&mut self.store, &ids, &NoLeases, &r, out),
            ShardRequest::DeleteRange(r) => kv::delete_range(&mut self.store, &ids, &r, out),
            ShardRequest::Txn(r) => kv::txn(&mut self.store, &ids, &NoLeases, &r, out),
            ShardRequest::Compact(r) => {
                self.applied_index += 1;
                kv::compact(&mut self.store, &ids, &r, out)
            }
            ShardRequest::Status => {
                self.status().encode_raw(out);
                Ok(())
            }
            ShardRequest::MemberList => {
                self.member_list().encode_raw(out);
                Ok(())
            }
        };
        if self.store.current_revision() != before {
            self.applied_index += 1;
        }
        match r {
            Ok(()) => Outcome::Encoded,
            Err(e) => {
                out.clear();
                Outcome::Error(e)
            }
        }
    }

    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        let h = Header::full(&self.member.ids, revision);
        Some(pb::ResponseHeader {
            cluster_id: h.cluster_id,
            member_id: h.member_id,
            revision: h.revision,
            raft_term: h.raft_term,
        })
    }

    /// Maintenance.Status as a one-member etcd reports it: this member leads.
    pub fn status(&self) -> pb::StatusResponse {
        let db = DB_BASE_BYTES + self.store.history_bytes() as i64;
        pb::StatusResponse {
            header: self.header(self.store.current_revision()),
            version: VERSION.into(),
            db_size: db,
            leader: self.member.ids.member_id,
            raft_index: self.applied_index,
            raft_term: self.member.ids.raft_term,
            raft_applied_index: self.applied_index,
            errors: vec![],
            db_size_in_use: db,
            is_learner: false,
            ..Default::default()
        }
    }

    /// Cluster.MemberList: the single member (its header carries revision 0, as etcd's does).
    pub fn member_list(&self) -> pb::MemberListResponse {
        pb::MemberListResponse {
            header: self.header(0),
            members: vec![pb::Member {
                id: self.member.ids.member_id,
                name: self.member.name.clone(),
                peer_ur_ls: self.member.peer_urls.clone(),
                client_ur_ls: self.member.client_urls.clone(),
                is_learner: false,
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn shard() -> Shard {
        Shard::new(MemberInfo {
            ids: Ids { cluster_id: 1, member_id: 2, raft_term: 2 },
            name: "default".into(),
            peer_urls: vec!["http://localhost:2380".into()],
            client_urls: vec!["http://localhost:2379".into()],
        })
    }

    #[test]
    fn health_status_and_unknown_names() {
        let mut s = shard();
        let now = Instant::now();
        let r = s.handle(ShardRequest::Health { service: String::new() }, None, now);
        assert_eq!(r, ShardReply::Health(Some(ServingStatus::Serving)));
        let r = s.handle(ShardRequest::Health { service: "nope".into() }, None, now);
        assert_eq!(r, ShardReply::Health(None));
        s.shutdown();
        let r = s.handle(ShardRequest::Health { service: String::new() }, None, now);
        assert_eq!(r, ShardReply::Health(Some(ServingStatus::NotServing)));
    }

    #[test]
    fn expired_work_is_dropped_before_it_starts() {
        let mut s = shard();
        let now = Instant::now();
        let past = now - Duration::from_millis(1);
        let r = s.handle(ShardRequest::Health { service: String::new() }, Some(past), now);
        assert_eq!(r, ShardReply::DeadlineExceeded);
        let future = now + Duration::from_secs(1);
        let r = s.handle(ShardRequest::Health { service: String::new() }, Some(future), now);
        assert_eq!(r, ShardReply::Health(Some(ServingStatus::Serving)));
    }

    #[test]
    fn expired_writes_never_run() {
        let mut s = shard();
        let now = Instant::now();
        let put = pb::PutRequest { key: b"k".to_vec(), ..Default::default() };
        let past = now - Duration::from_millis(1);
        assert_eq!(s.handle(ShardRequest::Put(put), Some(past), now), ShardReply::DeadlineExceeded);
        assert_eq!(s.store().current_revision(), 1, "the expired put never ran");
    }

    #[test]
    fn status_and_member_list_describe_one_leader() {
        let mut s = shard();
        let put = pb::PutRequest { key: b"k".to_vec(), ..Default::default() };
        let ShardReply::Encoded(b) = s.handle(ShardRequest::Put(put), None, Instant::now()) else { panic!() };
        assert_eq!(pb::PutResponse::decode(&b[..]).unwrap().header.unwrap().revision, 2);
        let st = s.status();
        assert_eq!(st.leader, 2);
        assert!(st.raft_index > 0 && st.raft_term > 0 && st.db_size > 0);
        assert_eq!(st.raft_applied_index, st.raft_index);
        assert_eq!(st.version, VERSION);
        let ml = s.member_list();
        assert_eq!(ml.header.unwrap().revision, 0);
        assert_eq!(ml.members.len(), 1);
        assert_eq!(ml.members[0].id, 2);
    }
}
