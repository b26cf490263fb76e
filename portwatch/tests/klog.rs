//! The programs' own diagnostics (aya-log, `watch -v`): a kernel read that
//! contradicts the kernel's BTF must be said on stderr, not hidden inside a
//! silently wrong event. The wrong read is forced with a hidden, test-only
//! loader override (`--test-kernel-quirks socket_sk`): there is no other way to make a
//! correct offset wrong on purpose.

mod common;

use common::*;
use serde_json::Value;

/// The plain-text `portwatch: kernel ...` lines among stderr's lines.
fn kernel_lines(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter_map(Value::as_str)
        .filter(|l| l.starts_with("portwatch: kernel "))
        .map(str::to_owned)
        .collect()
}

/// Fails one bind in `ns` on a held port; returns after it failed.
fn fail_once(ns: &Netns, port: u16) {
    ns.run(move || {
        let (a, b) = conflict(v4(port), false);
        drop((a, b));
    });
}

#[test]
fn bad_socket_offset_is_reported_under_v() {
    let ns = Netns::new("pw-klog-v");
    let port = port();
    // By pid, not --netns: the namespace is read through the socket, which
    // the broken offset makes unreadable.
    let pid = std::process::id().to_string();
    let tracer = Tracer::start(&["--pid", &pid, "-v", "--test-kernel-quirks", "socket_sk"]);
    // On the saved-registers path with bpf_rdonly_cast, the verifier itself
    // refuses a load of `struct socket` at a member's wrong offset: the
    // loader falls back to the helper reads and says so.
    let why = tracer.backend()["why"].as_str().unwrap();
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").unwrap();
    if why.starts_with("sys_exit only") && btf.windows(16).any(|w| w == b"bpf_rdonly_cast\0") {
        assert!(
            why.contains("read with helpers (bpf_rdonly_cast refused: "),
            "{why}"
        );
    }
    fail_once(&ns, port);
    // The event still arrives (every failure is accounted for), without the
    // socket's details it could not read...
    let ev = tracer.event();
    assert_eq!(ev["port"], port, "{ev:#}");
    assert!(ev["opts"].is_null(), "{ev:#}");
    // ...and the program says why on stderr.
    let (_, _, rest) = tracer.stop();
    let lines = kernel_lines(&rest);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("portwatch: kernel warn: socket.sk leads to a sock of family 0")),
        "no kernel log line; stderr after ready: {rest:?}"
    );
}

#[test]
fn kernel_log_is_off_by_default() {
    let ns = Netns::new("pw-klog-off");
    let port = port();
    let pid = std::process::id().to_string();
    let tracer = Tracer::start(&["--pid", &pid, "--test-kernel-quirks", "socket_sk"]);
    fail_once(&ns, port);
    let ev = tracer.event();
    assert_eq!(ev["port"], port, "{ev:#}");
    let (_, _, rest) = tracer.stop();
    assert_eq!(kernel_lines(&rest), Vec::<String>::new());
}

/// listen() on a unix socket fails (EOPNOTSUPP) and is not portwatch's
/// business: at debug level the program says it skipped a non-inet socket,
/// at -v (warn) it says nothing.
fn unix_listen_lines(level: &[&str]) -> Vec<String> {
    let pid = std::process::id().to_string();
    let mut args = vec!["--all-errors", "--pid", &pid];
    args.extend_from_slice(level);
    let tracer = Tracer::start(&args);
    let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::DGRAM, None).unwrap();
    let err = s.listen(1).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EOPNOTSUPP));
    // Something to wait for: a failure that is reported.
    let port = port();
    let ns = Netns::new("pw-klog-unix");
    fail_once(&ns, port);
    let ev = tracer.event();
    assert_eq!(ev["port"], port, "{ev:#}");
    let (_, _, rest) = tracer.stop();
    kernel_lines(&rest)
}

#[test]
fn log_level_debug_says_what_it_skipped_and_v_does_not() {
    let debug = unix_listen_lines(&["--log-level", "debug"]);
    assert!(
        debug
            .iter()
            .any(|l| l.starts_with("portwatch: kernel debug: socket family 1 is not inet")),
        "{debug:?}"
    );
    let warn = unix_listen_lines(&["-v"]);
    assert!(warn.iter().all(|l| !l.contains("debug")), "{warn:?}");
}

#[test]
fn correct_offsets_say_nothing_under_v() {
    let ns = Netns::new("pw-klog-ok");
    let port = port();
    let tracer = Tracer::start(&["--netns", &ns.arg(), "-v"]);
    fail_once(&ns, port);
    let ev = tracer.event();
    assert_eq!(ev["port"], port, "{ev:#}");
    assert!(ev["opts"].is_object(), "{ev:#}");
    let (_, _, rest) = tracer.stop();
    assert_eq!(kernel_lines(&rest), Vec::<String>::new());
}
