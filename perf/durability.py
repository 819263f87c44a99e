#!/usr/bin/env python3
"""The durability benchmark (issue 4): MetaStore and etcd 3.4.23 side by side, same machine.

  python3 perf/durability.py [--keys N] [--updates N] [--seconds S] [--out FILE]

It builds the release binaries, then, for each server in turn on a fresh data dir under
target/perf-durability (loopback, ports read back or picked free):

1. writes per fsync: `metastore-bench put` at 1, 100 and 1,000 concurrent clients, each for
   --seconds; the server's own counters before and after give the writes applied and the fsyncs
   issued (etcd: etcd_server_proposals_committed_total and etcd_disk_wal_fsync_duration_seconds_count;
   MetaStore: metastore_writes_applied_total and the same fsync histogram);
2. restart time with --keys keys and a long history: --keys sequential puts, then --updates random
   overwrites, then SIGKILL and a restart, timed from spawn to the first linearizable `etcdctl get`
   that succeeds (then the same after a SIGTERM);
3. disk bytes per live byte after compaction: compaction at the current revision (--physical),
   defrag, then the data dir's allocated blocks divided by the live keys' key + value bytes.

Everything is printed as a Markdown table for perf/RESULTS.md and as JSON to --out. Machine facts
(CPU model, cores, kernel, disk) are printed with it. Servers are stopped by the PID this script
started, nothing else is touched.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
METASTORE = os.path.join(TARGET, "release", "metastore")
BENCH = os.path.join(TARGET, "release", "metastore-bench")
ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
KEY_SIZE = 8
VAL_SIZE = 256
QUOTA = str(8 << 30)


def metric(url, name):
    """Sum of every series of `name` on the server's /metrics page."""
    import urllib.request

    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        rest = line[len(name):]
        if rest[:1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def disk_bytes(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server process on a data dir that survives restarts."""

    def __init__(self, kind, workdir):
        self.kind = kind
        self.dir = os.path.join(workdir, kind)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.data = os.path.join(self.dir, "data")
        self.log = open(os.path.join(self.dir, "server.log"), "ab")
        self.proc = None
        self.url = None
        if kind == "etcd":
            self.client_port, self.peer_port = free_port(), free_port()

    def spawn(self):
        if self.kind == "metastore":
            urls = os.path.join(self.data, "client-urls")
            if os.path.exists(urls):
                os.remove(urls)
            cmd = [METASTORE, "--data-dir", self.data, "--listen-client-urls", "http://127.0.0.1:0",
                   "--quota-backend-bytes", QUOTA]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log)
            deadline = time.time() + 600
            while not (os.path.exists(urls) and open(urls).read().strip()):
                self.check_alive(deadline)
                time.sleep(0.002)
            self.url = open(urls).read().split()[0]
        else:
            curl = "http://127.0.0.1:%d" % self.client_port
            purl = "http://127.0.0.1:%d" % self.peer_port
            cmd = [ETCD, "--name", "default", "--data-dir", self.data,
                   "--listen-client-urls", curl, "--advertise-client-urls", curl,
                   "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
                   "--initial-cluster", "default=" + purl, "--quota-backend-bytes", QUOTA]
            env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, env=env)
            self.url = curl

    def check_alive(self, deadline):
        if self.proc.poll() is not None:
            sys.exit("%s exited (%s); see %s/server.log" % (self.kind, self.proc.returncode, self.dir))
        if time.time() > deadline:
            sys.exit("%s did not come up; see %s/server.log" % (self.kind, self.dir))

    def start_timed(self):
        """Spawns the server; seconds until a linearizable get succeeds."""
        t0 = time.time()
        self.spawn()
        deadline = t0 + 600
        while True:
            r = subprocess.run(etcdctl_cmd(self.url, "get", "probe", timeout="1s"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if r.returncode == 0:
                return time.time() - t0
            self.check_alive(deadline)
            time.sleep(0.01)

    def stop(self, sig):
        if self.proc is None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def pid(self):
        return self.proc.pid


def etcdctl_cmd(url, *args, timeout="120s"):
    return [ETCDCTL, "--endpoints", url, "--dial-timeout", "2s", "--command-timeout", timeout] + list(args)


def etcdctl(url, *args):
    env = dict(os.environ, ETCDCTL_API="3")
    r = subprocess.run(etcdctl_cmd(url, *args), capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit("etcdctl %s: %s%s" % (" ".join(args), r.stdout, r.stderr))
    return r.stdout


def bench(srv, *args):
    cmd = [BENCH, "--endpoints", srv.url, "--json", "--no-progress", "--server-pid", str(srv.pid()),
           "--key-size", str(KEY_SIZE), "--val-size", str(VAL_SIZE)] + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("metastore-bench %s: %s" % (" ".join(args), r.stderr))
    return json.loads(r.stdout.strip().splitlines()[-1])


def writes_metric(kind):
    return "metastore_writes_applied_total" if kind == "metastore" else "etcd_server_proposals_committed_total"


FSYNCS = "etcd_disk_wal_fsync_duration_seconds_count"


def run_server(kind, workdir, a):
    out = {"kind": kind, "group_commit": []}
    srv = Server(kind, workdir)
    out["first_start_s"] = srv.start_timed()
    for clients in (1, 100, 1000):
        conns = max(1, min(clients // 10, 100))
        w0, f0 = metric(srv.url, writes_metric(kind)), metric(srv.url, FSYNCS)
        r = bench(srv, "put", "--clients", str(clients), "--conns", str(conns), "--duration", str(a.seconds),
                  "--key-space-size", "100000", "--no-prefill")
        w1, f1 = metric(srv.url, writes_metric(kind)), metric(srv.url, FSYNCS)
        row = {"clients": clients, "conns": conns, "qps": r["qps"], "p50_us": r["p50_us"], "p99_us": r["p99_us"],
               "writes": w1 - w0, "fsyncs": f1 - f0, "writes_per_fsync": (w1 - w0) / max(f1 - f0, 1),
               "server_cpu_us_per_req": r["server_cpu_us_per_req"], "errors": r["errors"]}
        print("  %s put x%d: %s" % (kind, clients, row), file=sys.stderr)
        out["group_commit"].append(row)

    # A long history over --keys keys.
    t0 = time.time()
    bench(srv, "put", "--clients", "1000", "--conns", "100", "--total", str(a.keys), "--key-space-size",
          str(a.keys), "--sequential-keys", "--no-prefill")
    if a.updates:
        bench(srv, "put", "--clients", "1000", "--conns", "100", "--total", str(a.updates), "--key-space-size",
              str(a.keys), "--no-prefill")
    out["load_s"] = time.time() - t0
    status = json.loads(etcdctl(srv.url, "endpoint", "status", "-w", "json"))[0]["Status"]
    out["revision"] = status["header"]["revision"]
    out["disk_bytes_loaded"] = disk_bytes(srv.data)
    print("  %s loaded: revision %d, %d bytes on disk" % (kind, out["revision"], out["disk_bytes_loaded"]),
          file=sys.stderr)

    srv.stop(signal.SIGKILL)
    out["restart_after_sigkill_s"] = srv.start_timed()
    srv.stop(signal.SIGTERM)
    out["restart_after_sigterm_s"] = srv.start_timed()
    print("  %s restarts: %.2f s after SIGKILL, %.2f s after SIGTERM"
          % (kind, out["restart_after_sigkill_s"], out["restart_after_sigterm_s"]), file=sys.stderr)

    etcdctl(srv.url, "compaction", str(out["revision"]), "--physical")
    etcdctl(srv.url, "defrag")
    # A restart after defrag leaves no preallocation or temp files behind for either server.
    srv.stop(signal.SIGTERM)
    srv.start_timed()
    live = a.keys * (KEY_SIZE + VAL_SIZE)
    out["live_bytes"] = live
    out["disk_bytes_compacted"] = disk_bytes(srv.data)
    out["disk_per_live_byte"] = out["disk_bytes_compacted"] / live
    print("  %s after compaction + defrag: %d bytes on disk, %.2f per live byte"
          % (kind, out["disk_bytes_compacted"], out["disk_per_live_byte"]), file=sys.stderr)
    srv.stop(signal.SIGTERM)
    return out


def machine():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "etcd": subprocess.run([ETCD, "--version"], capture_output=True, text=True).stdout.split("\n")[0]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--updates", type=int, default=2_000_000)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--out", default=os.path.join(TARGET, "perf-durability.json"))
    p.add_argument("--only", choices=["metastore", "etcd"])
    a = p.parse_args()
    for tool in (ETCD, ETCDCTL):
        if not os.path.exists(tool):
            sys.exit("%s is missing: run scripts/install-test-tools" % tool)
    subprocess.run(["cargo", "build", "--release", "-p", "metastore-core", "-p", "metastore-bench"], cwd=ROOT,
                   check=True)
    workdir = os.path.join(TARGET, "perf-durability")
    os.makedirs(workdir, exist_ok=True)
    results = {"machine": machine(), "args": vars(a), "servers": []}
    for kind in ("metastore", "etcd"):
        if a.only and a.only != kind:
            continue
        print("== %s" % kind, file=sys.stderr)
        results["servers"].append(run_server(kind, workdir, a))
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)
    report(results)


def report(results):
    m = results["machine"]
    print("Machine: %s, %s cores, kernel %s; %s" % (m["cpu"], m["cores"], m["kernel"], m["etcd"]))
    by = {s["kind"]: s for s in results["servers"]}
    print()
    print("| clients | server | put QPS | P99 ms | writes per fsync | server CPU µs/req |")
    print("|---|---|---|---|---|---|")
    for i, clients in enumerate((1, 100, 1000)):
        for kind, s in by.items():
            r = s["group_commit"][i]
            print("| %d | %s | %.0f | %.2f | %.1f | %s |" % (clients, kind, r["qps"], r["p99_us"] / 1000,
                                                            r["writes_per_fsync"], r["server_cpu_us_per_req"]))
    print()
    print("| server | keys | revisions | restart after SIGKILL s | after SIGTERM s | disk after compaction+defrag"
          " / live bytes |")
    print("|---|---|---|---|---|---|")
    for kind, s in by.items():
        print("| %s | %d | %d | %.2f | %.2f | %.2f |" % (kind, results["args"]["keys"], s["revision"],
                                                         s["restart_after_sigkill_s"], s["restart_after_sigterm_s"],
                                                         s["disk_per_live_byte"]))
    if len(by) == 2:
        ms, e = by["metastore"], by["etcd"]
        print()
        print("Ratios (MetaStore / etcd): put QPS at 1/100/1000 clients %s; restart after SIGKILL %.2f; disk per"
              " live byte %.2f" % ("/".join("%.2f" % (ms["group_commit"][i]["qps"] / e["group_commit"][i]["qps"])
                                            for i in range(3)),
                                   ms["restart_after_sigkill_s"] / e["restart_after_sigkill_s"],
                                   ms["disk_per_live_byte"] / e["disk_per_live_byte"]))


if __name__ == "__main__":
    main()
