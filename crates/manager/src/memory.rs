//! Keeps the Manager's resident set close to what it really holds, and its
//! allocations cheap.
//!
//! The Manager allocates through mimalloc (see `main.rs`): answers of thousands of
//! objects build and drop millions of small nodes and strings, and glibc's malloc
//! and free were a third of the time of a 25,000-VM `GET /vms` (mimalloc: a third
//! faster, measured by `vms::tests::list_rendering_speed`). Freed memory goes back to
//! the kernel through [`trim`]: mimalloc's `mi_collect` after large answers and every
//! 15 s (the monitoring of 1,000 hosts frees tens of MiB of parsed stats between two
//! trims), and glibc's `malloc_trim` for what C libraries (SQLite) allocate there;
//! glibc is limited to two arenas and a fixed mmap threshold for the same reason.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Answers at least this large are followed by a trim.
pub const LARGE_RESPONSE: usize = 1 << 20;

static LAST_TRIM_MS: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Blocks at least this large come from mmap and go back to the kernel when freed.
pub const MMAP_THRESHOLD: i32 = 256 << 10;

/// Limits glibc to two malloc arenas and fixes the mmap threshold. Call once at start,
/// before other threads exist.
pub fn limit_arenas() {
    // SAFETY: mallopt only sets allocator parameters; M_ARENA_MAX takes any positive
    // value, M_MMAP_THRESHOLD any value up to 32 MiB, and no other thread is
    // allocating yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Returns free heap pages to the kernel now.
pub fn trim() {
    LAST_TRIM_MS.store(now_ms(), Ordering::Relaxed);
    // SAFETY: mi_collect and malloc_trim only walk each allocator's own free lists
    // under its locks; they take no pointers from us.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        libc::malloc_trim(0);
    }
}

/// After an answer of `len` bytes: trims in the background when it was large and no
/// trim ran in the last two seconds.
pub fn after_response(len: usize) {
    if len < LARGE_RESPONSE {
        return;
    }
    let last = LAST_TRIM_MS.load(Ordering::Relaxed);
    if now_ms().saturating_sub(last) < 2000 {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    LAST_TRIM_MS.store(now_ms(), Ordering::Relaxed);
    // The answer is still being sent; trim once it is likely gone.
    rt.spawn(async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = tokio::task::spawn_blocking(trim).await;
    });
}

/// Trims every 15 s for as long as the Manager runs.
pub async fn trim_periodically() {
    let mut t = tokio::time::interval(Duration::from_secs(15));
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        t.tick().await;
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}
