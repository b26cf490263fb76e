//! What the network namespace itself decides about a bind before any
//! socket is compared: its addresses, its sysctls.

use std::net::IpAddr;

use crate::holders::{
    devices::ip_of,
    sysctl::{self, Sysctls},
};

/// The calling thread's network namespace, as far as a bind's address,
/// port range and privilege are concerned; read once per check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    /// Addresses of its interfaces, with their prefix length, and whether
    /// the interface is a loopback device.
    pub addrs: Vec<Local>,
    /// Its sysctls (`ip_local_port_range`, `ip_nonlocal_bind`, ...).
    pub sysctls: Sysctls,
    /// How a sysctl fix enters it, as the user named it (`--netns PATH`);
    /// None: the namespace portwatch stands in.
    pub enter: Option<String>,
}

/// One address of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    /// The address.
    pub addr: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// On a loopback device: IPv4's whole prefix is local there
    /// (127.0.0.1/8 makes every 127.x.y.z bindable).
    pub loopback: bool,
}

impl Host {
    /// Reads the calling thread's network namespace: getifaddrs (netlink,
    /// in this thread's namespace) and /proc/sys.
    pub fn read() -> std::io::Result<Self> {
        let mut addrs = Vec::new();
        for ifa in nix::ifaddrs::getifaddrs()? {
            let loopback = ifa
                .flags
                .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK);
            let Some(addr) = ifa.address.as_ref().and_then(ip_of) else {
                continue;
            };
            let prefix = ifa.netmask.as_ref().and_then(ip_of).map_or(0, |m| match m {
                IpAddr::V4(m) => u32::from(m).count_ones() as u8,
                IpAddr::V6(m) => u128::from(m).count_ones() as u8,
            });
            addrs.push(Local {
                addr,
                prefix,
                loopback,
            });
        }
        Ok(Self {
            addrs,
            sysctls: sysctl::sysctls(),
            enter: None,
        })
    }

    /// Whether a bind of `addr` would get past the kernel's address check
    /// (EADDRNOTAVAIL otherwise): a wildcard, multicast or broadcast
    /// address, one of an interface (for IPv4 also any address of a
    /// loopback device's prefix), or ip_nonlocal_bind is on.
    pub fn can_bind(&self, addr: IpAddr) -> bool {
        let nonlocal = match addr {
            IpAddr::V4(_) => self.sysctls.nonlocal_bind_v4,
            IpAddr::V6(_) => self.sysctls.nonlocal_bind_v6,
        };
        let special = match addr {
            IpAddr::V4(a) => a.is_unspecified() || a.is_multicast() || a.is_broadcast(),
            IpAddr::V6(a) => a.is_unspecified() || a.is_multicast(),
        };
        special
            || nonlocal == Some(true)
            || self.addrs.iter().any(|l| {
                l.addr == addr
                    || (l.loopback && in_prefix(l.addr, l.prefix, addr) && addr.is_ipv4())
            })
    }

    /// The namespace's addresses, for "the addresses that exist".
    pub fn addresses(&self) -> Vec<IpAddr> {
        let mut all: Vec<IpAddr> = self.addrs.iter().map(|l| l.addr).collect();
        all.sort();
        all.dedup();
        all
    }
}

fn in_prefix(net: IpAddr, prefix: u8, addr: IpAddr) -> bool {
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// Whether `port` is in `ip_local_reserved_ports` as the kernel prints it
/// ("8080,9000-9010").
pub fn reserved(list: &str, port: u16) -> bool {
    list.split(',').any(|item| match item.split_once('-') {
        Some((lo, hi)) => match (lo.parse::<u16>(), hi.parse::<u16>()) {
            (Ok(lo), Ok(hi)) => (lo..=hi).contains(&port),
            _ => false,
        },
        None => item.parse::<u16>() == Ok(port),
    })
}
