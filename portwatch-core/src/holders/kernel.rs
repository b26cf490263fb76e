//! Sockets the kernel itself holds: UDP tunnels (VXLAN, Geneve, bareudp)
//! open their port with no process behind it, so /proc names nobody.
//!
//! The network devices of the namespace are listed through rtnetlink
//! (`RTM_GETLINK`, the same dump `ip -d link` reads) and a device whose
//! configured port is the one in the way is named as the holder. WireGuard
//! keeps its listen port in generic netlink, not in the link's info: a
//! WireGuard device is named as a candidate, not as the certain owner.

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    link::{
        InfoBareUdp, InfoData, InfoGeneve, InfoKind, InfoVxlan, LinkAttribute, LinkInfo,
        LinkMessage,
    },
    RouteNetlinkMessage,
};
use netlink_sys::protocols::NETLINK_ROUTE;
use serde::{Deserialize, Serialize};

use super::sockdiag::{open_socket, recv};

/// A network device whose kernel socket holds a UDP port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelDevice {
    /// The device type as `ip link` names it: "vxlan", "geneve", "bareudp",
    /// "wireguard".
    pub kind: String,
    /// The device's name (untrusted: any bytes `ip link add` accepted).
    pub name: String,
    /// Whether its configuration names this very port (false: a WireGuard
    /// device, whose listen port rtnetlink does not tell).
    pub certain: bool,
}

impl KernelDevice {
    /// "the kernel (vxlan device vx0)", or for a candidate "the kernel (no
    /// process owns it; wireguard device wg0 may)".
    pub fn label(&self) -> String {
        if self.certain {
            format!("the kernel ({} device {})", self.kind, self.name)
        } else {
            format!(
                "the kernel (no process owns it; {} device {} may)",
                self.kind, self.name
            )
        }
    }
}

/// The devices of the calling thread's network namespace that can hold UDP
/// `port`: those configured with it first, then WireGuard devices (their
/// port is not in the link's info). Call it inside `netns::in_netns` for
/// another namespace.
pub fn udp_port_devices(port: u16) -> io::Result<Vec<KernelDevice>> {
    let mut found: Vec<KernelDevice> = links()?
        .iter()
        .filter_map(|link| device(link, port))
        .collect();
    found.sort_by_key(|d| !d.certain);
    Ok(found)
}

/// What `link` says about holding `port`.
fn device(link: &LinkMessage, port: u16) -> Option<KernelDevice> {
    let name = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })?;
    let infos = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    })?;
    let kind = infos.iter().find_map(|i| match i {
        LinkInfo::Kind(k) => Some(k),
        _ => None,
    })?;
    let configured = infos.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(v)) => v.iter().find_map(|a| match a {
            InfoVxlan::Port(p) => Some(*p),
            _ => None,
        }),
        LinkInfo::Data(InfoData::Geneve(v)) => v.iter().find_map(|a| match a {
            InfoGeneve::Port(p) => Some(*p),
            _ => None,
        }),
        LinkInfo::Data(InfoData::BareUdp(v)) => v.iter().find_map(|a| match a {
            InfoBareUdp::Port(p) => Some(*p),
            _ => None,
        }),
        _ => None,
    });
    let certain = match kind {
        InfoKind::Vxlan | InfoKind::Geneve | InfoKind::BareUdp => configured == Some(port),
        InfoKind::Wireguard => false,
        _ => return None,
    };
    if matches!(kind, InfoKind::Wireguard) || certain {
        return Some(KernelDevice {
            kind: kind.to_string(),
            name,
            certain,
        });
    }
    None
}

/// Every link of the namespace (one rtnetlink dump).
pub(super) fn links() -> io::Result<Vec<LinkMessage>> {
    let socket = open_socket(NETLINK_ROUTE)?;
    let mut request = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(LinkMessage::default())),
    );
    request.header.flags = NLM_F_DUMP | NLM_F_REQUEST;
    request.header.sequence_number = 1;
    request.finalize();
    let mut out = vec![0; request.buffer_len()];
    request.serialize(&mut out);
    socket.send(&out, 0)?;
    let mut links = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let datagram = recv(&socket, &mut buf, "rtnetlink")?;
        let mut offset = 0;
        while offset < datagram.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..])
                .map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("rtnetlink: {e}"))
                })?;
            let size = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(links),
                NetlinkPayload::Error(e) => {
                    return Err(e.to_io());
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    links.push(link)
                }
                _ => {}
            }
            if size == 0 {
                break;
            }
            offset += size;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use portwatch_test_support::in_fresh_netns;

    use super::*;

    fn ip(args: &str) {
        let status = Command::new("ip")
            .args(args.split(' '))
            .status()
            .expect("run ip (iproute2)");
        assert!(status.success(), "ip {args}: {status}");
    }

    /// Real devices in a private network namespace: each VXLAN device holds
    /// its dstport, and nothing else is named. (Geneve and bareudp are parsed
    /// the same way; this host's kernel has neither.)
    #[test]
    fn tunnels_are_found_by_their_port() {
        in_fresh_netns(|| {
            ip("link add vx0 type vxlan id 42 dstport 4789 local 127.0.0.1");
            ip("link set vx0 up");
            ip("link add vx1 type vxlan id 7 dstport 6082 local 127.0.0.1");
            ip("link set vx1 up");
            ip("link add veth0 type veth peer name veth1");
            assert_eq!(
                udp_port_devices(4789).unwrap(),
                vec![KernelDevice {
                    kind: "vxlan".into(),
                    name: "vx0".into(),
                    certain: true
                }]
            );
            assert_eq!(udp_port_devices(6082).unwrap()[0].name, "vx1");
            assert_eq!(udp_port_devices(4790).unwrap(), vec![]);
        });
    }
}
