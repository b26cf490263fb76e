//! Whether this kernel's sock_diag lists TCP sockets that are bound but
//! neither listening nor connected: only kernels with the
//! `TCP_BOUND_INACTIVE` dump state (Linux 6.10+; not Debian 12's 6.1).
//! Elsewhere such a socket holds its port unseen, and only the tracer's
//! record of its bind names it.
//!
//! Known from the kernel's BTF, as the tracer's loader knows it: the enum
//! value's name is in the BTF string table exactly when the kernel has it.
//! Without BTF, from the kernel's version.

use std::sync::OnceLock;

/// The kernel's own BTF.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// BTF's magic number, first in its header.
const BTF_MAGIC: u16 = 0xeb9f;
/// The release that added the dump state.
const SINCE: (u32, u32) = (6, 10);

/// The answer, once known: read here, or told by [`learn`].
static LISTED: OnceLock<bool> = OnceLock::new();

/// Whether sock_diag lists bound-but-inactive TCP sockets here (read once).
pub fn listed() -> bool {
    *LISTED.get_or_init(|| match std::fs::read(VMLINUX_BTF) {
        Ok(btf) => in_btf(&btf),
        Err(_) => by_release(),
    })
}

/// Takes the answer from a caller that knows it (the owner iterator's
/// loader, from the kernel's BTF it reads anyway, or its per-boot record
/// of it): reading the 5 MB again cost `who` some 4 ms of CPU
/// (BENCHMARKS.md). The first answer stays.
pub fn learn(listed: bool) {
    let _ = LISTED.set(listed);
}

/// The answer `btf` (the running kernel's BTF, as read) gives.
pub fn in_btf(btf: &[u8]) -> bool {
    btf_has(btf, b"TCP_BOUND_INACTIVE").unwrap_or_else(by_release)
}

/// Whether `name` is in the string section of BTF blob `btf`; None when
/// it is not BTF.
fn btf_has(btf: &[u8], name: &[u8]) -> Option<bool> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(btf.get(at..at + 4)?.try_into().ok()?))
    };
    if u16::from_le_bytes(btf.get(..2)?.try_into().ok()?) != BTF_MAGIC {
        return None;
    }
    // struct btf_header: magic, version, flags, hdr_len, type_off,
    // type_len, str_off, str_len.
    let hdr_len = u32_at(4)? as usize;
    let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
    let start = hdr_len.checked_add(str_off)?;
    let strings = btf.get(start..start.checked_add(str_len)?)?;
    Some(strings.split(|&b| b == 0).any(|s| s == name))
}

/// From the running kernel's release ("6.12.100+deb12-amd64").
fn by_release() -> bool {
    let Ok(uts) = nix::sys::utsname::uname() else {
        return false;
    };
    release_at_least(&uts.release().to_string_lossy(), SINCE)
}

/// Whether `release` is `since` or later.
fn release_at_least(release: &str, since: (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= since
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases() {
        assert!(release_at_least("6.18.44-fc-v1300", SINCE));
        assert!(release_at_least("6.12.100+deb12-amd64", SINCE));
        assert!(release_at_least("6.10.0", SINCE));
        assert!(!release_at_least("6.1.0-56-amd64", SINCE));
        assert!(!release_at_least("5.15.0", SINCE));
    }

    /// A BTF blob of only a header and strings.
    #[test]
    fn btf_strings() {
        let strings = b"\0int\0TCP_BOUND_INACTIVE\0";
        let mut btf = Vec::new();
        btf.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        btf.extend_from_slice(&[1, 0]);
        for v in [24u32, 0, 0, 0, strings.len() as u32] {
            btf.extend_from_slice(&v.to_le_bytes());
        }
        btf.extend_from_slice(strings);
        assert_eq!(btf_has(&btf, b"TCP_BOUND_INACTIVE"), Some(true));
        assert_eq!(btf_has(&btf, b"TCP_BOUND"), Some(false));
        assert_eq!(btf_has(b"not btf at all", b"x"), None);
    }

    /// This host's answer agrees with its kernel release (6.10+ has it).
    #[test]
    fn this_kernel() {
        assert_eq!(listed(), by_release());
    }
}
