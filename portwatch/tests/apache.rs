//! The case every "Address already in use" write-up starts from, with the
//! real Debian packages: Apache listens on [::]:P (dual stack: its master as
//! root, workers as www-data) and nginx, configured with `listen P; listen
//! [::]:P;`, cannot start. And the mirror case: nginx's own `[::]:P
//! ipv6only=off` blocking its own `0.0.0.0:P`. Each runs in a private
//! network namespace; only processes started here are stopped, by pid.

mod common;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::{apache::Apache, *};
use serde_json::Value;

/// A private directory for configs and pid files, removed on drop. 0711:
/// Apache's www-data workers must be able to traverse it.
fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// Runs nginx with `listen` lines `listens` until it gives up (about 2.5 s:
/// five tries 500 ms apart); returns its pid and stderr. Call inside
/// `Netns::run`.
fn failing_nginx(dir: &Path, listens: &str) -> (u32, String) {
    let d = dir.display();
    let conf = dir.join("nginx.conf");
    write(
        &conf,
        &format!(
            "daemon off; master_process on; worker_processes 1;\n\
             pid {d}/nginx.pid; error_log stderr notice;\n\
             events {{ worker_connections 16; }}\n\
             http {{ access_log off;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
               uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               server {{ {listens} return 204; }} }}\n"
        ),
    );
    let child = Command::new("/usr/sbin/nginx")
        .arg("-c")
        .arg(&conf)
        .args(["-e", "stderr"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nginx is needed (cargo xtask test installs Debian's package)");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "nginx should have failed to bind");
    (pid, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Events until none arrives for a second.
fn events(tracer: &Tracer) -> Vec<Value> {
    let mut all = vec![tracer.event()];
    while let Some(ev) = tracer.next_event(Duration::from_secs(1)) {
        all.push(ev);
    }
    all
}

fn first_at<'a>(events: &'a [Value], family: &str, addr: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["family"] == family && e["addr"] == addr)
        .unwrap_or_else(|| panic!("no {family} {addr} event in {events:#?}"))
}

#[test]
fn apache_on_v6_wildcard_blocks_nginx() {
    let ns = Netns::new("pw-apache");
    let scratch = Scratch::new("apache");
    let port = port();
    let dir = scratch.0.clone();
    let apache = ns.run(move || Apache::start(&dir, port));
    let processes = apache.processes();
    assert!(
        processes.len() >= 3,
        "master and two workers: {processes:?}"
    );
    let tracer = Tracer::start(&["--netns", &ns.arg(), "--comm", "nginx"]);
    let dir = scratch.0.clone();
    let (nginx_pid, stderr) =
        ns.run(move || failing_nginx(&dir, &format!("listen {port}; listen [::]:{port};")));
    assert!(
        stderr.contains(&format!("bind() to 0.0.0.0:{port} failed (98"))
            && stderr.contains(&format!("bind() to [::]:{port} failed (98")),
        "{stderr}"
    );
    let all = events(&tracer);
    drop(tracer);
    // Two failures, two events: the IPv6 one is not folded into the IPv4 one.
    let v4 = first_at(&all, "ipv4", "0.0.0.0");
    let v6 = first_at(&all, "ipv6", "::");
    for ev in [v4, v6] {
        assert_eq!(ev["pid"], nginx_pid, "{ev:#}");
        let h = holder(ev);
        assert_eq!(h["pid"], apache.pid, "the root master: {ev:#}");
        assert_eq!(h["comm"], "apache2", "{ev:#}");
        assert_eq!(h["uid"], 0, "{ev:#}");
        assert_eq!(h["addr"], "::", "{ev:#}");
        let pids: Vec<u64> = h["pids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect();
        for p in &processes {
            assert!(pids.contains(&u64::from(*p)), "worker {p} missing: {ev:#}");
        }
        let fix = ev["fix"].as_str().unwrap();
        assert!(
            fix.starts_with(&format!(
                "Another program holds it: stop it cleanly, `kill {}`",
                apache.pid
            )),
            "the fix must lead with stopping Apache: {ev:#}"
        );
        assert!(
            !fix.contains("ipv6only=on"),
            "nginx advice for Apache's socket: {ev:#}"
        );
        assert!(
            ev["diagnosis"]
                .as_str()
                .unwrap()
                .contains("another program: apache2 (pid"),
            "{ev:#}"
        );
    }
    assert_eq!(v4["reason"], "dual_stack", "{v4:#}");
    assert_eq!(holder(v4)["v6only"], false, "{v4:#}");
    assert!(
        v4["diagnosis"]
            .as_str()
            .unwrap()
            .contains("also takes every IPv4 address"),
        "{v4:#}"
    );
    assert_eq!(v6["reason"], "listener", "{v6:#}");
    drop(apache);
}

/// nginx's own `[::]:P ipv6only=off` against its own `0.0.0.0:P`: the fix is
/// nginx's own configuration, not stopping anything.
#[test]
fn nginx_dual_stack_against_itself() {
    let ns = Netns::new("pw-selfdual");
    let scratch = Scratch::new("selfdual");
    let port = port();
    let tracer = Tracer::start(&["--netns", &ns.arg(), "--comm", "nginx"]);
    let dir = scratch.0.clone();
    let (nginx_pid, stderr) = ns.run(move || {
        failing_nginx(
            &dir,
            &format!("listen {port}; listen [::]:{port} ipv6only=off;"),
        )
    });
    assert!(
        stderr.contains(&format!("bind() to [::]:{port} failed (98")),
        "{stderr}"
    );
    let all = events(&tracer);
    let ev = first_at(&all, "ipv6", "::");
    assert_eq!(ev["pid"], nginx_pid, "{ev:#}");
    assert_eq!(ev["reason"], "dual_stack", "{ev:#}");
    assert_eq!(holder(ev)["pid"], nginx_pid, "{ev:#}");
    assert!(
        ev["diagnosis"]
            .as_str()
            .unwrap()
            .contains("this same process"),
        "{ev:#}"
    );
    let fix = ev["fix"].as_str().unwrap();
    assert!(fix.contains("nginx's own listen lines"), "{ev:#}");
    assert!(
        fix.contains(&format!("listen [::]:{port} ipv6only=off;")),
        "{ev:#}"
    );
    assert!(!fix.contains("kill"), "{ev:#}");
}
