//! The label sets of the metrics, and how a failure's port is kept to a
//! bounded number of series ([`Ports`]).

use std::collections::HashSet;

use portwatch_core::{
    event::Event,
    holders::{Evidence, Holder, State},
    request::{Errno, Family as AddrFamily, Proto},
};
use prometheus_client::encoding::EncodeLabelSet;

use super::PORT_SERIES;

/// The labels of `portwatch_bind_failures_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FailureLabels {
    /// bind or listen.
    pub syscall: String,
    /// EADDRINUSE, EACCES, ...
    pub errno: String,
    /// tcp, udp, or other.
    pub protocol: String,
    /// ipv4 or ipv6.
    pub family: String,
    /// The diagnosis's reason code.
    pub reason: String,
    /// What holds the port ([`holder_kind`]): one of seven words, so an
    /// alert can route a pod's clash to its cluster's owners; which pod
    /// stays in the events.
    pub holder_kind: String,
}

impl FailureLabels {
    /// The labels of `ev`, diagnosed as `reason`, its port held by a
    /// `holder_kind`.
    pub(super) fn of(ev: &Event, reason: &str, holder_kind: &str) -> Self {
        Self {
            syscall: ev.syscall.name().into(),
            errno: ev.errno.unwrap_or(Errno(-ev.ret)).name(),
            // Other protocols are rare; one value keeps the product bounded.
            protocol: match ev.proto {
                Proto::Tcp | Proto::Udp => ev.proto.name(),
                Proto::Other(_) => "other".into(),
            },
            family: match ev.family {
                AddrFamily::Ipv4 => "ipv4",
                AddrFamily::Ipv6 => "ipv6",
            }
            .into(),
            reason: reason.into(),
            holder_kind: holder_kind.into(),
        }
    }

    pub(super) fn other() -> Self {
        let other = || "other".to_owned();
        Self {
            syscall: other(),
            errno: other(),
            protocol: other(),
            family: other(),
            reason: other(),
            holder_kind: other(),
        }
    }
}

/// Parses `--metrics-node`: a node or host name (letters, digits, `.`,
/// `-`, `_`; 253 at most, as DNS allows), or empty for no label.
pub fn parse_node(s: &str) -> Result<String, String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if s.len() > 253 || !s.chars().all(ok) {
        return Err(format!(
            "'{}' is not a node name (letters, digits, '.', '-', '_'; 253 at most)",
            s.escape_debug()
        ));
    }
    Ok(s.to_owned())
}

/// `holder_kind` when nothing was looked up (`--no-holders`), the lookup
/// was blind, or the holder's process was gone before /proc was read.
const UNKNOWN: &str = "unknown";

/// What holds the port, from the lookup's evidence (None: not looked up).
/// The first holder decides (they come most important first); one that
/// only `who` lists because it is bound apart is not in the way. A shed
/// lookup's holder is the kernel's record alone, without the unit or
/// container that would tell a pod from a process: unknown.
pub(super) fn holder_kind(evidence: Option<&Evidence>) -> &'static str {
    let Some(evidence) = evidence.filter(|e| !e.shed) else {
        return UNKNOWN;
    };
    match evidence.holders.iter().find(|h| h.apart.is_none()) {
        Some(h) => kind_of(h),
        None if evidence.blind.is_some() => UNKNOWN,
        None => "none",
    }
}

/// A pod before a container (CRI names the pod, or kubelet's cgroup
/// shows one), a container before its unit (a runtime's scope unit is not
/// the service to change), a unit before its process.
fn kind_of(h: &Holder) -> &'static str {
    if let Some(c) = &h.container {
        return if c.pod.is_some() || c.kubernetes {
            "pod"
        } else {
            "container"
        };
    }
    if h.unit.is_some() || h.socket_unit.is_some() {
        return "unit";
    }
    if h.pid.is_some() {
        return "process";
    }
    // No process: a tunnel's socket, or TIME_WAIT leftovers the kernel keeps.
    if h.kernel.is_some() || h.state == State::TimeWait {
        return "kernel";
    }
    UNKNOWN
}

/// The label of `portwatch_port_failures_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct PortLabels {
    pub(super) port: String,
}

/// The label of `portwatch_holder_lookups_total`: found, none or blind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct ResultLabels {
    pub(super) result: &'static str,
}

/// The label of `portwatch_build_info`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct BuildLabels {
    pub(super) version: &'static str,
}

/// Which label a failure's port gets.
pub(super) struct Ports {
    /// `--port` named few enough ports to give each a series.
    fixed: bool,
    named: HashSet<u16>,
    /// Ports already under "other", one bit each.
    as_other: Box<[u64; 1024]>,
}

impl Ports {
    /// `--port`'s ports (`known`) each get a series when they are few
    /// enough; otherwise the first [`PORT_SERIES`] ports seen do.
    pub(super) fn new(known: &[u16]) -> Self {
        let fixed = !known.is_empty() && known.len() <= PORT_SERIES;
        Self {
            fixed,
            named: if fixed {
                known.iter().copied().collect()
            } else {
                HashSet::new()
            },
            as_other: Box::new([0; 1024]),
        }
    }

    /// The ports with a series of their own so far.
    pub(super) fn named(&self) -> impl Iterator<Item = u16> + '_ {
        self.named.iter().copied()
    }

    /// The label for `port`, and whether it was counted under "other" for
    /// the first time.
    pub(super) fn label(&mut self, port: u16) -> (String, bool) {
        if self.named.contains(&port) {
            return (port.to_string(), false);
        }
        if !self.fixed && self.named.len() < PORT_SERIES {
            self.named.insert(port);
            return (port.to_string(), false);
        }
        let (word, bit) = (usize::from(port) / 64, u64::from(port) % 64);
        let first = self.as_other[word] & (1 << bit) == 0;
        self.as_other[word] |= 1 << bit;
        ("other".into(), first)
    }
}

/// The label of `portwatch_labels_folded_total`: which metric counted a
/// label value under "other".
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct MetricLabels {
    pub(super) metric: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_bounded() {
        let mut p = Ports::new(&[]);
        let mut other = 0;
        let mut first = 0;
        for port in 1..=10_000u16 {
            let (label, new) = p.label(port);
            other += usize::from(label == "other");
            first += usize::from(new);
        }
        assert_eq!(other, 10_000 - PORT_SERIES);
        assert_eq!(first, 10_000 - PORT_SERIES);
        // Seen again: same label, not counted under "other" a second time.
        assert_eq!(p.label(1), ("1".into(), false));
        assert_eq!(p.label(9_999), ("other".into(), false));
    }

    /// A holder as a journal stores it, with `extra` fields on top.
    fn holder(extra: serde_json::Value) -> Holder {
        let mut h = serde_json::json!({
            "pid": 100, "state": "LISTEN", "addr": "0.0.0.0", "port": 80,
            "exited": false, "pids": [100], "sockets": 1,
            "cross_family": false,
            "container": null, "seen": "sock_diag",
        });
        h.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(h).expect("a journal's holder")
    }

    fn kind(holders: Vec<Holder>, blind: bool) -> &'static str {
        holder_kind(Some(&Evidence {
            holders,
            blind: blind.then(|| "no CAP_SYS_PTRACE".to_owned()),
            ..Evidence::default()
        }))
    }

    #[test]
    fn holder_kinds() {
        use serde_json::json;
        let container = json!({"id": "ab12", "runtime": "containerd", "name": null,
            "image": null, "published": [], "compose": null, "pod": null});
        let mut pod = container.clone();
        pod["pod"] = json!({"namespace": "shop", "name": "web-0", "container": "web"});
        let mut cgroup_pod = container.clone();
        cgroup_pod["kubernetes"] = json!(true);
        for (extra, want) in [
            (
                json!({"container": pod, "unit": "cri-containerd-ab12.scope"}),
                "pod",
            ),
            (json!({"container": cgroup_pod}), "pod"),
            (
                json!({"container": container, "unit": "docker-ab12.scope"}),
                "container",
            ),
            (json!({"unit": "nginx.service"}), "unit"),
            (json!({}), "process"),
            (
                json!({"pid": null, "pids": [], "kernel": {"kind": "vxlan", "name": "vx0", "certain": true}}),
                "kernel",
            ),
            (
                json!({"pid": null, "pids": [], "state": "TIME_WAIT"}),
                "kernel",
            ),
            (json!({"pid": null, "pids": []}), "unknown"),
        ] {
            assert_eq!(kind(vec![holder(extra.clone())], false), want, "{extra}");
        }
        assert_eq!(kind(vec![], false), "none");
        assert_eq!(kind(vec![], true), "unknown");
        assert_eq!(holder_kind(None), "unknown", "not looked up");
        let shed = Evidence {
            holders: vec![holder(json!({}))],
            shed: true,
            ..Evidence::default()
        };
        assert_eq!(
            holder_kind(Some(&shed)),
            "unknown",
            "the kernel's record alone"
        );
        // Bound to another device: not in the way, the next one decides.
        let mut apart = holder(json!({"unit": "nginx.service"}));
        apart.apart = holder(json!({"apart": "other_device"})).apart;
        assert!(apart.apart.is_some());
        assert_eq!(kind(vec![apart, holder(json!({}))], false), "process");
    }

    #[test]
    fn node_names() {
        assert_eq!(
            parse_node("ip-10-0-0-5.eu-west-1.compute.internal").as_deref(),
            Ok("ip-10-0-0-5.eu-west-1.compute.internal")
        );
        assert_eq!(parse_node("").as_deref(), Ok(""));
        for bad in ["node a", "n\"}", "n\n", &"a".repeat(254)] {
            assert!(parse_node(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn few_named_ports_are_the_only_ones() {
        let mut p = Ports::new(&[80, 443]);
        assert_eq!(p.label(80), ("80".into(), false));
        assert_eq!(p.label(8080), ("other".into(), true));
        let mut named: Vec<u16> = p.named().collect();
        named.sort_unstable();
        assert_eq!(named, [80, 443]);
    }
}
