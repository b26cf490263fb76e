//! Network devices as the bind rules see them: a socket bound to a device
//! (SO_BINDTODEVICE) is only in the way of sockets bound to no device or to
//! the same one, and for TCP the VRF a device belongs to decides first
//! (`crate::bindcheck::apart`). Names and VRF membership come from one
//! rtnetlink dump of the namespace's links, only when a device is involved.

use std::{collections::HashMap, io};

use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo};
use serde::{Deserialize, Serialize};

use super::{kernel, sockdiag::DiagSocket};

/// The IP address of an interface address (getifaddrs), if it is one.
pub fn ip_of(s: &nix::sys::socket::SockaddrStorage) -> Option<std::net::IpAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(v4.ip().into());
    }
    s.as_sockaddr_in6().map(|v6| v6.ip().into())
}

/// Why two sockets on one port never conflict, whatever their addresses
/// and options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Apart {
    /// Both are bound to devices (SO_BINDTODEVICE), different ones.
    OtherDevice,
    /// TCP: they are in different VRFs (`net.ipv4.tcp_l3mdev_accept=0`, the
    /// default), a socket bound to no device being in none.
    OtherVrf,
}

impl Apart {
    /// "another device", "another VRF".
    pub fn label(self) -> &'static str {
        match self {
            Apart::OtherDevice => "another device",
            Apart::OtherVrf => "another VRF",
        }
    }
}

/// A device a socket is bound to, named for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Its interface index (`idiag_if`, `sk_bound_dev_if`).
    pub ifindex: u32,
    /// Its name (untrusted: any bytes `ip link add` accepted), when the
    /// namespace still has it.
    pub name: Option<String>,
    /// The VRF (L3 master device) it is, or is enslaved to.
    pub vrf: Option<String>,
}

impl Device {
    /// "device veth1", "VRF red", "device eth1 (in VRF red)", "interface 7".
    pub fn label(&self) -> String {
        match (&self.name, &self.vrf) {
            (Some(n), Some(v)) if n == v => format!("VRF {n}"),
            (Some(n), Some(v)) => format!("device {n} (in VRF {v})"),
            (Some(n), None) => format!("device {n}"),
            (None, _) => format!("interface {}", self.ifindex),
        }
    }
}

/// One link of the namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Link {
    name: String,
    /// A VRF device (`IFF_L3MDEV_MASTER`).
    vrf: bool,
    /// The device it is enslaved to (`IFLA_MASTER`).
    master: Option<u32>,
}

/// What the device rule needs of a network namespace: its links and
/// `net.ipv4.tcp_l3mdev_accept`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Devices {
    links: HashMap<u32, Link>,
    /// `net.ipv4.tcp_l3mdev_accept`; None where the kernel has no L3 master
    /// devices (no such sysctl), which puts every TCP socket in one scope.
    pub tcp_l3mdev_accept: Option<bool>,
}

impl Devices {
    /// The calling thread's namespace: its links (one rtnetlink dump) when
    /// `want` (the requester is bound to a device) or a socket of `sockets`
    /// is bound to one, none otherwise; `tcp_l3mdev_accept` as read with the
    /// namespace's sysctls.
    pub fn here(
        want: bool,
        sockets: &[DiagSocket],
        tcp_l3mdev_accept: Option<bool>,
    ) -> io::Result<Devices> {
        let mut devices = Devices {
            tcp_l3mdev_accept,
            ..Devices::default()
        };
        if want || sockets.iter().any(|s| s.bound_dev_if != 0) {
            devices.links = read_links()?;
        }
        Ok(devices)
    }

    /// The index of the device named `name`, if the namespace has it.
    pub fn index_of(&self, name: &str) -> Option<u32> {
        self.links
            .iter()
            .find(|(_, l)| l.name == name)
            .map(|(&i, _)| i)
    }

    /// `l3mdev_master_ifindex_by_index`: the VRF device `ifindex` is or is
    /// enslaved to, else 0 (also for an unknown index).
    pub fn l3mdev(&self, ifindex: u32) -> u32 {
        let Some(link) = self.links.get(&ifindex) else {
            return 0;
        };
        if link.vrf {
            return ifindex;
        }
        link.master
            .filter(|m| self.links.get(m).is_some_and(|l| l.vrf))
            .unwrap_or(0)
    }

    /// `ifindex` named, with its VRF; None for 0 (no device).
    pub fn named(&self, ifindex: u32) -> Option<Device> {
        if ifindex == 0 {
            return None;
        }
        let name = |i: u32| self.links.get(&i).map(|l| l.name.clone());
        let vrf = self.l3mdev(ifindex);
        Some(Device {
            ifindex,
            name: name(ifindex),
            vrf: (vrf != 0).then(|| name(vrf)).flatten(),
        })
    }

    /// Devices made up for tests: (ifindex, name, is a VRF, master).
    #[cfg(test)]
    pub(crate) fn of(links: &[(u32, &str, bool, Option<u32>)], tcp_l3mdev_accept: bool) -> Self {
        Devices {
            links: links
                .iter()
                .map(|&(i, name, vrf, master)| {
                    let name = name.to_owned();
                    (i, Link { name, vrf, master })
                })
                .collect(),
            tcp_l3mdev_accept: Some(tcp_l3mdev_accept),
        }
    }
}

/// Every link of the calling thread's namespace, by index.
fn read_links() -> io::Result<HashMap<u32, Link>> {
    Ok(kernel::links()?
        .iter()
        .filter_map(|m| {
            let mut link = Link::default();
            for a in &m.attributes {
                match a {
                    LinkAttribute::IfName(n) => link.name = n.clone(),
                    LinkAttribute::Controller(m) => link.master = Some(*m),
                    LinkAttribute::LinkInfo(infos) => {
                        link.vrf = infos
                            .iter()
                            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vrf)));
                    }
                    _ => {}
                }
            }
            (!link.name.is_empty()).then_some((m.header.index, link))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use portwatch_test_support::in_fresh_netns;

    use super::*;

    #[test]
    fn vrf_scope_and_labels() {
        // 1 lo, 2 eth0 in VRF red (3), 4 VRF blue, 5 eth1 under a bridge (6).
        let d = Devices::of(
            &[
                (1, "lo", false, None),
                (2, "eth0", false, Some(3)),
                (3, "red", true, None),
                (4, "blue", true, None),
                (5, "eth1", false, Some(6)),
                (6, "br0", false, None),
            ],
            false,
        );
        assert_eq!(
            [1, 2, 3, 4, 5, 6, 99].map(|i| d.l3mdev(i)),
            [0, 3, 3, 4, 0, 0, 0]
        );
        assert_eq!(d.named(0), None);
        let label = |i| d.named(i).unwrap().label();
        assert_eq!(label(2), "device eth0 (in VRF red)");
        assert_eq!(label(3), "VRF red");
        assert_eq!(label(5), "device eth1");
        assert_eq!(label(99), "interface 99");
        assert_eq!(d.index_of("blue"), Some(4));
        assert_eq!(d.index_of("nope"), None);
    }

    /// A real veth pair: names and indexes from the kernel, no VRF.
    #[test]
    fn links_of_a_real_namespace() {
        in_fresh_netns(|| {
            let status = Command::new("ip")
                .args([
                    "link", "add", "pwd0", "type", "veth", "peer", "name", "pwd1",
                ])
                .status()
                .expect("run ip");
            assert!(status.success());
            let d = Devices::here(true, &[], None).expect("links");
            let i = d.index_of("pwd0").expect("pwd0 listed");
            assert_eq!(d.index_of("lo"), Some(1));
            assert_eq!(d.l3mdev(i), 0);
            assert_eq!(d.named(i).unwrap().label(), "device pwd0");
            // No device involved: no dump.
            assert_eq!(
                Devices::here(false, &[], None).unwrap().index_of("lo"),
                None
            );
        });
    }
}
