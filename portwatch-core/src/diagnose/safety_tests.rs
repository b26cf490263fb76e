//! The safety table through `diagnose`: every entry is reconfigured, never
//! stopped nor killed, and says what it serves; fixes name only commands
//! this host has (systemctl, docker, the Compose that made a service).

use super::*;
use crate::{
    holders::{
        containers::{Compose, Container, Publishing, Runtime},
        systemd::SocketUnit,
        Holder, State,
    },
    request::{Caller, Family, Opts, Proto, Syscall},
    safety::{Entry, Kind, TABLE},
    tools::HostTools,
};

const NO_TOOLS: HostTools = HostTools {
    systemd: false,
    docker: false,
    compose_plugin: false,
    docker_compose: false,
    podman: false,
};

/// A failed bind of TCP 0.0.0.0:`port` by `comm` (pid 4242), or by nobody
/// in particular (`who`).
fn request(port: u16, comm: Option<&str>) -> Request {
    Request {
        netns: 1,
        proto: Proto::Tcp,
        family: Family::Ipv4,
        addr: "0.0.0.0".parse().unwrap(),
        port,
        opts: Some(Opts::default()),
        syscall: Syscall::Bind,
        errno: Some(crate::request::Errno::ADDRINUSE),
        caller: comm.map(|c| Caller {
            pid: 4242,
            tid: 4242,
            uid: 0,
            comm: c.into(),
        }),
        holder_record: None,
        device: 0,
    }
}

fn holder(comm: &str, unit: Option<&str>, cmdline: &str) -> Holder {
    Holder {
        pid: Some(700),
        comm: Some(comm.into()),
        cmdline: Some(cmdline.into()),
        uid: Some(0),
        port: 53,
        unit: unit.map(str::to_owned),
        pids: vec![700],
        ..tests::holder(State::Listen)
    }
}

fn seen(holders: Vec<Holder>, tools: HostTools) -> Evidence {
    Evidence {
        holders,
        tools,
        ..Evidence::default()
    }
}

/// `pattern` with its `*` filled in.
fn fill(pattern: &str) -> String {
    pattern.replace('*', "1")
}

/// Every holder an entry stands for: each program (in its first unit and
/// in none), each helper in its context, and for a daemon any process of
/// each of its units.
fn holders_of(e: &Entry) -> Vec<Holder> {
    let first_unit = e.units.first().map(|u| fill(u));
    let mut out = Vec::new();
    for p in e.programs {
        out.push(holder(&fill(p), first_unit.as_deref(), "prog --serve"));
        out.push(holder(&fill(p), None, "prog --serve"));
    }
    for h in e.helpers {
        out.push(holder(h.comm, None, &format!("{} x{}y", h.comm, h.marker)));
        if let Some(u) = &first_unit {
            out.push(holder(h.comm, Some(u), h.comm));
        }
    }
    if e.kind == Kind::Daemon {
        for u in e.units {
            out.push(holder("worker", Some(&fill(u)), "worker"));
        }
    }
    out
}

/// The whole table: whatever the state, the requester and the tools of
/// the host, a holder of any entry gets a fix that names neither `kill`
/// nor `systemctl stop` and says what the entry serves.
#[test]
fn every_entry_of_the_safety_table_is_reconfigured_never_stopped_nor_killed() {
    let mut checked = 0;
    for e in &TABLE {
        let holders = holders_of(e);
        assert!(!holders.is_empty(), "{}: no holder to test", e.name);
        for h in holders {
            for state in [State::Listen, State::Udp, State::Bound] {
                for caller in [None, Some("nginx"), h.comm.as_deref()] {
                    for tools in [HostTools::ALL, NO_TOOLS] {
                        let mut h = h.clone();
                        h.state = state;
                        let mut e_seen = seen(vec![h.clone()], tools);
                        e_seen.caller.unit = h.unit.clone();
                        let v = diagnose(&request(53, caller), &e_seen);
                        let what = format!(
                            "{}: {:?} in {:?}, {state:?}, caller {caller:?}, {tools:?}",
                            e.name, h.comm, h.unit
                        );
                        assert!(!v.fix.contains("kill"), "{what}: {}", v.fix);
                        assert!(!v.fix.contains("systemctl stop"), "{what}: {}", v.fix);
                        let says = match e.kind {
                            Kind::RuntimeHelper => h.comm.as_deref().unwrap_or(""),
                            Kind::Daemon | Kind::Session => e.serves,
                        };
                        // A same-process conflict is the requester's own.
                        if caller != h.comm.as_deref() || e.kind == Kind::RuntimeHelper {
                            assert!(v.fix.contains(says), "{what}: {}", v.fix);
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 500, "only {checked} cases");
}

fn fix_of(h: Holder, port: u16, tools: HostTools) -> String {
    diagnose(&request(port, Some("nginx")), &seen(vec![h], tools)).fix
}

fn assert_has(fix: &str, wants: &[&str]) {
    for w in wants {
        assert!(fix.contains(w), "{w:?} missing: {fix}");
    }
    assert!(
        !fix.contains("kill") && !fix.contains("systemctl stop"),
        "{fix}"
    );
}

#[test]
fn sshd_is_moved_in_sshd_config_and_reloaded() {
    let h = holder(
        "sshd",
        Some("ssh.service"),
        "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups",
    );
    let fix = fix_of(h.clone(), 22, HostTools::ALL);
    assert_has(
        &fix,
        &[
            "remote logins",
            "refuses every new login",
            "`Port`/`ListenAddress` in /etc/ssh/sshd_config",
            "ssh.socket's ListenStream=",
            "`systemctl reload ssh`",
        ],
    );
    let fix = fix_of(h, 22, NO_TOOLS);
    assert!(!fix.contains("systemctl"), "{fix}");
    assert_has(&fix, &["sshd_config", "SIGHUP"]);
    // Debian's socket-activated sshd: the socket unit is never stopped.
    let fix = fix_of(
        holder("sshd", Some("ssh.socket"), "sshd -i"),
        22,
        HostTools::ALL,
    );
    assert_has(&fix, &["sshd_config"]);
}

#[test]
fn login_sessions_and_multiplexers_stay() {
    for (comm, unit, cmdline) in [
        ("sshd", Some("session-4.scope"), "sshd: ann@pts/0"),
        ("sshd", None, "sshd: ann@notty"),
        ("tmux: server", Some("session-4.scope"), "tmux"),
        ("screen", Some("user@1000.service"), "screen -S work"),
    ] {
        let fix = fix_of(holder(comm, unit, cmdline), 8080, HostTools::ALL);
        assert_has(
            &fix,
            &["someone's login", "ssh -R", "the session itself stays"],
        );
    }
    // A program started inside the session may end alone; its scope stays.
    let fix = fix_of(
        holder("python3", Some("session-4.scope"), "python3 -m http.server"),
        8080,
        HostTools::ALL,
    );
    assert!(fix.contains("`kill 700`"), "{fix}");
    assert!(
        fix.contains("leave session-4.scope itself running"),
        "{fix}"
    );
}

#[test]
fn resolved_and_networkd_are_reconfigured_not_killed() {
    let h = holder(
        "systemd-resolve",
        Some("systemd-resolved.service"),
        "/lib/systemd/systemd-resolved",
    );
    assert_has(
        &fix_of(h.clone(), 53, HostTools::ALL),
        &[
            "name resolution of this host",
            "`DNSStubListener=no` in /etc/systemd/resolved.conf",
            "`systemctl restart systemd-resolved`",
        ],
    );
    assert_has(&fix_of(h.clone(), 5355, HostTools::ALL), &["`LLMNR=no`"]);
    assert!(!fix_of(h, 53, NO_TOOLS).contains("systemctl"));
    let h = holder(
        "systemd-network",
        Some("systemd-networkd.service"),
        "/lib/systemd/systemd-networkd",
    );
    assert_has(
        &fix_of(h, 67, HostTools::ALL),
        &[
            "network configuration",
            "`DHCPServer=no`",
            "/etc/systemd/network/",
        ],
    );
}

#[test]
fn network_managers_dnsmasq_and_libvirts_are_reconfigured() {
    let nm = holder(
        "dnsmasq",
        None,
        "/usr/sbin/dnsmasq --no-resolv --pid-file=/run/NetworkManager/dnsmasq.pid",
    );
    assert_has(
        &fix_of(nm, 53, HostTools::ALL),
        &[
            "network connections",
            "`dns=default`",
            "NetworkManager.conf",
        ],
    );
    let nm = holder(
        "NetworkManager",
        Some("NetworkManager.service"),
        "NetworkManager",
    );
    assert_has(&fix_of(nm, 8080, HostTools::ALL), &["nmcli connection"]);
    let lv = holder(
        "dnsmasq",
        Some("libvirtd.service"),
        "/usr/sbin/dnsmasq --conf-file=/var/lib/libvirt/dnsmasq/default.conf --leasefile-ro",
    );
    assert_has(
        &fix_of(lv, 53, HostTools::ALL),
        &[
            "virtual machines",
            "`virsh net-edit default`",
            "<dns enable='no'/>",
        ],
    );
    let lv = holder("libvirtd", Some("libvirtd.service"), "/usr/sbin/libvirtd");
    assert_has(&fix_of(lv, 16509, HostTools::ALL), &["libvirtd.conf"]);
    // dnsmasq of its own is an ordinary service.
    let own = holder("dnsmasq", Some("dnsmasq.service"), "/usr/sbin/dnsmasq -k");
    assert!(fix_of(own, 53, HostTools::ALL).contains("`systemctl stop dnsmasq.service`"));
}

#[test]
fn dbus_systemd_runtimes_and_cluster_agents_stay() {
    let dbus = holder("dbus-daemon", Some("dbus.service"), "dbus-daemon --system");
    assert_has(
        &fix_of(dbus, 5555, HostTools::ALL),
        &["system bus", "<listen>tcp:"],
    );
    let mut pid1 = holder("systemd", Some("init.scope"), "/sbin/init");
    pid1.pid = Some(1);
    pid1.pids = vec![1];
    assert_has(
        &fix_of(pid1.clone(), 8080, HostTools::ALL),
        &[
            "every service of this host",
            "`systemctl list-sockets --all`",
        ],
    );
    assert!(!fix_of(pid1, 8080, NO_TOOLS).contains("systemctl"));
    for (comm, unit) in [
        ("containerd", "containerd.service"),
        ("podman", "podman.service"),
        ("crio", "crio.service"),
    ] {
        assert_has(
            &fix_of(holder(comm, Some(unit), comm), 8080, HostTools::ALL),
            &["every container of this host"],
        );
    }
    for comm in [
        "kubelet",
        "k3s",
        "k3s-agent",
        "rke2",
        "k0s",
        "kubelite",
        "kube-proxy",
        "flanneld",
        "cilium-agent",
        "calico-node",
    ] {
        let fix = fix_of(holder(comm, None, comm), 30080, HostTools::ALL);
        assert_has(
            &fix,
            &["this node's pods", "run where the cluster is managed"],
        );
    }
    for unit in ["rke2-server.service", "k0sworker.service", "k3s.service"] {
        let fix = fix_of(holder("anything", Some(unit), "x"), 30080, HostTools::ALL);
        assert_has(&fix, &["this node's pods"]);
    }
}

/// A docker-proxy publishing compose service `cart` of project `shop`,
/// made by Compose `version`.
fn compose_proxy(version: &str, files: &[&str]) -> Holder {
    let mut h = holder(
        "docker-proxy",
        Some("docker.service"),
        "/usr/sbin/docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 8080 -container-ip 172.17.0.2 -container-port 80",
    );
    h.port = 8080;
    h.container = Some(Container {
        name: Some("shop_cart_1".into()),
        published: vec!["0.0.0.0:8080->80/tcp".into()],
        compose: Some(Compose {
            project: "shop".into(),
            service: "cart".into(),
            version: Some(version.into()),
            working_dir: Some("/srv/shop".into()),
            config_files: files.iter().map(|&f| f.to_owned()).collect(),
        }),
        ..Container::bare(&"c".repeat(64), Runtime::Docker)
    });
    h
}

#[test]
fn compose_v1_services_get_docker_compose_and_their_ports_entry() {
    let v1_only = HostTools {
        docker: true,
        docker_compose: true,
        ..NO_TOOLS
    };
    let fix = fix_of(
        compose_proxy("1.29.2", &["/srv/shop/docker-compose.yml"]),
        8080,
        v1_only,
    );
    assert_has(
        &fix,
        &[
            "`cd /srv/shop && docker-compose -p shop stop cart`",
            "another host port in `ports:` of /srv/shop/docker-compose.yml (its entry for 8080:80)",
            "`cd /srv/shop && docker-compose -p shop up -d cart`",
        ],
    );
    assert!(
        !fix.contains("docker compose") && !fix.contains("-p OTHER:"),
        "{fix}"
    );
    // Both are here: the one that made it.
    let fix = fix_of(
        compose_proxy("1.29.2", &["/srv/shop/docker-compose.yml"]),
        8080,
        HostTools::ALL,
    );
    assert!(
        fix.contains("`cd /srv/shop && docker-compose -p shop stop cart`"),
        "{fix}"
    );
    // v1 made it, only v2 is here: the one that exists.
    let v2_only = HostTools {
        docker: true,
        compose_plugin: true,
        ..NO_TOOLS
    };
    let fix = fix_of(
        compose_proxy("1.29.2", &["/srv/shop/docker-compose.yml"]),
        8080,
        v2_only,
    );
    assert!(fix.contains("`docker compose -p shop stop cart`"), "{fix}");
    assert!(!fix.contains("docker-compose -p"), "{fix}");
    // v2 made it, both are here: v2.
    let fix = fix_of(
        compose_proxy("2.24.0", &["/srv/shop/compose.yaml"]),
        8080,
        HostTools::ALL,
    );
    assert!(fix.contains("`docker compose -p shop stop cart`"), "{fix}");
    // A file that v1 would not find alone, relative as Compose may write it.
    let fix = fix_of(
        compose_proxy("1.29.2", &["/srv/shop/base.yml", "prod.yml"]),
        8080,
        v1_only,
    );
    assert!(
        fix.contains("`cd /srv/shop && docker-compose -p shop -f /srv/shop/base.yml -f /srv/shop/prod.yml stop cart`"),
        "{fix}"
    );
    assert!(
        fix.contains("/srv/shop/base.yml or /srv/shop/prod.yml"),
        "{fix}"
    );
    // No Compose here: docker stop, or no command at all.
    let docker_only = HostTools {
        docker: true,
        ..NO_TOOLS
    };
    let fix = fix_of(compose_proxy("1.29.2", &[]), 8080, docker_only);
    assert!(fix.contains("`docker stop shop_cart_1`"), "{fix}");
    let fix = fix_of(compose_proxy("1.29.2", &[]), 8080, NO_TOOLS);
    assert!(fix.contains("no `docker` command on this host"), "{fix}");
    assert!(
        !fix.contains("docker stop") && !fix.contains("docker-compose -p"),
        "{fix}"
    );
}

#[test]
fn hostile_compose_labels_are_quoted_or_dropped() {
    let mut h = compose_proxy("1.29.2", &["/srv/a b/docker-compose.yml"]);
    let c = h.container.as_mut().unwrap();
    c.compose.as_mut().unwrap().working_dir = Some("/srv/a b".into());
    let fix = fix_of(h.clone(), 8080, HostTools::ALL);
    assert!(
        fix.contains("cd '/srv/a b' && docker-compose -p shop stop cart"),
        "{fix}"
    );
    h.container
        .as_mut()
        .unwrap()
        .compose
        .as_mut()
        .unwrap()
        .project = "$(reboot)".into();
    let fix = fix_of(h, 8080, HostTools::ALL);
    assert!(!fix.contains("$(reboot)"), "{fix}");
    assert!(fix.contains("`docker stop shop_cart_1`"), "{fix}");
}

/// `docker-compose up` could not publish: the failing side is the compose
/// service, moved in its compose file, not with `docker run`'s `-p`.
#[test]
fn a_compose_service_that_cannot_publish_is_moved_in_its_compose_file() {
    let proxy = compose_proxy("1.29.2", &["/srv/shop/docker-compose.yml"]);
    let mut e = seen(
        vec![holder("nginx", Some("nginx.service"), "nginx")],
        HostTools::ALL,
    );
    e.holders[0].port = 8080;
    e.caller.publishing = Some(Publishing {
        container: proxy.container.unwrap(),
        running: false,
        mapping: "8080:80".into(),
    });
    let v = diagnose(&request(8080, Some("docker-proxy")), &e);
    assert!(
        v.fix.ends_with("or give service cart another host port in `ports:` of /srv/shop/docker-compose.yml (its entry for 8080:80), then `cd /srv/shop && docker-compose -p shop up -d cart`"),
        "{}",
        v.fix
    );
    assert!(!v.fix.contains("-p OTHER:"), "{}", v.fix);
}

/// Without systemd as PID 1 (`/run/systemd/system` absent, as on this
/// project's machines), no fix names `systemctl`.
#[test]
fn systemctl_is_named_only_when_systemd_runs_the_host() {
    let nginx = holder("nginx", Some("nginx.service"), "nginx: master process");
    assert!(fix_of(nginx.clone(), 80, HostTools::ALL).contains("`systemctl stop nginx.service`"));
    let fix = fix_of(nginx.clone(), 80, NO_TOOLS);
    assert!(!fix.contains("systemctl"), "{fix}");
    assert!(fix.contains("`kill 700`"), "{fix}");
    // An older process of the same unit: no `systemctl cat` either.
    let mut e = seen(vec![nginx], NO_TOOLS);
    e.caller.unit = Some("nginx.service".into());
    let v = diagnose(&request(80, Some("nginx")), &e);
    assert!(!v.fix.contains("systemctl"), "{}", v.fix);
    // A socket unit of pid 1 without systemctl at hand.
    let mut pid1 = holder("systemd", Some("init.scope"), "/sbin/init");
    pid1.pid = Some(1);
    pid1.socket_unit = Some(SocketUnit {
        unit: "demo.socket".into(),
        listen: "ListenStream=0.0.0.0:8080".into(),
        activates: vec!["demo.service".into()],
        user: None,
    });
    let fix = fix_of(pid1, 8080, NO_TOOLS);
    assert!(!fix.contains("systemctl"), "{fix}");
    assert!(
        fix.contains("demo.socket") && fix.contains("ListenStream="),
        "{fix}"
    );
}

/// Docker's and podman's commands only where they are installed; a pod's
/// `kubectl` as a cluster command.
#[test]
fn container_commands_only_where_installed() {
    let mut h = holder("busybox", None, "httpd");
    h.container = Some(Container {
        name: Some("web".into()),
        ..Container::bare(&"d".repeat(64), Runtime::Podman)
    });
    assert!(fix_of(h.clone(), 8080, HostTools::ALL).contains("`podman stop web`"));
    let fix = fix_of(h.clone(), 8080, NO_TOOLS);
    assert!(fix.contains("no `podman` command on this host"), "{fix}");
    assert!(!fix.contains("podman stop"), "{fix}");
    let c = h.container.as_mut().unwrap();
    c.runtime = Runtime::Containerd;
    c.pod = Some(crate::holders::containers::Pod {
        namespace: "prod".into(),
        name: "web-0".into(),
        container: None,
        controller: None,
    });
    let fix = fix_of(h, 8080, HostTools::ALL);
    assert!(
        fix.contains("`kubectl -n prod get pod web-0 -o yaml` (a cluster command: run it where the cluster is managed)"),
        "{fix}"
    );
}
