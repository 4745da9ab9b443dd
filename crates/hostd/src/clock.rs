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
    let (y, m, d) = halyard_common::text::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02} GMT",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
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
