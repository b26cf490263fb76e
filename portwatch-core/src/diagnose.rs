//! Why a call failed and what to do about it, from what enrichment saw.
//!
//! Pure functions of the request and the holders found: no I/O, so every rule
//! is unit-tested here and reproduced for real by the integration tests.
//! A rule only fires on what was seen; when nothing fits the answer is
//! `unknown` with the evidence, never a guess dressed as a fact.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    holders::{
        procs::{is_stoppable_unit, serves_others},
        short_id,
        systemd::SocketUnit,
        Evidence, Holder, State,
    },
    request::{Errno, Family, Request, Syscall},
};

/// `addr:port`, IPv6 in brackets.
fn socket_addr(addr: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(addr, port)
}

/// The reason codes (the README documents each).
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

/// Timeless advice for SO_REUSEPORT.
const REUSEPORT_CAVEAT: &str =
    "on a public port, a new instance sharing it can receive connections meant for the old one";

/// How the holder relates to the process that made the request: who the
/// advice is for depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// The requesting process holds the other socket itself.
    SameProcess,
    /// Another process of the same systemd unit or container: an old
    /// instance of the same service.
    SameUnit,
    /// Another process running the same program, not in the same unit.
    SameProgram,
    /// Another program or service.
    Other,
    /// No owning process is known (TIME_WAIT leftovers, an owner not found).
    Unknown,
}

/// How `h` relates to the requester described by `req` and `seen.caller`.
pub fn relation(h: &Holder, req: &Request, seen: &Evidence) -> Relation {
    let Some(pid) = h.pid else {
        return Relation::Unknown;
    };
    // `who`/`wait` ask for nobody in particular: plain advice.
    let Some(me) = req.caller.as_ref() else {
        return Relation::Unknown;
    };
    if me.pid == pid || h.pids.contains(&me.pid) {
        return Relation::SameProcess;
    }
    let caller = &seen.caller;
    let same = |a: &Option<String>, b: &Option<String>| a.is_some() && a == b;
    let holder_container = h.container.as_ref().map(|c| c.id.clone());
    if same(&h.unit, &caller.unit) || same(&holder_container, &caller.container) {
        return Relation::SameUnit;
    }
    let comm = Some(me.comm.as_str()).filter(|c| !c.is_empty());
    if comm.is_some() && h.comm.as_deref() == comm {
        return Relation::SameProgram;
    }
    Relation::Other
}

/// "apache2 (pid 29565 and 2 more processes, apache2.service)": the program
/// first, then how to find it.
pub fn named(h: &Holder) -> String {
    let (Some(comm), Some(pid)) = (&h.comm, h.pid) else {
        return h.who();
    };
    if let Some(s) = &h.socket_unit {
        let manager = match s.user {
            Some(uid) => format!("systemd --user of uid {uid} (pid {pid})"),
            None => format!("systemd (pid {pid})"),
        };
        let starts = match s.activates.as_slice() {
            [] => String::new(),
            units => format!(
                ", which starts {} on the first connection",
                units.join(" and ")
            ),
        };
        return format!("{manager} for {} ({}){starts}", s.unit, s.listen);
    }
    let mut s = format!("{comm} (pid {pid}");
    if h.pids.len() > 1 {
        s.push_str(&format!(" and {} more processes", h.pids.len() - 1));
    }
    if let Some(u) = &h.unit {
        s.push_str(&format!(", {u}"));
    }
    if let Some(c) = &h.container {
        if h.is_runtime_helper() {
            s.push_str(&format!(", publishing a port for {}", c.label()));
        } else {
            s.push_str(&format!(", {}", c.label()));
        }
        if let Some(image) = &c.image {
            s.push_str(&format!(", image {image}"));
        }
    }
    if h.exited {
        s.push_str(", exited");
    }
    s.push(')');
    s
}

/// Daemons whose end would end everything they serve: container runtimes,
/// the cluster agent, the system bus, a service manager. (dockerd is a
/// runtime helper: `stop_cmd` names its container first.)
const SERVES_OTHERS: [&str; 7] = [
    "containerd",
    "kubelet",
    "crio",
    "podman",
    "dbus-daemon",
    "dbus-broker",
    "systemd",
];

/// The clean way to stop the holder, as its owner would: the socket unit
/// when a systemd manager holds it, the kernel device, the container (never
/// the runtime's helper or service), the unit (only a `.service` or
/// `.socket` that serves nothing else: [`is_stoppable_unit`]), or the
/// process (never PID 1, nor the main process of a unit that serves others).
fn stop_cmd(h: &Holder, port: u16) -> String {
    if let Some(s) = &h.socket_unit {
        return socket_unit_fix(h, s);
    }
    if let Some(k) = &h.kernel {
        let name = shell_word(&k.name);
        return if k.certain {
            format!(
                "delete the {} device if nothing uses it (`ip link del {name}`), or recreate it with another port",
                k.kind
            )
        } else {
            format!(
                "check whether {} device {name} listens on it (`wg show {name} listen-port`); if so, give it another port (`wg set {name} listen-port N`)",
                k.kind
            )
        };
    }
    if let Some(c) = &h.container {
        if let Some(p) = &c.pod {
            return format!(
                "change or scale down the workload of pod {}/{} (its controller recreates a deleted pod; `kubectl -n {} get pod {} -o yaml` shows its hostPort), never `kill` it from the host",
                shell_word(&p.namespace),
                shell_word(&p.name),
                shell_word(&p.namespace),
                shell_word(&p.name)
            );
        }
        let published = if h.is_runtime_helper() {
            // "0.0.0.0:8080->80/tcp": the container's side of this port.
            let inside = c
                .published
                .iter()
                .find_map(|p| p.split_once(&format!(":{port}->")))
                .and_then(|(_, rest)| rest.split('/').next())
                .unwrap_or("CONTAINER_PORT");
            format!(", or publish it on another host port (`-p OTHER:{inside}`)")
        } else {
            String::new()
        };
        return match c.stop_command() {
            Some(cmd) => format!("stop {} (`{cmd}`){published}", c.label()),
            None => format!(
                "stop container {} (`docker stop {}` or `podman stop {}`){published}",
                short_id(&c.id),
                short_id(&c.id),
                short_id(&c.id)
            ),
        };
    }
    if h.is_runtime_helper() {
        let comm = h.comm.as_deref().unwrap_or("the runtime");
        let ps = if comm == "conmon" { "podman" } else { "docker" };
        return format!(
            "{comm} holds it for a container: find the container (`{ps} ps` shows who publishes port {port}) and stop it or change its `-p`; never kill {comm} itself"
        );
    }
    let manager = h.pid == Some(1) || h.unit.as_deref() == Some("init.scope");
    if manager {
        return format!(
            "systemd itself holds it, for a socket unit: `systemctl list-sockets` names the unit listening on port {port}; stop that .socket unit (`systemctl stop NAME.socket`), never pid 1 or its scope"
        );
    }
    if let Some(unit) = h.unit.as_deref().filter(|u| is_stoppable_unit(u)) {
        // The unit name was checked against systemd's charset when read.
        return format!("`systemctl stop {unit}`");
    }
    match (h.pid, h.state) {
        (Some(pid), _) => match h.unit.as_deref().filter(|u| serves_others(u)) {
            // The daemon the whole unit is for: every workload it serves
            // would go with it.
            Some(u) if h.comm.as_deref().is_some_and(|c| SERVES_OTHERS.contains(&c)) => format!(
                "{} (pid {pid}) is {u}'s own daemon, which serves other workloads: neither stop nor kill it; change its own configuration so it leaves port {port}",
                h.comm.as_deref().unwrap_or("the holder")
            ),
            Some(u) => format!(
                "`kill {pid}` (SIGTERM lets it close its sockets cleanly; leave {u} itself running, it serves far more than this process)"
            ),
            None => format!("`kill {pid}` (SIGTERM lets it close its sockets cleanly)"),
        },
        (None, State::TimeWait) => "wait for them to expire".into(),
        (None, _) => format!("find its owner (`ss -anp 'sport = :{port}'`) and stop it"),
    }
}

/// `s` as one shell word: as it is when plain, else single-quoted (it came
/// from the kernel or a runtime's files, and may hold anything).
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-/:@".contains(&b));
    if plain {
        s.to_owned()
    } else {
        let printable: String = s.chars().filter(|c| !c.is_control()).collect();
        format!("'{}'", printable.replace('\'', "'\\''"))
    }
}

/// Stop the socket unit (and the services it started, when they share the
/// socket by now), keep it from coming back, or move it.
fn socket_unit_fix(h: &Holder, s: &SocketUnit) -> String {
    let systemctl = match s.user {
        Some(uid) => format!("systemctl --user --machine {uid}@.host"),
        None => "systemctl".to_owned(),
    };
    let unit = &s.unit;
    let mut stop = vec![unit.as_str()];
    if h.pids.len() > 1 {
        stop.extend(s.activates.iter().map(String::as_str));
    }
    let (directive, _) = s.listen.split_once('=').unwrap_or((&s.listen, ""));
    format!(
        "`{systemctl} stop {}` (and `{systemctl} disable {unit}` if it should not come back at boot), or change its {directive}= (`{systemctl} edit {unit}`)",
        stop.join(" ")
    )
}

/// What to do about holder `h` itself, worded for how it relates to the
/// requester: its own socket, an old instance of the same service, or
/// another program to stop cleanly or move.
fn stop(h: &Holder, req: &Request, seen: &Evidence) -> String {
    if h.exited {
        return "it has exited; retry the bind".into();
    }
    let cmd = stop_cmd(h, req.port);
    // A container, a runtime's helper or a kernel device: its own stop
    // leads, worded for its owner, not "stop it cleanly, kill ...".
    let owned_elsewhere = h.container.is_some() || h.kernel.is_some() || h.is_runtime_helper();
    match relation(h, req, seen) {
        Relation::Other | Relation::SameProgram if owned_elsewhere => {
            format!("{cmd}; or give this service another port")
        }
        Relation::SameProcess => "this same process already holds the port on another socket: close that one first, or bind the port only once".into(),
        Relation::SameUnit => match h.unit.as_deref().filter(|u| is_stoppable_unit(u)) {
            Some(unit) => format!(
                "an older process of the same service, {unit}, still holds it: the restart started the new process before the old one let go. Make the unit's stop end every process and wait for them: in `systemctl cat {unit}`, KillMode=control-group (process or none leave children behind holding the port) and an ExecStop=/TimeoutStopSec= that lets the old process close its socket; now, {cmd} and start it again"
            ),
            None => format!(
                "an older process of the same service still holds it: let it exit before the new one starts (a restart that waits for the stop), or {cmd}"
            ),
        },
        Relation::SameProgram => format!(
            "another instance of {} still holds it: stop it cleanly first, {cmd}, or give this one another port",
            h.comm.as_deref().unwrap_or("the same program")
        ),
        Relation::Other => format!(
            "another program holds it: stop it cleanly, {cmd}, or move one of the two to another port"
        ),
        Relation::Unknown => cmd,
    }
}

/// How a diagnosis introduces the holder.
fn lead(rel: Relation) -> &'static str {
    match rel {
        Relation::Other => "another program: ",
        Relation::SameProgram => "another instance of the same program: ",
        Relation::SameUnit => "an older process of the same service: ",
        Relation::SameProcess => "this same process: ",
        Relation::Unknown => "",
    }
}

/// IPV6_V6ONLY advice for the socket of `program` (nginx gets its own
/// syntax; nobody else's socket gets nginx's).
fn v6only_on(program: Option<&str>, port: u16) -> String {
    match program {
        Some("nginx") => format!("`listen [::]:{port} ipv6only=on;` in nginx's configuration"),
        Some(p) => format!(
            "IPV6_V6ONLY on {p}'s IPv6 socket (its own configuration; many programs follow `sysctl net.ipv6.bindv6only=1` at start)"
        ),
        None => "IPV6_V6ONLY on the IPv6 socket".into(),
    }
}

fn secs(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms.div_ceil(1000))).to_string()
}

/// Decides the reason, the sentence and the fix for `req` given `seen`.
pub fn diagnose(req: &Request, seen: &Evidence) -> Verdict {
    let mut v = rules(req, seen);
    // A runtime's helper failed for a container: say so first; the fix
    // for the holder stands, and the container can publish elsewhere.
    if let Some(p) = &seen.caller.publishing {
        let name = p.container.label();
        v.diagnosis = format!(
            "{name} could not publish port {} (-p {}): {}",
            req.port, p.mapping, v.diagnosis
        );
        let inside = p.mapping.rsplit(':').next().unwrap_or("CONTAINER_PORT");
        v.fix = format!(
            "{}; or publish {name} on another host port (`-p OTHER:{inside}`)",
            v.fix
        );
    }
    v
}

/// The rules, in order: the first that fits what was seen decides.
fn rules(req: &Request, seen: &Evidence) -> Verdict {
    let port = req.port;
    let what = format!("{} {}", req.proto.name(), socket_addr(req.addr, port));
    match req.errno_or_in_use() {
        Errno(libc::EACCES) => return privileged(req, seen, &what),
        Errno(libc::EADDRNOTAVAIL) => return not_local(req, seen, &what),
        Errno(libc::EADDRINUSE) => {}
        _ => return unknown(req, seen, &what),
    }
    if req.syscall == Syscall::Bind && port == 0 {
        return ephemeral(req, seen);
    }
    let opts = req.opts.unwrap_or_default();
    let live: Vec<&Holder> = seen
        .holders
        .iter()
        .filter(|h| h.state != State::Closed)
        .collect();
    let first = |state: State| live.iter().copied().find(|h| h.state == state);

    if req.syscall == Syscall::Listen {
        if let Some(h) = first(State::Listen) {
            return Verdict {
                reason: Reason::ListenConflict,
                diagnosis: format!(
                    "listen() on {what} failed: {}{} already listens on it; both sockets could bind the port only because SO_REUSEADDR lets sockets share a port until one of them listens",
                    lead(relation(h, req, seen)),
                    h.who()
                ),
                fix: match relation(h, req, seen) {
                    Relation::Other | Relation::Unknown => format!(
                        "{}; SO_REUSEADDR only lets sockets share a port until one listens",
                        capital(&stop(h, req, seen))
                    ),
                    _ => format!(
                        "bind one socket per port and listen on it; to share the port between processes, set SO_REUSEPORT on every socket under one uid ({REUSEPORT_CAVEAT}); or {}",
                        stop(h, req, seen)
                    ),
                },
            };
        }
        return unknown(req, seen, &what);
    }

    // Only cross-family holders in the way: the fix is a socket option.
    let same_family = live
        .iter()
        .any(|h| !h.cross_family && h.state != State::TimeWait);
    let cross = live
        .iter()
        .find(|h| h.cross_family && h.state != State::TimeWait);
    if let (false, Some(h)) = (same_family, cross) {
        return dual_stack(req, h, seen, &what);
    }

    if let Some(h) = first(State::Listen).or_else(|| first(State::Udp)) {
        if let Some(v) = reuseport(req, h, seen, &what) {
            return v;
        }
        let kind = if h.state == State::Udp {
            "with a UDP socket bound to"
        } else {
            "listening on"
        };
        let rel = relation(h, req, seen);
        let fix = capital(&stop(h, req, seen));
        // A socket unit's name already says where it listens.
        let at = match &h.socket_unit {
            Some(_) => String::new(),
            None => format!(" {kind} {}", socket_addr(h.addr, h.port)),
        };
        return Verdict {
            reason: Reason::Listener,
            diagnosis: format!("{what} is taken by {}{}{at}", lead(rel), named(h)),
            fix: match rel {
                Relation::Unknown | Relation::SameProcess => format!("{fix}; or use another port"),
                _ => fix,
            },
        };
    }
    if let Some(h) = first(State::Bound) {
        if let Some(v) = reuseport(req, h, seen, &what) {
            return v;
        }
        return Verdict {
            reason: Reason::BoundNotListening,
            diagnosis: format!(
                "{what} is held by {}{}, whose socket bound {} but never listened or connected (invisible to `ss -l`)",
                lead(relation(h, req, seen)),
                h.who(),
                socket_addr(h.addr, h.port)
            ),
            fix: format!(
                "{}; and find why it holds a bound socket it does not use (a leaked or half-initialised socket, or a port reserved on purpose)",
                capital(&stop(h, req, seen))
            ),
        };
    }
    if let Some(h) = live
        .iter()
        .find(|h| matches!(h.state, State::Connection(_)))
    {
        let n: u32 = live
            .iter()
            .filter(|h| matches!(h.state, State::Connection(_)))
            .map(|h| h.sockets)
            .sum();
        if let Some(v) = ephemeral_port(req, h, seen, &what) {
            return v;
        }
        let advice = if opts.reuseaddr || seen.trial_failed.reuseaddr {
            capital(&stop(h, req, seen))
        } else {
            format!(
                "set SO_REUSEADDR on the listening socket before bind() (for TCP it lets a listener start while old connections drain; it never lets two listeners share a port); or {}",
                stop(h, req, seen)
            )
        };
        return Verdict {
            reason: Reason::Connection,
            diagnosis: format!(
                "{what} is in use by {n} live connection(s) without a listener, e.g. {} {} to {}",
                h.who(),
                h.state.name(),
                h.remote.as_deref().unwrap_or("?")
            ),
            fix: advice,
        };
    }
    if let Some(tw) = first(State::TimeWait) {
        // The kernel lets a bind through TIME_WAIT leftovers only when both
        // the new socket and the socket that left them set SO_REUSEADDR
        // (a leftover keeps its socket's setting; measured on 6.18).
        let left = tw.time_left_ms.map(secs).unwrap_or_else(|| "?".into());
        let closed = seen.holders.iter().find(|h| h.state == State::Closed);
        let by = closed
            .map(|h| format!(", left by {}", h.who()))
            .unwrap_or_default();
        let old_had_it = closed.and_then(|h| h.reuseaddr);
        let (why, fix) = match (opts.reuseaddr, old_had_it) {
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
        return Verdict {
            reason: Reason::TimeWait,
            diagnosis: format!(
                "{what} is held only by {} of closed connections{by}; they expire in at most {left}, and {why}",
                tw.who()
            ),
            fix,
        };
    }
    unknown(req, seen, &what)
}

/// Connections without a listener on a port inside ip_local_port_range: an
/// outgoing connection was given the port as its source port. Socket options
/// cannot help (the connection's socket has none of the new socket's), so
/// the fix keeps the kernel from handing the port out again.
fn ephemeral_port(req: &Request, h: &Holder, seen: &Evidence, what: &str) -> Option<Verdict> {
    let sysctls = seen.sysctls.as_ref()?;
    let (low, high) = sysctls.local_port_range?;
    // A listener that closed with connections still open left them: a
    // server's, not an outgoing connection's. So did one whose peer's port
    // is itself ephemeral (a client's); an outgoing connection's peer is a
    // service port, below the range.
    let listener_closed = seen.holders.iter().any(|h| h.state == State::Closed);
    let remote_port: Option<u16> = h
        .remote
        .as_deref()
        .and_then(|r| r.rsplit(':').next())
        .and_then(|p| p.parse().ok());
    let to_a_service = remote_port.is_some_and(|p| p < low);
    if !(low..=high).contains(&req.port) || !to_a_service || listener_closed {
        return None;
    }
    let port = req.port;
    let reserved = match sysctls.local_reserved_ports.as_deref() {
        Some("") | None => port.to_string(),
        Some(list) => format!("{list},{port}"),
    };
    Some(Verdict {
        reason: Reason::EphemeralPort,
        diagnosis: format!(
            "{what} was taken as the source port of an outgoing connection of {} to {} ({}); ip_local_port_range is {low}-{high}, so the kernel hands port {port} to outgoing connections, and nothing listens on it",
            h.who(),
            h.remote.as_deref().unwrap_or("?"),
            h.state.name()
        ),
        fix: format!(
            "reserve the port so no outgoing connection gets it again: `sysctl -w net.ipv4.ip_local_reserved_ports={reserved}` now, and the line `net.ipv4.ip_local_reserved_ports = {reserved}` in a file under /etc/sysctl.d/ for the next boot (the list keeps what is reserved today); or move the service below {low}; the connection itself ends when its owner closes it"
        ),
    })
}

/// Only a socket of the other family is in the way, through an IPv6
/// wildcard without IPV6_V6ONLY. Whose IPv6 socket that is decides the
/// advice: the requester's own (its configuration), or the holder's (stop
/// or move it first; the option only as the holder's own setting).
fn dual_stack(req: &Request, h: &Holder, seen: &Evidence, what: &str) -> Verdict {
    let port = req.port;
    let held = socket_addr(h.addr, h.port);
    let mine_is_v6 = req.family == Family::Ipv6;
    let me = req
        .caller
        .as_ref()
        .map(|c| c.comm.as_str())
        .filter(|c| !c.is_empty());
    let rel = relation(h, req, seen);
    if rel == Relation::SameProcess {
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
    let lead = lead(rel);
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
        fix: format!("{}; or, {option}", capital(&stop(h, req, seen))),
    }
}

/// SO_REUSEPORT on one side only, or on both under different uids.
fn reuseport(req: &Request, h: &Holder, seen: &Evidence, what: &str) -> Option<Verdict> {
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
    let fix = match relation(h, req, seen) {
        Relation::Other | Relation::Unknown => format!(
            "{}; sharing the port instead would need SO_REUSEPORT on {}'s socket too, set in its own configuration, under the same uid ({REUSEPORT_CAVEAT})",
            capital(&stop(h, req, seen)),
            h.comm.as_deref().unwrap_or("the holder")
        ),
        _ => format!("{share}; or {}", stop(h, req, seen)),
    };
    Some(Verdict {
        reason: Reason::ReuseportMismatch,
        diagnosis: format!(
            "{what} is held by {}{} ({} {}): {mismatch}, so the kernel will not share the port",
            lead(relation(h, req, seen)),
            h.who(),
            h.state.name(),
            socket_addr(h.addr, h.port)
        ),
        fix,
    })
}

fn ephemeral(req: &Request, seen: &Evidence) -> Verdict {
    let range = seen.sysctls.as_ref().and_then(|s| s.local_port_range);
    match (range, seen.ephemeral_in_use) {
        (Some((lo, hi)), Some(used)) if used > usize::from(hi - lo) => Verdict {
            reason: Reason::EphemeralExhausted,
            diagnosis: format!(
                "bind() to {} port 0 found no free port: all {} ports of ip_local_port_range {lo}-{hi} are in use",
                req.proto.name(),
                usize::from(hi - lo) + 1
            ),
            fix: "widen the range (`sysctl -w net.ipv4.ip_local_port_range=\"10000 65000\"`), close idle sockets, and give outgoing sockets IP_BIND_ADDRESS_NO_PORT so connect() picks the port per destination".into(),
        },
        (Some((lo, hi)), used) => Verdict {
            reason: Reason::EphemeralExhausted,
            diagnosis: format!(
                "bind() to {} port 0 found no free port in ip_local_port_range {lo}-{hi}{}",
                req.proto.name(),
                used.map(|u| format!(" ({u} of its ports in use when portwatch looked)")).unwrap_or_default()
            ),
            fix: "widen the range (`sysctl -w net.ipv4.ip_local_port_range=\"10000 65000\"`), close idle sockets, and give outgoing sockets IP_BIND_ADDRESS_NO_PORT".into(),
        },
        _ => unknown(req, seen, &format!("{} port 0", req.proto.name())),
    }
}

fn privileged(req: &Request, seen: &Evidence, what: &str) -> Verdict {
    let start = seen
        .sysctls
        .as_ref()
        .and_then(|s| s.unprivileged_port_start);
    match start {
        Some(start) if req.syscall == Syscall::Bind && u32::from(req.port) < start => Verdict {
            reason: Reason::PrivilegedPort,
            diagnosis: format!(
                "{what}: port {} is below ip_unprivileged_port_start ({start}) and {} lacks CAP_NET_BIND_SERVICE",
                req.port,
                req.caller.as_ref().map_or_else(|| "the caller".into(), |c| format!("pid {} (uid {})", c.pid, c.uid))
            ),
            fix: format!(
                "grant CAP_NET_BIND_SERVICE (systemd: `AmbientCapabilities=CAP_NET_BIND_SERVICE`; a binary: `setcap cap_net_bind_service=+ep FILE`), or use a port >= {start}"
            ),
        },
        _ => unknown(req, seen, what),
    }
}

fn not_local(req: &Request, seen: &Evidence, what: &str) -> Verdict {
    let opts = req.opts.unwrap_or_default();
    let nonlocal = seen.sysctls.as_ref().and_then(|s| match req.family {
        Family::Ipv4 => s.nonlocal_bind_v4,
        Family::Ipv6 => s.nonlocal_bind_v6,
    });
    if req.syscall != Syscall::Bind || opts.freebind || opts.transparent || nonlocal != Some(false)
    {
        return unknown(req, seen, what);
    }
    let sysctl = match req.family {
        Family::Ipv4 => "net.ipv4.ip_nonlocal_bind",
        Family::Ipv6 => "net.ipv6.ip_nonlocal_bind",
    };
    Verdict {
        reason: Reason::AddrNotLocal,
        diagnosis: format!(
            "{what}: {} is not an address of any interface in this network namespace",
            req.addr
        ),
        fix: format!(
            "bind an address the host has (`ip addr`), or, to start before the address comes up, set IP_FREEBIND on the socket (systemd: `FreeBind=yes`; nginx: `listen ... freebind`) or `sysctl -w {sysctl}=1`"
        ),
    }
}

fn unknown(req: &Request, seen: &Evidence, what: &str) -> Verdict {
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

fn capital(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::Clock,
        event::{
            fixtures::{encode, sample},
            Event,
        },
        holders::{Seen, Sysctls},
        request::Opts,
    };

    fn event(errno: i32, port: u16) -> Request {
        let mut raw = sample();
        raw.ret = -errno;
        raw.port = port;
        raw.folded = 0;
        Event::decode(&encode(&raw), Clock::now())
            .unwrap()
            .request()
    }

    fn holder(state: State) -> Holder {
        Holder {
            pid: Some(100),
            comm: Some("old".into()),
            cmdline: Some("old --serve".into()),
            uid: Some(33),
            state,
            addr: "0.0.0.0".parse().unwrap(),
            port: 8080,
            exited: false,
            unit: None,
            container: None,
            kernel: None,
            pids: vec![100],
            sockets: 1,
            time_left_ms: None,
            remote: None,
            v6only: None,
            reuseaddr: None,
            reuseport: None,
            cross_family: false,
            seen: Seen::SockDiag,
            socket_unit: None,
        }
    }

    fn with(holders: Vec<Holder>) -> Evidence {
        Evidence {
            holders,
            sysctls: Some(Sysctls {
                local_port_range: Some((40000, 40001)),
                unprivileged_port_start: Some(1024),
                nonlocal_bind_v4: Some(false),
                nonlocal_bind_v6: Some(false),
                local_reserved_ports: Some(String::new()),
            }),
            ..Evidence::default()
        }
    }

    #[test]
    fn listener_names_the_unit_and_never_killall() {
        let mut h = holder(State::Listen);
        h.unit = Some("nginx.service".into());
        let v = diagnose(&event(98, 8080), &with(vec![h]));
        assert_eq!(v.reason, Reason::Listener);
        assert!(
            v.diagnosis
                .contains("old (pid 100, nginx.service) listening on"),
            "{}",
            v.diagnosis
        );
        assert!(v.fix.contains("systemctl stop nginx.service"), "{}", v.fix);
        for bad in ["killall", "fuser"] {
            assert!(!v.fix.contains(bad));
        }
    }

    /// pid 1 holding demo.socket's listener, as enrichment finds it.
    fn pid1_for_socket_unit(unit: Option<&str>) -> Holder {
        let mut h = holder(State::Listen);
        h.pid = Some(1);
        h.pids = vec![1];
        h.comm = Some("systemd".into());
        h.unit = Some("init.scope".into());
        h.socket_unit = unit.map(|u| SocketUnit {
            unit: u.into(),
            listen: "ListenStream=0.0.0.0:8080".into(),
            activates: vec!["demo.service".into()],
            user: None,
        });
        h
    }

    #[test]
    fn a_socket_unit_is_named_and_stopped_never_init_scope() {
        let v = diagnose(
            &event(98, 8080),
            &with(vec![pid1_for_socket_unit(Some("demo.socket"))]),
        );
        assert!(
            v.diagnosis.contains("systemd (pid 1) for demo.socket (ListenStream=0.0.0.0:8080), which starts demo.service on the first connection"),
            "{}",
            v.diagnosis
        );
        assert!(v.fix.contains("`systemctl stop demo.socket`"), "{}", v.fix);
        assert!(v.fix.contains("systemctl disable demo.socket"), "{}", v.fix);
        assert!(v.fix.contains("ListenStream="), "{}", v.fix);
        // Once demo.service has started it shares the socket: stop both.
        let mut h = pid1_for_socket_unit(Some("demo.socket"));
        h.pids = vec![1, 300];
        let v = diagnose(&event(98, 8080), &with(vec![h]));
        assert!(
            v.fix.contains("`systemctl stop demo.socket demo.service`"),
            "{}",
            v.fix
        );
        // Not found: never pid 1, never init.scope.
        let v = diagnose(&event(98, 8080), &with(vec![pid1_for_socket_unit(None)]));
        assert!(v.fix.contains("systemctl list-sockets"), "{}", v.fix);
        for bad in ["stop init.scope", "kill 1`", "kill 1 "] {
            assert!(!v.fix.contains(bad), "{bad}: {}", v.fix);
        }
    }

    #[test]
    fn only_services_and_sockets_appear_in_a_stop() {
        for unit in [
            "session-3.scope",
            "init.scope",
            "user@1000.service",
            "docker.service",
            "containerd.service",
            "kubelet.service",
            "app-foo.scope",
        ] {
            let mut h = holder(State::Listen);
            h.unit = Some(unit.into());
            let v = diagnose(&event(98, 8080), &with(vec![h]));
            assert!(
                !v.fix.contains(&format!("stop {unit}")),
                "{unit}: {}",
                v.fix
            );
            if unit != "init.scope" {
                assert!(!v.fix.contains("systemctl stop"), "{unit}: {}", v.fix);
                assert!(v.fix.contains("kill 100"), "{unit}: {}", v.fix);
            }
        }
    }

    #[test]
    fn an_older_process_of_the_same_unit_points_to_its_stop_settings() {
        let mut h = holder(State::Listen);
        h.unit = Some("flaky.service".into());
        let mut e = with(vec![h]);
        e.caller.unit = Some("flaky.service".into());
        let v = diagnose(&nginx_request(98, Family::Ipv4, "0.0.0.0"), &e);
        assert!(
            v.diagnosis.contains("an older process of the same service"),
            "{v:#?}"
        );
        for want in [
            "flaky.service",
            "KillMode=",
            "TimeoutStopSec=",
            "`systemctl stop flaky.service`",
        ] {
            assert!(v.fix.contains(want), "{want}: {v:#?}");
        }
    }

    #[test]
    fn an_owner_not_found_is_not_called_time_wait() {
        let mut h = holder(State::Listen);
        h.pid = None;
        let v = diagnose(&event(98, 8080), &with(vec![h]));
        assert_eq!(v.reason, Reason::Listener);
        assert!(
            v.diagnosis.contains("not found in /proc"),
            "{}",
            v.diagnosis
        );
        assert!(!v.diagnosis.contains("TIME_WAIT"), "{}", v.diagnosis);
        assert!(v.fix.contains("ss -anp 'sport = :8080'"), "{}", v.fix);
    }

    #[test]
    fn listener_without_unit_suggests_kill_pid() {
        let v = diagnose(&event(98, 8080), &with(vec![holder(State::Listen)]));
        assert!(v.fix.contains("kill 100"), "{}", v.fix);
    }

    #[test]
    fn time_wait_says_how_long_and_who_lacks_reuseaddr() {
        let mut tw = holder(State::TimeWait);
        tw.pid = None;
        tw.sockets = 3;
        tw.time_left_ms = Some(41_200);
        let mut req = event(98, 8080);
        req.opts = Some(Default::default());
        let v = diagnose(&req, &with(vec![tw.clone()]));
        assert_eq!(v.reason, Reason::TimeWait);
        assert!(v.diagnosis.contains("42s"), "{}", v.diagnosis);
        assert!(v.diagnosis.contains("3 TIME_WAIT"), "{}", v.diagnosis);
        assert!(v.fix.contains("SO_REUSEADDR"));
        // SO_REUSEADDR on the new socket only: the old one lacked it.
        req.opts = Some(Opts {
            reuseaddr: true,
            ..Default::default()
        });
        let v = diagnose(&req, &with(vec![tw.clone()]));
        assert_eq!(v.reason, Reason::TimeWait);
        assert!(v.diagnosis.contains("did not"), "{}", v.diagnosis);
        assert!(v.fix.starts_with("retry in 42s"), "{}", v.fix);
        // The kernel's record says the old socket lacked it too.
        let mut old = holder(State::Closed);
        old.reuseaddr = Some(false);
        req.opts = Some(Opts::default());
        let v = diagnose(&req, &with(vec![tw, old]));
        assert!(v.diagnosis.contains("neither"), "{}", v.diagnosis);
        assert!(v.fix.contains("both the old and the new"), "{}", v.fix);
    }

    #[test]
    fn reuseport_on_one_side_only() {
        let mut h = holder(State::Listen);
        h.reuseport = Some(false);
        let mut req = event(98, 8080);
        req.opts = Some(Opts {
            reuseport: true,
            ..Default::default()
        });
        let v = diagnose(&req, &with(vec![h.clone()]));
        assert_eq!(v.reason, Reason::ReuseportMismatch);
        assert!(v
            .fix
            .contains("can receive connections meant for the old one"));
        // Both set, different uids (the sample event's uid is 33).
        h.reuseport = Some(true);
        h.uid = Some(1000);
        let v = diagnose(&req, &with(vec![h.clone()]));
        assert_eq!(v.reason, Reason::ReuseportMismatch, "{}", v.diagnosis);
        assert!(v.diagnosis.contains("different uids"));
        // Unknown holder options: no claim.
        h.reuseport = None;
        assert_eq!(diagnose(&req, &with(vec![h])).reason, Reason::Listener);
    }

    #[test]
    fn dual_stack_rule() {
        let any6: IpAddr = "::".parse().unwrap();
        let mut h = holder(State::Listen);
        h.cross_family = true;
        h.addr = any6;
        let v = diagnose(&event(98, 8080), &with(vec![h]));
        assert_eq!(v.reason, Reason::DualStack);
        assert!(v.fix.contains("IPV6_V6ONLY"));
    }

    #[test]
    fn listen_failure_is_a_listen_conflict() {
        let mut req = event(98, 8080);
        req.syscall = Syscall::Listen;
        let v = diagnose(&req, &with(vec![holder(State::Listen)]));
        assert_eq!(v.reason, Reason::ListenConflict);
    }

    #[test]
    fn bound_not_listening_and_exited_holder() {
        let mut h = holder(State::Bound);
        h.exited = true;
        let v = diagnose(&event(98, 8080), &with(vec![h]));
        assert_eq!(v.reason, Reason::BoundNotListening);
        assert!(v.diagnosis.contains("exited"));
        assert!(!v.fix.contains("kill"), "{}", v.fix);
    }

    #[test]
    fn ephemeral_privileged_and_not_local() {
        let mut e = with(vec![]);
        e.ephemeral_in_use = Some(2);
        let v = diagnose(&event(98, 0), &e);
        assert_eq!(v.reason, Reason::EphemeralExhausted);
        assert!(v.diagnosis.contains("40000-40001"), "{}", v.diagnosis);
        let v = diagnose(&event(13, 80), &with(vec![]));
        assert_eq!(v.reason, Reason::PrivilegedPort);
        assert!(v.fix.contains("CAP_NET_BIND_SERVICE"));
        assert_eq!(
            diagnose(&event(13, 8080), &with(vec![])).reason,
            Reason::Unknown
        );
        let v = diagnose(&event(99, 8080), &with(vec![]));
        assert_eq!(v.reason, Reason::AddrNotLocal);
        let mut req = event(99, 8080);
        req.opts = Some(Opts {
            freebind: true,
            ..Default::default()
        });
        assert_eq!(diagnose(&req, &with(vec![])).reason, Reason::Unknown);
    }

    /// The requester for the wording tests: nginx, pid 4242, uid 33, in
    /// nginx.service when `unit` says so.
    /// Holders whose clean stop would end far more than the holder, or
    /// whose `kill` breaks a container: no fix may name them so, whatever
    /// the reason and however the holder relates to the requester.
    #[test]
    fn fixes_never_stop_what_serves_others_nor_kill_runtime_helpers() {
        struct Protected {
            comm: &'static str,
            pid: u32,
            unit: Option<&'static str>,
        }
        let protected = [
            Protected {
                comm: "dockerd",
                pid: 700,
                unit: Some("docker.service"),
            },
            Protected {
                comm: "docker-proxy",
                pid: 701,
                unit: Some("docker.service"),
            },
            Protected {
                comm: "docker-proxy",
                pid: 702,
                unit: None,
            },
            Protected {
                comm: "containerd",
                pid: 703,
                unit: Some("containerd.service"),
            },
            Protected {
                comm: "containerd-shim-runc-v2",
                pid: 704,
                unit: Some("containerd.service"),
            },
            Protected {
                comm: "conmon",
                pid: 705,
                unit: Some("libpod-conmon-0123.scope"),
            },
            Protected {
                comm: "rootlessport",
                pid: 706,
                unit: Some("user@1000.service"),
            },
            Protected {
                comm: "podman",
                pid: 707,
                unit: Some("podman.service"),
            },
            Protected {
                comm: "kubelet",
                pid: 708,
                unit: Some("kubelet.service"),
            },
            Protected {
                comm: "systemd",
                pid: 1,
                unit: Some("init.scope"),
            },
            Protected {
                comm: "systemd",
                pid: 709,
                unit: Some("user@1000.service"),
            },
            Protected {
                comm: "bash",
                pid: 710,
                unit: Some("session-3.scope"),
            },
            Protected {
                comm: "python3",
                pid: 711,
                unit: Some("user-1000.slice"),
            },
            Protected {
                comm: "crio",
                pid: 712,
                unit: Some("crio.service"),
            },
        ];
        let never_kill = |p: &Protected| {
            p.pid == 1
                || crate::holders::containers::is_runtime_helper(p.comm)
                || SERVES_OTHERS.contains(&p.comm)
        };
        for p in &protected {
            for state in [
                State::Listen,
                State::Udp,
                State::Bound,
                State::Connection(1),
            ] {
                for (syscall, caller) in [
                    (Syscall::Bind, "nginx"),
                    (Syscall::Bind, p.comm),
                    (Syscall::Listen, "nginx"),
                ] {
                    let mut h = holder(state);
                    h.pid = Some(p.pid);
                    h.pids = vec![p.pid];
                    h.comm = Some(p.comm.into());
                    h.unit = p.unit.map(str::to_owned);
                    h.remote = matches!(state, State::Connection(_)).then(|| "10.0.0.1:443".into());
                    let mut req = nginx_request(98, Family::Ipv4, "0.0.0.0");
                    req.syscall = syscall;
                    if let Some(c) = req.caller.as_mut() {
                        c.comm = caller.into();
                    }
                    let v = diagnose(&req, &with(vec![h]));
                    let what = format!(
                        "{} ({:?}, {state:?}, {syscall:?}, caller {caller})",
                        p.comm, p.unit
                    );
                    if let Some(unit) = p.unit {
                        assert!(
                            !v.fix.contains(&format!("systemctl stop {unit}")),
                            "{what}: {}",
                            v.fix
                        );
                    }
                    if never_kill(p) {
                        assert!(
                            !v.fix.contains(&format!("`kill {}`", p.pid)),
                            "{what}: {}",
                            v.fix
                        );
                    }
                    assert!(
                        !v.fix.contains("killall") && !v.fix.contains("fuser -k"),
                        "{what}"
                    );
                    assert!(!v.fix.is_empty(), "{what}: no fix at all");
                }
            }
        }
        // Only .service and .socket units are ever stopped.
        for unit in ["nginx.service", "demo.socket"] {
            assert!(is_stoppable_unit(unit), "{unit}");
        }
        for unit in [
            "docker.service",
            "user@0.service",
            "session-1.scope",
            "init.scope",
            "app-x.scope",
            "system.slice",
            "a.mount",
        ] {
            assert!(!is_stoppable_unit(unit), "{unit}");
        }
    }

    #[test]
    fn docker_proxy_holder_is_named_by_its_container() {
        use crate::holders::containers::{Container, Runtime};
        let mut h = holder(State::Listen);
        h.comm = Some("docker-proxy".into());
        h.unit = Some("docker.service".into());
        h.container = Some(Container {
            name: Some("web".into()),
            image: Some("pwtest:1".into()),
            published: vec!["0.0.0.0:8080->80/tcp".into()],
            ..Container::bare(&"a".repeat(64), Runtime::Docker)
        });
        let v = diagnose(&event(98, 8080), &with(vec![h]));
        assert_eq!(v.reason, Reason::Listener);
        assert!(
            v.diagnosis
                .contains("publishing a port for docker container web"),
            "{}",
            v.diagnosis
        );
        assert!(v.fix.contains("`docker stop web`"), "{}", v.fix);
        assert!(v.fix.contains("`-p OTHER:80`"), "{}", v.fix);
        assert!(
            !v.fix.contains("kill") && !v.fix.contains("systemctl"),
            "{}",
            v.fix
        );
    }

    #[test]
    fn a_failing_docker_proxy_names_the_container_that_could_not_publish() {
        use crate::holders::containers::{Container, Publishing, Runtime};
        let mut seen = with(vec![holder(State::Listen)]);
        seen.caller.publishing = Some(Publishing {
            container: Container {
                name: Some("web2".into()),
                ..Container::bare(&"b".repeat(64), Runtime::Docker)
            },
            running: false,
            mapping: "8080:80".into(),
        });
        let v = diagnose(&event(98, 8080), &seen);
        assert!(
            v.diagnosis
                .starts_with("docker container web2 could not publish port 8080 (-p 8080:80): "),
            "{}",
            v.diagnosis
        );
        assert!(v.fix.contains("`kill 100`"), "{}", v.fix);
        assert!(
            v.fix
                .ends_with("or publish docker container web2 on another host port (`-p OTHER:80`)"),
            "{}",
            v.fix
        );
    }

    #[test]
    fn a_kernel_tunnel_is_named_and_deleted_not_killed() {
        let mut h = holder(State::Udp);
        (h.pid, h.comm, h.cmdline, h.pids) = (None, None, None, vec![]);
        h.kernel = Some(crate::holders::KernelDevice {
            kind: "vxlan".into(),
            name: "vx0".into(),
            certain: true,
        });
        let v = diagnose(&event(98, 4789), &with(vec![h]));
        assert_eq!(v.reason, Reason::Listener);
        assert!(
            v.diagnosis.contains("the kernel (vxlan device vx0)"),
            "{}",
            v.diagnosis
        );
        assert!(v.fix.contains("`ip link del vx0`"), "{}", v.fix);
        assert!(!v.fix.contains("ss -anp"), "{}", v.fix);
    }

    #[test]
    fn an_outgoing_connections_source_port_is_reserved_not_reused() {
        let mut h = holder(State::Connection(1));
        h.remote = Some("10.1.2.3:443".into());
        let mut seen = with(vec![h.clone()]);
        seen.sysctls.as_mut().unwrap().local_reserved_ports = Some("9000-9010".into());
        let v = diagnose(&event(98, 40000), &seen);
        assert_eq!(v.reason, Reason::EphemeralPort);
        assert!(
            v.diagnosis
                .contains("source port of an outgoing connection"),
            "{}",
            v.diagnosis
        );
        assert!(v.diagnosis.contains("40000-40001"), "{}", v.diagnosis);
        assert!(
            v.fix
                .contains("`sysctl -w net.ipv4.ip_local_reserved_ports=9000-9010,40000`"),
            "{}",
            v.fix
        );
        assert!(!v.fix.contains("SO_REUSEADDR"), "{}", v.fix);
        // Outside the range, it is a plain connection.
        assert_eq!(
            diagnose(&event(98, 8080), &with(vec![h.clone()])).reason,
            Reason::Connection
        );
        // A server's accepted connection left by its closed listener: the
        // peer's port is a client's ephemeral one.
        let mut accepted = h.clone();
        accepted.remote = Some("127.0.0.1:40001".into());
        assert_eq!(
            diagnose(&event(98, 40000), &with(vec![accepted])).reason,
            Reason::Connection
        );
        // A trial bind showed SO_REUSEADDR failing: no fix recommends it.
        let mut seen = with(vec![h]);
        seen.trial_failed.reuseaddr = true;
        let v = diagnose(&event(98, 8080), &seen);
        assert!(!v.fix.contains("SO_REUSEADDR"), "{}", v.fix);
    }

    fn nginx_request(errno: i32, family: Family, addr: &str) -> Request {
        let mut req = event(errno, 8080);
        req.family = family;
        req.addr = addr.parse().unwrap();
        req.opts = Some(Opts::default());
        req
    }

    /// Every reason with a holder process, for each relation of holder to
    /// requester: another program, the same program outside the unit, the
    /// same unit, another unit. Advice must lead with the holder when it is
    /// someone else, never hand nginx syntax to a program that is not nginx,
    /// and never call the holder's socket "this socket".
    #[test]
    fn wording_follows_whose_socket_is_in_the_way() {
        struct Case {
            name: &'static str,
            req: Request,
            holder: Holder,
            /// The advice is about the requester's own socket (no process
            /// to stop: connections, TIME_WAIT).
            own_socket_advice: bool,
        }
        let v6any: IpAddr = "::".parse().unwrap();
        let mut cases = Vec::new();
        let base = |state: State| holder(state);
        cases.push(Case {
            name: "listener",
            req: nginx_request(98, Family::Ipv4, "0.0.0.0"),
            holder: base(State::Listen),
            own_socket_advice: false,
        });
        let mut rp = base(State::Listen);
        rp.reuseport = Some(true);
        rp.uid = Some(33);
        cases.push(Case {
            name: "reuseport",
            req: nginx_request(98, Family::Ipv4, "0.0.0.0"),
            holder: rp,
            own_socket_advice: false,
        });
        let mut lc = nginx_request(98, Family::Ipv4, "0.0.0.0");
        lc.syscall = Syscall::Listen;
        cases.push(Case {
            name: "listen_conflict",
            req: lc,
            holder: base(State::Listen),
            own_socket_advice: false,
        });
        let mut ds = base(State::Listen);
        ds.addr = v6any;
        ds.cross_family = true;
        ds.v6only = Some(false);
        cases.push(Case {
            name: "dual_stack v4 request",
            req: nginx_request(98, Family::Ipv4, "0.0.0.0"),
            holder: ds,
            own_socket_advice: false,
        });
        let mut ds6 = base(State::Listen);
        ds6.cross_family = true;
        cases.push(Case {
            name: "dual_stack v6 request",
            req: nginx_request(98, Family::Ipv6, "::"),
            holder: ds6,
            own_socket_advice: false,
        });
        cases.push(Case {
            name: "bound",
            req: nginx_request(98, Family::Ipv4, "0.0.0.0"),
            holder: base(State::Bound),
            own_socket_advice: false,
        });
        let mut conn = base(State::Connection(1));
        conn.remote = Some("127.0.0.1:5555".into());
        cases.push(Case {
            name: "connection",
            req: nginx_request(98, Family::Ipv4, "0.0.0.0"),
            holder: conn,
            own_socket_advice: true,
        });

        #[derive(Debug, Clone, Copy, PartialEq)]
        enum Who {
            OtherProgram,
            SameProgram,
            SameUnit,
            OtherUnit,
        }
        for case in &cases {
            for who in [
                Who::OtherProgram,
                Who::SameProgram,
                Who::SameUnit,
                Who::OtherUnit,
            ] {
                let mut h = case.holder.clone();
                let mut e = with(vec![]);
                e.caller.unit = Some("nginx.service".into());
                match who {
                    Who::OtherProgram => h.comm = Some("apache2".into()),
                    Who::SameProgram => h.comm = Some("nginx".into()),
                    Who::SameUnit => {
                        h.comm = Some("nginx".into());
                        h.unit = Some("nginx.service".into());
                    }
                    Who::OtherUnit => {
                        h.comm = Some("apache2".into());
                        h.unit = Some("apache2.service".into());
                    }
                }
                e.holders = vec![h.clone()];
                let v = diagnose(&case.req, &e);
                let ctx = format!("{} / {who:?}: {v:#?}", case.name);
                let first = v.fix.split(';').next().unwrap();
                let stop_cmd = match &h.unit {
                    Some(u) => format!("systemctl stop {u}"),
                    None => "kill 100".to_owned(),
                };
                assert!(v.fix.contains(&stop_cmd), "{ctx}");
                if !case.own_socket_advice && matches!(who, Who::OtherProgram | Who::OtherUnit) {
                    assert!(
                        first.contains(&stop_cmd),
                        "does not lead with the holder: {ctx}"
                    );
                    assert!(
                        v.fix.to_lowercase().contains("another program")
                            && v.diagnosis.contains("another program"),
                        "{ctx}"
                    );
                }
                if who == Who::SameUnit && !case.own_socket_advice {
                    assert!(
                        v.fix.contains("same service") && v.diagnosis.contains("same service"),
                        "{ctx}"
                    );
                }
                // nginx syntax only for nginx's own sockets.
                if v.fix.contains("listen [::]") {
                    let nginx_socket = if case.req.family == Family::Ipv6 {
                        true
                    } else {
                        h.comm.as_deref() == Some("nginx")
                    };
                    assert!(
                        nginx_socket,
                        "nginx syntax for someone else's socket: {ctx}"
                    );
                }
                assert!(
                    !v.fix.contains("killall") && !v.fix.contains("fuser"),
                    "{ctx}"
                );
            }
        }
    }

    /// Apache's [::]:P (no IPV6_V6ONLY) blocks nginx's 0.0.0.0:P: lead with
    /// Apache, never with nginx's ipv6only; the mirror case, nginx's own
    /// [::]:P ipv6only=off against its own 0.0.0.0:P, is nginx's own config.
    #[test]
    fn apache_dual_stack_against_nginx_and_the_mirror() {
        let mut apache = holder(State::Listen);
        apache.addr = "::".parse().unwrap();
        apache.cross_family = true;
        apache.v6only = Some(false);
        apache.comm = Some("apache2".into());
        apache.pids = vec![100, 101, 102];
        let req = nginx_request(98, Family::Ipv4, "0.0.0.0");
        let v = diagnose(&req, &with(vec![apache.clone()]));
        assert_eq!(v.reason, Reason::DualStack);
        assert!(
            v.diagnosis
                .contains("another program: apache2 (pid 100 and 2 more processes)"),
            "{v:#?}"
        );
        assert!(
            v.diagnosis.contains("also takes every IPv4 address"),
            "{v:#?}"
        );
        assert!(
            v.fix
                .starts_with("Another program holds it: stop it cleanly, `kill 100`"),
            "{v:#?}"
        );
        assert!(!v.fix.contains("ipv6only=on"), "{v:#?}");
        assert!(v.fix.contains("apache2's IPv6 socket"), "{v:#?}");
        apache.unit = Some("apache2.service".into());
        let v = diagnose(&req, &with(vec![apache]));
        assert!(v.fix.contains("`systemctl stop apache2.service`"), "{v:#?}");

        // nginx's own [::]:P ipv6only=off fails against its own 0.0.0.0:P.
        let mut own = holder(State::Listen);
        own.pid = Some(4242);
        own.pids = vec![4242];
        own.comm = Some("nginx".into());
        own.cross_family = true;
        let req6 = nginx_request(98, Family::Ipv6, "::");
        let v = diagnose(&req6, &with(vec![own]));
        assert_eq!(v.reason, Reason::DualStack);
        assert!(v.diagnosis.contains("this same process"), "{v:#?}");
        assert!(v.fix.contains("nginx's own listen lines"), "{v:#?}");
        assert!(!v.fix.contains("kill"), "{v:#?}");
    }

    #[test]
    fn nothing_seen_is_unknown_with_the_evidence() {
        let v = diagnose(&event(98, 8080), &with(vec![]));
        assert_eq!(v.reason, Reason::Unknown);
        assert!(
            v.diagnosis.contains("no socket on port 8080"),
            "{}",
            v.diagnosis
        );
        let mut blind = with(vec![]);
        blind.blind = Some("the namespace is gone".into());
        assert!(diagnose(&event(98, 8080), &blind)
            .diagnosis
            .contains("namespace is gone"));
    }
}
