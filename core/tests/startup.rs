//! Starting and stopping the real binary: flags are validated with clear messages (and a
//! non-zero exit), `--io-driver uring` refuses to start where io_uring is unavailable while
//! `auto` falls back to epoll and says so, port 0 picks distinct free ports that are written to
//! the data dir, and SIGTERM drains and exits cleanly. io_uring being blocked is simulated with
//! monoio's `MONOIO_FORCE_LEGACY_DRIVER`, which makes its detection report no io_uring.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

fn metastore() -> Command {
    Command::new(env!("CARGO_BIN_EXE_metastore"))
}

#[test]
fn help_and_version() {
    let out = metastore().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for flag in ["--name", "--data-dir", "--listen-client-urls", "--advertise-client-urls", "--cores", "--io-driver"] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
    let out = metastore().arg("--version").output().unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains("etcd API Version: 3.5"));
}

#[test]
fn bad_flags_fail_with_a_clear_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["--listen-client-urls", "https://127.0.0.1:0"], "TLS"),
        (&["--io-driver", "kqueue"], "uring, epoll or auto"),
        (&["--cores", "0"], "between 1"),
        (&["--no-such-flag"], "not defined"),
    ];
    for (args, want) in cases {
        let out = metastore().args(*args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn uring_refuses_where_unavailable_and_auto_falls_back() {
    let dir = common::temp_dir("nouring");
    let out = metastore()
        .args(["--io-driver", "uring", "--listen-client-urls", "http://127.0.0.1:0", "--data-dir"])
        .arg(dir.join("d"))
        .env("MONOIO_FORCE_LEGACY_DRIVER", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("io_uring is not available") && err.contains("--io-driver epoll"), "{err}");
}

#[test]
fn port_zero_gives_distinct_ports_and_sigterm_stops_cleanly() {
    for driver in common::DRIVERS {
        let a = common::TestServer::start(driver, &[]);
        let b = common::TestServer::start(driver, &[]);
        assert_ne!(a.addr.port(), b.addr.port(), "two servers on port 0 must not share a port");
        assert_ne!(a.addr.port(), 0);
        let urls = std::fs::read_to_string(a.dir.join("data/client-urls")).unwrap();
        assert_eq!(urls.trim(), a.url());
        let log = a.stop();
        assert!(log.contains("stopped"), "{log}");
        let want = if driver == "uring" { "driver=\"io_uring\"" } else { "driver=\"epoll\"" };
        assert!(log.contains(want), "the active driver is logged: {log}");
        b.stop();
    }
}

#[test]
fn auto_driver_falls_back_to_epoll() {
    let dir = common::temp_dir("auto");
    let mut child = metastore()
        .args(["--io-driver", "auto", "--listen-client-urls", "http://127.0.0.1:0", "--data-dir"])
        .arg(dir.join("d"))
        .env("MONOIO_FORCE_LEGACY_DRIVER", "1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let urls = dir.join("d/client-urls");
    assert!(common::wait_until(20, || urls.exists()));
    let addr =
        std::fs::read_to_string(&urls).unwrap().lines().next().unwrap().trim_start_matches("http://").parse().unwrap();
    assert!(common::wait_until(20, || common::http_get(addr, "/metrics").is_ok()));
    let (_, m) = common::http_get(addr, "/metrics").unwrap();
    assert!(m.contains("metastore_io_driver{driver=\"epoll\"} 1"), "{m}");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn name_sets_the_default_data_dir() {
    let dir = common::temp_dir("name");
    let mut child = metastore()
        .args(["--name", "node7", "--listen-client-urls", "http://127.0.0.1:0"])
        .current_dir(&dir)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let urls = dir.join("node7.metastore/client-urls");
    let found = common::wait_until(20, || urls.exists());
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(found, "expected {}", urls.display());
}

#[test]
fn version_endpoint_reports_the_etcd_api_level() {
    for driver in common::DRIVERS {
        let srv = common::TestServer::start(driver, &[]);
        let (status, body) = common::http_get(srv.addr, "/version").unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, r#"{"etcdserver":"3.5.0","etcdcluster":"3.5.0"}"#);
        srv.stop();
    }
}
