//! A dockerd of a test's own, in the test's network namespace, and an
//! image made of busybox-static (no registry is reachable). Only the daemon
//! the test started is stopped, by its pid.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use super::Netns;

/// A root filesystem of busybox-static alone, as a tar file under `dir`,
/// for `docker import` and `podman import` (no registry is reachable).
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    let tar = dir.join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar: {status}");
    tar
}

/// A dockerd of the test's own, in `ns`, with everything under `dir`.
pub struct Docker {
    /// Its data, exec root, socket and log.
    pub dir: PathBuf,
    daemon: Option<Child>,
    ns: Arc<Netns>,
}

impl Docker {
    pub fn start(ns: Arc<Netns>, name: &str, extra: &[&str]) -> Docker {
        let dir = std::env::temp_dir().join(format!("pw-docker-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::create_dir_all(dir.join("exec")).unwrap();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let mut cmd = Command::new("dockerd");
        cmd.arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("sock").display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let daemon = ns.run(move || cmd.spawn().expect("start dockerd (docker.io)"));
        let docker = Docker {
            dir,
            daemon: Some(daemon),
            ns,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !docker.cli(&["info"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer: {}",
                docker.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        docker.import();
        docker
    }

    /// What dockerd wrote.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// `docker -H OURS ARGS`, from the namespace.
    pub fn cli(&self, args: &[&str]) -> Output {
        let sock = format!("unix://{}", self.dir.join("sock").display());
        let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
        self.ns.run(move || {
            Command::new("docker")
                .arg("-H")
                .arg(sock)
                .args(&args)
                .output()
                .expect("run docker")
        })
    }

    /// An image made of busybox-static alone: `pwtest:1`.
    pub fn import(&self) {
        let tar = busybox_rootfs(&self.dir);
        let out = self.cli(&["import", tar.to_str().unwrap(), "pwtest:1"]);
        assert!(out.status.success(), "docker import: {out:?}");
    }

    /// `docker run -d --name NAME -p PUBLISH pwtest:1 busybox httpd`.
    pub fn run(&self, name: &str, publish: &str) -> Output {
        self.cli(&[
            "run",
            "-d",
            "--name",
            name,
            "-p",
            publish,
            "pwtest:1",
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            "80",
        ])
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let names = self.cli(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&names.stdout).split_whitespace() {
            let _ = self.cli(&["rm", "-f", id]);
        }
        // dockerd stops the containerd it started, on SIGTERM.
        if let Some(mut daemon) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(daemon.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        // Overlay mounts live in this test process's private mount namespace.
        let data = self.dir.join("data");
        let _ = Command::new("umount").arg("-R").arg(&data).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Docker {
    /// `unix://SOCKET` of this daemon, for `-H` and `DOCKER_HOST`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.join("sock").display())
    }
}

/// `docker-compose ARGS` in `dir`, against `docker`'s daemon, from the
/// namespace (its networks and published ports live there).
pub fn compose(docker: &Docker, ns: &Netns, dir: &Path, args: &[&str]) -> Output {
    let (host, dir) = (docker.host(), dir.to_owned());
    let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
    ns.run(move || {
        Command::new("docker-compose")
            .args(&args)
            .current_dir(dir)
            .env("DOCKER_HOST", host)
            .output()
            .expect("run docker-compose (Debian's docker-compose package)")
    })
}
