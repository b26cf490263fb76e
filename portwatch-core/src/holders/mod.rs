//! Who holds a port: the holder model, and how it is found.
//!
//! [`enrich::Enricher`] turns a [`Request`](crate::request::Request) into
//! [`Evidence`]: the sockets in its way found by `sockdiag` in the right
//! network namespace (`netns`), their owning processes from /proc (`procs`),
//! the namespace's sysctls (`sysctl`), merged with the kernel's record of the
//! port's last binder when a tracer was running. No eBPF is needed here.

pub mod containers;
pub mod devices;
pub mod dnat;
pub mod enrich;
pub mod inactive;
pub mod kernel;
pub mod netns;
pub mod opened;
pub mod procs;
pub mod sockdiag;
pub mod sockopts;
pub mod sysctl;
pub mod systemd;

use std::{net::IpAddr, str::FromStr};

pub use containers::Container;
pub use devices::{Device, Devices};
pub use enrich::Enricher;
pub use kernel::KernelDevice;
use serde::{Deserialize, Serialize};
pub use sysctl::Sysctls;

use crate::request::{Family, Proto};

/// How the sockets' owners were found: `"iterator"`, a BPF iterator over
/// every task's files (one pass in the kernel), or `"walk"`, /proc's fd
/// directories (kernels or callers without the iterator).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnerLookup {
    /// /proc/PID/fd read: the processes named as likely holders first,
    /// every process at most once per batch.
    #[default]
    Walk,
    /// The BPF iterator `iter/task_file` listed every socket file of every
    /// process at once; each answer is still checked with one readlink of
    /// its /proc/PID/fd entry.
    Iterator,
}

/// A socket's state as users know it from `ss`/`netstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// TCP LISTEN.
    Listen,
    /// TCP TIME_WAIT: a closed connection's leftover.
    TimeWait,
    /// TCP socket bound to the port but neither listening nor connected.
    Bound,
    /// A UDP socket bound to the port.
    Udp,
    /// A TCP connection (ESTABLISHED, CLOSE_WAIT, SYN_RECV, FIN_WAIT...):
    /// the kernel's state number.
    Connection(u8),
    /// The recorded holder's socket had closed before the failure.
    Closed,
}

impl State {
    /// From a kernel state number (include/net/tcp_states.h).
    pub fn from_kernel(proto: Proto, state: u8) -> Self {
        match (proto, state) {
            (Proto::Udp, _) => Self::Udp,
            (_, 10) => Self::Listen,
            (_, 6) => Self::TimeWait,
            // TCP_CLOSE with a port, or the TCP_BOUND_INACTIVE pseudo-state.
            (_, 7 | 13) => Self::Bound,
            (_, n) => Self::Connection(n),
        }
    }

    /// The name shown: the kernel's TCP state name, or BOUND / UDP / CLOSED.
    pub fn name(self) -> &'static str {
        match self {
            Self::Listen => "LISTEN",
            Self::TimeWait => "TIME_WAIT",
            Self::Bound => "BOUND",
            Self::Udp => "UDP",
            Self::Closed => "CLOSED",
            Self::Connection(n) => match n {
                1 => "ESTABLISHED",
                2 => "SYN_SENT",
                3 => "SYN_RECV",
                4 => "FIN_WAIT1",
                5 => "FIN_WAIT2",
                8 => "CLOSE_WAIT",
                9 => "LAST_ACK",
                11 => "CLOSING",
                12 => "NEW_SYN_RECV",
                _ => "UNKNOWN",
            },
        }
    }
}

impl FromStr for State {
    type Err = String;

    /// The inverse of [`State::name`].
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "LISTEN" => Self::Listen,
            "TIME_WAIT" => Self::TimeWait,
            "BOUND" => Self::Bound,
            "UDP" => Self::Udp,
            "CLOSED" => Self::Closed,
            _ => (1..=12)
                .map(Self::Connection)
                .find(|c| c.name() == s)
                .ok_or_else(|| format!("unknown socket state '{s}'"))?,
        })
    }
}

impl Serialize for State {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a holder's description came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seen {
    /// The kernel's record, taken at the failure.
    Kernel,
    /// sock_diag after the failure.
    SockDiag,
    /// Both, and they agree on the socket.
    KernelAndSockDiag,
}

/// One socket (or a group of TIME_WAIT leftovers) in the way, with its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The process that owns it: the recorded binder if it still holds it,
    /// else the eldest sharer. None for TIME_WAIT (owned by the kernel).
    pub pid: Option<u32>,
    /// Its comm (untrusted).
    pub comm: Option<String>,
    /// Its full command line (untrusted), when it still runs.
    pub cmdline: Option<String>,
    /// Socket owner uid.
    pub uid: Option<u32>,
    /// LISTEN, TIME_WAIT, BOUND, UDP, ESTABLISHED...
    pub state: State,
    /// Bound address.
    pub addr: IpAddr,
    /// Bound port.
    pub port: u16,
    /// The owner has exited (known from the kernel's record only).
    pub exited: bool,
    /// systemd unit of the owner, from its cgroup.
    pub unit: Option<String>,
    /// The owner's container (from its cgroup), or the container a runtime
    /// helper holding the port serves (docker-proxy, conmon), named from
    /// the runtime's files. Journals from before it was an object hold the
    /// bare id: read as a container of unknown runtime.
    #[serde(deserialize_with = "container_or_id")]
    pub container: Option<Container>,
    /// The kernel device holding the port when no process does (a UDP
    /// tunnel's socket). Absent from older journals.
    #[serde(default)]
    pub kernel: Option<KernelDevice>,
    /// Every process holding the socket (forked workers share it).
    pub pids: Vec<u32>,
    /// How many sockets this entry stands for (TIME_WAIT leftovers are grouped).
    pub sockets: u32,
    /// TIME_WAIT: the longest time left on their timers, in ms.
    pub time_left_ms: Option<u64>,
    /// Remote end of a connection.
    pub remote: Option<String>,
    /// IPV6_V6ONLY of an IPv6 socket, when known.
    pub v6only: Option<bool>,
    /// SO_REUSEADDR, when known (`options_from` says how).
    pub reuseaddr: Option<bool>,
    /// SO_REUSEPORT, when known (`options_from` says how).
    pub reuseport: Option<bool>,
    /// Where `reuseaddr` and `reuseport` come from: read from the socket
    /// itself (`who`, `wait`, `check`), or the tracer's record of its bind.
    /// Absent when they are unknown, and from older journals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options_from: Option<sockopts::OptionsFrom>,
    /// Its family differs from the failing socket's: they overlap through an
    /// IPv6 wildcard without IPV6_V6ONLY.
    pub cross_family: bool,
    /// Which view found it.
    pub seen: Seen,
    /// The socket unit a systemd manager (pid 1 or `systemd --user`) holds
    /// it for: what to stop instead of the manager.
    #[serde(default)]
    pub socket_unit: Option<systemd::SocketUnit>,
    /// The device it is bound to (SO_BINDTODEVICE), if any. Absent from
    /// older journals.
    #[serde(default)]
    pub device: Option<Device>,
    /// Why it is not in the way of the bind asked about although it is on
    /// the port: it is bound to another device, or (TCP) in another VRF.
    /// Only `who` lists such sockets; absent from older journals.
    #[serde(default)]
    pub apart: Option<devices::Apart>,
}

impl Holder {
    /// "pid 123 (nginx, nginx.service)" or "TIME_WAIT connections".
    pub fn who(&self) -> String {
        let Some(pid) = self.pid else {
            return if self.state == State::TimeWait {
                format!("{} TIME_WAIT connection(s)", self.sockets)
            } else if let Some(k) = &self.kernel {
                k.label()
            } else {
                // Closed between sock_diag's answer and the /proc walk, or
                // held by a process portwatch cannot see.
                "a process not found in /proc".to_owned()
            };
        };
        let mut s = format!("pid {pid}");
        let mut extra = Vec::new();
        if let Some(c) = &self.comm {
            extra.push(c.clone());
        }
        if let Some(u) = &self.unit {
            extra.push(u.clone());
        }
        if let Some(c) = &self.container {
            extra.push(c.label());
        }
        if let Some(d) = &self.device {
            extra.push(format!("bound to {}", d.label()));
        }
        if self.exited {
            extra.push("exited".into());
        }
        if self.pids.len() > 1 {
            extra.push(format!("{} more processes share it", self.pids.len() - 1));
        }
        if !extra.is_empty() {
            s.push_str(&format!(" ({})", extra.join(", ")));
        }
        s
    }
}

/// A container as an object, or as the bare id older journals wrote.
fn container_or_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Container>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Id(String),
        Full(Box<Container>),
    }
    Ok(match Option::<Either>::deserialize(d)? {
        None => None,
        Some(Either::Id(id)) => Some(Container::bare(&id, containers::Runtime::Unknown)),
        Some(Either::Full(c)) => Some(*c),
    })
}

/// The first 12 characters of a container id, as `docker ps` shows it.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Everything enrichment learnt about one failure.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// Holders that conflict with the request, most important first.
    pub holders: Vec<Holder>,
    /// Why it could not, when it could not.
    pub blind: Option<String>,
    /// The namespace's sysctls, when readable.
    pub sysctls: Option<Sysctls>,
    /// Port 0: ports of ip_local_port_range in use by the protocol.
    pub ephemeral_in_use: Option<usize>,
    /// The requesting process's unit and container, when it could be read:
    /// advice depends on whether the holder is the same service.
    pub caller: CallerInfo,
    /// Socket options a trial bind (`who`) has just shown not to help:
    /// no fix may recommend them.
    pub trial_failed: TrialFailed,
    /// Not looked up: the holders are the kernel's record alone, because
    /// lookups could not keep up with the failures or took too long.
    pub shed: bool,
    /// The commands of this host a fix may name.
    pub tools: crate::tools::HostTools,
    /// Which end opened the connections on the port, when something known
    /// shows it (see `opened`).
    pub opened: Option<opened::Opened>,
    /// The network namespace the sysctls were read in: the host's or not,
    /// and how a fix reaches it.
    pub scope: sysctl::Scope,
    /// The device the requesting socket is bound to, named.
    pub device: Option<Device>,
}

/// Options whose trial bind failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrialFailed {
    /// A bind with SO_REUSEADDR failed too.
    pub reuseaddr: bool,
    /// A bind with SO_REUSEPORT failed too.
    pub reuseport: bool,
}

/// The requester's service, as far as /proc tells (it may have exited).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerInfo {
    /// Its systemd unit.
    pub unit: Option<String>,
    /// Its container id.
    pub container: Option<String>,
    /// That container as its runtime names it (runtime, pod): where a
    /// setting of its own network namespace lives.
    pub in_container: Option<Container>,
    /// The requester is a runtime's helper (docker-proxy) publishing a
    /// container's port: that container and its `-p` mapping.
    pub publishing: Option<containers::Publishing>,
}

impl Holder {
    /// Its owning process, as the safety table matches it.
    pub fn process(&self) -> crate::safety::Process<'_> {
        crate::safety::Process {
            pid: self.pid,
            comm: self.comm.as_deref(),
            unit: self.unit.as_deref(),
            cmdline: self.cmdline.as_deref(),
        }
    }

    /// Whether a process of this host's own, outside any container and no
    /// runtime's helper, owns the socket: then no container is in question
    /// (`who` reads no container's port bindings nor NAT tables for it).
    pub fn plain_process(&self) -> bool {
        self.pid.is_some()
            && self.container.is_none()
            && self.kernel.is_none()
            && containers::serves(
                self.comm.as_deref().unwrap_or_default(),
                self.cmdline.as_deref().unwrap_or_default(),
            )
            .is_none()
            && !self.is_runtime_helper()
    }

    /// Whether the holder is a container runtime's helper that holds the
    /// port for a container (docker-proxy, conmon): never the thing to stop.
    pub fn is_runtime_helper(&self) -> bool {
        crate::safety::of(&self.process())
            .is_some_and(|f| f.entry.kind == crate::safety::Kind::RuntimeHelper)
    }
}

/// Whether a socket bound at `(family, addr, v6only)` takes the address a
/// call asked for, and whether it does so across families. None: no overlap.
pub fn overlaps(req: (Family, IpAddr, bool), sock: (Family, IpAddr, Option<bool>)) -> Option<bool> {
    let (rf, ra, r_v6only) = req;
    let (sf, sa, s_v6only) = sock;
    let v4 = |a: IpAddr| match a {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    };
    if rf == sf {
        return (ra.is_unspecified() || sa.is_unspecified() || ra == sa).then_some(false);
    }
    // One side IPv4, the other IPv6.
    let (v6_addr, v6_only, v4_addr) = if rf == Family::Ipv6 {
        (ra, Some(r_v6only), sa)
    } else {
        (sa, s_v6only, ra)
    };
    if v6_addr.is_unspecified() {
        // A v6 wildcard takes every IPv4 address unless IPV6_V6ONLY;
        // an unknown v6only counts as the default, off.
        return (v6_only != Some(true)).then_some(true);
    }
    // A v4-mapped IPv6 address is that IPv4 address.
    let mapped = v4(v6_addr)?;
    (v4_addr.is_unspecified() || v4(v4_addr) == Some(mapped)).then_some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for s in [
            State::Listen,
            State::TimeWait,
            State::Bound,
            State::Udp,
            State::Closed,
            State::Connection(1),
            State::Connection(8),
        ] {
            assert_eq!(s.name().parse::<State>(), Ok(s));
        }
        assert!("LISTENING".parse::<State>().is_err());
    }

    #[test]
    fn overlap_rules() {
        let any4: IpAddr = "0.0.0.0".parse().unwrap();
        let any6: IpAddr = "::".parse().unwrap();
        let lo4: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        use Family::*;
        assert_eq!(
            overlaps((Ipv4, any4, false), (Ipv6, any6, Some(false))),
            Some(true)
        );
        assert_eq!(
            overlaps((Ipv4, any4, false), (Ipv6, any6, Some(true))),
            None
        );
        assert_eq!(overlaps((Ipv6, any6, false), (Ipv4, lo4, None)), Some(true));
        assert_eq!(overlaps((Ipv6, any6, true), (Ipv4, lo4, None)), None);
        assert_eq!(
            overlaps((Ipv6, mapped, false), (Ipv4, lo4, None)),
            Some(true)
        );
        assert_eq!(
            overlaps(
                (Ipv4, lo4, false),
                (Ipv4, "127.0.0.2".parse().unwrap(), None)
            ),
            None
        );
        assert_eq!(
            overlaps((Ipv4, lo4, false), (Ipv4, any4, None)),
            Some(false)
        );
    }
}
