//! Who the holder is to the requester, how to name it, and how to stop it
//! cleanly: the wording every rule shares.

use crate::{
    holders::{
        procs::{is_stoppable_unit, serves_others},
        short_id,
        systemd::SocketUnit,
        Evidence, Holder, State,
    },
    request::Request,
};

/// Timeless advice for SO_REUSEPORT.
pub(super) const REUSEPORT_CAVEAT: &str =
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
    if let Some(d) = &h.device {
        s.push_str(&format!(", bound to {}", d.label()));
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
pub(super) const SERVES_OTHERS: [&str; 7] = [
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
pub(super) fn stop(h: &Holder, rel: Relation, port: u16) -> String {
    if h.exited {
        return "it has exited; retry the bind".into();
    }
    let cmd = stop_cmd(h, port);
    // A container, a runtime's helper or a kernel device: its own stop
    // leads, worded for its owner, not "stop it cleanly, kill ...".
    let owned_elsewhere = h.container.is_some() || h.kernel.is_some() || h.is_runtime_helper();
    match rel {
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
pub(super) fn lead(rel: Relation) -> &'static str {
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
pub(super) fn v6only_on(program: Option<&str>, port: u16) -> String {
    match program {
        Some("nginx") => format!("`listen [::]:{port} ipv6only=on;` in nginx's configuration"),
        Some(p) => format!(
            "IPV6_V6ONLY on {p}'s IPv6 socket (its own configuration; many programs follow `sysctl net.ipv6.bindv6only=1` at start)"
        ),
        None => "IPV6_V6ONLY on the IPv6 socket".into(),
    }
}
