//! Auto-compaction (`--auto-compaction-mode`, `--auto-compaction-retention`), as etcd 3.4 does
//! it: `revision` keeps the last N revisions, checked every 5 minutes; `periodic` keeps a time
//! window of history, sampling the revision every tenth of the window (a tenth of an hour at
//! most) and compacting to the revision seen one window ago. Time is passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// etcd's revision compactor checks this often.
pub const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// The periodic compactor samples at most this far apart.
const SAMPLE_INTERVAL_MAX: Duration = Duration::from_secs(360);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Keep history for this long.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

pub struct Compactor {
    mode: Mode,
    next: Instant,
    samples: VecDeque<(Instant, i64)>,
}

impl Compactor {
    pub fn new(mode: Mode, now: Instant) -> Self {
        let mut c = Compactor { mode, next: now, samples: VecDeque::new() };
        c.next = now + c.interval();
        c
    }

    fn interval(&self) -> Duration {
        match self.mode {
            Mode::Revision(_) => REVISION_CHECK_INTERVAL,
            Mode::Periodic(d) => (d / 10).clamp(Duration::from_millis(100), SAMPLE_INTERVAL_MAX),
        }
    }

    /// When the compactor next wants to run.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// Called at or after `next()`: the revision to compact to, if any is due.
    pub fn tick(&mut self, now: Instant, current: i64, compacted: i64) -> Option<i64> {
        if now < self.next {
            return None;
        }
        self.next = now + self.interval();
        let target = match self.mode {
            Mode::Revision(keep) => current - keep,
            Mode::Periodic(window) => {
                self.samples.push_back((now, current));
                // The newest sample at least a window old is where history may start.
                let mut target = None;
                while let Some(&(t, rev)) = self.samples.front() {
                    if now.duration_since(t) >= window {
                        target = Some(rev);
                        self.samples.pop_front();
                    } else {
                        break;
                    }
                }
                if let Some(rev) = target {
                    // Keep that sample: it bounds the next window too.
                    self.samples.push_front((now - window, rev));
                }
                target?
            }
        };
        (target > compacted.max(0) && target <= current).then_some(target)
    }
}

/// Parses `--auto-compaction-retention` for a mode: hours or a Go duration for `periodic`, a
/// revision count for `revision`. `Ok(None)` means off (0).
pub fn parse(mode: &str, retention: &str) -> Result<Option<Mode>, String> {
    match mode {
        "revision" => {
            let n: i64 = retention
                .parse()
                .map_err(|_| format!("--auto-compaction-retention {retention:?}: not a revision count"))?;
            if n < 0 {
                return Err("--auto-compaction-retention must not be negative".into());
            }
            Ok((n > 0).then_some(Mode::Revision(n)))
        }
        "periodic" => {
            let d = match retention.parse::<u64>() {
                Ok(hours) => Duration::from_secs(hours * 3600),
                Err(_) => parse_go_duration(retention).ok_or_else(|| {
                    format!("--auto-compaction-retention {retention:?}: not hours or a duration like 30m")
                })?,
            };
            Ok((!d.is_zero()).then_some(Mode::Periodic(d)))
        }
        other => Err(format!("--auto-compaction-mode must be periodic or revision, got {other:?}")),
    }
}

/// Go's `time.ParseDuration` for the units retention uses: h, m, s, ms (e.g. `1h30m`).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s.is_empty() {
        return None;
    }
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += Duration::from_secs_f64(value * secs);
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        assert_eq!(parse("periodic", "0"), Ok(None));
        assert_eq!(parse("periodic", "1"), Ok(Some(Mode::Periodic(Duration::from_secs(3600)))));
        assert_eq!(parse("periodic", "30m"), Ok(Some(Mode::Periodic(Duration::from_secs(1800)))));
        assert_eq!(parse("periodic", "1h30m"), Ok(Some(Mode::Periodic(Duration::from_secs(5400)))));
        assert_eq!(parse("revision", "1000"), Ok(Some(Mode::Revision(1000))));
        assert!(parse("revision", "1h").is_err());
        assert!(parse("hourly", "1").is_err());
        assert!(parse("periodic", "ten").is_err());
    }

    #[test]
    fn revision_mode_keeps_the_last_n() {
        let t0 = Instant::now();
        let mut c = Compactor::new(Mode::Revision(100), t0);
        assert_eq!(c.tick(t0, 500, 0), None, "not yet due");
        let t1 = t0 + REVISION_CHECK_INTERVAL;
        assert_eq!(c.tick(t1, 500, 0), Some(400));
        assert_eq!(c.tick(t1 + REVISION_CHECK_INTERVAL, 450, 400), None, "nothing new to drop");
    }

    #[test]
    fn periodic_mode_compacts_to_a_window_ago() {
        let t0 = Instant::now();
        let w = Duration::from_secs(100);
        let mut c = Compactor::new(Mode::Periodic(w), t0);
        let step = Duration::from_secs(10);
        let mut compactions = Vec::new();
        for i in 1..=30u32 {
            let rev = 10 * i as i64;
            if let Some(t) = c.tick(t0 + step * i, rev, compactions.last().copied().unwrap_or(0)) {
                compactions.push(t);
            }
        }
        // Revision 10 was seen at t=10s; a window later (t=110s) history up to it may go.
        assert_eq!(compactions.first(), Some(&10));
        assert!(compactions.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(compactions.last(), Some(&200), "at t=300s, keep the last 100s (from revision 200)");
    }
}
