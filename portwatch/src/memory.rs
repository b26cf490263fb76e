//! The allocator's side of running for weeks: glibc's malloc keeps freed
//! memory in per-thread arenas and returns it to the kernel only from the
//! top of each heap. With a pool of blocking threads doing lookups, each got
//! an arena of its own (up to 8 per core), and the resident set grew with
//! every burst even though nothing live grew (BENCHMARKS.md, "soak"). Two calls bound that: few arenas, and a periodic trim.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// glibc arenas in all: the runtime's two workers and the blocking pool
/// share them (lock contention on malloc is no concern at these rates).
pub const ARENAS: i32 = 2;

/// How often [`trim`] really trims.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Caps glibc's arenas at [`ARENAS`]. Call before any thread is started
/// (later threads would already have taken arenas of their own).
pub fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator tunable; no memory is touched.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Hands the free pages of every arena back to the kernel (`malloc_trim`,
/// which since glibc 2.8 also releases whole free pages inside a heap), at
/// most once per [`TRIM_EVERY`]; a cheap no-op otherwise. Returns whether
/// it trimmed.
pub fn trim() -> bool {
    static LAST: AtomicU64 = AtomicU64::new(0);
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    let now = epoch.elapsed().as_millis() as u64 + TRIM_EVERY.as_millis() as u64;
    let last = LAST.load(Ordering::Relaxed);
    if now - last < TRIM_EVERY.as_millis() as u64
        || LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return false;
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_runs_at_most_once_per_period() {
        limit_arenas();
        // The first call trims (its period starts at the epoch, one period ago).
        assert!(trim());
        assert!(!trim());
        assert!(!trim());
    }
}
