//! Every rule on hand-made evidence, and the advice never harms what
//! serves others.

use super::*;
use crate::{
    clock::Clock,
    event::{
        fixtures::{encode, sample},
        Event,
    },
    holders::{
        procs::is_stoppable_unit, systemd::SocketUnit, Device, Holder, Seen, State, Sysctls,
    },
    request::{Family, Opts, Syscall},
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

/// A holder of port 8080 in `state` (pid 100, "old"): the other test
/// modules start from it.
pub(super) fn holder(state: State) -> Holder {
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
        options_from: None,
        cross_family: false,
        seen: Seen::SockDiag,
        socket_unit: None,
        device: None,
        apart: None,
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
            tcp_l3mdev_accept: Some(false),
        }),
        tools: crate::tools::HostTools::ALL,
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
        assert!(!v.fix.contains("systemctl stop"), "{unit}: {}", v.fix);
        // A program started in a login session may end alone; any process
        // of a daemon's own unit is that daemon's, and is never ended.
        let inside = ["session-3.scope", "user@1000.service", "app-foo.scope"];
        assert_eq!(
            v.fix.contains("kill 100"),
            inside.contains(&unit),
            "{unit}: {}",
            v.fix
        );
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
    assert!(v.diagnosis.contains("42 s"), "{}", v.diagnosis);
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
    assert!(v.fix.starts_with("retry in 42 s"), "{}", v.fix);
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
            || crate::safety::find(Some(p.comm), p.unit, None)
                .is_some_and(|f| f.member == crate::safety::Member::Own)
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
            if case.own_socket_advice {
                // A connection ends when its owner closes it: never stopped.
                assert!(
                    !v.fix.contains("kill") && !v.fix.contains("systemctl stop"),
                    "{ctx}"
                );
            } else {
                assert!(v.fix.contains(&stop_cmd), "{ctx}");
            }
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

/// [`Reason::ALL`] and [`Reason::as_str`] against serde's own list of the
/// names (its error for an unknown one names them all, in order): a reason
/// added to the enum and missing from `ALL` fails here, and `as_str`, a
/// match without wildcard, does not compile without it.
#[test]
fn every_reason_is_listed_and_named_as_serde_names_it() {
    let err = serde_json::from_str::<Reason>("\"?\"")
        .unwrap_err()
        .to_string();
    let (_, listed) = err.split_once("expected one of").unwrap();
    let serde_names: Vec<&str> = listed.split('`').skip(1).step_by(2).collect();
    let ours: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(ours, serde_names, "{err}");
    for r in Reason::ALL {
        assert_eq!(serde_json::to_value(r).unwrap(), r.as_str(), "{r:?}");
        assert_eq!(Reason::from_name(r.as_str()), Some(r));
    }
    assert_eq!(Reason::from_name("Listener"), None);
    assert_eq!(Reason::from_name(""), None);
}

fn device(ifindex: u32, name: &str, vrf: Option<&str>) -> Device {
    Device {
        ifindex,
        name: Some(name.into()),
        vrf: vrf.map(Into::into),
    }
}

/// A device decides: an unbound socket meets a device-bound one (each such
/// pair conflicts), and the diagnosis names the device and says why.
#[test]
fn device_bound_holder_and_unbound_requester_are_explained() {
    let req = event(libc::EADDRINUSE, 8080);
    let mut h = holder(State::Listen);
    h.device = Some(device(3, "veth1", None));
    let seen = Evidence {
        holders: vec![h.clone()],
        ..Evidence::default()
    };
    let v = diagnose(&req, &seen);
    assert_eq!(v.reason, Reason::Listener);
    assert!(
        v.diagnosis
            .contains("old (pid 100, bound to device veth1) listening"),
        "{v:?}"
    );
    assert!(
        v.diagnosis
            .contains("this socket is bound to no device, so it would take the port on every device, device veth1 included"),
        "{v:?}"
    );
    assert!(v.fix.contains("SO_BINDTODEVICE"), "{v:?}");

    // The other way round: the requester is bound, the holder is not.
    let seen = Evidence {
        holders: vec![holder(State::Listen)],
        device: Some(device(2, "veth0", None)),
        ..Evidence::default()
    };
    let v = diagnose(&req, &seen);
    assert!(
        v.diagnosis
            .starts_with("tcp 127.0.0.1:8080 (bound to device veth0) is taken"),
        "{v:?}"
    );
    assert!(
        v.diagnosis
            .contains("the holder is bound to no device, so it holds the port on every device, device veth0 included"),
        "{v:?}"
    );
    assert!(!v.fix.contains("SO_BINDTODEVICE"), "{v:?}");

    // Both on one device: named on both sides, no note.
    let seen = Evidence {
        holders: vec![h],
        device: Some(device(3, "veth1", None)),
        ..Evidence::default()
    };
    let v = diagnose(&req, &seen);
    assert!(
        v.diagnosis.contains("(bound to device veth1) is taken by"),
        "{v:?}"
    );
    assert!(!v.diagnosis.contains("every device"), "{v:?}");
}

/// TCP in a VRF with tcp_l3mdev_accept=1: the sysctl is named.
#[test]
fn vrf_with_tcp_l3mdev_accept_is_named() {
    let req = event(libc::EADDRINUSE, 8080);
    let mut h = holder(State::Listen);
    h.device = Some(device(4, "red", Some("red")));
    let mut seen = with(vec![h]);
    if let Some(s) = seen.sysctls.as_mut() {
        s.tcp_l3mdev_accept = Some(true);
    }
    let v = diagnose(&req, &seen);
    assert!(v.diagnosis.contains("bound to VRF red"), "{v:?}");
    assert!(v.diagnosis.contains("tcp_l3mdev_accept=1"), "{v:?}");
}
