//! `portwatch wait PORT`: real holders in private network namespaces; wait
//! returns promptly when the holder lets go (woken by the kernel's socket
//! destroy notification), passes TIME_WAIT with --reuseaddr, and times out
//! naming the holder otherwise.

mod common;

use std::{
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// Starts `portwatch wait ARGS` in the caller's network namespace (call it
/// inside `Netns::run`).
fn spawn_wait(args: &[String]) -> Child {
    Command::new(bin())
        .arg("wait")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start portwatch wait")
}

fn wait_in(ns: &Netns, args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    ns.run(move || spawn_wait(&args).wait_with_output().unwrap())
}

/// The holder exits: wait notices within tens of milliseconds.
#[test]
fn wait_returns_when_the_holder_exits() {
    let ns = Netns::new("pw-wait");
    let port = port();
    let mut held = ns.run(move || Process::fork(|| hold(v4(port), false, |_| {})));
    let args = vec![port.to_string(), "--timeout".into(), "30s".into()];
    let mut waiting = ns.run(move || spawn_wait(&args));
    // Once it says it waits (it has looked: a slow guest takes a while to
    // start it), it still waits while the holder lives.
    let mut stderr = std::io::BufReader::new(waiting.stderr.take().unwrap());
    let mut err = String::new();
    while !err.contains("waiting for") {
        let n = std::io::BufRead::read_line(&mut stderr, &mut err).unwrap();
        assert!(n > 0, "wait ended before waiting: {err}");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "wait returned while the port was held: {err}"
    );
    let t0 = Instant::now();
    held.kill();
    let status = waiting.wait().unwrap();
    let took = t0.elapsed();
    std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    eprintln!("wait noticed the port freeing after {took:?}");
    // Target 50 ms; the bound leaves room for a loaded CI machine.
    assert!(took < Duration::from_millis(300), "took {took:?}: {err}");
    assert!(err.contains("is free"), "{err}");
}

/// Only TIME_WAIT left: their SO_REUSEADDR cannot be read (no file
/// descriptor), so `--reuseaddr` waits and says why; with `--trial` it
/// passes at once (the listener had SO_REUSEADDR, which its TIME_WAIT
/// keeps). A plain bind times out, and the holders and diagnosis are
/// printed.
#[test]
fn wait_reuseaddr_passes_time_wait_and_plain_times_out() {
    let ns = Netns::new("pw-wait-tw");
    let port = port();
    ns.run(move || time_wait(port, true));
    let p = port.to_string();
    let r = wait_in(&ns, &[&p, "--reuseaddr", "--timeout", "300ms"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("unknown without a trial bind"), "{err}");
    assert!(err.contains("--trial"), "{err}");
    let t0 = Instant::now();
    let r = wait_in(&ns, &[&p, "--reuseaddr", "--trial", "--timeout", "10s"]);
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
    let t0 = Instant::now();
    let r = wait_in(&ns, &[&p, "--timeout", "300ms", "--json"]);
    let took = t0.elapsed();
    assert_eq!(
        r.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["reason"], "time_wait", "{v:#}");
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("still taken after 300ms"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}

/// A UDP socket with SO_REUSEADDR: `--reuseaddr` passes at once, from
/// the holder's option read from its socket, with no trial bind (none
/// could be made: a UDP socket sharing the port takes its datagrams);
/// without SO_REUSEADDR on the holder it waits. UDP, not a bound TCP
/// socket: kernels before 6.10 do not list those.
#[test]
fn wait_reuseaddr_reads_the_holders_option() {
    let ns = Netns::new("pw-wait-opt");
    let port = port();
    let any = std::net::SocketAddr::from(([0, 0, 0, 0], port));
    let _with = ns.run(move || {
        Process::fork(move || hold(any, true, |s| s.set_reuse_address(true).unwrap()))
    });
    let udp = format!("{port}/udp");
    let t0 = Instant::now();
    let r = wait_in(&ns, &[&udp, "--reuseaddr", "--timeout", "10s"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(0), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{err}");
    assert!(!err.contains("waiting for"), "{err}");
    // The kernel agrees.
    assert!(ns.run(move || {
        let s = socket(false, true);
        s.set_reuse_address(true).unwrap();
        bind(&s, any).is_ok()
    }));

    let other = std::net::SocketAddr::from(([0, 0, 0, 0], port + 1));
    let _without = ns.run(move || Process::fork(move || hold(other, true, |_| {})));
    let udp = format!("{}/udp", port + 1);
    let r = wait_in(&ns, &[&udp, "--reuseaddr", "--timeout", "300ms"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(!err.contains("unknown"), "{err}");
}

/// A holder that never lets go: exit 1 after the timeout, naming it.
#[test]
fn wait_times_out_naming_the_holder() {
    let ns = Netns::new("pw-wait-to");
    let port = port();
    let held = ns.run(move || Process::fork(|| hold(v4(port), false, |_| {})));
    let r = wait_in(&ns, &[&port.to_string(), "--timeout", "200ms"]);
    assert_eq!(r.status.code(), Some(1));
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains(&held.pid.to_string()), "{out}");
    assert!(out.contains(&format!("kill {}", held.pid)), "{out}");
}

#[test]
fn wait_bad_input() {
    for (args, why) in [
        (&["0"][..], "port 0"),
        (&["70000"][..], "port > 65535"),
        (&["80/sctp"][..], "protocol"),
        (&["80", "--timeout", "soon"][..], "duration"),
        (&["80", "--addr", "localhost"][..], "address"),
        (&["80", "--netns", "/nonexistent/netns"][..], "netns"),
    ] {
        let r = Command::new(bin()).arg("wait").args(args).output().unwrap();
        assert_eq!(r.status.code(), Some(2), "{why}: {r:?}");
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(err.lines().count(), 1, "{why}: one line: {err}");
        assert!(err.starts_with("portwatch: "), "{why}: {err}");
    }
}

/// `--device`: a listener bound to another device (SO_BINDTODEVICE) is not
/// waited for; one on the same device is, and a UDP socket bound to
/// another device does not count for the rules' SO_REUSEADDR answer
/// either.
#[test]
fn wait_device_waits_only_for_its_own_device() {
    let ns = Netns::new("pw-wait-dev");
    let port = port();
    ns.run(|| {
        ip("link add pwa0 type veth");
        ip("link add pwb0 type veth");
    });
    let any = std::net::SocketAddr::from(([0, 0, 0, 0], port));
    let _tcp = ns.run(move || Process::fork(move || hold_on(b"pwa0", any, false)));
    let _udp = ns.run(move || Process::fork(move || hold_on(b"pwa0", any, true)));
    let p = port.to_string();
    let out = wait_in(&ns, &[&p, "--device", "pwb0", "--timeout", "5s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("is free"), "{err}");
    let udp = format!("{port}/udp");
    let out = wait_in(
        &ns,
        &[&udp, "--device", "pwb0", "--reuseaddr", "--timeout", "5s"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = wait_in(&ns, &[&p, "--device", "pwa0", "--timeout", "300ms"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("still taken"), "{err}");
    let out = wait_in(
        &ns,
        &[
            &udp,
            "--device",
            "pwa0",
            "--reuseaddr",
            "--timeout",
            "300ms",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = wait_in(&ns, &[&p, "--device", "nope0", "--timeout", "1s"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
