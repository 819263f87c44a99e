//! etcd's services: request validation (on the connection's core), their application to the
//! store (on the shard), errors with etcd's codes and texts, and response encoding.

pub mod errors;
pub mod kv;
pub mod pbw;
pub mod validate;
