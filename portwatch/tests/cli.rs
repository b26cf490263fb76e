//! Bad input and unsupported environments: one clear line, a documented exit
//! status, nothing loaded.

mod common;

use std::process::{Command, Output};

use common::bin;

fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run portwatch")
}

/// Asserts exit `code` and a single stderr line containing `needle`.
fn fails(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "want one line, got: {stderr}");
    assert!(stderr.starts_with("portwatch: "), "{stderr}");
    assert!(stderr.contains(needle), "'{needle}' not in: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn bad_port() {
    fails(
        &run(&["watch", "--port", "70000"]),
        2,
        "'70000' is not a port",
    );
    fails(
        &run(&["watch", "--port", "80,http"]),
        2,
        "'http' is not a port",
    );
    fails(&run(&["watch", "--port", "90-80"]), 2, "backwards");
}

#[test]
fn bad_lookup_timeout() {
    fails(
        &run(&["watch", "--lookup-timeout", "0"]),
        2,
        "0 is not in 1..=60000",
    );
}

#[test]
fn bad_errno() {
    fails(
        &run(&["watch", "--errno", "EADDRINUSE,ENOSUCH"]),
        2,
        "unknown errno name 'ENOSUCH'",
    );
    fails(&run(&["watch", "--errno", "500"]), 2, "out of range");
    fails(
        &run(&["watch", "--errno", "EACCES", "--all-errors"]),
        2,
        "cannot be used with",
    );
}

#[test]
fn bad_cgroup_comm_netns_uid_ring() {
    fails(
        &run(&["watch", "--cgroup", "/sys/fs/cgroup/no-such-group"]),
        2,
        "no-such-group",
    );
    fails(
        &run(&["watch", "--comm", "a-comm-longer-than-15"]),
        2,
        "1 to 15 bytes",
    );
    fails(
        &run(&["watch", "--netns", "/run/netns/no-such-ns"]),
        2,
        "no-such-ns",
    );
    fails(
        &run(&["watch", "--uid", "no-such-user-x"]),
        2,
        "no such user",
    );
    fails(&run(&["watch", "--ring-size", "1000"]), 2, "power of two");
    fails(
        &run(&["watch", "--stats-interval", "0"]),
        2,
        "--stats-interval",
    );
    fails(&run(&["watch", "--backend", "kprobe"]), 2, "kprobe");
    fails(&run(&["frobnicate"]), 2, "frobnicate");
}

#[test]
fn missing_btf_file() {
    fails(
        &run(&["watch", "--btf", "/nonexistent/vmlinux"]),
        3,
        "BTF file /nonexistent/vmlinux does not exist",
    );
}

#[test]
fn not_root() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(bin())
        .arg("watch")
        .output()
        .expect("setpriv (util-linux) is needed");
    fails(&out, 3, "needs root (or CAP_BPF and CAP_PERFMON)");
}

#[test]
fn forced_fexit_either_works_or_says_why() {
    match common::Tracer::try_start(&["--backend", "fexit"]) {
        Ok(tracer) => {
            assert_eq!(tracer.backend()["backend"], "fexit");
            let (status, _, _) = tracer.stop();
            assert!(status.success(), "{status}");
        }
        // This project's machines refuse fexit (../shared/PLATFORM.md).
        // try_start returns Err only for exit status 3.
        Err(refusal) => {
            assert_eq!(refusal.lines().count(), 1, "want one line: {refusal}");
            assert!(
                refusal.starts_with("portwatch: the fexit backend is not available"),
                "{refusal}"
            );
            assert!(refusal.contains("--backend tracepoint"), "{refusal}");
        }
    }
}

#[test]
fn help_teaches() {
    let out = run(&["watch", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "EXAMPLES:",
        "EXIT STATUS:",
        "--port",
        "--errno",
        "--backend",
        "ready",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}

#[test]
fn usage_errors_name_what_was_wrong_in_one_line() {
    fails(
        &run(&[]),
        2,
        "a subcommand is needed: watch, who, wait, run",
    );
    fails(
        &run(&["wach"]),
        2,
        "unknown subcommand 'wach' (did you mean 'watch'?)",
    );
    fails(&run(&["who"]), 2, "missing argument <PORT");
    fails(
        &run(&["watch", "--bogus"]),
        2,
        "unexpected argument '--bogus'",
    );
    fails(
        &run(&["watch", "--backend", "kprobe"]),
        2,
        "one of: auto, fexit, tracepoint",
    );
    fails(
        &run(&["who", "80", "--json=yes"]),
        2,
        "unexpected value 'yes' for '--json'",
    );
    // `run`'s own failures are 125: 1 and 2 may be CMD's.
    fails(&run(&["run"]), 125, "missing argument <CMD>");
}
