//! Would a new bind() of an address and port succeed now? Two ways to know:
//! the kernel's conflict rules applied to the sockets sock_diag lists
//! ([`by_rules`]), and a trial bind of a fresh socket, closed at once
//! ([`trial`]), which is the kernel's own answer.
//!
//! The rules are those of `inet_bind_conflict` (TCP, net/ipv4/inet_connection_sock.c)
//! and `udp_lib_lport_inuse` (UDP), for an explicit port and a socket bound to no
//! device. What sock_diag cannot tell is whether the holder set SO_REUSEADDR or
//! SO_REUSEPORT; where the answer hangs on that, the rules say so instead of guessing.

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};

use crate::{
    holders::{overlaps, sockdiag::DiagSocket, State},
    request::{Errno, Family, Opts, Proto},
};

/// The three binds `who` asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// No socket option.
    Plain,
    /// SO_REUSEADDR set before bind().
    Reuseaddr,
    /// SO_REUSEPORT set before bind().
    Reuseport,
}

impl Variant {
    /// Every variant, in the order shown.
    pub const ALL: [Variant; 3] = [Variant::Plain, Variant::Reuseaddr, Variant::Reuseport];

    /// The new socket's options (IPV6_V6ONLY off: an IPv6 wildcard is dual stack).
    pub fn opts(self) -> Opts {
        Opts {
            reuseaddr: self == Variant::Reuseaddr,
            reuseport: self == Variant::Reuseport,
            ..Opts::default()
        }
    }

    /// "plain", "SO_REUSEADDR", "SO_REUSEPORT".
    pub fn label(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Reuseaddr => "SO_REUSEADDR",
            Variant::Reuseport => "SO_REUSEPORT",
        }
    }
}

/// What the rules say about one socket, or about all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Nothing in the way.
    Free,
    /// A socket in the way, whatever its options.
    Taken,
    /// Free only if the holder set this option too (which sock_diag does not show).
    IfHolderSet(&'static str),
}

/// The rules' answer for a bind of `addr` (`proto`, IPV6_V6ONLY off) with
/// `variant`'s option, by a socket owned by `uid`, given the `sockets` on the
/// port: Taken if any socket conflicts whatever its options, else
/// IfHolderSet if any conflicts unless it set an option, else Free.
pub fn by_rules(
    proto: Proto,
    addr: IpAddr,
    variant: Variant,
    uid: u32,
    sockets: &[DiagSocket],
) -> Rule {
    let mut answer = Rule::Free;
    for s in sockets {
        match conflict(proto, addr, variant, uid, s) {
            Rule::Taken => return Rule::Taken,
            Rule::IfHolderSet(o) => answer = Rule::IfHolderSet(o),
            Rule::Free => {}
        }
    }
    answer
}

/// One socket against the new bind.
fn conflict(proto: Proto, addr: IpAddr, variant: Variant, uid: u32, s: &DiagSocket) -> Rule {
    let Ok(family) = Family::try_from(u16::from(s.family)) else {
        return Rule::Free;
    };
    if overlaps(
        (Family::of(addr), addr, false),
        (family, s.local.ip(), s.v6only),
    )
    .is_none()
    {
        return Rule::Free;
    }
    let same_uid = s.uid == uid;
    match (proto, State::from_kernel(proto, s.state), variant) {
        (_, _, Variant::Plain) => Rule::Taken,
        // UDP: SO_REUSEADDR on both, or SO_REUSEPORT on both under one uid.
        (Proto::Udp, _, Variant::Reuseaddr) => Rule::IfHolderSet("SO_REUSEADDR"),
        (Proto::Udp, _, Variant::Reuseport) if same_uid => Rule::IfHolderSet("SO_REUSEPORT"),
        (Proto::Udp, _, Variant::Reuseport) => Rule::Taken,
        // TCP LISTEN: SO_REUSEADDR never shares a listener; SO_REUSEPORT does,
        // on both sockets under one uid.
        (_, State::Listen, Variant::Reuseaddr) => Rule::Taken,
        (_, State::Listen, Variant::Reuseport) if same_uid => Rule::IfHolderSet("SO_REUSEPORT"),
        (_, State::Listen, Variant::Reuseport) => Rule::Taken,
        // TIME_WAIT keeps its socket's options: SO_REUSEADDR on both (the
        // closed connection's listener had it), or SO_REUSEPORT on both, any uid.
        (_, State::TimeWait, Variant::Reuseaddr) => Rule::IfHolderSet("SO_REUSEADDR"),
        (_, State::TimeWait, Variant::Reuseport) => Rule::IfHolderSet("SO_REUSEPORT"),
        // Bound, connected: SO_REUSEADDR on both, or SO_REUSEPORT on both under one uid.
        (_, _, Variant::Reuseaddr) => Rule::IfHolderSet("SO_REUSEADDR"),
        (_, _, Variant::Reuseport) if same_uid => Rule::IfHolderSet("SO_REUSEPORT"),
        (_, _, Variant::Reuseport) => Rule::Taken,
    }
}

/// Binds a fresh socket of `proto` to `addr` with `variant`'s option, in the
/// calling thread's network namespace, and closes it at once (never listen()
/// or connect()). With `uid`, the socket is created under that fsuid, which
/// makes it that uid's socket for SO_REUSEPORT; the thread's fsuid is put back
/// before returning.
///
/// Ok(None): the bind succeeded; Ok(Some(errno)): the kernel refused it;
/// Err: the trial could not be made.
pub fn trial(
    proto: Proto,
    addr: IpAddr,
    port: u16,
    variant: Variant,
    uid: Option<u32>,
) -> io::Result<Option<Errno>> {
    let (ty, protocol) = match proto {
        Proto::Tcp => (Type::STREAM, Protocol::TCP),
        Proto::Udp => (Type::DGRAM, Protocol::UDP),
        Proto::Other(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "trial binds are for TCP and UDP",
            ))
        }
    };
    let domain = match addr {
        IpAddr::V4(_) => Domain::IPV4,
        IpAddr::V6(_) => Domain::IPV6,
    };
    let socket = match uid {
        Some(uid) => as_fsuid(uid, || Socket::new(domain, ty, Some(protocol)))??,
        None => Socket::new(domain, ty, Some(protocol))?,
    };
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    match variant {
        Variant::Plain => {}
        Variant::Reuseaddr => socket.set_reuse_address(true)?,
        Variant::Reuseport => socket.set_reuse_port(true)?,
    }
    let result = socket.bind(&SocketAddr::new(addr, port).into());
    drop(socket);
    match result {
        Ok(()) => Ok(None),
        Err(e) => match e.raw_os_error() {
            Some(n) => Ok(Some(Errno(n))),
            None => Err(e),
        },
    }
}

/// Runs `f` with the calling thread's fsuid set to `uid`, then sets it back.
fn as_fsuid<T>(uid: u32, f: impl FnOnce() -> T) -> io::Result<T> {
    // setfsuid is per thread (the raw syscall: no libc broadcast to other
    // threads) and returns the previous fsuid whether or not it changed it,
    // so the change is checked by asking again with an invalid id.
    let set = |id: u32| {
        // SAFETY: setfsuid takes an integer and has no memory effects.
        unsafe { libc::syscall(libc::SYS_setfsuid, id) as u32 }
    };
    let before = set(uid);
    if set(u32::MAX) != uid {
        set(before);
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("cannot make a socket as uid {uid} (setfsuid)"),
        ));
    }
    let value = f();
    set(before);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sock(state: u8, local: &str, uid: u32, v6only: Option<bool>) -> DiagSocket {
        let local: SocketAddr = local.parse().unwrap();
        DiagSocket {
            protocol: 6,
            family: if local.is_ipv4() { 2 } else { 10 },
            state,
            bound_inactive: state == 7,
            local,
            remote: "0.0.0.0:0".parse().unwrap(),
            bound_dev_if: 0,
            uid,
            inode: 1,
            v6only,
            time_wait_left: (state == 6).then_some(Duration::from_secs(30)),
        }
    }

    const LISTEN: u8 = 10;
    const TIME_WAIT: u8 = 6;
    const BOUND: u8 = 7;

    #[test]
    fn tcp_rules() {
        let any4: IpAddr = "0.0.0.0".parse().unwrap();
        let rule = |v, s: &DiagSocket| by_rules(Proto::Tcp, any4, v, 1000, std::slice::from_ref(s));
        let listener = sock(LISTEN, "127.0.0.1:80", 1000, None);
        assert_eq!(rule(Variant::Plain, &listener), Rule::Taken);
        assert_eq!(rule(Variant::Reuseaddr, &listener), Rule::Taken);
        assert_eq!(
            rule(Variant::Reuseport, &listener),
            Rule::IfHolderSet("SO_REUSEPORT")
        );
        let other_uid = sock(LISTEN, "127.0.0.1:80", 0, None);
        assert_eq!(rule(Variant::Reuseport, &other_uid), Rule::Taken);

        let tw = sock(TIME_WAIT, "127.0.0.1:80", 0, None);
        assert_eq!(rule(Variant::Plain, &tw), Rule::Taken);
        assert_eq!(
            rule(Variant::Reuseaddr, &tw),
            Rule::IfHolderSet("SO_REUSEADDR")
        );
        assert_eq!(
            rule(Variant::Reuseport, &tw),
            Rule::IfHolderSet("SO_REUSEPORT")
        );

        let bound = sock(BOUND, "0.0.0.0:80", 1000, None);
        assert_eq!(
            rule(Variant::Reuseaddr, &bound),
            Rule::IfHolderSet("SO_REUSEADDR")
        );

        // Dual stack: [::] without V6ONLY takes 0.0.0.0; with it, not.
        let v6 = sock(LISTEN, "[::]:80", 1000, Some(false));
        assert_eq!(rule(Variant::Plain, &v6), Rule::Taken);
        let v6only = sock(LISTEN, "[::]:80", 1000, Some(true));
        assert_eq!(rule(Variant::Plain, &v6only), Rule::Free);
        // Another address: no overlap.
        let lo2 = sock(LISTEN, "127.0.0.2:80", 1000, None);
        assert_eq!(
            by_rules(
                Proto::Tcp,
                "127.0.0.1".parse().unwrap(),
                Variant::Plain,
                0,
                &[lo2]
            ),
            Rule::Free
        );
        // The worst socket decides.
        assert_eq!(
            by_rules(
                Proto::Tcp,
                any4,
                Variant::Reuseaddr,
                1000,
                &[tw.clone(), listener]
            ),
            Rule::Taken
        );
    }

    #[test]
    fn udp_rules() {
        let any4: IpAddr = "0.0.0.0".parse().unwrap();
        let mut s = sock(7, "0.0.0.0:53", 1000, None);
        s.protocol = 17;
        let rule = |v, uid| by_rules(Proto::Udp, any4, v, uid, std::slice::from_ref(&s));
        assert_eq!(rule(Variant::Plain, 1000), Rule::Taken);
        assert_eq!(
            rule(Variant::Reuseaddr, 0),
            Rule::IfHolderSet("SO_REUSEADDR")
        );
        assert_eq!(
            rule(Variant::Reuseport, 1000),
            Rule::IfHolderSet("SO_REUSEPORT")
        );
        assert_eq!(rule(Variant::Reuseport, 0), Rule::Taken);
    }
}
