//! What a caller asked the kernel for: the vocabulary shared by capture,
//! holder lookup and diagnosis.
//!
//! A [`Request`] is "bind (or listen on) this address and port, in this
//! network namespace, with these options". `watch` builds one from each
//! captured failure; commands without a tracer (`who`, `wait`) build one from
//! the command line. Holder lookup and diagnosis take nothing else.

use std::{fmt, net::IpAddr, str::FromStr};

use portwatch_common as common;
use serde::{Deserialize, Serialize};

/// Which call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Syscall {
    /// bind()
    Bind,
    /// listen()
    Listen,
}

impl Syscall {
    /// "bind" or "listen".
    pub fn name(self) -> &'static str {
        match self {
            Self::Bind => "bind",
            Self::Listen => "listen",
        }
    }

    /// The code the eBPF programs use (`SYSCALL_*`).
    pub fn code(self) -> u8 {
        match self {
            Self::Bind => common::SYSCALL_BIND,
            Self::Listen => common::SYSCALL_LISTEN,
        }
    }
}

/// Address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// AF_INET
    Ipv4,
    /// AF_INET6
    Ipv6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::Ipv4,
            IpAddr::V6(_) => Self::Ipv6,
        }
    }
}

/// Transport protocol: names for the common ones, the IPPROTO number otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// IPPROTO_TCP
    Tcp,
    /// IPPROTO_UDP
    Udp,
    /// Anything else (raw, SCTP, MPTCP, UDP-Lite...).
    Other(u16),
}

impl From<u16> for Proto {
    fn from(v: u16) -> Self {
        match v {
            6 => Self::Tcp,
            17 => Self::Udp,
            n => Self::Other(n),
        }
    }
}

impl Proto {
    /// The IPPROTO number.
    pub fn code(self) -> u16 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Other(n) => n,
        }
    }

    /// "tcp", "udp", or the protocol number.
    pub fn name(self) -> String {
        match self {
            Self::Tcp => "tcp".into(),
            Self::Udp => "udp".into(),
            Self::Other(132) => "sctp".into(),
            Self::Other(136) => "udplite".into(),
            Self::Other(262) => "mptcp".into(),
            Self::Other(n) => format!("ip{n}"),
        }
    }
}

impl FromStr for Proto {
    type Err = String;

    /// The inverse of [`Proto::name`].
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "tcp" => Self::Tcp,
            "udp" => Self::Udp,
            "sctp" => Self::Other(132),
            "udplite" => Self::Other(136),
            "mptcp" => Self::Other(262),
            _ => s
                .strip_prefix("ip")
                .and_then(|n| n.parse::<u16>().ok())
                .map(Self::from)
                .ok_or_else(|| format!("unknown protocol '{s}' (tcp or udp)"))?,
        })
    }
}

impl Serialize for Proto {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for Proto {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Socket options in force when the call returned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Opts {
    /// SO_REUSEADDR
    pub reuseaddr: bool,
    /// SO_REUSEPORT
    pub reuseport: bool,
    /// IPV6_V6ONLY
    pub v6only: bool,
    /// IP_FREEBIND
    pub freebind: bool,
    /// IP_TRANSPARENT
    pub transparent: bool,
    /// IP_BIND_ADDRESS_NO_PORT
    pub bind_address_no_port: bool,
}

impl Opts {
    /// From the eBPF side's `OPT_*` bits; None unless `OPT_VALID` is set.
    pub fn from_bits(bits: u8) -> Option<Self> {
        (bits & common::OPT_VALID != 0).then_some(Self {
            reuseaddr: bits & common::OPT_REUSEADDR != 0,
            reuseport: bits & common::OPT_REUSEPORT != 0,
            v6only: bits & common::OPT_V6ONLY != 0,
            freebind: bits & common::OPT_FREEBIND != 0,
            transparent: bits & common::OPT_TRANSPARENT != 0,
            bind_address_no_port: bits & common::OPT_BIND_ADDRESS_NO_PORT != 0,
        })
    }

    /// The names of the options that are set.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.reuseaddr, "reuseaddr"),
            (self.reuseport, "reuseport"),
            (self.v6only, "v6only"),
            (self.freebind, "freebind"),
            (self.transparent, "transparent"),
            (self.bind_address_no_port, "bind_address_no_port"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect()
    }
}

/// An errno value, known to this system's libc by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

/// Largest errno the in-kernel bitmap can hold.
pub const MAX_ERRNO: i32 = 127;

impl Errno {
    /// EADDRINUSE.
    pub const ADDRINUSE: Self = Self(libc::EADDRINUSE);

    /// The symbolic name (`EADDRINUSE`), or `E<n>` for a number libc does not name.
    pub fn name(self) -> String {
        match nix::errno::Errno::from_raw(self.0) {
            nix::errno::Errno::UnknownErrno => format!("E{}", self.0),
            known => format!("{known:?}"),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Errno {
    type Err = String;

    /// `EADDRINUSE`, `eaddrinuse`, `98`, or `E<n>` as [`Errno::name`] writes it.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let number = s
            .parse::<i32>()
            .ok()
            .or_else(|| s.strip_prefix('E').and_then(|n| n.parse().ok()));
        if let Some(n) = number {
            return if (1..=MAX_ERRNO).contains(&n) {
                Ok(Errno(n))
            } else {
                Err(format!("errno {n} is out of range 1..={MAX_ERRNO}"))
            };
        }
        // Names are made once: journals carry one per event.
        static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        let names = NAMES.get_or_init(|| (1..=MAX_ERRNO).map(|n| Errno(n).name()).collect());
        (1..=MAX_ERRNO)
            .zip(names)
            .find(|(_, name)| name.eq_ignore_ascii_case(s))
            .map(|(n, _)| Errno(n))
            .ok_or_else(|| {
                format!(
                    "unknown errno name '{s}' (try EADDRINUSE, EACCES, EADDRNOTAVAIL or a number)"
                )
            })
    }
}

impl Serialize for Errno {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for Errno {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Who made a call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller {
    /// Process id.
    pub pid: u32,
    /// Thread id (namespaces are per thread).
    pub tid: u32,
    /// Real uid.
    pub uid: u32,
    /// Its comm (untrusted).
    pub comm: String,
}

/// A bind() about to be made, to be judged before it is: what `who`,
/// `wait` and `check` ask about (`crate::engine` answers). The network
/// namespace is the one the question is asked in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Binding {
    /// Transport protocol: TCP or UDP.
    pub proto: Proto,
    /// The address asked for (`::` is the dual-stack wildcard unless
    /// `opts.v6only`).
    pub addr: IpAddr,
    /// The port, 1-65535.
    pub port: u16,
    /// The options the socket sets before bind(): SO_REUSEADDR,
    /// SO_REUSEPORT, IPV6_V6ONLY count.
    pub opts: Opts,
    /// SO_BINDTODEVICE: the device the socket is bound to, if any
    /// (untrusted: from the command line or a file).
    pub device: Option<String>,
}

impl Binding {
    /// A bind of `addr`:`port` with no option and no device.
    pub fn plain(proto: Proto, addr: IpAddr, port: u16) -> Self {
        Self {
            proto,
            addr,
            port,
            opts: Opts::default(),
            device: None,
        }
    }
}

/// A bind() or listen() on an address and port in one network namespace:
/// made and failed (from `watch`), or about to be made (`who`, `wait`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Network namespace inode.
    pub netns: u32,
    /// Transport protocol.
    pub proto: Proto,
    /// Address family of the socket.
    pub family: Family,
    /// Requested address.
    pub addr: IpAddr,
    /// Requested port; 0 asks the kernel to pick one.
    pub port: u16,
    /// The socket's options, as far as known.
    pub opts: Option<Opts>,
    /// bind or listen.
    pub syscall: Syscall,
    /// How the call failed; None when it was not made (a "would it work?").
    pub errno: Option<Errno>,
    /// Who made it, when it was made.
    pub caller: Option<Caller>,
    /// The kernel's record of the port's holder at the failure, when a
    /// tracer was running.
    pub holder_record: Option<HolderRecord>,
    /// The interface index the socket is bound to (SO_BINDTODEVICE), 0 for
    /// none: only sockets bound to no device or to the same one (and, for
    /// TCP, in the same VRF) can be in its way.
    pub device: u32,
}

impl Request {
    /// The error to explain: the real one, or EADDRINUSE for a bind not made
    /// yet (the only error a taken port gives).
    pub fn errno_or_in_use(&self) -> Errno {
        self.errno.unwrap_or(Errno::ADDRINUSE)
    }

    /// IPV6_V6ONLY on the requesting socket (off when unknown: the default).
    pub fn v6only(&self) -> bool {
        self.opts.is_some_and(|o| o.v6only)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names_and_numbers() {
        assert_eq!("EADDRINUSE".parse::<Errno>().unwrap(), Errno(98));
        assert_eq!("eacces".parse::<Errno>().unwrap(), Errno(13));
        assert_eq!("99".parse::<Errno>().unwrap(), Errno(99));
        assert_eq!(Errno(99).name(), "EADDRNOTAVAIL");
        assert!("EWHATEVER"
            .parse::<Errno>()
            .unwrap_err()
            .contains("unknown errno name"));
        assert!("0".parse::<Errno>().is_err());
        assert!("128".parse::<Errno>().is_err());
        // Every name round-trips, also the numbered ones libc does not name.
        for n in 1..=MAX_ERRNO {
            assert_eq!(Errno(n).name().parse::<Errno>(), Ok(Errno(n)));
        }
    }

    #[test]
    fn proto_names_round_trip() {
        for p in [6, 17, 132, 136, 262, 255] {
            let proto = Proto::from(p);
            assert_eq!(proto.name().parse::<Proto>(), Ok(proto));
        }
        assert!("http".parse::<Proto>().is_err());
    }
}

/// The holder the kernel recorded for the failing call's port, checked at
/// the moment of the failure: the only witness once the holder has exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderRecord {
    /// Process that bound the port or started listening on it.
    pub pid: u32,
    /// Its real uid.
    pub uid: u32,
    /// Its comm (untrusted).
    pub comm: String,
    /// The socket's family.
    pub family: Family,
    /// The address it bound.
    pub addr: IpAddr,
    /// A CLOCK_BOOTTIME ns at which the binder was running (its thread's
    /// start, or the bind/listen's time): a process at its pid that started
    /// later reused the pid.
    pub running_ns: u64,
    /// The socket's TCP state number at the failure (UDP sockets: 7), or
    /// `None` when it had already closed (the record outlived the socket).
    pub state: Option<u8>,
    /// The socket's options at the failure, when it was still open.
    pub opts: Option<Opts>,
    /// The record is of a listen(), not of a bare bind().
    pub listened: bool,
    /// The socket's SO_BINDTODEVICE interface index at the failure (0:
    /// none), when it was still open.
    pub device: Option<u32>,
}
