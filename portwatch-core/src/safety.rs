//! What is never stopped nor killed to free a port, what each serves, and
//! the reconfiguration that frees the port instead: one table.
//!
//! A fix is advice for a live host. Ending sshd refuses every new login,
//! ending resolved breaks name resolution, ending a runtime or a cluster
//! agent ends every workload it runs. For a holder in [`TABLE`] a fix says
//! what it serves and how to move it off the port; the rules never name
//! `kill` nor `systemctl stop` for it.
//!
//! Matches read untrusted text (comm, command line): a process that lies its
//! way into the table only gets gentler advice.

use crate::{cmdline::flag, tools::HostTools};

/// The process a table entry is matched against and a reconfiguration is
/// written for (a holder's identity, as /proc gave it).
#[derive(Debug, Clone, Copy, Default)]
pub struct Process<'a> {
    /// Its pid.
    pub pid: Option<u32>,
    /// Its comm.
    pub comm: Option<&'a str>,
    /// Its systemd unit.
    pub unit: Option<&'a str>,
    /// Its command line.
    pub cmdline: Option<&'a str>,
}

/// How an entry's processes and units are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A daemon others depend on: no process in its units and none of its
    /// programs is ended, none of its units is stopped; it is reconfigured.
    Daemon,
    /// A runtime's helper holding a port for a container: the container is
    /// what the fix acts on, never the helper.
    RuntimeHelper,
    /// A login session: its units are never stopped and its own processes
    /// (sshd's session, tmux, screen) never ended; a program started inside
    /// it may be ended alone.
    Session,
}

/// A program that belongs to an entry only in its context: `comm` inside
/// one of the entry's units, or with `marker` in its command line (dnsmasq
/// is NetworkManager's or libvirt's only when started by them).
#[derive(Debug)]
pub struct Helper {
    /// Its comm.
    pub comm: &'static str,
    /// Text of its command line that names the entry.
    pub marker: &'static str,
}

/// One thing never stopped nor killed.
#[derive(Debug)]
pub struct Entry {
    /// What people call it.
    pub name: &'static str,
    /// Its programs' comms; a trailing `*` matches any rest.
    pub programs: &'static [&'static str],
    /// Programs that are its own only in its context.
    pub helpers: &'static [Helper],
    /// Its systemd units; one `*` matches any run of characters.
    pub units: &'static [&'static str],
    /// What ending it would take away, for the fix to say.
    pub serves: &'static str,
    /// How its processes and units are treated.
    pub kind: Kind,
    /// The reconfiguration that frees `port`, for holder `h`, naming only
    /// commands this host has.
    pub instead: fn(p: &Process, port: u16, tools: &HostTools) -> String,
}

/// How a holder matched an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    /// It is one of the entry's programs (or helpers): never ended.
    Own,
    /// It only runs inside one of the entry's units (a program started in
    /// a login session): the unit is never stopped, the process may end.
    Inside,
}

/// The entry that protects a holder, and how.
#[derive(Debug, Clone, Copy)]
pub struct Found {
    /// The entry.
    pub entry: &'static Entry,
    /// How the holder belongs to it.
    pub member: Member,
}

/// Whether `pattern` (at most one `*`) matches `s`.
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        Some((head, tail)) => {
            s.len() >= head.len() + tail.len() && s.starts_with(head) && s.ends_with(tail)
        }
        None => pattern == s,
    }
}

impl Entry {
    /// Whether `unit` is one of its units.
    pub fn has_unit(&self, unit: &str) -> bool {
        self.units.iter().any(|p| glob(p, unit))
    }

    /// Whether a process of `comm`, in `unit`, running `cmdline`, is its own.
    fn owns(&self, comm: &str, unit: Option<&str>, cmdline: Option<&str>) -> bool {
        self.programs.iter().any(|p| glob(p, comm))
            || self.helpers.iter().any(|h| {
                h.comm == comm
                    && (unit.is_some_and(|u| self.has_unit(u))
                        || cmdline.is_some_and(|c| c.contains(h.marker)))
            })
    }
}

/// The entry protecting a process of `comm` in `unit` running `cmdline`:
/// its own programs first (whatever unit they run in), then its units.
pub fn find(comm: Option<&str>, unit: Option<&str>, cmdline: Option<&str>) -> Option<Found> {
    let own = comm.and_then(|c| TABLE.iter().find(|e| e.owns(c, unit, cmdline)));
    if let Some(entry) = own {
        return Some(Found {
            entry,
            member: Member::Own,
        });
    }
    let entry = TABLE.iter().find(|e| unit.is_some_and(|u| e.has_unit(u)))?;
    Some(Found {
        entry,
        member: match entry.kind {
            Kind::Session => Member::Inside,
            Kind::Daemon | Kind::RuntimeHelper => Member::Own,
        },
    })
}

/// [`find`] for a process.
pub fn of(p: &Process) -> Option<Found> {
    find(p.comm, p.unit, p.cmdline)
}

/// The entry whose unit `unit` is: never `systemctl stop`ped.
pub fn unit_entry(unit: &str) -> Option<&'static Entry> {
    TABLE.iter().find(|e| e.has_unit(unit))
}

/// `systemctl ARGS` when systemd runs this host, else `otherwise`.
fn systemctl(tools: &HostTools, args: &str, otherwise: &str) -> String {
    if tools.systemd {
        format!("`systemctl {args}`")
    } else {
        otherwise.to_owned()
    }
}

fn sshd(_: &Process, port: u16, t: &HostTools) -> String {
    let reload = systemctl(
        t,
        "reload ssh",
        "make sshd reload its configuration the way this host's init does (SIGHUP to its listener)",
    );
    format!(
        "change `Port`/`ListenAddress` in /etc/ssh/sshd_config so it leaves port {port} (on a socket-activated setup, ssh.socket's ListenStream=), then {reload}: a reload keeps open sessions"
    )
}

fn session(_: &Process, port: u16, _: &HostTools) -> String {
    format!(
        "close what holds port {port} inside that session instead: the program started there, or an `ssh -R`/`-L` forwarding of that connection (end it from the client, `~C` then `-KR {port}`); the session itself stays"
    )
}

fn resolved(_: &Process, port: u16, t: &HostTools) -> String {
    let setting = match port {
        5355 => "`LLMNR=no`",
        5353 => "`MulticastDNS=no`",
        _ => "`DNSStubListener=no`",
    };
    let restart = systemctl(t, "restart systemd-resolved", "restart systemd-resolved");
    format!(
        "set {setting} in /etc/systemd/resolved.conf (or a file under /etc/systemd/resolved.conf.d/), then {restart}; without the stub listener, link /etc/resolv.conf to /run/systemd/resolve/resolv.conf so lookups still work"
    )
}

fn networkd(_: &Process, port: u16, t: &HostTools) -> String {
    let reload = systemctl(t, "reload systemd-networkd", "reload systemd-networkd");
    format!(
        "turn off the service on port {port} in the link's .network file under /etc/systemd/network/ (`DHCPServer=no`, or its `DHCP=` client), then {reload}"
    )
}

fn network_manager(h: &Process, port: u16, _: &HostTools) -> String {
    if h.comm == Some("dnsmasq") {
        format!(
            "its dnsmasq serves a shared connection or NetworkManager's DNS: set `dns=default` under [main] in /etc/NetworkManager/NetworkManager.conf, or stop sharing that connection (ipv4.method), then `nmcli general reload`; port {port} is then free"
        )
    } else {
        format!(
            "change the connection that uses port {port} (`nmcli connection show`), then `nmcli connection up` it again"
        )
    }
}

/// The libvirt network of a dnsmasq started by libvirt
/// (`--conf-file=/var/lib/libvirt/dnsmasq/NAME.conf`).
fn libvirt_network(cmdline: Option<&str>) -> Option<&str> {
    let conf = flag(cmdline?, &["--conf-file"])?;
    let name = conf.rsplit('/').next()?.strip_suffix(".conf")?;
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    plain.then_some(name)
}

fn libvirt(h: &Process, port: u16, _: &HostTools) -> String {
    if h.comm == Some("dnsmasq") {
        let net = libvirt_network(h.cmdline).unwrap_or("NETWORK");
        format!(
            "change the libvirt network {net}: `virsh net-edit {net}` (`<dns enable='no'/>` frees port 53, a smaller or no `<dhcp>` range port 67), then restart that network (`virsh net-destroy {net}` and `virsh net-start {net}`) when its VMs may lose their network for a moment"
        )
    } else {
        format!(
            "change `listen_addr`/`tcp_port`/`tls_port` in /etc/libvirt/libvirtd.conf so libvirtd leaves port {port}, then restart it when no VM operation is running"
        )
    }
}

fn dbus(_: &Process, port: u16, _: &HostTools) -> String {
    format!(
        "a bus listens on TCP only when its configuration says so: remove the `<listen>tcp:...` on port {port} from /etc/dbus-1/system.conf, session.conf or their .d/ directories; it takes effect when the bus starts again (the next boot or login)"
    )
}

fn systemd(h: &Process, port: u16, t: &HostTools) -> String {
    let is_manager = h.pid == Some(1)
        || h.unit == Some("init.scope")
        || h.unit.is_some_and(|u| u.starts_with("user@"));
    if is_manager {
        let list = systemctl(
            t,
            "list-sockets --all",
            "its socket units (`ListenStream=`/`ListenDatagram=`)",
        );
        return format!(
            "it holds port {port} for a socket unit: {list} names the unit on port {port}; change that unit's Listen*= line, or turn that socket unit off, never the manager or its scope"
        );
    }
    "change the port in its configuration under /etc/systemd/ (its man page names the setting), then restart that service alone".to_owned()
}

fn runtime_helper(h: &Process, port: u16, t: &HostTools) -> String {
    let comm = h.comm.unwrap_or("the runtime");
    let ps = match (comm, t.podman, t.docker) {
        ("conmon" | "rootlessport" | "rootlessport-ch", true, _) => Some("podman ps"),
        (_, _, true) => Some("docker ps"),
        (_, true, _) => Some("podman ps"),
        _ => None,
    };
    let find = match ps {
        Some(ps) => format!("`{ps}` shows which container publishes port {port}"),
        None => format!("its runtime's tools show which container publishes port {port}"),
    };
    format!(
        "{comm} holds it for a container: find the container ({find}) and stop it or change its published ports; never end {comm} itself"
    )
}

fn runtime(_: &Process, port: u16, _: &HostTools) -> String {
    format!(
        "a runtime listens on TCP only where its configuration says so (dockerd: `hosts` in /etc/docker/daemon.json; containerd: /etc/containerd/config.toml; CRI-O: /etc/crio/crio.conf; a podman API service: its URI): move it off port {port} there, and restart the runtime when its containers may stop"
    )
}

fn cluster(_: &Process, port: u16, _: &HostTools) -> String {
    format!(
        "port {port} is the node agent's own or a Service's: change it in the node's configuration (kubelet's --config, /etc/rancher/k3s/config.yaml, /etc/rancher/rke2/config.yaml, k0s.yaml) or, for a NodePort or hostPort, in the workload; `kubectl get svc -A`, run where the cluster is managed, shows which Service asks for it"
    )
}

/// Everything never stopped nor killed, first match first: specific
/// helpers and services before the families that would catch them.
pub static TABLE: [Entry; 11] = [
    Entry {
        name: "a login session",
        programs: &["tmux: server", "tmux", "screen", "SCREEN"],
        helpers: &[Helper {
            comm: "sshd",
            marker: "@",
        }],
        units: &["session-*.scope", "user@*.service"],
        serves: "someone's login and every shell in it",
        kind: Kind::Session,
        instead: session,
    },
    Entry {
        name: "sshd",
        programs: &["sshd"],
        helpers: &[],
        units: &["ssh.service", "ssh.socket", "sshd.service", "sshd.socket"],
        serves: "remote logins to this host: stopping it keeps open sessions but refuses every new login, so a remote operator is one dropped connection from losing the machine",
        kind: Kind::Daemon,
        instead: sshd,
    },
    Entry {
        name: "systemd-resolved",
        programs: &["systemd-resolve"],
        helpers: &[],
        units: &["systemd-resolved.service"],
        serves: "name resolution of this host: its stub listener answers every lookup through /etc/resolv.conf",
        kind: Kind::Daemon,
        instead: resolved,
    },
    Entry {
        name: "systemd-networkd",
        programs: &["systemd-network"],
        helpers: &[],
        units: &["systemd-networkd.service", "systemd-networkd.socket"],
        serves: "this host's network configuration: addresses, routes, DHCP",
        kind: Kind::Daemon,
        instead: networkd,
    },
    Entry {
        name: "NetworkManager",
        programs: &["NetworkManager"],
        helpers: &[Helper {
            comm: "dnsmasq",
            marker: "/NetworkManager/",
        }],
        units: &["NetworkManager.service"],
        serves: "this host's network connections, and through its dnsmasq the DNS and DHCP of shared ones",
        kind: Kind::Daemon,
        instead: network_manager,
    },
    Entry {
        name: "libvirt",
        programs: &["libvirtd", "virtnetworkd"],
        helpers: &[Helper {
            comm: "dnsmasq",
            marker: "/libvirt/",
        }],
        units: &["libvirtd.service", "libvirtd*.socket", "virtnetworkd.service"],
        serves: "the virtual machines of this host and their networks: DNS and DHCP on virbr0",
        kind: Kind::Daemon,
        instead: libvirt,
    },
    Entry {
        name: "D-Bus",
        programs: &["dbus-daemon", "dbus-broker*"],
        helpers: &[],
        units: &["dbus.service", "dbus.socket", "dbus-broker.service"],
        serves: "the system bus: systemctl, logind, NetworkManager and most daemons talk through it",
        kind: Kind::Daemon,
        instead: dbus,
    },
    Entry {
        name: "systemd",
        programs: &["systemd", "systemd-*"],
        helpers: &[],
        units: &["init.scope", "systemd-*"],
        serves: "every service of this host as pid 1, every process of a user as systemd --user, or a part of the system as a systemd-* service",
        kind: Kind::Daemon,
        instead: systemd,
    },
    Entry {
        name: "a container runtime's helper",
        programs: &[
            "dockerd",
            "docker-proxy",
            "conmon",
            "rootlessport",
            "rootlessport-ch",
            "containerd-shim*",
        ],
        helpers: &[],
        units: &[],
        serves: "a container's published port, and dockerd every container",
        kind: Kind::RuntimeHelper,
        instead: runtime_helper,
    },
    Entry {
        name: "a container runtime",
        programs: &["containerd", "podman", "crio"],
        helpers: &[],
        units: &[
            "docker.service",
            "docker.socket",
            "containerd.service",
            "podman.service",
            "podman.socket",
            "crio.service",
        ],
        serves: "every container of this host",
        kind: Kind::Daemon,
        instead: runtime,
    },
    Entry {
        name: "a Kubernetes node agent",
        programs: &[
            "kubelet",
            "k3s",
            "k3s-server",
            "k3s-agent",
            "rke2",
            "k0s",
            "kubelite",
            "kube-proxy",
            "flanneld",
            "cilium-agent",
            "calico-node",
        ],
        helpers: &[],
        units: &[
            "kubelet.service",
            "k3s.service",
            "k3s-agent.service",
            "rke2-server.service",
            "rke2-agent.service",
            "k0scontroller.service",
            "k0sworker.service",
            "snap.microk8s.daemon-kubelite.service",
        ],
        serves: "this node's pods and Services, which the cluster would reschedule or lose",
        kind: Kind::Daemon,
        instead: cluster,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("session-*.scope", "session-3.scope"));
        assert!(!glob("session-*.scope", "session-3.service"));
        assert!(glob("containerd-shim*", "containerd-shim-runc-v2"));
        assert!(!glob("containerd-shim*", "containerd"));
        assert!(glob("sshd", "sshd") && !glob("sshd", "sshd2"));
        assert!(!glob("a*ab", "ab"));
    }

    #[test]
    fn helpers_belong_only_in_their_context() {
        let nm = "/usr/sbin/dnsmasq --no-resolv --pid-file=/run/NetworkManager/dnsmasq.pid";
        let lv =
            "/usr/sbin/dnsmasq --conf-file=/var/lib/libvirt/dnsmasq/default.conf --leasefile-ro";
        assert_eq!(
            find(Some("dnsmasq"), None, Some(nm)).unwrap().entry.name,
            "NetworkManager"
        );
        assert_eq!(
            find(Some("dnsmasq"), Some("libvirtd.service"), None)
                .unwrap()
                .entry
                .name,
            "libvirt"
        );
        assert_eq!(libvirt_network(Some(lv)), Some("default"));
        assert_eq!(
            libvirt_network(Some("dnsmasq --conf-file=/x/a;b.conf")),
            None
        );
        // The host's own dnsmasq is an ordinary service.
        assert!(find(
            Some("dnsmasq"),
            Some("dnsmasq.service"),
            Some("/usr/sbin/dnsmasq -x /run/dnsmasq/dnsmasq.pid")
        )
        .is_none());
        // sshd's session processes are the session's; the listener is sshd.
        let s = find(
            Some("sshd"),
            Some("session-4.scope"),
            Some("sshd: ann [priv]"),
        )
        .unwrap();
        assert_eq!(s.entry.name, "a login session");
        let s = find(Some("sshd"), None, Some("sshd: ann@pts/0")).unwrap();
        assert_eq!(s.entry.name, "a login session");
        let d = find(
            Some("sshd"),
            Some("ssh.service"),
            Some("sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups"),
        )
        .unwrap();
        assert_eq!(d.entry.name, "sshd");
    }

    #[test]
    fn a_program_started_in_a_session_is_inside_not_own() {
        let f = find(Some("python3"), Some("session-3.scope"), None).unwrap();
        assert_eq!(f.member, Member::Inside);
        let f = find(Some("tmux: server"), Some("session-3.scope"), None).unwrap();
        assert_eq!(f.member, Member::Own);
        // Any process of a daemon's unit is the daemon's.
        let f = find(Some("k3s-agent-x"), Some("k3s-agent.service"), None).unwrap();
        assert_eq!(f.member, Member::Own);
        assert!(find(Some("nginx"), Some("nginx.service"), None).is_none());
    }

    #[test]
    fn every_entry_says_what_it_serves_and_has_a_way_in() {
        for e in &TABLE {
            assert!(!e.serves.is_empty(), "{}", e.name);
            assert!(
                !e.programs.is_empty() || !e.helpers.is_empty() || !e.units.is_empty(),
                "{}",
                e.name
            );
            for p in e.programs.iter().chain(e.units) {
                assert!(p.matches('*').count() <= 1, "{}: {p}", e.name);
            }
        }
    }
}
