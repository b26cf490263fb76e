//! Connections holding a port: outgoing ones (ephemeral_port) told from a
//! server's accepted leftovers (connection) only by what enrichment showed,
//! never `kill`; and sysctl fixes aimed at the failure's network namespace.

use super::*;
use crate::{
    clock::Clock,
    event::{
        fixtures::{encode, sample},
        Event,
    },
    holders::{
        containers::{Container, Pod, Runtime},
        opened::{Clue, Opened, Opener},
        sysctl::Scope,
        Holder, State, Sysctls,
    },
};

/// A failed bind() of 0.0.0.0:`port` by nginx (pid 4242).
fn bind(port: u16) -> Request {
    let mut raw = sample();
    raw.ret = -libc::EADDRINUSE;
    raw.port = port;
    raw.folded = 0;
    let mut req = Event::decode(&encode(&raw), Clock::now())
        .unwrap()
        .request();
    req.addr = "0.0.0.0".parse().unwrap();
    req.opts = Some(crate::request::Opts::default());
    req
}

/// An ESTABLISHED connection of pid 100 (client) from `port` to `remote`.
fn conn(port: u16, remote: &str) -> Holder {
    Holder {
        comm: Some("client".into()),
        cmdline: Some("client --run".into()),
        addr: "127.0.0.1".parse().unwrap(),
        port,
        remote: Some(remote.into()),
        ..tests::holder(State::Connection(1))
    }
}

/// Evidence of `h`, ip_local_port_range 40000-40100 with 9000-9010
/// reserved, in the host's namespace, opened as `opened` says.
fn seen(h: Holder, opened: Option<(Opener, Clue)>) -> Evidence {
    Evidence {
        holders: vec![h],
        sysctls: Some(Sysctls {
            local_port_range: Some((40000, 40100)),
            local_reserved_ports: Some("9000-9010".into()),
            ..Sysctls::default()
        }),
        opened: opened.map(|(by, clue)| Opened { by, clue }),
        scope: Scope {
            host: Some(true),
            enter: None,
        },
        ..Evidence::default()
    }
}

fn no_kill(v: &Verdict) {
    for bad in ["kill", "systemctl stop", "fuser"] {
        assert!(!v.fix.contains(bad), "{bad}: {v:#?}");
    }
}

const RESERVE_HOST: &str = "`sysctl -w net.ipv4.ip_local_reserved_ports=9000-9010,40050` now, and the line `net.ipv4.ip_local_reserved_ports = 9000-9010,40050` in a file under /etc/sysctl.d/";

#[test]
fn outgoing_to_a_low_port_is_ephemeral_and_reserved() {
    let v = diagnose(
        &bind(40050),
        &seen(
            conn(40050, "127.0.0.1:80"),
            Some((Opener::Outgoing, Clue::PeerListens)),
        ),
    );
    assert_eq!(v.reason, Reason::EphemeralPort, "{v:#?}");
    assert!(v.diagnosis.contains("listens on the peer's port"), "{v:#?}");
    assert!(v.fix.contains(RESERVE_HOST), "{v:#?}");
    assert!(!v.fix.contains("SO_REUSEADDR"), "{v:#?}");
    no_kill(&v);
}

/// gRPC on 50051 with the default range, or any service on a high port:
/// the peer's port inside (or above) the range decides nothing.
#[test]
fn outgoing_to_a_port_inside_or_above_the_range_is_ephemeral() {
    for remote in ["10.0.0.7:40070", "10.0.0.7:65000"] {
        let v = diagnose(
            &bind(40050),
            &seen(
                conn(40050, remote),
                Some((Opener::Outgoing, Clue::PeerListens)),
            ),
        );
        assert_eq!(v.reason, Reason::EphemeralPort, "{remote}: {v:#?}");
        assert!(v.fix.contains(RESERVE_HOST), "{v:#?}");
        no_kill(&v);
    }
}

/// No evidence of the opener: no guess from the peer's port (a low peer
/// port is also an NFS client's), and a fix right for both.
#[test]
fn an_unknown_opener_gets_the_fix_right_either_way() {
    for remote in ["10.1.2.3:443", "10.1.2.3:40070", "127.0.0.1:700"] {
        let v = diagnose(&bind(40050), &seen(conn(40050, remote), None));
        assert_eq!(v.reason, Reason::Connection, "{remote}: {v:#?}");
        assert!(
            v.diagnosis
                .contains("nothing seen shows which end opened them")
                && v.diagnosis
                    .contains("inside ip_local_port_range 40000-40100"),
            "{v:#?}"
        );
        assert!(v.fix.contains(RESERVE_HOST), "{v:#?}");
        assert!(v.fix.contains("SO_REUSEADDR"), "{v:#?}");
        assert!(
            v.fix
                .contains("either way they end when their owner, client (pid 100), closes them"),
            "{v:#?}"
        );
        no_kill(&v);
    }
    // Outside the range: nothing to reserve.
    let v = diagnose(&bind(8080), &seen(conn(8080, "10.1.2.3:443"), None));
    assert_eq!(v.reason, Reason::Connection, "{v:#?}");
    assert!(!v.fix.contains("ip_local_reserved_ports"), "{v:#?}");
    assert!(v.fix.contains("SO_REUSEADDR"), "{v:#?}");
    no_kill(&v);
    // A trial bind showed SO_REUSEADDR failing: it is never advised.
    let mut e = seen(conn(40050, "10.1.2.3:443"), None);
    e.trial_failed.reuseaddr = true;
    let v = diagnose(&bind(40050), &e);
    assert!(!v.fix.contains("SO_REUSEADDR"), "{v:#?}");
    assert!(v.fix.contains(RESERVE_HOST), "{v:#?}");
    no_kill(&v);
}

/// A server's accepted connections, left after its listener closed: even
/// on a port inside the range, never ephemeral_port nor a reservation.
#[test]
fn accepted_leftovers_are_connections_never_killed() {
    let recorded = Clue::ListenerRecorded {
        pid: 77,
        comm: "server".into(),
    };
    for clue in [recorded, Clue::ListenerNow] {
        let v = diagnose(
            &bind(40050),
            &seen(
                conn(40050, "127.0.0.1:40070"),
                Some((Opener::Accepted, clue.clone())),
            ),
        );
        assert_eq!(v.reason, Reason::Connection, "{clue:?}: {v:#?}");
        assert!(v.diagnosis.contains("a listener on it accepted"), "{v:#?}");
        assert!(v.fix.contains("SO_REUSEADDR"), "{v:#?}");
        assert!(!v.fix.contains("ip_local_reserved_ports"), "{v:#?}");
        no_kill(&v);
    }
    let mut e = seen(
        conn(40050, "127.0.0.1:40070"),
        Some((Opener::Accepted, Clue::ListenerNow)),
    );
    e.trial_failed.reuseaddr = true;
    let v = diagnose(&bind(40050), &e);
    assert!(v.fix.starts_with("wait: they end when"), "{v:#?}");
    assert!(
        !v.fix
            .contains("set SO_REUSEADDR on the listening socket before"),
        "{v:#?}"
    );
}

/// A loopback connection: the client's end is outgoing (the peer listens),
/// and outside the range the program chose the port itself.
#[test]
fn outgoing_outside_the_range_names_the_owner_not_a_reservation() {
    let v = diagnose(
        &bind(8080),
        &seen(
            conn(8080, "127.0.0.1:9000"),
            Some((Opener::Outgoing, Clue::PeerListens)),
        ),
    );
    assert_eq!(v.reason, Reason::Connection, "{v:#?}");
    assert!(
        v.diagnosis
            .contains("outside ip_local_port_range 40000-40100, so the program bound it itself"),
        "{v:#?}"
    );
    assert!(!v.fix.contains("ip_local_reserved_ports"), "{v:#?}");
    assert!(!v.fix.contains("SO_REUSEADDR"), "{v:#?}");
    no_kill(&v);
    // Its own bind() before connect(): a reservation does not stop it.
    let v = diagnose(
        &bind(40050),
        &seen(
            conn(40050, "10.0.0.7:443"),
            Some((Opener::Outgoing, Clue::BoundThenConnected)),
        ),
    );
    assert_eq!(v.reason, Reason::EphemeralPort, "{v:#?}");
    assert!(v.fix.contains("no reservation stops it"), "{v:#?}");
}

/// Whoever holds the connection, in whatever relation to the requester.
#[test]
fn no_connection_holder_is_ever_killed() {
    let openers = [
        None,
        Some((Opener::Outgoing, Clue::PeerListens)),
        Some((Opener::Accepted, Clue::ListenerNow)),
    ];
    for opened in openers {
        for (pid, comm, unit) in [
            (4242, "nginx", None),
            (100, "nginx", Some("nginx.service")),
            (100, "apache2", Some("apache2.service")),
            (100, "containerd", Some("containerd.service")),
        ] {
            for port in [8080, 40050] {
                let mut h = conn(port, "10.0.0.1:443");
                (h.pid, h.pids, h.comm) = (Some(pid), vec![pid], Some(comm.into()));
                h.unit = unit.map(str::to_owned);
                let mut e = seen(h, opened.clone());
                e.caller.unit = Some("nginx.service".into());
                let v = diagnose(&bind(port), &e);
                assert!(
                    matches!(v.reason, Reason::Connection | Reason::EphemeralPort),
                    "{v:#?}"
                );
                no_kill(&v);
            }
        }
    }
}

/// The failing process is in a network namespace of its own.
fn in_private_netns(mut e: Evidence, container: Option<Container>) -> Evidence {
    e.scope = Scope {
        host: Some(false),
        enter: Some("/proc/4242/ns/net".into()),
    };
    e.caller.container = container.as_ref().map(|c| c.id.clone());
    e.caller.in_container = container;
    e
}

#[test]
fn a_private_namespace_is_written_through_nsenter_not_the_host() {
    let e = in_private_netns(
        seen(
            conn(40050, "10.0.0.7:443"),
            Some((Opener::Outgoing, Clue::PeerListens)),
        ),
        None,
    );
    let v = diagnose(&bind(40050), &e);
    assert_eq!(v.reason, Reason::EphemeralPort, "{v:#?}");
    assert!(
        v.fix.starts_with(
            "Reserve it, keeping what is reserved today: `nsenter --net=/proc/4242/ns/net sysctl -w net.ipv4.ip_local_reserved_ports=9000-9010,40050` now (this namespace's own setting, not the host's; it is lost with the namespace)"
        ),
        "{v:#?}"
    );
    assert!(v.fix.contains("the process's own start-up"), "{v:#?}");
    assert!(!v.fix.contains("/etc/sysctl.d"), "{v:#?}");
    assert!(!v.fix.contains("`sysctl -w"), "{v:#?}");
    // A path from the command line is one shell word, whatever it holds.
    let mut odd = e.clone();
    odd.scope.enter = Some("/run/netns/it's".into());
    let v = diagnose(&bind(40050), &odd);
    assert!(
        v.fix
            .contains("`nsenter --net='/run/netns/it'\\''s' sysctl -w"),
        "{v:#?}"
    );
    // portwatch stands in that namespace itself (`who` run inside it).
    let mut here = e;
    here.scope.enter = None;
    let v = diagnose(&bind(40050), &here);
    assert!(
        v.fix.contains(
            "`sysctl -w net.ipv4.ip_local_reserved_ports=9000-9010,40050` run in this network namespace now (this namespace's own setting, not the host's"
        ),
        "{v:#?}"
    );
}

#[test]
fn containers_and_pods_keep_the_setting_in_their_own_definition() {
    let outgoing = || {
        seen(
            conn(40050, "10.0.0.7:443"),
            Some((Opener::Outgoing, Clue::PeerListens)),
        )
    };
    for (runtime, cli) in [(Runtime::Docker, "docker"), (Runtime::Podman, "podman")] {
        let ct = Container {
            name: Some("api".into()),
            ..Container::bare(&"c".repeat(64), runtime)
        };
        let v = diagnose(&bind(40050), &in_private_netns(outgoing(), Some(ct)));
        assert!(
            v.fix.contains(&format!(
                "for good, start {cli} container api with `{cli} run --sysctl net.ipv4.ip_local_reserved_ports=9000-9010,40050` (compose: `sysctls:`)"
            )),
            "{v:#?}"
        );
        assert!(
            v.fix.contains("`nsenter --net=/proc/4242/ns/net sysctl -w"),
            "{v:#?}"
        );
    }
    let pod = Container {
        pod: Some(Pod {
            namespace: "shop".into(),
            name: "api-7d9f".into(),
            container: Some("api".into()),
            controller: None,
        }),
        ..Container::bare(&"d".repeat(64), Runtime::Containerd)
    };
    let v = diagnose(&bind(40050), &in_private_netns(outgoing(), Some(pod)));
    assert!(
        v.fix.contains(
            "in pod shop/api-7d9f's spec: `securityContext.sysctls: [{name: net.ipv4.ip_local_reserved_ports, value: \"9000-9010,40050\"}]` (a change to its workload, made on the cluster side"
        ),
        "{v:#?}"
    );
    assert!(!v.fix.contains("docker run"), "{v:#?}");
}

/// docker-proxy binds a published port in the host's namespace: the
/// host's own setting is the right one, said as such.
#[test]
fn docker_proxy_and_the_host_keep_plain_sysctl() {
    let mut req = bind(40050);
    req.caller.as_mut().unwrap().comm = "docker-proxy".into();
    let e = seen(
        conn(40050, "10.0.0.7:443"),
        Some((Opener::Outgoing, Clue::PeerListens)),
    );
    let v = diagnose(&req, &e);
    assert!(v.fix.contains(RESERVE_HOST), "{v:#?}");
    assert!(
        v.fix
            .contains("docker-proxy binds published ports in the host's network namespace"),
        "{v:#?}"
    );
    assert!(!v.fix.contains("nsenter"), "{v:#?}");
}

/// bind(port 0) with the range used up: widening it is aimed too.
#[test]
fn an_exhausted_range_is_widened_in_its_own_namespace() {
    let mut e = in_private_netns(seen(conn(40050, "10.0.0.7:443"), None), None);
    e.holders.clear();
    e.ephemeral_in_use = Some(101);
    let v = diagnose(&bind(0), &e);
    assert_eq!(v.reason, Reason::EphemeralExhausted, "{v:#?}");
    assert!(
        v.fix.contains(
            "`nsenter --net=/proc/4242/ns/net sysctl -w net.ipv4.ip_local_port_range=\"10000 65000\"` now"
        ),
        "{v:#?}"
    );
    e.scope = Scope {
        host: Some(true),
        enter: None,
    };
    let v = diagnose(&bind(0), &e);
    assert!(
        v.fix
            .contains("`sysctl -w net.ipv4.ip_local_port_range=\"10000 65000\"` now, and the line `net.ipv4.ip_local_port_range = 10000 65000` in a file under /etc/sysctl.d/"),
        "{v:#?}"
    );
}
