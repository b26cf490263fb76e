//! Where ports really collide on a deploy host: a Docker container's
//! published port, a container that cannot publish, a port published by DNAT
//! alone, a kernel tunnel's socket, and an outgoing connection's source port.
//!
//! Real programs in a private network namespace per test: Debian's dockerd
//! (started by the test with its own data root, exec root and socket, its
//! bridge and rules inside the namespace), an image imported from
//! busybox-static (no registry is reachable), real VXLAN devices, real
//! connections. Only what a test started is stopped, by pid.

mod common;

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Output},
    sync::Arc,
    time::{Duration, Instant},
};

use common::{docker::*, *};
use serde_json::Value;

/// Asserts that `ev`'s first holder is named as container `name` of
/// `image`, with `stop` in the fix and no `kill`.
fn assert_container_holder(ev: &Value, name: &str, image: &str, stop: &str) {
    let h = holder(ev);
    assert_eq!(h["container"]["name"], name, "{ev:#}");
    assert_eq!(h["container"]["image"], image, "{ev:#}");
    let fix = ev["fix"].as_str().unwrap();
    assert!(fix.contains(&format!("`{stop}`")), "{fix}");
    assert!(!fix.contains("kill"), "{fix}");
}

/// The first event of the given comm (other failures may come first: a
/// docker-proxy for [::] fails too when the IPv4 one did).
fn event_of(tracer: &Tracer, comm: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tracer
            .next_event(left)
            .unwrap_or_else(|| panic!("no event of {comm} in time"));
        if ev["comm"] == comm {
            return ev;
        }
    }
}

/// Docker publishes a port through docker-proxy: a host bind that fails is
/// told which container holds the port and how to stop it, never to kill
/// docker-proxy.
#[test]
fn docker_published_port_names_the_container() {
    let ns = Arc::new(Netns::new("pw-docker-pub"));
    let docker = Docker::start(ns.clone(), "pub", &[]);
    let port = port();
    let out = docker.run("web", &format!("{port}:80"));
    assert!(
        out.status.success(),
        "docker run: {out:?}\n{}",
        docker.log()
    );
    let tracer = Tracer::start(&["--netns", &ns.arg()]);
    let failed = ns.run(move || bind(&socket(false, false), v4(port)));
    assert_eq!(failed, Err(libc::EADDRINUSE));
    let ev = event_of(&tracer, &ns.comm);
    assert_container_holder(&ev, "web", "pwtest:1", "docker stop web");
    let h = holder(&ev);
    assert_eq!(h["comm"], "docker-proxy", "{ev:#}");
    assert_eq!(h["container"]["runtime"], "docker", "{ev:#}");
    assert!(
        h["container"]["published"]
            .as_array()
            .unwrap()
            .contains(&Value::from(format!("0.0.0.0:{port}->80/tcp"))),
        "{ev:#}"
    );
    assert!(
        ev["diagnosis"]
            .as_str()
            .unwrap()
            .contains("publishing a port for docker container web"),
        "{ev:#}"
    );

    let (code, v) = who(&ns, &[&port.to_string()]);
    assert_eq!(code, 1, "{v:#}");
    assert!(
        v["fix"].as_str().unwrap().contains("`docker stop web`"),
        "{v:#}"
    );
    assert_eq!(v["sockets"][0]["container"]["name"], "web", "{v:#}");
    drop(docker);
}

/// A process inside a container (host networking) holds the port: it is
/// named with its container and image, and the fix stops the container,
/// never `kill` from the host.
#[test]
fn process_inside_a_container_is_named_by_its_container() {
    let ns = Arc::new(Netns::new("pw-docker-in"));
    let docker = Docker::start(ns.clone(), "in", &[]);
    let port = port();
    let out = docker.cli(&[
        "run",
        "-d",
        "--name",
        "webh",
        "--network",
        "host",
        "pwtest:1",
        "/bin/busybox",
        "httpd",
        "-f",
        "-p",
        &port.to_string(),
    ]);
    assert!(
        out.status.success(),
        "docker run: {out:?}\n{}",
        docker.log()
    );
    let tracer = Tracer::start(&["--netns", &ns.arg()]);
    let deadline = Instant::now() + WAIT;
    // httpd binds once the container has started.
    loop {
        let failed = ns.run(move || bind(&socket(false, false), v4(port)));
        if failed == Err(libc::EADDRINUSE) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the container never bound {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ev = event_of(&tracer, &ns.comm);
    assert_container_holder(&ev, "webh", "pwtest:1", "docker stop webh");
}

/// A host process holds the port: `docker run -p` fails, and the failing
/// docker-proxy's event names the container that could not publish, and
/// the holder.
#[test]
fn container_that_cannot_publish_is_named() {
    let ns = Arc::new(Netns::new("pw-docker-nopub"));
    let docker = Docker::start(ns.clone(), "nopub", &[]);
    let port = port();
    let holder_socket = ns.run(move || {
        let s = socket(false, false);
        bind(&s, v4(port)).expect("hold the port");
        s.listen(8).unwrap();
        s
    });
    let tracer = Tracer::start(&["--netns", &ns.arg(), "--comm", "docker-proxy"]);
    let out = docker.run("web2", &format!("{port}:80"));
    assert!(!out.status.success(), "docker run should fail: {out:?}");
    let ev = event_of(&tracer, "docker-proxy");
    let diagnosis = ev["diagnosis"].as_str().unwrap();
    assert!(
        diagnosis.starts_with(&format!(
            "docker container web2 could not publish port {port} (-p {port}:80): "
        )),
        "{ev:#}"
    );
    assert_eq!(holder(&ev)["pid"], std::process::id(), "{ev:#}");
    let fix = ev["fix"].as_str().unwrap();
    assert!(
        fix.contains(&format!("`kill {}`", std::process::id())),
        "{fix}"
    );
    assert!(fix.ends_with("(`-p OTHER:80`)"), "{fix}");
    drop(holder_socket);
}

/// With `userland-proxy=false`, Docker 20.10's dockerd itself listens on a
/// published port (to reserve it) and DNAT carries the traffic: the holder
/// is named as the container, never as dockerd to kill, and `who` lists the
/// DNAT rule too.
#[test]
fn docker_without_userland_proxy_names_the_container() {
    let ns = Arc::new(Netns::new("pw-docker-dnat"));
    let docker = Docker::start(ns.clone(), "dnat", &["--userland-proxy=false"]);
    let port = port();
    let out = docker.run("web3", &format!("{port}:80"));
    assert!(
        out.status.success(),
        "docker run: {out:?}\n{}",
        docker.log()
    );
    let (code, v) = who(&ns, &[&port.to_string()]);
    assert_eq!(code, 1, "{v:#}");
    let h = &v["sockets"][0];
    assert_eq!(h["comm"], "dockerd", "{v:#}");
    assert_eq!(h["container"]["name"], "web3", "{v:#}");
    let fix = v["fix"].as_str().unwrap();
    assert!(fix.contains("`docker stop web3`"), "{fix}");
    assert!(!fix.contains("kill"), "{fix}");
    let rule = v["dnat"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["from"] == "iptables")
        .unwrap_or_else(|| panic!("no iptables DNAT rule listed: {v:#}"));
    assert!(rule["to"].as_str().unwrap().ends_with(":80"), "{v:#}");
}

/// A port taken by a plain process of the host's own (not in a container,
/// no runtime's helper): the answer is the process, and `who` reads no
/// NAT table for it (three subprocesses) nor every process's name (to
/// find dockerd's data roots): `dnat` and `published` stay empty though a
/// DNAT rule names the port. With the holder gone, the same `who` reads
/// the rule (a bind would succeed there).
#[test]
fn who_reads_no_nat_table_for_a_port_a_plain_process_holds() {
    let ns = Netns::new("pw-dnat-held");
    let port = port();
    ns.run(move || dnat_to(port, "10.9.9.9:80"));
    let mut held = ns.run(move || Process::fork(move || hold(v4(port), false, |_| {})));
    let (code, v) = who(&ns, &[&port.to_string()]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["reason"], "listener", "{v:#}");
    assert_eq!(v["sockets"][0]["pid"], held.pid, "{v:#}");
    assert_eq!(v["dnat"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["published"], serde_json::json!([]), "{v:#}");
    held.kill();
    let (code, v) = who(&ns, &[&port.to_string()]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["dnat"][0]["to"], "10.9.9.9:80", "{v:#}");
}

/// A port published by a DNAT rule alone (Kubernetes hostPort and
/// NodePort, a hand-made forward): a bind succeeds, but the traffic goes
/// elsewhere. `who` says so and exits 1. The rule is a real one, in the
/// test's own namespace.
#[test]
fn dnat_only_port_is_reported_by_who() {
    let ns = Netns::new("pw-dnat");
    let port = port();
    ns.run(move || dnat_to(port, "10.9.9.9:80"));
    let (code, v) = who(&ns, &[&port.to_string()]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["free"], false, "{v:#}");
    assert_eq!(
        v["binds"][0]["result"], "ok",
        "a plain bind does succeed: {v:#}"
    );
    assert_eq!(v["dnat"][0]["to"], "10.9.9.9:80", "{v:#}");
    let out = ns.run(move || {
        Command::new(bin())
            .args(["who", &port.to_string()])
            .output()
            .unwrap()
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("is redirected to 10.9.9.9:80 by this iptables rule"),
        "{text}"
    );
    // Another port is free.
    let (code, v) = who(&ns, &[&(port + 1).to_string()]);
    assert_eq!(code, 0, "{v:#}");
}

/// Rootful podman with storage of the test's own under `.0`; dropping it
/// removes the container and the storage.
struct Podman(PathBuf);

impl Podman {
    fn cli(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .arg("--root")
            .arg(self.0.join("root"))
            .arg("--runroot")
            .arg(self.0.join("run"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .args(args)
            .output()
            .expect("run podman")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cli(&["rm", "-f", "-t", "0", "webp"]);
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.0.join("root"))
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Rootful Podman publishes a port through conmon: the holder is named as
/// the Podman container, with `podman stop`, never `kill conmon`. Storage
/// of the test's own; the ulimits and runc are what this host needs (its
/// hard limits are below podman's default, and crun refuses hybrid cgroups).
#[test]
fn podman_published_port_names_the_container() {
    let ns = Netns::new("pw-podman");
    let dir = std::env::temp_dir().join(format!("pw-podman-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let podman = Arc::new(Podman(dir.clone()));
    let tar = busybox_rootfs(&dir);
    let out = podman.cli(&["import", tar.to_str().unwrap(), "pwtest:1"]);
    assert!(out.status.success(), "podman import: {out:?}");
    let port = port();
    let run = {
        let podman = podman.clone();
        let publish = format!("{port}:80");
        move || {
            podman.cli(&[
                "run",
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
                "--runtime",
                "runc",
                "-d",
                "--name",
                "webp",
                "-p",
                &publish,
                "localhost/pwtest:1",
                "/bin/busybox",
                "httpd",
                "-f",
                "-p",
                "80",
            ])
        }
    };
    let out = ns.run(run);
    assert!(out.status.success(), "podman run: {out:?}");
    let tracer = Tracer::start(&["--netns", &ns.arg()]);
    let failed = ns.run(move || bind(&socket(false, false), v4(port)));
    assert_eq!(failed, Err(libc::EADDRINUSE));
    let ev = event_of(&tracer, &ns.comm);
    assert_eq!(holder(&ev)["comm"], "conmon", "{ev:#}");
    assert_eq!(holder(&ev)["container"]["runtime"], "podman", "{ev:#}");
    assert_container_holder(&ev, "webp", "localhost/pwtest:1", "podman stop webp");
}

/// A VXLAN device's socket holds UDP 4789 with no process behind it: the
/// holder is the device, the fix deletes or moves it.
#[test]
fn vxlan_device_is_named_as_the_holder() {
    let ns = Netns::new("pw-vxlan");
    ns.run(|| {
        for args in [
            "link add vx0 type vxlan id 42 dstport 4789 local 127.0.0.1",
            "link set vx0 up",
        ] {
            let status = Command::new("ip").args(args.split(' ')).status().unwrap();
            assert!(status.success(), "ip {args}");
        }
    });
    let tracer = Tracer::start(&["--netns", &ns.arg()]);
    let failed = ns.run(|| bind(&socket(false, true), v4(4789)));
    assert_eq!(failed, Err(libc::EADDRINUSE));
    let ev = tracer.event();
    let h = holder(&ev);
    assert_eq!(h["pid"], Value::Null, "{ev:#}");
    assert_eq!(h["kernel"]["kind"], "vxlan", "{ev:#}");
    assert_eq!(h["kernel"]["name"], "vx0", "{ev:#}");
    assert!(
        ev["diagnosis"]
            .as_str()
            .unwrap()
            .contains("the kernel (vxlan device vx0)"),
        "{ev:#}"
    );
    assert!(
        ev["fix"].as_str().unwrap().contains("`ip link del vx0`"),
        "{ev:#}"
    );

    let (code, v) = who(&ns, &["4789/udp"]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["sockets"][0]["kernel"]["name"], "vx0", "{v:#}");
    assert!(
        v["fix"].as_str().unwrap().contains("`ip link del vx0`"),
        "{v:#}"
    );
}

/// An outgoing connection took the port as its source port: the fix
/// reserves the port (keeping what is reserved already), and never suggests
/// SO_REUSEADDR, which `who`'s own answer shows failing.
#[test]
fn outgoing_connections_source_port_is_reserved() {
    let ns = Netns::new("pw-ephport");
    let held = ns.run(|| {
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "41000 41000").unwrap();
        std::fs::write("/proc/sys/net/ipv4/ip_local_reserved_ports", "9000").unwrap();
        let server = TcpListener::bind("127.0.0.1:8080").unwrap();
        let client = TcpStream::connect("127.0.0.1:8080").unwrap();
        assert_eq!(client.local_addr().unwrap().port(), 41000);
        let accepted = server.accept().unwrap().0;
        (server, client, accepted)
    });
    let tracer = Tracer::start(&["--netns", &ns.arg()]);
    let failed = ns.run(|| {
        bind(
            &socket(false, false),
            SocketAddr::from(([0, 0, 0, 0], 41000)),
        )
    });
    assert_eq!(failed, Err(libc::EADDRINUSE));
    let ev = tracer.event();
    assert_eq!(ev["reason"], "ephemeral_port", "{ev:#}");
    assert_eq!(holder(&ev)["pid"], std::process::id(), "{ev:#}");
    let fix = ev["fix"].as_str().unwrap();
    // The failing thread's namespace, not its process's main thread's
    // (the host's): through the thread's own /proc path.
    assert!(
        fix.contains(&format!(
            "`nsenter --net=/proc/{}/task/{}/ns/net sysctl -w net.ipv4.ip_local_reserved_ports=9000,41000`",
            std::process::id(),
            ns.tid
        )),
        "{fix}"
    );
    assert!(!fix.contains("SO_REUSEADDR"), "{fix}");

    let (code, v) = who(&ns, &["41000"]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["reason"], "ephemeral_port", "{v:#}");
    for b in v["binds"].as_array().unwrap() {
        if let Some(fix) = b["fix"].as_str() {
            let failed_option = b["result"] == "fails";
            assert!(
                !(failed_option && fix.contains("SO_REUSEADDR")),
                "a fix recommends an option shown to fail: {b:#}"
            );
        }
    }
    drop(held);
}
