//! Which pod sandbox holds an endpoint's address. First CNI's `host-local`
//! IPAM plugin (used by kubenet-style bridges, flannel, k3s): it records
//! each address it hands out as a file named after the address under its
//! data directory, `/var/lib/cni/networks/NETWORK/IP`, holding the
//! container id it was given (the pod sandbox's, as kubelet's runtime
//! passes it) and, on its next line, the interface. Other IPAMs (Calico's,
//! Cilium's) keep no such files: then the addresses of each running pod
//! sandbox's network namespace, read from its pause process's /proc
//! (`net/fib_trie`'s local /32 routes, `net/if_inet6`), without entering it.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use crate::holders::containers::files::read_root_file;

/// host-local's default data directory.
const NETWORKS: &str = "/var/lib/cni/networks";

/// The pod sandbox id recorded for `endpoint`'s address (`IP:PORT`,
/// `[IP]:PORT` or a bare IP) in any network's host-local records.
pub fn sandbox_of(endpoint: &str) -> Option<String> {
    let ip = endpoint_ip(endpoint)?;
    let networks = std::fs::read_dir(NETWORKS).ok()?;
    networks
        .flatten()
        .take(64)
        .find_map(|n| record(&n.path().join(ip.to_string())))
}

/// The address of an endpoint written `IP:PORT`, `[IP]:PORT` or `IP`.
pub fn endpoint_ip(endpoint: &str) -> Option<IpAddr> {
    endpoint
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| endpoint.parse::<IpAddr>())
        .ok()
}

/// The pod sandboxes' addresses: for each (sandbox id, pause pid), the
/// addresses of that process's network namespace, loopback left out.
pub fn sandbox_addresses(sandboxes: &[(String, u32)]) -> Vec<(IpAddr, String)> {
    sandboxes
        .iter()
        .flat_map(|(id, pid)| {
            addresses_of(*pid)
                .into_iter()
                .filter(|ip| !ip.is_loopback())
                .map(move |ip| (ip, id.clone()))
        })
        .collect()
}

/// The addresses of process `pid`'s network namespace, from its /proc.
fn addresses_of(pid: u32) -> Vec<IpAddr> {
    let read =
        |f: &str| std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).unwrap_or_default();
    let v4 = fib_trie_locals(&read("fib_trie"))
        .into_iter()
        .map(IpAddr::V4);
    let v6 = if_inet6(&read("if_inet6")).into_iter().map(IpAddr::V6);
    let mut all: Vec<IpAddr> = v4.chain(v6).collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// The host addresses in a `fib_trie` listing: each `|-- ADDRESS` leaf
/// followed by a `/32 host LOCAL` route (the kernel's local table).
fn fib_trie_locals(text: &str) -> Vec<Ipv4Addr> {
    let mut found = Vec::new();
    let mut leaf = None;
    for line in text.lines().take(100_000) {
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("|-- ") {
            leaf = addr.parse::<Ipv4Addr>().ok();
        } else if line == "/32 host LOCAL" {
            found.extend(leaf);
        }
    }
    found
}

/// The addresses in an `if_inet6` listing: 32 hex digits first on each line.
fn if_inet6(text: &str) -> Vec<Ipv6Addr> {
    text.lines()
        .take(10_000)
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|hex| {
            u128::from_str_radix(hex, 16)
                .ok()
                .filter(|_| hex.len() == 32)
        })
        .map(Ipv6Addr::from)
        .collect()
}

/// A record's container id: 64 hex digits on its first line. Root's
/// files only, never through a symlink.
fn record(path: &Path) -> Option<String> {
    let bytes = read_root_file(path)?;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]);
    let id = text.lines().next()?.trim();
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// host-local 1.1's record: the id, `\r\n`, the interface.
    #[test]
    fn reads_a_host_local_record() {
        let dir = std::env::temp_dir().join(format!("pw-ipam-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let id = "ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789";
        let path = dir.join("10.88.0.5");
        std::fs::write(&path, format!("{id}\r\neth0")).unwrap();
        let bad = dir.join("10.88.0.6");
        std::fs::write(&bad, "not-an-id\r\neth0").unwrap();
        let got = (record(&path), record(&bad));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got, (Some(id.to_ascii_lowercase()), None));
        assert_eq!(sandbox_of("not an address"), None);
    }

    /// A pod's namespace as Linux 6.1 lists it: the leaves with a local
    /// /32 route are its addresses; the /8 of loopback, the broadcast and
    /// network routes are not.
    #[test]
    fn reads_a_namespaces_addresses() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     +-- 10.88.0.0/16 2 0 2\n        |-- 10.88.0.0\n           /16 link UNICAST\n        |-- 10.88.0.7\n           /32 host LOCAL\n        |-- 10.88.255.255\n           /32 link BROADCAST\n     +-- 127.0.0.0/8 2 0 2\n        |-- 127.0.0.0\n           /8 host LOCAL\n        |-- 127.0.0.1\n           /32 host LOCAL\nLocal:\n        |-- 10.88.0.7\n           /32 host LOCAL\n";
        assert_eq!(
            fib_trie_locals(trie),
            ["10.88.0.7", "127.0.0.1", "10.88.0.7"].map(|a| a.parse::<Ipv4Addr>().unwrap())
        );
        let inet6 = "00000000000000000000000000000001 01 80 10 80       lo\nfd000000000000000000000000000002 04 40 00 82     eth0\nzz 01\n";
        assert_eq!(
            if_inet6(inet6),
            ["::1", "fd00::2"].map(|a| a.parse::<Ipv6Addr>().unwrap())
        );
        let here = addresses_of(std::process::id());
        assert!(here.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{here:?}");
        assert_eq!(endpoint_ip("[fd00::2]:80"), "fd00::2".parse().ok());
    }
}
