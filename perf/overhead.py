#!/usr/bin/env python3
"""What metrics and tracing cost (issue 7): server CPU per request of MetaStore as it ships
(metrics on, distributed tracing off: the defaults) against the same commit built with
`--features no-telemetry` (every metric update and every `tracing` call compiled out).

  python3 perf/overhead.py [--duration S] [--rounds N] [--no-build] [--write]

It builds both servers (the second in target/perf-notelemetry), then for each round starts each
server in turn (the order alternates between rounds, A B then B A, so drift hits both) on a fresh
data dir under target/perf-overhead on 127.0.0.1, and runs `metastore-bench` against it:
put and range (linearizable) at 10 connections x 100 clients, and null (the transport alone,
where a fixed cost per call shows most) at 10 x 100. The figure is the server's CPU per request
(`--server-pid`: utime + stime of the server process over the run, divided by the requests);
each variant's figure is the median over the rounds. The target: metrics on and tracing off
cost under 2% more than both compiled out.

`--write` replaces the overhead section of perf/RESULTS.md. Servers are stopped by the PID this
script started (SIGTERM, then SIGKILL after 60 s).
"""

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
NOTEL_TARGET = os.path.join(TARGET, "perf-notelemetry")
BENCH = os.path.join(TARGET, "release", "metastore-bench")
VARIANTS = {
    "shipped": os.path.join(TARGET, "release", "metastore"),
    "no-telemetry": os.path.join(NOTEL_TARGET, "release", "metastore"),
}
WORKLOADS = [("put", []), ("range", ["--consistency", "l"]), ("null", [])]
CONNS, CLIENTS = 10, 100
RESULTS = os.path.join(ROOT, "perf", "RESULTS.md")
BEGIN, END = "<!-- overhead:begin -->", "<!-- overhead:end -->"


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def build():
    log("building the shipped server and metastore-bench")
    subprocess.run(["cargo", "build", "--release", "-p", "metastore-core", "-p", "metastore-bench"], cwd=ROOT,
                   check=True)
    log("building the server with --features no-telemetry into %s" % os.path.relpath(NOTEL_TARGET, ROOT))
    subprocess.run(["cargo", "build", "--release", "-p", "metastore-core", "--bin", "metastore", "--features",
                    "no-telemetry", "--target-dir", NOTEL_TARGET], cwd=ROOT, check=True)


class Server:
    def __init__(self, binary, workdir):
        shutil.rmtree(workdir, ignore_errors=True)
        os.makedirs(workdir)
        self.data = os.path.join(workdir, "data")
        urls = os.path.join(self.data, "client-urls")
        self.logf = open(os.path.join(workdir, "server.log"), "wb")
        self.proc = subprocess.Popen([binary, "--data-dir", self.data, "--listen-client-urls", "http://127.0.0.1:0",
                                      "--experimental-bench-null"],
                                     stdout=subprocess.DEVNULL, stderr=self.logf, stdin=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not (os.path.exists(urls) and open(urls).read().strip()):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("%s did not start; see %s" % (binary, workdir))
            time.sleep(0.01)
        self.url = open(urls).read().split()[0]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()


def bench(srv, workload, extra, duration):
    cmd = [BENCH, workload, "--endpoints", srv.url, "--json", "--no-progress", "--server-pid", str(srv.proc.pid),
           "--conns", str(CONNS), "--clients", str(CLIENTS), "--duration", str(duration)] + extra
    r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0 or not r.stdout.strip():
        raise RuntimeError("metastore-bench %s failed: %s" % (" ".join(cmd[1:]), r.stderr.strip()[-400:]))
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    if rec.get("errors"):
        raise RuntimeError("metastore-bench %s: errors %s" % (workload, rec["errors"]))
    return rec


def commit():
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=10, help="seconds per run (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of A B / B A (default 3)")
    p.add_argument("--no-build", action="store_true", help="use the binaries already built")
    p.add_argument("--write", action="store_true", help="replace the overhead section of perf/RESULTS.md")
    a = p.parse_args()
    if not a.no_build:
        build()
    for b in list(VARIANTS.values()) + [BENCH]:
        if not os.path.exists(b):
            sys.exit("%s is missing (run without --no-build)" % b)
    work = os.path.join(TARGET, "perf-overhead")
    cpu = {v: {w: [] for w, _ in WORKLOADS} for v in VARIANTS}
    qps = {v: {w: [] for w, _ in WORKLOADS} for v in VARIANTS}
    started = time.time()
    for r in range(a.rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
        for v in order:
            srv = Server(VARIANTS[v], os.path.join(work, "%s-%d" % (v, r)))
            try:
                for w, extra in WORKLOADS:
                    rec = bench(srv, w, extra, a.duration)
                    cpu[v][w].append(rec["server_cpu_us_per_req"])
                    qps[v][w].append(rec["qps"])
                    log("round %d %-12s %-5s %8.0f QPS  server %.2f us/req" % (r + 1, v, w, rec["qps"],
                                                                               rec["server_cpu_us_per_req"]))
            finally:
                srv.stop()
    lines = [
        "## What metrics and tracing cost (issue 7)",
        "",
        "`python3 perf/overhead.py --write` (%d rounds of %g s per workload, the two builds alternating A B / B A; "
        "%s, %d cores, kernel %s; commit %s; %s). Server CPU per request, median over the rounds, of MetaStore "
        "as it ships (metrics on, distributed tracing off: the defaults) and of the same commit built with "
        "`--features no-telemetry` (every metric update and `tracing` call compiled out); %d connections x %d "
        "clients. Target: under 2%% more."
        % (a.rounds, a.duration, cpu_model(), os.cpu_count() or 0, platform.release(), commit(),
           time.strftime("%Y-%m-%d"), CONNS, CLIENTS),
        "",
        "| workload | compiled out: µs/req (QPS) | shipped: µs/req (QPS) | cost of metrics |",
        "|---|---|---|---|",
    ]
    for w, _ in WORKLOADS:
        off, on = statistics.median(cpu["no-telemetry"][w]), statistics.median(cpu["shipped"][w])
        lines.append("| %s | %.2f (%.0f) | %.2f (%.0f) | %+.1f%% |" % (
            w, off, statistics.median(qps["no-telemetry"][w]), on, statistics.median(qps["shipped"][w]),
            (on / off - 1) * 100))
    lines.append("")
    lines.append("Every round's figures (µs/req): " + "; ".join(
        "%s %s %s" % (v, w, ", ".join("%.2f" % x for x in cpu[v][w])) for v in VARIANTS for w, _ in WORKLOADS) + ".")
    section = "\n".join(lines)
    print(section)
    log("measured in %.0f s" % (time.time() - started))
    if a.write:
        text = open(RESULTS).read()
        block = BEGIN + "\n" + section + "\n" + END
        if BEGIN in text and END in text:
            text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        open(RESULTS, "w").write(text)
        log("wrote the overhead section of %s" % os.path.relpath(RESULTS, ROOT))


if __name__ == "__main__":
    main()
