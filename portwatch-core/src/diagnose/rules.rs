//! The rules: one function per reason, each returning a verdict only when
//! what was seen fits it. [`decide`] tries them in order; the first that
//! fits decides, and `unknown` speaks when none does.

use std::time::Duration;

use super::{
    advice::{lead, named, relation, shell_word, stop, v6only_on, Relation, REUSEPORT_CAVEAT},
    capital, socket_addr, Reason, Verdict,
};
use crate::{
    holders::{
        opened::{Clue, Opener},
        Evidence, Holder, State,
    },
    request::{Errno, Family, Opts, Request, Syscall},
    time::secs,
};

/// What every rule looks at: the request, the evidence, and what is
/// derived from them once.
struct Case<'a> {
    req: &'a Request,
    seen: &'a Evidence,
    /// "TCP 0.0.0.0:8080": the request as the diagnosis names it.
    what: String,
    /// The request's socket options (none known: all off).
    opts: Opts,
    /// The holders that still hold the port (not closed).
    live: Vec<&'a Holder>,
}

impl<'a> Case<'a> {
    fn new(req: &'a Request, seen: &'a Evidence) -> Self {
        Self {
            req,
            seen,
            what: format!(
                "{} {}{}",
                req.proto.name(),
                socket_addr(req.addr, req.port),
                seen.device
                    .as_ref()
                    .map(|d| format!(" (bound to {})", d.label()))
                    .unwrap_or_default()
            ),
            opts: req.opts.unwrap_or_default(),
            live: seen
                .holders
                .iter()
                .filter(|h| h.state != State::Closed)
                .collect(),
        }
    }

    /// The first live holder in `state`.
    fn first(&self, state: State) -> Option<&'a Holder> {
        self.live.iter().copied().find(|h| h.state == state)
    }

    /// `h` with its relation to the requester and the way to stop it,
    /// worked out once.
    fn against(&self, h: &'a Holder) -> Against<'a> {
        let rel = relation(h, self.req, self.seen);
        Against {
            h,
            rel,
            stop: stop(h, rel, self.req.port, self.seen),
        }
    }
}

/// One holder as a rule speaks of it.
struct Against<'a> {
    h: &'a Holder,
    rel: Relation,
    /// What to do about it (see `advice::stop`).
    stop: String,
}

/// A rule: a verdict when what was seen fits its reason.
type Rule = fn(&Case) -> Option<Verdict>;

/// The rules for a bind() that failed with EADDRINUSE, in order.
const BIND_IN_USE: [Rule; 7] = [
    ephemeral_request,
    dual_stack,
    listener,
    bound_not_listening,
    ephemeral_port,
    connection,
    time_wait,
];

/// The rules for a listen() that failed with EADDRINUSE.
const LISTEN_IN_USE: [Rule; 1] = [listen_conflict];

/// The verdict on `req` given `seen`: the first rule that fits.
pub(super) fn decide(req: &Request, seen: &Evidence) -> Verdict {
    let case = Case::new(req, seen);
    let fits = |rules: &[Rule]| rules.iter().find_map(|rule| rule(&case));
    let verdict = match req.errno_or_in_use() {
        Errno(libc::EACCES) => privileged(&case),
        Errno(libc::EADDRNOTAVAIL) => not_local(&case),
        Errno(libc::EADDRINUSE) if req.syscall == Syscall::Listen => fits(&LISTEN_IN_USE),
        Errno(libc::EADDRINUSE) => fits(&BIND_IN_USE),
        _ => None,
    };
    verdict.unwrap_or_else(|| unknown(&case, &case.what))
}

/// listen() after both sockets bound the port under SO_REUSEADDR.
fn listen_conflict(c: &Case) -> Option<Verdict> {
    let a = c.against(c.first(State::Listen)?);
    Some(Verdict {
        reason: Reason::ListenConflict,
        diagnosis: format!(
            "listen() on {} failed: {}{} already listens on it; both sockets could bind the port only because SO_REUSEADDR lets sockets share a port until one of them listens",
            c.what,
            lead(a.rel),
            a.h.who()
        ),
        fix: match a.rel {
            Relation::Other | Relation::Unknown => format!(
                "{}; SO_REUSEADDR only lets sockets share a port until one listens",
                capital(&a.stop)
            ),
            _ => format!(
                "bind one socket per port and listen on it; to share the port between processes, set SO_REUSEPORT on every socket under one uid ({REUSEPORT_CAVEAT}); or {}",
                a.stop
            ),
        },
    })
}

/// Only cross-family holders are in the way: the fix is a socket option.
fn dual_stack(c: &Case) -> Option<Verdict> {
    let same_family = c
        .live
        .iter()
        .any(|h| !h.cross_family && h.state != State::TimeWait);
    if same_family {
        return None;
    }
    let h = c
        .live
        .iter()
        .find(|h| h.cross_family && h.state != State::TimeWait)?;
    Some(dual_stack_verdict(c, &c.against(h)))
}

/// A listener (or a bound UDP socket) holds the port.
fn listener(c: &Case) -> Option<Verdict> {
    let h = c.first(State::Listen).or_else(|| c.first(State::Udp))?;
    let a = c.against(h);
    if let Some(v) = reuseport(c, &a) {
        return Some(v);
    }
    let kind = if h.state == State::Udp {
        "with a UDP socket bound to"
    } else {
        "listening on"
    };
    let fix = capital(&a.stop);
    // A socket unit's name already says where it listens.
    let at = match &h.socket_unit {
        Some(_) => String::new(),
        None => format!(" {kind} {}", socket_addr(h.addr, h.port)),
    };
    Some(Verdict {
        reason: Reason::Listener,
        diagnosis: format!("{} is taken by {}{}{at}", c.what, lead(a.rel), named(h)),
        fix: match a.rel {
            // A pod's fix already says which side moves.
            _ if h
                .container
                .as_ref()
                .is_some_and(|c| c.pod.is_some() || c.kubernetes) =>
            {
                fix
            }
            Relation::Unknown | Relation::SameProcess => format!("{fix}; or use another port"),
            _ => fix,
        },
    })
}

/// A socket bound the port but neither listens nor connects.
fn bound_not_listening(c: &Case) -> Option<Verdict> {
    let a = c.against(c.first(State::Bound)?);
    if let Some(v) = reuseport(c, &a) {
        return Some(v);
    }
    Some(Verdict {
        reason: Reason::BoundNotListening,
        diagnosis: format!(
            "{} is held by {}{}, whose socket bound {} but never listened or connected (invisible to `ss -l`)",
            c.what,
            lead(a.rel),
            a.h.who(),
            socket_addr(a.h.addr, a.h.port)
        ),
        fix: format!(
            "{}; and find why it holds a bound socket it does not use (a leaked or half-initialised socket, or a port reserved on purpose)",
            capital(&a.stop)
        ),
    })
}

/// The first live connection, if no listener is left.
fn first_connection<'a>(c: &Case<'a>) -> Option<&'a Holder> {
    c.live
        .iter()
        .copied()
        .find(|h| matches!(h.state, State::Connection(_)))
}

/// Live connections without a listener hold the port. Never `kill`: a
/// connection ends when its owner closes it, and which fix is right depends
/// on which end opened it (`Evidence::opened`); when nothing shows it, the
/// fix is one that is right either way.
fn connection(c: &Case) -> Option<Verdict> {
    let a = c.against(first_connection(c)?);
    let n: u32 = c
        .live
        .iter()
        .filter(|h| matches!(h.state, State::Connection(_)))
        .map(|h| h.sockets)
        .sum();
    let e_g = format!(
        "e.g. {} {} to {}",
        a.h.who(),
        a.h.state.name(),
        a.h.remote.as_deref().unwrap_or("?")
    );
    let what = &c.what;
    let ends = format!("they end when their owner, {}, closes them", named(a.h));
    let (diagnosis, fix) = match &c.seen.opened {
        Some(o) if o.by == Opener::Accepted => (
            format!(
                "{what} is in use by {n} live connection(s) that a listener on it accepted ({}), {e_g}; that listener is gone",
                o.because()
            ),
            accepted_fix(c, &ends),
        ),
        Some(o) => (
            format!(
                "{what} is the source port of {n} outgoing connection(s) ({}), {e_g}; {}",
                o.because(),
                match c.seen.sysctls.as_ref().and_then(|s| s.local_port_range) {
                    Some((lo, hi)) => format!("the port is outside ip_local_port_range {lo}-{hi}, so the program bound it itself"),
                    None => "the program bound it itself, or the kernel picked it".into(),
                }
            ),
            format!(
                "{}; meanwhile nothing else can bind the port: give this service another port, or change the source port the other program binds",
                capital(&ends)
            ),
        ),
        None => (
            format!(
                "{what} is in use by {n} live connection(s) without a listener, {e_g}; nothing seen shows which end opened them: connections a listener accepted before it closed, or an outgoing connection's source port{}",
                in_range_note(c)
            ),
            either_fix(c, &ends),
        ),
    };
    Some(Verdict {
        reason: Reason::Connection,
        diagnosis,
        fix,
    })
}

/// " (the port is inside ip_local_port_range LO-HI, which the kernel hands
/// out to outgoing connections)" when it is.
fn in_range_note(c: &Case) -> String {
    match c.seen.sysctls.as_ref().and_then(|s| s.local_port_range) {
        Some((lo, hi)) if (lo..=hi).contains(&c.req.port) => format!(
            " (the port is inside ip_local_port_range {lo}-{hi}, which the kernel hands out to outgoing connections)"
        ),
        _ => String::new(),
    }
}

/// Whether SO_REUSEADDR may still be advised: this socket lacks it and no
/// trial bind has shown it failing.
fn reuseaddr_may_help(c: &Case) -> bool {
    !c.opts.reuseaddr && !c.seen.trial_failed.reuseaddr
}

/// Connections an old listener accepted: SO_REUSEADDR gets a new listener
/// past them only if the old listener had it too (its accepted sockets keep
/// it), so it is advised only where no bind has shown it failing.
fn accepted_fix(c: &Case, ends: &str) -> String {
    if reuseaddr_may_help(c) {
        format!(
            "set SO_REUSEADDR on the listening socket before bind() (the kernel lets a new listener bind beside connections an old listener accepted when both set it; it never lets two listeners share a port); or wait: {ends}"
        )
    } else {
        format!(
            "wait: {ends} (the old listener had no SO_REUSEADDR, which its accepted connections keep, so no option of the new socket gets past them); for the next restart, set SO_REUSEADDR on the listening socket of the old instance too"
        )
    }
}

/// Connections whose opener is unknown: a fix right in both cases.
/// Reserving a port inside the range keeps outgoing connections off it and
/// costs a server nothing; SO_REUSEADDR gets past an old listener's
/// accepted connections if that listener had it.
fn either_fix(c: &Case, ends: &str) -> String {
    let mut parts = Vec::new();
    if let Some(r) = reserve(c) {
        parts.push(format!(
            "if they are outgoing, keep the kernel from handing the port out again: {r}"
        ));
    }
    if reuseaddr_may_help(c) {
        parts.push("if an old listener accepted them, set SO_REUSEADDR on the listening socket before bind() (enough when the old listener had it too; it never lets two listeners share a port)".to_owned());
    }
    parts.push(format!("either way {ends}"));
    capital(&parts.join("; "))
}

/// The reservation of the request's port, when it is inside
/// ip_local_port_range: the list the kernel has plus the port, set where
/// the failure happened.
fn reserve(c: &Case) -> Option<String> {
    let sysctls = c.seen.sysctls.as_ref()?;
    let (low, high) = sysctls.local_port_range?;
    let port = c.req.port;
    if !(low..=high).contains(&port) {
        return None;
    }
    let list = match sysctls.local_reserved_ports.as_deref() {
        Some("") | None => port.to_string(),
        Some(list) => format!("{list},{port}"),
    };
    Some(format!(
        "reserve it, keeping what is reserved today: {}",
        set_sysctl(c, "net.ipv4.ip_local_reserved_ports", &list)
    ))
}

/// How to set sysctl `name` to `value` in the failure's own network
/// namespace: `sysctl -w` there, and what makes it last. A plain `sysctl
/// -w` on the host would change the host's setting, not a container's.
fn set_sysctl(c: &Case, name: &str, value: &str) -> String {
    // Values made here: digits, commas, dashes, or a range with a space.
    let word = if value.contains(' ') {
        format!("\"{value}\"")
    } else {
        value.to_owned()
    };
    let scope = &c.seen.scope;
    if scope.host == Some(true) || (scope.host.is_none() && scope.enter.is_none()) {
        let proxy = c
            .req
            .caller
            .as_ref()
            .is_some_and(|me| me.comm == "docker-proxy");
        let host = match (scope.host, proxy) {
            (_, true) => " (docker-proxy binds published ports in the host's network namespace, so the host's setting is the one that counts)",
            (Some(true), false) => " (this is the host's network namespace)",
            _ => " (in the network namespace portwatch looked in)",
        };
        return format!(
            "`sysctl -w {name}={word}` now, and the line `{name} = {value}` in a file under /etc/sysctl.d/ for the next boot{host}"
        );
    }
    let now = match &scope.enter {
        Some(path) => format!(
            "`nsenter --net={} sysctl -w {name}={word}`",
            shell_word(path)
        ),
        None => format!("`sysctl -w {name}={word}` run in this network namespace"),
    };
    format!(
        "{now} now (this namespace's own setting, not the host's; it is lost with the namespace), and {}",
        lasting(c, name, value)
    )
}

/// What keeps a setting of a namespace that is not the host's: the
/// container's or pod's own definition, else the start-up of the process.
fn lasting(c: &Case, name: &str, value: &str) -> String {
    let Some(ct) = &c.seen.caller.in_container else {
        return format!(
            "for good, set it where the namespace is made, in the process's own start-up (e.g. `ip netns exec NAME sysctl -w {name}=...` before it starts)"
        );
    };
    if let Some(p) = &ct.pod {
        return format!(
            "for good, in pod {}/{}'s spec: `securityContext.sysctls: [{{name: {name}, value: \"{value}\"}}]` (a change to its workload, made on the cluster side; kubelet refuses a sysctl it does not count safe unless `--allowed-unsafe-sysctls` lists it)",
            shell_word(&p.namespace),
            shell_word(&p.name)
        );
    }
    let cli = ct.runtime.cli().unwrap_or("docker");
    format!(
        "for good, start {} with `{cli} run --sysctl {name}={value}` (compose: `sysctls:`)",
        ct.label()
    )
}

/// Only TIME_WAIT leftovers of closed connections hold the port.
fn time_wait(c: &Case) -> Option<Verdict> {
    let tw = c.first(State::TimeWait)?;
    // The kernel lets a bind through TIME_WAIT leftovers only when both
    // the new socket and the socket that left them set SO_REUSEADDR
    // (a leftover keeps its socket's setting; measured on 6.18).
    // Whole seconds, rounded up: "retry in" must not be too short.
    let left = tw
        .time_left_ms
        .map(|ms| secs(Duration::from_secs(ms.div_ceil(1000))))
        .unwrap_or_else(|| "?".into());
    let closed = c.seen.holders.iter().find(|h| h.state == State::Closed);
    let by = closed
        .map(|h| format!(", left by {}", h.who()))
        .unwrap_or_default();
    let old_had_it = closed.and_then(|h| h.reuseaddr);
    let (why, fix) = match (c.opts.reuseaddr, old_had_it) {
        (false, Some(false)) => (
            "neither this socket nor the one that left them set SO_REUSEADDR".to_owned(),
            format!(
                "retry in {left}; for the next restart, set SO_REUSEADDR on the listening socket before bind() in both the old and the new instance (safe for TCP listeners: it never lets two listeners share a port)"
            ),
        ),
        (false, _) => (
            "this socket has no SO_REUSEADDR".to_owned(),
            format!(
                "set SO_REUSEADDR on the listening socket before bind() (safe for TCP listeners: it never lets two listeners share a port; it gets through TIME_WAIT only if the socket that left them had it too, as most servers do), or retry in {left}"
            ),
        ),
        (true, _) => (
            "this socket has SO_REUSEADDR, but the socket that left them did not, and the kernel wants it on both".to_owned(),
            format!(
                "retry in {left}; for the next restart, set SO_REUSEADDR on the listening socket of the old instance too"
            ),
        ),
    };
    Some(Verdict {
        reason: Reason::TimeWait,
        diagnosis: format!(
            "{} is held only by {} of closed connections{by}; they expire in at most {left}, and {why}",
            c.what,
            tw.who()
        ),
        fix,
    })
}

/// Outgoing connections (as `Evidence::opened` shows, never guessed from
/// the peer's port) hold a port inside ip_local_port_range: the kernel gave
/// it as their source port. Socket options cannot help (the connection's
/// socket has none of the new socket's), so the fix keeps the kernel from
/// handing the port out again, in the failure's own network namespace.
fn ephemeral_port(c: &Case) -> Option<Verdict> {
    let h = first_connection(c)?;
    let opened = c
        .seen
        .opened
        .as_ref()
        .filter(|o| o.by == Opener::Outgoing)?;
    let (low, high) = c.seen.sysctls.as_ref()?.local_port_range?;
    let reserve = reserve(c)?;
    let port = c.req.port;
    // An explicit bind() of the port is a choice a reservation does not
    // stop; sock_diag cannot tell one from the kernel's pick, the record
    // shows a bind() (of this port or of port 0).
    let bound = match opened.clue {
        Clue::BoundThenConnected => " (the program bound it with bind() before connecting: if it asks for this port rather than port 0, no reservation stops it; change its setting)",
        _ => " (a reservation stops the kernel's own picks, not a program that binds this port itself)",
    };
    Some(Verdict {
        reason: Reason::EphemeralPort,
        diagnosis: format!(
            "{} was taken as the source port of an outgoing connection of {} to {} ({}): {}; ip_local_port_range is {low}-{high}, so the kernel hands port {port} to outgoing connections, and nothing listens on it",
            c.what,
            h.who(),
            h.remote.as_deref().unwrap_or("?"),
            h.state.name(),
            opened.because()
        ),
        fix: format!(
            "{}{bound}; or move the service below {low}; the connection itself ends when its owner closes it",
            capital(&reserve)
        ),
    })
}

/// Only a socket of the other family is in the way, through an IPv6
/// wildcard without IPV6_V6ONLY. Whose IPv6 socket that is decides the
/// advice: the requester's own (its configuration), or the holder's (stop
/// or move it first; the option only as the holder's own setting).
fn dual_stack_verdict(c: &Case, a: &Against) -> Verdict {
    let (req, h, what) = (c.req, a.h, &c.what);
    let port = req.port;
    let held = socket_addr(h.addr, h.port);
    let mine_is_v6 = req.family == Family::Ipv6;
    let me = req
        .caller
        .as_ref()
        .map(|c| c.comm.as_str())
        .filter(|c| !c.is_empty());
    if a.rel == Relation::SameProcess {
        // nginx's `listen P; listen [::]:P ipv6only=off;`, or the reverse.
        let (v6, v4) = if mine_is_v6 {
            (
                format!("its [::]:{port} socket without IPV6_V6ONLY"),
                format!("its own {held} socket"),
            )
        } else {
            (
                format!("its own {held} socket (IPv6, without IPV6_V6ONLY)"),
                format!("this {} bind", req.addr),
            )
        };
        let fix = match me {
            Some("nginx") => format!(
                "fix nginx's own listen lines: keep `listen [::]:{port} ipv6only=off;` alone (it serves IPv4 too) and drop `listen {port};`, or make it `listen [::]:{port} ipv6only=on;` (the default) so each family binds its own socket"
            ),
            _ => format!(
                "fix this program's own configuration: bind only the IPv6 wildcard and let it serve both families, or set IPV6_V6ONLY on its IPv6 socket so each family binds its own socket on port {port}"
            ),
        };
        return Verdict {
            reason: Reason::DualStack,
            diagnosis: format!(
                "{what} collides with this same process: {v6} also takes every IPv4 address of port {port}, so it and {v4} cannot both bind"
            ),
            fix,
        };
    }
    let covers = if mine_is_v6 {
        format!(
            "{} holds {} {held}, and this IPv6 wildcard without IPV6_V6ONLY would take IPv4 too",
            named(h),
            h.state.name()
        )
    } else {
        format!(
            "{} holds {} {held} without IPV6_V6ONLY, which also takes every IPv4 address of port {port}",
            named(h),
            h.state.name()
        )
    };
    let lead = lead(a.rel);
    // The option advice goes to whoever owns the IPv6 socket it changes,
    // and only where it would make this bind succeed.
    let option = if mine_is_v6 {
        format!(
            "if this socket should serve IPv6 only, set {}",
            v6only_on(me, port)
        )
    } else {
        format!(
            "if {} should keep IPv6 alone, set {}, and this IPv4 bind then succeeds",
            h.comm.as_deref().unwrap_or("the holder"),
            v6only_on(h.comm.as_deref(), port)
        )
    };
    Verdict {
        reason: Reason::DualStack,
        diagnosis: format!("{what} is taken by {lead}{covers}"),
        fix: format!("{}; or, {option}", capital(&a.stop)),
    }
}

/// SO_REUSEPORT on one side only, or on both under different uids.
fn reuseport(c: &Case, a: &Against) -> Option<Verdict> {
    let (req, h) = (c.req, a.h);
    let mine = req.opts?.reuseport;
    let theirs = h.reuseport;
    let my_uid = req.caller.as_ref().map(|c| c.uid);
    let mismatch = match theirs {
        Some(theirs) if theirs != mine => Some(format!(
            "SO_REUSEPORT is set on {} only",
            if mine { "this socket" } else { "the holder" }
        )),
        Some(true) if h.uid.is_some() && h.uid != my_uid => Some(format!(
            "both set SO_REUSEPORT but under different uids ({} and {})",
            h.uid.unwrap_or_default(),
            my_uid.map_or_else(|| "?".into(), |u| u.to_string())
        )),
        // Same options and uid, or the holder's options are unknown (it
        // predates portwatch): no claim.
        _ => None,
    }?;
    let share = format!(
        "set SO_REUSEPORT on both sockets, under the same uid, before bind() ({REUSEPORT_CAVEAT})"
    );
    // Sharing a port is a decision for one service's own instances; another
    // program is stopped or moved first, and its socket is its own business.
    let fix = match a.rel {
        Relation::Other | Relation::Unknown => format!(
            "{}; sharing the port instead would need SO_REUSEPORT on {}'s socket too, set in its own configuration, under the same uid ({REUSEPORT_CAVEAT})",
            capital(&a.stop),
            h.comm.as_deref().unwrap_or("the holder")
        ),
        _ => format!("{share}; or {}", a.stop),
    };
    Some(Verdict {
        reason: Reason::ReuseportMismatch,
        diagnosis: format!(
            "{} is held by {}{} ({} {}): {mismatch}, so the kernel will not share the port",
            c.what,
            lead(a.rel),
            h.who(),
            h.state.name(),
            socket_addr(h.addr, h.port)
        ),
        fix,
    })
}

/// bind() to port 0 found no free port in the ephemeral range.
fn ephemeral_request(c: &Case) -> Option<Verdict> {
    let (req, seen) = (c.req, c.seen);
    if req.syscall != Syscall::Bind || req.port != 0 {
        return None;
    }
    let range = seen.sysctls.as_ref().and_then(|s| s.local_port_range);
    Some(match (range, seen.ephemeral_in_use) {
        (Some((lo, hi)), Some(used)) if used > usize::from(hi - lo) => Verdict {
            reason: Reason::EphemeralExhausted,
            diagnosis: format!(
                "bind() to {} port 0 found no free port: all {} ports of ip_local_port_range {lo}-{hi} are in use",
                req.proto.name(),
                usize::from(hi - lo) + 1
            ),
            fix: format!(
                "widen the range ({}), close idle sockets, and give outgoing sockets IP_BIND_ADDRESS_NO_PORT so connect() picks the port per destination",
                set_sysctl(c, "net.ipv4.ip_local_port_range", "10000 65000")
            ),
        },
        (Some((lo, hi)), used) => Verdict {
            reason: Reason::EphemeralExhausted,
            diagnosis: format!(
                "bind() to {} port 0 found no free port in ip_local_port_range {lo}-{hi}{}",
                req.proto.name(),
                used.map(|u| format!(" ({u} of its ports in use when portwatch looked)")).unwrap_or_default()
            ),
            fix: format!(
                "widen the range ({}), close idle sockets, and give outgoing sockets IP_BIND_ADDRESS_NO_PORT",
                set_sysctl(c, "net.ipv4.ip_local_port_range", "10000 65000")
            ),
        },
        _ => unknown(c, &format!("{} port 0", req.proto.name())),
    })
}

/// A port below ip_unprivileged_port_start without CAP_NET_BIND_SERVICE.
fn privileged(c: &Case) -> Option<Verdict> {
    let req = c.req;
    let start = c
        .seen
        .sysctls
        .as_ref()
        .and_then(|s| s.unprivileged_port_start);
    match start {
        Some(start) if req.syscall == Syscall::Bind && u32::from(req.port) < start => Some(Verdict {
            reason: Reason::PrivilegedPort,
            diagnosis: format!(
                "{}: port {} is below ip_unprivileged_port_start ({start}) and {} lacks CAP_NET_BIND_SERVICE",
                c.what,
                req.port,
                req.caller.as_ref().map_or_else(|| "the caller".into(), |c| format!("pid {} (uid {})", c.pid, c.uid))
            ),
            fix: format!(
                "grant CAP_NET_BIND_SERVICE (systemd: `AmbientCapabilities=CAP_NET_BIND_SERVICE`; a binary: `setcap cap_net_bind_service=+ep FILE`), or use a port >= {start}"
            ),
        }),
        _ => None,
    }
}

/// An address the namespace does not have, without IP_FREEBIND.
fn not_local(c: &Case) -> Option<Verdict> {
    let (req, opts) = (c.req, c.opts);
    let nonlocal = c.seen.sysctls.as_ref().and_then(|s| match req.family {
        Family::Ipv4 => s.nonlocal_bind_v4,
        Family::Ipv6 => s.nonlocal_bind_v6,
    });
    if req.syscall != Syscall::Bind || opts.freebind || opts.transparent || nonlocal != Some(false)
    {
        return None;
    }
    let sysctl = match req.family {
        Family::Ipv4 => "net.ipv4.ip_nonlocal_bind",
        Family::Ipv6 => "net.ipv6.ip_nonlocal_bind",
    };
    Some(Verdict {
        reason: Reason::AddrNotLocal,
        diagnosis: format!(
            "{}: {} is not an address of any interface in this network namespace",
            c.what, req.addr
        ),
        fix: format!(
            "bind an address the host has (`ip addr`), or, to start before the address comes up, set IP_FREEBIND on the socket (systemd: `FreeBind=yes`) or `sysctl -w {sysctl}=1`"
        ),
    })
}

/// No rule fits: the evidence, never a guess.
fn unknown(c: &Case, what: &str) -> Verdict {
    let (req, seen) = (c.req, c.seen);
    let errno = req.errno_or_in_use().name();
    let saw = if let Some(why) = &seen.blind {
        format!("could not look at the sockets: {why}")
    } else if seen.holders.is_empty() {
        format!(
            "no socket on port {} was visible when portwatch looked",
            req.port
        )
    } else {
        let list: Vec<String> = seen
            .holders
            .iter()
            .map(|h| {
                format!(
                    "{} {} {}",
                    h.who(),
                    h.state.name(),
                    socket_addr(h.addr, h.port)
                )
            })
            .collect();
        format!("saw {}", list.join("; "))
    };
    Verdict {
        reason: Reason::Unknown,
        diagnosis: format!("{} {what} failed with {errno}; {saw}", req.syscall.name()),
        fix: "no safe fix is known from what was seen; retry, and if it persists compare `ss -tanp` / `ss -uanp` with the request".into(),
    }
}
