//! The health endpoints on the client port, over HTTP/1.1: `/health` with etcd 3.4.23's codes
//! and bodies (checked against a real etcd started by the test: same status, same body, same
//! 405 for another method), and etcd 3.5's `/livez` and `/readyz` (3.4 has neither) in their
//! plain, verbose, sub-path and exclude forms. A NOSPACE alarm, raised through
//! Maintenance.Alarm, turns `/health` into 503 unless excluded, and `/readyz` stays ready (only
//! CORRUPT makes it fail); disarming it brings `/health` back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::etcd::Etcd;
use common::{http_get, TestServer, DRIVERS};
use metastore_proto::etcdserverpb as pb;

/// A one-shot HTTP/1.1 request with any method: (status, body).
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

fn alarm(addr: SocketAddr, action: pb::alarm_request::AlarmAction) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = common::grpc::Client::connect(addr).await;
        let req = pb::AlarmRequest { action: action as i32, member_id: 0, alarm: pb::AlarmType::Nospace as i32 };
        c.unary("/etcdserverpb.Maintenance/Alarm", &req).await.unwrap();
        c.close().await;
    });
}

#[test]
fn health_matches_etcd_and_livez_readyz_follow_etcd_3_5() {
    let etcd = Etcd::start();
    let want_ok = http_get(etcd.client, "/health").unwrap();
    let want_post = http(etcd.client, "POST", "/health");
    drop(etcd);
    assert_eq!(want_ok, (200, r#"{"health":"true"}"#.to_string()), "etcd 3.4.23's healthy answer");
    for driver in DRIVERS {
        let srv = TestServer::start(driver, &[]);
        let a = srv.addr;
        assert_eq!(http_get(a, "/health").unwrap(), want_ok, "[{driver}]");
        assert_eq!(http(a, "POST", "/health").0, want_post.0, "[{driver}] another method");
        assert_eq!(http_get(a, "/health?serializable=true").unwrap(), want_ok, "[{driver}]");
        assert_eq!(http_get(a, "/livez").unwrap(), (200, "ok".into()));
        assert_eq!(
            http_get(a, "/livez?verbose").unwrap(),
            (200, "[+]serializable_read ok\n/livez check passed\n".into())
        );
        assert_eq!(http_get(a, "/readyz").unwrap(), (200, "ok".into()));
        let (code, body) = http_get(a, "/readyz?verbose&exclude=non_learner").unwrap();
        assert_eq!(code, 200);
        assert_eq!(
            body,
            "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n[+]non_learner excluded: ok\n/readyz check passed\n"
        );
        assert_eq!(http_get(a, "/readyz/data_corruption").unwrap(), (200, "ok".into()));
        assert_eq!(http_get(a, "/readyz/nonsense").unwrap().0, 404);

        alarm(a, pb::alarm_request::AlarmAction::Activate);
        assert_eq!(http_get(a, "/health").unwrap(), (503, r#"{"health":"false"}"#.to_string()), "[{driver}] NOSPACE");
        assert_eq!(http_get(a, "/health?exclude=NOSPACE").unwrap(), want_ok, "[{driver}] NOSPACE excluded");
        assert_eq!(http_get(a, "/readyz").unwrap(), (200, "ok".into()), "[{driver}] NOSPACE is not corruption");
        alarm(a, pb::alarm_request::AlarmAction::Deactivate);
        assert_eq!(http_get(a, "/health").unwrap(), want_ok, "[{driver}] disarmed");
        let log = srv.stop();
        assert!(!log.contains("panicked"), "[{driver}] {log}");
    }
}
