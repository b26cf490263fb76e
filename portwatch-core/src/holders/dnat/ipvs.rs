//! IPVS, the kernel's layer-4 load balancer, as kube-proxy's IPVS mode uses
//! it: a virtual server on every node address for each NodePort (and one
//! for each ClusterIP, on its `kube-ipvs0` dummy device), whose real
//! servers are the Service's endpoints. A connection to such a port goes
//! to a real server before any socket of the node sees it.
//!
//! The virtual servers and their real servers are read through IPVS's
//! generic netlink family (IPVS_CMD_GET_SERVICE, IPVS_CMD_GET_DEST) with
//! the `nlrs` crate: MIT, no dependencies of its own, and its IPVS messages
//! are those ipvsadm sends. Only when `/proc/thread-self/net/ip_vs` exists,
//! that is when the ip_vs module is loaded (it makes that file in every
//! network namespace): resolving the family otherwise makes the kernel
//! load the module, and portwatch changes nothing on the host.
//!
//! IPVS carries no Service name: the rule names the virtual servers and
//! the real servers; kube-proxy is named as their maker only when its
//! `kube-ipvs0` device is there.

use std::{collections::BTreeSet, net::SocketAddr, path::Path};

use nlrs::{
    genetlink::socket::{GenericNetlinkSocket, GenericRequestBuilder},
    ipvs::{
        destination::GetDestinationMessageBuilder, service::GetServiceMessageBuilder, IpvsService,
        Protocol, IPVS_FAMILY,
    },
    netlink::socket::NlSocketType,
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

/// Every virtual server of this thread's network namespace, with its real
/// servers; empty without IPVS. An error when the kernel refused the dump
/// (an SCTP or fwmark virtual server, which the crate cannot parse, fails
/// the whole dump: kube-proxy makes SCTP ones for SCTP Services only).
pub(super) fn read() -> Result<Vec<VirtualServer>, String> {
    if !loaded() {
        return Ok(Vec::new());
    }
    let socket = NetlinkSocket::new_vectored(NlSocketType::NETLINK_GENERIC)
        .map_err(|e| format!("netlink socket: {e:?}"))?;
    let mut socket = GenericNetlinkSocket::from_netlink_socket(socket, IPVS_FAMILY.to_string())
        .map_err(|e| format!("IPVS netlink family: {e}"))?;
    let services = socket
        .message_builder::<GetServiceMessageBuilder<_>>(())
        .call()
        .map_err(|e| format!("IPVS virtual servers: {e} ({e:?})"))?;
    let mut found = Vec::new();
    for s in services {
        let service = IpvsService {
            service_address: s.service_address,
            protocol: s.protocol,
        };
        let reals = socket
            .message_builder::<GetDestinationMessageBuilder<_>>(service)
            .call()
            .map_err(|e| format!("IPVS real servers of {}: {e}", s.service_address))?;
        found.push(VirtualServer {
            proto: match s.protocol {
                Protocol::TCP => "tcp",
                Protocol::UDP => "udp",
            },
            addr: s.service_address,
            scheduler: s.scheduler,
            reals: reals.into_iter().map(|d| d.destination_address).collect(),
        });
    }
    Ok(found)
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
}
