//! Ports published by address translation. Where no socket holds the port
//! (Kubernetes hostPort through CNI's portmap, kube-proxy's NodePort rules,
//! a hand-made port forward), a bind() to it succeeds, but the traffic never
//! reaches it: the `nat` table's DNAT rules send it elsewhere first. Docker
//! writes such a rule too, but also holds the port with a socket:
//! docker-proxy's with `userland-proxy=true` (the default), dockerd's own
//! with `userland-proxy=false` (seen with 20.10, and so in moby's current
//! source; docs/holders.md), so there the rule is listed beside the holder.
//!
//! The rules are read with the distribution's own `iptables-save` and
//! `ip6tables-save` (which also show iptables-nft's rules), `nft list
//! ruleset` (native nftables rules) and, only where the legacy `nat` table
//! exists, `iptables-legacy-save` ([`LEGACY_LISTERS`]), in the calling
//! thread's network namespace, once per batch of the verdict engine (`who`,
//! `wait`): never on `watch`'s path. kube-proxy's own nftables tables are
//! read again as JSON where that listing shows them ([`kube_proxy_nft`]),
//! and IPVS's virtual servers through netlink where the module is loaded
//! ([`ipvs`]).
//!
//! Netfilter state is read, never written: `iptables-save` is run without
//! `-t nat`, because naming a table makes legacy iptables load it (the
//! kernel registers the nat table and its hooks in that namespace on first
//! use) where none was; without `-t` it dumps only the tables that exist,
//! and the `*nat` section is picked here. Each tool runs with a deadline
//! ([`TIMEOUT`]): one stuck on the xtables lock costs that, not a hang.

pub mod ipam;
mod ipvs;
mod kube_proxy_nft;

use std::{net::IpAddr, path::Path, process::Command, time::Duration};

use ipvs::KUBE_IPVS_DEVICE;
use nix::ifaddrs::InterfaceAddress;
use serde::{Deserialize, Serialize};

use super::{containers::Pod, devices::ip_of};

/// A rule that redirects traffic for a port elsewhere.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnatRule {
    /// Which tool listed it: `iptables`, `ip6tables` or `nft`;
    /// `iptables-legacy` or `ip6tables-legacy` for legacy iptables' rules
    /// (beside iptables-nft's); `ipvs` for IPVS virtual servers (read
    /// through netlink).
    pub from: String,
    /// The rule as the tool printed it (untrusted: comments are free text).
    pub rule: String,
    /// Where it sends the traffic, when the rule says (`10.0.0.2:80`).
    pub to: Option<String>,
    /// The Kubernetes Service kube-proxy sends the port to, named from its
    /// rules' comments, when the rule is kube-proxy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<KubeService>,
    /// Every endpoint the Service's chains DNAT to (`to` is the first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// The pod sandbox a CNI portmap rule (a Kubernetes hostPort) was
    /// made for: the container id its `CNI-HOSTPORT-DNAT` rule's comment
    /// names (`dnat name: "NET" id: "ID"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// That sandbox's pod, named from its runtime's files (with the
    /// container when the pod has one only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
    /// The pods among `endpoints`, where the node's records name them
    /// (CNI host-local's address records, see [`ipam`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint_pods: Vec<EndpointPod>,
    /// Who made it, where `service` does not say and the node does:
    /// `kube-proxy` for IPVS virtual servers beside its `kube-ipvs0`
    /// device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made_by: Option<String>,
    /// The nft table that holds it (`ip nat`, `ip6 kube-proxy`, `inet
    /// filter`): its family says which addresses' traffic it steers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
}

/// An endpoint of a Service (or an IPVS real server) that is a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPod {
    /// The endpoint, as in `endpoints`.
    pub endpoint: String,
    /// The pod holding its address.
    pub pod: Pod,
}

/// A Service as kube-proxy's rule comments name it (`ns/name:port`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeService {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The Service port's name (empty for an unnamed port).
    pub port_name: String,
    /// How the port reaches it: `NodePort`; for a Service address of
    /// the node (kube-proxy's nftables `service-ips` map), `ClusterIP`,
    /// `LoadBalancer` (one with source ranges), or `External`: an
    /// externalIP or a LoadBalancer IP, which kube-proxy's table writes
    /// alike.
    pub kind: String,
    /// The node's address that kube-proxy takes the port's traffic on,
    /// for every kind but `NodePort` (which takes it on all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

impl KubeService {
    /// `shop/web`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// How the port reaches it, in words: `NodePort`, `externalIP or
    /// LoadBalancer IP 192.168.0.2` (untrusted text: escape it to print).
    pub fn how(&self) -> String {
        let kind = match self.kind.as_str() {
            KIND_EXTERNAL => "externalIP or LoadBalancer IP",
            "LoadBalancer" => "LoadBalancer IP",
            k => k,
        };
        match &self.address {
            Some(a) => format!("{kind} {a}"),
            None => kind.to_owned(),
        }
    }
}

/// The kind of a Service address that is an externalIP or a LoadBalancer
/// IP: kube-proxy's nftables table writes both alike.
pub const KIND_EXTERNAL: &str = "External";

/// The programs, by absolute path: a root tool never runs whatever a PATH
/// entry offers under these names.
const LISTERS: [(&str, &[&str], &str); 3] = [
    ("/usr/sbin/iptables-save", &[], "iptables"),
    ("/usr/sbin/ip6tables-save", &[], "ip6tables"),
    ("/usr/sbin/nft", &["list", "ruleset"], "nft"),
];

/// An iptables-legacy lister. Its rules are invisible to nft and to
/// iptables-nft's `iptables-save`, so a node whose kube-proxy or CNI plugin
/// runs the legacy binaries needs it; but only then, to keep each `who` at
/// few subprocesses.
struct LegacyLister {
    /// The file of this namespace's /proc that names the legacy tables of
    /// its family: `nat` once a legacy nat rule was written here, empty on
    /// a node that never used them.
    tables: &'static str,
    /// The lister.
    program: &'static str,
    /// The family's `iptables-save`, which is the same program where the
    /// node chose legacy iptables (Debian's alternatives).
    save: &'static str,
    /// Its name in [`DnatRule::from`].
    from: &'static str,
}

/// IPv4's and IPv6's legacy listers.
const LEGACY_LISTERS: [LegacyLister; 2] = [
    LegacyLister {
        tables: "/proc/thread-self/net/ip_tables_names",
        program: "/usr/sbin/iptables-legacy-save",
        save: "/usr/sbin/iptables-save",
        from: "iptables-legacy",
    },
    LegacyLister {
        tables: "/proc/thread-self/net/ip6_tables_names",
        program: "/usr/sbin/ip6tables-legacy-save",
        save: "/usr/sbin/ip6tables-save",
        from: "ip6tables-legacy",
    },
];

/// How long one lister may take.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// The `nat` tables as each tool listed them, read once for any number of
/// ports (`who` and `check` ask about several).
#[derive(Debug, Clone, Default)]
pub struct NatTables {
    /// (tool, its output).
    listed: Vec<(&'static str, String)>,
    /// kube-proxy's nftables tables, as `nft -j` listed them.
    kube_nft: Vec<(&'static str, serde_json::Value)>,
    /// IPVS's virtual servers.
    ipvs: Vec<ipvs::VirtualServer>,
    /// Whether kube-proxy's IPVS device is in this namespace.
    kube_ipvs: bool,
    /// This namespace's addresses, read where kube-proxy's nftables
    /// tables are (its `service-ips` map steers those it holds).
    local: Vec<IpAddr>,
}

impl NatTables {
    /// Runs each tool once in this thread's network namespace; tools that
    /// are missing are passed over, and each that fails or times out is
    /// passed over with its error on stderr (the answer then goes without
    /// that tool's rules).
    pub fn read() -> Self {
        let mut listed = Vec::new();
        for (program, args, from) in LISTERS {
            if let Some(out) = list(program, args) {
                listed.push((from, String::from_utf8_lossy(&out).into_owned()));
            }
        }
        listed.extend(legacy_listings());
        let mut kube_nft = Vec::new();
        let ruleset = listed.iter().find(|(from, _)| *from == "nft");
        for family in kube_proxy_nft::FAMILIES {
            if !ruleset.is_some_and(|(_, text)| kube_proxy_nft::listed(text, family)) {
                continue;
            }
            let json = list("/usr/sbin/nft", &kube_proxy_nft::list_args(family))
                .map(|out| serde_json::from_slice(&out));
            match json {
                Some(Ok(table)) => kube_nft.push((family, table)),
                Some(Err(e)) => eprintln!("portwatch: kube-proxy's {family} table not read: {e}"),
                None => {}
            }
        }
        let ipvs = ipvs::read().unwrap_or_else(|e| {
            eprintln!("portwatch: IPVS virtual servers not read: {e}");
            Vec::new()
        });
        // The namespace's addresses, only where a rule depends on them.
        let addrs: Vec<InterfaceAddress> = if ipvs.is_empty() && kube_nft.is_empty() {
            Vec::new()
        } else {
            nix::ifaddrs::getifaddrs().map_or(Vec::new(), Iterator::collect)
        };
        let kube_ipvs =
            !ipvs.is_empty() && addrs.iter().any(|a| a.interface_name == KUBE_IPVS_DEVICE);
        Self {
            listed,
            kube_nft,
            ipvs,
            kube_ipvs,
            local: addrs
                .iter()
                .filter_map(|a| a.address.as_ref().and_then(ip_of))
                .collect(),
        }
    }

    /// The nft tables whose rules iptables-nft's `iptables-save` or
    /// `ip6tables-save` already listed (`table ip nat`, `table ip6 nat`):
    /// `nft list ruleset` shows the same rules again, so they are read
    /// once, from the iptables listing that names their chains. A legacy
    /// iptables' rules are not in nft's listing at all.
    fn iptables_nft_tables(&self) -> Vec<&'static str> {
        self.listed
            .iter()
            .filter(|(_, text)| text.contains("(nf_tables)") && text.contains("\n*nat"))
            .filter_map(|(from, _)| match *from {
                "iptables" => Some("ip nat"),
                "ip6tables" => Some("ip6 nat"),
                _ => None,
            })
            .collect()
    }

    /// The DNAT rules for destination port `port` of `proto` ("tcp", "udp"),
    /// for a bind to `addr` with IPV6_V6ONLY `v6only` (a rule keyed by a
    /// Service address counts where that bind takes the address's traffic).
    pub fn rules(&self, addr: IpAddr, v6only: bool, port: u16, proto: &str) -> Vec<DnatRule> {
        let mut rules = Vec::new();
        let shown = self.iptables_nft_tables();
        for (from, text) in &self.listed {
            let matched = if *from == "nft" {
                nft_rules(text, port, proto, &shown)
            } else {
                let mut found = kube_node_ports(text, port, proto);
                found.extend(iptables_rules(text, port, proto));
                found
            };
            rules.extend(matched.into_iter().map(|mut r| {
                r.from = (*from).to_owned();
                r
            }));
        }
        for (family, table) in &self.kube_nft {
            let mut found = kube_proxy_nft::node_ports(table, port, proto);
            found.extend(kube_proxy_nft::service_ips(
                table,
                &self.local,
                (addr, v6only),
                port,
                proto,
            ));
            rules.extend(found.into_iter().map(|r| DnatRule {
                from: "nft".into(),
                table: Some(format!("{family} kube-proxy")),
                ..r
            }));
        }
        rules.extend(
            ipvs::rules(&self.ipvs, port, proto)
                .into_iter()
                .map(|r| DnatRule {
                    made_by: self.kube_ipvs.then(|| "kube-proxy".into()),
                    ..r
                }),
        );
        rules
    }
}

/// The legacy listers' outputs, of those [`legacy_to_list`] runs.
fn legacy_listings() -> Vec<(&'static str, String)> {
    let mut listed = Vec::new();
    for legacy in &LEGACY_LISTERS {
        let tables = std::fs::read_to_string(legacy.tables).unwrap_or_default();
        if !legacy_to_list(&tables, legacy.program, legacy.save) {
            continue;
        }
        match list(legacy.program, &[]) {
            Some(out) => listed.push((legacy.from, String::from_utf8_lossy(&out).into_owned())),
            None if !crate::caps::effective().has(crate::caps::NET_RAW) => eprintln!(
                "portwatch: {} needs CAP_NET_RAW beside CAP_NET_ADMIN (a raw socket); \
                 in a pod, add NET_RAW to its capabilities (docs/deploy.md)",
                legacy.program
            ),
            None => {}
        }
    }
    listed
}

/// Whether to run iptables-legacy's lister `program`: the legacy `nat`
/// table exists in this namespace (`tables`, the /proc file that names
/// them), and `iptables_save` (what the node's `iptables-save` is) is not
/// that same legacy program, which has listed those rules already (Debian's
/// `update-alternatives --set iptables /usr/sbin/iptables-legacy`).
fn legacy_to_list(tables: &str, program: &str, iptables_save: &str) -> bool {
    if !tables.lines().any(|t| t == "nat") {
        return false;
    }
    let real = |p: &str| std::fs::canonicalize(p).ok();
    match (real(program), real(iptables_save)) {
        (None, _) => false,
        (Some(legacy), Some(save)) => legacy != save,
        (Some(_), None) => true,
    }
}

/// `program`'s output with `args`, when it is installed; None (and the
/// error on stderr) when it fails or times out.
fn list(program: &str, args: &[&str]) -> Option<Vec<u8>> {
    if !Path::new(program).exists() {
        return None;
    }
    let mut cmd = Command::new(program);
    cmd.args(args).env_clear().env("LC_ALL", "C");
    crate::subprocess::output(&mut cmd, TIMEOUT)
        .inspect_err(|e| eprintln!("portwatch: address translation rules not read: {e}"))
        .ok()
}

/// `-A CHAIN ... -p tcp ... --dport 8080 ... -j DNAT --to-destination IP:PORT`
/// lines (also `--dports A,B:C` of the multiport match).
fn iptables_rules(text: &str, port: u16, proto: &str) -> Vec<DnatRule> {
    nat_section(text)
        .filter(|l| l.starts_with("-A ") && l.contains("-j DNAT"))
        .filter(|l| word_after(l, "-p") == Some(proto))
        .filter(|l| {
            word_after(l, "--dport").is_some_and(|p| in_ports(p, port, ':'))
                || word_after(l, "--dports").is_some_and(|p| in_ports(p, port, ':'))
        })
        .map(|l| DnatRule {
            from: String::new(),
            rule: l.to_owned(),
            to: word_after(l, "--to-destination").map(str::to_owned),
            service: None,
            endpoints: Vec::new(),
            sandbox: portmap_sandbox(text, l),
            ..DnatRule::default()
        })
        .collect()
}

/// The pod sandbox of a CNI portmap DNAT rule (`-A CNI-DN-x ... -j DNAT`):
/// the id in the comment of the `CNI-HOSTPORT-DNAT` rule that jumps to
/// chain `CNI-DN-x` (`dnat name: \"NET\" id: \"ID\"`, as portmap writes
/// it).
fn portmap_sandbox(text: &str, dnat: &str) -> Option<String> {
    let chain = dnat
        .split_whitespace()
        .nth(1)
        .filter(|c| c.starts_with("CNI-DN-"))?;
    let jump = nat_section(text)
        .find(|l| l.starts_with("-A CNI-HOSTPORT-DNAT ") && word_after(l, "-j") == Some(chain))?;
    let id = jump.split("id: \\\"").nth(1)?.get(..64)?;
    id.bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then(|| id.to_ascii_lowercase())
}

/// Chains kube-proxy's iptables mode jumps through from KUBE-NODEPORTS to
/// the endpoints' DNAT: KUBE-EXT (1.24+) or KUBE-XLB (before), KUBE-SVC /
/// KUBE-SVL (all or local endpoints), KUBE-FW (load balancer source
/// ranges), KUBE-SEP (one endpoint, with the DNAT). KUBE-MARK-MASQ and
/// KUBE-MARK-DROP only mark.
const KUBE_CHAINS: [&str; 6] = [
    "KUBE-EXT-",
    "KUBE-XLB-",
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

/// kube-proxy's NodePort rules for `port` (iptables mode): a
/// `-A KUBE-NODEPORTS ... --dport PORT -j KUBE-EXT-...` line (older
/// releases jump to KUBE-SVC-... straight, after a KUBE-MARK-MASQ rule),
/// followed through its chains to the KUBE-SEP chains' DNAT rules, which
/// carry no `--dport` of their own. The Service is named from the rule's
/// comment (`ns/name:port`, as kube-proxy writes it).
fn kube_node_ports(text: &str, port: u16, proto: &str) -> Vec<DnatRule> {
    let nat: Vec<&str> = nat_section(text)
        .filter(|l| l.starts_with("-A KUBE-"))
        .collect();
    let mut found: Vec<DnatRule> = Vec::new();
    for line in nat.iter().filter(|l| l.starts_with("-A KUBE-NODEPORTS ")) {
        if word_after(line, "-p") != Some(proto)
            || !word_after(line, "--dport").is_some_and(|p| in_ports(p, port, ':'))
        {
            continue;
        }
        let Some(target) = word_after(line, "-j").filter(|t| is_kube_chain(t)) else {
            continue;
        };
        let Some(service) = comment(line).and_then(service_of) else {
            continue;
        };
        let mut endpoints = Vec::new();
        follow(&nat, target, &mut endpoints, &mut Vec::new());
        endpoints.sort();
        endpoints.dedup();
        if found.iter().any(|r| r.service.as_ref() == Some(&service)) {
            continue;
        }
        found.push(DnatRule {
            from: String::new(),
            rule: (*line).to_owned(),
            to: endpoints.first().cloned(),
            service: Some(service),
            endpoints,
            ..DnatRule::default()
        });
    }
    found
}

/// Whether `chain` is one kube-proxy's NodePort path goes through.
fn is_kube_chain(chain: &str) -> bool {
    KUBE_CHAINS.iter().any(|p| chain.starts_with(p))
}

/// Adds the DNAT destinations reachable from `chain` to `to`; each chain
/// once (`seen`), at most 64 of them (a ruleset is data, not trusted to be
/// a tree).
fn follow<'a>(nat: &[&'a str], chain: &'a str, to: &mut Vec<String>, seen: &mut Vec<&'a str>) {
    if seen.contains(&chain) || seen.len() >= 64 {
        return;
    }
    seen.push(chain);
    let head = format!("-A {chain} ");
    for line in nat.iter().filter(|l| l.starts_with(&head)) {
        match word_after(line, "-j") {
            Some("DNAT") => to.extend(word_after(line, "--to-destination").map(str::to_owned)),
            Some(next) if is_kube_chain(next) => follow(nat, next, to, seen),
            _ => {}
        }
    }
}

/// The text of a rule's `-m comment --comment`: one word, or a quoted
/// string as iptables-save prints one with spaces.
fn comment(line: &str) -> Option<&str> {
    let rest = &line[line.find("--comment ")? + "--comment ".len()..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next(),
        None => rest.split_whitespace().next(),
    }
}

/// `ns/name:port` (the port's name; empty for an unnamed port), the first
/// word of a kube-proxy comment; None for anything else.
fn service_of(comment: &str) -> Option<KubeService> {
    let word = comment.split_whitespace().next()?;
    let (namespace, rest) = word.split_once('/')?;
    let (name, port_name) = rest.split_once(':').unwrap_or((rest, ""));
    // Kubernetes names: DNS labels (lower case, digits, '-'); port names
    // the same. Anything else is not kube-proxy's.
    let dns = |s: &str| {
        s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    (!namespace.is_empty() && !name.is_empty() && dns(namespace) && dns(name) && dns(port_name))
        .then(|| KubeService {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            port_name: port_name.to_owned(),
            kind: "NodePort".into(),
            address: None,
        })
}

/// The lines of iptables-save's `*nat` table, up to its `COMMIT`.
fn nat_section(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .skip_while(|l| *l != "*nat")
        .skip(1)
        .take_while(|l| *l != "COMMIT")
}

/// `tcp dport 8080 ... dnat to 10.0.0.2:80` (also `dnat ip to`, sets and
/// ranges of ports: `dport { 80, 8080 }`, `dport 8000-8100`).
fn nft_rules(text: &str, port: u16, proto: &str, skip_tables: &[&str]) -> Vec<DnatRule> {
    let mut table = "";
    let mut rules = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("table ") {
            table = name.trim_end_matches('{').trim();
        }
        if skip_tables.contains(&table) || !line.contains("dnat") {
            continue;
        }
        let Some(at) = line.find(&format!("{proto} dport ")) else {
            continue;
        };
        let rest = &line[at + proto.len() + " dport ".len()..];
        let ports = match rest.strip_prefix('{') {
            Some(set) => set.split('}').next().unwrap_or(""),
            None => rest.split(' ').next().unwrap_or(""),
        };
        if ports.split(',').any(|p| in_ports(p.trim(), port, '-')) {
            rules.push(DnatRule {
                rule: line.to_owned(),
                table: Some(table.to_owned()),
                to: line
                    .split(" to ")
                    .nth(1)
                    .and_then(|t| t.split_whitespace().next())
                    .map(str::to_owned),
                ..DnatRule::default()
            });
        }
    }
    rules
}

/// The word after `flag` on a rule line.
fn word_after<'a>(line: &'a str, flag: &str) -> Option<&'a str> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == flag)?;
    words.next()
}

/// Whether `spec` ("8080", "8000:8100", "80,443") takes `port`.
fn in_ports(spec: &str, port: u16, range: char) -> bool {
    spec.split(',').any(|p| match p.split_once(range) {
        Some((lo, hi)) => match (lo.parse::<u16>(), hi.parse::<u16>()) {
            (Ok(lo), Ok(hi)) => (lo..=hi).contains(&port),
            _ => false,
        },
        None => p.parse() == Ok(port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as Debian 12's iptables-save (iptables-nft 1.8.9) prints them
    /// for a port Docker publishes (either proxy setting) and for a CNI
    /// hostPort.
    #[test]
    fn iptables_save_lines() {
        let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
            -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
            -A DOCKER -i docker0 -j RETURN\n\
            -A DOCKER ! -i docker0 -p tcp -m tcp --dport 8083 -j DNAT --to-destination 172.17.0.3:80\n\
            -A CNI-DN-1c2b -p tcp -m tcp --dport 30080 -j DNAT --to-destination 10.88.0.5:8080\n\
            -A KUBE -p udp -m multiport --dports 53,5300:5310 -j DNAT --to-destination 10.96.0.10:53\n\
            COMMIT\n";
        let r = iptables_rules(text, 8083, "tcp");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].to.as_deref(), Some("172.17.0.3:80"));
        assert_eq!(iptables_rules(text, 30080, "tcp").len(), 1);
        assert_eq!(iptables_rules(text, 5305, "udp").len(), 1);
        assert_eq!(iptables_rules(text, 5305, "tcp"), vec![]);
        assert_eq!(iptables_rules(text, 8084, "tcp"), vec![]);
        // Only the nat table's rules (a whole-ruleset dump has the others).
        let filter_first = format!("*filter\n-A FORWARD -p tcp -m tcp --dport 7777 -j DNAT --to-destination 1.2.3.4:1\nCOMMIT\n{text}");
        assert_eq!(iptables_rules(&filter_first, 7777, "tcp"), vec![]);
        assert_eq!(iptables_rules(&filter_first, 8083, "tcp").len(), 1);
    }

    /// kube-proxy 1.28+'s nat table for a NodePort Service with two
    /// endpoints, line for line as its iptables proxier writes them
    /// (pkg/proxy/iptables/proxier.go and the expectations of its
    /// proxier_test.go, names changed to shop/web:http).
    pub(crate) const KUBE_PROXY_NAT: &str = "*nat\n\
        :KUBE-NODEPORTS - [0:0]\n:KUBE-SERVICES - [0:0]\n\
        :KUBE-EXT-QZ7VV5GTKAJA7T3Q - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n\
        :KUBE-POSTROUTING - [0:0]\n:KUBE-SEP-AAAAAAAAAAAAAAAA - [0:0]\n\
        :KUBE-SEP-BBBBBBBBBBBBBBBB - [0:0]\n:KUBE-SVC-QZ7VV5GTKAJA7T3Q - [0:0]\n\
        -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
        -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
        -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
        -A KUBE-NODEPORTS -m comment --comment shop/web:http -m tcp -p tcp --dport 30080 -j KUBE-EXT-QZ7VV5GTKAJA7T3Q\n\
        -A KUBE-SERVICES -m comment --comment \"shop/web:http cluster IP\" -m tcp -p tcp -d 10.96.0.50 --dport 80 -j KUBE-SVC-QZ7VV5GTKAJA7T3Q\n\
        -A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
        -A KUBE-EXT-QZ7VV5GTKAJA7T3Q -m comment --comment \"masquerade traffic for shop/web:http external destinations\" -j KUBE-MARK-MASQ\n\
        -A KUBE-EXT-QZ7VV5GTKAJA7T3Q -j KUBE-SVC-QZ7VV5GTKAJA7T3Q\n\
        -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
        -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
        -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
        -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE\n\
        -A KUBE-SEP-AAAAAAAAAAAAAAAA -m comment --comment shop/web:http -s 10.244.0.5 -j KUBE-MARK-MASQ\n\
        -A KUBE-SEP-AAAAAAAAAAAAAAAA -m comment --comment shop/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.0.5:8080\n\
        -A KUBE-SEP-BBBBBBBBBBBBBBBB -m comment --comment shop/web:http -s 10.244.0.6 -j KUBE-MARK-MASQ\n\
        -A KUBE-SEP-BBBBBBBBBBBBBBBB -m comment --comment shop/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.0.6:8080\n\
        -A KUBE-SVC-QZ7VV5GTKAJA7T3Q -m comment --comment \"shop/web:http cluster IP\" -m tcp -p tcp -d 10.96.0.50 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ\n\
        -A KUBE-SVC-QZ7VV5GTKAJA7T3Q -m comment --comment \"shop/web:http -> 10.244.0.5:8080\" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-AAAAAAAAAAAAAAAA\n\
        -A KUBE-SVC-QZ7VV5GTKAJA7T3Q -m comment --comment \"shop/web:http -> 10.244.0.6:8080\" -j KUBE-SEP-BBBBBBBBBBBBBBBB\n\
        COMMIT\n";

    #[test]
    fn kube_proxy_node_port_to_its_service() {
        let r = kube_node_ports(KUBE_PROXY_NAT, 30080, "tcp");
        assert_eq!(r.len(), 1, "{r:?}");
        let s = r[0].service.as_ref().unwrap();
        assert_eq!(
            (s.label().as_str(), s.port_name.as_str()),
            ("shop/web", "http")
        );
        assert_eq!(r[0].endpoints, ["10.244.0.5:8080", "10.244.0.6:8080"]);
        assert_eq!(r[0].to.as_deref(), Some("10.244.0.5:8080"));
        assert!(r[0].rule.starts_with("-A KUBE-NODEPORTS "), "{r:?}");
        // Not the Service's own port, nor UDP, nor another port; and the
        // plain DNAT reader sees nothing here (no DNAT line has a --dport).
        assert_eq!(kube_node_ports(KUBE_PROXY_NAT, 80, "tcp"), vec![]);
        assert_eq!(kube_node_ports(KUBE_PROXY_NAT, 30080, "udp"), vec![]);
        assert_eq!(kube_node_ports(KUBE_PROXY_NAT, 30081, "tcp"), vec![]);
        assert_eq!(iptables_rules(KUBE_PROXY_NAT, 30080, "tcp"), vec![]);
    }

    /// Before KUBE-EXT (kube-proxy up to 1.23): KUBE-NODEPORTS marks, then
    /// jumps to KUBE-SVC straight; the comment is quoted, the port unnamed.
    #[test]
    fn older_kube_proxy_shape() {
        let text = "*nat\n\
            -A KUBE-NODEPORTS -p tcp -m comment --comment \"default/nginx-svc:\" -m tcp --dport 30080 -j KUBE-MARK-MASQ\n\
            -A KUBE-NODEPORTS -p tcp -m comment --comment \"default/nginx-svc:\" -m tcp --dport 30080 -j KUBE-SVC-R2VK7O5AFVLRAXSH\n\
            -A KUBE-SVC-R2VK7O5AFVLRAXSH -m comment --comment \"default/nginx-svc:\" -j KUBE-SEP-XYZ\n\
            -A KUBE-SEP-XYZ -p tcp -m comment --comment \"default/nginx-svc:\" -m tcp -j DNAT --to-destination 10.244.1.2:80\n\
            -A KUBE-SEP-LOOP -j KUBE-SEP-LOOP\n\
            COMMIT\n";
        let r = kube_node_ports(text, 30080, "tcp");
        assert_eq!(r.len(), 1, "{r:?}");
        let s = r[0].service.as_ref().unwrap();
        assert_eq!(
            (s.label().as_str(), s.port_name.as_str()),
            ("default/nginx-svc", "")
        );
        assert_eq!(r[0].endpoints, ["10.244.1.2:80"]);
        // A comment that names no Service is not kube-proxy's.
        assert_eq!(service_of("Robert'); DROP/x:y"), None);
        assert_eq!(
            comment("-A X -m comment --comment \"a b\" -j Y"),
            Some("a b")
        );
    }

    /// CNI portmap 1.1's rules for hostPort 18097 of a pod sandbox, as
    /// `iptables-save` printed them here after the bridge and portmap
    /// plugins' ADD.
    #[test]
    fn portmap_rule_names_its_sandbox() {
        let id = "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789";
        let text = format!("*nat\n\
            -A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n\
            -A CNI-DN-233828d10c3335c5ce999 -s 10.88.0.0/16 -p tcp -m tcp --dport 18097 -j CNI-HOSTPORT-SETMARK\n\
            -A CNI-DN-233828d10c3335c5ce999 -p tcp -m tcp --dport 18097 -j DNAT --to-destination 10.88.0.2:80\n\
            -A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"pwnet\\\" id: \\\"{id}\\\"\" -m multiport --dports 18097 -j CNI-DN-233828d10c3335c5ce999\n\
            COMMIT\n");
        let r = iptables_rules(&text, 18097, "tcp");
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].to.as_deref(), Some("10.88.0.2:80"));
        assert_eq!(r[0].sandbox.as_deref(), Some(id));
        // Another chain's DNAT names no sandbox.
        let plain = "*nat\n-A DOCKER -p tcp -m tcp --dport 8083 -j DNAT --to-destination 172.17.0.3:80\nCOMMIT\n";
        assert_eq!(iptables_rules(plain, 8083, "tcp")[0].sandbox, None);
    }

    #[test]
    fn nft_lines() {
        let text = "table ip nat {\n\tchain prerouting {\n\
            \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
            \t\ttcp dport 8085 dnat to 10.0.0.2:80\n\
            \t\ttcp dport { 80, 9000-9010 } dnat ip to 10.0.0.3\n\
            \t\tudp dport 8085 counter packets 0 bytes 0\n\t}\n}\n";
        assert_eq!(
            nft_rules(text, 8085, "tcp", &[])[0].to.as_deref(),
            Some("10.0.0.2:80")
        );
        assert_eq!(
            nft_rules(text, 9005, "tcp", &[])[0].to.as_deref(),
            Some("10.0.0.3")
        );
        assert_eq!(nft_rules(text, 8085, "udp", &[]), vec![]);
        assert_eq!(nft_rules(text, 8086, "tcp", &[]), vec![]);
    }

    /// A rule iptables-nft made is listed by `iptables-save` and again by
    /// `nft list ruleset` (as Debian 12's iptables 1.8.9 and nft 1.0.6
    /// print them in one namespace): read once, from iptables, while a
    /// native nft table's rule still counts.
    #[test]
    fn iptables_nft_rules_are_read_once() {
        let iptables = "# Generated by iptables-save v1.8.9 (nf_tables) on Mon Dec  7 2026\n\
            *nat\n:PREROUTING ACCEPT [0:0]\n:CNI-HOSTPORT-DNAT - [0:0]\n\
            -A CNI-HOSTPORT-DNAT -p tcp -m tcp --dport 18097 -j DNAT --to-destination 10.88.0.2:80\nCOMMIT\n";
        let nft = "table ip nat {\n\tchain CNI-HOSTPORT-DNAT {\n\
            \t\ttcp dport 18097 counter packets 0 bytes 0 dnat to 10.88.0.2:80\n\t}\n}\n\
            table ip mine {\n\tchain pre {\n\
            \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
            \t\ttcp dport 18097 dnat to 10.0.0.9:80\n\t}\n}\n";
        let tables = NatTables {
            listed: vec![("iptables", iptables.into()), ("nft", nft.into())],
            ..NatTables::default()
        };
        let froms: Vec<(String, Option<String>)> = tables
            .rules(IpAddr::from([0, 0, 0, 0]), false, 18097, "tcp")
            .into_iter()
            .map(|r| (r.from, r.to))
            .collect();
        assert_eq!(
            froms,
            [
                ("iptables".into(), Some("10.88.0.2:80".into())),
                ("nft".into(), Some("10.0.0.9:80".into())),
            ]
        );
        // A legacy iptables' rules are not in nft's listing: nothing skipped.
        let legacy = NatTables {
            listed: vec![
                ("iptables", iptables.replace("(nf_tables)", "(legacy)")),
                ("nft", nft.into()),
            ],
            ..NatTables::default()
        };
        assert_eq!(
            legacy
                .rules(IpAddr::from([0, 0, 0, 0]), false, 18097, "tcp")
                .len(),
            3
        );
    }

    /// The legacy lister runs only where the legacy `nat` table exists, and
    /// not where `iptables-save` is that same program (Debian's
    /// alternatives pointing at the legacy one): made here with the
    /// symlinks Debian's alternatives make.
    #[test]
    fn legacy_rules_are_listed_once() {
        use std::os::unix::fs::symlink;
        let s = portwatch_test_support::Scratch::new("legacy");
        s.write("xtables-legacy-multi", "");
        s.write("xtables-nft-multi", "");
        let at = |p: &str| s.0.join(p).to_str().unwrap().to_owned();
        symlink(at("xtables-legacy-multi"), at("iptables-legacy-save")).unwrap();
        symlink(at("xtables-nft-multi"), at("iptables-nft-save")).unwrap();
        symlink(at("iptables-nft-save"), at("nft-chosen")).unwrap();
        symlink(at("iptables-legacy-save"), at("legacy-chosen")).unwrap();
        let legacy = at("iptables-legacy-save");
        assert!(legacy_to_list("nat\n", &legacy, &at("nft-chosen")));
        assert!(legacy_to_list("filter\nnat\n", &legacy, &at("nft-chosen")));
        // No iptables-save at all: the legacy one is the only listing.
        assert!(legacy_to_list("nat\n", &legacy, &at("missing")));
        assert!(!legacy_to_list("nat\n", &legacy, &at("legacy-chosen")));
        assert!(!legacy_to_list("", &legacy, &at("nft-chosen")));
        assert!(!legacy_to_list("filter\n", &legacy, &at("nft-chosen")));
        assert!(!legacy_to_list("nat\n", &at("missing"), &at("nft-chosen")));
    }
}
