//! Fixes name commands that exist on this host, in the user's own terms:
//! the Compose that started a service (Debian 12's `docker-compose` 1.29,
//! the only one it ships), the compose file that publishes its port, and
//! `systemctl` only where systemd is PID 1.
//!
//! Real programs in a private network namespace per test: Debian's dockerd
//! (the test's own, see `common::docker`), Debian's `docker-compose`, an
//! image imported from busybox-static, a real cgroup named like a unit.
//! Only what a test started is stopped, by pid.

mod common;

use std::{path::Path, process::Command, sync::Arc};

use common::{
    docker::{compose, Docker},
    *,
};

/// A compose project `pwshop` whose service `cart` publishes a port, made
/// with Debian's docker-compose 1.29: `who PORT` names the service with
/// `docker-compose -p pwshop stop cart` in the project's directory, and
/// the compose file's `ports:` to move it; never `docker compose` (a v2
/// command this host lacks) nor `docker run`'s `-p OTHER:`. The named
/// command, run as printed, frees the port.
#[test]
fn compose_v1_service_is_stopped_with_docker_compose_and_moved_in_its_file() {
    let version = Command::new("docker-compose")
        .arg("version")
        .arg("--short")
        .output()
        .expect("docker-compose is installed by `cargo xtask setup`");
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    assert!(
        version.starts_with("1."),
        "Debian's Compose v1 expected: {version}"
    );
    let ns = Arc::new(Netns::new("pw-compose"));
    let docker = Docker::start(ns.clone(), "compose", &[]);
    let port = port();
    let project = docker.dir.join("shop");
    std::fs::create_dir_all(&project).unwrap();
    let file = project.join("docker-compose.yml");
    std::fs::write(
        &file,
        format!(
            "version: \"2.4\"\nservices:\n  cart:\n    image: pwtest:1\n    command: [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"80\"]\n    ports:\n      - \"{port}:80\"\n"
        ),
    )
    .unwrap();
    let up = compose(&docker, &ns, &project, &["-p", "pwshop", "up", "-d"]);
    assert!(
        up.status.success(),
        "docker-compose up: {up:?}\n{}",
        docker.log()
    );

    let (code, v) = who(&ns, &[&port.to_string()]);
    assert_eq!(code, 1, "{v:#}");
    let c = &v["sockets"][0]["container"];
    assert_eq!(c["compose"]["project"], "pwshop", "{v:#}");
    assert_eq!(c["compose"]["service"], "cart", "{v:#}");
    assert_eq!(c["compose"]["version"], version.as_str(), "{v:#}");
    let fix = v["fix"].as_str().unwrap();
    let dir = project.display();
    let stop = format!("cd {dir} && docker-compose -p pwshop stop cart");
    assert!(fix.contains(&format!("`{stop}`")), "{fix}");
    assert!(
        fix.contains(&format!(
            "another host port in `ports:` of {} (its entry for {port}:80)",
            file.display()
        )),
        "{fix}"
    );
    assert!(!fix.contains("docker compose"), "{fix}");
    assert!(!fix.contains("-p OTHER:"), "{fix}");
    assert!(!fix.contains("kill"), "{fix}");

    // The same in `who`'s text, as people read it.
    let port_arg = port.to_string();
    let text = ns.run(move || {
        Command::new(bin())
            .args(["who", &port_arg])
            .output()
            .expect("run portwatch who")
    });
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    eprintln!("{text}");
    assert!(text.contains(&format!("`{stop}`")), "{text}");

    // The command as printed, from anywhere: the port is free after it.
    let host = docker.host();
    let ran = ns.run(move || {
        Command::new("sh")
            .arg("-c")
            .arg(&stop)
            .current_dir("/")
            .env("DOCKER_HOST", host)
            .output()
            .unwrap()
    });
    assert!(ran.status.success(), "the fix's command failed: {ran:?}");
    let (code, v) = who(&ns, &[&port.to_string()]);
    assert_eq!(code, 0, "still taken after the fix's command: {v:#}");
    let down = compose(&docker, &ns, &project, &["-p", "pwshop", "down"]);
    assert!(down.status.success(), "docker-compose down: {down:?}");
    drop(docker);
}

/// A listener in a cgroup named like a systemd unit (`pwdemo.service`):
/// `systemctl stop` is named only where systemd is PID 1
/// (`/run/systemd/system`); elsewhere, as on this project's machines, the
/// fix ends the process itself.
#[test]
fn systemctl_is_named_only_where_systemd_is_pid_1() {
    let ns = Netns::new("pw-nosystemd");
    let parent = Cgroup::new("pw-safety");
    let unit = parent.child("pwdemo.service");
    let port = port();
    let listener = ns.run(move || {
        let s = socket(false, false);
        bind(&s, v4(port)).expect("bind a free port");
        s.listen(8).unwrap();
        s
    });
    let holder = Process::sleeper(&[std::os::fd::AsRawFd::as_raw_fd(&listener)]);
    drop(listener);
    unit.add(holder.pid);
    let (code, v) = who(&ns, &[&port.to_string()]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["sockets"][0]["unit"], "pwdemo.service", "{v:#}");
    let fix = v["fix"].as_str().unwrap();
    if Path::new("/run/systemd/system").is_dir() {
        assert!(fix.contains("`systemctl stop pwdemo.service`"), "{fix}");
    } else {
        assert!(!fix.contains("systemctl"), "{fix}");
        assert!(fix.contains(&format!("`kill {}`", holder.pid)), "{fix}");
    }
    drop(holder);
}
