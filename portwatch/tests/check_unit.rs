//! `portwatch check --unit FILE`: socket unit files written here, read by
//! path (this host has no systemd as PID 1: the unit found by name and
//! already active is the systemd VM suite's), each prediction held to the
//! kernel's answer for a socket made as systemd makes it (SO_REUSEADDR,
//! IPV6_V6ONLY as BindIPv6Only= says, the device, IP_FREEBIND) in the
//! same private network namespace. No eBPF.

mod common;

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Output,
};

use common::{preflight::netns, *};
use serde_json::Value;
use socket2::Socket;

fn unit_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn run_check(ns: &Netns, args: &[&str]) -> Output {
    preflight::run_check(ns, None, args)
}

/// `check --unit FILE --json`: status and one object per binding.
fn check(ns: &Netns, unit: &Path) -> (i32, Vec<Value>) {
    let out = run_check(ns, &["--unit", unit.to_str().unwrap(), "--json"]);
    (out.status.code().unwrap(), preflight::json_lines(&out))
}

fn addr(s: &str, port: u16) -> SocketAddr {
    SocketAddr::new(s.parse::<IpAddr>().unwrap(), port)
}

/// A socket made as systemd makes a ListenStream= one, bound in the
/// calling thread's namespace: Ok(socket) or the errno.
fn systemd_bind(
    a: SocketAddr,
    v6only: bool,
    device: Option<&str>,
    freebind: bool,
) -> Result<Socket, i32> {
    let s = socket(a.is_ipv6(), false);
    if a.is_ipv6() {
        s.set_only_v6(v6only).unwrap();
    }
    if let Some(d) = device {
        s.bind_device(Some(d.as_bytes())).unwrap();
    }
    if freebind {
        if a.is_ipv6() {
            s.set_freebind_v6(true).unwrap();
        } else {
            s.set_freebind_v4(true).unwrap();
        }
    }
    s.set_reuse_address(true).unwrap();
    bind(&s, a).map(|()| s)
}

/// The prediction against the kernel: each binding, made as systemd makes
/// it (in the plan's order, the earlier ones kept bound), fails exactly
/// when check said it would.
fn agrees(ns: &Netns, v: &[Value], device: Option<&'static str>, freebind: bool) {
    let wanted: Vec<(SocketAddr, bool, bool)> = v
        .iter()
        .map(|o| {
            let a = addr(
                o["addr"].as_str().unwrap(),
                o["port"].as_u64().unwrap() as u16,
            );
            (a, o["fails"] == true, false)
        })
        .collect();
    let results = ns.run(move || {
        let mut kept = Vec::new();
        wanted
            .iter()
            .map(|&(a, _, _)| {
                // [::] of a bare port is dual-stack here (bindv6only 0).
                let r = systemd_bind(a, false, device, freebind);
                let ok = r.is_ok();
                kept.extend(r.ok());
                ok
            })
            .collect::<Vec<bool>>()
    });
    for (o, bound) in v.iter().zip(results) {
        // Two entries of the plan in each other's way: only the second
        // to bind fails; check flags both.
        if o["conflicts_with"].as_array().unwrap().is_empty() {
            assert_eq!(o["fails"] == true, !bound, "the kernel disagrees: {o:#}");
        } else if bound {
            assert_eq!(o["fails"], true, "{o:#}");
        }
    }
}

#[test]
fn unit_check_taken_and_dual_stack_by_a_process() {
    let ns = netns("pw-cu-taken");
    let scratch = Scratch::new("cu-taken");
    let (p, q) = (port(), port() + 1);
    let held = ns.run(move || {
        Process::fork(move || {
            hold(addr("127.0.0.1", p), false, |_| {}) && hold(addr("0.0.0.0", q), false, |_| {})
        })
    });
    let unit = unit_file(
        &scratch.0,
        "demo.socket",
        &format!(
            "[Unit]\nDescription=demo\n\n[Socket]\nListenStream=127.0.0.1:{p}\nListenStream={q}\n"
        ),
    );
    let (code, v) = check(&ns, &unit);
    assert_eq!(code, 1, "{v:#?}");
    assert_eq!(v[0]["binding"], format!("127.0.0.1:{p}/tcp"), "{v:#?}");
    assert_eq!(v[0]["verdict"], "taken", "{v:#?}");
    assert_eq!(v[0]["holders"][0]["pid"], held.pid, "{v:#?}");
    assert_eq!(
        v[0]["from"][0],
        format!("{}:5 ListenStream=127.0.0.1:{p}", unit.display())
    );
    // A bare port is [::]:PORT without IPV6_V6ONLY, as systemd binds it.
    assert_eq!(v[1]["binding"], format!("[::]:{q}/tcp"), "{v:#?}");
    assert_eq!(v[1]["verdict"], "dual-stack", "{v:#?}");
    agrees(&ns, &v, None, false);
}

#[test]
fn unit_check_conflicts_of_its_own() {
    let ns = netns("pw-cu-plan");
    let scratch = Scratch::new("cu-plan");
    let r = port();
    let both = unit_file(
        &scratch.0,
        "both.socket",
        &format!("[Socket]\nListenStream={r}\nListenStream=0.0.0.0:{r}\n"),
    );
    let (code, v) = check(&ns, &both);
    assert_eq!(code, 1, "{v:#?}");
    for o in &v {
        assert_eq!(o["verdict"], "dual-stack", "{o:#}");
    }
    agrees(&ns, &v, None, false);
    // IPV6_V6ONLY on [::] keeps both: free, and the kernel binds both.
    let apart = unit_file(
        &scratch.0,
        "apart.socket",
        &format!("[Socket]\nListenStream={r}\nListenStream=0.0.0.0:{r}\nBindIPv6Only=ipv6-only\n"),
    );
    let (code, v) = check(&ns, &apart);
    assert_eq!(code, 0, "{v:#?}");
    let kernel = ns.run(move || {
        let a = systemd_bind(addr("::", r), true, None, false);
        let b = systemd_bind(addr("0.0.0.0", r), false, None, false);
        (a.is_ok(), b.is_ok())
    });
    assert_eq!(kernel, (true, true));
    // ReusePort= on both sockets of one unit: they share the port.
    let shared = unit_file(
        &scratch.0,
        "shared.socket",
        &format!("[Socket]\nListenStream=0.0.0.0:{r}\nListenStream=127.0.0.1:{r}\nReusePort=yes\n"),
    );
    let (code, v) = check(&ns, &shared);
    assert_eq!(code, 0, "{v:#?}");
}

#[test]
fn unit_check_bind_to_device_and_free_bind() {
    let ns = netns("pw-cu-dev");
    let scratch = Scratch::new("cu-dev");
    let p = port();
    ns.run(|| {
        ip("link add pwa type veth peer name pwb");
        ip("link set pwa up");
        ip("link set pwb up");
    });
    let _held = ns.run(move || Process::fork(move || hold_on(b"pwa", addr("0.0.0.0", p), false)));
    let other = unit_file(
        &scratch.0,
        "other.socket",
        &format!("[Socket]\nListenStream=0.0.0.0:{p}\nBindToDevice=pwb\n"),
    );
    let (code, v) = check(&ns, &other);
    assert_eq!(
        (code, &v[0]["verdict"]),
        (0, &Value::from("free")),
        "{v:#?}"
    );
    agrees(&ns, &v, Some("pwb"), false);
    let same = unit_file(
        &scratch.0,
        "same.socket",
        &format!("[Socket]\nListenStream=0.0.0.0:{p}\nBindToDevice=pwa\n"),
    );
    let (code, v) = check(&ns, &same);
    assert_eq!(
        (code, &v[0]["verdict"]),
        (1, &Value::from("taken")),
        "{v:#?}"
    );
    agrees(&ns, &v, Some("pwa"), false);

    // An address the namespace lacks: address-missing, unless FreeBind=.
    let q = port() + 1;
    let missing = unit_file(
        &scratch.0,
        "missing.socket",
        &format!("[Socket]\nListenStream=10.99.0.1:{q}\n"),
    );
    let (code, v) = check(&ns, &missing);
    assert_eq!(
        (code, &v[0]["verdict"]),
        (1, &Value::from("address-missing")),
        "{v:#?}"
    );
    assert_eq!(
        ns.run(move || systemd_bind(addr("10.99.0.1", q), false, None, false).err()),
        Some(libc::EADDRNOTAVAIL)
    );
    let free = unit_file(
        &scratch.0,
        "free.socket",
        &format!("[Socket]\nListenStream=10.99.0.1:{q}\nFreeBind=yes\n"),
    );
    let (code, v) = check(&ns, &free);
    assert_eq!(
        (code, &v[0]["verdict"]),
        (0, &Value::from("free")),
        "{v:#?}"
    );
    agrees(&ns, &v, None, true);
}

#[test]
fn unit_check_bad_input() {
    let ns = netns("pw-cu-bad");
    let scratch = Scratch::new("cu-bad");
    let service = unit_file(
        &scratch.0,
        "demo.service",
        "[Service]\nExecStart=/bin/true\n",
    );
    let bad = unit_file(
        &scratch.0,
        "bad.socket",
        "[Socket]\nListenStream=localhost:80\n",
    );
    let empty = unit_file(&scratch.0, "empty.socket", "[Socket]\nAccept=no\n");
    let cases = [
        (
            "pw-no-such-unit.socket".to_owned(),
            "portwatch: check: pw-no-such-unit.socket: no unit file pw-no-such-unit.socket in /etc/systemd/system, ".to_owned(),
        ),
        (
            service.display().to_string(),
            format!("portwatch: check: {}: not a socket unit", service.display()),
        ),
        (
            bad.display().to_string(),
            format!(
                "portwatch: check: {}:2: ListenStream=localhost:80: 'localhost' is not an IP address (systemd resolves no names)",
                bad.display()
            ),
        ),
        (
            empty.display().to_string(),
            format!("portwatch: check: {}: no ListenStream=", empty.display()),
        ),
        (
            scratch.0.join("gone.socket").display().to_string(),
            format!("portwatch: check: {}: cannot open:", scratch.0.join("gone.socket").display()),
        ),
    ];
    for (unit, want) in cases {
        let out = run_check(&ns, &["--unit", &unit]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{unit}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with(&want), "want {want}\ngot  {err}");
    }
}
