//! Why a call failed and what to do about it, from what enrichment saw.
//!
//! Pure functions of the request and the holders found: no I/O, so every rule
//! is unit-tested here and reproduced for real by the integration tests.
//! A rule only fires on what was seen; when nothing fits the answer is
//! `unknown` with the evidence, never a guess dressed as a fact.

mod advice;
mod rules;

use std::net::{IpAddr, SocketAddr};

pub use advice::{
    container_stop, named, publish_elsewhere, relation, shell_word, steered_to_service, Relation,
};
use serde::{Deserialize, Serialize};

use crate::{
    holders::{Evidence, State},
    request::{Proto, Request},
};

/// `addr:port`, IPv6 in brackets.
fn socket_addr(addr: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(addr, port)
}

/// The reason codes (docs/diagnoses.md documents each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A listening socket (or a bound UDP socket) holds the port.
    Listener,
    /// Only TIME_WAIT leftovers conflict and the socket lacks SO_REUSEADDR.
    TimeWait,
    /// A TCP socket bound the port but never listened or connected.
    BoundNotListening,
    /// SO_REUSEPORT on one side only, or by another uid.
    ReuseportMismatch,
    /// Two SO_REUSEADDR sockets bound the port; the second listen() failed.
    ListenConflict,
    /// An IPv6 wildcard without IPV6_V6ONLY overlaps an IPv4 bind, or the reverse.
    DualStack,
    /// Live connections use the port, without a listener.
    Connection,
    /// Port 0 asked for and ip_local_port_range is used up.
    EphemeralExhausted,
    /// An outgoing connection took the port as its source port: it is in
    /// ip_local_port_range and nothing listens on it.
    EphemeralPort,
    /// EACCES below ip_unprivileged_port_start.
    PrivilegedPort,
    /// EADDRNOTAVAIL: the address is not on this host.
    AddrNotLocal,
    /// Nothing seen explains it.
    Unknown,
}

// Written out by hand: serde's renames stay the source of truth for the
// names, and a test checks this table against them for every reason.
impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 12] = [
        Reason::Listener,
        Reason::TimeWait,
        Reason::BoundNotListening,
        Reason::ReuseportMismatch,
        Reason::ListenConflict,
        Reason::DualStack,
        Reason::Connection,
        Reason::EphemeralExhausted,
        Reason::EphemeralPort,
        Reason::PrivilegedPort,
        Reason::AddrNotLocal,
        Reason::Unknown,
    ];

    /// The reason code as written in JSON, journald fields and texts.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Listener => "listener",
            Reason::TimeWait => "time_wait",
            Reason::BoundNotListening => "bound_not_listening",
            Reason::ReuseportMismatch => "reuseport_mismatch",
            Reason::ListenConflict => "listen_conflict",
            Reason::DualStack => "dual_stack",
            Reason::Connection => "connection",
            Reason::EphemeralExhausted => "ephemeral_exhausted",
            Reason::EphemeralPort => "ephemeral_port",
            Reason::PrivilegedPort => "privileged_port",
            Reason::AddrNotLocal => "addr_not_local",
            Reason::Unknown => "unknown",
        }
    }

    /// The reason whose code is `name`.
    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// The verdict on one failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Machine-readable code.
    pub reason: Reason,
    /// One sentence for people.
    pub diagnosis: String,
    /// What to do.
    pub fix: String,
}

/// Decides the reason, the sentence and the fix for `req` given `seen`.
pub fn diagnose(req: &Request, seen: &Evidence) -> Verdict {
    let mut v = rules::decide(req, seen);
    if let Some((why, fix)) = device_note(req, seen) {
        v.diagnosis = format!("{}; {why}", v.diagnosis);
        if let Some(fix) = fix {
            v.fix = format!("{}; {fix}", v.fix);
        }
    }
    // A runtime's helper failed for a container: say so first; the fix
    // for the holder stands, and the container can publish elsewhere.
    if let Some(p) = &seen.caller.publishing {
        let name = p.container.label();
        v.diagnosis = format!(
            "{name} could not publish port {} (-p {}): {}",
            req.port, p.mapping, v.diagnosis
        );
        let elsewhere = publish_elsewhere(&p.container, &p.mapping, &seen.tools);
        v.fix = format!("{}; or {elsewhere}", v.fix);
    }
    v
}

/// Where a device decides the conflict: why a socket bound to no device
/// and one bound to a device meet (each such pair conflicts; two devices
/// never do), and, for a requester bound to none, the other way out.
fn device_note(req: &Request, seen: &Evidence) -> Option<(String, Option<String>)> {
    let h = seen
        .holders
        .iter()
        .find(|h| h.state != State::Closed && h.device.is_some() != seen.device.is_some())?;
    let vrf = seen.device.as_ref().or(h.device.as_ref())?.vrf.as_deref();
    let everywhere = match (vrf, seen.sysctls.as_ref().and_then(|s| s.tcp_l3mdev_accept)) {
        (Some(_), Some(true)) if req.proto == Proto::Tcp => {
            " (net.ipv4.tcp_l3mdev_accept=1 puts such TCP sockets in every VRF too)"
        }
        _ => "",
    };
    match (&seen.device, &h.device) {
        (None, Some(theirs)) => Some((
            format!(
                "this socket is bound to no device, so it would take the port on every device{everywhere}, {} included",
                theirs.label()
            ),
            Some("or, if this service should serve another device only, bind it to that device (SO_BINDTODEVICE): sockets bound to different devices share a port".to_owned()),
        )),
        (Some(mine), None) => Some((
            format!(
                "the holder is bound to no device, so it holds the port on every device{everywhere}, {} included",
                mine.label()
            ),
            None,
        )),
        _ => None,
    }
}

fn capital(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod safety_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_ephemeral;
#[cfg(test)]
mod tests_pods;
