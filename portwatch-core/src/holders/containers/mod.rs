//! Containers named as their owners know them: name, image, published ports,
//! compose project and service, Kubernetes pod, from local state only.
//!
//! No API server and no daemon is asked. A container's id and runtime come
//! from its cgroup path (`procs::cgroup`); the rest from the runtime's own
//! files: Docker's `containers/ID/config.v2.json` under its data root,
//! Podman's `containers.json` under its storage root, and the OCI bundle's
//! `config.json` that containerd (CRI) and CRI-O write with their
//! `io.kubernetes.*` annotations. The helpers that hold a published port on
//! the host for a container (docker-proxy, conmon) are mapped back to it from
//! their command lines.
//!
//! Every string read here is untrusted (a container's name and labels are
//! whatever its creator chose): files are opened without following
//! symlinks, read with a size cap, and the strings are escaped where printed.

use std::{
    collections::HashMap,
    io::Read as _,
    net::IpAddr,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use super::procs::Runtime;
use crate::cmdline::flag;

pub mod cri;
pub(crate) mod files;

use files::{binding, cri_container, docker_container, is_running, read_json, string};

/// The most bytes read from one runtime file (a config.v2.json is a few KiB).
const FILE_CAP: u64 = 1 << 20;
/// Bundle roots of each kind kept across a refresh of [`Roots`].
const LEARNT_CAP: usize = 16;
/// Containers remembered by [`Containers`].
const CACHE_CAP: usize = 1024;

/// A Docker Compose project and service, from the container's labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compose {
    /// `com.docker.compose.project`.
    pub project: String,
    /// `com.docker.compose.service`.
    pub service: String,
    /// `com.docker.compose.version`: which Compose made it (1.29.2 is
    /// `docker-compose`, 2.x `docker compose`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `com.docker.compose.project.working_dir`: where it was run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `com.docker.compose.project.config_files`: its compose files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_files: Vec<String>,
}

/// A Kubernetes pod, from the CRI annotations of the container's bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The container's name inside the pod.
    pub container: Option<String>,
    /// What made it, from its labels on the CRI socket; absent when the
    /// socket did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<cri::Controller>,
}

/// A container, as named by its runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// Full id (64 hex digits).
    pub id: String,
    /// Which runtime runs it.
    pub runtime: Runtime,
    /// Its name (`docker ps`'s NAMES), when the runtime's files tell.
    pub name: Option<String>,
    /// Its image, as it was asked for.
    pub image: Option<String>,
    /// Its published ports, `HOST_IP:HOST_PORT->CONTAINER_PORT/PROTO`.
    pub published: Vec<String>,
    /// Compose project and service, when labelled.
    pub compose: Option<Compose>,
    /// Kubernetes pod, for CRI runtimes.
    pub pod: Option<Pod>,
    /// A pod's container by its cgroup (under kubelet's `kubepods`), even
    /// where no runtime file names the pod: never stopped as a plain
    /// container.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kubernetes: bool,
}

impl Container {
    /// A container known only by its cgroup: id and runtime.
    pub fn bare(id: &str, runtime: Runtime) -> Self {
        Container {
            id: id.to_owned(),
            runtime,
            name: None,
            image: None,
            published: Vec::new(),
            compose: None,
            pod: None,
            kubernetes: false,
        }
    }

    /// Whether its runtime's files named it (a name or a pod).
    pub fn is_named(&self) -> bool {
        self.name.is_some() || self.pod.is_some()
    }

    /// How people call it: `pod NS/NAME`, else `container NAME`, else the
    /// short id.
    pub fn label(&self) -> String {
        if let Some(p) = &self.pod {
            return match &p.container {
                Some(c) => format!("pod {}/{} (container {c})", p.namespace, p.name),
                None => format!("pod {}/{}", p.namespace, p.name),
            };
        }
        let runtime = match self.runtime.cli() {
            _ if self.kubernetes => "Kubernetes ".to_owned(),
            Some(r) => format!("{r} "),
            None => String::new(),
        };
        match &self.name {
            Some(n) => format!("{runtime}container {n}"),
            None => format!("{runtime}container {}", super::short_id(&self.id)),
        }
    }
}

/// Whether `s` can be printed inside a suggested shell command as it is:
/// the characters Docker allows in names (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
pub fn is_plain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Where each runtime keeps its state on this host.
#[derive(Debug, Clone)]
pub struct Roots {
    /// Docker's data roots (`--data-root` of each running dockerd, else the
    /// default).
    pub docker: Vec<PathBuf>,
    /// Podman's storage roots.
    pub podman: Vec<PathBuf>,
    /// containerd's runtime v2 task directories (one per namespace inside).
    pub containerd: Vec<PathBuf>,
    /// The CRI socket (containerd's `[grpc] address`) of the containerd
    /// that owns each task directory.
    pub cri_sockets: Vec<(PathBuf, PathBuf)>,
    /// CRI-O's per-container userdata roots.
    pub crio: Vec<PathBuf>,
}

impl Roots {
    /// [`Roots::find`] over the processes running now.
    pub fn of_this_host() -> Self {
        let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
        Roots::find(procs.filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            // One small read per process; the whole of /proc only for the
            // daemons whose flags name a state directory.
            let comm = std::fs::read(entry.path().join("comm")).ok()?;
            let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
            if comm != b"dockerd" && comm != b"containerd" {
                return None;
            }
            let info = super::procs::proc_info(pid)?;
            (info.uid == 0).then_some((info.comm, info.cmdline))
        }))
    }

    /// The defaults, plus the `--data-root` of every dockerd and the state
    /// directory of every containerd among `processes` (comm, command
    /// line): pass only root's, since a process of another user could name
    /// itself dockerd.
    pub fn find(processes: impl Iterator<Item = (String, String)>) -> Self {
        let mut roots = Roots {
            docker: vec![PathBuf::from("/var/lib/docker")],
            podman: vec![PathBuf::from("/var/lib/containers/storage")],
            // containerd's default and the state directories the Kubernetes
            // distributions give it (k3s and rke2, k0s, microk8s): a miss
            // costs one failed read_dir each. Any other is learnt from a
            // running containerd's flags or from a shim (`learn_from`).
            containerd: CONTAINERD_STATES
                .iter()
                .map(|s| Path::new(s).join(TASK_DIR))
                .collect(),
            cri_sockets: CONTAINERD_STATES
                .iter()
                .zip(CONTAINERD_SOCKETS)
                .map(|(s, a)| (Path::new(s).join(TASK_DIR), PathBuf::from(a)))
                .collect(),
            crio: vec![PathBuf::from("/run/containers/storage/overlay-containers")],
        };
        for (comm, cmdline) in processes {
            match comm.as_str() {
                "dockerd" => {
                    if let Some(root) = flag(&cmdline, &["--data-root", "-g", "--graph"]) {
                        push_new(&mut roots.docker, PathBuf::from(root));
                    }
                }
                "containerd" => {
                    if let Some((state, socket)) = containerd_state(&cmdline) {
                        push_new(&mut roots.containerd, state.join(TASK_DIR));
                        roots.cri_sockets.insert(0, (state.join(TASK_DIR), socket));
                    }
                }
                _ => {}
            }
        }
        roots
    }
}

/// containerd's state directories: its default, k3s's and rke2's, k0s's,
/// microk8s's.
pub const CONTAINERD_STATES: [&str; 4] = [
    "/run/containerd",
    "/run/k3s/containerd",
    "/run/k0s/containerd",
    "/var/snap/microk8s/common/run/containerd",
];

/// The default `[grpc] address` of the containerd of each of
/// [`CONTAINERD_STATES`].
const CONTAINERD_SOCKETS: [&str; 4] = [
    "/run/containerd/containerd.sock",
    "/run/k3s/containerd/containerd.sock",
    "/run/k0s/containerd.sock",
    "/var/snap/microk8s/common/run/containerd.sock",
];

/// The directory under a containerd state directory that holds one
/// directory per namespace, each with one OCI bundle per task.
const TASK_DIR: &str = "io.containerd.runtime.v2.task";

/// The state directory and the CRI socket of a containerd run with
/// `cmdline`: its `--state` and `--address`, else the top-level
/// `state = "..."` and the `[grpc]` table's `address` of its `--config`
/// file, else the defaults.
fn containerd_state(cmdline: &str) -> Option<(PathBuf, PathBuf)> {
    // A config that cannot be read: only the flags tell (no guess of a
    // state directory it may set).
    let text = match flag(cmdline, &["--config", "-c"]) {
        Some(config) => {
            files::read_root_file(Path::new(config)).and_then(|bytes| String::from_utf8(bytes).ok())
        }
        None => Some(String::new()),
    };
    let text = text.as_deref();
    let state = match flag(cmdline, &["--state"]) {
        Some(state) => state,
        None => config_state(text?).unwrap_or(CONTAINERD_STATES[0]),
    };
    let socket = flag(cmdline, &["--address", "-a"])
        .or_else(|| text.and_then(config_grpc_address))
        .unwrap_or(CONTAINERD_SOCKETS[0]);
    Some((PathBuf::from(state), PathBuf::from(socket)))
}

/// The `address = "PATH"` of a containerd config.toml's `[grpc]` table.
fn config_grpc_address(toml: &str) -> Option<&str> {
    toml.lines()
        .map(str::trim)
        .skip_while(|l| *l != "[grpc]")
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .find_map(|l| quoted_value(l, "address"))
}

/// `VALUE` of a TOML line `KEY = "VALUE"`.
fn quoted_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let (k, value) = line.split_once('=')?;
    (k.trim() == key).then_some(())?;
    let value = value.trim().strip_prefix('"')?;
    value.split_once('"').map(|(v, _)| v)
}

/// The top-level `state = "PATH"` of a containerd config.toml (before its
/// first table), where it sets one.
fn config_state(toml: &str) -> Option<&str> {
    toml.lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with('['))
        .find_map(|l| quoted_value(l, "state"))
}

/// Where a runtime's process says the bundles of its containers are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleRoot {
    /// A containerd task directory (`STATE/io.containerd.runtime.v2.task`),
    /// and the socket of the containerd that owns it (the shim's
    /// `-address`).
    Containerd(PathBuf, Option<PathBuf>),
    /// CRI-O's `overlay-containers` directory.
    Crio(PathBuf),
}

/// What a container runtime's per-container process tells of where its
/// bundles are: a `containerd-shim-runc-v2` (comm `containerd-shim`) runs
/// in its pod sandbox's (or container's) bundle,
/// `STATE/io.containerd.runtime.v2.task/NAMESPACE/ID`, as its command line's
/// `-namespace` and `-id` say; the bundles of the pod's other containers are
/// its siblings. A CRI-O `conmon` names its container's bundle with `-b`
/// (`ROOT/ID/userdata`). `cwd` is the process's working directory.
pub fn bundle_root(comm: &str, cmdline: &str, cwd: Option<&Path>) -> Option<BundleRoot> {
    if comm.starts_with("containerd-shim") {
        let (ns, id) = (flag(cmdline, &["-namespace"])?, flag(cmdline, &["-id"])?);
        let cwd = cwd?;
        let id_dir = cwd.file_name()?.to_str()?;
        let ns_dir = cwd.parent()?;
        let tasks = ns_dir.parent()?;
        let named = id_dir == id
            && ns_dir.file_name()?.to_str()? == ns
            && tasks.file_name()?.to_str()? == TASK_DIR;
        let socket = flag(cmdline, &["-address"])
            .map(PathBuf::from)
            .filter(|s| s.is_absolute());
        return (named && tasks.is_absolute())
            .then(|| BundleRoot::Containerd(tasks.to_owned(), socket));
    }
    if comm == "conmon" {
        let id = flag(cmdline, &["-c", "--cid"]).filter(|id| is_id(id))?;
        let root = flag(cmdline, &["-b", "--bundle"])?.strip_suffix(&format!("/{id}/userdata"))?;
        // Podman's conmon has the same shape; CRI-O's exits go to its own
        // directory (`--exit-dir /var/run/crio/exits`).
        let crio = flag(cmdline, &["--exit-dir"]).is_some_and(|d| d.contains("/crio/"));
        return (crio && Path::new(root).is_absolute())
            .then(|| BundleRoot::Crio(PathBuf::from(root)));
    }
    None
}

/// The bundle root that the runtime process among `pid`'s nearest
/// ancestors names (a container's first process is the shim's or conmon's
/// child; its own children are one step further): no walk of /proc, a
/// few reads of the ancestors' files.
pub fn bundle_root_above(pid: u32) -> Option<BundleRoot> {
    let mut at = pid;
    for _ in 0..6 {
        let p = super::procs::proc_info(at)?;
        // Only root's: another user's process could pose as a shim.
        if p.uid == 0 {
            let cwd = std::fs::read_link(format!("/proc/{at}/cwd")).ok();
            if let Some(root) = bundle_root(&p.comm, &p.cmdline, cwd.as_deref()) {
                return Some(seen_from_here(root, at));
            }
        }
        if p.ppid <= 1 {
            return None;
        }
        at = p.ppid;
    }
    None
}

/// A containerd root as this process can read it: the shim's own paths
/// where this mount namespace shows them, else through the shim's /proc
/// links, which the kernel follows into the shim's mount namespace (a
/// DaemonSet's pod that does not mount that containerd's state directory):
/// `/proc/SHIM/cwd/../..` is the task directory (the shim works in a
/// bundle, `TASKS/NAMESPACE/ID`), `/proc/SHIM/root` + its path the socket.
fn seen_from_here(root: BundleRoot, shim: u32) -> BundleRoot {
    match root {
        BundleRoot::Containerd(tasks, socket) if !tasks.is_dir() => {
            let socket = socket.map(|s| match s.exists() {
                true => s,
                false => PathBuf::from(format!("/proc/{shim}/root{}", s.display())),
            });
            BundleRoot::Containerd(PathBuf::from(format!("/proc/{shim}/cwd/../..")), socket)
        }
        other => other,
    }
}

fn push_new(v: &mut Vec<PathBuf>, p: PathBuf) {
    if p.is_absolute() && !v.contains(&p) {
        v.insert(0, p);
    }
}

/// A container that publishes a host port (Docker's port bindings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publishing {
    /// The container.
    pub container: Container,
    /// Whether it runs (a container that failed to start keeps its bindings).
    pub running: bool,
    /// The binding as `docker run -p` reads it: `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/udp]`.
    pub mapping: String,
}

/// What a host helper process tells about the container it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serves {
    /// docker-proxy: the container's address and port, and the host port
    /// it publishes.
    DockerProxy {
        /// `-container-ip`.
        ip: IpAddr,
        /// `-container-port`.
        port: u16,
        /// `-host-port`.
        host_port: u16,
        /// `-proto` (`tcp`, `udp`).
        proto: String,
    },
    /// conmon: the container's id (`-c`), and the storage root its bundle
    /// (`-b ROOT/overlay-containers/ID/userdata`) lies under.
    Conmon {
        /// `-c`.
        id: String,
        /// The storage root, where `containers.json` names it.
        storage: Option<PathBuf>,
    },
}

/// Whether `comm` with `cmdline` is a runtime's helper that holds a port
/// for a container, and which.
pub fn serves(comm: &str, cmdline: &str) -> Option<Serves> {
    match comm {
        "docker-proxy" => Some(Serves::DockerProxy {
            ip: flag(cmdline, &["-container-ip"])?.parse().ok()?,
            port: flag(cmdline, &["-container-port"])?.parse().ok()?,
            host_port: flag(cmdline, &["-host-port"])?.parse().ok()?,
            proto: flag(cmdline, &["-proto"]).unwrap_or("tcp").to_owned(),
        }),
        "conmon" => {
            let id = flag(cmdline, &["-c", "--cid"]).filter(|id| is_id(id))?;
            let storage = flag(cmdline, &["-b", "--bundle"])
                .and_then(|b| b.strip_suffix(&format!("/overlay-containers/{id}/userdata")))
                .map(PathBuf::from)
                .filter(|p| p.is_absolute());
            Some(Serves::Conmon {
                id: id.to_owned(),
                storage,
            })
        }
        _ => None,
    }
}

fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The pause process of the CRI pod sandbox whose bundle is `dir`: its
/// config says it is a sandbox, and the pid in `init.pid` is a child of
/// the shim working in `dir`.
fn sandbox_pid(dir: &Path) -> Option<u32> {
    let config = read_json(&dir.join("config.json"))?;
    if string(&config, "/annotations/io.kubernetes.cri.container-type").as_deref()
        != Some("sandbox")
    {
        return None;
    }
    let text = files::read_root_file(&dir.join("init.pid"))?;
    let pid: u32 = std::str::from_utf8(&text).ok()?.trim().parse().ok()?;
    let shim = super::procs::ppid(pid)?;
    let shim_cwd = std::fs::read_link(format!("/proc/{shim}/cwd")).ok()?;
    (pid > 1 && shim_cwd == dir).then_some(pid)
}

/// Names containers from the runtimes' files, remembering what it read.
#[derive(Debug)]
pub struct Containers {
    roots: Roots,
    /// Looks for the host's roots again on a miss, at most this often: a
    /// dockerd may start with another `--data-root` after portwatch.
    refresh: Option<(std::time::Instant, std::time::Duration)>,
    cache: HashMap<String, Container>,
}

impl Containers {
    /// A resolver over `roots`, which never change.
    pub fn new(roots: Roots) -> Self {
        Containers {
            roots,
            refresh: None,
            cache: HashMap::new(),
        }
    }

    /// A resolver over this host's runtimes, found lazily.
    pub fn of_this_host() -> Self {
        Containers {
            roots: Roots::find(std::iter::empty()),
            refresh: Some((
                std::time::Instant::now() - std::time::Duration::from_secs(3600),
                std::time::Duration::from_secs(5),
            )),
            cache: HashMap::new(),
        }
    }

    fn refresh_roots(&mut self) {
        if let Some((last, every)) = &mut self.refresh {
            if last.elapsed() >= *every {
                *last = std::time::Instant::now();
                let mut fresh = Roots::of_this_host();
                // What shims and conmons taught stays (a few, newest first).
                for (old, new) in [
                    (&self.roots.containerd, &mut fresh.containerd),
                    (&self.roots.crio, &mut fresh.crio),
                    (&self.roots.podman, &mut fresh.podman),
                ] {
                    for p in old.iter().take(LEARNT_CAP) {
                        if !new.contains(p) {
                            new.push(p.clone());
                        }
                    }
                }
                for pair in self.roots.cri_sockets.iter().take(LEARNT_CAP) {
                    if !fresh.cri_sockets.iter().any(|(t, _)| *t == pair.0) {
                        fresh.cri_sockets.push(pair.clone());
                    }
                }
                self.roots = fresh;
            }
        }
    }

    /// The container `id` run by `runtime`, named from its runtime's files
    /// where they are found; bare otherwise.
    pub fn get(&mut self, id: &str, runtime: Runtime) -> Container {
        if let Some(c) = self.cache.get(id) {
            return c.clone();
        }
        self.refresh_roots();
        let found = match runtime {
            Runtime::Docker => self.docker(id),
            Runtime::Podman => self.podman(id),
            Runtime::Containerd | Runtime::Crio => self.cri(id, runtime),
            // A cgroupfs path under /kubepods names no runtime: ask each.
            Runtime::Unknown => self
                .docker(id)
                .or_else(|| self.cri(id, Runtime::Containerd))
                .or_else(|| self.cri(id, Runtime::Crio))
                .or_else(|| self.podman(id)),
        }
        .unwrap_or_else(|| Container::bare(id, runtime));
        if found.is_named() {
            if self.cache.len() >= CACHE_CAP {
                self.cache.clear();
            }
            self.cache.insert(id.to_owned(), found.clone());
        }
        found
    }

    /// Adds a bundle root that a runtime process named ([`bundle_root`]);
    /// true when it was new, so that a container missed before may now be
    /// found.
    pub fn learn(&mut self, root: BundleRoot) -> bool {
        let (list, path) = match root {
            BundleRoot::Containerd(p, socket) => {
                if let Some(socket) = socket {
                    self.roots.cri_sockets.insert(0, (p.clone(), socket));
                    self.roots.cri_sockets.truncate(LEARNT_CAP * 2);
                }
                (&mut self.roots.containerd, p)
            }
            BundleRoot::Crio(p) => (&mut self.roots.crio, p),
        };
        if list.contains(&path) {
            return false;
        }
        push_new(list, path);
        true
    }

    /// The pod of CRI pod sandbox `id` (a CNI portmap rule names it), from
    /// the sandbox's bundle; with its container's name when the pod has
    /// one container only (the bundles that name `id` as their
    /// `io.kubernetes.cri.sandbox-id`).
    pub fn pod_of_sandbox(&mut self, id: &str) -> Option<Pod> {
        if !is_id(id) {
            return None;
        }
        self.refresh_roots();
        for root in &self.roots.containerd {
            let namespaces = std::fs::read_dir(root).into_iter().flatten().flatten();
            for ns in namespaces.take(64) {
                let dir = ns.path();
                let Some(config) = read_json(&dir.join(id).join("config.json")) else {
                    continue;
                };
                let mut pod = cri_container(id, Runtime::Containerd, &config).pod?;
                pod.controller = self.controller(root, &config);
                let names: Vec<String> = std::fs::read_dir(&dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .take(CACHE_CAP)
                    .filter(|e| e.file_name().to_str() != Some(id))
                    .filter_map(|e| {
                        let c = read_json(&e.path().join("config.json"))?;
                        let a = |k: &str| string(&c, &format!("/annotations/{k}"));
                        (a("io.kubernetes.cri.sandbox-id").as_deref() == Some(id)
                            && a("io.kubernetes.cri.container-type").as_deref()
                                == Some("container"))
                        .then(|| a("io.kubernetes.cri.container-name"))
                        .flatten()
                    })
                    .collect();
                if let [one] = names.as_slice() {
                    pod.container = Some(one.clone());
                }
                return Some(pod);
            }
        }
        self.cri(id, Runtime::Crio).and_then(|c| c.pod)
    }

    /// The CRI pod sandboxes running under containerd's state directories:
    /// (sandbox id, its pause process's pid). The pid is the bundle's
    /// `init.pid`, trusted only while that process's parent is the shim
    /// whose working directory is this bundle (a pid the kernel has since
    /// given to another process is not the sandbox's).
    pub fn sandboxes(&mut self) -> Vec<(String, u32)> {
        self.refresh_roots();
        let mut found = Vec::new();
        for root in &self.roots.containerd {
            let namespaces = std::fs::read_dir(root).into_iter().flatten().flatten();
            for ns in namespaces.take(64) {
                let bundles = std::fs::read_dir(ns.path()).into_iter().flatten().flatten();
                for bundle in bundles.take(CACHE_CAP) {
                    let (Some(id), dir) = (
                        bundle.file_name().to_str().map(str::to_owned),
                        bundle.path(),
                    ) else {
                        continue;
                    };
                    if let Some(pid) = is_id(&id).then(|| sandbox_pid(&dir)).flatten() {
                        found.push((id, pid));
                    }
                }
            }
        }
        found
    }

    /// The container a host helper serves.
    pub fn served(&mut self, serves: &Serves) -> Option<Container> {
        self.refresh_roots();
        match serves {
            Serves::Conmon { id, storage } => {
                if let Some(root) = storage {
                    push_new(&mut self.roots.podman, root.clone());
                }
                Some(self.get(id, Runtime::Podman))
            }
            Serves::DockerProxy {
                ip,
                port,
                host_port,
                proto,
            } => {
                let id = self.docker_proxied(*ip, *port, *host_port, proto)?;
                Some(self.get(&id, Runtime::Docker))
            }
        }
    }

    /// Docker containers whose port bindings ask for host `port` of
    /// `proto` ("tcp", "udp"): the running ones first. Found whether or not
    /// a process holds the port (docker-proxy does, or dockerd itself with
    /// `userland-proxy=false`; a container that is not running holds nothing).
    pub fn publishing(&mut self, port: u16, proto: &str) -> Vec<Publishing> {
        self.refresh_roots();
        let mut found = Vec::new();
        for (id, dir) in self.docker_containers() {
            let Some(host) = read_json(&dir.join("hostconfig.json")) else {
                continue;
            };
            let Some(mapping) = binding(&host, port, proto) else {
                continue;
            };
            let Some(config) = read_json(&dir.join("config.v2.json")) else {
                continue;
            };
            found.push(Publishing {
                running: is_running(&config),
                container: docker_container(&id, &config),
                mapping,
            });
        }
        found.sort_by_key(|p| !p.running);
        found
    }

    fn docker(&self, id: &str) -> Option<Container> {
        self.roots.docker.iter().find_map(|root| {
            let config = read_json(&root.join("containers").join(id).join("config.v2.json"))?;
            Some(docker_container(id, &config))
        })
    }

    /// Every Docker container directory under the data roots: (id, dir).
    fn docker_containers(&self) -> impl Iterator<Item = (String, PathBuf)> + '_ {
        self.roots.docker.iter().flat_map(|root| {
            std::fs::read_dir(root.join("containers"))
                .into_iter()
                .flatten()
                .flatten()
                .take(CACHE_CAP * 4)
                .filter_map(|entry| {
                    let id = entry.file_name().into_string().ok().filter(|n| is_id(n))?;
                    Some((id, entry.path()))
                })
        })
    }

    /// The running Docker container a docker-proxy serves: `ip` on one of
    /// its networks, and `host_port` published to its `port`. The address
    /// alone is not enough: each dockerd on a host (rootless beside the
    /// system's, one per network namespace) numbers its bridge from
    /// 172.17/172.18 alike.
    fn docker_proxied(&self, ip: IpAddr, port: u16, host_port: u16, proto: &str) -> Option<String> {
        let ip = ip.to_string();
        let host_port = host_port.to_string();
        self.docker_containers().find_map(|(id, dir)| {
            let config = read_json(&dir.join("config.v2.json"))?;
            let nets = config
                .pointer("/NetworkSettings/Networks")
                .and_then(Value::as_object)?;
            let has_ip = nets
                .values()
                .any(|net| net.get("IPAddress").and_then(Value::as_str) == Some(&ip));
            let publishes = config
                .pointer(&format!("/NetworkSettings/Ports/{port}~1{proto}"))
                .and_then(Value::as_array)
                .is_some_and(|bindings| {
                    bindings
                        .iter()
                        .any(|b| b.get("HostPort").and_then(Value::as_str) == Some(&host_port))
                });
            (is_running(&config) && has_ip && publishes).then_some(id)
        })
    }

    fn podman(&self, id: &str) -> Option<Container> {
        self.roots.podman.iter().find_map(|root| {
            let list = read_json(&root.join("overlay-containers/containers.json"))?;
            let entry = list
                .as_array()?
                .iter()
                .find(|c| c.get("id").and_then(Value::as_str) == Some(id))?;
            let metadata: Option<Value> = entry
                .get("metadata")
                .and_then(Value::as_str)
                .and_then(|m| serde_json::from_str(m).ok());
            Some(Container {
                name: string(entry, "/names/0")
                    .or_else(|| metadata.as_ref().and_then(|m| string(m, "/name"))),
                image: metadata.as_ref().and_then(|m| string(m, "/image-name")),
                ..Container::bare(id, Runtime::Podman)
            })
        })
    }

    fn cri(&self, id: &str, runtime: Runtime) -> Option<Container> {
        if runtime == Runtime::Containerd {
            let (root, config) = self.roots.containerd.iter().find_map(|root| {
                // One directory per containerd namespace ("k8s.io", ...).
                let config = std::fs::read_dir(root)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .take(64)
                    .find_map(|ns| read_json(&ns.path().join(id).join("config.json")))?;
                Some((root, config))
            })?;
            let mut found = cri_container(id, runtime, &config);
            if let Some(pod) = &mut found.pod {
                pod.controller = self.controller(root, &config);
            }
            return Some(found);
        }
        self.roots
            .crio
            .iter()
            .find_map(|root| read_json(&root.join(id).join("userdata/config.json")))
            .map(|config| cri_container(id, runtime, &config))
    }

    /// The controller of the pod whose container's bundle (under task
    /// directory `root`) has `config`: asked of the CRI socket of the
    /// containerd that owns `root`, by the pod's sandbox id.
    fn controller(&self, root: &Path, config: &Value) -> Option<cri::Controller> {
        let sandbox =
            string(config, "/annotations/io.kubernetes.cri.sandbox-id").filter(|s| is_id(s))?;
        let (_, socket) = self.roots.cri_sockets.iter().find(|(t, _)| t == root)?;
        cri::controller(socket, &sandbox)
    }
}

#[cfg(test)]
mod tests {
    use portwatch_test_support::Scratch;

    use super::*;

    const ID: &str = "4f8b2c1d9e7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c";

    fn roots(base: &Path) -> Roots {
        Roots {
            docker: vec![base.join("docker")],
            podman: vec![base.join("podman")],
            containerd: vec![base.join("containerd")],
            cri_sockets: Vec::new(),
            crio: vec![base.join("crio")],
        }
    }

    /// The fields of docker 20.10's config.v2.json that are read (the real
    /// file has many more; unknown ones are ignored).
    fn docker_config(name: &str, labels: &str) -> String {
        format!(
            r#"{{"ID":"{ID}","Name":"/{name}","State":{{"Running":true,"Pid":4242}},
            "Config":{{"Image":"pwtest:1","Labels":{{{labels}}}}},
            "NetworkSettings":{{"Ports":{{"80/tcp":[{{"HostIp":"0.0.0.0","HostPort":"8080"}},{{"HostIp":"::","HostPort":"8080"}}]}},
            "Networks":{{"bridge":{{"IPAddress":"172.17.0.2"}}}}}}}}"#
        )
    }

    #[test]
    fn docker_container_by_id_and_by_proxy_ip() {
        let s = Scratch::new("docker");
        s.write(
            &format!("docker/containers/{ID}/config.v2.json"),
            &docker_config("web", ""),
        );
        let mut c = Containers::new(roots(&s.0));
        let web = c.get(ID, Runtime::Docker);
        assert_eq!(web.name.as_deref(), Some("web"));
        assert_eq!(web.image.as_deref(), Some("pwtest:1"));
        assert_eq!(web.published, ["0.0.0.0:8080->80/tcp", "[::]:8080->80/tcp"]);
        assert_eq!(
            crate::diagnose::container_stop(&web, &crate::tools::HostTools::ALL).unwrap(),
            "docker stop web"
        );
        assert_eq!(web.label(), "docker container web");
        let proxy = serves(
            "docker-proxy",
            "/usr/sbin/docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 8080 -container-ip 172.17.0.2 -container-port 80",
        )
        .unwrap();
        assert_eq!(c.served(&proxy).unwrap().name.as_deref(), Some("web"));
        let elsewhere = Serves::DockerProxy {
            ip: "172.17.0.9".parse().unwrap(),
            port: 80,
            host_port: 8080,
            proto: "tcp".into(),
        };
        assert_eq!(c.served(&elsewhere), None);
        // Another dockerd's container at the same address, publishing
        // another host port: not this one.
        let other_daemon = Serves::DockerProxy {
            ip: "172.17.0.2".parse().unwrap(),
            port: 80,
            host_port: 9090,
            proto: "tcp".into(),
        };
        assert_eq!(c.served(&other_daemon), None);
    }

    #[test]
    fn port_bindings_name_the_container_that_wants_a_port() {
        let s = Scratch::new("bindings");
        s.write(
            &format!("docker/containers/{ID}/config.v2.json"),
            &docker_config("web2", "").replace(r#""Running":true"#, r#""Running":false"#),
        );
        s.write(
            &format!("docker/containers/{ID}/hostconfig.json"),
            r#"{"NetworkMode":"default","PortBindings":{"80/tcp":[{"HostIp":"","HostPort":"8081"}],"53/udp":[{"HostIp":"127.0.0.1","HostPort":"5353"}]}}"#,
        );
        let mut c = Containers::new(roots(&s.0));
        let p = c.publishing(8081, "tcp");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].container.name.as_deref(), Some("web2"));
        assert_eq!(p[0].mapping, "8081:80");
        assert!(!p[0].running);
        assert_eq!(
            c.publishing(5353, "udp")[0].mapping,
            "127.0.0.1:5353:53/udp"
        );
        assert_eq!(c.publishing(8081, "udp"), vec![]);
        assert_eq!(c.publishing(8082, "tcp"), vec![]);
    }

    #[test]
    fn compose_labels_name_the_project_its_compose_and_files() {
        let s = Scratch::new("compose");
        s.write(
            &format!("docker/containers/{ID}/config.v2.json"),
            &docker_config(
                "shop_cart_1",
                r#""com.docker.compose.project":"shop","com.docker.compose.service":"cart",
                "com.docker.compose.version":"1.29.2",
                "com.docker.compose.project.working_dir":"/srv/shop",
                "com.docker.compose.project.config_files":"/srv/shop/base.yml,/srv/shop/prod.yml""#,
            ),
        );
        let mut c = Containers::new(roots(&s.0));
        let cart = c.get(ID, Runtime::Docker);
        let compose = cart.compose.as_ref().unwrap();
        assert_eq!(
            (compose.project.as_str(), compose.service.as_str()),
            ("shop", "cart")
        );
        assert_eq!(compose.version.as_deref(), Some("1.29.2"));
        assert_eq!(compose.working_dir.as_deref(), Some("/srv/shop"));
        assert_eq!(
            compose.config_files,
            ["/srv/shop/base.yml", "/srv/shop/prod.yml"]
        );
        let tools = crate::tools::HostTools {
            docker_compose: true,
            ..Default::default()
        };
        assert_eq!(
            crate::diagnose::container_stop(&cart, &tools).unwrap(),
            "cd /srv/shop && docker-compose -p shop -f /srv/shop/base.yml -f /srv/shop/prod.yml stop cart"
        );
    }

    #[test]
    fn hostile_names_never_reach_a_command() {
        let s = Scratch::new("hostile");
        s.write(
            &format!("docker/containers/{ID}/config.v2.json"),
            &docker_config(
                "x; rm -rf /",
                r#""com.docker.compose.project":"$(reboot)","com.docker.compose.service":"web""#,
            ),
        );
        let mut c = Containers::new(roots(&s.0));
        let web = c.get(ID, Runtime::Docker);
        assert_eq!(
            crate::diagnose::container_stop(&web, &crate::tools::HostTools::ALL).unwrap(),
            format!("docker stop {}", &ID[..12])
        );
    }

    #[test]
    fn a_symlinked_config_is_not_followed() {
        let s = Scratch::new("symlink");
        s.write("elsewhere.json", &docker_config("web", ""));
        std::fs::create_dir_all(s.0.join(format!("docker/containers/{ID}"))).unwrap();
        std::os::unix::fs::symlink(
            s.0.join("elsewhere.json"),
            s.0.join(format!("docker/containers/{ID}/config.v2.json")),
        )
        .unwrap();
        let mut c = Containers::new(roots(&s.0));
        assert_eq!(
            c.get(ID, Runtime::Docker),
            Container::bare(ID, Runtime::Docker)
        );
    }

    #[test]
    fn podman_from_containers_json_and_conmon() {
        let s = Scratch::new("podman");
        s.write(
            "elsewhere/overlay-containers/containers.json",
            &format!(
                r#"[{{"id":"{ID}","names":["web"],"image":"abc","layer":"def",
                "metadata":"{{\"image-name\":\"localhost/pwtest:1\",\"image-id\":\"abc\",\"name\":\"web\",\"created-at\":1700000000}}"}}]"#
            ),
        );
        let mut c = Containers::new(roots(&s.0));
        let conmon = serves(
            "conmon",
            &format!(
                "/usr/bin/conmon --api-version 1 -c {ID} -u {ID} -r /usr/sbin/runc -b {}/overlay-containers/{ID}/userdata -n web",
                s.0.join("elsewhere").display()
            ),
        )
        .unwrap();
        let web = c.served(&conmon).unwrap();
        assert_eq!(web.name.as_deref(), Some("web"));
        assert_eq!(web.image.as_deref(), Some("localhost/pwtest:1"));
        assert_eq!(
            crate::diagnose::container_stop(&web, &crate::tools::HostTools::ALL).unwrap(),
            "podman stop web"
        );
    }

    /// The annotations containerd's CRI plugin writes into a container's
    /// OCI bundle (`/run/containerd/io.containerd.runtime.v2.task/k8s.io/ID/config.json`).
    #[test]
    fn kubernetes_pod_from_containerd_annotations() {
        let s = Scratch::new("containerd");
        s.write(
            &format!("containerd/k8s.io/{ID}/config.json"),
            r#"{"ociVersion":"1.1.0","process":{"args":["nginx"]},"annotations":{
            "io.kubernetes.cri.container-type":"container",
            "io.kubernetes.cri.container-name":"web",
            "io.kubernetes.cri.image-name":"docker.io/library/nginx:1.25",
            "io.kubernetes.cri.sandbox-id":"aaaa",
            "io.kubernetes.cri.sandbox-name":"shop-7d9f8b-x2x4q",
            "io.kubernetes.cri.sandbox-namespace":"prod"}}"#,
        );
        let mut c = Containers::new(roots(&s.0));
        let web = c.get(ID, Runtime::Containerd);
        assert_eq!(web.label(), "pod prod/shop-7d9f8b-x2x4q (container web)");
        assert_eq!(web.image.as_deref(), Some("docker.io/library/nginx:1.25"));
        assert_eq!(
            crate::diagnose::container_stop(&web, &crate::tools::HostTools::ALL),
            None
        );
    }

    /// CRI-O's bundle (`/run/containers/storage/overlay-containers/ID/userdata/config.json`).
    #[test]
    fn kubernetes_pod_from_crio_annotations() {
        let s = Scratch::new("crio");
        s.write(
            &format!("crio/{ID}/userdata/config.json"),
            r#"{"ociVersion":"1.0.2-dev","annotations":{
            "io.kubernetes.container.name":"web",
            "io.kubernetes.cri-o.ImageName":"quay.io/acme/web:2",
            "io.kubernetes.pod.name":"web-0",
            "io.kubernetes.pod.namespace":"default"}}"#,
        );
        let mut c = Containers::new(roots(&s.0));
        let web = c.get(ID, Runtime::Crio);
        assert_eq!(web.label(), "pod default/web-0 (container web)");
        assert_eq!(web.image.as_deref(), Some("quay.io/acme/web:2"));
    }

    /// The CRI annotations of a container `web` of pod `shop/web-0`, as
    /// containerd's CRI plugin writes them into its bundle's config.json.
    const CRI_WEB: &str = r#"{"ociVersion":"1.1.0","annotations":{
        "io.kubernetes.cri.container-type":"container",
        "io.kubernetes.cri.container-name":"web",
        "io.kubernetes.cri.sandbox-id":"bbbb",
        "io.kubernetes.cri.sandbox-name":"web-0",
        "io.kubernetes.cri.sandbox-namespace":"shop"}}"#;

    /// Where each distribution's containerd keeps its state: from its
    /// command line (k3s, rke2, k0s and microk8s as they start it), from
    /// its config file, or the default.
    #[test]
    fn containerd_state_of_each_distribution() {
        let s = Scratch::new("ctd-config");
        s.write(
            "config.toml",
            "version = 2\nroot = \"/var/lib/x\"\n  state = \"/run/custom/containerd\" # here\n[grpc]\n  state = \"/nope\"\n  address = \"/run/custom/containerd.sock\"\n[debug]\n  address = \"/nope\"\n",
        );
        let config = s.0.join("config.toml");
        let cases = [
            // k3s (rke2 starts it the same way, with its own config path).
            ("containerd -c /var/lib/rancher/k3s/agent/etc/containerd/config.toml -a /run/k3s/containerd/containerd.sock --state /run/k3s/containerd --root /var/lib/rancher/k3s/agent/containerd".to_owned(), "/run/k3s/containerd", "/run/k3s/containerd/containerd.sock"),
            ("/var/lib/k0s/bin/containerd --root=/var/lib/k0s/containerd --state=/run/k0s/containerd --address=/run/k0s/containerd/containerd.sock --config=/etc/k0s/containerd.toml".to_owned(), "/run/k0s/containerd", "/run/k0s/containerd/containerd.sock"),
            ("/snap/microk8s/7394/bin/containerd --config /var/snap/microk8s/7394/args/containerd.toml --root /var/snap/microk8s/common/var/lib/containerd --state /var/snap/microk8s/common/run/containerd --address /var/snap/microk8s/common/run/containerd.sock".to_owned(), "/var/snap/microk8s/common/run/containerd", "/var/snap/microk8s/common/run/containerd.sock"),
            (format!("/usr/bin/containerd --config {}", config.display()), "/run/custom/containerd", "/run/custom/containerd.sock"),
        ];
        for (cmdline, state, socket) in cases {
            let roots = Roots::find([("containerd".to_owned(), cmdline.clone())].into_iter());
            let tasks = Path::new(state).join(TASK_DIR);
            assert!(
                roots.containerd.contains(&tasks),
                "{cmdline}: {:?}",
                roots.containerd
            );
            // Its CRI socket, ahead of any default for that directory.
            let found = roots.cri_sockets.iter().find(|(t, _)| *t == tasks);
            assert_eq!(
                found.map(|(_, s)| s.to_str().unwrap()),
                Some(socket),
                "{cmdline}"
            );
        }
        assert_eq!(
            containerd_state("/usr/bin/containerd"),
            Some((
                PathBuf::from("/run/containerd"),
                PathBuf::from("/run/containerd/containerd.sock")
            ))
        );
        // Another program's flags are not containerd's.
        let roots = Roots::find(
            [(
                "bash".to_owned(),
                "bash --state /run/custom/containerd".to_owned(),
            )]
            .into_iter(),
        );
        assert_eq!(roots.containerd.len(), CONTAINERD_STATES.len());
    }

    #[test]
    fn a_shim_names_its_task_directory() {
        let tasks = Path::new("/run/k3s/containerd/io.containerd.runtime.v2.task");
        let cwd = tasks.join("k8s.io").join(ID);
        let cmdline = format!("/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id {ID} -address /run/k3s/containerd/containerd.sock");
        assert_eq!(
            bundle_root("containerd-shim", &cmdline, Some(&cwd)),
            Some(BundleRoot::Containerd(
                tasks.to_owned(),
                Some(PathBuf::from("/run/k3s/containerd/containerd.sock"))
            ))
        );
        // A working directory that is not the bundle its flags name.
        for cwd in [
            tasks.join("default").join(ID),
            tasks.join("k8s.io").join("other"),
            Path::new("/tmp/k8s.io").join(ID),
        ] {
            assert_eq!(
                bundle_root("containerd-shim", &cmdline, Some(&cwd)),
                None,
                "{cwd:?}"
            );
        }
        assert_eq!(bundle_root("containerd-shim", &cmdline, None), None);
        assert_eq!(
            bundle_root("sh", &cmdline, Some(&tasks.join("k8s.io").join(ID))),
            None
        );
        // CRI-O's conmon, not podman's.
        let crio = format!("/usr/bin/conmon -b /run/containers/storage/overlay-containers/{ID}/userdata -c {ID} --exit-dir /var/run/crio/exits -l /var/log/pods/shop_web-0_1/web/0.log -r /usr/bin/runc -u {ID} -s");
        assert_eq!(
            bundle_root("conmon", &crio, None),
            Some(BundleRoot::Crio(PathBuf::from(
                "/run/containers/storage/overlay-containers"
            )))
        );
        let podman = format!("/usr/bin/conmon --api-version 1 -c {ID} -u {ID} -r /usr/sbin/runc -b /var/lib/containers/storage/overlay-containers/{ID}/userdata --exit-dir /run/libpod/exits");
        assert_eq!(bundle_root("conmon", &podman, None), None);
    }

    /// A pod under a state directory no default names (k3s-style, in a
    /// scratch directory) is found from a real process posing as its shim
    /// (the same comm, flags and working directory) above the container's
    /// process.
    #[test]
    fn a_pod_is_found_through_the_shim_above_it() {
        let s = Scratch::new("shim-above");
        let tasks = s.0.join("k3s/containerd").join(TASK_DIR);
        s.write(
            &format!("k3s/containerd/{TASK_DIR}/k8s.io/{ID}/config.json"),
            CRI_WEB,
        );
        let sandbox = tasks.join("k8s.io").join("a".repeat(64));
        std::fs::create_dir_all(&sandbox).unwrap();
        // The shim's comm is its executable's name cut to 15 bytes.
        let shim = s.0.join("containerd-shim-runc-v2");
        std::os::unix::fs::symlink("/bin/sh", &shim).unwrap();
        let mut cmd = std::process::Command::new(&shim);
        // `; :` keeps sh from exec'ing sleep: sleep stays its child.
        cmd.args(["-c", "sleep 100; :", "-namespace", "k8s.io", "-id"])
            .arg("a".repeat(64))
            .current_dir(&sandbox)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut posing = portwatch_test_support::Process::spawn(cmd, &[]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let child = loop {
            let kids = super::super::procs::children(posing.pid);
            if let Some(&k) = kids.first() {
                break k;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no sleep under the shim"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(
            bundle_root_above(child),
            Some(BundleRoot::Containerd(tasks.clone(), None))
        );
        let mut c = Containers::new(roots(&s.0));
        assert!(!c.get(ID, Runtime::Unknown).is_named());
        assert!(c.learn(bundle_root_above(child).unwrap()));
        assert!(!c.learn(BundleRoot::Containerd(tasks, None)), "learnt once");
        assert_eq!(
            c.get(ID, Runtime::Unknown).label(),
            "pod shop/web-0 (container web)"
        );
        // The sleep first: killing sh alone would leave it behind.
        // SAFETY: a plain kill(2) of a child this test started.
        unsafe { libc::kill(child as i32, libc::SIGKILL) };
        posing.kill();
        // Nothing above a plain process of ours.
        assert_eq!(bundle_root_above(std::process::id()), None);
    }

    /// A hostPort's pod from its sandbox's bundle (what a CNI portmap
    /// rule names), with its one container found among the siblings.
    #[test]
    fn pod_of_a_sandbox_and_its_one_container() {
        let s = Scratch::new("sandbox");
        let sandbox = "a".repeat(64);
        s.write(
            &format!("containerd/k8s.io/{sandbox}/config.json"),
            r#"{"annotations":{"io.kubernetes.cri.container-type":"sandbox",
            "io.kubernetes.cri.sandbox-id":"aaaa","io.kubernetes.cri.sandbox-name":"web-0",
            "io.kubernetes.cri.sandbox-namespace":"shop"}}"#,
        );
        let web = CRI_WEB.replace(r#""bbbb""#, &format!(r#""{sandbox}""#));
        s.write(&format!("containerd/k8s.io/{ID}/config.json"), &web);
        let mut c = Containers::new(roots(&s.0));
        let pod = c.pod_of_sandbox(&sandbox).unwrap();
        assert_eq!(
            (
                pod.namespace.as_str(),
                pod.name.as_str(),
                pod.container.as_deref()
            ),
            ("shop", "web-0", Some("web"))
        );
        // A second container: which one has the port is not known here.
        let other = "c".repeat(64);
        s.write(
            &format!("containerd/k8s.io/{other}/config.json"),
            &web.replace(r#""web""#, r#""sidecar""#),
        );
        assert_eq!(c.pod_of_sandbox(&sandbox).unwrap().container, None);
        assert_eq!(c.pod_of_sandbox(&"d".repeat(64)), None);
        assert_eq!(c.pod_of_sandbox("../x"), None);
    }

    /// CRI-O's bundles under a runroot learnt from its conmon.
    #[test]
    fn crio_pod_under_a_root_learnt_from_conmon() {
        let s = Scratch::new("crio-learnt");
        let root = s.0.join("run/containers/storage/overlay-containers");
        s.write(
            &format!("run/containers/storage/overlay-containers/{ID}/userdata/config.json"),
            r#"{"annotations":{"io.kubernetes.container.name":"web",
            "io.kubernetes.pod.name":"web-0","io.kubernetes.pod.namespace":"shop"}}"#,
        );
        let conmon = format!(
            "/usr/bin/conmon -b {}/{ID}/userdata -c {ID} --exit-dir /var/run/crio/exits -u {ID} -s",
            root.display()
        );
        let mut c = Containers::new(roots(&s.0));
        assert!(!c.get(ID, Runtime::Crio).is_named());
        assert!(c.learn(bundle_root("conmon", &conmon, None).unwrap()));
        assert_eq!(
            c.get(ID, Runtime::Crio).label(),
            "pod shop/web-0 (container web)"
        );
    }

    #[test]
    fn dockerd_data_root_from_its_command_line() {
        let roots = Roots::find(
            [
                (
                    "dockerd".to_owned(),
                    "dockerd --data-root /srv/docker -p /run/d.pid".to_owned(),
                ),
                ("bash".to_owned(), "bash --data-root /tmp/evil".to_owned()),
            ]
            .into_iter(),
        );
        assert_eq!(
            roots.docker,
            [
                PathBuf::from("/srv/docker"),
                PathBuf::from("/var/lib/docker")
            ]
        );
        assert_eq!(flag("x --data-root=/a b", &["--data-root"]), Some("/a"));
    }

    #[test]
    fn runtime_helpers() {
        for comm in [
            "dockerd",
            "docker-proxy",
            "conmon",
            "rootlessport",
            "containerd-shim-runc-v2",
        ] {
            let found = crate::safety::find(Some(comm), None, None).map(|f| f.entry.kind);
            assert_eq!(found, Some(crate::safety::Kind::RuntimeHelper), "{comm}");
        }
        assert!(crate::safety::find(Some("nginx"), None, None).is_none());
    }
}
