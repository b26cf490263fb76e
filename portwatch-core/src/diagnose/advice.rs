//! Who the holder is to the requester, how to name it, and how to stop it
//! cleanly: the wording every rule shares.

use crate::{
    holders::{
        containers::{is_plain, Compose, Container, Pod, Runtime},
        dnat::DnatRule,
        procs::is_stoppable_unit,
        short_id,
        systemd::SocketUnit,
        Evidence, Holder, KernelDevice, State,
    },
    request::Request,
    safety::{self, Entry, Kind, Member},
    tools::HostTools,
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

/// The clean way to stop the holder, as its owner would, in order: the
/// socket unit a systemd manager holds it for, the kernel device, the
/// container (never the runtime's helper), anything of the safety table
/// (reconfigured, never stopped nor killed), the unit (a `.service` or
/// `.socket` only, when systemd runs this host), else the process.
fn stop_cmd(h: &Holder, port: u16, seen: &Evidence) -> String {
    let tools = &seen.tools;
    if let Some(s) = &h.socket_unit {
        return socket_unit_fix(h, s, tools);
    }
    if let Some(k) = &h.kernel {
        return kernel_fix(k);
    }
    if let Some(c) = &h.container {
        if let Some(p) = &c.pod {
            return pod_fix(p, port, seen);
        }
        if c.kubernetes {
            return unnamed_pod_fix(c, port);
        }
        return container_fix(h, c, port, tools);
    }
    let found = safety::of(&h.process());
    if let Some(f) = found.filter(|f| f.member == Member::Own) {
        return protected_fix(h, f.entry, port, tools);
    }
    if let Some(unit) = h.unit.as_deref().filter(|u| is_stoppable_unit(u)) {
        if tools.systemd {
            // The unit name was checked against systemd's charset when read.
            return format!("`systemctl stop {unit}`");
        }
    }
    process_fix(h, port, found.map(|f| f.entry))
}

/// A kernel device's socket: the device is what to delete or move.
fn kernel_fix(k: &KernelDevice) -> String {
    let name = shell_word(&k.name);
    if k.certain {
        format!(
            "delete the {} device if nothing uses it (`ip link del {name}`), or recreate it with another port",
            k.kind
        )
    } else {
        format!(
            "check whether {} device {name} listens on it (`wg show {name} listen-port`); if so, give it another port (`wg set {name} listen-port N`)",
            k.kind
        )
    }
}

/// A container's port: the container itself, stopped as its owner would, never the helper that
/// publishes its port; and where its port can be moved.
fn container_fix(h: &Holder, c: &Container, port: u16, tools: &HostTools) -> String {
    let moved = if h.is_runtime_helper() {
        // "0.0.0.0:8080->80/tcp": the container's side of this port.
        let inside = c
            .published
            .iter()
            .find_map(|p| p.split_once(&format!(":{port}->")))
            .and_then(|(_, rest)| rest.split('/').next())
            .unwrap_or("CONTAINER_PORT");
        format!(
            ", or {}",
            publish_elsewhere(c, &format!("{port}:{inside}"), tools)
        )
    } else {
        String::new()
    };
    match container_stop(c, tools) {
        Some(cmd) => format!("stop {} (`{cmd}`){moved}", c.label()),
        None => format!(
            "stop {} with the tools that run it ({}){moved}",
            c.label(),
            missing_cli(c.runtime)
        ),
    }
}

/// The pod a holder or requester runs in, as a fix names it: `NS/NAME`
/// and, when known, `(container C)`, each a plain shell word.
fn pod_named(p: &Pod) -> String {
    let mut s = format!("pod {}/{}", shell_word(&p.namespace), shell_word(&p.name));
    if let Some(c) = &p.container {
        s.push_str(&format!(" (container {})", shell_word(c)));
    }
    s
}

/// Where a fix for pod `p` is looked up: a cluster command, to run where
/// the cluster is managed (the node has no kubeconfig of its own, most
/// often). ownerReferences never reach the node: the controller is named
/// only as the pod's labels tell it (`Pod::controller`), never guessed
/// from the name.
fn pod_lookup(p: &Pod) -> String {
    let (ns, name) = (shell_word(&p.namespace), shell_word(&p.name));
    let owner = p.controller.map_or("its controller", |c| c.phrase());
    format!(
        "`kubectl -n {ns} get pod {name} -o yaml` (a cluster command: run it where the cluster is managed) shows its ports and, under ownerReferences, {owner}"
    )
}

/// The manifest where pod `p`'s ports are set: its controller's pod
/// template where the pod's labels name the controller, else "its
/// workload's manifest".
fn manifest_of(p: &Pod) -> String {
    match p.controller {
        Some(c) => format!("the pod template of {}", c.phrase()),
        None => "its workload's manifest".into(),
    }
}

/// Why neither ending a pod's container nor deleting the pod frees a port.
const POD_COMES_BACK: &str = "deleting the pod is no fix (its controller recreates it, often on this node with the same ports) and neither is ending its container from the host (kubelet restarts it)";

/// A pod's container holds the port: the change that ends the clash is in
/// its workload's manifest (which port field depends on where the port is:
/// the node's own network namespace means `hostNetwork: true`), or the
/// other side moves. Two containers of one pod share its network
/// namespace: one of them must change.
fn pod_fix(p: &Pod, port: u16, seen: &Evidence) -> String {
    let caller = seen
        .caller
        .in_container
        .as_ref()
        .and_then(|c| c.pod.as_ref());
    let lookup = pod_lookup(p);
    if let Some(me) = caller.filter(|me| (&me.namespace, &me.name) == (&p.namespace, &p.name)) {
        let two = match (&p.container, &me.container) {
            (Some(a), Some(b)) if a != b => {
                format!("containers {} and {} of", shell_word(a), shell_word(b))
            }
            _ => "two containers of".into(),
        };
        return format!(
            "{two} {} share its network namespace and both want port {port}: give one of them another port in {} (its `containerPort` and the program's own setting); {POD_COMES_BACK}; {lookup}",
            pod_named(&Pod {
                container: None,
                ..p.clone()
            }),
            manifest_of(p)
        );
    }
    let field = match seen.scope.host {
        Some(true) => format!(
            "it runs with `hostNetwork: true`, so its `containerPort` {port} is the node's port: change that port or drop `hostNetwork`"
        ),
        Some(false) => format!("its `containerPort` {port}, in the pod's own network namespace"),
        None => format!(
            "its `hostPort` {port}, or its `containerPort` {port} when it runs with `hostNetwork: true`"
        ),
    };
    let other = match caller {
        Some(me) => format!("or move {} to another port", pod_named(me)),
        None => "or move the other service to another port".into(),
    };
    format!(
        "change the port of {} in {} ({field}), {other}; {POD_COMES_BACK}; {lookup}",
        pod_named(p),
        manifest_of(p)
    )
}

/// A pod's container (by its kubepods cgroup) whose pod no runtime file on
/// this node named: the same fix as a named pod's, with the way to name it.
fn unnamed_pod_fix(c: &Container, port: u16) -> String {
    let id = short_id(&c.id);
    format!(
        "change port {port} in the workload of the pod this container belongs to (`crictl ps --id {id}` names the pod where crictl is installed), or move the other service to another port; {POD_COMES_BACK}"
    )
}

/// The requester is a pod's container and something else holds the port:
/// the pod's manifest first, or the holder moved (stopped cleanly with
/// `cmd` when it is not the pod's to keep).
fn for_a_pod(me: &Pod, named: &str, port: u16, cmd: &str, seen: &Evidence) -> String {
    let field = match seen.scope.host {
        Some(true) => "its `containerPort` under `hostNetwork: true`, or drop `hostNetwork`",
        _ => "its `containerPort`, or its `hostPort`",
    };
    format!(
        "{named} already holds port {port}, which {} wants: change the pod's port in {} ({field}), or move {named} off port {port} ({cmd}); {}",
        pod_named(me),
        manifest_of(me),
        pod_lookup(me)
    )
}

/// Why no command stops a container here.
fn missing_cli(runtime: Runtime) -> String {
    match runtime.cli() {
        Some(cli) => format!("no `{cli}` command on this host"),
        None => "its runtime names no command here".into(),
    }
}

/// How to publish container `c` (its binding `mapping`, `HOST:INSIDE` as
/// `-p` reads it) on another host port: `ports:` of its compose file for
/// a Compose service, else `docker run`'s `-p`.
pub fn publish_elsewhere(c: &Container, mapping: &str, tools: &HostTools) -> String {
    let inside = mapping.rsplit(':').next().unwrap_or("CONTAINER_PORT");
    let Some(compose) = c.compose.as_ref().filter(|k| is_plain(&k.service)) else {
        return format!(
            "publish {} on another host port (`-p OTHER:{inside}`)",
            c.label()
        );
    };
    let files = compose_files(compose);
    let place = match files.as_slice() {
        [] => "its compose file".to_owned(),
        files => files
            .iter()
            .map(|f| shell_word(f))
            .collect::<Vec<_>>()
            .join(" or "),
    };
    let again = compose_cmd(compose, tools, "up -d")
        .map(|cmd| format!(", then `{cmd}`"))
        .unwrap_or_default();
    format!(
        "give service {} another host port in `ports:` of {place} (its entry for {}){again}",
        compose.service,
        shell_word(mapping)
    )
}

/// The compose files of a project, absolute (Compose may write them
/// relative to its working directory).
fn compose_files(c: &Compose) -> Vec<String> {
    c.config_files
        .iter()
        .filter_map(|f| {
            if f.starts_with('/') {
                Some(f.clone())
            } else {
                c.working_dir
                    .as_ref()
                    .filter(|d| d.starts_with('/'))
                    .map(|d| format!("{}/{f}", d.trim_end_matches('/')))
            }
        })
        .collect()
}

/// Compose files `docker-compose` finds alone in its working directory.
const COMPOSE_DEFAULT_FILES: [&str; 4] = [
    "docker-compose.yml",
    "docker-compose.yaml",
    "compose.yml",
    "compose.yaml",
];

/// `ARGS` (`stop`, `up -d`) for the project's service with the Compose
/// this host has: the one that made it first (`com.docker.compose.version`
/// 1.x is `docker-compose`, 2.x `docker compose`), else the other. v1 reads
/// the compose file even to stop, so it runs in the project's directory.
fn compose_cmd(c: &Compose, tools: &HostTools, args: &str) -> Option<String> {
    if !is_plain(&c.project) || !is_plain(&c.service) {
        return None;
    }
    let v1 = c.version.as_deref().is_some_and(|v| v.starts_with("1."));
    let plugin = (tools.compose_plugin).then_some("docker compose");
    let standalone = (tools.docker_compose).then_some("docker-compose");
    let cli = if v1 {
        standalone.or(plugin)
    } else {
        plugin.or(standalone)
    }?;
    let (project, service) = (&c.project, &c.service);
    if cli == "docker compose" {
        return Some(format!("docker compose -p {project} {args} {service}"));
    }
    let files = compose_files(c);
    let dir = c.working_dir.as_deref().filter(|d| d.starts_with('/'));
    let default_file = |f: &String| {
        dir.is_some_and(|d| {
            COMPOSE_DEFAULT_FILES
                .iter()
                .any(|name| *f == format!("{}/{name}", d.trim_end_matches('/')))
        })
    };
    let cd = dir
        .map(|d| format!("cd {} && ", shell_word(d)))
        .unwrap_or_default();
    let f_flags: String = match files.as_slice() {
        [one] if default_file(one) => String::new(),
        files => files
            .iter()
            .map(|f| format!("-f {} ", shell_word(f)))
            .collect(),
    };
    Some(format!(
        "{cd}docker-compose -p {project} {f_flags}{args} {service}"
    ))
}

/// The command that stops container `c` cleanly on this host, as its
/// owner would type it; None for Kubernetes (its controllers recreate a
/// stopped container) and when this host lacks the runtime's command.
pub fn container_stop(c: &Container, tools: &HostTools) -> Option<String> {
    if c.kubernetes || c.pod.is_some() {
        return None;
    }
    if let (Runtime::Docker, Some(compose)) = (c.runtime, &c.compose) {
        if let Some(cmd) = compose_cmd(compose, tools, "stop") {
            return Some(cmd);
        }
    }
    let have = match c.runtime {
        Runtime::Docker => tools.docker,
        Runtime::Podman => tools.podman,
        Runtime::Containerd | Runtime::Crio | Runtime::Unknown => false,
    };
    let cli = c.runtime.cli().filter(|_| have);
    let who = c
        .name
        .as_deref()
        .filter(|n| is_plain(n))
        .unwrap_or(short_id(&c.id));
    match (cli, c.runtime) {
        (Some(cli), _) => Some(format!("{cli} stop {who}")),
        // A cgroup path that names no runtime: whichever this host has.
        (None, Runtime::Unknown) => match (tools.docker, tools.podman) {
            (true, true) => Some(format!("docker stop {who}` or `podman stop {who}")),
            (true, false) => Some(format!("docker stop {who}")),
            (false, true) => Some(format!("podman stop {who}")),
            (false, false) => None,
        },
        (None, _) => None,
    }
}

/// A holder of the safety table: what it serves, and the reconfiguration
/// that frees the port; never its stop nor its end.
fn protected_fix(h: &Holder, e: &Entry, port: u16, tools: &HostTools) -> String {
    let instead = (e.instead)(&h.process(), port, tools);
    if e.kind == Kind::RuntimeHelper {
        return instead;
    }
    let comm = h.comm.as_deref().unwrap_or("the holder");
    let who = match h.pid {
        Some(pid) => format!("{comm} (pid {pid})"),
        None => comm.to_owned(),
    };
    let is = if comm == e.name {
        "it serves".to_owned()
    } else {
        format!("it is {}, which serves", e.name)
    };
    format!(
        "leave {who} running ({is} {}); instead, {instead}",
        e.serves
    )
}

/// An ordinary process: SIGTERM, never pid 1; its unit left alone when
/// the safety table protects it (a program started in a login session).
fn process_fix(h: &Holder, port: u16, inside: Option<&Entry>) -> String {
    match (h.pid, h.state) {
        (Some(1), _) => format!(
            "pid 1 holds it: change what it runs on port {port} in its configuration, never end pid 1"
        ),
        (Some(pid), _) => match (h.unit.as_deref(), inside) {
            (Some(u), Some(e)) => format!(
                "`kill {pid}` (SIGTERM lets it close its sockets cleanly; leave {u} itself running: it is {}, which serves {})",
                e.name, e.serves
            ),
            _ => format!("`kill {pid}` (SIGTERM lets it close its sockets cleanly)"),
        },
        (None, State::TimeWait) => "wait for them to expire".into(),
        (None, _) => format!("find its owner (`ss -anp 'sport = :{port}'`) and stop it"),
    }
}

/// `s` as one shell word: as it is when plain, else single-quoted (it came
/// from the kernel or a runtime's files, and may hold anything).
pub fn shell_word(s: &str) -> String {
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
fn socket_unit_fix(h: &Holder, s: &SocketUnit, tools: &HostTools) -> String {
    if !tools.systemd && s.user.is_none() {
        let (directive, _) = s.listen.split_once('=').unwrap_or((&s.listen, ""));
        return format!(
            "turn off socket unit {} with the systemd that runs it, or change its {directive}=",
            s.unit
        );
    }
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
pub(super) fn stop(h: &Holder, rel: Relation, port: u16, seen: &Evidence) -> String {
    let tools = &seen.tools;
    if h.exited {
        return "it has exited; retry the bind".into();
    }
    let cmd = stop_cmd(h, port, seen);
    let in_pod = h
        .container
        .as_ref()
        .is_some_and(|c| c.pod.is_some() || c.kubernetes);
    let caller_pod = seen
        .caller
        .in_container
        .as_ref()
        .and_then(|c| c.pod.as_ref());
    match (rel, caller_pod) {
        (Relation::SameProcess | Relation::SameUnit, _) => {}
        // A pod's fix already names both sides.
        _ if in_pod => return cmd,
        (Relation::Other | Relation::SameProgram, Some(me)) => {
            return for_a_pod(me, &named(h), port, &cmd, seen);
        }
        _ => {}
    }
    // A container, a kernel device, or anything of the safety table: its
    // own fix leads, worded for its owner, not "stop it cleanly, kill ...".
    let protected = h.socket_unit.is_none()
        && safety::of(&h.process()).is_some_and(|f| f.member == Member::Own);
    let owned_elsewhere = h.container.is_some() || h.kernel.is_some() || protected;
    match rel {
        Relation::Other | Relation::SameProgram if owned_elsewhere => {
            format!("{cmd}; or give this service another port")
        }
        Relation::SameProcess => "this same process already holds the port on another socket: close that one first, or bind the port only once".into(),
        Relation::SameUnit => match h
            .unit
            .as_deref()
            .filter(|u| tools.systemd && !protected && is_stoppable_unit(u))
        {
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

/// A port that kube-proxy sends to a Service (`rule` is its NodePort
/// rule): the diagnosis and fix that `who` and `check` both give. A
/// process that binds the port gets none of that traffic: the nat table
/// rewrites it before any socket sees it. The fix changes the Service (a
/// cluster command) or moves the host service; removing kube-proxy's rules
/// by hand is no fix, as kube-proxy writes them again at its next sync.
pub fn steered_to_service(proto: &str, port: u16, rule: &DnatRule) -> Option<(String, String)> {
    if let Some(p) = &rule.pod {
        return Some(steered_to_pod(proto, port, rule, p));
    }
    if rule.from == "ipvs" {
        return Some(steered_by_ipvs(proto, port, rule));
    }
    let s = rule.service.as_ref()?;
    let port_name = if s.port_name.is_empty() {
        String::new()
    } else {
        format!(", port {}", s.port_name)
    };
    // No endpoints: kube-proxy drops or rejects the port's traffic (its
    // nftables mode's `no-endpoint-nodeports` map).
    let endpoints = match endpoints_named(rule).as_slice() {
        [] => "; no endpoints, so it is dropped or rejected".to_owned(),
        e => format!("; endpoints {}", e.join(", ")),
    };
    let diagnosis = format!(
        "no socket holds {proto} port {port}, but kube-proxy sends it to Service {} ({}{port_name}{endpoints}): a process listening here never sees that traffic",
        s.label(),
        s.how()
    );
    let (ns, name) = (shell_word(&s.namespace), shell_word(&s.name));
    // A Service address of the node (an externalIP, a LoadBalancer IP)
    // takes the port on that address only: moving off it is a fix too.
    let change = match &s.address {
        None => format!("move Service {ns}/{name} to another nodePort (or another type)"),
        Some(a) => format!(
            "bind this service to another address than {a}, or take {a} out of Service {ns}/{name}'s externalIPs (or its load balancer's addresses)"
        ),
    };
    let fix = format!(
        "give this service another port, or {change} in its manifest: `kubectl -n {ns} get service {name} -o yaml` (a cluster command: run it where the cluster is managed) shows its ports; kube-proxy writes its rules again if they are removed by hand"
    );
    Some((diagnosis, fix))
}

/// A rule's endpoints, each with its pod where the node names it
/// (`10.88.0.5:80 (pod shop/web-0)`).
fn endpoints_named(rule: &DnatRule) -> Vec<String> {
    rule.endpoints
        .iter()
        .map(
            |e| match rule.endpoint_pods.iter().find(|p| &p.endpoint == e) {
                Some(p) => format!("{e} (pod {}/{})", p.pod.namespace, p.pod.name),
                None => e.clone(),
            },
        )
        .collect()
}

/// IPVS virtual servers on `port`: kube-proxy's IPVS mode (when its
/// `kube-ipvs0` device is there) or another load balancer's. IPVS names no
/// Service: the endpoints are what the node knows, and the Service is
/// found by its nodePort where the cluster is managed.
fn steered_by_ipvs(proto: &str, port: u16, rule: &DnatRule) -> (String, String) {
    let to = match endpoints_named(rule).as_slice() {
        [] => "no real server (its connections fail)".to_owned(),
        e => e.join(", "),
    };
    let kube = rule.made_by.as_deref() == Some("kube-proxy");
    let by = if kube { "kube-proxy (IPVS)" } else { "IPVS" };
    let diagnosis = format!(
        "no socket holds {proto} port {port}, but {by} sends it to {to}: a process listening here never sees that traffic"
    );
    let fix = if kube {
        format!(
            "give this service another port, or move the Service with nodePort {port} to another nodePort (or another type) in its manifest: `kubectl get services -A | grep {port}` (a cluster command: run it where the cluster is managed) finds it; kube-proxy makes its virtual servers again if they are removed by hand"
        )
    } else {
        format!(
            "give this service another port, or remove the virtual server if nothing needs it any more (`ipvsadm -Ln | grep :{port}` lists it; whatever made it, such as keepalived, owns it)"
        )
    };
    (diagnosis, fix)
}

/// A hostPort: CNI's portmap rule sends `port` to pod `p`'s address. The
/// fix is the pod's `hostPort` in its workload's manifest, or the host
/// service moved; never the pod deleted (its controller recreates it with
/// the same hostPort).
fn steered_to_pod(proto: &str, port: u16, rule: &DnatRule, p: &Pod) -> (String, String) {
    let to = rule.to.as_deref().unwrap_or("its address");
    let inside = to
        .rsplit_once(':')
        .map(|(_, port)| format!(" :{port}"))
        .unwrap_or_default();
    let container = p
        .container
        .as_deref()
        .map(|c| format!(" container {c}"))
        .unwrap_or_default();
    let diagnosis = format!(
        "hostPort {port} → pod {}/{}{container}{inside}: no socket holds {proto} port {port}, but CNI's portmap sends its traffic to {to}; a process listening here never sees it",
        p.namespace, p.name
    );
    let field = Pod {
        container: None,
        ..p.clone()
    };
    let fix = format!(
        "give this service another port, or change hostPort {port} of {} in {}; {POD_COMES_BACK}; {}",
        pod_named(&field),
        manifest_of(p),
        pod_lookup(p)
    );
    (diagnosis, fix)
}
