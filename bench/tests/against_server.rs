//! `metastore-bench` against the real `metastore` server: every workload runs ~1000 operations
//! through the bench's own HTTP/2 client and must finish with answers, no errors (put, both
//! range consistencies, txn-put, txn-mixed), CPU figures for both sides, and a well-formed JSON
//! line; `null` must report the server's UNIMPLEMENTED (the server answers the Bench service
//! only behind a flag this test does not give). An open-loop run checks that `--rate` and
//! `--duration` bound the number of operations. It guards against a client that only agrees with
//! itself, and against a report that prints numbers for requests that failed. The streaming
//! workloads (watch-latency, watch-fanout, lease-keepalive) run briefly too: every watcher gets
//! every put's event (events = watchers × puts, none missing), every keep-alive is answered,
//! with no errors and latencies in order.
//!
//! The server binary belongs to another package, so `CARGO_BIN_EXE_metastore` does not exist
//! here: the test uses `target/debug/metastore` under the workspace root (or under
//! `CARGO_TARGET_DIR`), which `cargo test --workspace` has just built; when it is missing (e.g.
//! `cargo test -p metastore-bench` on a fresh tree) the test builds it with
//! `cargo build -p metastore-core --bin metastore` first. Cargo releases its build lock before it
//! runs tests, so this does not deadlock. The server is stopped by PID with SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench/ has a parent").to_path_buf()
}

/// `target/debug/metastore`, built first if it is not there.
fn metastore_binary() -> PathBuf {
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |t| root.join(t));
    let bin = target.join("debug").join("metastore");
    if !bin.exists() {
        eprintln!("{} is missing: building it", bin.display());
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "metastore-core", "--bin", "metastore"])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p metastore-core --bin metastore failed");
    }
    assert!(bin.exists(), "{} still missing after the build", bin.display());
    bin
}

struct Server {
    child: Option<Child>,
    url: String,
    log: PathBuf,
}

impl Server {
    fn start(tag: &str) -> Server {
        Self::start_with(tag, &[])
    }

    fn start_with(tag: &str, extra: &[&str]) -> Server {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data");
        let log = dir.join("server.log");
        let child = Command::new(metastore_binary())
            .args(["--listen-client-urls", "http://127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start metastore");
        let mut srv = Server { child: Some(child), url: String::new(), log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(line) = std::fs::read_to_string(data.join("client-urls")).ok().and_then(|s| {
                let first = s.lines().next()?.trim().to_string();
                (!first.is_empty()).then_some(first)
            }) {
                srv.url = line;
                break;
            }
            if let Some(status) = srv.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("metastore exited early ({status}):\n{}", srv.log());
            }
            assert!(Instant::now() < deadline, "metastore did not start:\n{}", srv.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        srv
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM by PID, then wait (SIGKILL after 15 s). Returns whether it exited cleanly.
    fn stop_inner(&mut self) -> bool {
        let Some(mut child) = self.child.take() else { return true };
        // SAFETY: kill(2) with the PID of a child we started and have not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) {
        let clean = self.stop_inner();
        let log = self.log();
        assert!(clean, "metastore did not exit cleanly after SIGTERM:\n{log}");
        assert!(!log.contains("panicked"), "the server log shows a panic:\n{log}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Runs `metastore-bench` and returns (stdout, the JSON line).
fn bench(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_metastore-bench"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run metastore-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "metastore-bench {args:?} failed ({}):\n{stdout}\n{stderr}", out.status);
    let json = stdout.lines().last().unwrap_or_default().to_string();
    assert!(json.starts_with('{') && json.ends_with('}'), "no JSON line last in:\n{stdout}");
    (stdout, json)
}

/// A number field of the flat JSON record.
fn num(json: &str, field: &str) -> f64 {
    let key = format!("\"{field}\":");
    let at = json.find(&key).unwrap_or_else(|| panic!("{field} missing from {json}")) + key.len();
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].parse().unwrap_or_else(|_| panic!("{field} is not a number in {json}"))
}

/// The `errors` object's body (error messages here hold no braces).
fn errors(json: &str) -> &str {
    let at = json.find("\"errors\":{").expect("errors field") + "\"errors\":{".len();
    &json[at..at + json[at..].find('}').expect("errors object closes")]
}

/// A counter from the server's `/metrics` (HTTP/1.1, read to the end of the body).
fn metric(url: &str, name: &str) -> f64 {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let line = text
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

const OPS: &str = "1000";

#[test]
fn every_workload_against_metastore() {
    let srv = Server::start("all");
    let pid = srv.pid().to_string();
    let common = ["--endpoints", &srv.url, "--conns", "2", "--clients", "8", "--total", OPS, "--server-pid", &pid];
    let common = [&common[..], &["--key-space-size", "100", "--json", "--no-progress"]].concat();
    let cases: [&[&str]; 6] = [
        &["put"],
        &["range", "--consistency", "l"],
        &["range", "--consistency", "s", "--sequential-keys"],
        &["txn-put"],
        &["txn-mixed", "--rw-ratio", "3"],
        &["null"],
    ];
    for case in cases {
        let (stdout, json) = bench(&[case, &common[..]].concat());
        eprintln!("{case:?}: {json}");
        assert_eq!(stdout.lines().count(), 1, "--json prints only the JSON line:\n{stdout}");
        assert!(json.contains(&format!("\"workload\":\"{}\"", case[0])), "{json}");
        assert!(json.contains(&format!("\"endpoints\":[\"{}\"]", srv.url)), "{json}");
        assert_eq!(num(&json, "total"), 1000.0, "{json}");
        assert!(num(&json, "qps") > 0.0, "{json}");
        assert!(num(&json, "duration_s") > 0.0, "{json}");
        assert!(num(&json, "client_cpu_us_per_req") > 0.0, "{json}");
        assert!(num(&json, "server_cpu_us_per_req") >= 0.0, "{json}");
        let p50 = num(&json, "p50_us");
        assert!(p50 > 0.0 && p50 <= num(&json, "p99_us") && num(&json, "p99_us") <= num(&json, "max_us"), "{json}");
        if case[0] == "null" {
            let errs = errors(&json);
            assert!(
                errs.starts_with("\"UNIMPLEMENTED") && errs.ends_with(":1000"),
                "every null call should be UNIMPLEMENTED: {json}"
            );
        } else {
            assert_eq!(errors(&json), "", "{case:?} reported errors: {json}");
        }
        if case[0] == "txn-put" {
            assert_eq!(num(&json, "calls"), 2000.0, "txn-put is a range and a txn: {json}");
        }
    }
    // The human summary (everything but --json): its lines, and the JSON line still last.
    let (stdout, _) = bench(&[&["range", "--consistency=s", "--no-progress"], &common[..12]].concat());
    for want in ["Summary: range (serializable)", "QPS:", "P99.9", "CPU per op: client", "Latency histogram"] {
        assert!(stdout.contains(want), "{want} missing from the summary:\n{stdout}");
    }
    assert!(!stdout.contains("n/a (--server-pid)"), "--server-pid was given:\n{stdout}");
    srv.stop();
}

/// With `--experimental-bench-null` the server answers the Bench service: every null call
/// succeeds, and the server spends CPU on it (it is not answered by an error path).
#[test]
fn null_answers_behind_the_flag() {
    let srv = Server::start_with("null", &["--experimental-bench-null"]);
    let pid = srv.pid().to_string();
    let (_, json) = bench(&[
        "null",
        "--endpoints",
        &srv.url,
        "--conns",
        "2",
        "--clients",
        "8",
        "--total",
        OPS,
        "--server-pid",
        &pid,
        "--json",
        "--no-progress",
    ]);
    eprintln!("{json}");
    assert_eq!(errors(&json), "", "null calls failed: {json}");
    assert_eq!(num(&json, "total"), 1000.0, "{json}");
    assert_eq!(num(&json, "calls"), 1000.0, "{json}");
    srv.stop();
}

#[test]
fn open_loop_rate_and_duration_bound_the_run() {
    let srv = Server::start("rate");
    let (_, json) = bench(&[
        "put",
        "--endpoints",
        &srv.url,
        "--conns",
        "2",
        "--clients",
        "4",
        "--rate",
        "500",
        "--duration",
        "1s",
        "--json",
        "--no-progress",
    ]);
    eprintln!("{json}");
    let total = num(&json, "total");
    assert!((400.0..=501.0).contains(&total), "500/s for 1 s should send about 500 puts: {json}");
    // QPS is over the whole --duration, also when the last put was due before its end.
    assert!(num(&json, "qps") <= 501.0 && num(&json, "duration_s") >= 1.0, "{json}");
    assert_eq!(errors(&json), "", "{json}");
    assert_eq!(num(&json, "rate"), 500.0, "{json}");
    assert!(json.contains("\"server_cpu_us_per_req\":null"), "{json}");
    srv.stop();
}

/// The watch workloads: one key and a prefix, several watchers per stream, closed loop and
/// paced; then lease-keepalive. Every event arrives (a missing one is an error), and the figures
/// agree with each other.
#[test]
fn streaming_workloads_against_metastore() {
    let srv = Server::start("streams");
    let pid = srv.pid().to_string();
    let common = ["--endpoints", &srv.url, "--server-pid", &pid, "--json", "--no-progress"];
    let cases: [(&[&str], f64); 3] = [
        (&["watch-latency", "--watchers", "20", "--watchers-per-stream", "5", "--conns", "2", "--total", "200"], 20.0),
        (
            &[
                "watch-fanout",
                "--watchers",
                "300",
                "--watchers-per-stream",
                "10",
                "--conns",
                "3",
                "--rate",
                "200",
                "--duration",
                "1s",
            ],
            300.0,
        ),
        (
            &[
                "watch-latency",
                "--watch-prefix",
                "--key-space-size",
                "100",
                "--watchers",
                "4",
                "--conns",
                "2",
                "--total",
                "300",
                "--sequential-keys",
            ],
            4.0,
        ),
    ];
    for (case, watchers) in cases {
        let (_, json) = bench(&[case, &common[..]].concat());
        eprintln!("{case:?}: {json}");
        assert!(json.contains(&format!("\"workload\":\"{}\"", case[0])), "{json}");
        assert_eq!(errors(&json), "", "{case:?} reported errors: {json}");
        assert_eq!(num(&json, "watchers"), watchers, "{json}");
        assert_eq!(num(&json, "missing_events"), 0.0, "{json}");
        let puts = num(&json, "puts");
        assert_eq!(num(&json, "puts_ok"), puts, "{json}");
        assert_eq!(num(&json, "calls"), puts, "{json}");
        if case.contains(&"--total") {
            assert_eq!(puts, num(&json, "total") / watchers, "{json}");
            assert_eq!(puts, case[case.iter().position(|a| *a == "--total").unwrap() + 1].parse().unwrap());
        } else {
            assert!((150.0..=201.0).contains(&puts), "200 puts/s for 1 s: {json}");
            // Over the whole second, not up to the last put only.
            assert!(num(&json, "puts_per_s") <= 201.0, "{json}");
        }
        assert_eq!(num(&json, "events"), puts * watchers, "every watcher gets every put: {json}");
        assert_eq!(num(&json, "total"), num(&json, "events"), "{json}");
        assert!(num(&json, "events_per_s") > 0.0 && num(&json, "events_per_s") == num(&json, "qps"), "{json}");
        assert!(num(&json, "puts_per_s") > 0.0, "{json}");
        assert!(num(&json, "client_cpu_us_per_req") > 0.0, "{json}");
        assert!(num(&json, "server_cpu_us_per_req") >= 0.0, "{json}");
        let p50 = num(&json, "p50_us");
        assert!(p50 > 0.0 && p50 <= num(&json, "p99_us") && num(&json, "p99_us") <= num(&json, "max_us"), "{json}");
        // Put-to-event on loopback: well under a second at these rates.
        assert!(p50 < 1_000_000.0, "{json}");
        assert!(num(&json, "put_p50_us") > 0.0, "{json}");
    }
    // The summary of watch-fanout leads with events per second.
    let (stdout, _) = bench(&[
        "watch-fanout",
        "--endpoints",
        &srv.url,
        "--watchers",
        "10",
        "--total",
        "50",
        "--server-pid",
        &pid,
        "--no-progress",
    ]);
    for want in ["Summary: watch-fanout, 10 watchers", "Events:", "Put-to-event: P50", "Puts:", "CPU per event"] {
        assert!(stdout.contains(want), "{want} missing from the summary:\n{stdout}");
    }
    assert!(stdout.find("Events:").unwrap() < stdout.find("Put-to-event: P50").unwrap(), "{stdout}");

    let (_, json) = bench(
        &[&["lease-keepalive", "--conns", "2", "--clients", "8", "--total", OPS, "--lease-ttl", "30"], &common[..]]
            .concat(),
    );
    eprintln!("lease-keepalive: {json}");
    assert_eq!(errors(&json), "", "{json}");
    assert_eq!(num(&json, "total"), 1000.0, "{json}");
    assert_eq!(num(&json, "calls"), 1000.0, "one keep-alive per operation: {json}");
    assert_eq!(num(&json, "lease_ttl"), 30.0, "{json}");
    assert!(num(&json, "qps") > 0.0 && num(&json, "client_cpu_us_per_req") > 0.0, "{json}");
    let p50 = num(&json, "p50_us");
    assert!(p50 > 0.0 && p50 <= num(&json, "p99_us") && num(&json, "p99_us") <= num(&json, "max_us"), "{json}");
    // Every lease granted was revoked after the run (none is left to expire later).
    let granted = metric(&srv.url, "etcd_debugging_lease_granted_total");
    assert_eq!(granted, 8.0, "one lease per client");
    assert_eq!(metric(&srv.url, "etcd_debugging_lease_revoked_total"), granted);
    assert!(metric(&srv.url, "etcd_debugging_lease_renewed_total") >= 1000.0);
    srv.stop();
}

#[test]
fn unreachable_server_and_bad_flags_fail_with_a_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_metastore-bench")).args(["put", "--conns", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--conns"));
    let out =
        Command::new(env!("CARGO_BIN_EXE_metastore-bench")).args(["watch-latency", "--clients", "2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--clients does not apply"), "{out:?}");
    // Port 1 on loopback: nothing listens there.
    let out = Command::new(env!("CARGO_BIN_EXE_metastore-bench"))
        .args(["put", "--endpoints", "http://127.0.0.1:1", "--no-progress"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("connect 127.0.0.1:1"), "{out:?}");
}
