#!/usr/bin/env python3
"""SVG plots of a suite run, written by hand (Python 3 standard library only).

  python3 perf/plot.py perf/results/suite-<date>.json   # (re)writes the SVGs beside the JSON

- <stem>-qps.svg: QPS per cell, etcd and MetaStore side by side (bar: mean of the two runs; dots:
  each run);
- <stem>-cpu.svg: server CPU µs per request per cell, the same way;
- <stem>-cdf.svg: latency CDFs, one panel per cell, both runs of each server (latency on a log
  axis, from metastore-bench --latency-out quantiles: the minimum, every 1%, P99.9, P99.99, max);
- <stem>-streams-cdf.svg: the same for the watch cells (put-to-event latency of every delivered
  event) and the lease-keepalive cell, when the run has them.

perf/suite.py calls render() at the end of a run.
"""

import json
import math
import os
import sys
from xml.sax.saxutils import escape

COLORS = {"etcd": "#8c8c8c", "metastore": "#1f6fb4"}
NAMES = {"etcd": "etcd", "metastore": "MetaStore"}
FONT = 'font-family="sans-serif"'


def cell_label(c):
    w = c["workload"] + (" " + c["consistency"] if c.get("consistency") else "")
    return "%s %d×%d" % (w, c["conns"], c["clients"])


def fmt_si(v):
    if v >= 1e6:
        return "%.3gM" % (v / 1e6)
    if v >= 1e3:
        return "%.3gk" % (v / 1e3)
    return "%.3g" % v


def nice_max(v):
    """The smallest round number (1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 × 10^k) at or above v."""
    if v <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def text(x, y, s, size=11, anchor="start", extra=""):
    return '<text x="%.1f" y="%.1f" font-size="%d" text-anchor="%s" %s %s>%s</text>' % (
        x, y, size, anchor, FONT, extra, escape(s))


def legend(x, y, items):
    out = []
    for i, (name, color, dash) in enumerate(items):
        yy = y + i * 16
        out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="3"%s/>' % (
            x, yy - 4, x + 22, yy - 4, color, ' stroke-dasharray="5,3"' if dash else ""))
        out.append(text(x + 28, yy, name))
    return out


def bars_svg(title, unit, groups):
    """groups: [(label, {"etcd": [run values], "metastore": [...]})]: one bar per server at the
    mean of its runs, a dot per run, the mean written above the bar."""
    left, top, bottom, right = 70, 60, 95, 20
    gw = 86
    width = left + right + gw * max(1, len(groups))
    height = 380
    ph = height - top - bottom
    vals = [v for _, g in groups for runs in g.values() for v in runs if v is not None]
    ymax = nice_max(max(vals) * 1.1 if vals else 1)
    y = lambda v: top + ph - ph * v / ymax  # noqa: E731
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d">' % (
        width, height, width, height), '<rect width="100%" height="100%" fill="white"/>',
        text(left, 22, title, 14, extra='font-weight="bold"')]
    for i in range(6):
        v = ymax * i / 5
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e4e4e4"/>' % (left, y(v), width - right, y(v)))
        out.append(text(left - 6, y(v) + 4, fmt_si(v), 10, "end"))
    out.append(text(16, top + ph / 2, unit, 11, "middle", 'transform="rotate(-90 16 %.1f)"' % (top + ph / 2)))
    for gi, (label, g) in enumerate(groups):
        gx = left + gi * gw + 10
        for si, kind in enumerate(("etcd", "metastore")):
            runs = [v for v in g.get(kind, []) if v is not None]
            bx = gx + si * 33
            if not runs:
                out.append(text(bx + 15, y(0) - 4, "n/a", 9, "middle"))
                continue
            mean = sum(runs) / len(runs)
            out.append('<rect x="%.1f" y="%.1f" width="30" height="%.1f" fill="%s"/>' % (
                bx, y(mean), y(0) - y(mean), COLORS[kind]))
            for v in runs:
                out.append('<circle cx="%.1f" cy="%.1f" r="2.5" fill="black"/>' % (bx + 15, y(v)))
            out.append(text(bx + 15, y(mean) - 5, fmt_si(mean), 9, "middle"))
        lx, ly = gx + 33, top + ph + 14
        out.append(text(lx, ly, label, 10, "end", 'transform="rotate(-35 %.1f %.1f)"' % (lx, ly)))
    out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="black"/>' % (left, y(0), width - right, y(0)))
    out += legend(left, 44, [("etcd", COLORS["etcd"], False)])
    out += legend(left + 100, 44, [("MetaStore", COLORS["metastore"], False)])
    out.append("</svg>")
    return "\n".join(out) + "\n"


def cdf_svg(title, panels):
    """panels: [(label, [(kind, run_no, [[quantile, µs], ...]), ...])]: latency (log x) against the
    fraction of requests at or below it; run 1 solid, run 2 dashed."""
    cols = 2
    pw, ph = 330, 190
    ml, mt, mb = 55, 28, 34
    rows = max(1, math.ceil(len(panels) / cols))
    width, height = cols * (pw + ml + 20) + 10, 70 + rows * (ph + mt + mb)
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d">' % (
        width, height, width, height), '<rect width="100%" height="100%" fill="white"/>',
        text(10, 22, title, 14, extra='font-weight="bold"')]
    out += legend(20, 46, [("etcd", COLORS["etcd"], False)])
    out += legend(120, 46, [("MetaStore", COLORS["metastore"], False)])
    out += legend(240, 46, [("run 1", "#444", False)])
    out += legend(330, 46, [("run 2", "#444", True)])
    for pi, (label, series) in enumerate(panels):
        ox = 10 + (pi % cols) * (pw + ml + 20) + ml
        oy = 70 + (pi // cols) * (ph + mt + mb) + mt
        pts = [us for _, _, qs in series for _, us in qs if us and us > 0]
        out.append(text(ox, oy - 8, label, 12, extra='font-weight="bold"'))
        out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>' % (ox, oy, pw, ph))
        if not pts:
            out.append(text(ox + pw / 2, oy + ph / 2, "no data", 11, "middle"))
            continue
        lo, hi = math.floor(math.log10(min(pts))), math.ceil(math.log10(max(pts)))
        if hi <= lo:
            hi = lo + 1
        x = lambda us: ox + pw * (math.log10(max(us, 10 ** lo)) - lo) / (hi - lo)  # noqa: E731
        y = lambda q: oy + ph - ph * q  # noqa: E731
        for d in range(lo, hi + 1):
            for m in (1, 2, 5):
                v = m * 10 ** d
                if v > 10 ** hi:
                    break
                xx = x(v)
                out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s"/>' % (
                    xx, oy, xx, oy + ph, "#dcdcdc" if m == 1 else "#f0f0f0"))
                if m == 1:
                    out.append(text(xx, oy + ph + 14, fmt_us(v), 10, "middle"))
        for q in (0.5, 0.9):
            out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#eeeeee"/>' % (ox, y(q), ox + pw, y(q)))
        for q in (0, 0.5, 0.9, 1):
            out.append(text(ox - 5, y(q) + 4, "%g" % q, 10, "end"))
        out.append(text(ox + pw / 2, oy + ph + 28, "latency", 10, "middle"))
        for kind, run, qs in series:
            if not qs:
                continue
            path = " ".join("%s%.1f,%.1f" % ("M" if i == 0 else "L", x(us), y(q)) for i, (q, us) in enumerate(qs))
            out.append('<path d="%s" fill="none" stroke="%s" stroke-width="1.6"%s/>' % (
                path, COLORS[kind], ' stroke-dasharray="5,3"' if run > 1 else ""))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def fmt_us(us):
    if us >= 1e6:
        return "%gs" % (us / 1e6)
    if us >= 1e3:
        return "%gms" % (us / 1e3)
    return "%gµs" % us


def render(res, stem):
    """Writes <stem>-qps.svg, <stem>-cpu.svg, <stem>-cdf.svg and (with watch and lease cells)
    <stem>-streams-cdf.svg; returns their paths."""
    quick = " (quick smoke run, not a measurement)" if res.get("quick") else ""
    cells = res.get("cells", [])

    def runs(c, kind, key):
        return [r.get(key) for r in c["runs"][kind] if "failed" not in r]

    qps = [(cell_label(c), {k: runs(c, k, "qps") for k in ("etcd", "metastore")}) for c in cells]
    nb = res.get("null", {}).get("bench", [])
    if nb:
        qps.append(("null 10×100", {"metastore": [r.get("qps") for r in nb if "failed" not in r]}))
    cpu = [(cell_label(c), {k: runs(c, k, "server_cpu_us_per_req") for k in ("etcd", "metastore")}) for c in cells]
    def panels_of(cells):
        panels = []
        for c in cells:
            series = []
            for kind in ("etcd", "metastore"):
                for i, r in enumerate(c["runs"][kind], 1):
                    if "failed" not in r:
                        series.append((kind, i, r.get("latency") or []))
            panels.append((c.get("label") or cell_label(c), series))
        return panels

    files = {
        "qps": bars_svg("QPS per cell, mean of two runs (dots: each run)" + quick, "requests per second", qps),
        "cpu": bars_svg("Server CPU per request, µs (dots: each run)" + quick, "server CPU µs per request", cpu),
        "cdf": cdf_svg("Latency CDFs per cell (metastore-bench)" + quick, panels_of(cells)),
    }
    streams = res.get("streams", [])
    if streams:
        files["streams-cdf"] = cdf_svg("Watch put-to-event and lease keep-alive latency CDFs" + quick,
                                       panels_of(streams))
    paths = []
    for name, svg in files.items():
        path = "%s-%s.svg" % (stem, name)
        with open(path, "w") as f:
            f.write(svg)
        paths.append(path)
    return paths


def main():
    if len(sys.argv) != 2 or not sys.argv[1].endswith(".json"):
        sys.exit("usage: python3 perf/plot.py perf/results/suite-<date>.json")
    with open(sys.argv[1]) as f:
        res = json.load(f)
    for path in render(res, os.path.splitext(sys.argv[1])[0]):
        print(path)


if __name__ == "__main__":
    main()
