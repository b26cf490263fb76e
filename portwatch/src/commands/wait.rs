//! `portwatch wait PORT`: block until a bind() of the port would succeed.
//!
//! Event-driven without eBPF: the kernel's sock_diag multicast groups
//! announce every destroyed TCP/UDP socket of the network namespace (what
//! `ss -E` listens to), so a holder closing its socket or exiting wakes the
//! check at once. TIME_WAIT leftovers expire without an announcement, so
//! while they are what is in the way the check also runs every
//! [`TIME_WAIT_POLL`]; otherwise every [`SAFETY_POLL`], in case a wake-up
//! was missed (a full socket buffer drops notifications).

use std::{
    io,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket};
use portwatch_core::{
    bindcheck::{self, NewBind, Variant},
    holders::{sockdiag, sysctl, Devices, State},
    request::Proto,
};

use super::{who, Error};
use crate::cli::{WaitArgs, WhoArgs};

/// Exit status of `wait` when `--timeout` ran out with the port still taken.
pub const EXIT_TIMED_OUT: u8 = 1;

/// Re-check interval while TIME_WAIT leftovers are in the way.
const TIME_WAIT_POLL: Duration = Duration::from_millis(20);
/// Re-check interval otherwise, should a destroy notification be lost.
const SAFETY_POLL: Duration = Duration::from_secs(1);
/// Re-check interval when the notifications cannot be had at all.
const FALLBACK_POLL: Duration = Duration::from_millis(20);

/// `SKNLGRP_INET_TCP_DESTROY` and friends (linux/sock_diag.h).
const TCP_DESTROY_GROUPS: [u32; 2] = [1, 3];
const UDP_DESTROY_GROUPS: [u32; 2] = [2, 4];

/// Runs `portwatch wait`; Ok(true) once the bind would succeed, Ok(false)
/// on timeout (after printing who still holds the port).
pub fn run(args: &WaitArgs) -> Result<bool, Error> {
    let ns = args.netns.as_deref().map(who::open_netns).transpose()?;
    let (port, proto) = args.port;
    let variant = if args.reuseaddr {
        Variant::Reuseaddr
    } else {
        Variant::Plain
    };
    let started = Instant::now();
    let deadline = (!args.timeout.is_zero()).then(|| started + args.timeout);
    let freed = who::in_netns(ns.as_ref(), |_| {
        let asked = Asked {
            proto,
            addr: args.addr,
            port,
            variant,
            device: args.device.as_deref(),
        };
        wait_here(&asked, deadline, args.reuseaddr)
    })?;
    let at = std::net::SocketAddr::new(args.addr, port);
    if freed {
        eprintln!(
            "portwatch: {} {at} is free{} after {:.3}s",
            proto.name(),
            if args.reuseaddr {
                " for SO_REUSEADDR"
            } else {
                ""
            },
            started.elapsed().as_secs_f64()
        );
        return Ok(true);
    }
    eprintln!(
        "portwatch: {} {at} still taken after {}",
        proto.name(),
        humantime::format_duration(args.timeout)
    );
    // The same answer `who` gives: holders, per-option verdicts, diagnosis.
    let who_args = WhoArgs {
        port: args.port,
        addr: args.addr,
        netns: args.netns.clone(),
        json: args.json,
        no_trial: false,
        device: args.device.clone(),
    };
    let report = who::in_netns(ns.as_ref(), |inode| who::look(&who_args, inode))?;
    who::answer(&report, args.json)?;
    Ok(false)
}

/// The bind waited for.
struct Asked<'a> {
    proto: Proto,
    addr: std::net::IpAddr,
    port: u16,
    variant: Variant,
    /// `--device`: the bind is made on it (SO_BINDTODEVICE).
    device: Option<&'a str>,
}

/// Waits in the calling thread's network namespace.
fn wait_here(asked: &Asked<'_>, deadline: Option<Instant>, reuseaddr: bool) -> Result<bool, Error> {
    let Asked {
        proto, addr, port, ..
    } = *asked;
    // A device the namespace lacks: say so now, not after the timeout.
    let device = match asked.device {
        Some(name) => Devices::here(true, &[], None)
            .map_err(|e| Error::Unsupported(format!("listing the network devices: {e}")))?
            .index_of(name)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "no network device '{}' in this network namespace",
                    name.escape_debug()
                ))
            })?,
        None => 0,
    };
    // Subscribe first, then check: a socket destroyed in between still wakes us.
    let events = subscribe(proto);
    if let Err(e) = &events {
        eprintln!(
            "portwatch: no socket-destroy notifications ({e}); checking every {} ms",
            FALLBACK_POLL.as_millis()
        );
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut said = false;
    loop {
        let (free, time_wait) = check(asked, device)?;
        if free {
            return Ok(true);
        }
        if !said {
            // One line that says it is waiting (scripts and tests key on it).
            eprintln!(
                "portwatch: waiting for {} {} to be free{}",
                proto.name(),
                std::net::SocketAddr::new(addr, port),
                if reuseaddr { " for SO_REUSEADDR" } else { "" }
            );
            said = true;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Ok(false);
        }
        let mut pause = match (&events, time_wait) {
            (Err(_), _) => FALLBACK_POLL,
            (Ok(_), true) => TIME_WAIT_POLL,
            (Ok(_), false) => SAFETY_POLL,
        };
        if let Some(d) = deadline {
            pause = pause.min(d.saturating_duration_since(now));
        }
        match &events {
            Ok(socket) => {
                if readable(socket, pause) {
                    // Drain: any destroyed socket is a reason to look again.
                    while socket.recv(&mut &mut buf[..], libc::MSG_DONTWAIT).is_ok() {}
                }
            }
            Err(_) => std::thread::sleep(pause),
        }
    }
}

/// Whether the bind would succeed now (`device`: the index of
/// `asked.device`), and whether TIME_WAIT leftovers are on the port (they
/// expire without a notification).
fn check(asked: &Asked<'_>, device: u32) -> Result<(bool, bool), Error> {
    let Asked {
        proto,
        addr,
        port,
        variant,
        ..
    } = *asked;
    // A UDP socket that shares the port receives datagrams at once: never
    // try that; plain binds are safe to try (they share nothing).
    let free = if proto == Proto::Udp && variant != Variant::Plain {
        let sockets = dump(proto, port)?;
        let devices = Devices::here(device != 0, &sockets, sysctl::sysctls().tcp_l3mdev_accept)
            .unwrap_or_default();
        let bind = NewBind {
            proto,
            addr,
            device,
        };
        let uid = nix::unistd::geteuid().as_raw();
        matches!(
            bindcheck::by_rules(bind, variant, uid, &sockets, &devices),
            bindcheck::Rule::Free
        )
    } else {
        bindcheck::trial(proto, addr, port, variant, None, asked.device)
            .map_err(|e| Error::Unsupported(format!("trial bind: {e}")))?
            .is_none()
    };
    if free || proto != Proto::Tcp {
        return Ok((free, false));
    }
    let time_wait = dump(proto, port)?
        .iter()
        .any(|s| State::from_kernel(proto, s.state) == State::TimeWait);
    Ok((false, time_wait))
}

fn dump(proto: Proto, port: u16) -> Result<Vec<sockdiag::DiagSocket>, Error> {
    sockdiag::dump(proto.code() as u8, Some(port), false)
        .map_err(|e| Error::Unsupported(format!("sock_diag: {e}")))
}

/// A netlink socket subscribed to the destroy notifications of `proto`'s
/// sockets, both families, in the calling thread's network namespace.
fn subscribe(proto: Proto) -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    let groups = match proto {
        Proto::Udp => UDP_DESTROY_GROUPS,
        _ => TCP_DESTROY_GROUPS,
    };
    for group in groups {
        socket.add_membership(group)?;
    }
    Ok(socket)
}

/// Waits up to `timeout` for `socket` to be readable.
fn readable(socket: &Socket, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}
