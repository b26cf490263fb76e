//! Real nginx from Debian's package, started twice on one port: the second
//! one's `bind() ... failed (98: Address already in use)` must be captured.

mod common;

use std::{
    net::TcpStream,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// A private directory for configs, pid files and temp paths, removed on drop.
fn config(dir: &Path, name: &str, port: u16) -> PathBuf {
    let d = dir.display();
    let conf = format!(
        "daemon off; master_process on; worker_processes 1;\n\
         pid {d}/{name}.pid; error_log stderr notice;\n\
         events {{ worker_connections 16; }}\n\
         http {{ access_log off;\n\
           client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
           uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
           server {{ listen 127.0.0.1:{port}; return 204; }} }}\n"
    );
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(&path, conf).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn nginx(conf: &Path) -> Child {
    Command::new("/usr/sbin/nginx")
        .arg("-c")
        .arg(conf)
        .arg("-e")
        .arg("stderr")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nginx is needed (cargo xtask test installs Debian's package)")
}

/// Ends an nginx we started, by its PID: SIGQUIT is nginx's graceful stop.
fn stop(mut child: Child) -> String {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGQUIT,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    err
}

/// The tracer watches from before the first nginx starts: the kernel records
/// the first master binding the port.
#[test]
fn second_nginx_on_the_same_port() {
    two_nginx(true);
}

/// The tracer starts after the first nginx: no kernel record, so the holder
/// comes from sock_diag and /proc alone, and must still be the master.
#[test]
fn second_nginx_with_the_first_already_running() {
    two_nginx(false);
}

fn two_nginx(tracer_first: bool) {
    let ns = Netns::new("pw-nginx");
    let scratch = Scratch::new("nginx");
    let port = port();
    let (first_conf, second_conf) = (
        config(&scratch.0, "first", port),
        config(&scratch.0, "second", port),
    );
    let args = ["--netns", &ns.arg(), "--comm", "nginx"];
    let early = tracer_first.then(|| Tracer::start(&args));

    let first = ns.run(move || {
        let first = nginx(&first_conf);
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(v4(port)).is_err() {
            assert!(Instant::now() < deadline, "first nginx never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        first
    });
    let tracer = early.unwrap_or_else(|| Tracer::start(&args));
    let second = ns.run(move || {
        let mut second = nginx(&second_conf);
        // nginx retries bind() five times, half a second apart, then gives up.
        let status = second.wait().unwrap();
        (second, status)
    });
    let (mut second, status) = second;
    let mut second_err = String::new();
    std::io::Read::read_to_string(second.stderr.as_mut().unwrap(), &mut second_err).unwrap();
    let first_pid = first.id();

    assert!(!status.success(), "second nginx should fail: {second_err}");
    assert!(
        second_err.contains(&format!(
            "bind() to 127.0.0.1:{port} failed (98: Address already in use)"
        )),
        "{second_err}"
    );
    let ev = tracer.event();
    assert_eq!(ev["comm"], "nginx", "{ev}");
    assert_eq!(ev["pid"], second.id(), "{ev}");
    assert_ne!(ev["pid"], first_pid, "{ev}");
    assert_eq!(ev["syscall"], "bind", "{ev}");
    assert_eq!(ev["errno"], "EADDRINUSE", "{ev}");
    assert_eq!(ev["addr"], "127.0.0.1", "{ev}");
    assert_eq!(ev["port"], port, "{ev}");
    assert_eq!(ev["proto"], "tcp", "{ev}");
    // nginx sets SO_REUSEADDR on its listening sockets.
    assert_eq!(ev["opts"]["reuseaddr"], true, "{ev}");
    // The holder is the first nginx's master; its worker shares the socket.
    assert_eq!(ev["reason"], "listener", "{ev:#}");
    let h = holder(&ev);
    assert_eq!(h["pid"], first_pid, "{ev:#}");
    assert_eq!(h["comm"], "nginx", "{ev:#}");
    assert_eq!(h["state"], "LISTEN", "{ev:#}");
    assert_eq!(h["exited"], false, "{ev:#}");
    assert!(
        h["cmdline"]
            .as_str()
            .unwrap()
            .starts_with("nginx: master process"),
        "{ev:#}"
    );
    assert_eq!(
        h["pids"].as_array().unwrap().len(),
        2,
        "master and worker: {ev:#}"
    );
    let seen = if tracer_first {
        "kernel_and_sock_diag"
    } else {
        "sock_diag"
    };
    assert_eq!(h["seen"], seen, "{ev:#}");
    assert!(
        ev["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("kill {first_pid}")),
        "{ev:#}"
    );
    stop(first);
    // All five attempts are accounted for: shown or folded.
    let (_, rest, notices) = tracer.stop();
    let shown: u64 = std::iter::once(&ev)
        .chain(&rest)
        .map(|e| 1 + e["folded"].as_u64().unwrap())
        .sum();
    let tail: u64 = notices
        .iter()
        .filter(|v| v["type"] == "repeat")
        .map(|v| v["count"].as_u64().unwrap())
        .sum();
    let attempts = second_err.matches("Address already in use").count() as u64;
    assert_eq!(shown + tail, attempts, "{notices:?}");
}
