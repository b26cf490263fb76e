//! `portwatch who`: real sockets, each test in its own network namespace,
//! holders in forked children; no eBPF is loaded. The tests whose names end
//! in `_ss` compare the socket list with iproute2's `ss` (host only: the
//! busybox VM has no `ss`).

mod common;

use std::{
    collections::BTreeSet,
    net::{Ipv6Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    time::Duration,
};

use common::*;
use portwatch_core::holders::Holder;
use serde_json::Value;

fn any4(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

fn any6(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))
}

/// `portwatch who ARGS --json` run from the test's own namespace.
fn who_here(args: &[&str]) -> (i32, Value) {
    let out = Command::new(bin())
        .arg("who")
        .args(args)
        .arg("--json")
        .output()
        .expect("run portwatch who");
    parse(&out)
}

fn sockets(v: &Value) -> &Vec<Value> {
    v["sockets"].as_array().expect("sockets")
}

/// The answer for one option: "plain", "reuseaddr", "reuseport".
fn bind_of<'a>(v: &'a Value, option: &str) -> &'a Value {
    v["binds"]
        .as_array()
        .expect("binds")
        .iter()
        .find(|b| b["option"] == option)
        .unwrap_or_else(|| panic!("no {option} answer in {v:#}"))
}

/// A namespace file path for `ns` (its thread's).
fn ns_path(ns: &Netns) -> String {
    format!("/proc/{}/task/{}/ns/net", std::process::id(), ns.tid)
}

/// The walk finds every owner, whoever bound the socket: a listener shared
/// by forked workers (the master bound it, the workers inherited it) names
/// the master and both workers; one passed to another process (SCM_RIGHTS)
/// and closed by the process that bound it names the receiver. `lookup`
/// says which path answered.
#[test]
fn who_names_forked_workers_and_a_passed_socket() {
    let ns = Netns::new("pw-who-owners");
    let (shared, passed) = (port(), port());
    let master = ns.run(move || {
        Process::fork(move || {
            if !hold(any4(shared), false, |_| {}) {
                return false;
            }
            fork_workers(2)
        })
    });
    let receiver = ns.run(move || {
        let listener = socket(false, false);
        bind(&listener, any4(passed)).expect("bind");
        listener.listen(1).unwrap();
        let (tx, rx) = std::os::unix::net::UnixDatagram::pair().unwrap();
        send_fd(tx.as_raw_fd(), listener.as_raw_fd());
        // Only in flight now: the child takes it from the queue.
        drop(listener);
        let rx_fd = rx.as_raw_fd();
        Process::fork(move || recv_fd(rx_fd) >= 0)
    });
    let (code, v) = who(&ns, &[&shared.to_string()]);
    assert_eq!(code, 1, "{v:#}");
    // Every kernel the suites run on (this host's 6.18, Debian's 6.1 and
    // 6.12 in the VMs) loads the BPF iterator: `auto` must have used it.
    assert_eq!(v["lookup"], "iterator", "{v:#}");
    assert!(v.get("lookup_note").is_none(), "{v:#}");
    let s = sockets(&v);
    assert_eq!(s.len(), 1, "{v:#}");
    assert_eq!(s[0]["pid"], master.pid, "the master, not a worker: {v:#}");
    let pids: Vec<u64> = s[0]["pids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(pids.len(), 3, "{v:#}");
    for &pid in pids.iter().filter(|&&p| p != u64::from(master.pid)) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let ppid = stat.rsplit(") ").next().unwrap().split(' ').nth(1).unwrap();
        assert_eq!(ppid, master.pid.to_string(), "{pid} is not a worker");
    }
    let (code, v) = who(&ns, &[&passed.to_string()]);
    assert_eq!(code, 1, "{v:#}");
    let s = sockets(&v);
    assert_eq!(s.len(), 1, "{v:#}");
    assert_eq!(s[0]["pid"], receiver.pid, "{v:#}");
    assert_eq!(s[0]["pids"], serde_json::json!([receiver.pid]), "{v:#}");
}

#[test]
fn who_listener_is_taken_and_named() {
    let ns = Netns::new("pw-who-listen");
    let port = port();
    let held = ns.run(move || Process::fork(|| hold(any4(port), false, |_| {})));
    // --netns by pid: the holder's own namespace.
    let (code, v) = who_here(&[&port.to_string(), "--netns", &held.pid.to_string()]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["free"], false, "{v:#}");
    assert_eq!(v["netns"], ns.inode, "{v:#}");
    let s = sockets(&v);
    assert_eq!(s.len(), 1, "{v:#}");
    assert_eq!(s[0]["state"], "LISTEN", "{v:#}");
    assert_eq!(s[0]["pid"], held.pid, "{v:#}");
    assert_eq!(s[0]["comm"], ns.comm.as_str(), "{v:#}");
    assert_eq!(s[0]["uid"], 0, "{v:#}");
    assert_eq!(v["reason"], "listener", "{v:#}");
    assert!(
        v["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("kill {}", held.pid)),
        "{v:#}"
    );
    // The model answers, nothing is bound; SO_REUSEPORT's answer hung on
    // the holder's option, read from its socket.
    for option in ["plain", "reuseaddr", "reuseport"] {
        let b = bind_of(&v, option);
        assert_eq!(b["result"], "fails", "{v:#}");
        assert_eq!(b["errno"], "EADDRINUSE", "{v:#}");
        assert_eq!(b["checked"], "rules", "{v:#}");
    }
    assert_eq!(bind_of(&v, "reuseport")["options_from"], "socket", "{v:#}");
    assert_eq!(s[0]["reuseport"], false, "{v:#}");
    assert_eq!(s[0]["options_from"], "socket", "{v:#}");
    // --trial asks the kernel instead, with the same answers; the trial
    // binds left nothing behind.
    let (code, tried) = who(&ns, &[&port.to_string(), "--trial"]);
    assert_eq!(code, 1, "{tried:#}");
    for option in ["plain", "reuseaddr", "reuseport"] {
        let b = bind_of(&tried, option);
        assert_eq!(b["result"], "fails", "{tried:#}");
        assert_eq!(b["checked"], "trial_bind", "{tried:#}");
    }
    let (code, again) = who(&ns, &[&port.to_string()]);
    assert_eq!(code, 1);
    assert_eq!(sockets(&again).len(), 1, "{again:#}");

    // The human format says the same, with the holder's pid.
    let args = [port.to_string()];
    let out = ns.run(move || Command::new(bin()).arg("who").args(&args).output().unwrap());
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("LISTEN") && text.contains(&held.pid.to_string()),
        "{text}"
    );
    assert!(text.contains("reason:    listener"), "{text}");
}

#[test]
fn who_free_port_exits_0() {
    let ns = Netns::new("pw-who-free");
    let port = port();
    // Another port and another address on the same port do not count.
    let _other = ns.run(move || {
        Process::fork(move || hold(any4(port + 1), false, |_| {}) && hold(v4(port), false, |_| {}))
    });
    let (code, v) = who_here(&[
        &port.to_string(),
        "--addr",
        "127.0.0.2",
        "--netns",
        &ns_path(&ns),
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["free"], true, "{v:#}");
    // The socket on 127.0.0.1 is listed, not in the way.
    assert_eq!(sockets(&v).len(), 1, "{v:#}");
    assert!(v.get("reason").is_none(), "{v:#}");
    for option in ["plain", "reuseaddr", "reuseport"] {
        let b = bind_of(&v, option);
        assert_eq!(
            (&b["result"], &b["checked"]),
            (&Value::from("ok"), &Value::from("rules")),
            "{v:#}"
        );
    }
    let (code, v) = who(&ns, &[&(port + 2).to_string()]);
    assert_eq!(code, 0, "{v:#}");
    assert!(sockets(&v).is_empty(), "{v:#}");
}

#[test]
fn who_time_wait_leftovers() {
    let ns = Netns::new("pw-who-tw");
    let port = port();
    ns.run(move || {
        time_wait(port, true);
        time_wait(port + 1, false);
    });
    let (code, v) = who(&ns, &[&port.to_string()]);
    assert_eq!(code, 1, "{v:#}");
    let s = sockets(&v);
    assert_eq!(s.len(), 1, "{v:#}");
    assert_eq!(s[0]["state"], "TIME_WAIT", "{v:#}");
    assert!(s[0]["pid"].is_null(), "{v:#}");
    let left = s[0]["time_left_ms"].as_u64().unwrap();
    assert!((1_000..=60_000).contains(&left), "{v:#}");
    assert!(
        s[0]["remote"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{v:#}"
    );
    assert_eq!(v["reason"], "time_wait", "{v:#}");
    assert!(v["fix"].as_str().unwrap().contains("SO_REUSEADDR"), "{v:#}");
    // Leftovers have no file descriptor: their SO_REUSEADDR cannot be
    // read, and the model says what the answer hangs on.
    let reuse = bind_of(&v, "reuseaddr");
    assert_eq!(reuse["result"], "unknown", "{v:#}");
    assert_eq!(reuse["checked"], "rules", "{v:#}");
    assert!(s[0]["options_from"].is_null(), "{v:#}");
    assert!(
        reuse["note"]
            .as_str()
            .unwrap()
            .contains("only if the holder set SO_REUSEADDR too"),
        "{v:#}"
    );
    // `--no-trial`, the old way to ask for that, is the default now.
    let (code, same) = who(&ns, &[&port.to_string(), "--no-trial"]);
    assert_eq!(code, 1, "{same:#}");
    assert_eq!(bind_of(&same, "reuseaddr")["result"], "unknown", "{same:#}");

    // A trial bind settles it: the listener had SO_REUSEADDR.
    let (code, v) = who(&ns, &[&port.to_string(), "--trial"]);
    assert_eq!(code, 1, "{v:#}");
    let reuse = bind_of(&v, "reuseaddr");
    assert_eq!(reuse["result"], "ok", "{v:#}");
    assert_eq!(reuse["checked"], "trial_bind", "{v:#}");

    // Leftovers of a listener without SO_REUSEADDR block SO_REUSEADDR too:
    // the kernel compares both sockets' options.
    let (code, v) = who(&ns, &[&(port + 1).to_string(), "--trial"]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(bind_of(&v, "reuseaddr")["result"], "fails", "{v:#}");
    let (_, v) = who(&ns, &[&(port + 1).to_string()]);
    assert_eq!(bind_of(&v, "reuseaddr")["result"], "unknown", "{v:#}");
}

#[test]
fn who_udp() {
    let ns = Netns::new("pw-who-udp");
    let port = port();
    let held = ns.run(move || Process::fork(|| hold(v4(port), true, |_| {})));
    let (code, v) = who(&ns, &[&format!("{port}/udp"), "--addr", "127.0.0.1"]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["proto"], "udp", "{v:#}");
    let s = sockets(&v);
    assert_eq!(s.len(), 1, "{v:#}");
    assert_eq!(s[0]["state"], "UDP", "{v:#}");
    assert_eq!(s[0]["pid"], held.pid, "{v:#}");
    assert_eq!(v["reason"], "listener", "{v:#}");
    assert_eq!(bind_of(&v, "plain")["checked"], "rules", "{v:#}");
    // The holder's options, read from its socket, settle what no trial
    // could (a UDP socket sharing the port would take its datagrams).
    assert_eq!(s[0]["reuseaddr"], false, "{v:#}");
    for option in ["reuseaddr", "reuseport"] {
        let b = bind_of(&v, option);
        assert_eq!(b["result"], "fails", "{v:#}");
        assert_eq!(b["checked"], "rules", "{v:#}");
        assert_eq!(b["options_from"], "socket", "{v:#}");
    }
    // Even with --trial, no trial that could share the port.
    let (_, tried) = who(
        &ns,
        &[&format!("{port}/udp"), "--addr", "127.0.0.1", "--trial"],
    );
    assert_eq!(
        bind_of(&tried, "plain")["checked"],
        "trial_bind",
        "{tried:#}"
    );
    assert_eq!(
        bind_of(&tried, "reuseaddr")["checked"],
        "rules",
        "{tried:#}"
    );
    assert_eq!(bind_of(&tried, "reuseaddr")["result"], "fails", "{tried:#}");
    // The TCP port of the same number is free.
    let (code, v) = who(&ns, &[&format!("{port}/tcp")]);
    assert_eq!(code, 0, "{v:#}");
}

#[test]
fn who_dual_stack() {
    let ns = Netns::new("pw-who-dual");
    let port = port();
    let held = ns
        .run(move || Process::fork(|| hold(any6(port), false, |s| s.set_only_v6(false).unwrap())));
    let (code, v) = who(&ns, &[&port.to_string(), "--addr", "0.0.0.0"]);
    assert_eq!(code, 1, "{v:#}");
    let s = sockets(&v);
    assert_eq!(s.len(), 1, "{v:#}");
    assert_eq!(s[0]["addr"], "::", "{v:#}");
    assert_eq!(s[0]["pid"], held.pid, "{v:#}");
    assert_eq!(s[0]["cross_family"], true, "{v:#}");
    assert_eq!(v["reason"], "dual_stack", "{v:#}");
    assert!(v["fix"].as_str().unwrap().contains("IPV6_V6ONLY"), "{v:#}");
    // With V6ONLY the families are separate.
    let port2 = port + 1;
    let _v6only = ns.run(move || {
        Process::fork(move || hold(any6(port2), false, |s| s.set_only_v6(true).unwrap()))
    });
    let (code, v) = who(&ns, &[&port2.to_string()]);
    assert_eq!(code, 0, "{v:#}");
    let (code, v) = who(&ns, &[&port2.to_string(), "--addr", "::"]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["reason"], "listener", "{v:#}");
}

#[test]
fn who_idle_bound_tcp_socket() {
    let ns = Netns::new("pw-who-bound");
    let port = port();
    let held = ns.run(move || Process::fork(move || hold_bound(v4(port))));
    let (code, v) = who(&ns, &[&port.to_string()]);
    assert_eq!(code, 1, "{v:#}");
    let s = sockets(&v);
    assert_eq!(
        s.len(),
        1,
        "this kernel should dump bound-inactive sockets: {v:#}"
    );
    assert_eq!(s[0]["state"], "BOUND", "{v:#}");
    assert_eq!(s[0]["pid"], held.pid, "{v:#}");
    assert_eq!(v["reason"], "bound_not_listening", "{v:#}");
    // The holder has no SO_REUSEADDR: read from its socket.
    assert_eq!(bind_of(&v, "reuseaddr")["result"], "fails", "{v:#}");
    assert_eq!(bind_of(&v, "reuseaddr")["options_from"], "socket", "{v:#}");
    assert!(v["unseen"].is_null(), "this kernel lists them: {v:#}");
}

/// SO_REUSEPORT shares within one uid: the answer is for the holder's, and
/// the holder's SO_REUSEPORT is read from its socket (a trial, with
/// --trial, is made as that uid).
#[test]
fn who_reuseport_under_the_holders_uid() {
    let ns = Netns::new("pw-who-rport");
    let port = port();
    let held = ns.run(move || {
        Process::fork(move || {
            // SAFETY: plain system calls in the forked child.
            let dropped = unsafe { libc::setresuid(65534, 65534, 65534) } == 0;
            dropped && hold(any4(port), false, |s| s.set_reuse_port(true).unwrap())
        })
    });
    let (code, v) = who(&ns, &[&port.to_string()]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(sockets(&v)[0]["uid"], 65534, "{v:#}");
    assert_eq!(sockets(&v)[0]["pid"], held.pid, "{v:#}");
    let b = bind_of(&v, "reuseport");
    assert_eq!(b["result"], "ok", "{v:#}");
    assert_eq!(b["uid"], 65534, "{v:#}");
    assert_eq!(b["checked"], "rules", "{v:#}");
    assert_eq!(b["options_from"], "socket", "{v:#}");
    assert_eq!(bind_of(&v, "reuseaddr")["result"], "fails", "{v:#}");
    let (_, tried) = who(&ns, &[&port.to_string(), "--trial"]);
    let b = bind_of(&tried, "reuseport");
    assert_eq!(b["result"], "ok", "{tried:#}");
    assert_eq!(b["uid"], 65534, "{tried:#}");
    assert_eq!(b["checked"], "trial_bind", "{tried:#}");
}

/// Holder objects have exactly the keys `watch --json` writes: those of
/// `holders::Holder`.
#[test]
fn who_json_holder_keys_are_watchs() {
    let ns = Netns::new("pw-who-keys");
    let port = port();
    let _held = ns.run(move || Process::fork(|| hold(any4(port), false, |_| {})));
    ns.run(move || time_wait(port + 1, true));
    for p in [port, port + 1] {
        let (_, v) = who(&ns, &[&p.to_string()]);
        let s = &sockets(&v)[0];
        let holder: Holder = serde_json::from_value(s.clone())
            .unwrap_or_else(|e| panic!("not a holders::Holder ({e}): {s:#}"));
        let keys =
            |v: &Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
        assert_eq!(
            keys(s),
            keys(&serde_json::to_value(&holder).unwrap()),
            "{s:#}"
        );
    }
}

#[test]
fn who_bad_input_exit_codes() {
    let run = |args: &[&str]| {
        Command::new(bin())
            .arg("who")
            .args(args)
            .output()
            .expect("run portwatch who")
    };
    for (args, needle) in [
        (&["0"][..], "'0' is not a port"),
        (&["65536"], "'65536' is not a port"),
        (&["80/sctp"], "unknown protocol 'sctp'"),
        (
            &["80", "--addr", "300.1.1.1"],
            "not an IPv4 or IPv6 address",
        ),
        (&["80", "--netns", "/run/netns/pw-no-such"], "No such file"),
        (&["80", "--netns", "4294967"], "no process with pid"),
        (
            &["80", "--netns", "/proc/version"],
            "not a network namespace",
        ),
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("portwatch: "), "{stderr}");
        assert!(stderr.contains(needle), "'{needle}' not in {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let help = run(&["--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "EXAMPLES:",
        "EXIT STATUS:",
        "--trial",
        "trial bind",
        "--addr ::",
    ] {
        assert!(text.contains(needle), "'{needle}' not in --help: {text}");
    }
}

/// `ss -Htan` / `ss -Huan 'sport = :PORT'` in `ns`: (state, local, peer).
fn ss(ns: &Netns, udp: bool, port: u16) -> BTreeSet<(String, String, String)> {
    let flags = if udp { "-Huan" } else { "-Htan" };
    let out = ns.run(move || {
        Command::new("ss")
            .args([flags, &format!("sport = :{port}")])
            .output()
            .expect("ss (iproute2) is needed to compare with")
    });
    assert!(out.status.success(), "ss failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert!(f.len() >= 5, "ss line: {line}");
            // ss writes an IPv6 wildcard that takes IPv4 too as `*`.
            let local = match f[3].strip_prefix("*:") {
                Some(p) => format!("[::]:{p}"),
                None => f[3].to_owned(),
            };
            let peer = if f[4].ends_with(":*") { "-" } else { f[4] };
            (f[0].to_owned(), local, peer.to_owned())
        })
        .collect()
}

/// `who`'s list in `ss`'s words.
fn as_ss(v: &Value) -> BTreeSet<(String, String, String)> {
    sockets(v)
        .iter()
        .map(|s| {
            let remote = s["remote"].as_str().map(str::to_owned);
            let state = match (s["state"].as_str().unwrap(), &remote) {
                ("UDP", Some(_)) => "ESTAB",
                ("UDP", None) => "UNCONN",
                ("ESTABLISHED", _) => "ESTAB",
                ("TIME_WAIT", _) => "TIME-WAIT",
                ("SYN_RECV", _) => "SYN-RECV",
                ("SYN_SENT", _) => "SYN-SENT",
                ("FIN_WAIT1", _) => "FIN-WAIT-1",
                ("FIN_WAIT2", _) => "FIN-WAIT-2",
                ("CLOSE_WAIT", _) => "CLOSE-WAIT",
                ("LAST_ACK", _) => "LAST-ACK",
                (other, _) => other,
            };
            let ip: std::net::IpAddr = s["addr"].as_str().unwrap().parse().unwrap();
            let local = SocketAddr::new(ip, s["port"].as_u64().unwrap() as u16).to_string();
            (
                state.to_owned(),
                local,
                remote.unwrap_or_else(|| "-".into()),
            )
        })
        .collect()
}

#[test]
fn who_tcp_list_agrees_with_ss() {
    let ns = Netns::new("pw-who-ss-tcp");
    let port = port();
    let _held = ns.run(move || {
        Process::fork(move || {
            hold(any4(port), false, |s| s.set_reuse_address(true).unwrap())
                && hold(any6(port), false, |s| s.set_only_v6(true).unwrap())
        })
    });
    let _open = ns.run(move || {
        time_wait(port + 1, true);
        // Connections to the held listener wait in its accept queue: ESTAB.
        let a = TcpStream::connect(v4(port)).unwrap();
        let b = TcpStream::connect(SocketAddr::from((Ipv6Addr::LOCALHOST, port))).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        (a, b)
    });
    for p in [port, port + 1, port + 2] {
        let (_, v) = who(&ns, &[&p.to_string()]);
        let theirs = ss(&ns, false, p);
        assert_eq!(as_ss(&v), theirs, "port {p}: {v:#}");
    }
    assert_eq!(
        ss(&ns, false, port).len(),
        4,
        "two listeners, two connections"
    );
}

#[test]
fn who_udp_list_agrees_with_ss() {
    let ns = Netns::new("pw-who-ss-udp");
    let port = port();
    let _held = ns.run(move || {
        Process::fork(move || {
            hold(v4(port), true, |s| s.set_reuse_address(true).unwrap())
                && hold(any6(port), true, |s| {
                    s.set_only_v6(false).unwrap();
                    s.set_reuse_address(true).unwrap();
                })
        })
    });
    let _connected = ns.run(move || {
        let s = socket(false, true);
        s.set_reuse_address(true).unwrap();
        bind(&s, v4(port)).unwrap();
        s.connect(&v4(9).into()).unwrap();
        s
    });
    let (code, v) = who(&ns, &[&format!("{port}/udp")]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(as_ss(&v), ss(&ns, true, port), "{v:#}");
    assert_eq!(sockets(&v).len(), 3, "{v:#}");
}

/// Two veth pairs in the namespace: pwa0 and pwb0, their peers named by
/// the kernel (busybox's `ip` in the VM cannot name them).
fn two_veth_pairs(ns: &Netns) {
    ns.run(|| {
        ip("link add pwa0 type veth");
        ip("link add pwb0 type veth");
    });
}

/// `who PORT ARGS`: the model's prediction, no trial bind (a trial is the
/// kernel's own answer, so it would check nothing).
fn predicted(ns: &Netns, port: u16, args: &[&str]) -> (i32, Value) {
    let port = port.to_string();
    let mut all = vec![port.as_str()];
    all.extend_from_slice(args);
    let (code, v) = who(ns, &all);
    assert_eq!(bind_of(&v, "plain")["checked"], "rules", "{v:#}");
    (code, v)
}

/// The listed socket bound to `device`.
fn socket_on<'a>(v: &'a Value, device: &str) -> &'a Value {
    sockets(v)
        .iter()
        .find(|s| s["device"]["name"] == device)
        .unwrap_or_else(|| panic!("no socket on {device} in {v:#}"))
}

/// SO_BINDTODEVICE, for real: listeners bound to two devices share a port,
/// a socket bound to no device conflicts with one bound to any, and one
/// device conflicts with itself. Each prediction (the model: no trial
/// bind) is checked against a real bind.
#[test]
fn who_sockets_bound_to_other_devices_are_not_in_the_way() {
    let ns = Netns::new("pw-who-dev");
    let port = port();
    two_veth_pairs(&ns);
    let _a = ns.run(move || Process::fork(move || hold_on(b"pwa0", any4(port), false)));

    // Another device: free, and the listener on pwa0 is listed apart.
    let (code, v) = predicted(&ns, port, &["--device", "pwb0"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(bind_of(&v, "plain")["result"], "ok", "{v:#}");
    assert_eq!(v["device"]["name"], "pwb0", "{v:#}");
    let a = socket_on(&v, "pwa0");
    assert_eq!(a["apart"], "other_device", "{v:#}");
    assert_eq!(a["device"]["ifindex"], ns.run(|| ifindex("pwa0")), "{v:#}");
    // The trial binds on pwb0 too: the kernel's answer through portwatch.
    // Not SO_REUSEPORT's: beside pwa0's listener, a successful one would
    // leave the kernel's fast-reuse state of the port changed.
    let (code, v) = who(&ns, &[&port.to_string(), "--device", "pwb0", "--trial"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(bind_of(&v, "plain")["checked"], "trial_bind", "{v:#}");
    assert_eq!(bind_of(&v, "reuseport")["checked"], "rules", "{v:#}");
    assert_eq!(bind_of(&v, "reuseport")["result"], "ok", "{v:#}");
    // The kernel still refuses a SO_REUSEPORT bind on no device, as it
    // would have had no trial been made.
    assert_eq!(
        ns.run(move || {
            let s = socket(false, false);
            s.set_reuse_port(true).unwrap();
            bind(&s, any4(port)).err()
        }),
        Some(libc::EADDRINUSE)
    );
    // The kernel agrees: a listener on pwb0 binds.
    let _b = ns.run(move || {
        let b = bind_on(Some("pwb0"), any4(port), false).expect("bind on pwb0");
        b.listen(16).unwrap();
        b
    });

    // No device: in the way of both, and the diagnosis says why.
    let (code, v) = predicted(&ns, port, &[]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(bind_of(&v, "plain")["result"], "fails", "{v:#}");
    assert_eq!(v["reason"], "listener", "{v:#}");
    assert!(sockets(&v).iter().all(|s| s["apart"].is_null()), "{v:#}");
    let diagnosis = v["diagnosis"].as_str().unwrap();
    assert!(
        diagnosis.contains("bound to device pwa0") || diagnosis.contains("bound to device pwb0"),
        "{v:#}"
    );
    assert!(
        diagnosis.contains("this socket is bound to no device"),
        "{v:#}"
    );
    assert_eq!(
        ns.run(move || bind_on(None, any4(port), false).err()),
        Some(libc::EADDRINUSE)
    );

    // The same device: in the way; the other device's listener is not.
    let (code, v) = predicted(&ns, port, &["--device", "pwa0"]);
    assert_eq!(code, 1, "{v:#}");
    assert!(socket_on(&v, "pwa0")["apart"].is_null(), "{v:#}");
    assert_eq!(socket_on(&v, "pwb0")["apart"], "other_device", "{v:#}");
    assert!(
        v["diagnosis"]
            .as_str()
            .unwrap()
            .contains("(bound to device pwa0) is taken"),
        "{v:#}"
    );
    assert_eq!(
        ns.run(move || bind_on(Some("pwa0"), any4(port), false).err()),
        Some(libc::EADDRINUSE)
    );

    // The other way round: a holder bound to no device is in the way of a
    // bind on any device.
    let unbound = port + 1;
    let _c = ns.run(move || Process::fork(move || hold(any4(unbound), false, |_| {})));
    let (code, v) = predicted(&ns, unbound, &["--device", "pwa0"]);
    assert_eq!(code, 1, "{v:#}");
    assert!(
        v["diagnosis"]
            .as_str()
            .unwrap()
            .contains("the holder is bound to no device"),
        "{v:#}"
    );
    assert_eq!(
        ns.run(move || bind_on(Some("pwa0"), any4(unbound), false).err()),
        Some(libc::EADDRINUSE)
    );

    // A device the namespace lacks is a usage error.
    let (code, _) = ns.run(move || {
        let out = Command::new(bin())
            .args(["who", &port.to_string(), "--device", "nope0"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    });
    assert_eq!(code, Some(2));
}

/// VRFs, for real: TCP keeps one bind bucket per VRF (unless
/// net.ipv4.tcp_l3mdev_accept=1), so a listener in VRF red leaves the port
/// free outside it and in VRF blue; UDP has no such scope. Each prediction
/// (the model, no trial) is checked against a real bind.
#[test]
#[ignore = "needs the vrf module: runs in the VM suites (cargo xtask vm-test)"]
fn who_vrfs_keep_tcp_ports_apart() {
    let ns = Netns::new("pw-who-vrf");
    let (tcp, udp, global) = {
        let p = port();
        (p, p + 1, p + 2)
    };
    ns.run(|| {
        ip("link add red type vrf table 10");
        ip("link add blue type vrf table 20");
        ip("link set red up");
        ip("link set blue up");
        let accept = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_l3mdev_accept").unwrap();
        assert_eq!(accept.trim(), "0", "a new namespace starts with 0");
    });
    let _t = ns.run(move || Process::fork(move || hold_on(b"red", any4(tcp), false)));
    let _u = ns.run(move || Process::fork(move || hold_on(b"red", any4(udp), true)));

    // TCP, outside any VRF: free; the listener in red is another VRF's.
    let (code, v) = predicted(&ns, tcp, &[]);
    assert_eq!(code, 0, "{v:#}");
    let red = socket_on(&v, "red");
    assert_eq!(red["apart"], "other_vrf", "{v:#}");
    assert_eq!(red["device"]["vrf"], "red", "{v:#}");
    assert!(ns.run(move || bind_on(None, any4(tcp), false).is_ok()));
    // In VRF blue: free.
    let (code, v) = predicted(&ns, tcp, &["--device", "blue"]);
    assert_eq!(code, 0, "{v:#}");
    assert!(ns.run(move || bind_on(Some("blue"), any4(tcp), false).is_ok()));
    // In VRF red: taken.
    let (code, v) = predicted(&ns, tcp, &["--device", "red"]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(
        ns.run(move || bind_on(Some("red"), any4(tcp), false).err()),
        Some(libc::EADDRINUSE)
    );

    // UDP: no VRF scope, a socket bound to no device meets the one in red.
    let udp_arg = format!("{udp}/udp");
    let (code, v) = who(&ns, &[&udp_arg]);
    assert_eq!(code, 1, "{v:#}");
    assert!(socket_on(&v, "red")["apart"].is_null(), "{v:#}");
    assert_eq!(
        ns.run(move || bind_on(None, any4(udp), true).err()),
        Some(libc::EADDRINUSE)
    );

    // tcp_l3mdev_accept=1 (set before the holder binds: its bucket is
    // chosen then): one scope for all, the plain device rule.
    ns.run(|| std::fs::write("/proc/sys/net/ipv4/tcp_l3mdev_accept", "1").unwrap());
    let _g = ns.run(move || Process::fork(move || hold_on(b"red", any4(global), false)));
    let (code, v) = predicted(&ns, global, &[]);
    assert_eq!(code, 1, "{v:#}");
    assert!(
        v["diagnosis"]
            .as_str()
            .unwrap()
            .contains("tcp_l3mdev_accept=1"),
        "{v:#}"
    );
    assert_eq!(
        ns.run(move || bind_on(None, any4(global), false).err()),
        Some(libc::EADDRINUSE)
    );
}
