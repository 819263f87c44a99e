//! Distributed tracing (`--experimental-enable-distributed-tracing`) against a collector whose
//! stack we did not write: grpcio's gRPC server with the `opentelemetry-proto` package's
//! TraceService stubs (`tests/py/otlp_collector.py`), recording every span it receives. It
//! guards the whole path: the flags, sampling (every call at rate 1,000,000; at the default rate
//! 0 only a call whose W3C `traceparent` says sampled, as that trace's child), span names,
//! attributes and status as etcd's otelgrpc interceptor makes them, the resource, OTLP/gRPC over
//! our own HTTP/2 client (batches past the collector's first flow-control window), the export of
//! the last spans at shutdown, and that with tracing off (the default) nothing is sent. A server
//! whose collector is not there still serves and stops cleanly. A missing python3, grpcio or
//! opentelemetry-proto fails the test with the install step — it never skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::grpc::Client;
use common::{TestServer, DRIVERS};
use metastore_proto::etcdserverpb as pb;
use serde_json::Value;

const INSTALL: &str = "install the Python packages: `python3 -m pip install grpcio opentelemetry-proto` \
                       (scripts/install-test-tools)";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
const PUT: &str = "/etcdserverpb.KV/Put";
const RANGE: &str = "/etcdserverpb.KV/Range";
/// Calls whose spans carry a long `tracestate`, so that any export batch of a few dozen of them
/// is larger than HTTP/2's initial 64 KiB flow-control windows.
const BULK_CALLS: usize = 300;

/// The collector process, killed (by its PID) when dropped.
struct Collector {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Collector {
    fn start() -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/otlp_collector.py");
        let out = common::temp_dir("otlp").join("spans.jsonl");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(&out)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e}): install Python 3, then {INSTALL}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let Some(port) = line.trim().strip_prefix("PORT ").and_then(|p| p.parse().ok()) else {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            panic!("the collector did not start (said {line:?}, exit {:?}): {err}\n{INSTALL}", out.status.code());
        };
        Collector { child, port, out }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// The spans of one service (resource `service.name`).
    fn spans_of(&self, service: &str) -> Vec<Value> {
        self.spans().into_iter().filter(|s| s["resource"]["service.name"] == service).collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// One unary call with extra metadata, on the connection `send` belongs to; returns its
/// grpc-status.
async fn call_on(
    send: &h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    path: &str,
    message: &[u8],
    metadata: &[(&str, &str)],
) -> u32 {
    let mut send = send.clone().ready().await.unwrap();
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in metadata {
        req = req.header(*k, *v);
    }
    let (resp, mut tx) = send.send_request(req.body(()).unwrap(), false).unwrap();
    let mut body = vec![0];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    tx.send_data(Bytes::from(body), true).unwrap();
    let (parts, mut rx) = resp.await.unwrap().into_parts();
    let status = |m: &http::HeaderMap| m.get("grpc-status").map(|v| v.to_str().unwrap().parse::<u32>().unwrap());
    if let Some(code) = status(&parts.headers) {
        return code;
    }
    while let Some(d) = rx.data().await {
        let d = d.unwrap();
        let _ = rx.flow_control().release_capacity(d.len());
    }
    status(&rx.trailers().await.unwrap().unwrap()).unwrap()
}

/// A client connection for [`call_on`] (the `h2` crate's).
async fn connect(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// One unary call on its own connection with extra metadata; returns its grpc-status.
async fn call_with_metadata(addr: SocketAddr, path: &str, message: &[u8], metadata: &[(&str, &str)]) -> u32 {
    call_on(&connect(addr).await, addr, path, message, metadata).await
}

fn range(key: &[u8]) -> Vec<u8> {
    prost::Message::encode_to_vec(&pb::RangeRequest { key: key.to_vec(), ..Default::default() })
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn find<'a>(spans: &'a [Value], name: &str, code: i64) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name && attr(s, "rpc.grpc.status_code") == code)
        .unwrap_or_else(|| panic!("no {name} span with code {code} among {spans:#?}"))
}

#[test]
fn spans_reach_a_real_collector() {
    let (code, _, err) = {
        let o = Command::new("python3")
            .args(["-c", "import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e}): {INSTALL}"));
        (o.status.code(), o.stdout, String::from_utf8_lossy(&o.stderr).into_owned())
    };
    assert_eq!(code, Some(0), "grpcio or opentelemetry-proto is not importable: {err}\n{INSTALL}");
    let collector = Collector::start();
    let address = collector.address();
    let rt = runtime();

    for driver in DRIVERS {
        // Off, the default: the other settings given, nothing sent.
        let off_name = format!("off-{driver}");
        let off = TestServer::start(
            driver,
            &[
                "--experimental-distributed-tracing-address",
                &address,
                "--experimental-distributed-tracing-sampling-rate",
                "1000000",
                "--experimental-distributed-tracing-service-name",
                &off_name,
            ],
        );
        rt.block_on(async {
            let mut c = Client::connect(off.addr).await;
            c.unary(PUT, &pb::PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() })
                .await
                .unwrap();
            assert_eq!(
                call_with_metadata(
                    off.addr,
                    RANGE,
                    &range(b"k"),
                    &[("traceparent", &format!("00-{TRACE_ID}-{PARENT_ID}-01"))]
                )
                .await,
                0
            );
            c.close().await;
        });
        assert!(!off.log().contains("distributed tracing enabled"), "{}", off.log());
        off.stop();

        // Every call sampled.
        let all_name = format!("all-{driver}");
        let all = TestServer::start(
            driver,
            &[
                "--experimental-enable-distributed-tracing",
                "--experimental-distributed-tracing-address",
                &address,
                "--experimental-distributed-tracing-sampling-rate",
                "1000000",
                "--experimental-distributed-tracing-service-name",
                &all_name,
                "--experimental-distributed-tracing-instance-id",
                "member-1",
            ],
        );
        let t0 = unix_nanos();
        rt.block_on(async {
            let mut c = Client::connect(all.addr).await;
            c.unary(PUT, &pb::PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() })
                .await
                .unwrap();
            c.unary(RANGE, &pb::RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.unwrap();
            let e = c.unary(RANGE, &pb::RangeRequest::default()).await.unwrap_err();
            assert_eq!(e, (3, "etcdserver: key is not provided".to_string()));
            c.close().await;
            let send = connect(all.addr).await;
            let state = format!("a={},b={}", "x".repeat(240), "y".repeat(240));
            for i in 0..BULK_CALLS {
                let parent = format!("00-{:032x}-{PARENT_ID}-01", i + 1);
                let meta = [("traceparent", parent.as_str()), ("tracestate", state.as_str())];
                assert_eq!(call_on(&send, all.addr, RANGE, &range(b"k"), &meta).await, 0);
            }
        });
        let want = 3 + BULK_CALLS;
        let arrived = common::wait_until(30, || collector.spans_of(&all_name).len() >= want);
        let spans = collector.spans_of(&all_name);
        assert!(arrived, "[{driver}] {} of {want} spans arrived\nserver log:\n{}", spans.len(), all.log());
        let t1 = unix_nanos();
        let put = find(&spans, "etcdserverpb.KV/Put", 0);
        assert_eq!(put["kind"], 2, "SPAN_KIND_SERVER");
        assert_eq!(attr(put, "rpc.system"), "grpc");
        assert_eq!(attr(put, "rpc.service"), "etcdserverpb.KV");
        assert_eq!(attr(put, "rpc.method"), "Put");
        assert_eq!(put["status_code"], 0, "OK leaves the status unset");
        assert_eq!(put["parent_span_id"], "");
        assert_eq!(put["resource"]["service.instance.id"], "member-1");
        assert_eq!(put["scope"], "metastore");
        let (start, end) = (put["start"].as_u64().unwrap(), put["end"].as_u64().unwrap());
        assert!(t0 <= start && start <= end && end <= t1, "{t0} <= {start} <= {end} <= {t1}");
        let ok_range = find(&spans, "etcdserverpb.KV/Range", 0);
        assert_eq!(attr(ok_range, "rpc.method"), "Range");
        let bad_range = find(&spans, "etcdserverpb.KV/Range", 3);
        assert_eq!(bad_range["status_code"], 2, "STATUS_CODE_ERROR");
        assert_eq!(bad_range["status_message"], "etcdserver: key is not provided");
        // Each call its own trace with valid IDs: a new one without a parent, else the parent's.
        let roots: Vec<&Value> = spans.iter().filter(|s| s["parent_span_id"] == "").collect();
        assert_eq!(roots.len(), 3, "[{driver}] {roots:#?}");
        let children = spans.iter().filter(|s| s["parent_span_id"] == PARENT_ID);
        assert_eq!(children.clone().count(), BULK_CALLS);
        assert!(children.clone().all(|s| s["trace_state"].as_str().unwrap().len() > 480));
        let mut traces: Vec<&str> = spans.iter().map(|s| s["trace_id"].as_str().unwrap()).collect();
        assert!(traces.iter().all(|t| t.len() == 32 && *t != "0".repeat(32)));
        assert!(spans.iter().all(|s| s["span_id"].as_str().unwrap().len() == 16));
        traces.sort_unstable();
        traces.dedup();
        assert_eq!(traces.len(), spans.len(), "[{driver}] trace IDs repeat");
        assert!(traces.contains(&format!("{:032x}", BULK_CALLS).as_str()));
        // A request larger than HTTP/2's initial 64 KiB windows went through: our client sent it
        // as the collector's flow control allowed.
        let largest = spans.iter().map(|s| s["request_bytes"].as_u64().unwrap()).max().unwrap();
        assert!(largest > 65_535, "[{driver}] the largest export request had {largest} bytes");
        assert_eq!(all.metric_sum("metastore_trace_spans_dropped_total"), 0.0);
        assert!(all.metrics().contains("metastore_trace_spans_dropped_total{core=\"0\"} 0"));
        let log = all.stop();
        assert!(!log.contains("cannot export"), "[{driver}] {log}");

        // Rate 0, the default: only a call whose traceparent says sampled, as that span's child.
        let parent_name = format!("parent-{driver}");
        let p = TestServer::start(
            driver,
            &[
                "--experimental-enable-distributed-tracing",
                "--experimental-distributed-tracing-address",
                &address,
                "--experimental-distributed-tracing-service-name",
                &parent_name,
            ],
        );
        rt.block_on(async {
            let sampled = format!("00-{TRACE_ID}-{PARENT_ID}-01");
            let not_sampled = format!("00-{}-{PARENT_ID}-00", "1".repeat(32));
            let upper = format!("00-{}-{PARENT_ID}-01", "A".repeat(32));
            let meta: [&[(&str, &str)]; 4] = [
                &[("traceparent", &sampled), ("tracestate", "congo=t61rcWkgMzE")],
                &[("traceparent", &not_sampled)],
                &[("traceparent", &upper)],
                &[],
            ];
            for m in meta {
                assert_eq!(call_with_metadata(p.addr, RANGE, &range(b"k"), m).await, 0);
            }
        });
        // The last spans leave at shutdown, before the process exits.
        p.stop();
        let spans = collector.spans_of(&parent_name);
        assert_eq!(spans.len(), 1, "[{driver}] only the sampled parent's call is traced: {spans:#?}");
        let s = &spans[0];
        assert_eq!(s["name"], "etcdserverpb.KV/Range");
        assert_eq!(s["trace_id"], TRACE_ID);
        assert_eq!(s["parent_span_id"], PARENT_ID);
        assert_ne!(s["span_id"], PARENT_ID);
        assert_eq!(s["trace_state"], "congo=t61rcWkgMzE");
        assert_eq!(s["flags"].as_u64().unwrap() & 0x301, 0x301, "sampled, with a remote parent");
        assert_eq!(s["resource"]["service.name"], parent_name.as_str());
        assert!(s["resource"].get("service.instance.id").is_none(), "no instance ID unless set: {s}");
    }
    for driver in DRIVERS {
        assert_eq!(collector.spans_of(&format!("off-{driver}")), Vec::<Value>::new(), "tracing off sends nothing");
    }
}

/// A collector that is not there: calls are served, the exporter retries in the background, and
/// the server still stops cleanly (its last export gives up).
#[test]
fn an_absent_collector_does_not_hold_the_server() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let rt = runtime();
    for driver in DRIVERS {
        let srv = TestServer::start(
            driver,
            &[
                "--experimental-enable-distributed-tracing",
                "--experimental-distributed-tracing-address",
                &closed.to_string(),
                "--experimental-distributed-tracing-sampling-rate",
                "1000000",
            ],
        );
        rt.block_on(async {
            let mut c = Client::connect(srv.addr).await;
            for _ in 0..20 {
                c.unary(PUT, &pb::PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() })
                    .await
                    .unwrap();
            }
            c.close().await;
        });
        let warned = common::wait_until(10, || srv.log().contains("cannot export spans"));
        assert!(warned, "[{driver}] {}", srv.log());
        let t = std::time::Instant::now();
        let log = srv.stop();
        assert!(t.elapsed() < Duration::from_secs(8), "[{driver}] stopping took {:?}", t.elapsed());
        assert!(!log.contains("panicked"), "[{driver}] {log}");
    }
}
