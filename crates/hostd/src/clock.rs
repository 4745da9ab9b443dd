//! Clocks as VDSM reports them.

/// CLOCK_MONOTONIC in seconds.
pub fn monotonic_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass; CLOCK_MONOTONIC always
    // exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// VDSM's event time: `2**31 - 1 + monotonic milliseconds` (`notify_time`,
/// `statusTime`), comparable across agent restarts on the same boot.
pub fn event_time() -> i64 {
    (1i64 << 31) - 1 + (monotonic_secs() * 1000.0) as i64
}

/// Wall-clock seconds since the epoch.
pub fn wall_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `YYYY-MM-DDTHH:MM:SS GMT` for epoch seconds (VDSM's `dateTime`).
pub fn gmt_string(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02} GMT",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gmt() {
        assert_eq!(gmt_string(0), "1970-01-01T00:00:00 GMT");
        assert_eq!(gmt_string(1_795_000_000), "2026-11-18T11:06:40 GMT");
        assert_eq!(gmt_string(951_782_400), "2000-02-29T00:00:00 GMT");
    }

    #[test]
    fn event_time_is_monotonic() {
        let a = event_time();
        let b = event_time();
        assert!(b >= a && a > (1 << 31));
    }
}
