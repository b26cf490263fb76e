//! kube-proxy's nftables mode (Kubernetes 1.29+, GA in 1.33): its own
//! tables `ip kube-proxy` and `ip6 kube-proxy`, where the `services`
//! chain looks NodePorts up in the `service-nodeports` verdict map
//! (`tcp . 30080 : goto external-HASH-ns/name/tcp/port`), whose chains go
//! on to `service-HASH-ns/name/tcp/port` and its `endpoint-HASH-…` chains,
//! each with a `dnat to IP:PORT`. A NodePort whose Service has no endpoints
//! is in `no-endpoint-nodeports` instead, its element commented `ns/name:port`
//! (pkg/proxy/nftables/proxier.go and the rulesets its proxier_test.go
//! expects). The same chain looks ClusterIPs, externalIPs and LoadBalancer
//! IPs up in the `service-ips` map (`192.168.0.2 . tcp . 80 : goto
//! external-…`; without endpoints, `no-endpoint-services`): those the node
//! holds steer the port on that address as a NodePort does.
//!
//! The table is read as data, `nft -j list table FAMILY kube-proxy`
//! (nftables' JSON), only when `nft list ruleset` showed it: no extra
//! subprocess on a node without it.

use std::net::IpAddr;

use serde_json::Value;

use super::{service_of, DnatRule, KubeService, KIND_EXTERNAL};
use crate::{holders::overlaps, request::Family};

/// The families kube-proxy makes its table in (one proxier each).
pub(super) const FAMILIES: [&str; 2] = ["ip", "ip6"];

/// The table's name in every family.
const TABLE: &str = "kube-proxy";

/// Whether `nft list ruleset`'s text has kube-proxy's table of `family`.
pub(super) fn listed(ruleset: &str, family: &str) -> bool {
    let head = format!("table {family} {TABLE} {{");
    ruleset.lines().any(|l| l == head)
}

/// `nft -j list table FAMILY kube-proxy`'s arguments.
pub(super) fn list_args(family: &str) -> [&str; 5] {
    ["-j", "list", "table", family, TABLE]
}

/// kube-proxy's rules for NodePort `port` of `proto` in one table's JSON:
/// the Service named from its chain's name, and every address its endpoint
/// chains DNAT to; or, with no endpoints, the Service named from its
/// `no-endpoint-nodeports` element's comment.
pub(super) fn node_ports(table: &Value, port: u16, proto: &str) -> Vec<DnatRule> {
    let items = items(table);
    let mut found = Vec::new();
    for (key, verdict) in map_elements(items, "service-nodeports") {
        let Some(target) = target_of(verdict).filter(|_| is_port(key, port, proto)) else {
            continue;
        };
        let rule = format!("service-nodeports {{ {proto} . {port} : goto {target} }}");
        found.extend(to_service(items, target, rule, Via::NODE_PORT));
    }
    for (key, verdict) in map_elements(items, "no-endpoint-nodeports") {
        if is_port(key, port, proto) {
            let rule = format!("no-endpoint-nodeports {{ {proto} . {port} ");
            let named = without_endpoints(&found, key, verdict, rule, Via::NODE_PORT);
            found.extend(named);
        }
    }
    found
}

/// kube-proxy's rules in one table's JSON for the `service-ips` elements
/// (address . `proto` . `port`) whose address is one of this node's
/// (`local`) and is taken by a bind to `bind` (its address and
/// IPV6_V6ONLY: that address, or the wildcard of its family; `::` both
/// unless IPV6_V6ONLY): an externalIP or a
/// LoadBalancer IP that the node holds, whose traffic kube-proxy sends to
/// the Service before any socket sees it, as it does a NodePort's. A
/// ClusterIP is on no device of the node, so the same test leaves it out.
/// With no endpoints, the `no-endpoint-services` element's comment names
/// the Service.
pub(super) fn service_ips(
    table: &Value,
    local: &[IpAddr],
    bind: (IpAddr, bool),
    port: u16,
    proto: &str,
) -> Vec<DnatRule> {
    let items = items(table);
    let steered = |key: &Value| {
        service_ip(key, port, proto).filter(|ip| local.contains(ip) && takes(bind, *ip))
    };
    let via = |ip| Via {
        kind: service_ip_kind(items, ip, port, proto),
        address: Some(ip),
    };
    let mut found = Vec::new();
    for (key, verdict) in map_elements(items, "service-ips") {
        let (Some(ip), Some(target)) = (steered(key), target_of(verdict)) else {
            continue;
        };
        let rule = format!("service-ips {{ {ip} . {proto} . {port} : goto {target} }}");
        found.extend(to_service(items, target, rule, via(ip)));
    }
    for (key, verdict) in map_elements(items, "no-endpoint-services") {
        if let Some(ip) = steered(key) {
            let rule = format!("no-endpoint-services {{ {ip} . {proto} . {port} ");
            let named = without_endpoints(&found, key, verdict, rule, via(ip));
            found.extend(named);
        }
    }
    found
}

/// The table's objects (`{"nftables": [...]}`).
fn items(table: &Value) -> &[Value] {
    table["nftables"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// How a map's element reaches its Service: [`KubeService`]'s `kind` and
/// `address`.
#[derive(Debug, Clone, Copy)]
struct Via {
    kind: &'static str,
    address: Option<IpAddr>,
}

impl Via {
    /// A NodePort: every node address.
    const NODE_PORT: Via = Via {
        kind: "NodePort",
        address: None,
    };

    /// `service` as reached this way.
    fn of(self, service: KubeService) -> KubeService {
        KubeService {
            kind: self.kind.into(),
            address: self.address.map(|a| a.to_string()),
            ..service
        }
    }
}

/// The rule for a verdict map's element that goes to `target`: the
/// Service named from the chain's name, with every address its endpoint
/// chains DNAT to.
fn to_service(items: &[Value], target: &str, rule: String, via: Via) -> Option<DnatRule> {
    let service = via.of(service_of_chain(target)?);
    let mut endpoints = Vec::new();
    follow(items, target, &mut endpoints, &mut Vec::new());
    endpoints.sort();
    endpoints.dedup();
    Some(DnatRule {
        rule,
        to: endpoints.first().cloned(),
        service: Some(service),
        endpoints,
        ..DnatRule::default()
    })
}

/// The rule for an element of a `no-endpoint-…` map (`rule` is its text
/// up to the key's end), named from its comment; None without one, or
/// when `found` already names that Service.
fn without_endpoints(
    found: &[DnatRule],
    key: &Value,
    verdict: &Value,
    rule: String,
    via: Via,
) -> Option<DnatRule> {
    let service = via.of(key["elem"]["comment"].as_str().and_then(service_of)?);
    if found.iter().any(|r| r.service.as_ref() == Some(&service)) {
        return None;
    }
    Some(DnatRule {
        rule: format!(
            "{rule}comment \"{}:{}\" : {} }}",
            service.label(),
            service.port_name,
            verdict_word(verdict)
        ),
        service: Some(service),
        ..DnatRule::default()
    })
}

/// How kube-proxy's table says traffic to `ip` reaches a Service: its
/// `cluster-ips` set holds the ClusterIPs, its `firewall-ips` map the
/// LoadBalancer IPs that have source ranges; any other `service-ips`
/// address is an externalIP or a LoadBalancer IP, which its proxier writes
/// alike (both `goto external-…`): the table cannot tell them apart.
fn service_ip_kind(items: &[Value], ip: IpAddr, port: u16, proto: &str) -> &'static str {
    let cluster_ip = items
        .iter()
        .map(|i| &i["set"])
        .filter(|s| s["table"] == TABLE && s["name"] == "cluster-ips")
        .flat_map(|s| s["elem"].as_array().map(Vec::as_slice).unwrap_or(&[]))
        .any(|e| e.as_str().and_then(|a| a.parse().ok()) == Some(ip));
    let firewalled =
        || map_elements(items, "firewall-ips").any(|(k, _)| service_ip(k, port, proto) == Some(ip));
    if cluster_ip {
        "ClusterIP"
    } else if firewalled() {
        "LoadBalancer"
    } else {
        KIND_EXTERNAL
    }
}

/// Whether a bind to `bind` (its address and IPV6_V6ONLY) receives
/// traffic for `ip`: the bind rules' own address overlap (the same
/// address, or the wildcard of its family; `::` takes IPv4's too unless
/// IPV6_V6ONLY).
fn takes(bind: (IpAddr, bool), ip: IpAddr) -> bool {
    let (addr, v6only) = bind;
    overlaps((Family::of(addr), addr, v6only), (Family::of(ip), ip, None)).is_some()
}

/// The (key, verdict) pairs of the verdict map `name` of kube-proxy's table.
fn map_elements<'a>(
    items: &'a [Value],
    name: &'a str,
) -> impl Iterator<Item = (&'a Value, &'a Value)> {
    items
        .iter()
        .map(|i| &i["map"])
        .filter(move |m| m["table"] == TABLE && m["name"] == name)
        .flat_map(|m| m["elem"].as_array().map(Vec::as_slice).unwrap_or(&[]))
        .filter_map(|e| Some((e.get(0)?, e.get(1)?)))
}

/// A map key's parts: `{"concat": [...]}`, or that inside `{"elem":
/// {"val": …, "comment": …}}` when it has a comment.
fn key_parts(key: &Value) -> &[Value] {
    let key = key.get("elem").map_or(key, |e| &e["val"]);
    key["concat"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Whether a map key is `proto . port` (`["tcp", 30080]`).
fn is_port(key: &Value, port: u16, proto: &str) -> bool {
    match key_parts(key) {
        [p, n] => p.as_str() == Some(proto) && n.as_u64() == Some(u64::from(port)),
        _ => false,
    }
}

/// The address of a map key `address . proto . port`
/// (`["192.168.0.2", "tcp", 80]`) when it is for `port` of `proto`.
fn service_ip(key: &Value, port: u16, proto: &str) -> Option<IpAddr> {
    match key_parts(key) {
        [a, p, n] if p.as_str() == Some(proto) && n.as_u64() == Some(u64::from(port)) => {
            a.as_str()?.parse().ok()
        }
        _ => None,
    }
}

/// The chain a verdict (`{"goto": {"target": …}}`, or a jump) leads to.
fn target_of(verdict: &Value) -> Option<&str> {
    ["goto", "jump"]
        .iter()
        .find_map(|v| verdict.get(v)?.get("target")?.as_str())
}

/// `drop`, `goto reject-chain`, as nft writes a verdict.
fn verdict_word(verdict: &Value) -> String {
    if let Some(t) = target_of(verdict) {
        return format!("goto {t}");
    }
    verdict
        .as_object()
        .and_then(|o| o.keys().next())
        .cloned()
        .unwrap_or_default()
}

/// The Service of a chain named `PREFIX-HASH-ns/name/proto/port` (the
/// port's name, empty for an unnamed port), as kube-proxy names its
/// `service-`, `external-`, `local-` and `endpoint-` chains.
fn service_of_chain(chain: &str) -> Option<KubeService> {
    let mut parts = chain.splitn(3, '-');
    let (_prefix, _hash, rest) = (parts.next()?, parts.next()?, parts.next()?);
    let rest = rest.split("__").next()?;
    let mut fields = rest.split('/');
    let (ns, name, _proto, port) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    if fields.next().is_some() {
        return None;
    }
    service_of(&format!("{ns}/{name}:{port}"))
}

/// Adds the DNAT destinations reachable from `chain` to `to`, through every
/// goto and jump of its rules (verdict maps' too); each chain once, at most
/// 64 (a ruleset is data, not trusted to be a tree).
fn follow<'a>(items: &'a [Value], chain: &'a str, to: &mut Vec<String>, seen: &mut Vec<&'a str>) {
    if seen.contains(&chain) || seen.len() >= 64 {
        return;
    }
    seen.push(chain);
    let rules = items
        .iter()
        .map(|i| &i["rule"])
        .filter(|r| r["table"] == TABLE && r["chain"] == chain);
    for rule in rules {
        let mut targets = Vec::new();
        walk(&rule["expr"], &mut targets, to);
        for next in targets {
            follow(items, next, to, seen);
        }
    }
}

/// Collects, from a rule's expressions, the chains it goes to and the
/// addresses it DNATs to (`{"dnat": {"addr": "10.0.0.5", "port": 80}}`;
/// IPv6 ones as `[addr]:port`). Depth-limited: the JSON is untrusted.
fn walk<'a>(v: &'a Value, targets: &mut Vec<&'a str>, to: &mut Vec<String>) {
    fn go<'a>(v: &'a Value, depth: u8, targets: &mut Vec<&'a str>, to: &mut Vec<String>) {
        if depth > 16 {
            return;
        }
        match v {
            Value::Array(a) => a.iter().for_each(|x| go(x, depth + 1, targets, to)),
            Value::Object(o) => {
                if let Some(t) = target_of(v) {
                    targets.push(t);
                }
                if let Some(d) = o.get("dnat") {
                    to.extend(dnat_to(d));
                }
                o.values().for_each(|x| go(x, depth + 1, targets, to));
            }
            _ => {}
        }
    }
    go(v, 0, targets, to);
}

/// `10.0.0.5:80`, `[fd00::5]:80` or the bare address.
fn dnat_to(d: &Value) -> Option<String> {
    let addr = d["addr"].as_str()?;
    let addr = if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_owned()
    };
    Some(match d["port"].as_u64() {
        Some(p) => format!("{addr}:{p}"),
        None => addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What nft 1.0.6 (Debian 12) printed with `-j list table ip kube-proxy`
    /// for kube-proxy's rules of NodePort 30080 of Service shop/web (port
    /// `http`, endpoints 10.244.0.5:8080 and 10.244.0.6:8080) and of a
    /// Service without endpoints (shop/dns, UDP 30053), trimmed to the maps
    /// and rules read here.
    const TABLE_JSON: &str = r#"{"nftables": [
      {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
      {"table": {"family": "ip", "name": "kube-proxy", "handle": 1, "comment": "rules for kube-proxy"}},
      {"map": {"family": "ip", "name": "no-endpoint-nodeports", "table": "kube-proxy", "type": ["inet_proto", "inet_service"], "handle": 4, "map": "verdict",
        "elem": [[{"elem": {"val": {"concat": ["udp", 30053]}, "comment": "shop/dns:"}}, {"drop": null}]]}},
      {"map": {"family": "ip", "name": "service-nodeports", "table": "kube-proxy", "type": ["inet_proto", "inet_service"], "handle": 7, "comment": "NodePort traffic", "map": "verdict",
        "elem": [[{"concat": ["tcp", 30080]}, {"goto": {"target": "external-KHN6ECMT-shop/web/tcp/http"}}]]}},
      {"rule": {"family": "ip", "table": "kube-proxy", "chain": "mark-for-masquerade", "handle": 36, "expr": [{"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, 16384]}}}]}},
      {"rule": {"family": "ip", "table": "kube-proxy", "chain": "service-KHN6ECMT-shop/web/tcp/http", "handle": 51, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.96.0.50"}},
        {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}},
        {"jump": {"target": "mark-for-masquerade"}}]}},
      {"rule": {"family": "ip", "table": "kube-proxy", "chain": "service-KHN6ECMT-shop/web/tcp/http", "handle": 53, "expr": [
        {"vmap": {"key": {"numgen": {"mode": "random", "mod": 2, "offset": 0}}, "data": {"set": [
          [0, {"goto": {"target": "endpoint-YDREIN3S-shop/web/tcp/http__10.244.0.5/8080"}}],
          [1, {"goto": {"target": "endpoint-K6YIHJT7-shop/web/tcp/http__10.244.0.6/8080"}}]]}}}]}},
      {"rule": {"family": "ip", "table": "kube-proxy", "chain": "external-KHN6ECMT-shop/web/tcp/http", "handle": 54, "expr": [{"jump": {"target": "mark-for-masquerade"}}]}},
      {"rule": {"family": "ip", "table": "kube-proxy", "chain": "external-KHN6ECMT-shop/web/tcp/http", "handle": 55, "expr": [{"goto": {"target": "service-KHN6ECMT-shop/web/tcp/http"}}]}},
      {"rule": {"family": "ip", "table": "kube-proxy", "chain": "endpoint-YDREIN3S-shop/web/tcp/http__10.244.0.5/8080", "handle": 57, "expr": [
        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"dnat": {"addr": "10.244.0.5", "port": 8080}}]}},
      {"rule": {"family": "ip", "table": "kube-proxy", "chain": "endpoint-K6YIHJT7-shop/web/tcp/http__10.244.0.6/8080", "handle": 59, "expr": [
        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"dnat": {"addr": "10.244.0.6", "port": 8080}}]}},
      {"rule": {"family": "ip", "table": "kube-proxy", "chain": "endpoint-LOOP", "handle": 60, "expr": [{"goto": {"target": "endpoint-LOOP"}}]}}
    ]}"#;

    #[test]
    fn node_port_to_its_service_and_endpoints() {
        let table: Value = serde_json::from_str(TABLE_JSON).unwrap();
        let r = node_ports(&table, 30080, "tcp");
        assert_eq!(r.len(), 1, "{r:?}");
        let s = r[0].service.as_ref().unwrap();
        assert_eq!(
            (s.label().as_str(), s.port_name.as_str()),
            ("shop/web", "http")
        );
        assert_eq!(s.kind, "NodePort");
        assert_eq!(r[0].endpoints, ["10.244.0.5:8080", "10.244.0.6:8080"]);
        assert_eq!(r[0].to.as_deref(), Some("10.244.0.5:8080"));
        assert_eq!(
            r[0].rule,
            "service-nodeports { tcp . 30080 : goto external-KHN6ECMT-shop/web/tcp/http }"
        );
        assert_eq!(node_ports(&table, 30080, "udp"), vec![]);
        assert_eq!(node_ports(&table, 30081, "tcp"), vec![]);
    }

    /// A NodePort whose Service has no endpoints: named from the element's
    /// comment; nothing to DNAT to (kube-proxy drops or rejects it).
    #[test]
    fn node_port_without_endpoints() {
        let table: Value = serde_json::from_str(TABLE_JSON).unwrap();
        let r = node_ports(&table, 30053, "udp");
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].service.as_ref().unwrap().label(), "shop/dns");
        assert_eq!(r[0].endpoints, Vec::<String>::new());
        assert!(r[0].rule.ends_with(": drop }"), "{}", r[0].rule);
    }

    #[test]
    fn chain_names_and_addresses() {
        let s = service_of_chain("endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80").unwrap();
        assert_eq!(
            (s.label().as_str(), s.port_name.as_str()),
            ("ns1/svc1", "p80")
        );
        let s = service_of_chain("external-42NFTM6N-kube-system/kube-dns/udp/").unwrap();
        assert_eq!(
            (s.label().as_str(), s.port_name.as_str()),
            ("kube-system/kube-dns", "")
        );
        // An IPv6 endpoint's chain: kube-proxy writes its colons as dots.
        let s = service_of_chain("endpoint-5QWG3TD2-shop/web/tcp/http__fd00.10..5/8080").unwrap();
        assert_eq!(s.label(), "shop/web");
        assert_eq!(service_of_chain("services"), None);
        assert_eq!(service_of_chain("external-X-a/b/tcp/p/extra"), None);
        assert_eq!(service_of_chain("external-X-Robert'); DROP/x/tcp/y"), None);
        let v6: Value = serde_json::json!({"family": "ip6", "addr": "fd00:10::5", "port": 80});
        assert_eq!(dnat_to(&v6).as_deref(), Some("[fd00:10::5]:80"));
        assert!(listed("table ip nat {\ntable ip kube-proxy {\n", "ip"));
        assert!(!listed("table ip kube-proxy {\n", "ip6"));
    }

    /// What nft 1.0.6 printed with `-j list table ip kube-proxy` here for
    /// kube-proxy's `service-ips` elements of Service shop/web (port `http`,
    /// endpoint 10.244.0.5:8080): its ClusterIP 10.96.0.50, externalIP
    /// 192.168.0.2 and LoadBalancer IP 192.168.0.3 with source ranges (so
    /// also in `firewall-ips`), as pkg/proxy/nftables/proxier.go writes
    /// them; and Service shop/dns without endpoints on 192.168.0.2 (UDP
    /// 53), trimmed to the sets, maps and rules read here.
    const SERVICE_IPS_JSON: &str = r#"{"nftables": [
      {"set": {"family": "ip", "name": "cluster-ips", "table": "kube-proxy", "type": "ipv4_addr", "handle": 1, "comment": "Active ClusterIPs", "elem": ["10.96.0.50", "10.96.0.53"]}},
      {"map": {"family": "ip", "name": "firewall-ips", "table": "kube-proxy", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 2, "comment": "destinations that are subject to LoadBalancerSourceRanges", "map": "verdict", "elem": [[{"elem": {"val": {"concat": ["192.168.0.3", "tcp", 80]}, "comment": "shop/web:http"}}, {"goto": {"target": "firewall-KHN6ECMT-shop/web/tcp/http"}}]]}},
      {"map": {"family": "ip", "name": "no-endpoint-services", "table": "kube-proxy", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 3, "comment": "vmap to drop or reject packets to services with no endpoints", "map": "verdict", "elem": [[{"elem": {"val": {"concat": ["192.168.0.2", "udp", 53]}, "comment": "shop/dns:dns"}}, {"goto": {"target": "reject-chain"}}], [{"elem": {"val": {"concat": ["10.96.0.53", "udp", 53]}, "comment": "shop/dns:dns"}}, {"goto": {"target": "reject-chain"}}]]}},
      {"map": {"family": "ip", "name": "service-ips", "table": "kube-proxy", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 4, "comment": "ClusterIP, ExternalIP and LoadBalancer IP traffic", "map": "verdict", "elem": [[{"concat": ["192.168.0.2", "tcp", 80]}, {"goto": {"target": "external-KHN6ECMT-shop/web/tcp/http"}}], [{"concat": ["192.168.0.3", "tcp", 80]}, {"goto": {"target": "external-KHN6ECMT-shop/web/tcp/http"}}], [{"concat": ["10.96.0.50", "tcp", 80]}, {"goto": {"target": "service-KHN6ECMT-shop/web/tcp/http"}}]]}},
      {"rule": {"family": "ip", "table": "kube-proxy", "chain": "service-KHN6ECMT-shop/web/tcp/http", "handle": 14, "expr": [{"vmap": {"key": {"numgen": {"mode": "random", "mod": 1, "offset": 0}}, "data": {"set": [[0, {"goto": {"target": "endpoint-YDREIN3S-shop/web/tcp/http__10.244.0.5/8080"}}]]}}}]}},
      {"rule": {"family": "ip", "table": "kube-proxy", "chain": "external-KHN6ECMT-shop/web/tcp/http", "handle": 15, "expr": [{"jump": {"target": "mark-for-masquerade"}}]}},
      {"rule": {"family": "ip", "table": "kube-proxy", "chain": "external-KHN6ECMT-shop/web/tcp/http", "handle": 16, "expr": [{"goto": {"target": "service-KHN6ECMT-shop/web/tcp/http"}}]}},
      {"rule": {"family": "ip", "table": "kube-proxy", "chain": "endpoint-YDREIN3S-shop/web/tcp/http__10.244.0.5/8080", "handle": 18, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"dnat": {"addr": "10.244.0.5", "port": 8080}}]}}
    ]}"#;

    /// (kind, address) of each rule `service_ips` finds.
    fn kinds(local: &[&str], bind: &str, port: u16, proto: &str) -> Vec<(String, String)> {
        let table: Value = serde_json::from_str(SERVICE_IPS_JSON).unwrap();
        let local: Vec<IpAddr> = local.iter().map(|a| a.parse().unwrap()).collect();
        service_ips(&table, &local, (bind.parse().unwrap(), false), port, proto)
            .into_iter()
            .map(|r| {
                let s = r.service.unwrap();
                (s.kind, s.address.unwrap_or_default())
            })
            .collect()
    }

    /// A Service address the node holds steers the port for a bind that
    /// takes that address's traffic: the wildcard (`::` too), or the
    /// address itself; a ClusterIP only where the node holds it.
    #[test]
    fn service_ips_on_node_addresses() {
        let node = ["127.0.0.1", "192.168.0.2", "192.168.0.3"];
        let both = [
            ("External".to_owned(), "192.168.0.2".to_owned()),
            ("LoadBalancer".to_owned(), "192.168.0.3".to_owned()),
        ];
        assert_eq!(kinds(&node, "0.0.0.0", 80, "tcp"), both);
        assert_eq!(kinds(&node, "::", 80, "tcp"), both);
        let table: Value = serde_json::from_str(SERVICE_IPS_JSON).unwrap();
        let local: Vec<IpAddr> = node.iter().map(|a| a.parse().unwrap()).collect();
        let v6only = (IpAddr::from([0u16; 8]), true);
        assert_eq!(service_ips(&table, &local, v6only, 80, "tcp"), []);
        assert_eq!(kinds(&node, "192.168.0.3", 80, "tcp"), both[1..]);
        assert_eq!(kinds(&node, "::ffff:192.168.0.2", 80, "tcp"), both[..1]);
        assert_eq!(kinds(&node, "127.0.0.1", 80, "tcp"), []);
        assert_eq!(kinds(&node, "::1", 80, "tcp"), []);
        assert_eq!(kinds(&node, "0.0.0.0", 81, "tcp"), []);
        assert_eq!(kinds(&node, "0.0.0.0", 80, "udp"), []);
        assert_eq!(kinds(&["192.168.0.9"], "0.0.0.0", 80, "tcp"), []);
        assert_eq!(
            kinds(&["10.96.0.50"], "0.0.0.0", 80, "tcp"),
            [("ClusterIP".to_owned(), "10.96.0.50".to_owned())]
        );

        let table: Value = serde_json::from_str(SERVICE_IPS_JSON).unwrap();
        let local = ["192.168.0.2".parse().unwrap()];
        let r = service_ips(
            &table,
            &local,
            ("0.0.0.0".parse().unwrap(), false),
            80,
            "tcp",
        );
        let s = r[0].service.as_ref().unwrap();
        assert_eq!(
            (s.label().as_str(), s.port_name.as_str()),
            ("shop/web", "http")
        );
        assert_eq!(s.how(), "externalIP or LoadBalancer IP 192.168.0.2");
        assert_eq!(r[0].endpoints, ["10.244.0.5:8080"]);
        assert_eq!(
            r[0].rule,
            "service-ips { 192.168.0.2 . tcp . 80 : goto external-KHN6ECMT-shop/web/tcp/http }"
        );
        // No endpoints: named from the element's comment.
        let r = service_ips(
            &table,
            &local,
            ("0.0.0.0".parse().unwrap(), false),
            53,
            "udp",
        );
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].service.as_ref().unwrap().label(), "shop/dns");
        assert_eq!(
            r[0].rule,
            "no-endpoint-services { 192.168.0.2 . udp . 53 comment \"shop/dns:dns\" : goto reject-chain }"
        );
    }
}
