//! python-etcd3 0.12.0 — the Python etcd client applications use, on grpcio (gRPC's C core) with
//! its own generated stubs — against the real `metastore` binary on both io drivers. It guards
//! against a server that only Go and Rust clients accept, and against semantics that drift from
//! etcd's where this client relies on them: `get_all` is a Range over `"\0".."\0"` with a sort,
//! `get_prefix` computes its own range end, `put_if_not_exists`/`replace` are txns comparing
//! `create_revision == 0` and the value, `status()` combines Status with MemberList to find the
//! leader. `tests/py/etcd3_client.py` runs put/get, get_prefix, get_all, delete, transactions with
//! every compare (nested too), compaction, status and members, printing `PASS <case>` for each;
//! this test asserts its exit status and every expected line. python-etcd3 pins protobuf 3.x, so
//! it lives in its own virtualenv (`<target dir>/py-etcd3-venv`, made by
//! `scripts/install-test-tools`); a missing venv fails the test naming that script — it never skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestServer, DRIVERS};

const INSTALL: &str = "run `scripts/install-test-tools`: it makes the virtualenv \
                       `${CARGO_TARGET_DIR:-target}/py-etcd3-venv` with \
                       `pip install etcd3==0.12.0 protobuf==3.20.3 tenacity==6.1.0 grpcio`";
const CASES: [&str; 8] = ["put_get", "get_prefix", "get_all", "delete", "transaction", "compact", "status", "members"];
const SCRIPT_SECS: u64 = 120;

/// The virtualenv's python: `<target dir>/py-etcd3-venv/bin/python` (CARGO_TARGET_TMPDIR is
/// `<target dir>/tmp`).
fn venv_python() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap().join("py-etcd3-venv/bin/python")
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/etcd3_client.py")
}

/// Runs the venv's python with `args`, returning (exit code, stdout, stderr); kills it (by its
/// PID, through the Child) after `SCRIPT_SECS`.
fn python(args: &[&str]) -> (Option<i32>, String, String) {
    let py = venv_python();
    assert!(py.exists(), "{} is missing: {INSTALL}", py.display());
    let mut child = Command::new(&py)
        .args(args)
        // etcd3 0.12.0's generated *_pb2 modules predate protobuf's upb backend.
        .env("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
        .env_remove("PYTHONPATH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): {INSTALL}", py.display()));
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
                "python {args:?} ran over {SCRIPT_SECS}s\nstdout:\n{}\nstderr:\n{}",
                out_t.join().unwrap(),
                err_t.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), out_t.join().unwrap(), err_t.join().unwrap())
}

#[test]
fn python_etcd3_client() {
    // Fail, with the fix, when the client library is not there.
    let (code, out, err) = python(&["-c", "import etcd3, grpc; print(etcd3.__version__)"]);
    assert_eq!(code, Some(0), "python-etcd3 is not importable: {err}\n{INSTALL}");
    assert_eq!(out.trim(), "0.12.0", "expected python-etcd3 0.12.0\n{INSTALL}");

    let script = script();
    let script = script.to_str().unwrap();
    for driver in DRIVERS {
        let srv = TestServer::start(driver, &[]);
        let addr = srv.addr.to_string();
        let t0 = Instant::now();
        let (code, out, err) = python(&[script, &addr]);
        eprintln!("[{driver}] {script} took {:?}:\n{out}", t0.elapsed());
        if code == Some(3) {
            panic!("[{driver}] the script could not import etcd3: {err}\n{INSTALL}");
        }
        assert_eq!(
            code,
            Some(0),
            "[{driver}] {script} failed\nstdout:\n{out}\nstderr:\n{err}\nserver log:\n{}",
            srv.log()
        );
        for case in CASES {
            assert!(
                out.lines().any(|l| l == format!("PASS {case}")),
                "[{driver}] case {case} did not pass:\n{out}\n{err}"
            );
        }
        assert_eq!(out.lines().last(), Some("ALL PASSED"), "[{driver}] {out}");
        let log = srv.stop();
        assert!(!log.contains("panicked"), "[{driver}] {log}");
    }
}
