//! Parsing and checking values from the command line. Every parser returns a
//! one-line error saying what was wrong with the value.

use std::{
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use portwatch_core::request::{Errno, Proto};

/// `EADDRINUSE`, `eaddrinuse`, `98`.
pub fn parse_errno(s: &str) -> Result<Errno, String> {
    s.parse()
}

/// A duration such as `30s`, `500ms`, `2m` or `1h 30m`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    if s.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration like 30s, 500ms or 2m ({e})"))
}

/// `80`, `80,443`, `8000-8100`: inclusive ranges.
pub fn parse_ports(s: &str) -> Result<Vec<(u16, u16)>, String> {
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("'{}' is not a port (0-65535)", p.trim()))
    };
    s.split(',')
        .map(|item| match item.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (port(lo)?, port(hi)?);
                if lo > hi {
                    Err(format!("port range '{item}' is backwards"))
                } else {
                    Ok((lo, hi))
                }
            }
            None => port(item).map(|p| (p, p)),
        })
        .collect()
}

/// A numeric uid or a user name from the passwd database.
pub fn parse_uid(s: &str) -> Result<u32, String> {
    if let Ok(uid) = s.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(s) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        _ => Err(format!("no such user '{s}'")),
    }
}

/// A comm as the kernel stores it: at most 15 bytes, NUL padded.
pub fn parse_comm(s: &str) -> Result<[u8; 16], String> {
    if s.is_empty() || s.len() > 15 {
        return Err(format!(
            "comm '{s}' must be 1 to 15 bytes (the kernel truncates comms to 15)"
        ));
    }
    let mut comm = [0; 16];
    comm[..s.len()].copy_from_slice(s.as_bytes());
    Ok(comm)
}

/// The inode of a namespace file, or a number taken as the inode itself.
pub fn parse_netns(s: &str) -> Result<u32, String> {
    if let Ok(inode) = s.parse::<u32>() {
        return Ok(inode);
    }
    let meta = std::fs::metadata(s).map_err(|e| format!("network namespace '{s}': {e}"))?;
    u32::try_from(meta.ino()).map_err(|_| format!("'{s}' is not a namespace file"))
}

/// Where cgroup v2 is mounted, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split(' ').next()? == "cgroup2")
            .then(|| left.split(' ').nth(4).map(str::to_owned))?
    })
}

/// A cgroup id, or a cgroup v2 directory (absolute, or relative to the
/// cgroup2 mount) whose inode number is its id.
pub fn parse_cgroup(s: &str) -> Result<u64, String> {
    if let Ok(id) = s.parse::<u64>() {
        return Ok(id);
    }
    let path = if Path::new(s).is_absolute() {
        s.to_owned()
    } else {
        let root = cgroup2_mount().ok_or("no cgroup v2 hierarchy is mounted")?;
        format!("{root}/{s}")
    };
    let meta = std::fs::metadata(&path).map_err(|e| format!("cgroup '{path}': {e}"))?;
    if !meta.is_dir() {
        return Err(format!("cgroup '{path}' is not a directory"));
    }
    Ok(meta.ino())
}

/// Ring buffer size in KiB: a power of two from 4 KiB (one page) to 1 GiB.
pub fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let kib: u32 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of KiB"))?;
    if !(4..=1 << 20).contains(&kib) || !kib.is_power_of_two() {
        return Err(format!(
            "ring size {kib} KiB must be a power of two from 4 to 1048576"
        ));
    }
    Ok(kib)
}

/// `who`'s `PORT[/tcp|/udp]`: a port from 1 to 65535 and a protocol (tcp when left out).
pub fn parse_port_proto(s: &str) -> Result<(u16, Proto), String> {
    let (port, proto) = match s.split_once('/') {
        Some((port, proto)) => (port, proto),
        None => (s, "tcp"),
    };
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return Err(format!("unknown protocol '{proto}' (tcp or udp)")),
    };
    match port.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok((p, proto)),
        _ => Err(format!("'{port}' is not a port (1-65535)")),
    }
}

/// An IPv4 or IPv6 address; IPv6 may come in brackets (`[::1]`).
pub fn parse_addr(s: &str) -> Result<IpAddr, String> {
    let bare = s
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(s);
    bare.parse()
        .map_err(|_| format!("'{s}' is not an IPv4 or IPv6 address"))
}

/// A network device name as the kernel accepts one (`dev_valid_name`):
/// 1 to 15 bytes, not `.` or `..`, no `/`, `:` or whitespace. Whether the
/// namespace has it is checked when it is looked in.
pub fn parse_device(s: &str) -> Result<String, String> {
    let valid = !s.is_empty()
        && s.len() < libc::IFNAMSIZ
        && s != "."
        && s != ".."
        && !s
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if valid {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "'{}' is not a network device name (1-15 bytes, no '/', ':' or spaces)",
            s.escape_debug()
        ))
    }
}

/// A network namespace to look in: a path (/run/netns/NAME, /proc/PID/ns/net) or a PID,
/// meaning /proc/PID/ns/net. It must exist now; that it is a network namespace is checked
/// when it is entered.
pub fn parse_netns_target(s: &str) -> Result<PathBuf, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let path = PathBuf::from(format!("/proc/{s}/ns/net"));
        return if path.exists() {
            Ok(path)
        } else {
            Err(format!("no process with pid {s}"))
        };
    }
    std::fs::metadata(s).map_err(|e| format!("network namespace '{s}': {e}"))?;
    Ok(PathBuf::from(s))
}

/// A subcommand's name, for `portwatch man SUBCOMMAND` (it has a page).
pub fn parse_subcommand(s: &str) -> Result<String, String> {
    use clap::CommandFactory as _;
    let cmd = super::Cli::command();
    if cmd
        .get_subcommands()
        .any(|c| c.get_name() == s && !c.is_hide_set())
    {
        return Ok(s.to_owned());
    }
    let names: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
    Err(format!(
        "'{s}' is not a subcommand (one of: {})",
        names.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        for ok in ["eth0", "veth1", "red", "a", "fifteen-bytes-x"] {
            assert_eq!(parse_device(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:1",
            "a b",
            "sixteen-bytes-xx",
            "tab\t",
        ] {
            assert!(parse_device(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn who_port_and_protocol() {
        assert_eq!(parse_port_proto("8080").unwrap(), (8080, Proto::Tcp));
        assert_eq!(parse_port_proto("53/udp").unwrap(), (53, Proto::Udp));
        assert_eq!(parse_port_proto("443/TCP").unwrap(), (443, Proto::Tcp));
        assert!(parse_port_proto("0")
            .unwrap_err()
            .contains("'0' is not a port"));
        assert!(parse_port_proto("65536/tcp")
            .unwrap_err()
            .contains("is not a port"));
        assert!(parse_port_proto("80/sctp")
            .unwrap_err()
            .contains("unknown protocol 'sctp'"));
        assert!(parse_port_proto("http").is_err());
    }

    #[test]
    fn who_addresses() {
        assert_eq!(parse_addr("0.0.0.0").unwrap(), IpAddr::from([0, 0, 0, 0]));
        assert_eq!(
            parse_addr("[::1]").unwrap(),
            "::1".parse::<IpAddr>().unwrap()
        );
        assert!(parse_addr("localhost")
            .unwrap_err()
            .contains("not an IPv4 or IPv6"));
        assert!(parse_netns_target("/nonexistent/netns").is_err());
        assert!(parse_netns_target("4294967295")
            .unwrap_err()
            .contains("no process"));
        assert_eq!(
            parse_netns_target(&std::process::id().to_string()).unwrap(),
            PathBuf::from(format!("/proc/{}/ns/net", std::process::id()))
        );
    }

    #[test]
    fn ports_lists_and_ranges() {
        assert_eq!(parse_ports("80").unwrap(), vec![(80, 80)]);
        assert_eq!(
            parse_ports("80, 443,8000-8100").unwrap(),
            vec![(80, 80), (443, 443), (8000, 8100)]
        );
        assert_eq!(
            parse_ports("0,65535").unwrap(),
            vec![(0, 0), (65535, 65535)]
        );
    }

    #[test]
    fn ports_out_of_range_or_malformed() {
        assert!(parse_ports("70000")
            .unwrap_err()
            .contains("'70000' is not a port"));
        assert!(parse_ports("-1").is_err());
        assert!(parse_ports("http").is_err());
        assert!(parse_ports("90-80").unwrap_err().contains("backwards"));
        assert!(parse_ports("").is_err());
    }

    #[test]
    fn errno_parser() {
        assert_eq!(parse_errno("EADDRINUSE").unwrap(), Errno(98));
        assert!(parse_errno("128").is_err());
    }

    #[test]
    fn comm_length() {
        assert_eq!(&parse_comm("nginx").unwrap()[..6], b"nginx\0");
        assert!(parse_comm("a-very-long-comm-name").is_err());
        assert!(parse_comm("").is_err());
    }

    #[test]
    fn uid_by_name() {
        assert_eq!(parse_uid("0").unwrap(), 0);
        assert_eq!(parse_uid("root").unwrap(), 0);
        assert!(parse_uid("no-such-user-here").is_err());
    }

    #[test]
    fn cgroup_and_netns_paths() {
        assert_eq!(parse_cgroup("1234").unwrap(), 1234);
        assert!(parse_cgroup("/no/such/cgroup")
            .unwrap_err()
            .contains("/no/such/cgroup"));
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        assert_eq!(parse_netns("/proc/self/ns/net").unwrap(), own);
        assert!(parse_netns("/run/netns/does-not-exist").is_err());
    }

    #[test]
    fn ring_size_must_be_power_of_two() {
        assert_eq!(parse_ring_kib("1024").unwrap(), 1024);
        assert!(parse_ring_kib("1000").is_err());
        assert!(parse_ring_kib("2").is_err());
    }
}
