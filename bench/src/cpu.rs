//! CPU time, so every QPS figure comes with what it cost: the client's own (getrusage
//! RUSAGE_SELF, user + system, all threads) and the server's (utime + stime from
//! `/proc/PID/stat`, in clock ticks). On a 2-core machine that client and server share, QPS alone
//! says little; CPU per request says where the cores went.

/// User + system CPU time of this process, in µs.
pub fn self_cpu_us() -> u64 {
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable `rusage`; RUSAGE_SELF needs no other argument.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return 0;
    }
    let us = |t: libc::timeval| (t.tv_sec as u64).saturating_mul(1_000_000).saturating_add(t.tv_usec as u64);
    us(ru.ru_utime).saturating_add(us(ru.ru_stime))
}

/// Clock ticks per second, the unit of `/proc/PID/stat`'s times.
fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// User + system CPU time of process `pid` (all its threads), in µs.
pub fn process_cpu_us(pid: i32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("--server-pid {pid}: {path}: {e}"))?;
    let ticks = stat_cpu_ticks(&stat).ok_or_else(|| format!("--server-pid {pid}: cannot parse {path}"))?;
    Ok(ticks.saturating_mul(1_000_000) / clock_ticks_per_s())
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces or parentheses itself, so fields are counted after the last `)`.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state (field 3) … utime is field 14, the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let line = "4242 (metastore (x) y) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 3 0 100 0 0";
        assert_eq!(stat_cpu_ticks(line), Some(325));
        assert_eq!(stat_cpu_ticks("1 (a) S 1"), None);
        assert_eq!(stat_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn own_cpu_time_grows_and_proc_agrees() {
        let before = self_cpu_us();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed().as_millis() < 50 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(self_cpu_us() > before);
        let me = std::process::id() as i32;
        assert!(process_cpu_us(me).is_ok());
        assert!(process_cpu_us(i32::MAX).is_err());
    }
}
