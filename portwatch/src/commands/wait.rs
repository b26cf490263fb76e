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
    engine,
    request::{Binding, Proto},
};

use super::{who, Error};
use crate::cli::WaitArgs;

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
    who::install_lookup(args.lookup.lookup)?;
    let ns = args.netns.as_deref().map(who::open_netns).transpose()?;
    let (port, proto) = args.port;
    let mut binding = Binding {
        device: args.device.clone(),
        ..Binding::plain(proto, args.addr, port)
    };
    binding.opts.reuseaddr = args.reuseaddr;
    let started = Instant::now();
    let deadline = (!args.timeout.is_zero()).then(|| started + args.timeout);
    let freed = who::in_netns(ns.as_ref(), |inode| {
        // A device the namespace lacks: said now, not after the timeout.
        who::check_device(binding.device.as_deref(), inode)?;
        wait_here(&binding, deadline, args.trial)
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
    let plain = Binding {
        device: args.device.clone(),
        ..Binding::plain(proto, args.addr, port)
    };
    let report = who::in_netns(ns.as_ref(), |inode| {
        who::look(plain, inode, args.trial, args.netns.as_deref())
    })?;
    who::answer(&report, args.json)?;
    Ok(false)
}

/// Waits in the calling thread's network namespace.
fn wait_here(binding: &Binding, deadline: Option<Instant>, trial: bool) -> Result<bool, Error> {
    // Subscribe first, then check: a socket destroyed in between still wakes us.
    let events = subscribe(&[binding.proto]);
    if let Err(e) = &events {
        eprintln!(
            "portwatch: no socket-destroy notifications ({e}); checking every {} ms",
            FALLBACK_POLL.as_millis()
        );
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut said = false;
    loop {
        let answer =
            engine::bind_now(binding, trial).map_err(|e| Error::Unsupported(e.to_string()))?;
        if answer.free {
            return Ok(true);
        }
        if !said {
            // One line that says it is waiting (scripts and tests key on it).
            eprintln!(
                "portwatch: waiting for {} {} to be free{}",
                binding.proto.name(),
                std::net::SocketAddr::new(binding.addr, binding.port),
                if binding.opts.reuseaddr {
                    " for SO_REUSEADDR"
                } else {
                    ""
                }
            );
            if let Some(why) = &answer.unknown {
                // Said once: the wait may last until the leftovers expire.
                eprintln!(
                    "portwatch: unknown without a trial bind ({why}): waiting until nothing of that kind is in the way; --trial would check with a real bind"
                );
            }
            said = true;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Ok(false);
        }
        let mut pause = match (&events, answer.time_wait) {
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

/// A netlink socket subscribed to the destroy notifications of the
/// sockets of `protos`, both families, in the calling thread's network
/// namespace (`check --wait` asks for both protocols).
pub(super) fn subscribe(protos: &[Proto]) -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    for proto in protos {
        let groups = match proto {
            Proto::Udp => UDP_DESTROY_GROUPS,
            _ => TCP_DESTROY_GROUPS,
        };
        for group in groups {
            socket.add_membership(group)?;
        }
    }
    Ok(socket)
}

/// Waits up to `timeout` for `socket` to be readable.
pub(super) fn readable(socket: &Socket, timeout: Duration) -> bool {
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
