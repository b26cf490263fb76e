//! Would a new bind() of an address and port succeed now? Two ways to know:
//! the kernel's conflict rules applied to the sockets sock_diag lists
//! ([`by_rules`]), and a trial bind of a fresh socket, closed at once
//! ([`trial`]), which is the kernel's own answer.
//!
//! The rules are those of `inet_bind_conflict` (TCP, net/ipv4/inet_connection_sock.c)
//! and `udp_lib_lport_inuse` (UDP), for an explicit port, with the device
//! rule of both ([`apart`]). What sock_diag cannot tell is whether the holder
//! set SO_REUSEADDR or SO_REUSEPORT: where the answer hangs on that, the
//! rules use the holder's options when they are known ([`Known`]: read from
//! its socket, or the tracer's record), and otherwise say so instead of
//! guessing.

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};

pub use crate::holders::devices::Apart;
use crate::{
    holders::{overlaps, sockdiag::DiagSocket, Devices, State},
    request::{Binding, Errno, Family, Opts, Proto},
};

/// The kernel's device rule for a socket bound to device `mine` (0: none)
/// and one bound to `theirs`: None when they may conflict (then addresses
/// and options decide).
///
/// TCP keeps one bind bucket per (port, L3 domain): `inet_csk_get_port`
/// matches buckets on `inet_sk_bound_l3mdev(sk)`, which is the VRF the
/// bound device is or belongs to (`l3mdev_master_ifindex_by_index`) unless
/// `tcp_l3mdev_accept` is set, and 0 otherwise; sockets in different buckets
/// never meet. Within one bucket, and for UDP (`udp_lib_lport_inuse`, which
/// has no such scope), two sockets conflict only if either is bound to no
/// device or both to the same one.
///
/// The bucket was chosen when the holder bound: a socket bound before
/// `tcp_l3mdev_accept` or the device's VRF changed stays where it was,
/// which the rule, reading them now, does not see.
pub fn apart(proto: Proto, mine: u32, theirs: u32, devices: &Devices) -> Option<Apart> {
    if proto == Proto::Tcp
        && devices.tcp_l3mdev_accept == Some(false)
        && devices.l3mdev(mine) != devices.l3mdev(theirs)
    {
        return Some(Apart::OtherVrf);
    }
    (mine != 0 && theirs != 0 && mine != theirs).then_some(Apart::OtherDevice)
}

/// A new bind's place under the device rule: the index of the device it
/// binds to (SO_BINDTODEVICE) and its namespace's devices.
#[derive(Debug, Clone, Copy)]
pub struct OnDevice<'a> {
    /// The index of [`Binding::device`]; 0 when it names none, or none by
    /// that name exists (then every socket may be in its way).
    pub index: u32,
    /// The namespace's devices, as far as the rule needs them.
    pub devices: &'a Devices,
}

impl<'a> OnDevice<'a> {
    /// `binding`'s device, looked up in `devices`.
    pub fn of(binding: &Binding, devices: &'a Devices) -> Self {
        let index = binding
            .device
            .as_deref()
            .and_then(|name| devices.index_of(name))
            .unwrap_or(0);
        Self { index, devices }
    }

    /// Why socket `s` is never in the way of a bind of `proto` on this
    /// device ([`apart`]); None when it may be.
    pub fn apart(&self, proto: Proto, s: &DiagSocket) -> Option<Apart> {
        apart(proto, self.index, s.bound_dev_if, self.devices)
    }
}

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

    /// The bind a socket with `opts` makes: SO_REUSEPORT's when it sets
    /// both options (a trial sets one at a time), else the one it sets.
    pub fn asked(opts: &Opts) -> Variant {
        match (opts.reuseaddr, opts.reuseport) {
            (_, true) => Variant::Reuseport,
            (true, false) => Variant::Reuseaddr,
            (false, false) => Variant::Plain,
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

/// What is known of a listed socket's own SO_REUSEADDR and SO_REUSEPORT
/// (sock_diag shows neither): None each when unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Known {
    /// SO_REUSEADDR.
    pub reuseaddr: Option<bool>,
    /// SO_REUSEPORT.
    pub reuseport: Option<bool>,
}

impl Known {
    /// Whether the socket set `option` ("SO_REUSEADDR" or "SO_REUSEPORT").
    fn set(&self, option: &str) -> Option<bool> {
        match option {
            "SO_REUSEADDR" => self.reuseaddr,
            "SO_REUSEPORT" => self.reuseport,
            _ => None,
        }
    }
}

/// The rules' answer for `binding` made with `variant`'s option (instead
/// of its own SO_REUSEADDR/SO_REUSEPORT), by a socket owned by `uid`, given
/// the `sockets` on the port, what is known of their options (`known[i]`
/// for `sockets[i]`; missing: nothing) and where its device puts it
/// (`on`): Taken if any socket conflicts (whatever its options, or by the
/// options it is known to have), else IfHolderSet if any conflicts unless
/// it set an option not known, else Free. Sockets the device rule keeps
/// apart never conflict.
pub fn by_rules(
    binding: &Binding,
    variant: Variant,
    uid: u32,
    sockets: &[DiagSocket],
    known: &[Known],
    on: OnDevice<'_>,
) -> Rule {
    let mut answer = Rule::Free;
    for (i, s) in sockets.iter().enumerate() {
        if on.apart(binding.proto, s).is_some() {
            continue;
        }
        let rule = match conflict(binding, variant, uid, s) {
            Rule::IfHolderSet(o) => match known.get(i).and_then(|k| k.set(o)) {
                Some(true) => Rule::Free,
                Some(false) => Rule::Taken,
                None => Rule::IfHolderSet(o),
            },
            rule => rule,
        };
        match rule {
            Rule::Taken => return Rule::Taken,
            Rule::IfHolderSet(o) => answer = Rule::IfHolderSet(o),
            Rule::Free => {}
        }
    }
    answer
}

/// One socket, not kept apart by the device rule, against the new bind.
fn conflict(binding: &Binding, variant: Variant, uid: u32, s: &DiagSocket) -> Rule {
    let Ok(family) = Family::try_from(u16::from(s.family)) else {
        return Rule::Free;
    };
    let (proto, addr) = (binding.proto, binding.addr);
    if overlaps(
        (Family::of(addr), addr, binding.opts.v6only),
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

/// Binds a fresh socket as `binding` asks (address, port, IPV6_V6ONLY,
/// device) but with `variant`'s option, in the calling thread's network
/// namespace, and closes it at once (never listen() or connect()). With
/// `uid`, the socket is created under that fsuid, which makes it that uid's
/// socket for SO_REUSEPORT; the thread's fsuid is put back before returning.
///
/// Ok(None): the bind succeeded; Ok(Some(errno)): the kernel refused it;
/// Err: the trial could not be made.
pub fn trial(binding: &Binding, variant: Variant, uid: Option<u32>) -> io::Result<Option<Errno>> {
    let (addr, port) = (binding.addr, binding.port);
    let (ty, protocol) = match binding.proto {
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
        socket.set_only_v6(binding.opts.v6only)?;
    }
    if let Some(device) = &binding.device {
        socket.bind_device(Some(device.as_bytes()))?;
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
        let any4 = Binding::plain(Proto::Tcp, "0.0.0.0".parse().unwrap(), 80);
        let none = Devices::default();
        let on = OnDevice::of(&any4, &none);
        let rule = |v, s: &DiagSocket| by_rules(&any4, v, 1000, std::slice::from_ref(s), &[], on);
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
                &Binding::plain(Proto::Tcp, "127.0.0.1".parse().unwrap(), 80),
                Variant::Plain,
                0,
                &[lo2],
                &[],
                on
            ),
            Rule::Free
        );
        // The worst socket decides.
        assert_eq!(
            by_rules(
                &any4,
                Variant::Reuseaddr,
                1000,
                &[tw.clone(), listener],
                &[],
                on
            ),
            Rule::Taken
        );
    }

    /// IPV6_V6ONLY on the new socket keeps IPv4 out of its way; a device on
    /// both sockets, different ones, keeps them apart (`lo` is index 1).
    #[test]
    fn v6only_and_device_rules() {
        let mut any6 = Binding::plain(Proto::Tcp, "::".parse().unwrap(), 80);
        let v4 = sock(LISTEN, "0.0.0.0:80", 1000, None);
        let links = Devices::of(&[(1, "lo", false, None)], false);
        let plain = |b: &Binding, s: &DiagSocket| {
            let on = OnDevice::of(b, &links);
            by_rules(b, Variant::Plain, 0, std::slice::from_ref(s), &[], on)
        };
        assert_eq!(plain(&any6, &v4), Rule::Taken);
        any6.opts.v6only = true;
        assert_eq!(plain(&any6, &v4), Rule::Free);

        let any4 = Binding {
            device: Some("lo".into()),
            ..Binding::plain(Proto::Tcp, "0.0.0.0".parse().unwrap(), 80)
        };
        let on = |dev| {
            let mut s = v4.clone();
            s.bound_dev_if = dev;
            plain(&any4, &s)
        };
        assert_eq!(on(0), Rule::Taken, "an unbound socket takes every device");
        assert_eq!(on(1), Rule::Taken, "the same device");
        assert_eq!(on(1000), Rule::Free, "another device");
        let nowhere = Binding {
            device: Some("no-such-dev".into()),
            ..any4.clone()
        };
        let mut s = v4.clone();
        s.bound_dev_if = 1000;
        assert_eq!(plain(&nowhere, &s), Rule::Taken, "unknown device: no claim");
    }

    /// Known options settle what the rules alone leave to the holder.
    #[test]
    fn known_options_settle_it_depends() {
        let any4 = Binding::plain(Proto::Tcp, "0.0.0.0".parse().unwrap(), 80);
        let none = Devices::default();
        let on = OnDevice::of(&any4, &none);
        let bound = sock(BOUND, "0.0.0.0:80", 1000, None);
        let listener = sock(LISTEN, "0.0.0.0:80", 1000, None);
        let rule = |v, s: &DiagSocket, k: Known| {
            by_rules(&any4, v, 1000, std::slice::from_ref(s), &[k], on)
        };
        let addr = |b| Known {
            reuseaddr: Some(b),
            reuseport: Some(false),
        };
        let port = |b| Known {
            reuseaddr: Some(false),
            reuseport: Some(b),
        };
        assert_eq!(rule(Variant::Reuseaddr, &bound, addr(true)), Rule::Free);
        assert_eq!(rule(Variant::Reuseaddr, &bound, addr(false)), Rule::Taken);
        assert_eq!(rule(Variant::Reuseport, &listener, port(true)), Rule::Free);
        assert_eq!(
            rule(Variant::Reuseport, &listener, port(false)),
            Rule::Taken
        );
        // What is certain stays so; what is unknown stays unknown.
        assert_eq!(rule(Variant::Reuseaddr, &listener, addr(true)), Rule::Taken);
        assert_eq!(
            rule(Variant::Reuseaddr, &bound, Known::default()),
            Rule::IfHolderSet("SO_REUSEADDR")
        );
    }

    #[test]
    fn udp_rules() {
        let any4 = Binding::plain(Proto::Udp, "0.0.0.0".parse().unwrap(), 53);
        let mut s = sock(7, "0.0.0.0:53", 1000, None);
        s.protocol = 17;
        let none = Devices::default();
        let on = OnDevice::of(&any4, &none);
        let rule = |v, uid| by_rules(&any4, v, uid, std::slice::from_ref(&s), &[], on);
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

    /// The device rule, as `inet_bind_conflict`, `inet_csk_get_port`'s
    /// per-VRF buckets and `udp_lib_lport_inuse` have it.
    #[test]
    fn device_rules() {
        // 2 veth0, 3 veth1, 4 VRF red, 5 eth0 in red, 6 VRF blue.
        let links = [
            (2, "veth0", false, None),
            (3, "veth1", false, None),
            (4, "red", true, None),
            (5, "eth0", false, Some(4)),
            (6, "blue", true, None),
        ];
        let scoped = Devices::of(&links, false);
        let global = Devices::of(&links, true);
        let (tcp, udp) = (Proto::Tcp, Proto::Udp);
        for d in [&scoped, &global] {
            for p in [tcp, udp] {
                // Either unbound, or the same device: they may conflict.
                assert_eq!(apart(p, 0, 0, d), None);
                assert_eq!(apart(p, 2, 2, d), None);
                assert_eq!(apart(p, 0, 2, d), None);
                assert_eq!(apart(p, 3, 0, d), None);
                // Two devices: never.
                assert_eq!(apart(p, 2, 3, d), Some(Apart::OtherDevice));
            }
        }
        // TCP, tcp_l3mdev_accept=0: unbound and in-VRF sockets never meet;
        // a VRF and its enslaved device share a bucket, where the devices differ.
        assert_eq!(apart(tcp, 0, 4, &scoped), Some(Apart::OtherVrf));
        assert_eq!(apart(tcp, 5, 0, &scoped), Some(Apart::OtherVrf));
        assert_eq!(apart(tcp, 4, 6, &scoped), Some(Apart::OtherVrf));
        assert_eq!(apart(tcp, 4, 5, &scoped), Some(Apart::OtherDevice));
        assert_eq!(apart(tcp, 4, 4, &scoped), None);
        // tcp_l3mdev_accept=1, or UDP: the plain device rule.
        assert_eq!(apart(tcp, 0, 4, &global), None);
        assert_eq!(apart(udp, 0, 4, &scoped), None);
        assert_eq!(apart(udp, 5, 0, &scoped), None);
        // No L3 master support (no sysctl): one scope.
        let mut plain = scoped.clone();
        plain.tcp_l3mdev_accept = None;
        assert_eq!(apart(tcp, 0, 4, &plain), None);

        // by_rules leaves apart sockets out.
        let mut on_veth0 = sock(LISTEN, "0.0.0.0:80", 0, None);
        on_veth0.bound_dev_if = 2;
        let rule = |device: Option<&str>| {
            let b = Binding {
                device: device.map(str::to_owned),
                ..Binding::plain(tcp, "0.0.0.0".parse().unwrap(), 80)
            };
            let on = OnDevice::of(&b, &scoped);
            by_rules(
                &b,
                Variant::Plain,
                0,
                std::slice::from_ref(&on_veth0),
                &[],
                on,
            )
        };
        assert_eq!(rule(Some("veth1")), Rule::Free);
        assert_eq!(rule(Some("veth0")), Rule::Taken);
        assert_eq!(rule(None), Rule::Taken);
    }
}
