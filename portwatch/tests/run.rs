//! `portwatch run -- CMD`: real commands (nginx from Debian, python3) in
//! private network namespaces; their failures are reported, nobody else's,
//! and portwatch exits with CMD's status.

mod common;

use std::{
    net::TcpStream,
    os::unix::{fs::PermissionsExt as _, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

/// A private directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("portwatch-run-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `portwatch run ARGS` in the caller's network namespace (call it inside
/// `Netns::run`); portwatch's own lines go to `out`.
fn run(out: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("run").arg("--json").arg("--output").arg(out);
    if let Ok(backend) = std::env::var("PORTWATCH_TEST_BACKEND") {
        cmd.args(["--backend", &backend]);
    }
    cmd.arg("--")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("start portwatch run")
}

/// portwatch's lines from `--output`: (events, notices).
fn lines(out: &Path) -> (Vec<Value>, Vec<Value>) {
    let text = std::fs::read_to_string(out).unwrap();
    let all: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let (notices, events) = all.into_iter().partition(|v| v.get("type").is_some());
    (events, notices)
}

fn summary(notices: &[Value]) -> &Value {
    notices
        .iter()
        .find(|v| v["type"] == "summary")
        .unwrap_or_else(|| panic!("no summary in {notices:#?}"))
}

fn nginx_conf(dir: &Path, name: &str, port: u16) -> PathBuf {
    let d = dir.display();
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(
        &path,
        format!(
            "daemon off; master_process on; worker_processes 1;\n\
             pid {d}/{name}.pid; error_log stderr notice;\n\
             events {{ worker_connections 16; }}\n\
             http {{ access_log off;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
               uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               server {{ listen 127.0.0.1:{port}; return 204; }} }}\n"
        ),
    )
    .unwrap();
    path
}

/// A test harness restarting nginx while the old one still runs: the second
/// nginx's failures are reported with the first as holder, its own stderr
/// passes through untouched, and its exit status is portwatch's.
#[test]
fn second_nginx_under_run() {
    let ns = Netns::new("pw-runnginx");
    let scratch = Scratch::new("nginx");
    let port = port();
    let (first_conf, second_conf) = (
        nginx_conf(&scratch.0, "first", port),
        nginx_conf(&scratch.0, "second", port),
    );
    let first = ns.run(move || {
        let child = Command::new("/usr/sbin/nginx")
            .arg("-c")
            .arg(&first_conf)
            .args(["-e", "stderr"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is needed (cargo xtask test installs Debian's package)");
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(v4(port)).is_err() {
            assert!(Instant::now() < deadline, "first nginx never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    });
    let first_pid = first.id();
    let out = scratch.0.join("pw.ndjson");
    let out2 = out.clone();
    let second = second_conf.to_str().unwrap().to_owned();
    let result = ns.run(move || run(&out2, &["/usr/sbin/nginx", "-c", &second, "-e", "stderr"]));
    // The first nginx, ended by its pid (SIGQUIT: graceful stop).
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first_pid as i32),
        nix::sys::signal::Signal::SIGQUIT,
    );
    let mut first = first;
    let _ = first.wait();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(
        result.status.code(),
        Some(1),
        "nginx's own status: {stderr}"
    );
    assert!(
        stderr.contains(&format!("bind() to 127.0.0.1:{port} failed (98")),
        "nginx's stderr passes through: {stderr}"
    );
    assert!(result.stdout.is_empty(), "nothing of portwatch on stdout");
    let (events, notices) = lines(&out);
    let ev = events
        .first()
        .unwrap_or_else(|| panic!("no event: {notices:#?}"));
    assert_eq!(ev["comm"], "nginx", "{ev:#}");
    assert_eq!(ev["port"], port, "{ev:#}");
    assert_eq!(ev["errno"], "EADDRINUSE", "{ev:#}");
    assert_eq!(holder(ev)["pid"], first_pid, "{ev:#}");
    assert_eq!(ev["reason"], "listener", "{ev:#}");
    // nginx tries five times: every failure shown or counted.
    let s = summary(&notices);
    assert_eq!(s["matched"], 5, "{s}");
    assert_eq!(s["lost"], 0, "{s}");
}

/// A child that daemonizes (fork, setsid, fork) and then fails to bind is
/// still CMD's: it is reported. A failure of a process outside CMD's tree,
/// in the same namespace at the same time, is not.
#[test]
fn daemonized_grandchild_is_traced_and_outsiders_are_not() {
    let ns = Netns::new("pw-rundaemon");
    let scratch = Scratch::new("daemon");
    let port = port();
    let _held = ns.run(move || Process::fork(|| hold(v4(port), false, |_| {})));
    let report = scratch.0.join("grandchild.pid");
    let code = format!(
        "import os,socket,time,errno\n\
         if os.fork()==0:\n\
         \x20 os.setsid()\n\
         \x20 if os.fork()==0:\n\
         \x20   s=socket.socket()\n\
         \x20   try: s.bind(('127.0.0.1',{port}))\n\
         \x20   except OSError as e: assert e.errno==errno.EADDRINUSE\n\
         \x20   open('{}','w').write(str(os.getpid()))\n\
         \x20   os._exit(0)\n\
         \x20 os._exit(0)\n\
         time.sleep(1.5)\n",
        report.display()
    );
    let out = scratch.0.join("pw.ndjson");
    let out2 = out.clone();
    // The outsider: this test's own thread fails the same bind meanwhile.
    let outsider = ns.run(move || {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            drop(refused(v4(port), false));
        })
    });
    let result = ns.run(move || run(&out2, &["/usr/bin/python3", "-c", &code]));
    outsider.join().unwrap();
    assert_eq!(
        result.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let grandchild: u64 = std::fs::read_to_string(&report)
        .expect("the grandchild ran")
        .parse()
        .unwrap();
    let (events, notices) = lines(&out);
    assert_eq!(events.len(), 1, "{events:#?} {notices:#?}");
    let ev = &events[0];
    assert_eq!(ev["pid"], grandchild, "{ev:#}");
    assert_eq!(ev["port"], port, "{ev:#}");
    assert_ne!(ev["pid"], std::process::id(), "an outsider was reported");
    assert_eq!(summary(&notices)["matched"], 1);
}

/// Exit statuses: CMD's own, 128+N for a signal, 127 not found, 126 not
/// executable, 125 for portwatch's own bad command line; SIGTERM to
/// portwatch reaches CMD.
#[test]
fn exit_statuses_and_signals() {
    let scratch = Scratch::new("status");
    let out = scratch.0.join("pw.ndjson");
    let ns = Netns::new("pw-runstatus");
    let o = out.clone();
    let r = ns.run(move || run(&o, &["sh", "-c", "exit 7"]));
    assert_eq!(r.status.code(), Some(7));
    let o = out.clone();
    let r = ns.run(move || run(&o, &["sh", "-c", "kill -TERM $$"]));
    assert_eq!(r.status.code(), Some(128 + 15));
    let o = out.clone();
    let r = ns.run(move || run(&o, &["/nonexistent/program"]));
    assert_eq!(r.status.code(), Some(127));
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("cannot run /nonexistent/program"),
        "{stderr}"
    );
    let not_exec = scratch.0.join("not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    let o = out.clone();
    let ne = not_exec.to_str().unwrap().to_owned();
    let r = ns.run(move || run(&o, &[&ne]));
    assert_eq!(r.status.code(), Some(126));
    let r = Command::new(bin())
        .args(["run", "--port", "0x50", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(125));
    let r = Command::new(bin()).arg("run").output().unwrap();
    assert_eq!(r.status.code(), Some(125));
    // An existing symlink at --output is refused, not written through.
    let target = scratch.0.join("target");
    std::fs::write(&target, "keep").unwrap();
    let link = scratch.0.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let r = run(&link, &["true"]);
    assert_eq!(r.status.code(), Some(125));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");

    // SIGTERM to portwatch is forwarded: CMD ends by it, promptly.
    let out = scratch.0.join("term.ndjson");
    let mut child = Command::new(bin())
        .args(["run", "--output"])
        .arg(&out)
        .args(["--", "sleep", "30"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for ready (written to --output) before signalling.
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&out)
        .unwrap_or_default()
        .contains("ready")
    {
        assert!(Instant::now() < deadline, "portwatch run never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15), "{:?}", status.signal());
    assert!(started.elapsed() < Duration::from_secs(5));
    // No cgroup left behind.
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    let dir = Path::new("/sys/fs/cgroup/unified")
        .join(own.trim_start_matches('/'))
        .join(format!("portwatch-run-{}", child.id()));
    assert!(!dir.exists(), "{dir:?} left behind");
}

/// Without systemd as PID 1 (this host) CMD runs in a cgroup made under
/// portwatch's own, and portwatch says so: the `placed` notice names the
/// cgroup CMD reads in its own /proc/self/cgroup, and a bind() that CMD
/// makes as the first thing it does is caught (CMD is placed, and the
/// programs loaded with its cgroup, before it execs).
#[test]
fn run_says_where_cmd_runs_and_catches_its_first_bind() {
    let ns = Netns::new("pw-runplace");
    let scratch = Scratch::new("place");
    let port = port();
    let _held = ns.run(move || Process::fork(|| hold(v4(port), false, |_| {})));
    let seen = scratch.0.join("cgroup");
    let code = format!(
        "import socket\n\
         s=socket.socket()\n\
         try: s.bind(('127.0.0.1',{port}))\n\
         except OSError: pass\n\
         open('{}','w').write(open('/proc/self/cgroup').read())\n",
        seen.display()
    );
    let out = scratch.0.join("pw.ndjson");
    let out2 = out.clone();
    let result = ns.run(move || run(&out2, &["/usr/bin/python3", "-c", &code]));
    assert_eq!(
        result.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let cgroup = std::fs::read_to_string(&seen).expect("CMD ran");
    let cgroup = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("CMD is in a cgroup v2");
    let (events, notices) = lines(&out);
    let placed = notices
        .iter()
        .find(|v| v["type"] == "placed")
        .unwrap_or_else(|| panic!("no placed notice in {notices:#?}"));
    assert_eq!(placed["how"], "cgroup", "{placed:#}");
    assert_eq!(placed["cgroup"], cgroup, "{placed:#}");
    assert!(cgroup.contains("/portwatch-run-"), "{cgroup}");
    assert_eq!(events.len(), 1, "{events:#?} {notices:#?}");
    assert_eq!(events[0]["port"], port, "{:#}", events[0]);
}
