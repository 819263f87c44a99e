//! The Rust `etcd-client` crate (tonic + hyper + prost, generated from etcd's own .proto files)
//! against the real `metastore` binary on both io drivers. It guards against a server that only
//! its own codec understands: a different HTTP/2 stack, a different protobuf decoder and the typed
//! wrappers applications use. Checked values come from etcd's documented semantics
//! (`shared/etcd-v3-reference.md` §3): put/get with prefix, range, from-key, limit/more/count,
//! every sort target, keys-only, count-only, historical revisions and serializable reads; delete
//! with prev_kv; txn in the shapes Kubernetes sends (create iff `create_revision == 0`, update and
//! delete iff `mod_revision == X`, the current object read back in the else branch) plus nested
//! txns; compaction and reads of a compacted revision; Status and MemberList. Errors are checked by
//! gRPC code and etcd's exact message. Each KV test body runs first against a real etcd 3.4.23
//! (started by the test on free loopback ports), so its expectations are etcd's, not ours.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::etcd::Etcd;
use common::{TestServer, DRIVERS};
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions, Error, GetOptions, GetResponse,
    PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};

/// Runs `f` against a fresh server per io driver, each on a tokio runtime of its own. With
/// `oracle`, `f` first runs against a real etcd 3.4.23: the expectations are etcd's own.
fn each_server<F, Fut>(oracle: bool, f: F)
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if oracle {
        let etcd = Etcd::start();
        run_against("etcd 3.4.23", &etcd.url(), &f);
    }
    for driver in DRIVERS {
        let srv = TestServer::start(driver, &[]);
        run_against(driver, &srv.url(), &f);
        let log = srv.stop();
        assert!(!log.contains("panicked"), "[{driver}] {log}");
    }
}

fn run_against<F, Fut>(label: &str, url: &str, f: &F)
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let opts =
            ConnectOptions::new().with_connect_timeout(Duration::from_secs(5)).with_timeout(Duration::from_secs(10));
        let client = Client::connect([url], Some(opts)).await.expect("connect");
        let t = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(60), f(client)).await.expect("test body ran over 60s");
        eprintln!("[{label}] done in {:?}", t.elapsed());
    });
}

/// The gRPC code (as tonic names it) and message of a failed call.
fn grpc_error(e: Error) -> (String, String) {
    match e {
        Error::GRpcStatus(s) => (format!("{:?}", s.code()), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

fn keys(r: &GetResponse) -> Vec<&str> {
    r.kvs().iter().map(|kv| kv.key_str().unwrap()).collect()
}

fn rev(r: &GetResponse) -> i64 {
    r.header().unwrap().revision()
}

#[test]
fn put_and_get_with_every_option() {
    each_server(true, |mut c| async move {
        // Distinct create/mod revisions, versions and values, so each sort target differs.
        let r = c.put("foo", "v-e", None).await.unwrap();
        assert_eq!(r.header().unwrap().revision(), 2, "the first write makes revision 2");
        assert!(r.prev_key().is_none());
        c.put("foo1", "v-c", None).await.unwrap(); // 3
        c.put("foo2", "v-b", None).await.unwrap(); // 4
        c.put("foo2", "v-a", None).await.unwrap(); // 5
        c.put("foo3", "v-d", None).await.unwrap(); // 6
        let r = c.put("foo", "v-e2", Some(PutOptions::new().with_prev_key())).await.unwrap(); // 7
        let prev = r.prev_key().unwrap();
        assert_eq!((prev.key(), prev.value()), (&b"foo"[..], &b"v-e"[..]));
        assert_eq!((prev.create_revision(), prev.mod_revision(), prev.version()), (2, 2, 1));
        c.put("fop", "x", None).await.unwrap(); // 8
        c.put("a", "1", None).await.unwrap(); // 9

        let r = c.get("foo", None).await.unwrap();
        assert_eq!(rev(&r), 9);
        assert_eq!(r.count(), 1);
        let kv = &r.kvs()[0];
        assert_eq!((kv.value_str().unwrap(), kv.create_revision(), kv.mod_revision(), kv.version()), ("v-e2", 2, 7, 2));
        assert_eq!(kv.lease(), 0);

        let r = c.get("foo", Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(keys(&r), ["foo", "foo1", "foo2", "foo3"]);
        assert_eq!((r.count(), r.more()), (4, false));

        let r = c.get("foo", Some(GetOptions::new().with_prefix().with_limit(2))).await.unwrap();
        assert_eq!(keys(&r), ["foo", "foo1"]);
        assert_eq!((r.count(), r.more()), (4, true), "count ignores the limit; more says there is more");

        let r = c.get("foo1", Some(GetOptions::new().with_range("foo3"))).await.unwrap();
        assert_eq!(keys(&r), ["foo1", "foo2"]);
        let r = c.get("foo2", Some(GetOptions::new().with_from_key())).await.unwrap();
        assert_eq!(keys(&r), ["foo2", "foo3", "fop"]);
        let r = c.get("", Some(GetOptions::new().with_all_keys())).await.unwrap();
        assert_eq!(keys(&r), ["a", "foo", "foo1", "foo2", "foo3", "fop"]);

        let sorted = |target, order| GetOptions::new().with_prefix().with_sort(target, order);
        let cases = [
            (SortTarget::Key, SortOrder::Descend, ["foo3", "foo2", "foo1", "foo"]),
            (SortTarget::Version, SortOrder::Ascend, ["foo1", "foo3", "foo", "foo2"]),
            (SortTarget::Version, SortOrder::Descend, ["foo", "foo2", "foo1", "foo3"]),
            (SortTarget::Create, SortOrder::Ascend, ["foo", "foo1", "foo2", "foo3"]),
            (SortTarget::Create, SortOrder::Descend, ["foo3", "foo2", "foo1", "foo"]),
            (SortTarget::Mod, SortOrder::Ascend, ["foo1", "foo2", "foo3", "foo"]),
            (SortTarget::Mod, SortOrder::Descend, ["foo", "foo3", "foo2", "foo1"]),
            (SortTarget::Value, SortOrder::Ascend, ["foo2", "foo1", "foo3", "foo"]),
            (SortTarget::Value, SortOrder::Descend, ["foo", "foo3", "foo1", "foo2"]),
        ];
        for (target, order, want) in cases {
            let r = c.get("foo", Some(sorted(target, order))).await.unwrap();
            assert_eq!(keys(&r), want, "sort by {target:?} {order:?}");
        }
        // Sorting happens over the whole range, then the limit applies.
        let r = c.get("foo", Some(sorted(SortTarget::Mod, SortOrder::Descend).with_limit(1))).await.unwrap();
        assert_eq!((keys(&r), r.count(), r.more()), (vec!["foo"], 4, true));

        let r = c.get("foo", Some(GetOptions::new().with_prefix().with_keys_only())).await.unwrap();
        assert_eq!(keys(&r), ["foo", "foo1", "foo2", "foo3"]);
        assert!(r.kvs().iter().all(|kv| kv.value().is_empty() && kv.version() > 0), "keys only: no values");

        let r = c.get("foo", Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap();
        assert!(r.kvs().is_empty());
        assert_eq!((r.count(), r.more()), (4, false));

        // Historical reads; the header still carries the current revision.
        let r = c.get("foo", Some(GetOptions::new().with_revision(6))).await.unwrap();
        assert_eq!((r.kvs()[0].value_str().unwrap(), rev(&r)), ("v-e", 9));
        let r = c.get("foo2", Some(GetOptions::new().with_revision(4))).await.unwrap();
        assert_eq!(r.kvs()[0].value_str().unwrap(), "v-b");
        let r = c.get("foo3", Some(GetOptions::new().with_revision(5))).await.unwrap();
        assert_eq!(r.count(), 0, "foo3 did not exist yet");
        let e = c.get("foo", Some(GetOptions::new().with_revision(100))).await.unwrap_err();
        assert_eq!(
            grpc_error(e),
            ("OutOfRange".into(), "etcdserver: mvcc: required revision is a future revision".into())
        );

        let r = c.get("foo", Some(GetOptions::new().with_serializable())).await.unwrap();
        assert_eq!(r.kvs()[0].value_str().unwrap(), "v-e2");
        let r = c.get("nosuchkey", None).await.unwrap();
        assert_eq!((r.count(), r.kvs().len(), rev(&r)), (0, 0, 9));

        // ignore_value / ignore_lease keep what the key had and still bump version and revision.
        c.put("foo", "", Some(PutOptions::new().with_ignore_value())).await.unwrap(); // 10
        c.put("foo", "v-f", Some(PutOptions::new().with_ignore_lease())).await.unwrap(); // 11
        let r = c.get("foo", None).await.unwrap();
        let kv = &r.kvs()[0];
        assert_eq!((kv.value_str().unwrap(), kv.mod_revision(), kv.version()), ("v-f", 11, 4));

        let errors = [
            (
                c.put("nokey", "", Some(PutOptions::new().with_ignore_value())).await,
                "InvalidArgument",
                "etcdserver: key not found",
            ),
            (
                c.put("nokey", "v", Some(PutOptions::new().with_ignore_lease())).await,
                "InvalidArgument",
                "etcdserver: key not found",
            ),
            (
                c.put("foo", "v", Some(PutOptions::new().with_ignore_value())).await,
                "InvalidArgument",
                "etcdserver: value is provided",
            ),
            (
                c.put("k", "v", Some(PutOptions::new().with_lease(0x1234))).await,
                "NotFound",
                "etcdserver: requested lease not found",
            ),
            (c.put("", "v", None).await, "InvalidArgument", "etcdserver: key is not provided"),
        ];
        for (i, (r, code, msg)) in errors.into_iter().enumerate() {
            assert_eq!(grpc_error(r.unwrap_err()), (code.to_string(), msg.to_string()), "error case {i}");
        }
        let e = c.get("", None).await.unwrap_err();
        assert_eq!(grpc_error(e), ("InvalidArgument".into(), "etcdserver: key is not provided".into()));
        assert_eq!(rev(&c.get("foo", None).await.unwrap()), 11, "failed puts change nothing");
    });
}

#[test]
fn binary_keys_prefix_ends_and_revision_filters() {
    each_server(true, |mut c| async move {
        // Prefix ends computed by the client: trailing 0xff bytes roll over ("p\xff" -> "q"),
        // an all-0xff prefix means "to the end" ("\0").
        let keys_in: [&[u8]; 7] = [b"p", b"p\xff", b"p\xff\x00", b"p\xff\xff", b"q", b"\xff", b"\xff\xff\x01"];
        for (i, k) in keys_in.iter().enumerate() {
            c.put(k.to_vec(), vec![i as u8, 0, 0xff], None).await.unwrap(); // revisions 2..=8
        }
        let raw = |r: &GetResponse| r.kvs().iter().map(|kv| kv.key().to_vec()).collect::<Vec<_>>();
        let r = c.get(b"p\xff".to_vec(), Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(raw(&r), [&b"p\xff"[..], b"p\xff\x00", b"p\xff\xff"]);
        let r = c.get(b"\xff".to_vec(), Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(raw(&r), [&b"\xff"[..], b"\xff\xff\x01"]);
        let r = c.get(b"\xff\xff".to_vec(), Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(raw(&r), [&b"\xff\xff\x01"[..]]);
        assert_eq!(r.kvs()[0].value(), [6, 0, 0xff], "binary values come back untouched");
        // An empty range (end <= key) matches nothing.
        let r = c.get("q", Some(GetOptions::new().with_range("p"))).await.unwrap();
        assert_eq!((r.count(), r.kvs().len()), (0, 0));

        // min/max mod and create revision filters apply before the limit; count ignores them.
        c.put("p", "again", None).await.unwrap(); // 9: p is now mod 9, create 2
        let all = || GetOptions::new().with_all_keys();
        let r = c.get("", Some(all().with_min_mod_revision(5))).await.unwrap();
        assert_eq!(raw(&r), [&b"p"[..], b"p\xff\xff", b"q", b"\xff", b"\xff\xff\x01"]);
        assert_eq!(r.count(), 7);
        let r = c.get("", Some(all().with_max_mod_revision(4))).await.unwrap();
        assert_eq!(raw(&r), [&b"p\xff"[..], b"p\xff\x00"]);
        let r = c.get("", Some(all().with_min_create_revision(3).with_max_create_revision(5))).await.unwrap();
        assert_eq!(raw(&r), [&b"p\xff"[..], b"p\xff\x00", b"p\xff\xff"]);
        let r = c.get("", Some(all().with_min_mod_revision(5).with_limit(2))).await.unwrap();
        assert_eq!((raw(&r), r.more()), (vec![b"p".to_vec(), b"p\xff\xff".to_vec()], true));
        let r = c.get("", Some(all().with_max_create_revision(2).with_revision(8))).await.unwrap();
        assert_eq!(r.kvs()[0].value(), [0, 0, 0xff], "filters at a past revision");
    });
}

#[test]
fn delete_with_prev_kv() {
    each_server(true, |mut c| async move {
        for (k, v) in [("a", "1"), ("b", "2"), ("c", "3"), ("d/1", "4"), ("d/2", "5"), ("e", "6")] {
            c.put(k, v, None).await.unwrap();
        } // revision 7

        let r = c.delete("nosuchkey", Some(DeleteOptions::new().with_prev_key())).await.unwrap();
        assert_eq!((r.deleted(), r.prev_kvs().len()), (0, 0));
        assert_eq!(r.header().unwrap().revision(), 7, "deleting nothing makes no revision");

        let r = c.delete("a", Some(DeleteOptions::new().with_prev_key())).await.unwrap();
        assert_eq!(r.deleted(), 1);
        assert_eq!(r.header().unwrap().revision(), 8);
        let p = &r.prev_kvs()[0];
        assert_eq!(
            (p.key_str().unwrap(), p.value_str().unwrap(), p.create_revision(), p.mod_revision()),
            ("a", "1", 2, 2)
        );

        let r = c.delete("b", None).await.unwrap();
        assert_eq!((r.deleted(), r.prev_kvs().len()), (1, 0), "no prev_kv unless asked");

        let r = c.delete("d/", Some(DeleteOptions::new().with_prefix().with_prev_key())).await.unwrap();
        assert_eq!(r.deleted(), 2);
        let got: Vec<_> = r.prev_kvs().iter().map(|kv| (kv.key_str().unwrap(), kv.value_str().unwrap())).collect();
        assert_eq!(got, [("d/1", "4"), ("d/2", "5")], "prev_kvs in key order");
        assert_eq!(r.header().unwrap().revision(), 10, "one revision for the whole range");

        let r = c.delete("c", Some(DeleteOptions::new().with_range("e").with_prev_key())).await.unwrap();
        assert_eq!((r.deleted(), r.prev_kvs()[0].key()), (1, &b"c"[..]));

        // The deleted key is gone now but still visible in history.
        let r = c.get("a", None).await.unwrap();
        assert_eq!(r.count(), 0);
        let r = c.get("a", Some(GetOptions::new().with_revision(7))).await.unwrap();
        assert_eq!(r.kvs()[0].value_str().unwrap(), "1");

        // Re-creating starts a new incarnation.
        c.put("a", "again", None).await.unwrap();
        let r = c.get("a", None).await.unwrap();
        let kv = &r.kvs()[0];
        assert_eq!((kv.create_revision(), kv.mod_revision(), kv.version()), (12, 12, 1));

        let r = c.delete("", Some(DeleteOptions::new().with_all_keys().with_prev_key())).await.unwrap();
        assert_eq!(r.deleted(), 2);
        assert_eq!(r.prev_kvs().iter().map(|kv| kv.key_str().unwrap()).collect::<Vec<_>>(), ["a", "e"]);
        assert_eq!(c.get("", Some(GetOptions::new().with_all_keys())).await.unwrap().count(), 0);
    });
}

/// The Range response inside a txn's op responses at `i`.
fn txn_get(ops: &[TxnOpResponse], i: usize) -> &GetResponse {
    match &ops[i] {
        TxnOpResponse::Get(g) => g,
        other => panic!("op {i} is not a range: {other:?}"),
    }
}

#[test]
fn txn_in_the_shapes_kubernetes_sends() {
    each_server(true, |mut c| async move {
        let key = "/registry/pods/default/p1";
        // Create: only if the key does not exist (create_revision == 0); else read it back.
        let create = |v: &str| {
            Txn::new()
                .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, v, None)])
                .or_else([TxnOp::get(key, None)])
        };
        let r = c.txn(create("v1")).await.unwrap();
        assert!(r.succeeded());
        assert_eq!(r.header().unwrap().revision(), 2);
        match &r.op_responses()[0] {
            TxnOpResponse::Put(p) => assert_eq!(p.header().unwrap().revision(), 2),
            other => panic!("{other:?}"),
        }
        let r = c.txn(create("v1-again")).await.unwrap();
        assert!(!r.succeeded(), "the key exists now");
        assert_eq!(r.header().unwrap().revision(), 2, "a failed compare changes nothing");
        let g = txn_get(&r.op_responses(), 0).clone();
        assert_eq!((g.kvs()[0].value_str().unwrap(), g.kvs()[0].mod_revision()), ("v1", 2));

        // Update with optimistic concurrency on mod_revision.
        let update = |m: i64, v: &str| {
            Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, m)])
                .and_then([TxnOp::put(key, v, Some(PutOptions::new().with_prev_key())), TxnOp::get(key, None)])
                .or_else([TxnOp::get(key, None)])
        };
        let r = c.txn(update(2, "v2")).await.unwrap();
        assert!(r.succeeded());
        let ops = r.op_responses();
        match &ops[0] {
            TxnOpResponse::Put(p) => assert_eq!(p.prev_key().unwrap().value(), b"v1"),
            other => panic!("{other:?}"),
        }
        let g = txn_get(&ops, 1);
        assert_eq!((g.kvs()[0].value_str().unwrap(), g.kvs()[0].mod_revision()), ("v2", 3), "reads its own write");
        assert_eq!(g.header().unwrap().revision(), 3);

        let r = c.txn(update(2, "stale")).await.unwrap();
        assert!(!r.succeeded(), "mod_revision 2 is stale");
        let g = txn_get(&r.op_responses(), 0).clone();
        assert_eq!((g.kvs()[0].value_str().unwrap(), g.kvs()[0].mod_revision()), ("v2", 3));

        // Value, version, create and lease compares; Greater/Less/NotEqual.
        let r = c
            .txn(
                Txn::new()
                    .when([
                        Compare::value(key, CompareOp::Equal, "v2"),
                        Compare::version(key, CompareOp::Equal, 2),
                        Compare::create_revision(key, CompareOp::Less, 3),
                        Compare::mod_revision(key, CompareOp::Greater, 2),
                        Compare::value(key, CompareOp::NotEqual, "v1"),
                        Compare::lease(key, CompareOp::Equal, 0),
                    ])
                    .and_then([TxnOp::put("flag", "yes", None)])
                    .or_else([TxnOp::put("flag", "no", None)]),
            )
            .await
            .unwrap();
        assert!(r.succeeded());
        // VALUE against a missing key is always false, even for NotEqual.
        let r = c
            .txn(
                Txn::new()
                    .when([Compare::value("missing", CompareOp::NotEqual, "x")])
                    .or_else([TxnOp::get("flag", None)]),
            )
            .await
            .unwrap();
        assert!(!r.succeeded());
        assert_eq!(txn_get(&r.op_responses(), 0).kvs()[0].value_str().unwrap(), "yes");
        // A compare over a range holds only if every key satisfies it.
        c.put("/registry/pods/default/p2", "w", None).await.unwrap(); // 5
        let r = c
            .txn(Txn::new().when([Compare::version("/registry/pods/", CompareOp::Equal, 2).with_prefix()]))
            .await
            .unwrap();
        assert!(!r.succeeded(), "p2 has version 1");
        assert_eq!(r.header().unwrap().revision(), 5, "an empty branch makes no revision");

        // Delete iff unchanged, getting the deleted object back.
        let r = c
            .txn(
                Txn::new()
                    .when([Compare::mod_revision(key, CompareOp::Equal, 3)])
                    .and_then([TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key()))])
                    .or_else([TxnOp::get(key, None)]),
            )
            .await
            .unwrap();
        assert!(r.succeeded());
        match &r.op_responses()[0] {
            TxnOpResponse::Delete(d) => {
                assert_eq!((d.deleted(), d.prev_kvs()[0].value()), (1, &b"v2"[..]));
                assert_eq!(d.header().unwrap().revision(), 6);
            }
            other => panic!("{other:?}"),
        }

        // A nested txn decides on the state before the outer one ran.
        let r = c
            .txn(
                Txn::new().and_then([
                    TxnOp::put("n1", "1", None),
                    TxnOp::txn(
                        Txn::new()
                            .when([Compare::version("n1", CompareOp::Equal, 0)])
                            .and_then([TxnOp::put("n2", "inner-then", None)])
                            .or_else([TxnOp::put("n2", "inner-else", None)]),
                    ),
                ]),
            )
            .await
            .unwrap();
        assert!(r.succeeded());
        match &r.op_responses()[1] {
            TxnOpResponse::Txn(t) => assert!(t.succeeded()),
            other => panic!("{other:?}"),
        }
        let g = c.get("n2", None).await.unwrap();
        assert_eq!((g.kvs()[0].value_str().unwrap(), rev(&g)), ("inner-then", 7), "one revision for all");

        // Errors fail the whole txn and change nothing.
        let e = c.txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)])).await.unwrap_err();
        assert_eq!(grpc_error(e), ("InvalidArgument".into(), "etcdserver: duplicate key given in txn request".into()));
        let e = c
            .txn(
                Txn::new().and_then([
                    TxnOp::put("x", "1", None),
                    TxnOp::put("y", "1", Some(PutOptions::new().with_lease(77))),
                ]),
            )
            .await
            .unwrap_err();
        assert_eq!(grpc_error(e), ("NotFound".into(), "etcdserver: requested lease not found".into()));
        let many: Vec<TxnOp> = (0..129).map(|i| TxnOp::put(format!("m{i}"), "v", None)).collect();
        let e = c.txn(Txn::new().and_then(many)).await.unwrap_err();
        assert_eq!(grpc_error(e), ("InvalidArgument".into(), "etcdserver: too many operations in txn request".into()));
        let g = c.get("", Some(GetOptions::new().with_all_keys().with_keys_only())).await.unwrap();
        assert_eq!(rev(&g), 7);
        assert_eq!(keys(&g), ["/registry/pods/default/p2", "flag", "n1", "n2"]);
    });
}

#[test]
fn compact_then_read_a_compacted_revision() {
    each_server(true, |mut c| async move {
        for i in 0..5 {
            c.put("k", format!("v{i}"), None).await.unwrap(); // revisions 2..=6
        }
        let r = c.compact(4, None).await.unwrap();
        assert_eq!(r.header().unwrap().revision(), 6, "compaction makes no revision");

        let compacted =
            ("OutOfRange".to_string(), "etcdserver: mvcc: required revision has been compacted".to_string());
        let e = c.get("k", Some(GetOptions::new().with_revision(3))).await.unwrap_err();
        assert_eq!(grpc_error(e), compacted);
        let r = c.get("k", Some(GetOptions::new().with_revision(4))).await.unwrap();
        assert_eq!(r.kvs()[0].value_str().unwrap(), "v2", "the compacted revision itself is readable");
        let r = c.get("k", Some(GetOptions::new().with_revision(5))).await.unwrap();
        assert_eq!(r.kvs()[0].value_str().unwrap(), "v3");

        // Compacting at or below the compacted revision, or past the current one, fails.
        assert_eq!(grpc_error(c.compact(4, None).await.unwrap_err()), compacted);
        assert_eq!(grpc_error(c.compact(2, None).await.unwrap_err()), compacted);
        assert_eq!(
            grpc_error(c.compact(7, None).await.unwrap_err()),
            ("OutOfRange".into(), "etcdserver: mvcc: required revision is a future revision".into())
        );
        let r = c.compact(6, Some(CompactionOptions::new().with_physical())).await.unwrap();
        assert_eq!(r.header().unwrap().revision(), 6);
        let e = c.get("k", Some(GetOptions::new().with_revision(5))).await.unwrap_err();
        assert_eq!(grpc_error(e), compacted);
        // A txn reading a compacted revision fails as a whole.
        let e = c
            .txn(
                Txn::new().and_then([
                    TxnOp::put("other", "1", None),
                    TxnOp::get("k", Some(GetOptions::new().with_revision(5))),
                ]),
            )
            .await
            .unwrap_err();
        assert_eq!(grpc_error(e), compacted);
        let r = c.get("k", None).await.unwrap();
        assert_eq!((r.kvs()[0].value_str().unwrap(), rev(&r)), ("v4", 6));
    });
}

#[test]
fn status_and_member_list() {
    each_server(false, |mut c| async move {
        c.put("k", "v", None).await.unwrap();
        let s = c.status().await.unwrap();
        let h = s.header().unwrap();
        assert_eq!(h.revision(), 2);
        assert_ne!(h.member_id(), 0);
        assert_ne!(h.cluster_id(), 0);
        assert!(s.version().starts_with("3.5."), "version {}", s.version());
        assert_eq!(s.leader(), h.member_id(), "a single member leads");
        assert!(s.raft_term() > 0 && s.raft_index() > 0, "term {} index {}", s.raft_term(), s.raft_index());
        assert_eq!(h.raft_term(), s.raft_term());
        assert!(s.db_size() > 0);

        let m = c.member_list().await.unwrap();
        let mh = m.header().unwrap();
        assert_eq!((mh.member_id(), mh.cluster_id(), mh.revision()), (h.member_id(), h.cluster_id(), 0));
        let members = m.members();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].id(), h.member_id());
        assert_eq!(members[0].name(), "default");
        assert!(!members[0].is_learner());
        assert!(!members[0].peer_urls().is_empty() && !members[0].client_urls().is_empty());
    });
}

/// Many calls in flight on one tonic channel (HTTP/2 streams multiplexed, as a busy application
/// has them), and a connection that idles past several HTTP/2 keepalive pings before it is used.
#[test]
fn concurrent_calls_and_keepalive_pings() {
    each_server(true, |c| async move {
        let mut tasks = Vec::new();
        for i in 0..200 {
            let mut c = c.clone();
            tasks.push(tokio::spawn(async move {
                let r = c.put(format!("c/{i:03}"), format!("{i}"), None).await.unwrap();
                let g = c.get(format!("c/{i:03}"), None).await.unwrap();
                assert_eq!(g.kvs()[0].value_str().unwrap(), i.to_string());
                r.header().unwrap().revision()
            }));
        }
        let mut revs = Vec::new();
        for t in tasks {
            revs.push(t.await.unwrap());
        }
        revs.sort_unstable();
        assert_eq!(revs, (2..202).collect::<Vec<i64>>(), "every put got its own revision");
        let mut c = c;
        let r = c.get("c/", Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap();
        assert_eq!(r.count(), 200);
    });
    for driver in DRIVERS {
        let srv = TestServer::start(driver, &[]);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let opts = ConnectOptions::new()
                .with_keep_alive(Duration::from_millis(200), Duration::from_secs(1))
                .with_keep_alive_while_idle(true)
                .with_timeout(Duration::from_secs(10));
            let mut c = Client::connect([srv.url()], Some(opts)).await.unwrap();
            c.put("k", "v", None).await.unwrap();
            // Several pings go out while idle; an unanswered one would close the connection.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let r = c.get("k", None).await.unwrap();
            assert_eq!(r.kvs()[0].value_str().unwrap(), "v", "[{driver}]");
            c.put("k", "v2", None).await.unwrap();
        });
        drop(rt);
        let log = srv.stop();
        assert!(!log.contains("panicked"), "[{driver}] {log}");
    }
}

/// The names of the metric families a Prometheus text page declares.
fn metric_families(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(String::from)
        .collect()
}

/// `/metrics` carries etcd's names for what both servers measure (fsync latency, raft progress,
/// leadership, db size, revision), checked against a real etcd's page, and the figures follow the
/// writes: every acknowledged put is committed, applied and counted, and a batch of concurrent
/// puts needs no more fsyncs than it has puts.
#[test]
fn metrics_use_etcds_names_and_follow_the_writes() {
    const SHARED: [&str; 7] = [
        "etcd_disk_wal_fsync_duration_seconds",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_server_has_leader",
        "etcd_server_is_leader",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_debugging_mvcc_current_revision",
    ];
    let etcd = Etcd::start();
    let (_, text) = common::http_get(etcd.client, "/metrics").expect("etcd /metrics");
    let theirs = metric_families(&text);
    for name in SHARED {
        assert!(theirs.contains(name), "etcd 3.4.23 has no {name}: the name is not etcd's");
    }
    drop(etcd);
    for driver in DRIVERS {
        let srv = TestServer::start(driver, &[]);
        let ours = metric_families(&srv.metrics());
        for name in SHARED {
            assert!(ours.contains(name), "[{driver}] /metrics lacks {name}");
        }
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let mut c = Client::connect([srv.url()], None).await.unwrap();
            for i in 0..20 {
                c.put(format!("s/{i}"), "v", None).await.unwrap();
            }
            let before = srv.metric_sum("etcd_disk_wal_fsync_duration_seconds_count");
            let tasks: Vec<_> = (0..100)
                .map(|i| {
                    let mut c = c.clone();
                    tokio::spawn(async move { c.put(format!("p/{i}"), "v", None).await.unwrap() })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            let fsyncs = srv.metric_sum("etcd_disk_wal_fsync_duration_seconds_count") - before;
            assert!((1.0..=100.0).contains(&fsyncs), "[{driver}] {fsyncs} fsyncs for 100 concurrent puts");
        });
        drop(rt);
        let m = |name: &str| srv.metric_sum(name);
        assert_eq!(m("metastore_writes_applied_total"), 120.0, "[{driver}]");
        assert_eq!(m("etcd_debugging_mvcc_current_revision"), 121.0, "[{driver}]");
        // Every put is a raft entry, plus the new leader's empty entry.
        assert!(m("etcd_server_proposals_committed_total") >= 121.0, "[{driver}]");
        let caught_up = common::wait_until(5, || {
            m("etcd_server_proposals_applied_total") == m("etcd_server_proposals_committed_total")
        });
        assert!(caught_up, "[{driver}] applied never reached committed");
        assert_eq!(m("etcd_server_has_leader"), 1.0);
        assert!(m("etcd_disk_wal_fsync_duration_seconds_count") >= 1.0);
        assert_eq!(
            m("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"}"),
            m("etcd_disk_wal_fsync_duration_seconds_count"),
            "[{driver}] the histogram's buckets add up to its count"
        );
        let db = m("etcd_mvcc_db_total_size_in_bytes");
        assert!(db > 0.0 && m("etcd_mvcc_db_total_size_in_use_in_bytes") <= db, "[{driver}]");
        let log = srv.stop();
        assert!(!log.contains("panicked"), "[{driver}] {log}");
    }
}
