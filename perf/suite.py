#!/usr/bin/env python3
"""The side-by-side performance suite (issue 5): etcd 3.4 and MetaStore on this machine, same client.

  python3 perf/suite.py            # the full run (about 12 minutes once built; see perf/README.md)
  python3 perf/suite.py --quick    # a smoke run: 1 s per run, small counts; its numbers are noise

One command, in this order:

1. builds the release binaries (`metastore`, `metastore-bench`) and a second `metastore` with the
   `count-allocs` feature in its own target dir (`<target>/perf-alloc`);
2. states the machine (CPU, cores, kernel, memory, the data dir's disk) and measures the disk's
   fdatasync latency in the suite's data dir: 4 KiB written into a laid-out file, then
   os.fdatasync, in a loop (P50/P99: the floor of one unbatched durable write);
3. starts etcd (Debian's 3.4, default flags and fsync behaviour) and MetaStore (with
   --experimental-bench-null), each on its own data dir on 127.0.0.1, and keeps both running
   until the end; both get --quota-backend-bytes 8 GiB so that a long run cannot hit the 2 GiB
   default quota (history is never compacted here);
4. the matrix, with the same `metastore-bench`, interleaved etcd, MetaStore, etcd, MetaStore per
   cell so that drift (steal time, thermal, the page cache) hits both: put, range --consistency
   l, range --consistency s at 1×1, 10×100 and 100×1000 (connections × clients), txn-put at
   10×100; 8-byte keys, 256-byte values, 10,000 random keys, range and txn-put with --prefill,
   --duration per run; every run passes --server-pid (server CPU from /proc/PID/stat) and
   --latency-out (quantiles for the CDF plots);
5. watch and lease (issue 6), interleaved the same way: `metastore-bench watch-latency` with 1,
   1,000 and 10,000 watchers (one per Watch stream, over 1, 10 and 100 connections) on one key
   that one writer puts, closed loop with one watcher and paced at 20,000 / watchers puts per
   second with more (20,000 events per second offered): put-to-event P50/P99 over every
   delivery; then `lease-keepalive` at 10×100 (each client its own lease and LeaseKeepAlive
   stream, one request at a time);
6. the transport ceiling: `metastore-bench null` at 10×100 against MetaStore, twice, then
   `h2load` (nghttp2-client) posting the same 5-byte gRPC body to /metastore.Bench/Null with 10
   connections × 10 streams, twice, with the server's CPU per request from /proc around it;
7. syscalls per request: `strace -c -f -p PID` attached to each server during fixed-count put,
   range l and range s runs at 10×100 (strace slows the server: only the counts are kept);
8. allocations per request: the count-allocs MetaStore on a fresh data dir, a warm-up, then
   fixed-count put, range l and range s runs at 1×1 and 10×100; the delta of
   metastore_heap_allocations_total over each run (minus one /metrics scrape's own allocations)
   divided by the requests.

It writes the raw JSON to perf/results/suite-<date>.json, SVG plots beside it (QPS bars, server
CPU bars, latency CDFs), and the section of perf/RESULTS.md between `<!-- suite:begin -->` and
`<!-- suite:end -->` (the rest of that file is kept). --quick writes files named ...-quick and a
section under a banner that says it is a smoke run, not a measurement.

Servers and tools are stopped by the PID this script started, in a finally block (also on
Ctrl-C or SIGTERM). Python 3 standard library only.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plot  # noqa: E402  (perf/plot.py, beside this file)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.abspath(os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR", "target")))
ALLOC_TARGET = os.path.join(TARGET, "perf-alloc")
METASTORE = os.path.join(TARGET, "release", "metastore")
METASTORE_ALLOC = os.path.join(ALLOC_TARGET, "release", "metastore")
BENCH = os.path.join(TARGET, "release", "metastore-bench")
ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
RESULTS_MD = os.path.join(ROOT, "perf", "RESULTS.md")
RESULTS_DIR = os.path.join(ROOT, "perf", "results")
BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"

KEY_SIZE = 8
VAL_SIZE = 256
KEY_SPACE = 10_000
QUOTA = str(8 << 30)
SERVERS = ("etcd", "metastore")
NAMES = {"etcd": "etcd", "metastore": "MetaStore"}
SETTINGS = ((1, 1), (10, 100), (100, 1000))
# (workload, consistency or None, conns, clients), in the order they run.
MATRIX = ([("put", None, c, k) for c, k in SETTINGS]
          + [("range", "l", c, k) for c, k in SETTINGS]
          + [("range", "s", c, k) for c, k in SETTINGS]
          + [("txn-put", None, 10, 100)])
# The watch-latency cells (issue 6): (watchers, conns), one watcher per Watch stream, the streams
# spread over the connections.
WATCH_SETTINGS = ((1, 1), (1000, 10), (10_000, 100))
# With more than one watcher the writer is paced at this many events per second offered (this /
# watchers puts per second), so that the figure is the fan-out's latency rather than a backlog;
# with one watcher it is closed loop (one put at a time).
WATCH_EVENTS_PER_S = 20_000
# The lease-keepalive cell: (conns, clients), one lease and one LeaseKeepAlive stream per client.
LEASE_SETTING = (10, 100)
# The fixed-count runs for syscalls and allocations.
COUNTED = (("put", None), ("range", "l"), ("range", "s"))
NULL_BODY = b"\x00\x00\x00\x00\x00"  # a gRPC message: not compressed, 0 bytes long

# The targets (issue 5, "Targets to work toward"), checked in `targets()`.
TARGETS_TEXT = [
    "server CPU per request at most a tenth of etcd's for put, range and txn-put",
    "put and range QPS at (10, 100) at least 5x etcd's",
    "P99 at (10, 100) at most a fifth of etcd's",
    "single-client put within 100 µs of the disk's fdatasync latency",
    "server CPU per null request at most 6.7 µs (150,000 per second per core)",
    "zero heap allocations per put and range in steady state",
]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid):
    """utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def proc_stat_cpu():
    """The machine's CPU time by kind, from the first line of /proc/stat (clock ticks)."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    # user nice system idle iowait irq softirq steal (guest time is already inside user)
    return [int(x) for x in parts[1:9]]


def steal_pct(before, after):
    d = [b - a for a, b in zip(before, after)]
    total = sum(d)
    return 100.0 * d[7] / total if total > 0 else 0.0


def metric(url, name):
    """Sum of every series of `name` on the server's /metrics page (HTTP/1.1)."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    total = None
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        if line[len(name):][:1] in ("{", " "):
            total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
    if total is None:
        raise RuntimeError("%s is not on %s/metrics" % (name, url))
    return total


def wal_fsyncs(srv):
    """(seconds, count) of the server's own fsync histogram, etcd_disk_wal_fsync_duration_seconds
    (MetaStore serves it under etcd's name)."""
    name = "etcd_disk_wal_fsync_duration_seconds"
    return metric(srv.url, name + "_sum"), metric(srv.url, name + "_count")


class Server:
    """One server process on its own data dir, on 127.0.0.1, stopped by its PID."""

    def __init__(self, kind, workdir, binary=None, tag=None):
        self.kind = kind
        self.tag = tag or kind
        self.binary = binary
        self.dir = os.path.join(workdir, self.tag)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.data = os.path.join(self.dir, "data")
        self.log_path = os.path.join(self.dir, "server.log")
        self.proc = None
        self.url = None

    def start(self):
        logf = open(self.log_path, "ab")
        if self.kind == "metastore":
            urls = os.path.join(self.data, "client-urls")
            cmd = [self.binary, "--data-dir", self.data, "--listen-client-urls", "http://127.0.0.1:0",
                   "--quota-backend-bytes", QUOTA, "--experimental-bench-null"]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=logf, stdin=subprocess.DEVNULL)
            deadline = time.time() + 120
            while not (os.path.exists(urls) and open(urls).read().strip()):
                self.check_alive(deadline)
                time.sleep(0.005)
            self.url = open(urls).read().split()[0]
        else:
            client, peer = free_port(), free_port()
            curl, purl = "http://127.0.0.1:%d" % client, "http://127.0.0.1:%d" % peer
            cmd = [ETCD, "--name", "default", "--data-dir", self.data,
                   "--listen-client-urls", curl, "--advertise-client-urls", curl,
                   "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
                   "--initial-cluster", "default=" + purl, "--quota-backend-bytes", QUOTA]
            env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=logf, stdin=subprocess.DEVNULL,
                                         env=env)
            self.url = curl
        logf.close()
        deadline = time.time() + 120
        env = dict(os.environ, ETCDCTL_API="3")
        while subprocess.run([ETCDCTL, "--endpoints", self.url, "--dial-timeout", "1s", "--command-timeout", "2s",
                              "get", "probe"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=env).returncode != 0:
            self.check_alive(deadline)
            time.sleep(0.05)
        log("started %s (pid %d) at %s" % (self.tag, self.proc.pid, self.url))

    def check_alive(self, deadline):
        if self.proc.poll() is not None:
            raise RuntimeError("%s exited (%s); see %s" % (self.tag, self.proc.returncode,
                                                           os.path.relpath(self.log_path, ROOT)))
        if time.time() > deadline:
            raise RuntimeError("%s did not come up; see %s" % (self.tag, os.path.relpath(self.log_path, ROOT)))

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        log("stopped %s (pid %d)" % (self.tag, self.proc.pid))
        self.proc = None


class Suite:
    def __init__(self, a):
        self.a = a
        self.workdir = os.path.join(TARGET, "perf-suite")
        self.latdir = os.path.join(self.workdir, "latency")
        self.failures = []
        self.children = []  # tools started here (strace, h2load), stopped by PID on the way out

    # -- running the bench -------------------------------------------------------------------

    def bench(self, srv, workload, conns, clients, *extra, latency_out=None):
        """One metastore-bench run; its JSON record plus steal time, wall time and latency quantiles.
        A failed run is recorded (and reported) rather than ending the suite. `clients` None leaves
        --clients out (the watch workloads have one writer and their watchers instead)."""
        cmd = [BENCH, workload, "--endpoints", srv.url, "--json", "--no-progress", "--server-pid", str(srv.pid),
               "--conns", str(conns)]
        if clients is not None:
            cmd += ["--clients", str(clients)]
        cmd += ["--key-size", str(KEY_SIZE), "--val-size", str(VAL_SIZE), "--key-space-size", str(KEY_SPACE)]
        cmd += list(extra)
        if latency_out:
            cmd += ["--latency-out", latency_out]
        s0, t0 = proc_stat_cpu(), time.time()
        r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        wall = time.time() - t0
        if r.returncode != 0 or not r.stdout.strip():
            shown = [os.path.relpath(x, ROOT) if x == latency_out else x for x in cmd[1:]]
            msg = "%s: metastore-bench %s: exit %d: %s" % (srv.tag, " ".join(shown), r.returncode,
                                                          r.stderr.strip()[-500:])
            log("FAILED " + msg)
            self.failures.append(msg)
            return {"failed": msg}
        rec = json.loads(r.stdout.strip().splitlines()[-1])
        rec["steal_pct"] = round(steal_pct(s0, proc_stat_cpu()), 2)
        rec["wall_s"] = round(wall, 2)
        if latency_out:
            with open(latency_out) as f:
                rec["latency"] = json.load(f)["quantiles"]
        if rec.get("errors"):
            msg = "%s: %s %dx%s: errors %s" % (srv.tag, workload, conns, clients, rec["errors"])
            log("ERRORS " + msg)
            self.failures.append(msg)
        return rec

    # -- the phases --------------------------------------------------------------------------

    def matrix(self, servers):
        os.makedirs(self.latdir, exist_ok=True)
        cells = []
        dur = "%gs" % self.a.duration
        for n, (workload, cons, conns, clients) in enumerate(MATRIX, 1):
            cell = {"workload": workload, "consistency": cons, "conns": conns, "clients": clients,
                    "runs": {k: [] for k in SERVERS}}
            extra = ["--duration", dur]
            if cons:
                extra += ["--consistency", cons]
            extra += ["--prefill"] if workload in ("range", "txn-put") else ["--no-prefill"]
            for i in range(2):
                for kind in SERVERS:
                    lat = os.path.join(self.latdir, "%s-%s-%d.json" % (slug(cell), kind, i + 1))
                    rec = self.bench(servers[kind], workload, conns, clients, *extra, latency_out=lat)
                    cell["runs"][kind].append(rec)
                    log("[%d/%d] %s %s run %d: %s" % (n, len(MATRIX), label(cell), kind, i + 1, brief(rec)))
            cells.append(cell)
        return cells

    def streams(self, servers):
        """The watch-latency cells and the lease-keepalive cell, interleaved like the matrix."""
        os.makedirs(self.latdir, exist_ok=True)
        cells = stream_cells()
        dur = "%gs" % self.a.duration
        for n, cell in enumerate(cells, 1):
            for i in range(2):
                for kind in SERVERS:
                    lat = os.path.join(self.latdir, "%s-%s-%d.json" % (cell["slug"], kind, i + 1))
                    rec = self.bench(servers[kind], cell["workload"], cell["conns"], cell["clients"],
                                     "--duration", dur, *cell["args"], latency_out=lat)
                    cell["runs"][kind].append(rec)
                    log("[%d/%d] %s %s run %d: %s" % (n, len(cells), cell["label"], kind, i + 1, brief(rec)))
        return cells

    def null(self, ms):
        out = {"bench": [], "h2load": []}
        dur = "%gs" % self.a.duration
        for i in range(2):
            lat = os.path.join(self.latdir, "null-metastore-%d.json" % (i + 1))
            rec = self.bench(ms, "null", 10, 100, "--duration", dur, latency_out=lat)
            out["bench"].append(rec)
            log("null 10x100 metastore-bench run %d: %s" % (i + 1, brief(rec)))
        h2load = shutil.which("h2load")
        if not h2load:
            msg = "h2load is missing: run scripts/install-test-tools (Debian package nghttp2-client)"
            log("FAILED " + msg)
            self.failures.append(msg)
            return out
        body = os.path.join(self.workdir, "null-body.bin")
        with open(body, "wb") as f:
            f.write(NULL_BODY)
        cmd = [h2load, "-D", "%g" % max(1, round(self.a.duration)), "-c", "10", "-m", "10", "-t", "1",
               "-d", body, "-H", "content-type: application/grpc", "-H", "te: trailers",
               ms.url + "/metastore.Bench/Null"]
        shown = ["h2load"] + [os.path.basename(x) if x == body else x for x in cmd[1:-1]] + ["URL/metastore.Bench/Null"]
        out["h2load_command"] = " ".join(shlex.quote(x) for x in shown)
        for i in range(2):
            rec = self.h2load(ms, cmd)
            out["h2load"].append(rec)
            log("null 10x10 streams h2load run %d: %s" % (i + 1, rec))
        return out

    def h2load(self, srv, cmd):
        tick = os.sysconf("SC_CLK_TCK")
        c0, u0 = cpu_ticks(srv.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
        r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        c1, u1 = cpu_ticks(srv.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
        rec = parse_h2load(r.stdout)
        if r.returncode != 0 or not rec.get("done"):
            msg = "h2load: exit %d: %s %s" % (r.returncode, r.stdout[-300:], r.stderr[-300:])
            log("FAILED " + msg)
            self.failures.append(msg)
            return {"failed": msg}
        done = rec["done"]
        rec["server_cpu_us_per_req"] = round((c1 - c0) * 1e6 / tick / done, 2)
        client_s = (u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime)
        rec["client_cpu_us_per_req"] = round(client_s * 1e6 / done, 2)
        if rec.get("failed_requests") or rec.get("non_2xx"):
            self.failures.append("h2load: %s" % rec)
        return rec

    def strace(self, servers):
        tool = shutil.which("strace")
        if not tool:
            msg = "strace is missing: run scripts/install-test-tools (Debian package strace)"
            log("FAILED " + msg)
            self.failures.append(msg)
            return []
        rows = []
        n = self.a.strace_requests
        for kind in SERVERS:
            srv = servers[kind]
            # The key space exists already (the matrix prefilled it); one more untimed pass makes sure.
            self.bench(srv, "put", 10, 100, "--total", str(KEY_SPACE), "--sequential-keys", "--no-prefill")
            for workload, cons in COUNTED:
                extra = ["--total", str(n), "--no-prefill"] + (["--consistency", cons] if cons else [])
                out = os.path.join(self.workdir, "strace-%s-%s%s.txt" % (kind, workload, cons or ""))
                p = subprocess.Popen([tool, "-c", "-f", "-p", str(srv.pid), "-o", out], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
                self.children.append(p)
                attached = threading.Event()
                stderr_lines = []

                def drain(pipe=p.stderr, ev=attached, buf=stderr_lines):
                    for line in pipe:
                        buf.append(line)
                        if "attached" in line:
                            ev.set()
                    ev.set()

                th = threading.Thread(target=drain, daemon=True)
                th.start()
                attached.wait(20)
                time.sleep(1.0)  # every thread attached, not only the first
                if p.poll() is not None:
                    msg = "strace -p %d (%s) exited: %s" % (srv.pid, kind, "".join(stderr_lines)[-300:])
                    log("FAILED " + msg)
                    self.failures.append(msg)
                    continue
                rec = self.bench(srv, workload, 10, 100, *extra)
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
                th.join(5)
                self.children.remove(p)
                total, by_call = parse_strace(out)
                if total is None or "failed" in rec:
                    msg = "strace %s %s: no summary (%s)" % (kind, workload, "".join(stderr_lines)[-300:])
                    log("FAILED " + msg)
                    self.failures.append(msg)
                    continue
                done = rec["total"]
                row = {"server": kind, "workload": workload, "consistency": cons, "conns": 10, "clients": 100,
                       "requests": done, "syscalls": total, "per_req": round(total / done, 3),
                       "top": [[name, round(c / done, 3)] for name, c in by_call[:6]],
                       "qps_under_strace": rec["qps"],
                       "threads_attached": threads_attached(stderr_lines)}
                rows.append(row)
                log("syscalls %s %s%s: %.2f per request (%s; %d threads attached)" % (
                    kind, workload, " " + cons if cons else "", row["per_req"], row["top"][:3],
                    row["threads_attached"]))
        return rows

    def allocations(self):
        srv = Server("metastore", self.workdir, METASTORE_ALLOC, tag="metastore-count-allocs")
        rows = []
        try:
            srv.start()
            name = "metastore_heap_allocations_total"
            self.bench(srv, "put", 10, 100, "--total", str(KEY_SPACE), "--sequential-keys", "--no-prefill")
            for conns, clients in ((1, 1), (10, 100)):
                n = self.a.alloc_requests if clients > 1 else max(1, self.a.alloc_requests // 10)
                for workload, cons in COUNTED:
                    extra = ["--no-prefill"] + (["--consistency", cons] if cons else [])
                    # Warm-up: the same shape, so buffers, maps and rings have grown already.
                    self.bench(srv, workload, conns, clients, "--total", str(max(1, n // 2)), *extra)
                    a0 = metric(srv.url, name)
                    a1 = metric(srv.url, name)
                    scrape = a1 - a0  # one /metrics scrape's own allocations
                    rec = self.bench(srv, workload, conns, clients, "--total", str(n), *extra)
                    a2 = metric(srv.url, name)
                    if "failed" in rec:
                        continue
                    done = rec["total"]
                    allocs = a2 - a1 - scrape
                    row = {"workload": workload, "consistency": cons, "conns": conns, "clients": clients,
                           "requests": done, "allocations": allocs, "scrape_allocations": scrape,
                           "per_req": round(allocs / done, 3)}
                    rows.append(row)
                    log("allocations %s%s %dx%d: %.2f per request" % (workload, " " + cons if cons else "", conns,
                                                                      clients, row["per_req"]))
        finally:
            srv.stop()
        return rows

    def stop_children(self):
        for p in self.children:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.children = []


# -- parsing ---------------------------------------------------------------------------------

def parse_h2load(text):
    """req/s, request counts and status codes from h2load's report."""
    rec = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("finished in"):
            parts = line.split(",")
            rec["elapsed_s"] = float(parts[0].split()[2].rstrip("s"))
            rec["req_per_s"] = float(parts[1].split()[0])
        elif line.startswith("requests:"):
            for part in line[len("requests:"):].split(","):
                n, what = part.split()[:2]
                rec[{"total": "total", "started": "started", "done": "done", "succeeded": "succeeded",
                     "failed": "failed_requests", "errored": "errored", "timeout": "timeout"}.get(what, what)] = int(n)
        elif line.startswith("status codes:"):
            codes = [p.split() for p in line[len("status codes:"):].split(",")]
            rec["non_2xx"] = sum(int(n) for n, c in codes if c != "2xx")
        elif line.startswith("time for request:"):
            cols = line.split(":", 1)[1].split()
            rec["request_mean"] = cols[2]  # min max mean sd +/-sd, with units
    return rec


def threads_attached(lines):
    """Threads strace attached to: "strace: Process N attached with T threads" (or one)."""
    n = 0
    for line in lines:
        if "attached" in line:
            words = line.split()
            n += int(words[words.index("with") + 1]) if "with" in words else 1
    return n


def parse_strace(path):
    """(total calls, [(syscall, calls), ...] most first) from `strace -c -o path`."""
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return None, []
    total, rows = None, []
    for line in lines:
        parts = line.split()
        if len(parts) < 5 or not parts[0][0].isdigit():
            continue
        # % time, seconds, usecs/call, calls, [errors], syscall
        try:
            calls = int(parts[3])
        except ValueError:
            continue
        if parts[-1] == "total":
            total = calls
        else:
            rows.append((parts[-1], calls))
    rows.sort(key=lambda r: -r[1])
    return total, rows


# -- the machine -----------------------------------------------------------------------------

def disk_of(path):
    """The mount source, filesystem and block device holding `path`."""
    st = os.stat(path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    out = {"device": "?", "fstype": "?", "source": "?"}
    try:
        for line in open("/proc/self/mountinfo"):
            left, right = line.split(" - ", 1)
            if left.split()[2] == "%d:%d" % (major, minor):
                out["fstype"], out["source"] = right.split()[:2]
    except OSError:
        pass
    try:
        dev = os.path.basename(os.path.realpath("/sys/dev/block/%d:%d" % (major, minor)))
        # A partition's parent directory is the whole disk.
        parent = os.path.basename(os.path.dirname(os.path.realpath("/sys/dev/block/%d:%d" % (major, minor))))
        disk = parent if os.path.exists("/sys/block/%s/%s" % (parent, dev)) else dev
        out["device"] = disk
        for key, rel in (("rotational", "queue/rotational"), ("model", "device/model")):
            try:
                out[key] = open("/sys/block/%s/%s" % (disk, rel)).read().strip()
            except OSError:
                pass
    except OSError:
        pass
    return out


def machine():
    cpu = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    etcd = subprocess.run([ETCD, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "mem_gib": round(mem / 2**30, 1),
            "etcd": etcd, "metastore_commit": commit + ("+dirty" if dirty else ""),
            "python": platform.python_version()}


def fdatasync_latency(dirpath, count):
    """4 KiB pwrite + os.fdatasync, `count` times, into a file laid out first (written and fsynced),
    so that each timed write changes data only, as fio's does: latencies in µs."""
    path = os.path.join(dirpath, "fdatasync-probe")
    block = os.urandom(4096)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(count):
            os.write(fd, bytes(4096))
        os.fsync(fd)
        for i in range(10):  # warm-up
            os.pwrite(fd, block, i * 4096)
            os.fdatasync(fd)
        lat = []
        for i in range(count):
            t0 = time.perf_counter_ns()
            os.pwrite(fd, block, i * 4096)
            os.fdatasync(fd)
            lat.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        os.close(fd)
        os.remove(path)
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]  # noqa: E731
    return {"count": count, "p50_us": round(q(0.5), 1), "p99_us": round(q(0.99), 1),
            "mean_us": round(sum(lat) / len(lat), 1), "per_s": round(len(lat) / (sum(lat) / 1e6), 0)}


# -- labels and formatting -------------------------------------------------------------------

def label(cell):
    w = cell["workload"] + (" " + cell["consistency"] if cell.get("consistency") else "")
    return "%s %d×%d" % (w, cell["conns"], cell["clients"])


def slug(cell):
    return "%s%s-%dx%d" % (cell["workload"], cell.get("consistency") or "", cell["conns"], cell["clients"])


def watch_rate(watchers):
    """The writer's pace for a watch-latency cell (None: closed loop)."""
    return None if watchers == 1 else WATCH_EVENTS_PER_S / watchers


def stream_cells():
    """The watch and lease cells, each with its label, slug, bench arguments and empty runs."""
    cells = []
    for watchers, conns in WATCH_SETTINGS:
        rate = watch_rate(watchers)
        cells.append({"workload": "watch-latency", "watchers": watchers, "conns": conns, "clients": None,
                      "rate": rate, "label": "watch %s×%d" % (fmt_num(watchers), conns),
                      "slug": "watch-%dw-%dc" % (watchers, conns),
                      "args": ["--watchers", str(watchers)] + (["--rate", "%g" % rate] if rate else []),
                      "runs": {k: [] for k in SERVERS}})
    conns, clients = LEASE_SETTING
    cells.append({"workload": "lease-keepalive", "conns": conns, "clients": clients, "rate": None,
                  "label": "lease-keepalive %d×%d" % (conns, clients), "slug": "lease-%dx%d" % (conns, clients),
                  "args": [], "runs": {k: [] for k in SERVERS}})
    return cells


def brief(rec):
    if "failed" in rec:
        return "FAILED"
    if "events_per_s" in rec:
        return ("%.0f events/s, %.1f puts/s, put-to-event P50 %s, P99 %s, server %s µs/event, client %s µs/event, "
                "%s missing, setup %.1f s, steal %.1f%%" % (
                    rec["events_per_s"], rec["puts_per_s"], fmt_lat(rec["p50_us"]), fmt_lat(rec["p99_us"]),
                    rec["server_cpu_us_per_req"], rec["client_cpu_us_per_req"], rec["missing_events"],
                    rec.get("setup_s", 0), rec.get("steal_pct", 0)))
    return "%.0f QPS, P50 %s, P99 %s, server %s µs/req, client %s µs/req, steal %.1f%%" % (
        rec["qps"], fmt_lat(rec["p50_us"]), fmt_lat(rec["p99_us"]), rec["server_cpu_us_per_req"],
        rec["client_cpu_us_per_req"], rec.get("steal_pct", 0))


def fmt_lat(us):
    if us is None:
        return "–"
    if us < 1000:
        return "%.0f µs" % us
    if us < 1_000_000:
        return "%.2f ms" % (us / 1000)
    return "%.2f s" % (us / 1e6)


def fmt_num(v, digits=0):
    if v is None:
        return "–"
    return "{:,.{}f}".format(v, digits)


def fmt_ratio(v):
    return "–" if v is None else ("%.2f×" % v if v < 10 else "%.1f×" % v)


def mean_of(runs, key):
    vals = [r[key] for r in runs if "failed" not in r and r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def ratio(a, b):
    return a / b if a is not None and b else None


def summary(cell):
    """Means over the two runs of each server, and MetaStore / etcd ratios. For watch cells `qps` is
    events delivered per second and CPU is per event; `puts_per_s` is the writer's."""
    out = {}
    for kind in SERVERS:
        runs = cell["runs"][kind]
        out[kind] = {k: mean_of(runs, k) for k in ("qps", "p50_us", "p99_us", "server_cpu_us_per_req",
                                                   "client_cpu_us_per_req", "puts_per_s", "setup_s")}
    e, m = out["etcd"], out["metastore"]
    out["ratio"] = {"qps": ratio(m["qps"], e["qps"]), "p50": ratio(m["p50_us"], e["p50_us"]),
                    "p99": ratio(m["p99_us"], e["p99_us"]),
                    "cpu": ratio(m["server_cpu_us_per_req"], e["server_cpu_us_per_req"])}
    return out


# -- the report ------------------------------------------------------------------------------

def targets(res):
    """[(target, measured, verdict)] for the issue's targets."""
    rows = []
    by = {slug(c): (c, summary(c)) for c in res["cells"]}

    def verdict(ok, short):
        if ok is None:
            return "no figure (a run failed)"
        return "met" if ok else "**short**: " + short

    # 1. CPU per request <= etcd / 10.
    parts, bad = [], []
    for c in res["cells"]:
        r = summary(c)["ratio"]["cpu"]
        parts.append("%s %s" % (label(c), fmt_ratio(r)))
        if r is None or r > 0.1:
            bad.append("%s at %s of etcd's" % (label(c), fmt_ratio(r)))
    rows.append((TARGETS_TEXT[0], "MetaStore / etcd server CPU per request: " + ", ".join(parts),
                 verdict(None if any(summary(c)["ratio"]["cpu"] is None for c in res["cells"]) else not bad,
                         "; ".join(bad))))
    # 2. QPS at 10x100 >= 5x; 3. P99 at 10x100 <= 1/5.
    for idx, key, want, better in ((1, "qps", 5.0, "ge"), (2, "p99", 0.2, "le")):
        parts, bad, missing = [], [], False
        for s in ("put-10x100", "rangel-10x100", "ranges-10x100", "txn-put-10x100"):
            if s not in by or (key == "qps" and s.startswith("txn")):
                continue
            c, sm = by[s]
            r = sm["ratio"][key]
            missing |= r is None
            parts.append("%s %s" % (label(c), fmt_ratio(r)))
            if r is not None and (r < want if better == "ge" else r > want):
                bad.append("%s at %s" % (label(c), fmt_ratio(r)))
        rows.append((TARGETS_TEXT[idx], "MetaStore / etcd: " + ", ".join(parts),
                     verdict(None if missing else not bad, "; ".join(bad))))
    # 4. single-client put P50 within 100 us of fdatasync P50.
    fs = res["fdatasync"]["p50_us"]
    p50 = by.get("put-1x1", (None, {"metastore": {}}))[1]["metastore"].get("p50_us")
    gap = None if p50 is None else p50 - fs
    rows.append((TARGETS_TEXT[3], "MetaStore put 1×1 P50 %s, fdatasync P50 %s: %s" % (
        fmt_lat(p50), fmt_lat(fs), "–" if gap is None else "%s %s it" % (fmt_lat(abs(gap)),
                                                                        "above" if gap >= 0 else "below")),
        verdict(None if gap is None else gap <= 100, "%s above the fdatasync P50" % fmt_lat(gap))))
    # 5. null CPU <= 6.7 us.
    nb = mean_of(res["null"]["bench"], "server_cpu_us_per_req")
    nh = mean_of(res["null"].get("h2load", []), "server_cpu_us_per_req")
    worst = max([v for v in (nb, nh) if v is not None], default=None)
    rows.append((TARGETS_TEXT[4], "metastore-bench null %s µs, h2load %s µs" % (fmt_num(nb, 2), fmt_num(nh, 2)),
                 verdict(None if worst is None else worst <= 6.7, "%s µs per null request" % fmt_num(worst, 2))))
    # 6. zero allocations.
    al = res["allocations"]
    parts = ["%s %s" % (label(a), fmt_num(a["per_req"], 2)) for a in al]
    bad = ["%s %s" % (label(a), fmt_num(a["per_req"], 2)) for a in al if a["per_req"] >= 0.5]
    rows.append((TARGETS_TEXT[5], "allocations per request: " + ", ".join(parts),
                 verdict(None if not al else not bad, "; ".join(bad))))
    return rows


def markdown(res, stem):
    m, fs, a = res["machine"], res["fdatasync"], res["args"]
    d = res["machine"]["disk"]
    out = []
    w = out.append
    if res["quick"]:
        w("> **Quick smoke run, not a measurement.** `--quick` runs each cell for %g s on a machine that is"
          " doing other work; these figures only show that the suite works end to end. Rerun without"
          " `--quick` on a quiet machine for results." % a["duration"])
        w("")
    w("Side-by-side suite (`perf/suite.py`), %s. Command: `%s`." % (res["date"], res["command"]))
    w("")
    w("Machine: %s, %d cores, %s GiB RAM, kernel %s; disk `%s`%s (%s on %s); %s; MetaStore at %s. Steal time"
      " over the suite: %.1f%% of CPU time." % (
          m["cpu"], m["cores"], m["mem_gib"], m["kernel"], d.get("device"),
          " (%s)" % d["model"] if d.get("model") else "", d.get("fstype"), d.get("source"), m["etcd"],
          m["metastore_commit"], res["steal_pct"]))
    w("")
    fe = res.get("fdatasync_end")
    w("Disk: 4 KiB write + fdatasync in the data dir, %d times, before the servers started: P50 %s, P99 %s (%s per"
      " second), the floor of an unbatched durable write%s." % (
          fs["count"], fmt_lat(fs["p50_us"]), fmt_lat(fs["p99_us"]), fmt_num(fs["per_s"]),
          "; again after they stopped: P50 %s, P99 %s" % (fmt_lat(fe["p50_us"]), fmt_lat(fe["p99_us"])) if fe else ""))
    wf = res.get("wal_fsync")
    if wf:
        w("")
        w("The servers' own fsyncs during the matrix (their `etcd_disk_wal_fsync_duration_seconds` histograms):"
          " %s." % "; ".join("%s %s fsyncs, mean %s" % (NAMES[k], fmt_num(v["fsyncs"]), fmt_lat(v["mean_us"]))
                             for k, v in wf.items()))
    w("")
    w("Each cell ran etcd, MetaStore, etcd, MetaStore for %g s each with the same `metastore-bench`"
      " (8-byte keys, 256-byte values, %s random keys; range and txn-put prefilled); figures are the mean of the"
      " two runs (raw runs below); ratios are MetaStore / etcd. Server CPU is per request, from /proc/PID/stat;"
      " client CPU is metastore-bench's own." % (a["duration"], fmt_num(KEY_SPACE)))
    w("")
    w("![QPS per cell](results/%s-qps.svg)" % stem)
    w("![Server CPU per request](results/%s-cpu.svg)" % stem)
    w("![Latency CDFs](results/%s-cdf.svg)" % stem)
    w("")
    w("| workload | conns × clients | etcd QPS | MetaStore QPS | QPS ratio | etcd P50 | MetaStore P50 | etcd P99"
      " | MetaStore P99 | P99 ratio | etcd CPU µs/req | MetaStore CPU µs/req | CPU ratio |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in res["cells"]:
        s = summary(c)
        e, ms, r = s["etcd"], s["metastore"], s["ratio"]
        wl = c["workload"] + (" " + {"l": "linearizable", "s": "serializable"}[c["consistency"]]
                              if c["consistency"] else "")
        w("| %s | %d × %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            wl, c["conns"], c["clients"], fmt_num(e["qps"]), fmt_num(ms["qps"]), fmt_ratio(r["qps"]),
            fmt_lat(e["p50_us"]), fmt_lat(ms["p50_us"]), fmt_lat(e["p99_us"]), fmt_lat(ms["p99_us"]),
            fmt_ratio(r["p99"]), fmt_num(e["server_cpu_us_per_req"], 1), fmt_num(ms["server_cpu_us_per_req"], 1),
            fmt_ratio(r["cpu"])))
    w("")
    streams_markdown(res, stem, w)
    w("### Transport ceiling: null")
    w("")
    nb, nh = res["null"]["bench"], res["null"].get("h2load", [])
    w("`/metastore.Bench/Null` (empty message in and out, no storage work; MetaStore only, started with"
      " `--experimental-bench-null`):")
    w("")
    w("| client | setting | QPS (runs) | QPS mean | P50 | P99 | server CPU µs/req | client CPU µs/req |")
    w("|---|---|---|---:|---:|---:|---:|---:|")
    w("| metastore-bench null | 10 conns × 100 clients | %s | %s | %s | %s | %s | %s |" % (
        " / ".join(fmt_num(r.get("qps")) for r in nb), fmt_num(mean_of(nb, "qps")), fmt_lat(mean_of(nb, "p50_us")),
        fmt_lat(mean_of(nb, "p99_us")), fmt_num(mean_of(nb, "server_cpu_us_per_req"), 2),
        fmt_num(mean_of(nb, "client_cpu_us_per_req"), 2)))
    if nh:
        w("| h2load | 10 conns × 10 streams | %s | %s | – | – | %s | %s |" % (
            " / ".join(fmt_num(r.get("req_per_s")) for r in nh), fmt_num(mean_of(nh, "req_per_s")),
            fmt_num(mean_of(nh, "server_cpu_us_per_req"), 2), fmt_num(mean_of(nh, "client_cpu_us_per_req"), 2)))
        w("")
        w("h2load: `%s` (body: the 5 bytes 00 00 00 00 00, a gRPC message of length 0; h2load sees HTTP"
          " status only, not grpc-status, so metastore-bench's run above is the check that the calls succeed)."
          % res["null"].get("h2load_command", "h2load"))
    w("")
    w("### Syscalls and allocations per request")
    w("")
    threads = {k: max([r.get("threads_attached", 0) for r in res["syscalls"] if r["server"] == k], default=0)
               for k in SERVERS}
    w("Syscalls: `strace -c -f -p PID` attached to every thread of the running server (etcd: %d, MetaStore: %d)"
      " for %s requests at 10 × 100; strace slows the server, so only the counts are kept. Calls made by idle"
      " threads during the run are included. MetaStore's network and disk I/O goes through io_uring: a submission"
      " is not a syscall, `io_uring_enter` is." % (threads["etcd"], threads["metastore"],
                                                  fmt_num(a["strace_requests"])))
    w("")
    w("| workload | etcd syscalls/req | MetaStore syscalls/req | etcd top calls/req | MetaStore top calls/req |")
    w("|---|---:|---:|---|---|")
    sc = {(r["server"], r["workload"], r["consistency"]): r for r in res["syscalls"]}
    for workload, cons in COUNTED:
        e, ms = sc.get(("etcd", workload, cons)), sc.get(("metastore", workload, cons))
        top = lambda r: ", ".join("%s %.2f" % (n, v) for n, v in r["top"][:4]) if r else "–"  # noqa: E731
        w("| %s%s | %s | %s | %s | %s |" % (workload, " " + cons if cons else "", fmt_num(e and e["per_req"], 2),
                                            fmt_num(ms and ms["per_req"], 2), top(e), top(ms)))
    w("")
    w("Allocations: a second `metastore` built with `--features count-allocs` (a counting global allocator),"
      " fresh data dir; after a warm-up of the same shape, the delta of `metastore_heap_allocations_total` over a"
      " fixed-count run (%s requests at 10 × 100, %s at 1 × 1), minus one /metrics scrape's own allocations,"
      " divided by the requests. Connection setup is included (amortised over the run)." % (
          fmt_num(a["alloc_requests"]), fmt_num(max(1, a["alloc_requests"] // 10))))
    w("")
    w("| workload | conns × clients | requests | allocations/req |")
    w("|---|---|---:|---:|")
    for r in res["allocations"]:
        w("| %s%s | %d × %d | %s | %s |" % (r["workload"], " " + r["consistency"] if r["consistency"] else "",
                                           r["conns"], r["clients"], fmt_num(r["requests"]), fmt_num(r["per_req"], 2)))
    w("")
    w("### Against the issue's targets")
    w("")
    w("| target | measured | verdict |")
    w("|---|---|---|")
    for t, measured, v in targets(res):
        w("| %s | %s | %s |" % (t, measured, v))
    w("")
    w("Where a target is short, this suite does not say where the time goes: that needs a profile of the cell"
      " (`perf record -g -p <pid>` while the cell runs, then a flamegraph), written up here by whoever runs it.")
    w("")
    if res["failures"]:
        w("**Failures in this run** (these cells' figures are missing or suspect):")
        w("")
        for f in res["failures"]:
            w("- %s" % f.replace("|", "\\|").replace("\n", " "))
        w("")
    w("<details><summary>Raw runs (both runs of every cell)</summary>")
    w("")
    w("| cell | server | run | QPS | P50 | P99 | P99.9 | max | server CPU µs/req | client CPU µs/req | steal % |"
      " errors |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for c in res["cells"]:
        for kind in SERVERS:
            for i, r in enumerate(c["runs"][kind], 1):
                if "failed" in r:
                    w("| %s | %s | %d | failed | | | | | | | | |" % (label(c), NAMES[kind], i))
                    continue
                w("| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %.1f | %s |" % (
                    label(c), NAMES[kind], i, fmt_num(r["qps"]), fmt_lat(r["p50_us"]), fmt_lat(r["p99_us"]),
                    fmt_lat(r["p999_us"]), fmt_lat(r["max_us"]), fmt_num(r["server_cpu_us_per_req"], 1),
                    fmt_num(r["client_cpu_us_per_req"], 1), r.get("steal_pct", 0),
                    sum(r["errors"].values()) if r["errors"] else 0))
    if res.get("streams"):
        w("")
        w("Watch and lease cells (watch: events per second, put-to-event latency, CPU per event; setup: creating the"
          " watchers or granting the leases, untimed):")
        w("")
        w("| cell | server | run | events or ops/s | puts/s | P50 | P99 | P99.9 | max | server CPU µs/op"
          " | client CPU µs/op | setup | missing | steal % | errors |")
        w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for c in res["streams"]:
            for kind in SERVERS:
                for i, r in enumerate(c["runs"][kind], 1):
                    if "failed" in r:
                        w("| %s | %s | %d | failed | | | | | | | | | | | |" % (c["label"], NAMES[kind], i))
                        continue
                    w("| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %.2f s | %s | %.1f | %s |" % (
                        c["label"], NAMES[kind], i, fmt_num(r["qps"]), fmt_num(r.get("puts_per_s"), 1),
                        fmt_lat(r["p50_us"]), fmt_lat(r["p99_us"]), fmt_lat(r["p999_us"]), fmt_lat(r["max_us"]),
                        fmt_num(r["server_cpu_us_per_req"], 2), fmt_num(r["client_cpu_us_per_req"], 2),
                        r.get("setup_s", 0), fmt_num(r.get("missing_events")), r.get("steal_pct", 0),
                        sum(r["errors"].values()) if r["errors"] else 0))
    w("")
    w("</details>")
    w("")
    w("Raw JSON: [results/%s.json](results/%s.json)." % (stem, stem))
    return "\n".join(out)


def streams_markdown(res, stem, w):
    """The watch and lease tables (issue 6)."""
    cells = res.get("streams") or []
    if not cells:
        return
    watch = [c for c in cells if c["workload"] == "watch-latency"]
    lease = [c for c in cells if c["workload"] == "lease-keepalive"]
    w("### Watch and lease")
    w("")
    if watch:
        paced = ", ".join("%s watchers at %s puts/s" % (fmt_num(c["watchers"]), "%g" % c["rate"])
                          for c in watch if c["rate"])
        w("`metastore-bench watch-latency`: one writer, on its own connection, puts one key (8 bytes, 256-byte"
          " values) that the watchers watch, one watcher per Watch stream, the streams spread over the connections."
          " Each value starts with the put's send time; every delivered event records receive time − send time"
          " (put-to-event), over all deliveries. With one watcher the writer is closed loop (one put at a time);"
          " with more it is paced at %s events per second offered (%s), so that the figure is the fan-out's"
          " latency, not a backlog's. Every watcher must get every put's event (within 10 s of the last put)."
          " Events/s: deliveries per second of the run; CPU per delivered event. Each cell ran etcd, MetaStore,"
          " etcd, MetaStore for %g s; figures are the mean of the two runs; ratios are MetaStore / etcd." % (
              fmt_num(WATCH_EVENTS_PER_S), paced, res["args"]["duration"]))
        w("")
        w("| watchers × conns | etcd P50 | MetaStore P50 | P50 ratio | etcd P99 | MetaStore P99 | P99 ratio"
          " | etcd events/s | MetaStore events/s | etcd puts/s | MetaStore puts/s | etcd CPU µs/event"
          " | MetaStore CPU µs/event | CPU ratio |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in watch:
            s = summary(c)
            e, ms, r = s["etcd"], s["metastore"], s["ratio"]
            w("| %s × %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                fmt_num(c["watchers"]), c["conns"], fmt_lat(e["p50_us"]), fmt_lat(ms["p50_us"]),
                fmt_ratio(r["p50"]), fmt_lat(e["p99_us"]), fmt_lat(ms["p99_us"]), fmt_ratio(r["p99"]),
                fmt_num(e["qps"]), fmt_num(ms["qps"]), fmt_num(e["puts_per_s"], 1), fmt_num(ms["puts_per_s"], 1),
                fmt_num(e["server_cpu_us_per_req"], 2), fmt_num(ms["server_cpu_us_per_req"], 2),
                fmt_ratio(r["cpu"])))
        w("")
    if lease:
        w("`metastore-bench lease-keepalive`: each client grants its own lease (TTL 60 s, untimed), then sends"
          " LeaseKeepAlive requests on its own stream, one at a time (closed loop); latency is request to"
          " response; the leases are revoked after the run.")
        w("")
        w("| conns × clients | etcd QPS | MetaStore QPS | QPS ratio | etcd P50 | MetaStore P50 | etcd P99"
          " | MetaStore P99 | P99 ratio | etcd CPU µs/req | MetaStore CPU µs/req | CPU ratio |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in lease:
            s = summary(c)
            e, ms, r = s["etcd"], s["metastore"], s["ratio"]
            w("| %d × %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                c["conns"], c["clients"], fmt_num(e["qps"]), fmt_num(ms["qps"]), fmt_ratio(r["qps"]),
                fmt_lat(e["p50_us"]), fmt_lat(ms["p50_us"]), fmt_lat(e["p99_us"]), fmt_lat(ms["p99_us"]),
                fmt_ratio(r["p99"]), fmt_num(e["server_cpu_us_per_req"], 1),
                fmt_num(ms["server_cpu_us_per_req"], 1), fmt_ratio(r["cpu"])))
        w("")
    w("![Watch and lease latency CDFs](results/%s-streams-cdf.svg)" % stem)
    w("")


def write_section(text):
    """Replaces what lies between the suite's markers in perf/RESULTS.md, keeping the rest."""
    section = "%s\n## Side-by-side suite: etcd and MetaStore\n\n%s\n%s" % (BEGIN, text.rstrip("\n"), END)
    try:
        old = open(RESULTS_MD).read()
    except FileNotFoundError:
        old = "# Performance results\n\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        new = head + section + tail
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    with open(RESULTS_MD, "w") as f:
        f.write(new)


# -- main ------------------------------------------------------------------------------------

def build(a):
    if a.no_build:
        for b in (METASTORE, BENCH, METASTORE_ALLOC):
            if not os.path.exists(b):
                sys.exit("%s is missing (run without --no-build)" % b)
        return
    log("building release binaries")
    subprocess.run(["cargo", "build", "--release", "-p", "metastore-core", "-p", "metastore-bench"], cwd=ROOT,
                   check=True)
    log("building the count-allocs metastore into %s" % os.path.relpath(ALLOC_TARGET, ROOT))
    subprocess.run(["cargo", "build", "--release", "-p", "metastore-core", "--bin", "metastore", "--features",
                    "count-allocs", "--target-dir", ALLOC_TARGET], cwd=ROOT, check=True)


def estimate_s(a):
    """A rough duration of the measuring part (no build), for the log: each run plus its connect,
    about 90 s of untimed prefill at 1x1 (range l and s), the watch and lease cells (creating 10,000
    watchers takes etcd a few seconds), null and h2load, the counted runs."""
    per_run = a.duration + 0.4
    counted = 30 + (a.strace_requests + a.alloc_requests) / 1000
    streams = len(stream_cells()) * 4 * (per_run + 1) + 20
    return len(MATRIX) * 4 * per_run + 100 + streams + 4 * per_run + counted


def ensure_tools():
    """h2load (nghttp2-client) and strace, installed with apt-get when missing (as
    scripts/install-test-tools does); if that is not possible, their parts of the suite report a
    failure and the rest still runs."""
    missing = [pkg for tool, pkg in (("h2load", "nghttp2-client"), ("strace", "strace")) if not shutil.which(tool)]
    if not missing or not shutil.which("apt-get") or os.geteuid() != 0:
        return
    log("installing %s with apt-get" % " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q"] + missing
    if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL)


def raise_interrupt(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 s per run, small counts (noise, not results)")
    p.add_argument("--duration", type=float, help="seconds per bench run (default 10, --quick 1)")
    p.add_argument("--strace-requests", type=int, help="requests per strace run (default 20000, --quick 2000)")
    p.add_argument("--alloc-requests", type=int,
                   help="requests per allocation run at 10x100, a tenth at 1x1 (default 50000, --quick 2000)")
    p.add_argument("--no-build", action="store_true", help="use the binaries already built")
    a = p.parse_args()
    a.duration = a.duration or (1.0 if a.quick else 10.0)
    a.strace_requests = a.strace_requests or (2000 if a.quick else 20_000)
    a.alloc_requests = a.alloc_requests or (2000 if a.quick else 50_000)
    command = "python3 perf/suite.py" + "".join(" " + shlex.quote(x) for x in sys.argv[1:])

    for tool in (ETCD, ETCDCTL):
        if not os.path.exists(tool):
            sys.exit("%s is missing: run scripts/install-test-tools" % tool)
    # Ctrl-C and SIGTERM both end in the finally block that stops the servers (SIGINT too when
    # the shell started this script with it ignored, as a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, raise_interrupt)
    ensure_tools()
    build(a)

    suite = Suite(a)
    shutil.rmtree(suite.workdir, ignore_errors=True)
    os.makedirs(suite.workdir)
    started = time.time()
    now = datetime.datetime.now(datetime.timezone.utc)
    res = {"suite": 1, "date": now.strftime("%Y-%m-%d %H:%M UTC"), "command": command, "quick": a.quick,
           "args": {"duration": a.duration, "strace_requests": a.strace_requests, "alloc_requests": a.alloc_requests,
                    "key_size": KEY_SIZE, "val_size": VAL_SIZE, "key_space": KEY_SPACE},
           "machine": machine()}
    res["machine"]["disk"] = disk_of(suite.workdir)
    log("machine: %s" % res["machine"])
    # The build leaves dirty pages behind: written back first, they would otherwise queue ahead
    # of the probe's writes.
    os.sync()
    fsync_count = 200 if a.quick else 2000
    res["fdatasync"] = fdatasync_latency(suite.workdir, fsync_count)
    log("fdatasync: %s" % res["fdatasync"])
    log("measuring: about %d minutes" % round(estimate_s(a) / 60 + 0.5))

    servers = {}
    stat0 = proc_stat_cpu()
    try:
        for kind in SERVERS:
            servers[kind] = Server(kind, suite.workdir, METASTORE if kind == "metastore" else None)
            servers[kind].start()
        f0 = {k: wal_fsyncs(srv) for k, srv in servers.items()}
        res["cells"] = suite.matrix(servers)
        res["wal_fsync"] = {}
        for kind, srv in servers.items():
            (s0, c0), (s1, c1) = f0[kind], wal_fsyncs(srv)
            res["wal_fsync"][kind] = {"fsyncs": c1 - c0, "mean_us": round((s1 - s0) * 1e6 / (c1 - c0), 1)
                                      if c1 > c0 else None}
        log("WAL fsyncs during the matrix (the servers' own histograms): %s" % res["wal_fsync"])
        res["streams"] = suite.streams(servers)
        res["null"] = suite.null(servers["metastore"])
        res["syscalls"] = suite.strace(servers)
        res["allocations"] = suite.allocations()
    except KeyboardInterrupt:
        log("interrupted: stopping the servers")
        raise
    finally:
        suite.stop_children()
        for srv in servers.values():
            srv.stop()
    res["steal_pct"] = round(steal_pct(stat0, proc_stat_cpu()), 2)
    os.sync()
    res["fdatasync_end"] = fdatasync_latency(suite.workdir, fsync_count)
    log("fdatasync after the servers stopped: %s" % res["fdatasync_end"])
    res["elapsed_s"] = round(time.time() - started)
    res["failures"] = suite.failures

    os.makedirs(RESULTS_DIR, exist_ok=True)
    stem = "suite-%s%s" % (now.strftime("%Y-%m-%d"), "-quick" if a.quick else "")
    with open(os.path.join(RESULTS_DIR, stem + ".json"), "w") as f:
        json.dump(res, f, indent=1)
    for path in plot.render(res, os.path.join(RESULTS_DIR, stem)):
        log("wrote %s" % os.path.relpath(path, ROOT))
    text = markdown(res, stem)
    write_section(text)
    log("wrote %s and %s (measuring took %d s)" % (os.path.relpath(RESULTS_MD, ROOT),
                                                   os.path.relpath(os.path.join(RESULTS_DIR, stem + ".json"), ROOT),
                                                   res["elapsed_s"]))
    print(text)
    if suite.failures:
        log("%d failure(s):\n  %s" % (len(suite.failures), "\n  ".join(suite.failures)))
        sys.exit(1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
