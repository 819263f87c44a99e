#!/usr/bin/env python3
"""python-etcd3 0.12.0 (grpcio + its own generated etcd stubs) against a running MetaStore: the
Python client applications use, which we did not write. Run by core/tests/python_etcd3.rs as
`python etcd3_client.py HOST:PORT` with the python of the virtualenv that
scripts/install-test-tools makes (python-etcd3 pins protobuf 3.x).

Each case starts from an empty store (it deletes everything first). Prints `PASS <case>` per
case and `ALL PASSED` at the end; exits 1 on the first failed case, and 3 when python-etcd3 is not
installed (the test then fails and says how to install it).
"""

import sys
import traceback

try:
    import grpc
    import etcd3
except ImportError as e:  # the Rust test turns exit status 3 into an install hint
    print(f"MISSING: {e}: run scripts/install-test-tools", file=sys.stderr)
    sys.exit(3)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def eq(got, want, what=""):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def expect_rpc_error(fn, code, details):
    try:
        fn()
    except grpc.RpcError as e:
        eq(e.code(), code, "gRPC code")
        eq(e.details(), details, "gRPC details")
        return
    raise AssertionError(f"expected {code} {details!r}, got no error")


def revision(client):
    """The current store revision, from a Range header."""
    return client.get_response("any").header.revision


def reset(client):
    client.kvstub.DeleteRange(etcd3.etcdrpc.DeleteRangeRequest(key=b"\0", range_end=b"\0"), client.timeout)


def case_put_get(c):
    r = c.put("/app/a", "1")
    rev = r.header.revision
    check(rev >= 2, f"put header revision {rev}")
    value, meta = c.get("/app/a")
    eq(value, b"1", "value")
    eq(meta.key, b"/app/a", "key")
    eq((meta.create_revision, meta.mod_revision, meta.version), (rev, rev, 1), "metadata")
    eq(meta.response_header.revision, rev, "header revision")
    r = c.put("/app/a", "2", prev_kv=True)
    eq(r.header.revision, rev + 1, "second put revision")
    eq((r.prev_kv.key, r.prev_kv.value, r.prev_kv.version), (b"/app/a", b"1", 1), "prev_kv")
    value, meta = c.get("/app/a")
    eq((value, meta.create_revision, meta.mod_revision, meta.version), (b"2", rev, rev + 1, 2), "after update")
    eq(c.get("/app/missing"), (None, None), "missing key")
    value, _ = c.get("/app/a", serializable=True)
    eq(value, b"2", "serializable get")
    # Binary keys and values pass through untouched.
    c.put(b"/bin/\x00\xff", b"\x00\x01\xfe")
    eq(c.get(b"/bin/\x00\xff")[0], b"\x00\x01\xfe", "binary value")
    expect_rpc_error(lambda: c.put("/app/l", "v", lease=0x1234), grpc.StatusCode.NOT_FOUND,
                     "etcdserver: requested lease not found")
    expect_rpc_error(lambda: c.put("", "v"), grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided")


def case_get_prefix(c):
    for k, v in [("/p/b", "2"), ("/p/a", "1"), ("/p/c", "3"), ("/q/x", "9"), ("/p", "root")]:
        c.put(k, v)
    got = [(m.key, v) for v, m in c.get_prefix("/p/")]
    eq(got, [(b"/p/a", b"1"), (b"/p/b", b"2"), (b"/p/c", b"3")], "get_prefix")
    got = [(m.key, v) for v, m in c.get_prefix("/p/", keys_only=True)]
    eq(got, [(b"/p/a", b""), (b"/p/b", b""), (b"/p/c", b"")], "keys_only")
    got = [m.key for _, m in c.get_prefix("/p/", sort_order="descend")]
    eq(got, [b"/p/c", b"/p/b", b"/p/a"], "descend")
    got = [m.key for _, m in c.get_prefix("/p/", sort_order="ascend", sort_target="create")]
    eq(got, [b"/p/b", b"/p/a", b"/p/c"], "ascend by create")
    got = [v for v, _ in c.get_range("/p/a", "/p/c")]
    eq(got, [b"1", b"2"], "get_range")
    r = c.get_prefix_response("/p/")
    eq((r.count, r.more, len(r.kvs)), (3, False, 3), "count")


def case_get_all(c):
    for k, v in [("b", "x"), ("a", "z"), ("c", "y"), ("b", "w")]:
        c.put(k, v)
    got = [(m.key, v) for v, m in c.get_all()]
    eq(got, [(b"a", b"z"), (b"b", b"w"), (b"c", b"y")], "get_all")
    got = [m.key for _, m in c.get_all(sort_order="descend")]
    eq(got, [b"c", b"b", b"a"], "descend")
    got = [v for v, _ in c.get_all(sort_order="ascend", sort_target="value")]
    eq(got, [b"w", b"y", b"z"], "by value")
    got = [m.key for _, m in c.get_all(sort_order="descend", sort_target="version")]
    eq(got, [b"b", b"a", b"c"], "by version, ties in key order")
    got = [m.key for _, m in c.get_all(sort_order="descend", sort_target="mod")]
    eq(got, [b"b", b"c", b"a"], "by mod")
    got = [(m.key, v) for v, m in c.get_all(keys_only=True)]
    eq(got, [(b"a", b""), (b"b", b""), (b"c", b"")], "keys only")


def case_delete(c):
    for k in ["d/1", "d/2", "d/3", "e"]:
        c.put(k, "v-" + k)
    rev = revision(c)
    eq(c.delete("e"), True, "delete existing")
    eq(c.delete("e"), False, "delete missing")
    eq(revision(c), rev + 1, "deleting nothing makes no revision")
    r = c.delete("d/1", prev_kv=True, return_response=True)
    eq((r.deleted, [(kv.key, kv.value) for kv in r.prev_kvs]), (1, [(b"d/1", b"v-d/1")]), "prev_kv")
    eq(r.header.revision, rev + 2, "revision")
    r = c.delete_prefix("d/")
    eq(r.deleted, 2, "delete_prefix")
    eq(list(c.get_all()), [], "all gone")


def case_transaction(c):
    t = c.transactions
    ok, resps = c.transaction(
        compare=[t.create("/tx/k") == "0"],
        success=[t.put("/tx/k", "v1")],
        failure=[t.get("/tx/k")],
    )
    eq(ok, True, "create when absent")
    create_rev = resps[0].response_put.header.revision
    ok, resps = c.transaction(
        compare=[t.create("/tx/k") == "0"],
        success=[t.put("/tx/k", "again")],
        failure=[t.get("/tx/k")],
    )
    eq(ok, False, "second create fails")
    eq([v for v, _ in resps[0]], [b"v1"], "failure branch reads the key")
    eq(c.put_if_not_exists("/tx/k", "x"), False, "put_if_not_exists on an existing key")
    eq(c.put_if_not_exists("/tx/new", "x"), True, "put_if_not_exists on a new key")

    ok, resps = c.transaction(
        compare=[
            t.value("/tx/k") == "v1",
            t.version("/tx/k") == 1,
            t.mod("/tx/k") == create_rev,
            t.create("/tx/k") > 0,
            t.value("/tx/k") != "nope",
            t.version("/tx/k") < 5,
        ],
        success=[t.put("/tx/k", "v2"), t.get("/tx/k"), t.delete("/tx/new")],
        failure=[t.put("/tx/failed", "1")],
    )
    eq(ok, True, "all compares hold")
    eq([v for v, _ in resps[1]], [b"v2"], "reads its own write")
    eq(resps[2].response_delete_range.deleted, 1, "delete in txn")
    eq(c.get("/tx/failed"), (None, None), "failure branch did not run")

    ok, _ = c.transaction(compare=[t.mod("/tx/k") == create_rev], success=[t.put("/tx/k", "stale")], failure=[])
    eq(ok, False, "stale mod_revision")
    eq(c.replace("/tx/k", "v2", "v3"), True, "replace with the right value")
    eq(c.replace("/tx/k", "v2", "v4"), False, "replace with a wrong value")
    eq(c.get("/tx/k")[0], b"v3", "value after replace")
    # VALUE compares on a missing key are false.
    ok, _ = c.transaction(compare=[t.value("/tx/missing") != "x"], success=[], failure=[])
    eq(ok, False, "value compare on a missing key")

    rev = revision(c)
    nested = etcd3.transactions.Txn(
        compare=[t.version("/tx/n1") == 0],
        success=[t.put("/tx/n2", "then")],
        failure=[t.put("/tx/n2", "else")],
    )
    ok, resps = c.transaction(compare=[], success=[t.put("/tx/n1", "1"), nested], failure=[])
    eq(ok, True, "outer txn")
    eq(resps[1].response_txn.succeeded, True, "inner compares see the state before the txn")
    eq(c.get("/tx/n2")[0], b"then", "inner put")
    eq(revision(c), rev + 1, "one revision for the whole txn")

    expect_rpc_error(
        lambda: c.transaction(compare=[], success=[t.put("/tx/d", "1"), t.put("/tx/d", "2")], failure=[]),
        grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")


def case_compact(c):
    for i in range(4):
        c.put("/c/k", str(i))
    rev = revision(c)
    c.compact(rev - 1)
    expect_rpc_error(lambda: c.compact(rev - 1), grpc.StatusCode.OUT_OF_RANGE,
                     "etcdserver: mvcc: required revision has been compacted")
    expect_rpc_error(lambda: c.compact(rev + 1), grpc.StatusCode.OUT_OF_RANGE,
                     "etcdserver: mvcc: required revision is a future revision")
    c.compact(rev, physical=True)
    eq(c.get("/c/k")[0], b"3", "latest value survives compaction")


def case_status(c):
    s = c.status()
    check(s.version.startswith("3.5."), f"version {s.version!r}")
    check(s.db_size > 0, f"db_size {s.db_size}")
    check(s.leader is not None, "status() found no leader among the members")
    raw = c.maintenancestub.Status(etcd3.etcdrpc.StatusRequest(), c.timeout)
    eq(s.leader.id, raw.leader, "leader id")
    eq(raw.header.member_id, raw.leader, "this member leads")
    check(raw.raftTerm > 0 and raw.raftIndex > 0, f"raft term {raw.raftTerm} index {raw.raftIndex}")
    eq(raw.header.raft_term, raw.raftTerm, "header raft_term")


def case_members(c):
    members = list(c.members)
    eq(len(members), 1, "one member")
    m = members[0]
    eq(m.name, "default", "name")
    check(len(m.peer_urls) > 0 and len(m.client_urls) > 0, f"urls {m.peer_urls} {m.client_urls}")
    raw = c.clusterstub.MemberList(etcd3.etcdrpc.MemberListRequest(), c.timeout)
    eq(m.id, raw.header.member_id, "member id")
    eq(raw.header.revision, 0, "MemberList header carries revision 0")


CASES = [
    ("put_get", case_put_get),
    ("get_prefix", case_get_prefix),
    ("get_all", case_get_all),
    ("delete", case_delete),
    ("transaction", case_transaction),
    ("compact", case_compact),
    ("status", case_status),
    ("members", case_members),
]


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    client = etcd3.client(host=host, port=int(port), timeout=10)
    for name, fn in CASES:
        try:
            reset(client)
            fn(client)
        except Exception:  # noqa: BLE001 - every failure is reported with its case
            print(f"FAIL {name}:\n{traceback.format_exc()}", flush=True)
            sys.exit(1)
        print(f"PASS {name}", flush=True)
    client.close()
    print("ALL PASSED", flush=True)


if __name__ == "__main__":
    main()
