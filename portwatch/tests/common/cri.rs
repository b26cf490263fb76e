//! Pods made as kubelet makes them: containerd's CRI plugin (Debian's
//! containerd 1.6) driven over the CRI gRPC API (k8s.io/cri-api,
//! `runtime.v1`): RunPodSandbox, CreateContainer, StartContainer, then
//! StopPodSandbox and RemovePodSandbox to clean up.
//!
//! The configs are kubelet's own: the sandbox's as
//! pkg/kubelet/kuberuntime/kuberuntime_sandbox.go `generatePodSandboxConfig`
//! writes it (labels from labels.go `newPodLabels`, the pod's annotations,
//! hostname, DNS, log directory `/var/log/pods/NS_NAME_UID`, port
//! mappings, cgroup parent `kubepods/QOS/podUID`, namespace options), the
//! container's as kuberuntime_container.go `generateContainerConfig` writes
//! it (labels.go `newContainerLabels` and `newContainerAnnotations`, log
//! path `NAME/RESTARTS.log`, besteffort resources). Left out here, because
//! a test pod has none: volumes and their mounts (service account token,
//! /etc/hosts, termination log), environment variables, probes; the
//! DaemonSet's pod (tests/image.rs) adds what its manifest declares.
//! The log directory and the cgroups sit under the test's own directory
//! and cgroup parent, in kubelet's shape. Besides: ExecSync (`kubectl
//! exec`), StopContainer, ContainerStatus, and a reader of the CRI log
//! format that kubelet's log files are written in (`kubectl logs`).
//!
//! The messages are declared by hand with the field numbers of cri-api's
//! pkg/apis/runtime/v1/api.proto (k8s.io/cri-api v0.25.0, the `runtime.v1`
//! of containerd 1.6's era; to cri-api's master of 2026-07 fields were only
//! added, and `KeyValue.value` became `bytes`), and only the
//! fields a test sends or reads; portwatch's own CRI client sends them
//! (`portwatch_core::holders::containers::cri::call`). A pod's volumes,
//! environment and security context are filled in by the test that needs
//! them (tests/image.rs, from the DaemonSet's manifest).

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver},
        Arc,
    },
    time::{Duration, Instant},
};

use portwatch_core::holders::containers::cri::{self, PodSandboxMetadata};
use serde_json::Value;

use super::{
    bin,
    containerd::{oci_image_of, Containerd},
    parse, WAIT,
};

/// How long one CRI call may take (RunPodSandbox sets up CNI).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The sandbox ("pause") image, imported as `pwtest:1` is.
const PAUSE_IMAGE: &str = "docker.io/library/pwpause:1";
/// The image of the pods' containers.
const IMAGE: &str = "docker.io/library/pwtest:1";

/// `runtime.v1.Protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum Protocol {
    Tcp = 0,
    Udp = 1,
}

/// `runtime.v1.NamespaceMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum NamespaceMode {
    Pod = 0,
    Container = 1,
    Node = 2,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DnsConfig {
    #[prost(string, repeated, tag = "1")]
    pub servers: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub searches: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    pub options: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PortMapping {
    #[prost(enumeration = "Protocol", tag = "1")]
    pub protocol: i32,
    #[prost(int32, tag = "2")]
    pub container_port: i32,
    #[prost(int32, tag = "3")]
    pub host_port: i32,
    #[prost(string, tag = "4")]
    pub host_ip: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NamespaceOption {
    #[prost(enumeration = "NamespaceMode", tag = "1")]
    pub network: i32,
    #[prost(enumeration = "NamespaceMode", tag = "2")]
    pub pid: i32,
    #[prost(enumeration = "NamespaceMode", tag = "3")]
    pub ipc: i32,
}

/// `SecurityProfile`: an empty one is `RuntimeDefault` (profile_type 0).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SecurityProfile {
    #[prost(int32, tag = "1")]
    pub profile_type: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxSandboxSecurityContext {
    #[prost(message, optional, tag = "1")]
    pub namespace_options: Option<NamespaceOption>,
    #[prost(bool, tag = "6")]
    pub privileged: bool,
    #[prost(message, optional, tag = "9")]
    pub seccomp: Option<SecurityProfile>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxPodSandboxConfig {
    #[prost(string, tag = "1")]
    pub cgroup_parent: String,
    #[prost(message, optional, tag = "2")]
    pub security_context: Option<LinuxSandboxSecurityContext>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxConfig {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<PodSandboxMetadata>,
    #[prost(string, tag = "2")]
    pub hostname: String,
    #[prost(string, tag = "3")]
    pub log_directory: String,
    #[prost(message, optional, tag = "4")]
    pub dns_config: Option<DnsConfig>,
    #[prost(message, repeated, tag = "5")]
    pub port_mappings: Vec<PortMapping>,
    #[prost(map = "string, string", tag = "6")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "7")]
    pub annotations: HashMap<String, String>,
    #[prost(message, optional, tag = "8")]
    pub linux: Option<LinuxPodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RunPodSandboxRequest {
    #[prost(message, optional, tag = "1")]
    pub config: Option<PodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RunPodSandboxResponse {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint32, tag = "2")]
    pub attempt: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageSpec {
    #[prost(string, tag = "1")]
    pub image: String,
    #[prost(string, tag = "18")]
    pub user_specified_image: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxContainerResources {
    #[prost(int64, tag = "3")]
    pub cpu_shares: i64,
    #[prost(int64, tag = "4")]
    pub memory_limit_in_bytes: i64,
    #[prost(int64, tag = "5")]
    pub oom_score_adj: i64,
}

/// `Capability`: names without `CAP_`, as kubelet passes the manifest's.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Capability {
    #[prost(string, repeated, tag = "1")]
    pub add_capabilities: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub drop_capabilities: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Int64Value {
    #[prost(int64, tag = "1")]
    pub value: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxContainerSecurityContext {
    #[prost(message, optional, tag = "1")]
    pub capabilities: Option<Capability>,
    #[prost(bool, tag = "2")]
    pub privileged: bool,
    #[prost(message, optional, tag = "3")]
    pub namespace_options: Option<NamespaceOption>,
    #[prost(message, optional, tag = "5")]
    pub run_as_user: Option<Int64Value>,
    #[prost(bool, tag = "7")]
    pub readonly_rootfs: bool,
    #[prost(bool, tag = "11")]
    pub no_new_privs: bool,
    #[prost(message, optional, tag = "12")]
    pub run_as_group: Option<Int64Value>,
    #[prost(string, repeated, tag = "13")]
    pub masked_paths: Vec<String>,
    #[prost(string, repeated, tag = "14")]
    pub readonly_paths: Vec<String>,
    #[prost(message, optional, tag = "15")]
    pub seccomp: Option<SecurityProfile>,
}

/// `KeyValue`: an environment variable (`value` is `bytes` in cri-api
/// 0.33+, the same on the wire).
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `Mount`: a bind mount of `host_path`; propagation left at 0
/// (`PROPAGATION_PRIVATE`, kubelet's for a volume without
/// `mountPropagation`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Mount {
    #[prost(string, tag = "1")]
    pub container_path: String,
    #[prost(string, tag = "2")]
    pub host_path: String,
    #[prost(bool, tag = "3")]
    pub readonly: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxContainerConfig {
    #[prost(message, optional, tag = "1")]
    pub resources: Option<LinuxContainerResources>,
    #[prost(message, optional, tag = "2")]
    pub security_context: Option<LinuxContainerSecurityContext>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerConfig {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ContainerMetadata>,
    #[prost(message, optional, tag = "2")]
    pub image: Option<ImageSpec>,
    #[prost(string, repeated, tag = "3")]
    pub command: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    pub args: Vec<String>,
    #[prost(message, repeated, tag = "6")]
    pub envs: Vec<KeyValue>,
    #[prost(message, repeated, tag = "7")]
    pub mounts: Vec<Mount>,
    #[prost(map = "string, string", tag = "9")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "10")]
    pub annotations: HashMap<String, String>,
    #[prost(string, tag = "11")]
    pub log_path: String,
    #[prost(message, optional, tag = "15")]
    pub linux: Option<LinuxContainerConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateContainerRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
    #[prost(message, optional, tag = "2")]
    pub config: Option<ContainerConfig>,
    #[prost(message, optional, tag = "3")]
    pub sandbox_config: Option<PodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateContainerResponse {
    #[prost(string, tag = "1")]
    pub container_id: String,
}

/// StartContainerRequest, StopPodSandboxRequest and RemovePodSandboxRequest
/// (one id each, field 1).
#[derive(Clone, PartialEq, prost::Message)]
pub struct IdRequest {
    #[prost(string, tag = "1")]
    pub id: String,
}

/// The empty responses.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StopContainerRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(int64, tag = "2")]
    pub timeout: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecSyncRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, repeated, tag = "2")]
    pub cmd: Vec<String>,
    /// Seconds.
    #[prost(int64, tag = "3")]
    pub timeout: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecSyncResponse {
    #[prost(bytes = "vec", tag = "1")]
    pub stdout: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub stderr: Vec<u8>,
    #[prost(int32, tag = "3")]
    pub exit_code: i32,
}

/// `runtime.v1.ContainerState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum ContainerState {
    Created = 0,
    Running = 1,
    Exited = 2,
    Unknown = 3,
}

/// ContainerStatusRequest (`container_id`, `verbose`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerStatusRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerStatus {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(enumeration = "ContainerState", tag = "3")]
    pub state: i32,
    #[prost(int32, tag = "7")]
    pub exit_code: i32,
    #[prost(string, tag = "15")]
    pub log_path: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerStatusResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<ContainerStatus>,
}

/// The containerd config that turns its CRI plugin on, for a test: the
/// imported sandbox image, CNI's plugins from Debian's
/// containernetworking-plugins and a bridge + host-local + portmap network
/// under `dir`, `restrict_oom_score_adj` (without it, starting a container
/// fails setting oom_score_adj here).
pub fn plugin_config(dir: &Path) -> String {
    let conf_dir = dir.join("cni");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let network = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "pw-k8s",
        "plugins": [
            {
                "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": dir.join("ipam"),
                    "ranges": [[{"subnet": "10.88.0.0/16"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    });
    std::fs::write(conf_dir.join("10-pw-k8s.conflist"), network.to_string()).unwrap();
    format!(
        "[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{PAUSE_IMAGE}\"\n  restrict_oom_score_adj = true\n  [plugins.\"io.containerd.grpc.v1.cri\".cni]\n    bin_dir = \"/usr/lib/cni\"\n    conf_dir = \"{}\"\n",
        conf_dir.display()
    )
}

/// The sandbox image: busybox-static sleeping, as a pause container does.
pub fn pause_image(dir: &Path) -> PathBuf {
    oci_image_of(dir, "pwpause:1", &["/bin/busybox", "sleep", "100000000"])
}

/// A pod as its manifest would set it.
#[derive(Clone, Debug)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The pod's own labels (`app`, and those its controller stamps).
    pub labels: Vec<(String, String)>,
    /// `hostNetwork: true`.
    pub host_network: bool,
    /// Its pid namespace: the node's (`hostPID: true`), the pod's
    /// (`shareProcessNamespace: true`) or, kubelet's default for a v1 pod,
    /// each container's own.
    pub pid: NamespaceMode,
    /// `dnsPolicy: ClusterFirstWithHostNet`: the cluster's DNS even on the
    /// node's network.
    pub cluster_dns_with_host_net: bool,
    /// Its QoS class's cgroup under `kubepods` (`besteffort`,
    /// `burstable`; empty for guaranteed).
    pub qos: &'static str,
    /// hostPort → containerPort (TCP).
    pub host_ports: Vec<(u16, u16)>,
}

impl Pod {
    /// Pod `namespace/name` with label `app=APP` and no ports.
    pub fn new(namespace: &str, name: &str, app: &str) -> Pod {
        // A UID in the API server's shape (a v4 UUID), the same for a
        // given name within one test process.
        let n = name
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31) ^ u32::from(b));
        Pod {
            namespace: namespace.into(),
            name: name.into(),
            uid: format!(
                "{n:08x}-{:04x}-4000-8000-{:012x}",
                std::process::id() & 0xffff,
                n
            ),
            labels: vec![("app".into(), app.into())],
            host_network: false,
            pid: NamespaceMode::Container,
            cluster_dns_with_host_net: false,
            qos: "besteffort",
            host_ports: Vec::new(),
        }
    }

    /// With the labels its controller stamps on it.
    pub fn labelled(mut self, labels: &[(&str, &str)]) -> Pod {
        self.labels
            .extend(labels.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())));
        self
    }

    /// kubelet's namespace options: the node's network for `hostNetwork`,
    /// the pid namespace `pid` says, the pod's ipc.
    pub fn namespaces(&self) -> NamespaceOption {
        NamespaceOption {
            network: if self.host_network {
                NamespaceMode::Node
            } else {
                NamespaceMode::Pod
            } as i32,
            pid: self.pid as i32,
            ipc: NamespaceMode::Pod as i32,
        }
    }

    /// The sandbox config kubelet sends for this pod
    /// (kuberuntime_sandbox.go `generatePodSandboxConfig`).
    fn sandbox_config(&self, ctd: &Containerd) -> PodSandboxConfig {
        let mut labels: HashMap<String, String> = self.labels.iter().cloned().collect();
        // labels.go `newPodLabels`.
        labels.insert("io.kubernetes.pod.name".into(), self.name.clone());
        labels.insert("io.kubernetes.pod.namespace".into(), self.namespace.clone());
        labels.insert("io.kubernetes.pod.uid".into(), self.uid.clone());
        // The pod's annotations, with those kubelet's pod config adds.
        let annotations = HashMap::from([
            (
                "kubernetes.io/config.seen".into(),
                "2026-12-07T19:00:00.000000000Z".into(),
            ),
            ("kubernetes.io/config.source".into(), "api".into()),
        ]);
        // `dnsPolicy: ClusterFirst` (the default): the cluster's DNS, but
        // the node's resolv.conf for a hostNetwork pod unless its policy is
        // ClusterFirstWithHostNet; a hostNetwork pod gets no hostname
        // (GetPodDNS, GeneratePodHostNameAndDomain).
        let hostname = if self.host_network {
            String::new()
        } else {
            self.name.clone()
        };
        let dns_config = if self.host_network && !self.cluster_dns_with_host_net {
            node_dns()
        } else {
            DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec![
                    format!("{}.svc.cluster.local", self.namespace),
                    "svc.cluster.local".into(),
                    "cluster.local".into(),
                ],
                options: vec!["ndots:5".into()],
            }
        };
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: 0,
            }),
            hostname,
            log_directory: self.log_directory(ctd),
            dns_config: Some(dns_config),
            port_mappings: self
                .host_ports
                .iter()
                .map(|&(host, container)| PortMapping {
                    protocol: Protocol::Tcp as i32,
                    container_port: container.into(),
                    host_port: host.into(),
                    host_ip: String::new(),
                })
                .collect(),
            labels,
            annotations,
            linux: Some(LinuxPodSandboxConfig {
                // The cgroupfs driver's pod cgroup, under the test's parent.
                cgroup_parent: format!(
                    "/{}/kubepods/{}pod{}",
                    ctd.cgroup_parent,
                    if self.qos.is_empty() {
                        String::new()
                    } else {
                        format!("{}/", self.qos)
                    },
                    self.uid
                ),
                // generatePodSandboxLinuxConfig: the sandbox always under
                // the runtime's default seccomp profile.
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(self.namespaces()),
                    privileged: false,
                    seccomp: Some(SecurityProfile::default()),
                }),
            }),
        }
    }

    /// kubelet's `/var/log/pods/NS_NAME_UID`, under the test's directory.
    fn log_directory(&self, ctd: &Containerd) -> String {
        ctd.dir
            .join("pods")
            .join(format!("{}_{}_{}", self.namespace, self.name, self.uid))
            .display()
            .to_string()
    }
}

/// The node's resolv.conf, as kubelet passes it to a hostNetwork pod.
fn node_dns() -> DnsConfig {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut dns = DnsConfig::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.servers.extend(words.map(str::to_owned)),
            Some("search") => dns.searches.extend(words.map(str::to_owned)),
            Some("options") => dns.options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    dns
}

/// Calls `method` on `ctd`'s CRI socket; retries while the CRI plugin is
/// still starting.
fn call<Q, R>(ctd: &Containerd, method: &'static str, request: Q) -> R
where
    Q: prost::Message + Clone + Send + Sync + 'static,
    R: prost::Message + Default + Send + Sync + 'static,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match cri::call(&ctd.socket(), method, request.clone(), CALL_TIMEOUT) {
            Ok(r) => return r,
            Err(e) if e.to_string().contains("not initialized") => {
                assert!(Instant::now() < deadline, "{e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{e}\n{}", ctd.log()),
        }
    }
}

/// A running pod: its sandbox id and sandbox config.
pub struct RunningPod {
    pub pod: Pod,
    pub sandbox: String,
    config: PodSandboxConfig,
}

impl RunningPod {
    /// The pid of its sandbox's first process (in the pod's network
    /// namespace).
    pub fn pause_pid(&self, ctd: &Containerd) -> u32 {
        init_pid(ctd, &self.sandbox)
    }

    /// The log file of its container `name` (first run), where
    /// containerd's CRI plugin writes what it prints, as kubelet asked.
    pub fn log_of(&self, name: &str) -> PathBuf {
        Path::new(&self.config.log_directory).join(format!("{name}/0.log"))
    }
}

/// The first process of task `id`.
fn init_pid(ctd: &Containerd, id: &str) -> u32 {
    let pid = std::fs::read_to_string(ctd.bundle(id).join("init.pid")).expect("init.pid");
    pid.trim().parse().expect("a pid in init.pid")
}

/// RunPodSandbox for `pod`, as kubelet does (its log directory made
/// first).
pub fn run_pod(ctd: &mut Containerd, pod: Pod) -> RunningPod {
    let config = pod.sandbox_config(ctd);
    std::fs::create_dir_all(&config.log_directory).unwrap();
    let answer: RunPodSandboxResponse = call(
        ctd,
        "RunPodSandbox",
        RunPodSandboxRequest {
            config: Some(config.clone()),
        },
    );
    ctd.sandboxes.push(answer.pod_sandbox_id.clone());
    RunningPod {
        pod,
        sandbox: answer.pod_sandbox_id,
        config,
    }
}

/// CreateContainer and StartContainer of container `name` of `pod`
/// running `argv` (its manifest's `command`), with kubelet's container
/// config; returns its id and its first process's pid.
pub fn run_container(
    ctd: &Containerd,
    pod: &RunningPod,
    name: &str,
    ports: &[u16],
    argv: &[&str],
) -> (String, u32) {
    start_container(ctd, pod, container_config(pod, name, ports, argv))
}

/// kubelet's config (kuberuntime_container.go `generateContainerConfig`)
/// for container `name` of `pod`, of image `pwtest:1`, running `argv` and
/// declaring `ports`, with no volumes, no environment and a besteffort
/// pod's resources.
pub fn container_config(
    pod: &RunningPod,
    name: &str,
    ports: &[u16],
    argv: &[&str],
) -> ContainerConfig {
    let p = &pod.pod;
    // labels.go `newContainerLabels`.
    let labels = HashMap::from([
        ("io.kubernetes.pod.name".into(), p.name.clone()),
        ("io.kubernetes.pod.namespace".into(), p.namespace.clone()),
        ("io.kubernetes.pod.uid".into(), p.uid.clone()),
        ("io.kubernetes.container.name".into(), name.to_owned()),
    ]);
    // labels.go `newContainerAnnotations`.
    let mut annotations: HashMap<String, String> = HashMap::from([
        ("io.kubernetes.container.hash".into(), "5f3c2a1b".into()),
        ("io.kubernetes.container.restartCount".into(), "0".into()),
        (
            "io.kubernetes.container.terminationMessagePath".into(),
            "/dev/termination-log".into(),
        ),
        (
            "io.kubernetes.container.terminationMessagePolicy".into(),
            "File".into(),
        ),
        (
            "io.kubernetes.pod.terminationGracePeriod".into(),
            "30".into(),
        ),
    ]);
    if !ports.is_empty() {
        // v1.ContainerPort as Go's encoding/json writes it.
        let list: Vec<String> = ports
            .iter()
            .map(
                |&port| match p.host_ports.iter().find(|&&(_, c)| c == port) {
                    Some(&(host, _)) => {
                        format!(r#"{{"hostPort":{host},"containerPort":{port},"protocol":"TCP"}}"#)
                    }
                    None => format!(r#"{{"containerPort":{port},"protocol":"TCP"}}"#),
                },
            )
            .collect();
        annotations.insert(
            "io.kubernetes.container.ports".into(),
            format!("[{}]", list.join(",")),
        );
    }
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: IMAGE.into(),
            user_specified_image: "pwtest:1".into(),
        }),
        command: argv.iter().map(|&a| a.to_owned()).collect(),
        args: Vec::new(),
        envs: Vec::new(),
        mounts: Vec::new(),
        labels,
        annotations,
        // kubelet's BuildContainerLogsPath: NAME/RESTARTS.log, under the
        // sandbox's log directory.
        log_path: format!("{name}/0.log"),
        linux: Some(LinuxContainerConfig {
            // A besteffort pod's (kubelet's qos and cm helpers).
            resources: Some(LinuxContainerResources {
                cpu_shares: 2,
                memory_limit_in_bytes: 0,
                oom_score_adj: 1000,
            }),
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(p.namespaces()),
                ..Default::default()
            }),
        }),
    }
}

/// CreateContainer and StartContainer of `config` in `pod`; returns the
/// container's id and its first process's pid.
pub fn start_container(
    ctd: &Containerd,
    pod: &RunningPod,
    config: ContainerConfig,
) -> (String, u32) {
    let created: CreateContainerResponse = call(
        ctd,
        "CreateContainer",
        CreateContainerRequest {
            pod_sandbox_id: pod.sandbox.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        },
    );
    let id = created.container_id;
    let _: Empty = call(ctd, "StartContainer", IdRequest { id: id.clone() });
    let pid = init_pid(ctd, &id);
    (id, pid)
}

/// StopPodSandbox and RemovePodSandbox of each pod `ctd` ran (its
/// containers go with it), as kubelet does when a pod is deleted. Retries
/// while the CRI plugin is still starting (after a restart); never panics
/// (it runs in `drop`): what it leaves, `drop` ends with ctr.
pub fn remove_pods(ctd: &mut Containerd) {
    for id in std::mem::take(&mut ctd.sandboxes) {
        let request = IdRequest { id };
        let deadline = Instant::now() + Duration::from_secs(30);
        for method in ["StopPodSandbox", "RemovePodSandbox"] {
            while let Err(e) =
                cri::call::<_, Empty>(&ctd.socket(), method, request.clone(), CALL_TIMEOUT)
            {
                if Instant::now() > deadline {
                    eprintln!("{e}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// `portwatch who ARGS --json` run inside network namespace of `pid`.
pub fn who_in(pid: u32, args: &[&str]) -> (i32, Value) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg(bin())
        .arg("who")
        .args(args)
        .arg("--json")
        .output()
        .expect("run nsenter portwatch who");
    parse(&out)
}

/// `who PORT` in `pid`'s namespace (a pod's), once something listens
/// there.
pub fn who_listening(pid: u32, port: u16) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, v) = who_in(pid, &[&port.to_string()]);
        if code == 1 && v["sockets"][0]["pid"].is_number() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on {port}: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// ExecSync of `cmd` in container `id`, as `kubectl exec` has kubelet do
/// (up to 30 s); its answer as a finished process's.
pub fn exec_sync(ctd: &Containerd, id: &str, cmd: &[&str]) -> Output {
    let answer: ExecSyncResponse = call(
        ctd,
        "ExecSync",
        ExecSyncRequest {
            container_id: id.to_owned(),
            cmd: cmd.iter().map(|&a| a.to_owned()).collect(),
            timeout: 30,
        },
    );
    Output {
        status: ExitStatus::from_raw(answer.exit_code << 8),
        stdout: answer.stdout,
        stderr: answer.stderr,
    }
}

/// StopContainer of `id` (SIGTERM, SIGKILL after `grace`), as kubelet
/// stops a pod's container.
pub fn stop_container(ctd: &Containerd, id: &str, grace: Duration) {
    let _: Empty = call(
        ctd,
        "StopContainer",
        StopContainerRequest {
            container_id: id.to_owned(),
            timeout: grace.as_secs() as i64,
        },
    );
}

/// ContainerStatus of `id`, once it has exited (panics after `WAIT`).
pub fn exited(ctd: &Containerd, id: &str) -> ContainerStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let answer: ContainerStatusResponse = call(
            ctd,
            "ContainerStatus",
            ContainerStatusRequest {
                container_id: id.to_owned(),
            },
        );
        let status = answer.status.expect("a container status");
        if status.state == ContainerState::Exited as i32 {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "container {id} still runs: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Which stream a line of a container's log came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of kubelet's CRI log format (`TIMESTAMP STREAM TAG TEXT`, tag
/// `P` for a part of a longer line, `F` for its end): its stream, whether
/// it ends a line, and its text.
fn log_line(line: &str) -> Option<(Stream, bool, &str)> {
    let mut fields = line.splitn(4, ' ');
    let _time = fields.next()?;
    let stream = match fields.next()? {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => return None,
    };
    let full = match fields.next()? {
        "F" => true,
        "P" => false,
        _ => return None,
    };
    Some((stream, full, fields.next().unwrap_or("")))
}

/// The lines of a container's log file so far, each with its stream.
pub fn read_log(path: &Path) -> Vec<(Stream, String)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = Vec::new();
    let mut part = [String::new(), String::new()];
    for line in text.lines() {
        let (stream, full, text) =
            log_line(line).unwrap_or_else(|| panic!("not a CRI log line: {line}"));
        let buf = &mut part[stream as usize];
        buf.push_str(text);
        if full {
            lines.push((stream, std::mem::take(buf)));
        }
    }
    lines
}

/// A container's log file followed as it grows (a `kubectl logs -f`):
/// its whole lines, each with its stream, as they come.
pub struct LogFollower {
    pub lines: Receiver<(Stream, String)>,
    stop: Arc<AtomicBool>,
}

impl LogFollower {
    /// Follows `path` (which the runtime may not have made yet) from its
    /// start.
    pub fn start(path: PathBuf) -> LogFollower {
        let (tx, lines) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut part = [String::new(), String::new()];
            let mut reader = None;
            // Bytes: a line the runtime is still writing stays here, even
            // cut inside a UTF-8 character.
            let mut line = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                if reader.is_none() {
                    reader = std::fs::File::open(&path).ok().map(BufReader::new);
                }
                let Some(r) = reader.as_mut() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                match r.read_until(b'\n', &mut line) {
                    Ok(n) if n > 0 && line.ends_with(b"\n") => {
                        let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                        let (stream, full, text) =
                            log_line(&text).unwrap_or_else(|| panic!("not a CRI log line: {text}"));
                        let buf = &mut part[stream as usize];
                        buf.push_str(text);
                        if full && tx.send((stream, std::mem::take(buf))).is_err() {
                            return;
                        }
                        line.clear();
                    }
                    Ok(_) => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => panic!("read {}: {e}", path.display()),
                }
            }
        });
        LogFollower { lines, stop }
    }
}

impl Drop for LogFollower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
