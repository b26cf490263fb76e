//! Which pod sandbox holds an endpoint's address: CNI's `host-local` IPAM
//! plugin (used by kubenet-style bridges, flannel, k3s) records each address
//! it hands out as a file named after the address under its data directory,
//! `/var/lib/cni/networks/NETWORK/IP`, holding the container id it was
//! given (the pod sandbox's, as kubelet's runtime passes it) and, on its
//! next line, the interface. Other IPAMs (Calico's, Cilium's) keep no such
//! files: their endpoints stay addresses.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use crate::holders::containers::files::read_root_file;

/// host-local's default data directory.
const NETWORKS: &str = "/var/lib/cni/networks";

/// The pod sandbox id recorded for `endpoint`'s address (`IP:PORT`,
/// `[IP]:PORT` or a bare IP) in any network's host-local records.
pub fn sandbox_of(endpoint: &str) -> Option<String> {
    let ip = endpoint
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| endpoint.parse::<IpAddr>())
        .ok()?;
    let networks = std::fs::read_dir(NETWORKS).ok()?;
    networks
        .flatten()
        .take(64)
        .find_map(|n| record(&n.path().join(ip.to_string())))
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
}
