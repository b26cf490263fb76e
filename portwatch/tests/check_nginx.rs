//! `portwatch check --nginx` against the real nginx (Debian's package):
//! each case predicts with check, then starts nginx on the same
//! configuration in the same private network namespace, and holds the
//! prediction to what nginx did: check says "would fail" exactly when
//! nginx fails, on the addresses nginx names in its `bind() to ADDR
//! failed (98: ...)` lines. No eBPF. Only processes started here are
//! stopped, by pid.

mod common;

use std::{
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{apache::Apache, preflight::netns, *};
use serde_json::Value;

const NGINX: &str = "/usr/sbin/nginx";

/// Writes an nginx configuration in `dir` with these `http` servers (and
/// `extra` at the top level), its pid file and temp paths private.
fn config(dir: &Path, name: &str, servers: &str, extra: &str) -> PathBuf {
    let d = dir.display();
    let conf = dir.join(format!("{name}.conf"));
    write(
        &conf,
        &format!(
            "daemon off; master_process on; worker_processes 1;\n\
             pid {d}/{name}.pid; error_log stderr notice;\n\
             events {{ worker_connections 16; }}\n\
             http {{ access_log off;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
               uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
             {servers}\n}}\n{extra}"
        ),
    );
    conf
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// `portwatch check ARGS --json` in `ns`: its exit status, one object per
/// binding, and stderr.
fn check(ns: &Netns, args: &[&str]) -> (i32, Vec<Value>, String) {
    let out = run_check(ns, args, true);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (
        out.status.code().expect("exit status"),
        preflight::json_lines(&out),
        stderr,
    )
}

fn run_check(ns: &Netns, args: &[&str], json: bool) -> Output {
    let mut args = args.to_vec();
    if json {
        args.push("--json");
    }
    preflight::run_check(ns, None, &args)
}

/// The outcome for `binding` (`0.0.0.0:80/tcp`).
fn outcome<'a>(v: &'a [Value], binding: &str) -> &'a Value {
    v.iter()
        .find(|o| o["binding"] == binding)
        .unwrap_or_else(|| panic!("no {binding} in {v:#?}"))
}

/// Starts nginx on `conf` in the calling thread's namespace (call inside
/// `Netns::run`): Ok once it listens on `port`, Err(stderr) when it exits
/// first (it retries bind() five times, 500 ms apart, then gives up).
fn start(conf: &Path, port: u16) -> Result<Child, String> {
    let mut child = Command::new(NGINX)
        .arg("-c")
        .arg(conf)
        .args(["-e", "stderr"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nginx is needed (cargo xtask test installs Debian's package)");
    let deadline = Instant::now() + WAIT;
    loop {
        if child.try_wait().unwrap().is_some() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return Err(err);
        }
        // nginx writes its pid file once every socket is bound (another
        // program may already answer on the port).
        let pid = std::fs::read_to_string(conf.with_extension("pid")).unwrap_or_default();
        if pid.trim() == child.id().to_string() && TcpStream::connect(v4(port)).is_ok() {
            return Ok(child);
        }
        assert!(
            Instant::now() < deadline,
            "nginx neither listened nor exited"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ends an nginx we started, by its pid: SIGQUIT, nginx's graceful stop.
fn stop(mut child: Child) {
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
}

/// An nginx started by a test, stopped (by pid) when dropped.
struct Running(Option<Child>);

impl Running {
    fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            stop(c);
        }
    }
}

/// nginx's own name of an address in its error lines.
fn nginx_addr(o: &Value) -> String {
    let addr: SocketAddr = format!(
        "{}:{}",
        match o["addr"].as_str().unwrap() {
            a if a.contains(':') => format!("[{a}]"),
            a => a.to_owned(),
        },
        o["port"]
    )
    .parse()
    .unwrap();
    addr.to_string()
}

/// The prediction against what nginx did: exit status 1 exactly when
/// nginx failed; every address nginx failed to bind is one check said
/// would fail; and every binding check said a holder is in the way of,
/// nginx failed on. (Two entries of the plan in each other's way fail
/// only the second nginx binds; check flags both.)
fn agrees(code: i32, v: &[Value], nginx: &Result<Child, String>) {
    let err = nginx.as_ref().err().map_or("", String::as_str);
    assert_eq!(
        code == 1,
        nginx.is_err(),
        "check said {code}; nginx: {err}\n{v:#?}"
    );
    for o in v.iter().filter(|o| o.get("binding").is_some()) {
        let failed = err.contains(&format!("bind() to {} failed (98", nginx_addr(o)));
        if failed {
            assert_eq!(o["fails"], true, "nginx failed on it: {err}\n{o:#}");
        }
        if o["fails"] == true && o["conflicts_with"].as_array().unwrap().is_empty() {
            assert!(failed, "check said it fails, nginx bound it: {err}\n{o:#}");
        }
    }
}

/// Apache holds [::]:P dual-stack; nginx wants `listen P; listen [::]:P;`:
/// both of its sockets fail, the IPv4 one through Apache's IPv6 wildcard.
#[test]
fn nginx_check_dual_stack_clash_with_apache() {
    let ns = netns("pw-cn-apache");
    let scratch = Scratch::new("cn-apache");
    let port = port();
    let dir = scratch.0.clone();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let apache = ns.run(move || Apache::start(&dir, port));
    let conf = config(
        &scratch.0,
        "nginx",
        &format!("server {{ listen {port}; listen [::]:{port}; return 204; }}"),
        "",
    );
    let arg = format!("--nginx={}", conf.display());
    let (code, v, _) = check(&ns, &[&arg]);
    assert_eq!(code, 1, "{v:#?}");
    let v4 = outcome(&v, &format!("0.0.0.0:{port}/tcp"));
    assert_eq!(v4["verdict"], "dual-stack", "{v4:#}");
    assert_eq!(v4["holders"][0]["pid"], apache.pid, "{v4:#}");
    assert_eq!(v4["holders"][0]["comm"], "apache2", "{v4:#}");
    let v6 = outcome(&v, &format!("[::]:{port}/tcp"));
    assert_eq!(v6["verdict"], "taken", "{v6:#}");
    // nginx's own options: SO_REUSEADDR, and IPV6_V6ONLY on [::].
    assert_eq!(
        v6["from"][0],
        format!("{}:7 listen [::]:{port}", conf.display())
    );
    let started = ns.run(move || start(&conf, port));
    agrees(code, &v, &started);
}

/// `reuseport`: beside a holder without SO_REUSEPORT, `listen P reuseport`
/// fails; nginx's own `listen 127.0.0.1:P reuseport` beside `listen P
/// reuseport` is two sockets that share the port (one uid). Beside a
/// holder that set SO_REUSEPORT (same uid) nginx binds, and check says so:
/// sock_diag does not show the holder's option, its socket does.
#[test]
fn nginx_check_reuseport() {
    let ns = netns("pw-cn-reuse");
    let scratch = Scratch::new("cn-reuse");
    let (p, q, r) = (port(), port() + 1, port() + 2);
    let _shared = ns.run(move || {
        Process::fork(move || {
            hold(SocketAddr::from(([0, 0, 0, 0], p)), false, |s| {
                s.set_reuse_port(true).unwrap();
            })
        })
    });
    let _plain = ns.run(move || {
        Process::fork(move || hold(SocketAddr::from(([0, 0, 0, 0], q)), false, |_| {}))
    });
    let predict = |name: &str, servers: String, port: u16| {
        let conf = config(&scratch.0, name, &servers, "");
        let arg = format!("--nginx={}", conf.display());
        let (code, v, _) = check(&ns, &[&arg]);
        let started = ns.run(move || start(&conf, port));
        (code, v, started)
    };
    let (code, v, started) = predict(
        "plain",
        format!("server {{ listen {q} reuseport; return 204; }}"),
        q,
    );
    assert_eq!(code, 1, "{v:#?}");
    assert_eq!(v[0]["verdict"], "taken", "{v:#?}");
    agrees(code, &v, &started);
    let (code, v, started) = predict(
        "own",
        format!("server {{ listen 127.0.0.1:{r} reuseport; return 204; }} server {{ listen {r} reuseport; return 204; }}"),
        r,
    );
    assert_eq!(code, 0, "{v:#?}");
    assert_eq!(v.len(), 2, "two sockets: {v:#?}");
    agrees(code, &v, &started);
    drop(Running(started.ok()));
    let (code, v, started) = predict(
        "shared",
        format!("server {{ listen {p} reuseport; return 204; }}"),
        p,
    );
    // The holder's SO_REUSEPORT is read from its socket (pidfd_getfd).
    assert_eq!(code, 0, "{v:#?}");
    assert!(
        matches!(v[0]["verdict"].as_str(), Some("free" | "ephemeral-risk")),
        "{v:#?}"
    );
    agrees(code, &v, &started);
    assert!(started.is_ok(), "the holder set SO_REUSEPORT: {started:?}");
    drop(Running(started.ok()));
}

/// `listen [::]:P ipv6only=off` beside `listen P`: two sockets of one
/// nginx, each in the other's way; nginx fails on the second it binds.
#[test]
fn nginx_check_ipv6only_off_beside_plain_listen() {
    let ns = netns("pw-cn-v6off");
    let scratch = Scratch::new("cn-v6off");
    let port = port();
    let conf = config(
        &scratch.0,
        "nginx",
        &format!("server {{ listen {port}; return 204; }}\nserver {{ listen [::]:{port} ipv6only=off; return 204; }}"),
        "",
    );
    let arg = format!("--nginx={}", conf.display());
    let (code, v, _) = check(&ns, &[&arg]);
    assert_eq!(code, 1, "{v:#?}");
    for b in [format!("0.0.0.0:{port}/tcp"), format!("[::]:{port}/tcp")] {
        let o = outcome(&v, &b);
        assert_eq!(o["verdict"], "dual-stack", "{o:#}");
        assert_eq!(o["conflicts_with"].as_array().unwrap().len(), 1, "{o:#}");
    }
    let started = ns.run(move || start(&conf, port));
    let err = started.as_ref().err().cloned().unwrap_or_default();
    assert!(
        err.contains(&format!("bind() to [::]:{port} failed (98")),
        "{err}"
    );
    agrees(code, &v, &started);
}

/// One address in several server blocks, and a specific address beside
/// the wildcard of its port: one socket, no conflict.
#[test]
fn nginx_check_one_address_in_several_server_blocks() {
    let ns = netns("pw-cn-shared");
    let scratch = Scratch::new("cn-shared");
    let port = port();
    let conf = config(
        &scratch.0,
        "nginx",
        &format!(
            "server {{ listen {port} default_server; return 204; }}\n\
             server {{ listen {port}; server_name a.example; return 204; }}\n\
             server {{ listen 127.0.0.1:{port}; server_name b.example; return 204; }}"
        ),
        "",
    );
    let arg = format!("--nginx={}", conf.display());
    let (code, v, _) = check(&ns, &[&arg]);
    assert_eq!(code, 0, "{v:#?}");
    assert_eq!(v.len(), 1, "one socket: {v:#?}");
    assert_eq!(v[0]["binding"], format!("0.0.0.0:{port}/tcp"), "{v:#?}");
    assert_eq!(v[0]["verdict"], "free", "{v:#?}");
    let from = v[0]["from"].as_array().unwrap();
    assert_eq!(from.len(), 3, "{v:#?}");
    assert!(
        from[2].as_str().unwrap().ends_with(&format!(
            ":9 listen 127.0.0.1:{port} (served by the 0.0.0.0:{port}/tcp socket)"
        )),
        "{v:#?}"
    );
    let started = ns.run(move || start(&conf, port));
    agrees(code, &v, &started);
    let nginx = Running(Some(started.unwrap()));
    // nginx made one socket, as predicted: its master holds it alone.
    let p = port.to_string();
    let (_, w) = who(&ns, &[&p]);
    let sockets = w["sockets"].as_array().unwrap();
    assert_eq!(sockets.len(), 1, "{w:#}");
    assert_eq!(sockets[0]["addr"], "0.0.0.0", "{w:#}");
    assert_eq!(sockets[0]["pid"], nginx.pid(), "{w:#}");
}

/// A server block without `listen`: nginx's default, `*:80` as root; taken
/// while something holds 80, free once it is gone, as nginx finds it.
#[test]
fn nginx_check_server_without_listen() {
    let ns = netns("pw-cn-deflt");
    let scratch = Scratch::new("cn-deflt");
    let conf = config(&scratch.0, "nginx", "server { return 204; }", "");
    let arg = format!("--nginx={}", conf.display());
    let mut holder =
        ns.run(|| Process::fork(|| hold(SocketAddr::from(([0, 0, 0, 0], 80)), false, |_| {})));
    let (code, v, _) = check(&ns, &[&arg]);
    assert_eq!(code, 1, "{v:#?}");
    let o = outcome(&v, "0.0.0.0:80/tcp");
    assert_eq!(o["verdict"], "taken", "{o:#}");
    assert_eq!(o["holders"][0]["pid"], holder.pid, "{o:#}");
    assert!(
        o["from"][0]
            .as_str()
            .unwrap()
            .ends_with(":7 server without listen: nginx's default *:80 (as root)"),
        "{o:#}"
    );
    let c = conf.clone();
    let started = ns.run(move || start(&c, 80));
    agrees(code, &v, &started);
    holder.kill();
    let (code, v, _) = check(&ns, &[&arg]);
    assert_eq!(
        (code, &v[0]["verdict"]),
        (0, &Value::from("free")),
        "{v:#?}"
    );
    let started = ns.run(move || start(&conf, 80));
    agrees(code, &v, &started);
    drop(Running(started.ok()));
    // Not as root, nginx's default is *:8000.
    let (_, v, _) = check(&ns, &[&arg, "--user", "65534"]);
    assert_eq!(v[0]["binding"], "0.0.0.0:8000/tcp", "{v:#?}");
}

/// The seed's case: nginx started again while the same configuration's
/// nginx still runs. A start is "taken", by that master, with nginx's own
/// fix; `--reload` is "yours"; `--wait` waits for the old master to quit.
#[test]
fn nginx_check_same_nginx_running_start_reload_wait() {
    let ns = netns("pw-cn-again");
    let scratch = Scratch::new("cn-again");
    let port = port();
    let conf = config(
        &scratch.0,
        "nginx",
        &format!("server {{ listen {port}; return 204; }}"),
        "",
    );
    let c = conf.clone();
    let first = Running(Some(ns.run(move || start(&c, port)).expect("first nginx")));
    let master = first.pid();
    let arg = format!("--nginx={}", conf.display());

    let (code, v, _) = check(&ns, &[&arg]);
    assert_eq!(code, 1, "{v:#?}");
    let o = &v[0];
    assert_eq!(o["verdict"], "taken", "{o:#}");
    assert_eq!(o["holders"][0]["pid"], master, "{o:#}");
    let diagnosis = o["diagnosis"].as_str().unwrap();
    assert!(
        diagnosis.contains(&format!(
            "the running nginx of this same configuration (master pid {master})"
        )),
        "{o:#}"
    );
    let fix = o["fix"].as_str().unwrap();
    let c = conf.display();
    assert!(fix.contains(&format!("`nginx -c {c} -s reload`")), "{o:#}");
    assert!(fix.contains(&format!("`portwatch wait {port}`")), "{o:#}");
    assert!(!fix.contains("kill"), "{o:#}");
    let c = conf.clone();
    let second = ns.run(move || start(&c, port));
    assert!(second.is_err(), "a second nginx beside the first");
    agrees(code, &v, &second);

    let (code, v, _) = check(&ns, &[&arg, "--reload"]);
    assert_eq!(code, 0, "{v:#?}");
    assert_eq!(v[0]["verdict"], "yours", "{v:#?}");
    assert!(
        v[0]["diagnosis"]
            .as_str()
            .unwrap()
            .contains(&format!("held by the running nginx of this configuration (master pid {master}), which a reload keeps")),
        "{v:#?}"
    );
    // And a reload does succeed, the same master keeping the socket.
    let c = conf.clone();
    let reload = ns.run(move || {
        Command::new(NGINX)
            .arg("-c")
            .arg(&c)
            .args(["-s", "reload"])
            .output()
            .unwrap()
    });
    assert!(reload.status.success(), "{reload:?}");
    let p = port.to_string();
    let (_, w) = who(&ns, &[&p]);
    assert_eq!(w["sockets"][0]["pid"], master, "{w:#}");

    // The restart loop: SIGQUIT, then check --wait before the start.
    let mut first = first;
    let child = first.0.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGQUIT,
    )
    .unwrap();
    let (code, v, stderr) = check(&ns, &[&arg, "--wait=20s"]);
    assert_eq!(
        (code, &v[0]["verdict"]),
        (0, &Value::from("free")),
        "{v:#?} {stderr}"
    );
    stop(child);
    let started = ns.run(move || start(&conf, port));
    agrees(code, &v, &started);
    drop(Running(started.ok()));
}

/// `--nginx` alone runs `nginx -T` for nginx's default configuration: here
/// a private mount namespace puts the test's directory on /etc/nginx.
fn check_default(ns: &Netns, etc: &Path, args: &[&str]) -> Output {
    let script = format!(
        "mount --bind {} /etc/nginx && exec \"$0\" check --nginx \"$@\"",
        etc.display()
    );
    let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
    ns.run(move || {
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script, bin()])
            .args(&args)
            .output()
            .expect("run unshare")
    })
}

#[test]
fn nginx_check_runs_nginx_t_for_the_default_configuration() {
    let ns = netns("pw-cn-dump");
    let scratch = Scratch::new("cn-dump");
    let port = port();
    let etc = scratch.0.join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::create_dir(etc.join("sites")).unwrap();
    write(
        &etc.join("sites/a.conf"),
        &format!("server {{\n    listen {port};\n    return 204;\n}}\n"),
    );
    config(&etc, "nginx", "include sites/*.conf;", "");
    let held = ns.run(move || {
        Process::fork(move || hold(SocketAddr::from(([127, 0, 0, 1], port)), false, |_| {}))
    });
    let out = check_default(&ns, &etc, &["--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{:?}", out.stderr);
    let v: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(v["binding"], format!("0.0.0.0:{port}/tcp"), "{v:#}");
    assert_eq!(v["verdict"], "taken", "{v:#}");
    assert_eq!(v["holders"][0]["pid"], held.pid, "{v:#}");
    // The place is the included file's, as nginx -T's dump names it.
    assert_eq!(
        v["from"][0],
        format!("/etc/nginx/sites/a.conf:2 listen {port}"),
        "{v:#}"
    );
    // nginx -T failing: its [emerg] line, at its file:line, exit 2.
    write(
        &etc.join("sites/a.conf"),
        &format!("server {{\n    listen {port} bogus;\n}}\n"),
    );
    let out = check_default(&ns, &etc, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(
        err.trim(),
        "portwatch: check: /etc/nginx/sites/a.conf:2: invalid parameter \"bogus\"",
        "{err}"
    );
}

/// Bad input, read directly: one line, file:line(:col), exit 2.
#[test]
fn nginx_check_bad_input() {
    let ns = netns("pw-cn-bad");
    let scratch = Scratch::new("cn-bad");
    let cases = [
        (
            "server { listen 80 bogus; }",
            ":7: invalid parameter \"bogus\"",
        ),
        (
            "server { listen 80; listen 80; }",
            ":7: a duplicate listen 0.0.0.0:80",
        ),
        (
            "server { listen 99999; }",
            ":7: invalid port in \"99999\" of the \"listen\" directive",
        ),
        ("server { listen 80 }", ":7:21: unexpected \"}\""),
        (
            "include missing.conf;",
            ": cannot open: No such file or directory (os error 2)",
        ),
    ];
    for (i, (servers, want)) in cases.iter().enumerate() {
        let conf = config(&scratch.0, &format!("bad{i}"), servers, "");
        let arg = format!("--nginx={}", conf.display());
        let out = run_check(&ns, &[&arg], false);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{servers}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{servers}: want {want}, got {err}");
        // nginx agrees that it is no configuration it can start with.
        let t = ns.run(move || {
            Command::new(NGINX)
                .arg("-t")
                .arg("-c")
                .arg(&conf)
                .output()
                .unwrap()
        });
        assert!(!t.status.success(), "nginx -t accepted {servers}");
    }
}

/// A host name binds every address it resolves to, as nginx resolves it
/// (here `localhost`, from /etc/hosts): the rows are nginx's sockets.
#[test]
fn nginx_check_host_name() {
    let ns = netns("pw-cn-host");
    let scratch = Scratch::new("cn-host");
    let port = port();
    let conf = config(
        &scratch.0,
        "nginx",
        &format!("server {{ listen localhost:{port}; return 204; }}"),
        "",
    );
    let arg = format!("--nginx={}", conf.display());
    let (code, v, _) = check(&ns, &[&arg]);
    assert_eq!(code, 0, "{v:#?}");
    let mut predicted: Vec<String> = v
        .iter()
        .map(|o| o["addr"].as_str().unwrap().to_owned())
        .collect();
    assert!(predicted.contains(&"127.0.0.1".to_owned()), "{v:#?}");
    let started = ns.run(move || start(&conf, port));
    agrees(code, &v, &started);
    let nginx = Running(Some(started.unwrap()));
    let p = port.to_string();
    let (_, w) = who(&ns, &[&p]);
    let mut bound: Vec<String> = w["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["pid"] == nginx.pid())
        .map(|s| s["addr"].as_str().unwrap().to_owned())
        .collect();
    predicted.sort();
    bound.sort();
    assert_eq!(predicted, bound, "{w:#}");
}
