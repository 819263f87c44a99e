//! lease-keepalive: each client owns one lease and one `Lease/LeaseKeepAlive` stream. Before
//! the timed part it grants the lease (`Lease/LeaseGrant`, server-chosen ID), opens the stream
//! and makes one keep-alive round trip, all checked; each operation of the run is then one
//! request sent on that stream (the same few bytes every time, encoded once) and its response,
//! checked for the lease's ID and a TTL above 0 (0 is etcd's answer for an unknown or expired
//! lease). After the run, untimed, the stream is closed (END_STREAM, then the server's end) and
//! the lease revoked, so that a suite's next run does not meet a wave of expiries.

use std::time::Duration;

use bytes::Bytes;
use metastore_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
};
use prost::Message;

use crate::grpc::{self, CallError, Sender, StreamCall};
use crate::workload::Uris;

pub const PATH_LEASE_GRANT: &str = "/etcdserverpb.Lease/LeaseGrant";
pub const PATH_LEASE_REVOKE: &str = "/etcdserverpb.Lease/LeaseRevoke";
pub const PATH_LEASE_KEEPALIVE: &str = "/etcdserverpb.Lease/LeaseKeepAlive";
/// How long the server may take to end a keep-alive stream once the client has ended its side.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A granted lease and its keep-alive stream.
pub struct Lease {
    pub id: i64,
    stream: StreamCall,
    /// The framed `LeaseKeepAliveRequest{ID}`, sent as is by every keep-alive.
    request: Bytes,
}

fn framed(msg: &impl Message) -> Bytes {
    let mut buf = Vec::with_capacity(grpc::GRPC_PREFIX_BYTES + msg.encoded_len());
    grpc::frame(&mut buf, msg);
    Bytes::from(buf)
}

/// The framed keep-alive request for lease `id`.
pub fn keepalive_request(id: i64) -> Bytes {
    framed(&LeaseKeepAliveRequest { id })
}

/// Checks a `LeaseGrantResponse`: its lease ID and TTL.
pub fn check_grant(msg: &[u8]) -> Result<(i64, i64), String> {
    let r = LeaseGrantResponse::decode(msg).map_err(|e| format!("undecodable LeaseGrantResponse: {e}"))?;
    if !r.error.is_empty() {
        return Err(format!("lease grant: {}", r.error));
    }
    if r.id == 0 || r.ttl <= 0 {
        return Err(format!("lease grant answered ID {} and TTL {}", r.id, r.ttl));
    }
    Ok((r.id, r.ttl))
}

/// Checks a `LeaseKeepAliveResponse` for lease `id`: an answer for another lease, or a TTL of 0
/// or less, is an error (an answered one).
pub fn check_keepalive(msg: &[u8], id: i64) -> Result<i64, CallError> {
    let r = LeaseKeepAliveResponse::decode(msg)
        .map_err(|e| CallError::Status(format!("undecodable LeaseKeepAliveResponse: {e}")))?;
    if r.id != id {
        return Err(CallError::Status("keep-alive answered for another lease".into()));
    }
    if r.ttl <= 0 {
        return Err(CallError::Status(format!("lease not found (keep-alive answered TTL {})", r.ttl)));
    }
    Ok(r.ttl)
}

impl Lease {
    /// Grants a lease of `ttl` seconds, opens its keep-alive stream and makes one keep-alive.
    pub async fn grant(send: &mut Sender, uris: &Uris, ttl: i64) -> Result<Lease, String> {
        let mut out = Vec::new();
        grpc::unary(send, &uris.lease_grant, framed(&LeaseGrantRequest { ttl, id: 0 }), &mut out)
            .await
            .map_err(|e| format!("lease grant: {}", e.message()))?;
        let (id, _) = check_grant(grpc::message(&out))?;
        let stream = grpc::open(send, &uris.lease_keepalive)
            .await
            .map_err(|e| format!("lease keep-alive stream: {}", e.message()))?;
        let mut lease = Lease { id, stream, request: keepalive_request(id) };
        lease.keepalive().await.map_err(|e| format!("first lease keep-alive (untimed): {}", e.message()))?;
        Ok(lease)
    }

    /// One keep-alive: the request on the stream, then its response.
    pub async fn keepalive(&mut self) -> Result<(), CallError> {
        self.stream.send(self.request.clone())?;
        let msg = self.stream.message().await?;
        check_keepalive(msg, self.id).map(|_| ())
    }

    /// Closes the keep-alive stream (gracefully, for at most [`CLOSE_TIMEOUT`]), then revokes the
    /// lease.
    pub async fn revoke(self, send: &mut Sender, uris: &Uris) -> Result<(), String> {
        let Lease { id, mut stream, .. } = self;
        match tokio::time::timeout(CLOSE_TIMEOUT, stream.finish()).await {
            Ok(CallError::Ended(_)) => {}
            Ok(e) => return Err(format!("closing the lease keep-alive stream: {}", e.message())),
            Err(_) => return Err("the server did not end the lease keep-alive stream after ours ended".into()),
        }
        drop(stream);
        let mut out = Vec::new();
        grpc::unary(send, &uris.lease_revoke, framed(&LeaseRevokeRequest { id }), &mut out)
            .await
            .map_err(|e| format!("lease revoke after the run: {}", e.message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metastore_proto::etcdserverpb::ResponseHeader;

    #[test]
    fn keepalive_request_is_the_framed_id() {
        let r = keepalive_request(0x1234);
        assert_eq!(&r[..], &[0, 0, 0, 0, 3, 0x08, 0xb4, 0x24]);
        assert_eq!(LeaseKeepAliveRequest::decode(grpc::message(&r)).unwrap().id, 0x1234);
    }

    #[test]
    fn grants_and_keepalives_are_checked() {
        let header = Some(ResponseHeader { revision: 9, ..Default::default() });
        let ok = LeaseGrantResponse { header, id: 7, ttl: 60, error: String::new() }.encode_to_vec();
        assert_eq!(check_grant(&ok), Ok((7, 60)));
        let bad = LeaseGrantResponse { header, id: 0, ttl: 60, error: String::new() }.encode_to_vec();
        assert!(check_grant(&bad).unwrap_err().contains("ID 0"));
        let err = LeaseGrantResponse { header, id: 7, ttl: 60, error: "no".into() }.encode_to_vec();
        assert!(check_grant(&err).unwrap_err().contains("no"));
        assert!(check_grant(&[0xff]).is_err());

        let ka = |id, ttl| LeaseKeepAliveResponse { header, id, ttl }.encode_to_vec();
        assert_eq!(check_keepalive(&ka(7, 59), 7), Ok(59));
        assert!(matches!(check_keepalive(&ka(7, 0), 7), Err(CallError::Status(m)) if m.contains("not found")));
        assert!(matches!(check_keepalive(&ka(8, 60), 7), Err(CallError::Status(m)) if m.contains("another")));
        assert!(check_keepalive(&[0xff], 7).unwrap_err().answered());
    }
}
