//! What a run prints: the human summary (QPS, percentiles, a latency histogram with
//! power-of-two buckets, errors grouped by message, client and server CPU per operation), the
//! one-line JSON record that scripts read, and the progress line drawn on stderr while it runs.
//! Latencies are recorded in nanoseconds and reported in µs. JSON is written by hand (no serde):
//! the record is flat and its only strings are endpoints and error messages, escaped here.
//!
//! For the watch workloads an operation is a delivered event: `total`, `qps`, the percentiles
//! and CPU per operation are over events (latency put-to-event), and the writer's puts come
//! beside them (`puts`, `puts_per_s`, put latency). watch-latency's summary leads with the
//! latency, watch-fanout's with events per second.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::args::{Config, Stop, Workload};

/// The most histogram rows printed: three per decade, so 30 rows span 10 decades.
const HISTOGRAM_ROWS_MAX: usize = 30;
const BAR_CHARS_MAX: u64 = 40;

/// Everything measured in one run.
#[derive(Debug)]
pub struct Measured {
    /// Latency of every answered operation, in ns.
    pub hist: Histogram<u64>,
    /// Operations finished, answered or not.
    pub total: u64,
    pub errors: BTreeMap<String, u64>,
    /// txn-put compares that failed (the key changed between read and txn): answers, not errors.
    pub conflicts: u64,
    /// gRPC calls made (two per txn-put operation).
    pub calls: u64,
    pub elapsed: Duration,
    pub client_cpu_us: u64,
    pub server_cpu_us: Option<u64>,
    /// Keys put before timing, and how long that took.
    pub prefill: Option<(u64, Duration)>,
    /// Connecting and setup before timing (prefill, watch creates, lease grants included).
    pub setup: Duration,
    /// The watch workloads' writer and missing events.
    pub watch: Option<WatchMeasured>,
}

/// What the watch workloads measure besides the events.
#[derive(Debug)]
pub struct WatchMeasured {
    /// Puts finished (answered or not) and those that succeeded.
    pub puts: u64,
    pub puts_ok: u64,
    /// From the start to the end of the last put.
    pub put_elapsed: Duration,
    /// Put latency, send to answer, ns.
    pub put_hist: Histogram<u64>,
    /// Events the watchers had not had when they stopped waiting (also among the errors).
    pub missing: u64,
}

impl WatchMeasured {
    pub fn puts_per_s(&self) -> f64 {
        let s = self.put_elapsed.as_secs_f64();
        if s > 0.0 {
            self.puts as f64 / s
        } else {
            0.0
        }
    }
}

/// Latency percentiles in µs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        if h.is_empty() {
            return Percentiles { p50: 0.0, p90: 0.0, p99: 0.0, p999: 0.0, max: 0.0 };
        }
        Percentiles {
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

impl Measured {
    pub fn duration_s(&self) -> f64 {
        self.elapsed.as_secs_f64()
    }

    pub fn qps(&self) -> f64 {
        let s = self.duration_s();
        if s > 0.0 {
            self.total as f64 / s
        } else {
            0.0
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn per_op(&self, us: u64) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            us as f64 / self.total as f64
        }
    }

    pub fn client_cpu_us_per_req(&self) -> f64 {
        self.per_op(self.client_cpu_us)
    }

    pub fn server_cpu_us_per_req(&self) -> Option<f64> {
        self.server_cpu_us.map(|us| self.per_op(us))
    }
}

/// A latency for people: µs below a millisecond, ms below a second, then s.
pub fn fmt_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else if us < 1_000_000.0 {
        format!("{:.3} ms", us / 1000.0)
    } else {
        format!("{:.3} s", us / 1_000_000.0)
    }
}

fn mode(cfg: &Config) -> String {
    let stop = match cfg.stop {
        Stop::Total(n) => format!("{n} ops"),
        Stop::Duration(d) => format!("{:.1} s", d.as_secs_f64()),
    };
    let rate = match cfg.rate {
        Some(r) => format!("open loop at {r} ops/s"),
        None => "closed loop".into(),
    };
    format!("{stop}, {rate}")
}

/// The watch workloads' summary: events, put-to-event latency, the writer's puts.
fn human_watch(cfg: &Config, m: &Measured, w: &WatchMeasured) -> String {
    let mut s = String::new();
    let p = Percentiles::of(&m.hist);
    let (watchers, per_stream, streams, prefix) =
        cfg.watch.as_ref().map_or((0, 0, 0, false), |w| (w.watchers, w.per_stream, w.streams(), w.prefix));
    let stop = match cfg.stop {
        Stop::Total(n) => format!("{n} puts"),
        Stop::Duration(d) => format!("{:.1} s", d.as_secs_f64()),
    };
    let pace = match cfg.rate {
        Some(r) => format!("paced at {r} puts/s"),
        None => "closed loop".into(),
    };
    let _ = writeln!(
        s,
        "Summary: {}, {} on {} ({per_stream} per stream) over {} conns, {} thread(s); one writer, {stop}, \
         {pace}",
        cfg.workload.name(),
        counted(watchers, "watcher"),
        counted(streams, "stream"),
        cfg.conns,
        cfg.threads,
    );
    let what = if prefix {
        format!("the key space's prefix ({} keys of {} bytes)", cfg.key_space_size, cfg.key_size)
    } else {
        format!("one key of {} bytes", cfg.key_size)
    };
    let _ = writeln!(
        s,
        "  Watched:    {what}, {}-byte values; setup {:.2} s (untimed)",
        cfg.val_size,
        m.setup.as_secs_f64()
    );
    let latency = format!(
        "  Put-to-event: P50 {} · P90 {} · P99 {} · P99.9 {} · max {}",
        fmt_us(p.p50),
        fmt_us(p.p90),
        fmt_us(p.p99),
        fmt_us(p.p999),
        fmt_us(p.max)
    );
    let events = format!(
        "  Events:     {:.1} per second: {} delivered in {:.3} s, {} missing, {} errors",
        m.qps(),
        m.total,
        m.duration_s(),
        w.missing,
        m.error_count()
    );
    if cfg.workload == Workload::WatchFanout {
        let _ = writeln!(s, "{events}\n{latency}");
    } else {
        let _ = writeln!(s, "{latency}\n{events}");
    }
    let pp = Percentiles::of(&w.put_hist);
    let _ = writeln!(
        s,
        "  Puts:       {:.1} per second: {} ({} ok) in {:.3} s; put latency P50 {} · P99 {}",
        w.puts_per_s(),
        w.puts,
        w.puts_ok,
        w.put_elapsed.as_secs_f64(),
        fmt_us(pp.p50),
        fmt_us(pp.p99)
    );
    let server = m.server_cpu_us_per_req().map_or_else(|| "n/a (--server-pid)".to_string(), |v| format!("{v:.2} µs"));
    let _ = writeln!(s, "  CPU per event: client {:.2} µs · server {server}", m.client_cpu_us_per_req());
    push_histogram(&mut s, &m.hist, "Put-to-event latency histogram (every delivered event)");
    push_errors(&mut s, m);
    s
}

/// `1 watcher`, `2 watchers`.
fn counted(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn push_histogram(s: &mut String, h: &Histogram<u64>, title: &str) {
    let rows = histogram_rows(h);
    if !rows.is_empty() {
        let _ = writeln!(s, "\n{title}:");
        let peak = rows.iter().map(|r| r.1).max().unwrap_or(1).max(1);
        for (upper_ns, count) in rows {
            let bar = "∎".repeat((count * BAR_CHARS_MAX).div_ceil(peak) as usize);
            let _ = writeln!(s, "  ≤ {:>11}  {count:>10}  {bar}", fmt_us(upper_ns as f64 / 1000.0));
        }
    }
}

fn push_errors(s: &mut String, m: &Measured) {
    if !m.errors.is_empty() {
        let _ = writeln!(s, "\nErrors:");
        for (msg, n) in &m.errors {
            let _ = writeln!(s, "  {n:>10}  {msg}");
        }
    }
}

/// The human summary.
pub fn human(cfg: &Config, m: &Measured) -> String {
    if let Some(w) = &m.watch {
        return human_watch(cfg, m, w);
    }
    let mut s = String::new();
    let p = Percentiles::of(&m.hist);
    let workload = match cfg.workload {
        crate::args::Workload::Range | crate::args::Workload::TxnMixed => {
            format!("{} ({})", cfg.workload.name(), if cfg.serializable { "serializable" } else { "linearizable" })
        }
        w => w.name().to_string(),
    };
    let _ = writeln!(
        s,
        "Summary: {workload}, {} conns × {} clients on {} thread(s), {}",
        cfg.conns,
        cfg.clients,
        cfg.threads,
        mode(cfg)
    );
    let _ = writeln!(
        s,
        "  Keys:       {} bytes, {} values, {} keys, {}",
        cfg.key_size,
        cfg.val_size,
        cfg.key_space_size,
        if cfg.sequential_keys { "sequential" } else { "random" }
    );
    if let Some((n, d)) = m.prefill {
        let _ = writeln!(s, "  Prefill:    {n} keys in {:.2} s (untimed)", d.as_secs_f64());
    }
    let _ = writeln!(s, "  Total:      {} ops in {:.3} s, {} errors", m.total, m.duration_s(), m.error_count());
    let _ = writeln!(s, "  QPS:        {:.1}", m.qps());
    let _ = writeln!(
        s,
        "  Latency:    P50 {} · P90 {} · P99 {} · P99.9 {} · max {}",
        fmt_us(p.p50),
        fmt_us(p.p90),
        fmt_us(p.p99),
        fmt_us(p.p999),
        fmt_us(p.max)
    );
    let server = m.server_cpu_us_per_req().map_or_else(|| "n/a (--server-pid)".to_string(), |v| format!("{v:.1} µs"));
    let _ = writeln!(s, "  CPU per op: client {:.1} µs · server {server}", m.client_cpu_us_per_req());
    if m.calls != m.total {
        let _ = writeln!(s, "  gRPC calls: {}", m.calls);
    }
    if m.conflicts > 0 {
        let _ = writeln!(s, "  Conflicts:  {} txn compares failed (the key changed after it was read)", m.conflicts);
    }
    if cfg.workload == Workload::LeaseKeepAlive {
        let _ = writeln!(
            s,
            "  Leases:     one per client, TTL {} s, granted in the setup ({:.2} s, untimed), revoked after",
            cfg.lease_ttl,
            m.setup.as_secs_f64()
        );
    }
    push_histogram(&mut s, &m.hist, "Latency histogram (answered operations)");
    push_errors(&mut s, m);
    s
}

/// (bucket upper bound in ns, count): bounds in a 1-2-5 series (…, 100 µs, 200 µs, 500 µs, 1 ms,
/// …) from the step at or below the fastest latency up to the first at or above the slowest.
pub fn histogram_rows(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let next = |b: u64| {
        let decade = 10u64.pow(b.ilog10());
        match b / decade {
            1 => 2 * decade,
            2 => 5 * decade,
            _ => 10 * decade,
        }
    };
    let min = h.min().max(1);
    let mut upper = 10u64.pow(min.ilog10());
    while next(upper) <= min {
        upper = next(upper);
    }
    let mut rows = Vec::new();
    let mut below = 0u64;
    loop {
        let upto = h.count_between(0, upper);
        rows.push((upper, upto - below));
        below = upto;
        if upper >= h.lowest_equivalent(h.max()) || upper > u64::MAX / 10 || rows.len() >= HISTOGRAM_ROWS_MAX {
            break;
        }
        upper = next(upper);
    }
    // Values above the last bound (or that hdrhistogram's precision puts just past it) go in the
    // last row.
    if let Some(last) = rows.last_mut() {
        last.1 += h.len() - below;
    }
    rows
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_f64(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "null".into()
    }
}

/// The JSON record of a run, on one line.
pub fn json(cfg: &Config, m: &Measured) -> String {
    let p = Percentiles::of(&m.hist);
    let endpoints: Vec<String> = cfg.endpoints.iter().map(|e| json_str(&e.url())).collect();
    let errors: Vec<String> = m.errors.iter().map(|(k, v)| format!("{}:{v}", json_str(k))).collect();
    let mut s = String::from("{");
    let _ = write!(s, "\"workload\":{}", json_str(cfg.workload.name()));
    let _ = write!(s, ",\"endpoints\":[{}]", endpoints.join(","));
    let _ = write!(s, ",\"conns\":{},\"clients\":{},\"threads\":{}", cfg.conns, cfg.clients, cfg.threads);
    let _ = write!(s, ",\"total\":{},\"duration_s\":{:.3},\"qps\":{}", m.total, m.duration_s(), json_f64(m.qps()));
    let _ = write!(
        s,
        ",\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}",
        json_f64(p.p50),
        json_f64(p.p90),
        json_f64(p.p99),
        json_f64(p.p999),
        json_f64(p.max)
    );
    let _ = write!(s, ",\"errors\":{{{}}}", errors.join(","));
    let _ = write!(s, ",\"client_cpu_us_per_req\":{}", json_f64(m.client_cpu_us_per_req()));
    let _ = write!(s, ",\"server_cpu_us_per_req\":{}", m.server_cpu_us_per_req().map_or("null".into(), json_f64));
    let _ = write!(s, ",\"calls\":{},\"conflicts\":{}", m.calls, m.conflicts);
    let _ = write!(s, ",\"rate\":{}", cfg.rate.map_or("null".into(), json_f64));
    let _ = write!(
        s,
        ",\"key_size\":{},\"val_size\":{},\"key_space_size\":{},\"sequential_keys\":{},\"consistency\":{}",
        cfg.key_size,
        cfg.val_size,
        cfg.key_space_size,
        cfg.sequential_keys,
        json_str(if cfg.serializable { "s" } else { "l" })
    );
    let _ = write!(s, ",\"setup_s\":{:.3}", m.setup.as_secs_f64());
    if let (Some(wc), Some(w)) = (&cfg.watch, &m.watch) {
        let pp = Percentiles::of(&w.put_hist);
        let _ = write!(
            s,
            ",\"watchers\":{},\"watchers_per_stream\":{},\"streams\":{},\"watch_prefix\":{}",
            wc.watchers,
            wc.per_stream,
            wc.streams(),
            wc.prefix
        );
        let _ = write!(
            s,
            ",\"events\":{},\"events_per_s\":{},\"missing_events\":{}",
            m.total,
            json_f64(m.qps()),
            w.missing
        );
        let _ = write!(
            s,
            ",\"puts\":{},\"puts_ok\":{},\"puts_per_s\":{},\"put_p50_us\":{},\"put_p99_us\":{}",
            w.puts,
            w.puts_ok,
            json_f64(w.puts_per_s()),
            json_f64(pp.p50),
            json_f64(pp.p99)
        );
    }
    if cfg.workload == Workload::LeaseKeepAlive {
        let _ = write!(s, ",\"lease_ttl\":{}", cfg.lease_ttl);
    }
    s.push('}');
    s
}

/// The quantiles `--latency-out` writes: the minimum (0), every 1% up to P99, then P99.9,
/// P99.99 and the maximum (1): enough points for a latency CDF.
pub fn cdf_quantiles() -> Vec<f64> {
    let mut q: Vec<f64> = (0..100).map(|i| f64::from(i) / 100.0).collect();
    q.extend([0.999, 0.9999, 1.0]);
    q
}

/// (quantile, latency in µs) at each of `cdf_quantiles`; empty for an empty histogram. The
/// maximum is the largest value recorded (hdrhistogram's quantile 1 is its bucket's top).
pub fn latency_quantiles(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    cdf_quantiles()
        .into_iter()
        .map(|q| {
            let v = if q >= 1.0 {
                h.max()
            } else if q <= 0.0 {
                h.min()
            } else {
                h.value_at_quantile(q)
            };
            (q, us(v))
        })
        .collect()
}

/// The `--latency-out` file: one JSON object with the run's shape, the count of answered
/// operations and `quantiles`, a list of [quantile, µs] pairs in rising order.
pub fn latency_json(cfg: &Config, m: &Measured) -> String {
    let pairs: Vec<String> =
        latency_quantiles(&m.hist).iter().map(|(q, us)| format!("[{q:.4},{}]", json_f64(*us))).collect();
    let mut s = String::from("{");
    let _ = write!(s, "\"workload\":{}", json_str(cfg.workload.name()));
    let _ = write!(s, ",\"consistency\":{}", json_str(if cfg.serializable { "s" } else { "l" }));
    let _ = write!(s, ",\"conns\":{},\"clients\":{}", cfg.conns, cfg.clients);
    let _ = write!(s, ",\"count\":{},\"unit\":\"us\"", m.hist.len());
    let _ = write!(s, ",\"quantiles\":[{}]}}", pairs.join(","));
    s.push('\n');
    s
}

/// The progress line: a bar, the share done, operations, the current rate and errors. `done` is
/// the fraction of the run complete (by operations or by time).
pub fn progress_line(done: f64, ops: u64, ops_per_s: f64, errors: u64) -> String {
    const WIDTH: usize = 30;
    let done = done.clamp(0.0, 1.0);
    let filled = (done * WIDTH as f64).round() as usize;
    format!(
        "\r[{}{}] {:>3.0}%  {ops} ops  {ops_per_s:.0} ops/s  {errors} errors\x1b[K",
        "=".repeat(filled),
        " ".repeat(WIDTH - filled),
        done * 100.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{parse, Command};

    fn hist(values_us: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = Histogram::new(3).unwrap();
        for v in values_us {
            h.record(v * 1000).unwrap();
        }
        h
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b * 0.002 + 0.001
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        // 1..=10000 µs, once each: the q-quantile is q × 10000 µs.
        let p = Percentiles::of(&hist(1..=10_000));
        assert!(close(p.p50, 5000.0), "{p:?}");
        assert!(close(p.p90, 9000.0), "{p:?}");
        assert!(close(p.p99, 9900.0), "{p:?}");
        assert!(close(p.p999, 9990.0), "{p:?}");
        assert!(close(p.max, 10_000.0), "{p:?}");
        // One slow outlier in 1000 shows at P99.9 and max, not at P99.
        let p = Percentiles::of(&hist(std::iter::repeat_n(100, 999).chain([50_000])));
        assert!(close(p.p99, 100.0) && close(p.p999, 100.0) && close(p.max, 50_000.0), "{p:?}");
        let empty = Histogram::<u64>::new(3).unwrap();
        assert_eq!(Percentiles::of(&empty).max, 0.0);
    }

    #[test]
    fn histogram_rows_follow_1_2_5_and_count_everything() {
        let h = hist([3, 3, 5, 9, 100, 1000]);
        let rows = histogram_rows(&h);
        let bounds: Vec<u64> = rows.iter().map(|r| r.0 / 1000).collect();
        assert_eq!(bounds, [2, 5, 10, 20, 50, 100, 200, 500, 1000], "µs, from the step below 3 µs");
        let counts: Vec<u64> = rows.iter().map(|r| r.1).collect();
        assert_eq!(counts, [0, 3, 1, 0, 0, 1, 0, 0, 1]);
        assert!(histogram_rows(&Histogram::<u64>::new(3).unwrap()).is_empty());
        let wide = hist([1, 1_000_000_000_000]);
        let rows = histogram_rows(&wide);
        assert_eq!(rows.len(), HISTOGRAM_ROWS_MAX);
        assert_eq!(rows.iter().map(|r| r.1).sum::<u64>(), 2, "what lies past the last row is counted in it");
    }

    fn measured() -> Measured {
        let mut errors = BTreeMap::new();
        errors.insert("UNIMPLEMENTED: unknown service \"x\"".to_string(), 3);
        Measured {
            hist: hist(1..=1000),
            total: 1000,
            errors,
            conflicts: 2,
            calls: 2000,
            elapsed: Duration::from_millis(500),
            client_cpu_us: 7000,
            server_cpu_us: Some(100_000),
            prefill: Some((100, Duration::from_millis(20))),
            setup: Duration::from_millis(30),
            watch: None,
        }
    }

    fn watch_measured() -> Measured {
        let mut m = measured();
        m.conflicts = 0;
        m.calls = 100;
        m.watch = Some(WatchMeasured {
            puts: 100,
            puts_ok: 99,
            put_elapsed: Duration::from_millis(250),
            put_hist: hist([800, 900, 1000]),
            missing: 10,
        });
        m
    }

    #[test]
    fn watch_summaries_lead_with_their_figure() {
        let Ok(Command::Run(cfg)) =
            parse(["watch-latency", "--watchers", "10", "--watchers-per-stream", "5", "--conns", "2"])
        else {
            panic!()
        };
        let m = watch_measured();
        let h = human(&cfg, &m);
        for want in [
            "watch-latency, 10 watchers on 2 streams (5 per stream) over 2 conns",
            "one writer, 1000 puts, closed loop",
            "one key of 8 bytes, 256-byte values",
            "Put-to-event: P50 500.",
            "Events:     2000.0 per second: 1000 delivered in 0.500 s, 10 missing, 3 errors",
            "Puts:       400.0 per second: 100 (99 ok) in 0.250 s; put latency P50 900.",
            "CPU per event: client 7.00 µs · server 100.00 µs",
            "Put-to-event latency histogram",
        ] {
            assert!(h.contains(want), "{want} missing from:\n{h}");
        }
        assert!(h.find("Put-to-event: P50").unwrap() < h.find("Events:").unwrap(), "latency first:\n{h}");
        let Ok(Command::Run(fan)) = parse(["watch-fanout", "--rate", "50", "--watch-prefix"]) else { panic!() };
        let h = human(&fan, &m);
        assert!(h.find("Events:").unwrap() < h.find("Put-to-event: P50").unwrap(), "events first:\n{h}");
        assert!(h.contains("1000 watchers on 1000 streams") && h.contains("paced at 50 puts/s"), "{h}");
        assert!(h.contains("the key space's prefix (10000 keys of 8 bytes)"), "{h}");
        assert_eq!(counted(1, "watcher"), "1 watcher");
        let j = json(&cfg, &m);
        for want in [
            "\"workload\":\"watch-latency\"",
            "\"clients\":2",
            "\"qps\":2000.00",
            "\"watchers\":10,\"watchers_per_stream\":5,\"streams\":2,\"watch_prefix\":false",
            "\"events\":1000,\"events_per_s\":2000.00,\"missing_events\":10",
            "\"puts\":100,\"puts_ok\":99,\"puts_per_s\":400.00,\"put_p50_us\":900.",
            "\"setup_s\":0.030",
        ] {
            assert!(j.contains(want), "{want} missing from {j}");
        }
        assert!(!j.contains("lease_ttl"), "{j}");
    }

    #[test]
    fn lease_keepalive_reports_its_ttl() {
        let Ok(Command::Run(cfg)) = parse(["lease-keepalive", "--lease-ttl", "30"]) else { panic!() };
        let j = json(&cfg, &measured());
        assert!(j.contains("\"workload\":\"lease-keepalive\"") && j.contains("\"lease_ttl\":30"), "{j}");
        assert!(!j.contains("watchers"), "{j}");
        let h = human(&cfg, &measured());
        assert!(h.contains("Leases:     one per client, TTL 30 s"), "{h}");
    }

    #[test]
    fn json_record_has_every_field() {
        let Ok(Command::Run(cfg)) = parse(["txn-put", "--endpoints", "http://127.0.0.1:9,127.0.0.1:10"]) else {
            panic!()
        };
        let j = json(&cfg, &measured());
        assert!(j.starts_with('{') && j.ends_with('}') && !j.contains('\n'), "{j}");
        for want in [
            "\"workload\":\"txn-put\"",
            "\"endpoints\":[\"http://127.0.0.1:9\",\"http://127.0.0.1:10\"]",
            "\"conns\":1,\"clients\":1",
            "\"total\":1000,\"duration_s\":0.500,\"qps\":2000.00",
            "\"p50_us\":500.",
            "\"p999_us\":999.",
            "\"max_us\":1000.",
            "\"errors\":{\"UNIMPLEMENTED: unknown service \\\"x\\\"\":3}",
            "\"client_cpu_us_per_req\":7.00",
            "\"server_cpu_us_per_req\":100.00",
            "\"calls\":2000,\"conflicts\":2",
            "\"rate\":null",
        ] {
            assert!(j.contains(want), "{want} missing from {j}");
        }
        let mut m = measured();
        m.server_cpu_us = None;
        m.errors.clear();
        let j = json(&cfg, &m);
        assert!(j.contains("\"server_cpu_us_per_req\":null") && j.contains("\"errors\":{}"), "{j}");
    }

    #[test]
    fn human_summary_shows_both_cpu_figures_and_errors() {
        let Ok(Command::Run(cfg)) = parse(["range", "--consistency", "s"]) else { panic!() };
        let h = human(&cfg, &measured());
        for want in [
            "range (serializable)",
            "QPS:        2000.0",
            "P50 500.",
            "client 7.0 µs · server 100.0 µs",
            "Prefill:    100 keys",
            "Latency histogram",
            "3  UNIMPLEMENTED",
            "Conflicts:  2",
        ] {
            assert!(h.contains(want), "{want} missing from:\n{h}");
        }
    }

    #[test]
    fn latency_out_lists_every_percent_and_the_tail() {
        let Ok(Command::Run(cfg)) = parse(["put", "--latency-out", "x.json"]) else { panic!() };
        let q = latency_quantiles(&hist(1..=10_000));
        assert_eq!(q.len(), 103);
        assert_eq!(q[0], (0.0, 1.0), "the minimum first");
        assert!(close(q[50].1, 5000.0) && close(q[99].1, 9900.0), "{:?} {:?}", q[50], q[99]);
        assert!(close(q[100].1, 9990.0) && close(q[101].1, 9999.0), "{:?} {:?}", q[100], q[101]);
        assert!(q[102].0 == 1.0 && close(q[102].1, 10_000.0), "the maximum last: {:?}", q[102]);
        assert!(q.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "rising: {q:?}");
        let j = latency_json(&cfg, &measured());
        assert!(j.starts_with("{\"workload\":\"put\"") && j.ends_with("]]}\n"), "{j}");
        for want in [
            "\"count\":1000",
            "\"unit\":\"us\"",
            "\"quantiles\":[[0.0000,1.00],[0.0100,10.",
            "[0.9990,999.",
            "[1.0000,1000.",
        ] {
            assert!(j.contains(want), "{want} missing from {j}");
        }
        let mut m = measured();
        m.hist = Histogram::new(3).unwrap();
        assert!(latency_json(&cfg, &m).contains("\"count\":0,\"unit\":\"us\",\"quantiles\":[]"));
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_us(12.34), "12.3 µs");
        assert_eq!(fmt_us(1234.0), "1.234 ms");
        assert_eq!(fmt_us(2_500_000.0), "2.500 s");
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        let line = progress_line(0.5, 100, 2000.0, 1);
        assert!(line.contains(" 50%") && line.contains("100 ops") && line.contains("2000 ops/s"), "{line}");
        assert!(progress_line(2.0, 0, 0.0, 0).contains("100%"));
    }
}
