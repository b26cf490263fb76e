//! Real nginx from Debian's package, started twice on one port: the second
//! one's `bind() ... failed (98: Address already in use)` must be captured.

mod common;

use std::{
    net::TcpStream,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// A private directory for configs, pid files and temp paths, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("portwatch-nginx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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

#[test]
fn second_nginx_on_the_same_port() {
    let ns = Netns::new("pw-nginx");
    let scratch = Scratch::new();
    let port = port();
    let (first_conf, second_conf) = (
        config(&scratch.0, "first", port),
        config(&scratch.0, "second", port),
    );
    let tracer = Tracer::start(&["--netns", &ns.arg(), "--comm", "nginx"]);

    let (first, second) = ns.run(move || {
        let first = nginx(&first_conf);
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(v4(port)).is_err() {
            assert!(Instant::now() < deadline, "first nginx never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut second = nginx(&second_conf);
        // nginx retries bind() five times, half a second apart, then gives up.
        let status = second.wait().unwrap();
        (first, (second, status))
    });
    let (mut second, status) = second;
    let mut second_err = String::new();
    std::io::Read::read_to_string(second.stderr.as_mut().unwrap(), &mut second_err).unwrap();
    let first_pid = first.id();
    stop(first);

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
