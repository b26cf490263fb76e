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
//! `ip6tables-save` (which also show iptables-nft's rules) and `nft list
//! ruleset` (native nftables rules), in the calling thread's network
//! namespace, once per batch of the verdict engine (`who`, `wait`): never
//! on `watch`'s path.
//!
//! Netfilter state is read, never written: `iptables-save` is run without
//! `-t nat`, because naming a table makes legacy iptables load it (the
//! kernel registers the nat table and its hooks in that namespace on first
//! use) where none was; without `-t` it dumps only the tables that exist,
//! and the `*nat` section is picked here. Each tool runs with a deadline
//! ([`TIMEOUT`]): one stuck on the xtables lock costs that, not a hang.

use std::{path::Path, process::Command, time::Duration};

use serde::{Deserialize, Serialize};

/// A rule that redirects traffic for a port elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnatRule {
    /// Which tool listed it: `iptables`, `ip6tables` or `nft`.
    pub from: String,
    /// The rule as the tool printed it (untrusted: comments are free text).
    pub rule: String,
    /// Where it sends the traffic, when the rule says (`10.0.0.2:80`).
    pub to: Option<String>,
}

/// The programs, by absolute path: a root tool never runs whatever a PATH
/// entry offers under these names.
const LISTERS: [(&str, &[&str], &str); 3] = [
    ("/usr/sbin/iptables-save", &[], "iptables"),
    ("/usr/sbin/ip6tables-save", &[], "ip6tables"),
    ("/usr/sbin/nft", &["list", "ruleset"], "nft"),
];

/// How long one lister may take.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// The `nat` tables as each tool listed them, read once for any number of
/// ports (`who` and `check` ask about several).
#[derive(Debug, Clone, Default)]
pub struct NatTables {
    /// (tool, its output).
    listed: Vec<(&'static str, String)>,
}

impl NatTables {
    /// Runs each tool once in this thread's network namespace; tools that
    /// are missing are passed over, and each that fails or times out is
    /// passed over with its error on stderr (the answer then goes without
    /// that tool's rules).
    pub fn read() -> Self {
        let mut listed = Vec::new();
        for (program, args, from) in LISTERS {
            if !Path::new(program).exists() {
                continue;
            }
            let mut cmd = Command::new(program);
            cmd.args(args).env_clear().env("LC_ALL", "C");
            match crate::subprocess::output(&mut cmd, TIMEOUT) {
                Ok(out) => listed.push((from, String::from_utf8_lossy(&out).into_owned())),
                Err(e) => eprintln!("portwatch: address translation rules not read: {e}"),
            }
        }
        Self { listed }
    }

    /// The DNAT rules for destination port `port` of `proto` ("tcp", "udp").
    pub fn rules(&self, port: u16, proto: &str) -> Vec<DnatRule> {
        let mut rules = Vec::new();
        for (from, text) in &self.listed {
            let matched = if *from == "nft" {
                nft_rules(text, port, proto)
            } else {
                iptables_rules(text, port, proto)
            };
            rules.extend(matched.into_iter().map(|mut r| {
                r.from = (*from).to_owned();
                r
            }));
        }
        rules
    }
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
        })
        .collect()
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
fn nft_rules(text: &str, port: u16, proto: &str) -> Vec<DnatRule> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.contains("dnat"))
        .filter(|l| {
            let Some(at) = l.find(&format!("{proto} dport ")) else {
                return false;
            };
            let rest = &l[at + proto.len() + " dport ".len()..];
            let ports = match rest.strip_prefix('{') {
                Some(set) => set.split('}').next().unwrap_or(""),
                None => rest.split(' ').next().unwrap_or(""),
            };
            ports.split(',').any(|p| in_ports(p.trim(), port, '-'))
        })
        .map(|l| DnatRule {
            from: String::new(),
            rule: l.to_owned(),
            to: l
                .split(" to ")
                .nth(1)
                .and_then(|t| t.split_whitespace().next())
                .map(str::to_owned),
        })
        .collect()
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

    #[test]
    fn nft_lines() {
        let text = "table ip nat {\n\tchain prerouting {\n\
            \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
            \t\ttcp dport 8085 dnat to 10.0.0.2:80\n\
            \t\ttcp dport { 80, 9000-9010 } dnat ip to 10.0.0.3\n\
            \t\tudp dport 8085 counter packets 0 bytes 0\n\t}\n}\n";
        assert_eq!(
            nft_rules(text, 8085, "tcp")[0].to.as_deref(),
            Some("10.0.0.2:80")
        );
        assert_eq!(
            nft_rules(text, 9005, "tcp")[0].to.as_deref(),
            Some("10.0.0.3")
        );
        assert_eq!(nft_rules(text, 8085, "udp"), vec![]);
        assert_eq!(nft_rules(text, 8086, "tcp"), vec![]);
    }
}
