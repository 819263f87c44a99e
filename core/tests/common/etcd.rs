//! A real etcd (Debian's `etcd-server`, 3.4.23) for tests that compare MetaStore's answers with
//! etcd's: a single member on free loopback ports (client and peer), in its own data dir, killed by
//! its PID when the handle drops.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where a missing etcd / etcdctl comes from.
pub const INSTALL: &str = "run `scripts/install-test-tools` (it installs Debian's etcd-client and etcd-server: \
                           `apt-get install -y etcd-client etcd-server`)";

pub const ETCD_BIN: &str = "/usr/bin/etcd";

/// One running etcd member. Dropping it kills the process (by PID) and reaps it.
pub struct Etcd {
    child: Option<Child>,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    pub dir: PathBuf,
    log: PathBuf,
}

impl Etcd {
    /// Starts `etcd` and waits until it has a leader (`/health` says true). A port taken between
    /// picking and binding makes etcd exit: that is retried on new ports.
    pub fn start() -> Self {
        Self::start_on(false, &[])
    }

    /// As [`Etcd::start`], with the data dir on tmpfs (`/dev/shm`, where there is one): etcd
    /// fsyncs every write, which costs nothing there (for tests sending thousands of writes).
    pub fn start_tmpfs() -> Self {
        Self::start_on(true, &[])
    }

    /// As [`Etcd::start_tmpfs`], with more flags.
    pub fn start_tmpfs_with(flags: &[&str]) -> Self {
        Self::start_on(true, flags)
    }

    fn start_on(tmpfs: bool, flags: &[&str]) -> Self {
        assert!(std::path::Path::new(ETCD_BIN).exists(), "{ETCD_BIN} is missing: {INSTALL}");
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(tmpfs, flags) {
                Ok(e) => return e,
                Err(log) => last = log,
            }
        }
        panic!("etcd did not start after 5 tries; last log:\n{last}");
    }

    fn try_start(tmpfs: bool, flags: &[&str]) -> Result<Self, String> {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if tmpfs && shm.is_dir() {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let d = shm.join(format!("metastore-test-etcd-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            d
        } else {
            super::temp_dir("etcd")
        };
        let log = dir.join("etcd.log");
        // Free ports: bind 127.0.0.1:0, read the port, let it go (both are held while the second
        // is picked, so the two differ).
        let (client, peer) = {
            let a = TcpListener::bind("127.0.0.1:0").unwrap();
            let b = TcpListener::bind("127.0.0.1:0").unwrap();
            (a.local_addr().unwrap(), b.local_addr().unwrap())
        };
        let curl = format!("http://{client}");
        let purl = format!("http://{peer}");
        let logf = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(ETCD_BIN);
        for (k, _) in std::env::vars() {
            if k.starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .args(["--name", "default", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &curl, "--advertise-client-urls", &curl])
            .args(["--listen-peer-urls", &purl, "--initial-advertise-peer-urls", &purl])
            .args(["--initial-cluster", &format!("default={purl}")])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {ETCD_BIN} ({e}): {INSTALL}"));
        let mut etcd = Etcd { child: Some(child), client, peer, dir, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, body)) = super::http_get(client, "/health") {
                if body.contains("true") {
                    return Ok(etcd);
                }
            }
            if let Some(status) = etcd.child.as_mut().unwrap().try_wait().unwrap() {
                etcd.child = None;
                return Err(format!("etcd exited ({status}):\n{}", etcd.log()));
            }
            if Instant::now() > deadline {
                let log = etcd.log();
                drop(etcd);
                return Err(format!("etcd not healthy within 30s:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.client)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // Exactly this process, by its PID: SIGKILL (etcd keeps nothing we need), then reap it.
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(self.dir.join("data"));
        // On tmpfs the whole dir goes (it holds memory); elsewhere the log stays for a look.
        if self.dir.starts_with("/dev/shm") {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
