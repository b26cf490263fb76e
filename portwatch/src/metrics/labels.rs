//! The label sets of the metrics, and how a failure's port is kept to a
//! bounded number of series ([`Ports`]).

use std::collections::HashSet;

use portwatch_core::{
    event::Event,
    request::{Errno, Family as AddrFamily, Proto, Syscall},
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
}

impl FailureLabels {
    pub(super) fn of(ev: &Event, reason: &str) -> Self {
        Self::new(
            ev.syscall,
            ev.errno.unwrap_or(Errno(-ev.ret)),
            ev.proto,
            ev.family,
            reason,
        )
    }

    pub(super) fn new(
        syscall: Syscall,
        errno: Errno,
        proto: Proto,
        family: AddrFamily,
        reason: &str,
    ) -> Self {
        Self {
            syscall: syscall.name().into(),
            errno: errno.name(),
            // Other protocols are rare; one value keeps the product bounded.
            protocol: match proto {
                Proto::Tcp | Proto::Udp => proto.name(),
                Proto::Other(_) => "other".into(),
            },
            family: match family {
                AddrFamily::Ipv4 => "ipv4",
                AddrFamily::Ipv6 => "ipv6",
            }
            .into(),
            reason: reason.into(),
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
        }
    }
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
