//! etcd's errors as clients see them: the gRPC code and the exact message
//! (`../shared/etcd-v3-reference.md` §4.2). clientv3 maps the message text back to a typed
//! error, so the text is the contract.

use metastore_net::grpc::{Code, Status};
use metastore_storage::mvcc::MvccError;

fn s(code: Code, msg: &'static str) -> Status {
    Status::new(code, msg)
}

pub fn empty_key() -> Status {
    s(Code::INVALID_ARGUMENT, "etcdserver: key is not provided")
}
pub fn key_not_found() -> Status {
    s(Code::INVALID_ARGUMENT, "etcdserver: key not found")
}
pub fn value_provided() -> Status {
    s(Code::INVALID_ARGUMENT, "etcdserver: value is provided")
}
pub fn lease_provided() -> Status {
    s(Code::INVALID_ARGUMENT, "etcdserver: lease is provided")
}
pub fn too_many_ops() -> Status {
    s(Code::INVALID_ARGUMENT, "etcdserver: too many operations in txn request")
}
pub fn duplicate_key() -> Status {
    s(Code::INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")
}
pub fn compacted() -> Status {
    s(Code::OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
}
pub fn future_rev() -> Status {
    s(Code::OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
}
pub fn lease_not_found() -> Status {
    s(Code::NOT_FOUND, "etcdserver: requested lease not found")
}
pub fn lease_exists() -> Status {
    s(Code::FAILED_PRECONDITION, "etcdserver: lease already exists")
}
pub fn lease_ttl_too_large() -> Status {
    s(Code::OUT_OF_RANGE, "etcdserver: too large lease TTL")
}
pub fn request_too_large() -> Status {
    s(Code::INVALID_ARGUMENT, "etcdserver: request is too large")
}
pub fn stopped() -> Status {
    s(Code::UNAVAILABLE, "etcdserver: server stopped")
}

pub fn mvcc(e: MvccError) -> Status {
    match e {
        MvccError::Compacted => compacted(),
        MvccError::FutureRev => future_rev(),
        // etcd panics on a backend read error; a failed read of history fails the request.
        MvccError::Io => Status::new(Code::INTERNAL, "etcdserver: mvcc: history could not be read back from disk"),
    }
}

/// What grpc-go's generated "Unimplemented" server stubs answer for a method the service
/// declares but this server does not implement yet.
pub fn not_implemented(method: &str) -> Status {
    Status::new(Code::UNIMPLEMENTED, format!("method {method} not implemented"))
}
