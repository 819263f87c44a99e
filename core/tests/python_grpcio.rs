//! The health service as grpcio sees it: gRPC's own C-core client (through its Python binding and
//! the stubs of grpcio-health-checking) talks to the real `metastore` binary on both io drivers.
//! It guards against a server that only works with Rust clients: C core has its own HTTP/2 stack,
//! HPACK encoder, flow-control and cancellation habits, and turns a malformed reply into an error
//! of its own. `tests/py/health_client.py` runs Check, Check of an unknown service (NOT_FOUND), 100
//! concurrent Checks, Watch (SERVING, then cancel), Watch of an unknown service (SERVICE_UNKNOWN),
//! deadlines, unimplemented methods, large and over-limit requests and a gzip-compressed request,
//! printing `PASS <case>` for each; this test asserts its exit status and every expected line.
//! A missing `python3` or grpcio fails the test with the install step — it never skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestServer, DRIVERS};

const INSTALL: &str = "install the Python client: `python3 -m pip install grpcio grpcio-health-checking` \
                       (the install step of .ci/run)";
const CASES: [&str; 13] = [
    "check_serving",
    "check_unknown_service",
    "check_concurrent",
    "watch_serving_then_cancel",
    "watch_unknown_service",
    "check_with_deadline",
    "watch_deadline_exceeded",
    "unimplemented_service",
    "unimplemented_method",
    "large_request",
    "request_over_limit",
    "gzip_request",
    "check_after_errors",
];
const SCRIPT_SECS: u64 = 120;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/health_client.py")
}

/// Runs `python3 args…`, returning (exit code, stdout, stderr); kills it after `SCRIPT_SECS`.
fn python(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new("python3")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}): install Python 3, then {INSTALL}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(SCRIPT_SECS);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "python3 {args:?} ran over {SCRIPT_SECS}s\nstdout:\n{}\nstderr:\n{}",
                out_t.join().unwrap(),
                err_t.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), out_t.join().unwrap(), err_t.join().unwrap())
}

#[test]
fn grpcio_health_client() {
    // Fail, with the fix, when the client library is not there.
    let (code, _, err) = python(&["-c", "import grpc, grpc_health.v1.health_pb2_grpc"]);
    assert_eq!(code, Some(0), "grpcio is not importable: {err}\n{INSTALL}");

    let script = script();
    let script = script.to_str().unwrap();
    for driver in DRIVERS {
        let srv = TestServer::start(driver, &[]);
        let addr = srv.addr.to_string();
        let t0 = Instant::now();
        let (code, out, err) = python(&[script, &addr]);
        eprintln!("[{driver}] {script} took {:?}:\n{out}", t0.elapsed());
        if code == Some(3) {
            panic!("[{driver}] the script could not import grpcio: {err}\n{INSTALL}");
        }
        assert_eq!(
            code,
            Some(0),
            "[{driver}] {script} failed\nstdout:\n{out}\nstderr:\n{err}\nserver log:\n{}",
            srv.log()
        );
        for case in CASES {
            assert!(
                out.lines().any(|l| l == format!("PASS {case}") || l.starts_with(&format!("PASS {case} "))),
                "[{driver}] case {case} did not pass:\n{out}\n{err}"
            );
        }
        assert_eq!(out.lines().last(), Some("ALL PASSED"), "[{driver}] {out}");
        // grpcio closed its channel: the server lets the connection go.
        let closed = common::wait_until(10, || srv.per_core("metastore_core_connections").iter().sum::<f64>() == 0.0);
        assert!(
            closed,
            "[{driver}] connections left after grpcio closed: {:?}",
            srv.per_core("metastore_core_connections")
        );
        let log = srv.stop();
        assert!(!log.contains("panicked"), "[{driver}] {log}");
    }
}
