//! The MetaStore server: per-core reactors and the rings between them, the data shard, the
//! services, configuration, and the `metastore` binary's start and stop.

#[cfg(feature = "count-allocs")]
pub mod alloc_count;
#[cfg(test)]
mod alloc_test;
pub mod compactor;
pub mod config;
pub mod conn;
pub mod disk;
pub mod etcd;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod notify;
pub mod otel;
pub mod otlp;
pub mod reactor;
pub mod ring;
pub mod server;
pub mod shard;
#[cfg(test)]
mod test_client;
#[cfg(test)]
mod testing;
pub mod tools;
pub mod watch;
