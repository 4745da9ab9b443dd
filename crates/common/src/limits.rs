//! Limits on what a client can make a daemon do: rate limits for log lines and events,
//! per-key backoff for failed logins and token guesses, per-key rate limits for
//! registrations. Every structure here has a bounded size whatever the callers send.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most `burst` admissions per `window`; the rest are counted, and the count is
/// handed to the first admission of the next window (so a log line can say how many
/// were suppressed).
pub struct RateLimit {
    burst: u32,
    window: Duration,
    state: Mutex<Option<Window>>,
}

#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    used: u32,
    suppressed: u64,
}

impl RateLimit {
    pub const fn new(burst: u32, window: Duration) -> RateLimit {
        RateLimit {
            burst,
            window,
            state: Mutex::new(None),
        }
    }

    /// `Some(suppressed since the last admission)` when admitted, `None` when not.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let w = g.get_or_insert(Window {
            start: now,
            used: 0,
            suppressed: 0,
        });
        if now.duration_since(w.start) >= self.window {
            w.start = now;
            w.used = 0;
        }
        if w.used < self.burst {
            w.used += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed = w.suppressed.saturating_add(1);
            None
        }
    }
}

/// Failures per key (a user name, a source address) with exponential backoff: after
/// `free` failures each further one doubles the wait before the key may try again, up
/// to `max_wait`. A success clears the key. At most `max_keys` keys are remembered;
/// past that the entries whose wait is over go first, then the oldest.
pub struct Backoff<K> {
    free: u32,
    base: Duration,
    max_wait: Duration,
    max_keys: usize,
    map: Mutex<HashMap<K, BackoffEntry>>,
}

#[derive(Clone, Copy, Debug)]
struct BackoffEntry {
    failures: u32,
    until: Instant,
    last: Instant,
}

impl<K: Eq + Hash + Clone> Backoff<K> {
    pub fn new(free: u32, base: Duration, max_wait: Duration, max_keys: usize) -> Backoff<K> {
        Backoff {
            free,
            base,
            max_wait,
            max_keys: max_keys.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(wait)` while the key must wait.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let now = Instant::now();
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(key) {
            Some(e) if e.until > now => Err(e.until - now),
            _ => Ok(()),
        }
    }

    /// Records a failure; returns the wait it imposes (zero while failures are free).
    pub fn failure(&self, key: &K) -> Duration {
        let now = Instant::now();
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if !m.contains_key(key) && m.len() >= self.max_keys {
            // Forget those not waiting any more; if none, the least recent.
            m.retain(|_, e| e.until > now);
            if m.len() >= self.max_keys {
                if let Some(k) = m.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| k.clone()) {
                    m.remove(&k);
                }
            }
        }
        let e = m.entry(key.clone()).or_insert(BackoffEntry {
            failures: 0,
            until: now,
            last: now,
        });
        e.failures = e.failures.saturating_add(1);
        e.last = now;
        let wait = if e.failures <= self.free {
            Duration::ZERO
        } else {
            let exp = (e.failures - self.free - 1).min(20);
            self.base
                .checked_mul(1u32 << exp)
                .unwrap_or(self.max_wait)
                .min(self.max_wait)
        };
        e.until = now + wait;
        wait
    }

    pub fn success(&self, key: &K) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Keys remembered (for tests of the bound).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// At most `per_window` admissions per key per `window`, for at most `max_keys` keys
/// (past that, keys whose window is over are forgotten; if none is, the request is
/// refused: a flood of new keys cannot grow the table).
pub struct KeyedRateLimit<K> {
    per_window: u32,
    window: Duration,
    max_keys: usize,
    map: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K: Eq + Hash + Clone> KeyedRateLimit<K> {
    pub fn new(per_window: u32, window: Duration, max_keys: usize) -> KeyedRateLimit<K> {
        KeyedRateLimit {
            per_window,
            window,
            max_keys: max_keys.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn admit(&self, key: &K) -> bool {
        let now = Instant::now();
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if !m.contains_key(key) && m.len() >= self.max_keys {
            let window = self.window;
            m.retain(|_, (start, _)| now.duration_since(*start) < window);
            if m.len() >= self.max_keys {
                return false;
            }
        }
        let e = m.entry(key.clone()).or_insert((now, 0));
        if now.duration_since(e.0) >= self.window {
            *e = (now, 0);
        }
        if e.1 < self.per_window {
            e.1 += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_what_it_suppresses() {
        let r = RateLimit::new(2, Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(r.admit_at(t), Some(0));
        assert_eq!(r.admit_at(t), Some(0));
        for _ in 0..1000 {
            assert_eq!(r.admit_at(t), None);
        }
        assert_eq!(r.admit_at(t + Duration::from_secs(11)), Some(1000));
        assert_eq!(r.admit_at(t + Duration::from_secs(11)), Some(0));
    }

    #[test]
    fn backoff_doubles_after_the_free_failures_and_is_bounded() {
        let b = Backoff::new(3, Duration::from_millis(100), Duration::from_secs(5), 4);
        let k = "admin".to_string();
        for _ in 0..3 {
            assert_eq!(b.failure(&k), Duration::ZERO);
        }
        assert!(b.check(&k).is_ok());
        assert_eq!(b.failure(&k), Duration::from_millis(100));
        assert!(b.check(&k).is_err());
        assert_eq!(b.failure(&k), Duration::from_millis(200));
        for _ in 0..100 {
            b.failure(&k);
        }
        assert_eq!(b.failure(&k), Duration::from_secs(5));
        b.success(&k);
        assert!(b.check(&k).is_ok());
        // The table never holds more than max_keys keys.
        for i in 0..1000 {
            b.failure(&format!("k{i}"));
        }
        assert!(b.len() <= 4);
    }

    #[test]
    fn keyed_rate_limit_is_per_key_and_bounded() {
        let r = KeyedRateLimit::new(2, Duration::from_secs(60), 3);
        assert!(r.admit(&1));
        assert!(r.admit(&1));
        assert!(!r.admit(&1));
        assert!(r.admit(&2));
        assert!(r.admit(&3));
        // A fourth key while the others' windows run: refused, the table stays at 3.
        assert!(!r.admit(&4));
    }
}
