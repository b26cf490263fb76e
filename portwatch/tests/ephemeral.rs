//! Connections holding a port: an outgoing connection's source port
//! (`ephemeral_port`) told from a server's accepted leftovers
//! (`connection`) by what is known, never by the peer's port, and never a
//! `kill` for either; sysctl fixes aimed at the failure's network
//! namespace. Real sockets, each test in its own network namespace whose
//! ip_local_port_range the test sets, so source ports are known.

mod common;

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
};

use common::*;
use serde_json::Value;

/// The namespace's ephemeral range: ten ports, inside nothing else here.
const LOW: u16 = 41000;
const HIGH: u16 = 41009;

/// A namespace whose ip_local_port_range is LOW-HIGH and whose reserved
/// ports are 9000.
fn netns(comm: &str) -> Netns {
    let ns = Netns::new(comm);
    ns.run(|| {
        std::fs::write(
            "/proc/sys/net/ipv4/ip_local_port_range",
            format!("{LOW} {HIGH}"),
        )
        .unwrap();
        std::fs::write("/proc/sys/net/ipv4/ip_local_reserved_ports", "9000").unwrap();
    });
    ns
}

/// A listener on 127.0.0.1:`port`, a client connected to it from a port
/// the kernel picked, and the connection the listener accepted.
fn connect_to(port: u16) -> (TcpListener, TcpStream, TcpStream) {
    let server = TcpListener::bind(("127.0.0.1", port)).expect("listen");
    let port = server.local_addr().unwrap().port();
    let client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let (accepted, _) = server.accept().expect("accept");
    (server, client, accepted)
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {v:#}"))
}

/// No fix for a connection holder stops or kills it.
fn assert_no_kill(v: &Value) {
    let fix = text(v, "fix");
    for bad in ["kill", "systemctl stop", "fuser"] {
        assert!(!fix.contains(bad), "{bad} in the fix: {v:#}");
    }
}

/// `who PORT` inside `ns`: the source port of the namespace's client is
/// ephemeral_port, reserved in that namespace (portwatch stands in it).
fn assert_ephemeral(ns: &Netns, sport: u16) -> Value {
    assert!((LOW..=HIGH).contains(&sport), "source port {sport}");
    let (code, v) = who(ns, &[&sport.to_string()]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["reason"], "ephemeral_port", "{v:#}");
    assert!(
        text(&v, "diagnosis").contains("its peer is in this network namespace"),
        "{v:#}"
    );
    assert!(
        text(&v, "fix").contains(&format!(
            "`sysctl -w net.ipv4.ip_local_reserved_ports=9000,{sport}` run in this network namespace now (this namespace's own setting, not the host's"
        )),
        "{v:#}"
    );
    assert_no_kill(&v);
    v
}

#[test]
fn outgoing_to_a_low_port_is_ephemeral() {
    let ns = netns("pw-eph-low");
    let (_s, client, _a) = ns.run(|| connect_to(80));
    assert_ephemeral(&ns, client.local_addr().unwrap().port());
}

/// A service above the range (65000): the peer's port proves nothing.
#[test]
fn outgoing_to_a_high_port_is_ephemeral() {
    let ns = netns("pw-eph-high");
    let (_s, client, _a) = ns.run(|| connect_to(65000));
    assert_ephemeral(&ns, client.local_addr().unwrap().port());
}

/// gRPC on 50051 with the default range: the service's own port is inside
/// the range (bound by the server on purpose), and so is the client's.
#[test]
fn outgoing_to_a_port_inside_the_range_is_ephemeral() {
    let ns = netns("pw-eph-inrange");
    let (_s, client, _a) = ns.run(|| connect_to(LOW + 5));
    let sport = client.local_addr().unwrap().port();
    assert_ne!(sport, LOW + 5);
    assert_ephemeral(&ns, sport);
    // Through --netns PID from outside, the fix enters the namespace.
    let pid = std::process::id();
    let path = format!("/proc/{pid}/task/{}/ns/net", ns.tid);
    let out = Command::new(bin())
        .args(["who", &sport.to_string(), "--netns", &path, "--json"])
        .output()
        .expect("run portwatch who");
    let (code, v) = parse(&out);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["reason"], "ephemeral_port", "{v:#}");
    assert!(
        text(&v, "fix").contains(&format!(
            "`nsenter --net={path} sysctl -w net.ipv4.ip_local_reserved_ports=9000,{sport}` now"
        )),
        "{v:#}"
    );
    assert!(!text(&v, "fix").contains("/etc/sysctl.d"), "{v:#}");
}

/// A server's accepted connections, left after its listener closed, on a
/// port inside the range: nothing `who` sees tells them from an outgoing
/// connection's, so the fix is right either way, and never `kill`.
#[test]
fn accepted_connections_after_the_listener_closed() {
    let ns = netns("pw-eph-accept");
    let (server, client, accepted) = ns.run(|| connect_to(LOW + 5));
    drop(server);
    let (code, v) = who(&ns, &[&(LOW + 5).to_string()]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["reason"], "connection", "{v:#}");
    assert!(
        text(&v, "diagnosis").contains("nothing seen shows which end opened them"),
        "{v:#}"
    );
    let fix = text(&v, "fix");
    assert!(
        fix.contains(&format!(
            "`sysctl -w net.ipv4.ip_local_reserved_ports=9000,{}`",
            LOW + 5
        )),
        "{v:#}"
    );
    // std's listener had SO_REUSEADDR, which the accepted connection
    // keeps: read from its socket, it lets a SO_REUSEADDR bind through.
    let reuseaddr = v["binds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["option"] == "reuseaddr");
    assert_eq!(reuseaddr.unwrap()["result"], "ok", "{v:#}");
    assert_eq!(reuseaddr.unwrap()["options_from"], "socket", "{v:#}");
    assert!(fix.contains("SO_REUSEADDR"), "{v:#}");
    assert!(
        fix.contains("either way they end when their owner"),
        "{v:#}"
    );
    assert_no_kill(&v);
    drop((client, accepted));
}

/// The same leftovers under a tracer: its record of the listener says the
/// server end was accepted.
#[test]
fn accepted_connections_named_by_the_recorded_listener() {
    let ns = netns("pw-eph-record");
    let tracer = Tracer::start(&["--netns", &ns.arg()]);
    let port = LOW + 5;
    let (server, client, accepted) = ns.run(move || connect_to(port));
    drop(server);
    let failed = ns.run(move || bind(&socket(false, false), SocketAddr::from(([0; 4], port))));
    assert_eq!(failed, Err(libc::EADDRINUSE));
    let ev = tracer.event();
    assert_eq!(ev["reason"], "connection", "{ev:#}");
    assert!(
        text(&ev, "diagnosis").contains(&format!(
            "a listener on it accepted (the kernel recorded pid {} ",
            std::process::id()
        )),
        "{ev:#}"
    );
    assert!(text(&ev, "fix").contains("SO_REUSEADDR"), "{ev:#}");
    assert!(
        !text(&ev, "fix").contains("ip_local_reserved_ports"),
        "{ev:#}"
    );
    assert_no_kill(&ev);
    drop((client, accepted));
}

/// Both ends on loopback: the client's end is outgoing (its peer's port
/// has a listener). A client that bound its source port itself, outside
/// the range, is outgoing too, but not an ephemeral pick: no reservation.
#[test]
fn loopback_connection_with_both_ends_local() {
    let ns = netns("pw-eph-loop");
    let (_s, client, accepted) = ns.run(|| connect_to(8080));
    let sport = client.local_addr().unwrap().port();
    assert_eq!(accepted.peer_addr().unwrap().port(), sport);
    assert_ephemeral(&ns, sport);

    let bound = ns.run(|| {
        let s = socket(false, false);
        bind(&s, v4(5000)).unwrap();
        s.connect(&v4(8080).into()).unwrap();
        s
    });
    let (code, v) = who(&ns, &["5000"]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["reason"], "connection", "{v:#}");
    assert!(
        text(&v, "diagnosis").contains(&format!(
            "outside ip_local_port_range {LOW}-{HIGH}, so the program bound it itself"
        )),
        "{v:#}"
    );
    assert!(
        !text(&v, "fix").contains("ip_local_reserved_ports"),
        "{v:#}"
    );
    assert_no_kill(&v);
    drop(bound);

    // Bound on purpose inside the range: sock_diag cannot tell it from the
    // kernel's pick, so the reservation comes with what it cannot stop.
    let inside = LOW + 7;
    let bound = ns.run(move || {
        let s = socket(false, false);
        bind(&s, v4(inside)).unwrap();
        s.connect(&v4(8080).into()).unwrap();
        s
    });
    let v = assert_ephemeral(&ns, inside);
    assert!(
        text(&v, "fix").contains("not a program that binds this port itself"),
        "{v:#}"
    );
    drop(bound);
}

/// A process in a network namespace of its own fails: the fix writes that
/// namespace through nsenter, never the host's list.
#[test]
fn a_failure_in_a_private_netns_is_fixed_through_nsenter() {
    let ns = Netns::new("pw-eph-nsenter");
    let tracer = Tracer::start(&["--netns", &ns.arg()]);
    let code = "import socket, errno, time\n\
        open('/proc/sys/net/ipv4/ip_local_port_range', 'w').write('41000 41000')\n\
        open('/proc/sys/net/ipv4/ip_local_reserved_ports', 'w').write('9000')\n\
        srv = socket.socket(); srv.bind(('127.0.0.1', 8080)); srv.listen()\n\
        c = socket.create_connection(('127.0.0.1', 8080)); a, _ = srv.accept()\n\
        assert c.getsockname()[1] == 41000, c.getsockname()\n\
        s = socket.socket()\n\
        try:\n  s.bind(('0.0.0.0', 41000)); raise SystemExit('bind succeeded')\n\
        except OSError as e:\n  assert e.errno == errno.EADDRINUSE, e\n\
        time.sleep(120)\n";
    let child = ns.run(move || {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.args(["-c", code]);
        Process::spawn(cmd, &[])
    });
    let ev = tracer.event();
    assert_eq!(ev["pid"], child.pid, "{ev:#}");
    assert_eq!(ev["reason"], "ephemeral_port", "{ev:#}");
    let fix = text(&ev, "fix");
    assert!(
        fix.contains(&format!(
            "`nsenter --net=/proc/{}/ns/net sysctl -w net.ipv4.ip_local_reserved_ports=9000,41000` now (this namespace's own setting, not the host's; it is lost with the namespace)",
            child.pid
        )),
        "{ev:#}"
    );
    assert!(fix.contains("the process's own start-up"), "{ev:#}");
    assert!(!fix.contains("/etc/sysctl.d"), "{ev:#}");
    assert_no_kill(&ev);
}

/// In the host's own namespace the plain `sysctl -w` and its sysctl.d line
/// are right. Only loopback sockets on ports the kernel picks from the
/// host's range, for a moment; no setting of the host is written.
#[test]
fn the_host_namespace_keeps_plain_sysctl() {
    let (_s, client, _a) = connect_to(0);
    let sport = client.local_addr().unwrap().port();
    let out = Command::new(bin())
        .args(["who", &sport.to_string(), "--json"])
        .output()
        .expect("run portwatch who");
    let (code, v) = parse(&out);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["reason"], "ephemeral_port", "{v:#}");
    let fix = text(&v, "fix");
    assert!(
        fix.contains("`sysctl -w net.ipv4.ip_local_reserved_ports=")
            && fix.contains("in a file under /etc/sysctl.d/ for the next boot (this is the host's network namespace)"),
        "{v:#}"
    );
    assert!(!fix.contains("nsenter"), "{v:#}");
    assert_no_kill(&v);
}
