//! This process's effective capabilities, as the kernel reports them in
//! /proc: what a command may do decides what it says it could not read.

/// `CAP_NET_RAW`: raw sockets (legacy iptables reads its tables through one).
pub const NET_RAW: u32 = 13;
/// `CAP_SYS_ADMIN`.
pub const SYS_ADMIN: u32 = 21;
/// `CAP_PERFMON`.
pub const PERFMON: u32 = 38;
/// `CAP_BPF`.
pub const BPF: u32 = 39;

/// The calling thread's effective set (`CapEff` of
/// /proc/thread-self/status); empty when it cannot be read.
pub fn effective() -> Effective {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    Effective(parse(&status))
}

/// An effective capability set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective(u64);

impl Effective {
    /// Whether capability number `cap` is in the set.
    pub fn has(self, cap: u32) -> bool {
        cap < 64 && self.0 & (1 << cap) != 0
    }
}

/// The `CapEff:` line's hexadecimal mask, 0 when missing or malformed.
fn parse(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_line_only() {
        let status = "Name:\tportwatch\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t0000000000203000\n";
        let eff = Effective(parse(status));
        assert!(eff.has(NET_RAW) && eff.has(SYS_ADMIN) && eff.has(12));
        assert!(!eff.has(BPF) && !eff.has(PERFMON) && !eff.has(64));
        assert_eq!(parse("CapEff:\tzz\n"), 0);
        assert_eq!(parse(""), 0);
    }
}
