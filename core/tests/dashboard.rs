//! The Grafana dashboard in `deploy/` queries only metrics the server exports: every metric
//! name in every panel's PromQL expression must appear in a real server's `/metrics` (as a
//! family, or as a histogram's `_bucket`/`_sum`/`_count` series), after a few writes so that
//! the counters have moved. A dashboard panel on a metric that does not exist shows nothing,
//! silently; this test makes that loud.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::TestServer;

/// PromQL words that are not metric names.
const PROMQL: [&str; 12] =
    ["rate", "increase", "sum", "max", "by", "le", "histogram_quantile", "job", "core", "min", "avg", "on"];

/// Collects every `expr` string in the dashboard JSON.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "expr" {
                    if let Some(s) = v.as_str() {
                        out.push(s.to_string());
                    }
                } else {
                    exprs(v, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// Metric names in a PromQL expression: identifiers outside label matchers, strings, ranges and
/// the label lists of `by (...)` and `without (...)`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut depth_braces = 0;
    let mut in_str = false;
    // After `by`/`without`: the next parenthesised group lists labels, not metrics.
    let (mut labels_next, mut in_labels) = (false, false);
    let mut word = String::new();
    let flush = |word: &mut String, names: &mut BTreeSet<String>| {
        let w = std::mem::take(word);
        if !w.is_empty() && !w.chars().next().unwrap().is_ascii_digit() && !PROMQL.contains(&w.as_str()) {
            names.insert(w);
        }
    };
    for ch in expr.chars() {
        if in_str {
            in_str = ch != '"';
            continue;
        }
        if in_labels {
            in_labels = ch != ')';
            continue;
        }
        if depth_braces == 0 && (word == "by" || word == "without") && !(ch.is_ascii_alphanumeric() || ch == '_') {
            labels_next = true;
        }
        if labels_next && ch == '(' {
            labels_next = false;
            in_labels = true;
            word.clear();
            continue;
        }
        match ch {
            '"' => in_str = true,
            '{' | '[' => {
                flush(&mut word, &mut names);
                depth_braces += 1;
            }
            '}' | ']' => depth_braces -= 1,
            c if depth_braces == 0 && (c.is_ascii_alphanumeric() || c == '_' || c == ':') => word.push(c),
            _ => {
                if depth_braces == 0 {
                    flush(&mut word, &mut names);
                }
            }
        }
    }
    flush(&mut word, &mut names);
    names.retain(|n| !n.chars().all(|c| c.is_ascii_digit() || c == '.' || c == 'e'));
    names
}

#[test]
fn every_dashboard_metric_is_exported() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    assert!(all.len() >= 10, "the dashboard has queries: {all:?}");
    let wanted: BTreeSet<String> = all.iter().flat_map(|e| metric_names(e)).collect();
    assert!(wanted.contains("etcd_disk_wal_fsync_duration_seconds_bucket"), "{wanted:?}");

    let srv = TestServer::start("uring", &[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([srv.url()], None).await.unwrap();
        for i in 0..5 {
            c.put(format!("k{i}"), "v", None).await.unwrap();
        }
    });
    let metrics = srv.metrics();
    let exported: BTreeSet<&str> =
        metrics.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split([' ', '{']).next()).collect();
    let missing: Vec<&String> = wanted.iter().filter(|w| !exported.contains(w.as_str())).collect();
    assert!(missing.is_empty(), "the dashboard queries metrics /metrics does not export: {missing:?}");
    let log = srv.stop();
    assert!(!log.contains("panicked"), "{log}");
}
