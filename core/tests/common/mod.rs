//! Shared by the integration tests: starts a real `metastore` process on a free loopback port
//! (port 0, read back from the data dir), stops (SIGTERM) or kills (SIGKILL) exactly that process
//! by its PID, and restarts it on the same data dir.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod etcd;
pub mod grpc;
pub mod raw;
pub mod rng;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Both io drivers: every integration test runs against each.
pub const DRIVERS: [&str; 2] = ["uring", "epoll"];

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under cargo's per-test tmp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, Ordering::SeqCst);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct TestServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub driver: String,
    log: PathBuf,
    /// The flags after the fixed ones, as given to [`TestServer::start`] (restarts reuse them).
    extra: Vec<String>,
    /// Processes started on this data dir so far (the first is 1).
    pub incarnation: u32,
}

impl TestServer {
    /// Starts `metastore --io-driver <driver>` on 127.0.0.1:0 with `extra` flags.
    pub fn start(driver: &str, extra: &[&str]) -> Self {
        Self::start_in(temp_dir("srv"), driver, extra)
    }

    /// As [`TestServer::start`], in `dir` (whose `data` subdirectory may already hold a member,
    /// e.g. one restored from a snapshot).
    pub fn start_in(dir: PathBuf, driver: &str, extra: &[&str]) -> Self {
        let log = dir.join("server.log");
        std::fs::File::create(&log).unwrap();
        let mut srv = TestServer {
            child: None,
            addr: "127.0.0.1:1".parse().unwrap(),
            dir,
            driver: driver.into(),
            log,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            incarnation: 0,
        };
        srv.launch();
        srv
    }

    /// Kills the process with SIGKILL (by its PID: no shutdown, nothing flushed) and reaps it.
    pub fn kill9(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        let status = child.wait().unwrap();
        // Anything else means it had died on its own before the signal.
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "metastore had exited ({status}) before the SIGKILL:\n{}", self.log());
    }

    /// Starts the server again on the same data dir, with the same driver and flags, on a new
    /// port 0 (the process must have been stopped, e.g. by [`TestServer::kill9`]).
    pub fn restart(&mut self) {
        let extra = self.extra.clone();
        self.restart_with(&extra.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    }

    /// As [`TestServer::restart`], with other flags after the fixed ones (they stay for later
    /// restarts).
    pub fn restart_with(&mut self, extra: &[&str]) {
        assert!(self.child.is_none(), "restart of a running server: kill9 it first");
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self.launch();
    }

    /// Spawns the process on `self.dir/data` (appending to the log) and waits until it serves.
    fn launch(&mut self) {
        let data = self.dir.join("data");
        let urls = data.join("client-urls");
        // A stale file from the last process would name its (dead) port.
        match std::fs::remove_file(&urls) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot remove {}: {e}", urls.display()),
        }
        self.incarnation += 1;
        let mut logf = std::fs::OpenOptions::new().append(true).open(&self.log).unwrap();
        if self.incarnation > 1 {
            writeln!(
                logf,
                "===== test harness: start #{} on the same data dir, flags {:?} =====",
                self.incarnation, self.extra
            )
            .unwrap();
        }
        let child = Command::new(env!("CARGO_BIN_EXE_metastore"))
            .args(["--listen-client-urls", "http://127.0.0.1:0", "--io-driver", &self.driver, "--data-dir"])
            .arg(&data)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(logf)
            .env("RUST_LOG", std::env::var("METASTORE_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .spawn()
            .expect("start metastore");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = std::fs::read_to_string(&urls) {
                if let Some(line) = s.lines().next() {
                    self.addr = line.trim_start_matches("http://").parse().unwrap();
                    break;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("metastore exited early ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "metastore did not start:\n{}", self.log());
            // Short: a restart test's first request should follow the announcement closely.
            std::thread::sleep(Duration::from_millis(5));
        }
        // The file is written before the threads run; wait until a connection is served.
        while http_get(self.addr, "/metrics").is_err() {
            assert!(Instant::now() < deadline, "metastore does not answer:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(5));
        }
        let m = self.metrics();
        let want = if self.driver == "uring" { "io_uring" } else { "epoll" };
        assert!(
            m.contains(&format!("metastore_io_driver{{driver=\"{want}\"}} 1")),
            "asked for {}, metrics say:\n{m}",
            self.driver
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        http_get(self.addr, "/metrics").unwrap().1
    }

    /// The value of a metric line `name{labels} value`, summed over every series of `name`.
    pub fn metric_sum(&self, name: &str) -> f64 {
        parse_metric_sum(&self.metrics(), name)
    }

    /// Per-core values of a `{core="N"}` metric.
    pub fn per_core(&self, name: &str) -> Vec<f64> {
        let m = self.metrics();
        let mut v = Vec::new();
        for line in m.lines() {
            if let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix("{core=\"")) {
                let (_, val) = rest.split_once("} ").unwrap();
                v.push(val.parse().unwrap());
            }
        }
        v
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> String {
        let out = self.stop_inner();
        assert!(out.0, "metastore did not exit cleanly after SIGTERM:\n{}", out.1);
        out.1
    }

    /// Sends SIGTERM, waits for a clean exit and returns how long it took; the server can be
    /// restarted on the same data dir afterwards.
    pub fn terminate(&mut self) -> Duration {
        let t = Instant::now();
        let (clean, log) = self.stop_inner();
        assert!(clean, "metastore did not exit cleanly after SIGTERM:\n{log}");
        t.elapsed()
    }

    fn stop_inner(&mut self) -> (bool, String) {
        let Some(mut child) = self.child.take() else {
            return (true, String::new());
        };
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status.success(), self.log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return (false, self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

pub fn parse_metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' ')))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// A one-shot HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    // etcd sends /metrics chunked: reassemble, or a line cut by a chunk boundary reads wrong.
    Ok((status, if chunked { dechunk(body) } else { body.to_string() }))
}

/// The payload of a `Transfer-Encoding: chunked` body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else { break };
        if n == 0 || rest.len() < n || !rest.is_char_boundary(n) {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// Polls `f` until it holds or `secs` pass.
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    f()
}
