//! Storage for one data shard. `mvcc` is the multi-version store with etcd's semantics:
//! one revision per write request, a key index with generations, historical reads, compaction.
//! It takes no time and does no IO of its own.

pub mod disk;
pub mod engine;
pub mod fault;
pub mod log;
pub mod mvcc;
pub mod sha256;
pub mod snapshot;
