//! `portwatch check`: every verdict against real sockets in a private
//! network namespace, and each prediction held to the truth: after the
//! check, the test makes the real bind in that namespace and asserts the
//! kernel agrees (it fails exactly when check said it would). No eBPF.

mod common;

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{preflight::netns, *};
use serde_json::Value;

/// Writes a sysctl in the calling thread's namespace.
fn sysctl(name: &str, value: &str) {
    std::fs::write(format!("/proc/sys/{name}"), value)
        .unwrap_or_else(|e| panic!("sysctl {name}={value}: {e}"));
}

/// `portwatch check ARGS` run in `ns`.
fn run_check(ns: &Netns, args: &[&str]) -> Output {
    preflight::run_check(ns, None, args)
}

/// `portwatch check ARGS --json` in `ns`: its exit status and one object
/// per binding.
fn check(ns: &Netns, args: &[&str]) -> (i32, Vec<Value>) {
    let mut args = args.to_vec();
    args.push("--json");
    let out = run_check(ns, &args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let lines = preflight::json_lines(&out);
    // Options and their values are not bindings.
    let mut bindings = 0;
    let mut skip = false;
    for a in &args {
        match (skip, a.starts_with("--")) {
            (true, _) => skip = false,
            (false, true) => skip = matches!(*a, "--user" | "--netns"),
            (false, false) => bindings += 1,
        }
    }
    assert_eq!(
        lines.len(),
        bindings,
        "one object per binding: {stdout}\nstderr: {stderr}"
    );
    (out.status.code().expect("exit status"), lines)
}

/// The human table of `portwatch check ARGS` in `ns`, and its status.
fn check_text(ns: &Netns, args: &[&str]) -> (i32, String) {
    let out = run_check(ns, args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in text.lines() {
        assert!(line.chars().count() <= 80, "wider than 80 columns:\n{text}");
    }
    (out.status.code().expect("exit status"), text)
}

/// The kernel's answer: a plain bind of `addr` in `ns`, closed at once.
fn kernel_bind(ns: &Netns, addr: SocketAddr, udp: bool) -> Result<(), i32> {
    ns.run(move || {
        let s = socket(addr.is_ipv6(), udp);
        bind(&s, addr)
    })
}

/// A row of the table as `check` lays it out.
fn row(binding: &str, verdict: &str, holder: &str) -> String {
    format!("{binding:<24} {verdict:<17} {holder}")
}

fn addr(s: &str, port: u16) -> SocketAddr {
    SocketAddr::new(s.parse::<IpAddr>().unwrap(), port)
}

#[test]
fn check_taken_by_a_listener_names_it_as_who_does() {
    let ns = netns("pw-chk-taken");
    let port = port();
    let held = ns.run(move || Process::fork(|| hold(addr("0.0.0.0", port), false, |_| {})));
    let p = port.to_string();
    let (code, v) = check(&ns, &[&p]);
    assert_eq!(code, 1, "{v:#?}");
    assert_eq!(v[0]["verdict"], "taken", "{v:#?}");
    assert_eq!(v[0]["fails"], true, "{v:#?}");
    assert_eq!(v[0]["holders"][0]["pid"], held.pid, "{v:#?}");
    assert_eq!(v[0]["holders"][0]["comm"], ns.comm.as_str(), "{v:#?}");
    // The holder, the reason and the fix are `who`'s.
    let (_, w) = who(&ns, &[&p, "--no-trial"]);
    assert_eq!(v[0]["fix"], w["fix"], "{v:#?}\n{w:#}");
    assert_eq!(v[0]["reason"], w["reason"], "{v:#?}\n{w:#}");
    assert!(
        v[0]["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("kill {}", held.pid)),
        "{v:#?}"
    );
    let (code, text) = check_text(&ns, &[&p]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&row(
            &format!("0.0.0.0:{port}/tcp"),
            "taken",
            &format!("pid {} ({})", held.pid, ns.comm)
        )),
        "{text}"
    );
    assert!(text.contains("  fix: "), "{text}");
    // The kernel agrees, and check bound nothing: the holder is alone.
    assert_eq!(
        kernel_bind(&ns, addr("0.0.0.0", port), false),
        Err(libc::EADDRINUSE)
    );
    let (_, w) = who(&ns, &[&p]);
    assert_eq!(w["sockets"].as_array().unwrap().len(), 1, "{w:#}");
}

#[test]
fn check_free_ports_exit_0_and_bind() {
    let ns = netns("pw-chk-free");
    let port = port();
    // Another port, and another address of the same port, are not in the way.
    let _other = ns.run(move || {
        Process::fork(move || {
            hold(addr("0.0.0.0", port + 1), false, |_| {})
                && hold(addr("127.0.0.1", port), false, |_| {})
        })
    });
    let p = port.to_string();
    let udp = format!("{port}/udp");
    let other_addr = format!("127.0.0.2:{port}");
    let (code, v) = check(&ns, &[&udp, &other_addr]);
    assert_eq!(code, 0, "{v:#?}");
    for c in &v {
        assert_eq!(c["verdict"], "free", "{v:#?}");
        assert_eq!(c["fails"], false, "{v:#?}");
        assert!(c["holders"].as_array().unwrap().is_empty(), "{v:#?}");
    }
    assert_eq!(kernel_bind(&ns, addr("0.0.0.0", port), true), Ok(()));
    assert_eq!(kernel_bind(&ns, addr("127.0.0.2", port), false), Ok(()));
    // The wildcard of that port is in 127.0.0.1's way: taken, by the kernel too.
    let (code, v) = check(&ns, &[&p]);
    assert_eq!(
        (code, &v[0]["verdict"]),
        (1, &Value::from("taken")),
        "{v:#?}"
    );
    assert_eq!(
        kernel_bind(&ns, addr("0.0.0.0", port), false),
        Err(libc::EADDRINUSE)
    );
    let (code, text) = check_text(&ns, &[&udp]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&row(&format!("0.0.0.0:{port}/udp"), "free", "-")),
        "{text}"
    );
    assert!(
        text.ends_with("1 binding(s): 1 free, 0 at risk, 0 would fail\n"),
        "{text}"
    );
}

#[test]
fn check_time_wait_only_names_the_wait_left() {
    let ns = netns("pw-chk-tw");
    let port = port();
    // TIME_WAIT from real connections closed by the server side first; the
    // first listener had SO_REUSEADDR, the second not.
    ns.run(move || {
        time_wait(port, true);
        time_wait(port + 1, false);
    });
    for p in [port, port + 1] {
        let (code, v) = check(&ns, &[&p.to_string()]);
        assert_eq!(code, 1, "{v:#?}");
        let c = &v[0];
        assert_eq!(c["verdict"], "time-wait", "{v:#?}");
        assert_eq!(c["holders"][0]["state"], "TIME_WAIT", "{v:#?}");
        let left = c["holders"][0]["time_left_ms"].as_u64().unwrap();
        assert!((1_000..=60_000).contains(&left), "{v:#?}");
        assert!(
            c["diagnosis"]
                .as_str()
                .unwrap()
                .contains("expire in at most"),
            "{v:#?}"
        );
        // sock_diag cannot show the leftovers' SO_REUSEADDR: it depends.
        let note = c["note"].as_str().unwrap();
        assert!(note.starts_with("it depends"), "{v:#?}");
        assert!(note.contains("SO_REUSEADDR"), "{v:#?}");
        // A plain bind fails, as check said.
        assert_eq!(
            kernel_bind(&ns, addr("0.0.0.0", p), false),
            Err(libc::EADDRINUSE),
            "port {p}"
        );
    }
    // And why it depends: with SO_REUSEADDR, the first passes, the second not.
    let reuse = |p: u16| {
        ns.run(move || {
            let s = socket(false, false);
            s.set_reuse_address(true).unwrap();
            bind(&s, addr("0.0.0.0", p))
        })
    };
    assert_eq!(reuse(port), Ok(()));
    assert_eq!(reuse(port + 1), Err(libc::EADDRINUSE));
    let (_, text) = check_text(&ns, &[&port.to_string()]);
    assert!(
        text.contains(&row(
            &format!("0.0.0.0:{port}/tcp"),
            "time-wait",
            "1 TIME_WAIT connection(s), "
        )),
        "{text}"
    );
    assert!(text.contains("s left\n"), "{text}");
    assert!(text.contains("  note: it depends"), "{text}");
}

#[test]
fn check_dual_stack_holder_and_plan() {
    let ns = netns("pw-chk-dual");
    let port = port();
    let held = ns.run(move || {
        Process::fork(move || hold(addr("::", port), false, |s| s.set_only_v6(false).unwrap()))
    });
    let any4 = format!("0.0.0.0:{port}");
    let (code, v) = check(&ns, &[&any4]);
    assert_eq!(code, 1, "{v:#?}");
    assert_eq!(v[0]["verdict"], "dual-stack", "{v:#?}");
    assert_eq!(v[0]["holders"][0]["pid"], held.pid, "{v:#?}");
    assert_eq!(v[0]["holders"][0]["cross_family"], true, "{v:#?}");
    assert!(
        v[0]["fix"].as_str().unwrap().contains("IPV6_V6ONLY"),
        "{v:#?}"
    );
    assert_eq!(
        kernel_bind(&ns, addr("0.0.0.0", port), false),
        Err(libc::EADDRINUSE)
    );

    // The plan itself: [::]:P without V6ONLY beside 0.0.0.0:P, nothing held.
    let p2 = port + 1;
    let (a, b) = (format!("0.0.0.0:{p2}"), format!("[::]:{p2}"));
    let (code, v) = check(&ns, &[&a, &b]);
    assert_eq!(code, 1, "{v:#?}");
    assert_eq!(v[0]["verdict"], "dual-stack", "{v:#?}");
    assert_eq!(v[1]["verdict"], "dual-stack", "{v:#?}");
    assert_eq!(
        v[0]["conflicts_with"][0],
        format!("#2 [::]:{p2}/tcp"),
        "{v:#?}"
    );
    assert_eq!(
        v[1]["conflicts_with"][0],
        format!("#1 0.0.0.0:{p2}/tcp"),
        "{v:#?}"
    );
    // The kernel: bound in the plan's order, the second fails.
    let second = ns.run(move || {
        let first = socket(false, false);
        bind(&first, addr("0.0.0.0", p2)).expect("the first entry binds");
        let v6 = socket(true, false);
        v6.set_only_v6(false).unwrap();
        bind(&v6, addr("::", p2))
    });
    assert_eq!(second, Err(libc::EADDRINUSE));
}

#[test]
fn check_conflict_in_plan() {
    let ns = netns("pw-chk-plan");
    let port = port();
    let p = port.to_string();
    // One entry is one socket: the same binding twice conflicts.
    let (code, v) = check(&ns, &[&p, &p]);
    assert_eq!(code, 1, "{v:#?}");
    for (c, other) in v.iter().zip(["#2", "#1"]) {
        assert_eq!(c["verdict"], "conflict-in-plan", "{v:#?}");
        assert_eq!(
            c["conflicts_with"][0],
            format!("{other} 0.0.0.0:{port}/tcp"),
            "{v:#?}"
        );
    }
    let loopback = format!("127.0.0.1:{port}");
    let (code, v) = check(&ns, &[&loopback, &p]);
    assert_eq!(code, 1, "{v:#?}");
    assert_eq!(v[1]["verdict"], "conflict-in-plan", "{v:#?}");
    let second = |a: &'static str, b: &'static str| {
        ns.run(move || {
            let first = socket(false, false);
            bind(&first, addr(a, port)).expect("the first entry binds");
            bind(&socket(false, false), addr(b, port))
        })
    };
    assert_eq!(second("0.0.0.0", "0.0.0.0"), Err(libc::EADDRINUSE));
    assert_eq!(second("127.0.0.1", "0.0.0.0"), Err(libc::EADDRINUSE));
    // Two addresses, or two protocols: no conflict, in check or the kernel.
    let (a, b, u) = (
        format!("127.0.0.1:{port}"),
        format!("127.0.0.2:{port}"),
        format!("127.0.0.1:{port}/udp"),
    );
    let (code, v) = check(&ns, &[&a, &b, &u]);
    assert_eq!(code, 0, "{v:#?}");
    assert!(v.iter().all(|c| c["verdict"] == "free"), "{v:#?}");
    assert_eq!(second("127.0.0.1", "127.0.0.2"), Ok(()));
    let (code, text) = check_text(&ns, &[&p, &p]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&row(
            &format!("0.0.0.0:{port}/tcp"),
            "conflict-in-plan",
            &format!("plan #2 0.0.0.0:{port}/tcp")
        )),
        "{text}"
    );
}

#[test]
fn check_ephemeral_risk_is_real() {
    let ns = netns("pw-chk-eph");
    let port = port();
    let service = port + 1;
    let p = port.to_string();
    // The range is this one port: an outgoing connection must take it.
    ns.run(move || sysctl("net/ipv4/ip_local_port_range", &format!("{port} {port}")));
    // Reserved: free.
    ns.run(move || sysctl("net/ipv4/ip_local_reserved_ports", &port.to_string()));
    let (code, v) = check(&ns, &[&p]);
    assert_eq!(
        (code, &v[0]["verdict"]),
        (0, &Value::from("free")),
        "{v:#?}"
    );
    // An empty write is ignored: a newline empties the list.
    ns.run(|| sysctl("net/ipv4/ip_local_reserved_ports", "\n"));
    let (code, v) = check(&ns, &[&p]);
    assert_eq!(code, 0, "a risk is no failure: {v:#?}");
    assert_eq!(v[0]["verdict"], "ephemeral-risk", "{v:#?}");
    assert_eq!(v[0]["fails"], false, "{v:#?}");
    let fix = v[0]["fix"].as_str().unwrap();
    assert!(
        fix.contains(&format!(
            "sysctl -w net.ipv4.ip_local_reserved_ports={port}"
        )),
        "{fix}"
    );
    assert!(fix.contains("/etc/sysctl.d/"), "{fix}");
    let (code, _) = check(&ns, &[&p, "--strict"]);
    assert_eq!(code, 1, "--strict fails on risks");
    // Free now, as check said...
    assert_eq!(kernel_bind(&ns, addr("0.0.0.0", port), false), Ok(()));
    // ...and the risk is real: an outgoing connection takes the port.
    let (_listener, client) = ns.run(move || {
        let listener = TcpListener::bind(("127.0.0.1", service)).unwrap();
        let client = TcpStream::connect(("127.0.0.1", service)).unwrap();
        assert_eq!(client.local_addr().unwrap().port(), port);
        (listener, client)
    });
    let (code, v) = check(&ns, &[&p]);
    assert_eq!(
        (code, &v[0]["verdict"]),
        (1, &Value::from("taken")),
        "{v:#?}"
    );
    assert_eq!(
        kernel_bind(&ns, addr("0.0.0.0", port), false),
        Err(libc::EADDRINUSE)
    );
    drop(client);
}

#[test]
fn check_address_missing() {
    let ns = netns("pw-chk-addr");
    let port = port();
    let a = format!("192.0.2.1:{port}");
    let (code, v) = check(&ns, &[&a]);
    assert_eq!(code, 1, "{v:#?}");
    assert_eq!(v[0]["verdict"], "address-missing", "{v:#?}");
    // It names the addresses the namespace has.
    assert!(
        v[0]["diagnosis"].as_str().unwrap().contains("127.0.0.1"),
        "{v:#?}"
    );
    assert_eq!(
        kernel_bind(&ns, addr("192.0.2.1", port), false),
        Err(libc::EADDRNOTAVAIL)
    );
    // ip_nonlocal_bind lets it through, in check and in the kernel.
    ns.run(|| sysctl("net/ipv4/ip_nonlocal_bind", "1"));
    let (code, v) = check(&ns, &[&a]);
    assert_eq!(
        (code, &v[0]["verdict"]),
        (0, &Value::from("free")),
        "{v:#?}"
    );
    assert_eq!(kernel_bind(&ns, addr("192.0.2.1", port), false), Ok(()));
    ns.run(|| sysctl("net/ipv4/ip_nonlocal_bind", "0"));
    // The address added: free, and it binds.
    ns.run(|| {
        let status = Command::new("ip")
            .args(["addr", "add", "192.0.2.1/32", "dev", "lo"])
            .status()
            .expect("run ip");
        assert!(status.success(), "ip addr add: {status}");
    });
    let (code, v) = check(&ns, &[&a]);
    assert_eq!(
        (code, &v[0]["verdict"]),
        (0, &Value::from("free")),
        "{v:#?}"
    );
    assert_eq!(kernel_bind(&ns, addr("192.0.2.1", port), false), Ok(()));
    // IPv6 too.
    let v6 = format!("[2001:db8::1]:{port}");
    let (code, v) = check(&ns, &[&v6]);
    assert_eq!(
        (code, &v[0]["verdict"]),
        (1, &Value::from("address-missing")),
        "{v:#?}"
    );
    assert_eq!(
        kernel_bind(&ns, addr("2001:db8::1", port), false),
        Err(libc::EADDRNOTAVAIL)
    );
}

#[test]
fn check_steered_by_dnat() {
    let ns = netns("pw-chk-dnat");
    let port = port();
    ns.run(move || dnat_to(port, "10.9.9.9:80"));
    let (p, other) = (port.to_string(), (port + 1).to_string());
    let (code, v) = check(&ns, &[&p, &other]);
    assert_eq!(code, 1, "{v:#?}");
    assert_eq!(v[0]["verdict"], "steered", "{v:#?}");
    assert_eq!(v[0]["dnat"][0]["to"], "10.9.9.9:80", "{v:#?}");
    assert!(
        v[0]["diagnosis"].as_str().unwrap().contains("10.9.9.9:80"),
        "{v:#?}"
    );
    assert_eq!(v[1]["verdict"], "free", "{v:#?}");
    // The bind itself succeeds: the traffic is what goes elsewhere.
    assert_eq!(kernel_bind(&ns, addr("0.0.0.0", port), false), Ok(()));
    let (_, text) = check_text(&ns, &[&p]);
    assert!(
        text.contains(&row(
            &format!("0.0.0.0:{port}/tcp"),
            "steered",
            "DNAT to 10.9.9.9:80"
        )),
        "{text}"
    );
    // Named once, though iptables-nft's rule is listed by nft too.
    assert_eq!(text.matches("DNAT to 10.9.9.9:80").count(), 1, "{text}");
}

#[test]
fn check_privileged_only_for_an_unprivileged_deploy() {
    let ns = netns("pw-chk-priv");
    ns.run(|| sysctl("net/ipv4/ip_unprivileged_port_start", "1024"));
    let low = 80 + port() % 900;
    let high = port();
    let (l, h) = (low.to_string(), high.to_string());
    // Root is assumed without --user.
    let (code, v) = check(&ns, &[&l]);
    assert_eq!(
        (code, &v[0]["verdict"]),
        (0, &Value::from("free")),
        "{v:#?}"
    );
    assert_eq!(kernel_bind(&ns, addr("0.0.0.0", low), false), Ok(()));
    let (code, v) = check(&ns, &[&l, &h, "--user", "1000"]);
    assert_eq!(code, 1, "{v:#?}");
    assert_eq!(v[0]["verdict"], "privileged", "{v:#?}");
    assert!(
        v[0]["fix"]
            .as_str()
            .unwrap()
            .contains("CAP_NET_BIND_SERVICE"),
        "{v:#?}"
    );
    assert_eq!(v[1]["verdict"], "free", "{v:#?}");
    // The kernel, as uid 1000 (setpriv drops every capability): EACCES
    // below the start, success above it.
    let code = format!(
        "import socket,errno\n\
         s=socket.socket()\n\
         try:\n  s.bind(('0.0.0.0',{low})); raise SystemExit('bind succeeded')\n\
         except PermissionError as e:\n  assert e.errno==errno.EACCES, e\n\
         socket.socket().bind(('0.0.0.0',{high}))\n"
    );
    ns.run(move || python(&code, Some(1000)));
}

#[test]
fn check_bad_input_is_one_line_and_exit_2() {
    let ns = netns("pw-chk-bad");
    for (args, line) in [
        (vec!["80x"], "portwatch: check: '80x': '80x' is not a port (1-65535)"),
        (vec!["80", "0"], "portwatch: check: '0': '0' is not a port (1-65535)"),
        (
            vec!["53/sctp"],
            "portwatch: check: '53/sctp': unknown protocol 'sctp' (tcp or udp)",
        ),
        (
            vec!["::1:80"],
            "portwatch: check: '::1:80': write an IPv6 address in brackets: '[::1]:PORT'",
        ),
        (
            vec!["host.example:80"],
            "portwatch: check: 'host.example:80': 'host.example' is not an IPv4 address (host names are not resolved)",
        ),
        (
            vec!["x\u{1b}[31m:80"],
            "portwatch: check: 'x?[31m:80': 'x?[31m' is not an IPv4 address (host names are not resolved)",
        ),
        (
            vec![],
            "portwatch: check: nothing to check: give BINDINGs (80, 127.0.0.1:53/udp), -f COMPOSE_FILE, --nginx or --unit UNIT",
        ),
    ] {
        let out = run_check(&ns, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr, format!("{line}\n"), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let out = run_check(&ns, &["80", "--netns", "/nonexistent/netns"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

/// Every key of the JSON objects, and the holder's untrusted comm escaped
/// in the table (JSON escapes it itself).
#[test]
fn check_json_shape_and_escaping() {
    let ns = netns("pw-chk-json");
    let port = port();
    let held = ns.run(move || {
        Process::fork(move || {
            // SAFETY: a NUL-terminated name that outlives the call.
            unsafe { libc::prctl(libc::PR_SET_NAME, c"pw\x1b[31mred".as_ptr()) };
            hold(addr("0.0.0.0", port), false, |_| {})
        })
    });
    let (p, free) = (port.to_string(), format!("[::1]:{}/udp", port + 1));
    let (code, v) = check(&ns, &[&p, &free]);
    assert_eq!(code, 1, "{v:#?}");
    let keys = [
        "binding",
        "from",
        "proto",
        "addr",
        "port",
        "verdict",
        "fails",
        "holders",
        "reason",
        "diagnosis",
        "fix",
        "note",
        "conflicts_with",
        "dnat",
        "published",
    ];
    for c in &v {
        let mut got: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
        got.sort_unstable();
        let mut want = keys.to_vec();
        want.sort_unstable();
        assert_eq!(got, want, "{c:#}");
    }
    assert_eq!(v[0]["binding"], format!("0.0.0.0:{port}/tcp"));
    assert_eq!(v[0]["from"], serde_json::json!(["argument 1"]));
    assert_eq!(v[0]["proto"], "tcp");
    assert_eq!(v[0]["port"], port);
    assert_eq!(v[0]["reason"], "listener");
    assert_eq!(v[0]["holders"][0]["pid"], held.pid);
    assert_eq!(v[0]["holders"][0]["comm"], "pw\u{1b}[31mred");
    assert_eq!(v[1]["binding"], format!("[::1]:{}/udp", port + 1));
    assert_eq!(v[1]["addr"], "::1");
    assert_eq!(v[1]["verdict"], "free");
    assert!(v[1]["fix"].is_null() && v[1]["reason"].is_null(), "{v:#?}");
    let out = run_check(&ns, &[&p, "--json"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(r"pw\u001b[31mred"),
        "JSON escapes control characters"
    );
    let (_, text) = check_text(&ns, &[&p]);
    assert!(!text.contains('\u{1b}'), "{text:?}");
    assert!(text.contains("pw?[31mred"), "{text}");
}

/// `portwatch check ARGS` started in `ns`, not waited for.
fn spawn_check(ns: &Netns, args: &[&str]) -> Child {
    let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
    ns.run(move || {
        Command::new(bin())
            .arg("check")
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run portwatch check")
    })
}

/// `--wait`: the holder exits, and check answers "free" at once.
#[test]
fn check_wait_returns_when_the_holder_exits() {
    let ns = netns("pw-chk-wait");
    let port = port();
    let mut held = ns.run(move || Process::fork(|| hold(addr("0.0.0.0", port), false, |_| {})));
    let p = port.to_string();
    let other = (port + 1).to_string();
    let mut waiting = spawn_check(&ns, &[&p, &other, "--wait=20s"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "check --wait answered while the port was held"
    );
    let t0 = Instant::now();
    held.kill();
    let out = waiting.wait_with_output().unwrap();
    let took = t0.elapsed();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    // Woken by the socket's destruction, not by the 1 s safety poll.
    assert!(took < Duration::from_millis(900), "took {took:?}");
    assert!(stderr.contains("waiting for 1 binding(s)"), "{stderr}");
    assert!(
        stdout.contains(&row(&format!("0.0.0.0:{port}/tcp"), "free", "-")),
        "{stdout}"
    );
    assert_eq!(kernel_bind(&ns, addr("0.0.0.0", port), false), Ok(()));
}

/// `--wait` answers at once when no waiting can help, and gives up at its
/// timeout when the holder stays.
#[test]
fn check_wait_gives_up_or_does_not_wait() {
    let ns = netns("pw-chk-wait2");
    let port = port();
    let _held = ns.run(move || Process::fork(|| hold(addr("0.0.0.0", port), false, |_| {})));
    let p = port.to_string();
    let t0 = Instant::now();
    let out = run_check(&ns, &[&p, "--wait=1s"]);
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(5)).contains(&took),
        "took {took:?}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("taken"));
    // The plan's own conflict and a missing address: no wait.
    let missing = format!("192.0.2.1:{}", port + 1);
    let t0 = Instant::now();
    let (code, v) = check(&ns, &[&p, &missing, "--wait=8s"]);
    assert_eq!(code, 1, "{v:#?}");
    assert_eq!(v[1]["verdict"], "address-missing", "{v:#?}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // No limit, and nothing to wait for: at once (killed after 5 s if not).
    let mut child = spawn_check(&ns, &[&other_port(port), &other_port(port), "--wait"]);
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("check --wait waited for the plan's own conflict");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("conflict-in-plan"));
}

fn other_port(port: u16) -> String {
    (port + 2).to_string()
}
