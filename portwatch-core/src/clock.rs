//! Kernel timestamps (CLOCK_BOOTTIME) to wall-clock time.

use std::time::{Duration, SystemTime};

/// Converts CLOCK_BOOTTIME stamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Wall clock minus boot time, sampled together.
    realtime_minus_boot: Duration,
    /// How far apart the two boot-clock reads around the wall-clock read
    /// were: the sample's uncertainty.
    window: Duration,
}

impl Clock {
    /// Samples both clocks now: the wall clock between two boot-clock
    /// reads, the boot time taken as their midpoint, and of a few tries the
    /// one whose two boot reads were closest. A thread descheduled between
    /// the reads (a loaded machine, an emulated CPU) would otherwise shift
    /// the offset by the delay, and `follow` would take that for a step of
    /// the wall clock: timestamps would then jump back and forth.
    pub fn now() -> Self {
        let boot = || {
            nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
                .map(Duration::from)
                .unwrap_or_default()
        };
        let mut best: Option<(Duration, Duration)> = None;
        for _ in 0..5 {
            let before = boot();
            let real = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            let after = boot();
            let window = after.saturating_sub(before);
            let offset = real.saturating_sub(before + window / 2);
            if best.is_none_or(|(w, _)| window < w) {
                best = Some((window, offset));
            }
            if window < Duration::from_micros(50) {
                break;
            }
        }
        let (window, offset) = best.unwrap_or_default();
        Self {
            realtime_minus_boot: offset,
            window,
        }
    }

    /// `fresh` if the wall clock was stepped since `current` (by more than a
    /// millisecond), else `current`: resampling at every drain would let
    /// the jitter between the two clock reads order events backwards.
    /// A fresh sample whose reads were more than half a millisecond apart
    /// is too uncertain to tell a step from the delay: `current` stays.
    pub fn follow(current: Option<Self>, fresh: Self) -> Self {
        match current {
            Some(c)
                if fresh.window > Duration::from_micros(500)
                    || c.realtime_minus_boot.abs_diff(fresh.realtime_minus_boot)
                        <= Duration::from_millis(1) =>
            {
                c
            }
            _ => fresh,
        }
    }

    /// A clock with a fixed offset (tests).
    #[cfg(test)]
    pub fn fixed(realtime_minus_boot: Duration) -> Self {
        Self {
            realtime_minus_boot,
            window: Duration::ZERO,
        }
    }

    /// The wall-clock time of a CLOCK_BOOTTIME stamp.
    pub fn wall(self, boot_ns: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + self.realtime_minus_boot + Duration::from_nanos(boot_ns)
    }
}

/// The kernel's tick (one jiffy) in ns: the resolution of the coarse
/// clocks, which the kernel reports as exactly one tick (1 ms at HZ=1000,
/// 4 ms at HZ=250). 4 ms if it cannot be read.
pub fn tick_ns() -> u64 {
    nix::time::clock_getres(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .ok()
        .map(|t| Duration::from(t).as_nanos() as u64)
        .filter(|&ns| ns > 0)
        .unwrap_or(4_000_000)
}

/// A fold window in kernel ticks, rounded up (0 stays 0: no folding).
pub fn window_in_ticks(window_ns: u64) -> u64 {
    ticks(window_ns, tick_ns())
}

fn ticks(window_ns: u64, tick_ns: u64) -> u64 {
    window_ns.div_ceil(tick_ns.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_windows_round_up_to_whole_ticks() {
        assert_eq!(ticks(0, 4_000_000), 0);
        assert_eq!(ticks(1_000_000, 4_000_000), 1);
        assert_eq!(ticks(1_000_000_000, 4_000_000), 250);
        assert_eq!(ticks(1_000_000_000, 1_000_000), 1000);
        assert_eq!(ticks(4_000_001, 4_000_000), 2);
        // The kernel reports a tick of 1..=10 ms.
        let t = tick_ns();
        assert!((1_000_000..=10_000_000).contains(&t), "tick {t} ns");
    }

    #[test]
    fn clock_ignores_jitter_and_follows_steps() {
        let at = |us: u64| Clock {
            realtime_minus_boot: Duration::from_micros(us),
            window: Duration::from_micros(1),
        };
        assert_eq!(
            Clock::follow(Some(at(1000)), at(1040)).realtime_minus_boot,
            at(1000).realtime_minus_boot
        );
        assert_eq!(
            Clock::follow(Some(at(1000)), at(9000)).realtime_minus_boot,
            at(9000).realtime_minus_boot
        );
        assert_eq!(
            Clock::follow(None, at(5)).realtime_minus_boot,
            at(5).realtime_minus_boot
        );
        // A sample taken across a long delay is no evidence of a step.
        let slow = Clock {
            realtime_minus_boot: Duration::from_micros(9000),
            window: Duration::from_millis(3),
        };
        assert_eq!(
            Clock::follow(Some(at(1000)), slow).realtime_minus_boot,
            at(1000).realtime_minus_boot
        );
        // Sampled here, the two reads are close.
        assert!(Clock::now().window < Duration::from_millis(5));
    }
}
