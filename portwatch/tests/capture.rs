//! Real failing bind()/listen() calls, captured by the real programs in the
//! running kernel. Each test works in network namespaces of its own and asks
//! portwatch for that namespace only, so the host's traffic cannot interfere.

mod common;

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use common::*;
use serde_json::Value;

fn opts(ev: &Value) -> [bool; 6] {
    let o = &ev["opts"];
    [
        "reuseaddr",
        "reuseport",
        "v6only",
        "freebind",
        "transparent",
        "bind_address_no_port",
    ]
    .map(|k| {
        o[k].as_bool()
            .unwrap_or_else(|| panic!("opts.{k} missing in {ev}"))
    })
}

#[test]
fn tcp_v4_bind_eaddrinuse_has_every_field() {
    let ns = Netns::new("pw-tcp4");
    let port = port();
    let tracer = Tracer::start(&["--netns", &ns.arg()]);
    let fd = ns.run(move || {
        let (holder, loser) = conflict(v4(port), false);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&loser);
        drop((holder, loser));
        fd
    });
    let ev = tracer.event();
    assert_ours(&ev, &ns);
    assert_eq!(ev["syscall"], "bind", "{ev}");
    assert_eq!(ev["errno"], "EADDRINUSE", "{ev}");
    assert_eq!(ev["ret"], -98, "{ev}");
    assert_eq!(ev["proto"], "tcp", "{ev}");
    assert_eq!(ev["family"], "ipv4", "{ev}");
    assert_eq!(ev["addr"], "127.0.0.1", "{ev}");
    assert_eq!(ev["port"], port, "{ev}");
    // fexit sees the socket, not the descriptor.
    if ev["source"] == "fexit" {
        assert!(ev["fd"].is_null(), "{ev}");
    } else {
        assert_eq!(ev["fd"], fd, "{ev}");
    }
    assert_eq!(ev["folded"], 0, "{ev}");
    assert_eq!(opts(&ev), [false; 6], "{ev}");
    assert!(ev["ts"].as_str().unwrap().ends_with('Z'), "{ev}");
    assert!(ev["cgroup_id"].as_u64().unwrap() > 0, "{ev}");
    let backend = tracer.backend()["backend"].as_str().unwrap().to_owned();
    assert_eq!(ev["source"], backend.as_str(), "{ev}");
    let (status, _, _) = tracer.stop();
    assert!(status.success(), "{status}");
}

/// The tracepoint backend's two ways of learning bind()'s arguments (saved
/// registers at sys_exit, or sys_enter paired with sys_exit) see the same.
#[test]
fn tracepoint_argument_sources_agree() {
    let ns = Netns::new("pw-args");
    let port = port();
    let regs = Tracer::start(&[
        "--netns",
        &ns.arg(),
        "--backend",
        "tracepoint",
        "--tracepoint-args",
        "regs",
    ]);
    let entry = Tracer::start(&[
        "--netns",
        &ns.arg(),
        "--backend",
        "tracepoint",
        "--tracepoint-args",
        "entry",
    ]);
    assert!(
        regs.backend()["why"]
            .as_str()
            .unwrap()
            .contains("saved registers"),
        "{}",
        regs.backend()
    );
    assert!(
        entry.backend()["why"]
            .as_str()
            .unwrap()
            .contains("sys_enter"),
        "{}",
        entry.backend()
    );
    ns.run(move || drop(conflict(v4(port), false)));
    let (mut a, mut b) = (regs.event(), entry.event());
    assert_ours(&a, &ns);
    assert_eq!(a["port"], port, "{a}");
    // The lookups ran at different moments (the sockets close at once):
    // compare what both saw at the failure.
    for v in [&mut a, &mut b] {
        let o = v.as_object_mut().unwrap();
        for k in ["ts", "holders", "enriched", "diagnosis", "fix"] {
            o.remove(k);
        }
    }
    assert_eq!(a, b);
}

#[test]
fn tcp_v6_and_socket_options() {
    let ns = Netns::new("pw-tcp6");
    let port = port();
    let tracer = Tracer::start(&["--netns", &ns.arg()]);
    ns.run(move || {
        let addr = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        let holder = socket(true, false);
        bind(&holder, addr).unwrap();
        holder.listen(1).unwrap();
        let loser = socket(true, false);
        loser.set_reuse_address(true).unwrap();
        loser.set_reuse_port(true).unwrap();
        loser.set_only_v6(true).unwrap();
        loser.set_freebind_v6(true).unwrap();
        assert_eq!(bind(&loser, addr), Err(libc::EADDRINUSE));
    });
    let ev = tracer.event();
    assert_ours(&ev, &ns);
    assert_eq!(ev["family"], "ipv6", "{ev}");
    assert_eq!(ev["addr"], "::1", "{ev}");
    assert_eq!(ev["port"], port, "{ev}");
    // reuseaddr, reuseport, v6only, freebind set; transparent, no_port not.
    assert_eq!(opts(&ev), [true, true, true, true, false, false], "{ev}");
}

#[test]
fn ip_transparent_and_bind_address_no_port_are_seen() {
    let ns = Netns::new("pw-opts");
    let port = port();
    let tracer = Tracer::start(&["--netns", &ns.arg()]);
    ns.run(move || {
        let holder = socket(false, false);
        bind(&holder, v4(port)).unwrap();
        holder.listen(1).unwrap();
        let loser = socket(false, false);
        loser.set_ip_transparent_v4(true).unwrap();
        let one: libc::c_int = 1;
        // IP_BIND_ADDRESS_NO_PORT has no socket2 setter.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&loser),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        assert_eq!(rc, 0);
        loser.bind_device(Some(b"lo")).unwrap();
        assert_eq!(bind(&loser, v4(port)), Err(libc::EADDRINUSE));
    });
    let ev = tracer.event();
    assert_eq!(opts(&ev), [false, false, false, false, true, true], "{ev}");
    // SO_BINDTODEVICE: loopback is interface 1 in a fresh namespace.
    assert_eq!(ev["ifindex"], 1, "{ev}");
}

/// An IPv6 wildcard without IPV6_V6ONLY also claims the IPv4 wildcard, and
/// the reverse; with IPV6_V6ONLY the two coexist.
#[test]
fn dual_stack_wildcards() {
    let ns = Netns::new("pw-dual");
    let (p1, p2) = (port(), port().wrapping_add(1));
    let tracer = Tracer::start(&["--netns", &ns.arg(), "--all"]);
    ns.run(move || {
        let any4 = |p| SocketAddr::from(([0, 0, 0, 0], p));
        let any6 = |p| SocketAddr::from((Ipv6Addr::UNSPECIFIED, p));
        // v4 first, then a dual-stack v6 wildcard: fails.
        let a = socket(false, false);
        bind(&a, any4(p1)).unwrap();
        a.listen(1).unwrap();
        let b = socket(true, false);
        b.set_only_v6(false).unwrap();
        assert_eq!(bind(&b, any6(p1)), Err(libc::EADDRINUSE));
        // Same with IPV6_V6ONLY: succeeds.
        let c = socket(true, false);
        c.set_only_v6(true).unwrap();
        bind(&c, any6(p1)).unwrap();
        // Dual-stack v6 wildcard first, then the v4 wildcard: fails.
        let d = socket(true, false);
        d.set_only_v6(false).unwrap();
        bind(&d, any6(p2)).unwrap();
        d.listen(1).unwrap();
        let e = socket(false, false);
        assert_eq!(bind(&e, any4(p2)), Err(libc::EADDRINUSE));
        drop((a, b, c, d, e));
    });
    // --all also shows the two successful listen() calls; keep the binds.
    let evs: Vec<Value> = std::iter::from_fn(|| Some(tracer.event()))
        .filter(|e| e["syscall"] == "bind")
        .take(5)
        .collect();
    let summary: Vec<(String, String, u64, String, bool)> = evs
        .iter()
        .map(|e| {
            (
                e["family"].as_str().unwrap().to_owned(),
                e["addr"].as_str().unwrap().to_owned(),
                e["port"].as_u64().unwrap(),
                e["errno"].as_str().unwrap_or("OK").to_owned(),
                e["opts"]["v6only"].as_bool().unwrap(),
            )
        })
        .collect();
    let s = |f: &str, a: &str, p: u16, r: &str, v6: bool| {
        (f.to_owned(), a.to_owned(), u64::from(p), r.to_owned(), v6)
    };
    assert_eq!(
        summary,
        vec![
            s("ipv4", "0.0.0.0", p1, "OK", false),
            s("ipv6", "::", p1, "EADDRINUSE", false),
            s("ipv6", "::", p1, "OK", true),
            s("ipv6", "::", p2, "OK", false),
            s("ipv4", "0.0.0.0", p2, "EADDRINUSE", false),
        ],
        "{evs:#?}"
    );
}

#[test]
fn udp_bind_eaddrinuse() {
    let ns = Netns::new("pw-udp");
    let port = port();
    let tracer = Tracer::start(&["--netns", &ns.arg()]);
    ns.run(move || drop(conflict(v4(port), true)));
    let ev = tracer.event();
    assert_ours(&ev, &ns);
    assert_eq!(ev["proto"], "udp", "{ev}");
    assert_eq!(ev["port"], port, "{ev}");
    assert_eq!(ev["errno"], "EADDRINUSE", "{ev}");
}

/// Two SO_REUSEADDR sockets may bind one port while neither listens; the
/// second listen() is what fails, and it reports the port it was bound to.
#[test]
fn listen_time_eaddrinuse() {
    let ns = Netns::new("pw-listen");
    let port = port();
    let tracer = Tracer::start(&["--netns", &ns.arg()]);
    ns.run(move || {
        let a = socket(false, false);
        a.set_reuse_address(true).unwrap();
        let b = socket(false, false);
        b.set_reuse_address(true).unwrap();
        bind(&a, v4(port)).unwrap();
        bind(&b, v4(port)).unwrap();
        a.listen(1).unwrap();
        let err = b.listen(1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE));
    });
    let ev = tracer.event();
    assert_ours(&ev, &ns);
    assert_eq!(ev["syscall"], "listen", "{ev}");
    assert_eq!(ev["errno"], "EADDRINUSE", "{ev}");
    assert_eq!(ev["addr"], "127.0.0.1", "{ev}");
    assert_eq!(ev["port"], port, "{ev}");
    assert!(ev["opts"]["reuseaddr"].as_bool().unwrap(), "{ev}");
}

#[test]
fn success_is_not_reported_by_default_and_is_with_all() {
    let ns = Netns::new("pw-success");
    let port = port();
    let quiet = Tracer::start(&["--netns", &ns.arg()]);
    let all = Tracer::start(&["--netns", &ns.arg(), "--all"]);
    ns.run(move || {
        let s = socket(false, false);
        bind(&s, v4(port)).unwrap();
        s.listen(1).unwrap();
        // A failure afterwards: the quiet tracer must show it first and only it.
        drop(conflict(v4(port.wrapping_add(1)), false));
    });
    let first = quiet.event();
    assert_eq!(
        first["port"],
        port.wrapping_add(1),
        "success leaked into the default stream: {first}"
    );
    let ev = all.event();
    assert_eq!(
        (
            ev["syscall"].as_str(),
            ev["errno"].is_null(),
            ev["ret"].as_i64()
        ),
        (Some("bind"), true, Some(0)),
        "{ev}"
    );
    let ev = all.event();
    assert_eq!(
        (ev["syscall"].as_str(), ev["port"].as_u64()),
        (Some("listen"), Some(u64::from(port))),
        "{ev}"
    );
}

/// Filters: a call that should be dropped happens first, one that should be
/// kept second; the first event must be the kept one (the ring buffer keeps
/// order), which proves the dropped one never reached userspace.
fn first_event_is_kept(
    filter: &[&str],
    ns: &Netns,
    dropped: impl FnOnce() + Send + 'static,
    kept: impl FnOnce() + Send + 'static,
) -> Value {
    let mut args = vec!["--netns".to_owned(), ns.arg()];
    args.extend(filter.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tracer = Tracer::start(&args);
    ns.run(dropped);
    ns.run(kept);
    let ev = tracer.event();
    assert!(
        tracer.next_event(Duration::from_millis(300)).is_none(),
        "more than the kept event"
    );
    ev
}

#[test]
fn filter_port_matches_the_requested_port() {
    let ns = Netns::new("pw-fport");
    let (skip, keep) = (port(), port().wrapping_add(7));
    let ev = first_event_is_kept(
        &["--port", &format!("1,{keep}")],
        &ns,
        move || drop(conflict(v4(skip), false)),
        move || drop(conflict(v4(keep), false)),
    );
    assert_eq!(ev["port"], keep, "{ev}");
    // Ranges too.
    let ev = first_event_is_kept(
        &["--port", &format!("{}-{}", keep - 1, keep + 1)],
        &ns,
        move || drop(conflict(v4(skip), false)),
        move || drop(conflict(v4(keep), false)),
    );
    assert_eq!(ev["port"], keep, "{ev}");
}

#[test]
fn filter_pid() {
    let ns = Netns::new("pw-fpid");
    let port = port();
    let ev = first_event_is_kept(
        &["--pid", &std::process::id().to_string()],
        &ns,
        move || {
            python(&py_conflict(port), None);
        },
        move || drop(conflict(v4(port), false)),
    );
    assert_ours(&ev, &ns);
}

#[test]
fn filter_uid() {
    let ns = Netns::new("pw-fuid");
    let port = port();
    let ev = first_event_is_kept(
        &["--uid", "65534"],
        &ns,
        move || drop(conflict(v4(port), false)),
        move || {
            python(&py_conflict(port), Some(65534));
        },
    );
    assert_eq!(ev["uid"], 65534, "{ev}");
    assert_eq!(ev["comm"], "python3", "{ev}");
}

#[test]
fn filter_comm() {
    let ns = Netns::new("pw-fcomm");
    let port = port();
    let ev = first_event_is_kept(
        &["--comm", "python3"],
        &ns,
        move || drop(conflict(v4(port), false)),
        move || {
            python(&py_conflict(port), None);
        },
    );
    assert_eq!(ev["comm"], "python3", "{ev}");
}

#[test]
fn filter_netns() {
    let other = Netns::new("pw-fnet-other");
    let ns = Netns::new("pw-fnet");
    let port = port();
    // --netns is already applied by first_event_is_kept; the dropped call
    // runs in the other namespace.
    let tracer = Tracer::start(&["--netns", &ns.arg()]);
    other.run(move || drop(conflict(v4(port), false)));
    ns.run(move || drop(conflict(v4(port), false)));
    let ev = tracer.event();
    assert_eq!(ev["netns"], ns.inode, "{ev}");
    assert!(tracer.next_event(Duration::from_millis(300)).is_none());
}

#[test]
fn filter_cgroup() {
    let ns = Netns::new("pw-fcgroup");
    let cg = Cgroup::new("portwatch-test");
    let port = port();
    let procs = cg.0.join("cgroup.procs");
    let code = format!(
        "open('{}','w').write(str(__import__('os').getpid()))\n{}",
        procs.display(),
        py_conflict(port)
    );
    let ev = first_event_is_kept(
        &["--cgroup", cg.0.to_str().unwrap()],
        &ns,
        move || drop(conflict(v4(port), false)),
        move || {
            python(&code, None);
        },
    );
    assert_eq!(ev["comm"], "python3", "{ev}");
    let id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cg.0).unwrap());
    assert_eq!(ev["cgroup_id"], id, "{ev}");
}

#[test]
fn filter_errno_eacces() {
    let ns = Netns::new("pw-feacces");
    let code = "import socket,errno\n\
                s=socket.socket()\n\
                try:\n  s.bind(('127.0.0.1',80)); raise SystemExit('bind succeeded')\n\
                except OSError as e:\n  assert e.errno==errno.EACCES, e\n";
    let port = port();
    // Default errno set: EACCES is not shown, the EADDRINUSE after it is.
    let ev = first_event_is_kept(
        &[],
        &ns,
        move || {
            python(code, Some(65534));
        },
        move || drop(conflict(v4(port), false)),
    );
    assert_eq!(ev["errno"], "EADDRINUSE", "{ev}");
    // --errno EACCES,EADDRNOTAVAIL: now it is, and EADDRINUSE is not.
    let ev = first_event_is_kept(
        &["--errno", "EACCES,eaddrnotavail"],
        &ns,
        move || drop(conflict(v4(port), false)),
        move || {
            python(code, Some(65534));
        },
    );
    assert_eq!(ev["errno"], "EACCES", "{ev}");
    assert_eq!(ev["port"], 80, "{ev}");
    assert_eq!(ev["uid"], 65534, "{ev}");
}

#[test]
fn eaddrnotavail_with_all_errors() {
    let ns = Netns::new("pw-notavail");
    let port = port();
    let tracer = Tracer::start(&["--netns", &ns.arg(), "--all-errors"]);
    ns.run(move || {
        let s = socket(false, false);
        // 192.0.2.1 (TEST-NET-1) is on no interface of this namespace.
        assert_eq!(
            bind(&s, SocketAddr::from(([192, 0, 2, 1], port))),
            Err(libc::EADDRNOTAVAIL)
        );
    });
    let ev = tracer.event();
    assert_eq!(ev["errno"], "EADDRNOTAVAIL", "{ev}");
    assert_eq!(ev["addr"], "192.0.2.1", "{ev}");
    assert_eq!(ev["port"], port, "{ev}");
}

/// What a storm's output accounts for: events shown, the repeats they
/// carry, and the repeats reported at exit.
struct Account {
    events: u64,
    folded_shown: u64,
    tail: u64,
}

fn account(first: &Value, rest: &[Value], notices: &[Value]) -> Account {
    let folded = |e: &Value| e["folded"].as_u64().unwrap();
    Account {
        events: 1 + rest.len() as u64,
        folded_shown: folded(first) + rest.iter().map(folded).sum::<u64>(),
        tail: notices
            .iter()
            .filter(|v| v["type"] == "repeat")
            .map(|v| v["count"].as_u64().unwrap())
            .sum(),
    }
}

/// Identical failures in a burst are folded; every one is accounted for.
#[test]
fn storm_is_folded_and_counted_exactly() {
    let ns = Netns::new("pw-storm");
    let port = port();
    const N: u64 = 20_000;
    let tracer = Tracer::start(&["--netns", &ns.arg()]);
    ns.run(move || {
        let (_holder, loser) = conflict(v4(port), false);
        for _ in 1..N {
            assert_eq!(bind(&loser, v4(port)), Err(libc::EADDRINUSE));
        }
    });
    let first = tracer.event();
    assert_eq!(first["port"], port);
    let (status, rest, notices) = tracer.stop();
    assert!(status.success());
    let summary = notices
        .iter()
        .find(|v| v["type"] == "summary")
        .expect("summary");
    let Account {
        events,
        folded_shown,
        tail,
    } = account(&first, &rest, &notices);
    assert_eq!(summary["matched"], N, "{summary}");
    assert_eq!(summary["lost"], 0, "{summary}");
    assert_eq!(summary["shown"], events, "{summary}");
    assert_eq!(summary["folded_shown"], folded_shown, "{summary}");
    assert_eq!(summary["folded_tail"], tail, "{summary}");
    assert_eq!(events + folded_shown + tail, N, "{summary} {notices:?}");
    assert!(
        events < 100,
        "{events} events for one burst: folding is not working"
    );
}

/// A storm longer than many fold windows: each window's first failure is
/// shown and carries the repeats of the window before (counted in the
/// kernel's per-CPU front slot, then moved to the fold table); the repeats
/// after the last one shown are still counted at exit, under their port,
/// though the table's entry was swept meanwhile.
#[test]
fn storm_across_fold_windows_is_counted_exactly() {
    let ns = Netns::new("pw-windows");
    let port = port();
    let tracer = Tracer::start(&["--netns", &ns.arg(), "--fold-window", "100"]);
    let n: u64 = ns.run(move || {
        // One CPU: the front slot is per CPU, and the tail below must land
        // in the window of the failure before it.
        pin_to_this_cpu();
        let (_holder, loser) = conflict(v4(port), false);
        let mut n = 1;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(1500) {
            assert_eq!(bind(&loser, v4(port)), Err(libc::EADDRINUSE));
            n += 1;
            std::thread::sleep(Duration::from_micros(50));
        }
        // Two failures back to back: even when the first opens a window
        // (shown), the second is a repeat inside it, so a tail exists
        // however the loop's last failure fell (6.1's emulated CPU once
        // ended the loop on a window's first failure).
        for _ in 0..2 {
            assert_eq!(bind(&loser, v4(port)), Err(libc::EADDRINUSE));
            n += 1;
        }
        n
    });
    // Past a sweep (every second) and the window: the table's entry is
    // gone, the front slot's repeats are not.
    std::thread::sleep(Duration::from_millis(2200));
    let first = tracer.event();
    assert_eq!(first["port"], port);
    let (status, rest, notices) = tracer.stop();
    assert!(status.success());
    let summary = notices.iter().find(|v| v["type"] == "summary").unwrap();
    let Account {
        events,
        folded_shown,
        tail,
    } = account(&first, &rest, &notices);
    let repeats: Vec<&Value> = notices.iter().filter(|v| v["type"] == "repeat").collect();
    assert_eq!(summary["matched"], n, "{summary}");
    assert_eq!(summary["lost"], 0, "{summary}");
    assert_eq!(events + folded_shown + tail, n, "{summary} {notices:?}");
    // 1.5 s of 100 ms windows, at least one event per window on some CPU.
    assert!((10..200).contains(&events), "{events} events: {summary}");
    assert!(
        rest.iter().any(|e| e["folded"].as_u64().unwrap() > 0),
        "no event carried its window's repeats: {rest:?}"
    );
    assert!(
        tail > 0,
        "repeats after the last event were lost: {summary}"
    );
    assert!(
        repeats.iter().all(|r| r["port"] == port),
        "repeats at exit without their port: {repeats:?}"
    );
}

/// Folding never merges failures on other addresses or families: one
/// process failing 0.0.0.0:P, [::]:P and 127.0.0.1:P, each many times, gets
/// one event per address, and the repeats at exit name the address they
/// count (nginx with `listen P; listen [::]:P;` against a dual-stack holder).
#[test]
fn folding_keeps_addresses_and_families_apart() {
    let ns = Netns::new("pw-foldaddr");
    let port = port();
    const N: u64 = 50;
    let tracer = Tracer::start(&["--netns", &ns.arg()]);
    ns.run(move || {
        // A dual-stack wildcard takes every address of both families.
        let holder = socket(true, false);
        holder.set_only_v6(false).unwrap();
        bind(&holder, SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))).unwrap();
        holder.listen(8).unwrap();
        let any4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
        let (l4, l6, lo) = (
            refused(any4, false),
            refused(any6, false),
            refused(v4(port), false),
        );
        for _ in 1..N {
            assert_eq!(bind(&l4, any4), Err(libc::EADDRINUSE));
            assert_eq!(bind(&l6, any6), Err(libc::EADDRINUSE));
            assert_eq!(bind(&lo, v4(port)), Err(libc::EADDRINUSE));
        }
        drop(holder);
    });
    let mut events: Vec<Value> = (0..3).map(|_| tracer.event()).collect();
    let (status, rest, notices) = tracer.stop();
    assert!(status.success());
    events.extend(rest);
    let mut seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["family"].as_str().unwrap().to_owned(),
                e["addr"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        [
            ("ipv4".to_owned(), "0.0.0.0".to_owned()),
            ("ipv4".to_owned(), "127.0.0.1".to_owned()),
            ("ipv6".to_owned(), "::".to_owned())
        ],
        "{events:#?}"
    );
    // Each address's own count: its events, what they carry, and its repeat.
    for (family, addr) in &seen {
        let shown: Vec<&Value> = events
            .iter()
            .filter(|e| e["family"] == family.as_str() && e["addr"] == addr.as_str())
            .collect();
        let folded: u64 = shown.iter().map(|e| e["folded"].as_u64().unwrap()).sum();
        let tail: u64 = notices
            .iter()
            .filter(|v| {
                v["type"] == "repeat"
                    && v["addr"] == addr.as_str()
                    && v["family"] == family.as_str()
            })
            .map(|v| v["count"].as_u64().unwrap())
            .sum();
        assert_eq!(
            shown.len() as u64 + folded + tail,
            N,
            "{family} {addr}: {events:#?} {notices:#?}"
        );
    }
}

#[test]
fn fold_window_zero_sends_every_failure() {
    let ns = Netns::new("pw-nofold");
    let port = port();
    const N: usize = 2_000;
    let tracer = Tracer::start(&["--netns", &ns.arg(), "--fold-window", "0"]);
    ns.run(move || {
        let (_holder, loser) = conflict(v4(port), false);
        for _ in 1..N {
            assert_eq!(bind(&loser, v4(port)), Err(libc::EADDRINUSE));
        }
    });
    for i in 0..N {
        let ev = tracer
            .next_event(WAIT)
            .unwrap_or_else(|| panic!("only {i} of {N} events"));
        assert_eq!(ev["folded"], 0);
    }
    let (_, rest, notices) = tracer.stop();
    assert!(rest.is_empty());
    let summary = notices.iter().find(|v| v["type"] == "summary").unwrap();
    assert_eq!(summary["matched"], N);
    assert_eq!(summary["lost"], 0);
}

/// A ring buffer too small for the storm: losses are counted exactly and
/// reported while running, never silent.
#[test]
fn lost_events_are_counted_and_reported() {
    let ns = Netns::new("pw-lost");
    let port = port();
    const N: u64 = 20_000;
    let mut tracer = Tracer::start(&[
        "--netns",
        &ns.arg(),
        "--fold-window",
        "0",
        "--ring-size",
        "4",
        "--stats-interval",
        "1",
    ]);
    ns.run(move || {
        let (_holder, loser) = conflict(v4(port), false);
        for _ in 1..N {
            assert_eq!(bind(&loser, v4(port)), Err(libc::EADDRINUSE));
        }
    });
    let lost = tracer.wait_notice("lost");
    assert!(lost["lost"].as_u64().unwrap() > 0, "{lost}");
    let (status, rest, notices) = tracer.stop();
    assert!(status.success());
    let summary = notices
        .iter()
        .find(|v| v["type"] == "summary")
        .expect("summary");
    let shown = summary["shown"].as_u64().unwrap();
    let lost = summary["lost"].as_u64().unwrap();
    assert_eq!(summary["matched"], N, "{summary}");
    assert!(lost > 0, "a 4 KiB ring cannot hold {N} events: {summary}");
    assert_eq!(shown + lost, N, "{summary}");
    // Everything shown was really printed (some before stop, the rest after).
    assert!(rest.len() as u64 <= shown);
}

/// The threads of `pid` whose kernel wait channel is a pipe write: blocked
/// writing to a full pipe. Their names (`comm`).
fn threads_writing_a_pipe(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let wchan = std::fs::read_to_string(dir.join("wchan")).ok()?;
            // `pipe_write` on 6.1, `anon_pipe_write` on 6.18.
            wchan.contains("pipe_write").then(|| {
                std::fs::read_to_string(dir.join("comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            })
        })
        .collect()
}

/// A slow output pushes back rather than drops: with stdout a one-page pipe
/// read slowly, every failure of a burst is still written and none is lost.
/// The write that waits is the output thread's (`pw-output`), not one of the
/// async runtime's, where the ring buffer's reader runs.
#[test]
fn slow_output_pushes_back_and_drops_nothing() {
    use std::{
        io::{BufRead as _, BufReader},
        os::fd::AsFd as _,
        process::{Command, Stdio},
        time::Instant,
    };
    let ns = Netns::new("pw-slowout");
    let port = port();
    // Far less than the ring buffer and the queue hold: nothing needs to be
    // lost, however slow the output.
    const N: usize = 2_000;
    let mut cmd = Command::new(bin());
    cmd.args([
        "watch",
        "--json",
        "--netns",
        &ns.arg(),
        "--fold-window",
        "0",
    ]);
    if let Ok(backend) = std::env::var("PORTWATCH_TEST_BACKEND") {
        cmd.args(["--backend", &backend]);
    }
    /// Our own child, ended by handle however the test ends.
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Child(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start portwatch"),
    );
    let stdout = child.0.stdout.take().unwrap();
    // One page: the output blocks after an event or two.
    nix::fcntl::fcntl(stdout.as_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096))
        .expect("shrink the pipe");
    let (ntx, notices) = std::sync::mpsc::channel::<Value>();
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
            let _ = ntx.send(v);
        }
    });
    let mut seen = Vec::new();
    while !seen.last().is_some_and(|v: &Value| v["type"] == "ready") {
        match notices.recv_timeout(WAIT) {
            Ok(v) => seen.push(v),
            Err(e) => panic!("portwatch not ready ({e}): {seen:?}"),
        }
    }
    ns.run(move || {
        let (_holder, loser) = conflict(v4(port), false);
        for _ in 1..N {
            assert_eq!(bind(&loser, v4(port)), Err(libc::EADDRINUSE));
        }
    });
    // Nothing read yet: the pipe is full, and the writer waits on it.
    let deadline = Instant::now() + WAIT;
    let writers = loop {
        let writers = threads_writing_a_pipe(child.0.id());
        if !writers.is_empty() || Instant::now() > deadline {
            break writers;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        writers,
        ["pw-output"],
        "the thread blocked on stdout is not (only) the output thread"
    );
    // Stopped now, it still writes every event it holds before it exits:
    // read them slowly, a pipe's page at a time with a pause between pages,
    // to the end.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut out = BufReader::with_capacity(4096, stdout);
    let mut lines = 0;
    let mut line = String::new();
    while out.read_line(&mut line).expect("read stdout") > 0 {
        let ev: Value = serde_json::from_str(&line).expect("an NDJSON event");
        assert_eq!(ev["port"], port, "{ev}");
        lines += 1;
        line.clear();
        if out.buffer().is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert!(child.0.wait().unwrap().success());
    assert_eq!(lines, N, "events written of {N} failures");
    let summary = notices
        .iter()
        .find(|v| v["type"] == "summary")
        .expect("summary");
    assert_eq!(summary["matched"], N, "{summary}");
    assert_eq!(summary["lost"], 0, "{summary}");
    assert_eq!(summary["shown"], N, "{summary}");
}

#[test]
fn sigterm_stops_cleanly_with_a_summary() {
    let ns = Netns::new("pw-sigterm");
    let tracer = Tracer::start(&["--netns", &ns.arg()]);
    let (status, _, notices) = tracer.stop_with(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{status}");
    assert!(
        notices.iter().any(|v| v["type"] == "summary"),
        "{notices:?}"
    );
}

/// `auto` picks fexit exactly when fexit can load. `cargo xtask vm-test`
/// also says which one it must be on its kernel (PORTWATCH_EXPECT_AUTO).
#[test]
fn auto_picks_fexit_when_it_loads() {
    let auto = Tracer::start(&["--port", "1", "--backend", "auto"]);
    let chosen = auto.backend()["backend"].as_str().unwrap().to_owned();
    drop(auto);
    match Tracer::try_start(&["--backend", "fexit"]) {
        Ok(_) => assert_eq!(chosen, "fexit"),
        Err(refusal) => {
            assert_eq!(chosen, "tracepoint");
            assert!(
                refusal.contains("the fexit backend is not available"),
                "{refusal}"
            );
        }
    }
    if let Ok(expected) = std::env::var("PORTWATCH_EXPECT_AUTO") {
        assert_eq!(chosen, expected);
    }
}

/// Where fexit loads, both backends must report the same calls with the
/// same fields, except the hook (`source`), the time, and the fd (fexit sees
/// the socket, not the descriptor). Where it does not, the refusal must be
/// the clean one the fallback relies on.
#[test]
fn fexit_and_tracepoint_events_agree() {
    let ns = Netns::new("pw-agree");
    let fexit = match Tracer::try_start(&[
        "--netns",
        &ns.arg(),
        "--backend",
        "fexit",
        "--fold-window",
        "0",
    ]) {
        Ok(t) => t,
        Err(refusal) => {
            assert!(
                refusal.contains("the fexit backend is not available"),
                "{refusal}"
            );
            assert!(refusal.contains("--backend tracepoint"), "{refusal}");
            return;
        }
    };
    let tp = Tracer::start(&[
        "--netns",
        &ns.arg(),
        "--backend",
        "tracepoint",
        "--fold-window",
        "0",
    ]);
    let port = port();
    ns.run(move || {
        drop(conflict(v4(port), false));
        drop(conflict(
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            false,
        ));
        drop(conflict(v4(port), true));
        let a = socket(false, false);
        a.set_reuse_address(true).unwrap();
        let b = socket(false, false);
        b.set_reuse_address(true).unwrap();
        bind(&a, v4(port)).unwrap();
        bind(&b, v4(port)).unwrap();
        a.listen(1).unwrap();
        assert!(b.listen(1).is_err());
    });
    // What the lookups found afterwards depends on when each tracer looked
    // (the sockets close at once); the reason rests on the kernel's record,
    // taken at the failure by both.
    let strip = |mut v: Value| {
        let o = v.as_object_mut().unwrap();
        for k in [
            "ts",
            "source",
            "fd",
            "holders",
            "enriched",
            "diagnosis",
            "fix",
        ] {
            o.remove(k);
        }
        v
    };
    for i in 0..4 {
        let (a, b) = (fexit.event(), tp.event());
        assert_eq!(a["source"], "fexit");
        assert_eq!(b["source"], "tracepoint");
        assert_eq!(strip(a), strip(b), "event {i}");
    }
}

#[test]
fn backend_line_names_the_hook_and_why() {
    let tracer = Tracer::start(&["--port", "1", "--backend", "auto"]);
    let b = tracer.backend().clone();
    let ready = tracer
        .seen
        .iter()
        .find(|v| v["type"] == "ready")
        .unwrap()
        .clone();
    assert_eq!(ready["backend"], b["backend"]);
    match b["backend"].as_str().unwrap() {
        // This project's machines refuse fexit (see ../shared/PLATFORM.md):
        // auto must fall back and say why.
        "tracepoint" => assert!(
            b["why"].as_str().unwrap().contains("fexit unavailable"),
            "{b}"
        ),
        "fexit" => assert_eq!(b["why"], "the kernel allows it"),
        other => panic!("unknown backend {other}"),
    }
}

/// Process churn fills the kernel's fold table with keys of processes long
/// gone (here a table of 64 entries and 300 short-lived processes, each
/// failing one bind); once they are older than the fold window they are
/// swept, so a storm from a fresh process afterwards still folds, and every
/// failure is still accounted for.
#[test]
fn fold_table_full_of_stale_keys_still_folds_a_fresh_storm() {
    let ns = Netns::new("pw-churn");
    let port = port();
    const CHURN: u64 = 300;
    const N: u64 = 20_000;
    let tracer = Tracer::start(&[
        "--netns",
        &ns.arg(),
        "--fold-window",
        "200",
        "--fold-table-size",
        "64",
        "--no-holders",
    ]);
    let holder = ns.run(move || {
        let holder = socket(false, false);
        bind(&holder, v4(port)).unwrap();
        holder.listen(16).unwrap();
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
            },
            sin_zero: [0; 8],
        };
        for _ in 0..CHURN {
            // SAFETY: the child makes plain system calls only, then exits.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork");
            if pid == 0 {
                unsafe {
                    let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                    let rc = libc::bind(
                        fd,
                        (&raw const addr).cast(),
                        size_of::<libc::sockaddr_in>() as u32,
                    );
                    libc::_exit(i32::from(rc != -1));
                }
            }
            let mut status = 0;
            // SAFETY: waits for the child just forked, by pid.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert_eq!(status, 0, "the child's bind did not fail");
        }
        holder
    });
    // One event per short-lived process; then let their keys go stale and
    // a sweep (once a second) remove them.
    let mut churn_events = 0;
    while churn_events < CHURN {
        let ev = tracer.event();
        assert_eq!(ev["folded"], 0, "{ev}");
        churn_events += 1;
    }
    std::thread::sleep(Duration::from_millis(2500));
    ns.run(move || {
        let loser = refused(v4(port), false);
        for _ in 1..N {
            assert_eq!(bind(&loser, v4(port)), Err(libc::EADDRINUSE));
        }
    });
    drop(holder);
    let (status, rest, notices) = tracer.stop();
    assert!(status.success());
    let summary = notices
        .iter()
        .find(|v| v["type"] == "summary")
        .expect("summary");
    let storm_events = rest.len() as u64;
    let folded_shown: u64 = rest.iter().map(|e| e["folded"].as_u64().unwrap()).sum();
    let tail: u64 = notices
        .iter()
        .filter(|v| v["type"] == "repeat")
        .map(|v| v["count"].as_u64().unwrap())
        .sum();
    assert_eq!(summary["matched"], CHURN + N, "{summary}");
    assert_eq!(summary["lost"], 0, "{summary}");
    assert_eq!(summary["shown"], CHURN + storm_events, "{summary}");
    assert_eq!(summary["folded_shown"], folded_shown, "{summary}");
    assert_eq!(summary["folded_tail"], tail, "{summary}");
    assert_eq!(
        storm_events + folded_shown + tail,
        N,
        "{summary} {notices:?}"
    );
    assert!(
        summary["fold_swept"].as_u64().unwrap() > 0,
        "nothing swept: {summary}"
    );
    assert!(
        storm_events < 100,
        "{storm_events} events for one storm after churn: the fold table is stuck full ({summary})"
    );
}

/// Threads pinned to one CPU, each making failing binds and listens of its
/// own (its own address and ports): every event carries what its thread
/// asked for. The programs build events in per-CPU buffers; fexit programs
/// can be preempted (the VMs boot with `preempt=full`), so another thread's
/// program may run on the same CPU in the middle of one.
#[test]
fn threads_on_one_cpu_each_get_their_own_events() {
    use std::{
        collections::HashMap,
        sync::{Arc, Barrier},
    };
    const THREADS: u8 = 8;
    const EACH: u16 = 60;
    const BASE: u16 = 20_000;
    let ns = Netns::new("pw-onecpu");
    let tracer = Tracer::start(&["--netns", &ns.arg(), "--fold-window", "0"]);
    let tids: Vec<i64> = ns.run(|| {
        use nix::{sched, unistd::Pid};
        let allowed = sched::sched_getaffinity(Pid::from_raw(0)).expect("affinity");
        let cpu = (0..sched::CpuSet::count())
            .find(|&c| allowed.is_set(c).unwrap_or(false))
            .expect("a CPU");
        let start = Arc::new(Barrier::new(THREADS.into()));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let start = start.clone();
                // Threads start in their creator's network namespace.
                std::thread::spawn(move || {
                    let mut one = sched::CpuSet::new();
                    one.set(cpu).expect("cpu set");
                    sched::sched_setaffinity(Pid::from_raw(0), &one).expect("pin");
                    let ip = Ipv4Addr::new(127, 0, 0, t + 1);
                    start.wait();
                    for j in 0..EACH {
                        let port = BASE + (u16::from(t) * EACH + j) * 2;
                        let _bind = conflict(SocketAddr::from((ip, port)), false);
                        let listen_at = SocketAddr::from((ip, port + 1));
                        let (a, b) = (socket(false, false), socket(false, false));
                        for s in [&a, &b] {
                            s.set_reuse_address(true).unwrap();
                            bind(s, listen_at).unwrap();
                        }
                        a.listen(1).unwrap();
                        assert!(b.listen(1).is_err());
                    }
                    i64::from(nix::unistd::gettid().as_raw())
                })
            })
            .collect();
        threads.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seen: HashMap<(u8, &str, u64), usize> = HashMap::new();
    let want = usize::from(THREADS) * usize::from(EACH) * 2;
    let mut fexit = false;
    while seen.values().sum::<usize>() < want {
        // Quiet for this long: the rest will not come (see below).
        let Some(ev) = tracer.next_event(Duration::from_secs(10)) else {
            break;
        };
        fexit |= ev["source"] == "fexit";
        let t = tids
            .iter()
            .position(|&tid| ev["tid"] == tid)
            .unwrap_or_else(|| panic!("tid of no thread: {ev}")) as u8;
        assert_eq!(ev["pid"], std::process::id(), "{ev}");
        assert_eq!(ev["addr"], format!("127.0.0.{}", t + 1), "{ev}");
        assert_eq!(ev["errno"], "EADDRINUSE", "{ev}");
        let port = ev["port"].as_u64().unwrap();
        let first = u64::from(BASE) + u64::from(t) * u64::from(EACH) * 2;
        assert!(
            (first..first + u64::from(EACH) * 2).contains(&port),
            "thread {t}'s event on another thread's port: {ev}"
        );
        let syscall = match (ev["syscall"].as_str(), port % 2) {
            (Some("bind"), 0) => "bind",
            (Some("listen"), 1) => "listen",
            _ => panic!("a call this thread did not make on that port: {ev}"),
        };
        assert_eq!(ev["comm"], "pw-onecpu", "{ev}");
        *seen.entry((t, syscall, port)).or_default() += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "a call reported twice");
    let (status, extra, notices) = tracer.stop();
    assert!(status.success());
    assert!(extra.is_empty(), "more events than calls: {extra:?}");
    let summary = notices.iter().find(|v| v["type"] == "summary").unwrap();
    assert_eq!(summary["lost"], 0, "{summary}");
    if fexit {
        // The kernel skips an fexit program's run on a CPU where a
        // preempted run of the same program is still in progress (its
        // recursion guard, counted in the program's own miss counter): such
        // calls are never seen. What is seen must still be right (checked
        // event by event above), and come from several threads: per-CPU
        // state mixed between threads would show as wrong addresses, or as
        // one thread's events only. Not every thread: under TCG on 6.1 the
        // guard skipped 790 of 960 calls in one CI run, all 120 of one
        // thread's among them.
        let threads_seen = (0..THREADS)
            .filter(|&t| seen.keys().any(|k| k.0 == t))
            .count();
        assert!(
            threads_seen >= usize::from(THREADS) / 2,
            "events from only {threads_seen} of {THREADS} threads ({} of {want} calls seen)",
            seen.len()
        );
    } else {
        assert_eq!(seen.len(), want, "each call once");
    }
}

/// Keeps the calling thread on the CPU it runs on now.
fn pin_to_this_cpu() {
    // SAFETY: sched_getcpu takes nothing; cpu_set_t is plain data, filled
    // by CPU_SET before sched_setaffinity reads it, for this thread (0).
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(
            cpu >= 0,
            "sched_getcpu: {}",
            std::io::Error::last_os_error()
        );
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}
