#!/usr/bin/env python3
"""grpc.health.v1 against a running MetaStore, through grpcio (gRPC's C core) and the stubs of
grpcio-health-checking: a client stack we did not write. Run by core/tests/python_grpcio.rs as
`python3 health_client.py HOST:PORT`.

Prints `PASS <case>` per case and `ALL PASSED` at the end; exits 1 on the first failed case, and
3 when grpcio is not installed (the test then fails and says how to install it).
"""

import sys
import time

try:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
except ImportError as e:  # the Rust test turns exit status 3 into an install hint
    print(f"MISSING: {e}: run `pip install grpcio grpcio-health-checking`", file=sys.stderr)
    sys.exit(3)

RECV_LIMIT_DEFAULT = 2 * 1024 * 1024
SERVING = health_pb2.HealthCheckResponse.SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


def fail(case, why):
    print(f"FAIL {case}: {why}", flush=True)
    sys.exit(1)


def expect_error(case, fn, code, details=None, details_prefix=None):
    """Runs fn(), which must raise grpc.RpcError with `code` (and the exact details, if given)."""
    try:
        got = fn()
    except grpc.RpcError as e:
        if e.code() != code:
            fail(case, f"code {e.code()} ({e.details()!r}), want {code}")
        if details is not None and e.details() != details:
            fail(case, f"details {e.details()!r}, want {details!r}")
        if details_prefix is not None and not (e.details() or "").startswith(details_prefix):
            fail(case, f"details {e.details()!r}, want a prefix {details_prefix!r}")
        print(f"PASS {case}", flush=True)
        return
    fail(case, f"succeeded with {got!r}, want {code}")


def main():
    addr = sys.argv[1]
    options = [
        ("grpc.enable_http_proxy", 0),  # an http_proxy in the environment must not interfere
        ("grpc.max_send_message_length", -1),
        ("grpc.enable_retries", 0),
    ]
    channel = grpc.insecure_channel(addr, options=options)
    grpc.channel_ready_future(channel).result(timeout=10)
    stub = health_pb2_grpc.HealthStub(channel)
    req = health_pb2.HealthCheckRequest

    # Check of the server itself.
    r = stub.Check(req(service=""), timeout=10)
    if r.status != SERVING:
        fail("check_serving", f"status {r.status}")
    print("PASS check_serving", flush=True)

    # Check of a service the server does not know: NOT_FOUND, as grpc-go's health server says.
    expect_error(
        "check_unknown_service",
        lambda: stub.Check(req(service="no.such.Service"), timeout=10),
        grpc.StatusCode.NOT_FOUND,
        details="unknown service",
    )

    # Many Checks in flight at once on the one channel.
    futures = [stub.Check.future(req(service=""), timeout=10) for _ in range(100)]
    statuses = [f.result().status for f in futures]
    if statuses != [SERVING] * 100:
        fail("check_concurrent", f"statuses {statuses}")
    print("PASS check_concurrent", flush=True)

    # Watch(""): SERVING first, then the stream stays open until the client cancels it.
    call = stub.Watch(req(service=""), timeout=30)
    first = next(call)
    if first.status != SERVING:
        fail("watch_serving", f"first status {first.status}")
    call.cancel()
    try:
        more = next(call)
        fail("watch_serving", f"got {more!r} after cancel")
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.CANCELLED:
            fail("watch_serving", f"after cancel: {e.code()} {e.details()!r}")
    print("PASS watch_serving_then_cancel", flush=True)

    # Watch of an unknown service: SERVICE_UNKNOWN, and the stream stays open (grpc-go's health).
    call = stub.Watch(req(service="no.such.Service"), timeout=30)
    first = next(call)
    if first.status != SERVICE_UNKNOWN:
        fail("watch_unknown_service", f"first status {first.status}")
    call.cancel()
    print("PASS watch_unknown_service", flush=True)

    # Deadlines: a unary call within its deadline, and a Watch that outlives its deadline.
    r = stub.Check(req(service=""), timeout=5)
    if r.status != SERVING:
        fail("check_with_deadline", f"status {r.status}")
    print("PASS check_with_deadline", flush=True)
    t0 = time.monotonic()
    call = stub.Watch(req(service=""), timeout=0.3)
    first = next(call)
    if first.status != SERVING:
        fail("watch_deadline", f"first status {first.status}")
    try:
        more = next(call)
        fail("watch_deadline", f"got {more!r}, want DEADLINE_EXCEEDED")
    except grpc.RpcError as e:
        took = time.monotonic() - t0
        if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            fail("watch_deadline", f"{e.code()} {e.details()!r}")
        if not 0.2 <= took <= 5:
            fail("watch_deadline", f"ended after {took:.3f}s")
        # Client and server race to end the call at the same moment; either text is right.
        print(f"PASS watch_deadline_exceeded ({took:.3f}s, {e.details()!r})", flush=True)

    # Methods the server does not implement: UNIMPLEMENTED with grpc-go's texts.
    raw = lambda path: channel.unary_unary(
        path, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    expect_error(
        "unimplemented_service",
        lambda: raw("/no.such.v1.Service/Get")(b"", timeout=10),
        grpc.StatusCode.UNIMPLEMENTED,
        details="unknown service no.such.v1.Service",
    )
    expect_error(
        "unimplemented_method",
        lambda: raw("/grpc.health.v1.Health/Nope")(b"", timeout=10),
        grpc.StatusCode.UNIMPLEMENTED,
        details="unknown method Nope for service grpc.health.v1.Health",
    )

    # Large requests: 1.5 MB is reassembled (NOT_FOUND, the name is unknown); over the 2 MiB
    # receive limit is RESOURCE_EXHAUSTED with grpc-go's exact text.
    expect_error(
        "large_request",
        lambda: stub.Check(req(service="s" * 1_500_000), timeout=30),
        grpc.StatusCode.NOT_FOUND,
        details="unknown service",
    )
    big = req(service="s" * 2_200_000)
    n = len(big.SerializeToString())
    expect_error(
        "request_over_limit",
        lambda: stub.Check(big, timeout=30),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        details=f"grpc: received message larger than max ({n} vs. {RECV_LIMIT_DEFAULT})",
    )

    # A gzip-compressed message (compressible, so the compressed flag is really set): the server
    # has no decompressor, so UNIMPLEMENTED, as grpc-go answers.
    expect_error(
        "gzip_request",
        lambda: stub.Check(
            req(service="z" * 10_000), timeout=10, compression=grpc.Compression.Gzip
        ),
        grpc.StatusCode.UNIMPLEMENTED,
        details='grpc: Decompressor is not installed for grpc-encoding "gzip"',
    )

    # After all of that, the same channel still works.
    r = stub.Check(req(service=""), timeout=10)
    if r.status != SERVING:
        fail("check_after_errors", f"status {r.status}")
    print("PASS check_after_errors", flush=True)

    channel.close()
    print("ALL PASSED", flush=True)


if __name__ == "__main__":
    main()
