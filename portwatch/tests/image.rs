//! The DaemonSet of deploy/kubernetes/, run for real: the image that
//! `cargo xtask image` builds, run with the settings read from the manifest
//! itself (hostPID, hostNetwork, user, capabilities, seccomp, read-only
//! root, volumes, the downward API's variables, the args, and under CRI its
//! resources), so that what is tested is what a cluster would run. Twice:
//! - as kubelet runs it, through containerd's CRI plugin (Debian's
//!   containerd 1.6, a daemon of the test's own; common/cri.rs sends
//!   kubelet's sandbox and container configs): the image imported into
//!   its `k8s.io` namespace, RunPodSandbox, CreateContainer,
//!   StartContainer, ExecSync, StopContainer;
//! - under podman (Debian's, rootful, with storage of the test's own),
//!   which the issue asks for too.
//!
//! Emulated, and why: there is no kubelet here (not packaged for Debian 12)
//! and no registry. `hostNetwork` is the network namespace of the node, and
//! a namespace of the test's plays the node's (containerd runs in it; podman
//! gets `--network ns:PATH`), so the metrics port (fixed by the manifest)
//! and the failing binds stay out of the host's; the downward API's
//! `status.podIP` is then that namespace's address, 127.0.0.1, and
//! `spec.nodeName` a name of the test's. A hostPath volume whose directory
//! this machine lacks is an empty directory of the test's under CRI
//! (containerd would make it on the host) and left out under podman
//! (which refuses a missing source). The test's containerd keeps its state
//! where no distribution does, so the CRI pod also mounts that directory
//! as the manifest mounts each distribution's (see `Pod::mounts_on`).

mod common;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{containerd::Containerd, cri, *};
use portwatch_test_support::{Netns, Process};
use saphyr::{LoadableYamlNode as _, Yaml};
use serde_json::Value;

/// The manifest under test.
const MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/kubernetes/portwatch-daemonset.yaml"
);

/// The refusal's fixed start (main prefixes `portwatch: `).
const REFUSAL: &str =
    "portwatch: needs the host's PID namespace (hostPID: true / --pid=host): a container's own (pid:[";

/// Every capability of include/uapi/linux/capability.h (0 to 40).
#[rustfmt::skip]
const EVERY_CAPABILITY: [&str; 41] = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
];

/// The DaemonSet's pod, as its manifest declares it.
#[derive(Debug, Clone)]
struct Pod {
    /// The DaemonSet's namespace and name (its pods' name prefix).
    namespace: String,
    name: String,
    /// The pod template's labels.
    labels: Vec<(String, String)>,
    /// The container's name.
    container: String,
    image: String,
    dns_policy: String,
    priority_class: String,
    termination_grace: i64,
    /// The container's ports: (name, containerPort, protocol).
    ports: Vec<(String, i64, String)>,
    /// Requests and limits: CPU in millicores, memory in bytes.
    cpu_request: i64,
    memory_request: i64,
    cpu_limit: i64,
    memory_limit: i64,
    /// Host paths of volumes of `type: Directory` (kubelet refuses to
    /// start the pod without them).
    directories: Vec<String>,
    host_pid: bool,
    host_network: bool,
    user: Option<i64>,
    args: Vec<String>,
    /// (variable, the downward API's fieldPath).
    env: Vec<(String, String)>,
    drop: Vec<String>,
    add: Vec<String>,
    read_only_root: bool,
    no_new_privileges: bool,
    seccomp: String,
    /// (host path, path in the container, read-only).
    mounts: Vec<(String, String, bool)>,
}

fn get<'a>(y: &'a Yaml<'a>, path: &[&str]) -> Option<&'a Yaml<'a>> {
    path.iter().try_fold(y, |y, key| y.as_mapping_get(key))
}

fn text(y: &Yaml, path: &[&str]) -> String {
    get(y, path)
        .and_then(Yaml::as_str)
        .unwrap_or_else(|| panic!("the manifest has no string at {path:?}"))
        .to_owned()
}

fn list<'a>(y: &'a Yaml<'a>, path: &[&str]) -> &'a [Yaml<'a>] {
    get(y, path)
        .and_then(Yaml::as_sequence)
        .map_or(&[], Vec::as_slice)
}

/// A quantity of the Kubernetes API (`10m`, `32Mi`, `1`), in millis for
/// CPU (`milli`) or in units; 0 when absent.
fn quantity(y: &Yaml, path: &[&str], milli: bool) -> i64 {
    let Some(q) = get(y, path) else {
        return 0;
    };
    let q = q
        .as_str()
        .map(str::to_owned)
        .or_else(|| q.as_integer().map(|i| i.to_string()))
        .unwrap_or_else(|| panic!("a quantity at {path:?}"));
    let (digits, scale) = match q.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => q.split_at(at),
        None => (q.as_str(), ""),
    };
    let n: i64 = digits.parse().unwrap_or_else(|_| panic!("quantity {q}"));
    let unit = if milli { 1000 } else { 1 };
    match scale {
        "" => n * unit,
        "m" if milli => n,
        "Ki" => n << 10,
        "Mi" => n << 20,
        "Gi" => n << 30,
        other => panic!("quantity suffix {other} is not read here"),
    }
}

fn strings(y: &Yaml, path: &[&str]) -> Vec<String> {
    list(y, path)
        .iter()
        .map(|s| s.as_str().expect("a list of strings").to_owned())
        .collect()
}

impl Pod {
    fn from_manifest() -> Pod {
        let text_of = std::fs::read_to_string(MANIFEST).expect("read the manifest");
        let docs = Yaml::load_from_str(&text_of).expect("the manifest is YAML");
        let ds = &docs[0];
        assert_eq!(text(ds, &["kind"]), "DaemonSet");
        let spec = get(ds, &["spec", "template", "spec"]).expect("a pod template");
        let flag = |key| get(spec, &[key]).and_then(Yaml::as_bool) == Some(true);
        let containers = list(spec, &["containers"]);
        assert_eq!(containers.len(), 1, "one container");
        let c = &containers[0];
        let sc = get(c, &["securityContext"]).expect("a securityContext");
        let volumes: Vec<(String, String)> = list(spec, &["volumes"])
            .iter()
            .map(|v| (text(v, &["name"]), text(v, &["hostPath", "path"])))
            .collect();
        let directories = list(spec, &["volumes"])
            .iter()
            .filter(|v| get(v, &["hostPath", "type"]).and_then(Yaml::as_str) == Some("Directory"))
            .map(|v| text(v, &["hostPath", "path"]))
            .collect();
        let labels = get(ds, &["spec", "template", "metadata", "labels"])
            .and_then(Yaml::as_mapping)
            .expect("the pod template's labels")
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().unwrap().to_owned(),
                    v.as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let resources =
            |kind: &str, what: &str, milli| quantity(c, &["resources", kind, what], milli);
        let mounts = list(c, &["volumeMounts"])
            .iter()
            .map(|m| {
                let name = text(m, &["name"]);
                let host = volumes
                    .iter()
                    .find(|(n, _)| *n == name)
                    .unwrap_or_else(|| panic!("volume {name} is declared"))
                    .1
                    .clone();
                let ro = get(m, &["readOnly"]).and_then(Yaml::as_bool) == Some(true);
                (host, text(m, &["mountPath"]), ro)
            })
            .collect();
        Pod {
            namespace: text(ds, &["metadata", "namespace"]),
            name: text(ds, &["metadata", "name"]),
            labels,
            container: text(c, &["name"]),
            image: text(c, &["image"]),
            dns_policy: get(spec, &["dnsPolicy"])
                .and_then(Yaml::as_str)
                .unwrap_or("ClusterFirst")
                .to_owned(),
            priority_class: get(spec, &["priorityClassName"])
                .and_then(Yaml::as_str)
                .unwrap_or_default()
                .to_owned(),
            termination_grace: get(spec, &["terminationGracePeriodSeconds"])
                .and_then(Yaml::as_integer)
                .unwrap_or(30),
            ports: list(c, &["ports"])
                .iter()
                .map(|p| {
                    (
                        text(p, &["name"]),
                        get(p, &["containerPort"])
                            .and_then(Yaml::as_integer)
                            .expect("a containerPort"),
                        text(p, &["protocol"]),
                    )
                })
                .collect(),
            cpu_request: resources("requests", "cpu", true),
            memory_request: resources("requests", "memory", false),
            cpu_limit: resources("limits", "cpu", true),
            memory_limit: resources("limits", "memory", false),
            directories,
            host_pid: flag("hostPID"),
            host_network: flag("hostNetwork"),
            user: get(sc, &["runAsUser"]).and_then(Yaml::as_integer),
            args: strings(c, &["args"]),
            env: list(c, &["env"])
                .iter()
                .map(|e| {
                    (
                        text(e, &["name"]),
                        text(e, &["valueFrom", "fieldRef", "fieldPath"]),
                    )
                })
                .collect(),
            drop: strings(sc, &["capabilities", "drop"]),
            add: strings(sc, &["capabilities", "add"]),
            read_only_root: get(sc, &["readOnlyRootFilesystem"]).and_then(Yaml::as_bool)
                == Some(true),
            no_new_privileges: get(sc, &["allowPrivilegeEscalation"]).and_then(Yaml::as_bool)
                == Some(false),
            seccomp: text(sc, &["seccompProfile", "type"]),
            mounts,
        }
    }

    /// `podman run` options for this pod on `node`.
    fn podman_options(&self, node: &Node) -> Vec<String> {
        let mut o = vec![
            // What podman needs on this host (PLATFORM.md).
            "--ulimit=nofile=1024:1024".to_owned(),
            "--ulimit=nproc=1024:1024".to_owned(),
            "--runtime=runc".to_owned(),
        ];
        if self.host_pid {
            o.push("--pid=host".to_owned());
        }
        assert!(self.host_network, "the manifest sets hostNetwork");
        o.push(format!("--network=ns:{}", node.netns.display()));
        if let Some(uid) = self.user {
            o.push(format!("--user={uid}:{uid}"));
        }
        o.extend(self.drop.iter().map(|c| format!("--cap-drop={c}")));
        o.extend(self.add.iter().map(|c| format!("--cap-add={c}")));
        if self.read_only_root {
            o.push("--read-only".to_owned());
        }
        if self.no_new_privileges {
            o.push("--security-opt=no-new-privileges".to_owned());
        }
        match self.seccomp.as_str() {
            // podman's default profile is its RuntimeDefault.
            "RuntimeDefault" => {}
            "Unconfined" => o.push("--security-opt=seccomp=unconfined".to_owned()),
            other => panic!("seccompProfile {other} is not emulated here"),
        }
        for (host, path, ro) in &self.mounts {
            if Path::new(host).exists() {
                let ro = if *ro { ":ro" } else { "" };
                o.push(format!("--volume={host}:{path}{ro}"));
            }
        }
        for (name, value) in self.env_values(node) {
            o.push(format!("--env={name}={value}"));
        }
        o
    }

    /// The variables, as the downward API fills them in on `node`.
    fn env_values(&self, node: &Node) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|(name, field)| {
                let value = match field.as_str() {
                    "status.podIP" => "127.0.0.1",
                    "spec.nodeName" => node.name,
                    other => panic!("fieldPath {other} is not emulated here"),
                };
                (name.clone(), value.to_owned())
            })
            .collect()
    }

    /// The args with `$(VAR)` expanded, as kubelet does.
    fn expanded_args(&self, node: &Node) -> Vec<String> {
        let env = self.env_values(node);
        self.args
            .iter()
            .map(|a| {
                env.iter()
                    .fold(a.clone(), |a, (k, v)| a.replace(&format!("$({k})"), v))
            })
            .collect()
    }
}

/// The Service variables kubelet gives every container (those of Service
/// default/kubernetes, the API server's, at kubeadm's default address;
/// kubelet_pods.go `getServiceEnvVarMap`).
const KUBERNETES_SERVICE_ENV: [(&str, &str); 7] = [
    ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
    ("KUBERNETES_SERVICE_PORT", "443"),
    ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
    ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
    ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
    ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
    ("KUBERNETES_PORT_443_TCP_PORT", "443"),
];

/// kubelet's masked and read-only paths for `procMount: Default`
/// (pkg/securitycontext/util.go `defaultMaskedPaths`,
/// `defaultReadonlyPaths`).
const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The manifest's pod as kubelet hands it to the CRI runtime
/// (kuberuntime_sandbox.go and kuberuntime_container.go, with the helpers
/// in common/cri.rs).
impl Pod {
    /// The pod the DaemonSet makes on the node: its generated name, the
    /// template's labels plus those its controller stamps, the namespaces
    /// and DNS the template asks, its QoS class from its resources.
    /// `suffix` is the 5 characters of its generated name.
    fn cri_pod(&self, suffix: &str) -> cri::Pod {
        let mut pod = cri::Pod::new(&self.namespace, &format!("{}-{suffix}", self.name), "");
        pod.labels = self.labels.clone();
        pod.labels.extend([
            ("controller-revision-hash".into(), "6b8f9c7d54".into()),
            ("pod-template-generation".into(), "1".into()),
        ]);
        pod.host_network = self.host_network;
        pod.pid = if self.host_pid {
            cri::NamespaceMode::Node
        } else {
            cri::NamespaceMode::Container
        };
        pod.cluster_dns_with_host_net = self.dns_policy == "ClusterFirstWithHostNet";
        // pkg/apis/core/v1/helper/qos `GetPodQOS`, for one container.
        pod.qos =
            if self.cpu_request + self.memory_request + self.cpu_limit + self.memory_limit == 0 {
                "besteffort"
            } else if self.cpu_limit > 0
                && self.memory_limit > 0
                && (self.cpu_request, self.memory_request) == (self.cpu_limit, self.memory_limit)
            {
                ""
            } else {
                "burstable"
            };
        pod
    }

    /// kubelet's container config for the manifest's container in `pod`
    /// on `node`; `volumes` holds the emulated hostPaths (see `mounts_on`).
    fn cri_container(
        &self,
        pod: &cri::RunningPod,
        node: &Node,
        volumes: &Path,
    ) -> cri::ContainerConfig {
        let ports: Vec<u16> = self.ports.iter().map(|p| p.1 as u16).collect();
        let mut config = cri::container_config(pod, &self.container, &ports, &[]);
        config.image = Some(cri::ImageSpec {
            image: self.image.clone(),
            user_specified_image: self.image.clone(),
        });
        // No `command`: the image's ENTRYPOINT runs the manifest's args
        // (kubecontainer.ExpandContainerCommandAndArgs).
        config.args = self.expanded_args(node);
        config.envs = self
            .env_values(node)
            .into_iter()
            .chain(
                KUBERNETES_SERVICE_ENV
                    .iter()
                    .map(|&(k, v)| (k.to_owned(), v.to_owned())),
            )
            .map(|(key, value)| cri::KeyValue { key, value })
            .collect();
        config.mounts = self.mounts_on(volumes);
        // labels.go `newContainerAnnotations`: the grace period and the
        // ports as Go's encoding/json writes v1.ContainerPort.
        config.annotations.insert(
            "io.kubernetes.pod.terminationGracePeriod".into(),
            self.termination_grace.to_string(),
        );
        let ports: Vec<String> = self
            .ports
            .iter()
            .map(|(name, port, proto)| {
                format!(r#"{{"name":"{name}","containerPort":{port},"protocol":"{proto}"}}"#)
            })
            .collect();
        config.annotations.insert(
            "io.kubernetes.container.ports".into(),
            format!("[{}]", ports.join(",")),
        );
        let linux = config.linux.as_mut().expect("a Linux config");
        linux.resources = Some(self.cri_resources());
        linux.security_context = Some(self.cri_security(pod));
        config
    }

    /// kubelet's resources (kuberuntime_container_linux.go
    /// `calculateLinuxResources`, qos/policy.go `GetContainerOOMScoreAdjust`).
    fn cri_resources(&self) -> cri::LinuxContainerResources {
        // A node-critical pod's is a guaranteed one's; a burstable pod's
        // is 1000 less its share of the node's memory.
        let critical = self.priority_class == "system-node-critical";
        let oom_score_adj = match self.cri_pod("").qos {
            _ if critical => -997,
            "" => -997,
            "besteffort" => 1000,
            _ => (1000 - 1000 * self.memory_request / memory_capacity()).clamp(2, 999),
        };
        cri::LinuxContainerResources {
            // MilliCPUToShares: at least 2.
            cpu_shares: (self.cpu_request * 1024 / 1000).max(2),
            memory_limit_in_bytes: self.memory_limit,
            oom_score_adj,
        }
    }

    /// kubelet's security context (security_context.go
    /// `determineEffectiveSecurityContext` and
    /// `convertToRuntimeSecurityContext`).
    fn cri_security(&self, pod: &cri::RunningPod) -> cri::LinuxContainerSecurityContext {
        let user = self.user.map(|value| cri::Int64Value { value });
        cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: self.add.clone(),
                drop_capabilities: self.drop.clone(),
            }),
            privileged: false,
            namespace_options: Some(pod.pod.namespaces()),
            run_as_user: user.clone(),
            run_as_group: user,
            readonly_rootfs: self.read_only_root,
            no_new_privs: self.no_new_privileges,
            masked_paths: MASKED_PATHS.iter().map(|&p| p.to_owned()).collect(),
            readonly_paths: READONLY_PATHS.iter().map(|&p| p.to_owned()).collect(),
            seccomp: Some(cri::SecurityProfile {
                profile_type: match self.seccomp.as_str() {
                    "RuntimeDefault" => 0,
                    "Unconfined" => 1,
                    other => panic!("seccompProfile {other} is not emulated here"),
                },
            }),
        }
    }

    /// The manifest's volumeMounts as kubelet passes them (kubelet_pods.go
    /// `makeMounts`), plus the termination log and /etc/hosts that kubelet
    /// adds. Emulated: a hostPath this machine lacks is an empty
    /// directory under `volumes` (containerd would make it on the host;
    /// the test leaves the host's tree alone). The test's containerd keeps
    /// its state where no distribution does, so no volume of the manifest
    /// shows it in the pod: portwatch reaches its bundles through its
    /// shims' /proc links, as on a node whose containerd the manifest
    /// does not know.
    fn mounts_on(&self, volumes: &Path) -> Vec<cri::Mount> {
        for dir in &self.directories {
            assert!(Path::new(dir).is_dir(), "hostPath {dir} (type Directory)");
        }
        let mut mounts: Vec<cri::Mount> = self
            .mounts
            .iter()
            .enumerate()
            .map(|(i, (host, path, ro))| {
                let host = if Path::new(host).exists() {
                    PathBuf::from(host)
                } else {
                    let empty = volumes.join(format!("volume-{i}"));
                    std::fs::create_dir_all(&empty).unwrap();
                    empty
                };
                cri::Mount {
                    container_path: path.clone(),
                    host_path: host.display().to_string(),
                    readonly: *ro,
                }
            })
            .collect();
        let hosts = volumes.join("etc-hosts");
        std::fs::copy("/etc/hosts", &hosts).unwrap();
        let termination = volumes.join("termination-log");
        std::fs::write(&termination, "").unwrap();
        mounts.extend([
            cri::Mount {
                container_path: "/etc/hosts".into(),
                host_path: hosts.display().to_string(),
                readonly: false,
            },
            cri::Mount {
                container_path: "/dev/termination-log".into(),
                host_path: termination.display().to_string(),
                readonly: false,
            },
        ]);
        mounts
    }
}

/// Asserts that process `pid` (the pod's portwatch) runs in a memory
/// cgroup limited as the manifest's `limits.memory` says (cgroup v1's
/// memory controller, this machine's).
fn assert_memory_limit(pid: u32, pod: &Pod) {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = cgroups
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p))
        .unwrap_or_else(|| panic!("no memory cgroup: {cgroups}"));
    let limit =
        std::fs::read_to_string(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"))
            .unwrap();
    assert_eq!(limit.trim(), pod.memory_limit.to_string(), "{path}");
}

/// The node's memory capacity as kubelet reads it (MemTotal), in bytes.
fn memory_capacity() -> i64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: i64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse().ok())
        .expect("MemTotal in /proc/meminfo");
    kib << 10
}

/// The node the pod runs on: its network namespace and name.
struct Node {
    netns: PathBuf,
    name: &'static str,
}

/// Rootful podman with storage of the test's own; dropping it removes the
/// containers it ran, the image and the storage.
struct Podman {
    dir: PathBuf,
    names: Vec<String>,
}

impl Podman {
    fn new(tag: &str) -> Podman {
        let dir = std::env::temp_dir().join(format!("pw-image-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Podman {
            dir,
            names: Vec::new(),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
        cmd
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run podman")
    }

    /// `podman run --name NAME OPTIONS IMAGE ARGS`, not started.
    fn run(&mut self, name: &str, options: &[String], image: &str, args: &[String]) -> Command {
        self.names.push(name.to_owned());
        let mut cmd = self.command();
        cmd.args(["run", "--rm", "--name", name])
            .args(options)
            .arg(image)
            .args(args);
        cmd
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = self.cli(&["rm", "-f", "-t", "0", name]);
        }
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.join("root"))
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Builds the image with `cargo xtask image` from the binary under test
/// (debug info stripped: 118 MB of it would make every gzip slow), into
/// `dir`; returns the archive.
fn build_image(dir: &Path) -> PathBuf {
    let binary = dir.join("portwatch");
    let out = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(bin())
        .arg(&binary)
        .output()
        .expect("objcopy (binutils)");
    assert!(out.status.success(), "objcopy: {out:?}");
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["xtask", "image", "--binary"])
        .arg(&binary)
        .arg("--out")
        .arg(dir.join("image"))
        .output()
        .expect("run cargo xtask image");
    assert!(out.status.success(), "cargo xtask image: {out:?}");
    dir.join("image/portwatch.tar")
}

/// The image's ENTRYPOINT, read from the OCI layout next to `tar`.
fn entrypoint(tar: &Path) -> Vec<String> {
    let layout = tar.with_file_name("portwatch-oci");
    let blob = |digest: &Value| -> Value {
        let hex = digest.as_str().unwrap().strip_prefix("sha256:").unwrap();
        let bytes = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = blob(&index["manifests"][0]["digest"]);
    let config = blob(&manifest["config"]["digest"]);
    serde_json::from_value(config["config"]["Entrypoint"].clone()).expect("an Entrypoint")
}

/// Loads the image into `podman` and checks that it carries the name the
/// manifest runs.
fn load(podman: &Podman, pod: &Pod) {
    let tar = build_image(&podman.dir);
    let out = podman.cli(&["load", "-i", tar.to_str().unwrap()]);
    assert!(out.status.success(), "podman load: {out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.lines()
            .any(|l| l.trim() == format!("Loaded image: {}", pod.image)),
        "the image built is not the manifest's {}: {said}",
        pod.image
    );
}

/// A listener on 127.0.0.1:`port` of `ns`, held by python3 as uid 65534
/// (its /proc/PID/fd is then not root's: CAP_DAC_READ_SEARCH is needed).
fn nobody_listens(ns: &Netns, port: u16) -> Process {
    let holder = ns.run(move || {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["/usr/bin/python3", "-c"])
            .arg(format!(
                "import socket,sys\na=socket.socket(); a.bind(('127.0.0.1',{port})); a.listen()\nsys.stdin.read()"
            ))
            .stdin(Stdio::piped());
        Process::spawn(cmd, &[])
    });
    let deadline = Instant::now() + WAIT;
    while ns
        .run(move || TcpStream::connect(("127.0.0.1", port)))
        .is_err()
    {
        assert!(Instant::now() < deadline, "python3 did not listen in time");
        std::thread::sleep(Duration::from_millis(50));
    }
    holder
}

/// GET /metrics at `addr` from inside `ns`: the status line and the body.
fn scrape(ns: &Netns, addr: String) -> String {
    ns.run(move || {
        let mut s = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(WAIT)).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    })
}

/// Asserts that process `pid` (the pod's portwatch, seen from the host)
/// runs with exactly the capabilities the manifest adds, in every set that
/// counts, as uid 0, with no_new_privs and a seccomp filter as its
/// securityContext says.
fn assert_capabilities(pid: u32, pod: &Pod) {
    let want: u64 = pod
        .add
        .iter()
        .map(|c| {
            let bit = EVERY_CAPABILITY
                .iter()
                .position(|e| e == c)
                .expect("a capability");
            1u64 << bit
        })
        .sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{set}:")))
            .unwrap_or_else(|| panic!("{set} in {status}"));
        let have = u64::from_str_radix(line.trim(), 16).unwrap();
        assert_eq!(have, want, "{set} of pid {pid}: {have:x}, want {want:x}");
    }
    assert!(
        status.lines().any(|l| l.starts_with("Uid:\t0\t0\t0\t0")),
        "{status}"
    );
    // allowPrivilegeEscalation: false, and the runtime's seccomp filter.
    assert_eq!(
        status.lines().any(|l| l == "NoNewPrivs:\t1"),
        pod.no_new_privileges,
        "{status}"
    );
    assert_eq!(
        status.lines().any(|l| l == "Seccomp:\t2"),
        pod.seccomp == "RuntimeDefault",
        "{status}"
    );
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "portwatch"
    );
}

/// The node of a test: a network namespace of its own.
fn node(ns: &Netns) -> Node {
    Node {
        netns: PathBuf::from(format!(
            "/proc/{}/task/{}/ns/net",
            std::process::id(),
            ns.tid
        )),
        name: "node-a",
    }
}

/// With the pod running on `ns`'s node (its args `args`): its metrics
/// endpoint answers on the pod's address, every series labelled with the
/// node's name.
fn assert_serves_metrics(ns: &Netns, args: &[String]) {
    // The args serve metrics on $(POD_IP): the node's address.
    let at = args
        .iter()
        .skip_while(|a| *a != "--metrics")
        .nth(1)
        .expect("the manifest's args serve metrics")
        .clone();
    assert!(at.starts_with("127.0.0.1:"), "{at}");
    let reply = scrape(ns, at);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("portwatch_"), "{reply}");
    // PORTWATCH_NODE (the downward API's spec.nodeName) labels every series.
    let series: Vec<&str> = reply
        .lines()
        .filter(|l| l.starts_with("portwatch_"))
        .collect();
    assert!(!series.is_empty(), "{reply}");
    for line in series {
        assert!(line.contains("node=\"node-a\""), "{line}");
    }
}

/// The next event of the test's node netns thread within `WAIT`, from the
/// pod's events (`next_event`); others (the host's other failures) are
/// skipped.
fn next_event_where(
    next_event: &dyn Fn(Duration) -> Option<Value>,
    what: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = next_event(left).unwrap_or_else(|| panic!("no event from the pod for {what}"));
        if wanted(&ev) {
            return ev;
        }
    }
}

/// The failing bind of a host process on `ns`'s node is caught by the pod
/// (its events from `next_event`), and its holder (a python3 of uid 65534
/// listening on `port`) named as portwatch on the host names it.
fn assert_names_host_holder(next_event: &dyn Fn(Duration) -> Option<Value>, ns: &Netns, port: u16) {
    let failed = ns.run(move || bind(&socket(false, false), v4(port)));
    assert_eq!(failed, Err(libc::EADDRINUSE));
    let ev = next_event_where(next_event, "the host's failure", |ev| {
        ev["comm"] == ns.comm.as_str()
    });
    assert_ours(&ev, ns);
    assert_eq!(ev["port"], port, "{ev:#}");
    // The same holder, field for field, as portwatch on the host names it.
    let (code, host) = who(ns, &[&port.to_string()]);
    assert_eq!(code, 1, "{host:#}");
    let in_pod = holder(&ev);
    let on_host = &host["sockets"][0];
    for key in ["pid", "comm", "cmdline", "uid", "state", "addr", "port"] {
        assert_eq!(in_pod[key], on_host[key], "{key}: pod {ev:#} host {host:#}");
    }
    assert_eq!(in_pod["uid"], 65534, "{ev:#}");
    assert_eq!(in_pod["comm"], "python3", "{ev:#}");
}

/// Asserts that a pod's run without the host's PID namespace refused as
/// it must: exit status `code`, nothing on stdout, and on stderr the one
/// line that says what to set.
fn assert_refusal(what: &str, code: Option<i32>, want: i32, stdout: &str, stderr: &str) {
    assert_eq!(code, Some(want), "{what}: {stdout}{stderr}");
    assert!(stdout.is_empty(), "{what}: {stdout}");
    assert_eq!(stderr.lines().count(), 1, "{what}: {stderr}");
    assert!(stderr.starts_with(REFUSAL), "{what}: {stderr}");
    assert!(
        stderr.trim_end().ends_with(
            ") hides the processes that hold ports; set PORTWATCH_NODE_PIDNS=1 only \
             where this namespace holds the whole node (kind)"
        ),
        "{what}: {stderr}"
    );
}

/// The sandbox id CNI portmap's rule comment names (64 hex digits).
const SANDBOX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// kube-proxy's nftables NodePort `port` for Service shop/web, endpoint
/// 10.244.0.5:8080: the few lines of its `ip kube-proxy` table that
/// steer it (tests/kube_proxy.rs loads the whole table and connects).
fn kube_proxy_rules(port: u16) -> String {
    let ext = "external-KHN6ECMT-shop/web/tcp/http";
    let svc = "service-KHN6ECMT-shop/web/tcp/http";
    let ep = "endpoint-YDREIN3S-shop/web/tcp/http__10.244.0.5/8080";
    format!(
        "add table ip kube-proxy
add map ip kube-proxy service-nodeports {{ type inet_proto . inet_service : verdict ; }}
add chain ip kube-proxy nat-prerouting {{ type nat hook prerouting priority -100 ; }}
add chain ip kube-proxy {svc}
add chain ip kube-proxy {ext}
add chain ip kube-proxy {ep}
add rule ip kube-proxy nat-prerouting meta l4proto . th dport vmap @service-nodeports
add rule ip kube-proxy {ext} goto {svc}
add rule ip kube-proxy {svc} numgen random mod 1 vmap {{ 0 : goto {ep} }}
add rule ip kube-proxy {ep} meta l4proto tcp dnat to 10.244.0.5:8080
add element ip kube-proxy service-nodeports {{ tcp . {port} : goto {ext} }}
"
    )
}

/// A Kubernetes hostPort on the node as CNI portmap writes it (its chains,
/// its comment naming the sandbox) and a NodePort as kube-proxy's nftables
/// mode writes it, loaded in `ns`: `who` run inside the pod by `exec` (the
/// pod's namespaces and capabilities, the image's own `iptables-save` and
/// `nft`) names each rule, its target, its sandbox or Service exactly as
/// `who` on the host does.
fn assert_names_dnat_as_host(ns: &Netns, mut exec: impl FnMut(&[&str]) -> Output) {
    let (host_port, node_port) = (port(), port());
    let dn = "CNI-DN-0123456789abcdef01234";
    let portmap = format!(
        r#"*nat
:CNI-HOSTPORT-DNAT - [0:0]
:{dn} - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"{SANDBOX}\"" -m multiport --dports {host_port} -j {dn}
-A {dn} -p tcp -m tcp --dport {host_port} -j DNAT --to-destination 10.88.0.2:80
COMMIT
"#
    );
    let kube_proxy = kube_proxy_rules(node_port);
    ns.run(move || {
        feed("iptables-restore", &["--noflush"], &portmap);
        feed("nft", &["-f", "-"], &kube_proxy);
    });
    for (port, key, want) in [
        (host_port, "sandbox", SANDBOX),
        (node_port, "service", "web"),
    ] {
        let (code, host) = who(ns, &[&port.to_string()]);
        assert_eq!(code, 1, "{host:#}");
        let rule = &host["dnat"][0];
        assert!(rule[key] == want || rule[key]["name"] == want, "{host:#}");
        let (code, in_pod) = parse(&exec(&[
            "/usr/bin/portwatch",
            "who",
            &port.to_string(),
            "--json",
        ]));
        assert_eq!(code, 1, "{in_pod:#}");
        assert_eq!(in_pod["dnat"], host["dnat"], "pod {in_pod:#} host {host:#}");
    }
}

/// The pod as the manifest declares it, under podman, on a node emulated by
/// a network namespace of the test's.
#[test]
fn the_daemonset_names_a_host_holder_as_on_the_host() {
    let pod = Pod::from_manifest();
    let mut podman = Podman::new("host");
    load(&podman, &pod);
    let ns = Netns::new("pw-node");
    let node = node(&ns);
    let port = port();
    let _holder = nobody_listens(&ns, port);
    let options = pod.podman_options(&node);
    let args = pod.expanded_args(&node);
    let cmd = podman.run("pw-daemonset", &options, &pod.image, &args);
    let tracer = Tracer::try_spawn(cmd).unwrap_or_else(|e| panic!("the pod refused: {e}"));
    let out = podman.cli(&["inspect", "--format", "{{.State.Pid}}", "pw-daemonset"]);
    let pid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("its pid");
    assert_capabilities(pid, &pod);
    assert_names_dnat_as_host(&ns, |cmd| {
        podman
            .command()
            .args(["exec", "pw-daemonset"])
            .args(cmd)
            .output()
            .expect("podman exec")
    });
    assert_serves_metrics(&ns, &args);
    assert_names_host_holder(&|t| tracer.next_event(t), &ns, port);
    let (status, _, _) = tracer.stop();
    assert!(status.success(), "the pod did not stop cleanly: {status}");
}

/// Imports the image built from the binary under test into `ctd`'s
/// `k8s.io` namespace, as the manifest says to load it (`ctr -n k8s.io
/// images import`), and checks that it carries the name the manifest runs.
fn import_into(ctd: &Containerd, pod: &Pod) -> PathBuf {
    let tar = build_image(&ctd.dir);
    let said = ctd
        .ctr(&["images", "import", tar.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("{e}\n{}", ctd.log()));
    let listed = ctd.ctr(&["images", "ls", "-q"]).unwrap();
    assert!(
        listed.lines().any(|l| l == pod.image),
        "the image imported is not the manifest's {}: {said}\n{listed}",
        pod.image
    );
    tar
}

/// Runs `pod`, made from `manifest`, on `ctd`'s node as kubelet runs it:
/// RunPodSandbox, then CreateContainer and StartContainer of the
/// manifest's container. Returns the pod, its container's id and pid.
fn run_daemonset(
    ctd: &mut Containerd,
    manifest: &Pod,
    pod: cri::Pod,
    node: &Node,
) -> (cri::RunningPod, String, u32) {
    let volumes = ctd.dir.join(format!("volumes-{}", pod.name));
    let pod = cri::run_pod(ctd, pod);
    let config = manifest.cri_container(&pod, node, &volumes);
    let (id, pid) = cri::start_container(ctd, &pod, config);
    (pod, id, pid)
}

/// The DaemonSet pod's log as `kubectl logs -f` shows it: its stdout's
/// NDJSON events, its stderr's notices.
struct PodLog {
    follower: cri::LogFollower,
    notices: std::cell::RefCell<Vec<String>>,
}

impl PodLog {
    /// Follows the log at `path` until portwatch says it is ready.
    fn ready(path: PathBuf) -> PodLog {
        let log = PodLog {
            follower: cri::LogFollower::start(path),
            notices: Default::default(),
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match log.follower.lines.recv_timeout(left) {
                Ok((cri::Stream::Stderr, line)) => {
                    let ready =
                        serde_json::from_str::<Value>(&line).is_ok_and(|v| v["type"] == "ready");
                    log.notices.borrow_mut().push(line);
                    if ready {
                        return log;
                    }
                }
                Ok((cri::Stream::Stdout, line)) => panic!("an event before ready: {line}"),
                Err(_) => panic!("the pod was not ready in time: {:?}", log.notices),
            }
        }
    }

    /// Its next event within `timeout`.
    fn next_event(&self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.follower.lines.recv_timeout(left) {
                Ok((cri::Stream::Stdout, line)) => {
                    return Some(serde_json::from_str(&line).unwrap_or_else(|e| {
                        panic!("a log line of stdout is not JSON ({e}): {line}")
                    }))
                }
                Ok((cri::Stream::Stderr, line)) => self.notices.borrow_mut().push(line),
                Err(_) => return None,
            }
        }
    }
}

/// A failed bind inside an ordinary pod (shop/web-0, whose container
/// `sidecar` wants the port its container `web` serves, in their shared
/// network namespace) is caught by the DaemonSet's pod (container
/// `daemonset` on `ctd`, its log `log`), its holder named as pod
/// shop/web-0 container web, as portwatch on the host names it; `who`
/// run in the DaemonSet's pod (ExecSync) names it the same.
fn assert_names_pod_holder(ctd: &mut Containerd, daemonset: &str, log: &PodLog) {
    // A StatefulSet's pod (its labels as the controller sets them): its
    // controller is named through its containerd's CRI socket, which the
    // pod reaches through a shim's /proc/SHIM/root.
    let shop = cri::run_pod(
        ctd,
        cri::Pod::new("shop", "web-0", "web").labelled(&[
            ("controller-revision-hash", "web-6b8d9c7f4"),
            ("statefulset.kubernetes.io/pod-name", "web-0"),
        ]),
    );
    let pause = shop.pause_pid(ctd);
    let port = port();
    let port_arg = port.to_string();
    let httpd = ["/bin/busybox", "httpd", "-f", "-p", &port_arg];
    let (web, _) = cri::run_container(ctd, &shop, "web", &[port], &httpd);
    let on_host = cri::who_listening(pause, port);
    let pause_arg = pause.to_string();
    let (code, in_pod) = parse(&cri::exec_sync(
        ctd,
        daemonset,
        &[
            "/usr/bin/portwatch",
            "who",
            &port_arg,
            "--netns",
            &pause_arg,
            "--json",
        ],
    ));
    assert_eq!(code, 1, "{in_pod:#}");
    assert_eq!(
        in_pod["sockets"], on_host["sockets"],
        "pod {in_pod:#} host {on_host:#}"
    );
    let named = &on_host["sockets"][0]["container"];
    assert_eq!(named["id"], web.as_str(), "{on_host:#}");
    assert_eq!(named["pod"]["namespace"], "shop", "{on_host:#}");
    assert_eq!(named["pod"]["name"], "web-0", "{on_host:#}");
    assert_eq!(named["pod"]["container"], "web", "{on_host:#}");
    assert_eq!(named["pod"]["controller"], "statefulset", "{on_host:#}");

    let netns = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(format!("/proc/{pause}/ns/net")).expect("the pod's network namespace"),
    );
    cri::run_container(ctd, &shop, "sidecar", &[port], &httpd);
    let ev = next_event_where(&|t| log.next_event(t), "the pod's failure", |ev| {
        ev["port"] == port && ev["netns"] == netns
    });
    assert_eq!(ev["errno"], "EADDRINUSE", "{ev:#}");
    assert_eq!(ev["comm"], "busybox", "{ev:#}");
    let h = holder(&ev);
    assert_eq!(h["container"], *named, "pod {ev:#} host {on_host:#}");
    assert_eq!(h["pid"], on_host["sockets"][0]["pid"], "{ev:#}");
    let fix = ev["fix"].as_str().unwrap_or_default();
    assert!(fix.contains("pod shop/web-0"), "{fix}");
    for never in ["docker stop", "podman stop", "kill", "kubectl delete"] {
        assert!(!fix.contains(never), "{fix}");
    }
}

/// The DaemonSet's pod as kubelet runs it, through containerd's CRI plugin
/// (Debian's containerd 1.6, a daemon of the test's own in a network
/// namespace that plays the node; common/cri.rs sends kubelet's configs):
/// the image imported into the `k8s.io` namespace, RunPodSandbox with the
/// node's pid and network namespaces (hostPID, hostNetwork), then
/// CreateContainer and StartContainer with the manifest's capabilities,
/// volumes, environment (the downward API's filled in), resources and
/// security context. Inside it portwatch runs with exactly the
/// manifest's capabilities, under the runtime's seccomp filter and
/// no_new_privs; `who` by ExecSync names DNAT rules as on the host; its
/// metrics answer on the pod's address; its log names the holder of a host
/// process's failed bind and of one inside another pod as portwatch on the
/// host does. StopContainer ends it with status 0.
#[test]
fn through_cri_the_daemonset_names_host_and_pod_holders() {
    let manifest = Pod::from_manifest();
    let mut ctd = Containerd::start_with("ds", true);
    let tar = import_into(&ctd, &manifest);
    let node = node(ctd.node());
    let port = port();
    let _holder = nobody_listens(ctd.node(), port);
    let pod = manifest.cri_pod("x7k2p");
    let (daemonset, id, pid) = run_daemonset(&mut ctd, &manifest, pod, &node);
    let log = PodLog::ready(daemonset.log_of(&manifest.container));
    // Kubernetes' args keep the image's ENTRYPOINT.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let want: Vec<String> = entrypoint(&tar)
        .into_iter()
        .chain(manifest.expanded_args(&node))
        .collect();
    assert_eq!(
        cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a))
            .collect::<Vec<_>>(),
        want
    );
    assert_capabilities(pid, &manifest);
    assert_memory_limit(pid, &manifest);
    assert_names_dnat_as_host(ctd.node(), |cmd| cri::exec_sync(&ctd, &id, cmd));
    assert_serves_metrics(ctd.node(), &manifest.expanded_args(&node));
    assert_names_host_holder(&|t| log.next_event(t), ctd.node(), port);
    assert_names_pod_holder(&mut ctd, &id, &log);
    let grace = Duration::from_secs(manifest.termination_grace as u64);
    cri::stop_container(&ctd, &id, grace);
    let status = cri::exited(&ctd, &id);
    assert_eq!(status.exit_code, 0, "{status:?}: {:?}", log.notices);
    drop(ctd);
}

/// The same pod through CRI without hostPID: in its container's own pid
/// namespace (kubelet's default for a v1 pod) and in the pod's shared one
/// (`shareProcessNamespace: true`), portwatch exits with status 3, and its
/// log holds the one line that says what to set, nothing else.
#[test]
fn through_cri_without_host_pid_the_pod_refuses_in_one_line() {
    let manifest = Pod {
        host_pid: false,
        ..Pod::from_manifest()
    };
    let mut ctd = Containerd::start_with("ds-nopid", true);
    import_into(&ctd, &manifest);
    let node = node(ctd.node());
    for (mode, suffix) in [
        (cri::NamespaceMode::Container, "c8v4n"),
        (cri::NamespaceMode::Pod, "p9w5m"),
    ] {
        let mut pod = manifest.cri_pod(suffix);
        pod.pid = mode;
        let (pod, id, _) = run_daemonset(&mut ctd, &manifest, pod, &node);
        let status = cri::exited(&ctd, &id);
        let lines = cri::read_log(&pod.log_of(&manifest.container));
        let of = |stream| -> String {
            lines
                .iter()
                .filter(|(s, _)| *s == stream)
                .map(|(_, l)| format!("{l}\n"))
                .collect()
        };
        assert_refusal(
            &format!("pid {mode:?}"),
            Some(status.exit_code),
            3,
            &of(cri::Stream::Stdout),
            &of(cri::Stream::Stderr),
        );
    }
    drop(ctd);
}

/// The same pod without hostPID: every command that names holders refuses
/// with the one line that says what to set, exit 3 (125 for `run`, whose
/// other statuses are CMD's), and prints nothing else.
#[test]
fn without_host_pid_the_pod_refuses_in_one_line() {
    let pod = Pod {
        host_pid: false,
        ..Pod::from_manifest()
    };
    let mut podman = Podman::new("nopid");
    load(&podman, &pod);
    // Built again from the same binary: the same bytes, so the same digest.
    let again = podman.dir.join("again");
    std::fs::create_dir_all(&again).unwrap();
    let index = |tar: &Path| std::fs::read(tar.with_file_name("portwatch-oci/index.json")).unwrap();
    assert_eq!(
        index(&podman.dir.join("image/portwatch.tar")),
        index(&build_image(&again)),
        "two builds gave two digests"
    );
    let ns = Netns::new("pw-node");
    let node = Node {
        netns: PathBuf::from(format!(
            "/proc/{}/task/{}/ns/net",
            std::process::id(),
            ns.tid
        )),
        name: "node-a",
    };
    let options = pod.podman_options(&node);
    let manifest_args = pod.expanded_args(&node);
    let cases: [(Vec<String>, i32); 5] = [
        (manifest_args, 3),
        (vec!["who".into(), "80".into()], 3),
        (vec!["wait".into(), "80".into()], 3),
        (vec!["check".into(), "80".into()], 3),
        (
            vec!["run".into(), "--".into(), "/usr/bin/portwatch".into()],
            125,
        ),
    ];
    for (i, (args, code)) in cases.into_iter().enumerate() {
        let out = podman
            .run(&format!("pw-nopid-{i}"), &options, &pod.image, &args)
            .output()
            .expect("podman run");
        assert_refusal(
            &format!("{args:?}"),
            out.status.code(),
            code,
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
        );
    }
}

/// The check itself, without a container: a private PID namespace is
/// refused, with its own /proc or without; one declared whole with
/// PORTWATCH_NODE_PIDNS=1 is not.
#[test]
fn a_private_pid_namespace_is_refused() {
    let ns = Netns::new("pw-pidns");
    let in_pidns = |mount_proc: bool, env: Option<&str>| {
        let env = env.map(str::to_owned);
        ns.run(move || {
            let mut cmd = Command::new("unshare");
            cmd.args(["-p", "-f"]);
            if mount_proc {
                cmd.arg("--mount-proc");
            }
            if let Some(v) = env {
                cmd.env("PORTWATCH_NODE_PIDNS", v);
            }
            cmd.arg(bin())
                .args(["who", "80", "--json"])
                .output()
                .expect("unshare (util-linux)")
        })
    };
    for mount_proc in [true, false] {
        let out = in_pidns(mount_proc, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with(REFUSAL), "{stderr}");
        assert!(out.stdout.is_empty(), "{out:?}");
    }
    // Anything but exactly 1 is no declaration.
    let out = in_pidns(true, Some("yes"));
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    // Port 80 of a new network namespace is free: exit 0, an answer.
    let out = in_pidns(true, Some("1"));
    let (code, v) = parse(&out);
    assert_eq!(code, 0, "{out:?}");
    assert_eq!(v["free"], true, "{v:#}");
    // There the BPF iterator's pids (the initial namespace's) are not
    // /proc's: the walk answers, and says why.
    let out = ns.run(|| {
        let _held = std::net::TcpListener::bind("127.0.0.1:8080").expect("listener");
        Command::new("unshare")
            .args(["-p", "-f", "--mount-proc"])
            .env("PORTWATCH_NODE_PIDNS", "1")
            .arg(bin())
            .args(["who", "8080", "--json"])
            .output()
            .expect("unshare (util-linux)")
    });
    let (_, v) = parse(&out);
    assert_eq!(v["lookup"], "walk", "{v:#}");
    assert!(
        v["lookup_note"]
            .as_str()
            .is_some_and(|n| n.contains("nested pid namespace")),
        "{v:#}"
    );
}
