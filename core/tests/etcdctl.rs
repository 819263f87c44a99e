//! etcdctl (3.4.23, Debian's `etcd-client`: Go clientv3, grpc-go) against MetaStore, with a real
//! etcd 3.4.23 as the oracle. It guards against a server that a hand-written client accepts but
//! the official tool does not, and against answers that differ from etcd's in what a user sees:
//! values, revisions, counts, sort orders, `-w json` / `-w fields` field sets, error texts and gRPC
//! codes (etcdctl logs the code of every failed call on stderr). The same scripted sequence of
//! `put`, `get` (every flag), `del`, `txn` (from stdin, plain and `-i`), `compaction`,
//! `endpoint status|health` and `member list` runs against a fresh etcd started by the test on
//! free loopback ports and against a fresh MetaStore per io driver; every output is normalised
//! only for what legitimately differs (cluster/member IDs, raft term and indexes, URLs, `took`
//! durations, db sizes, the version string) and must then be identical, step by step.
//! `endpoint status -w json` and `member list -w json` are also checked on their own: MetaStore
//! leads, reports a 3.5.x version, non-zero raft term/index and a non-zero db size.
//! A missing etcdctl or etcd fails the test naming `scripts/install-test-tools`; it never skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::etcd::{Etcd, INSTALL};
use common::{TestServer, DRIVERS};
use serde_json::Value;

const ETCDCTL: &str = "/usr/bin/etcdctl";
const STEP_SECS: u64 = 30;

/// One etcdctl run: its exit code and what it printed.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `etcdctl --endpoints url args…` (API v3) with `stdin`, killing it after `STEP_SECS`.
fn etcdctl(url: &str, args: &[&str], stdin: &str) -> Out {
    let mut cmd = Command::new(ETCDCTL);
    for (k, _) in std::env::vars() {
        if k.starts_with("ETCDCTL_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", url, "--dial-timeout", "5s", "--command-timeout", "10s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {ETCDCTL} ({e}): {INSTALL}"));
    let mut input = child.stdin.take().unwrap();
    // etcdctl may exit without reading its input (a failed dial, a command that takes none): a
    // broken pipe here is not the test's failure; its exit code and output tell what happened.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
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
    let deadline = Instant::now() + Duration::from_secs(STEP_SECS);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("etcdctl {args:?} against {url} ran over {STEP_SECS}s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Out { code: status.code(), stdout: out_t.join().unwrap(), stderr: err_t.join().unwrap() }
}

/// How a step's output is normalised beyond the common rules.
#[derive(Clone, Copy, PartialEq)]
enum Norm {
    Plain,
    /// `endpoint status` in simple format: `url, id, version, db size, leader, learner, term,
    /// index, applied index, errors`.
    StatusLine,
}

struct Step {
    args: Vec<String>,
    stdin: String,
    norm: Norm,
}

fn step(args: &[&str]) -> Step {
    Step { args: args.iter().map(|s| s.to_string()).collect(), stdin: String::new(), norm: Norm::Plain }
}

fn txn(args: &[&str], stdin: &str) -> Step {
    Step { stdin: stdin.to_string(), ..step(&[&["txn"], args].concat()) }
}

/// What identifies one server: replaced by placeholders before comparing.
struct Ids {
    member: u64,
    cluster: u64,
}

/// Replaces every `http://…` URL with `<URL>`.
fn norm_urls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("http://") {
        out.push_str(&rest[..i]);
        out.push_str("<URL>");
        let tail = &rest[i..];
        let end = tail.find([',', ' ', '"', '\n', ']', '\t']).unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Replaces what follows `marker` up to the end of its line (or a `,`) with `with`.
fn norm_after(s: &str, marker: &str, with: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(marker) {
        out.push_str(&rest[..i + marker.len()]);
        out.push_str(with);
        let tail = &rest[i + marker.len()..];
        let end = tail.find(['\n', ',']).unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Keys of etcdctl's JSON whose values legitimately differ between two servers.
const JSON_VOLATILE: [&str; 11] = [
    "cluster_id",
    "member_id",
    "raft_term",
    "leader",
    "raftIndex",
    "raftTerm",
    "raftAppliedIndex",
    "dbSize",
    "dbSizeInUse",
    "took",
    "ID",
];

fn norm_json(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                // Status's `version` is the server's version string; a KeyValue's is a number.
                if JSON_VOLATILE.contains(&k.as_str()) || (k == "version" && v.is_string()) {
                    *v = Value::String(format!("<{k}>"));
                } else {
                    norm_json(v);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(norm_json),
        _ => {}
    }
}

/// `-w fields` keys whose values legitimately differ (the server's version only when quoted).
const FIELDS_VOLATILE: [&str; 8] = [
    "\"RaftTerm\" : ",
    "\"RaftIndex\" : ",
    "\"RaftAppliedIndex\" : ",
    "\"DBSize\" : ",
    "\"DBSizeInUse\" : ",
    "\"Version\" : \"",
    "\"ClusterID\" : ",
    "\"MemberID\" : ",
];

fn norm_text(s: &str, ids: &Ids) -> String {
    let mut s = norm_urls(s);
    for (id, tag) in [(ids.member, "<MEMBER>"), (ids.cluster, "<CLUSTER>")] {
        s = s.replace(&id.to_string(), tag).replace(&format!("{id:x}"), tag);
    }
    s = norm_after(&s, "took = ", "<TOOK>");
    for marker in FIELDS_VOLATILE {
        s = norm_after(&s, marker, "<X>");
    }
    s
}

/// The whole of one step's output, normalised: exit code, stdout, and stderr with etcdctl's
/// JSON log lines reduced to the gRPC error they report.
fn normalise(out: &Out, norm: Norm, ids: &Ids) -> String {
    // JSON lines (`-w json`, also after `txn -i`'s prompts) are compared as values.
    let stdout: String = out
        .stdout
        .lines()
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(mut v) if l.starts_with(['{', '[']) => {
                norm_json(&mut v);
                serde_json::to_string(&v).unwrap() + "\n"
            }
            _ => format!("{l}\n"),
        })
        .collect();
    let mut stdout = norm_text(&stdout, ids);
    if norm == Norm::StatusLine {
        stdout = stdout
            .lines()
            .map(|l| {
                let mut cols: Vec<&str> = l.split(", ").collect();
                for i in [2, 3, 6, 7, 8] {
                    if let Some(c) = cols.get_mut(i) {
                        *c = "<X>";
                    }
                }
                cols.join(", ") + "\n"
            })
            .collect();
    }
    let stderr: String = out
        .stderr
        .lines()
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(v) if l.starts_with("{\"level\":") => {
                format!("log: {} {}\n", v["msg"].as_str().unwrap_or(""), v["error"].as_str().unwrap_or(""))
            }
            _ => format!("{l}\n"),
        })
        .collect();
    format!("exit {:?}\n--- stdout\n{stdout}--- stderr\n{}", out.code, norm_text(&stderr, ids))
}

/// The server's member and cluster IDs, read with `endpoint status -w json`.
fn ids_of(url: &str) -> (Ids, Value) {
    let out = etcdctl(url, &["endpoint", "status", "-w", "json"], "");
    assert_eq!(out.code, Some(0), "endpoint status failed against {url}: {}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let h = &v[0]["Status"]["header"];
    let ids = Ids { member: h["member_id"].as_u64().unwrap(), cluster: h["cluster_id"].as_u64().unwrap() };
    (ids, v)
}

/// Runs every step against `url`, returning each normalised output.
fn run(url: &str, steps: &[Step]) -> Vec<String> {
    let (ids, _) = ids_of(url);
    steps
        .iter()
        .map(|s| {
            let args: Vec<&str> = s.args.iter().map(String::as_str).collect();
            normalise(&etcdctl(url, &args, &s.stdin), s.norm, &ids)
        })
        .collect()
}

fn describe(s: &Step) -> String {
    let mut d = format!("etcdctl {}", s.args.join(" "));
    if !s.stdin.is_empty() {
        d += &format!(" <<< {:?}", clip(&s.stdin));
    }
    d
}

/// At most 2000 characters of `s` (large values make for long outputs).
fn clip(s: &str) -> String {
    match s.char_indices().nth(2000) {
        Some((i, _)) => format!("{}… ({} bytes in all)\n", &s[..i], s.len()),
        None => s.to_string(),
    }
}

/// Compares MetaStore's outputs with etcd's, reporting every differing step at once.
fn assert_same(driver: &str, steps: &[Step], want: &[String], got: &[String], log: &str) {
    let mut diffs = String::new();
    let mut n = 0;
    for ((s, w), g) in steps.iter().zip(want).zip(got) {
        if w != g {
            n += 1;
            diffs += &format!("\n### {}\n--- etcd:\n{}--- metastore:\n{}", describe(s), clip(w), clip(g));
        }
    }
    assert!(n == 0, "[{driver}] {n} of {} steps differ from etcd 3.4.23:{diffs}\nserver log:\n{log}", steps.len());
}

fn tools_present() {
    for bin in [ETCDCTL, common::etcd::ETCD_BIN] {
        assert!(std::path::Path::new(bin).exists(), "{bin} is missing: {INSTALL}");
    }
    let out = etcdctl("http://127.0.0.1:1", &["version"], "");
    assert_eq!(out.code, Some(0), "`etcdctl version` failed: {}\n{INSTALL}", out.stderr);
    assert!(out.stdout.contains("etcdctl version: 3.4."), "expected etcdctl 3.4: {}", out.stdout);
}

/// Runs `steps` against a fresh etcd and a fresh MetaStore per driver; outputs must match.
fn compare_with_etcd(steps: &[Step]) {
    tools_present();
    let etcd = Etcd::start();
    let t0 = Instant::now();
    let want = run(&etcd.url(), steps);
    // A step etcdctl 3.4 itself rejects (a flag it lacks) would compare nothing of the server.
    for (s, w) in steps.iter().zip(&want) {
        assert!(
            !w.contains("Error: unknown flag") && !w.contains("\nUSAGE:") && !w.contains("invalid txn request"),
            "{} is not a valid etcdctl 3.4 command:\n{w}",
            describe(s)
        );
    }
    eprintln!("etcd: {} steps in {:?}", steps.len(), t0.elapsed());
    drop(etcd);
    for driver in DRIVERS {
        let srv = TestServer::start(driver, &[]);
        let t0 = Instant::now();
        let got = run(&srv.url(), steps);
        eprintln!("[{driver}] {} steps in {:?}", steps.len(), t0.elapsed());
        assert_same(driver, steps, &want, &got, &srv.log());
        let log = srv.stop();
        assert!(!log.contains("panicked"), "[{driver}] {log}");
    }
}

/// Keys with distinct create/mod revisions, versions and values, so every sort target orders
/// them differently.
fn seed() -> Vec<Step> {
    [
        &["put", "foo", "bar"][..],
        &["put", "foo", "bar2", "--prev-kv"],
        &["put", "foo1", "v-c"],
        &["put", "foo2", "v-b"],
        &["put", "foo2", "v-a"],
        &["put", "foo3", "v-d"],
        &["put", "foo", "v-e"],
        &["put", "fop", "x"],
        &["put", "a", "1"],
        &["put", "b", "2"],
        &["put", "c", "3"],
        &["put", "z", "26"],
    ]
    .iter()
    .map(|a| step(a))
    .collect()
}

#[test]
fn etcdctl_get_put_matches_etcd() {
    let mut steps = seed();
    let gets: &[&[&str]] = &[
        &["get", "foo"],
        &["get", "foo", "-w", "json"],
        &["get", "foo", "-w", "fields"],
        &["get", "foo", "-w", "simple"],
        &["get", "foo", "--prefix"],
        &["get", "foo", "--prefix", "-w", "json"],
        &["get", "foo", "--prefix", "--limit", "2"],
        &["get", "foo", "--prefix", "--limit", "2", "-w", "json"],
        &["get", "foo", "--prefix", "--limit", "2", "-w", "fields"],
        &["get", "foo", "--from-key"],
        &["get", "foo", "--from-key", "--limit", "3", "-w", "json"],
        &["get", "", "--from-key", "--keys-only"],
        &["get", "", "--from-key", "-w", "json"],
        &["get", "a", "c"],
        &["get", "a", "c", "-w", "json"],
        &["get", "c", "a"],
        &["get", "foo", "--prefix", "--order", "ASCEND"],
        &["get", "foo", "--prefix", "--order", "DESCEND"],
        &["get", "foo", "--prefix", "--order", "DESCEND", "--limit", "2", "-w", "json"],
        &["get", "foo", "--prefix", "--keys-only"],
        &["get", "foo", "--prefix", "--keys-only", "-w", "json"],
        &["get", "foo", "--rev", "2"],
        &["get", "foo", "--rev", "3", "-w", "json"],
        &["get", "foo", "--prefix", "--rev", "5", "-w", "json"],
        &["get", "foo2", "--rev", "1", "-w", "json"],
        &["get", "foo", "--rev", "100"],
        &["get", "foo", "--consistency", "s"],
        &["get", "foo", "--consistency", "s", "-w", "json"],
        &["get", "foo", "--consistency", "l"],
        &["get", "foo", "--print-value-only"],
        &["get", "foo", "--prefix", "--print-value-only"],
        &["get", "nosuchkey"],
        &["get", "nosuchkey", "-w", "json"],
        &["get", "nosuchkey", "-w", "fields"],
        &["get", "foo", "--rev", "-1"],
        &["get", "foo", "--prefix", "--limit", "-1"],
        &["get", "foo", "--prefix", "--limit", "1", "--sort-by", "VALUE"],
        &["get", "z", "--from-key"],
        &["get", "zz", "--from-key", "-w", "json"],
        &["get", "", "--prefix", "--keys-only"],
        &["get", "foo", "--sort-by", "MODIFY", "--order", "DESCEND"],
        &["put", "ключ", "значение"],
        &["get", "ключ", "-w", "json"],
        &["get", "foo", "--prefix", "--hex"],
        &["get", "foo", "--rev", "0", "-w", "fields"],
    ];
    steps.extend(gets.iter().map(|a| step(a)));
    for target in ["KEY", "VERSION", "CREATE", "MODIFY", "VALUE"] {
        steps.push(step(&["get", "foo", "--prefix", "--sort-by", target]));
        steps.push(step(&["get", "foo", "--prefix", "--sort-by", target, "--order", "ASCEND"]));
        steps.push(step(&["get", "foo", "--prefix", "--sort-by", target, "--order", "DESCEND", "-w", "json"]));
        steps.push(step(&["get", "", "--from-key", "--sort-by", target, "--order", "DESCEND", "--limit", "3"]));
    }
    let puts: &[&[&str]] = &[
        &["put", "foo", "--ignore-value"],
        &["get", "foo", "-w", "json"],
        &["put", "foo", "new", "--ignore-lease"],
        &["get", "foo", "-w", "json"],
        &["put", "foo", "--ignore-value", "--prev-kv"],
        &["put", "nokey", "--ignore-value"],
        &["put", "nokey", "v", "--ignore-lease"],
        &["put", "k", "v", "--lease", "1234"],
        &["put", "foo", "v", "--lease", "1234", "--prev-kv"],
        &["put", "foo", "v", "--ignore-lease", "--lease", "1234"],
        &["put", "foo", "x", "--prev-kv", "-w", "json"],
        &["put", "newkey", "v", "--prev-kv", "-w", "json"],
        &["put", "newkey", "", "-w", "fields"],
        &["get", "newkey", "-w", "json"],
        &["put", "", "v"],
        &["get", ""],
        &["get", "", "-w", "json"],
        &["get", "foo", "-w", "json"],
    ];
    steps.extend(puts.iter().map(|a| step(a)));
    // Values from stdin: 1 MB is fine; 1.6 MB passes the client (2 MiB) but not the server's
    // --max-request-bytes (1.5 MiB); 3 MB is refused by the client itself.
    for (key, len) in [("big", 1_000_000), ("big2", 1_600_000), ("big3", 3_000_000)] {
        steps.push(Step { stdin: "v".repeat(len), ..step(&["put", key]) });
    }
    steps.push(step(&["get", "big", "--print-value-only"]));
    steps.push(step(&["get", "big", "--keys-only", "-w", "json"]));
    steps.push(step(&["get", "big2", "-w", "json"]));
    compare_with_etcd(&steps);
}

#[test]
fn etcdctl_del_and_txn_match_etcd() {
    let mut steps = seed();
    let dels: &[&[&str]] = &[
        &["del", "nosuchkey"],
        &["del", "nosuchkey", "-w", "json"],
        &["del", "a"],
        &["del", "a", "--prev-kv"],
        &["del", "b", "--prev-kv"],
        &["get", "", "--from-key", "-w", "json"],
        &["del", "c", "d"],
        &["del", "fop", "--from-key", "--prev-kv", "-w", "json"],
        &["del", "foo3", "foo"],
        &["del", "foo1", "foo3", "--prev-kv"],
        &["del", "foo", "--prefix", "--prev-kv"],
        &["del", "foo", "--prefix", "-w", "json"],
        &["get", "", "--from-key", "-w", "json"],
        &["put", "foo", "again"],
        &["get", "foo", "-w", "json"],
        &["get", "foo", "--rev", "7", "-w", "json"],
        &["put", "x1", "1"],
        &["put", "x2", "2"],
        &["del", "", "--prefix", "--prev-kv"],
        &["get", "", "--from-key", "-w", "json"],
        &["put", "t1", "v1"],
        &["put", "t2", "v2"],
        &["put", "t2", "v2b"],
    ];
    steps.extend(dels.iter().map(|a| step(a)));
    // Every compare target and operator; both branches; gets, puts and deletes in each.
    steps.extend([
        txn(
            &["-w", "json"],
            "value(\"t1\") = \"v1\"\nversion(\"t2\") = \"2\"\ncreate(\"t1\") > \"0\"\nmod(\"t2\") < \"1000\"\n\n\
             put t1 v1b\nget t1\ndel t2\nget t2\n\nput fail 1\n\n",
        ),
        txn(&[], "value(\"t1\") = \"nope\"\n\nput t3 x\n\nget t1\nput t3 y\nget t3\n\n"),
        txn(&["-w", "json"], "value(\"t1\") != \"nope\"\n\nget t1 --prefix\n\n\n"),
        txn(&["-w", "json"], "value(\"nokey\") = \"\"\n\nput a 1\n\nget nokey\ndel t1\n\n"),
        txn(&["-w", "fields"], "create(\"new\") = \"0\"\n\nput new 1\n\nget new\n\n"),
        txn(&["-w", "json"], "create(\"new\") = \"0\"\n\nput new 1\n\nget new\n\n"),
        txn(&["-w", "json"], "version(\"new\") > \"0\"\nmod(\"new\") != \"0\"\n\nput new 2\nget new\n\n\n"),
        txn(&["-w", "json"], "mod(\"t3\") = \"1\"\n\n\ndel t3 --prev-kv\nget t --prefix\n\n"),
        txn(&["-i"], "value(\"new\") = \"2\"\n\nput new 3\nget new\n\ndel new\n\n"),
        txn(&["-i", "-w", "json"], "version(\"new\") < \"2\"\n\nput u 1\n\nput u 2\nget u\n\n"),
        txn(&[], "\n\n\n"),
        txn(&["-w", "json"], "\n\n\n"),
        // No compares: the success branch runs (the first blank line ends the compares).
        txn(&["-w", "json"], "\nget t --prefix --keys-only\nget t --prefix --limit 1\nget new --rev 28\n\n\n"),
        txn(&[], "\nput --lease 1234 l v\n\n\n"),
        txn(&[], "\nput x 1\nput nokey --ignore-value\n\n\n"),
        txn(&[], "\nput x 1\nput nokey v --ignore-lease\n\n\n"),
        txn(&[], "\nput dup 1\nput dup 2\n\n\n"),
        txn(&[], "\nput dup 1\ndel d --prefix\n\n\n"),
        txn(&[], "\nput p 1\ndel p\n\n\n"),
        txn(&[], "\nget t1 --rev 1000\n\n\n"),
        txn(&["-w", "json"], "\ndel nokey\nget nokey\n\n\n"),
        txn(&["-w", "json"], "\nput p 1\nput q 2\nget p\ndel t --prefix --prev-kv\nget q\n\n\n"),
        txn(&[], "\nput x \"\"\n\n\n"),
        txn(&[], "bogus compare\n\n\n\n"),
        step(&["get", "", "--from-key", "-w", "json"]),
    ]);
    compare_with_etcd(&steps);
}

#[test]
fn etcdctl_compaction_status_health_members_match_etcd() {
    let mut steps = seed();
    let rest: &[&[&str]] = &[
        &["get", "foo", "--rev", "3"],
        &["compaction", "0"],
        &["compaction", "1"],
        &["compaction", "1"],
        &["get", "foo", "--rev", "1", "-w", "json"],
        &["compaction", "--", "-1"],
        &["compaction", "5"],
        &["get", "foo", "--rev", "3"],
        &["get", "foo", "--rev", "4", "-w", "json"],
        &["get", "foo", "--rev", "5", "-w", "json"],
        &["get", "foo2", "--rev", "5", "-w", "json"],
        &["compaction", "5"],
        &["compaction", "4"],
        &["compaction", "1000"],
        &["compaction", "--physical", "7"],
        &["get", "foo", "--prefix", "--rev", "6"],
        &["get", "foo", "--prefix", "--rev", "7", "-w", "json"],
        &["compaction", "13"],
        &["compaction", "14"],
        &["get", "", "--from-key", "-w", "json"],
        &["endpoint", "status", "-w", "json"],
        &["endpoint", "status", "-w", "fields"],
        &["endpoint", "health"],
        &["endpoint", "health", "-w", "json"],
        &["member", "list"],
        &["member", "list", "-w", "json"],
        &["member", "list", "-w", "fields"],
        &["put", "after", "status"],
        &["get", "after", "-w", "json"],
    ];
    steps.extend(rest.iter().map(|a| step(a)));
    steps.push(Step { norm: Norm::StatusLine, ..step(&["endpoint", "status"]) });
    compare_with_etcd(&steps);
}

/// What MetaStore itself must report, beyond matching etcd's shape: it is the leader, speaks
/// etcd 3.5, and has a non-zero term, index and db size; MemberList names that same member.
#[test]
fn etcdctl_status_and_member_list_describe_metastore() {
    tools_present();
    for driver in DRIVERS {
        let srv = TestServer::start(driver, &[]);
        let url = srv.url();
        assert_eq!(etcdctl(&url, &["put", "k", "v"], "").code, Some(0));
        let (ids, v) = ids_of(&url);
        let s = &v[0]["Status"];
        assert_eq!(v[0]["Endpoint"], url.as_str(), "[{driver}] {v}");
        assert_eq!(s["leader"].as_u64(), Some(ids.member), "[{driver}] the member leads: {v}");
        assert!(s["version"].as_str().unwrap().starts_with("3.5."), "[{driver}] version: {v}");
        assert!(s["raftTerm"].as_u64().unwrap() > 0, "[{driver}] raftTerm: {v}");
        assert!(s["raftIndex"].as_u64().unwrap() > 0, "[{driver}] raftIndex: {v}");
        assert!(s["dbSize"].as_i64().unwrap() > 0, "[{driver}] dbSize: {v}");
        assert_eq!(s["header"]["revision"].as_i64(), Some(2), "[{driver}] {v}");
        assert_eq!(s["header"]["raft_term"], s["raftTerm"], "[{driver}] {v}");
        assert_ne!(ids.cluster, 0, "[{driver}] {v}");

        let out = etcdctl(&url, &["member", "list", "-w", "json"], "");
        assert_eq!(out.code, Some(0), "[{driver}] {}", out.stderr);
        let m: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(m["header"]["member_id"].as_u64(), Some(ids.member), "[{driver}] {m}");
        assert_eq!(m["header"]["cluster_id"].as_u64(), Some(ids.cluster), "[{driver}] {m}");
        assert!(m["header"].get("revision").is_none(), "[{driver}] MemberList carries revision 0: {m}");
        let members = m["members"].as_array().unwrap();
        assert_eq!(members.len(), 1, "[{driver}] {m}");
        assert_eq!(members[0]["ID"].as_u64(), Some(ids.member), "[{driver}] {m}");
        assert_eq!(members[0]["name"], "default", "[{driver}] {m}");

        let out = etcdctl(&url, &["endpoint", "health"], "");
        assert_eq!(out.code, Some(0), "[{driver}] {} {}", out.stdout, out.stderr);
        let said = out.stdout + &out.stderr;
        assert!(said.contains(&format!("{url} is healthy")), "[{driver}] {said}");
        srv.stop();
    }
}
