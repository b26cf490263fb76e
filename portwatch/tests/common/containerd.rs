//! A containerd of a test's own, laid out as a Kubernetes distribution lays
//! it out (k3s's `/run/k3s/containerd` shape, under a name of the test's
//! own), with an image made of busybox-static imported without a registry,
//! and containers in namespace `k8s.io` carrying the annotations that
//! containerd's CRI plugin writes for kubelet's pods.
//!
//! containerd runs in a private mount namespace (`unshare -m`): its
//! snapshots' mounts never reach the host's. Only what the test started is
//! ended: its containers through its own containerd, the daemon by its pid;
//! then its state and root directories and its cgroups are removed.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use portwatch_core::subprocess;

use super::{docker::busybox_rootfs, Netns};

/// How long one `ctr` command may take.
const CTR_TIMEOUT: Duration = Duration::from_secs(60);

/// A containerd started by the test.
pub struct Containerd {
    /// Its root, config, image and log.
    pub dir: PathBuf,
    /// Its state directory: `/run/k3s-test-NAME-PID/containerd`.
    pub state: PathBuf,
    daemon: Option<Child>,
    /// The containers started, to end in `drop`.
    ids: Vec<String>,
    /// The pod sandboxes run through the CRI plugin, to stop and remove in
    /// `drop`.
    pub(super) sandboxes: Vec<String>,
    /// The cgroup parent of the containers (under each hierarchy).
    pub(super) cgroup_parent: String,
    /// With the CRI plugin: the network namespace containerd runs in, the
    /// pods' node (CNI puts its bridge and portmap's rules there; a
    /// hostNetwork pod shares it).
    pub node: Option<Netns>,
}

/// The annotations containerd's CRI plugin gives a pod's container
/// (pkg/cri/annotations of containerd 1.6), here for container `container`
/// of pod `namespace/name`.
pub fn cri_annotations(namespace: &str, name: &str, container: &str) -> Vec<(String, String)> {
    [
        ("io.kubernetes.cri.container-type", "container"),
        ("io.kubernetes.cri.container-name", container),
        ("io.kubernetes.cri.sandbox-name", name),
        ("io.kubernetes.cri.sandbox-namespace", namespace),
        ("io.kubernetes.cri.image-name", "docker.io/library/pwtest:1"),
    ]
    .iter()
    .map(|&(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The annotations containerd's CRI plugin gives a pod's sandbox (its
/// pause container), id `id`, of pod `namespace/name`.
pub fn sandbox_annotations(id: &str, namespace: &str, name: &str) -> Vec<(String, String)> {
    [
        ("io.kubernetes.cri.container-type", "sandbox"),
        ("io.kubernetes.cri.sandbox-id", id),
        ("io.kubernetes.cri.sandbox-name", name),
        ("io.kubernetes.cri.sandbox-namespace", namespace),
    ]
    .iter()
    .map(|&(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

impl Containerd {
    /// Starts containerd with everything of its own under `/tmp` and
    /// `/run/k3s-test-NAME-PID`, and imports the image `pwtest:1`. Without
    /// the CRI plugin: the test drives containerd with ctr.
    pub fn start(name: &str) -> Containerd {
        Containerd::start_with(name, false)
    }

    /// [`Containerd::start`] with the CRI plugin, in a network namespace of
    /// its own (see `cri.rs`).
    pub fn start_with(name: &str, cri: bool) -> Containerd {
        let tag = format!("{name}-{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("pw-containerd-{tag}"));
        let state = PathBuf::from(format!("/run/k3s-test-{tag}/containerd"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root")).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        let mut config = format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\n",
            dir.join("root").display(),
            state.display(),
        );
        if cri {
            config.push_str(&super::cri::plugin_config(&dir));
        } else {
            config.push_str("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n");
        }
        config.push_str(&format!(
            "[grpc]\n  address = \"{}\"\n",
            state.join("containerd.sock").display()
        ));
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let mut c = Containerd {
            dir,
            state,
            daemon: None,
            ids: Vec::new(),
            sandboxes: Vec::new(),
            cgroup_parent: format!("pw-test-{tag}"),
            node: cri.then(|| Netns::new("pw-node")),
        };
        c.run_daemon();
        c.import(&oci_image(&c.dir));
        if c.node.is_some() {
            c.import(&super::cri::pause_image(&c.dir));
        }
        c
    }

    /// containerd's CRI socket.
    pub fn socket(&self) -> PathBuf {
        self.state.join("containerd.sock")
    }

    /// The pods' node: the network namespace containerd runs in.
    pub fn node(&self) -> &Netns {
        self.node.as_ref().expect("containerd runs its CRI plugin")
    }

    /// Starts (or starts again) the daemon and waits for it to answer.
    pub fn run_daemon(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .unwrap();
        let config = self.dir.join("config.toml");
        let spawn = move || {
            Command::new("unshare")
                .args(["-m", "--propagation", "private", "containerd", "--config"])
                .arg(config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start containerd (Debian's containerd package)")
        };
        let daemon = match &self.node {
            Some(node) => node.run(spawn),
            None => spawn(),
        };
        self.daemon = Some(daemon);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ctr(&["version"]).is_err() {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the daemon (SIGTERM, then SIGKILL), leaving its shims and
    /// containers running, as a containerd restart does.
    pub fn stop_daemon(&mut self) {
        let Some(mut daemon) = self.daemon.take() else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(daemon.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = daemon.kill();
        let _ = daemon.wait();
    }

    /// What containerd wrote.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr -a OURS -n k8s.io ARGS`, with a timeout.
    pub fn ctr(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a")
            .arg(self.state.join("containerd.sock"))
            .args(["-n", "k8s.io"])
            .args(args);
        subprocess::output(&mut cmd, CTR_TIMEOUT)
            .map(|out| String::from_utf8_lossy(&out).into_owned())
            .map_err(|e| format!("ctr {args:?}: {e}"))
    }

    /// Imports the OCI image layout `tar` (`ctr images import`; no
    /// registry is reachable).
    fn import(&self, tar: &Path) {
        self.ctr(&["images", "import", tar.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
    }

    /// Runs container `id` of `pwtest:1` with `annotations`, in a network
    /// namespace of its own, its command `args`; returns its first
    /// process's pid.
    pub fn run(&mut self, id: &str, annotations: &[(String, String)], args: &[&str]) -> u32 {
        self.run_with(id, annotations, &[], args)
    }

    /// [`Containerd::run`] with more of `ctr run`'s options (`--with-ns
    /// network:PATH` joins a pod sandbox's network namespace).
    pub fn run_with(
        &mut self,
        id: &str,
        annotations: &[(String, String)],
        options: &[&str],
        args: &[&str],
    ) -> u32 {
        // kubelet's cgroupfs layout (kubepods/QOS/podUID/ID), under a
        // parent of the test's own.
        let cgroup = format!("/{}/kubepods/besteffort/pod-test/{id}", self.cgroup_parent);
        let mut argv: Vec<String> = vec!["run".into(), "-d".into(), "--null-io".into()];
        argv.extend(["--cgroup".into(), cgroup]);
        argv.extend(options.iter().map(|&o| o.to_owned()));
        for (k, v) in annotations {
            argv.extend(["--annotation".into(), format!("{k}={v}")]);
        }
        argv.extend(["docker.io/library/pwtest:1".into(), id.to_owned()]);
        argv.extend(args.iter().map(|&a| a.to_owned()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.ids.push(id.to_owned());
        self.ctr(&argv)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
        let pid = std::fs::read_to_string(self.bundle(id).join("init.pid")).expect("init.pid");
        pid.trim().parse().expect("a pid in init.pid")
    }

    /// The OCI bundle of container `id`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.state
            .join("io.containerd.runtime.v2.task/k8s.io")
            .join(id)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.daemon.is_none() {
            self.run_daemon();
        }
        super::cri::remove_pods(self);
        // Every task still there (a pod the CRI plugin could not remove,
        // the containers ctr ran): all are this daemon's, hence the test's.
        let tasks = self.ctr(&["tasks", "ls", "-q"]).unwrap_or_default();
        let mut ids: Vec<String> = tasks.lines().map(str::to_owned).collect();
        for id in &self.ids {
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
        for id in ids {
            let _ = self.ctr(&["tasks", "kill", "-s", "KILL", id.as_str()]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.ctr(&["tasks", "delete", id.as_str()]).is_err() && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.ctr(&["containers", "delete", id.as_str()]);
        }
        self.stop_daemon();
        // The cgroups runc made under the test's own parent, leaves first,
        // once their killed processes are gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut left = false;
            for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
            {
                let parent = hierarchy.path().join(&self.cgroup_parent);
                remove_cgroups(&parent);
                left |= parent.exists();
            }
            if !left || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir_all(self.state.parent().unwrap_or(&self.state));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the cgroup directory `dir` and those under it, leaves first
/// (a cgroup directory goes with rmdir once its children are gone).
fn remove_cgroups(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroups(&entry.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// An OCI image layout of busybox-static alone, tagged `pwtest:1`, as a
/// tar under `dir`.
pub fn oci_image(dir: &Path) -> PathBuf {
    oci_image_of(dir, "pwtest:1", &[])
}

/// An OCI image layout of busybox-static alone, named
/// `docker.io/library/NAME`, whose default command is `cmd`, as a tar
/// under `dir`: one layer, its config and manifest, named by digest.
pub fn oci_image_of(dir: &Path, name: &str, cmd: &[&str]) -> PathBuf {
    let layer_tar = busybox_rootfs(dir);
    let tag = name.replace(':', "-");
    let layout = dir.join(format!("oci-{tag}"));
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let blob = |bytes: &[u8]| -> (String, usize) {
        let tmp = layout.join("blob.tmp");
        std::fs::write(&tmp, bytes).unwrap();
        let sum = Command::new("sha256sum").arg(&tmp).output().unwrap();
        assert!(sum.status.success(), "sha256sum: {sum:?}");
        let digest = String::from_utf8_lossy(&sum.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        std::fs::rename(&tmp, layout.join("blobs/sha256").join(&digest)).unwrap();
        (digest, bytes.len())
    };
    let (layer, layer_size) = blob(&std::fs::read(&layer_tar).unwrap());
    let (config, config_size) = blob(
        format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":{}}},"rootfs":{{"type":"layers","diff_ids":["sha256:{layer}"]}}}}"#,
            serde_json::json!(cmd)
        )
        .as_bytes(),
    );
    let (manifest, manifest_size) = blob(
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{layer}","size":{layer_size}}}]}}"#
        )
        .as_bytes(),
    );
    std::fs::write(
        layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{manifest}","size":{manifest_size},"annotations":{{"io.containerd.image.name":"docker.io/library/{name}","org.opencontainers.image.ref.name":"{}"}}}}]}}"#,
            name.rsplit(':').next().unwrap_or("latest")
        ),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let tar = dir.join(format!("image-{tag}.tar"));
    let status = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar: {status}");
    tar
}
