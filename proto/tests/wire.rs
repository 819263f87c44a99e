//! Guards the wire contract of the hand-written `.proto` files against the etcd v3 reference
//! (/work/shared/etcd-v3-reference.md §0-§2): the generated service table must list exactly the
//! RPCs etcd 3.5 serves, with the right message types and streaming kinds, and messages must
//! encode to the exact bytes a Go etcd client or server would produce (field numbers, varint
//! types, oneof arms holding defaults, packed repeated enums, multi-byte tags) and decode what
//! such peers send, including unpacked repeated enums and fields we do not know.

use metastore_proto::etcdserverpb::{
    compare, range_request, request_op, response_op, watch_create_request, watch_request, CompactionRequest, Compare,
    DeleteRangeRequest, LeaseGrantRequest, LeaseTimeToLiveResponse, PutRequest, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, StatusResponse, TxnRequest, TxnResponse, WatchCancelRequest, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse,
};
use metastore_proto::mvccpb::{event, Event, KeyValue};
use metastore_proto::SERVICES;
use prost::Message;

/// A negative int64 as protobuf encodes it: 10-byte two's-complement varint.
const MINUS_ONE: [u8; 10] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

#[track_caller]
fn assert_bytes(m: &impl Message, expected: &[u8]) {
    assert_eq!(hex(&m.encode_to_vec()), hex(expected));
}

// ------------------------------------------------------------------------------------------------
// (1) Service table
// ------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Unary,
    ServerStream,
    Bidi,
}
use Kind::{Bidi, ServerStream, Unary};

/// Reference §1.1-§1.7: `service/method`, request, response (both in the service's package),
/// and streaming kind.
#[rustfmt::skip]
const EXPECTED: &[(&str, &str, &str, Kind)] = &[
    // §1.1 KV
    ("etcdserverpb.KV/Range", "RangeRequest", "RangeResponse", Unary),
    ("etcdserverpb.KV/Put", "PutRequest", "PutResponse", Unary),
    ("etcdserverpb.KV/DeleteRange", "DeleteRangeRequest", "DeleteRangeResponse", Unary),
    ("etcdserverpb.KV/Txn", "TxnRequest", "TxnResponse", Unary),
    ("etcdserverpb.KV/Compact", "CompactionRequest", "CompactionResponse", Unary),
    // §1.2 Watch
    ("etcdserverpb.Watch/Watch", "WatchRequest", "WatchResponse", Bidi),
    // §1.3 Lease
    ("etcdserverpb.Lease/LeaseGrant", "LeaseGrantRequest", "LeaseGrantResponse", Unary),
    ("etcdserverpb.Lease/LeaseRevoke", "LeaseRevokeRequest", "LeaseRevokeResponse", Unary),
    ("etcdserverpb.Lease/LeaseKeepAlive", "LeaseKeepAliveRequest", "LeaseKeepAliveResponse", Bidi),
    ("etcdserverpb.Lease/LeaseTimeToLive", "LeaseTimeToLiveRequest", "LeaseTimeToLiveResponse", Unary),
    ("etcdserverpb.Lease/LeaseLeases", "LeaseLeasesRequest", "LeaseLeasesResponse", Unary),
    // §1.4 Cluster
    ("etcdserverpb.Cluster/MemberAdd", "MemberAddRequest", "MemberAddResponse", Unary),
    ("etcdserverpb.Cluster/MemberRemove", "MemberRemoveRequest", "MemberRemoveResponse", Unary),
    ("etcdserverpb.Cluster/MemberUpdate", "MemberUpdateRequest", "MemberUpdateResponse", Unary),
    ("etcdserverpb.Cluster/MemberList", "MemberListRequest", "MemberListResponse", Unary),
    ("etcdserverpb.Cluster/MemberPromote", "MemberPromoteRequest", "MemberPromoteResponse", Unary),
    // §1.5 Maintenance
    ("etcdserverpb.Maintenance/Alarm", "AlarmRequest", "AlarmResponse", Unary),
    ("etcdserverpb.Maintenance/Status", "StatusRequest", "StatusResponse", Unary),
    ("etcdserverpb.Maintenance/Defragment", "DefragmentRequest", "DefragmentResponse", Unary),
    ("etcdserverpb.Maintenance/Hash", "HashRequest", "HashResponse", Unary),
    ("etcdserverpb.Maintenance/HashKV", "HashKVRequest", "HashKVResponse", Unary),
    ("etcdserverpb.Maintenance/Snapshot", "SnapshotRequest", "SnapshotResponse", ServerStream),
    ("etcdserverpb.Maintenance/MoveLeader", "MoveLeaderRequest", "MoveLeaderResponse", Unary),
    ("etcdserverpb.Maintenance/Downgrade", "DowngradeRequest", "DowngradeResponse", Unary),
    // §1.6 Auth (RPC names differ from message names)
    ("etcdserverpb.Auth/AuthEnable", "AuthEnableRequest", "AuthEnableResponse", Unary),
    ("etcdserverpb.Auth/AuthDisable", "AuthDisableRequest", "AuthDisableResponse", Unary),
    ("etcdserverpb.Auth/AuthStatus", "AuthStatusRequest", "AuthStatusResponse", Unary),
    ("etcdserverpb.Auth/Authenticate", "AuthenticateRequest", "AuthenticateResponse", Unary),
    ("etcdserverpb.Auth/UserAdd", "AuthUserAddRequest", "AuthUserAddResponse", Unary),
    ("etcdserverpb.Auth/UserGet", "AuthUserGetRequest", "AuthUserGetResponse", Unary),
    ("etcdserverpb.Auth/UserList", "AuthUserListRequest", "AuthUserListResponse", Unary),
    ("etcdserverpb.Auth/UserDelete", "AuthUserDeleteRequest", "AuthUserDeleteResponse", Unary),
    ("etcdserverpb.Auth/UserChangePassword", "AuthUserChangePasswordRequest", "AuthUserChangePasswordResponse", Unary),
    ("etcdserverpb.Auth/UserGrantRole", "AuthUserGrantRoleRequest", "AuthUserGrantRoleResponse", Unary),
    ("etcdserverpb.Auth/UserRevokeRole", "AuthUserRevokeRoleRequest", "AuthUserRevokeRoleResponse", Unary),
    ("etcdserverpb.Auth/RoleAdd", "AuthRoleAddRequest", "AuthRoleAddResponse", Unary),
    ("etcdserverpb.Auth/RoleGet", "AuthRoleGetRequest", "AuthRoleGetResponse", Unary),
    ("etcdserverpb.Auth/RoleList", "AuthRoleListRequest", "AuthRoleListResponse", Unary),
    ("etcdserverpb.Auth/RoleDelete", "AuthRoleDeleteRequest", "AuthRoleDeleteResponse", Unary),
    ("etcdserverpb.Auth/RoleGrantPermission", "AuthRoleGrantPermissionRequest", "AuthRoleGrantPermissionResponse", Unary),
    ("etcdserverpb.Auth/RoleRevokePermission", "AuthRoleRevokePermissionRequest", "AuthRoleRevokePermissionResponse", Unary),
    // §1.7
    ("grpc.health.v1.Health/Check", "HealthCheckRequest", "HealthCheckResponse", Unary),
    ("grpc.health.v1.Health/Watch", "HealthCheckRequest", "HealthCheckResponse", ServerStream),
    ("v3lockpb.Lock/Lock", "LockRequest", "LockResponse", Unary),
    ("v3lockpb.Lock/Unlock", "UnlockRequest", "UnlockResponse", Unary),
    ("v3electionpb.Election/Campaign", "CampaignRequest", "CampaignResponse", Unary),
    ("v3electionpb.Election/Proclaim", "ProclaimRequest", "ProclaimResponse", Unary),
    ("v3electionpb.Election/Leader", "LeaderRequest", "LeaderResponse", Unary),
    ("v3electionpb.Election/Observe", "LeaderRequest", "LeaderResponse", ServerStream),
    ("v3electionpb.Election/Resign", "ResignRequest", "ResignResponse", Unary),
];

#[test]
fn service_table_lists_exactly_the_reference_rpcs() {
    let mut actual: Vec<(String, String, String, Kind)> = Vec::new();
    for s in SERVICES {
        for m in s.methods {
            let kind = match (m.client_streaming, m.server_streaming) {
                (false, false) => Unary,
                (false, true) => ServerStream,
                (true, true) => Bidi,
                (true, false) => panic!("{}/{}: client-streaming-only RPC", s.name, m.name),
            };
            actual.push((format!("{}/{}", s.name, m.name), m.input.to_owned(), m.output.to_owned(), kind));
        }
    }
    let mut expected: Vec<(String, String, String, Kind)> = EXPECTED
        .iter()
        .map(|&(path, input, output, kind)| {
            let (service, _) = path.split_once('/').unwrap();
            let package = &service[..service.rfind('.').unwrap()];
            (path.to_owned(), format!("{package}.{input}"), format!("{package}.{output}"), kind)
        })
        .collect();
    actual.sort();
    expected.sort();
    assert_eq!(actual, expected);
}

#[test]
fn service_table_has_no_duplicates_and_keeps_declaration_order() {
    let names: Vec<&str> = SERVICES.iter().map(|s| s.name).collect();
    let mut dedup = names.clone();
    dedup.sort_unstable();
    dedup.dedup();
    assert_eq!(dedup.len(), names.len(), "{names:?}");
    let kv = SERVICES.iter().find(|s| s.name == "etcdserverpb.KV").unwrap();
    let methods: Vec<&str> = kv.methods.iter().map(|m| m.name).collect();
    assert_eq!(methods, ["Range", "Put", "DeleteRange", "Txn", "Compact"]);
}

// ------------------------------------------------------------------------------------------------
// (2) Field numbers and encodings, against hand-computed bytes
// ------------------------------------------------------------------------------------------------

#[test]
fn empty_oneof_message_arm_is_encoded_and_decoded_as_set() {
    let req =
        WatchRequest { request_union: Some(watch_request::RequestUnion::ProgressRequest(WatchProgressRequest {})) };
    assert_bytes(&req, &[0x1a, 0x00]);
    let back = WatchRequest::decode(&[0x1a, 0x00][..]).unwrap();
    assert_eq!(back, req);
    // Absent arm is distinguishable from the empty-message arm.
    assert_eq!(WatchRequest::decode(&[][..]).unwrap().request_union, None);
}

#[test]
fn compare_oneof_arm_with_default_value_stays_on_the_wire() {
    let cmp =
        Compare { key: b"k".to_vec(), target_union: Some(compare::TargetUnion::Version(0)), ..Default::default() };
    // result EQUAL=0 and target VERSION=0 are omitted; key (3) then version (4) = 0.
    assert_bytes(&cmp, &[0x1a, 0x01, b'k', 0x20, 0x00]);
    assert_eq!(Compare::decode(&[0x1a, 0x01, b'k', 0x20, 0x00][..]).unwrap(), cmp);

    let mut cmp = Compare {
        key: b"k".to_vec(),
        range_end: b"l".to_vec(),
        target_union: Some(compare::TargetUnion::ModRevision(0)),
        ..Default::default()
    };
    cmp.set_result(compare::CompareResult::NotEqual);
    cmp.set_target(compare::CompareTarget::Mod);
    // result (1)=3, target (2)=MOD=2, key (3), mod_revision (6)=0, range_end (64: tag 0x202 as
    // the two-byte varint 82 04).
    assert_bytes(&cmp, &[0x08, 0x03, 0x10, 0x02, 0x1a, 0x01, b'k', 0x30, 0x00, 0x82, 0x04, 0x01, b'l']);

    // The other arms: create_revision (5), value (7, empty bytes), lease (8).
    for (arm, bytes) in [
        (compare::TargetUnion::CreateRevision(0), [0x28, 0x00]),
        (compare::TargetUnion::Value(Vec::new()), [0x3a, 0x00]),
        (compare::TargetUnion::Lease(0), [0x40, 0x00]),
    ] {
        let cmp = Compare { target_union: Some(arm), ..Default::default() };
        assert_bytes(&cmp, &bytes);
        assert_eq!(Compare::decode(&bytes[..]).unwrap(), cmp);
    }
}

#[test]
fn negative_int64_is_a_ten_byte_varint() {
    let cancel = WatchCancelRequest { watch_id: -1 };
    let mut expected = vec![0x08];
    expected.extend_from_slice(&MINUS_ONE);
    assert_bytes(&cancel, &expected);
    assert_eq!(WatchCancelRequest::decode(&expected[..]).unwrap().watch_id, -1);

    let resp = WatchResponse { watch_id: -1, ..Default::default() };
    let mut expected = vec![0x10];
    expected.extend_from_slice(&MINUS_ONE);
    assert_bytes(&resp, &expected);

    let ttl = LeaseTimeToLiveResponse { ttl: -1, ..Default::default() };
    let mut expected = vec![0x18];
    expected.extend_from_slice(&MINUS_ONE);
    assert_bytes(&ttl, &expected);
}

#[test]
fn range_request_field_numbers() {
    let mut req = RangeRequest {
        key: b"a".to_vec(),
        range_end: b"b".to_vec(),
        limit: 10,
        revision: 300,
        serializable: true,
        keys_only: true,
        count_only: true,
        min_mod_revision: 5,
        max_mod_revision: 6,
        min_create_revision: 7,
        max_create_revision: 200,
        ..Default::default()
    };
    req.set_sort_order(range_request::SortOrder::Descend);
    req.set_sort_target(range_request::SortTarget::Mod);
    let expected = [
        0x0a, 0x01, b'a', // key (1)
        0x12, 0x01, b'b', // range_end (2)
        0x18, 0x0a, // limit (3) = 10
        0x20, 0xac, 0x02, // revision (4) = 300
        0x28, 0x02, // sort_order (5) = DESCEND
        0x30, 0x03, // sort_target (6) = MOD
        0x38, 0x01, // serializable (7)
        0x40, 0x01, // keys_only (8)
        0x48, 0x01, // count_only (9)
        0x50, 0x05, // min_mod_revision (10)
        0x58, 0x06, // max_mod_revision (11)
        0x60, 0x07, // min_create_revision (12)
        0x68, 0xc8, 0x01, // max_create_revision (13) = 200
    ];
    assert_bytes(&req, &expected);
    assert_eq!(RangeRequest::decode(&expected[..]).unwrap(), req);

    // Enum values of the other sort targets.
    for (target, n) in [
        (range_request::SortTarget::Key, 0),
        (range_request::SortTarget::Version, 1),
        (range_request::SortTarget::Create, 2),
        (range_request::SortTarget::Mod, 3),
        (range_request::SortTarget::Value, 4),
    ] {
        assert_eq!(target as i32, n);
    }
    assert_eq!(range_request::SortOrder::None as i32, 0);
    assert_eq!(range_request::SortOrder::Ascend as i32, 1);
}

#[test]
fn put_and_delete_range_field_numbers() {
    let put = PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        lease: 1,
        prev_kv: true,
        ignore_value: true,
        ignore_lease: true,
    };
    assert_bytes(
        &put,
        &[
            0x0a, 0x01, b'k', // key (1)
            0x12, 0x01, b'v', // value (2)
            0x18, 0x01, // lease (3)
            0x20, 0x01, // prev_kv (4)
            0x28, 0x01, // ignore_value (5)
            0x30, 0x01, // ignore_lease (6)
        ],
    );
    let del = DeleteRangeRequest { key: b"a".to_vec(), range_end: vec![0], prev_kv: true };
    assert_bytes(&del, &[0x0a, 0x01, b'a', 0x12, 0x01, 0x00, 0x18, 0x01]);
}

#[test]
fn response_header_and_key_value_field_numbers() {
    let h = ResponseHeader { cluster_id: 1, member_id: 2, revision: 3, raft_term: 4 };
    assert_bytes(&h, &[0x08, 0x01, 0x10, 0x02, 0x18, 0x03, 0x20, 0x04]);
    // IDs are uint64 over the full range.
    let h = ResponseHeader { cluster_id: u64::MAX, ..Default::default() };
    let mut expected = vec![0x08];
    expected.extend_from_slice(&MINUS_ONE);
    assert_bytes(&h, &expected);

    let kv = KeyValue {
        key: b"k".to_vec(),
        create_revision: 2,
        mod_revision: 3,
        version: 1,
        value: b"v".to_vec(),
        lease: 7,
    };
    let kv_bytes = [
        0x0a, 0x01, b'k', // key (1)
        0x10, 0x02, // create_revision (2)
        0x18, 0x03, // mod_revision (3)
        0x20, 0x01, // version (4)
        0x2a, 0x01, b'v', // value (5)
        0x30, 0x07, // lease (6)
    ];
    assert_bytes(&kv, &kv_bytes);

    // RangeResponse: header (1), kvs (2), more (3), count (4).
    let resp = RangeResponse {
        header: Some(ResponseHeader { revision: 3, ..Default::default() }),
        kvs: vec![kv.clone()],
        more: true,
        count: 2,
    };
    let mut expected = vec![0x0a, 0x02, 0x18, 0x03, 0x12, kv_bytes.len() as u8];
    expected.extend_from_slice(&kv_bytes);
    expected.extend_from_slice(&[0x18, 0x01, 0x20, 0x02]);
    assert_bytes(&resp, &expected);
}

#[test]
fn watch_response_events_use_field_11_and_event_type_numbers() {
    let mut ev = Event {
        kv: Some(KeyValue { key: b"k".to_vec(), mod_revision: 5, ..Default::default() }),
        ..Default::default()
    };
    ev.set_type(event::EventType::Delete);
    // type (1) = DELETE, kv (2) = {key, mod_revision}.
    let ev_bytes = [0x08, 0x01, 0x12, 0x05, 0x0a, 0x01, b'k', 0x18, 0x05];
    assert_bytes(&ev, &ev_bytes);
    let resp = WatchResponse { events: vec![ev], ..Default::default() };
    // events (11): tag (11 << 3) | 2 = 0x5a.
    let mut expected = vec![0x5a, ev_bytes.len() as u8];
    expected.extend_from_slice(&ev_bytes);
    assert_bytes(&resp, &expected);

    let prev = Event { prev_kv: Some(KeyValue::default()), ..Default::default() };
    assert_bytes(&prev, &[0x1a, 0x00]);
}

#[test]
fn txn_request_compare_success_failure_numbers() {
    let txn = TxnRequest {
        compare: vec![Compare {
            key: b"k".to_vec(),
            target_union: Some(compare::TargetUnion::Version(0)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest { key: b"k".to_vec(), ..Default::default() })),
        }],
        failure: vec![
            RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: b"k".to_vec(),
                    ..Default::default()
                })),
            },
            RequestOp { request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest::default())) },
            RequestOp { request: Some(request_op::Request::RequestTxn(TxnRequest::default())) },
        ],
    };
    let expected = [
        0x0a, 0x05, 0x1a, 0x01, b'k', 0x20, 0x00, // compare (1)
        0x12, 0x05, 0x12, 0x03, 0x0a, 0x01, b'k', // success (2): request_put (2)
        0x1a, 0x05, 0x0a, 0x03, 0x0a, 0x01, b'k', // failure (3): request_range (1)
        0x1a, 0x02, 0x1a, 0x00, // failure (3): request_delete_range (3), empty
        0x1a, 0x02, 0x22, 0x00, // failure (3): request_txn (4), empty
    ];
    assert_bytes(&txn, &expected);
    assert_eq!(TxnRequest::decode(&expected[..]).unwrap(), txn);

    let resp = TxnResponse {
        header: None,
        succeeded: true,
        responses: vec![
            ResponseOp { response: Some(response_op::Response::ResponseRange(Default::default())) },
            ResponseOp { response: Some(response_op::Response::ResponsePut(Default::default())) },
            ResponseOp { response: Some(response_op::Response::ResponseDeleteRange(Default::default())) },
            ResponseOp { response: Some(response_op::Response::ResponseTxn(Default::default())) },
        ],
    };
    assert_bytes(
        &resp,
        &[
            0x10, 0x01, // succeeded (2)
            0x1a, 0x02, 0x0a, 0x00, // responses (3): response_range (1)
            0x1a, 0x02, 0x12, 0x00, // response_put (2)
            0x1a, 0x02, 0x1a, 0x00, // response_delete_range (3)
            0x1a, 0x02, 0x22, 0x00, // response_txn (4)
        ],
    );
}

#[test]
fn watch_create_filters_encode_packed_and_decode_both_forms() {
    let create = WatchCreateRequest {
        key: b"a".to_vec(),
        filters: vec![
            watch_create_request::FilterType::Noput as i32,
            watch_create_request::FilterType::Nodelete as i32,
        ],
        ..Default::default()
    };
    let packed = [0x0a, 0x01, b'a', 0x2a, 0x02, 0x00, 0x01];
    assert_bytes(&create, &packed);
    assert_eq!(WatchCreateRequest::decode(&packed[..]).unwrap(), create);

    let unpacked = [0x0a, 0x01, b'a', 0x28, 0x00, 0x28, 0x01];
    assert_eq!(WatchCreateRequest::decode(&unpacked[..]).unwrap(), create);

    // Both forms in one message concatenate, in wire order.
    let mixed = [0x28, 0x01, 0x2a, 0x01, 0x00];
    assert_eq!(WatchCreateRequest::decode(&mixed[..]).unwrap().filters, [1, 0]);

    // The remaining fields: start_revision (3), progress_notify (4), prev_kv (6), watch_id (7),
    // fragment (8); inside WatchRequest.create_request (1).
    let create = WatchCreateRequest {
        start_revision: 9,
        progress_notify: true,
        prev_kv: true,
        watch_id: 3,
        fragment: true,
        ..Default::default()
    };
    let req = WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(create)) };
    assert_bytes(&req, &[0x0a, 0x0a, 0x18, 0x09, 0x20, 0x01, 0x30, 0x01, 0x38, 0x03, 0x40, 0x01]);
}

#[test]
fn lease_and_compaction_field_numbers() {
    assert_bytes(&LeaseGrantRequest { ttl: 5, id: 7 }, &[0x08, 0x05, 0x10, 0x07]);
    assert_bytes(&CompactionRequest { revision: 4, physical: true }, &[0x08, 0x04, 0x10, 0x01]);
}

// ------------------------------------------------------------------------------------------------
// (3) Unknown fields
// ------------------------------------------------------------------------------------------------

#[test]
fn unknown_fields_of_every_wire_type_are_skipped() {
    let bytes = [
        0x08, 0x01, // cluster_id (1) = 1
        0xf8, 0x06, 0x05, // field 111, varint
        0xa2, 0x06, 0x02, 0xaa, 0xbb, // field 100, length-delimited
        0xa5, 0x01, 1, 2, 3, 4, // field 20, fixed32
        0xa9, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, // field 21, fixed64
        0xf3, 0x01, 0x08, 0x01, 0xf4, 0x01, // field 30, group (with a varint inside)
        0x18, 0x07, // revision (3) = 7
    ];
    let h = ResponseHeader::decode(&bytes[..]).unwrap();
    assert_eq!(h, ResponseHeader { cluster_id: 1, revision: 7, ..Default::default() });
    // Unknown fields are not kept.
    assert_bytes(&h, &[0x08, 0x01, 0x18, 0x07]);
}

#[test]
fn newer_peer_fields_do_not_break_decoding() {
    // A StatusResponse from a hypothetical newer server: version (2), then field 14 (unknown).
    let bytes = [0x12, 0x03, b'3', b'.', b'7', 0x72, 0x02, 0x08, 0x01];
    let s = StatusResponse::decode(&bytes[..]).unwrap();
    assert_eq!(s.version, "3.7");
    // An unknown field inside a nested message (KeyValue field 9) is skipped too.
    let bytes = [0x12, 0x05, 0x0a, 0x01, b'k', 0x48, 0x01];
    let r = RangeResponse::decode(&bytes[..]).unwrap();
    assert_eq!(r.kvs, [KeyValue { key: b"k".to_vec(), ..Default::default() }]);
}
