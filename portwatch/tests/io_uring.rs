//! io_uring's IORING_OP_BIND / IORING_OP_LISTEN (Linux 6.11+), which never
//! pass the syscall tracepoints: a real io_uring program (tests/uring_helper.c,
//! raw system calls, compiled here with gcc) fails on a port a real holder
//! listens on, in a private network namespace, and portwatch must report it
//! with the requested port, the holder and the diagnosis.
//!
//! What the kernel can do is read from its BTF, not guessed from its version:
//! with the opcode, a missing event fails the test; without it, portwatch
//! must say that io_uring capture is unavailable.

mod common;

use std::{
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use common::*;
use serde_json::Value;

/// Whether this kernel's BTF names IORING_OP_BIND: the enumerator's name is
/// in BTF's string table exactly when the kernel has the opcode.
fn kernel_has_uring_bind() -> bool {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF");
    btf.windows(16).any(|w| w == b"\0IORING_OP_BIND\0")
}

/// The helper, built once per test process into cargo's scratch directory
/// for integration tests (the target directory, not /tmp: nothing is left
/// behind outside it), or the one `cargo xtask vm-test` built, in a VM
/// without gcc.
fn helper() -> &'static PathBuf {
    static HELPER: OnceLock<PathBuf> = OnceLock::new();
    HELPER.get_or_init(|| {
        if let Some(prebuilt) = std::env::var_os("PORTWATCH_URING_HELPER") {
            return PathBuf::from(prebuilt);
        }
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("uring_helper");
        // Built under a name of this process's own, then renamed: a helper
        // another test process is running is never rewritten under it.
        let building = out.with_extension(std::process::id().to_string());
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/uring_helper.c");
        let status = Command::new("gcc")
            .args(["-O2", "-Wall", "-o"])
            .arg(&building)
            .arg(src)
            .status()
            .expect("gcc is needed to build the io_uring helper");
        assert!(status.success(), "gcc failed on {src}");
        std::fs::rename(&building, &out).expect("rename the io_uring helper");
        out
    })
}

/// Runs the helper (inside `Netns::run`, so in that namespace) with `fd`
/// inherited when given; returns (its pid, the completion's result).
fn run_helper(args: &[String], fd: Option<i32>) -> (u32, i32) {
    let mut cmd = Command::new(helper());
    cmd.args(args);
    if let Some(fd) = fd {
        // SAFETY: only fcntl runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the io_uring helper");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "io_uring helper failed: {text}");
    let res = text
        .trim()
        .strip_prefix("res=")
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("io_uring helper said {text:?}"));
    (pid, res)
}

/// The source a backend reports io_uring calls under.
fn expected_source(tracer: &Tracer) -> &'static str {
    if tracer.backend()["backend"] == "fexit" {
        // fexit hooks inet_bind/inet_listen, which io_uring calls too.
        "fexit"
    } else {
        "io_uring"
    }
}

/// Whether this kernel has IORING_OP_BIND (read from its BTF); when it has
/// not, asserts that portwatch says io_uring capture is unavailable (the
/// tracepoint backend; fexit needs no io_uring hook), so the test checks
/// what this kernel can do instead of passing on nothing.
fn uring_capture_expected(tracer: &Tracer) -> bool {
    if kernel_has_uring_bind() {
        assert!(
            uring_note(tracer).is_none(),
            "this kernel has IORING_OP_BIND but portwatch says: {:?}",
            tracer.seen
        );
        return true;
    }
    assert!(
        uring_note(tracer).is_some() || tracer.backend()["backend"] == "fexit",
        "no IORING_OP_BIND here, and portwatch did not say io_uring capture is unavailable: {:?}",
        tracer.seen
    );
    false
}

fn uring_note(tracer: &Tracer) -> Option<&Value> {
    tracer
        .seen
        .iter()
        .find(|v| v["type"] == "degraded" && v["what"] == "io_uring")
}

#[test]
fn io_uring_bind_eaddrinuse_names_holder_and_diagnosis() {
    let ns = Netns::new("pw-uring-bind");
    let port = port();
    let tracer = Tracer::start(&["--netns", &ns.arg()]);
    if !uring_capture_expected(&tracer) {
        return;
    }
    let (held, (pid, res)) = ns.run(move || {
        let held = Process::fork(|| hold(v4(port), false, |_| ()));
        let args = ["bind".into(), "127.0.0.1".into(), port.to_string()];
        (held, run_helper(&args, None))
    });
    assert_eq!(res, -libc::EADDRINUSE, "the io_uring bind should fail");
    let ev = tracer.event();
    assert_eq!(ev["source"], expected_source(&tracer), "{ev:#}");
    assert_eq!(ev["syscall"], "bind", "{ev:#}");
    assert_eq!(ev["errno"], "EADDRINUSE", "{ev:#}");
    assert_eq!(ev["pid"], pid, "{ev:#}");
    assert_eq!(ev["comm"], "uring_helper", "{ev:#}");
    assert_eq!(ev["proto"], "tcp", "{ev:#}");
    assert_eq!(ev["family"], "ipv4", "{ev:#}");
    assert_eq!(ev["addr"], "127.0.0.1", "{ev:#}");
    assert_eq!(ev["port"], port, "{ev:#}");
    assert_eq!(ev["netns"], ns.inode, "{ev:#}");
    assert_eq!(holder(&ev)["pid"], held.pid, "{ev:#}");
    assert_eq!(holder(&ev)["state"], "LISTEN", "{ev:#}");
    assert_eq!(ev["reason"], "listener", "{ev:#}");
    let diagnosis = ev["diagnosis"].as_str().unwrap_or_default();
    assert!(
        diagnosis.contains(&held.pid.to_string()) && diagnosis.contains(&port.to_string()),
        "{ev:#}"
    );
    drop(held);
}

#[test]
fn io_uring_listen_eaddrinuse() {
    let ns = Netns::new("pw-uring-lsn");
    let port = port();
    let tracer = Tracer::start(&["--netns", &ns.arg()]);
    // IORING_OP_LISTEN came in the same release as IORING_OP_BIND.
    if !uring_capture_expected(&tracer) {
        return;
    }
    // Two sockets with SO_REUSEADDR may share a port until one listens: the
    // other's listen() then fails with EADDRINUSE.
    let (_ours, (pid, res)) = ns.run(move || {
        let a = socket(false, false);
        a.set_reuse_address(true).unwrap();
        let b = socket(false, false);
        b.set_reuse_address(true).unwrap();
        bind(&a, v4(port)).unwrap();
        bind(&b, v4(port)).unwrap();
        a.listen(1).unwrap();
        let args = ["listen".into(), b.as_raw_fd().to_string()];
        let r = run_helper(&args, Some(b.as_raw_fd()));
        ((a, b), r)
    });
    assert_eq!(res, -libc::EADDRINUSE, "the io_uring listen should fail");
    let ev = tracer.event();
    assert_eq!(ev["source"], expected_source(&tracer), "{ev:#}");
    assert_eq!(ev["syscall"], "listen", "{ev:#}");
    assert_eq!(ev["errno"], "EADDRINUSE", "{ev:#}");
    assert_eq!(ev["pid"], pid, "{ev:#}");
    assert_eq!(ev["addr"], "127.0.0.1", "{ev:#}");
    assert_eq!(ev["port"], port, "{ev:#}");
    assert!(ev["opts"]["reuseaddr"].as_bool().unwrap(), "{ev:#}");
    assert_eq!(holder(&ev)["pid"], std::process::id(), "{ev:#}");
    assert_eq!(ev["reason"], "listen_conflict", "{ev:#}");
}

/// A listener that io_uring put into LISTEN (which no syscall tracepoint
/// sees) enters the kernel's holder table as its listen completes: when the
/// listener is gone before userspace looks, the record names the process
/// that listened (the helper), not the one that bound the socket (this
/// test), which is all a bind's record would know.
#[test]
fn io_uring_listener_is_recorded_in_the_kernel() {
    let ns = Netns::new("pw-uring-rec");
    let port = port();
    let tracer = late_lookup_tracer(&ns);
    if !uring_capture_expected(&tracer) {
        return;
    }
    let helper_pid = ns.run(move || {
        let held = socket(false, false);
        bind(&held, v4(port)).unwrap();
        let args = ["listen".into(), held.as_raw_fd().to_string()];
        let (pid, res) = run_helper(&args, Some(held.as_raw_fd()));
        assert_eq!(res, 0, "the io_uring listen should work");
        drop(refused(v4(port), false));
        // Closed before the lookup: only the kernel's record is left.
        drop(held);
        pid
    });
    let ev = tracer.event();
    let h = holder(&ev);
    assert_eq!(h["pid"], helper_pid, "{ev:#}");
    assert_eq!(h["comm"], "uring_helper", "{ev:#}");
    assert_eq!(h["seen"], "kernel", "{ev:#}");
    assert_eq!(h["state"], "LISTEN", "{ev:#}");
    assert_eq!(ev["reason"], "listener", "{ev:#}");
}

/// A successful io_uring bind is not a failure: nothing is reported, and
/// the completion program returns before reading the request.
#[test]
fn io_uring_success_is_not_reported() {
    let ns = Netns::new("pw-uring-ok");
    let port = port();
    let tracer = Tracer::start(&["--netns", &ns.arg()]);
    if !uring_capture_expected(&tracer) {
        return;
    }
    let (_, res) =
        ns.run(move || run_helper(&["bind".into(), "127.0.0.1".into(), port.to_string()], None));
    assert_eq!(res, 0);
    // A later failure arrives, and it is the first event.
    ns.run(move || {
        let (a, b) = conflict(v4(port), false);
        drop((a, b));
    });
    let ev = tracer.event();
    assert_eq!(ev["source"], tracer.backend()["backend"], "{ev:#}");
}
