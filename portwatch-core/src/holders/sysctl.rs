//! Per-network-namespace sysctls that explain bind failures, and the
//! namespace a fix that writes one must aim at.

use super::procs::raw::{bracketed, cpath, readlink_into};

/// Per-netns sysctls that explain bind failures, read in the calling thread's
/// network namespace; `None` for any that cannot be read or parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sysctls {
    /// `net.ipv4.ip_local_port_range`: ephemeral ports for both families.
    pub local_port_range: Option<(u16, u16)>,
    /// `net.ipv4.ip_unprivileged_port_start`: lowest port binding without
    /// `CAP_NET_BIND_SERVICE`.
    pub unprivileged_port_start: Option<u32>,
    /// `net.ipv4.ip_nonlocal_bind`.
    pub nonlocal_bind_v4: Option<bool>,
    /// `net.ipv6.ip_nonlocal_bind`.
    pub nonlocal_bind_v6: Option<bool>,
    /// `net.ipv4.ip_local_reserved_ports` as the kernel prints it
    /// ("8080,9000-9010", or empty): a fix that adds a port keeps these.
    pub local_reserved_ports: Option<String>,
    /// `net.ipv4.tcp_l3mdev_accept`: whether TCP sockets bound to no device
    /// share their ports with those in VRFs (absent: no VRF support).
    pub tcp_l3mdev_accept: Option<bool>,
}

/// The network namespace a failure's sysctls were read in, as a fix must
/// aim at it: `sysctl -w` writes the namespace of whoever runs it, so a fix
/// for a container's namespace typed on the host would change the host's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// It is the host's (PID 1's); None when that cannot be read (not root).
    pub host: Option<bool>,
    /// How to enter it from where portwatch runs (`/proc/PID/ns/net` of a
    /// process in it, or the `--netns` path given); None when portwatch
    /// stands in it already, or no way in is known.
    pub enter: Option<String>,
}

impl Scope {
    /// The scope of namespace `netns`, where thread `(pid, tid)` (if known)
    /// is, seen from portwatch's own namespace `own`.
    pub fn of(netns: u32, caller: Option<(u32, u32)>, own: Option<u32>) -> Scope {
        let host = host_netns().map(|h| h == netns);
        let enter = match (own == Some(netns), caller) {
            (false, Some((pid, tid))) => Some(ns_path(netns, pid, tid)),
            _ => None,
        };
        Scope { host, enter }
    }
}

/// The /proc path of `netns` through thread `tid` of `pid`: the process's
/// own when its main thread is there (what users type), else the thread's
/// (a thread can sit in another namespace than its process).
fn ns_path(netns: u32, pid: u32, tid: u32) -> String {
    let mut link = [0u8; 64];
    let mut path = [0u8; 64];
    let main = cpath(&mut path, format_args!("/proc/{pid}/ns/net"))
        .and_then(|p| readlink_into(libc::AT_FDCWD, p, &mut link))
        .and_then(|l| bracketed(l, b"net:["));
    if tid == pid || main == Some(netns) {
        format!("/proc/{pid}/ns/net")
    } else {
        format!("/proc/{pid}/task/{tid}/ns/net")
    }
}

/// Inode of the host's network namespace: PID 1's, or, where PID 1 cannot
/// be read (seen: a sandbox's PID 1 refusing even root), kthreadd's, as
/// kernel threads always live in the initial namespace. kthreadd is only
/// taken as PID 2 with parent 0: in a PID namespace, PID 2 is anything.
pub fn host_netns() -> Option<u32> {
    let netns_of = |path: &std::ffi::CStr| {
        let mut link = [0u8; 64];
        bracketed(readlink_into(libc::AT_FDCWD, path, &mut link)?, b"net:[")
    };
    netns_of(c"/proc/1/ns/net").or_else(|| {
        let stat = std::fs::read_to_string("/proc/2/stat").ok()?;
        stat.starts_with("2 (kthreadd) S 0 ")
            .then(|| netns_of(c"/proc/2/ns/net"))
            .flatten()
    })
}

/// Reads [`Sysctls`] from `/proc/sys` in the calling thread's network
/// namespace, so call it inside [`in_netns`] to read another namespace's.
pub fn sysctls() -> Sysctls {
    Sysctls {
        local_port_range: read_sysctl("net/ipv4/ip_local_port_range").and_then(|s| {
            let mut ports = s.split_whitespace().map(str::parse);
            match (ports.next(), ports.next(), ports.next()) {
                (Some(Ok(low)), Some(Ok(high)), None) => Some((low, high)),
                _ => None,
            }
        }),
        unprivileged_port_start: read_sysctl("net/ipv4/ip_unprivileged_port_start")
            .and_then(|s| s.parse().ok()),
        nonlocal_bind_v4: read_sysctl("net/ipv4/ip_nonlocal_bind").and_then(|s| parse_bool(&s)),
        nonlocal_bind_v6: read_sysctl("net/ipv6/ip_nonlocal_bind").and_then(|s| parse_bool(&s)),
        // The kernel prints only digits, commas and dashes here.
        local_reserved_ports: read_sysctl("net/ipv4/ip_local_reserved_ports").filter(|s| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || b == b',' || b == b'-')
        }),
        tcp_l3mdev_accept: read_sysctl("net/ipv4/tcp_l3mdev_accept").and_then(|s| parse_bool(&s)),
    }
}

/// Measured on Linux 6.18: `/proc/sys/net` resolves against the netns of the
/// thread that opens the file, so a thread that did `setns` reads its new
/// namespace even when the main thread is elsewhere. `/proc/self/net` (and
/// `/proc/net`) differ: they follow the main thread; `/proc/thread-self/net`
/// would be needed there.
fn read_sysctl(name: &str) -> Option<String> {
    let value = std::fs::read_to_string(format!("/proc/sys/{name}")).ok()?;
    Some(value.trim().to_owned())
}

fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use portwatch_test_support::in_fresh_netns;

    use super::*;
    use crate::holders::netns::{in_netns, tests::netns_with};

    #[test]
    fn sysctls_follow_the_thread_netns() {
        let (ns_a, ()) = netns_with(|| {
            // The range must start at or above ip_unprivileged_port_start,
            // which must stay below it: set the range first.
            for (name, value) in [
                ("net/ipv4/ip_local_port_range", "40000 40100"),
                ("net/ipv4/ip_unprivileged_port_start", "555"),
                ("net/ipv4/ip_nonlocal_bind", "1"),
                ("net/ipv6/ip_nonlocal_bind", "1"),
                ("net/ipv4/ip_local_reserved_ports", "40050,40060-40062"),
            ] {
                std::fs::write(format!("/proc/sys/{name}"), value).expect(name);
            }
        });
        let tuned = Sysctls {
            local_port_range: Some((40000, 40100)),
            unprivileged_port_start: Some(555),
            nonlocal_bind_v4: Some(true),
            nonlocal_bind_v6: Some(true),
            local_reserved_ports: Some("40050,40060-40062".into()),
            tcp_l3mdev_accept: std::fs::exists("/proc/sys/net/ipv4/tcp_l3mdev_accept")
                .expect("stat")
                .then_some(false),
        };
        in_fresh_netns(move || {
            let here = sysctls();
            assert!(here.local_port_range.is_some(), "{here:?}");
            assert_eq!(here.nonlocal_bind_v4, Some(false));
            assert_ne!(here, tuned);

            assert_eq!(in_netns(ns_a.as_fd(), sysctls).expect("in_netns"), tuned);
            assert_eq!(sysctls(), here);
        });
    }

    /// The host is told from a namespace of its own, and a thread that
    /// sits apart from its process's main thread is entered through its
    /// own /proc path.
    #[test]
    fn scope_tells_the_host_from_a_private_namespace() {
        use crate::holders::netns::current_netns;
        let host = host_netns().expect("the host's netns (PID 1's or kthreadd's)");
        let here = current_netns().expect("own netns");
        assert_eq!(here, host, "unit tests run in the host's namespace");
        let plain = Scope {
            host: Some(true),
            enter: None,
        };
        assert_eq!(Scope::of(here, Some((1, 1)), Some(here)), plain);
        let pid = std::process::id();
        in_fresh_netns(move || {
            let ns = current_netns().expect("own netns");
            let tid = nix::unistd::gettid().as_raw() as u32;
            let s = Scope::of(ns, Some((pid, tid)), Some(here));
            assert_eq!(s.host, Some(false), "{s:?}");
            assert_eq!(s.enter, Some(format!("/proc/{pid}/task/{tid}/ns/net")));
            // portwatch standing in the namespace has no way in to name.
            assert_eq!(Scope::of(ns, Some((pid, tid)), Some(ns)).enter, None);
        });
    }
}
