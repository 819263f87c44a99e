//! HTTP/2 conformance against an independent implementation of the RFC 9113 test cases:
//! `httpwg` (crates.io `httpwg-cli`, an h2spec port) drives the real server under each io
//! driver. Every failing case must be listed in `net/CONFORMANCE.md`; an unlisted failure fails
//! this test, and so does a listed case that passes (the list must shrink when we fix things).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;

fn expected_failures() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../net/CONFORMANCE.md");
    let text = std::fs::read_to_string(path).expect("net/CONFORMANCE.md");
    text.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(case, _)| case.to_string()))
        .collect()
}

#[test]
fn httpwg_suite_passes_under_both_drivers() {
    let listed = expected_failures();
    for driver in common::DRIVERS {
        let srv = common::TestServer::start(driver, &["--max-concurrent-streams", "100"]);
        let out = Command::new("httpwg")
            .args(["-a", &srv.addr.to_string(), "--frame-timeout", "2000", "--connect-timeout", "2000"])
            .env("RUST_LOG", "error")
            .output()
            .expect("httpwg not found: run scripts/install-test-tools (cargo install httpwg-cli)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let failed: BTreeSet<String> = stderr
            .lines()
            .filter_map(|l| l.split_once("Test failed: "))
            .map(|(_, name)| name.trim().to_string())
            .collect();
        let summary = stderr.lines().find(|l| l.contains("Passed")).unwrap_or("no summary line");
        eprintln!("[{driver}] {summary}");
        let passed_line = summary.contains("Passed");
        assert!(passed_line, "[{driver}] httpwg did not finish:\n{stderr}");
        let unexpected: Vec<_> = failed.difference(&listed).collect();
        let fixed: Vec<_> = listed.difference(&failed).collect();
        assert!(unexpected.is_empty(), "[{driver}] cases failing and not in CONFORMANCE.md: {unexpected:?}\n{stderr}");
        assert!(fixed.is_empty(), "[{driver}] cases listed in CONFORMANCE.md that now pass: {fixed:?}");
        assert_eq!(out.status.success(), failed.is_empty(), "[{driver}] exit status vs failures");
        // The server survived the whole suite and still serves.
        assert_eq!(common::http_get(srv.addr, "/").unwrap().0, 200, "[{driver}]");
        srv.stop();
    }
}
