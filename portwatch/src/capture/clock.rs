//! Kernel timestamps (CLOCK_BOOTTIME) to wall-clock time.

use std::time::{Duration, SystemTime};

/// Converts CLOCK_BOOTTIME stamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Wall clock minus boot time, sampled together.
    realtime_minus_boot: Duration,
}

impl Clock {
    /// Samples both clocks now.
    pub fn now() -> Self {
        let boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map(Duration::from)
            .unwrap_or_default();
        let real = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            realtime_minus_boot: real.saturating_sub(boot),
        }
    }

    /// `fresh` if the wall clock was stepped since `current` (by more than a
    /// millisecond), else `current`: resampling at every drain would let
    /// the jitter between the two clock reads order events backwards.
    pub fn follow(current: Option<Self>, fresh: Self) -> Self {
        match current {
            Some(c)
                if c.realtime_minus_boot.abs_diff(fresh.realtime_minus_boot)
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
    }
}
