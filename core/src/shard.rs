//! The data shard: the one owner of the keyspace's state (Stage 1: one shard, on core 0).
//! Requests reach it as a plain call from its own core and over a ring from the others; it
//! answers every request exactly once. Today it owns the serving status reported by the health
//! service; the KV store joins it with the KV issue.

use std::collections::HashMap;
use std::time::Instant;

use metastore_proto::health::health_check_response::ServingStatus;

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
    Health { service: String },
}

#[derive(Debug, PartialEq, Eq)]
pub enum ShardReply {
    /// None: the name is not known.
    Health(Option<ServingStatus>),
    /// The request's deadline passed before the shard started it; it was dropped unexecuted.
    DeadlineExceeded,
}

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
}

impl Default for Shard {
    fn default() -> Self {
        Self::new()
    }
}

impl Shard {
    pub fn new() -> Self {
        // As etcd: the server as a whole ("") is registered, and SERVING once started.
        let mut serving = HashMap::new();
        serving.insert(String::new(), ServingStatus::Serving);
        Self { serving }
    }

    /// Marks every registered service NOT_SERVING (shutdown), as grpc-go's health server does.
    pub fn shutdown(&mut self) {
        for s in self.serving.values_mut() {
            *s = ServingStatus::NotServing;
        }
    }

    /// Executes one request. Work whose deadline has passed is dropped before it starts.
    pub fn handle(
        &mut self,
        req: ShardRequest,
        deadline: Option<Instant>,
        now: Instant,
    ) -> ShardReply {
        if deadline.is_some_and(|d| d <= now) {
            return ShardReply::DeadlineExceeded;
        }
        match req {
            ShardRequest::Health { service } => {
                ShardReply::Health(self.serving.get(&service).copied())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn health_status_and_unknown_names() {
        let mut s = Shard::new();
        let now = Instant::now();
        let r = s.handle(
            ShardRequest::Health {
                service: String::new(),
            },
            None,
            now,
        );
        assert_eq!(r, ShardReply::Health(Some(ServingStatus::Serving)));
        let r = s.handle(
            ShardRequest::Health {
                service: "nope".into(),
            },
            None,
            now,
        );
        assert_eq!(r, ShardReply::Health(None));
        s.shutdown();
        let r = s.handle(
            ShardRequest::Health {
                service: String::new(),
            },
            None,
            now,
        );
        assert_eq!(r, ShardReply::Health(Some(ServingStatus::NotServing)));
    }

    #[test]
    fn expired_work_is_dropped_before_it_starts() {
        let mut s = Shard::new();
        let now = Instant::now();
        let past = now - Duration::from_millis(1);
        let r = s.handle(
            ShardRequest::Health {
                service: String::new(),
            },
            Some(past),
            now,
        );
        assert_eq!(r, ShardReply::DeadlineExceeded);
        let future = now + Duration::from_secs(1);
        let r = s.handle(
            ShardRequest::Health {
                service: String::new(),
            },
            Some(future),
            now,
        );
        assert_eq!(r, ShardReply::Health(Some(ServingStatus::Serving)));
    }
}
