//! `etcdctl watch` (3.4.23, Debian's `etcd-client`: Go clientv3, grpc-go) against MetaStore, with
//! a real etcd 3.4.23 as the oracle. Each scenario runs etcdctl as a background process while the
//! test writes through the `etcd-client` crate (puts, deletes of a key, a range and a prefix,
//! txns of several operations and both branches, compaction), then stops it by its PID; what it
//! printed must be identical between etcd and MetaStore on both io drivers.
//!
//! Covered: `watch KEY`, `watch --prefix P`, `watch KEY RANGE_END`, `watch --prev-kv` (also across
//! a lease's puts, a detaching put and the lease's revocation), `watch --rev N` from the past
//! (history, also with `--prev-kv --prefix`, and of all keys with `--prefix ""`), from the future
//! and from a compacted revision (etcdctl exits: "watch is canceled by the server"), each in the
//! simple format and with `-w json`; and interactive `watch -i` with commands on stdin: `watch KEY`,
//! `watch --prefix P`, `watch --prev-kv --rev N KEY`, `progress` (answered to every watcher of
//! the stream), lines etcdctl 3.4 rejects itself (`cancel ID` — 3.4's interactive mode only
//! knows `watch` and `progress` —, an empty line, a bare `watch`), and history watches from a
//! compacted revision next to a live one.
//!
//! Synchronisation: a watcher is known to be registered when the server's
//! `etcd_debugging_mvcc_watcher_total` gauge (etcd 3.4 and MetaStore both export it; MetaStore
//! per core, summed) says so, before anything is written; after each step the test waits until
//! etcdctl has printed the number of stdout/stderr lines that step produces on etcd (written down
//! per step and checked against the oracle), so steps never overlap. Nothing waits a fixed time.
//! After etcdctl is killed the gauge must drop back to where it was. (etcd sends /metrics chunked,
//! and a chunk boundary can split the gauge's line: the body is de-chunked here.)
//!
//! Normalisation, only for what legitimately differs: cluster/member IDs and raft term in JSON
//! headers; revisions (header, create/mod, compact, `progress notify: N`) are written relative
//! to the scenario's starting revision; in interactive mode the lines of a step that reaches
//! several watchers are sorted, since etcdctl prints each watcher from its own goroutine.
//! A missing etcdctl or etcd fails the test naming `scripts/install-test-tools`; it never skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::etcd::{Etcd, INSTALL};
use common::{TestServer, DRIVERS};
use etcd_client::{Client, Compare, CompareOp, DeleteOptions, Txn, TxnOp};
use serde_json::Value;

const ETCDCTL: &str = "/usr/bin/etcdctl";
const GAUGE: &str = "etcd_debugging_mvcc_watcher_total";
/// How long any one wait may take (generous: a loaded 2-core machine must pass).
const WAIT: Duration = Duration::from_secs(20);

/// A running etcdctl: stdout and stderr are collected by two threads. Dropping it kills the
/// process (by its PID) and reaps it, also when the test panics.
struct Ctl {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(mut from: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    let t = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buf, t)
}

impl Ctl {
    /// `etcdctl --endpoints url [-w json] args…` (API v3), stdin held open.
    fn spawn(url: &str, json: bool, args: &[String]) -> Ctl {
        let mut cmd = Command::new(ETCDCTL);
        for (k, _) in std::env::vars() {
            if k.starts_with("ETCDCTL_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("ETCDCTL_API", "3").args(["--endpoints", url, "--dial-timeout", "5s", "--command-timeout", "10s"]);
        if json {
            cmd.args(["-w", "json"]);
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {ETCDCTL} ({e}): {INSTALL}"));
        let stdin = child.stdin.take();
        let (out, t1) = collect(child.stdout.take().unwrap());
        let (err, t2) = collect(child.stderr.take().unwrap());
        Ctl { child, stdin, out, err, readers: vec![t1, t2] }
    }

    /// The complete lines printed so far on stdout (`err` false) or stderr.
    fn lines(&self, err: bool) -> Vec<String> {
        let buf = if err { &self.err } else { &self.out };
        let buf = buf.lock().unwrap();
        let end = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        String::from_utf8_lossy(&buf[..end]).lines().map(str::to_string).collect()
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for etcdctl to exit by itself (how it ended is reported by [`Ctl::stop`]).
    fn wait_exit(&mut self) -> bool {
        poll(|| self.child.try_wait().unwrap().is_some())
    }

    /// Kills etcdctl (SIGKILL, by PID) unless it has exited; how it ended. Output is complete
    /// afterwards.
    fn stop(&mut self) -> String {
        let how = match self.child.try_wait().unwrap() {
            Some(s) => format!("etcdctl exited: {s}"),
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                "etcdctl stopped by the test".to_string()
            }
        };
        self.stdin = None;
        for t in self.readers.drain(..) {
            let _ = t.join();
        }
        how
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One write, as the test makes it.
#[derive(Clone, Copy, Debug)]
enum Op {
    Put(&'static str, &'static str),
    Del(&'static str),
    DelPrefix(&'static str),
    DelRange(&'static str, &'static str),
}

#[derive(Clone, Copy, Debug)]
enum Act {
    /// Starts etcdctl with these arguments (after the global flags); `@N` is the scenario's
    /// starting revision plus N.
    Spawn(&'static [&'static str]),
    /// A line on etcdctl's stdin (`@N` as for Spawn).
    Line(&'static str),
    Do(Op),
    /// `if value(key) == value then … else …` (no compare: always the first branch).
    Tx(Option<(&'static str, &'static str)>, &'static [Op], &'static [Op]),
    /// Compacts (physically) at the starting revision plus N.
    Compact(i64),
    /// Grants a lease with this ID (chosen, so that it is the same on every server), 60 s.
    Grant(i64),
    /// A put attached to a lease.
    PutLease(&'static str, &'static str, i64),
    /// Revokes a lease: its keys are deleted in one revision.
    Revoke(i64),
    /// Waits until etcdctl exits by itself.
    Exit,
}
use Act::*;
use Op::*;

struct Step {
    acts: Vec<Act>,
    /// Watchers the server must report (above the scenario's start) before the test goes on.
    watchers: Option<i64>,
    /// The stdout lines this step makes etcdctl print with `-w json`, and in the simple format
    /// (None: the step is left out of the simple run).
    json: usize,
    simple: Option<usize>,
    /// The stderr lines it makes etcdctl print.
    err: usize,
    /// Its lines come from several watchers (goroutines): compared sorted.
    sort: bool,
}

fn st(acts: &[Act]) -> Step {
    Step { acts: acts.to_vec(), watchers: None, json: 0, simple: Some(0), err: 0, sort: false }
}

impl Step {
    fn w(self, n: i64) -> Self {
        Step { watchers: Some(n), ..self }
    }
    fn out(self, json: usize, simple: usize) -> Self {
        Step { json, simple: Some(simple), ..self }
    }
    fn json_only(self, json: usize) -> Self {
        Step { json, simple: None, ..self }
    }
    fn err(self, n: usize) -> Self {
        Step { err: n, ..self }
    }
    fn sorted(self) -> Self {
        Step { sort: true, ..self }
    }
}

struct Scenario {
    name: &'static str,
    steps: Vec<Step>,
}

fn sc(name: &'static str, steps: Vec<Step>) -> Scenario {
    Scenario { name, steps }
}

/// Writes through the `etcd-client` crate.
struct Writer {
    rt: tokio::runtime::Runtime,
    c: Client,
}

impl Writer {
    fn connect(url: &str) -> Writer {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let c = rt.block_on(Client::connect([url], None)).expect("connect");
        Writer { rt, c }
    }

    fn rev(&mut self) -> i64 {
        let r = self.rt.block_on(self.c.get("rev-probe", None)).unwrap();
        r.header().unwrap().revision()
    }

    fn txn_op(op: Op) -> TxnOp {
        match op {
            Put(k, v) => TxnOp::put(k, v, None),
            Del(k) => TxnOp::delete(k, None),
            DelPrefix(p) => TxnOp::delete(p, Some(DeleteOptions::new().with_prefix())),
            DelRange(k, e) => TxnOp::delete(k, Some(DeleteOptions::new().with_range(e))),
        }
    }

    fn apply(&mut self, act: Act, base: i64) {
        let c = &mut self.c;
        match act {
            Do(Put(k, v)) => {
                self.rt.block_on(c.put(k, v, None)).unwrap();
            }
            Do(Del(k)) => {
                self.rt.block_on(c.delete(k, None)).unwrap();
            }
            Do(DelPrefix(p)) => {
                self.rt.block_on(c.delete(p, Some(DeleteOptions::new().with_prefix()))).unwrap();
            }
            Do(DelRange(k, e)) => {
                self.rt.block_on(c.delete(k, Some(DeleteOptions::new().with_range(e)))).unwrap();
            }
            Tx(cmp, then, els) => {
                let mut t = Txn::new();
                if let Some((k, v)) = cmp {
                    t = t.when([Compare::value(k, CompareOp::Equal, v)]);
                }
                let t = t
                    .and_then(then.iter().map(|o| Self::txn_op(*o)).collect::<Vec<_>>())
                    .or_else(els.iter().map(|o| Self::txn_op(*o)).collect::<Vec<_>>());
                self.rt.block_on(c.txn(t)).unwrap();
            }
            Compact(n) => {
                let opts = etcd_client::CompactionOptions::new().with_physical();
                self.rt.block_on(c.compact(base + n, Some(opts))).unwrap();
            }
            Grant(id) => {
                let opts = etcd_client::LeaseGrantOptions::new().with_id(id);
                self.rt.block_on(c.lease_grant(60, Some(opts))).unwrap();
            }
            PutLease(k, v, id) => {
                let opts = etcd_client::PutOptions::new().with_lease(id);
                self.rt.block_on(c.put(k, v, Some(opts))).unwrap();
            }
            Revoke(id) => {
                self.rt.block_on(c.lease_revoke(id)).unwrap();
            }
            Spawn(_) | Line(_) | Exit => unreachable!(),
        }
    }
}

/// A server under test: its client URL and where its /metrics are.
struct Target {
    url: String,
    addr: SocketAddr,
}

impl Target {
    fn watchers(&self) -> i64 {
        let body = metrics(self.addr);
        assert!(body.contains(&format!("\n{GAUGE} ")), "{} does not export {GAUGE}:\n{body}", self.url);
        common::parse_metric_sum(&body, GAUGE) as i64
    }
}

/// GET /metrics, the body de-chunked: etcd sends it with `Transfer-Encoding: chunked`, and a
/// chunk boundary may fall inside the very line we read (`common::http_get` returns the raw
/// body).
fn metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response from {addr}: {text}"));
    assert!(head.starts_with("HTTP/1.1 200"), "/metrics of {addr}: {head}");
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return body.to_string();
    }
    let (mut out, mut rest) = (String::new(), body);
    loop {
        let (size, tail) = rest.split_once("\r\n").unwrap_or_else(|| panic!("bad chunk in /metrics of {addr}"));
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&tail[..size]);
        rest = &tail[size + 2..];
    }
}

/// Polls `f` every 10 ms until it holds or [`WAIT`] passes.
fn poll(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// `@N` tokens become the revision `base + N`.
fn resolve(word: &str, base: i64) -> String {
    match word.strip_prefix('@').and_then(|n| n.parse::<i64>().ok()) {
        Some(n) => (base + n).to_string(),
        None => word.to_string(),
    }
}

fn resolve_line(line: &str, base: i64) -> String {
    line.split(' ').map(|w| resolve(w, base)).collect::<Vec<_>>().join(" ")
}

/// Revisions relative to `base`, IDs and the raft term replaced.
fn norm_json(v: &mut Value, base: i64) {
    match v {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                match k.as_str() {
                    "cluster_id" | "member_id" | "raft_term" => *v = Value::String(format!("<{k}>")),
                    "revision" | "create_revision" | "mod_revision" | "CompactRevision" => {
                        if let Some(r) = v.as_i64().filter(|r| *r != 0) {
                            *v = Value::String(format!("@{}", r - base));
                        }
                    }
                    _ => norm_json(v, base),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|v| norm_json(v, base)),
        _ => {}
    }
}

fn norm_out(line: &str, base: i64) -> String {
    if let Some(rev) = line.strip_prefix("progress notify: ").and_then(|r| r.parse::<i64>().ok()) {
        return format!("progress notify: @{}", rev - base);
    }
    match serde_json::from_str::<Value>(line) {
        Ok(mut v) if line.starts_with('{') => {
            norm_json(&mut v, base);
            serde_json::to_string(&v).unwrap()
        }
        _ => line.to_string(),
    }
}

/// etcdctl's JSON log lines are reduced to the message and error they report.
fn norm_err(line: &str) -> String {
    match serde_json::from_str::<Value>(line) {
        Ok(v) if line.starts_with("{\"level\":") => {
            format!("log: {} {}", v["msg"].as_str().unwrap_or(""), v["error"].as_str().unwrap_or(""))
        }
        _ => line.to_string(),
    }
}

/// Runs one scenario against `t`; its normalised transcript.
fn run_scenario(t: &Target, w: &mut Writer, s: &Scenario, json: bool) -> String {
    let start = t.watchers();
    let base = w.rev();
    let mut out = format!("# {} ({})\n", s.name, if json { "-w json" } else { "simple" });
    let mut ctl: Option<Ctl> = None;
    let (mut n_out, mut n_err) = (0, 0);
    for step in &s.steps {
        let Some(lines) = (if json { Some(step.json) } else { step.simple }) else { continue };
        out += &format!("## {:?}\n", step.acts);
        for act in &step.acts {
            match *act {
                Spawn(args) => {
                    let args: Vec<String> = args.iter().map(|a| resolve(a, base)).collect();
                    ctl = Some(Ctl::spawn(&t.url, json, &args));
                }
                Line(l) => ctl.as_mut().expect("Line before Spawn").send(&resolve_line(l, base)),
                Exit => {
                    if !ctl.as_mut().expect("Exit before Spawn").wait_exit() {
                        out += "!! etcdctl did not exit\n";
                    }
                }
                a => w.apply(a, base),
            }
        }
        if let Some(n) = step.watchers {
            if !poll(|| t.watchers() == start + n) {
                let c = ctl.as_ref().unwrap();
                let (now, o, e) = (t.watchers() - start, c.lines(false), c.lines(true));
                out +=
                    &format!("!! timed out waiting for {n} watchers, the server reports {now}; etcdctl: {o:?} {e:?}\n");
                break;
            }
        }
        let Some(c) = ctl.as_ref() else {
            assert!(lines == 0 && step.err == 0, "output expected before etcdctl runs: {:?}", step.acts);
            continue;
        };
        let (o0, e0) = (n_out, n_err);
        n_out += lines;
        n_err += step.err;
        let printed = poll(|| c.lines(false).len() >= n_out && c.lines(true).len() >= n_err);
        let (lo, le) = (c.lines(false), c.lines(true));
        let mut block: Vec<String> =
            lo[o0.min(lo.len())..n_out.min(lo.len())].iter().map(|l| norm_out(l, base)).collect();
        if step.sort {
            block.sort();
        }
        block.extend(le[e0.min(le.len())..n_err.min(le.len())].iter().map(|l| format!("stderr: {}", norm_err(l))));
        out += &block.iter().map(|l| format!("{l}\n")).collect::<String>();
        if !printed {
            out += &format!(
                "!! timed out waiting for {n_out} stdout and {n_err} stderr lines in all; printed {} and {}\n",
                lo.len(),
                le.len()
            );
            break;
        }
    }
    if let Some(mut c) = ctl {
        let how = c.stop();
        let (lo, le) = (c.lines(false), c.lines(true));
        let mut rest: Vec<String> = lo.iter().skip(n_out).map(|l| norm_out(l, base)).collect();
        rest.extend(le.iter().skip(n_err).map(|l| format!("stderr: {}", norm_err(l))));
        if !rest.is_empty() {
            out += "## after the last step (unexpected)\n";
            out += &rest.iter().map(|l| format!("{l}\n")).collect::<String>();
        }
        out += &format!("## {how}\n");
    }
    // A watcher of a killed etcdctl goes with its stream, if not at once.
    if !poll(|| t.watchers() == start) {
        out += &format!("!! {} watchers left after etcdctl stopped\n", t.watchers() - start);
    }
    out
}

/// Every scenario in both formats (simple, then `-w json`) against one server.
fn run_all(t: &Target, scenarios: &[Scenario]) -> Vec<String> {
    let mut w = Writer::connect(&t.url);
    let mut v = Vec::new();
    for s in scenarios {
        for json in [false, true] {
            v.push(run_scenario(t, &mut w, s, json));
        }
    }
    v
}

fn tools_present() {
    for bin in [ETCDCTL, common::etcd::ETCD_BIN] {
        assert!(std::path::Path::new(bin).exists(), "{bin} is missing: {INSTALL}");
    }
    let out = Command::new(ETCDCTL).arg("version").env("ETCDCTL_API", "3").output();
    let out = out.unwrap_or_else(|e| panic!("cannot run {ETCDCTL} ({e}): {INSTALL}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("etcdctl version: 3.4."), "expected etcdctl 3.4: {text}\n{INSTALL}");
}

/// Runs the scenarios against a fresh etcd, then a fresh MetaStore per driver: the transcripts
/// must be identical.
fn compare_with_etcd(scenarios: &[Scenario]) {
    tools_present();
    let etcd = Etcd::start();
    let t0 = Instant::now();
    let want = run_all(&Target { url: etcd.url(), addr: etcd.client }, scenarios);
    eprintln!("etcd: {} runs in {:?}", want.len(), t0.elapsed());
    drop(etcd);
    // The per-step line counts are part of the script: etcd must print exactly those.
    for w in &want {
        assert!(!w.contains("\n!! ") && !w.contains("(unexpected)"), "the script does not fit etcd 3.4.23:\n{w}");
    }
    for driver in DRIVERS {
        let srv = TestServer::start(driver, &[]);
        let t0 = Instant::now();
        let got = run_all(&Target { url: srv.url(), addr: srv.addr }, scenarios);
        eprintln!("[{driver}] {} runs in {:?}", got.len(), t0.elapsed());
        let diffs: Vec<String> = want
            .iter()
            .zip(&got)
            .filter(|(w, g)| w != g)
            .map(|(w, g)| format!("--- etcd 3.4.23:\n{w}--- metastore:\n{g}"))
            .collect();
        let log = srv.stop();
        assert!(
            diffs.is_empty(),
            "[{driver}] {} of {} etcdctl watch runs differ from etcd:\n{}\nserver log:\n{log}",
            diffs.len(),
            got.len(),
            diffs.join("\n")
        );
        assert!(!log.contains("panicked"), "[{driver}] {log}");
    }
}

/// Watches started with the command line.
fn plain_scenarios() -> Vec<Scenario> {
    vec![
        sc(
            "watch KEY",
            vec![
                st(&[Spawn(&["watch", "k/a"])]).w(1),
                st(&[Do(Put("k/a", "1"))]).out(1, 3),
                st(&[Do(Put("k/ab", "x")), Do(Put("k/a", "2"))]).out(1, 3),
                st(&[Do(Del("k/a"))]).out(1, 3),
                st(&[Do(Del("k/a")), Do(Put("k/a", "3"))]).out(1, 3),
                st(&[Tx(Some(("k/a", "3")), &[Put("k/a", "4"), Put("k/b", "1"), Del("k/ab")], &[])]).out(1, 3),
                st(&[Tx(Some(("k/a", "nope")), &[Put("k/a", "no")], &[Del("k/a"), Put("k/c", "1")])]).out(1, 3),
            ],
        ),
        sc(
            "watch --prefix",
            vec![
                st(&[Spawn(&["watch", "--prefix", "p/"])]).w(1),
                st(&[Do(Put("p/a", "1"))]).out(1, 3),
                st(&[Do(Put("p", "0")), Do(Put("q/a", "0")), Do(Put("p/b", "1"))]).out(1, 3),
                st(&[Tx(None, &[Put("p/c", "1"), Put("p/d", "1"), Put("pz", "1")], &[])]).out(1, 6),
                st(&[Do(DelPrefix("p/"))]).out(1, 12),
                st(&[Do(Put("p/", ""))]).out(1, 3),
            ],
        ),
        sc(
            "watch KEY RANGE_END",
            vec![
                st(&[Spawn(&["watch", "r/b", "r/d"])]).w(1),
                st(&[Do(Put("r/a", "1")), Do(Put("r/b", "1"))]).out(1, 3),
                st(&[Do(Put("r/d", "1")), Do(Put("r/c", "1"))]).out(1, 3),
                st(&[Do(Put("r/bz", "1"))]).out(1, 3),
                st(&[Do(DelRange("r/a", "r/z"))]).out(1, 9),
            ],
        ),
        sc(
            "watch --prev-kv",
            vec![
                st(&[Spawn(&["watch", "--prev-kv", "--prefix", "v/"])]).w(1),
                st(&[Do(Put("v/a", "1"))]).out(1, 3),
                st(&[Do(Put("v/a", "2"))]).out(1, 5),
                st(&[Do(Del("v/a"))]).out(1, 5),
                st(&[Do(Put("v/a", "3"))]).out(1, 3),
                st(&[Tx(None, &[Put("v/a", "4"), Put("v/b", "1")], &[])]).out(1, 8),
                st(&[Do(DelPrefix("v/"))]).out(1, 10),
            ],
        ),
        sc(
            "watch --rev (history)",
            vec![
                st(&[
                    Do(Put("h/k", "1")),
                    Do(Put("h/x", "1")),
                    Do(Put("h/k", "2")),
                    Do(Del("h/k")),
                    Do(Put("h/k", "3")),
                ]),
                st(&[Spawn(&["watch", "--rev", "@1", "h/k"])]).w(1).out(1, 12),
                st(&[Do(Put("h/k", "4"))]).out(1, 3),
            ],
        ),
        sc(
            "watch --rev --prev-kv --prefix (history)",
            vec![
                st(&[
                    Do(Put("hp/a", "1")),
                    Do(Put("hp/a", "2")),
                    Do(Put("hp/b", "1")),
                    Do(Del("hp/a")),
                    Tx(None, &[Put("hp/a", "5"), Put("hp/b", "2")], &[]),
                ]),
                st(&[Spawn(&["watch", "--prev-kv", "--prefix", "--rev", "@2", "hp/"])]).w(1).out(1, 21),
                st(&[Do(Put("hp/c", "1"))]).out(1, 3),
            ],
        ),
        sc(
            "watch --prefix \"\" --rev (all keys, history)",
            vec![
                st(&[
                    Do(Put("a/1", "x")),
                    Do(Put("b/1", "ключ значение")),
                    Tx(None, &[Put("a/2", "y"), Del("a/1")], &[]),
                ]),
                st(&[Spawn(&["watch", "--prefix", "", "--rev", "@2"])]).w(1).out(1, 9),
                st(&[Do(DelPrefix("b/"))]).out(1, 3),
                st(&[Do(Put("\u{7f}z", "last"))]).out(1, 3),
            ],
        ),
        sc(
            "watch --prev-kv (leases)",
            vec![
                st(&[Spawn(&["watch", "--prev-kv", "--prefix", "l/"])]).w(1),
                st(&[Grant(0x1234_5678_9abc), PutLease("l/a", "1", 0x1234_5678_9abc)]).out(1, 3),
                st(&[PutLease("l/b", "1", 0x1234_5678_9abc)]).out(1, 3),
                st(&[PutLease("l/c", "1", 0x1234_5678_9abc)]).out(1, 3),
                // Detached by a put without the lease.
                st(&[Do(Put("l/a", "2"))]).out(1, 5),
                // The lease's keys go in one revision, sorted.
                st(&[Revoke(0x1234_5678_9abc)]).out(1, 10),
                st(&[Do(Del("l/a"))]).out(1, 5),
            ],
        ),
        sc(
            "watch --rev (future)",
            vec![
                st(&[Spawn(&["watch", "--rev", "@3", "f/k"])]).w(1),
                st(&[Do(Put("f/k", "1")), Do(Put("f/k", "2")), Do(Put("f/k", "3"))]).out(1, 3),
                st(&[Do(Put("f/k", "4"))]).out(1, 3),
            ],
        ),
        sc(
            "watch --rev (compacted)",
            vec![
                st(&[Do(Put("c/k", "1")), Do(Put("c/k", "2")), Do(Put("c/k", "3")), Compact(3)]),
                st(&[Spawn(&["watch", "--rev", "@1", "c/k"]), Exit]).out(1, 0).err(2),
            ],
        ),
    ]
}

/// `watch -i`: commands on stdin.
fn interactive_scenarios() -> Vec<Scenario> {
    vec![
        sc(
            "watch -i",
            vec![
                st(&[Spawn(&["watch", "-i"]), Line("watch i/a")]).w(1),
                st(&[Line("watch --prefix i/p/")]).w(2),
                st(&[Do(Put("i/a", "1"))]).out(1, 3),
                st(&[Do(Put("i/p/x", "1"))]).out(1, 3),
                // Answered once on the stream, delivered to each watcher ("progress notify: N",
                // and with -w json the empty response too).
                st(&[Line("progress")]).out(4, 2).sorted(),
                // 3.4's interactive mode has no `cancel`: etcdctl itself refuses these lines.
                st(&[Line("cancel 0")]).err(1),
                st(&[Line("")]).err(1),
                st(&[Line("watch")]).err(1),
                st(&[Line("bogus")]).err(1),
                st(&[Line("watch --prev-kv --rev @1 i/a")]).w(3).out(1, 3),
                st(&[Do(Put("i/p/y", "1"))]).out(1, 3),
                // Two watchers of i/a print from two goroutines: line order is theirs (json only,
                // where one response is one line).
                st(&[Do(Put("i/a", "2"))]).json_only(2).sorted(),
                st(&[Tx(None, &[Put("i/a", "3"), Put("i/p/z", "1")], &[])]).json_only(3).sorted(),
                st(&[Line("progress")]).out(6, 3).sorted(),
                st(&[Do(Del("i/p/x"))]).out(1, 3),
            ],
        ),
        sc(
            "watch -i (compacted)",
            vec![
                st(&[
                    Do(Put("ic/k", "1")),
                    Do(Put("ic/k", "2")),
                    Do(Put("ic/k", "3")),
                    Do(Put("ic/k", "4")),
                    Compact(3),
                ]),
                st(&[Spawn(&["watch", "-i"]), Line("watch --rev @1 ic/k")]).out(1, 0).err(1),
                st(&[Line("watch --rev @3 ic/k")]).out(1, 6),
                st(&[Line("watch --rev @2 --prefix ic/")]).out(1, 0).err(1),
                st(&[Do(Put("ic/k", "5"))]).out(1, 3),
                st(&[Line("progress")]).out(2, 1),
            ],
        ),
    ]
}

#[test]
fn etcdctl_watch_matches_etcd() {
    let mut all = plain_scenarios();
    all.extend(interactive_scenarios());
    compare_with_etcd(&all);
}
