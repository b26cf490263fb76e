//! IPVS, the kernel's layer-4 load balancer, as kube-proxy's IPVS mode uses
//! it: a virtual server on every node address for each NodePort (and one
//! for each ClusterIP, on its `kube-ipvs0` dummy device), whose real
//! servers are the Service's endpoints. A connection to such a port goes
//! to a real server before any socket of the node sees it.
//!
//! The virtual servers and their real servers are read through IPVS's
//! generic netlink family (IPVS_CMD_GET_SERVICE, IPVS_CMD_GET_DEST) with
//! the `nlrs` crate: MIT, no dependencies of its own, and its IPVS messages
//! are those ipvsadm sends. Its dump parser fails whole on a virtual server
//! by firewall mark or of SCTP, so the dump is parsed here a message at a
//! time with the crate's own per-message reader ([`read`]); `neli` would
//! need the IPVS attributes written out by hand, which nlrs already has. Only when `/proc/thread-self/net/ip_vs` exists,
//! that is when the ip_vs module is loaded (it makes that file in every
//! network namespace): resolving the family otherwise makes the kernel
//! load the module, and portwatch changes nothing on the host.
//!
//! IPVS carries no Service name: the rule names the virtual servers and
//! the real servers; kube-proxy is named as their maker only when its
//! `kube-ipvs0` device is there.

use std::{
    collections::BTreeSet,
    io::{Cursor, Read},
    net::{IpAddr, SocketAddr},
    path::Path,
};

use nlrs::{
    genetlink::{
        socket::{GenericNetlinkSocket, GenericRequestBuilder},
        GenericMessageBuilder,
    },
    ipvs::{
        destination::GetDestinationMessageBuilder,
        service::{read_get_service_msg, GetServiceMessageBuilder, ServiceAttribute},
        IpFamily, IpvsService, Protocol, IPVS_FAMILY,
    },
    netlink::{
        msg::NlMsgIter,
        socket::{NlSocket, NlSocketType},
    },
    socket::NetlinkSocket,
};

use super::DnatRule;

/// The device kube-proxy's IPVS mode puts the ClusterIPs on.
pub(super) const KUBE_IPVS_DEVICE: &str = "kube-ipvs0";

/// One virtual server and where it sends connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct VirtualServer {
    /// `tcp` or `udp`.
    pub proto: &'static str,
    /// Its address and port.
    pub addr: SocketAddr,
    /// Its scheduler (`rr`, kube-proxy's default).
    pub scheduler: String,
    /// Its real servers.
    pub reals: Vec<SocketAddr>,
}

/// Whether this thread's network namespace has IPVS (the module loaded).
fn loaded() -> bool {
    Path::new("/proc/thread-self/net/ip_vs").exists()
}

/// Every TCP and UDP virtual server of this thread's network namespace,
/// with its real servers; empty without IPVS. The dump is parsed message by
/// message: a virtual server the crate cannot read (one by firewall mark,
/// which has no address or port; one of SCTP; one whose real servers are
/// unreadable) is passed over, counted, and said once on stderr, and every
/// other is kept. The crate's own dump parser fails whole on the first of
/// them, losing every Service of the node. An error only when the kernel
/// refused the dump.
pub(super) fn read() -> Result<Vec<VirtualServer>, String> {
    if !loaded() {
        return Ok(Vec::new());
    }
    let socket = NetlinkSocket::new_vectored(NlSocketType::NETLINK_GENERIC)
        .map_err(|e| format!("netlink socket: {e:?}"))?;
    let mut socket = GenericNetlinkSocket::from_netlink_socket(socket, IPVS_FAMILY.to_string())
        .map_err(|e| format!("IPVS netlink family: {e}"))?;
    let mut passed = Passed::default();
    let mut found = Vec::new();
    for message in dump_services(&mut socket)? {
        let attributes = read_get_service_msg(&mut Cursor::new(&message), message.len());
        let Some((service, scheduler)) = attributes
            .map_err(|_| Skip::Unreadable)
            .and_then(|a| virtual_server(&a))
            .map_err(|why| passed.add(why))
            .ok()
        else {
            continue;
        };
        let Ok(reals) = socket
            .message_builder::<GetDestinationMessageBuilder<_>>(service)
            .call()
        else {
            passed.add(Skip::Unreadable);
            continue;
        };
        found.push(VirtualServer {
            proto: match service.protocol {
                Protocol::TCP => "tcp",
                Protocol::UDP => "udp",
            },
            addr: service.service_address,
            scheduler,
            reals: reals.into_iter().map(|d| d.destination_address).collect(),
        });
    }
    if let Some(note) = passed.note() {
        eprintln!("portwatch: {note}");
    }
    Ok(found)
}

/// IPVS's generic netlink socket.
type IpvsSocket = GenericNetlinkSocket<Vec<u8>, Vec<u8>, NlSocket>;

/// The messages of an IPVS_CMD_GET_SERVICE dump, each one's payload whole
/// (a parse that stops inside one cannot misread the next).
fn dump_services(socket: &mut IpvsSocket) -> Result<Vec<Vec<u8>>, String> {
    let err = |e: &dyn std::fmt::Display| format!("IPVS virtual servers: {e}");
    let (socket, _) = socket
        .message_builder::<GetServiceMessageBuilder<_>>(())
        .build()
        .map_err(|e| err(&e))?;
    socket.send().map_err(|e| err(&e))?;
    socket.receive().map_err(|e| err(&e))?;
    NlMsgIter::new(socket, payload)
        .map(|m| m.map_err(|e| err(&e))?.map_err(|e| err(&e)))
        .collect()
}

/// A message's `len` bytes of payload.
fn payload<R: Read>(reader: &mut R, len: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0; len];
    reader.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Why a virtual server was passed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// It matches a firewall mark, not an address and port.
    FirewallMark,
    /// Its protocol is neither TCP nor UDP (SCTP: 132).
    Protocol(u16),
    /// Its attributes or its real servers could not be read.
    Unreadable,
}

/// How many virtual servers a read passed over, and why.
#[derive(Debug, Default)]
struct Passed {
    firewall_mark: usize,
    other_protocol: usize,
    unreadable: usize,
}

impl Passed {
    fn add(&mut self, why: Skip) {
        match why {
            Skip::FirewallMark => self.firewall_mark += 1,
            Skip::Protocol(_) => self.other_protocol += 1,
            Skip::Unreadable => self.unreadable += 1,
        }
    }

    /// One line for all of them, when there were any.
    fn note(&self) -> Option<String> {
        let parts: Vec<String> = [
            (self.firewall_mark, "by firewall mark"),
            (self.other_protocol, "neither TCP nor UDP"),
            (self.unreadable, "unreadable"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, why)| format!("{n} {why}"))
        .collect();
        (!parts.is_empty()).then(|| {
            format!(
                "IPVS: passed over {} virtual servers ({}); the TCP and UDP ones are read",
                self.firewall_mark + self.other_protocol + self.unreadable,
                parts.join(", ")
            )
        })
    }
}

/// The TCP or UDP virtual server one message's attributes describe, with
/// its scheduler (as the kernel's ip_vs_genl_fill_service writes them: an
/// address family, then a firewall mark or protocol, address and port).
fn virtual_server(attributes: &[ServiceAttribute]) -> Result<(IpvsService, String), Skip> {
    let (mut family, mut proto, mut addr, mut port, mut scheduler) = (None, None, None, None, None);
    for a in attributes {
        match a {
            ServiceAttribute::FwMark(_) => return Err(Skip::FirewallMark),
            ServiceAttribute::AddressFamily(f) => family = Some(*f),
            ServiceAttribute::Protocol(p) => proto = Some(*p),
            ServiceAttribute::Address(a) => addr = Some(*a),
            ServiceAttribute::Port(p) => port = Some(*p),
            ServiceAttribute::Scheduler(s) => scheduler = Some(s.clone()),
            _ => {}
        }
    }
    let proto = proto.ok_or(Skip::Unreadable)?;
    let protocol = Protocol::try_from(proto).map_err(|()| Skip::Protocol(proto))?;
    let (Some(family), Some(addr), Some(port)) = (family, addr, port) else {
        return Err(Skip::Unreadable);
    };
    let ip = match IpFamily::try_from(family) {
        Ok(IpFamily::AF_INET) => IpAddr::from([addr[0], addr[1], addr[2], addr[3]]),
        Ok(IpFamily::AF_INET6) => IpAddr::from(addr),
        Err(()) => return Err(Skip::Unreadable),
    };
    let service = IpvsService {
        service_address: SocketAddr::new(ip, port),
        protocol,
    };
    Ok((service, scheduler.unwrap_or_default()))
}

/// The virtual servers on `port` of `proto`, as one rule: kube-proxy makes
/// one per node address for a NodePort, all with the same real servers.
pub(super) fn rules(servers: &[VirtualServer], port: u16, proto: &str) -> Vec<DnatRule> {
    let on_port: Vec<&VirtualServer> = servers
        .iter()
        .filter(|s| s.proto == proto && s.addr.port() == port)
        .collect();
    if on_port.is_empty() {
        return Vec::new();
    }
    let endpoints: Vec<String> = on_port
        .iter()
        .flat_map(|s| &s.reals)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(SocketAddr::to_string)
        .collect();
    let rule = on_port
        .iter()
        .map(|s| {
            format!(
                "{} {} {}",
                s.proto.to_ascii_uppercase(),
                s.addr,
                s.scheduler
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    vec![DnatRule {
        from: "ipvs".into(),
        rule: format!("virtual servers {rule}"),
        to: endpoints.first().cloned(),
        service: None,
        endpoints,
        ..DnatRule::default()
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs(proto: &'static str, addr: &str, reals: &[&str]) -> VirtualServer {
        VirtualServer {
            proto,
            addr: addr.parse().unwrap(),
            scheduler: "rr".into(),
            reals: reals.iter().map(|r| r.parse().unwrap()).collect(),
        }
    }

    /// kube-proxy's IPVS mode for NodePort 30080 on two node addresses and
    /// the Service's ClusterIP on port 80: one rule for 30080, naming both
    /// virtual servers and the endpoints once each.
    #[test]
    fn virtual_servers_of_a_node_port() {
        let servers = [
            vs(
                "tcp",
                "192.168.0.2:30080",
                &["10.244.0.6:8080", "10.244.0.5:8080"],
            ),
            vs(
                "tcp",
                "10.0.2.15:30080",
                &["10.244.0.5:8080", "10.244.0.6:8080"],
            ),
            vs("tcp", "10.96.0.50:80", &["10.244.0.5:8080"]),
            vs("udp", "192.168.0.2:30080", &["10.244.0.9:53"]),
        ];
        let r = rules(&servers, 30080, "tcp");
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].from, "ipvs");
        assert_eq!(r[0].endpoints, ["10.244.0.5:8080", "10.244.0.6:8080"]);
        assert_eq!(r[0].to.as_deref(), Some("10.244.0.5:8080"));
        assert_eq!(
            r[0].rule,
            "virtual servers TCP 192.168.0.2:30080 rr, TCP 10.0.2.15:30080 rr"
        );
        assert_eq!(
            rules(&servers, 30080, "udp")[0].endpoints,
            ["10.244.0.9:53"]
        );
        assert_eq!(rules(&servers, 30081, "tcp"), vec![]);
    }

    /// A message's attributes as the kernel's ip_vs_genl_fill_service
    /// writes them (before the flags, timeout and statistics, read as
    /// `Other`): a TCP or UDP virtual server is kept, one by firewall mark
    /// (which has no protocol, address or port) or of SCTP is passed over,
    /// and so is one whose attributes are short.
    #[test]
    fn virtual_servers_by_message() {
        use ServiceAttribute as A;
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[192, 168, 0, 2]);
        let tcp = [
            A::AddressFamily(2),
            A::Protocol(6),
            A::Address(v4),
            A::Port(30080),
            A::Scheduler("rr".into()),
            A::Other(7),
            A::Timeout(0),
        ];
        let (s, scheduler) = virtual_server(&tcp).unwrap();
        assert_eq!(s.service_address.to_string(), "192.168.0.2:30080");
        assert_eq!((s.protocol, scheduler.as_str()), (Protocol::TCP, "rr"));
        let v6: std::net::Ipv6Addr = "fd00::5".parse().unwrap();
        let udp = [
            A::AddressFamily(10),
            A::Protocol(17),
            A::Address(v6.octets()),
            A::Port(53),
            A::Scheduler("rr".into()),
        ];
        let (s, _) = virtual_server(&udp).unwrap();
        assert_eq!(s.service_address.to_string(), "[fd00::5]:53");
        assert_eq!(s.protocol, Protocol::UDP);
        let fwmark = [A::AddressFamily(2), A::FwMark(7), A::Scheduler("rr".into())];
        assert_eq!(virtual_server(&fwmark), Err(Skip::FirewallMark));
        let mut sctp = tcp.clone();
        sctp[1] = A::Protocol(132);
        assert_eq!(virtual_server(&sctp), Err(Skip::Protocol(132)));
        assert_eq!(virtual_server(&tcp[..3]), Err(Skip::Unreadable));
        let mut family = tcp.clone();
        family[0] = A::AddressFamily(7);
        assert_eq!(virtual_server(&family), Err(Skip::Unreadable));

        let mut passed = Passed::default();
        assert_eq!(passed.note(), None);
        passed.add(Skip::FirewallMark);
        passed.add(Skip::Protocol(132));
        assert_eq!(
            passed.note().as_deref(),
            Some("IPVS: passed over 2 virtual servers (1 by firewall mark, 1 neither TCP nor UDP); the TCP and UDP ones are read")
        );
    }
}
